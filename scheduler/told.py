"""What the pass has decided: the marks that keep an empty pass from rereading the day.

Each kind of message a pass decides from the plan has one bit in ``event.told``.
A pass claims the events of a kind's window whose bit is clear (of any status),
sets it, and decides on exactly those rows in the same transaction: the
reminder is queued, or it is not owed (already told, the patient cannot be
reached, not the first loading dose of its week, done). A later
pass reads only rows still clear, so its work follows what changed, not how
many patients there are (docs/decisions.md, "Told marks").

The marks only save reading; the outbox's once-only key still decides whether
a message is queued. Database triggers (migration 0010) clear an event's marks
when its date, status or phase changes, and all of a patient's marks when the
address, opt-out, status or loading-dose choice changes, so every writer keeps
them right without knowing of them. Those triggers also list in
``event_change`` the events to compare with what their patient was told (the
``changed`` notices).

On PostgreSQL the claim takes the rows ``FOR UPDATE SKIP LOCKED``: a row a
writer is changing is left for the next pass, and the writer's clearing, which
waits for our commit, comes after our mark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from models import Event, EventChange
from scheduler.db import chunked

REMINDED = 1  # the dose reminder (the day before) or the blood-test reminder
MISSED = 2  # the "we missed you" follow-up
OVERDUE = 4  # the clinic's overdue notice
ALL = REMINDED | MISSED | OVERDUE


def clear_of(bit: int) -> tuple[int, ...]:
    """The mark values without ``bit``: an ``IN`` list, so the index range holds only
    the rows still to decide (``ix_event_kind_told_due``)."""
    if bit not in (REMINDED, MISSED, OVERDUE):
        raise ValueError(f"not a mark: {bit}")
    return tuple(value for value in range(ALL + 1) if not value & bit)


def claim(session: Session, bit: int, kinds: Sequence[str], *window: Any) -> list[int]:
    """Set ``bit`` on the events of ``kinds`` in ``window`` that lack it; their ids, in
    (due, id) order (the order their messages are queued in).

    Events of every status are marked: one done or cancelled is decided too (nothing
    is owed for it), and a change of status clears its marks. So the claim needs no
    status, and only ``ix_event_kind_told_due`` serves it: with a status, PostgreSQL
    would choose ``ix_event_status_kind_due`` and read the whole window, its statistics
    not knowing that the window's rows are the decided ones. The caller decides on the
    planned rows among these in the same transaction: a rollback leaves them all to the
    next pass.
    """
    where = (col(Event.kind).in_(list(kinds)), col(Event.told).in_(clear_of(bit)), *window)
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        # One statement: SQLite serialises writers (BEGIN IMMEDIATE), so what it reads
        # is what it marks.
        marked = conn.execute(update(Event).where(*where).values(told=col(Event.told) + bit)
                              .returning(col(Event.due), col(Event.id))).all()
        return [i for _, i in sorted((due, i) for due, i in marked if i is not None)]
    pick = select(col(Event.due), col(Event.id)).where(*where).with_for_update(skip_locked=True)
    picked = sorted((due, i) for due, i in conn.execute(pick) if i is not None)
    ids = sorted(i for _, i in picked)
    # By id, apart: as one statement (id IN (SELECT ...)), PostgreSQL's planner may join
    # the window to a scan of the whole table. The rows are locked until the commit. The
    # ids go as one array parameter, not one parameter each.
    for chunk in chunked(ids, CLAIM_CHUNK):
        conn.execute(_MARK_BY_ID, {"bit": bit, "ids": list(chunk)})
    return [i for _, i in picked]


CLAIM_CHUNK = 50_000
_MARK_BY_ID = text("UPDATE event SET told = told + :bit WHERE id = ANY(:ids)")


def claim_changes(session: Session, ready: Callable[[datetime | None], bool]) -> list[int]:
    """Take the listed changes of events that are gone or whose date stamp is ``ready``;
    their ids. The rest go back on the list for a later pass.

    The list is taken first (``DELETE ... RETURNING``) and the events read after, so a
    change committed meanwhile is either seen here or listed again by its writer, whose
    insert waits for this transaction.
    """
    conn = session.connection()
    taken = sorted(i for (i,) in conn.execute(delete(EventChange).returning(col(EventChange.event_id))))
    stamps: dict[int, datetime | None] = {}
    for chunk in chunked(taken):
        stamps.update((i, at) for i, at in conn.execute(
            select(col(Event.id), col(Event.due_set_at)).where(col(Event.id).in_(chunk))) if i is not None)
    later = [i for i in taken if i in stamps and not ready(stamps[i])]
    list_changes(session, later)
    return [i for i in taken if i not in stamps or ready(stamps[i])]


def list_changes(session: Session, event_ids: Sequence[int]) -> None:
    """Put events back on the list of changes (a message about them is still on its way)."""
    if not event_ids:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.connection().execute(
        insert(EventChange).on_conflict_do_nothing(index_elements=["event_id"]),
        [{"event_id": i} for i in sorted(set(event_ids))],
    )
