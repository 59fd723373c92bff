"""The Alembic migrations, on SQLite and on PostgreSQL: they build the schema the
models describe, and they go down as cleanly as they go up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

import models
from models import metadata
from scheduler import db

TABLES = set(metadata.tables)


@pytest.fixture
def empty_engine(empty_database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(empty_database_url)
    yield engine
    engine.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def revisions_oldest_first() -> list[str]:
    script = ScriptDirectory(str(db.MIGRATIONS_DIR))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def test_an_empty_database_upgrades_to_head_downgrades_to_base_and_upgrades_again(
    empty_engine: Engine,
) -> None:
    assert db.current_revision(empty_engine) is None and tables(empty_engine) == set()
    db.upgrade(empty_engine)
    assert db.current_revision(empty_engine) == db.head_revision()
    assert tables(empty_engine) == TABLES
    db.downgrade(empty_engine, "base")
    assert db.current_revision(empty_engine) is None
    assert tables(empty_engine) == set()
    db.upgrade(empty_engine)
    assert db.current_revision(empty_engine) == db.head_revision()
    assert tables(empty_engine) == TABLES


def test_each_migration_goes_up_and_down_one_step_at_a_time(empty_engine: Engine) -> None:
    revisions = revisions_oldest_first()
    assert revisions[0] == "0001" and revisions[-1] == db.head_revision()
    seen: list[set[str]] = [set()]
    for revision in revisions:
        db.upgrade(empty_engine, revision)
        assert db.current_revision(empty_engine) == revision
        seen.append(tables(empty_engine))
    assert seen[-1] == TABLES
    for revision, before in zip(reversed(revisions), reversed(seen[:-1]), strict=True):
        assert db.current_revision(empty_engine) == revision
        db.downgrade(empty_engine, "-1")
        assert tables(empty_engine) == before
    assert db.current_revision(empty_engine) is None


def test_autogenerate_finds_no_difference_between_the_models_and_the_migrations(database_url: str) -> None:
    engine = db.make_engine(database_url)
    try:
        assert db.current_revision(engine) == db.head_revision()
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True,
                      "include_object": models.compared},
            )
            differences = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_a_fresh_database_is_migrated_on_first_use_and_one_behind_is_refused(empty_engine: Engine) -> None:
    db.ensure_schema(empty_engine)
    assert db.current_revision(empty_engine) == db.head_revision()
    db.downgrade(empty_engine, "-1")
    with pytest.raises(db.SchemaOutOfDate, match="cobalt db upgrade"):
        db.ensure_schema(empty_engine)
    db.upgrade(empty_engine)
    db.ensure_schema(empty_engine)


def test_the_head_read_from_the_migration_files_is_alembics_head() -> None:
    script = ScriptDirectory(str(db.MIGRATIONS_DIR))
    assert db.head_revision() == script.get_current_head()
    assert set(db.known_revisions()) == {rev.revision for rev in script.walk_revisions()}
