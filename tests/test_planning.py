"""The pure planner (``scheduler.planning.plan``): no database, no clock.

Each table is (protocol, what was recorded, the day the plan is made) -> the due
dates a nurse expects, worked out by hand from SPEC section 2. Where closed days
would blur a rule, the clinic in the table is open every day.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from dateutil.relativedelta import relativedelta

from scheduler.clinic_calendar import ClinicCalendar, load_holidays, parse_open_days
from scheduler.domain import (
    Decision,
    DecisionKind,
    Enrolment,
    GivenDose,
    History,
    Kind,
    Phase,
    PlannedEvent,
    Regimen,
    Status,
)
from scheduler.errors import BadInput
from scheduler.planning import plan
from scheduler.protocols import PROTOCOLS, check_maintenance_months, get_protocol

D = date.fromisoformat

EVERY_DAY = ClinicCalendar(parse_open_days(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]))
WEEKDAYS = ClinicCalendar()  # Monday to Friday, no holidays: the default clinic
WITH_SATURDAY = ClinicCalendar(parse_open_days(["mon", "tue", "wed", "thu", "fri", "sat"]))
ENGLAND = ClinicCalendar(holidays=load_holidays("GB-ENG"))
ENGLAND_WITH_SATURDAY = ClinicCalendar(WITH_SATURDAY.open_weekdays, load_holidays("GB-ENG"))

CALENDARS = {
    "every day": EVERY_DAY,
    "mon-fri": WEEKDAYS,
    "mon-sat": WITH_SATURDAY,
    "mon-fri GB-ENG": ENGLAND,
    "mon-sat GB-ENG": ENGLAND_WITH_SATURDAY,
}


# -- helpers -------------------------------------------------------------------------


def enrolment(protocol: str, start: str, months: int | None = None,
              discharged_on: str | None = None) -> Enrolment:
    chosen = get_protocol(protocol)
    return Enrolment(
        regimens=(Regimen(protocol, D(start), months or chosen.default_maintenance_months),),
        neuro=protocol == "hydroxo-neuro",
        discharged_on=D(discharged_on) if discharged_on else None,
    )


def decided(*pairs: tuple[DecisionKind, str]) -> tuple[Decision, ...]:
    return tuple(Decision(kind, D(on)) for kind, on in pairs)


def give_in_turn(enrolled: Enrolment, calendar: ClinicCalendar, given_on: list[str],
                 decisions: tuple[Decision, ...] = ()) -> History:
    """Record the next planned dose as given on each date in turn, as `cobalt give` does."""
    history = History(decisions=decisions)
    for on in given_on:
        events = plan(enrolled, history, calendar, D(on))
        planned = [e for e in events if e.kind == Kind.DOSE and e.status == Status.PLANNED]
        assert planned, f"no dose is planned to give on {on}"
        nxt = min(planned, key=lambda e: (e.due, e.seq))
        history = History(doses=(*history.doses, GivenDose(nxt.key, D(on))), decisions=decisions)
    return history


def doses(events: list[PlannedEvent], phase: Phase | None = None) -> list[PlannedEvent]:
    return [e for e in events if e.kind == Kind.DOSE and (phase is None or e.phase == phase)]


def dues(events: list[PlannedEvent]) -> list[str]:
    return [e.due.isoformat() for e in events]


def labs(events: list[PlannedEvent]) -> dict[str, PlannedEvent]:
    return {e.key: e for e in events if e.kind == Kind.LAB}


def reviews(events: list[PlannedEvent], label: str) -> list[PlannedEvent]:
    return [e for e in events if e.kind == Kind.REVIEW and e.label == label]


def chain(first_anchor: date, months: int, count: int, calendar: ClinicCalendar) -> list[str]:
    """Maintenance worked out independently: each dose one interval after the one before,
    moved to the next open day, the next interval counted from the moved date."""
    out, anchor = [], first_anchor
    for _ in range(count):
        due = anchor + relativedelta(months=months)
        while not calendar.is_open(due):
            due += timedelta(days=1)
        out.append(due.isoformat())
        anchor = due
    return out


# -- hydroxo ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "calendar", "expected"),
    [
        pytest.param("2026-03-02", WEEKDAYS,
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"],
                     id="from a monday: mon wed fri mon wed fri"),
        pytest.param("2026-06-01", WEEKDAYS,
                     ["2026-06-01", "2026-06-03", "2026-06-05", "2026-06-08", "2026-06-10", "2026-06-12"],
                     id="from another monday"),
        pytest.param("2026-03-05", EVERY_DAY,
                     ["2026-03-05", "2026-03-07", "2026-03-09", "2026-03-12", "2026-03-14", "2026-03-16"],
                     id="offsets 0 2 4 7 9 11 from a thursday when open every day"),
    ],
)
def test_hydroxo_loading_is_six_doses_at_offsets_0_2_4_7_9_11(
    start: str, calendar: ClinicCalendar, expected: list[str]
) -> None:
    events = plan(enrolment("hydroxo", start), History(), calendar, D(start))
    loading = doses(events, Phase.LOADING)
    assert dues(loading) == expected
    assert [e.seq for e in loading] == [1, 2, 3, 4, 5, 6]
    assert {e.status for e in loading} == {Status.PLANNED}
    assert {e.label for e in loading} == {"loading"}
    if calendar is WEEKDAYS:
        assert [e.due.strftime("%a") for e in loading] == ["Mon", "Wed", "Fri"] * 2


@pytest.mark.parametrize(
    ("months", "expected"),
    [
        pytest.param(3, ["2026-06-13", "2026-09-13", "2026-12-13", "2027-03-13"], id="every 3 months"),
        pytest.param(2, ["2026-05-13", "2026-07-13", "2026-09-13", "2026-11-13"], id="every 2 months"),
    ],
)
def test_hydroxo_maintenance_starts_one_interval_after_dose_6(months: int, expected: list[str]) -> None:
    enrolled = enrolment("hydroxo", "2026-03-02", months)
    on_time = ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"]
    history = give_in_turn(enrolled, EVERY_DAY, on_time)
    events = plan(enrolled, history, EVERY_DAY, D("2026-03-13"))
    maintenance = doses(events, Phase.MAINTENANCE)
    assert dues(maintenance)[:4] == expected
    assert [e.seq for e in maintenance[:4]] == [1, 2, 3, 4]
    assert maintenance[0].because == f"{months} months after dose 6, given 2026-03-13"


def test_maintenance_interval_is_2_or_3_months_for_hydroxo_and_1_for_cyano() -> None:
    assert check_maintenance_months(PROTOCOLS["hydroxo"], 2) == 2
    assert check_maintenance_months(PROTOCOLS["hydroxo"], 3) == 3
    assert PROTOCOLS["hydroxo"].default_maintenance_months == 3
    assert PROTOCOLS["hydroxo-neuro"].default_maintenance_months == 2
    assert PROTOCOLS["cyano"].default_maintenance_months == 1
    for protocol, months in (("hydroxo", 4), ("hydroxo", 1), ("cyano", 2), ("hydroxo-neuro", 3)):
        with pytest.raises(BadInput):
            check_maintenance_months(PROTOCOLS[protocol], months)


# -- late, early and overdue doses -------------------------------------------------


@pytest.mark.parametrize(
    ("given_on", "as_of", "expected_loading", "expected_first_maintenance"),
    [
        pytest.param([], "2026-03-02",
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"],
                     "2026-06-13", id="nothing given yet"),
        pytest.param(["2026-03-02", "2026-03-05"], "2026-03-05",
                     ["2026-03-02", "2026-03-04", "2026-03-07", "2026-03-10", "2026-03-12", "2026-03-14"],
                     "2026-06-14", id="dose 2 a day late moves doses 3 to 6 and maintenance"),
        pytest.param(["2026-03-02", "2026-03-04", "2026-03-05"], "2026-03-05",
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-08", "2026-03-10", "2026-03-12"],
                     "2026-06-12", id="dose 3 a day early moves doses 4 to 6 and maintenance"),
        pytest.param(["2026-03-03"], "2026-03-03",
                     ["2026-03-02", "2026-03-05", "2026-03-07", "2026-03-10", "2026-03-12", "2026-03-14"],
                     "2026-06-14", id="first dose late"),
        pytest.param(["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-20"],
                     "2026-03-20",
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"],
                     "2026-06-20", id="dose 6 a week late moves maintenance"),
        pytest.param(["2026-03-02", "2026-03-04"], "2026-03-30",
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"],
                     "2026-06-13", id="overdue dose 3 keeps its due date"),
    ],
)
def test_each_dose_is_due_one_interval_after_the_previous_one_given_or_due(
    given_on: list[str], as_of: str, expected_loading: list[str], expected_first_maintenance: str
) -> None:
    enrolled = enrolment("hydroxo", "2026-03-02")
    history = give_in_turn(enrolled, EVERY_DAY, given_on)
    events = plan(enrolled, history, EVERY_DAY, D(as_of))
    loading = doses(events, Phase.LOADING)
    assert dues(loading) == expected_loading
    assert [e.done_on.isoformat() if e.done_on else None for e in loading] == (
        given_on + [None] * (6 - len(given_on))
    )
    not_given = 6 - len(given_on)
    assert [e.status for e in loading] == [Status.DONE] * len(given_on) + [Status.PLANNED] * not_given
    assert doses(events, Phase.MAINTENANCE)[0].due == D(expected_first_maintenance)


def test_late_dose_moves_every_later_dose() -> None:
    enrolled = enrolment("hydroxo", "2026-03-02")
    on_time = plan(enrolled, give_in_turn(enrolled, EVERY_DAY, ["2026-03-02"]), EVERY_DAY, D("2026-03-06"))
    late = plan(enrolled, give_in_turn(enrolled, EVERY_DAY, ["2026-03-02", "2026-03-06"]),
                EVERY_DAY, D("2026-03-06"))
    before = {e.key: e.due for e in doses(on_time)}
    after = {e.key: e.due for e in doses(late)}
    dose2 = doses(late)[1]
    later_keys = [e.key for e in doses(late)[2:] if e.key in before]
    assert dose2.due == before[dose2.key] == D("2026-03-04")  # a given dose keeps the date it was due
    assert dose2.done_on == D("2026-03-06")
    assert later_keys, "the later doses are still planned under the same keys"
    assert all(after[key] == before[key] + timedelta(days=2) for key in later_keys)


def test_early_dose_moves_every_later_dose() -> None:
    enrolled = enrolment("hydroxo", "2026-03-02", 2)
    on_time = plan(enrolled, History(), EVERY_DAY, D("2026-03-02"))
    early = plan(enrolled, give_in_turn(enrolled, EVERY_DAY, ["2026-03-02", "2026-03-03"]),
                 EVERY_DAY, D("2026-03-03"))
    before = {e.key: e.due for e in doses(on_time)}
    moved = [e for e in doses(early)[2:] if e.key in before]
    assert moved and all(e.due == before[e.key] - timedelta(days=1) for e in moved)


def test_overdue_dose_keeps_its_due_date_and_later_doses_are_planned_from_it() -> None:
    enrolled = enrolment("hydroxo", "2026-03-02")
    history = give_in_turn(enrolled, WEEKDAYS, ["2026-03-02"])
    for as_of in ("2026-03-04", "2026-03-20", "2026-09-01"):
        events = plan(enrolled, history, WEEKDAYS, D(as_of))
        loading = doses(events, Phase.LOADING)
        dose2 = loading[1]
        assert dose2.status == Status.PLANNED and dose2.due == D("2026-03-04")
        assert dues(loading[2:]) == ["2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"]
        assert loading[2].because == "2 days after dose 2, due 2026-03-04"


# -- calendar months, clamped at month end -------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "months", "last_loading_given", "expected"),
    [
        pytest.param("cyano", 1, "2026-01-31", ["2026-02-28", "2026-03-28", "2026-04-28"],
                     id="31 jan + 1 month = 28 feb, then chained from 28 feb"),
        pytest.param("cyano", 1, "2028-01-31", ["2028-02-29", "2028-03-29", "2028-04-29"],
                     id="31 jan + 1 month = 29 feb in a leap year"),
        pytest.param("hydroxo", 3, "2026-11-30", ["2027-02-28", "2027-05-28", "2027-08-28"],
                     id="30 nov + 3 months = 28 feb"),
        pytest.param("hydroxo", 3, "2027-11-30", ["2028-02-29", "2028-05-29", "2028-08-29"],
                     id="30 nov + 3 months = 29 feb in a leap year"),
        pytest.param("hydroxo", 2, "2027-12-31", ["2028-02-29", "2028-04-29", "2028-06-29"],
                     id="31 dec + 2 months = 29 feb in a leap year"),
        pytest.param("hydroxo", 3, "2028-02-29", ["2028-05-29", "2028-08-29", "2028-11-29"],
                     id="29 feb + 3 months = 29 may"),
        pytest.param("hydroxo", 3, "2027-08-31", ["2027-11-30", "2028-02-29", "2028-05-29"],
                     id="31 aug + 3 months = 30 nov"),
    ],
)
def test_maintenance_months_are_calendar_months_clamped_at_month_end(
    protocol: str, months: int, last_loading_given: str, expected: list[str]
) -> None:
    last = D(last_loading_given)
    count = 21 if protocol == "cyano" else 6
    given = [(last - timedelta(days=2 * (count - 1 - i))).isoformat() for i in range(count)]
    enrolled = enrolment(protocol, given[0], months)
    confirm = decided((DecisionKind.CONFIRM_RESPONSE, given[7])) if protocol == "cyano" else ()
    history = give_in_turn(enrolled, EVERY_DAY, given, confirm)
    events = plan(enrolled, history, EVERY_DAY, last)
    assert all(e.status == Status.DONE for e in doses(events, Phase.LOADING))
    assert dues(doses(events, Phase.MAINTENANCE))[:3] == expected


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        pytest.param("2026-11-30", {"3-month": "2027-02-28", "6-month": "2027-05-30",
                                    "12-month": "2027-11-30"}, id="30 nov + 3 months = 28 feb"),
        pytest.param("2027-11-30", {"3-month": "2028-02-29", "6-month": "2028-05-30",
                                    "12-month": "2028-11-30"}, id="leap year: 29 feb"),
        pytest.param("2028-02-29", {"3-month": "2028-05-29", "6-month": "2028-08-29",
                                    "12-month": "2029-02-28"}, id="from 29 feb: 12 months is 28 feb"),
        pytest.param("2026-08-31", {"3-month": "2026-11-30", "6-month": "2027-02-28",
                                    "12-month": "2027-08-31"}, id="31 aug"),
    ],
)
def test_lab_months_are_calendar_months_clamped_at_month_end(start: str, expected: dict[str, str]) -> None:
    events = plan(enrolment("hydroxo", start), History(), EVERY_DAY, D(start))
    by_label = {e.label: e.due.isoformat() for e in labs(events).values()}
    assert {label: by_label[label] for label in expected} == expected


# -- closed days and public holidays -----------------------------------------------


@pytest.mark.parametrize(
    ("calendar", "start", "expected"),
    [
        pytest.param("mon-fri", "2026-03-05",
                     ["2026-03-05", "2026-03-09", "2026-03-11", "2026-03-16", "2026-03-18", "2026-03-20"],
                     id="weekend: sat moves to mon and the next interval counts from mon"),
        pytest.param("mon-sat", "2026-03-05",
                     ["2026-03-05", "2026-03-07", "2026-03-09", "2026-03-12", "2026-03-14", "2026-03-16"],
                     id="open on saturday: nothing moves"),
        pytest.param("mon-fri", "2026-03-07",
                     ["2026-03-09", "2026-03-11", "2026-03-13", "2026-03-16", "2026-03-18", "2026-03-20"],
                     id="a start on a saturday is due on monday"),
        pytest.param("mon-fri GB-ENG", "2026-12-21",
                     ["2026-12-21", "2026-12-23", "2026-12-29", "2027-01-04", "2027-01-06", "2027-01-08"],
                     id="christmas and boxing day observed, then new year's day"),
        pytest.param("mon-sat GB-ENG", "2026-12-21",
                     ["2026-12-21", "2026-12-23", "2026-12-29", "2027-01-02", "2027-01-04", "2027-01-06"],
                     id="open saturdays but not on boxing day"),
        pytest.param("mon-fri GB-ENG", "2026-04-01",
                     ["2026-04-01", "2026-04-07", "2026-04-09", "2026-04-13", "2026-04-15", "2026-04-17"],
                     id="good friday to after easter monday"),
        pytest.param("mon-fri", "2026-12-21",
                     ["2026-12-21", "2026-12-23", "2026-12-25", "2026-12-28", "2026-12-30", "2027-01-01"],
                     id="without holidays christmas is an open day"),
    ],
)
def test_dose_due_on_a_closed_day_is_due_on_the_next_open_day(
    calendar: str, start: str, expected: list[str]
) -> None:
    events = plan(enrolment("hydroxo", start), History(), CALENDARS[calendar], D(start))
    loading = doses(events, Phase.LOADING)
    assert dues(loading) == expected
    assert all(CALENDARS[calendar].is_open(e.due) for e in events)


def test_moved_dose_says_why_it_moved() -> None:
    events = plan(enrolment("hydroxo", "2026-12-21"), History(), ENGLAND, D("2026-12-21"))
    dose3, dose4 = doses(events, Phase.LOADING)[2:4]
    assert "moved from Fri 2026-12-25" in dose3.because and "Christmas Day" in dose3.because
    assert "New Year" in dose4.because
    assert dose4.because.startswith("3 days after dose 3, due 2026-12-29")


def test_lab_due_on_a_holiday_is_due_on_the_next_open_day() -> None:
    events = plan(enrolment("hydroxo", "2026-12-21"), History(), ENGLAND, D("2026-12-21"))
    by_label = {e.label: e.due.isoformat() for e in labs(events).values()}
    assert by_label["baseline"] == "2026-12-21"
    assert by_label["early-response"] == "2026-12-29"  # 28 Dec: Boxing Day (observed)
    assert by_label["2-week"] == "2027-01-04"
    assert by_label["3-month"] == "2027-03-22"  # 21 Mar is a Sunday


def test_maintenance_on_a_closed_day_moves_and_the_next_counts_from_the_moved_date() -> None:
    enrolled = enrolment("hydroxo", "2026-03-02")
    events = plan(enrolled, History(), WEEKDAYS, D("2026-03-02"))
    maintenance = doses(events, Phase.MAINTENANCE)
    # dose 6 due Fri 13 Mar; + 3 months = Sat 13 Jun -> Mon 15 Jun; then 15 Sep, 15 Dec, 15 Mar.
    assert dues(maintenance)[:4] == ["2026-06-15", "2026-09-15", "2026-12-15", "2027-03-15"]
    assert "moved from Sat 2026-06-13" in maintenance[0].because


# -- cyano: the response gate and three loading phases -------------------------------

CYANO_START = "2026-03-02"
PHASE_1 = [f"2026-03-0{d}" for d in range(2, 9)]


def test_cyano_phase_1_is_seven_daily_doses_and_phase_2_is_held_until_the_response_is_confirmed() -> None:
    enrolled = enrolment("cyano", CYANO_START)
    for as_of in ("2026-03-02", "2026-03-12", "2026-04-30"):
        events = plan(enrolled, History(), EVERY_DAY, D(as_of))
        loading = doses(events, Phase.LOADING)
        assert dues([e for e in loading if e.label == "phase-1"]) == PHASE_1
        assert all(e.status == Status.PLANNED for e in loading if e.label == "phase-1")
        held = [e for e in loading if e.label in ("phase-2", "phase-3")]
        assert held and all(e.status == Status.HELD for e in held)
        assert all(e.status != Status.PLANNED for e in doses(events, Phase.MAINTENANCE))
        (gate,) = reviews(events, "response-gate")
        assert gate.due == D("2026-03-09") and gate.status == Status.PLANNED
        assert gate.phase == Phase.REVIEW and gate.because


@pytest.mark.parametrize(
    ("phase_1_given", "confirmed", "first_phase_2"),
    [
        pytest.param(PHASE_1, "2026-03-09", "2026-03-10", id="confirmed at the gate: last phase-1 dose + 2"),
        pytest.param(PHASE_1, "2026-03-05", "2026-03-10", id="confirmed early: last phase-1 dose + 2"),
        pytest.param(PHASE_1, "2026-03-16", "2026-03-16", id="confirmed late: the confirmation date"),
        pytest.param(PHASE_1, "2026-03-10", "2026-03-10", id="confirmed on the day: that day"),
        pytest.param(PHASE_1[:6] + ["2026-03-11"], "2026-03-09", "2026-03-13",
                     id="last phase-1 dose given late: 2 days after it was given"),
        pytest.param([], "2026-03-09", "2026-03-10", id="nothing given: 2 days after phase 1 was due"),
    ],
)
def test_cyano_phase_2_is_due_on_the_later_of_confirmation_and_two_days_after_phase_1(
    phase_1_given: list[str], confirmed: str, first_phase_2: str
) -> None:
    enrolled = enrolment("cyano", CYANO_START)
    decisions = decided((DecisionKind.CONFIRM_RESPONSE, confirmed))
    history = give_in_turn(enrolled, EVERY_DAY, phase_1_given, decisions)
    events = plan(enrolled, history, EVERY_DAY, D(confirmed))
    phase_2 = [e for e in doses(events, Phase.LOADING) if e.label == "phase-2"]
    start = D(first_phase_2)
    assert dues(phase_2) == [(start + timedelta(days=2 * i)).isoformat() for i in range(7)]
    assert all(e.status == Status.PLANNED for e in phase_2)
    (gate,) = reviews(events, "response-gate")
    assert gate.status == Status.DONE and gate.done_on == D(confirmed)


def test_cyano_phase_3_is_every_3_days_for_3_weeks_then_maintenance_monthly() -> None:
    enrolled = enrolment("cyano", CYANO_START)
    decisions = decided((DecisionKind.CONFIRM_RESPONSE, "2026-03-09"))
    history = give_in_turn(enrolled, EVERY_DAY, PHASE_1, decisions)
    events = plan(enrolled, history, EVERY_DAY, D("2026-03-09"))
    loading = doses(events, Phase.LOADING)
    assert [e.seq for e in loading] == list(range(1, 22))
    assert [e.label for e in loading] == ["phase-1"] * 7 + ["phase-2"] * 7 + ["phase-3"] * 7
    assert dues(loading[7:14]) == ["2026-03-10", "2026-03-12", "2026-03-14", "2026-03-16",
                                   "2026-03-18", "2026-03-20", "2026-03-22"]
    assert dues(loading[14:]) == ["2026-03-25", "2026-03-28", "2026-03-31", "2026-04-03",
                                  "2026-04-06", "2026-04-09", "2026-04-12"]
    maintenance = doses(events, Phase.MAINTENANCE)
    assert dues(maintenance)[:3] == ["2026-05-12", "2026-06-12", "2026-07-12"]
    assert {e.label for e in maintenance} == {"maintenance"}
    assert maintenance[0].because == "1 month after dose 21, due 2026-04-12"


def test_cyano_doses_given_through_every_phase_move_the_later_ones() -> None:
    enrolled = enrolment("cyano", CYANO_START)
    decisions = decided((DecisionKind.CONFIRM_RESPONSE, "2026-03-09"))
    phase_2 = ["2026-03-10", "2026-03-12", "2026-03-13", "2026-03-15",
               "2026-03-17", "2026-03-19", "2026-03-21"]
    history = give_in_turn(enrolled, EVERY_DAY, PHASE_1 + phase_2 + ["2026-03-26"], decisions)
    events = plan(enrolled, history, EVERY_DAY, D("2026-03-26"))
    loading = doses(events, Phase.LOADING)
    assert [e.status for e in loading] == [Status.DONE] * 15 + [Status.PLANNED] * 6
    assert (loading[9].due, loading[9].done_on) == (D("2026-03-14"), D("2026-03-13"))  # dose 10 early
    assert loading[10].due == D("2026-03-15")
    assert (loading[14].due, loading[14].done_on) == (D("2026-03-24"), D("2026-03-26"))  # dose 15 late
    assert dues(loading[15:]) == ["2026-03-29", "2026-04-01", "2026-04-04", "2026-04-07", "2026-04-10",
                                  "2026-04-13"]


# -- hydroxo-neuro: open-ended loading ------------------------------------------------

NEURO_START = "2026-03-02"


@pytest.mark.parametrize(
    ("given_on", "next_due"),
    [
        pytest.param([], "2026-03-02", id="nothing given: the start date"),
        pytest.param(["2026-03-02"], "2026-03-04", id="2 days after dose 1"),
        pytest.param(["2026-03-02", "2026-03-04", "2026-03-07"], "2026-03-09", id="2 days after a late dose"),
        pytest.param(["2026-03-02", "2026-03-03"], "2026-03-05", id="2 days after an early dose"),
    ],
)
def test_neuro_loading_plans_only_the_next_dose_two_days_after_the_last_given(
    given_on: list[str], next_due: str
) -> None:
    enrolled = enrolment("hydroxo-neuro", NEURO_START)
    history = give_in_turn(enrolled, EVERY_DAY, given_on)
    events = plan(enrolled, history, EVERY_DAY, D(given_on[-1] if given_on else NEURO_START))
    loading = doses(events, Phase.LOADING)
    assert [e.status for e in loading] == [Status.DONE] * len(given_on) + [Status.PLANNED]
    assert loading[-1].due == D(next_due)
    assert loading[-1].seq == len(given_on) + 1
    assert doses(events, Phase.MAINTENANCE) == []


def test_neuro_review_is_due_every_14_days_from_the_treatment_start_and_only_the_next_is_planned() -> None:
    enrolled = enrolment("hydroxo-neuro", NEURO_START)
    history = give_in_turn(enrolled, EVERY_DAY, ["2026-03-02"])
    events = plan(enrolled, history, EVERY_DAY, D("2026-03-02"))
    (review,) = reviews(events, "neuro-review")
    assert review.due == D("2026-03-16") and review.status == Status.PLANNED
    assert "neurological improvement" in review.because

    reviewed = History(doses=history.doses, decisions=decided((DecisionKind.REVIEW, "2026-03-16")))
    events = plan(enrolled, reviewed, EVERY_DAY, D("2026-03-16"))
    first, second = reviews(events, "neuro-review")
    assert first.status == Status.DONE and first.done_on == D("2026-03-16")
    assert second.due == D("2026-03-30") and second.status == Status.PLANNED


def test_neuro_review_counts_from_the_first_dose_given() -> None:
    enrolled = enrolment("hydroxo-neuro", NEURO_START)
    history = give_in_turn(enrolled, EVERY_DAY, ["2026-03-04"])  # the first dose two days late
    (review,) = reviews(plan(enrolled, history, EVERY_DAY, D("2026-03-04")), "neuro-review")
    assert review.due == D("2026-03-18")


def test_neuro_review_on_a_closed_day_is_due_on_the_next_open_day() -> None:
    enrolled = enrolment("hydroxo-neuro", "2026-03-04")  # a Wednesday; + 14 days is a Wednesday
    (review,) = reviews(plan(enrolled, History(), ENGLAND, D("2026-03-04")), "neuro-review")
    assert review.due == D("2026-03-18")
    enrolled = enrolment("hydroxo-neuro", "2026-03-20")  # + 14 days is Good Friday 2026-04-03
    (review,) = reviews(plan(enrolled, History(), ENGLAND, D("2026-03-20")), "neuro-review")
    assert review.due == D("2026-04-07")


def test_ending_neuro_loading_cancels_the_next_dose_and_starts_maintenance_2_months_after_the_last() -> None:
    enrolled = enrolment("hydroxo-neuro", NEURO_START)
    given = ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09"]
    history = give_in_turn(enrolled, EVERY_DAY, given)
    history = History(doses=history.doses, decisions=decided((DecisionKind.END_LOADING, "2026-03-10")))
    events = plan(enrolled, history, EVERY_DAY, D("2026-03-10"))
    loading = doses(events, Phase.LOADING)
    assert [e.status for e in loading if e.status != Status.CANCELLED] == [Status.DONE] * 4
    assert all(e.status != Status.PLANNED for e in loading)
    maintenance = doses(events, Phase.MAINTENANCE)
    assert dues(maintenance)[:4] == ["2026-05-09", "2026-07-09", "2026-09-09", "2026-11-09"]
    assert maintenance[0].because == "2 months after dose 4, given 2026-03-09"
    assert all(r.status != Status.PLANNED for r in reviews(events, "neuro-review"))


def test_ending_neuro_loading_later_still_counts_maintenance_from_the_last_dose_given() -> None:
    enrolled = enrolment("hydroxo-neuro", NEURO_START)
    history = give_in_turn(enrolled, WEEKDAYS, ["2026-03-02", "2026-03-04"])
    history = History(doses=history.doses, decisions=decided((DecisionKind.END_LOADING, "2026-03-20")))
    events = plan(enrolled, history, WEEKDAYS, D("2026-03-20"))
    planned_loading = [e for e in doses(events, Phase.LOADING) if e.status == Status.PLANNED]
    assert planned_loading == []
    assert doses(events, Phase.MAINTENANCE)[0].due == D("2026-05-04")


# -- discharge -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_discharge_cancels_every_event_not_done(protocol: str) -> None:
    enrolled = enrolment(protocol, "2026-03-02", discharged_on="2026-03-05")
    history = give_in_turn(enrolment(protocol, "2026-03-02"), EVERY_DAY, ["2026-03-02", "2026-03-04"])
    history = History(doses=history.doses, decisions=decided((DecisionKind.DISCHARGE, "2026-03-05")))
    for as_of in ("2026-03-05", "2029-01-01"):
        events = plan(enrolled, history, EVERY_DAY, D(as_of))
        done = [e for e in events if e.status == Status.DONE]
        assert [e.done_on for e in done] == [D("2026-03-02"), D("2026-03-04")]
        assert all(e.status == Status.CANCELLED for e in events if e not in done)
        assert any(e.kind == Kind.LAB for e in events)


# -- lab orders ---------------------------------------------------------------------------

LAB_TESTS = {
    "baseline": ("b12", "cbc", "smear", "ldh", "if-antibodies", "gastrin"),
    "early-response": ("reticulocytes", "cbc"),
    "2-week": ("cbc", "ldh", "bilirubin"),
    "3-month": ("b12", "cbc", "homocysteine"),
    "6-month": ("b12", "cbc", "homocysteine"),
    "12-month": ("b12", "cbc", "homocysteine"),
    "annual": ("b12", "homocysteine"),
}


@pytest.mark.parametrize(
    ("given_on", "expected"),
    [
        pytest.param([], {"baseline": "2026-03-02", "early-response": "2026-03-09", "2-week": "2026-03-16",
                          "3-month": "2026-06-02", "6-month": "2026-09-02", "12-month": "2027-03-02"},
                     id="anchored at the planned start until a dose is given"),
        pytest.param(["2026-03-04"], {"baseline": "2026-03-04", "early-response": "2026-03-11",
                                      "2-week": "2026-03-18", "3-month": "2026-06-04",
                                      "6-month": "2026-09-04", "12-month": "2027-03-04"},
                     id="anchored at the first dose given"),
    ],
)
def test_lab_orders_are_due_from_the_treatment_start(given_on: list[str], expected: dict[str, str]) -> None:
    enrolled = enrolment("hydroxo", "2026-03-02")
    history = give_in_turn(enrolled, EVERY_DAY, given_on)
    events = plan(enrolled, history, EVERY_DAY, D("2026-03-04"))
    orders = labs(events)
    assert {e.label: e.due.isoformat() for e in orders.values()} == expected
    assert all(e.tests == LAB_TESTS[e.label] for e in orders.values())
    assert all(e.phase == Phase.MONITORING and e.status == Status.PLANNED for e in orders.values())
    anchor = "the first dose, given 2026-03-04" if given_on else "the planned start, 2026-03-02"
    assert all(anchor in e.because for e in orders.values())


def test_later_doses_do_not_move_the_lab_anchor() -> None:
    enrolled = enrolment("hydroxo", "2026-03-02")
    history = give_in_turn(enrolled, EVERY_DAY, ["2026-03-02", "2026-03-06", "2026-03-10"])
    orders = labs(plan(enrolled, history, EVERY_DAY, D("2026-03-10")))
    assert {e.label: e.due.isoformat() for e in orders.values()}["3-month"] == "2026-06-02"


def test_annual_lab_orders_follow_at_24_36_48_months_for_life() -> None:
    enrolled = enrolment("hydroxo", "2026-03-02")
    history = give_in_turn(enrolled, EVERY_DAY, ["2026-03-03"])
    events = plan(enrolled, history, EVERY_DAY, D("2030-03-01"))
    annual = [e for e in labs(events).values() if e.label == "annual"]
    assert dues(annual)[:3] == ["2028-03-03", "2029-03-03", "2030-03-03"]
    assert all(e.tests == LAB_TESTS["annual"] for e in annual)
    assert "24 months after the first dose, given 2026-03-03" in annual[0].because
    assert len({e.key for e in annual}) == len(annual)
    # Made earlier, the plan does not yet hold an annual order two years out.
    early = plan(enrolled, history, EVERY_DAY, D("2026-03-03"))
    assert [e for e in labs(early).values() if e.label == "annual"] == []


def test_a_done_lab_order_keeps_its_done_date() -> None:
    enrolled = enrolment("hydroxo", "2026-03-02")
    history = History(labs_done={"lab:baseline": D("2026-03-03")})
    orders = labs(plan(enrolled, history, EVERY_DAY, D("2026-03-03")))
    baseline = next(e for e in orders.values() if e.label == "baseline")
    assert baseline.status == Status.DONE and baseline.done_on == D("2026-03-03")
    assert all(e.status == Status.PLANNED for e in orders.values() if e is not baseline)


# -- the plan reaches a year ahead, for life ------------------------------------------


def _maintenance_history(protocol: str, calendar: ClinicCalendar) -> tuple[Enrolment, History, date]:
    """A patient through loading, each dose given on its due date; returns the last dose's date."""
    enrolled = enrolment(protocol, "2026-03-02")
    decisions: tuple[Decision, ...] = ()
    if protocol == "cyano":
        decisions = decided((DecisionKind.CONFIRM_RESPONSE, "2026-03-09"))
    count = {"hydroxo": 6, "cyano": 21, "hydroxo-neuro": 5}[protocol]
    history = History(decisions=decisions)
    for _ in range(count):
        events = plan(enrolled, history, calendar, D("2026-03-02"))
        nxt = min((e for e in doses(events) if e.status == Status.PLANNED), key=lambda e: e.due)
        history = History(doses=(*history.doses, GivenDose(nxt.key, nxt.due)), decisions=decisions)
    last = history.doses[-1].given_on
    if protocol == "hydroxo-neuro":
        decisions = decided((DecisionKind.END_LOADING, last.isoformat()))
        history = History(doses=history.doses, decisions=decisions)
    return enrolled, history, last


