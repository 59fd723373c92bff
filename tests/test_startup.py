"""Start-up (SPEC section 6): `cobalt --help` loads no database, scheduler, template
or migration library, and a command builds only its own options."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scheduler.cli import build_parser, command_of

HEAVY = ("sqlalchemy", "sqlmodel", "alembic", "apscheduler", "jinja2", "pydantic", "fastapi", "holidays",
         "icalendar", "fhir", "rich", "models", "scheduler.db")


def loaded_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
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
