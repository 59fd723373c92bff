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
from typing import IO, Any

from sqlalchemy import case, func
from sqlmodel import Session, col, select

from models import Alert, Event, Patient, Regimen
from scheduler.errors import BadInput
from scheduler.store import event_json

EVENT_COLUMNS = ("id", "kind", "phase", "seq", "label", "due", "status", "done_on", "tests", "because")
COLUMNS: dict[str, tuple[str, ...]] = {
    "worklist": ("mrn", "name", *EVENT_COLUMNS, "overdue", "alerts"),
    "events": ("mrn", *EVENT_COLUMNS),
    "patients": ("mrn", "name", "protocol", "status", "next_due_date", "next_due_kind", "open_alerts"),
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


def patient_rows(session: Session, *, search: str | None = None, status: str = "active") -> Iterator[dict[str, Any]]:
    """The rows of ``patients --json`` (SPEC section 7): ``mrn``, ``name``, ``protocol``,
    ``status``, ``next_due`` (the earliest planned event: ``date`` and ``kind``) and
    ``open_alerts`` (codes), in MRN order, a page of patients at a time."""
    last = ""
    while True:
        query = select(Patient).where(col(Patient.mrn) > last).order_by(col(Patient.mrn)).limit(PAGE)
        if status != "all":
            query = query.where(Patient.status == status)
        if search:
            needle = search.lower()
            query = query.where(func.lower(col(Patient.mrn)).startswith(needle, autoescape=True)
                                | func.lower(col(Patient.name)).contains(needle, autoescape=True))
        page = list(session.exec(query))
        if not page:
            return
        ids = [p.id for p in page]
        protocols: dict[int, tuple[int, str]] = {}
        for r in session.exec(select(Regimen).where(col(Regimen.patient_id).in_(ids))):
            if r.patient_id not in protocols or r.number > protocols[r.patient_id][0]:
                protocols[r.patient_id] = (r.number, r.protocol)
        earliest = (
            select(Event.patient_id, func.min(Event.due).label("due"))
            .where(col(Event.patient_id).in_(ids), Event.status == "planned")
            .group_by(col(Event.patient_id))
            .subquery()
        )
        next_due: dict[int, tuple[date, int, str]] = {}
        found: Any
        for found in session.execute(
            select(col(Event.patient_id), col(Event.due), col(Event.kind))
            .join(earliest, (earliest.c.patient_id == col(Event.patient_id)) & (earliest.c.due == col(Event.due)))
            .where(Event.status == "planned")
        ):
            pid, due, kind = found
            rank = {"dose": 0, "lab": 1, "review": 2}.get(kind, 9)
            if pid not in next_due or rank < next_due[pid][1]:
                next_due[pid] = (due, rank, kind)
        alerts: dict[int, list[str]] = {}
        for found in session.execute(
            select(Alert.patient_id, Alert.code).where(col(Alert.patient_id).in_(ids), Alert.status == "open")
            .order_by(col(Alert.patient_id), col(Alert.code))
        ):
            alerts.setdefault(found[0], []).append(found[1])
        for p in page:
            assert p.id is not None
            nd = next_due.get(p.id)
            yield {
                "mrn": p.mrn, "name": p.name, "protocol": protocols.get(p.id, (0, ""))[1], "status": p.status,
                "next_due": {"date": nd[0].isoformat(), "kind": nd[2]} if nd else None,
                "open_alerts": alerts.get(p.id, []),
            }
        last = page[-1].mrn


def export(session: Session, stream: IO[str], what: str, *, today: date, on: date | None = None,
           days: int | None = None) -> int:
    """Write ``what`` as CSV to ``stream``; returns the number of rows."""
    if days is not None and days < 0:
        raise BadInput("--days must not be negative")
    start = on or today
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
        rows = ({**r, "next_due": r["next_due"] or {"date": None, "kind": None}} for r in patient_rows(session))
        return write_csv(stream, rows, COLUMNS[what])
    raise BadInput(f"export csv {what!r}: choose worklist, patients or events")
