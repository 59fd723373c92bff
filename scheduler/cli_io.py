"""``cobalt import`` and ``cobalt export`` (SPEC section 10).

Only the standard library is imported here; each command loads what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

from scheduler.errors import BadInput

if TYPE_CHECKING:
    from pathlib import Path

    from scheduler.cli import App

IMPORT_KINDS = ("patients", "doses", "labs")
CSV_EXPORTS = ("worklist", "patients", "events")


def _path(text: str) -> Path:
    from pathlib import Path

    return Path(text)


def register(add: Callable[..., argparse.ArgumentParser]) -> None:
    from scheduler.cli import _date

    p = add("import", cmd_import, "bring patients, doses given or lab results in from a CSV file", json_flag=True)
    p.add_argument("kind", choices=IMPORT_KINDS, help="what the file holds")
    p.add_argument("file", type=_path, help="the CSV file (UTF-8, a header row)")
    p.add_argument("--dry-run", action="store_true", help="check and plan everything, write nothing")

    p = add("export", cmd_export, "a patient's schedule as iCalendar or FHIR, or rows as CSV", json_flag=False)
    formats = p.add_subparsers(dest="format", required=True)
    for name, what in (("ics", "the planned doses and labs as an iCalendar file"),
                       ("fhir", "a FHIR R4 Bundle (collection) of the patient's treatment")):
        f = formats.add_parser(name, help=what, description=what)
        f.add_argument("mrn", help="the patient's medical record number")
        f.add_argument("-o", "--output", type=_path, help="write to this file (default: stdout)")
    f = formats.add_parser("csv", help="worklist, patients or events as CSV with a header row")
    f.add_argument("what", choices=CSV_EXPORTS)
    f.add_argument("--on", type=_date, help="the date (YYYY-MM-DD; default today)")
    f.add_argument("--days", type=int, help="also what is due within N days after")
    f.add_argument("-o", "--output", type=_path, help="write to this file (default: stdout)")


class _Bar:
    """A rich progress bar on stderr, for a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 console=Console(stderr=True), transient=True)
        self.rows = Progress(TextColumn("{task.description}"), MofNCompleteColumn(),
                             console=Console(stderr=True), transient=True)
        self.current: Any = None
        self.task: Any = None

    def phase(self, description: str, total: int | None) -> None:
        if self.current is not None:
            self.current.stop()
        self.current = self.progress if total is not None else self.rows
        self.current.start()
        self.task = self.current.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self.current is not None:
            self.current.advance(self.task, amount)

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()


def cmd_import(app: App) -> None:
    from scheduler.importing import ImportRefused, Quiet, import_file

    bar = _Bar() if sys.stderr.isatty() else None
    try:
        report = import_file(app.engine, app.context(), app.args.kind, app.args.file,
                             dry_run=app.args.dry_run, reporter=bar or Quiet())
    except ImportRefused as exc:
        if bar:
            bar.close()
            bar = None
        for problem in exc.problems:
            print(f"cobalt: {app.args.file.name}: {problem}", file=sys.stderr)
        raise
    finally:
        if bar:
            bar.close()
    app.out(report.__dict__, report.text())


@contextmanager
def _output(app: App) -> Iterator[IO[str]]:
    """Standard output, or the file named by ``-o`` (written only if the export succeeds)."""
    target: Path | None = app.args.output
    if target is None:
        yield sys.stdout
        return
    partial = target.with_name(f".{target.name}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as stream:
            yield stream
        partial.replace(target)
    except OSError as exc:
        raise BadInput(f"cannot write {target}: {exc.strerror}") from None
    finally:
        partial.unlink(missing_ok=True)


def cmd_export(app: App) -> None:
    from scheduler import db

    with db.transaction(app.engine) as session:
        if app.args.format == "csv":
            from scheduler import export_csv

            with _output(app) as stream:
                export_csv.export(session, stream, app.args.what, ctx=app.context(), on=app.args.on,
                                  days=app.args.days)
            return
        if app.args.format == "ics":
            from scheduler import export_ics

            text = export_ics.patient_calendar(session, app.settings, app.args.mrn)
        else:
            from scheduler import export_fhir

            text = export_fhir.patient_bundle_json(session, app.settings, app.args.mrn)
    with _output(app) as stream:
        stream.write(text)
