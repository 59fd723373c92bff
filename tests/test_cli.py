"""The command line on a real database (SPEC section 3).

Every test runs on SQLite and on PostgreSQL. Commands run in this process
(``clinic.cobalt``) with the clock frozen on Friday 2026-03-20, except the few
at the end that run the real console script in a child process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import COBALT, Clinic, Result, database_rows
from freezegun import freeze_time
from sqlalchemy import select

from models import metadata
from scheduler import db

TODAY = "2026-03-20"  # a Friday
NOW = f"{TODAY} 10:00:00"

EVENT_FIELDS = {"id", "kind", "phase", "seq", "due", "status", "done_on", "label", "tests", "because"}
BASELINE_TESTS = ["b12", "cbc", "smear", "ldh", "if-antibodies", "gastrin"]


@pytest.fixture
def cli(clinic: Clinic) -> Iterator[Clinic]:
    """The clinic, on Friday 2026-03-20 at 10:00 UTC."""
    with freeze_time(NOW):
        yield clinic


# -- helpers ---------------------------------------------------------------------------


def ok(clinic: Clinic, *args: str) -> Result:
    result = clinic.cobalt(*args)
    assert result.code == 0, f"cobalt {' '.join(args)}: {result.err}"
    assert result.err == ""
    return result


def refused(result: Result, *words: str) -> None:
    """Bad input: exit status 2, exactly one line on stderr, no traceback, nothing printed."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert result.err.endswith("\n")
    assert "Traceback" not in result.err
    assert result.out == ""
    for word in words:
        assert word in result.err, result.err


def schedule(clinic: Clinic, mrn: str) -> dict[str, Any]:
    data: dict[str, Any] = ok(clinic, "schedule", mrn, "--json").json()
    return data


def doses(data: dict[str, Any], phase: str | None = None) -> list[dict[str, Any]]:
    return [e for e in data["events"] if e["kind"] == "dose" and (phase is None or e["phase"] == phase)]


def lab_orders(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["label"]: e for e in data["events"] if e["kind"] == "lab"}


def dues(events: list[dict[str, Any]]) -> list[str]:
    return [e["due"] for e in events]


def enroll(clinic: Clinic, mrn: str, *extra: str, start: str = "2026-03-02") -> None:
    ok(clinic, "enroll", "--mrn", mrn, "--name", f"Patient {mrn}", "--start", start, *extra)


# -- enrol -------------------------------------------------------------------------------


def test_enroll_defaults_to_hydroxo_and_to_hydroxo_neuro_with_neuro(cli: Clinic) -> None:
    data = ok(cli, "enroll", "--mrn", "A1", "--name", "Ann", "--json").json()
    assert data["patient"]["mrn"] == "A1"
    assert data["patient"]["protocol"] == "hydroxo"
    assert data["patient"]["maintenance_months"] == 3
    ok(cli, "enroll", "--mrn", "N1", "--name", "Ned", "--neuro")
    neuro = schedule(cli, "N1")["patient"]
    assert (neuro["protocol"], neuro["maintenance_months"]) == ("hydroxo-neuro", 2)
    ok(cli, "enroll", "--mrn", "C1", "--name", "Cy", "--protocol", "cyano")
    assert schedule(cli, "C1")["patient"]["protocol"] == "cyano"


def test_enroll_starts_today_by_default_with_the_first_dose_and_baseline_due_today(cli: Clinic) -> None:
    ok(cli, "enroll", "--mrn", "A1", "--name", "Ann")
    data = schedule(cli, "A1")
    assert data["patient"]["start"] == TODAY
    assert doses(data)[0]["due"] == TODAY
    assert lab_orders(data)["baseline"]["due"] == TODAY


def test_enroll_with_maintenance_every_2_months(cli: Clinic) -> None:
    enroll(cli, "A1", "--maintenance-months", "2")
    data = schedule(cli, "A1")
    assert data["patient"]["maintenance_months"] == 2
    # Dose 6 due Fri 13 Mar; + 2 months = Wed 13 May, then Mon 13 Jul, then Sun 13 Sep -> Mon 14 Sep.
    assert dues(doses(data, "maintenance"))[:3] == ["2026-05-13", "2026-07-13", "2026-09-14"]


def test_enroll_records_egfr_platelets_and_hb_as_results_dated_the_start_that_complete_no_lab_order(
    cli: Clinic,
) -> None:
    enroll(cli, "A1", "--egfr", "75", "--platelets", "40", "--hb", "9.5")
    engine = db.make_engine(cli.database_url)
    try:
        with engine.connect() as conn:
            table = metadata.tables["lab_result"]
            query = select(table.c.code, table.c.value, table.c.taken_on, table.c.order_key)
            rows = conn.execute(query).all()
    finally:
        engine.dispose()
    assert sorted((r.code, r.value, r.taken_on.isoformat(), r.order_key) for r in rows) == [
        ("egfr", 75.0, "2026-03-02", None),
        ("hb", 9.5, "2026-03-02", None),
        ("platelets", 40.0, "2026-03-02", None),
    ]
    assert {e["status"] for e in lab_orders(schedule(cli, "A1")).values()} == {"planned"}


