"""Every bad input the command line can be given (SPEC sections 3 and 5: each
command, each option) is refused the same way: exit status 2, one line on
stderr, nothing on stdout, no traceback, and nothing in the database changed.

The cases share one populated database per backend (a refusal changes nothing,
so they cannot disturb one another; each compares the whole database before and
after itself). The clock is frozen on Friday 2026-03-20.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import DEFAULT_TOML, database_rows, drop_postgres_database, new_postgres_database
from freezegun import freeze_time

NOW = "2026-03-20 10:00:00"
LONG_MRN = "x" * 65
LONG_NAME = "n" * 201


def enrol(*extra: str, mrn: str, start: str = "2026-03-02") -> list[str]:
    return ["enroll", "--mrn", mrn, "--name", f"Patient {mrn}", "--start", start, *extra]


# The patients every case may speak of: A1 on hydroxo with two doses given (the
# 2nd and 4th of March), C1 on cyano, N1 on hydroxo-neuro, R1 on hydroxo with
# renal impairment, D1 discharged.
SETUP = [
    enrol("--email", "ann@patient.example", mrn="A1"),
    ["give", "A1", "--on", "2026-03-02"],
    ["give", "A1", "--on", "2026-03-04"],
    enrol("--protocol", "cyano", mrn="C1"),
    enrol("--neuro", mrn="N1"),
    enrol("--renal-impairment", mrn="R1"),
    enrol(mrn="D1"),
    ["discharge", "D1", "--on", "2026-03-03", "--reason", "moved away"],
]

Z = ["enroll", "--mrn", "Z9", "--name", "Zed"]  # a new patient, but for the one bad option

CASES: list[tuple[str, list[str], list[str]]] = [
    # (what, arguments, words the one line must hold)
    # -- the command line as a whole
    ("no command", [], []),
    ("unknown command", ["prescribe", "A1"], []),
    ("unknown global option", ["--verbose", "due"], []),
    ("--by with a newline", ["--by", "nurse\nroot", "opt-out", "A1"], ["--by"]),
    ("--by too long", ["--by", "b" * 65, "opt-out", "A1"], ["--by"]),
    # -- db
    ("db without a subcommand", ["db"], []),
    ("db unknown subcommand", ["db", "migrate"], []),
    ("db downgrade without a revision", ["db", "downgrade"], []),
    ("db downgrade to an unknown revision", ["db", "downgrade", "0999"], ["0999"]),
    ("db upgrade with an extra argument", ["db", "upgrade", "now"], []),
    # -- protocols
    ("protocols with an argument", ["protocols", "cyano"], []),
    ("protocols with an unknown option", ["protocols", "--all"], []),
    # -- enroll: identity
    ("enroll without --mrn", ["enroll", "--name", "Zed"], ["--mrn"]),
    ("enroll without --name", ["enroll", "--mrn", "Z9"], ["--name"]),
    ("enroll with a duplicate MRN", ["enroll", "--mrn", "A1", "--name", "Again"], ["A1"]),
    ("enroll with an empty MRN", ["enroll", "--mrn", " ", "--name", "Zed"], ["--mrn"]),
    ("enroll with an MRN too long", ["enroll", "--mrn", LONG_MRN, "--name", "Zed"], ["--mrn"]),
    ("enroll with a newline in the MRN", ["enroll", "--mrn", "Z9\nBcc: x@y.example", "--name", "Zed"], ["--mrn"]),
    ("enroll with an empty name", ["enroll", "--mrn", "Z9", "--name", ""], ["--name"]),
    ("enroll with a name too long", ["enroll", "--mrn", "Z9", "--name", LONG_NAME], ["--name"]),
    ("enroll with a tab in the name", ["enroll", "--mrn", "Z9", "--name", "Zed\tZ"], ["--name"]),
    ("enroll with an escape in the name", ["enroll", "--mrn", "Z9", "--name", "Zed\x1b[31m"], ["--name"]),
    # -- enroll: addresses and telephone
    ("enroll with no @", [*Z, "--email", "zed.example.org"], ["--email"]),
    ("enroll with an empty email", [*Z, "--email", ""], ["--email"]),
    ("enroll with two addresses", [*Z, "--email", "a@b.example,evil@x.example"], ["--email"]),
    ("enroll with a display name", [*Z, "--email", "Evil <evil@x.example>"], ["--email"]),
    ("enroll with an encoded word", [*Z, "--email", "=?utf-8?q?evil?=@x.example"], ["--email"]),
    ("enroll with two @", [*Z, "--email", "a@b@c.example"], ["--email"]),
    ("enroll with a header break", [*Z, "--email", "a@b.example\r\nBcc: evil@x.example"], ["--email"]),
    ("enroll with a group syntax", [*Z, "--email", ":;@x"], ["--email"]),
    ("enroll with a broken domain literal", [*Z, "--email", "a@[1.2.3"], ["--email"]),
    ("enroll with a quoted local part", [*Z, "--email", '"a b"@x.example'], ["--email"]),
    ("enroll with a phone that is not", [*Z, "--phone", "call me"], ["--phone"]),
    # -- enroll: protocol and dates
    ("enroll with an empty protocol", [*Z, "--protocol", ""], ["protocol"]),
    ("enroll with an unknown protocol", [*Z, "--protocol", "methylcobalamin"], ["methylcobalamin"]),
    ("enroll with a protocol in capitals", [*Z, "--protocol", "HYDROXO"], ["HYDROXO"]),
    ("enroll with an impossible start", [*Z, "--start", "2026-02-30"], ["2026-02-30"]),
    ("enroll with a start not YYYY-MM-DD", [*Z, "--start", "20260302"], []),
    ("enroll with an ISO week start", [*Z, "--start", "2026-W10-1"], []),
    ("enroll with an empty start", [*Z, "--start", ""], []),
    ("enroll with a start before 1990", [*Z, "--start", "1989-12-31"], ["1990"]),
    ("enroll with a start in year 1", [*Z, "--start", "0001-01-01"], []),
    ("enroll with a start years ahead", [*Z, "--start", "2028-01-01"], ["year"]),
    ("enroll with a start far ahead", [*Z, "--start", "9999-06-01"], []),
    ("enroll with non-ASCII digits in the start", [*Z, "--start", "٢٠٢٦-03-02"], []),
    # -- enroll: clinical values
    ("cyano with renal impairment", [*Z, "--protocol", "cyano", "--renal-impairment"], ["hydroxocobalamin"]),
    ("cyano with eGFR 45", [*Z, "--protocol", "cyano", "--egfr", "45"], ["hydroxocobalamin"]),
    ("eGFR not a number", [*Z, "--egfr", "normal"], []),
    ("eGFR in Arabic-Indic digits", [*Z, "--egfr", "٤٥"], []),
    ("eGFR nan", [*Z, "--egfr", "nan"], []),
    ("eGFR infinite", [*Z, "--egfr", "inf"], []),
    ("eGFR negative", [*Z, "--egfr", "-5"], ["egfr"]),
    ("platelets implausible", [*Z, "--platelets", "40000"], ["platelets"]),
    ("platelets in Devanagari digits", [*Z, "--platelets", "४०"], []),
    ("platelets in full-width digits", [*Z, "--platelets", "４０"], []),
    ("platelets with a unit", [*Z, "--platelets", "40x10^9/L"], []),
    ("haemoglobin implausible", [*Z, "--hb", "95"], ["hb"]),
    ("haemoglobin in Arabic-Indic digits", [*Z, "--hb", "٩"], []),
    ("maintenance every 4 months", [*Z, "--maintenance-months", "4"], ["4"]),
    ("maintenance months in words", [*Z, "--maintenance-months", "two"], []),
    ("maintenance months in Arabic-Indic digits", [*Z, "--maintenance-months", "٢"], []),
    ("maintenance months a fraction", [*Z, "--maintenance-months", "2.5"], []),
    ("cyano maintenance every 3 months", [*Z, "--protocol", "cyano", "--maintenance-months", "3"], []),
    ("a flag given a value", [*Z, "--neuro=yes"], []),
    ("enroll with an unknown option", [*Z, "--ward", "7"], []),
    # -- schedule
    ("schedule without an MRN", ["schedule"], []),
    ("schedule of an unknown MRN", ["schedule", "Z9"], ["Z9"]),
    ("schedule with two MRNs", ["schedule", "A1", "C1"], []),
    # -- due
    ("due with negative days", ["due", "--days", "-1"], ["--days"]),
    ("due with days in words", ["due", "--days", "week"], []),
    ("due with days in Arabic-Indic digits", ["due", "--days", "٣"], []),
    ("due with days a float", ["due", "--days", "1e3"], []),
    ("due with days past the calendar", ["due", "--days", "99999999"], ["--days"]),
    ("due on an impossible date", ["due", "--on", "2026-13-01"], []),
    ("due on a date before 1990", ["due", "--on", "1980-01-01"], ["1990"]),
    # -- give
    ("give without an MRN", ["give"], []),
    ("give to an unknown MRN", ["give", "Z9"], ["Z9"]),
    ("give in the future", ["give", "A1", "--on", "2026-03-21"], ["future"]),
    ("give before the start", ["give", "A1", "--on", "2026-03-01"], ["before"]),
    ("give a second dose on one day", ["give", "A1", "--on", "2026-03-04"], ["2026-03-04"]),
    ("give before the last dose", ["give", "A1", "--on", "2026-03-03"], []),
    ("give on an impossible date", ["give", "A1", "--on", "2026-02-30"], []),
    ("give on a date before 1990", ["give", "A1", "--on", "1970-01-01"], ["1990"]),
    ("give to a discharged patient", ["give", "D1", "--on", "2026-03-10"], ["discharged"]),
    # -- lab
    ("lab without a result", ["lab", "A1"], []),
    ("lab with an unknown code", ["lab", "A1", "--result", "vitd=40"], ["vitd"]),
    ("lab with an implausible value", ["lab", "A1", "--result", "b12=18000"], ["b12"]),
    ("lab with CODE:VALUE", ["lab", "A1", "--result", "b12:180"], ["CODE=VALUE"]),
    ("lab with a value in words", ["lab", "A1", "--result", "b12=low"], ["b12"]),
    ("lab with Arabic-Indic digits", ["lab", "A1", "--result", "b12=١٢٠"], ["b12"]),
    ("lab with nan", ["lab", "A1", "--result", "b12=nan"], ["b12"]),
    ("lab with an empty value", ["lab", "A1", "--result", "b12="], ["b12"]),
    ("lab with no code", ["lab", "A1", "--result", "=120"], []),
    ("lab with a qualitative word not allowed", ["lab", "A1", "--result", "if-antibodies=maybe"],
     ["if-antibodies"]),
    ("lab with one code twice", ["lab", "A1", "--result", "hb=10", "--result", "hb=11"], []),
    ("lab for an unknown order", ["lab", "A1", "--order", "5-year", "--result", "b12=300"], ["5-year"]),
    ("lab for an empty order", ["lab", "A1", "--order", "", "--result", "b12=300"], []),
    ("lab in the future", ["lab", "A1", "--on", "2026-04-01", "--result", "b12=300"], ["future"]),
    ("lab on a date before 1990", ["lab", "A1", "--on", "1900-01-01", "--result", "b12=300"], ["1990"]),
    ("lab for an unknown MRN", ["lab", "Z9", "--result", "b12=300"], ["Z9"]),
    ("lab for a discharged patient", ["lab", "D1", "--result", "hb=10"], ["discharged"]),
    # -- decisions
    ("end-loading for hydroxo", ["end-loading", "A1"], ["hydroxo-neuro"]),
    ("end-loading for cyano", ["end-loading", "C1"], ["hydroxo-neuro"]),
    ("end-loading before the start", ["end-loading", "N1", "--on", "2026-02-27"], ["before"]),
    ("end-loading in the future", ["end-loading", "N1", "--on", "2026-03-21"], ["future"]),
    ("end-loading for an unknown MRN", ["end-loading", "Z9"], ["Z9"]),
    ("confirm-response for hydroxo", ["confirm-response", "A1"], ["cyano"]),
    ("confirm-response for hydroxo-neuro", ["confirm-response", "N1"], ["cyano"]),
    ("confirm-response in the future", ["confirm-response", "C1", "--on", "2026-04-01"], ["future"]),
    ("confirm-response before the start", ["confirm-response", "C1", "--on", "2026-03-01"], ["before"]),
    ("review for hydroxo", ["review", "A1"], ["hydroxo-neuro"]),
    ("review in the future", ["review", "N1", "--on", "2026-03-21"], ["future"]),
    ("review for a discharged patient", ["review", "D1"], ["discharged"]),
    # -- discharge
    ("discharge without a reason", ["discharge", "A1"], ["--reason"]),
    ("discharge with an empty reason", ["discharge", "A1", "--reason", "  "], ["--reason"]),
    ("discharge in the future", ["discharge", "A1", "--on", "2026-04-01", "--reason", "moved"], ["future"]),
    ("discharge before the start", ["discharge", "C1", "--on", "2026-03-01", "--reason", "moved"], ["before"]),
    ("discharge before the last dose", ["discharge", "A1", "--on", "2026-03-03", "--reason", "moved"], []),
    ("discharge twice", ["discharge", "D1", "--reason", "again"], ["discharged"]),
    ("discharge an unknown MRN", ["discharge", "Z9", "--reason", "moved"], ["Z9"]),
    # -- opt-out, opt-in
    ("opt-out for an unknown MRN", ["opt-out", "Z9"], ["Z9"]),
    ("opt-in for an unknown MRN", ["opt-in", "Z9"], ["Z9"]),
    ("opt-out without an MRN", ["opt-out"], []),
    # -- tick, run, outbox, alerts
    ("tick at a time that is not a time", ["tick", "--now", "teatime"], []),
    ("tick in year 1", ["tick", "--now", "0001-01-01T00:00"], []),
    ("tick before 2000", ["tick", "--now", "1999-12-31T23:59"], ["2000"]),
    ("tick far in the future", ["tick", "--now", "9999-01-01T00:00"], []),
    ("tick at an empty time", ["tick", "--now", ""], []),
    ("tick with Arabic-Indic digits", ["tick", "--now", "٢٠٢٦-03-03T08:00"], []),
    ("tick with an argument", ["tick", "now"], []),
    ("run with --json", ["run", "--json"], []),
    ("run with an argument", ["run", "forever"], []),
    ("outbox with an argument", ["outbox", "all"], []),
    ("alerts with an unknown option", ["alerts", "--open"], []),
    # -- ack
    ("ack without a code", ["ack", "A1"], []),
    ("ack an alert that is not open", ["ack", "A1", "hb-critical"], ["hb-critical"]),
    ("ack an unknown code", ["ack", "A1", "no-such-alert"], ["no-such-alert"]),
    ("ack for an unknown MRN", ["ack", "Z9", "platelets-low"], ["Z9"]),
    # -- switch
    ("switch without --protocol", ["switch", "A1"], ["--protocol"]),
    ("switch to an empty protocol", ["switch", "A1", "--protocol", ""], ["protocol"]),
    ("switch to an unknown protocol", ["switch", "A1", "--protocol", "oral"], ["oral"]),
    ("switch to the same protocol", ["switch", "A1", "--protocol", "hydroxo"], ["hydroxo"]),
    ("switch to cyano with renal impairment", ["switch", "R1", "--protocol", "cyano"], ["hydroxocobalamin"]),
    ("switch in the future", ["switch", "A1", "--protocol", "cyano", "--on", "2026-04-01"], ["future"]),
    ("switch before the start", ["switch", "C1", "--protocol", "hydroxo", "--on", "2026-03-01"], []),
    ("switch with maintenance every 4 months", ["switch", "N1", "--protocol", "hydroxo",
                                                "--maintenance-months", "4"], ["4"]),
    ("switch with months in Arabic-Indic digits", ["switch", "N1", "--protocol", "hydroxo",
                                                   "--maintenance-months", "٢"], []),
    ("switch a discharged patient", ["switch", "D1", "--protocol", "cyano"], ["discharged"]),
]


@dataclass
class Populated:
    workdir: Path
    url: str


def _run(workdir: Path, args: list[str], capsys: Any) -> tuple[int, str, str]:
    from scheduler.cli import run

    capsys.readouterr()
    code = run(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def populated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Populated]:
    workdir = tmp_path_factory.mktemp("bad-input")
    server = None
    if request.param == "sqlite":
        path = workdir / "cobalt.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        url = f"sqlite:///{path}"
    else:
        from conftest import PG_SERVER

        server = request.getfixturevalue("postgres_server")
        name = new_postgres_database(server, request.getfixturevalue("postgres_template"))
        url = f"{PG_SERVER}/{name}"
    (workdir / "cobalt.toml").write_text(DEFAULT_TOML.format(url=url, timezone="UTC", holidays="", smtp_host="",
                                                             smtp_port=25))
    from scheduler.cli import run

    with pytest.MonkeyPatch.context() as mp, freeze_time(NOW):
        mp.chdir(workdir)
        mp.setenv("COBALT_CONFIG", str(workdir / "cobalt.toml"))
        for name_ in [n for n in os.environ if n.startswith("COBALT_") and n != "COBALT_CONFIG"]:
            mp.delenv(name_)
        for args in SETUP:
            assert run(args) == 0, args
    yield Populated(workdir, url)
    if server is not None:
        drop_postgres_database(server, url.rsplit("/", 1)[1])


@pytest.mark.parametrize(("what", "args", "words"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_exit_2_one_line_no_traceback_and_nothing_changed(
        populated: Populated, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        what: str, args: list[str], words: list[str]) -> None:
    monkeypatch.chdir(populated.workdir)
    monkeypatch.setenv("COBALT_CONFIG", str(populated.workdir / "cobalt.toml"))
    for name in [n for n in os.environ if n.startswith("COBALT_") and n != "COBALT_CONFIG"]:
        monkeypatch.delenv(name)
    before = database_rows(populated.url)
    files = _files(populated.workdir)
    with freeze_time(NOW):
        code, out, err = _run(populated.workdir, args, capsys)
    assert code == 2, (code, out, err)
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    assert database_rows(populated.url) == before
    assert _files(populated.workdir) == files


def _files(folder: Path) -> list[str]:
    """What is in the working directory, but for the lock file that serialises migrations."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".migration-lock"))
