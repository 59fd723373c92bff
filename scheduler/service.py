"""What each command does, in one transaction each: check the request, record it,
audit it and replan the patient. Every check runs before anything is written,
and any error rolls the whole transaction back, so bad input changes nothing.

``today`` (the clinic's local date) and ``actor`` come from the edge; nothing
here reads the clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from itertools import islice
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, func, or_, tuple_
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from models import OPEN_DUE, PLANNED, Event, Patient, Regimen
from models.types import utcnow
from scheduler import domain, labs
from scheduler.alerts import DEFAULT_POLICY, AlertPolicy, is_pernicious, renal_dysfunction
from scheduler.clinic_calendar import ClinicCalendar
from scheduler.db import chunked
from scheduler.domain import DecisionKind, Status
from scheduler.errors import BadInput, FieldError
from scheduler.protocols import PROTOCOLS, check_maintenance_months, get_protocol
from scheduler.store import (
    PatientRecord,
    audit,
    drug_of,
    event_json,
    get_patient,
    load_record,
    order_label,
    regimen_drugs,
    replan,
)
from scheduler.validation import check_email as valid_email

if TYPE_CHECKING:  # defined on first use (models.records): a read command may never load them
    from models import Decision, Dose, LabResult

# Clinic policy: a planned start further ahead than this is taken for a typo.
START_AT_MOST_DAYS_AHEAD = 366

RENAL_REFUSAL = (
    "cyanocobalamin must not be used in renal dysfunction (eGFR below 60 or renal impairment): "
    "use hydroxocobalamin (--protocol hydroxo, or hydroxo-neuro with neurological symptoms)"
)


@dataclass(frozen=True)
class EarlyWindows:
    """Clinic policy ([clinic] early_days_loading, early_days_maintenance): a dose
    given more than this many days before its due date is taken for a slip of the
    keyboard unless the nurse says it is meant (``give --early``)."""

    loading: int = 1
    maintenance: int = 14


@dataclass(frozen=True)
class Context:
    """What every command needs from the edge: the clinic's calendar, the local
    date (read once), who is acting, the clinic's alert thresholds and its early
    windows for doses."""

    calendar: ClinicCalendar
    today: date
    actor: str
    policy: AlertPolicy = DEFAULT_POLICY
    early: EarlyWindows = EarlyWindows()


def _id(patient: Patient) -> int:
    assert patient.id is not None, "the patient row is flushed before its records"
    return patient.id


def not_future(ctx: Context, on: date, what: str) -> None:
    if on > ctx.today:
        raise BadInput(f"{what} on {on.isoformat()} is in the future (today is {ctx.today.isoformat()})")


def check_active(patient: Any) -> None:
    if patient.status != "active":
        raise BadInput(
            f"patient {patient.mrn} was discharged on {patient.discharged_on}: nothing more is recorded"
        )


def _current(record: PatientRecord) -> Regimen:
    return max(record.regimens, key=lambda r: r.number)


def _open(session: Session, ctx: Context, mrn: str, on: date | None, what: str
          ) -> tuple[date, Patient, PatientRecord, Regimen]:
    """The date (default today), the active patient locked for the change, its
    record and current regimen; a date in the future is refused."""
    on = on or ctx.today
    patient = get_patient(session, mrn, for_update=True)
    check_active(patient)
    not_future(ctx, on, what)
    record = load_record(session, patient)
    return on, patient, record, _current(record)


# -- enrolment -------------------------------------------------------------------


_PHONE = re.compile(r"\+?[0-9][0-9 ()./-]{2,38}")


def check_email(value: str, flag: str = "--email") -> str:
    """An email address (scheduler.validation: one plain address, no header
    tricks), within the column's length. Enrolment, ``edit`` and import call it."""
    email = valid_email(value.strip(), flag)
    if len(email) > 320:  # the column's length
        raise BadInput(f"{flag} is {len(email)} characters long: at most 320 are allowed")
    return email


def check_name(value: str, flag: str = "--name") -> str:
    name = value.strip()
    if not name:
        raise BadInput(f"{flag} must not be empty")
    if not name.isprintable():
        raise BadInput(f"{flag} must not contain control characters (newlines, tabs, ...)")
    if len(name) > 200:  # the column's length
        raise BadInput(f"{flag} is {len(name)} characters long: at most 200 are allowed")
    return name


def check_phone(phone: str | None, flag: str = "--phone") -> str | None:
    """A telephone number as a nurse would dial it: digits, spaces, ``+ ( ) . / -``."""
    if phone is None or not phone.strip():
        return None
    phone = phone.strip()
    if not _PHONE.fullmatch(phone) or sum(c.isdigit() for c in phone) < 3:
        raise BadInput(f"{flag} {phone!r} is not a telephone number (digits, spaces, + ( ) - allowed)")
    return phone


