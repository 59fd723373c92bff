"""The scheduler as a process: `cobalt run` under APScheduler, and a sender killed
mid-batch. Real processes, real database, real SMTP server."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, date, datetime, timedelta

import pytest
from apscheduler.schedulers.blocking import BlockingScheduler
from conftest import COBALT
from freezegun import freeze_time
from smtp_sink import SmtpSink

from scheduler.runner import build_scheduler, request_stop

pytestmark = pytest.mark.slow


def wait_for(predicate, timeout=30.0, every=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def spawn(clinic, *args):
    return subprocess.Popen(
        [COBALT, *args], cwd=clinic.path,
        env={**os.environ, "COBALT_CONFIG": str(clinic.path / "cobalt.toml")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )


def test_run_adds_a_coalescing_pass_a_delivery_every_lease_and_a_digest_at_send_time_in_the_clinic_zone(clinic):
    clinic.configure(timezone="Europe/Berlin")
    settings = clinic.settings()
    scheduler = build_scheduler(None, settings)  # type: ignore[arg-type]
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert set(jobs) == {"pass", "delivery", "digest"}
    assert jobs["delivery"].trigger.interval.total_seconds() == settings.scheduler.claim_seconds
    for job in jobs.values():
        assert job.coalesce is True
        assert job.max_instances == 1
        assert job.misfire_grace_time >= 600
    digest = jobs["digest"].trigger
    fire = digest.get_next_fire_time(None, datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert fire.isoformat() == "2026-03-29T08:00:00+02:00"  # after the clock change


def _noop() -> None:
    pass


def test_a_stop_signal_while_the_jobs_are_processed_waits_for_them_and_then_stops_the_scheduler():
    scheduler = BlockingScheduler(timezone="UTC")
    scheduler.add_job(_noop, "interval", hours=1, id="pass")
    main = threading.Thread(target=scheduler.start, name="main-loop")
    main.start()
    assert wait_for(lambda: scheduler.running, timeout=10)
    # The job stores' lock is what the main loop holds while it processes the jobs.
    with scheduler._jobstores_lock:
        stopper = request_stop(scheduler)
        assert stopper is not None
        time.sleep(0.2)
        # The stop waits for the processing to end: the jobs it works on are still there.
        assert [job.id for job in scheduler._jobstores["default"].get_all_jobs()] == ["pass"]
    stopper.join(timeout=10)
    main.join(timeout=10)
    assert not main.is_alive()
    assert not scheduler.running
    assert request_stop(scheduler) is None  # a second signal does nothing


def test_cobalt_run_sends_reminders_and_stops_cleanly_on_sigterm(clinic):
    with SmtpSink() as smtp:
        clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port,
                         extra="[scheduler]\npass_every_seconds = 1\n")
        (clinic.path / "cobalt.toml").write_text(
            (clinic.path / "cobalt.toml").read_text().replace('send_time = "08:00"', 'send_time = "00:00"'))
        today = datetime.now(UTC).date()
        tomorrow = (today + timedelta(days=1)).isoformat()
        # Enrolled before today's send_time (00:00), so today's reminders include it.
        with freeze_time(datetime.combine(today, datetime.min.time()) - timedelta(minutes=5)):
            assert clinic.cobalt("enroll", "--mrn", "R1", "--name", "Ann", "--email", "ann@patient.example",
                                 "--start", tomorrow, "--protocol", "hydroxo").code == 0
        proc = spawn(clinic, "run")
        try:
            def got_reminder():
                return any(m.message["X-Cobalt-Kind"] in ("dose-reminder", "lab-reminder")
                           for m in smtp.messages)
            assert wait_for(got_reminder, timeout=60), proc.stderr.read() if proc.poll() else ""
        finally:
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in err
        assert "Ann" not in err and "ann@patient.example" not in err  # no patient data in logs


def test_a_sender_killed_mid_batch_loses_nothing_and_repeats_at_most_one(clinic):
    with SmtpSink(delay=0.15) as smtp:
        clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port)
        start = date(2026, 3, 2)
        for n in range(30):
            assert clinic.cobalt("enroll", "--mrn", f"K{n}", "--name", f"Patient {n}",
                                 "--email", f"k{n}@patient.example", "--start", start.isoformat()).code == 0
            assert clinic.cobalt("give", f"K{n}", "--on", start.isoformat()).code == 0
        proc = spawn(clinic, "tick", "--now", "2026-03-03T08:00")
        assert wait_for(lambda: len(smtp.messages) >= 5, timeout=60)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
        sent_before = len(smtp.messages)
        assert sent_before < 61  # killed part-way: 30 reminders + 30 lab reminders + digest
        # After the claim has expired, the next pass takes the dead sender's rows over.
        smtp.delay = 0
        result = clinic.exe("tick", "--now", "2026-03-03T08:10")
        assert result.code == 0, result.err
        ids = collections.Counter(m.message["Message-ID"] for m in smtp.messages)
        outbox = clinic.exe("outbox", "--json").json()
        assert {m["message_id"] for m in outbox} == set(ids)
        assert all(m["status"] == "sent" for m in outbox)
        assert sum(count - 1 for count in ids.values()) <= 1


def test_two_tick_processes_at_once_send_each_reminder_once(clinic):
    with SmtpSink() as smtp:
        clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port, extra="[scheduler]\nbatch_size = 5\n")
        for n in range(25):
            assert clinic.cobalt("enroll", "--mrn", f"T{n}", "--name", f"Patient {n}",
                                 "--email", f"t{n}@patient.example", "--start", "2026-03-02").code == 0
            assert clinic.cobalt("give", f"T{n}", "--on", "2026-03-02").code == 0
        procs = [spawn(clinic, "tick", "--now", "2026-03-03T08:00") for _ in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        ids = collections.Counter(m.message["Message-ID"] for m in smtp.messages)
        # A dose reminder and an overdue baseline lab each, and the digest (the early-response
        # lab's reminder fell on 2 March, seven days before it).
        assert len(ids) == 25 * 2 + 1
        assert set(ids.values()) == {1}
