"""Between the tables and the pure core: load what the planner needs, save what
it returns. This module decides nothing; ``planning`` and ``alerts`` do.

Planning writes through one set-based path: ``replan_set`` reads the regimens,
doses, results, decisions and events of a whole batch of patients with one query
per table and ``PlanWriter`` writes what changed with one statement a table, so
rolling a million plans forward costs a few queries per few hundred patients.
Import, the pass's roll-forward and every action of the service (``replan``: one
patient) bring events and alerts in line with a plan through it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, update
from sqlalchemy import select as core_select
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from models import Event, Patient, Regimen
from models.types import utcnow
from scheduler import domain
from scheduler.alerts import DEFAULT_POLICY, AlertPolicy, extra_lab_orders
from scheduler.clinic_calendar import ClinicCalendar
from scheduler.db import chunked, insert_rows, row_converter
from scheduler.errors import NotFound
from scheduler.planning import PLAN_AHEAD_MONTHS, add_months, horizon, plan, spread_offset
from scheduler.protocols import PROTOCOLS

if TYPE_CHECKING:  # defined on first use (models.records): a read command may never load them
    from models import Decision, Dose, EventMove, LabResult


def get_patient(session: Session, mrn: str, *, for_update: bool = False) -> Patient:
    query = select(Patient).where(Patient.mrn == mrn)
    if for_update and session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    patient = session.exec(query).first()
    if patient is None:
        raise NotFound(f"no patient with MRN {mrn!r}")
    return patient


def audit_detail(**detail: Any) -> str:
    """An audit row's details, as every writer stores them."""
    return json.dumps(detail, default=str, sort_keys=True)


def audit(session: Session, actor: str, action: str, patient: Patient | None, **detail: Any) -> None:
    from models import Audit

    session.add(Audit(
        actor=actor, action=action, patient_id=patient.id if patient else None,
        detail=audit_detail(**detail),
    ))


@dataclass
class PatientRecord:
    """Everything recorded about one patient, as rows."""

    patient: Patient
    regimens: list[Regimen] = field(default_factory=list)
    doses: list[Dose] = field(default_factory=list)
    results: list[LabResult] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    moves: list[EventMove] = field(default_factory=list)

    @property
    def results_in_force(self) -> list[LabResult]:
        return [r for r in self.results if r.voided_at is None]

    @property
    def doses_in_force(self) -> list[Dose]:
        return [d for d in self.doses if d.voided_at is None]

    @property
    def decisions_in_force(self) -> list[Decision]:
        return [d for d in self.decisions if d.voided_at is None]

    def enrolment(self) -> domain.Enrolment:
        p = self.patient
        return domain.Enrolment(
            regimens=tuple(
                domain.Regimen(r.protocol, r.start, r.maintenance_months)
                for r in sorted(self.regimens, key=lambda r: r.number)
            ),
            neuro=p.neuro,
            renal_impairment=p.renal_impairment,
            on_folic_acid=p.on_folic_acid,
            discharged_on=p.discharged_on,
        )

    def lab_results(self) -> list[domain.LabResult]:
        return [
            domain.LabResult(
                code=r.code, taken_on=r.taken_on, value=r.value, text=r.text,
                order_label=order_label(r.order_key),
            )
            for r in sorted(self.results_in_force, key=lambda r: (r.taken_on, r.id or 0))
        ]

    def history(self) -> domain.History:
        labs_done: dict[str, date] = {}
        for r in self.results_in_force:
            if r.order_key and (r.order_key not in labs_done or r.taken_on < labs_done[r.order_key]):
                labs_done[r.order_key] = r.taken_on
        return domain.History(
            doses=tuple(
                domain.GivenDose(d.event_key, d.given_on, voided=d.voided_at is not None)
                for d in sorted(self.doses, key=lambda d: (d.given_on, d.id or 0))
            ),
            labs_done=labs_done,
            decisions=tuple(
                domain.Decision(domain.DecisionKind(d.kind), d.on, voided=d.voided_at is not None)
                for d in sorted(self.decisions, key=lambda d: (d.on, d.id or 0))
            ),
            extra_lab_orders=tuple(extra_lab_orders(self.lab_results())),
            moves={m.event_key: m.moved_to for m in sorted(self.moves, key=lambda m: m.id or 0)},
        )

    def first_dose_on(self) -> date | None:
        return min((d.given_on for d in self.doses_in_force), default=None)


def order_label(order_key: str | None) -> str | None:
    """``"lab:annual:2"`` -> ``"annual"``; ``"lab:3-month"`` -> ``"3-month"``."""
    if not order_key:
        return None
    return order_key.split(":")[1]