def cli_flag(field: str) -> str:
    """How the command line names a field: ``maintenance_months`` -> ``--maintenance-months``."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class NewPatient:
    """An enrolment request that passed every check, its values normalised."""

    mrn: str
    name: str
    email: str | None
    phone: str | None
    protocol: str
    start: date
    maintenance_months: int
    neuro: bool
    renal_impairment: bool
    on_folic_acid: bool
    initial: tuple[tuple[str, float], ...]  # results recorded on the start date


def check_enrolment(
    ctx: Context, *, mrn: str, name: str, email: str | None = None,
    protocol: str | None = None, start: date | None = None, neuro: bool = False,
    renal_impairment: bool = False, egfr: float | str | None = None, platelets: float | str | None = None,
    hb: float | str | None = None, maintenance_months: int | None = None, on_folic_acid: bool = False,
    phone: str | None = None, name_of: Callable[[str], str] = cli_flag,
) -> NewPatient:
    """Every rule an enrolment must pass that needs no database (the MRN's uniqueness
    does). A refusal is a ``FieldError`` naming the field (``name_of`` spells it)."""
    mrn = mrn.strip()
    if not mrn:
        raise FieldError("mrn", f"{name_of('mrn')} must not be empty")
    if not mrn.isprintable():
        raise FieldError("mrn", f"{name_of('mrn')} must not contain control characters (newlines, tabs, ...)")
    if len(mrn) > 64:  # the column's length
        raise FieldError("mrn", f"{name_of('mrn')} is {len(mrn)} characters long: at most 64 are allowed")
    try:
        name = check_name(name, name_of("name"))
    except BadInput as exc:
        raise FieldError("name", str(exc)) from None
    if email is not None:
        try:
            email = check_email(email, name_of("email"))
        except BadInput as exc:
            raise FieldError("email", str(exc)) from None
    try:
        chosen = get_protocol(protocol if protocol is not None else ("hydroxo-neuro" if neuro else "hydroxo"))
    except BadInput as exc:
        raise FieldError("protocol", str(exc)) from None
    try:
        months = check_maintenance_months(
            chosen, maintenance_months if maintenance_months is not None else chosen.default_maintenance_months
        )
    except BadInput as exc:
        raise FieldError("maintenance_months", str(exc)) from None
    try:
        phone = check_phone(phone, name_of("phone"))
    except BadInput as exc:
        raise FieldError("phone", str(exc)) from None
    start = start or ctx.today
    if start > ctx.today + timedelta(days=START_AT_MOST_DAYS_AHEAD):
        raise FieldError("start", f"{name_of('start')} {start.isoformat()} is more than a year ahead: check the year")
    initial: list[tuple[str, float]] = []
    for code, value in (("egfr", egfr), ("platelets", platelets), ("hb", hb)):
        if value is not None:
            try:
                parsed_code, number, _ = labs.parse_result(f"{code}={value}")
            except BadInput as exc:
                raise FieldError(code, str(exc)) from None
            assert number is not None
            initial.append((parsed_code, number))
    egfr_value = dict(initial).get("egfr")
    at_start = [domain.LabResult("egfr", start, value=egfr_value)] if egfr_value is not None else []
    if chosen.id == "cyano" and renal_dysfunction(renal_impairment, at_start):
        raise FieldError("protocol", RENAL_REFUSAL)
    return NewPatient(mrn=mrn, name=name, email=email or None, phone=phone, protocol=chosen.id, start=start,
                      maintenance_months=months, neuro=neuro, renal_impairment=renal_impairment,
                      on_folic_acid=on_folic_acid, initial=tuple(initial))


def enroll(
    session: Session, ctx: Context, *, mrn: str, name: str, email: str | None = None,
    protocol: str | None = None, start: date | None = None, neuro: bool = False,
    renal_impairment: bool = False, egfr: float | None = None, platelets: float | None = None,
    hb: float | None = None, maintenance_months: int | None = None, on_folic_acid: bool = False,
    phone: str | None = None,
) -> Patient:
    from models import LabResult

    new = check_enrolment(
        ctx, mrn=mrn, name=name, email=email, protocol=protocol, start=start, neuro=neuro,
        renal_impairment=renal_impairment, egfr=egfr, platelets=platelets, hb=hb,
        maintenance_months=maintenance_months, on_folic_acid=on_folic_acid, phone=phone,
    )
    mrn, start, months, initial = new.mrn, new.start, new.maintenance_months, new.initial
    if session.exec(select(Patient.id).where(Patient.mrn == mrn)).first() is not None:
        raise BadInput(f"a patient with MRN {mrn!r} is already enrolled")

    patient = Patient(
        mrn=mrn, name=new.name, email=new.email, phone=new.phone, neuro=new.neuro,
        renal_impairment=new.renal_impairment, on_folic_acid=new.on_folic_acid,
    )
    session.add(patient)
    session.flush()
    session.add(Regimen(patient_id=_id(patient), number=1, protocol=new.protocol, start=start,
                        maintenance_months=months))
    for code, value in initial:
        session.add(LabResult(patient_id=_id(patient), code=code, value=value,
                              unit=labs.CATALOG[code].unit or "", taken_on=start,
                              recorded_by=ctx.actor))
    audit(session, ctx.actor, "enroll", patient, protocol=new.protocol, start=start,
          maintenance_months=months)
    session.flush()
    replan(session, patient, ctx.calendar, ctx.today, policy=ctx.policy)
    return patient


# -- doses -------------------------------------------------------------------------


def check_dose(ctx: Context, mrn: str, on: date, *, regimen_number: int, regimen_start: date,
               regimen_protocol: str, given: Sequence[date], decisions: Sequence[Any],
               events: Sequence[Any], early: bool = False) -> Any:
    """The planned dose a dose given on ``on`` completes: the next planned dose of the
    current regimen. ``given`` are the dates doses in force were given, ``decisions``
    and ``events`` the patient's in force (rows or the planner's values: ``kind``/``on``;
    ``key``/``status``/``due``/``seq``/``phase``). A dose more than the clinic's early
    window before its due date is refused unless ``early`` says it is meant."""
    not_future(ctx, on, "a dose")
    if on < regimen_start:
        raise BadInput(f"{on.isoformat()} is before the start of {regimen_protocol} on {regimen_start.isoformat()}")
    if on in given:
        raise BadInput(f"a dose was already given to {mrn} on {on.isoformat()}")
    last = max(given, default=None)
    if last is not None and on < last:
        raise BadInput(f"a dose was given on {last.isoformat()}: a later dose cannot be given before it")
    decided = [d.on for d in decisions
               if d.kind in (DecisionKind.END_LOADING, DecisionKind.CONFIRM_RESPONSE) and d.on >= regimen_start]
    if decided and on < max(decided):
        raise BadInput(
            f"a decision was recorded on {max(decided).isoformat()}: a dose cannot be dated before it"
        )
    prefix = f"r{regimen_number}:dose:"
    doses = [e for e in events if e.key.startswith(prefix)]
    planned = [e for e in doses if e.status == Status.PLANNED]
    if not planned:
        if any(e.status == Status.HELD for e in doses):
            raise BadInput(
                "phase 2 is held until the response is confirmed: run `cobalt confirm-response` first"
            )
        raise BadInput(f"no dose is planned for {mrn}")
    event = min(planned, key=lambda e: (e.due, e.seq))
    window = ctx.early.loading if event.phase == "loading" else ctx.early.maintenance
    days_early = (event.due - on).days
    # Given on a closed day the dose was moved off (the weekend before a Monday due
    # date): the same clinic day, not early.
    same_clinic_day = ctx.calendar.next_open(on) >= event.due
    if days_early > window and not same_clinic_day and not early:
        raise BadInput(
            f"{event.phase} dose {event.seq} of {mrn} is due on {event.due.isoformat()}: "
            f"{on.isoformat()} is {days_early} days early (the clinic allows {window}); "
            f"add --early if it is meant"
        )
    return event


def give(session: Session, ctx: Context, mrn: str, on: date | None = None, *, early: bool = False) -> Event:
    """Record the next planned dose of the current regimen as given on ``on``.

    A dose more than the clinic's early window before its due date is refused
    unless ``early`` says it is meant.
    """
    from models import Dose

    on, patient, record, regimen = _open(session, ctx, mrn, on, "a dose")
    event: Event = check_dose(
        ctx, mrn, on, regimen_number=regimen.number, regimen_start=regimen.start,
        regimen_protocol=regimen.protocol, given=[d.given_on for d in record.doses_in_force],
        decisions=record.decisions_in_force, events=record.events, early=early,
    )
    days_early = (event.due - on).days
    window = ctx.early.loading if event.phase == "loading" else ctx.early.maintenance
    session.add(Dose(patient_id=_id(patient), event_key=event.key, given_on=on, recorded_by=ctx.actor))
    audit(session, ctx.actor, "give", patient, event=event.key, given_on=on,
          **({"early_days": days_early} if days_early > window else {}))
    session.flush()
    replan(session, patient, ctx.calendar, ctx.today, policy=ctx.policy)
    return event


# -- labs --------------------------------------------------------------------------


def check_results(results: Sequence[str]) -> list[tuple[str, float | None, str | None]]:
    """``CODE=VALUE`` texts parsed: known codes, plausible values, each code once."""
    if not results:
        raise BadInput("give at least one --result CODE=VALUE")
    parsed = [labs.parse_result(text) for text in results]
    codes = [code for code, _, _ in parsed]
    if len(set(codes)) != len(codes):
        raise BadInput("each result code may be given once per lab record")
    return parsed


def choose_order(events: Sequence[Any], mrn: str, on: date, order: str | None,
                 codes: Sequence[str]) -> tuple[Any | None, set[str]]:
    """The open lab order that results for ``codes`` taken on ``on`` complete, and the
    codes it asks for. Only an order that asks for one of the tests counts (``cbc``
    covers hb, wbc, platelets, mcv): the one named ``order``, else the open one whose
    due date is nearest (the earlier on a tie); (None, no codes) when none asks."""
    open_orders = [e for e in events if e.kind == "lab" and e.status == Status.PLANNED]

    def tests_of(e: Any) -> list[str]:  # a row's "b12 cbc", or the planner's ("b12", "cbc")
        return e.tests.split() if isinstance(e.tests, str) else list(e.tests)

    def asks(e: Any) -> set[str]:
        return set(labs.asked_codes(tests_of(e))) & set(codes)

    if order is not None:
        named = [e for e in open_orders if e.label == order]
        if not named:
            labels = sorted({e.label for e in open_orders})
            raise BadInput(
                f"no open lab order {order!r} for {mrn}"
                + (f": open ones are {', '.join(labels)}" if labels else "")
            )
        candidates = [e for e in named if asks(e)]
        if not candidates:
            raise BadInput(
                f"lab order {order} asks for {', '.join(tests_of(named[0]))}, "
                f"not for {', '.join(codes)}: record these without --order"
            )
    else:
        candidates = [e for e in open_orders if asks(e)]
    chosen = min(candidates, key=lambda e: (abs((e.due - on).days), e.due), default=None)
    return chosen, (asks(chosen) if chosen else set())


def record_lab(
    session: Session, ctx: Context, mrn: str, results: Sequence[str], *, on: date | None = None,
    order: str | None = None,
) -> Event | None:
    """Record results; complete the named open order, else the open one nearest ``on``
    among those that ask for one of the tests."""
    from models import LabResult

    on = on or ctx.today
    parsed = check_results(results)
    codes = [code for code, _, _ in parsed]
    patient = get_patient(session, mrn, for_update=True)
    check_active(patient)
    not_future(ctx, on, "a lab result")
    record = load_record(session, patient)
    chosen: Event | None
    chosen, covered = choose_order(record.events, mrn, on, order, codes)
    for code, value, text in parsed:
        session.add(LabResult(
            patient_id=_id(patient), code=code, value=value, text=text,
            unit=labs.CATALOG[code].unit or "", taken_on=on,
            order_key=chosen.key if chosen and code in covered else None, recorded_by=ctx.actor,
        ))
    audit(session, ctx.actor, "lab", patient, order=chosen.key if chosen else None, on=on, codes=codes,
          **({"completes_nothing": sorted(set(codes) - covered)} if set(codes) - covered else {}))
    session.flush()
    record = load_record(session, patient)
    if is_pernicious(record.lab_results()) and not patient.pernicious:
        patient.pernicious = True
        session.add(patient)
        audit(session, ctx.actor, "mark-pernicious", patient)
    replan(session, patient, ctx.calendar, ctx.today, policy=ctx.policy)
    return chosen


# -- decisions ---------------------------------------------------------------------


def _decide(session: Session, ctx: Context, patient: Patient, kind: DecisionKind, on: date,
            note: str | None = None) -> None:
    from models import Decision

    session.add(Decision(patient_id=_id(patient), kind=kind.value, on=on, note=note,
                         recorded_by=ctx.actor))
    audit(session, ctx.actor, kind.value, patient, on=on, **({"reason": note} if note else {}))
    session.flush()
    replan(session, patient, ctx.calendar, ctx.today, policy=ctx.policy)


def _regimen_decision(session: Session, ctx: Context, mrn: str, on: date | None,
                      protocol: str, kind: DecisionKind, what: str) -> Patient:
    on, patient, record, regimen = _open(session, ctx, mrn, on, what)
    if regimen.protocol != protocol:
        raise BadInput(f"{what} applies to {protocol} only; {mrn} is on {regimen.protocol}")
    if on < regimen.start:
        raise BadInput(
            f"{on.isoformat()} is before the start of {regimen.protocol} on {regimen.start.isoformat()}"
        )
    if any(d.kind == kind.value and d.on >= regimen.start for d in record.decisions_in_force):
        raise BadInput(f"{what} was already recorded for {mrn}")
    _not_before_last_dose(record, on, what)
    if kind == DecisionKind.END_LOADING and not _doses_of(record, regimen):
        raise BadInput(f"no loading dose of {regimen.protocol} was given to {mrn}: loading cannot end "
                       "before it began (record the doses given first)")
    return patient


def _doses_of(record: PatientRecord, regimen: Regimen) -> list[Dose]:
    """The doses in force given under ``regimen``."""
    prefix = f"r{regimen.number}:"
    return [d for d in record.doses_in_force if d.event_key.startswith(prefix)]


def _not_before_last_dose(record: PatientRecord, on: date, what: str) -> None:
    """A decision cannot be dated before a dose that was already given."""
    last = max((d.given_on for d in record.doses_in_force), default=None)
    if last is not None and on < last:
        raise BadInput(
            f"{what} on {on.isoformat()} is before the last dose given, on {last.isoformat()}"
        )


def end_loading(session: Session, ctx: Context, mrn: str, on: date | None = None) -> None:
    """hydroxo-neuro: no further neurological improvement; maintenance follows."""
    patient = _regimen_decision(session, ctx, mrn, on, "hydroxo-neuro", DecisionKind.END_LOADING,
                                "end-loading")
    _decide(session, ctx, patient, DecisionKind.END_LOADING, on or ctx.today)


def confirm_response(session: Session, ctx: Context, mrn: str, on: date | None = None) -> None:
    """cyano: clinical improvement and a reticulocyte response confirmed; phase 2 follows."""
    patient = _regimen_decision(session, ctx, mrn, on, "cyano", DecisionKind.CONFIRM_RESPONSE,
                                "confirm-response")
    _decide(session, ctx, patient, DecisionKind.CONFIRM_RESPONSE, on or ctx.today)


def review(session: Session, ctx: Context, mrn: str, on: date | None = None) -> None:
    """hydroxo-neuro: the review found improvement continuing; loading goes on."""
    on, patient, record, regimen = _open(session, ctx, mrn, on, "a review")
    if regimen.protocol != "hydroxo-neuro":
        raise BadInput(f"review applies to hydroxo-neuro only; {mrn} is on {regimen.protocol}")
    if any(d.kind == DecisionKind.END_LOADING.value and d.on >= regimen.start for d in record.decisions_in_force):
        raise BadInput(f"loading has ended for {mrn}: there is no review to record")
    _decide(session, ctx, patient, DecisionKind.REVIEW, on)


def discharge(session: Session, ctx: Context, mrn: str, reason: str, on: date | None = None) -> None:
    reason = reason.strip()
    if not reason:
        raise BadInput("--reason must not be empty")
    on, patient, record, _ = _open(session, ctx, mrn, on, "a discharge")
    first = min(r.start for r in record.regimens)
    if on < first:
        raise BadInput(f"{on.isoformat()} is before the start on {first.isoformat()}")
    _not_before_last_dose(record, on, "a discharge")
    patient.status = "discharged"
    patient.discharged_on = on
    patient.discharge_reason = reason[:400]
    session.add(patient)
    _decide(session, ctx, patient, DecisionKind.DISCHARGE, on, note=reason[:400])


def set_opt_out(session: Session, ctx: Context, mrn: str, opted_out: bool) -> bool:
    """Returns whether anything changed."""
    patient = get_patient(session, mrn, for_update=True)
    if patient.opted_out == opted_out:
        return False
    patient.opted_out = opted_out
    session.add(patient)
    audit(session, ctx.actor, "opt-out" if opted_out else "opt-in", patient)
    return True


def switch(session: Session, ctx: Context, mrn: str, protocol: str, on: date | None = None,
           maintenance_months: int | None = None) -> Regimen:
    """Move to another protocol from ``on``: as if enrolled then; labs keep their anchor."""
    from models import Decision

    chosen = get_protocol(protocol)
    months = check_maintenance_months(
        chosen, maintenance_months if maintenance_months is not None else chosen.default_maintenance_months
    )
    on, patient, record, current = _open(session, ctx, mrn, on, "a switch")
    if current.protocol == chosen.id:
        raise BadInput(f"{mrn} is already on {chosen.id}")
    if on < current.start:
        raise BadInput(f"a switch cannot come before the current regimen's start on {current.start.isoformat()}")
    _not_before_last_dose(record, on, "a switch")
    if chosen.id == "cyano" and renal_dysfunction(patient.renal_impairment, record.lab_results()):
        raise BadInput(RENAL_REFUSAL)
    regimen = Regimen(patient_id=_id(patient), number=current.number + 1, protocol=chosen.id,
                      start=on, maintenance_months=months)
    session.add(regimen)
    session.add(Decision(patient_id=_id(patient), kind=DecisionKind.SWITCH.value, on=on,
                         note=f"{current.protocol} -> {chosen.id}", recorded_by=ctx.actor))
    audit(session, ctx.actor, "switch", patient, frm=current.protocol, to=chosen.id, on=on)
    session.flush()
    replan(session, patient, ctx.calendar, ctx.today, policy=ctx.policy)
    return regimen


def protocols_json() -> list[dict[str, object]]:
    return [
        {
            "id": p.id, "drug": p.drug, "dose": p.dose, "route": p.route, "summary": p.summary,
            "loading": [
                {"label": ph.label, "doses": ph.doses, "intervals_days": list(ph.intervals),
                 "every_days": ph.every, "gap_days": ph.gap, "held_until_response": ph.gated}
                for ph in p.loading
            ],
            "maintenance_months": sorted(p.maintenance_months),
            "default_maintenance_months": p.default_maintenance_months,
        }
        for p in PROTOCOLS.values()
    ]


WORKLIST_FETCH = 1_000  # rows fetched from the cursor at a time (and alerts and drugs read per batch)


def worklist_key(row: Any) -> tuple[date, str, str, int, int]:
    """Where a row stands in the worklist's order: (due, mrn, kind, seq, event id)."""
    return (row.due, row.mrn, row.kind, row.seq, row.id)


