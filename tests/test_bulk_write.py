"""The set-based planning path's parts: the remembered date arithmetic, the e-mail
check's fast path, the spread of ``planned_through`` and ``db.insert_rows``."""

from __future__ import annotations

import zlib
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from dateutil.relativedelta import relativedelta
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import insert, select

from models import Event, Patient
from models.outbox import Outbox
from scheduler import db
from scheduler.clinic_calendar import ClinicCalendar, load_holidays
from scheduler.db import insert_rows
from scheduler.planning import (
    PLAN_AHEAD_MONTHS,
    ROLL_FORWARD_BELOW_MONTHS,
    SPREAD_DAYS,
    add_months,
    add_months_plain,
    horizon,
    spread_offset,
)
from scheduler.store import PatientRecord, PatientState, plan_record
from scheduler.validation import email_problem


def test_remembered_add_months_equals_the_plain_one_and_relativedelta() -> None:
    day = date(2023, 1, 1)
    while day < date(2025, 1, 1):  # two years, a leap day, every month end
        for months in (-13, -1, 0, 1, 2, 3, 12, 13, 24, 120):
            assert add_months(day, months) == add_months_plain(day, months) == day + relativedelta(months=months)
        day += timedelta(days=1)


def test_remembered_next_open_equals_a_fresh_calendars() -> None:
    england = ClinicCalendar(holidays=load_holidays("GB-ENG"))
    day = date(2025, 12, 1)
    for _ in range(3):  # asked again: the remembered answers
        for n in range(60):
            fresh = ClinicCalendar(holidays=load_holidays("GB-ENG"))
            assert england.next_open(day + timedelta(days=n)) == fresh._search_open(day + timedelta(days=n))


def _library(text: str) -> tuple[str, str | None]:
    try:
        checked = validate_email(text, check_deliverability=False, allow_quoted_local=False,
                                 allow_display_name=False, allow_domain_literal=False)
    except EmailNotValidError as exc:
        return text, f"is not an email address: {exc}"
    return str(checked.normalized), None


@pytest.mark.parametrize("address", [
    "ann@example.org", "Ann.Smith@Example.ORG", "a.b+c@sub.example.co.uk", "x@localhost", "x@test",
    "a..b@example.org", ".a@example.org", "a.@example.org", "a@b", "a@-b.com", "a@b.123",
    "a" * 64 + "@example.org", "a" * 65 + "@example.org", "a@" + "b" * 250 + ".com",
    "x" * 60 + "@" + "b" * 60 + "." + "c" * 60 + "." + "d" * 60 + ".com", "ok@bücher.de",
    "ok@xn--bcher-kva.de", "ü@example.org", "a@example..org", "a@example.org.", "a@EXAMPLE.invalid",
    "a@b.c", "a{b}@example.org", "a@x.onion", "a@@b.com", "i1@patient.example", "a@b_c.com", "a b@c.com",
])
def test_the_e_mail_fast_path_answers_as_email_validator_does(address: str) -> None:
    assert email_problem(address) == _library(address)


def _state(mrn: str, planned_through: date | None = None) -> PatientRecord:
    from scheduler.store import PatientRecord as Record

    class R:
        number, protocol, start, maintenance_months = 1, "hydroxo", date(2026, 3, 2), 3

    return Record(PatientState(1, mrn, "active", False, False, False, False, None, planned_through),
                  [R()])  # type: ignore[list-item]


def test_planned_through_is_kept_short_of_the_reach_by_a_fixed_offset_per_patient() -> None:
    today = date(2026, 3, 2)
    calendar = ClinicCalendar()
    assert {spread_offset(f"M{n}") for n in range(1000)} == set(range(SPREAD_DAYS))
    assert spread_offset("M1") == zlib.crc32(b"M1") % SPREAD_DAYS  # deterministic, from the MRN
    for mrn in ("M1", "M2", "M3"):
        made = plan_record(_state(mrn), calendar, today)
        assert made.planned_through == horizon(today) - timedelta(days=spread_offset(mrn))
        # still more than the roll-forward's 12 months ahead: never replanned at once
        assert made.planned_through >= add_months(today, ROLL_FORWARD_BELOW_MONTHS) + timedelta(days=1)
        # the next plan reaches where this one did, and plans the same
        again = plan_record(_state(mrn, made.planned_through), calendar, today)
        assert again.events == made.events and again.planned_through == made.planned_through
        later = today + timedelta(days=200)  # time travel: a pass planned further ahead
        ahead = plan_record(_state(mrn), calendar, later)
        back = plan_record(_state(mrn, ahead.planned_through), calendar, today)
        assert max(e.due for e in back.events) == max(e.due for e in ahead.events)
        assert back.seen == later


