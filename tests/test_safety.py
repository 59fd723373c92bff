"""Safety alerts stored on patients, and the commands that show and close them
(SPEC section 5), on a real database through the command line."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from freezegun import freeze_time
from sqlmodel import Session, select

from models import Alert, Audit, Patient
from scheduler import db
from scheduler.safety import due_for_alert_check, mark_notified, pending_urgent_alerts
from scheduler.store import replan_set

START = "2026-03-02"  # a Monday
TODAY = "2026-03-20"


@pytest.fixture(autouse=True)
def frozen(clinic: Any) -> Iterator[None]:
    """The clinic's today; frozen after the database is up (drivers import the real clock)."""
    with freeze_time(f"{TODAY}T12:00:00Z"):
        yield


def enroll(clinic: Any, mrn: str = "A1", *args: str) -> None:
    result = clinic.cobalt("enroll", "--mrn", mrn, "--name", f"Patient {mrn}", "--start", START, *args)
    assert result.code == 0, result.err


def alerts_of(clinic: Any, mrn: str = "A1") -> list[dict[str, Any]]:
    result = clinic.cobalt("schedule", mrn, "--json")
    assert result.code == 0, result.err
    return result.json()["alerts"]


def codes_of(clinic: Any, mrn: str = "A1") -> list[str]:
    return [a["code"] for a in alerts_of(clinic, mrn)]


def lab(clinic: Any, mrn: str, *args: str) -> None:
    result = clinic.cobalt("lab", mrn, *args)
    assert result.code == 0, result.err


def alert_rows(clinic: Any, mrn: str = "A1") -> list[Alert]:
    engine = db.make_engine(clinic.database_url)
    try:
        with Session(engine) as session:
            patient = session.exec(select(Patient).where(Patient.mrn == mrn)).one()
            rows = session.exec(select(Alert).where(Alert.patient_id == patient.id).order_by(Alert.id))
            return list(rows)
    finally:
        engine.dispose()


def test_low_platelets_at_enrolment_raise_an_alert_on_the_schedule(clinic):
    enroll(clinic, "A1", "--platelets", "30")
    assert alerts_of(clinic) == [{
        "code": "platelets-low",
        "severity": "info",
        "message": alerts_of(clinic)[0]["message"],
        "since": START,
    }]
    assert "25-27G" in alerts_of(clinic)[0]["message"]


def test_a_later_normal_platelet_count_closes_the_alert_by_itself_and_history_keeps_it(clinic):
    enroll(clinic, "A1", "--platelets", "30")
    lab(clinic, "A1", "--on", "2026-03-09", "--result", "platelets=120")
    assert alerts_of(clinic) == []
    assert clinic.cobalt("alerts", "--json").json() == []
    [row] = alert_rows(clinic)
    assert (row.code, row.status, row.closed_by) == ("platelets-low", "closed", "cobalt")
    assert row.closed_at is not None and row.cleared_at is not None


def test_alerts_lists_the_most_urgent_first_with_the_patient(clinic):
    enroll(clinic, "A1", "--platelets", "30")  # info
    enroll(clinic, "B2", "--hb", "4.2")  # urgent
    enroll(clinic, "C3", "--platelets", "20")  # warning
    result = clinic.cobalt("alerts", "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert [(a["mrn"], a["code"], a["severity"]) for a in data] == [
        ("B2", "hb-critical", "urgent"),
        ("C3", "platelets-very-low", "warning"),
        ("A1", "platelets-low", "info"),
    ]
    assert data[0]["name"] == "Patient B2" and data[0]["since"] == START
    text = clinic.cobalt("alerts")
    assert text.code == 0 and text.out.index("hb-critical") < text.out.index("platelets-low")


def test_ack_closes_one_open_alert_and_the_audit_says_who(clinic):
    enroll(clinic, "A1", "--platelets", "30", "--hb", "4.2")
    assert sorted(codes_of(clinic)) == ["hb-critical", "platelets-low"]
    result = clinic.cobalt("--by", "nurse.jo", "ack", "A1", "platelets-low")
    assert result.code == 0, result.err
    assert codes_of(clinic) == ["hb-critical"]
    assert [a["code"] for a in clinic.cobalt("alerts", "--json").json()] == ["hb-critical"]
    acked = [r for r in alert_rows(clinic) if r.code == "platelets-low"]
    assert [(r.status, r.closed_by) for r in acked] == [("acknowledged", "nurse.jo")]
    engine = db.make_engine(clinic.database_url)
    with Session(engine) as session:
        audits = session.exec(select(Audit).where(Audit.action == "ack-alert")).all()
    engine.dispose()
    assert [(a.actor, "platelets-low" in a.detail) for a in audits] == [("nurse.jo", True)]


