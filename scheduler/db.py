"""Engines, sessions and the schema's migrations.

SQLite is the embedded default: every transaction there starts with
``BEGIN IMMEDIATE`` so two writers queue on the database lock instead of failing
half-way. PostgreSQL is the scale-out: URLs ``postgresql://`` and
``postgres://`` use psycopg 3.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError
from sqlmodel import Session

import models  # noqa: F401  (the plan's tables; the others are defined on first use)
from scheduler.errors import CobaltError, ConfigError, SchemaOutOfDate

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Dialect

T = TypeVar("T")
log = logging.getLogger("cobalt.db")

# The migrations ship inside the package (scheduler/migrations; the checkout's
# top-level `alembic` is a link to it), so an installed wheel finds them too.
MIGRATIONS_DIR = Path(str(files("scheduler") / "migrations"))
# Any number, the same in every process: serialises first-use migrations on PostgreSQL.
_MIGRATION_LOCK = 0x0C0BA17


def normalise_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def make_engine(url: str, **kw: Any) -> Engine:
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except Exception:
        raise ConfigError(f"database_url {url!r} is not a database URL") from None
    # Bound values (names, addresses, message bodies) never reach an error text or a log.
    kw.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 60}, **kw)
        _sqlite_pragmas(engine)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True, **kw)
    except ModuleNotFoundError as exc:
        if parsed.get_backend_name() == "postgresql":
            raise ConfigError("PostgreSQL needs the psycopg driver: pip install 'cobalt-clinic[postgres]'") from None
        raise ConfigError(f"no driver for {parsed.drivername!r} ({exc.name}): use SQLite or PostgreSQL") from None
    except Exception as exc:
        raise ConfigError(f"database_url: {exc}") from None


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def transaction(engine: Engine, *, durable: bool = True) -> Iterator[Session]:
    """One unit of work: committed on success, rolled back on any error.

    ``durable=False``: a commit that survives this process being killed, not an operating
    system crash or a power cut, and costs no wait for the disk: on SQLite the commit is
    made with ``PRAGMA synchronous=NORMAL`` (in WAL mode: written to the log, not synced),
    on PostgreSQL with ``synchronous_commit = off`` for this transaction (the server's WAL
    writer flushes it within three ``wal_writer_delay``). The next durable commit on the
    same database makes it durable too: SQLite syncs the whole log, PostgreSQL flushes its
    log up to its own commit, which comes after (docs/faults.md)."""
    if durable:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
        return
    if engine.dialect.name != "sqlite":
        with Session(engine, expire_on_commit=False) as session, session.begin():
            session.execute(text("SET LOCAL synchronous_commit = off"))
            yield session
        return
    with engine.connect() as conn:
        # SQLite's safety level is the connection's, and cannot change inside a transaction:
        # set before BEGIN (the driver's connection is in autocommit), and set back after.
        driver = conn.connection.driver_connection
        assert driver is not None
        before = driver.execute("PRAGMA synchronous").fetchone()[0]
        driver.execute("PRAGMA synchronous=NORMAL")
        try:
            with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                yield session
        finally:
            try:
                driver.execute(f"PRAGMA synchronous={int(before)}")
            except Exception:  # never leave a pooled connection less safe than it was
                conn.invalidate()
                raise


def chunked(ids: Sequence[T], size: int = 10_000) -> Iterator[Sequence[T]]:
    """Slices of ``ids`` small enough for one ``IN (...)``: PostgreSQL takes at most
    65,535 parameters in a statement, SQLite 32,766."""
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


# Rows a bulk write must reach before PostgreSQL's statistics are refreshed at once.
BULK_ROWS = 1_000


def refresh_statistics(engine: Engine, tables: Sequence[str], rows: int) -> None:
    """After a bulk write (``rows`` of at least ``BULK_ROWS``), on PostgreSQL: ``ANALYZE``
    the tables written, so the next
    statements are planned from what they now hold (autovacuum would, but later: a
    first pass after an import, or a delivery after a heavy morning's queueing, was
    planned for the tables as they were). ``ANALYZE`` samples: under a second at a
    million patients. SQLite is left as it is: Cobalt's SQLite plans are made for a
    database without statistics (docs/decisions.md)."""
    if engine.dialect.name != "postgresql" or not tables or rows < BULK_ROWS:
        return
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE " + ", ".join(tables))
    except SQLAlchemyError as exc:  # the write is committed; autovacuum will analyse later
        log.warning("ANALYZE after a bulk write failed (%s); autovacuum will do it", type(exc).__name__)


WRITE_CACHE_KIB = 64 * 1024  # SQLite's page cache while a big batch is written (default 2 MiB)


@contextmanager
def write_cache(conn: Connection) -> Iterator[None]:
    """On SQLite, a bigger page cache on ``conn`` for a big write (the pages a transaction
    changes stay in memory instead of being spilled to the WAL before the commit and read
    back; about a quarter less CPU for 100,000 rows), then the one it had. Durability
    is as before: the commit writes the same pages."""
    if conn.dialect.name != "sqlite":
        yield
        return
    before = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size = -{WRITE_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size = {int(before or -2000)}")


COPY_FROM_ROWS = 1_000  # on PostgreSQL, a batch this big is written with COPY


def insert_rows(conn: Connection, table: Table, columns: Sequence[str],
                rows: Iterable[Sequence[Any]], *, converted: bool = False,
                skip_conflicts_on: Sequence[str] = ()) -> int:
    """Insert ``rows`` (tuples of ``columns``' values, in that order) with one DBAPI
    ``executemany``: the set-based write of import, roll-forward and enrolment.

    Each value is turned into what the driver takes by the column's own type (as
    SQLAlchemy would), but once per distinct value of a column, not once per row:
    a batch repeats the same timestamp, dates and labels thousands of times. Only
    the columns named are set, so a column added later with a default gets it.
    On PostgreSQL a big batch goes by ``COPY ... FROM STDIN`` instead (row
    triggers fire for it as for an INSERT). ``converted``: the rows' values are already
    what the driver takes (``row_converter``). ``skip_conflicts_on``: the columns of a
    unique constraint; a row that would break it is left out (``ON CONFLICT ... DO
    NOTHING``, never by COPY). Returns the rows inserted."""
    dialect = conn.dialect
    if dialect.paramstyle == "qmark":
        mark = "?"
    elif dialect.paramstyle in ("format", "pyformat"):
        mark = "%s"
    else:  # pragma: no cover (SQLite and psycopg only)
        raise NotImplementedError(dialect.paramstyle)
    quote = dialect.identifier_preparer.quote
    sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) "
           f"VALUES ({', '.join(mark for _ in columns)})")
    if skip_conflicts_on:
        sql += f" ON CONFLICT ({', '.join(quote(c) for c in skip_conflicts_on)}) DO NOTHING"
    batch = rows if isinstance(rows, list) else list(rows)
    if not batch:
        return 0
    if not converted:
        values: list[tuple[Any, ...]] = list(zip(*batch, strict=True))  # a column at a time
        for i, name in enumerate(columns):
            process = _bind_processor(dialect, table, name)
            if process is None:
                continue
            try:
                seen = {value: process(value) for value in set(values[i])}
                values[i] = tuple(map(seen.__getitem__, values[i]))
            except TypeError:  # a value that cannot be hashed: one at a time
                values[i] = tuple(map(process, values[i]))
        batch = list(zip(*values, strict=True))
    if dialect.name == "postgresql" and len(batch) >= COPY_FROM_ROWS and not skip_conflicts_on:
        # COPY: the rows stream to the server without a round trip each, in this transaction
        names = ", ".join(quote(c) for c in columns)
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(  # type: ignore[union-attr]
                f"COPY {quote(table.name)} ({names}) FROM STDIN") as copy:
            for row in batch:
                copy.write_row(row)
        return len(batch)
    result = conn.exec_driver_sql(sql, batch)
    # executemany's row count is the rows each statement inserted, summed (sqlite3, psycopg)
    return int(result.rowcount) if skip_conflicts_on else len(batch)


def _bind_processor(dialect: Dialect, table: Table, name: str) -> Callable[[Any], Any] | None:
    process: Callable[[Any], Any] | None = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
    return process


def row_converter(dialect: Dialect, table: Table,
                  columns: Sequence[str]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A row of ``columns``' values turned into what the driver takes, as ``insert_rows``
    does (each distinct value of a column converted once): for rows built once and
    written many times, then given to ``insert_rows(..., converted=True)``."""
    processors: list[tuple[int, Callable[[Any], Any], dict[Any, Any]]] = [
        (i, process, {}) for i, name in enumerate(columns)
        if (process := _bind_processor(dialect, table, name)) is not None]

    def convert(row: Sequence[Any]) -> tuple[Any, ...]:
        out = list(row)
        for i, process, seen in processors:
            value = out[i]
            try:
                out[i] = seen[value]
            except KeyError:
                out[i] = seen[value] = process(value)
            except TypeError:  # a value that cannot be hashed
                out[i] = process(value)
        return tuple(out)

    return convert