def _worklist_query(session: Session, until: date, after: tuple[date, str, str, int, int] | None) -> Any:
    # The open events due by ``until``: on PostgreSQL written on ``OPEN_DUE``, the
    # expression ix_event_open_due indexes with its own statistics; elsewhere as the
    # WHERE of ix_event_planned_due. Either way only the rows that are due are read.
    if session.get_bind().dialect.name == "postgresql":
        due: Any = OPEN_DUE
        open_: tuple[Any, ...] = ()
    else:
        due, open_ = col(Event.due), (col(Event.status) == PLANNED,)
    query = (
        sa_select(col(Event.id), col(Event.patient_id), col(Event.key), col(Event.kind), col(Event.phase),
                  col(Event.seq), col(Event.label), col(Event.due), col(Event.status), col(Event.done_on),
                  col(Event.tests), col(Event.because), col(Patient.mrn), col(Patient.name))
        .select_from(Event)
        .join(Patient, col(Patient.id) == col(Event.patient_id))
        .where(*open_, due <= until, col(Patient.status) == "active")
    )
    if after is not None:  # the page after this row; `due >= ?` keeps the index range
        query = query.where(due >= after[0], tuple_(
            col(Event.due), col(Patient.mrn), col(Event.kind), col(Event.seq), col(Event.id)) > tuple_(*after))
    return query


