"""The told marks: a pass rereads nothing it has decided, and loses nothing by it.

Real database (SQLite and PostgreSQL) with the triggers of migration 0010, the
real pass, a real SMTP server (aiosmtpd), the clock frozen with freezegun.
2026-03-02 is a Monday; hydroxo loading doses fall on Mon 2, Wed 4, Fri 6,
Mon 9, Wed 11 and Fri 13 March.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import text

from scheduler import outbox as outbox_module
from scheduler import told
from scheduler.db import make_engine
from scheduler.passes import run_pass

START = "2026-03-02"


@pytest.mark.parametrize(("bit", "values"), [
    (told.REMINDED, (0, 2, 4, 6)),
    (told.MISSED, (0, 1, 4, 5)),
    (told.OVERDUE, (0, 1, 2, 3)),
])
def test_the_values_still_to_decide_are_those_without_the_kinds_bit(bit: int, values: tuple[int, ...]) -> None:
    assert told.clear_of(bit) == values


@pytest.mark.parametrize("bit", [0, 3, 8, told.ALL])
def test_only_one_kinds_bit_is_a_mark(bit: int) -> None:
    with pytest.raises(ValueError):
        told.clear_of(bit)


@pytest.fixture
def mailing(clinic, smtp):
    clinic.configure(smtp_host=smtp.host, smtp_port=smtp.port)
    return clinic


def run(clinic, moment: str, *args: str) -> Any:
    with freeze_time(moment.replace("T", " ")):
        result = clinic.cobalt(*args)
    assert result.code == 0, f"cobalt {' '.join(args)}: {result.err}"
    return result


def tick(clinic, moment: str) -> dict[str, Any]:
    return run(clinic, moment, "tick", "--json").json()


def enrol(clinic, mrn: str, email: str | None) -> None:
    args = ["enroll", "--mrn", mrn, "--name", "Ann Example", "--start", START]
    run(clinic, "2026-03-01T07:00", *args, *(["--email", email] if email else []))


def sent(smtp, address: str) -> list[tuple[str, str]]:
    return [(m.message["X-Cobalt-Kind"], " ".join(m.message["Subject"].split()))
            for m in smtp.messages if m.rcpt_tos == [address]]


def rows(clinic, sql: str, **params: Any) -> list[Any]:
    engine = make_engine(clinic.database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()


def execute(clinic, sql: str, **params: Any) -> None:
    engine = make_engine(clinic.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(sql), params)
    finally:
        engine.dispose()


def dose_on(clinic, mrn: str, day: str) -> int:
    events = run(clinic, "2026-03-01T07:00", "schedule", mrn, "--json").json()["events"]
    [event] = [e for e in events if e["kind"] == "dose" and e["due"] == day and e["status"] == "planned"]
    return int(event["id"])


def test_a_second_pass_claims_nothing_and_sends_nothing_twice(mailing, smtp, monkeypatch) -> None:
    for n in range(3):
        enrol(mailing, f"P{n}", f"p{n}@patient.example")
        run(mailing, "2026-03-02T09:00", "give", f"P{n}")
    enrol(mailing, "P9", None)  # cannot be reached: decided once, not reread
    run(mailing, "2026-03-02T09:00", "give", "P9")
    claimed: list[tuple[int, list[int]]] = []
    real_claim = outbox_module.claim

    def counting(session: Any, bit: int, *args: Any) -> list[int]:
        ids = real_claim(session, bit, *args)
        claimed.append((bit, ids))
        return ids

    monkeypatch.setattr(outbox_module, "claim", counting)
    settings = mailing.settings()
    engine = make_engine(settings.database_url)
    try:
        now = datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
        first = run_pass(engine, settings, now)
        assert first.sent > 3
        for _ in range(3):
            claimed.clear()
            again = run_pass(engine, settings, now)
            assert (again.queued, again.sent) == (0, 0)
            assert [ids for _, ids in claimed] == [[]] * len(claimed)
    finally:
        engine.dispose()
    assert [len(sent(smtp, f"p{n}@patient.example")) for n in range(3)] == [1, 1, 1]
    wednesday = rows(mailing, "SELECT told FROM event WHERE kind = 'dose' AND due = :d", d=date(2026, 3, 4))
    assert [r[0] & told.REMINDED for r in wednesday] == [told.REMINDED] * 4


def test_a_patient_given_an_email_later_the_same_day_is_still_reminded(mailing, smtp) -> None:
    enrol(mailing, "P1", None)
    run(mailing, "2026-03-02T09:00", "give", "P1")
    tick(mailing, "2026-03-03T08:00")
    tick(mailing, "2026-03-03T09:00")
    run(mailing, "2026-03-03T10:00", "edit", "P1", "--email", "ann@patient.example")
    tick(mailing, "2026-03-03T10:05")
    tick(mailing, "2026-03-03T12:00")
    assert sent(smtp, "ann@patient.example") == [
        ("dose-reminder", "Reminder: your appointment at Riverside clinic on Wednesday 4 March 2026")]


def test_a_moved_dose_after_its_reminder_is_told_of_the_move_and_reminded_of_its_new_day(mailing, smtp) -> None:
    enrol(mailing, "P1", "ann@patient.example")
    run(mailing, "2026-03-02T09:00", "give", "P1")
    wednesday = dose_on(mailing, "P1", "2026-03-04")
    tick(mailing, "2026-03-03T08:00")  # "see you on Wednesday 4 March"
    tick(mailing, "2026-03-03T08:30")
    run(mailing, "2026-03-03T07:00", "move", "P1", str(wednesday), "--to", "2026-03-05")
    tick(mailing, "2026-03-03T09:00")
    tick(mailing, "2026-03-03T10:00")
    tick(mailing, "2026-03-04T08:00")  # Thursday's reminder
    tick(mailing, "2026-03-04T09:00")
    kinds = [kind for kind, _ in sent(smtp, "ann@patient.example")]
    assert kinds == ["dose-reminder", "changed", "dose-reminder"]
    assert "Thursday 5 March 2026" in sent(smtp, "ann@patient.example")[2][1]


def test_moving_or_cancelling_an_event_clears_its_marks_and_lists_it(clinic) -> None:
    enrol(clinic, "P1", "ann@patient.example")
    wednesday = dose_on(clinic, "P1", "2026-03-04")
    friday = dose_on(clinic, "P1", "2026-03-06")
    execute(clinic, "UPDATE event SET told = 7")
    execute(clinic, "DELETE FROM event_change")
    run(clinic, "2026-03-02T07:00", "move", "P1", str(wednesday), "--to", "2026-03-05")
    marks = dict(rows(clinic, "SELECT id, told FROM event WHERE patient_id = 1 AND kind = 'dose'"))
    assert marks[wednesday] == 0
    assert marks[friday] == 0  # another loading dose: which is first of its week may change
    assert wednesday in {r[0] for r in rows(clinic, "SELECT event_id FROM event_change")}
    execute(clinic, "UPDATE event SET told = 7")
    run(clinic, "2026-03-02T08:00", "discharge", "P1", "--reason", "moved away")
    assert {r[0] for r in rows(clinic, "SELECT told FROM event WHERE status = 'cancelled'")} == {0}


@pytest.mark.parametrize("change", [
    ("opt-out", "P1"), ("edit", "P1", "--email", "new@patient.example"), ("edit", "P1", "--no-email"),
])
def test_a_change_of_how_a_patient_is_reached_clears_all_their_marks(clinic, change: tuple[str, ...]) -> None:
    enrol(clinic, "P1", "ann@patient.example")
    enrol(clinic, "P2", "bob@patient.example")
    execute(clinic, "UPDATE event SET told = 7")
    execute(clinic, "DELETE FROM event_change")
    run(clinic, "2026-03-02T07:00", *change)
    marks = rows(clinic, "SELECT patient_id, told, status FROM event WHERE status = 'planned'")
    assert {told_ for pid, told_, _ in marks if pid == 1} == {0}
    assert {told_ for pid, told_, _ in marks if pid == 2} == {7}
    listed = {r[0] for r in rows(clinic, "SELECT event_id FROM event_change")}
    assert listed == {r[0] for r in rows(clinic, "SELECT id FROM event WHERE patient_id = 1 AND status <> 'done'")}


def _reread_everything(clinic, patient_id: int) -> None:
    """What every pass did before the marks: forget what was decided about one patient."""
    execute(clinic, "UPDATE event SET told = 0 WHERE patient_id = :p", p=patient_id)
    execute(clinic, "INSERT INTO event_change (event_id) SELECT id FROM ("
            "SELECT id FROM event WHERE patient_id = :p UNION "
            "SELECT event_id FROM outbox WHERE patient_id = :p AND event_id IS NOT NULL) AS ids "
            "WHERE id NOT IN (SELECT event_id FROM event_change)", p=patient_id)


def test_marks_change_no_message_over_three_weeks_of_moves_voids_and_address_changes(mailing, smtp) -> None:
    """Two patients live the same three weeks; before each pass, the second one's marks are
    forgotten (every pass rereads all, as before the marks). Both hear exactly the same."""
    steps: dict[str, list[tuple[str, ...]]] = {
        "2026-03-02T09:00": [("give", "{p}")],
        "2026-03-03T10:00": [("edit", "{p}", "--no-email")],
        "2026-03-03T11:00": [("edit", "{p}", "--email", "{mail}")],
        "2026-03-04T09:00": [("give", "{p}")],
        "2026-03-05T09:30": [("opt-out", "{p}")],
        "2026-03-05T09:40": [("opt-in", "{p}")],
        "2026-03-05T18:00": [("reminders", "{p}", "--loading", "first-of-week")],
        "2026-03-06T19:00": [("give", "{p}", "--on", "2026-03-06")],
        "2026-03-08T10:00": [("move", "{p}", "{next_dose}", "--to", "2026-03-10")],
        "2026-03-09T10:00": [("give", "{p}")],
        "2026-03-10T09:00": [("void", "{p}", "{dose_9}", "--reason", "entered in error")],
        "2026-03-12T09:00": [("give", "{p}")],
        "2026-03-16T09:00": [("give", "{p}")],
        "2026-03-19T09:00": [("discharge", "{p}", "--reason", "moved away")],
    }
    people = {"A": "a@patient.example", "B": "b@patient.example"}
    for mrn, mail in people.items():
        enrol(mailing, mrn, mail)
    doses_on_9: dict[str, int] = {}
    moments = sorted({*steps, *(f"2026-03-{d:02d}T{t}" for d in range(2, 24)
                                for t in ("07:59", "08:00", "08:05", "12:00", "18:30"))})
    for moment in moments:
        for step in steps.get(moment, []):
            for mrn, mail in people.items():
                events = run(mailing, moment, "schedule", mrn, "--json").json()["events"]
                if "{dose_9}" in step:
                    doses_on_9[mrn] = next(e["id"] for e in events
                                           if e["kind"] == "dose" and e["done_on"] == "2026-03-09")
                upcoming = [e for e in events if e["kind"] == "dose" and e["status"] == "planned"
                            and e["due"] > moment[:10]]
                args = [a.format(p=mrn, mail=mail, dose_9=doses_on_9.get(mrn, ""),
                                 next_dose=upcoming[0]["id"] if upcoming else "") for a in step]
                run(mailing, moment, *args)
        if moment.endswith(("07:59", "08:00", "08:05", "12:00", "18:30")):
            _reread_everything(mailing, 2)
            tick(mailing, moment)
    heard_a = sent(smtp, people["A"])
    heard_b = sent(smtp, people["B"])
    assert heard_a == heard_b
    kinds = {kind for kind, _ in heard_a}
    assert {"dose-reminder", "changed"} <= kinds, heard_a
    assert len(heard_a) == len(set(heard_a))  # nothing twice



def test_the_triggers_on_a_new_sqlite_database_read_one_patients_events_not_everyones(tmp_path) -> None:
    # A clinic that never ran ANALYZE: the planner has no statistics to choose with.
    from scheduler import db

    engine = make_engine(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            bodies = conn.execute(text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'event'")).all()
            plans = {}
            for name, sql in bodies:
                for statement in sql.split("BEGIN", 1)[1].split(";"):
                    if "UPDATE event" not in statement or "patient_id" not in statement:
                        continue
                    literal = (statement.replace("NEW.patient_id", "1").replace("OLD.patient_id", "1")
                               .replace("OLD.kind", "'dose'").replace("OLD.phase", "'loading'"))
                    plans[name] = " ".join(str(row[-1]) for row in
                                           conn.exec_driver_sql("EXPLAIN QUERY PLAN " + literal.strip()))
    finally:
        engine.dispose()
    assert set(plans) == {"event_told_cleared", "event_gone"}
    for name, plan in plans.items():
        assert "(patient_id=?)" in plan, (name, plan)