def load_records(session: Session, patients: Sequence[Patient]) -> list[PatientRecord]:
    """The records of a batch of patients: one query per table."""
    from models import Decision, Dose, EventMove, LabResult

    records = {p.id: PatientRecord(p) for p in patients}
    ids = list(records)
    if not ids:
        return []
    tables: tuple[tuple[Any, str], ...] = (
        (Regimen, "regimens"), (Dose, "doses"), (LabResult, "results"),
        (Decision, "decisions"), (Event, "events"), (EventMove, "moves"),
    )
    for table, attr in tables:
        for row in session.exec(select(table).where(col(table.patient_id).in_(ids))):
            getattr(records[row.patient_id], attr).append(row)
    return list(records.values())


def load_record(session: Session, patient: Patient) -> PatientRecord:
    return load_records(session, [patient])[0]


@dataclass(frozen=True)
class Replanned:
    """What planning a patient's record afresh gives."""

    events: list[domain.PlannedEvent]
    seen: date  # the day date-driven alerts are evaluated on
    planned_through: date | None  # the patient's new ``planned_through``


def plan_record(record: PatientRecord, calendar: ClinicCalendar, today: date,
                policy: AlertPolicy = DEFAULT_POLICY) -> Replanned:
    """Plan one patient afresh from what was recorded (pure: reads only ``record``)."""
    history = replace(record.history(),
                      extra_lab_orders=tuple(extra_lab_orders(record.lab_results(), policy)))
    patient = record.patient
    active = patient.status == "active"
    # ``planned_through`` is kept short of the reach by the patient's spread offset.
    offset = timedelta(days=spread_offset(patient.mrn))
    # A pass run with a later --now (time travel) already planned further: keep it.
    reach = patient.planned_through + offset if active and patient.planned_through else None
    events = plan(record.enrolment(), history, calendar, today, reach=reach)
    # The latest day this patient was planned on: date-driven alerts (the response
    # gate) raised then stay raised when a record is made on an earlier real day.
    seen = max(today, add_months(reach, -PLAN_AHEAD_MONTHS)) if reach else today
    planned_through = max(horizon(today), reach or today) - offset if active else None
    return Replanned(events, seen, planned_through)


def replan(session: Session, patient: Patient, calendar: ClinicCalendar, today: date, *,
           policy: AlertPolicy = DEFAULT_POLICY) -> None:
    """Plan one patient afresh and bring their events and alerts in line: ``replan_set``
    for one, in the session's transaction (what the session holds is flushed first)."""
    assert patient.id is not None, "the patient row is flushed before it is planned"
    replan_set(session, [patient.id], calendar, today, policy=policy)


def event_values(planned: domain.PlannedEvent) -> dict[str, Any]:
    """An event row's columns (but its patient and key) for a planned event."""
    return {
        "kind": planned.kind.value, "phase": planned.phase.value, "seq": planned.seq,
        "label": planned.label, "due": planned.due, "status": planned.status.value,
        "done_on": planned.done_on, "tests": " ".join(planned.tests),
        "because": planned.because[:400],
    }


EVENT_FIELDS = ("kind", "phase", "seq", "label", "due", "status", "done_on", "tests", "because")


def event_json(event: Event | Any) -> dict[str, Any]:
    """An event (or a row of its columns, as the worklist streams them) as ``--json`` shows it."""
    return {
        "id": event.id,
        "kind": event.kind,
        "phase": event.phase,
        "seq": event.seq,
        "label": event.label,
        "due": event.due.isoformat(),
        "status": event.status,
        "done_on": event.done_on.isoformat() if event.done_on else None,
        "tests": event.tests.split() if event.tests else [],
        "because": event.because,
    }


def sorted_events(events: Iterable[Event]) -> list[Event]:
    order = {"dose": 0, "lab": 1, "review": 2}
    return sorted(events, key=lambda e: (e.due, order.get(e.kind, 9), e.seq, e.id or 0))


def regimen_drugs(session: Session, patient_ids: Sequence[int]) -> dict[tuple[int, int], tuple[str, str]]:
    """(patient id, regimen number) -> (drug, amount): "hydroxocobalamin", "1 mg"."""
    found: dict[tuple[int, int], tuple[str, str]] = {}
    for chunk in chunked(list(patient_ids)):
        query = select(Regimen.patient_id, Regimen.number, Regimen.protocol).where(
            col(Regimen.patient_id).in_(chunk))
        for pid, number, protocol in session.exec(query):
            chosen = PROTOCOLS.get(protocol)
            if chosen is not None:
                found[(pid, number)] = (chosen.drug, chosen.dose)
    return found


def drug_of(event: Event | Any, drugs: dict[tuple[int, int], tuple[str, str]]) -> tuple[str | None, str | None]:
    """A dose's drug and amount, from its regimen (the ``r2`` of ``r2:dose:...``); (None, None) otherwise."""
    number = event.key.split(":", 1)[0][1:]
    if event.kind != "dose" or not number.isdigit():
        return None, None
    found = drugs.get((event.patient_id, int(number)))
    return found if found else (None, None)