def worklist(session: Session, until: date, *, after: tuple[date, str, str, int, int] | None = None,
             limit: int | None = None) -> Iterator[Any]:
    """Planned events due on or before ``until`` (so overdue ones too), for active patients,
    in (due, mrn, kind, seq) order: rows of the event's columns with the patient's ``mrn``
    and ``name``, streamed from the cursor (no ORM object, no list of them all), so a
    million patients' worklist runs in the memory of one batch.

    Reads the open events by due date (``ix_event_planned_due``; on PostgreSQL
    ``ix_event_open_due``): only rows that are due, never every patient.
    ``after`` (a ``worklist_key``) and ``limit`` read one page of it.
    """
    query = _worklist_query(session, until, after).order_by(
        col(Event.due), col(Patient.mrn), col(Event.kind), col(Event.seq), col(Event.id))
    if limit is not None:
        query = query.limit(limit)
    yield from session.execute(query, execution_options={"yield_per": WORKLIST_FETCH})


def worklist_count(session: Session, until: date, *, after: tuple[date, str, str, int, int] | None = None) -> int:
    """How many rows ``worklist`` lists (after ``after``): counted by the database."""
    return int(session.execute(sa_select(func.count()).select_from(_worklist_query(session, until, after).subquery()))
               .scalar_one())


