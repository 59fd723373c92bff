"""Time travel with freezegun: years after enrolment the plan still reaches a year
ahead, to the day; and "today" is always the clinic's local date.

Every test runs on SQLite and on PostgreSQL, with ``cobalt`` in this process.
Expected dates are worked out here, independently of the planner: each
maintenance dose is due 3 calendar months after the one before (clamped at month
end), moved off a weekend to Monday, and the next counts from the moved date.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from conftest import Clinic
from dateutil.relativedelta import relativedelta
from freezegun import freeze_time

ENROLLED_ON = date(2026, 3, 2)  # a Monday
LOADING_DUE = ["2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13"]
FIRST_MAINTENANCE_DUE = date(2026, 6, 15)  # dose 6 (13 Mar) + 3 months = Sat 13 Jun -> Mon 15 Jun
FIRST_MAINTENANCE_GIVEN = date(2026, 7, 9)  # three and a half weeks late: it moves all the rest


def at(day: date | str, clock: str = "09:00:00") -> Any:
    return freeze_time(f"{day} {clock}")


def run(clinic: Clinic, *args: str) -> Any:
    result = clinic.cobalt(*args)
    assert result.code == 0, f"cobalt {' '.join(args)}: {result.err}"
    return result


def maintenance(clinic: Clinic, mrn: str) -> list[dict[str, Any]]:
    data = run(clinic, "schedule", mrn, "--json").json()
    return [e for e in data["events"] if e["kind"] == "dose" and e["phase"] == "maintenance"]


def next_weekday(day: date) -> date:
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def three_monthly_from(last_given: date, until: date) -> list[date]:
    """Maintenance after the last dose given, each 3 months after the one before,
    through ``until`` and a year beyond it."""
    out: list[date] = []
    due = last_given
    while due <= until + relativedelta(years=1):
        due = next_weekday(due + relativedelta(months=3))
        out.append(due)
    return out


def enrol_and_load(clinic: Clinic) -> None:
    """Enrolled today (2 Mar 2026), every loading dose given on its day, maintenance dose 1 late."""
    with at(ENROLLED_ON):
        run(clinic, "enroll", "--mrn", "A1", "--name", "Ann", "--email", "ann@example.org")
    for due in LOADING_DUE:
        with at(due):
            run(clinic, "give", "A1")
    with at(FIRST_MAINTENANCE_GIVEN):
        run(clinic, "give", "A1")


@pytest.mark.parametrize("years", [1, 3, 5])
def test_years_after_enrolment_a_tick_plans_maintenance_a_year_ahead_to_the_day(
    clinic: Clinic, years: int
) -> None:
    enrol_and_load(clinic)
    today = ENROLLED_ON + relativedelta(years=years)
    a_year_on = today + relativedelta(months=12)
    assert max(date.fromisoformat(e["due"]) for e in maintenance(clinic, "A1")) < a_year_on

    with at(today, "07:00:00"):
        run(clinic, "tick")
        planned = maintenance(clinic, "A1")

    first, rest = planned[0], planned[1:]
    assert (first["due"], first["done_on"], first["status"]) == (
        FIRST_MAINTENANCE_DUE.isoformat(), FIRST_MAINTENANCE_GIVEN.isoformat(), "done")
    expected = three_monthly_from(FIRST_MAINTENANCE_GIVEN, a_year_on)
    assert [e["due"] for e in rest] == [d.isoformat() for d in expected[: len(rest)]]
    assert {e["status"] for e in rest} == {"planned"}  # the missed ones are overdue, not dropped

    upcoming = [date.fromisoformat(e["due"]) for e in rest if e["due"] >= today.isoformat()]
    assert upcoming and max(upcoming) >= a_year_on
    assert [d for d in expected if today <= d <= a_year_on] == [d for d in upcoming if d <= a_year_on]
    assert [e["seq"] for e in planned] == list(range(1, len(planned) + 1))


def test_a_maintenance_dose_is_due_on_its_day_and_overdue_the_day_after(clinic: Clinic) -> None:
    enrol_and_load(clinic)
    due = three_monthly_from(FIRST_MAINTENANCE_GIVEN, date(2027, 1, 1))[0]
    assert due == date(2026, 10, 9)  # a Friday; the day after is a Saturday

    def worklist(day: date) -> list[dict[str, Any]]:
        with at(day):
            items = run(clinic, "due", "--json").json()
        return [i for i in items if i["kind"] == "dose"]

    assert worklist(due - timedelta(days=1)) == []
    (on_the_day,) = worklist(due)
    assert (on_the_day["due"], on_the_day["overdue"]) == (due.isoformat(), False)
    (day_after,) = worklist(due + timedelta(days=1))
    assert (day_after["due"], day_after["overdue"]) == (due.isoformat(), True)
    with at(due + timedelta(days=1)):
        run(clinic, "give", "A1")
    assert worklist(due + timedelta(days=2)) == []
    later = maintenance(clinic, "A1")
    assert later[2]["due"] == next_weekday(due + timedelta(days=1) + relativedelta(months=3)).isoformat()


MIDNIGHTS = {
    # Berlin: CET (UTC+1) until 01:00 UTC on Sunday 29 March 2026, then CEST (UTC+2);
    # back to CET at 01:00 UTC on Sunday 25 October 2026.
    "Europe/Berlin": [
        ("2026-03-28 22:30:00", "2026-03-28"),  # 23:30 CET
        ("2026-03-28 23:30:00", "2026-03-29"),  # 00:30 CET: UTC is still the 28th
        ("2026-03-29 21:30:00", "2026-03-29"),  # 23:30 CEST
        ("2026-03-29 22:30:00", "2026-03-30"),  # 00:30 CEST: UTC is still the 29th
        ("2026-10-24 22:30:00", "2026-10-25"),  # 00:30 CEST
        ("2026-10-25 22:30:00", "2026-10-25"),  # 23:30 CET
        ("2026-10-25 23:30:00", "2026-10-26"),  # 00:30 CET
    ],
    # London: GMT (UTC+0) until 01:00 UTC on 29 March 2026, then BST (UTC+1).
    "Europe/London": [
        ("2026-03-28 23:30:00", "2026-03-28"),  # 23:30 GMT
        ("2026-03-29 00:30:00", "2026-03-29"),  # 00:30 GMT
        ("2026-03-29 22:30:00", "2026-03-29"),  # 23:30 BST
        ("2026-03-29 23:30:00", "2026-03-30"),  # 00:30 BST: UTC is still the 29th
    ],
}


@pytest.mark.parametrize("timezone", sorted(MIDNIGHTS))
def test_today_is_the_clinics_local_date_around_midnight_across_daylight_saving(
    clinic: Clinic, timezone: str
) -> None:
    clinic.configure(timezone=timezone)
    for n, (utc, local_today) in enumerate(MIDNIGHTS[timezone]):
        mrn = f"T{n}"
        with freeze_time(utc):
            run(clinic, "enroll", "--mrn", mrn, "--name", "Ann")
            run(clinic, "give", mrn)
            data = run(clinic, "schedule", mrn, "--json").json()
            tomorrow = (date.fromisoformat(local_today) + timedelta(days=1)).isoformat()
            refused = clinic.cobalt("give", mrn, "--on", tomorrow)
        assert data["patient"]["start"] == local_today, utc
        first_dose = next(e for e in data["events"] if e["kind"] == "dose" and e["seq"] == 1)
        assert first_dose["done_on"] == local_today, utc
        assert refused.code == 2 and "future" in refused.err, utc


def test_a_record_made_after_a_tick_in_the_future_keeps_the_plan_and_its_ids(clinic):
    with freeze_time("2026-03-02T09:00:00Z"):
        assert clinic.cobalt("enroll", "--mrn", "T9", "--name", "Tia", "--start", "2026-03-02").code == 0
        assert clinic.cobalt("tick", "--now", "2031-06-02T09:00").code == 0
        before = clinic.cobalt("schedule", "T9", "--json").json()["events"]
        assert clinic.cobalt("give", "T9", "--on", "2026-03-02").code == 0
        after = clinic.cobalt("schedule", "T9", "--json").json()["events"]
    assert max(e["due"] for e in after) >= max(e["due"] for e in before) >= "2032-06-02"
    ids = {e["id"] for e in before}
    assert ids <= {e["id"] for e in after}


def test_a_response_gate_alert_raised_by_a_future_tick_survives_a_record_made_today(clinic):
    with freeze_time("2026-03-02T09:00:00Z"):
        assert clinic.cobalt("enroll", "--mrn", "G1", "--name", "Gia", "--protocol", "cyano",
                             "--start", "2026-03-02").code == 0
        assert clinic.cobalt("tick", "--now", "2026-03-20T09:00").code == 0
        codes = {a["code"] for a in clinic.cobalt("schedule", "G1", "--json").json()["alerts"]}
        assert "response-gate" in codes
        assert clinic.cobalt("lab", "G1", "--result", "folate=10").code == 0
        codes = {a["code"] for a in clinic.cobalt("schedule", "G1", "--json").json()["alerts"]}
    assert "response-gate" in codes