@pytest.mark.parametrize("calendar", ["mon-fri", "mon-fri GB-ENG"])
@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_maintenance_is_planned_at_least_12_months_ahead_of_the_day_the_plan_is_made(
    protocol: str, calendar: str
) -> None:
    cal = CALENDARS[calendar]
    enrolled, history, last = _maintenance_history(protocol, cal)
    months = enrolled.current.maintenance_months
    expected = chain(last, months, 120, cal)
    as_of = last
    while as_of < D("2031-06-01"):
        maintenance = doses(plan(enrolled, history, cal, as_of), Phase.MAINTENANCE)
        assert dues(maintenance) == expected[: len(maintenance)], f"plan made on {as_of}"
        assert maintenance[-1].due >= as_of + relativedelta(months=12), f"plan made on {as_of}"
        as_of += timedelta(days=11)


def test_a_patient_enrolled_years_ago_still_has_upcoming_maintenance_doses() -> None:
    enrolled = enrolment("hydroxo", "2026-03-02")
    events = plan(enrolled, History(), WEEKDAYS, D("2036-03-02"))
    upcoming = [e for e in doses(events, Phase.MAINTENANCE) if e.due >= D("2036-03-02")]
    assert len(upcoming) >= 4
    assert upcoming[-1].due >= D("2037-03-02")