def test_an_acknowledged_alert_stays_closed_while_its_condition_holds_and_comes_back_as_a_new_one(clinic):
    enroll(clinic, "A1", "--platelets", "30")
    assert clinic.cobalt("ack", "A1", "platelets-low").code == 0
    lab(clinic, "A1", "--on", "2026-03-04", "--result", "platelets=40")  # still low
    assert codes_of(clinic) == []
    lab(clinic, "A1", "--on", "2026-03-09", "--result", "platelets=120")  # cleared
    lab(clinic, "A1", "--on", "2026-03-16", "--result", "platelets=35")  # low again
    assert alerts_of(clinic)[0]["since"] == "2026-03-16"
    assert [r.status for r in alert_rows(clinic) if r.code == "platelets-low"] == [
        "acknowledged", "open",
    ]


def test_ack_of_a_code_not_open_exits_2_with_one_line(clinic):
    enroll(clinic, "A1", "--platelets", "30")
    result = clinic.cobalt("ack", "A1", "hb-critical")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "hb-critical" in result.err and "platelets-low" in result.err
    assert clinic.cobalt("ack", "A1", "platelets-low").code == 0
    again = clinic.cobalt("ack", "A1", "platelets-low")
    assert again.code == 2 and again.err.count("\n") == 1


def test_due_items_carry_the_patients_open_alerts(clinic):
    enroll(clinic, "A1", "--platelets", "30")
    enroll(clinic, "B2")
    result = clinic.cobalt("due", "--on", START, "--json")
    assert result.code == 0, result.err
    items = {i["mrn"]: i for i in result.json() if i["kind"] == "dose"}
    assert [a["code"] for a in items["A1"]["alerts"]] == ["platelets-low"]
    assert items["A1"]["alerts"][0]["severity"] == "info"
    assert items["B2"]["alerts"] == []


def test_switch_keeps_the_doses_given_starts_the_new_doses_on_the_date_and_keeps_the_lab_anchor(clinic):
    enroll(clinic, "A1", "--protocol", "cyano")
    for day in ("2026-03-02", "2026-03-03", "2026-03-04"):
        assert clinic.cobalt("give", "A1", "--on", day).code == 0
    before = clinic.cobalt("schedule", "A1", "--json").json()
    labs_before = [(e["label"], e["due"]) for e in before["events"] if e["kind"] == "lab"]

    result = clinic.cobalt("switch", "A1", "--protocol", "hydroxo", "--on", "2026-03-05")
    assert result.code == 0, result.err
    after = clinic.cobalt("schedule", "A1", "--json").json()
    assert after["patient"]["protocol"] == "hydroxo"
    assert after["patient"]["protocol_start"] == "2026-03-05"
    doses = [e for e in after["events"] if e["kind"] == "dose"]
    assert [e["done_on"] for e in doses if e["status"] == "done"] == [
        "2026-03-02", "2026-03-03", "2026-03-04",
    ]
    assert min(e["due"] for e in doses if e["status"] == "planned") == "2026-03-05"
    assert [(e["label"], e["due"]) for e in after["events"] if e["kind"] == "lab"] == labs_before


def test_switching_to_the_same_protocol_exits_2(clinic):
    enroll(clinic, "A1", "--protocol", "hydroxo")
    result = clinic.cobalt("switch", "A1", "--protocol", "hydroxo", "--on", "2026-03-05")
    assert result.code == 2 and result.err.count("\n") == 1


def test_switching_to_cyano_with_renal_dysfunction_exits_2_naming_hydroxocobalamin(clinic):
    enroll(clinic, "A1", "--protocol", "hydroxo", "--egfr", "45")
    result = clinic.cobalt("switch", "A1", "--protocol", "cyano", "--on", "2026-03-05")
    assert result.code == 2
    assert "hydroxocobalamin" in result.err and result.err.count("\n") == 1
    assert clinic.cobalt("schedule", "A1", "--json").json()["patient"]["protocol"] == "hydroxo"


def test_an_egfr_of_45_on_cyano_raises_renal_cyano_and_it_waits_for_the_clinic_once(clinic):
    enroll(clinic, "A1", "--protocol", "cyano")
    lab(clinic, "A1", "--on", "2026-03-03", "--result", "egfr=45")
    [alert] = [a for a in alerts_of(clinic) if a["code"] == "renal-cyano"]
    assert alert["severity"] == "urgent" and "hydroxocobalamin" in alert["message"]
    assert alert["since"] == "2026-03-03"

    engine = db.make_engine(clinic.database_url)
    try:
        with db.transaction(engine) as session:
            pending = pending_urgent_alerts(session)
            assert [(p["mrn"], p["code"]) for p in pending] == [("A1", "renal-cyano")]
            assert pending[0]["since"] == date(2026, 3, 3)
            assert mark_notified(session, [p["id"] for p in pending]) == [pending[0]["id"]]
        with db.transaction(engine) as session:
            assert pending_urgent_alerts(session) == []
            assert mark_notified(session, [pending[0]["id"]]) == []
    finally:
        engine.dispose()


