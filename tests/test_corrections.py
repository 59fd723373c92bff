"""Corrections, rescheduling and finding patients (SPEC section 7), on a real database.

Every CLI test runs on SQLite and on PostgreSQL, with the clock frozen on Friday
2026-03-20 at 10:00 UTC. Every refusal is one line on stderr, exit status 2, and
leaves every row of every table as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Clinic
from freezegun import freeze_time
from test_cli import database_rows, doses, dues, enroll, lab_orders, ok, refused, schedule

from scheduler.worklist import group_overdue, what

TODAY = "2026-03-20"  # a Friday
NOW = f"{TODAY} 10:00:00"


@pytest.fixture
def cli(clinic: Clinic) -> Iterator[Clinic]:
    """The clinic, on Friday 2026-03-20 at 10:00 UTC."""
    with freeze_time(NOW):
        yield clinic


def event_id(clinic: Clinic, mrn: str, kind: str, label: str, seq: int | None = None) -> int:
    found = [e for e in schedule(clinic, mrn)["events"]
             if e["kind"] == kind and e["label"] == label and (seq is None or e["seq"] == seq)]
    assert found, (mrn, kind, label, seq)
    return int(found[0]["id"])


def dose_id(clinic: Clinic, mrn: str, seq: int, phase: str = "loading") -> int:
    return int(next(e["id"] for e in doses(schedule(clinic, mrn), phase) if e["seq"] == seq))


def audit(clinic: Clinic, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ok(clinic, "audit", *args, "--json").json()
    return rows


def alert_codes(clinic: Clinic, mrn: str) -> list[str]:
    return [a["code"] for a in schedule(clinic, mrn)["alerts"]]


# -- the worklist's lines (pure) -------------------------------------------------------------


def _item(mrn: str, kind: str, phase: str, due: str, overdue: bool, **extra: Any) -> dict[str, Any]:
    return {"mrn": mrn, "name": f"Patient {mrn}", "kind": kind, "phase": phase, "label": extra.pop("label", phase),
            "seq": extra.pop("seq", 1), "due": due, "overdue": overdue, "tests": extra.pop("tests", []),
            "drug": extra.pop("drug", None), "amount": extra.pop("amount", None), **extra}


def test_a_patients_overdue_events_of_one_kind_are_one_line_and_the_rest_one_line_each() -> None:
    items = [
        _item("P1", "dose", "maintenance", "2027-04-15", True, seq=3, drug="hydroxocobalamin", amount="1 mg"),
        _item("P2", "dose", "maintenance", "2027-05-01", True, seq=1),
        _item("P1", "dose", "maintenance", "2027-07-15", True, seq=4),
        _item("P1", "lab", "monitoring", "2027-08-01", True, label="annual", tests=["b12", "homocysteine"]),
        _item("P1", "dose", "maintenance", "2027-10-15", True, seq=5),
        _item("P1", "dose", "maintenance", "2028-01-15", False, seq=6),
    ]
    lines = group_overdue(items)
    assert [(line["mrn"], line["count"]) for line in lines] == [("P1", 3), ("P2", 1), ("P1", 1), ("P1", 1)]
    assert lines[0]["what"] == "3 maintenance doses overdue since 2027-04-15 (hydroxocobalamin 1 mg)"
    assert [e["seq"] for e in lines[0]["events"]] == [3, 4, 5]
    assert lines[0]["since"] == "2027-04-15"
    assert lines[2]["what"] == "lab annual: b12, homocysteine"
    assert lines[3]["overdue"] is False and lines[3]["what"] == "maintenance dose 6"


def test_what_names_the_drug_and_amount_of_a_dose_and_the_tests_of_a_lab() -> None:
    dose = _item("P1", "dose", "loading", "2026-03-02", False, seq=2, label="loading",
                 drug="cyanocobalamin", amount="100 mcg")
    assert what(dose) == "cyanocobalamin 100 mcg (loading dose 2)"
    lab = _item("P1", "lab", "monitoring", "2026-03-16", False, label="2-week", tests=["cbc", "ldh", "bilirubin"])
    assert what(lab) == "lab 2-week: cbc, ldh, bilirubin"
    two_labs = group_overdue([{**lab, "overdue": True}, {**lab, "label": "3-month", "due": "2026-06-02",
                                                          "overdue": True}])
    assert two_labs[0]["what"] == "2 lab orders overdue since 2026-03-16 (2-week, 3-month)"


# -- patients --------------------------------------------------------------------------------


def test_patients_lists_active_patients_with_protocol_next_due_and_open_alerts(cli: Clinic) -> None:
    enroll(cli, "1001", "--platelets", "40")
    ok(cli, "give", "1001", "--on", "2026-03-02")
    enroll(cli, "2002", "--protocol", "cyano", start="2026-03-23")
    enroll(cli, "3003")
    ok(cli, "discharge", "3003", "--reason", "moved to Leeds")
    rows = ok(cli, "patients", "--json").json()
    assert [r["mrn"] for r in rows] == ["1001", "2002"]
    first = rows[0]
    assert set(first) >= {"mrn", "name", "protocol", "status", "next_due", "open_alerts"}
    assert (first["name"], first["protocol"], first["status"]) == ("Patient 1001", "hydroxo", "active")
    # The earliest planned event: the baseline lab order (a dose comes first on a tie).
    assert first["next_due"]["date"] == "2026-03-02" and first["next_due"]["kind"] == "lab"
    assert first["open_alerts"] == ["platelets-low"]
    assert rows[1]["next_due"]["date"] == "2026-03-23" and rows[1]["next_due"]["kind"] == "dose"
    assert rows[1]["protocol"] == "cyano" and rows[1]["open_alerts"] == []
    discharged = ok(cli, "patients", "--status", "discharged", "--json").json()
    assert [(r["mrn"], r["status"], r["next_due"]) for r in discharged] == [("3003", "discharged", None)]
    assert [r["mrn"] for r in ok(cli, "patients", "--status", "all", "--json").json()] == ["1001", "2002", "3003"]
    text = ok(cli, "patients").out
    assert text.splitlines()[0].split() == ["mrn", "name", "protocol", "status", "next", "due", "open", "alerts"]
    assert "platelets-low" in text


def test_patients_search_matches_the_start_of_the_mrn_or_any_part_of_the_name_ignoring_case(cli: Clinic) -> None:
    ok(cli, "enroll", "--mrn", "AB100", "--name", "Ann Example", "--start", "2026-03-02")
    ok(cli, "enroll", "--mrn", "XAB200", "--name", "Bo Neuro", "--start", "2026-03-02")
    ok(cli, "enroll", "--mrn", "C300", "--name", "Cy Abbott", "--start", "2026-03-02")

    def found(text: str) -> list[str]:
        return [r["mrn"] for r in ok(cli, "patients", "--search", text, "--json").json()]

    assert found("ab") == ["AB100", "C300"]  # MRN start; "Abbott"; not the middle of XAB200
    assert found("EXAMPLE") == ["AB100"]
    assert found("xab") == ["XAB200"]
    assert found("neur") == ["XAB200"]
    assert found("%") == [] and found("_") == []  # wildcards are plain text
    assert ok(cli, "patients", "--search", "zz").out.strip() == "no patients found"


# -- edit ------------------------------------------------------------------------------------


def test_edit_changes_details_and_the_audit_trail_keeps_old_and_new_values(cli: Clinic) -> None:
    enroll(cli, "1001", "--email", "ann@example.org")
    ok(cli, "--by", "nurse.kim", "edit", "1001", "--name", "Ann Newname", "--email", "ann@new.example",
       "--phone", "+44 20 7946 0000")
    patient = schedule(cli, "1001")["patient"]
    assert (patient["name"], patient["email"], patient["phone"]) == (
        "Ann Newname", "ann@new.example", "+44 20 7946 0000")
    (row,) = [r for r in audit(cli, "1001") if r["action"] == "edit"]
    assert row["by"] == "nurse.kim" and row["mrn"] == "1001"
    assert row["details"]["old"] == {"email": "ann@example.org", "name": "Patient 1001", "phone": None}
    assert row["details"]["new"] == {"email": "ann@new.example", "name": "Ann Newname", "phone": "+44 20 7946 0000"}
    ok(cli, "edit", "1001", "--no-email", "--no-phone")
    patient = schedule(cli, "1001")["patient"]
    assert (patient["email"], patient["phone"]) == (None, None)


def test_edit_renal_impairment_on_cyano_raises_renal_cyano_and_clearing_it_closes_it(cli: Clinic) -> None:
    enroll(cli, "2002", "--protocol", "cyano", start=TODAY)
    assert alert_codes(cli, "2002") == []
    out = ok(cli, "edit", "2002", "--renal-impairment").out
    assert "renal-cyano" in out
    assert alert_codes(cli, "2002") == ["renal-cyano"]
    assert schedule(cli, "2002")["patient"]["renal_impairment"] is True
    ok(cli, "edit", "2002", "--no-renal-impairment")
    assert alert_codes(cli, "2002") == []


def test_edit_folic_acid_and_neuro_flags_re_evaluate_alerts(cli: Clinic) -> None:
    enroll(cli, "1001")
    ok(cli, "edit", "1001", "--on-folic-acid", "--neuro")
    assert alert_codes(cli, "1001") == ["folic-acid"]
    patient = schedule(cli, "1001")["patient"]
    assert (patient["on_folic_acid"], patient["neuro"], patient["protocol"]) == (True, True, "hydroxo")
    ok(cli, "edit", "1001", "--no-folic-acid", "--no-neuro")
    assert alert_codes(cli, "1001") == []


# -- void ------------------------------------------------------------------------------------


def test_void_a_dose_keeps_it_marked_void_and_replans_as_if_never_given(cli: Clinic) -> None:
    enroll(cli, "1001")
    ok(cli, "give", "1001", "--on", "2026-03-02")
    ok(cli, "give", "1001", "--on", "2026-03-05")  # dose 2 a day late: the later doses moved
    assert dues(doses(schedule(cli, "1001"), "loading"))[2] == "2026-03-09"
    dose2 = dose_id(cli, "1001", 2)
    ok(cli, "--by", "nurse.kim", "void", "1001", str(dose2), "--reason", "given to the wrong patient")
    data = schedule(cli, "1001")
    loading = doses(data, "loading")
    assert [e["status"] for e in loading[:3]] == ["done", "planned", "planned"]
    assert dues(loading)[:3] == ["2026-03-02", "2026-03-04", "2026-03-06"]  # as if never given
    assert loading[1]["id"] == dose2
    (void,) = data["voided"]
    assert void["what"] == "dose given 2026-03-05"
    assert (void["by"], void["why"]) == ("nurse.kim", "given to the wrong patient")
    assert void["when"].startswith(TODAY)
    (row,) = [r for r in audit(cli, "1001") if r["action"] == "void"]
    assert row["by"] == "nurse.kim"
    assert row["details"]["reason"] == "given to the wrong patient"
    assert row["details"]["old"] == {"status": "done", "done_on": "2026-03-05"}
    assert row["details"]["new"]["status"] == "planned"
    assert "VOID dose given 2026-03-05" in ok(cli, "schedule", "1001").out
    # The real dose of that day may be recorded again: only doses in force count.
    ok(cli, "give", "1001", "--on", "2026-03-05")
    assert doses(schedule(cli, "1001"), "loading")[1]["done_on"] == "2026-03-05"


def test_void_lab_results_reopens_the_order_and_their_values_no_longer_count(cli: Clinic) -> None:
    enroll(cli, "1001")
    ok(cli, "lab", "1001", "--on", "2026-03-16", "--result", "platelets=30", "hb=11")
    two_week = lab_orders(schedule(cli, "1001"))["2-week"]
    assert two_week["status"] == "done"
    assert "platelets-low" in alert_codes(cli, "1001")
    ok(cli, "void", "1001", str(two_week["id"]), "--reason", "another patient's sample")
    data = schedule(cli, "1001")
    assert lab_orders(data)["2-week"]["status"] == "planned"
    assert "platelets-low" not in alert_codes(cli, "1001")
    assert [v["record"] for v in data["voided"]] == ["lab results"]
    assert "platelets" in data["voided"][0]["what"] and "hb" in data["voided"][0]["what"]


def test_void_a_review_reopens_it(cli: Clinic) -> None:
    enroll(cli, "N1", "--neuro")
    ok(cli, "give", "N1", "--on", "2026-03-02")
    ok(cli, "review", "N1", "--on", "2026-03-16")
    review = next(e for e in schedule(cli, "N1")["events"] if e["kind"] == "review" and e["seq"] == 1)
    assert review["status"] == "done"
    ok(cli, "void", "N1", str(review["id"]), "--reason", "recorded for the wrong patient")
    again = next(e for e in schedule(cli, "N1")["events"] if e["id"] == review["id"])
    assert (again["status"], again["done_on"]) == ("planned", None)
    assert schedule(cli, "N1")["voided"][0]["record"] == "review"


# -- move ------------------------------------------------------------------------------------


def test_move_a_dose_and_the_later_doses_count_from_the_new_day(cli: Clinic) -> None:
    enroll(cli, "1001", start="2026-03-23")
    dose2 = dose_id(cli, "1001", 2)
    assert dues(doses(schedule(cli, "1001"), "loading"))[:3] == ["2026-03-23", "2026-03-25", "2026-03-27"]
    ok(cli, "--by", "nurse.kim", "move", "1001", str(dose2), "--to", "2026-03-26", "--reason", "cannot come Wed")
    loading = doses(schedule(cli, "1001"), "loading")
    assert dues(loading) == ["2026-03-23", "2026-03-26", "2026-03-30", "2026-04-02", "2026-04-06", "2026-04-08"]
    assert loading[1]["id"] == dose2 and loading[1]["because"].startswith("moved to 2026-03-26")
    (row,) = [r for r in audit(cli, "1001") if r["action"] == "move"]
    assert row["by"] == "nurse.kim"
    assert row["details"]["old"] == {"due": "2026-03-25"} and row["details"]["new"] == {"due": "2026-03-26"}
    assert row["details"]["reason"] == "cannot come Wed"


def test_move_a_lab_order(cli: Clinic) -> None:
    enroll(cli, "1001")
    three_month = event_id(cli, "1001", "lab", "3-month")
    ok(cli, "move", "1001", str(three_month), "--to", "2026-06-09")
    labs = lab_orders(schedule(cli, "1001"))
    assert (labs["3-month"]["due"], labs["6-month"]["due"]) == ("2026-06-09", "2026-09-02")


# -- refusals: one line, exit 2, nothing changed --------------------------------------------------


@pytest.fixture
def corrections_clinic(cli: Clinic) -> Clinic:
    enroll(cli, "A1")
    ok(cli, "give", "A1", "--on", "2026-03-02")
    ok(cli, "give", "A1", "--on", "2026-03-04")
    enroll(cli, "B2", start="2026-03-18")
    ok(cli, "give", "B2", "--on", "2026-03-18")
    ok(cli, "give", "B2", "--on", "2026-03-19")  # dose 2, a day early: dose 3 falls on Monday 23rd
    enroll(cli, "C1", "--protocol", "cyano")
    enroll(cli, "N1", "--neuro", start="2026-03-16")
    enroll(cli, "D1")
    ok(cli, "discharge", "D1", "--on", "2026-03-10", "--reason", "moved away")
    return cli


def test_every_refusal_exits_2_with_one_line_and_changes_nothing(corrections_clinic: Clinic,
                                                                 subtests: pytest.Subtests) -> None:
    cli = corrections_clinic
    a1 = schedule(cli, "A1")
    done = str(doses(a1)[0]["id"])
    planned = str(doses(a1)[2]["id"])
    planned_lab = str(lab_orders(a1)["3-month"]["id"])
    held = str(next(e["id"] for e in doses(schedule(cli, "C1")) if e["status"] == "held"))
    cancelled = str(doses(schedule(cli, "D1"))[0]["id"])
    of_b2 = str(doses(schedule(cli, "B2"))[0]["id"])
    cases: list[tuple[str, list[str], list[str]]] = [
        ("void of a planned event", ["void", "A1", planned, "--reason", "slip"], [planned, "planned"]),
        ("void of an unknown event", ["void", "A1", "999999", "--reason", "slip"], ["999999"]),
        ("void of another patient's event", ["void", "A1", of_b2, "--reason", "slip"], [of_b2]),
        ("void without a reason", ["void", "A1", done], ["--reason"]),
        ("void with an empty reason", ["void", "A1", done, "--reason", " "], ["--reason"]),
        ("void with an event id that is not a number", ["void", "A1", "first", "--reason", "slip"], ["first"]),
        ("void for an unknown MRN", ["void", "Z9", done, "--reason", "slip"], ["Z9"]),
        ("move of a done event", ["move", "A1", done, "--to", "2026-03-23"], ["done"]),
        ("move of a cancelled event", ["move", "D1", cancelled, "--to", "2026-03-23"], ["discharged"]),
        ("move of a held event", ["move", "C1", held, "--to", "2026-03-23"], ["held"]),
        ("move to the past", ["move", "A1", planned, "--to", "2026-03-19"], ["past"]),
        ("move to a Saturday", ["move", "A1", planned, "--to", "2026-03-21"], ["closed"]),
        ("move to an impossible date", ["move", "A1", planned, "--to", "2026-02-30"], []),
        ("move without --to", ["move", "A1", planned], ["--to"]),
        ("move of an unknown event", ["move", "A1", "999999", "--to", "2026-03-23"], ["999999"]),
        ("move a lab years ahead", ["move", "A1", planned_lab, "--to", "2031-03-03"], ["year"]),
        ("edit with nothing to change", ["edit", "A1"], ["nothing to change"]),
        ("edit to a bad email", ["edit", "A1", "--email", "ann.example.org"], ["--email"]),
        ("edit to a bad phone", ["edit", "A1", "--phone", "call me"], ["--phone"]),
        ("edit to an empty name", ["edit", "A1", "--name", "  "], ["--name"]),
        ("edit with --email and --no-email", ["edit", "A1", "--email", "a@b.example", "--no-email"], []),
        ("edit with --neuro and --no-neuro", ["edit", "A1", "--neuro", "--no-neuro"], []),
        ("edit for an unknown MRN", ["edit", "Z9", "--name", "Zed"], ["Z9"]),
        ("patients with an unknown status", ["patients", "--status", "asleep"], ["asleep"]),
        ("audit for an unknown MRN", ["audit", "Z9"], ["Z9"]),
        ("audit since an impossible date", ["audit", "--since", "2026-13-01"], []),
        ("a loading dose three days early", ["give", "B2", "--on", "2026-03-20"], ["--early"]),
        ("end-loading before any loading dose", ["end-loading", "N1", "--on", "2026-03-16"], ["loading"]),
        ("a named order that asks for none of the tests",
         ["lab", "A1", "--order", "baseline", "--result", "folate=3"], ["baseline", "folate"]),
    ]
    rows = database_rows(cli.database_url)
    for what_, args, words in cases:
        with subtests.test(what_):
            refused(cli.cobalt(*args), *words)
            assert database_rows(cli.database_url) == rows


# -- the guards ----------------------------------------------------------------------------------


def test_an_early_loading_dose_needs_early_beyond_one_day(cli: Clinic) -> None:
    enroll(cli, "1001", start="2026-03-16")
    ok(cli, "give", "1001", "--on", "2026-03-16")
    ok(cli, "give", "1001", "--on", "2026-03-17")  # dose 2 due 18 March: one day early is fine
    ok(cli, "give", "1001", "--on", "2026-03-18")  # dose 3 due 19 March: likewise
    assert doses(schedule(cli, "1001"))[3]["due"] == "2026-03-23"  # 21 March is a Saturday
    rows = database_rows(cli.database_url)
    refused(cli.cobalt("give", "1001", "--on", "2026-03-19"), "--early", "2026-03-23")
    assert database_rows(cli.database_url) == rows
    ok(cli, "give", "1001", "--on", "2026-03-19", "--early")
    row = next(r for r in audit(cli, "1001") if r["action"] == "give")
    assert row["details"]["early_days"] == 4
    assert doses(schedule(cli, "1001"))[3]["done_on"] == "2026-03-19"


def test_an_early_maintenance_dose_needs_early_beyond_fourteen_days(cli: Clinic) -> None:
    enroll(cli, "1001", start="2025-09-01")
    for on in ("2025-09-01", "2025-09-03", "2025-09-05", "2025-09-08", "2025-09-10", "2025-09-12"):
        ok(cli, "give", "1001", "--on", on)
    first = doses(schedule(cli, "1001"), "maintenance")[0]
    assert first["due"] == "2025-12-12"
    refused(cli.cobalt("give", "1001", "--on", "2025-11-27"), "--early")  # 15 days early
    ok(cli, "give", "1001", "--on", "2025-11-28")  # 14 days early
    assert doses(schedule(cli, "1001"), "maintenance")[0]["done_on"] == "2025-11-28"


def test_the_early_windows_are_clinic_policy(cli: Clinic) -> None:
    cli.configure(extra="")
    path = cli.path / "cobalt.toml"
    path.write_text(path.read_text().replace('send_time = "08:00"',
                                             'send_time = "08:00"\nearly_days_loading = 3'))
    enroll(cli, "1001", start="2026-03-16")
    ok(cli, "give", "1001", "--on", "2026-03-16")
    ok(cli, "give", "1001", "--on", "2026-03-17")  # one day early
    ok(cli, "give", "1001", "--on", "2026-03-18")  # two days early: within three
    path.write_text(path.read_text().replace("early_days_loading = 3", "early_days_loading = -1"))
    refused(cli.cobalt("due"), "early_days_loading")


def test_end_loading_before_any_loading_dose_is_refused_and_after_one_is_accepted(cli: Clinic) -> None:
    enroll(cli, "N1", "--neuro", start="2026-03-16")
    refused(cli.cobalt("end-loading", "N1"), "loading")
    ok(cli, "give", "N1", "--on", "2026-03-16")
    ok(cli, "end-loading", "N1", "--on", "2026-03-18")
    assert doses(schedule(cli, "N1"), "maintenance")[0]["due"] == "2026-05-18"


def test_a_result_no_open_order_asks_for_is_recorded_and_completes_nothing(cli: Clinic) -> None:
    enroll(cli, "P03")
    out = ok(cli, "lab", "P03", "--on", "2026-03-16", "--result", "egfr=45").out
    assert "egfr completes nothing: no open lab order asks for it" in out
    data = ok(cli, "lab", "P03", "--on", "2026-03-02", "--result", "folate=3", "--json").json()
    assert data["order"] is None and data["completes_nothing"] == ["folate"]
    assert {e["status"] for e in lab_orders(schedule(cli, "P03")).values()} == {"planned"}
    assert "folic-acid" in alert_codes(cli, "P03")  # recorded all the same


def test_a_result_completes_the_nearest_open_order_that_asks_for_it(cli: Clinic) -> None:
    enroll(cli, "1001")
    # reticulocytes: only early-response (9 March) asks for them, though 2-week (16 March) is nearer.
    ok(cli, "lab", "1001", "--on", "2026-03-15", "--result", "reticulocytes=2.5")
    done = [label for label, e in lab_orders(schedule(cli, "1001")).items() if e["status"] == "done"]
    assert done == ["early-response"]
    # hb (a cbc test): asked by baseline, 2-week, 3-month...; the nearest open one is 2-week.
    data = ok(cli, "lab", "1001", "--on", "2026-03-15", "--result", "hb=11.5", "wbc=5", "--json").json()
    assert data["order"]["label"] == "2-week"
    assert data["order"]["missing"] == ["ldh", "bilirubin"]
    two_week = lab_orders(schedule(cli, "1001"))["2-week"]
    assert (two_week["status"], two_week["missing"]) == ("done", ["ldh", "bilirubin"])
    early = lab_orders(schedule(cli, "1001"))["early-response"]
    assert early["missing"] == ["cbc"]


def test_a_named_order_takes_the_results_it_asks_for_and_the_rest_complete_nothing(cli: Clinic) -> None:
    enroll(cli, "1001")
    out = ok(cli, "lab", "1001", "--on", "2026-03-02", "--order", "baseline",
             "--result", "b12=120", "egfr=75").out
    assert "baseline" in out and "egfr" in out
    baseline = lab_orders(schedule(cli, "1001"))["baseline"]
    assert baseline["status"] == "done"
    assert baseline["missing"] == ["cbc", "ldh", "if-antibodies", "gastrin"]  # smear has no coded result


# -- schedule, due and outbox -----------------------------------------------------------------


def test_schedule_header_shows_the_current_regimens_start_and_the_discharge_reason(cli: Clinic) -> None:
    enroll(cli, "1001")
    ok(cli, "give", "1001", "--on", "2026-03-02")
    ok(cli, "switch", "1001", "--protocol", "hydroxo-neuro", "--on", "2026-03-16")
    head = ok(cli, "schedule", "1001").out.splitlines()[0]
    assert "hydroxo-neuro" in head and "from 2026-03-16" in head and "2026-03-02" not in head
    ok(cli, "discharge", "1001", "--on", "2026-03-18", "--reason", "moved to Leeds")
    out = ok(cli, "schedule", "1001").out
    assert "moved to Leeds" in out.splitlines()[1]
    patient = schedule(cli, "1001")["patient"]
    assert (patient["discharge_reason"], patient["phone"]) == ("moved to Leeds", None)
    row = audit(cli, "1001")[0]
    assert (row["action"], row["details"]["reason"]) == ("discharge", "moved to Leeds")


def test_due_names_the_drug_and_amount_of_each_dose_and_the_tests_of_each_lab(cli: Clinic) -> None:
    enroll(cli, "1001", start="2026-03-20")
    enroll(cli, "2002", "--protocol", "cyano", start="2026-03-20")
    items = ok(cli, "due", "--json").json()
    by = {(i["mrn"], i["kind"]): i for i in items}
    assert (by["1001", "dose"]["drug"], by["1001", "dose"]["amount"]) == ("hydroxocobalamin", "1 mg")
    assert (by["2002", "dose"]["drug"], by["2002", "dose"]["amount"]) == ("cyanocobalamin", "100 mcg")
    assert by["1001", "lab"]["tests"] == ["b12", "cbc", "smear", "ldh", "if-antibodies", "gastrin"]
    assert by["1001", "lab"]["drug"] is None
    out = ok(cli, "due").out
    assert "hydroxocobalamin 1 mg" in out and "cyanocobalamin 100 mcg" in out
    assert "b12, cbc, smear" in out


def test_due_groups_a_patients_overdue_doses_in_text_keeps_them_in_json_and_says_alerts_once(cli: Clinic) -> None:
    enroll(cli, "P07", "--platelets", "40", start="2025-03-03")
    for on in ("2025-03-03", "2025-03-05", "2025-03-07", "2025-03-10", "2025-03-12", "2025-03-14"):
        ok(cli, "give", "P07", "--on", on)
    items = ok(cli, "due", "--json").json()
    maintenance = [i for i in items if i["phase"] == "maintenance"]
    assert dues(maintenance) == ["2025-06-16", "2025-09-16", "2025-12-16", "2026-03-16"]
    assert all(i["overdue"] and i["drug"] == "hydroxocobalamin" for i in maintenance)
    out = ok(cli, "due").out
    assert "4 maintenance doses overdue since 2025-06-16" in out
    assert out.count("platelets-low") == 1
    assert all(len(line) < 200 for line in out.splitlines())


def test_outbox_text_has_column_headers_and_sent_at_apart_from_next_try(cli: Clinic) -> None:
    enroll(cli, "1001", "--email", "ann@example.org", start="2026-03-23")
    ok(cli, "tick", "--now", "2026-03-20T09:00:00+00:00")
    out = ok(cli, "outbox").out.splitlines()
    assert out[0].split()[:9] == ["id", "status", "kind", "to", "queued", "at", "sent", "at", "next"]
    assert "next try" in out[0]
    assert any("sent" in line.split() for line in out[2:])


# -- audit ---------------------------------------------------------------------------------------


def test_audit_lists_the_trail_newest_first_for_a_patient_or_everyone_since_a_day(cli: Clinic) -> None:
    with freeze_time("2026-03-18 10:00:00"):
        enroll(cli, "1001")
    with freeze_time("2026-03-19 10:00:00"):
        ok(cli, "--by", "nurse.kim", "give", "1001", "--on", "2026-03-02")
    enroll(cli, "2002")
    everyone = audit(cli)
    assert [(r["action"], r["mrn"]) for r in everyone] == [("enroll", "2002"), ("give", "1001"), ("enroll", "1001")]
    assert set(everyone[0]) == {"at", "by", "action", "mrn", "details"}
    assert everyone[1]["by"] == "nurse.kim" and everyone[1]["at"].startswith("2026-03-19")
    assert [r["action"] for r in audit(cli, "1001")] == ["give", "enroll"]
    assert [r["mrn"] for r in audit(cli, "--since", "2026-03-19")] == ["2002", "1001"]
    assert [r["action"] for r in audit(cli, "1001", "--since", "2026-03-20")] == []
    text = ok(cli, "audit", "1001").out
    assert text.splitlines()[0].startswith("2026-03-19") and "nurse.kim" in text


def _bodies(clinic: Clinic, kind: str) -> list[str]:
    from sqlalchemy import select

    from models import Outbox
    from scheduler import db

    engine = db.make_engine(clinic.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(Outbox.body_text).where(Outbox.kind == kind)).scalars())
    finally:
        engine.dispose()


def test_clinic_messages_name_the_drug_and_amount_and_the_digest_groups_overdue_doses(cli: Clinic) -> None:
    enroll(cli, "P07", start="2025-03-03")
    for on in ("2025-03-03", "2025-03-05", "2025-03-07", "2025-03-10", "2025-03-12", "2025-03-14"):
        ok(cli, "give", "P07", "--on", on)
    ok(cli, "tick", "--now", "2026-03-20T09:00:00+00:00")
    (digest,) = _bodies(cli, "digest")
    assert "P07 Patient P07: 4 maintenance doses overdue since 2025-06-16" in digest
    assert "Give: hydroxocobalamin 1 mg IM" in digest
    overdue = [body for body in _bodies(cli, "overdue") if "Event:    dose" in body]
    assert overdue and all("Give:     hydroxocobalamin 1 mg IM" in body for body in overdue)
