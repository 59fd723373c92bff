"""The open events' index and the kept bodies' index (migration 0012), on SQLite and
PostgreSQL: the migration makes them, the worklist, the digest and the purge read
them, and what those say and clear is what it was: the planned events of active
patients by due date across month and year ends; the old finished bodies, and no
other row."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, inspect, text
from sqlmodel import Session, col, select

from models import Event, Outbox, Patient
from scheduler import db, service
from scheduler.config import ClinicSettings, Settings
from scheduler.messages import Templates
from scheduler.outbox import Clock, _digest, purge_old_bodies

INDEXES = {"event": ("ix_event_planned_due", ["status", "due", "patient_id"]),
           "outbox": ("ix_outbox_created_at_body_kept", ["created_at"])}

# Days on either side of month and year ends (open days, Monday to Friday, UTC clinic).
EDGES = [date(2026, 12, 31), date(2027, 1, 1), date(2027, 2, 1), date(2027, 3, 1), date(2027, 1, 29)]
STATUSES = ("planned", "done", "cancelled", "held")


def _index(engine: Engine, table: str) -> dict[str, Any] | None:
    name = INDEXES[table][0]
    return next((i for i in inspect(engine).get_indexes(table) if i["name"] == name), None)


def test_migration_0012_makes_both_partial_indexes_and_its_downgrade_removes_them(
        empty_database_url: str) -> None:
    engine = db.make_engine(empty_database_url)
    try:
        db.upgrade(engine, "0012")
        for table, (_, columns) in INDEXES.items():
            index = _index(engine, table)
            assert index is not None and index["column_names"] == columns and not index["unique"]
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                where = dict(conn.execute(text(
                    "SELECT name, sql FROM sqlite_master WHERE name IN ('ix_event_planned_due', "
                    "'ix_outbox_created_at_body_kept')")).all())
                assert where["ix_event_planned_due"].endswith("WHERE status = 'planned'")
                assert where["ix_outbox_created_at_body_kept"].endswith("WHERE body_text <> ''")
            else:
                where = dict(conn.execute(text(
                    "SELECT indexrelid::regclass::text, pg_get_expr(indpred, indrelid) FROM pg_index "
                    "WHERE indexrelid::regclass::text IN ('ix_event_planned_due', "
                    "'ix_outbox_created_at_body_kept')")).all())
                assert where == {"ix_event_planned_due": "((status)::text = 'planned'::text)",
                                 "ix_outbox_created_at_body_kept": "(body_text <> ''::text)"}
        db.downgrade(engine, "0011")
        assert _index(engine, "event") is None and _index(engine, "outbox") is None
    finally:
        engine.dispose()


# -- the data: events on every side of month and year ends -----------------------------


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    with db.transaction(engine) as session:
        patients = [
            Patient(mrn="E1", name="Active One", email="e1@example.org"),
            Patient(mrn="E2", name="Active Two", phone="555-0102"),  # no email: to telephone
            Patient(mrn="E0", name="Active Zero", email="e0@example.org", opted_out=True),
            Patient(mrn="E9", name="Discharged", email="e9@example.org", status="discharged"),
        ]
        session.add_all(patients)
        session.flush()
        n = 0
        for patient in patients:
            for edge in EDGES:
                for shift in (-40, -8, -7, -1, 0, 1, 7, 8):
                    for status in STATUSES:
                        n += 1
                        kind = ("dose", "lab", "review")[n % 3]
                        session.add(Event(patient_id=patient.id or 0, key=f"k{n}", kind=kind,
                                          phase="maintenance", seq=n, label=f"m{n}",
                                          due=edge + timedelta(days=shift), status=status,
                                          done_on=edge if status == "done" else None, because="test"))
    yield engine
    engine.dispose()


def _events(session: Session) -> list[tuple[Event, Patient]]:
    return [(e, p) for e, p in session.exec(
        select(Event, Patient).join(Patient, col(Patient.id) == col(Event.patient_id)))]


@pytest.mark.parametrize("on", EDGES)
def test_the_worklist_at_month_and_year_ends_lists_the_open_events_of_active_patients_in_order(
        engine: Engine, on: date) -> None:
    for until in (on, on + timedelta(days=7)):
        with db.transaction(engine) as session:
            expected = sorted(((e.due, p.mrn, e.kind, e.seq, e.id) for e, p in _events(session)
                               if e.status == "planned" and p.status == "active" and e.due <= until))
            listed = [service.worklist_key(r) for r in service.worklist(session, until)]
            assert listed == expected and expected
            assert service.worklist_count(session, until) == len(expected)
            after = expected[len(expected) // 2]
            assert [service.worklist_key(r) for r in service.worklist(session, until, after=after, limit=5)] \
                == [k for k in expected if k > after][:5]
            assert service.worklist_count(session, until, after=after) == len([k for k in expected if k > after])


def _section_totals(body: str) -> dict[str, int]:
    found = dict(re.findall(r"^(Due today|Overdue|Due in the next 7 days|To telephone) \((\d+)\)$", body, re.M))
    return {name: int(n) for name, n in found.items()}


@pytest.mark.parametrize("on", EDGES)
def test_the_digest_at_month_and_year_ends_counts_what_is_due_overdue_coming_and_to_telephone(
        engine: Engine, tmp_path: Path, on: date) -> None:
    settings = Settings(database_url="sqlite://", base_dir=tmp_path, clinic=ClinicSettings(timezone="UTC"))
    clinic = settings.clinic
    with db.transaction(engine) as session:
        rows = [(e, p) for e, p in _events(session) if e.status == "planned" and p.status == "active"]
        expected = {
            "Due today": sum(e.due == on for e, _ in rows),
            "Overdue": sum(e.due < on for e, _ in rows),
            "Due in the next 7 days": sum(on < e.due <= on + timedelta(days=7) for e, _ in rows),
            "To telephone": len({p.mrn for e, p in rows
                                 if e.due <= on - timedelta(days=clinic.telephone_overdue_days)
                                 or (on <= e.due <= on + timedelta(days=clinic.telephone_ahead_days)
                                     and (p.email is None or p.opted_out))}),
        }
        assert _digest(session, Clock(datetime.combine(on, datetime.min.time(), UTC) + timedelta(hours=12),
                                      settings), Templates()) == 1
        (subject, body) = session.exec(select(Outbox.subject, Outbox.body_text).where(Outbox.kind == "digest")).one()
    assert _section_totals(body) == expected and all(expected.values())
    assert f"{expected['Due today']} due today, {expected['Overdue']} overdue" in subject


# -- the purge -------------------------------------------------------------------------


NOW = datetime(2027, 6, 1, 9, 0, tzinfo=UTC)


def test_the_purge_clears_the_old_finished_bodies_and_no_other_row(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(database_url="sqlite://", base_dir=tmp_path)
    keep = timedelta(days=settings.scheduler.outbox_keep_days)
    old, young = NOW - keep - timedelta(minutes=1), NOW - keep + timedelta(minutes=1)
    cleared: set[str] = set()
    with db.transaction(engine) as session:
        for status in ("sent", "skipped", "failed", "queued", "sending"):
            for reported in (False, True):
                for created, age in ((old, "old"), (young, "young")):
                    for body in ("kept", ""):
                        key = f"{status}:{reported}:{age}:{body or 'cleared'}"
                        session.add(Outbox(dedupe_key=key, kind="overdue", recipient="c@example.org",
                                           message_id=f"<{key}>", subject="s", body_text=body,
                                           body_html=f"<p>{body}</p>" if body else "", status=status,
                                           reported=reported, created_at=created, next_attempt_at=created))
                        finished = status in ("sent", "skipped") or (status == "failed" and reported)
                        if finished and age == "old" and body:
                            cleared.add(key)
    with db.transaction(engine) as session:
        before = {o.dedupe_key: (o.body_text, o.body_html, o.status, o.reported, o.created_at)
                  for o in session.exec(select(Outbox))}
        assert purge_old_bodies(session, settings, NOW) == len(cleared) == 5
    with db.transaction(engine) as session:
        after = {o.dedupe_key: (o.body_text, o.body_html, o.status, o.reported, o.created_at)
                 for o in session.exec(select(Outbox))}
        assert purge_old_bodies(session, settings, NOW) == 0  # nothing left: a second run clears nothing
    assert after == {key: ("", "", *row[2:]) if key in cleared else row for key, row in before.items()}


# -- the plans: each statement reads its partial index ---------------------------------


def _captured(engine: Engine, run: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if not many and re.search(r"\bevent\.due\b|outbox\.created_at <", statement):
            found.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    return found


def _plan(engine: Engine, statement: str, parameters: Any) -> str:
    """The plan of ``statement`` with every index but the partial ones out of the way
    (PostgreSQL: dropped in a transaction that is rolled back, and no sequential scan),
    so the plan names the partial index if and only if the statement can read it."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            return "\n".join(str(r[3]) for r in plan)
        others = [i["name"] for table in ("event", "outbox") for i in inspect(conn).get_indexes(table)
                  if i["name"] not in {name for name, _ in INDEXES.values()} and not i["unique"]]
        for name in others:
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
        conn.rollback()
        return "\n".join(r[0] for r in plan)


