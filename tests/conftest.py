"""Shared fixtures: a real database (SQLite, and PostgreSQL when reachable), a
working directory with its own cobalt.toml, and the ``cobalt`` command line.

Every test that takes ``database_url`` runs twice: on SQLite and on
PostgreSQL. Without a PostgreSQL server the second run is skipped with a
message, except under ``CI=true``, where a missing server fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text

from models import metadata
from scheduler import db

PG_SERVER = os.environ.get("COBALT_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432")
COBALT = str(Path(sys.executable).with_name("cobalt"))


def _pg_admin() -> Any:
    return create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    engine = _pg_admin()
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        message = f"PostgreSQL is not reachable at {PG_SERVER} ({type(exc).__name__})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}: under CI=true the PostgreSQL half must run")
        pytest.skip(f"{message}: start it (or set COBALT_TEST_POSTGRES) to run the PostgreSQL half")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = db.make_engine(f"sqlite:///{path}")
    db.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_template(postgres_server: Any) -> Iterator[str]:
    name = f"cobalt_template_{os.getpid()}"
    with postgres_server.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = db.make_engine(f"{PG_SERVER}/{name}")
    db.upgrade(engine)
    engine.dispose()
    yield name
    with postgres_server.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def new_postgres_database(postgres_server: Any, template: str | None) -> str:
    name = f"cobalt_test_{uuid.uuid4().hex[:12]}"
    with postgres_server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    return name


def drop_postgres_database(postgres_server: Any, name: str) -> None:
    with postgres_server.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of the backend under test."""
    if backend == "sqlite":
        path = tmp_path / "cobalt.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    server = request.getfixturevalue("postgres_server")
    name = new_postgres_database(server, request.getfixturevalue("postgres_template"))
    yield f"{PG_SERVER}/{name}"
    drop_postgres_database(server, name)


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    name = new_postgres_database(server, None)
    yield f"{PG_SERVER}/{name}"
    drop_postgres_database(server, name)


DEFAULT_TOML = """\
database_url = "{url}"
[clinic]
name = "Riverside clinic"
timezone = "{timezone}"
open_days = ["mon", "tue", "wed", "thu", "fri"]
holidays = "{holidays}"
email = "nurses@clinic.example"
send_time = "08:00"
[smtp]
host = "{smtp_host}"
port = {smtp_port}
sender = "clinic@clinic.example"
outbox_dir = "outbox"
"""


def database_rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what "nothing changed" is checked against."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table.name: sorted((tuple(row) for row in conn.execute(select(table))), key=repr)
                for table in metadata.sorted_tables
            }
    finally:
        engine.dispose()


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Clinic:
    """A working directory with a cobalt.toml; ``cobalt(...)`` runs a command in it."""

    path: Path
    database_url: str
    monkeypatch: pytest.MonkeyPatch
    capsys: pytest.CaptureFixture[str]

    def configure(self, timezone: str = "UTC", holidays: str = "", smtp_host: str = "",
                  smtp_port: int = 25, extra: str = "") -> None:
        (self.path / "cobalt.toml").write_text(DEFAULT_TOML.format(
            url=self.database_url, timezone=timezone, holidays=holidays, smtp_host=smtp_host,
            smtp_port=smtp_port) + extra)

    def settings(self) -> Any:
        from scheduler.config import load_settings

        return load_settings()

    def cobalt(self, *args: str) -> Result:
        """Runs the command in this process (fast; freezegun moves its clock)."""
        from scheduler.cli import run

        self.capsys.readouterr()
        code = run([str(a) for a in args])
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def exe(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Result:
        """Runs the real console script in a child process."""
        proc = subprocess.run(
            [COBALT, *map(str, args)], cwd=self.path, capture_output=True, text=True,
            env={**os.environ, "COBALT_CONFIG": str(self.path / "cobalt.toml"), **(env or {})},
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def clinic(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> Clinic:
    workdir = tmp_path / "clinic"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("COBALT_CONFIG", str(workdir / "cobalt.toml"))
    for name in list(os.environ):
        if name.startswith("COBALT_") and name != "COBALT_CONFIG":
            monkeypatch.delenv(name)
    c = Clinic(workdir, database_url, monkeypatch, capsys)
    c.configure()
    return c


@pytest.fixture
def smtp() -> Iterator[Any]:
    """A real SMTP server (aiosmtpd) on a free local port, collecting what it receives."""
    from smtp_sink import SmtpSink

    with SmtpSink() as sink:
        yield sink
