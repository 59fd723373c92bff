"""Safety alerts on patients (SPEC section 5): stored, listed and acknowledged.

The rules are pure (``scheduler.alerts.evaluate``); this module brings the
``alert`` table in line with what they say, after every replan:

- an alert the rules raise and the patient has no live row for is inserted, open;
- an open alert whose condition no longer holds is closed by Cobalt itself
  (``closed_by = "cobalt"``); its row stays, as history;
- an acknowledged alert stays acknowledged while its condition holds; once the
  condition clears, the row is history too, and a later raise is a new row;
- a discharged patient has no alerts: their open ones are closed.

A row is *live* (it stands for the condition now) until ``cleared_at`` is set.
Urgent alerts reach the clinic at once: the pass reads ``pending_urgent_alerts``
and records what it sent with ``mark_notified``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date, timedelta
from typing import Any

from sqlalchemy import case, exists, func, update
from sqlmodel import Session, col, select

from models import Alert, Event, Patient
from models.types import utcnow
from scheduler import domain
from scheduler.alerts import (
    DEFAULT_POLICY,
    RESPONSE_GATE_GRACE_DAYS,
    RESPONSE_GATE_LABEL,
    AlertPolicy,
    evaluate,
)
from scheduler.db import chunked
from scheduler.errors import BadInput
from scheduler.store import PatientRecord, audit, get_patient

OPEN = "open"
ACKNOWLEDGED = "acknowledged"
CLOSED = "closed"
COBALT = "cobalt"  # closed_by when Cobalt closes an alert by itself

_MESSAGE_MAX = 600  # the column's length

# Most urgent first, in SQL as in ``domain.SEVERITY_RANK``.
_SEVERITY_ORDER = case(
    {s.value: rank for s, rank in domain.SEVERITY_RANK.items()}, value=col(Alert.severity), else_=9
)


def live_alerts(session: Session, patient_ids: Iterable[int]) -> dict[int, list[Alert]]:
    """Rows that stand for a condition now (open, or acknowledged and not yet cleared),
    by patient: one query for a whole batch."""
    ids = list(patient_ids)
    found: dict[int, list[Alert]] = {pid: [] for pid in ids}
    if not ids:
        return found
    query = select(Alert).where(
        col(Alert.patient_id).in_(ids),
        col(Alert.status).in_([OPEN, ACKNOWLEDGED]),
        col(Alert.cleared_at).is_(None),
    ).order_by(col(Alert.id))
    for row in session.exec(query):
        found[row.patient_id].append(row)
    return found


def raised_alerts(record: PatientRecord, events: Sequence[domain.PlannedEvent], today: date,
                  policy: AlertPolicy = DEFAULT_POLICY) -> list[Any]:
    """The alerts the rules raise for the patient on ``today`` (none once discharged)."""
    if record.patient.status != "active":
        return []  # discharged: nothing more is raised, and what stood is closed
    return evaluate(record.enrolment(), record.lab_results(), events, record.first_dose_on(), today, policy)


def sync_alerts(
    session: Session, record: PatientRecord, events: Sequence[domain.PlannedEvent], today: date,
    policy: AlertPolicy = DEFAULT_POLICY, *, live: Mapping[int, Sequence[Alert]] | None = None,
    insert: Callable[..., None] | None = None, raised: Sequence[Any] | None = None,
) -> list[Alert]:
    """Bring the patient's alert rows in line with the rules on ``today``.

    ``events`` is the patient's plan as the planner just made it (the response
    gate reads it).
    ``live`` is what ``live_alerts`` returned when the caller loaded a whole
    batch at once; without it the patient's rows are read here. Returns the rows
    inserted (new alerts, open), not yet flushed. ``insert``: a batch writer's
    (``store.PlanWriter.add``), given each new row's columns instead (nothing is returned).
    ``raised``: what ``raised_alerts(record, events, today, policy)`` gives, when the caller has it.
    """
    patient = record.patient
    assert patient.id is not None
    if raised is None:
        raised = raised_alerts(record, events, today, policy)
    standing = {a.code: a for a in raised}
    if live is None:
        live = live_alerts(session, [patient.id])
    now = utcnow()
    kept: dict[str, Alert] = {}
    for row in live.get(patient.id, ()):
        if row.code in standing and row.code not in kept:
            kept[row.code] = row
            continue
        # The condition no longer holds (or a duplicate row): it becomes history.
        row.cleared_at = now
        if row.status == OPEN:
            row.status, row.closed_at, row.closed_by = CLOSED, now, COBALT
        session.add(row)
    inserted: list[Alert] = []
    for code, alert in standing.items():
        message = alert.message[:_MESSAGE_MAX]
        existing = kept.get(code)
        if existing is None and insert is not None:
            insert(Alert, patient_id=patient.id, code=code, severity=alert.severity.value, message=message,
                   since=alert.since, status=OPEN, opened_at=now, closed_at=None, closed_by=None,
                   cleared_at=None, notified=False)
        elif existing is None:
            new = Alert(
                patient_id=patient.id, code=code, severity=alert.severity.value, message=message,
                since=alert.since, status=OPEN, opened_at=now,
            )
            session.add(new)
            inserted.append(new)
        elif existing.status == OPEN and existing.message != message:
            existing.message = message  # the latest value and advice; ``since`` keeps the first day
            session.add(existing)
    return inserted


def due_for_alert_check(session: Session, today: date) -> list[Patient]:
    """Active patients an alert is due on by the calendar alone, not yet raised.

    Most rules change only when something is recorded (and the patient is
    replanned then); the response gate goes off when a date passes. A pass
    replans these patients (``store.replan_set``) so that alert is raised on time.
    Reads through the (status, kind, due) index of the events.
    """
    late = today - timedelta(days=RESPONSE_GATE_GRACE_DAYS)
    raised = exists().where(  # probes the alert's patient_id index per patient found
        col(Alert.patient_id) == col(Patient.id),
        col(Alert.code) == RESPONSE_GATE_LABEL, col(Alert.status).in_([OPEN, ACKNOWLEDGED]),
        col(Alert.cleared_at).is_(None),
    )
    # Driven by the index: the gates due, then their patients by primary key (a join lets a
    # planner with statistics read every patient instead).
    gates = select(Event.patient_id).where(
        Event.status == domain.Status.PLANNED.value, col(Event.due) <= late,
        Event.kind == domain.Kind.REVIEW.value, Event.label == RESPONSE_GATE_LABEL,
    )
    query = (
        select(Patient)
        .where(col(Patient.id).in_(gates), Patient.status == "active", ~raised)
        .order_by(col(Patient.id))
    )
    return list(session.exec(query))


# -- reading ---------------------------------------------------------------------


def _alert_json(row: Alert) -> dict[str, Any]:
    return {"code": row.code, "severity": row.severity, "message": row.message,
            "since": row.since.isoformat()}


def _urgent_first(rows: Iterable[Alert]) -> list[Alert]:
    rank = {s.value: r for s, r in domain.SEVERITY_RANK.items()}
    return sorted(rows, key=lambda a: (rank.get(a.severity, 9), a.since, a.code))


def open_alerts_by_patient(session: Session, patient_ids: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
    """Each patient's open alerts (``{code, severity, message, since}``), most urgent first."""
    ids = list(patient_ids)
    if not ids:
        return {}
    found: dict[int, list[Alert]] = {}
    for chunk in chunked(ids):
        for row in session.exec(select(Alert).where(col(Alert.patient_id).in_(chunk), Alert.status == OPEN)):
            found.setdefault(row.patient_id, []).append(row)
    return {pid: [_alert_json(a) for a in _urgent_first(alerts)] for pid, alerts in found.items()}