# -- what every event carries ------------------------------------------------------------


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_every_event_says_why_it_is_due_and_the_plan_is_in_due_date_order(protocol: str) -> None:
    enrolled = enrolment(protocol, "2026-03-02")
    events = plan(enrolled, give_in_turn(enrolled, ENGLAND, ["2026-03-02"]), ENGLAND, D("2026-03-02"))
    assert events
    assert all(e.because.strip() for e in events)
    assert [e.due for e in events] == sorted(e.due for e in events)
    assert all(e.seq >= 1 for e in events)
    assert doses(events)[0].because == "first dose, on the start date 2026-03-02"


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_event_keys_are_unique_and_stable_as_doses_are_given_and_time_passes(protocol: str) -> None:
    enrolled = enrolment(protocol, "2026-03-02")
    decisions = decided((DecisionKind.CONFIRM_RESPONSE, "2026-03-09")) if protocol == "cyano" else ()
    before = plan(enrolled, History(decisions=decisions), WEEKDAYS, D("2026-03-02"))
    history = give_in_turn(enrolled, WEEKDAYS, ["2026-03-03", "2026-03-06"], decisions)
    after = plan(enrolled, history, WEEKDAYS, D("2026-09-30"))
    for events in (before, after):
        assert len({e.key for e in events}) == len(events)
    identity = {e.key: (e.kind, e.phase, e.seq, e.label) for e in after}
    for event in before:
        assert identity.get(event.key, (event.kind, event.phase, event.seq, event.label)) == (
            event.kind, event.phase, event.seq, event.label)
    assert doses(before)[0].key == doses(after)[0].key  # the first dose, given late: same event
    assert doses(after)[0].done_on == D("2026-03-03")
    assert plan(enrolled, history, WEEKDAYS, D("2026-09-30")) == after  # pure: same input, same plan