# -- finding patients ----------------------------------------------------------------

PATIENT_STATUSES = ("active", "discharged", "all")


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_patients(session: Session, ctx: Context, *, search: str | None = None,
                  status: str = "active", after: str | None = None,
                  limit: int | None = None) -> list[dict[str, Any]]:
    """Patients by MRN: ``mrn``, ``name``, ``protocol`` (the current one), ``status``,
    ``next_due`` (the earliest planned event: ``date``, ``kind``, ``label``; null when
    none) and ``open_alerts`` (codes, most urgent first).

    ``search`` matches the start of the MRN or any part of the name, ignoring case.
    One query for the patients with their protocol and next event, one for their
    open alerts: no query per patient.
    """
    if status not in PATIENT_STATUSES:
        raise BadInput(f"--status {status!r}: choose one of {', '.join(PATIENT_STATUSES)}")
    nxt = aliased(Event)
    current = (
        select(Regimen.protocol).where(col(Regimen.patient_id) == col(Patient.id))
        .order_by(col(Regimen.number).desc()).limit(1).correlate(Patient).scalar_subquery()
    )
    kind_order = case({"dose": 0, "lab": 1, "review": 2}, value=col(nxt.kind), else_=9)
    next_id = (
        select(nxt.id).where(col(nxt.patient_id) == col(Patient.id), col(nxt.status) == Status.PLANNED.value)
        .order_by(col(nxt.due), kind_order, col(nxt.seq), col(nxt.id)).limit(1)
        .correlate(Patient).scalar_subquery()
    )
    query = (
        sa_select(col(Patient.id), col(Patient.mrn), col(Patient.name), col(Patient.status),
                  current.label("protocol"), col(Event.due), col(Event.kind), col(Event.label))
        .select_from(Patient)
        .join(Event, col(Event.id) == next_id, isouter=True)
        .order_by(col(Patient.mrn))
    )
    if status != "all":
        query = query.where(col(Patient.status) == status)
    if after is not None:  # a page after this MRN (exports read a million patients a page at a time)
        query = query.where(col(Patient.mrn) > after)
    if limit is not None:
        query = query.limit(limit)
    if search is not None and search.strip():
        text = _like_escape(search.strip().lower())
        query = query.where(or_(
            func.lower(col(Patient.mrn)).like(f"{text}%", escape="\\"),
            func.lower(col(Patient.name)).like(f"%{text}%", escape="\\"),
        ))
    rows: list[Any] = list(session.execute(query).all())
    alerts = open_alert_codes(session, [row[0] for row in rows])
    return [
        {
            "mrn": mrn, "name": name, "protocol": protocol, "status": patient_status,
            "next_due": {"date": due.isoformat(), "kind": kind, "label": label} if due else None,
            "open_alerts": alerts.get(pid, []),
        }
        for pid, mrn, name, patient_status, protocol, due, kind, label in rows
    ]


