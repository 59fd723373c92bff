"""Patients are never left with a wrong date (SPEC section 8), end to end.

Real database (SQLite and PostgreSQL), the real pass, a real SMTP server
(aiosmtpd). The clock is frozen with freezegun at each boundary: the evening
before, ``send_time``, the night. 2026-03-02 is a Monday; hydroxo loading doses
fall on Mon 2, Wed 4, Fri 6, Mon 9, Wed 11 and Fri 13 March.
"""

from __future__ import annotations

from email.utils import parseaddr
from typing import Any

import pytest
from freezegun import freeze_time

START = "2026-03-02"
PATIENT = "ann@patient.example"
CLINIC_LINES = (
    'address = "12 River Road, Leeds LS1 4AB"\n'
    'phone = "0113 496 0000"\n'
    'hours = "Monday to Friday, 08:00-17:00"\n'
)
FORBIDDEN = ("b12", "cobalamin", "anaemia", "anemia", "platelet", "deficien", "mma", "methylmalonic",
             "pmol", "180")


@pytest.fixture
def clinic_with_mail(clinic, smtp):
    clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port)
    toml = clinic.path / "cobalt.toml"
    toml.write_text(toml.read_text().replace("[clinic]\n", "[clinic]\n" + CLINIC_LINES))
    return clinic


def at(moment: str) -> Any:
    """The clinic's clock (UTC here) stopped at ``moment``."""
    return freeze_time(moment.replace("T", " "))


def run(clinic, moment: str, *args: str) -> Any:
    with at(moment):
        result = clinic.cobalt(*args)
    assert result.code == 0, f"cobalt {' '.join(args)}: {result.err}"
    return result


def tick(clinic, moment: str) -> dict[str, Any]:
    """One pass, with the clock frozen at ``moment``."""
    return run(clinic, moment, "tick", "--json").json()


def enrol(clinic, mrn: str = "P1", email: str | None = PATIENT, moment: str = "2026-03-01T07:00",
          *extra: str) -> None:
    args = ["enroll", "--mrn", mrn, "--name", "Ann Example", "--start", START, *extra]
    if email:
        args += ["--email", email]
    run(clinic, moment, *args)


def of_kind(smtp, kind: str) -> list[Any]:
    return [m for m in smtp.messages if m.message["X-Cobalt-Kind"] == kind]


def to_patient(smtp, address: str = PATIENT) -> list[Any]:
    return [m for m in smtp.messages if m.rcpt_tos == [address]]


def text_of(received: Any) -> str:
    return " ".join(received.message.get_body(("plain",)).get_content().split())


def about(received: list[Any], words: str) -> list[Any]:
    return [m for m in received if words in m.message["Subject"]]


# -- changed ----------------------------------------------------------------------


