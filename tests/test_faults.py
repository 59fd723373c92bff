"""Faults: one bad row never stops the others, an outage loses nothing, errors
leak no patient data, bad addresses and settings are refused at the door, first
use and a dead sender are safe. Real databases (SQLite and PostgreSQL), a real
SMTP server (aiosmtpd), real processes where a process is what fails."""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import COBALT, Clinic
from freezegun import freeze_time
from smtp_sink import PERMANENT, TEMPORARY, SmtpSink
from sqlalchemy import create_engine, text
from sqlmodel import Session, select

from models import MailServer, Outbox
from scheduler import db
from scheduler.config import load_settings
from scheduler.outbox import SERVER_PROBE_CEILING, deliver
from scheduler.runner import scheduled_pass

START = "2026-03-02"  # a Monday: dose 2 is due Wednesday 4 March, reminded on Tuesday 3 March at 08:00


@pytest.fixture
def mailing(clinic: Clinic, smtp: SmtpSink) -> Clinic:
    clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port)
    return clinic


def enrol(clinic: Clinic, n: int, email: str | None = None, *, name: str | None = None,
          mrn: str | None = None) -> str:
    mrn = mrn or f"P{n}"
    args = ["enroll", "--mrn", mrn, "--name", name or f"Patient {n}", "--start", START]
    args += ["--email", email or f"p{n}@patient.example"]
    result = clinic.cobalt(*args)
    assert result.code == 0, result.err
    assert clinic.cobalt("give", mrn, "--on", START).code == 0
    return mrn


def tick(clinic: Clinic, now: str) -> dict[str, Any]:
    result = clinic.cobalt("tick", "--now", now, "--json")
    assert result.code == 0, result.err
    data: dict[str, Any] = result.json()
    return data


def sql(url: str, *statements: str, **params: Any) -> list[Any]:
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            rows: list[Any] = []
            for statement in statements:
                result = conn.execute(text(statement), params)
                rows = list(result) if result.returns_rows else []
            return rows
    finally:
        engine.dispose()


def outbox(clinic: Clinic) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = clinic.cobalt("outbox", "--json").json()
    return data


def dose_reminders(smtp: SmtpSink) -> list[str]:
    return sorted(r for m in smtp.messages if m.message["X-Cobalt-Kind"] == "dose-reminder" for r in m.rcpt_tos)


def refused(result: Any, *words: str, code: int = 2) -> None:
    assert result.code == code, (result.code, result.out, result.err)
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert "Traceback" not in result.err
    for word in words:
        assert word in result.err, result.err


# -- 1. a poison row among good ones --------------------------------------------------------


@pytest.mark.parametrize("poison", [":;@x", "a@[1.2.3", "a@b.c\r\nBcc: evil@x.example"])
def test_a_poison_address_fails_its_own_row_and_every_other_message_goes_out(
        mailing: Clinic, smtp: SmtpSink, poison: str) -> None:
    for n in range(3):
        enrol(mailing, n)
    # An address that came in before addresses were checked at the door.
    sql(mailing.database_url, "UPDATE patient SET email = :poison WHERE mrn = 'P1'", poison=poison)

    report = tick(mailing, "2026-03-03T08:00")

    assert dose_reminders(smtp) == ["p0@patient.example", "p2@patient.example"]
    [bad] = [m for m in outbox(mailing) if m["mrn"] == "P1" and m["kind"] == "dose-reminder"]
    assert bad["status"] == "failed" and "cannot build the message" in bad["error"]
    assert report["failed"] >= 1 and not [m for m in outbox(mailing) if m["status"] == "sending"]
    again = tick(mailing, "2026-03-03T08:05")  # the next pass runs too, and repeats nothing
    assert again["sent"] == 0 and dose_reminders(smtp) == ["p0@patient.example", "p2@patient.example"]


def test_a_message_that_raises_anything_at_all_fails_alone_with_its_reason(
        mailing: Clinic, smtp: SmtpSink) -> None:
    for n in range(3):
        enrol(mailing, n)
    settings = load_settings()

    class Sender:
        repeatable = False

        def __init__(self) -> None:
            from scheduler.outbox import make_mailer

            self.real = make_mailer(settings)

        def session(self) -> Any:
            import contextlib

            @contextlib.contextmanager
            def opened() -> Any:
                with self.real.session() as real:
                    class Picky:
                        def send(self, message: Any) -> None:
                            if message.to == "p1@patient.example":
                                raise KeyError("a bug in one message")
                            real.send(message)
                    yield Picky()
            return opened()

    from scheduler.outbox import queue_due_messages

    engine = db.make_engine(settings.database_url)
    try:
        now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
        queue_due_messages(engine, settings, now)
        report = deliver(engine, settings, now, Sender())
    finally:
        engine.dispose()
    assert dose_reminders(smtp) == ["p0@patient.example", "p2@patient.example"]
    assert report.failed == 1  # its dose reminder (its lab reminder fell due yesterday: not sent a day late)
    [bad] = [m for m in outbox(mailing) if m["mrn"] == "P1" and m["kind"] == "dose-reminder"]
    assert bad["status"] == "failed" and bad["error"] == "cannot be sent (KeyError)"