def open_alert_codes(session: Session, patient_ids: Sequence[int]) -> dict[int, list[str]]:
    """Each patient's open alert codes, most urgent first: one query per 10,000 patients."""
    from models import Alert

    rank = {s.value: r for s, r in domain.SEVERITY_RANK.items()}
    found: dict[int, list[tuple[int, str]]] = {}
    for chunk in chunked(list(patient_ids)):
        query = select(Alert.patient_id, Alert.severity, Alert.code).where(
            col(Alert.patient_id).in_(chunk), Alert.status == "open")
        for pid, severity, code in session.exec(query):
            found.setdefault(pid, []).append((rank.get(severity, 9), code))
    return {pid: [code for _, code in sorted(codes)] for pid, codes in found.items()}


# -- editing a patient's details -----------------------------------------------------

EDITABLE = ("name", "email", "phone", "neuro", "renal_impairment", "on_folic_acid")


def edit_patient(session: Session, ctx: Context, mrn: str, **changes: Any) -> Patient:
    """Change a patient's details; alerts are re-evaluated (renal impairment on
    ``cyano`` raises ``renal-cyano``; the nurse then switches the protocol).

    ``changes`` are keyed by ``EDITABLE``; a value of None (or a key left out)
    leaves that detail as it is, and ``""`` clears an email or phone number.
    Audited with the old and the new values of what changed.
    """
    unknown = sorted(set(changes) - set(EDITABLE))
    if unknown:
        raise BadInput(f"cannot edit {', '.join(unknown)}: editable are {', '.join(EDITABLE)}")
    wanted = {k: v for k, v in changes.items() if v is not None}
    if not wanted:
        raise BadInput("nothing to change: give --name, --email/--no-email, --phone/--no-phone, "
                       "--neuro/--no-neuro, --renal-impairment/--no-renal-impairment "
                       "or --on-folic-acid/--no-folic-acid")
    new: dict[str, Any] = {}
    for key, value in wanted.items():
        if key == "name":
            new[key] = check_name(str(value))
        elif key == "email":
            new[key] = check_email(str(value)) if str(value).strip() else None
        elif key == "phone":
            new[key] = check_phone(str(value)) if str(value).strip() else None
        else:
            new[key] = bool(value)
    patient = get_patient(session, mrn, for_update=True)
    old = {k: getattr(patient, k) for k in new}
    changed = {k for k in new if new[k] != old[k]}
    if not changed:
        return patient
    for key in changed:
        setattr(patient, key, new[key])
    patient.updated_at = utcnow()
    session.add(patient)
    audit(session, ctx.actor, "edit", patient,
          old={k: old[k] for k in sorted(changed)}, new={k: new[k] for k in sorted(changed)})
    session.flush()
    replan(session, patient, ctx.calendar, ctx.today, policy=ctx.policy)
    return patient


# -- corrections -----------------------------------------------------------------------


def _event_of(session: Session, patient: Patient, event_id: int) -> Event:
    event = session.get(Event, event_id)
    if event is None or event.patient_id != patient.id:
        raise BadInput(f"{patient.mrn} has no event {event_id}: see `cobalt schedule {patient.mrn}` for the ids")
    return event


def _says(event: Event) -> str:
    return f"event {event.id} ({event.kind} {event.label} {event.seq})"


def _regimen_of(record: PatientRecord, key: str) -> Regimen | None:
    """The regimen a dose or review key belongs to (``r2:...`` -> regimen 2)."""
    head = key.split(":", 1)[0]
    if not head.startswith("r") or not head[1:].isdigit():
        return None
    return next((r for r in record.regimens if r.number == int(head[1:])), None)


