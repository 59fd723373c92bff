"""Bringing a cohort in: ``cobalt import patients|doses|labs FILE.csv`` (SPEC section 10).

Every test runs on SQLite and on PostgreSQL, with the clock frozen on Friday
2026-03-20.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Clinic
from freezegun import freeze_time
from sqlalchemy import func, select

from models import Alert, Audit, Dose, Event, LabResult, Patient, Regimen
from scheduler import db, importing, service
from scheduler.importing import Row, sorted_rows

TODAY = date(2026, 3, 20)
PATIENT_HEADER = ("mrn,name,email,phone,protocol,start,neuro,renal_impairment,egfr,platelets,hb,"
                  "maintenance_months,on_folic_acid")


@pytest.fixture
def cli(clinic: Clinic) -> Iterator[Clinic]:
    with freeze_time("2026-03-20 10:00:00"):
        yield clinic


def write(clinic: Clinic, name: str, text: str | bytes) -> Path:
    path = clinic.path / name
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


def counts(clinic: Clinic) -> dict[str, int]:
    engine = db.make_engine(clinic.database_url)
    try:
        with db.transaction(engine) as session:
            return {
                t.__name__: session.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (Patient, Regimen, Dose, LabResult, Event, Alert, Audit)
            }
    finally:
        engine.dispose()


def patients_csv(*rows: str) -> str:
    return "\n".join([PATIENT_HEADER, *rows]) + "\n"


# -- a cohort with history, imported and recorded one by one ------------------------------


def cohort(n: int, prefix: str, seed: int = 13) -> tuple[list[dict[str, Any]], list[tuple[str, date]],
                                                           list[tuple[str, date, str, str, str]]]:
    """``n`` patients with their doses and lab results so far, the same for every prefix."""
    rng = random.Random(seed)
    patients, doses, results = [], [], []
    for i in range(1, n + 1):
        mrn = f"{prefix}{i:04d}"
        protocol = rng.choice(["hydroxo", "hydroxo", "hydroxo-neuro", "cyano"])
        start = TODAY - timedelta(days=rng.randint(3, 500))
        patient = {
            "mrn": mrn, "name": f"Patient {i}", "email": f"p{i}@example.org" if i % 3 else "",
            "phone": "+44 20 7946 0000" if i % 4 == 0 else "", "protocol": protocol,
            "start": start.isoformat(), "neuro": "true" if protocol == "hydroxo-neuro" else "",
            "renal_impairment": "", "egfr": str(rng.randint(60, 110)) if i % 5 == 0 else "",
            "platelets": str(rng.choice([8, 30, 150, 250])) if i % 6 == 0 else "",
            "hb": str(rng.choice([4.5, 9.5, 13])) if i % 7 == 0 else "",
            "maintenance_months": "2" if protocol == "hydroxo" and i % 2 else "",
            "on_folic_acid": "true" if i % 11 == 0 else "false",
        }
        patients.append(patient)
        day, given = start, 0
        most = 7 if protocol == "cyano" else 12
        while day < TODAY and given < most:
            doses.append((mrn, day))
            given += 1
            day += timedelta(days=rng.randint(1, 3) if given < 6 else rng.randint(50, 95))
        if start <= TODAY:
            results.append((mrn, start, "b12", str(rng.choice([120, 180, 300])), ""))
            results.append((mrn, start, "hb", str(rng.choice([7.5, 10.2])), ""))
            results.append((mrn, start, "if-antibodies", rng.choice(["positive", "negative"]), ""))
        later = start + timedelta(days=7)
        if later <= TODAY:
            results.append((mrn, later, "reticulocytes", "3.1", "early-response" if i % 2 else ""))
            results.append((mrn, later, "hb", "11", "early-response" if i % 2 else ""))
    return patients, doses, results


def cohort_files(clinic: Clinic, n: int, prefix: str) -> tuple[Path, Path, Path]:
    patients, doses, results = cohort(n, prefix)
    p = write(clinic, "patients.csv", patients_csv(*(",".join(row.values()) for row in patients)))
    # Rows in no particular order: the import brings each patient's history into date order.
    shuffled_doses = list(doses)
    random.Random(1).shuffle(shuffled_doses)
    d = write(clinic, "doses.csv", "mrn,given_on\n" + "".join(f"{m},{on}\n" for m, on in shuffled_doses))
    shuffled_results = list(results)
    random.Random(2).shuffle(shuffled_results)
    labs = write(clinic, "labs.csv", "mrn,on,code,value,order\n"
                 + "".join(f"{m},{on},{c},{v},{o}\n" for m, on, c, v, o in shuffled_results))
    return p, d, labs


def one_by_one(clinic: Clinic, n: int, prefix: str) -> None:
    """The same cohort through the service, one action per transaction, as the CLI records it."""
    patients, doses, results = cohort(n, prefix)
    settings = clinic.settings()
    ctx = service.Context(settings.clinic.calendar(), TODAY, "nurse")
    engine = db.make_engine(clinic.database_url)
    try:
        for p in patients:
            with db.transaction(engine) as session:
                service.enroll(
                    session, ctx, mrn=p["mrn"], name=p["name"], email=p["email"] or None,
                    phone=p["phone"] or None, protocol=p["protocol"], start=date.fromisoformat(p["start"]),
                    neuro=p["neuro"] == "true", egfr=float(p["egfr"]) if p["egfr"] else None,
                    platelets=float(p["platelets"]) if p["platelets"] else None,
                    hb=float(p["hb"]) if p["hb"] else None,
                    maintenance_months=int(p["maintenance_months"]) if p["maintenance_months"] else None,
                    on_folic_acid=p["on_folic_acid"] == "true",
                )
        for mrn, on in sorted(doses):
            with db.transaction(engine) as session:
                service.give(session, ctx, mrn, on, early=True)  # history, as import takes it
        key = lambda r: (r[0], r[1], r[4])  # noqa: E731  (patient, day, order)
        for (mrn, on, order), group in itertools.groupby(sorted(results, key=key), key=key):
            with db.transaction(engine) as session:
                service.record_lab(session, ctx, mrn, [f"{c}={v}" for _, _, c, v, _ in group], on=on,
                                   order=order or None)
    finally:
        engine.dispose()


def schedules(clinic: Clinic, prefix: str, n: int) -> list[dict[str, Any]]:
    from scheduler.cli import _schedule_json
    from scheduler.store import get_patient, load_record

    engine = db.make_engine(clinic.database_url)
    found = []
    try:
        with db.transaction(engine) as session:
            for i in range(1, n + 1):
                data = _schedule_json(load_record(session, get_patient(session, f"{prefix}{i:04d}")))
                data["patient"].pop("mrn")
                for event in data["events"]:
                    event.pop("id")
                found.append(data)
    finally:
        engine.dispose()
    return found


def test_an_imported_cohort_has_the_schedules_of_one_recorded_one_by_one(cli: Clinic) -> None:
    n = 200
    p, d, labs = cohort_files(cli, n, "I")
    for kind, path in (("patients", p), ("doses", d), ("labs", labs)):
        result = cli.cobalt("import", kind, path)
        assert result.code == 0, result.err
        assert result.err == ""  # no progress bar when stderr is not a terminal
    one_by_one(cli, n, "S")

    imported, recorded = schedules(cli, "I", n), schedules(cli, "S", n)
    assert sum(len(s["events"]) for s in imported) > n * 20
    assert any(s["alerts"] for s in imported)
    for mine, theirs in zip(imported, recorded, strict=True):
        assert mine == theirs


def test_importing_the_same_files_again_changes_nothing(cli: Clinic) -> None:
    p, d, labs = cohort_files(cli, 30, "R")
    for kind, path in (("patients", p), ("doses", d), ("labs", labs)):
        assert cli.cobalt("import", kind, path).code == 0
    before = counts(cli)
    before_schedules = schedules(cli, "R", 30)
    for kind, path in (("patients", p), ("doses", d), ("labs", labs)):
        result = cli.cobalt("import", kind, path, "--json")
        assert result.code == 0, result.err
        assert result.json()["added"] == 0
        assert result.json()["unchanged"] == result.json()["rows"] > 0
    assert counts(cli) == before
    assert schedules(cli, "R", 30) == before_schedules


def test_a_dry_run_checks_everything_and_writes_nothing(cli: Clinic) -> None:
    path = write(cli, "p.csv", patients_csv("D1,Dee,,,,2026-03-02,,,,,,,"))
    result = cli.cobalt("import", "patients", path, "--dry-run")
    assert result.code == 0, result.err
    assert "1 patient would be imported" in result.out
    assert counts(cli)["Patient"] == 0


def test_rows_beyond_one_sorting_run_are_merged_in_order(cli: Clinic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importing, "SORT_CHUNK_ROWS", 7)
    p, d, labs = cohort_files(cli, 12, "M")
    for kind, path in (("patients", p), ("doses", d), ("labs", labs)):
        result = cli.cobalt("import", kind, path)
        assert result.code == 0, result.err
    assert counts(cli)["Patient"] == 12
    assert counts(cli)["Dose"] == len(cohort(12, "M")[1])


def test_the_external_sort_returns_every_row_in_order() -> None:
    rng = random.Random(5)
    rows = [Row((f"m{rng.randint(1, 50)}", i), i, "m", {}) for i in range(1, 1000)]
    out = list(sorted_rows(iter(rows), chunk=64))
    assert [r.sort_key for r in out] == sorted(r.sort_key for r in rows)


# -- bad input: exit 2, every bad row listed, nothing written -----------------------------


def refused(clinic: Clinic, kind: str, path: Path) -> str:
    before = counts(clinic)
    result = clinic.cobalt("import", kind, path)
    assert result.code == 2, result.out
    assert "Traceback" not in result.err
    assert counts(clinic) == before
    return result.err


def test_a_wrong_header_is_refused(cli: Clinic) -> None:
    path = write(cli, "p.csv", "id,full_name,start\nX1,Ann,2026-03-02\n")
    err = refused(cli, "patients", path)
    assert "line 1, column id" in err
    assert "line 1, column name: required column missing" in err


def test_a_file_that_is_not_utf8_is_refused_line_by_line(cli: Clinic) -> None:
    path = write(cli, "p.csv", patients_csv("X1,Ann,,,,2026-03-02,,,,,,,").encode()
                 + "X2,Jos\xe9,,,,2026-03-02,,,,,,,\n".encode("latin-1"))
    err = refused(cli, "patients", path)
    assert "line 3, column -: not UTF-8" in err


def test_a_byte_order_mark_is_fine(cli: Clinic) -> None:
    path = write(cli, "p.csv", b"\xef\xbb\xbf" + patients_csv("X1,Ann,,,,2026-03-02,,,,,,,").encode())
    assert cli.cobalt("import", "patients", path).code == 0
    assert counts(cli)["Patient"] == 1


def test_duplicate_mrns_in_a_file_are_refused_with_both_lines(cli: Clinic) -> None:
    path = write(cli, "p.csv", patients_csv("X1,Ann,,,,2026-03-02,,,,,,,", "X2,Bob,,,,2026-03-02,,,,,,,",
                                            "X1,Ann again,,,,2026-03-03,,,,,,,"))
    err = refused(cli, "patients", path)
    assert "line 4, column mrn: MRN 'X1' is also on line 2" in err


def test_every_bad_row_is_listed_with_its_column(cli: Clinic) -> None:
    path = write(cli, "p.csv", patients_csv(
        "X1,Ann,not-an-email,,,2026-03-02,,,,,,,",
        "X2,Bob,,,,2026-03-02,maybe,,,,,,",
        "X3,Cy,,,cyano,2026-03-02,,true,,,,,",
        "X4,Di,,,,2026-03-02,,,,,99,,",
        "X5,Ed,,,,,,,,,,,",
        "X6,Fine,,,,2026-03-02,,,,,,,",
    ))
    err = refused(cli, "patients", path)
    assert "line 2, column email:" in err
    assert "line 3, column neuro: 'maybe' is not true, false or empty" in err
    assert "line 4, column protocol: cyanocobalamin must not be used in renal dysfunction" in err
    assert "line 5, column hb: hb=99 is outside the plausible range" in err
    assert "line 6, column start: a date is required" in err
    assert "line 7" not in err
    assert "5 bad rows; nothing was imported" in err


def test_a_row_with_too_many_columns_is_refused(cli: Clinic) -> None:
    path = write(cli, "d.csv", "mrn,given_on\nX1,2026-03-02,extra\n")
    err = refused(cli, "doses", path)
    assert "line 2, column 3 (none in the header): too many columns: 3, the header has 2" in err


def test_an_empty_file_says_so(cli: Clinic) -> None:
    path = write(cli, "p.csv", "")
    err = refused(cli, "patients", path)
    assert "p.csv is empty" in err


def test_an_mrn_enrolled_with_other_details_is_refused(cli: Clinic) -> None:
    assert cli.cobalt("enroll", "--mrn", "X1", "--name", "Ann", "--start", "2026-03-02").code == 0
    path = write(cli, "p.csv", patients_csv("X1,Anne,,,,2026-03-02,,,,,,,"))
    err = refused(cli, "patients", path)
    assert "line 2, column name: MRN 'X1' is already enrolled with other details (name)" in err


def enrol(cli: Clinic, mrn: str = "X1", start: str = "2026-03-02", *extra: str) -> None:
    result = cli.cobalt("enroll", "--mrn", mrn, "--name", "Ann", "--start", start, *extra)
    assert result.code == 0, result.err


def test_a_start_before_1990_is_refused_as_on_the_command_line(cli: Clinic) -> None:
    path = write(cli, "p.csv", patients_csv("X1,Ann,,,,0001-01-01,,,,,,,", "X2,Bo,,,,2026-03-02,,,,,,,"))
    err = refused(cli, "patients", path)
    assert "line 2, column start: '0001-01-01' is before 1990: check the year" in err
    assert "line 3" not in err
    assert "before 1990" in cli.cobalt("enroll", "--mrn", "X1", "--name", "Ann", "--start", "0001-01-01").err


def test_a_dose_before_the_start_is_refused(cli: Clinic) -> None:
    enrol(cli)
    path = write(cli, "d.csv", "mrn,given_on\nX1,2026-03-02\nX1,2026-02-27\nNOBODY,2026-03-02\nX1,2026-03-04\n")
    err = refused(cli, "doses", path)
    assert "line 3, column given_on: 2026-02-27 is before the start of hydroxo on 2026-03-02" in err
    assert "line 4, column mrn: no patient with MRN 'NOBODY'" in err
    assert "line 2" not in err and "line 5" not in err


def test_a_dose_in_the_future_or_twice_on_a_day_is_refused(cli: Clinic) -> None:
    enrol(cli)
    path = write(cli, "d.csv", "mrn,given_on\nX1,2026-03-02\nX1,2026-03-02\nX1,2026-03-21\n")
    err = refused(cli, "doses", path)
    assert "line 3, column given_on: a dose was already given to X1 on 2026-03-02" in err
    assert "line 4, column given_on: a dose on 2026-03-21 is in the future" in err


def test_a_lab_code_not_in_the_list_and_a_value_out_of_range_are_refused(cli: Clinic) -> None:
    enrol(cli)
    path = write(cli, "l.csv", "mrn,on,code,value\nX1,2026-03-02,b12,180\nX1,2026-03-02,vitd,40\n"
                               "X1,2026-03-02,hb,130\nX1,2026-03-02,if-antibodies,maybe\n")
    err = refused(cli, "labs", path)
    assert "line 3, column code: unknown lab code 'vitd'" in err
    assert "line 4, column value: hb=130 is outside the plausible range 1-25 g/dL" in err
    assert "line 5, column value: if-antibodies must be positive or negative" in err
    assert "line 2," not in err


def test_a_lab_order_that_is_not_open_is_refused(cli: Clinic) -> None:
    enrol(cli)
    path = write(cli, "l.csv", "mrn,on,code,value,order\nX1,2026-03-02,b12,180,12-monthly\n")
    err = refused(cli, "labs", path)
    assert "line 2, column order: no open lab order '12-monthly' for X1" in err


def test_doses_and_labs_are_applied_in_date_order_whatever_the_file_order(cli: Clinic) -> None:
    enrol(cli)
    path = write(cli, "d.csv", "mrn,given_on\nX1,2026-03-09\nX1,2026-03-02\nX1,2026-03-04\n")
    assert cli.cobalt("import", "doses", path).code == 0
    events = cli.cobalt("schedule", "X1", "--json").json()["events"]
    given = [(e["seq"], e["done_on"]) for e in events if e["kind"] == "dose" and e["status"] == "done"]
    assert given == [(1, "2026-03-02"), (2, "2026-03-04"), (3, "2026-03-09")]
    assert not any(e["status"] == "planned" and e["kind"] == "dose" and e["due"] < "2026-03-09" for e in events)


def test_imported_results_complete_the_nearest_open_order(cli: Clinic) -> None:
    enrol(cli)
    path = write(cli, "l.csv", "mrn,on,code,value\nX1,2026-03-02,b12,300\nX1,2026-03-02,hb,12\n"
                               "X1,2026-03-09,reticulocytes,2.5\n")
    result = cli.cobalt("import", "labs", path)
    assert result.code == 0, result.err
    assert "3 lab results imported" in result.out
    labs = {e["label"]: e for e in cli.cobalt("schedule", "X1", "--json").json()["events"] if e["kind"] == "lab"}
    assert labs["baseline"]["status"] == "done" and labs["baseline"]["done_on"] == "2026-03-02"
    assert labs["early-response"]["status"] == "done"


def test_history_for_a_discharged_patient_is_refused_on_its_mrn(cli: Clinic) -> None:
    enrol(cli)
    assert cli.cobalt("discharge", "X1", "--on", "2026-03-10", "--reason", "moved away").code == 0
    doses = write(cli, "d.csv", "mrn,given_on\nX1,2026-03-12\n")
    assert "line 2, column mrn: patient X1 was discharged on 2026-03-10" in refused(cli, "doses", doses)
    results = write(cli, "l.csv", "mrn,on,code,value\nX1,2026-03-12,hb,12\n")
    assert "line 2, column mrn: patient X1 was discharged on 2026-03-10" in refused(cli, "labs", results)


def test_a_file_with_only_a_header_imports_nothing_and_says_so(cli: Clinic) -> None:
    path = write(cli, "p.csv", patients_csv())
    result = cli.cobalt("import", "patients", path)
    assert result.code == 0, result.err
    assert result.out.strip() == "nothing to import: the file has a header and no rows"
