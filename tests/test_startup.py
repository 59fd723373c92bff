"""Start-up (SPEC section 6): `cobalt --help` loads no database, scheduler, template
or migration library, a command builds only its own options, and a read command
loads only what it reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler.cli import build_parser, command_of

HEAVY = ("sqlalchemy", "sqlmodel", "alembic", "apscheduler", "jinja2", "pydantic", "fastapi", "holidays",
         "icalendar", "fhir", "rich", "models", "scheduler.db")


def loaded_after(code: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=cwd, env=env).stdout
    return set(out.split())


def test_cobalt_help_and_version_import_no_heavy_library() -> None:
    for argv in (["--help"], ["--version"], ["due", "--help"], ["import", "--help"]):
        modules = loaded_after(
            "from scheduler.cli import run\n"
            f"try:\n    run({argv!r})\nexcept SystemExit:\n    pass"
        )
        heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY)
        assert heavy == [], f"cobalt {' '.join(argv)} loaded {heavy[:5]}"


@pytest.mark.parametrize(("argv", "command"), [
    ([], ""), (["--help"], ""), (["due", "--json"], "due"), (["--by", "nina", "give", "1001"], "give"),
    (["--by=nina", "lab", "1001"], "lab"), (["--version"], ""),
])
def test_the_command_is_found_after_the_global_options(argv: list[str], command: str) -> None:
    assert command_of(argv) == command


def test_every_command_lists_its_own_options_when_it_is_the_one_run() -> None:
    full = build_parser(only=None)
    subparsers = next(a for a in full._actions if a.dest == "command")
    for name, parser in subparsers.choices.items():  # type: ignore[union-attr]
        alone = build_parser(only=name)
        alone_parser = next(a for a in alone._actions if a.dest == "command").choices[name]  # type: ignore[union-attr]
        assert alone_parser.format_help() == parser.format_help(), name


# What the read path (`due`, `schedule`) has no use for: migrations, templates, e-mail
# checks, the web app, the exports, the reminders.
NOT_READ = ("alembic", "jinja2", "mako", "email_validator", "dateutil", "apscheduler",
            "holidays", "icalendar", "fhir", "rich", "fastapi", "starlette", "argon2", "psycopg",
            "scheduler.outbox", "scheduler.passes", "scheduler.mailer", "scheduler.importing")
# The tables `due` does not read are not even defined; nor is the PostgreSQL dialect
# loaded on SQLite (the doses' partial index names it, and `schedule` reads the doses).
NOT_DUE = ("models.records", "models.outbox", "models.user", "sqlalchemy.dialects.postgresql")


def test_read_commands_on_sqlite_load_no_migration_template_or_web_library(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COBALT_")}
    env["COBALT_DATABASE_URL"] = f"sqlite:///{tmp_path / 'small.db'}"
    subprocess.run([sys.executable, "-c", "from scheduler.cli import main; main()", "enroll", "--mrn", "S1",
                    "--name", "Patient One", "--start", "2026-03-02", "--by", "test"],
                   cwd=tmp_path, env=env, check=True, capture_output=True)
    for argv, spare in ((["due", "--on", "2026-03-10"], NOT_READ + NOT_DUE), (["schedule", "S1"], NOT_READ),
                        (["due", "--on", "2026-03-10", "--json"], NOT_READ + NOT_DUE)):
        modules = loaded_after(
            "from scheduler.cli import run\n"
            f"assert run({argv!r}) == 0",
            cwd=tmp_path, env=env,
        )
        assert "scheduler.service" in modules and "models" in modules  # it did run
        loaded = sorted(m for m in modules if any(m == s or m.startswith(s + ".") for s in spare))
        assert loaded == [], f"cobalt {' '.join(argv)} loaded {loaded[:5]}"