def test_the_worklist_digest_and_purge_statements_read_the_partial_indexes(engine: Engine, tmp_path: Path) -> None:
    settings = Settings(database_url="sqlite://", base_dir=tmp_path, clinic=ClinicSettings(timezone="UTC"))
    on = EDGES[0]

    def run() -> None:
        with db.transaction(engine) as session:
            list(service.worklist(session, on + timedelta(days=7)))
            list(service.worklist(session, on, after=(on, "E1", "dose", 1, 1), limit=10))
            service.worklist_count(session, on)
            _digest(session, Clock(datetime.combine(on, datetime.min.time(), UTC) + timedelta(hours=12),
                                   settings), Templates())
            session.rollback()
        with db.transaction(engine) as session:
            purge_old_bodies(session, settings, NOW)

    statements = _captured(engine, run)
    purge = [s for s in statements if "outbox.created_at <" in s[0]]
    events = [s for s in statements if s not in purge]
    assert len(purge) == 2 and len(events) >= 9  # the digest purges too
    for statement, parameters in events:
        if engine.dialect.name == "postgresql" and "CASE WHEN" in statement:
            continue  # the worklist on the open-due expression: tests/test_open_due.py, with statistics
        assert "ix_event_planned_due" in _plan(engine, statement, parameters), statement
    assert "ix_outbox_created_at_body_kept" in _plan(engine, *purge[0])  # EXPLAIN alone runs no UPDATE