def _completing_records(record: PatientRecord, event: Event) -> list[Dose | LabResult | Decision]:
    """The records in force that completed a done event: the dose given, the lab
    order's results, the review or decision."""
    if event.kind == "dose":
        return [d for d in record.doses_in_force if d.given_on == event.done_on]
    if event.kind == "lab":
        return [r for r in record.results_in_force if r.order_key == event.key]
    regimen = _regimen_of(record, event.key)
    start = regimen.start if regimen else date.min
    kinds = ([DecisionKind.CONFIRM_RESPONSE] if event.label == "response-gate"
             else [DecisionKind.REVIEW, DecisionKind.END_LOADING])
    for kind in kinds:  # a neuro review is answered by a review, else by the end of loading
        found = [d for d in record.decisions_in_force
                 if d.kind == kind.value and d.on == event.done_on and d.on >= start]
        if found:
            return [found[0]]
    return []


def void_record(session: Session, ctx: Context, mrn: str, event_id: int, reason: str) -> Event:
    """The record that completed ``event_id`` was entered in error: it stays, marked
    void, and no longer counts; the patient is replanned as if it had never been made."""
    from models import Decision, LabResult

    reason = reason.strip()
    if not reason:
        raise BadInput("--reason must not be empty: say why the record is void")
    patient = get_patient(session, mrn, for_update=True)
    check_active(patient)
    event = _event_of(session, patient, event_id)
    if event.status != Status.DONE:
        raise BadInput(f"{_says(event)} is {event.status}: there is no record of it to void")
    record = load_record(session, patient)
    found = _completing_records(record, event)
    if not found:
        raise BadInput(f"{_says(event)} was not completed by a record Cobalt can void")
    if isinstance(found[0], Decision):
        later = [d.given_on for d in record.doses_in_force if d.given_on > found[0].on]
        if later:
            raise BadInput(
                f"doses were given after the {found[0].kind} of {found[0].on.isoformat()} "
                f"(from {min(later).isoformat()}): void those first"
            )
    old = {"status": event.status, "done_on": event.done_on}
    now = utcnow()
    for row in found:
        row.voided_at, row.voided_by, row.void_reason = now, ctx.actor[:64], reason[:400]
        session.add(row)
    session.flush()
    replan(session, patient, ctx.calendar, ctx.today, policy=ctx.policy)
    if isinstance(found[0], LabResult):
        pernicious = is_pernicious(record.lab_results())  # the results just voided no longer count
        if pernicious != patient.pernicious:
            patient.pernicious = pernicious
            session.add(patient)
            audit(session, ctx.actor, "mark-pernicious" if pernicious else "unmark-pernicious", patient,
                  reason=reason)
    audit(session, ctx.actor, "void", patient, event=event.id, key=event.key, record=_record_kind(found[0]),
          records=[row.id for row in found], old=old,
          new={"status": event.status, "done_on": event.done_on}, reason=reason)
    session.flush()
    return event


def _record_kind(row: Dose | LabResult | Decision) -> str:
    from models import Dose, LabResult

    if isinstance(row, Dose):
        return "dose"
    if isinstance(row, LabResult):
        return "lab results"
    return row.kind


def move_event(session: Session, ctx: Context, mrn: str, event_id: int, to: date,
               reason: str | None = None) -> Event:
    """A planned dose, lab order or review is moved to ``to`` (the patient cannot come
    on its day); the doses after it count from ``to``. Refused for an event that is
    done, cancelled or held, for a day in the past or a closed day."""
    from models import EventMove

    reason = (reason or "").strip() or None
    patient = get_patient(session, mrn, for_update=True)
    check_active(patient)
    event = _event_of(session, patient, event_id)
    if event.status == Status.DONE:
        raise BadInput(f"{_says(event)} is done (on {event.done_on}): a done event cannot be moved")
    if event.status == Status.CANCELLED:
        raise BadInput(f"{_says(event)} is cancelled: a cancelled event cannot be moved")
    if event.status == Status.HELD:
        raise BadInput(f"{_says(event)} is held until the response is confirmed: it has no date to move yet")
    if to < ctx.today:
        raise BadInput(f"--to {to.isoformat()} is in the past (today is {ctx.today.isoformat()})")
    if not ctx.calendar.is_open(to):
        raise BadInput(f"--to {to.isoformat()} is a closed day ({ctx.calendar.closed_reason(to)}): "
                       "choose a day the clinic is open")
    if to > ctx.today + timedelta(days=START_AT_MOST_DAYS_AHEAD):
        raise BadInput(f"--to {to.isoformat()} is more than a year ahead: check the year")
    if to == event.due:
        raise BadInput(f"{_says(event)} is already due on {to.isoformat()}")
    record = load_record(session, patient)
    if event.kind == "dose":
        before = _dose_before(record, event)
        if before is not None and to <= before[1]:
            raise BadInput(f"--to {to.isoformat()} is not after the dose before it ({before[0]}, "
                           f"{before[1].isoformat()}): doses keep their order")
    old = {"due": event.due}
    session.add(EventMove(patient_id=_id(patient), event_key=event.key, moved_from=event.due, moved_to=to,
                          reason=reason[:400] if reason else None, recorded_by=ctx.actor))
    session.flush()
    replan(session, patient, ctx.calendar, ctx.today, policy=ctx.policy)
    audit(session, ctx.actor, "move", patient, event=event.id, key=event.key, old=old,
          new={"due": event.due}, reason=reason)
    session.flush()
    return event


def _dose_before(record: PatientRecord, event: Event) -> tuple[str, date] | None:
    """The dose of the same regimen just before ``event`` in the plan, and its date
    (given, or due)."""
    prefix = event.key.split(":", 1)[0] + ":dose:"  # "r1:dose:loading:2" -> "r1:dose:"

    def order(e: Event) -> tuple[int, int]:
        return (0 if e.phase == "loading" else 1, e.seq)

    earlier = [e for e in record.events if e.key.startswith(prefix) and order(e) < order(event)
               and e.status != Status.CANCELLED]
    if not earlier:
        return None
    last = max(earlier, key=order)
    return f"{last.phase} dose {last.seq}", last.done_on or last.due