# -- the set-based path: import and roll-forward -----------------------------------------


@dataclass
class PatientState:
    """The patient columns the planner reads, as a batch writer keeps them (a plain
    object: the writer updates ``planned_through`` and ``pernicious`` as it plans)."""

    id: int | None
    mrn: str
    status: str
    neuro: bool
    renal_impairment: bool
    on_folic_acid: bool
    pernicious: bool
    discharged_on: date | None
    planned_through: date | None


EVENT_INSERT = ("patient_id", "key", "updated_at", "due_set_at", *EVENT_FIELDS)


@dataclass
class _SharedPlan:
    """A new plan as ``PlanWriter`` writes it for each patient given it."""

    events: list[domain.PlannedEvent]
    rows: list[tuple[Any, ...]]  # converted, without the patient id
    raised: list[Any] | None = None  # the alerts the rules raise on it (``safety.raised_alerts``)


class PlanWriter:
    """Rows to insert, update and delete for a batch of patients, written together:
    inserts by one DBAPI ``executemany`` a table (``db.insert_rows``: values converted
    once per distinct value), updates by one ``executemany``, no ORM object per row and
    nothing read back. Import, roll-forward and the service's actions (``replan``)
    plan through this.

    Rows are matched by the planner's natural key, so an event keeps its id while it
    exists (a moved dose is the same row with a new due date); events the plan no
    longer has are deleted. The session's objects of the rows written are kept in
    line with them (``flush``).

    A plan (``Replanned.events``, the same list) given to several new patients must
    come from the same inputs (an import plans equal inputs once): its event rows are
    built and converted once, and its alerts evaluated once, for all of them."""

    def __init__(self, session: Session, actor: str, policy: AlertPolicy = DEFAULT_POLICY, *,
                 write: bool = True, now: datetime | None = None) -> None:
        self.session = session
        self.actor = actor
        self.policy = policy
        self.write = write
        self.now = now or utcnow()
        self.inserts: dict[tuple[Any, tuple[str, ...]], list[tuple[Any, ...]]] = {}
        self.event_updates: list[dict[str, Any]] = []
        self.event_deletes: list[int] = []
        self.patient_updates: list[dict[str, Any]] = []
        # a new plan's event rows (converted, but the patient id) and alerts, by the plan
        self._new_rows: dict[int, _SharedPlan] = {}
        self._convert: Any = None

    def add(self, table: Any, **values: Any) -> None:
        self.inserts.setdefault((table, tuple(values)), []).append(tuple(values.values()))

    def audit(self, action: str, patient_id: int | None, **detail: Any) -> None:
        from models import Audit

        self.add(Audit, at=self.now, actor=self.actor, action=action, patient_id=patient_id,
                 detail=audit_detail(**detail))

    def _event_row(self, planned: domain.PlannedEvent) -> tuple[Any, ...]:
        """A new event's row but its patient id, its values as the driver takes them."""
        if self._convert is None:
            dialect = self.session.get_bind().dialect
            self._convert = row_converter(dialect, Event.__table__, EVENT_INSERT[1:])  # type: ignore[attr-defined]
        now = self.now
        converted: tuple[Any, ...] = self._convert((
            planned.key, now, now, planned.kind._value_, planned.phase._value_, planned.seq, planned.label,
            planned.due, planned.status._value_, planned.done_on, " ".join(planned.tests),
            planned.because[:400]))  # event_values, in EVENT_INSERT's order; ``_value_``: no property call
        return converted

    def plan(self, record: PatientRecord, made: Replanned, live: dict[int, list[Any]]) -> None:
        """Bring the patient's events and alerts in line with ``made``."""
        from scheduler import safety  # noqa: PLC0415 (safety builds on this module)

        patient = record.patient
        assert patient.id is not None
        now = self.now
        new = self.inserts.setdefault((Event, EVENT_INSERT), [])  # rows converted (flush)
        if not record.events:  # a new plan: every event is a new row
            shared = self._new_rows.get(id(made.events))
            if shared is None or shared.events is not made.events:
                shared = self._new_rows[id(made.events)] = _SharedPlan(
                    made.events, [self._event_row(planned) for planned in made.events])
            new.extend(map((patient.id,).__add__, shared.rows))
            if self.write:
                raised = None
                if patient.status == "active" and not live.get(patient.id):
                    if shared.raised is None:  # nothing live to compare with: only what the rules raise
                        shared.raised = safety.raised_alerts(record, made.events, made.seen, self.policy)
                    raised = shared.raised
                safety.sync_alerts(self.session, record, made.events, made.seen, self.policy, live=live,
                                   insert=self.add, raised=raised)
            return
        existing = {e.key: e for e in record.events}
        for planned in made.events:
            row = existing.pop(planned.key, None)
            if row is None:
                new.append((patient.id, *self._event_row(planned)))
                continue
            values = event_values(planned)
            if any(getattr(row, name) != values[name] for name in EVENT_FIELDS):
                # reminders and changed messages count from a new date or status
                moved = row.due != values["due"] or row.status != values["status"]
                self.event_updates.append({"b_id": row.id, "updated_at": now,
                                           "due_set_at": now if moved else row.due_set_at, **values})
        self.event_deletes.extend(e.id for e in existing.values() if e.id is not None)
        if self.write:
            safety.sync_alerts(self.session, record, made.events, made.seen, self.policy, live=live,
                               insert=self.add)

    def flush(self) -> None:
        if self.write:
            conn = self.session.connection()
            for (table, columns), rows in self.inserts.items():
                insert_rows(conn, table.__table__, columns, rows,
                            converted=table is Event and columns == EVENT_INSERT)
            if self.event_updates:
                t = Event.__table__  # type: ignore[attr-defined]
                conn.execute(update(t).where(t.c.id == bindparam("b_id")), self.event_updates)
            if self.event_deletes:
                for chunk in chunked(self.event_deletes):
                    conn.execute(delete(Event.__table__).where(Event.__table__.c.id.in_(chunk)))  # type: ignore[attr-defined]
            if self.patient_updates:
                t = Patient.__table__  # type: ignore[attr-defined]
                conn.execute(update(t).where(t.c.id == bindparam("b_id")), self.patient_updates)
            self.session.flush()  # the alerts
            if self.session.identity_map:
                self._held_in_line()
        self.inserts.clear()
        self.event_updates.clear()
        self.event_deletes.clear()
        self.patient_updates.clear()

    def _held_in_line(self) -> None:
        """The session's objects of the rows just updated take their new values, and
        those of the rows deleted leave the session, as if the ORM had written them: an
        action's caller (``give`` returns the dose's event) sees what was written, and a
        later query of the session does not return stale objects. Nothing is read."""
        held = self.session.identity_map
        for table, updates in ((Event, self.event_updates), (Patient, self.patient_updates)):
            for values in updates:
                row = held.get(identity_key(table, values["b_id"]))
                if row is not None:
                    for name, value in values.items():
                        if name != "b_id":
                            set_committed_value(row, name, value)
        for event_id in self.event_deletes:
            row = held.get(identity_key(Event, event_id))
            if row is not None:
                self.session.expunge(row)


