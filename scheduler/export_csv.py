"""``cobalt export csv worklist|patients|events``: the rows of ``--json``, as CSV.

read (the same row functions as the JSON commands) -> map (flatten each row:
lists become space-separated words, a nested object one column per field) ->
serialise (``csv``, a header row, streamed: a million rows never sit in memory).

- ``worklist``: the rows of ``due --json`` (``--on``, ``--days`` as there);
- ``events``: every patient's events as ``schedule --json`` gives them, with
  the ``mrn``, in MRN and due-date order; with ``--on`` and/or ``--days``, only
  those due from DATE (default today) through DATE + N days;
- ``patients``: the rows of ``patients --json`` (SPEC section 7), active patients.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, timedelta
from typing import IO, TYPE_CHECKING, Any

from sqlalchemy import case
from sqlmodel import Session, col, select

from models import Event, Patient
from scheduler.errors import BadInput
from scheduler.store import event_json

if TYPE_CHECKING:
    from scheduler.service import Context

EVENT_COLUMNS = ("id", "kind", "phase", "seq", "label", "due", "status", "done_on", "tests", "because")
COLUMNS: dict[str, tuple[str, ...]] = {
    "worklist": ("mrn", "name", *EVENT_COLUMNS, "overdue", "alerts"),
    "events": ("mrn", *EVENT_COLUMNS),
    "patients": ("mrn", "name", "protocol", "status", "next_due_date", "next_due_kind", "next_due_label",
                 "open_alerts"),
}
PAGE = 5000  # rows read at a time
_KIND_ORDER = case({"dose": 0, "lab": 1, "review": 2}, value=col(Event.kind), else_=9)


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return " ".join(str(v.get("code", v)) if isinstance(v, dict) else cell(v) for v in value)
    return str(value)


def flatten(row: dict[str, Any]) -> dict[str, str]:
    """``{"next_due": {"date": d, "kind": k}}`` -> ``{"next_due_date": d, "next_due_kind": k}``."""
    flat: dict[str, str] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for sub, inner in value.items():
                flat[f"{key}_{sub}"] = cell(inner)
        else:
            flat[key] = cell(value)
    return flat


def write_csv(stream: IO[str], rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> int:
    """The header, then one line a row; a field the columns do not name is added after
    them (taken from the first row). Returns the number of rows."""
    rows = iter(rows)
    first = next(rows, None)
    header = list(columns)
    if first is not None:
        flat = flatten(first)
        header += [k for k in flat if k not in header]
    writer = csv.DictWriter(stream, fieldnames=header, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    if first is None:
        return 0
    writer.writerow(flat)
    count = 1
    for row in rows:
        writer.writerow(flatten(row))
        count += 1
    return count


def event_rows(session: Session, since: date | None = None, until: date | None = None) -> Iterator[dict[str, Any]]:
    """Each patient's events with its ``mrn``, in MRN and due order, read a page at a time."""
    query = (
        select(Event, Patient.mrn)
        .join(Patient, col(Patient.id) == col(Event.patient_id))
        .order_by(col(Patient.mrn), col(Event.due), _KIND_ORDER, col(Event.seq), col(Event.id))
        .execution_options(yield_per=PAGE)
    )
    if since is not None:
        query = query.where(col(Event.due) >= since)
    if until is not None:
        query = query.where(col(Event.due) <= until)
    for event, mrn in session.exec(query):
        yield {"mrn": mrn, **event_json(event)}


def patient_rows(session: Session, ctx: Context) -> Iterator[dict[str, Any]]:
    """The rows of ``patients --json`` (``service.list_patients``), a page at a time."""
    from scheduler.service import list_patients

    last: str | None = None
    while True:
        page = list_patients(session, ctx, status="active", after=last, limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        last = page[-1]["mrn"]


def export(session: Session, stream: IO[str], what: str, *, ctx: Context, on: date | None = None,
           days: int | None = None) -> int:
    """Write ``what`` as CSV to ``stream``; returns the number of rows."""
    if days is not None and days < 0:
        raise BadInput("--days must not be negative")
    start = on or ctx.today
    try:
        until = start + timedelta(days=days or 0)
    except OverflowError:
        raise BadInput(f"--days {days} reaches beyond the calendar") from None
    if what == "worklist":
        from scheduler.service import worklist_items

        return write_csv(stream, worklist_items(session, on=start, until=until), COLUMNS[what])
    if what == "events":
        window = on is not None or days is not None
        return write_csv(stream, event_rows(session, start if window else None, until if window else None),
                         COLUMNS[what])
    if what == "patients":
        nothing_due = {"date": None, "kind": None, "label": None}
        rows = ({**r, "next_due": r["next_due"] or nothing_due} for r in patient_rows(session, ctx))
        return write_csv(stream, rows, COLUMNS[what])
    raise BadInput(f"export csv {what!r}: choose worklist, patients or events")