# -- 2. addresses are checked at every way in -----------------------------------------------

BAD_ADDRESSES = [
    "a@b.c,evil@x.example", "Evil<evil@x.example>", "Evil <evil@x.example>", "=?utf-8?q?evil?=@x.example",
    "a@b@c.example", ":;@x", "a@[1.2.3", "a@[127.0.0.1]", '"a b"@x.example', "a@b.c\r\nBcc: evil@x.example",
    "a@b.c\nBcc: evil@x.example", "a@b.c\x00", "", "plain", "a@localhost",
]


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_enrol_refuses_what_is_not_one_plain_address(clinic: Clinic, address: str) -> None:
    refused(clinic.cobalt("enroll", "--mrn", "Z1", "--name", "Zed", "--email", address), "--email")
    refused(clinic.cobalt("schedule", "Z1"), "Z1")


@pytest.mark.parametrize("key", ["[clinic]\nemail", "[smtp]\nsender"])
@pytest.mark.parametrize("address", ["a@b.c,evil@x.example", "Evil <evil@x.example>", "a@b.c\\r\\nBcc: e@x.example"])
def test_the_clinic_and_sender_addresses_are_checked_at_start(clinic: Clinic, key: str, address: str) -> None:
    (clinic.path / "cobalt.toml").write_text(f'database_url = "{clinic.database_url}"\n{key} = "{address}"\n')
    refused(clinic.cobalt("due"), key.split("\n")[1])


def test_the_address_check_keeps_a_plain_address_and_normalises_its_domain() -> None:
    from scheduler.validation import check_email

    assert check_email("Ann.Lee@Patient.Example", "--email") == "Ann.Lee@patient.example"
    assert check_email(" ann@patient.example ", "--email") == "ann@patient.example"


# -- 3. an SMTP outage loses nothing --------------------------------------------------------


def test_a_twelve_hour_outage_loses_no_reminder_and_counts_no_attempt(mailing: Clinic, smtp: SmtpSink) -> None:
    for n in range(50):
        enrol(mailing, n)
    port = smtp.port
    smtp.stop()
    down_at = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    for step in range(0, 12 * 60, 20):  # a pass every 20 minutes for 12 hours
        now = down_at + timedelta(minutes=step)
        with freeze_time(now):
            report = tick(mailing, now.isoformat())
        assert report["sent"] == 0 and report["failed"] == 0
    waiting = [m for m in outbox(mailing) if m["kind"] == "dose-reminder"]
    assert len(waiting) == 50 and {m["status"] for m in waiting} == {"queued"}
    assert {m["attempts"] for m in waiting} == {0}  # the server's failures are not the messages'

    smtp.start(port)
    back = down_at + timedelta(hours=12, minutes=1)
    with freeze_time(back):
        tick(mailing, back.isoformat())  # may fall in the server's back-off
    later = back + SERVER_PROBE_CEILING
    with freeze_time(later):
        tick(mailing, later.isoformat())
    assert dose_reminders(smtp) == sorted(f"p{n}@patient.example" for n in range(50))
    assert {m["status"] for m in outbox(mailing) if m["kind"] == "dose-reminder"} == {"sent"}
    assert {m["attempts"] for m in outbox(mailing) if m["kind"] == "dose-reminder"} == {1}


def test_the_server_is_probed_with_a_back_off_of_at_most_a_few_minutes(mailing: Clinic, smtp: SmtpSink) -> None:
    enrol(mailing, 0)
    smtp.stop()
    now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    probes = []
    for _ in range(12):
        report = tick(mailing, now.isoformat())
        assert report["server_down"] is True
        engine = db.make_engine(mailing.database_url)
        with Session(engine) as session:
            [state] = session.exec(select(MailServer)).all()
        engine.dispose()
        assert state.next_probe_at is not None
        probes.append(state.next_probe_at - now)
        now = state.next_probe_at  # the next pass comes when the server may be tried again
    assert probes[0] == timedelta(seconds=60)
    assert probes[1] == timedelta(seconds=120)
    assert max(probes) == SERVER_PROBE_CEILING == timedelta(minutes=5)
    # A pass inside the back-off leaves the queue alone: no claim, no attempt.
    inside = tick(mailing, (now - timedelta(seconds=1)).isoformat())
    assert inside["server_down"] is True and inside["retried"] == 0


