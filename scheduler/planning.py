"""The pure planner: from an enrolment, what was recorded, the clinic calendar and
a date, the whole timeline of a patient's treatment.

No database, no clock, no I/O. ``plan`` is called after every record (a dose, a
lab result, a decision) and by the scheduler pass when a plan runs short; what
it returns is the truth the database is brought in line with.

The rules, from SPEC section 2:

- The first loading dose is due on the regimen's start date.
- Each later dose is due one interval after the previous dose: after the date it
  was given, or, while not given, after its own due date. So a late (or early)
  dose moves every dose after it, and an overdue dose keeps its due date.
- A dose, lab or review due on a closed day is due on the next open day; the
  next interval counts from that shifted date.
- Maintenance starts one maintenance interval after the last loading dose and is
  planned at least ``ROLL_FORWARD_BELOW_MONTHS`` ahead, for life: the furthest
  planned dose is always a year or more away (until the pass replans).
- Labs hang off the treatment start: the date the first dose was given, or the
  planned start until then. A switch of protocol does not move them.

Corrections (SPEC section 7):

- A voided record (a dose, a decision, lab results entered in error) is not
  history: the plan is made as if it had never been recorded. The doses given
  fill a regimen's dose slots of their phase (loading or maintenance) in the
  order they were given, so voiding a dose in the middle leaves no gap.
- A moved event (``History.moves``) is due on the day it was moved to; the
  doses after it count from that day. A dose given wins over its move.
"""

from __future__ import annotations

import zlib
from calendar import monthrange
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from functools import lru_cache

from scheduler.clinic_calendar import ClinicCalendar
from scheduler.domain import (
    Decision,
    DecisionKind,
    Enrolment,
    History,
    Kind,
    Phase,
    PlannedEvent,
    Regimen,
    Status,
)
from scheduler.labs import ANNUAL, MONITORING_PLAN
from scheduler.protocols import (
    RESPONSE_GATE_AFTER_DAYS,
    LoadingPhase,
    get_protocol,
)

# The plan reaches this far ahead of the day it is made ...
PLAN_AHEAD_MONTHS = 13
# ... and the scheduler pass replans a patient before it reaches less than this.
ROLL_FORWARD_BELOW_MONTHS = 12

NEURO_REVIEW_LABEL = "neuro-review"
RESPONSE_GATE_LABEL = "response-gate"

_KIND_ORDER = {Kind.DOSE: 0, Kind.LAB: 1, Kind.REVIEW: 2}


def add_months_plain(day: date, months: int) -> date:
    """Calendar months, clamped at month end: 31 Jan + 1 month = 28/29 Feb."""
    month0 = day.year * 12 + day.month - 1 + months
    year, month = divmod(month0, 12)
    return date(year, month + 1, min(day.day, monthrange(year, month + 1)[1]))


# The same, remembered: a cohort's plans ask for the same few thousand dates over and over.
add_months = lru_cache(maxsize=1 << 16)(add_months_plain)

# ``planned_through`` is kept up to SPREAD_DAYS - 1 days short of where the plan really
# reaches, by an offset fixed per patient (from the MRN), so that plans made on the same
# day (an import, one roll-forward) fall due for the next roll-forward on different days:
# a steady daily share instead of the whole cohort on one day (docs/decisions.md).
SPREAD_DAYS = 28


def spread_offset(mrn: str) -> int:
    """The days a patient's ``planned_through`` is kept short of the plan's reach."""
    return zlib.crc32(mrn.encode("utf-8")) % SPREAD_DAYS


def horizon(as_of: date) -> date:
    """The last day a plan made on ``as_of`` reaches."""
    return add_months(as_of, PLAN_AHEAD_MONTHS)