# -- corrections: a voided record is not history ---------------------------------------

HYDROXO_START = "2026-03-02"  # a Monday; loading on an every-day clinic: 2, 4, 6, 9, 11, 13 March


def recorded(*doses_given: tuple[str, bool]) -> History:
    """Doses recorded in turn, as `cobalt give` keys them; ``True`` marks one voided."""
    return History(doses=tuple(
        GivenDose(f"r1:dose:loading:{n}", D(on), voided=void)
        for n, (on, void) in enumerate(doses_given, start=1)
    ))


@pytest.mark.parametrize(
    ("given", "expected_due", "expected_done"),
    [
        pytest.param([("2026-03-02", False), ("2026-03-04", True)],
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"],
                     ["2026-03-02", None, None, None, None, None],
                     id="a voided dose is planned again on its day"),
        pytest.param([("2026-03-02", False), ("2026-03-05", True)],
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"],
                     ["2026-03-02", None, None, None, None, None],
                     id="a late dose voided no longer moves the later doses"),
        pytest.param([("2026-03-02", False), ("2026-03-04", True), ("2026-03-06", False)],
                     ["2026-03-02", "2026-03-04", "2026-03-08", "2026-03-11", "2026-03-13", "2026-03-15"],
                     ["2026-03-02", "2026-03-06", None, None, None, None],
                     id="a dose voided in the middle leaves no gap: the next one given is dose 2"),
        pytest.param([("2026-03-02", True)],
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"],
                     [None] * 6,
                     id="the only dose voided: nothing was given"),
    ],
)
def test_a_voided_dose_is_not_history(given: list[tuple[str, bool]], expected_due: list[str],
                                      expected_done: list[str | None]) -> None:
    events = plan(enrolment("hydroxo", HYDROXO_START), recorded(*given), EVERY_DAY, D("2026-03-06"))
    loading = doses(events, Phase.LOADING)
    assert dues(loading) == expected_due
    assert [e.done_on.isoformat() if e.done_on else None for e in loading] == expected_done
    assert [e.status for e in loading] == [Status.DONE if d else Status.PLANNED for d in expected_done]