def test_a_late_dose_that_moves_a_reminded_dose_is_told_once_at_the_next_send_time(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-05T08:00")  # "see you on Friday 6 March"; dose 2 (Wed 4) was missed
    assert len(about(of_kind(smtp, "dose-reminder"), "Friday 6 March 2026")) == 1

    run(clinic, "2026-03-05T10:00", "give", "P1")  # dose 2, late: dose 3 moves to Monday 9 March
    for moment in ("2026-03-05T10:05", "2026-03-05T18:00", "2026-03-05T21:35",  # the evening before
                   "2026-03-06T03:00", "2026-03-06T07:59"):  # the night
        tick(clinic, moment)
        assert of_kind(smtp, "changed") == [], moment
    tick(clinic, "2026-03-06T08:00")  # send_time
    tick(clinic, "2026-03-06T08:01")
    tick(clinic, "2026-03-06T12:00")

    [changed] = of_kind(smtp, "changed")
    assert changed.rcpt_tos == [PATIENT]
    assert changed.message["Subject"].strip() == "Your appointment at Riverside clinic has moved to Monday 9 March 2026"
    body = text_of(changed)
    assert "Was: Friday 6 March 2026 (no longer)" in body and "Now: Monday 9 March 2026" in body
    assert "If the day does not suit you" in body and "0113 496 0000" in body
    assert "12 River Road, Leeds LS1 4AB" in body


def test_a_moved_dose_is_reminded_of_its_new_date_once(clinic_with_mail, smtp):
    """The once-only key carries the due date: a reminder for Friday does not stop the one for Monday."""
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-05T08:00")
    run(clinic, "2026-03-05T10:00", "give", "P1")  # dose 3: Friday 6 -> Monday 9 March
    tick(clinic, "2026-03-08T07:59")
    assert about(of_kind(smtp, "dose-reminder"), "Monday 9 March 2026") == []
    tick(clinic, "2026-03-08T08:00")
    tick(clinic, "2026-03-08T09:00")

    reminders = of_kind(smtp, "dose-reminder")
    assert len(about(reminders, "Friday 6 March 2026")) == 1
    assert len(about(reminders, "Monday 9 March 2026")) == 1


def test_a_discharge_cancels_a_reminded_dose_with_one_message_and_then_silence(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-03T08:00")  # "see you on Wednesday 4 March"
    run(clinic, "2026-03-03T11:00", "discharge", "P1", "--reason", "moved away")
    tick(clinic, "2026-03-03T19:00")
    assert of_kind(smtp, "changed") == []
    tick(clinic, "2026-03-04T08:00")
    for day in range(5, 12):
        tick(clinic, f"2026-03-{day:02d}T08:00")

    [cancelled] = about(of_kind(smtp, "changed"), "Wednesday 4 March 2026")
    assert cancelled.message["Subject"].strip() == (
        "Your appointment at Riverside clinic on Wednesday 4 March 2026 is cancelled")
    assert "please do not come on that day" in text_of(cancelled)
    after = [m.message["X-Cobalt-Kind"] for m in to_patient(smtp)]
    assert after[after.index("changed"):] == ["changed"]  # nothing but the cancellations after it
    assert all("is cancelled" in m.message["Subject"] for m in of_kind(smtp, "changed"))


def test_a_move_before_send_time_is_told_at_send_time_that_day(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-05T08:00")  # "Friday 6 March"
    run(clinic, "2026-03-06T06:30", "give", "P1", "--on", "2026-03-05")  # recorded early next morning
    tick(clinic, "2026-03-06T07:00")
    assert of_kind(smtp, "changed") == []
    tick(clinic, "2026-03-06T08:00")
    [changed] = of_kind(smtp, "changed")
    assert "Monday 9 March 2026" in changed.message["Subject"]


# -- send_time --------------------------------------------------------------------


def test_a_lab_order_made_in_the_evening_waits_for_the_next_send_time(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    tick(clinic, "2026-03-01T08:00")  # the baseline's reminder (due Monday 2 March)
    tick(clinic, "2026-03-02T08:00")  # the early-response test's (Monday 9 March)
    before = len(of_kind(smtp, "lab-reminder"))
    # At 18:00 a borderline baseline result orders an mma test "at once".
    run(clinic, "2026-03-02T18:00", "lab", "P1", "--order", "baseline", "--result", "b12=180")
    for moment in ("2026-03-02T18:00", "2026-03-02T18:05", "2026-03-02T21:35", "2026-03-03T03:00",
                   "2026-03-03T07:59"):
        tick(clinic, moment)
        assert len(of_kind(smtp, "lab-reminder")) == before, moment
    tick(clinic, "2026-03-03T08:00")
    tick(clinic, "2026-03-03T14:00")

    labs = of_kind(smtp, "lab-reminder")
    assert len(labs) == before + 1
    assert "Tuesday 3 March 2026" in labs[-1].message["Subject"]  # due "at once": today
    for m in to_patient(smtp):
        words = (m.message["Subject"] + text_of(m)).lower()
        assert not [w for w in FORBIDDEN if w in words], m.message["Subject"]


def test_two_orders_due_on_one_day_make_one_reminder(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic, moment="2026-03-01T06:00")  # Sunday morning: baseline due Monday 2 March
    # A borderline B12 taken on Sunday orders mma "at once": the next open day, Monday 2 March too.
    # (recorded against the 3-month order, so that the baseline order stays open)
    run(clinic, "2026-03-01T06:30", "lab", "P1", "--order", "3-month", "--result", "b12=180")
    due = [e for e in run(clinic, "2026-03-01T06:31", "schedule", "P1", "--json").json()["events"]
           if e["kind"] == "lab" and e["status"] == "planned" and e["due"] == START]
    assert sorted(e["label"] for e in due) == ["baseline", "mma"]
    tick(clinic, "2026-03-01T08:00")
    tick(clinic, "2026-03-01T09:00")

    [lab] = of_kind(smtp, "lab-reminder")
    assert "Monday 2 March 2026" in lab.message["Subject"]


def test_patient_messages_come_from_the_clinic_by_name_and_replies_go_to_the_clinic(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-03T08:00")

    [reminder] = of_kind(smtp, "dose-reminder")
    assert parseaddr(reminder.message["From"]) == ("Riverside clinic", "clinic@clinic.example")
    assert reminder.message["Reply-To"] == "nurses@clinic.example"
    body = text_of(reminder)
    assert "Where: Riverside clinic, 12 River Road, Leeds LS1 4AB" in body
    assert "Open: Monday to Friday, 08:00-17:00" in body and "Telephone 0113 496 0000" in body


# -- missed -----------------------------------------------------------------------


def test_a_missed_dose_is_followed_up_once_three_days_after_at_send_time(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")  # dose 2, Wednesday 4 March, never comes
    for moment in ("2026-03-06T08:00", "2026-03-06T20:00", "2026-03-07T03:00", "2026-03-07T07:59"):
        tick(clinic, moment)
        assert of_kind(smtp, "missed") == [], moment
    tick(clinic, "2026-03-07T08:00")
    tick(clinic, "2026-03-07T15:00")

    [missed] = of_kind(smtp, "missed")
    assert missed.rcpt_tos == [PATIENT]
    assert "We missed you" in missed.message["Subject"] and "Wednesday 4 March 2026" in missed.message["Subject"]
    assert "please book a new appointment" in text_of(missed)
    words = (missed.message["Subject"] + text_of(missed)).lower()
    assert not [w for w in FORBIDDEN if w in words]


def test_a_dose_given_late_gets_no_missed_follow_up(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    run(clinic, "2026-03-06T09:00", "give", "P1")  # dose 2, two days late
    for day in (6, 7, 8, 9):
        tick(clinic, f"2026-03-{day:02d}T08:00")
    assert of_kind(smtp, "missed") == []


def test_the_follow_up_day_is_clinic_policy(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    toml = clinic.path / "cobalt.toml"
    toml.write_text(toml.read_text().replace("[clinic]\n", "[clinic]\nmissed_after_days = 5\n"))
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-07T08:00")
    assert of_kind(smtp, "missed") == []
    tick(clinic, "2026-03-09T08:00")
    assert "Wednesday 4 March 2026" in of_kind(smtp, "missed")[0].message["Subject"]


# -- the digest: to telephone, and what was not sent -------------------------------


def digest_text(smtp, day: str) -> str:
    [digest] = [m for m in of_kind(smtp, "digest") if day in m.message["Subject"]]
    return digest.message.get_body(("plain",)).get_content()


def test_the_digest_lists_whom_to_telephone_with_their_numbers(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic, "P1", PATIENT, "2026-03-01T07:00", "--phone", "0113 496 0001")
    run(clinic, "2026-03-02T09:00", "give", "P1")  # then stays away: overdue since Wednesday 4 March
    run(clinic, "2026-03-02T09:05", "lab", "P1", "--order", "baseline", "--result", "b12=100")
    run(clinic, "2026-03-09T07:00", "enroll", "--mrn", "P2", "--name", "Bo Park", "--start", "2026-03-12",
        "--phone", "0113 496 0002")  # no email: first dose on Thursday 12 March
    run(clinic, "2026-03-09T07:00", "enroll", "--mrn", "P3", "--name", "Cy Diaz", "--start", "2026-03-12",
        "--email", "cy@patient.example", "--phone", "0113 496 0003")
    tick(clinic, "2026-03-10T08:00")  # P1: 6 days overdue
    tick(clinic, "2026-03-11T08:00")  # P1: 7 days overdue

    def section(day: str) -> str:
        return digest_text(smtp, day).split("To telephone (")[1].split("Reminders not sent")[0]

    assert "P1" not in section("Tuesday 10 March 2026")
    wednesday = section("Wednesday 11 March 2026")
    assert wednesday.startswith("2)")
    assert "P1 Ann Example: 0113 496 0001" in wednesday and "overdue since 2026-03-04 (7 days)" in wednesday
    assert "P2 Bo Park: 0113 496 0002" in wednesday and "no email address; due 2026-03-12" in wednesday
    assert "P3" not in wednesday  # email reaches them


def test_after_downtime_the_skipped_reminders_are_counted_and_listed_in_the_next_digest(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic, "P1", PATIENT, "2026-03-01T07:00", "--phone", "0113 496 0001")
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-02T08:00")
    # Down from Monday 08:00 until Wednesday 09:00: Tuesday's "see you tomorrow" never went.
    report = tick(clinic, "2026-03-04T09:00")

    assert report["skipped"] == 1
    assert about(of_kind(smtp, "dose-reminder"), "Wednesday 4 March 2026") == []
    text = digest_text(smtp, "Wednesday 4 March 2026")
    section = text.split("Reminders not sent because their moment passed (")[1].split("Failed messages")[0]
    assert section.startswith("1)")
    assert "P1 Ann Example: dose-reminder for 2026-03-04, 0113 496 0001" in section
    tick(clinic, "2026-03-05T08:00")
    assert "Reminders not sent because their moment passed (0)" in digest_text(smtp, "Thursday 5 March 2026")


def test_a_pass_that_misses_nothing_skips_nothing(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    reports = [tick(clinic, f"2026-03-0{day}T{hour}") for day in (2, 3, 4) for hour in ("03:00", "08:00", "20:00")]
    assert [r["skipped"] for r in reports] == [0] * 9


# -- loading doses: every dose, or the first of each week --------------------------


def test_a_patient_can_choose_reminders_for_the_first_loading_dose_of_each_week(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    chosen = run(clinic, "2026-03-01T07:05", "reminders", "P1", "--loading", "first-of-week", "--json").json()
    assert chosen["loading"] == "first-of-week"
    for day in range(1, 13):
        tick(clinic, f"2026-03-{day:02d}T08:00")
        if f"2026-03-{day:02d}" in ("2026-03-02", "2026-03-04", "2026-03-06", "2026-03-09", "2026-03-11"):
            run(clinic, f"2026-03-{day:02d}T09:00", "give", "P1")

    reminded = [m.message["Subject"] for m in of_kind(smtp, "dose-reminder")]
    assert len(reminded) == 2, reminded
    assert "Monday 2 March 2026" in reminded[0] and "Monday 9 March 2026" in reminded[1]


def test_every_loading_dose_is_reminded_by_default(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    assert run(clinic, "2026-03-01T07:05", "reminders", "P1", "--json").json()["loading"] == "every-dose"
    for day in range(1, 7):
        tick(clinic, f"2026-03-{day:02d}T08:00")
        if day in (2, 4):
            run(clinic, f"2026-03-{day:02d}T09:00", "give", "P1")
    assert len(of_kind(smtp, "dose-reminder")) == 3  # Monday 2, Wednesday 4, Friday 6


def test_an_unknown_loading_choice_is_refused_and_changes_nothing(clinic):
    enrol(clinic)
    with at("2026-03-01T07:05"):
        refused = clinic.cobalt("reminders", "P1", "--loading", "sometimes")
        after = clinic.cobalt("reminders", "P1", "--json").json()
    assert refused.code == 2 and len(refused.err.splitlines()) == 1 and "Traceback" not in refused.err
    assert after["loading"] == "every-dose"


# -- more of the rules --------------------------------------------------------------


def test_a_switch_that_keeps_a_dose_on_the_day_told_sends_no_changed_message(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-03T08:00")  # "Wednesday 4 March"
    run(clinic, "2026-03-03T10:00", "switch", "P1", "--protocol", "cyano")  # daily doses: one on the 4th too
    tick(clinic, "2026-03-04T08:00")
    assert of_kind(smtp, "changed") == []


def test_an_opted_out_patient_gets_no_changed_or_missed_message(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-05T08:00")  # "Friday 6 March"
    run(clinic, "2026-03-05T09:00", "opt-out", "P1")
    run(clinic, "2026-03-05T10:00", "give", "P1")  # Friday's dose moves
    for day in (6, 7, 8, 9, 10):
        tick(clinic, f"2026-03-{day:02d}T08:00")
    assert of_kind(smtp, "changed") == [] and of_kind(smtp, "missed") == []


def test_in_berlin_an_evening_order_is_told_at_the_next_local_send_time(clinic, smtp):
    clinic.configure(timezone="Europe/Berlin", smtp_host=smtp.host, smtp_port=smtp.port)
    enrol(clinic, moment="2026-03-01T05:00")  # 06:00 CET
    tick(clinic, "2026-03-01T07:00")  # 08:00 CET: the baseline's reminder
    tick(clinic, "2026-03-02T07:00")  # 08:00 CET: the early-response test's
    before = len(of_kind(smtp, "lab-reminder"))
    run(clinic, "2026-03-02T17:30", "lab", "P1", "--order", "baseline", "--result", "b12=180")  # 18:30 CET
    for moment in ("2026-03-02T17:35", "2026-03-02T22:59", "2026-03-03T06:59"):  # up to 07:59 CET
        tick(clinic, moment)
        assert len(of_kind(smtp, "lab-reminder")) == before, moment
    tick(clinic, "2026-03-03T07:00")  # 08:00 CET
    assert len(of_kind(smtp, "lab-reminder")) == before + 1


def test_schedule_shows_the_patients_choice_of_loading_reminders(clinic):
    enrol(clinic)
    run(clinic, "2026-03-01T07:05", "reminders", "P1", "--loading", "first-of-week")
    patient = run(clinic, "2026-03-01T07:06", "schedule", "P1", "--json").json()["patient"]
    assert patient["loading_reminders"] == "first-of-week"


# -- the day a reminder falls due: the rule as a table (no database) ---------------------


@pytest.mark.parametrize(("kind", "due", "known_at", "day"), [
    ("dose", "2026-03-04", None, "2026-03-03"),  # long known: the day before
    ("dose", "2026-03-04", "2026-03-03T07:59", "2026-03-03"),  # known before send_time
    ("dose", "2026-03-04", "2026-03-03T08:00", "2026-03-03"),  # at send_time
    ("dose", "2026-03-04", "2026-03-03T08:01", None),  # after it: tomorrow has come by then
    ("lab", "2026-03-09", None, "2026-03-02"),  # seven days before
    ("lab", "2026-03-09", "2026-03-04T18:00", "2026-03-05"),  # ordered nearer: the next morning
    ("lab", "2026-03-02", "2026-03-02T18:00", "2026-03-03"),  # "at once" in the evening: the next morning
    ("lab", "2026-02-20", "2026-03-02T07:00", None),  # dated back too far to be told
    ("dose", "2026-03-04", "2030-01-01T00:00", "2026-03-03"),  # a stamp after the pass's now
])
def test_the_day_a_reminder_falls_due(kind: str, due: str, known_at: str | None, day: str | None) -> None:
    from datetime import UTC, date, datetime

    from scheduler.config import Settings
    from scheduler.outbox import Clock

    clock = Clock(datetime(2026, 3, 5, 12, 0, tzinfo=UTC), Settings())
    stamp = datetime.fromisoformat(known_at).replace(tzinfo=UTC) if known_at else None
    expected = date.fromisoformat(day) if day else None
    assert clock.reminder_day(kind, date.fromisoformat(due), stamp) == expected


def test_a_blood_test_that_moves_after_its_reminder_is_told_once(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    tick(clinic, "2026-03-02T08:00")  # "blood test on Monday 9 March" (7 days after the first dose)
    assert len(about(of_kind(smtp, "lab-reminder"), "Monday 9 March 2026")) == 1
    run(clinic, "2026-03-03T09:00", "give", "P1")  # the first dose comes a day late
    tick(clinic, "2026-03-03T12:00")
    assert of_kind(smtp, "changed") == []
    tick(clinic, "2026-03-04T08:00")
    tick(clinic, "2026-03-05T08:00")

    [changed] = of_kind(smtp, "changed")
    subject = changed.message["Subject"].strip()
    assert subject == "Your blood test at Riverside clinic has moved to Tuesday 10 March 2026"
    assert "Was: Monday 9 March 2026 (no longer)" in text_of(changed)


def test_nothing_is_told_about_a_date_that_has_passed(clinic_with_mail, smtp):
    clinic = clinic_with_mail
    enrol(clinic)
    run(clinic, "2026-03-02T09:00", "give", "P1")
    tick(clinic, "2026-03-03T08:00")  # "Wednesday 4 March"; she does not come
    run(clinic, "2026-03-05T09:00", "give", "P1")  # a day late: the later doses move, Wednesday has passed
    tick(clinic, "2026-03-06T08:00")
    assert about(of_kind(smtp, "changed"), "Wednesday 4 March") == []