def test_cyano_is_refused_for_an_egfr_below_60_but_not_at_60(cli: Clinic) -> None:
    refused(cli.cobalt("enroll", "--mrn", "C1", "--name", "Cy", "--protocol", "cyano", "--egfr", "59.9"),
            "hydroxocobalamin")
    enroll(cli, "C1", "--protocol", "cyano", "--egfr", "60")
    assert schedule(cli, "C1")["patient"]["protocol"] == "cyano"


# -- schedule ----------------------------------------------------------------------------


def test_schedule_json_has_the_patient_and_every_event_in_due_date_order(cli: Clinic) -> None:
    enroll(cli, "A1")
    ok(cli, "give", "A1", "--on", "2026-03-02")
    data = schedule(cli, "A1")
    assert data["patient"]["mrn"] == "A1" and data["patient"]["protocol"] == "hydroxo"
    events = data["events"]
    assert all(set(e) >= EVENT_FIELDS for e in events)
    assert len({e["id"] for e in events}) == len(events) and all(isinstance(e["id"], int) for e in events)
    assert dues(events) == sorted(dues(events))
    assert {e["kind"] for e in events} == {"dose", "lab"}
    assert {e["phase"] for e in events} == {"loading", "maintenance", "monitoring"}
    assert {e["status"] for e in events} == {"done", "planned"}
    assert all(e["because"] for e in events)

    loading = doses(data, "loading")
    assert dues(loading) == [
        "2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11", "2026-03-13",
    ]
    assert [e["seq"] for e in loading] == [1, 2, 3, 4, 5, 6]
    assert [e["status"] for e in loading] == ["done"] + ["planned"] * 5
    assert [e["done_on"] for e in loading] == ["2026-03-02"] + [None] * 5
    assert all(e["tests"] == [] and e["label"] == "loading" for e in loading)
    first_maintenance = doses(data, "maintenance")[0]
    assert first_maintenance["due"] == "2026-06-15"  # Sat 13 Jun moves to Monday
    assert first_maintenance["because"].startswith("3 months after dose 6, due 2026-03-13")
    assert first_maintenance["seq"] == 1

    labs = lab_orders(data)
    assert labs["baseline"]["tests"] == BASELINE_TESTS
    assert labs["early-response"]["tests"] == ["reticulocytes", "cbc"]
    assert {label: e["due"] for label, e in labs.items()} == {
        "baseline": "2026-03-02", "early-response": "2026-03-09", "2-week": "2026-03-16",
        "3-month": "2026-06-02", "6-month": "2026-09-02", "12-month": "2027-03-02",
    }
    assert "the first dose, given 2026-03-02" in labs["3-month"]["because"]


def test_schedule_text_marks_what_is_overdue(cli: Clinic) -> None:
    enroll(cli, "A1")
    out = ok(cli, "schedule", "A1").out
    assert "A1" in out and "hydroxo" in out
    assert "OVERDUE" in out  # doses due from 2 Mar, nothing given by 20 Mar


def test_event_ids_stay_the_same_when_a_late_dose_moves_the_later_ones(cli: Clinic) -> None:
    enroll(cli, "A1")
    before = {e["seq"]: e for e in doses(schedule(cli, "A1"), "loading")}
    ok(cli, "give", "A1", "--on", "2026-03-02")
    ok(cli, "give", "A1", "--on", "2026-03-05")  # dose 2 one day late
    after = {e["seq"]: e for e in doses(schedule(cli, "A1"), "loading")}
    assert {s: e["id"] for s, e in after.items()} == {s: e["id"] for s, e in before.items()}
    assert [after[s]["due"] for s in range(1, 7)] == [
        "2026-03-02", "2026-03-04", "2026-03-09", "2026-03-12", "2026-03-16", "2026-03-18",
    ]
    assert after[2]["done_on"] == "2026-03-05"


# -- due -----------------------------------------------------------------------------