def test_a_voided_first_dose_no_longer_anchors_the_labs() -> None:
    enrolled = enrolment("hydroxo", HYDROXO_START)
    late_first = plan(enrolled, recorded(("2026-03-05", False)), EVERY_DAY, D("2026-03-05"))
    voided = plan(enrolled, recorded(("2026-03-05", True)), EVERY_DAY, D("2026-03-05"))
    assert labs(late_first)["lab:3-month"].due == D("2026-06-05")
    assert labs(voided)["lab:3-month"].due == D("2026-06-02")
    assert "the planned start" in labs(voided)["lab:3-month"].because


@pytest.mark.parametrize(
    ("protocol", "given", "decision", "voided", "expected"),
    [
        pytest.param("hydroxo-neuro", ["2026-03-02", "2026-03-04"], DecisionKind.END_LOADING, True,
                     {"next loading": "2026-03-06", "maintenance": None},
                     id="end-loading voided: loading goes on, no maintenance"),
        pytest.param("hydroxo-neuro", ["2026-03-02", "2026-03-04"], DecisionKind.END_LOADING, False,
                     {"next loading": None, "maintenance": "2026-05-04"},
                     id="end-loading in force: maintenance 2 months after the last dose"),
        pytest.param("cyano", [f"2026-03-0{d}" for d in range(2, 9)], DecisionKind.CONFIRM_RESPONSE, True,
                     {"next loading": None, "maintenance": None},
                     id="confirm-response voided: phase 2 is held again"),
        pytest.param("cyano", [f"2026-03-0{d}" for d in range(2, 9)], DecisionKind.CONFIRM_RESPONSE, False,
                     {"next loading": "2026-03-10", "maintenance": None},
                     id="confirm-response in force: phase 2 two days after phase 1"),
    ],
)
def test_a_voided_decision_is_not_history(protocol: str, given: list[str], decision: DecisionKind,
                                          voided: bool, expected: dict[str, str | None]) -> None:
    enrolled = enrolment(protocol, "2026-03-02")
    history = give_in_turn(enrolled, EVERY_DAY, given)
    history = History(doses=history.doses, decisions=(Decision(decision, D("2026-03-09"), voided=voided),))
    events = plan(enrolled, history, EVERY_DAY, D("2026-03-09"))
    planned = [e for e in doses(events, Phase.LOADING) if e.status == Status.PLANNED]
    maintenance = [e for e in doses(events, Phase.MAINTENANCE) if e.status == Status.PLANNED]
    assert (planned[0].due.isoformat() if planned else None) == expected["next loading"]
    assert (maintenance[0].due.isoformat() if maintenance and protocol != "cyano" else None) == \
        expected["maintenance"]
    if protocol == "cyano":
        held = [e for e in doses(events) if e.status == Status.HELD]
        assert bool(held) == voided


