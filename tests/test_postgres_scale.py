"""Several scheduler processes on one PostgreSQL database send every reminder
exactly once (and, with one of them killed half-way, at most twice)."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from datetime import date
from pathlib import Path

import pytest
from conftest import COBALT, DEFAULT_TOML, PG_SERVER, drop_postgres_database, new_postgres_database
from smtp_sink import SmtpSink

from scheduler.clinic_calendar import ClinicCalendar
from scheduler.db import make_engine, transaction
from scheduler.service import Context, enroll, give

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PATIENTS = 1000  # each has a dose reminder and an overdue notice (the baseline lab) due: 2,000 messages
START = date(2026, 3, 2)
NOW = "2026-03-03T08:00"


@pytest.fixture(scope="module")
def seeded_template(postgres_server, postgres_template):
    """A database with the patients enrolled, copied (as a template) for each test."""
    name = new_postgres_database(postgres_server, postgres_template)
    engine = make_engine(f"{PG_SERVER}/{name}")
    ctx = Context(ClinicCalendar(), START, "test")
    with transaction(engine) as session:
        for n in range(PATIENTS):
            enroll(session, ctx, mrn=f"S{n:05d}", name=f"Patient {n}",
                   email=f"s{n}@patient.example", start=START)
    with transaction(engine) as session:
        for n in range(PATIENTS):
            give(session, ctx, f"S{n:05d}", START)
    engine.dispose()
    yield name
    drop_postgres_database(postgres_server, name)


@pytest.fixture
def busy_clinic(postgres_server, seeded_template, tmp_path: Path):
    name = new_postgres_database(postgres_server, seeded_template)
    yield f"{PG_SERVER}/{name}", tmp_path
    drop_postgres_database(postgres_server, name)


def start_ticks(url: str, workdir: Path, smtp: SmtpSink, count: int) -> list[subprocess.Popen]:
    (workdir / "cobalt.toml").write_text(DEFAULT_TOML.format(
        url=url, timezone="UTC", holidays="", smtp_host=smtp.host, smtp_port=smtp.port)
        + "[scheduler]\nbatch_size = 50\n")
    env = {**os.environ, "COBALT_CONFIG": str(workdir / "cobalt.toml")}
    return [
        subprocess.Popen([COBALT, "tick", "--now", NOW], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]


def reminders(smtp: SmtpSink) -> collections.Counter[str]:
    return collections.Counter(
        m.message["Message-ID"] for m in smtp.messages
        if m.message["X-Cobalt-Kind"] in ("dose-reminder", "overdue")  # the lab reminders fell on 2 March
    )


def test_four_processes_send_two_thousand_reminders_exactly_once(busy_clinic):
    url, workdir = busy_clinic
    with SmtpSink() as smtp:
        procs = start_ticks(url, workdir, smtp, 4)
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err
        sent = reminders(smtp)
        assert len(sent) == 2 * PATIENTS
        assert set(sent.values()) == {1}
        digests = [m for m in smtp.messages if m.message["X-Cobalt-Kind"] == "digest"]
        assert len(digests) == 1


def test_one_of_four_processes_killed_half_way_loses_nothing(busy_clinic):
    url, workdir = busy_clinic
    with SmtpSink(delay=0.002) as smtp:
        procs = start_ticks(url, workdir, smtp, 4)
        deadline = time.monotonic() + 300
        while len(smtp.messages) < PATIENTS and time.monotonic() < deadline:
            time.sleep(0.05)
        procs[0].send_signal(signal.SIGKILL)
        for proc in procs:
            proc.communicate(timeout=600)
        # The dead process's claims expire; a later pass takes them over.
        later = subprocess.run(
            [COBALT, "tick", "--now", "2026-03-03T08:10"], cwd=workdir, capture_output=True, text=True,
            env={**os.environ, "COBALT_CONFIG": str(workdir / "cobalt.toml")}, timeout=600)
        assert later.returncode == 0, later.stderr
        sent = reminders(smtp)
        assert len(sent) == 2 * PATIENTS
        assert max(sent.values()) <= 2