def test_plans_made_on_one_day_fall_due_for_roll_forward_as_a_steady_daily_share() -> None:
    made_on = date(2026, 3, 2)
    calendar = ClinicCalendar()
    through = {f"I{n:07d}": plan_record(_state(f"I{n:07d}"), calendar, made_on).planned_through
               for n in range(2800)}
    # The pass replans a patient on the first day T with planned_through < T + 12 months.
    first_roll: Counter[date] = Counter()
    for day in through.values():
        assert day is not None
        t = made_on
        while not day < add_months(t, ROLL_FORWARD_BELOW_MONTHS):
            t += timedelta(days=1)
        first_roll[t] += 1
    assert len(first_roll) == SPREAD_DAYS  # 28 days, not one
    assert max(first_roll.values()) < 2 * 2800 / SPREAD_DAYS
    assert min(first_roll) > made_on  # none at once
    assert max(first_roll) <= add_months(made_on, PLAN_AHEAD_MONTHS - ROLL_FORWARD_BELOW_MONTHS) + timedelta(days=1)


@pytest.mark.parametrize("converted", [False, True], ids=["as-is", "converted"])
@pytest.mark.parametrize("copy_from", [1, 1_000_000], ids=["copy", "executemany"])
def test_insert_rows_writes_what_a_core_insert_writes(database_url: str, copy_from: int, converted: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "COPY_FROM_ROWS", copy_from)  # PostgreSQL: COPY, or executemany
    engine = db.make_engine(database_url)
    now = datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=UTC)
    p, e = Patient.__table__, Event.__table__  # type: ignore[attr-defined]
    columns = ("patient_id", "key", "updated_at", "due_set_at", "kind", "phase", "seq", "label", "due",
               "status", "done_on", "tests", "because")
    try:
        with engine.begin() as conn:
            ids = []
            for mrn in ("A", "B"):
                ids.append(conn.execute(insert(p).values(
                    mrn=mrn, name=mrn, neuro=False, renal_impairment=False, on_folic_acid=False, pernicious=False,
                    opted_out=False, status="active", created_at=now, updated_at=now).returning(p.c.id)).scalar_one())
            rows = [(pid, f"r1:dose:loading:{n}", now, None if n == 2 else now, "dose", "loading", n, "loading",
                     date(2026, 3, n), "done" if n == 1 else "planned", date(2026, 3, 1) if n == 1 else None,
                     "", "because")
                    for pid in ids for n in (1, 2, 3)]
            if converted:  # values made ready once (a plan shared by patients), then written as they are
                convert = db.row_converter(conn.dialect, e, columns)
                assert insert_rows(conn, e, columns, [convert(r) for r in rows], converted=True) == 6
            else:
                assert insert_rows(conn, e, columns, rows) == 6
            conn.execute(insert(e), [dict(zip(columns, (r[0], "core" + r[1][2:], *r[2:]), strict=True))
                                     for r in rows])
            found = conn.execute(select(e).order_by(e.c.patient_id, e.c.seq, e.c.key)).all()
            # as stored, not as read back: the same text for the timestamps and dates
            names = ", ".join(c for c in columns if c != "key")
            stored = conn.exec_driver_sql(f'SELECT "key", {names} FROM event ORDER BY patient_id, seq').all()
        assert [tuple(r[1:]) for r in stored if r[0].startswith("r1")] == \
               [tuple(r[1:]) for r in stored if r[0].startswith("core")]
        mine = [r for r in found if r.key.startswith("r1")]
        core = [r for r in found if r.key.startswith("core")]
        assert len(mine) == len(core) == 6
        for a, b in zip(mine, core, strict=True):
            assert a._mapping.keys() == b._mapping.keys()
            assert {k: v for k, v in a._mapping.items() if k not in ("id", "key")} == \
                   {k: v for k, v in b._mapping.items() if k not in ("id", "key")}
        assert mine[0].updated_at == now and mine[1].due_set_at is None and mine[0].due == date(2026, 3, 1)
    finally:
        engine.dispose()


@pytest.mark.parametrize("copy_from", [1, 1_000_000], ids=["copy-sized", "executemany-sized"])
def test_insert_rows_leaves_out_rows_whose_unique_key_is_taken_and_counts_the_rest(
        database_url: str, copy_from: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "COPY_FROM_ROWS", copy_from)  # a big batch still skips: never by COPY
    engine = db.make_engine(database_url)
    now = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
    outbox = Outbox.__table__  # type: ignore[attr-defined]
    columns = ("dedupe_key", "kind", "recipient", "message_id", "subject", "body_text", "body_html",
               "status", "attempts", "next_attempt_at", "reported", "created_at")

    def row(key: str, subject: str) -> tuple[object, ...]:
        return (key, "digest", "clinic@example.org", f"<{key}@example.org>", subject, "text", "html",
                "queued", 0, now, False, now)

    try:
        with engine.begin() as conn:
            assert insert_rows(conn, outbox, columns, [row("a", "first"), row("b", "first")],
                               skip_conflicts_on=("dedupe_key",)) == 2
            assert insert_rows(conn, outbox, columns, [row("b", "again"), row("c", "first"), row("a", "again")],
                               skip_conflicts_on=("dedupe_key",)) == 1
            found = conn.execute(select(outbox.c.dedupe_key, outbox.c.subject).order_by(outbox.c.dedupe_key)).all()
        assert [tuple(r) for r in found] == [("a", "first"), ("b", "first"), ("c", "first")]
    finally:
        engine.dispose()