# -- corrections: a moved event is an anchor ------------------------------------------


@pytest.mark.parametrize(
    ("moves", "given", "expected_loading"),
    [
        pytest.param({"r1:dose:loading:2": "2026-03-05"}, [],
                     ["2026-03-02", "2026-03-05", "2026-03-07", "2026-03-10", "2026-03-12", "2026-03-14"],
                     id="a moved dose: the later ones count from its new day"),
        pytest.param({"r1:dose:loading:1": "2026-03-03"}, [],
                     ["2026-03-03", "2026-03-05", "2026-03-07", "2026-03-10", "2026-03-12", "2026-03-14"],
                     id="the first dose moved: the whole loading follows"),
        pytest.param({"r1:dose:loading:4": "2026-03-08"}, [],
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-08", "2026-03-10", "2026-03-12"],
                     id="moved earlier: the later ones come earlier too"),
        pytest.param({"r1:dose:loading:1": "2026-03-03"}, ["2026-03-02"],
                     ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"],
                     id="a dose given wins over its move"),
    ],
)
def test_a_moved_dose_is_due_on_its_new_day_and_later_doses_count_from_it(
    moves: dict[str, str], given: list[str], expected_loading: list[str]
) -> None:
    enrolled = enrolment("hydroxo", HYDROXO_START)
    history = give_in_turn(enrolled, EVERY_DAY, given)
    history = History(doses=history.doses, moves={k: D(v) for k, v in moves.items()})
    loading = doses(plan(enrolled, history, EVERY_DAY, D(HYDROXO_START)), Phase.LOADING)
    assert dues(loading) == expected_loading
    for event in loading:
        if event.key in moves and event.status == Status.PLANNED:
            assert event.because.startswith(f"moved to {moves[event.key]}")