# -- migrations ----------------------------------------------------------------


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


_REVISION = re.compile(r"^(down_revision|revision)\b[^=]*=\s*['\"]?([\w]+)['\"]?", re.MULTILINE)


@functools.cache
def known_revisions() -> dict[str, str | None]:
    """Each migration's revision and the one it follows, read from the files
    themselves: a read command checks the schema without loading Alembic."""
    chain: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        found = dict((key, value) for key, value in _REVISION.findall(path.read_text(encoding="utf-8")))
        if "revision" in found:
            down = found.get("down_revision")
            chain[found["revision"]] = None if down in (None, "None") else down
    return chain


@functools.cache
def head_revision() -> str:
    chain = known_revisions()
    heads = set(chain) - {down for down in chain.values() if down}
    if len(heads) != 1:
        raise CobaltError(f"the packaged migrations have {len(heads)} heads; expected one")
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision, by a plain query (None: no Cobalt revision)."""
    with engine.connect() as conn:
        try:
            rows: list[str] = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
        except (OperationalError, ProgrammingError):
            return None
    return rows[0] if len(rows) == 1 else None


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """One migration at a time: an advisory lock on PostgreSQL, a file lock beside
    the database file on SQLite (several commands may start at once on a new file)."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                conn.commit()
        return
    database = engine.url.database or ""
    if engine.dialect.name != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migration-lock")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system: no file lock to take
        yield
        return
    with open(lock_path, "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """``cobalt db upgrade``: refuses a database of another application, like first use."""
    with _migration_lock(engine):
        if current_revision(engine) is None:
            _refuse_foreign(engine)
        command_upgrade(engine, revision)


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command

    with _migration_lock(engine):
        command.downgrade(alembic_config(engine), revision)


def _refuse_foreign(engine: Engine) -> None:
    """A database with tables but no Cobalt revision holds another application's
    data: Cobalt never migrates into it."""
    found = sorted(set(inspect(engine).get_table_names()) - {"alembic_version"})
    if found:
        raise CobaltError(
            f"the database has tables ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}) "
            "but no Cobalt schema revision: it is not a Cobalt database; check database_url"
        )


def ensure_schema(engine: Engine) -> None:
    """Migrate a brand-new, empty database; refuse one that is behind the newest
    migration, and one that has tables but no Cobalt revision (another
    application's database is never migrated into).

    The first-use migration runs under the migration lock, and what to do is
    decided again once the lock is held: several commands may start at once.
    """
    if current_revision(engine) == head_revision():
        return
    with _migration_lock(engine):
        current = current_revision(engine)
        if current == head_revision():
            return
        if current is None:
            _refuse_foreign(engine)
            command_upgrade(engine)
            return
    if current not in known_revisions():
        raise CobaltError(
            f"the database is at revision {current}, which this version of Cobalt does not know"
        )
    raise SchemaOutOfDate(
        f"the database schema is at {current}, behind {head_revision()}: run `cobalt db upgrade`"
    )


def command_upgrade(engine: Engine, revision: str = "head") -> None:
    """Alembic's upgrade, for a caller that holds the migration lock."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)
