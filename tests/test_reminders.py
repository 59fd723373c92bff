"""Reminders end to end: real database, real SMTP server (aiosmtpd), the real pass.

Time is the pass's ``--now`` (the edge), so every boundary is explicit: the
evening before, send_time, the day of, the day after.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import pytest
from freezegun import freeze_time

from scheduler.config import load_settings
from scheduler.db import make_engine
from scheduler.messages import longdate
from scheduler.passes import run_pass

# 2026-03-02 is a Monday. hydroxo doses: Mon 2, Wed 4, Fri 6, Mon 9, Wed 11, Fri 13 March.
START = "2026-03-02"


@pytest.fixture
def mailing_clinic(clinic, smtp):
    clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port)
    return clinic


def enrol(clinic, mrn="P1", email="ann@patient.example", start=START, *extra):
    args = ["enroll", "--mrn", mrn, "--name", "Ann Example", "--start", start, *extra]
    if email:
        args += ["--email", email]
    assert clinic.cobalt(*args).code == 0


def tick(clinic, now):
    result = clinic.cobalt("tick", "--now", now, "--json")
    assert result.code == 0, result.err
    return result.json()


def of_kind(smtp, kind):
    return [m for m in smtp.messages if m.message["X-Cobalt-Kind"] == kind]


def dose_reminders(smtp):
    return of_kind(smtp, "dose-reminder")


def test_dose_reminder_waits_for_send_time_on_the_day_before(mailing_clinic, smtp):
    enrol(mailing_clinic)
    mailing_clinic.cobalt("give", "P1", "--on", START)
    tick(mailing_clinic, "2026-03-03T07:59")
    assert dose_reminders(smtp) == []
    tick(mailing_clinic, "2026-03-03T08:00")
    [reminder] = dose_reminders(smtp)
    assert reminder.rcpt_tos == ["ann@patient.example"]
    assert "Wednesday 4 March 2026" in reminder.message["Subject"]
    assert reminder.message["Message-ID"].startswith("<cobalt.")
    body = reminder.message.get_body(("plain",)).get_content()
    assert "Wednesday 4 March 2026" in body
    assert reminder.message.get_body(("html",)) is not None


def test_repeated_passes_send_each_reminder_once(mailing_clinic, smtp):
    enrol(mailing_clinic)
    mailing_clinic.cobalt("give", "P1", "--on", START)
    for minute in range(5):
        tick(mailing_clinic, f"2026-03-03T08:0{minute}")
    assert len(dose_reminders(smtp)) == 1
    assert len(of_kind(smtp, "digest")) == 1


def test_no_tomorrow_reminder_after_the_dose_day_has_come(mailing_clinic, smtp):
    enrol(mailing_clinic)
    mailing_clinic.cobalt("give", "P1", "--on", START)
    # The scheduler was down from before send_time on the 3rd until the 4th.
    tick(mailing_clinic, "2026-03-04T09:00")
    assert dose_reminders(smtp) == []


def test_reminder_queued_but_not_sent_before_the_day_is_skipped(mailing_clinic, smtp):
    enrol(mailing_clinic)
    mailing_clinic.cobalt("give", "P1", "--on", START)
    smtp.stop()
    tick(mailing_clinic, "2026-03-03T08:00")  # queued, the server is down
    smtp.start(smtp.port)
    tick(mailing_clinic, "2026-03-04T10:00")  # the dose day: the reminder is stale
    assert dose_reminders(smtp) == []
    statuses = {m["kind"]: m["status"] for m in mailing_clinic.cobalt("outbox", "--json").json()}
    assert statuses["dose-reminder"] == "skipped"


def test_no_reminder_for_a_dose_already_given(mailing_clinic, smtp):
    enrol(mailing_clinic)
    mailing_clinic.cobalt("give", "P1", "--on", START)
    with freeze_time("2026-03-03T07:00:00Z"):
        assert mailing_clinic.cobalt("give", "P1", "--on", "2026-03-03").code == 0
    tick(mailing_clinic, "2026-03-03T08:00")
    # dose 2 was given early; dose 3 is now due on Thursday 5th, not tomorrow
    assert dose_reminders(smtp) == []


def test_opted_out_and_discharged_patients_get_no_messages(mailing_clinic, smtp):
    enrol(mailing_clinic, "P1", "ann@patient.example")
    enrol(mailing_clinic, "P2", "bob@patient.example")
    for mrn in ("P1", "P2"):
        mailing_clinic.cobalt("give", mrn, "--on", START)
    assert mailing_clinic.cobalt("opt-out", "P1").code == 0
    with freeze_time("2026-03-03T07:00:00Z"):
        assert mailing_clinic.cobalt("discharge", "P2", "--reason", "moved away").code == 0
    tick(mailing_clinic, "2026-03-03T08:00")
    tick(mailing_clinic, "2026-03-05T08:00")
    patient_mail = [m for m in smtp.messages if m.rcpt_tos != ["nurses@clinic.example"]]
    assert patient_mail == []
    overdue = [m for m in of_kind(smtp, "overdue") if "P2" in m.message["Subject"]]
    assert overdue == []


def test_opting_back_in_restores_reminders(mailing_clinic, smtp):
    enrol(mailing_clinic)
    mailing_clinic.cobalt("give", "P1", "--on", START)
    mailing_clinic.cobalt("opt-out", "P1")
    mailing_clinic.cobalt("opt-in", "P1")
    tick(mailing_clinic, "2026-03-03T08:00")
    assert len(dose_reminders(smtp)) == 1


def test_lab_reminder_goes_seven_days_before_at_send_time(mailing_clinic, smtp):
    enrol(mailing_clinic)
    mailing_clinic.cobalt("give", "P1", "--on", START)
    mailing_clinic.cobalt("lab", "P1", "--on", START, "--order", "baseline", "--result", "b12=120")
    # early-response is due Monday 9 March: its reminder goes at 08:00 on Monday 2 March
    tick(mailing_clinic, "2026-03-02T07:59")
    assert not of_kind(smtp, "lab-reminder")
    tick(mailing_clinic, "2026-03-02T08:00")
    [lab] = of_kind(smtp, "lab-reminder")
    assert "Monday 9 March 2026" in lab.message["Subject"]
    assert lab.rcpt_tos == ["ann@patient.example"]


def test_lab_reminder_goes_at_send_time_when_the_lab_is_nearer_than_seven_days(mailing_clinic, smtp):
    with freeze_time("2026-03-01T02:00:00Z"):  # enrolled on a Sunday night, baseline due tomorrow
        enrol(mailing_clinic)
    tick(mailing_clinic, "2026-03-01T03:00")
    assert not of_kind(smtp, "lab-reminder")  # never a night message
    tick(mailing_clinic, "2026-03-01T08:00")
    [lab] = of_kind(smtp, "lab-reminder")
    assert "Monday 2 March 2026" in lab.message["Subject"]


def test_patient_messages_carry_no_lab_value_or_diagnosis(mailing_clinic, smtp):
    enrol(mailing_clinic, "P1", "ann@patient.example", START, "--platelets", "31", "--hb", "7.2")
    mailing_clinic.cobalt("give", "P1", "--on", START)
    mailing_clinic.cobalt("lab", "P1", "--on", START, "--order", "baseline", "--result", "b12=117")
    tick(mailing_clinic, "2026-03-03T08:00")
    to_patient = [m for m in smtp.messages if m.rcpt_tos == ["ann@patient.example"]]
    assert to_patient
    for m in to_patient:
        text = (m.message["Subject"] + m.message.get_body(("plain",)).get_content()
                + m.message.get_body(("html",)).get_content()).lower()
        for word in ("117", "7.2", "31", "b12", "cobalamin", "anaemia", "platelet", "deficien"):
            assert word not in text, word


def test_overdue_dose_reaches_the_clinic_the_day_after_with_the_technique_note(mailing_clinic, smtp):
    enrol(mailing_clinic, "P1", "ann@patient.example", START, "--platelets", "40")
    mailing_clinic.cobalt("give", "P1", "--on", START)
    tick(mailing_clinic, "2026-03-04T20:00")  # dose 2 due today, not yet overdue
    assert not [m for m in of_kind(smtp, "overdue") if "dose" in m.message["Subject"]]
    tick(mailing_clinic, "2026-03-05T08:00")
    [overdue] = [m for m in of_kind(smtp, "overdue") if "dose" in m.message["Subject"]]
    assert overdue.rcpt_tos == ["nurses@clinic.example"]
    text = overdue.message.get_body(("plain",)).get_content()
    assert "P1" in text and "Wednesday 4 March 2026" in text
    assert "25-27G" in text  # platelets 40: fine needle and pressure
    assert "deltoid" in text and "buttock" in text


def test_digest_goes_once_on_open_days_only(mailing_clinic, smtp):
    enrol(mailing_clinic)
    tick(mailing_clinic, "2026-03-07T09:00")  # Saturday: closed
    tick(mailing_clinic, "2026-03-08T09:00")  # Sunday: closed
    assert not of_kind(smtp, "digest")
    tick(mailing_clinic, "2026-03-09T07:00")
    tick(mailing_clinic, "2026-03-09T08:00")
    tick(mailing_clinic, "2026-03-09T17:00")
    [digest] = of_kind(smtp, "digest")
    assert digest.rcpt_tos == ["nurses@clinic.example"]
    text = digest.message.get_body(("plain",)).get_content()
    assert "Overdue" in text and "P1" in text


def test_clinic_in_berlin_sends_at_local_send_time_across_the_clock_change(clinic, smtp):
    clinic.configure(timezone="Europe/Berlin", smtp_host=smtp.host, smtp_port=smtp.port)
    # Dose due Monday 30 March 2026; clocks went forward on Sunday 29 March (UTC+1 -> UTC+2).
    enrol(clinic, "P1", "ann@patient.example", "2026-03-30")
    tick(clinic, "2026-03-29T05:59:00+00:00")  # 07:59 CEST
    assert dose_reminders(smtp) == []
    tick(clinic, "2026-03-29T06:00:00+00:00")  # 08:00 CEST
    assert len(dose_reminders(smtp)) == 1


def test_smtp_outage_keeps_messages_queued_until_the_server_is_back(mailing_clinic, smtp):
    for n in range(5):
        enrol(mailing_clinic, f"P{n}", f"p{n}@patient.example")
        mailing_clinic.cobalt("give", f"P{n}", "--on", START)
    port = smtp.port
    smtp.stop()
    report = tick(mailing_clinic, "2026-03-03T08:00")
    assert report["sent"] == 0 and report["retried"] >= 1
    queued = [m for m in mailing_clinic.cobalt("outbox", "--json").json() if m["status"] == "queued"]
    assert len(queued) >= 6  # five reminders and the digest
    smtp.start(port)
    tick(mailing_clinic, "2026-03-03T08:30")  # the back-off has passed
    assert sorted(r for m in dose_reminders(smtp) for r in m.rcpt_tos) == [
        f"p{n}@patient.example" for n in range(5)
    ]
    assert len({m.message["Message-ID"] for m in smtp.messages}) == len(smtp.messages)


def test_permanent_failure_is_marked_failed_and_reported_in_the_next_digest(mailing_clinic, smtp):
    from smtp_sink import PERMANENT

    enrol(mailing_clinic)
    mailing_clinic.cobalt("give", "P1", "--on", START)
    smtp.rcpt_reply = PERMANENT
    tick(mailing_clinic, "2026-03-03T08:00")
    statuses = {m["kind"]: m["status"] for m in mailing_clinic.cobalt("outbox", "--json").json()}
    assert statuses["dose-reminder"] == "failed"
    smtp.rcpt_reply = None
    tick(mailing_clinic, "2026-03-04T08:00")
    [digest] = of_kind(smtp, "digest")
    text = digest.message.get_body(("plain",)).get_content()
    assert "Failed messages (" in text and "Failed messages (0)" not in text


def test_two_passes_at_once_send_nothing_twice(mailing_clinic, smtp):
    for n in range(20):
        enrol(mailing_clinic, f"P{n}", f"p{n}@patient.example")
        mailing_clinic.cobalt("give", f"P{n}", "--on", START)
    settings = load_settings()
    now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
    errors = []

    def one_pass():
        engine = make_engine(settings.database_url)
        try:
            run_pass(engine, settings, now)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=one_pass) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    recipients = sorted(r for m in dose_reminders(smtp) for r in m.rcpt_tos)
    assert recipients == sorted(f"p{n}@patient.example" for n in range(20))


def test_without_smtp_messages_are_written_as_eml_files(clinic):
    enrol(clinic)
    clinic.cobalt("give", "P1", "--on", START)
    tick(clinic, "2026-03-03T08:00")
    files = sorted((clinic.path / "outbox").glob("*.eml"))
    sent = [m for m in clinic.cobalt("outbox", "--json").json() if m["status"] == "sent"]
    assert len(files) == len(sent) >= 2
    assert any(b"Wednesday 4 March 2026" in f.read_bytes() for f in files)


def test_urgent_alert_reaches_the_clinic_once_at_the_next_pass(mailing_clinic, smtp):
    enrol(mailing_clinic, "P1", "ann@patient.example", START, "--hb", "4.6")
    tick(mailing_clinic, "2026-03-02T03:00")  # before send_time: urgent alerts do not wait
    tick(mailing_clinic, "2026-03-02T03:01")
    tick(mailing_clinic, "2026-03-02T09:00")
    alerts = of_kind(smtp, "alert")
    assert len(alerts) == 1
    assert alerts[0].rcpt_tos == ["nurses@clinic.example"]
    assert "hb-critical" in alerts[0].message["Subject"] and "P1" in alerts[0].message["Subject"]
    [digest] = of_kind(smtp, "digest")
    assert "hb-critical" in digest.message.get_body(("plain",)).get_content()
    assert all(m.rcpt_tos == ["nurses@clinic.example"] for m in alerts + [digest])


@pytest.mark.parametrize("protocol", ["hydroxo", "hydroxo-neuro", "cyano"])
def test_three_weeks_of_daily_passes_render_every_kind_for_every_protocol(mailing_clinic, smtp, protocol):
    enrol(mailing_clinic, "P1", "ann@patient.example", START, "--protocol", protocol, "--platelets", "37")
    mailing_clinic.cobalt("give", "P1", "--on", START)
    for day in range(1, 22):
        tick(mailing_clinic, f"2026-03-{day + 1:02d}T08:00")
    kinds = {m.message["X-Cobalt-Kind"] for m in smtp.messages}
    assert {"dose-reminder", "lab-reminder", "overdue", "digest"} <= kinds
    for m in smtp.messages:
        if m.rcpt_tos == ["ann@patient.example"]:
            text = m.message.get_body(("plain",)).get_content().lower()
            assert "37" not in text and "platelet" not in text and protocol not in text
    held = [e for e in mailing_clinic.cobalt("schedule", "P1", "--json").json()["events"]
            if e["status"] == "held"]
    reminded = {m.message["Subject"] for m in dose_reminders(smtp)}
    if protocol == "cyano":
        assert held  # phase 2 waits for the response gate
    for event in held:  # nothing is sent about a dose that is held
        when = longdate(date.fromisoformat(event["due"]))
        assert not any(when in subject for subject in reminded)


def test_old_message_bodies_are_cleared_but_never_sent_again(mailing_clinic, smtp):
    enrol(mailing_clinic)
    mailing_clinic.cobalt("give", "P1", "--on", START)
    tick(mailing_clinic, "2026-03-03T08:00")
    sent = len(smtp.messages)
    tick(mailing_clinic, "2026-06-10T08:00")  # 99 days later: past outbox_keep_days
    engine = make_engine(load_settings().database_url)
    try:
        from sqlmodel import Session, select

        from models import Outbox
        with Session(engine) as session:
            early = [o for o in session.exec(select(Outbox)) if o.created_at.date().isoformat() < "2026-04-01"]
    finally:
        engine.dispose()
    assert early and all(o.body_text == "" for o in early)
    assert len([m for m in smtp.messages if m.message["X-Cobalt-Kind"] == "dose-reminder"
                and "4 March" in m.message["Subject"]]) == 1
    assert len(smtp.messages) > sent


@pytest.fixture
def own_templates(clinic, smtp):
    """A copy of the templates in the clinic's folder, named by `templates_dir`."""
    import shutil

    from scheduler.messages import DEFAULT_TEMPLATES_DIR

    own = clinic.path / "our-templates"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, own)
    clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port)
    toml = (clinic.path / "cobalt.toml").read_text()
    (clinic.path / "cobalt.toml").write_text('templates_dir = "our-templates"\n' + toml)  # before [clinic]
    enrol(clinic)
    clinic.cobalt("give", "P1", "--on", START)
    return own


def test_a_clinic_can_use_its_own_copies_of_the_templates(clinic, smtp, own_templates):
    (own_templates / "dose-reminder" / "subject.txt").write_text("Riverside: see you on {{ due|longdate }}\n")
    tick(clinic, "2026-03-03T08:00")
    [reminder] = dose_reminders(smtp)
    assert reminder.message["Subject"] == "Riverside: see you on Wednesday 4 March 2026"


def test_a_template_with_a_missing_variable_fails_the_pass_but_nothing_is_lost(clinic, smtp, own_templates):
    subject = own_templates / "dose-reminder" / "subject.txt"
    shipped = subject.read_text()
    subject.write_text("See you {{ appointment_time }}\n")
    result = clinic.cobalt("tick", "--now", "2026-03-03T08:00")
    assert result.code == 1 and "appointment_time" in result.err and len(result.err.splitlines()) == 1
    assert dose_reminders(smtp) == []
    assert of_kind(smtp, "overdue") and of_kind(smtp, "digest")  # the other kinds went out
    subject.write_text(shipped)
    tick(clinic, "2026-03-03T08:05")
    assert len(dose_reminders(smtp)) == 1