def test_a_moved_maintenance_dose_moves_the_maintenance_after_it() -> None:
    enrolled = enrolment("hydroxo", HYDROXO_START)
    before = doses(plan(enrolled, History(), EVERY_DAY, D(HYDROXO_START)), Phase.MAINTENANCE)
    assert dues(before)[:3] == ["2026-06-13", "2026-09-13", "2026-12-13"]
    history = History(moves={"r1:dose:maintenance:1": D("2026-06-20")})
    after = doses(plan(enrolled, history, EVERY_DAY, D(HYDROXO_START)), Phase.MAINTENANCE)
    assert dues(after)[:3] == ["2026-06-20", "2026-09-20", "2026-12-20"]
    assert after[1].because == "3 months after maintenance dose 1, due 2026-06-20"


@pytest.mark.parametrize(
    ("key", "to", "calendar", "expected"),
    [
        pytest.param("lab:3-month", "2026-06-09", EVERY_DAY,
                     {"lab:3-month": "2026-06-09", "lab:6-month": "2026-09-02"},
                     id="a moved lab order; the others keep their day"),
        pytest.param("lab:2-week", "2026-03-21", WEEKDAYS,
                     {"lab:2-week": "2026-03-23", "lab:3-month": "2026-06-02"},
                     id="moved to a day that has since closed: the next open day"),
    ],
)
def test_a_moved_lab_order_is_due_on_its_new_day(key: str, to: str, calendar: ClinicCalendar,
                                                 expected: dict[str, str]) -> None:
    events = plan(enrolment("hydroxo", HYDROXO_START), History(moves={key: D(to)}), calendar, D(HYDROXO_START))
    assert {k: labs(events)[k].due.isoformat() for k in expected} == expected