def plan(
    enrolment: Enrolment,
    history: History,
    calendar: ClinicCalendar,
    as_of: date,
    *,
    reach: date | None = None,
) -> list[PlannedEvent]:
    """Every event of the patient's treatment, past and planned, in due-date order.

    ``as_of`` only sets how far ahead maintenance and annual labs are planned
    (``reach``: at least this far, where an earlier plan already reached);
    a discharged patient's plan is fixed at the discharge date.
    """
    history = history.in_force()
    closed_on = enrolment.discharged_on
    planned_to = horizon(closed_on or as_of)
    if reach is not None and closed_on is None:
        planned_to = max(planned_to, reach)  # a plan never pulls back what it already reached
    events: list[PlannedEvent] = []
    regimens = enrolment.regimens
    for number, regimen in enumerate(regimens, start=1):
        ends_on = regimens[number].start if number < len(regimens) else closed_on
        decisions = [
            d for d in history.decisions
            if d.on >= regimen.start
            and (ends_on is None or d.on < ends_on or d.kind == DecisionKind.DISCHARGE)
        ]
        regimen_events = _RegimenPlanner(
            prefix=f"r{number}",
            regimen=regimen,
            history=history,
            decisions=decisions,
            calendar=calendar,
            planned_to=horizon(ends_on) if ends_on else planned_to,
        ).plan()
        if ends_on is not None:
            regimen_events = _cancel_open(regimen_events)
        events.extend(regimen_events)

    labs = _plan_labs(enrolment, history, calendar, planned_to)
    if closed_on is not None:
        labs = _cancel_open(labs)
    events.extend(labs)
    events.sort(key=lambda e: (e.due, _KIND_ORDER[e.kind], e.seq))
    return events


def lab_anchor(enrolment: Enrolment, history: History) -> tuple[date, str]:
    """The treatment start labs count from, and how to say it."""
    given = [dose.given_on for dose in history.doses]
    if given:
        first = min(given)
        return first, f"the first dose, given {first.isoformat()}"
    start = enrolment.planned_start
    return start, f"the planned start, {start.isoformat()}"


def _cancel_open(events: Iterable[PlannedEvent]) -> list[PlannedEvent]:
    return [
        e if e.status in (Status.DONE, Status.CANCELLED) else replace(e, status=Status.CANCELLED)
        for e in events
    ]


def _shifted(calendar: ClinicCalendar, raw: date, because: str) -> tuple[date, str]:
    due = calendar.next_open(raw)
    if due != raw:
        because = f"{because}; moved from {raw:%a} {raw.isoformat()}, {calendar.closed_reason(raw)}"
    return due, because


def _moved(calendar: ClinicCalendar, history: History, key: str, due: date, because: str
           ) -> tuple[date, str]:
    """An event moved by the clinic is due on the day it was moved to (the next open
    day, should that day have closed since)."""
    moved = history.moves.get(key)
    if moved is None or moved == due:
        return due, because
    to = calendar.next_open(moved)
    return to, f"moved to {to.isoformat()} from {due.isoformat()} (due: {because})"


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


@dataclass
class _Anchor:
    """The dose the next one counts from."""

    on: date
    name: str  # "dose 6", "maintenance dose 2"
    given: bool
    text: str | None = None  # instead of the usual words

    def says(self) -> str:
        if self.text:
            return self.text
        return f"{self.name}, {'given' if self.given else 'due'} {self.on.isoformat()}"


