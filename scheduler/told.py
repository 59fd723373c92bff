"""What the pass has decided: the marks that keep an empty pass from rereading the day.

Each kind of message a pass decides from the plan has one bit in ``event.told``.
A pass claims the planned events of a kind's window whose bit is clear, sets it
in the same statement, and decides on exactly those rows in the same
transaction: the reminder is queued, or it is not owed (already told, the
patient cannot be reached, not the first loading dose of its week). A later
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

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from models import Event, EventChange

REMINDED = 1  # the dose reminder (the day before) or the blood-test reminder
MISSED = 2  # the "we missed you" follow-up
OVERDUE = 4  # the clinic's overdue notice
ALL = REMINDED | MISSED | OVERDUE


def clear_of(bit: int) -> tuple[int, ...]:
    """The mark values without ``bit``: an ``IN`` list, so the index range holds only
    the rows still to decide (``ix_event_status_kind_told_due``)."""
    if bit not in (REMINDED, MISSED, OVERDUE):
        raise ValueError(f"not a mark: {bit}")
    return tuple(value for value in range(ALL + 1) if not value & bit)


def claim(session: Session, bit: int, kinds: Sequence[str], *window: Any) -> list[int]:
    """Set ``bit`` on the planned events of ``kinds`` in ``window`` that lack it; their ids.

    The caller decides on these rows in the same transaction: a rollback leaves them
    to the next pass.
    """
    pick = select(col(Event.id)).where(
        col(Event.status) == "planned", col(Event.kind).in_(list(kinds)), col(Event.told).in_(clear_of(bit)),
        *window,
    )
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    stmt = (update(Event).where(col(Event.id).in_(pick.scalar_subquery()), col(Event.told).in_(clear_of(bit)))
            .values(told=col(Event.told) + bit).returning(col(Event.id)))
    return sorted(i for (i,) in session.connection().execute(stmt) if i is not None)


def claim_changes(session: Session, ready: Any) -> list[int]:
    """Take the listed changes of events that are gone or for which ``ready`` holds; their
    ids (the rest wait for a later pass)."""
    pick = (select(col(EventChange.event_id))
            .join(Event, col(Event.id) == col(EventChange.event_id), isouter=True)
            .where(or_(col(Event.id).is_(None), ready)))
    if session.get_bind().dialect.name == "postgresql":
        pick = pick.with_for_update(of=EventChange, skip_locked=True)  # type: ignore[arg-type]
    stmt = (delete(EventChange).where(col(EventChange.event_id).in_(pick.scalar_subquery()))
            .returning(col(EventChange.event_id)))
    return sorted(i for (i,) in session.connection().execute(stmt) if i is not None)


def list_changes(session: Session, event_ids: Sequence[int]) -> None:
    """Put events back on the list of changes (a message about them is still on its way)."""
    if not event_ids:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.connection().execute(
        insert(EventChange).on_conflict_do_nothing(index_elements=["event_id"]),
        [{"event_id": i} for i in sorted(set(event_ids))],
    )