def test_a_421_is_the_servers_and_a_451_or_550_is_the_messages_own(mailing: Clinic, smtp: SmtpSink) -> None:
    enrol(mailing, 0)
    enrol(mailing, 1, "refused@patient.example")
    enrol(mailing, 2, "later@patient.example")
    smtp.rcpt_reply = "421 4.3.2 Service shutting down"
    report = tick(mailing, "2026-03-03T08:00")
    assert report["server_down"] is True and report["failed"] == 0 and report["sent"] == 0
    assert {m["attempts"] for m in outbox(mailing)} == {0}

    smtp.rcpt_reply = None
    smtp.rcpt_replies = {"refused@patient.example": PERMANENT, "later@patient.example": TEMPORARY}
    report = tick(mailing, "2026-03-03T08:10")
    assert report["server_down"] is False
    by_to = {(m["to"], m["kind"]): m for m in outbox(mailing)}
    assert by_to[("refused@patient.example", "dose-reminder")]["status"] == "failed"
    later = by_to[("later@patient.example", "dose-reminder")]
    assert later["status"] == "queued" and later["attempts"] == 1
    assert dose_reminders(smtp) == ["p0@patient.example"]  # the others went on past both


# -- 4. no patient data in any log ----------------------------------------------------------

SECRET_NAME = "Zebedee Quixote-Marwick"
SECRET_EMAIL = "zq.private@patient.example"
SECRET_MRN = "MRN-771199"


def _break_the_outbox(url: str) -> None:
    """Every insert into the outbox fails, as a full disk or a bad migration would."""
    if url.startswith("sqlite"):
        sql(url, "CREATE TRIGGER no_mail BEFORE INSERT ON outbox "
                 "BEGIN SELECT RAISE(ABORT, 'the outbox takes no rows'); END")
    else:
        sql(url, "ALTER TABLE outbox ADD CONSTRAINT no_mail CHECK (recipient = 'nobody')")


def test_a_database_error_during_a_pass_logs_no_name_email_or_mrn(
        mailing: Clinic, smtp: SmtpSink, caplog: pytest.LogCaptureFixture) -> None:
    enrol(mailing, 0, SECRET_EMAIL, name=SECRET_NAME, mrn=SECRET_MRN)
    _break_the_outbox(mailing.database_url)

    caplog.set_level(logging.DEBUG)  # every logger, SQLAlchemy's statements included
    engine = db.make_engine(mailing.database_url)
    with freeze_time("2026-03-03T08:00:00Z"):
        scheduled_pass(engine, load_settings())  # what `cobalt run` does every minute
    engine.dispose()
    in_process = mailing.cobalt("tick", "--now", "2026-03-03T08:00")
    child = mailing.exe("tick", "--now", "2026-03-03T08:00")

    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "failed" in logged  # the failure is there to be read
    assert in_process.code == 1 and child.code == 1
    assert len(child.err.strip().splitlines()) == 1 and "Traceback" not in child.err
    for output in (logged, in_process.err, child.err, child.out):
        for secret in (SECRET_NAME, "Zebedee", SECRET_EMAIL, SECRET_MRN):
            assert secret not in output


def test_engines_hide_bound_parameters(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        assert engine.hide_parameters is True
    finally:
        engine.dispose()


# -- 6. first use, several commands at once ----------------------------------------------------


def test_several_commands_started_at_once_on_a_new_database_all_work(
        empty_database_url: str, tmp_path: Path) -> None:
    (tmp_path / "cobalt.toml").write_text(f'database_url = "{empty_database_url}"\n')
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("COBALT_")},
           "COBALT_CONFIG": str(tmp_path / "cobalt.toml")}
    commands = [["due"], ["outbox"], ["alerts"], ["tick", "--now", "2026-03-03T08:00"],
                ["enroll", "--mrn", "F1", "--name", "First", "--start", START], ["due", "--json"]]
    procs = [subprocess.Popen([COBALT, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL) for args in commands]
    results = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    for proc in procs:
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
    assert results == [(0, "")] * len(commands)
    engine = db.make_engine(empty_database_url)
    try:
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_a_database_of_another_application_is_refused_not_migrated_into(
        empty_database_url: str, clinic: Clinic) -> None:
    sql(empty_database_url, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(40))",
        "INSERT INTO customers (id, name) VALUES (1, 'Acme')")
    (clinic.path / "cobalt.toml").write_text(f'database_url = "{empty_database_url}"\n')
    refused(clinic.cobalt("due"), "not a Cobalt database", code=1)
    refused(clinic.cobalt("db", "upgrade"), "not a Cobalt database", code=1)
    engine = create_engine(db.normalise_url(empty_database_url))
    try:
        from sqlalchemy import inspect

        assert set(inspect(engine).get_table_names()) == {"customers"}
    finally:
        engine.dispose()