def open_alert_count(session: Session) -> int:
    """How many alerts are open across patients (``list_open_alerts`` without a limit)."""
    query = (select(func.count()).select_from(Alert).join(Patient, col(Patient.id) == col(Alert.patient_id))
             .where(Alert.status == OPEN))
    return int(session.exec(query).one())


def alerts_json(record: PatientRecord, session: Session | None = None) -> list[dict[str, Any]]:
    """The patient's open alerts, most urgent first, for ``schedule --json``.

    Reads through the session the record's patient was loaded in, unless given one.
    """
    patient = record.patient
    session = session or _session_of(patient)
    if session is None or patient.id is None:
        return []
    return open_alerts_by_patient(session, [patient.id]).get(patient.id, [])


def _session_of(row: Any) -> Session | None:
    found = Session.object_session(row)
    return found if isinstance(found, Session) else None


def list_open_alerts(session: Session, limit: int | None = None) -> list[dict[str, Any]]:
    """Open alerts across patients, most urgent first, then the longest standing
    (the first ``limit`` of them: the digest lists a few hundred)."""
    query = (
        select(Alert, Patient)
        .join(Patient, col(Patient.id) == col(Alert.patient_id))
        .where(Alert.status == OPEN)
        .order_by(_SEVERITY_ORDER, col(Alert.since), col(Patient.mrn), col(Alert.code))
        .limit(limit)
    )
    return [
        {"mrn": p.mrn, "name": p.name, **_alert_json(a), "opened_at": a.opened_at.isoformat()}
        for a, p in session.exec(query)
    ]


