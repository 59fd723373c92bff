"""What each command does, in one transaction each: check the request, record it,
audit it and replan the patient. Every check runs before anything is written,
and any error rolls the whole transaction back, so bad input changes nothing.

``today`` (the clinic's local date) and ``actor`` come from the edge; nothing
here reads the clock.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlmodel import Session, col, select

from models import Decision, Dose, Event, LabResult, Patient, Regimen
from scheduler import domain, labs
from scheduler.alerts import DEFAULT_POLICY, AlertPolicy, is_pernicious, renal_dysfunction
from scheduler.clinic_calendar import ClinicCalendar
from scheduler.domain import DecisionKind, Status
from scheduler.errors import BadInput, FieldError
from scheduler.protocols import PROTOCOLS, check_maintenance_months, get_protocol
from scheduler.store import (
    PatientRecord,
    audit,
    get_patient,
    load_record,
    replan,
)

# Clinic policy: a planned start further ahead than this is taken for a typo.
START_AT_MOST_DAYS_AHEAD = 366

RENAL_REFUSAL = (
    "cyanocobalamin must not be used in renal dysfunction (eGFR below 60 or renal impairment): "
    "use hydroxocobalamin (--protocol hydroxo, or hydroxo-neuro with neurological symptoms)"
)


@dataclass(frozen=True)
class Context:
    """What every command needs from the edge: the clinic's calendar, the local
    date (read once), who is acting, and the clinic's alert thresholds."""

    calendar: ClinicCalendar
    today: date
    actor: str
    policy: AlertPolicy = DEFAULT_POLICY


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
    mrn, name = mrn.strip(), name.strip()
    if not mrn:
        raise FieldError("mrn", f"{name_of('mrn')} must not be empty")
    if not name:
        raise FieldError("name", f"{name_of('name')} must not be empty")
    for field, printable in (("mrn", mrn), ("name", name), ("email", email or "")):
        if not printable.isprintable():
            raise FieldError(field, f"{name_of(field)} must not contain control characters (newlines, tabs, ...)")
    if email is not None:
        email = email.strip()
        if "@" not in email or " " in email or email.startswith("@") or email.endswith("@"):
            raise FieldError("email", f"{name_of('email')} {email!r} is not an email address")
    for field, given, longest in (("mrn", mrn, 64), ("name", name, 200), ("email", email, 320)):
        if given is not None and len(given) > longest:  # the columns' lengths
            raise FieldError(field, f"{name_of(field)} is {len(given)} characters long: at most {longest} are allowed")
    try:
        chosen = get_protocol(protocol or ("hydroxo-neuro" if neuro else "hydroxo"))
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
               events: Sequence[Any]) -> Any:
    """The planned dose a dose given on ``on`` completes: the next planned dose of the
    current regimen. ``given`` are the dates doses were given, ``decisions`` and
    ``events`` the patient's (rows or the planner's values: ``kind``/``on``;
    ``key``/``status``/``due``/``seq``)."""
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
    return min(planned, key=lambda e: (e.due, e.seq))


def give(session: Session, ctx: Context, mrn: str, on: date | None = None) -> Event:
    """Record the next planned dose of the current regimen as given on ``on``."""
    on, patient, record, regimen = _open(session, ctx, mrn, on, "a dose")
    event: Event = check_dose(
        ctx, mrn, on, regimen_number=regimen.number, regimen_start=regimen.start,
        regimen_protocol=regimen.protocol, given=[d.given_on for d in record.doses],
        decisions=record.decisions, events=record.events,
    )
    session.add(Dose(patient_id=_id(patient), event_key=event.key, given_on=on, recorded_by=ctx.actor))
    audit(session, ctx.actor, "give", patient, event=event.key, given_on=on)
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


def choose_order(events: Sequence[Any], mrn: str, on: date, order: str | None) -> Any | None:
    """The open lab order results taken on ``on`` complete: the one named ``order``,
    else the open one whose due date is nearest (the earlier on a tie); None if none is open."""
    open_orders = [e for e in events if e.kind == "lab" and e.status == Status.PLANNED]
    if order is not None:
        named = [e for e in open_orders if e.label == order]
        if not named:
            labels = sorted({e.label for e in open_orders})
            raise BadInput(
                f"no open lab order {order!r} for {mrn}"
                + (f": open ones are {', '.join(labels)}" if labels else "")
            )
        open_orders = named
    return min(open_orders, key=lambda e: (abs((e.due - on).days), e.due), default=None)


def record_lab(
    session: Session, ctx: Context, mrn: str, results: Sequence[str], *, on: date | None = None,
    order: str | None = None,
) -> Event | None:
    """Record results; complete the named open order, else the open one nearest ``on``."""
    on = on or ctx.today
    parsed = check_results(results)
    codes = [code for code, _, _ in parsed]
    patient = get_patient(session, mrn, for_update=True)
    check_active(patient)
    not_future(ctx, on, "a lab result")
    record = load_record(session, patient)
    chosen: Event | None = choose_order(record.events, mrn, on, order)
    for code, value, text in parsed:
        session.add(LabResult(
            patient_id=_id(patient), code=code, value=value, text=text,
            unit=labs.CATALOG[code].unit or "", taken_on=on,
            order_key=chosen.key if chosen else None, recorded_by=ctx.actor,
        ))
    audit(session, ctx.actor, "lab", patient, order=chosen.key if chosen else None, on=on, codes=codes)
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
    session.add(Decision(patient_id=_id(patient), kind=kind.value, on=on, note=note,
                         recorded_by=ctx.actor))
    audit(session, ctx.actor, kind.value, patient, on=on)
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
    if any(d.kind == kind.value and d.on >= regimen.start for d in record.decisions):
        raise BadInput(f"{what} was already recorded for {mrn}")
    _not_before_last_dose(record, on, what)
    return patient


def _not_before_last_dose(record: PatientRecord, on: date, what: str) -> None:
    """A decision cannot be dated before a dose that was already given."""
    last = max((d.given_on for d in record.doses), default=None)
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
    if any(d.kind == DecisionKind.END_LOADING.value and d.on >= regimen.start for d in record.decisions):
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


def worklist(session: Session, until: date) -> list[tuple[Event, Patient]]:
    """Planned events due on or before ``until`` (so overdue ones too), for active patients.

    Reads through the (status, due) index: only rows that are due, never every patient.
    """
    query = (
        select(Event, Patient)
        .join(Patient, col(Patient.id) == col(Event.patient_id))
        .where(Event.status == Status.PLANNED.value, col(Event.due) <= until,
               Patient.status == "active")
        .order_by(col(Event.due), col(Patient.mrn), col(Event.kind), col(Event.seq))
    )
    return [(e, p) for e, p in session.exec(query)]