@dataclass
class _RegimenPlanner:
    prefix: str
    regimen: Regimen
    history: History
    decisions: Sequence[Decision]
    calendar: ClinicCalendar
    planned_to: date

    def __post_init__(self) -> None:
        self.protocol = get_protocol(self.regimen.protocol)
        self.events: list[PlannedEvent] = []
        self.seq = 0
        self.previous: _Anchor | None = None
        self.held = False
        # The regimen's doses given, in the order given: each fills the next dose slot
        # of its phase (loading or maintenance, as recorded when it was given).
        mine = [d for d in self.history.doses if d.key.startswith(f"{self.prefix}:")]
        self.given = sorted(d.given_on for d in mine)
        self.unfilled = {
            phase: sorted(d.given_on for d in mine if d.key.startswith(f"{self.prefix}:dose:{phase.value}:"))
            for phase in (Phase.LOADING, Phase.MAINTENANCE)
        }

    def decided(self, kind: DecisionKind) -> date | None:
        dates = [d.on for d in self.decisions if d.kind == kind]
        return min(dates) if dates else None

    @property
    def treatment_start(self) -> date:
        return self.given[0] if self.given else self.regimen.start

    def plan(self) -> list[PlannedEvent]:
        loading_done = True
        for phase in self.protocol.loading:
            if phase.gated:
                self.gate()
            if phase.open_ended:
                loading_done = self.open_ended_loading(phase)
            else:
                self.fixed_loading(phase)
        if loading_done:
            self.maintenance()
        return self.events

    # -- loading ---------------------------------------------------------------

    def dose(self, phase: Phase, label: str, seq: int, raw: date, because: str,
             name: str) -> PlannedEvent:
        key = f"{self.prefix}:dose:{phase.value}:{seq}"
        due, because = _shifted(self.calendar, raw, because)
        unfilled = self.unfilled[phase]
        given_on = unfilled.pop(0) if unfilled else None
        if given_on is None:
            due, because = _moved(self.calendar, self.history, key, due, because)
        status = Status.DONE if given_on is not None else Status.HELD if self.held else Status.PLANNED
        event = PlannedEvent(
            key=key, kind=Kind.DOSE, phase=phase, seq=seq, label=label, due=due,
            status=status, because=because, done_on=given_on,
        )
        self.events.append(event)
        self.previous = _Anchor(given_on or due, name, given_on is not None)
        return event

    def loading_dose(self, phase: LoadingPhase, raw: date, because: str) -> PlannedEvent:
        self.seq += 1
        return self.dose(Phase.LOADING, phase.label, self.seq, raw, because, f"dose {self.seq}")

    def first_of_phase(self, phase: LoadingPhase) -> tuple[date, str]:
        if self.previous is None:
            return self.regimen.start, f"first dose, on the start date {self.regimen.start.isoformat()}"
        raw = self.previous.on + timedelta(days=phase.gap)
        because = f"{_plural(phase.gap, 'day')} after {self.previous.says()}"
        if phase.gated and not self.held:
            confirmed = self.decided(DecisionKind.CONFIRM_RESPONSE)
            assert confirmed is not None
            if confirmed > raw:
                raw, because = confirmed, f"response confirmed {confirmed.isoformat()}"
        elif phase.gated:
            gate = self.gate_due
            if gate > raw:
                raw, because = gate, f"held until the response is confirmed (gate due {gate.isoformat()})"
        return raw, because

    def fixed_loading(self, phase: LoadingPhase) -> None:
        raw, because = self.first_of_phase(phase)
        self.loading_dose(phase, raw, because)
        for interval in phase.intervals:
            assert self.previous is not None
            raw = self.previous.on + timedelta(days=interval)
            self.loading_dose(phase, raw, f"{_plural(interval, 'day')} after {self.previous.says()}")

    def open_ended_loading(self, phase: LoadingPhase) -> bool:
        """Given doses, then only the next one. True once loading has ended."""
        assert phase.every is not None
        ended_on = self.decided(DecisionKind.END_LOADING)
        raw, because = self.first_of_phase(phase)
        while True:
            event = self.loading_dose(phase, raw, because)
            if event.status != Status.DONE:
                break
            assert self.previous is not None
            raw = self.previous.on + timedelta(days=phase.every)
            because = f"{_plural(phase.every, 'day')} after {self.previous.says()}"
        self.neuro_reviews(ended_on)
        if ended_on is None:
            return False
        # No further improvement: the next loading dose is not given; maintenance
        # counts from the last dose that was.
        self.events[self.events.index(event)] = replace(event, status=Status.CANCELLED)
        given = [e for e in self.events if e.kind == Kind.DOSE and e.status == Status.DONE]
        if given:
            last = given[-1]
            assert last.done_on is not None
            self.previous = _Anchor(last.done_on, f"dose {last.seq}", True)
        else:
            self.previous = _Anchor(ended_on, "", True, f"loading ended {ended_on.isoformat()}")
        return True

    # -- reviews ---------------------------------------------------------------

    def review(self, label: str, seq: int, raw: date, because: str, done_on: date | None,
               status: Status) -> PlannedEvent:
        key = f"{self.prefix}:review:{label}:{seq}"
        due, because = _shifted(self.calendar, raw, because)
        if status == Status.PLANNED:
            due, because = _moved(self.calendar, self.history, key, due, because)
        event = PlannedEvent(
            key=key, kind=Kind.REVIEW, phase=Phase.REVIEW,
            seq=seq, label=label, due=due, status=status, because=because, done_on=done_on,
        )
        self.events.append(event)
        return event

    def neuro_reviews(self, ended_on: date | None) -> None:
        """Every 14 days from the treatment start while loading is open; only the
        next one is planned. A review on a date answers every review due by then."""
        start = self.treatment_start
        done = sorted(d.on for d in self.decisions if d.kind == DecisionKind.REVIEW)
        step = 0
        last: date | None = None
        for seq in range(1, len(done) + 2):
            step += 1
            while last is not None and start + timedelta(days=self.calendar.neuro_review_days * step) <= last:
                step += 1
            days = self.calendar.neuro_review_days * step
            because = (f"{days} days after the treatment start {start.isoformat()}: "
                       "is neurological improvement continuing?")
            raw = start + timedelta(days=days)
            if seq <= len(done):
                last = done[seq - 1]
                self.review(NEURO_REVIEW_LABEL, seq, raw, because, last, Status.DONE)
            elif ended_on is None:
                self.review(NEURO_REVIEW_LABEL, seq, raw, because, None, Status.PLANNED)
            elif ended_on >= self.calendar.next_open(raw):
                self.review(NEURO_REVIEW_LABEL, seq, raw, f"{because}; loading ended {ended_on.isoformat()}",
                            ended_on, Status.DONE)
            else:
                self.review(NEURO_REVIEW_LABEL, seq, raw, because, None, Status.CANCELLED)

    @property
    def gate_due(self) -> date:
        due = self.calendar.next_open(self.treatment_start + timedelta(days=RESPONSE_GATE_AFTER_DAYS))
        return _moved(self.calendar, self.history, f"{self.prefix}:review:{RESPONSE_GATE_LABEL}:1", due, "")[0]

    def gate(self) -> None:
        confirmed = self.decided(DecisionKind.CONFIRM_RESPONSE)
        start = self.treatment_start
        because = (
            f"{RESPONSE_GATE_AFTER_DAYS} days after the treatment start {start.isoformat()}: "
            "confirm clinical improvement and a reticulocyte response before phase 2"
        )
        raw = start + timedelta(days=RESPONSE_GATE_AFTER_DAYS)
        status = Status.DONE if confirmed else Status.PLANNED
        self.review(RESPONSE_GATE_LABEL, 1, raw, because, confirmed, status)
        self.held = confirmed is None

    # -- maintenance -----------------------------------------------------------

    def maintenance(self) -> None:
        """Every dose due by the horizon, and the first one after it: so the furthest
        planned dose is more than ``PLAN_AHEAD_MONTHS`` ahead when the plan is made,
        and still at least ``ROLL_FORWARD_BELOW_MONTHS`` ahead when the pass replans."""
        months = self.regimen.maintenance_months
        seq = 0
        while True:
            assert self.previous is not None
            raw = add_months(self.previous.on, months)
            seq += 1
            because = f"{_plural(months, 'month')} after {self.previous.says()}"
            event = self.dose(Phase.MAINTENANCE, self.protocol.maintenance_label, seq, raw, because,
                              f"maintenance dose {seq}")
            if event.due > self.planned_to:
                return