def load_states(session: Session, where: Any) -> list[PatientRecord]:
    """The records of the patients ``where`` selects (a condition on the patient table),
    as core rows with one query per table: what ``PlanWriter`` plans from."""
    p = Patient.__table__  # type: ignore[attr-defined]
    states = [
        PatientState(row.id, row.mrn, row.status, row.neuro, row.renal_impairment, row.on_folic_acid,
                     row.pernicious, row.discharged_on, row.planned_through)
        for row in session.execute(core_select(p).where(where))
    ]
    records = {state.id: PatientRecord(state) for state in states}  # type: ignore[arg-type]
    ids = list(records)
    if ids:
        from models import Decision, Dose, EventMove, LabResult

        tables: tuple[tuple[Any, str], ...] = (
            (Regimen, "regimens"), (Dose, "doses"), (LabResult, "results"), (Decision, "decisions"),
            (Event, "events"), (EventMove, "moves"),
        )
        for chunk in chunked(ids):
            for table, attr in tables:
                t = table.__table__
                for found in session.execute(core_select(t).where(t.c.patient_id.in_(chunk))):
                    getattr(records[found.patient_id], attr).append(found)
    return list(records.values())


def replan_set(session: Session, patient_ids: Sequence[int], calendar: ClinicCalendar, today: date, *,
               policy: AlertPolicy = DEFAULT_POLICY, actor: str = "cobalt") -> int:
    """Plan a batch of patients by id afresh from what was recorded, then bring their
    events in line, then the safety alerts (``policy``: the clinic's thresholds, also for
    the extra lab orders), set-based (``PlanWriter``). What the session holds is flushed
    first: a record just added counts. Returns the patients replanned."""
    from scheduler import safety  # noqa: PLC0415 (safety builds on this module)

    if not patient_ids:
        return 0
    session.flush()  # core reads do not flush the session's pending rows
    p = Patient.__table__  # type: ignore[attr-defined]
    records = load_states(session, p.c.id.in_(list(patient_ids)))
    live = safety.live_alerts(session, [r.patient.id for r in records if r.patient.id is not None])
    writer = PlanWriter(session, actor, policy)
    for record in records:
        made = plan_record(record, calendar, today, policy)
        writer.plan(record, made, live)
        writer.patient_updates.append({"b_id": record.patient.id, "planned_through": made.planned_through})
    writer.flush()
    return len(records)