def alerts_text(data: Sequence[dict[str, Any]]) -> str:
    if not data:
        return "no open alerts"
    return "\n".join(
        f"{a['severity'].upper():8} {a['mrn']}  {a['name']}  {a['code']} since {a['since']}: "
        f"{a['message']}"
        for a in data
    )


# -- acknowledging ---------------------------------------------------------------


def acknowledge(session: Session, ctx: Any, mrn: str, code: str) -> Alert:
    """Close one open alert as acknowledged by ``ctx.actor``; audited.

    It stays acknowledged while its condition holds; if the condition clears
    and comes back, that is a new, open alert.
    """
    code = code.strip().lower()
    patient = get_patient(session, mrn, for_update=True)
    open_rows = session.exec(
        select(Alert).where(Alert.patient_id == patient.id, Alert.status == OPEN)
    ).all()
    row = next((a for a in open_rows if a.code == code), None)
    if row is None:
        codes = sorted(a.code for a in open_rows)
        raise BadInput(
            f"no open alert {code!r} for {mrn}"
            + (f": open ones are {', '.join(codes)}" if codes else ": it has no open alerts")
        )
    row.status, row.closed_at, row.closed_by = ACKNOWLEDGED, utcnow(), ctx.actor[:64]
    session.add(row)
    audit(session, ctx.actor, "ack-alert", patient, alert=row.id, code=row.code)
    session.flush()
    return row


# -- telling the clinic at once --------------------------------------------------


def pending_urgent_alerts(session: Session) -> list[dict[str, Any]]:
    """Open urgent alerts the clinic has not been sent yet, oldest first.

    Each is ``{id, patient_id, mrn, name, code, severity, message, since, opened_at}``
    with ``since`` a ``date`` and ``opened_at`` an aware UTC datetime (for templates,
    not JSON).
    """
    query = (
        select(Alert, Patient)
        .join(Patient, col(Patient.id) == col(Alert.patient_id))
        .where(Alert.status == OPEN, Alert.severity == domain.Severity.URGENT.value,
               col(Alert.notified).is_(False))
        .order_by(col(Alert.opened_at), col(Alert.id))
    )
    return [
        {"id": a.id, "patient_id": p.id, "mrn": p.mrn, "name": p.name, "code": a.code,
         "severity": a.severity, "message": a.message, "since": a.since, "opened_at": a.opened_at}
        for a, p in session.exec(query)
    ]


def mark_notified(session: Session, alert_ids: Iterable[int]) -> list[int]:
    """Mark alerts as sent to the clinic; returns the ids this call marked.

    One conditional UPDATE (``notified`` still false): when two passes race, an
    id is returned to one of them only, so only that one should queue its message.
    """
    ids = sorted(set(alert_ids))
    if not ids:
        return []
    result = session.execute(
        update(Alert)
        .where(col(Alert.id).in_(ids), col(Alert.notified).is_(False))
        .values(notified=True)
        .returning(col(Alert.id))
    )
    return sorted(result.scalars().all())
