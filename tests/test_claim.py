"""A sender's claim (migration 0015): the rows of a dead sender's lease first, then the
queued rows due, oldest first, a batch at a time; read through
``ix_outbox_status_next_attempt_at_id``, so a claim costs a batch of rows, not the
whole queue, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, text

from models import Outbox
from scheduler import db
from scheduler.config import ClinicSettings, SchedulerSettings, Settings, SmtpSettings
from scheduler.outbox import _claim, deliver

NOW = datetime(2027, 1, 4, 9, tzinfo=UTC)
BATCH = 50


def _row(n: int, status: str, **values: Any) -> dict[str, Any]:
    return {"dedupe_key": f"k{n}", "kind": "dose_reminder", "recipient": f"p{n}@patient.example",
            "message_id": f"<m{n}@cobalt>", "subject": "s", "body_text": "", "body_html": "", "status": status,
            "next_attempt_at": NOW - timedelta(hours=1), "created_at": NOW - timedelta(days=1),
            "claimed_until": None, "claimed_by": None, **values}


@pytest.fixture
def outbox(database_url: str) -> Iterator[tuple[Engine, dict[str, list[int]]]]:
    """10,000 messages sent long ago; then, interleaved by id, 2,000 queued and ready,
    300 queued for a retry later, 20 sending under a lease that has run out and 20
    sending under a live lease; last, one queued row due before all the others.
    ``kinds["ready"]`` is in the order they are due."""
    engine = db.make_engine(database_url)
    rows = [_row(n, "sent") for n in range(10_000)]
    kinds: dict[str, list[int]] = {"ready": [], "later": [], "expired": [], "live": []}
    for n in range(10_000, 12_340):
        i = n - 10_000
        if i % 117 == 0 and len(kinds["expired"]) < 20:
            kind, row = "expired", _row(n, "sending", claimed_until=NOW - timedelta(seconds=1), claimed_by="dead")
        elif i % 117 == 1 and len(kinds["live"]) < 20:
            kind, row = "live", _row(n, "sending", claimed_until=NOW + timedelta(seconds=30), claimed_by="alive")
        elif i % 8 == 7 and len(kinds["later"]) < 300:
            kind, row = "later", _row(n, "queued", next_attempt_at=NOW + timedelta(minutes=5))
        else:
            kind, row = "ready", _row(n, "queued")
        kinds[kind].append(n + 1)  # ids from 1, in insert order
        rows.append(row)
    # Queued last, due before every other: a retry whose back-off ended first goes first.
    rows.append(_row(12_340, "queued", next_attempt_at=NOW - timedelta(hours=2)))
    kinds["ready"].insert(0, 12_341)
    with engine.begin() as conn:
        conn.execute(insert(Outbox.__table__), rows)  # type: ignore[attr-defined]
        conn.execute(text("ANALYZE"))
    yield engine, kinds
    engine.dispose()


def _settings(tmp_path: Path) -> Settings:
    return Settings(database_url="sqlite://", base_dir=tmp_path, clinic=ClinicSettings(timezone="UTC"),
                    scheduler=SchedulerSettings(batch_size=BATCH))


def test_a_claim_takes_the_run_out_leases_then_the_oldest_ready_rows_a_batch_at_a_time(
        outbox: tuple[Engine, dict[str, list[int]]], tmp_path: Path) -> None:
    engine, kinds = outbox
    first = [r.id for r in _claim(engine, _settings(tmp_path), NOW, "one", NOW + timedelta(seconds=20))]
    assert first == sorted(kinds["expired"] + kinds["ready"][:BATCH - 20])
    assert 12_341 in first  # due first, though queued last
    second = [r.id for r in _claim(engine, _settings(tmp_path), NOW, "two", NOW + timedelta(seconds=20))]
    assert second == kinds["ready"][BATCH - 20:2 * BATCH - 20]
    taken: list[int] = first + second
    for n in range(100):  # a token of its own for each claim, as each sender has
        claimed = _claim(engine, _settings(tmp_path), NOW, f"rest{n}", NOW + timedelta(seconds=20))
        if not claimed:
            break
        taken += [r.id for r in claimed if r.id is not None]
    assert sorted(taken) == sorted(kinds["expired"] + kinds["ready"])  # never a live lease, nor a retry not due


def _claim_plans(engine: Engine, tmp_path: Path) -> list[str]:
    seen: list[tuple[str, Any]] = []

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if re.match(r"SELECT outbox\.id\s+FROM outbox", statement):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        _claim(engine, _settings(tmp_path), NOW, "one", NOW + timedelta(seconds=20))
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    plans = []
    with engine.connect() as conn:
        for statement, parameters in seen:
            if engine.dialect.name == "sqlite":
                plans.append("\n".join(str(r[3]) for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + statement, parameters)))
            else:
                plans.append("\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters)))
    return plans


def test_a_claim_reads_the_queued_rows_in_order_through_their_index_and_sorts_none(
        outbox: tuple[Engine, dict[str, list[int]]], tmp_path: Path) -> None:
    engine, _ = outbox
    plans = _claim_plans(engine, tmp_path)
    assert len(plans) == 2  # the run-out leases, then the queued rows
    assert all("ix_outbox_status_next_attempt_at_id" in plan for plan in plans), plans
    # Thousands queued: read in the index's order up to the batch, never all of them
    # sorted (a few dozen run-out leases may be: PostgreSQL's choice for so few rows).
    queued = plans[1]
    assert "TEMP B-TREE" not in queued and not re.search(r"^\s*(->\s*)?Sort\b", queued, re.M), queued


def test_a_claim_that_does_not_take_over_leaves_the_run_out_leases_alone(
        outbox: tuple[Engine, dict[str, list[int]]], tmp_path: Path) -> None:
    engine, kinds = outbox
    claimed = _claim(engine, _settings(tmp_path), NOW, "one", NOW + timedelta(seconds=20), take_over=False)
    assert [r.id for r in claimed] == sorted(kinds["ready"][:BATCH])


def test_a_sender_takes_over_every_run_out_lease_even_beyond_a_batch_with_nothing_queued(
        database_url: str, tmp_path: Path) -> None:
    engine = db.make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Outbox.__table__), [  # type: ignore[attr-defined]
                _row(n, "sending", claimed_until=NOW - timedelta(seconds=1), claimed_by="dead")
                for n in range(3 * BATCH + 7)])
        settings = Settings(database_url="sqlite://", base_dir=tmp_path, clinic=ClinicSettings(timezone="UTC"),
                            scheduler=SchedulerSettings(batch_size=BATCH), smtp=SmtpSettings(outbox_dir="outbox"))
        report = deliver(engine, settings, NOW)
        assert report.sent == 3 * BATCH + 7
        with engine.connect() as conn:
            assert conn.execute(text("SELECT DISTINCT status FROM outbox")).scalars().all() == ["sent"]
        assert len(list((tmp_path / "outbox").glob("*.eml"))) == 3 * BATCH + 7
    finally:
        engine.dispose()