def _worklist(clinic: Clinic, *args: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = ok(clinic, "due", *args, "--json").json()
    assert all(set(item) >= EVENT_FIELDS for item in items)
    assert dues(items) == sorted(dues(items))
    return items


def test_due_lists_planned_events_due_on_or_before_the_date_each_with_its_mrn(cli: Clinic) -> None:
    enroll(cli, "A1")
    enroll(cli, "B2", start="2026-03-04")
    ok(cli, "give", "A1", "--on", "2026-03-02")
    items = _worklist(cli, "--on", "2026-03-04")
    assert sorted((i["mrn"], i["kind"], i["label"], i["seq"], i["due"]) for i in items) == [
        ("A1", "dose", "loading", 2, "2026-03-04"),
        ("A1", "lab", "baseline", 1, "2026-03-02"),
        ("B2", "dose", "loading", 1, "2026-03-04"),
        ("B2", "lab", "baseline", 1, "2026-03-04"),
    ]
    assert {i["status"] for i in items} == {"planned"}


def test_due_with_days_adds_what_falls_due_within_that_many_days_after(cli: Clinic) -> None:
    enroll(cli, "A1")
    items = _worklist(cli, "--on", "2026-03-04", "--days", "2")
    assert [(i["label"], i["seq"]) for i in items if i["kind"] == "dose"] == [
        ("loading", 1), ("loading", 2), ("loading", 3),
    ]
    assert max(dues(items)) == "2026-03-06"
    items = _worklist(cli, "--on", "2026-03-04", "--days", "5")
    assert "2026-03-09" in dues(items)  # dose 4 and the early-response order
    assert max(dues(items)) == "2026-03-09"


def test_due_defaults_to_today(cli: Clinic) -> None:
    enroll(cli, "A1")
    items = _worklist(cli)
    assert {(i["kind"], i["label"], i["seq"]) for i in items} == {
        *(("dose", "loading", n) for n in range(1, 7)),
        ("lab", "baseline", 1), ("lab", "early-response", 2), ("lab", "2-week", 3),
    }
    assert all(i["mrn"] == "A1" for i in items)


# -- give --------------------------------------------------------------------------------


def test_give_records_the_next_planned_dose_as_given_today_by_default(cli: Clinic) -> None:
    enroll(cli, "A1", start="2026-03-16")
    out = ok(cli, "give", "A1", "--json").json()
    assert out["event"]["seq"] == 1 and out["event"]["status"] == "done"
    assert out["event"]["done_on"] == TODAY
    loading = doses(schedule(cli, "A1"), "loading")
    assert (loading[0]["due"], loading[0]["done_on"]) == ("2026-03-16", TODAY)
    # Given late on Friday: + 2 days is Sunday, so dose 2 is due on Monday 23 Mar.
    assert loading[1]["due"] == "2026-03-23"


def test_give_on_a_date_early_moves_every_later_dose(cli: Clinic) -> None:
    enroll(cli, "A1")
    ok(cli, "give", "A1", "--on", "2026-03-02")
    ok(cli, "give", "A1", "--on", "2026-03-03")  # dose 2 a day early
    loading = doses(schedule(cli, "A1"), "loading")
    assert dues(loading) == [
        "2026-03-02", "2026-03-04", "2026-03-05", "2026-03-09", "2026-03-11", "2026-03-13",
    ]
    assert [e["done_on"] for e in loading[:2]] == ["2026-03-02", "2026-03-03"]


def test_give_gives_the_overdue_dose_first(cli: Clinic) -> None:
    enroll(cli, "A1")
    ok(cli, "give", "A1", "--on", "2026-03-10")
    loading = doses(schedule(cli, "A1"), "loading")
    assert loading[0]["done_on"] == "2026-03-10" and loading[0]["due"] == "2026-03-02"
    assert loading[1]["due"] == "2026-03-12"


# -- lab ---------------------------------------------------------------------------------


def test_lab_completes_the_order_named_by_order(cli: Clinic) -> None:
    enroll(cli, "A1")
    out = ok(cli, "lab", "A1", "--on", "2026-03-05", "--order", "2-week",
             "--result", "hb=11.2", "--result", "wbc=5").out
    assert "2-week" in out
    labs = lab_orders(schedule(cli, "A1"))
    assert (labs["2-week"]["status"], labs["2-week"]["done_on"]) == ("done", "2026-03-05")
    assert [label for label, e in labs.items() if e["status"] == "done"] == ["2-week"]


def test_lab_without_order_completes_the_open_order_nearest_the_date(cli: Clinic) -> None:
    enroll(cli, "A1")
    ok(cli, "lab", "A1", "--on", "2026-03-08", "--result", "reticulocytes=2.5")
    labs = lab_orders(schedule(cli, "A1"))
    assert [label for label, e in labs.items() if e["status"] == "done"] == ["early-response"]
    # early-response is done: baseline (6 days before) is now nearer than 2-week (8 days after).
    ok(cli, "lab", "A1", "--on", "2026-03-08", "--result", "b12=120")
    labs = lab_orders(schedule(cli, "A1"))
    done = sorted(label for label, e in labs.items() if e["status"] == "done")
    assert done == ["baseline", "early-response"]


def test_lab_on_a_date_halfway_between_two_orders_completes_the_earlier(cli: Clinic) -> None:
    # 3-month due Tue 2025-08-05 and 6-month due Wed 2025-11-05: 46 days either side of 20 Sep.
    enroll(cli, "T1", start="2025-05-05")
    enroll(cli, "T2", start="2025-05-05")
    labs = lab_orders(schedule(cli, "T1"))
    assert (labs["3-month"]["due"], labs["6-month"]["due"]) == ("2025-08-05", "2025-11-05")
    ok(cli, "lab", "T1", "--on", "2025-09-20", "--result", "b12=300")
    ok(cli, "lab", "T2", "--on", "2025-09-21", "--result", "b12=300")
    done = {mrn: [label for label, e in lab_orders(schedule(cli, mrn)).items() if e["status"] == "done"]
            for mrn in ("T1", "T2")}
    assert done == {"T1": ["3-month"], "T2": ["6-month"]}


# -- decisions -----------------------------------------------------------------------


def test_end_loading_cancels_the_next_loading_dose_and_maintenance_follows_in_2_months(cli: Clinic) -> None:
    enroll(cli, "N1", "--neuro")
    for on in ("2026-03-02", "2026-03-04", "2026-03-06"):
        ok(cli, "give", "N1", "--on", on)
    before = schedule(cli, "N1")
    assert [e["status"] for e in doses(before)] == ["done", "done", "done", "planned"]
    assert doses(before, "maintenance") == []
    ok(cli, "end-loading", "N1", "--on", "2026-03-09")
    data = schedule(cli, "N1")
    assert [e["status"] for e in doses(data, "loading")] == ["done", "done", "done", "cancelled"]
    maintenance = doses(data, "maintenance")
    assert dues(maintenance)[:3] == ["2026-05-06", "2026-07-06", "2026-09-07"]
    assert not [e for e in data["events"] if e["kind"] == "review" and e["status"] == "planned"]
    refused(cli.cobalt("end-loading", "N1", "--on", "2026-03-10"), "already")


def test_confirm_response_releases_cyano_phase_2_which_give_refuses_until_then(cli: Clinic) -> None:
    enroll(cli, "C1", "--protocol", "cyano")
    phase_1 = ["2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05",
               "2026-03-06", "2026-03-09", "2026-03-10"]
    for on in phase_1:
        ok(cli, "give", "C1", "--on", on)
    held = schedule(cli, "C1")
    assert {e["status"] for e in doses(held) if e["label"] in ("phase-2", "phase-3")} == {"held"}
    assert not [i for i in _worklist(cli, "--on", "2026-12-31") if i["label"] == "phase-2"]
    rows = database_rows(cli.database_url)
    refused(cli.cobalt("give", "C1", "--on", "2026-03-11"), "confirm-response")
    assert database_rows(cli.database_url) == rows

    ok(cli, "confirm-response", "C1", "--on", "2026-03-11")
    data = schedule(cli, "C1")
    phase_2 = [e for e in doses(data) if e["label"] == "phase-2"]
    # The later of the confirmation (11 Mar) and the last phase-1 dose + 2 days (12 Mar).
    assert phase_2[0]["due"] == "2026-03-12" and phase_2[0]["seq"] == 8
    assert {e["status"] for e in phase_2} == {"planned"}
    gate = next(e for e in data["events"] if e["kind"] == "review")
    assert (gate["label"], gate["status"], gate["done_on"]) == ("response-gate", "done", "2026-03-11")
    ok(cli, "give", "C1", "--on", "2026-03-12")
    assert doses(schedule(cli, "C1"))[7]["done_on"] == "2026-03-12"


def test_discharge_cancels_everything_not_done_and_nothing_is_due_afterwards(cli: Clinic) -> None:
    enroll(cli, "A1")
    enroll(cli, "B2")
    ok(cli, "give", "A1", "--on", "2026-03-02")
    ok(cli, "give", "A1", "--on", "2026-03-04")
    ok(cli, "discharge", "A1", "--on", "2026-03-10", "--reason", "moved away")
    data = schedule(cli, "A1")
    assert data["patient"]["status"] == "discharged"
    assert data["patient"]["discharged_on"] == "2026-03-10"
    done = [e for e in data["events"] if e["status"] == "done"]
    assert [e["done_on"] for e in done] == ["2026-03-02", "2026-03-04"]
    assert {e["status"] for e in data["events"] if e not in done} == {"cancelled"}
    assert {i["mrn"] for i in _worklist(cli, "--on", "2031-01-01")} == {"B2"}
    refused(cli.cobalt("give", "A1", "--on", "2026-03-11"), "discharged")
    refused(cli.cobalt("discharge", "A1", "--reason", "again"), "discharged")


def test_opt_out_and_opt_in_switch_the_patients_messages_and_change_no_event(cli: Clinic) -> None:
    enroll(cli, "A1")
    before = schedule(cli, "A1")
    assert before["patient"]["opted_out"] is False
    ok(cli, "opt-out", "A1")
    after = schedule(cli, "A1")
    assert after["patient"]["opted_out"] is True
    assert after["events"] == before["events"]
    assert "unchanged" in ok(cli, "opt-out", "A1").out
    ok(cli, "opt-in", "A1")
    assert schedule(cli, "A1")["patient"]["opted_out"] is False


# -- protocols and tick ----------------------------------------------------------------


def test_protocols_json_lists_the_three_protocols_and_their_phases(cli: Clinic) -> None:
    data = {p["id"]: p for p in ok(cli, "protocols", "--json").json()}
    assert set(data) == {"hydroxo", "hydroxo-neuro", "cyano"}
    hydroxo = data["hydroxo"]
    assert hydroxo["drug"] == "hydroxocobalamin" and hydroxo["dose"] == "1 mg"
    assert [(ph["doses"], ph["intervals_days"]) for ph in hydroxo["loading"]] == [(6, [2, 2, 3, 2, 2])]
    assert hydroxo["maintenance_months"] == [2, 3] and hydroxo["default_maintenance_months"] == 3
    assert data["hydroxo-neuro"]["loading"][0]["every_days"] == 2
    assert data["hydroxo-neuro"]["loading"][0]["doses"] is None
    assert data["hydroxo-neuro"]["maintenance_months"] == [2]
    cyano = data["cyano"]
    assert cyano["drug"] == "cyanocobalamin" and cyano["dose"] == "100 mcg"
    assert [(ph["label"], ph["doses"], ph["held_until_response"]) for ph in cyano["loading"]] == [
        ("phase-1", 7, False), ("phase-2", 7, True), ("phase-3", 7, False),
    ]
    assert cyano["maintenance_months"] == [1]
    text = ok(cli, "protocols").out
    assert all(protocol in text for protocol in data)


def test_tick_rolls_the_plan_forward_to_stay_a_year_ahead(cli: Clinic) -> None:
    enroll(cli, "A1")
    assert max(dues(doses(schedule(cli, "A1"), "maintenance"))) < "2028-01-10"
    report = ok(cli, "tick", "--now", "2028-01-10T09:00:00+00:00", "--json").json()
    assert report["replanned"] == 1
    maintenance = doses(schedule(cli, "A1"), "maintenance")
    assert max(dues(maintenance)) >= "2029-01-10"
    again = ok(cli, "tick", "--now", "2028-01-10T09:05:00+00:00", "--json").json()
    assert again["replanned"] == 0
    assert doses(schedule(cli, "A1"), "maintenance") == maintenance


# -- bad input: exit 2, one line, nothing changed --------------------------------------------

LONG = "x" * 65

BAD_INPUT = [
    # (what, arguments, words the one line must hold)
    ("duplicate MRN", ["enroll", "--mrn", "A1", "--name", "Again"], ["A1"]),
    ("unknown protocol", ["enroll", "--mrn", "Z9", "--name", "Zed", "--protocol", "methylcobalamin"],
     ["methylcobalamin"]),
    ("impossible start date", ["enroll", "--mrn", "Z9", "--name", "Zed", "--start", "2026-02-30"],
     ["2026-02-30"]),
    ("start date not YYYY-MM-DD", ["enroll", "--mrn", "Z9", "--name", "Zed", "--start", "20260302"], []),
    ("start years ahead", ["enroll", "--mrn", "Z9", "--name", "Zed", "--start", "9999-06-01"], []),
    ("cyano with renal impairment",
     ["enroll", "--mrn", "Z9", "--name", "Zed", "--protocol", "cyano", "--renal-impairment"],
     ["hydroxocobalamin"]),
    ("cyano with eGFR 45", ["enroll", "--mrn", "Z9", "--name", "Zed", "--protocol", "cyano", "--egfr", "45"],
     ["hydroxocobalamin"]),
    ("maintenance every 4 months", ["enroll", "--mrn", "Z9", "--name", "Zed", "--maintenance-months", "4"],
     ["4"]),
    ("cyano maintenance every 3 months",
     ["enroll", "--mrn", "Z9", "--name", "Zed", "--protocol", "cyano", "--maintenance-months", "3"], []),
    ("maintenance months not a number",
     ["enroll", "--mrn", "Z9", "--name", "Zed", "--maintenance-months", "two"], []),
    ("missing name", ["enroll", "--mrn", "Z9"], ["--name"]),
    ("empty MRN", ["enroll", "--mrn", " ", "--name", "Zed"], ["--mrn"]),
    ("MRN too long", ["enroll", "--mrn", LONG, "--name", "Zed"], ["--mrn"]),
    ("not an email", ["enroll", "--mrn", "Z9", "--name", "Zed", "--email", "zed.example.org"], ["--email"]),
    ("eGFR not a number", ["enroll", "--mrn", "Z9", "--name", "Zed", "--egfr", "normal"], []),
    ("implausible platelets", ["enroll", "--mrn", "Z9", "--name", "Zed", "--platelets", "40000"],
     ["platelets"]),
    ("implausible haemoglobin", ["enroll", "--mrn", "Z9", "--name", "Zed", "--hb", "95"], ["hb"]),
    ("unknown MRN for schedule", ["schedule", "Z9"], ["Z9"]),
    ("unknown MRN for give", ["give", "Z9"], ["Z9"]),
    ("give in the future", ["give", "A1", "--on", "2026-03-21"], ["future"]),
    ("give before the start", ["give", "A1", "--on", "2026-03-01"], ["before"]),
    ("second dose on one day", ["give", "A1", "--on", "2026-03-04"], ["2026-03-04"]),
    ("give before the last dose", ["give", "A1", "--on", "2026-03-03"], []),
    ("give on an impossible date", ["give", "A1", "--on", "2026-02-30"], []),
    ("unknown lab code", ["lab", "A1", "--result", "vitd=40"], ["vitd"]),
    ("implausible lab value", ["lab", "A1", "--result", "b12=18000"], ["b12"]),
    ("malformed CODE=VALUE", ["lab", "A1", "--result", "b12:180"], ["CODE=VALUE"]),
    ("lab value not a number", ["lab", "A1", "--result", "b12=low"], ["b12"]),
    ("lab without a result", ["lab", "A1"], []),
    ("one code twice", ["lab", "A1", "--result", "hb=10", "--result", "hb=11"], []),
    ("unknown lab order", ["lab", "A1", "--order", "5-year", "--result", "b12=300"], ["5-year"]),
    ("lab in the future", ["lab", "A1", "--on", "2026-04-01", "--result", "b12=300"], ["future"]),
    ("lab for an unknown MRN", ["lab", "Z9", "--result", "b12=300"], ["Z9"]),
    ("end-loading for hydroxo", ["end-loading", "A1"], ["hydroxo-neuro"]),
    ("end-loading for cyano", ["end-loading", "C1"], ["hydroxo-neuro"]),
    ("confirm-response for hydroxo", ["confirm-response", "A1"], ["cyano"]),
    ("confirm-response for hydroxo-neuro", ["confirm-response", "N1"], ["cyano"]),
    ("confirm-response in the future", ["confirm-response", "C1", "--on", "2026-04-01"], ["future"]),
    ("end-loading before the start", ["end-loading", "N1", "--on", "2026-02-27"], ["before"]),
    ("discharge without a reason", ["discharge", "A1"], ["--reason"]),
    ("discharge with an empty reason", ["discharge", "A1", "--reason", "  "], ["--reason"]),
    ("discharge in the future", ["discharge", "A1", "--on", "2026-04-01", "--reason", "moved"], ["future"]),
    ("opt-out for an unknown MRN", ["opt-out", "Z9"], ["Z9"]),
    ("due with negative days", ["due", "--days", "-1"], ["--days"]),
    ("due with days not a number", ["due", "--days", "week"], []),
    ("due with days past the calendar", ["due", "--days", "99999999"], ["--days"]),
    ("due on an impossible date", ["due", "--on", "2026-13-01"], []),
    ("tick at a time that is not a time", ["tick", "--now", "teatime"], []),
    ("downgrade to an unknown revision", ["db", "downgrade", "0999"], ["0999"]),
    ("unknown command", ["prescribe", "A1"], []),
    ("no command", [], []),
]


@pytest.fixture
def three_patients(cli: Clinic) -> Clinic:
    enroll(cli, "A1", "--email", "ann@example.org")
    ok(cli, "give", "A1", "--on", "2026-03-02")
    ok(cli, "give", "A1", "--on", "2026-03-04")
    enroll(cli, "C1", "--protocol", "cyano")
    enroll(cli, "N1", "--neuro")
    return cli


def test_bad_input_exits_2_with_one_line_and_changes_nothing(three_patients: Clinic,
                                                            subtests: pytest.Subtests) -> None:
    cli = three_patients
    before = {mrn: schedule(cli, mrn) for mrn in ("A1", "C1", "N1")}
    rows = database_rows(cli.database_url)
    for what, args, words in BAD_INPUT:
        with subtests.test(what):
            refused(cli.cobalt(*args), *words)
            assert database_rows(cli.database_url) == rows
    assert {mrn: schedule(cli, mrn) for mrn in before} == before
    refused(cli.cobalt("schedule", "Z9"))  # no refused enrolment left a patient behind


# -- configuration ---------------------------------------------------------------------------


def test_cobalt_toml_in_the_working_directory_is_read_when_cobalt_config_is_unset(cli: Clinic) -> None:
    cli.monkeypatch.delenv("COBALT_CONFIG")
    assert Path.cwd() == cli.path and (cli.path / "cobalt.toml").exists()
    enroll(cli, "A1")
    cli.monkeypatch.setenv("COBALT_CONFIG", "")  # empty: as if unset
    assert schedule(cli, "A1")["patient"]["mrn"] == "A1"
    assert cli.settings().clinic.name == "Riverside clinic"


def test_cobalt_config_names_the_file_to_read(cli: Clinic, tmp_path: Path) -> None:
    elsewhere = tmp_path / "etc" / "clinic.toml"
    elsewhere.parent.mkdir()
    shutil.move(cli.path / "cobalt.toml", elsewhere)
    cli.monkeypatch.setenv("COBALT_CONFIG", str(elsewhere))
    enroll(cli, "A1")
    assert schedule(cli, "A1")["patient"]["mrn"] == "A1"
    cli.monkeypatch.setenv("COBALT_CONFIG", str(tmp_path / "missing.toml"))
    refused(cli.cobalt("schedule", "A1"), "missing.toml")


def test_environment_overrides_the_database_url_of_cobalt_toml(cli: Clinic, tmp_path: Path) -> None:
    toml = (cli.path / "cobalt.toml").read_text()
    other = tmp_path / "other.db"
    (cli.path / "cobalt.toml").write_text(toml.replace(cli.database_url, f"sqlite:///{other}"))
    cli.monkeypatch.setenv("COBALT_DATABASE_URL", cli.database_url)
    enroll(cli, "A1")
    assert not other.exists()
    cli.monkeypatch.delenv("COBALT_DATABASE_URL")
    refused(cli.cobalt("schedule", "A1"), "A1")  # the file's database: a new, empty one
    assert other.exists()
    cli.monkeypatch.setenv("COBALT_DATABASE_URL", cli.database_url)
    assert schedule(cli, "A1")["patient"]["mrn"] == "A1"


def test_environment_overrides_the_clinic_time_zone(clinic: Clinic) -> None:
    with freeze_time("2026-03-20 23:30:00"):  # UTC; already Saturday in Berlin
        enroll(clinic, "U1", start="2026-03-20")
        ok(clinic, "give", "U1")
        clinic.monkeypatch.setenv("COBALT_CLINIC_TIMEZONE", "Europe/Berlin")
        ok(clinic, "give", "U1", "--early")  # Saturday: two days before Monday's dose
    assert [e["done_on"] for e in doses(schedule(clinic, "U1"))[:2]] == ["2026-03-20", "2026-03-21"]


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("timezone", '"Mars/Olympus_Mons"', "timezone"),
        ("open_days", '["mon", "funday"]', "funday"),
        ("holidays", '"ZZ"', "ZZ"),
        ("send_time", '"25:00"', "send_time"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line(clinic: Clinic, setting: str, value: str, says: str) -> None:
    path = clinic.path / "cobalt.toml"
    lines = [f"{setting} = {value}" if line.startswith(f"{setting} =") else line
             for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    refused(clinic.cobalt("due"), says)


# -- the real console script -------------------------------------------------------------------


def _console(cwd: Path, *args: str) -> Result:
    """``cobalt`` in a child process, with no COBALT_* variable at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COBALT_")}
    proc = subprocess.run([COBALT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def test_console_script_creates_and_migrates_cobalt_db_in_a_fresh_directory(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = _console(fresh, "enroll", "--mrn", "A1", "--name", "Ann", "--start", "2026-03-02")
    assert result.code == 0, result.err
    assert (fresh / "cobalt.db").exists()
    current = _console(fresh, "db", "current")
    assert current.code == 0 and f"database at {db.head_revision()}" in current.out
    data = _console(fresh, "schedule", "A1", "--json")
    assert data.code == 0, data.err
    assert data.json()["events"][0]["due"] == "2026-03-02"


def test_console_script_refuses_a_database_behind_the_newest_migration_until_upgraded(clinic: Clinic) -> None:
    enroll(clinic, "A1")
    before = schedule(clinic, "A1")
    ok(clinic, "db", "downgrade", "0001")
    result = clinic.exe("schedule", "A1", "--json")
    assert result.code == 1, (result.code, result.err)  # not bad input: the database needs work
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert "cobalt db upgrade" in result.err
    refused_too = clinic.cobalt("enroll", "--mrn", "B2", "--name", "Bo")
    assert refused_too.code == 1 and "cobalt db upgrade" in refused_too.err
    upgraded = clinic.exe("db", "upgrade")
    assert upgraded.code == 0, upgraded.err
    after = clinic.exe("schedule", "A1", "--json")
    assert after.code == 0, after.err
    assert after.json() == before


def test_console_script_reports_bad_input_in_one_line_with_status_2(clinic: Clinic) -> None:
    for args in (("give", "Z9"), ("enroll", "--mrn", "Z9", "--name", "Zed", "--start", "2026-02-30")):
        refused(clinic.exe(*args))


def test_decisions_and_doses_cannot_be_dated_out_of_order(clinic):
    assert clinic.cobalt("enroll", "--mrn", "N1", "--name", "Neo", "--neuro", "--start", "2026-03-02").code == 0
    assert clinic.cobalt("give", "N1", "--on", "2026-03-02").code == 0
    assert clinic.cobalt("give", "N1", "--on", "2026-03-04").code == 0
    before = clinic.cobalt("schedule", "N1", "--json").json()
    for args in (("end-loading", "N1", "--on", "2026-03-03"),
                 ("discharge", "N1", "--on", "2026-03-03", "--reason", "moved")):
        result = clinic.cobalt(*args)
        assert result.code == 2 and "before the last dose given" in result.err
    assert clinic.cobalt("schedule", "N1", "--json").json() == before
    assert clinic.cobalt("end-loading", "N1", "--on", "2026-03-06").code == 0
    late = clinic.cobalt("give", "N1", "--on", "2026-03-05")
    assert late.code == 2 and "decision was recorded on 2026-03-06" in late.err


def test_neuro_review_cadence_is_clinic_policy(clinic):
    clinic.configure(extra="")
    toml = (clinic.path / "cobalt.toml").read_text().replace(
        'send_time = "08:00"', 'send_time = "08:00"\nneuro_review_days = 21')
    (clinic.path / "cobalt.toml").write_text(toml)
    assert clinic.cobalt("enroll", "--mrn", "N2", "--name", "Neo", "--neuro", "--start", "2026-03-02").code == 0
    reviews = [e for e in clinic.cobalt("schedule", "N2", "--json").json()["events"] if e["kind"] == "review"]
    assert [r["due"] for r in reviews] == ["2026-03-23"]
    (clinic.path / "cobalt.toml").write_text(toml.replace("neuro_review_days = 21", "neuro_review_days = 3"))
    bad = clinic.cobalt("schedule", "N2")
    assert bad.code == 2 and "neuro_review_days" in bad.err


def test_one_result_flag_takes_several_results(clinic):
    assert clinic.cobalt("enroll", "--mrn", "L1", "--name", "Lee", "--start", "2026-03-02").code == 0
    assert clinic.cobalt("lab", "L1", "--on", "2026-03-02", "--order", "baseline",
                         "--result", "b12=120", "hb=9.8", "--result", "platelets=140").code == 0
    baseline = next(e for e in clinic.cobalt("schedule", "L1", "--json").json()["events"]
                    if e["label"] == "baseline")
    assert baseline["status"] == "done" and baseline["done_on"] == "2026-03-02"


@pytest.mark.parametrize("args", [
    ("end-loading", "N1", "--on", "2026-03-06"),
    ("opt-out", "N1"),
    ("discharge", "N1", "--on", "2026-03-06", "--reason", "moved"),
])
def test_commands_that_confirm_also_answer_in_json(clinic, args):
    assert clinic.cobalt("enroll", "--mrn", "N1", "--name", "Neo", "--neuro", "--start", "2026-03-02").code == 0
    assert clinic.cobalt("give", "N1", "--on", "2026-03-02").code == 0  # loading ends only once begun
    result = clinic.cobalt(*args, "--json")
    assert result.code == 0, result.err
    assert result.json()["mrn"] == "N1"


def test_control_characters_in_an_mrn_or_name_are_refused(clinic):
    result = clinic.cobalt("enroll", "--mrn", "Z1\nBcc: x@y.example", "--name", "Zed")
    assert result.code == 2 and len(result.err.splitlines()) == 1


def test_a_discharged_patient_takes_no_more_lab_results(clinic):
    assert clinic.cobalt("enroll", "--mrn", "D1", "--name", "Dee", "--start", "2026-03-02").code == 0
    assert clinic.cobalt("discharge", "D1", "--on", "2026-03-03", "--reason", "moved away").code == 0
    result = clinic.cobalt("lab", "D1", "--on", "2026-03-04", "--result", "hb=4")
    assert result.code == 2 and "discharged" in result.err


def test_a_failing_pass_says_one_line_through_the_real_console_script(clinic):
    own = clinic.path / "broken"
    (own / "dose-reminder").mkdir(parents=True)
    clinic.configure()
    toml = (clinic.path / "cobalt.toml").read_text()
    (clinic.path / "cobalt.toml").write_text('templates_dir = "broken"\n' + toml)
    assert clinic.exe("enroll", "--mrn", "F1", "--name", "Fay", "--email", "fay@patient.example",
                      "--start", "2026-03-02").code == 0
    result = clinic.exe("tick", "--now", "2026-03-01T09:00")
    assert result.code == 1
    assert len(result.err.splitlines()) == 1 and "Traceback" not in result.err


def test_enroll_keeps_a_phone_number_and_refuses_one_that_is_not(cli: Clinic) -> None:
    enroll(cli, "T1", "--phone", "+44 (0)20 7946-0000")
    assert schedule(cli, "T1")["patient"]["phone"] == "+44 (0)20 7946-0000"
    before = database_rows(cli.database_url)
    result = cli.cobalt("enroll", "--mrn", "T2", "--name", "Tee", "--phone", "call me")
    assert result.code == 2 and "--phone" in result.err and len(result.err.splitlines()) == 1
    assert database_rows(cli.database_url) == before


def test_a_reader_that_stops_early_gets_no_traceback(cli: Clinic) -> None:
    for n in range(30):
        enroll(cli, f"H{n}")
    env = {**os.environ, "COBALT_CONFIG": str(cli.path / "cobalt.toml")}
    result = subprocess.run(f"'{COBALT}' due --on 2026-03-02 --days 400 | head -n 1", shell=True,
                            cwd=cli.path, capture_output=True, text=True, env=env, timeout=60)
    assert "Traceback" not in result.stderr and result.stdout.strip()
