"""Taking schedules out: ``cobalt export ics|fhir|csv`` (SPEC section 10), and the
calendar attached to patient reminders.

Every test runs on SQLite and on PostgreSQL, with the clock frozen on Friday
2026-03-20 (the reminder test moves it with the pass's ``--now``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from conftest import Clinic
from fhir.resources.R4B.bundle import Bundle
from freezegun import freeze_time
from icalendar import Calendar
from smtp_sink import SmtpSink

DIAGNOSIS_WORDS = ("deficien", "anaemia", "anemia", "pernicious", "b12", "cobalamin deficiency")


@pytest.fixture
def cli(clinic: Clinic) -> Iterator[Clinic]:
    with freeze_time("2026-03-20 10:00:00"):
        yield clinic


def run(clinic: Clinic, *args: str) -> Any:
    result = clinic.cobalt(*args)
    assert result.code == 0, result.err
    return result


def patient_with_history(clinic: Clinic, mrn: str = "P1") -> None:
    run(clinic, "enroll", "--mrn", mrn, "--name", "Ann Example", "--email", "ann@patient.example",
        "--phone", "+44 20 7946 0000", "--start", "2026-03-02", "--platelets", "40")
    for day in ("2026-03-02", "2026-03-04", "2026-03-06"):
        run(clinic, "give", mrn, "--on", day)
    run(clinic, "lab", mrn, "--on", "2026-03-02", "--result", "b12=120", "hb=9.5", "if-antibodies=negative")


def schedule(clinic: Clinic, mrn: str = "P1") -> dict[str, Any]:
    return run(clinic, "schedule", mrn, "--json").json()  # type: ignore[no-any-return]


# -- iCalendar ------------------------------------------------------------------------------


def vevents(text: str) -> list[Any]:
    return list(Calendar.from_ical(text).walk("VEVENT"))


def test_the_calendar_has_an_all_day_event_for_each_planned_dose_and_lab(cli: Clinic) -> None:
    patient_with_history(cli)
    planned = [e for e in schedule(cli)["events"] if e["status"] == "planned" and e["kind"] in ("dose", "lab")]
    events = vevents(run(cli, "export", "ics", "P1").out)
    assert len(events) == len(planned) > 10
    by_uid = {str(v["UID"]): v for v in events}
    for e in planned:
        v = by_uid[f"cobalt-event-{e['id']}@clinic.example"]
        assert v.decoded("DTSTART") == date.fromisoformat(e["due"])  # a date: all day
        assert v.decoded("DTEND") == date.fromisoformat(e["due"]) + timedelta(days=1)
        summary = str(v["SUMMARY"])
        assert ("Injection" if e["kind"] == "dose" else "Blood test") in summary
        assert not any(word in summary.lower() for word in DIAGNOSIS_WORDS)
        alarms = list(v.walk("VALARM"))
        assert len(alarms) == 1 and alarms[0].decoded("TRIGGER") == -timedelta(hours=15)


def test_a_calendar_keeps_its_uids_when_a_dose_moves(cli: Clinic) -> None:
    patient_with_history(cli)
    before = {str(v["UID"]): v.decoded("DTSTART") for v in vevents(run(cli, "export", "ics", "P1").out)}
    run(cli, "give", "P1", "--on", "2026-03-12")  # dose 4 three days late: later doses move
    after = {str(v["UID"]): v.decoded("DTSTART") for v in vevents(run(cli, "export", "ics", "P1").out)}
    kept = set(before) & set(after)
    assert len(kept) >= len(after) - 2
    assert any(before[uid] != after[uid] for uid in kept)


def test_the_clinic_can_leave_drug_names_out_of_calendars(cli: Clinic) -> None:
    patient_with_history(cli)
    named = [str(v["SUMMARY"]) for v in vevents(run(cli, "export", "ics", "P1").out)]
    assert any("hydroxocobalamin 1 mg" in s for s in named)
    cli.configure(extra="")
    toml = (cli.path / "cobalt.toml").read_text().replace('send_time = "08:00"\n',
                                                          'send_time = "08:00"\ncalendar_drug_names = false\n')
    (cli.path / "cobalt.toml").write_text(toml)
    plain = [str(v["SUMMARY"]) for v in vevents(run(cli, "export", "ics", "P1").out)]
    assert plain and not any("cobalamin" in s for s in plain)


def test_an_export_goes_to_a_file_with_dash_o(cli: Clinic) -> None:
    patient_with_history(cli)
    result = run(cli, "export", "ics", "P1", "-o", "ann.ics")
    assert result.out == ""
    assert vevents((cli.path / "ann.ics").read_text())


def test_exporting_an_unknown_patient_is_refused(cli: Clinic) -> None:
    for fmt in ("ics", "fhir"):
        result = cli.cobalt("export", fmt, "NOBODY")
        assert result.code == 2
        assert "no patient with MRN 'NOBODY'" in result.err


# -- FHIR -----------------------------------------------------------------------------------


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference":
                yield value
            else:
                yield from references(value)
    elif isinstance(node, list):
        for item in node:
            yield from references(item)


def test_the_fhir_bundle_validates_and_every_reference_resolves_inside_it(cli: Clinic) -> None:
    patient_with_history(cli)
    text = run(cli, "export", "fhir", "P1").out
    bundle = Bundle.model_validate_json(text)  # the library's own validation
    assert bundle.type == "collection"
    data = json.loads(text)
    urls = {entry["fullUrl"] for entry in data["entry"]}
    refs = list(references(data))
    assert refs and set(refs) <= urls
    kinds: dict[str, list[dict[str, Any]]] = {}
    for entry in data["entry"]:
        kinds.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    events = schedule(cli)["events"]
    assert len(kinds["Patient"]) == 1 and len(kinds["CarePlan"]) == 1
    assert kinds["Patient"][0]["identifier"][0]["value"] == "P1"
    assert len(kinds["CarePlan"][0]["activity"]) == len(events)
    statuses = {a["detail"]["status"] for a in kinds["CarePlan"][0]["activity"]}
    assert {"completed", "scheduled"} <= statuses
    assert len(kinds["MedicationAdministration"]) == 3
    rxnorm = kinds["MedicationAdministration"][0]["medicationCodeableConcept"]["coding"][0]
    assert rxnorm["system"] == "http://www.nlm.nih.gov/research/umls/rxnorm" and rxnorm["code"] == "5514"
    assert len(kinds["ServiceRequest"]) == len([e for e in events if e["kind"] == "lab"])
    # platelets at enrolment, then b12, hb, if-antibodies
    assert len(kinds["Observation"]) == 4
    loinc = {o["code"]["coding"][0]["code"] for o in kinds["Observation"] if "coding" in o["code"]}
    assert {"14685-2", "718-7", "777-3"} <= loinc
    baseline = next(o for o in kinds["Observation"] if o["code"].get("coding", [{}])[0].get("code") == "14685-2")
    assert baseline["valueQuantity"]["value"] == 120 and baseline["basedOn"]


def test_the_same_patient_exports_the_same_bundle_twice(cli: Clinic) -> None:
    patient_with_history(cli)
    assert run(cli, "export", "fhir", "P1").out == run(cli, "export", "fhir", "P1").out


# -- CSV ------------------------------------------------------------------------------------


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_the_worklist_as_csv_has_the_rows_of_due_json(cli: Clinic) -> None:
    patient_with_history(cli, "P1")
    patient_with_history(cli, "P2")
    due = run(cli, "due", "--days", "14", "--json").json()
    rows = read_csv(run(cli, "export", "csv", "worklist", "--days", "14").out)
    assert [(r["mrn"], int(r["id"]), r["due"]) for r in rows] == [(e["mrn"], e["id"], e["due"]) for e in due]
    assert rows[0]["alerts"] == "platelets-low"


def test_events_as_csv_are_every_patients_timeline(cli: Clinic) -> None:
    patient_with_history(cli, "P1")
    patient_with_history(cli, "P2")
    rows = read_csv(run(cli, "export", "csv", "events").out)
    expected = [(mrn, e["id"], e["due"], e["status"]) for mrn in ("P1", "P2") for e in schedule(cli, mrn)["events"]]
    assert [(r["mrn"], int(r["id"]), r["due"], r["status"]) for r in rows] == expected
    window = read_csv(run(cli, "export", "csv", "events", "--on", "2026-03-09", "--days", "7").out)
    assert window and all("2026-03-09" <= r["due"] <= "2026-03-16" for r in window)


def test_patients_as_csv_have_a_header_row_even_when_there_are_none(cli: Clinic) -> None:
    assert run(cli, "export", "csv", "patients").out.splitlines() == [
        "mrn,name,protocol,status,next_due_date,next_due_kind,next_due_label,open_alerts"
    ]
    patient_with_history(cli)
    rows = read_csv(run(cli, "export", "csv", "patients").out)
    assert rows == [{"mrn": "P1", "name": "Ann Example", "protocol": "hydroxo", "status": "active",
                     "next_due_date": "2026-03-09", "next_due_kind": "dose", "next_due_label": "loading",
                     "open_alerts": "platelets-low"}]
    assert [r["mrn"] for r in rows] == [p["mrn"] for p in run(cli, "patients", "--json").json()]


# -- the calendar attached to reminders ------------------------------------------------------


def test_a_dose_reminder_carries_the_event_as_a_calendar_attachment(clinic: Clinic) -> None:
    with SmtpSink() as smtp:
        clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port)
        with freeze_time("2026-03-02 07:00:00"):
            run(clinic, "enroll", "--mrn", "P1", "--name", "Ann", "--email", "ann@patient.example",
                "--start", "2026-03-02")
            run(clinic, "give", "P1", "--on", "2026-03-02")
        run(clinic, "tick", "--now", "2026-03-03T08:00")
        reminders = [m.message for m in smtp.messages if m.message["X-Cobalt-Kind"] == "dose-reminder"]
    assert len(reminders) == 1
    parts = [p for p in reminders[0].walk() if p.get_content_type() == "text/calendar"]
    assert len(parts) == 1 and parts[0].get_filename() == "appointment.ics"
    with freeze_time("2026-03-03 09:00:00"):
        dose2 = next(e for e in schedule(clinic)["events"] if e["kind"] == "dose" and e["seq"] == 2)
    (event,) = vevents(parts[0].get_payload(decode=True).decode())
    assert str(event["UID"]) == f"cobalt-event-{dose2['id']}@clinic.example"
    assert event.decoded("DTSTART") == date(2026, 3, 4)


def test_every_kind_of_patient_exports_a_valid_bundle(cli: Clinic) -> None:
    run(cli, "enroll", "--mrn", "C1", "--name", "Cy", "--protocol", "cyano", "--start", "2026-03-02", "--hb", "4.5")
    for day in ("2026-03-02", "2026-03-03"):
        run(cli, "give", "C1", "--on", day)
    run(cli, "enroll", "--mrn", "N1", "--name", "Neu", "--neuro", "--start", "2026-02-02")
    run(cli, "give", "N1", "--on", "2026-02-02")
    run(cli, "end-loading", "N1", "--on", "2026-02-20")
    run(cli, "enroll", "--mrn", "D1", "--name", "Dee", "--start", "2026-03-02")
    run(cli, "lab", "D1", "--on", "2026-03-02", "--result", "if-antibodies=positive", "gastrin=1200")
    run(cli, "discharge", "D1", "--on", "2026-03-10", "--reason", "moved away")
    for mrn in ("C1", "N1", "D1"):
        text = run(cli, "export", "fhir", mrn).out
        Bundle.model_validate_json(text)
        data = json.loads(text)
        assert set(references(data)) <= {entry["fullUrl"] for entry in data["entry"]}
        statuses = {a["detail"]["status"] for entry in data["entry"] if entry["resource"]["resourceType"] == "CarePlan"
                    for a in entry["resource"]["activity"]}
        assert statuses
        if mrn == "C1":
            assert "on-hold" in statuses  # phase 2, held until the response is confirmed
        if mrn == "D1":
            assert "cancelled" in statuses


def test_patients_as_csv_page_through_the_same_rows_as_patients_json(
        cli: Clinic, monkeypatch: pytest.MonkeyPatch) -> None:
    for mrn in ("A3", "A1", "A2"):
        run(cli, "enroll", "--mrn", mrn, "--name", f"Patient {mrn}", "--start", "2026-03-02")
    monkeypatch.setattr("scheduler.export_csv.PAGE", 2)  # three patients: two pages
    rows = read_csv(run(cli, "export", "csv", "patients").out)
    assert [r["mrn"] for r in rows] == [p["mrn"] for p in run(cli, "patients", "--json").json()] == ["A1", "A2", "A3"]
