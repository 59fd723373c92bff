"""What the pages show, read from the database: the worklist rows and a patient's
record, shaped for the templates. This module reads; the service changes."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlmodel import Session, col, func, or_, select

from models import Audit, LabResult, Patient, Regimen
from scheduler import labs, service
from scheduler.domain import Kind, Status
from scheduler.protocols import PROTOCOLS
from scheduler.safety import open_alerts_by_patient
from scheduler.store import PatientRecord, sorted_events
from scheduler.technique import band, injection_note


def what_is_due(kind: str, key: str, label: str, tests: str, regimens: dict[int, str]) -> str:
    """``hydroxocobalamin 1 mg IM``, ``Lab tests: cbc, b12``, or the review's label."""
    if kind == Kind.DOSE.value:
        number = _regimen_number(key)
        protocol = PROTOCOLS.get(regimens.get(number, ""))
        return f"{protocol.drug} {protocol.dose} {protocol.route}" if protocol else f"dose ({label})"
    if kind == Kind.LAB.value:
        return "Lab tests: " + (", ".join(tests.split()) or label)
    return f"Review: {label}"


def _regimen_number(key: str) -> int:
    """``r2:dose:loading:3`` -> 2 (the planner's event keys start with the regimen)."""
    head = key.split(":", 1)[0]
    return int(head[1:]) if head[:1] == "r" and head[1:].isdigit() else 1