# -- 7. leases: a dead sender's messages go out within a minute -------------------------------


def _spawn(clinic: Clinic, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [COBALT, *args], cwd=clinic.path,
        env={**os.environ, "COBALT_CONFIG": str(clinic.path / "cobalt.toml")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )


def _wait_for(predicate: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_a_killed_senders_messages_go_out_within_a_minute_and_at_most_one_twice(
        clinic: Clinic) -> None:
    with SmtpSink(delay=0.2) as smtp:
        clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port)
        for n in range(20):
            enrol(clinic, n)
        proc = _spawn(clinic, "tick", "--now", "2026-03-03T08:00:00")
        assert _wait_for(lambda: len(smtp.messages) >= 3)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        smtp.delay = 0
        killed_at = len(smtp.messages)
        assert killed_at < 41  # part-way: 20 dose and 20 lab reminders, and the digest

        early = clinic.exe("tick", "--now", "2026-03-03T08:00:05")  # the lease still holds
        assert early.code == 0, early.err
        assert len(smtp.messages) <= killed_at + 1  # nothing of the dead sender's batch

        within = clinic.exe("tick", "--now", "2026-03-03T08:01:00")  # 60 seconds on
        assert within.code == 0, within.err
        ids = collections.Counter(m.message["Message-ID"] for m in smtp.messages)
        rows = clinic.exe("outbox", "--json").json()
        assert {m["status"] for m in rows} == {"sent"}
        assert {m["message_id"] for m in rows} == set(ids)
        assert sum(count - 1 for count in ids.values()) <= 1


@pytest.mark.slow
def test_a_slow_sender_keeps_its_lease_while_it_works(mailing: Clinic, smtp: SmtpSink) -> None:
    mailing.configure(smtp_host=smtp.host, smtp_port=smtp.port, extra="[scheduler]\nclaim_seconds = 3\n")
    settings = load_settings()
    engine = db.make_engine(settings.database_url)
    started = datetime.now(UTC)
    with Session(engine) as session:
        for n in range(5):
            session.add(Outbox(dedupe_key=f"alert:{n}", kind="alert", recipient="nurses@clinic.example",
                               message_id=f"<cobalt.slow{n}@clinic.example>", subject=f"alert {n}",
                               body_text="text", body_html="<p>html</p>", next_attempt_at=started))
        session.commit()
    smtp.delay = 1.2  # five messages: six seconds, twice the lease
    done = threading.Event()
    reports = []

    def slow() -> None:
        reports.append(deliver(engine, settings, started))
        done.set()

    worker = threading.Thread(target=slow)
    worker.start()
    try:
        time.sleep(4.5)  # past the first lease: only a renewed one keeps the rows
        other = deliver(engine, settings, datetime.now(UTC))
    finally:
        worker.join(timeout=60)
        engine.dispose()
    assert other.sent == 0
    assert reports[0].sent == 5
    assert collections.Counter(m.message["Message-ID"] for m in smtp.messages).most_common(1)[0][1] == 1


def test_the_delivery_job_of_a_surviving_process_sends_a_dead_senders_rows_once_its_lease_ends(
        mailing: Clinic, smtp: SmtpSink) -> None:
    from scheduler.runner import scheduled_delivery

    settings = load_settings()
    engine = db.make_engine(settings.database_url)
    now = datetime.now(UTC)
    with Session(engine) as session:
        for n, lease_end in enumerate([now - timedelta(seconds=1), now + timedelta(seconds=30)]):
            session.add(Outbox(dedupe_key=f"alert:{n}", kind="alert", recipient="nurses@clinic.example",
                               message_id=f"<cobalt.dead{n}@clinic.example>", subject=f"alert {n}",
                               body_text="text", body_html="<p>html</p>", next_attempt_at=now,
                               status="sending", claimed_by="dead-sender", claimed_until=lease_end))
        session.commit()
    try:
        scheduled_delivery(engine, settings)  # what `cobalt run` does every claim_seconds
    finally:
        engine.dispose()
    assert [m.message["Message-ID"] for m in smtp.messages] == ["<cobalt.dead0@clinic.example>"]
    statuses = {m["message_id"]: m["status"] for m in outbox(mailing)}
    assert statuses == {"<cobalt.dead0@clinic.example>": "sent", "<cobalt.dead1@clinic.example>": "sending"}
