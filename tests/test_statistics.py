"""After a bulk write, PostgreSQL's statistics are refreshed at once (``ANALYZE`` of the
tables written): an import of a cohort, a pass that queued a heavy morning. A small
write, a dry run and SQLite leave them to autovacuum (SQLite: to nobody)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from conftest import Clinic
from freezegun import freeze_time
from sqlalchemy import text

from scheduler import db, outbox

pytestmark = [pytest.mark.postgres, pytest.mark.parametrize("backend", ["postgresql"])]

HEADER = "mrn,name,email,phone,protocol,start,neuro,renal_impairment,egfr,platelets,hb,maintenance_months,on_folic_acid"


@pytest.fixture
def cli(clinic: Clinic) -> Iterator[Clinic]:
    with freeze_time("2026-03-20 10:00:00"):
        yield clinic


def analysed(clinic: Clinic) -> set[str]:
    """The tables ANALYZEd by hand (not by autovacuum) since the database was made."""
    engine = db.make_engine(clinic.database_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text(
                "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL")).scalars())
    finally:
        engine.dispose()


def cohort(clinic: Clinic, n: int) -> str:
    path = clinic.path / f"cohort{n}.csv"
    rows = [f"S{i:04d},Patient {i},s{i}@patient.example,,,2026-03-02,,,,,,," for i in range(n)]
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return str(path)


def test_a_small_import_and_a_dry_run_leave_the_statistics_to_autovacuum(
        cli: Clinic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BULK_ROWS", 5)
    assert cli.cobalt("import", "patients", cohort(cli, 8), "--dry-run").code == 0
    assert cli.cobalt("import", "patients", cohort(cli, 4)).code == 0
    assert analysed(cli) == set()


def test_a_bulk_import_refreshes_the_statistics_of_the_tables_it_wrote(
        cli: Clinic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BULK_ROWS", 5)
    result = cli.cobalt("import", "patients", cohort(cli, 6))
    assert result.code == 0, result.err
    assert analysed(cli) == {"patient", "regimen", "event"}


def test_a_pass_that_queues_a_heavy_morning_refreshes_the_outbox_statistics(
        cli: Clinic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db, "BULK_ROWS", 5)
    assert cli.cobalt("import", "patients", cohort(cli, 6)).code == 0
    engine = db.make_engine(cli.database_url)
    try:
        monkeypatch.setattr(db, "BULK_ROWS", 10**9)
        assert outbox.queue_due_messages(engine, cli.settings(), datetime(2026, 3, 20, 10, tzinfo=UTC)) > 0
        assert "outbox" not in analysed(cli)
        monkeypatch.setattr(db, "BULK_ROWS", 1)
        assert outbox.queue_due_messages(engine, cli.settings(), datetime(2026, 3, 21, 10, tzinfo=UTC)) >= 1
        assert "outbox" in analysed(cli)
    finally:
        engine.dispose()