def latest_platelets(session: Session, patient_ids: list[int]) -> dict[int, tuple[float, date]]:
    """Each patient's latest platelet count: one query for the whole list."""
    if not patient_ids:
        return {}
    latest = (
        select(LabResult.patient_id, func.max(LabResult.taken_on).label("on"))
        .where(LabResult.code == "platelets", col(LabResult.patient_id).in_(patient_ids),
               col(LabResult.value).is_not(None))
        .group_by(col(LabResult.patient_id)).subquery()
    )
    query = (
        select(LabResult)
        .join(latest, (col(LabResult.patient_id) == latest.c.patient_id) & (col(LabResult.taken_on) == latest.c.on))
        .where(LabResult.code == "platelets", col(LabResult.value).is_not(None))
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
    """One line of the worklist: a patient and what is due (several items when overdue)."""

    mrn: str
    name: str
    items: list[Item] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    technique: str | None = None
    technique_band: str = ""


@dataclass
class Worklist:
    on: date
    until: date
    overdue: list[Row]
    today: list[Row]
    coming: list[Row]


def worklist(session: Session, on: date, days: int) -> Worklist:
    """The CLI's ``due`` list, split into overdue (grouped per patient), due today and coming up."""
    until = on + _days(days)
    rows = service.worklist(session, until)
    ids = sorted({p.id for _, p in rows if p.id is not None})
    alerts = open_alerts_by_patient(session, ids)
    regimens: dict[int, dict[int, str]] = defaultdict(dict)
    if ids:
        for r in session.exec(select(Regimen).where(col(Regimen.patient_id).in_(ids))):
            regimens[r.patient_id][r.number] = r.protocol
    platelets = latest_platelets(session, ids)
    # A patient's overdue events make one row; the others one row per patient and day.
    grouped: dict[tuple[str, int, date | None], Row] = {}
    for event, patient in rows:
        pid = patient.id or 0
        item = Item(event.due, what_is_due(event.kind, event.key, event.label, event.tests, regimens[pid]),
                    event.because, event.kind)
        when = "overdue" if event.due < on else "today" if event.due == on else "coming"
        key = (when, pid, None if when == "overdue" else event.due)
        row = grouped.get(key)
        if row is None:
            row = grouped[key] = Row(patient.mrn, patient.name, alerts=alerts.get(pid, []))
        row.items.append(item)
        if event.kind == Kind.DOSE.value:
            count = platelets.get(pid)
            row.technique = injection_note(count[0] if count else None, patient.neuro)
            row.technique_band = band(count[0] if count else None).value
    overdue = [row for (when, _, _), row in grouped.items() if when == "overdue"]
    today = [row for (when, _, _), row in grouped.items() if when == "today"]
    coming = [row for (when, _, _), row in grouped.items() if when == "coming"]
    return Worklist(on, until, overdue, today, coming)


def _days(days: int) -> Any:
    from datetime import timedelta

    return timedelta(days=days)


def lab_tables(record: PatientRecord) -> list[dict[str, Any]]:
    """Results per code, oldest first, so a nurse sees haemoglobin rising."""
    by_code: dict[str, list[LabResult]] = defaultdict(list)
    for r in sorted(record.results, key=lambda r: (r.taken_on, r.id or 0)):
        if not _voided(r):
            by_code[r.code].append(r)
    order = list(labs.CATALOG)
    return [
        {"code": code, "name": labs.CATALOG[code].name if code in labs.CATALOG else code,
         "unit": labs.CATALOG[code].unit if code in labs.CATALOG else "",
         "results": [{"on": r.taken_on, "value": f"{r.value:g}" if r.value is not None else (r.text or "")}
                     for r in results]}
        for code, results in sorted(by_code.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
    ]


def _voided(row: Any) -> bool:
    return bool(getattr(row, "voided_at", None) or getattr(row, "voided", False))


def voided_records(record: PatientRecord) -> list[dict[str, Any]]:
    """Doses and results a clinician voided: kept, shown apart, with the reason."""
    found: list[dict[str, Any]] = []
    for d in record.doses:
        if _voided(d):
            found.append({"what": "dose", "on": d.given_on, "reason": getattr(d, "void_reason", "") or ""})
    for r in record.results:
        if _voided(r):
            value = f"{r.value:g}" if r.value is not None else (r.text or "")
            found.append({"what": f"{r.code} {value}", "on": r.taken_on,
                          "reason": getattr(r, "void_reason", "") or ""})
    return sorted(found, key=lambda f: f["on"])


def patient_page(session: Session, record: PatientRecord) -> dict[str, Any]:
    patient = record.patient
    regimens = sorted(record.regimens, key=lambda r: r.number)
    by_number = {r.number: r.protocol for r in regimens}
    events = sorted_events(record.events)
    count = latest_platelets(session, [patient.id or 0]).get(patient.id or 0)
    return {
        "patient": patient,
        "regimen": regimens[-1],
        "first_start": regimens[0].start,
        "protocol": PROTOCOLS.get(regimens[-1].protocol),
        "alerts": open_alerts_by_patient(session, [patient.id or 0]).get(patient.id or 0, []),
        "events": [{"event": e, "what": what_is_due(e.kind, e.key, e.label, e.tests, by_number)}
                   for e in events],
        "movable": [e for e in events if e.status == Status.PLANNED.value],
        "lab_orders": sorted({e.label for e in events if e.kind == Kind.LAB.value
                              and e.status == Status.PLANNED.value}),
        "labs": lab_tables(record),
        "voided": voided_records(record),
        "technique": injection_note(count[0] if count else None, patient.neuro),
        "technique_band": band(count[0] if count else None).value,
        "platelets_on": count[1] if count else None,
    }


def list_patients(session: Session, search: str | None, status: str = "active") -> list[dict[str, Any]]:
    """Patients by MRN or name: the service's own list when it has one."""
    listing = getattr(service, "list_patients", None)
    if listing is not None:
        return list(listing(session, None, search=search, status=status))
    query = select(Patient).order_by(col(Patient.name), col(Patient.mrn)).limit(500)
    if status != "all":
        query = query.where(Patient.status == status)
    if search:
        pattern = f"%{search.strip().lower()}%"
        query = query.where(or_(func.lower(Patient.mrn).like(pattern), func.lower(Patient.name).like(pattern)))
    patients = list(session.exec(query))
    ids = [p.id for p in patients if p.id is not None]
    alerts = open_alerts_by_patient(session, ids)
    protocols: dict[int, str] = {}
    if ids:
        for r in session.exec(select(Regimen).where(col(Regimen.patient_id).in_(ids)).order_by(col(Regimen.number))):
            protocols[r.patient_id] = r.protocol
    return [{"mrn": p.mrn, "name": p.name, "protocol": protocols.get(p.id or 0, ""), "status": p.status,
             "next_due": None, "open_alerts": len(alerts.get(p.id or 0, []))} for p in patients]


def audit_trail(session: Session, limit: int = 500) -> list[dict[str, Any]]:
    """The latest changes, newest first: the service's own trail when it has one."""
    trail = getattr(service, "audit_trail", None)
    if trail is not None:
        return list(trail(session))[-limit:][::-1]
    query = (
        select(Audit, Patient.mrn).join(Patient, col(Patient.id) == col(Audit.patient_id), isouter=True)
        .order_by(col(Audit.id).desc()).limit(limit)
    )
    return [{"at": a.at, "actor": a.actor, "action": a.action, "mrn": mrn, "detail": a.detail}
            for a, mrn in session.exec(query)]