# -- the audit trail -------------------------------------------------------------------


def audit_trail(session: Session, *, mrn: str | None = None, since: date | None = None,
                tz: tzinfo = UTC) -> list[dict[str, Any]]:
    """The audit trail, newest first: ``at``, ``by``, ``action``, ``mrn``, ``details``
    (old and new values, the reason). ``since`` is a day in ``tz`` (the clinic's)."""
    from models import Audit

    query = (
        select(Audit, Patient.mrn).join(Patient, col(Patient.id) == col(Audit.patient_id), isouter=True)
        .order_by(col(Audit.at).desc(), col(Audit.id).desc())
    )
    if mrn is not None:
        patient = get_patient(session, mrn)
        query = query.where(col(Audit.patient_id) == patient.id)
    if since is not None:
        query = query.where(col(Audit.at) >= datetime.combine(since, time(0), tzinfo=tz).astimezone(UTC))
    out = []
    for row, row_mrn in session.exec(query):
        try:
            details = json.loads(row.detail) if row.detail else {}
        except ValueError:
            details = {"text": row.detail}
        out.append({"at": row.at.isoformat(), "by": row.actor, "action": row.action, "mrn": row_mrn,
                    "details": details})
    return out


# -- the worklist ----------------------------------------------------------------------


def worklist_items(session: Session, *, on: date, until: date,
                   after: tuple[date, str, str, int, int] | None = None,
                   limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The worklist as rows (``due --json``, the web's worklist): every planned event due
    on or before ``until`` for active patients, each with its ``mrn``, ``name``,
    ``overdue`` (due before ``on``), the patient's open ``alerts``, and what to give:
    ``drug`` and ``amount`` for a dose (null otherwise), ``tests`` for a lab order.

    Yields them as the database returns them: the alerts and drugs are read for each
    batch of ``WORKLIST_FETCH`` rows, so memory stays that of a batch whatever the
    clinic's size. Consume it inside the session's transaction."""
    from scheduler.safety import open_alerts_by_patient

    rows = worklist(session, until, after=after, limit=limit)
    while batch := list(islice(rows, WORKLIST_FETCH)):
        ids = sorted({r.patient_id for r in batch})
        alerts = open_alerts_by_patient(session, ids)
        drugs = regimen_drugs(session, ids)
        for row in batch:
            item = event_json(row)
            drug, amount = drug_of(row, drugs)
            item.update(mrn=row.mrn, name=row.name, overdue=row.due < on, drug=drug, amount=amount,
                        alerts=alerts.get(row.patient_id, []))
            yield item


# -- what schedule shows of corrections -------------------------------------------------


def voided_json(record: PatientRecord) -> list[dict[str, Any]]:
    """Each void record: ``what``, ``when`` (voided at), ``by`` (whom), ``why``; with
    ``record`` (dose, lab results, or the decision), ``on`` (its date) and
    ``recorded_by``. Oldest first."""
    out: list[dict[str, Any]] = []
    for dose in record.doses:
        if dose.voided_at is not None:
            out.append(_void_item(dose, "dose", dose.given_on, f"dose given {dose.given_on.isoformat()}"))
    by_order: dict[tuple[str | None, date, datetime], list[LabResult]] = {}
    for result in record.results:
        if result.voided_at is not None:
            by_order.setdefault((result.order_key, result.taken_on, result.voided_at), []).append(result)
    for (order_key, taken_on, _), rows in by_order.items():
        label = order_label(order_key) or "no order"
        codes = ", ".join(r.code for r in sorted(rows, key=lambda r: r.id or 0))
        out.append(_void_item(rows[0], "lab results", taken_on,
                              f"lab results ({label}) taken {taken_on.isoformat()}: {codes}"))
    for decision in record.decisions:
        if decision.voided_at is not None:
            out.append(_void_item(decision, decision.kind, decision.on,
                                  f"{decision.kind} recorded for {decision.on.isoformat()}"))
    return sorted(out, key=lambda v: v["when"])


def _void_item(row: Dose | LabResult | Decision, kind: str, on: date, what: str) -> dict[str, Any]:
    assert row.voided_at is not None
    return {"what": what, "when": row.voided_at.isoformat(), "by": row.voided_by, "why": row.void_reason,
            "record": kind, "on": on.isoformat(), "recorded_by": row.recorded_by}


def lab_missing(record: PatientRecord, event: Event) -> list[str]:
    """The tests of a done lab order still without a result (``missing``)."""
    recorded = [r.code for r in record.results_in_force if r.order_key == event.key]
    return labs.missing_tests(event.tests.split(), recorded)
# -- reminders -----------------------------------------------------------------------

LOADING_REMINDER_CHOICES = ("every-dose", "first-of-week")


def set_loading_reminders(session: Session, ctx: Context, mrn: str, choice: str) -> bool:
    """Which loading doses the patient is reminded of: ``every-dose`` (the default) or
    ``first-of-week`` (the first of each calendar week). Returns whether anything changed."""
    if choice not in LOADING_REMINDER_CHOICES:
        raise BadInput(f"--loading {choice!r}: choose {' or '.join(LOADING_REMINDER_CHOICES)}")
    patient = get_patient(session, mrn, for_update=True)
    if patient.loading_reminders == choice:
        return False
    audit(session, ctx.actor, "reminders", patient, loading=choice, was=patient.loading_reminders)
    patient.loading_reminders = choice
    session.add(patient)
    return True
