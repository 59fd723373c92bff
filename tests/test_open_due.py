"""The open events' due date as one expression (migration 0014, PostgreSQL only): the
migration makes its index, and in a clinic whose history far outnumbers its open
events the worklist is read through that index, not by scanning every event."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine, event, insert, select, text
from sqlmodel import col

from models import Event, Patient
from scheduler import db, service

TODAY = date(2027, 3, 1)
NOW = datetime(2027, 3, 1, 8, tzinfo=UTC)


def _open_due_index(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return conn.execute(text(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_event_open_due'")).scalar_one_or_none()
        return conn.execute(text(
            "SELECT pg_get_indexdef(to_regclass('ix_event_open_due'))")).scalar_one()


def test_migration_0014_indexes_the_open_due_expression_on_postgresql_alone_and_its_downgrade_drops_it(
        empty_database_url: str) -> None:
    engine = db.make_engine(empty_database_url)
    try:
        db.upgrade(engine, "0014")
        made = _open_due_index(engine)
        if engine.dialect.name == "sqlite":
            assert made is None
        else:
            assert made is not None and " ".join(made.replace("(\n", "(").split()).endswith(
                "((CASE WHEN ((status)::text = 'planned'::text) THEN due ELSE NULL::date END))")
        db.downgrade(engine, "0013")
        assert _open_due_index(engine) is None
    finally:
        engine.dispose()


@pytest.fixture
def history(database_url: str) -> Iterator[Engine]:
    """2,000 patients with 30 events each given in the past and 2 open ones (one due by
    TODAY, one a month later); a few of the past ones cancelled or held; analysed."""
    engine = db.make_engine(database_url)
    with db.transaction(engine) as session:
        session.add_all(Patient(mrn=f"H{n:04d}", name=f"Patient {n}") for n in range(2000))
    first = TODAY - timedelta(days=31 * 30)
    with engine.begin() as conn:
        ids = conn.execute(select(col(Patient.id))).scalars().all()
        conn.execute(insert(Event.__table__), [
            {"patient_id": pid, "key": f"k{n}", "kind": "dose", "phase": "maintenance", "seq": n, "label": "m",
             "due": first + timedelta(days=n * 30 - pid % 7),
             "status": "planned" if n > 30 else "cancelled" if n % 10 == 0 else "done",
             "done_on": None if n > 30 else first + timedelta(days=n * 30), "because": "test", "updated_at": NOW}
            for pid in ids for n in range(1, 33)])
        conn.execute(text("ANALYZE"))
    yield engine
    engine.dispose()


def _worklist_statement(engine: Engine) -> tuple[str, object, list[object]]:
    seen: list[tuple[str, object]] = []

    def listen(conn: object, cursor: object, statement: str, parameters: object, context: object,
               many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        with db.transaction(engine) as session:
            rows = list(service.worklist(session, TODAY))
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    (statement, parameters), = [s for s in seen if "FROM event JOIN patient" in s[0]]
    return statement, parameters, rows


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
def test_on_postgresql_a_long_history_leaves_the_worklist_to_the_open_due_index(history: Engine) -> None:
    statement, parameters, rows = _worklist_statement(history)
    assert len(rows) == 2000  # each patient's first open dose; the second is a month on
    with history.connect() as conn:
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))  # type: ignore[arg-type]
    assert "ix_event_open_due" in plan and "Seq Scan on event" not in plan, plan


def test_the_worklist_over_a_long_history_lists_each_patients_first_open_dose_on_both_databases(
        history: Engine) -> None:
    statement, _, rows = _worklist_statement(history)
    assert sorted((r.mrn, r.seq, r.status) for r in rows) == [  # type: ignore[attr-defined]
        (f"H{n:04d}", 31, "planned") for n in range(2000)]
    assert ("CASE WHEN" in statement) == (history.dialect.name == "postgresql")  # the expression, or the WHERE