def test_a_response_gate_two_days_overdue_is_found_for_the_pass_to_raise(clinic):
    with freeze_time("2026-03-05T12:00:00Z"):
        enroll(clinic, "A1", "--protocol", "cyano")  # the gate is due on 2026-03-09
    assert [r.code for r in alert_rows(clinic)] == []  # raised only when a pass looks again
    engine = db.make_engine(clinic.database_url)
    try:
        with db.transaction(engine) as session:
            assert due_for_alert_check(session, date(2026, 3, 10)) == []
            patients = due_for_alert_check(session, date(2026, 3, 11))
            assert [p.mrn for p in patients] == ["A1"]
            replan_set(session, [p.id for p in patients if p.id is not None], clinic.settings().clinic.calendar(),
                       date(2026, 3, 11))
        with db.transaction(engine) as session:
            assert due_for_alert_check(session, date(2026, 3, 11)) == []
    finally:
        engine.dispose()
    [alert] = [a for a in alerts_of(clinic) if a["code"] == "response-gate"]
    assert (alert["severity"], alert["since"]) == ("warning", "2026-03-11")


def test_a_borderline_b12_adds_an_mma_order_due_at_once(clinic):
    enroll(clinic, "A1")
    lab(clinic, "A1", "--on", START, "--order", "baseline", "--result", "b12=180")
    data = clinic.cobalt("schedule", "A1", "--json").json()
    assert "b12-borderline" in [a["code"] for a in data["alerts"]]
    [mma] = [e for e in data["events"] if e["kind"] == "lab" and e["label"] == "mma"]
    assert (mma["due"], mma["tests"], mma["status"]) == (START, ["mma"], "planned")


def test_the_clinics_borderline_band_decides_the_mma_order(clinic):
    clinic.configure(extra="[alerts]\nb12_borderline_high = 260\n")
    enroll(clinic, "A1")
    lab(clinic, "A1", "--on", START, "--order", "baseline", "--result", "b12=240")
    data = clinic.cobalt("schedule", "A1", "--json").json()
    assert "b12-borderline" in [a["code"] for a in data["alerts"]]
    assert [e["label"] for e in data["events"] if e["label"] == "mma"] == ["mma"]


def test_positive_intrinsic_factor_antibodies_mark_the_patient_pernicious(clinic):
    enroll(clinic, "A1")
    lab(clinic, "A1", "--on", START, "--result", "if-antibodies=positive")
    data = clinic.cobalt("schedule", "A1", "--json").json()
    assert data["patient"]["pernicious"] is True
    [alert] = [a for a in data["alerts"] if a["code"] == "pernicious-anaemia"]
    assert alert["severity"] == "info" and alert["since"] == START


def test_discharge_closes_the_open_alerts(clinic):
    enroll(clinic, "A1", "--platelets", "30")
    assert clinic.cobalt("discharge", "A1", "--on", "2026-03-10", "--reason", "moved away").code == 0
    assert alerts_of(clinic) == []
    assert [(r.status, r.closed_by) for r in alert_rows(clinic)] == [("closed", "cobalt")]


def test_a_bad_alerts_threshold_in_cobalt_toml_exits_2_with_one_line(clinic):
    clinic.configure(extra="[alerts]\nb12_borderline_high = 5000\n")
    result = clinic.cobalt("alerts")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "b12_borderline_high" in result.err


def test_a_cyano_patient_found_in_renal_dysfunction_can_switch_on_the_day_of_enrolment(clinic):
    with freeze_time("2026-03-02T10:00:00Z"):
        assert clinic.cobalt("enroll", "--mrn", "R9", "--name", "Rae", "--protocol", "cyano").code == 0
        assert clinic.cobalt("lab", "R9", "--result", "egfr=42").code == 0
        assert "renal-cyano" in {a["code"] for a in clinic.cobalt("schedule", "R9", "--json").json()["alerts"]}
        assert clinic.cobalt("switch", "R9", "--protocol", "hydroxo").code == 0
        data = clinic.cobalt("schedule", "R9", "--json").json()
    assert data["patient"]["protocol"] == "hydroxo"
    assert "renal-cyano" not in {a["code"] for a in data["alerts"]}
    planned = [e for e in data["events"] if e["kind"] == "dose" and e["status"] == "planned"]
    assert planned[0]["due"] == "2026-03-02" and planned[0]["label"] == "loading"