def test_a_moved_review_is_due_on_its_new_day() -> None:
    enrolled = enrolment("hydroxo-neuro", HYDROXO_START)
    (review,) = reviews(plan(enrolled, History(), EVERY_DAY, D(HYDROXO_START)), "neuro-review")
    assert review.due == D("2026-03-16")
    history = History(moves={review.key: D("2026-03-18")})
    (moved,) = reviews(plan(enrolled, history, EVERY_DAY, D(HYDROXO_START)), "neuro-review")
    assert (moved.key, moved.due, moved.status) == (review.key, D("2026-03-18"), Status.PLANNED)


def test_a_voided_loading_dose_leaves_the_maintenance_doses_given_where_they_were() -> None:
    enrolled = enrolment("hydroxo-neuro", HYDROXO_START)
    history = History(
        doses=(GivenDose("r1:dose:loading:1", D("2026-03-02")),
               GivenDose("r1:dose:loading:2", D("2026-03-04"), voided=True),
               GivenDose("r1:dose:loading:3", D("2026-03-06")),
               GivenDose("r1:dose:maintenance:1", D("2026-05-06"))),
        decisions=decided((DecisionKind.END_LOADING, "2026-03-06")),
    )
    events = plan(enrolled, history, EVERY_DAY, D("2026-05-06"))
    loading = [e for e in doses(events, Phase.LOADING) if e.status == Status.DONE]
    assert [e.done_on.isoformat() for e in loading if e.done_on] == ["2026-03-02", "2026-03-06"]
    maintenance = doses(events, Phase.MAINTENANCE)
    assert (maintenance[0].status, maintenance[0].done_on) == (Status.DONE, D("2026-05-06"))
    assert maintenance[1].due == D("2026-07-06")
