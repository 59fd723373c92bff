"""What the pages show, read through the service's own queries (the worklist,
the patient list, the audit trail, void records) and shaped for the templates.
This module reads; the service changes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta, tzinfo
from typing import Any

from sqlmodel import Session, col, func, select

from models import LabResult, Patient
from scheduler import labs, service
from scheduler.domain import Kind, Status
from scheduler.protocols import PROTOCOLS
from scheduler.safety import open_alerts_by_patient
from scheduler.store import PatientRecord, drug_of, regimen_drugs, sorted_events
from scheduler.technique import band, injection_note
from scheduler.worklist import group_overdue, what


def latest_platelets(session: Session, patient_ids: list[int]) -> dict[int, tuple[float, date]]:
    """Each patient's latest platelet count in force: one query for the whole list."""
    if not patient_ids:
        return {}
    in_force = (col(LabResult.value).is_not(None), col(LabResult.voided_at).is_(None))
    latest = (
        select(LabResult.patient_id, func.max(LabResult.taken_on).label("on"))
        .where(LabResult.code == "platelets", col(LabResult.patient_id).in_(patient_ids), *in_force)
        .group_by(col(LabResult.patient_id)).subquery()
    )
    query = (
        select(LabResult)
        .join(latest, (col(LabResult.patient_id) == latest.c.patient_id) & (col(LabResult.taken_on) == latest.c.on))
        .where(LabResult.code == "platelets", *in_force)
        .order_by(col(LabResult.id))
    )
    found: dict[int, tuple[float, date]] = {}
    for row in session.exec(query):
        if row.value is not None:
            found[row.patient_id] = (row.value, row.taken_on)  # the last recorded that day wins
    return found


@dataclass
class Item:
    due: date
    what: str
    why: str
    kind: str


@dataclass
class Row:
    """One row of the worklist: a patient and what is due (several items when overdue,
    or when several things fall on one day)."""

    mrn: str
    name: str
    items: list[Item] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    technique: str | None = None
    technique_band: str = ""


WORKLIST_PAGE = 500  # events a page of the worklist lists; the next page goes on after the last


@dataclass
class Worklist:
    on: date
    until: date
    overdue: list[Row]
    today: list[Row]
    coming: list[Row]
    more: int = 0  # events after this page
    next_after: str | None = None  # the ``after`` of the next page
    after: str | None = None  # this page's, when it is not the first


def page_key(item: dict[str, Any]) -> str:
    """An item's place in the worklist (``service.worklist_key``) as the ``after`` of a link."""
    return f"{item['due']},{item['kind']},{item['seq']},{item['id']},{item['mrn']}"


def parse_page_key(text: str) -> tuple[date, str, str, int, int]:
    """``page_key``'s text back; ValueError when it is not one."""
    due, kind, seq, event_id, mrn = text.split(",", 4)
    return (date.fromisoformat(due), mrn, kind, int(seq), int(event_id))


def worklist(session: Session, on: date, days: int, after: str | None = None,
             page: int | None = None) -> Worklist:
    """The CLI's ``due`` list (``service.worklist_items``, overdue events grouped as the
    CLI groups them), split into overdue (a row per patient), due today and coming up
    (a row per patient and day); ``page`` events at most, from after ``after``
    (``page_key``), with how many more there are."""
    until = on + timedelta(days=days)
    page = page or WORKLIST_PAGE
    start = parse_page_key(after) if after else None
    items = list(service.worklist_items(session, on=on, until=until, after=start, limit=page + 1))
    more, next_after = 0, None
    if len(items) > page:
        items = items[:page]
        next_after = page_key(items[-1])
        more = service.worklist_count(session, until, after=parse_page_key(next_after))
    patients = {p.mrn: p for p in session.exec(
        select(Patient).where(col(Patient.mrn).in_(sorted({i["mrn"] for i in items}))))} if items else {}
    platelets = latest_platelets(session, [p.id for p in patients.values() if p.id is not None])
    rows: dict[tuple[str, str, str | None], Row] = {}
    for line in group_overdue(items):
        due = date.fromisoformat(line["due"])
        when = "overdue" if line["overdue"] else "today" if due == on else "coming"
        key = (when, line["mrn"], None if when == "overdue" else line["due"])
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(line["mrn"], line["name"], alerts=line["alerts"])
        why = line["because"] if line["count"] == 1 else "; ".join(
            dict.fromkeys(e["because"] for e in line["events"]))
        row.items.append(Item(due, line["what"], why, line["kind"]))
        if line["kind"] == Kind.DOSE.value:
            patient = patients.get(line["mrn"])
            count = platelets.get(patient.id or 0) if patient else None
            row.technique = injection_note(count[0] if count else None, patient.neuro if patient else None)
            row.technique_band = band(count[0] if count else None).value
    overdue, today, coming = ([r for (when, _, _), r in rows.items() if when == w]
                               for w in ("overdue", "today", "coming"))
    return Worklist(on, until, overdue, today, coming, more=more, next_after=next_after, after=after)


def lab_tables(record: PatientRecord) -> list[dict[str, Any]]:
    """Results in force per code, oldest first, so a nurse sees haemoglobin rising."""
    by_code: dict[str, list[LabResult]] = defaultdict(list)
    for r in sorted(record.results_in_force, key=lambda r: (r.taken_on, r.id or 0)):
        by_code[r.code].append(r)
    order = list(labs.CATALOG)
    return [
        {"code": code, "name": labs.CATALOG[code].name if code in labs.CATALOG else code,
         "unit": labs.CATALOG[code].unit if code in labs.CATALOG else "",
         "results": [{"on": r.taken_on, "value": f"{r.value:g}" if r.value is not None else (r.text or "")}
                     for r in results]}
        for code, results in sorted(by_code.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    ]


def patient_page(session: Session, record: PatientRecord) -> dict[str, Any]:
    patient = record.patient
    pid = patient.id or 0
    regimens = sorted(record.regimens, key=lambda r: r.number)
    drugs = regimen_drugs(session, [pid])
    events = sorted_events(record.events)
    count = latest_platelets(session, [pid]).get(pid)

    def says(e: Any) -> str:
        drug, amount = drug_of(e, drugs)
        return what({"kind": e.kind, "label": e.label, "seq": e.seq, "drug": drug, "amount": amount,
                     "tests": e.tests.split()})

    return {
        "patient": patient,
        "regimen": regimens[-1],
        "first_start": regimens[0].start,
        "protocol": PROTOCOLS.get(regimens[-1].protocol),
        "alerts": open_alerts_by_patient(session, [pid]).get(pid, []),
        "events": [{"event": e, "what": says(e)} for e in events],
        "movable": [e for e in events if e.status == Status.PLANNED.value],
        "voidable": [e for e in events if e.status == Status.DONE.value],
        "lab_orders": sorted({e.label for e in events if e.kind == Kind.LAB.value
                              and e.status == Status.PLANNED.value}),
        "labs": lab_tables(record),
        "voided": service.voided_json(record),
        "technique": injection_note(count[0] if count else None, patient.neuro),
        "technique_band": band(count[0] if count else None).value,
        "platelets_on": count[1] if count else None,
    }


def audit_trail(session: Session, tz: tzinfo, limit: int = 500) -> list[dict[str, Any]]:
    """The latest changes, newest first, with their details as ``key: value`` text."""
    rows = service.audit_trail(session, tz=tz)[:limit]
    for row in rows:
        row["text"] = "; ".join(f"{k}: {_plain(v)}" for k, v in row["details"].items())
    return rows


def _plain(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    return "" if value is None else str(value)