def _plan_labs(enrolment: Enrolment, history: History, calendar: ClinicCalendar,
               planned_to: date) -> list[PlannedEvent]:
    anchor, anchor_says = lab_anchor(enrolment, history)
    wanted: list[tuple[str, str, date, tuple[str, ...], str]] = []  # key, label, raw, tests, because
    for rule in MONITORING_PLAN:
        raw = add_months(anchor + timedelta(days=rule.days), rule.months)
        if rule.days == 0 and rule.months == 0:
            because = f"at the treatment start: {anchor_says}"
        elif rule.months:
            because = f"{_plural(rule.months, 'month')} after {anchor_says}"
        else:
            because = f"{_plural(rule.days, 'day')} after {anchor_says}"
        wanted.append((f"lab:{rule.label}", rule.label, raw, tuple(rule.tests), because))
    n = 0
    while True:
        n += 1
        months = ANNUAL.months + ANNUAL.months * n
        raw = add_months(anchor, months)
        if calendar.next_open(raw) > planned_to:
            break
        because = f"{_plural(months, 'month')} after {anchor_says} (annual check {n})"
        wanted.append((f"lab:{ANNUAL.label}:{n}", ANNUAL.label, raw, tuple(ANNUAL.tests), because))
    for order in history.extra_lab_orders:
        wanted.append((f"lab:{order.label}", order.label, order.due, order.tests, order.because))

    placed = []
    for key, label, raw, tests, because in wanted:
        due, because = _shifted(calendar, raw, because)
        done_on = history.labs_done.get(key)
        if done_on is None:
            due, because = _moved(calendar, history, key, due, because)
        placed.append((due, key, label, tests, because, done_on))
    placed.sort(key=lambda p: p[0])  # stable: the order above breaks ties; seq follows the dates
    return [
        PlannedEvent(
            key=key, kind=Kind.LAB, phase=Phase.MONITORING, seq=seq, label=label, due=due,
            status=Status.DONE if done_on else Status.PLANNED, because=because,
            done_on=done_on, tests=tests,
        )
        for seq, (due, key, label, tests, because, done_on) in enumerate(placed, start=1)
    ]
