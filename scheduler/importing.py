"""Bring a cohort in (SPEC section 10): ``cobalt import patients|doses|labs FILE.csv``.

A pipeline you can read top to bottom:

1. **parse**: the CSV is read a line at a time (UTF-8, a BOM is fine), each
   cell checked for its shape (a date, a number, a known lab code), then the
   rows are sorted by MRN and date with a bounded-memory external sort, so a
   patient's rows come together and in date order however the file is laid out;
2. **validate**: each row passes the service's own checks
   (``service.check_enrolment``, ``check_dose``, ``check_results``,
   ``choose_order``): the rules live there, once;
3. **plan**: the pure planner (``store.plan_record``) plans each patient as the
   service would after each record, so a dose completes the same planned dose
   ``cobalt give`` would have chosen;
4. **write**: a batch of patients at a time, with ``executemany`` inserts and
   updates (no ORM object per row), never reading back what was just written.

Each file is all or nothing: one transaction, and any bad row means nothing is
written. Every bad row is collected (line, column, why) and reported together.
Importing the same file again changes nothing: an MRN already enrolled with
the same details, a dose already recorded on that date and a result already
recorded are skipped.
"""

from __future__ import annotations

import codecs
import csv
import gc
import heapq
import itertools
import pickle
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol

from sqlalchemy import Engine, select
from sqlmodel import Session

from models import Audit, Dose, LabResult, Patient, Regimen
from scheduler import db, labs, safety, service
from scheduler.alerts import is_pernicious
from scheduler.errors import BadInput, FieldError
from scheduler.planning import spread_offset
from scheduler.service import Context
from scheduler.store import (
    PatientRecord,
    PatientState,
    PlanWriter,
    Replanned,
    audit_detail,
    load_states,
    plan_record,
)
from scheduler.validation import check_date

PATIENT_COLUMNS = (
    "mrn", "name", "email", "phone", "protocol", "start", "neuro", "renal_impairment", "egfr",
    "platelets", "hb", "maintenance_months", "on_folic_acid",
)
COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": PATIENT_COLUMNS,
    "doses": ("mrn", "given_on"),
    "labs": ("mrn", "on", "code", "value", "order"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "patients": ("mrn", "name", "start"),
    "doses": ("mrn", "given_on"),
    "labs": ("mrn", "on", "code", "value"),
}
KINDS = tuple(COLUMNS)

BATCH_PATIENTS = 500  # patients validated, planned and written together
SORT_CHUNK_ROWS = 50_000  # rows held in memory at once while sorting (a few tens of MB)
_BOOLEANS = {"true": True, "false": False, "": False}
_BOM = codecs.BOM_UTF8


@dataclass(frozen=True, order=True)
class Problem:
    """One bad row: where, and why."""

    line: int
    column: str
    why: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.why}"


class ImportRefused(BadInput):
    """The file has bad rows; nothing was written. ``problems`` lists each one."""

    def __init__(self, path: Path, problems: Sequence[Problem]) -> None:
        rows = len({p.line for p in problems})
        super().__init__(f"{path.name}: {rows} bad row{'s' if rows != 1 else ''}; nothing was imported")
        self.problems = sorted(problems)


class Reporter(Protocol):
    """Where progress goes (a progress bar on a terminal, nowhere otherwise)."""

    def phase(self, description: str, total: int | None) -> None: ...

    def advance(self, amount: int) -> None: ...


class Quiet:
    def phase(self, description: str, total: int | None) -> None:
        pass

    def advance(self, amount: int) -> None:
        pass


@dataclass
class ImportReport:
    kind: str
    rows: int = 0
    added: int = 0  # patients enrolled, doses or results recorded
    unchanged: int = 0  # rows already in the database
    patients: int = 0  # patients planned afresh
    dry_run: bool = False

    def text(self) -> str:
        if self.rows == 0:
            return "nothing to import: the file has a header and no rows"
        noun = {"patients": ("patient", "patients"), "doses": ("dose", "doses"),
                "labs": ("lab result", "lab results")}[self.kind][self.added != 1]
        if self.dry_run:
            return (f"{self.added} {noun} would be imported, {self.unchanged} already recorded "
                    f"({self.rows} rows; nothing written)")
        return f"{self.added} {noun} imported, {self.unchanged} already recorded ({self.rows} rows)"


# -- 1. parse --------------------------------------------------------------------------


@dataclass(order=True)
class Row:
    """A row that has the right shape; ``sort_key`` brings a patient's rows together, in date order."""

    sort_key: tuple[Any, ...]
    line: int = field(compare=False)
    mrn: str = field(compare=False)
    values: dict[str, Any] = field(compare=False)


def _lines(stream: IO[bytes], problems: list[Problem], bad_lines: set[int],
           reporter: Reporter) -> Iterator[str]:
    """Decoded lines; a line that is not UTF-8 is a problem (and its record is dropped)."""
    for number, raw in enumerate(stream, start=1):
        reporter.advance(len(raw))
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM):]
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_lines.add(number)
            problems.append(Problem(number, "-", f"not UTF-8 (byte 0x{raw[exc.start]:02x} at position "
                                                 f"{exc.start + 1}): save the file as UTF-8"))
            yield raw.decode("utf-8", errors="replace")


def _header(path: Path, kind: str, cells: list[str]) -> list[str]:
    expected = COLUMNS[kind]
    wanted = ",".join(expected)
    names = [c.strip().lower() for c in cells]
    problems = []
    for name in names:
        if name not in expected:
            problems.append(Problem(1, name or "(empty)",
                                    f"not a column of an import of {kind}: the header is {wanted}"))
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(Problem(1, name, "the column is named twice in the header"))
    for name in REQUIRED[kind]:
        if name not in names:
            problems.append(Problem(1, name, f"required column missing: the header is {wanted}"))
    if problems:
        raise ImportRefused(path, problems)
    return names


def read_rows(path: Path, kind: str, problems: list[Problem], reporter: Reporter) -> Iterator[Row]:
    """The file's rows that have the right shape, as they come; the others become problems."""
    try:
        size = path.stat().st_size
        stream = path.open("rb")
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    reporter.phase(f"reading {path.name}", size)
    with stream:
        bad_lines: set[int] = set()
        reader = csv.reader(_lines(stream, problems, bad_lines, reporter), strict=True)
        header: list[str] | None = None
        previous_end = 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                problems.append(Problem(reader.line_num, "-", f"not CSV: {exc}"))
                previous_end = reader.line_num
                continue
            line, previous_end = previous_end + 1, reader.line_num
            if header is None:
                if bad_lines:
                    raise ImportRefused(path, problems)
                if not any(c.strip() for c in cells):
                    continue  # blank lines before the header
                header = _header(path, kind, cells)
                continue
            if any(n in bad_lines for n in range(line, previous_end + 1)):
                continue
            if not any(c.strip() for c in cells):
                continue  # a blank line
            if len(cells) > len(header):
                problems.append(Problem(line, f"{len(header) + 1} (none in the header)",
                                        f"too many columns: {len(cells)}, the header has {len(header)}"))
                continue
            if len(cells) < len(header):
                problems.append(Problem(line, header[len(cells)],
                                        f"too few columns: {len(cells)}, the header has {len(header)}"))
                continue
            row = _shape(kind, line, dict(zip(header, (c.strip() for c in cells), strict=True)), problems)
            if row is not None:
                yield row
        if header is None:
            raise BadInput(f"{path.name} is empty: the first line must be the header {','.join(COLUMNS[kind])}")


def _date_cell(line: int, column: str, text: str, problems: list[Problem]) -> date | None:
    if not text:
        problems.append(Problem(line, column, "a date is required (YYYY-MM-DD)"))
        return None
    try:
        return check_date(text)
    except ValueError as exc:
        problems.append(Problem(line, column, str(exc)))
        return None


def _shape(kind: str, line: int, cells: dict[str, str], problems: list[Problem]) -> Row | None:
    """The checks that need nothing but the row itself; the rules come later."""
    mrn = cells["mrn"]
    if not mrn:
        problems.append(Problem(line, "mrn", "mrn must not be empty"))
        return None
    before = len(problems)
    if kind == "patients":
        return Row((mrn, line), line, mrn, dict(cells))
    if kind == "doses":
        given_on = _date_cell(line, "given_on", cells["given_on"], problems)
        if given_on is None:
            return None
        return Row((mrn, given_on, line), line, mrn, {"given_on": given_on})
    on = _date_cell(line, "on", cells["on"], problems)
    code = cells["code"].lower()
    if code not in labs.CATALOG:
        problems.append(Problem(line, "code", f"unknown lab code {cells['code']!r}: known codes are "
                                              f"{', '.join(labs.CATALOG)}"))
    else:
        try:
            labs.parse_result(f"{code}={cells['value']}")
        except BadInput as exc:
            problems.append(Problem(line, "value", str(exc)))
    if len(problems) > before or on is None:
        return None
    order = cells.get("order") or None
    return Row((mrn, on, order or "", line), line, mrn,
               {"on": on, "code": code, "value": cells["value"], "order": order})


def sorted_rows(rows: Iterable[Row], chunk: int | None = None) -> Iterator[Row]:
    """``rows`` in order, holding at most ``chunk`` of them in memory: sorted runs
    spill to temporary files and are merged."""
    chunk = chunk or SORT_CHUNK_ROWS
    rows = iter(rows)
    runs: list[IO[bytes]] = []
    try:
        while True:
            block = sorted(itertools.islice(rows, chunk))
            if not runs and len(block) < chunk:
                yield from block  # it all fitted
                return
            if not block:
                break
            run: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed below, after the merge)
            for row in block:
                pickle.dump(row, run, protocol=pickle.HIGHEST_PROTOCOL)
            run.seek(0)
            runs.append(run)
        yield from heapq.merge(*(_unpickled(run) for run in runs))
    finally:
        for run in runs:
            run.close()


def _unpickled(run: IO[bytes]) -> Iterator[Row]:
    while True:
        try:
            yield pickle.load(run)
        except EOFError:
            return


def _patients(rows: Iterator[Row]) -> Iterator[list[list[Row]]]:
    """Batches of patients, each patient's rows together."""
    grouped = (list(group) for _, group in itertools.groupby(rows, key=lambda r: r.mrn))
    while batch := list(itertools.islice(grouped, BATCH_PATIENTS)):
        yield batch


# -- the run -----------------------------------------------------------------------------


GC_THRESHOLD = 100_000  # objects allocated between the cyclic collector's youngest runs, while importing


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """The cyclic garbage collector run seldom: an import allocates a tuple an event row,
    hundreds of thousands that live until their batch is written, and each collection
    (every 700 allocations by default) walks them again; an import makes few cycles."""
    before = gc.get_threshold()
    gc.set_threshold(max(before[0], GC_THRESHOLD), *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def import_file(engine: Engine, ctx: Context, kind: str, path: Path, *, dry_run: bool = False,
                reporter: Reporter | None = None) -> ImportReport:
    """Import ``path`` (``kind``: patients, doses or labs) in one transaction."""
    if kind not in KINDS:
        raise BadInput(f"import {kind!r}: choose one of {', '.join(KINDS)}")
    reporter = reporter or Quiet()
    problems: list[Problem] = []
    report = ImportReport(kind, dry_run=dry_run)
    with _fewer_collections():
        rows = sorted_rows(read_rows(path, kind, problems, reporter))
        # The first sorted row comes once the whole file is read and sorted: the
        # database is not locked while a large file streams in.
        head = next(rows, None)
        rows = itertools.chain([head], rows) if head is not None else iter(())
        reporter.phase("importing", None)
        try:
            with db.transaction(engine) as session:
                _run(session, ctx, kind, path, rows, problems, report, reporter, dry_run)
        except _DryRun:
            pass  # rolled back: nothing written
    if not dry_run:
        db.refresh_statistics(engine, WRITTEN[kind], max(report.added, report.patients))
    return report


# The tables an import of each kind writes (their statistics are refreshed after a bulk one).
WRITTEN = {"patients": ("patient", "regimen", "event"), "doses": ("dose", "event"),
           "labs": ("lab_result", "event", "alert")}


class _DryRun(Exception):
    """Unwinds a dry run's transaction."""


def _run(session: Session, ctx: Context, kind: str, path: Path, rows: Iterator[Row], problems: list[Problem],
         report: ImportReport, reporter: Reporter, dry_run: bool) -> None:
    steps: dict[str, Callable[..., None]] = {
        "patients": partial(_import_patients, plans={}), "doses": _import_doses, "labs": _import_labs}
    step = steps[kind]
    writer = PlanWriter(session, ctx.actor, ctx.policy, write=not dry_run)
    with db.write_cache(session.connection()):
        for batch in _patients(rows):
            report.rows += sum(len(group) for group in batch)
            writer.write = not dry_run and not problems  # after a bad row: check on, write no more
            step(session, ctx, batch, problems, report, writer)
            writer.flush()
            reporter.advance(sum(len(group) for group in batch))
    if problems:
        raise ImportRefused(path, problems)
    if dry_run:
        raise _DryRun


@dataclass
class _Added:
    """A record this import adds, shaped like its row for the planner."""

    id: int
    patient_id: int | None = None
    event_key: str = ""
    given_on: date | None = None
    code: str = ""
    value: float | None = None
    text: str | None = None
    taken_on: date | None = None
    order_key: str | None = None
    voided_at: datetime | None = None  # what this import adds is in force


@dataclass(frozen=True)
class _RegimenState:
    number: int
    protocol: str
    start: date
    maintenance_months: int


_ids = itertools.count(2**53)  # above any real row id: new rows sort after old ones on a day


def _refusal(check: Callable[[], object], column: str) -> tuple[str, BadInput] | None:
    """The column and the refusal, if ``check`` refuses."""
    try:
        check()
    except BadInput as exc:
        return column, exc
    return None


def _problem(problems: list[Problem], line: int, column: str, exc: BadInput) -> None:
    problems.append(Problem(line, exc.field if isinstance(exc, FieldError) else column, str(exc)))


# -- patients --------------------------------------------------------------------------


def _boolean(row: Row, column: str, problems: list[Problem]) -> bool:
    text = row.values.get(column, "").lower()
    if text not in _BOOLEANS:
        problems.append(Problem(row.line, column, f"{row.values[column]!r} is not true, false or empty"))
        return False
    return _BOOLEANS[text]


def _enrolment(ctx: Context, row: Row, problems: list[Problem]) -> service.NewPatient | None:
    v = row.values
    before = len(problems)
    start = _date_cell(row.line, "start", v["start"], problems)
    flags = {c: _boolean(row, c, problems) for c in ("neuro", "renal_impairment", "on_folic_acid")}
    months: int | None = None
    if v.get("maintenance_months"):
        try:
            months = int(v["maintenance_months"])
        except ValueError:
            problems.append(Problem(row.line, "maintenance_months", f"{v['maintenance_months']!r} is not 2 or 3"))
    if len(problems) > before:
        return None
    try:
        return service.check_enrolment(
            ctx, mrn=v["mrn"], name=v["name"], email=v.get("email") or None, phone=v.get("phone") or None,
            protocol=v.get("protocol") or None, start=start, maintenance_months=months,
            egfr=v.get("egfr") or None, platelets=v.get("platelets") or None, hb=v.get("hb") or None,
            name_of=lambda name: name, **flags,
        )
    except BadInput as exc:
        _problem(problems, row.line, "-", exc)
        return None


def _differences(new: service.NewPatient, old: Any) -> list[str]:
    pairs = (("name", new.name, old.name), ("email", new.email, old.email), ("phone", new.phone, old.phone),
             ("protocol", new.protocol, old.protocol), ("start", new.start, old.start),
             ("maintenance_months", new.maintenance_months, old.maintenance_months),
             ("neuro", new.neuro, old.neuro), ("renal_impairment", new.renal_impairment, old.renal_impairment),
             ("on_folic_acid", new.on_folic_acid, old.on_folic_acid))
    return [name for name, a, b in pairs if a != b]


def _import_patients(session: Session, ctx: Context, batch: list[list[Row]], problems: list[Problem],
                     report: ImportReport, writer: PlanWriter, *,
                     plans: dict[tuple[Any, ...], tuple[Replanned, int]]) -> None:
    """``plans``: the plans made so far in this import, by their inputs (kept from batch to batch)."""
    checked: list[tuple[Row, service.NewPatient]] = []
    for group in batch:
        first = group[0]
        for again in group[1:]:
            problems.append(Problem(again.line, "mrn", f"MRN {first.mrn!r} is also on line {first.line}"))
        new = _enrolment(ctx, first, problems)
        if new is not None:
            checked.append((first, new))
    p, r = Patient.__table__, Regimen.__table__  # type: ignore[attr-defined]
    enrolled = {
        row.mrn: row for row in session.execute(
            select(p.c.mrn, p.c.name, p.c.email, p.c.phone, p.c.neuro, p.c.renal_impairment,
                   p.c.on_folic_acid, r.c.protocol, r.c.start, r.c.maintenance_months)
            .join(r, (r.c.patient_id == p.c.id) & (r.c.number == 1))
            .where(p.c.mrn.in_([new.mrn for _, new in checked]))
        )
    }
    fresh: list[tuple[Row, service.NewPatient]] = []
    for row, new in checked:
        old = enrolled.get(new.mrn)
        if old is None:
            fresh.append((row, new))
            continue
        changed = _differences(new, old)
        if changed:
            problems.append(Problem(row.line, changed[0], f"MRN {new.mrn!r} is already enrolled with other "
                                                          f"details ({', '.join(changed)})"))
        else:
            report.unchanged += 1
    if not fresh:
        return
    records = []
    # A new patient's plan follows from these alone (the planner is pure): patients who
    # share them (a cohort starting over a few weeks shares many) are planned once.
    for _, new in fresh:
        patient = PatientState(None, new.mrn, "active", new.neuro, new.renal_impairment, new.on_folic_acid,
                                False, None, None)
        regimen = _RegimenState(1, new.protocol, new.start, new.maintenance_months)
        results = [_Added(next(_ids), code=code, value=value, taken_on=new.start) for code, value in new.initial]
        record = PatientRecord(patient, [regimen], [], results, [], [])  # type: ignore[arg-type,list-item]
        same = (new.protocol, new.start, new.maintenance_months, new.neuro, new.renal_impairment,
                new.on_folic_acid, new.initial)
        offset = spread_offset(new.mrn)
        if same in plans:
            made, planned_offset = plans[same]
            # but planned_through, which is kept short of the reach by each patient's own offset
            assert made.planned_through is not None
            made = replace(made, planned_through=made.planned_through + timedelta(days=planned_offset - offset))
        else:
            made = plan_record(record, ctx.calendar, ctx.today, ctx.policy)
            plans[same] = made, offset
        records.append((record, made))
    report.added += len(fresh)
    report.patients += len(fresh)
    if not writer.write:
        return
    columns = ("mrn", "name", "email", "phone", "neuro", "renal_impairment", "on_folic_acid", "pernicious",
               "opted_out", "status", "discharged_on", "discharge_reason", "planned_through", "created_at",
               "updated_at")
    conn = session.connection()
    db.insert_rows(conn, p, columns, [
        (new.mrn, new.name, new.email, new.phone, new.neuro, new.renal_impairment, new.on_folic_acid, False,
         False, "active", None, None, made.planned_through, writer.now, writer.now)
        for (_, new), (_, made) in zip(fresh, records, strict=True)
    ])
    # Their ids, by the unique MRN (one query: cheaper than a RETURNING a row, which SQLite
    # needs to keep the rows' order).
    query = select(p.c.mrn, p.c.id).where(p.c.mrn.in_([new.mrn for _, new in fresh]))
    by_mrn = {str(row.mrn): int(row.id) for row in conn.execute(query)}
    ids = [by_mrn[new.mrn] for _, new in fresh]
    details: dict[tuple[Any, ...], str] = {}
    for (_, new), (record, made), patient_id in zip(fresh, records, ids, strict=True):
        record.patient.id = patient_id
        writer.add(Regimen, patient_id=patient_id, number=1, protocol=new.protocol, start=new.start,
                   maintenance_months=new.maintenance_months, created_at=writer.now)
        for code, value in new.initial:
            writer.add(LabResult, patient_id=patient_id, code=code, value=value, text=None,
                       unit=labs.CATALOG[code].unit or "", taken_on=new.start, order_key=None,
                       recorded_by=ctx.actor, recorded_at=writer.now)
        enroll = (new.protocol, new.start, new.maintenance_months)
        if enroll not in details:  # the same text for every patient enrolled alike
            details[enroll] = audit_detail(protocol=new.protocol, start=new.start,
                                           maintenance_months=new.maintenance_months, source="import")
        writer.add(Audit, at=writer.now, actor=writer.actor, action="enroll", patient_id=patient_id,
                   detail=details[enroll])
        writer.plan(record, made, {})


# -- doses and labs: patients already enrolled ------------------------------------------


def _load(session: Session, batch: list[list[Row]], problems: list[Problem]
          ) -> tuple[dict[str, PatientRecord], dict[int, list[Any]]]:
    """The records of the batch's patients, read with one query per table (core rows)."""
    p = Patient.__table__  # type: ignore[attr-defined]
    records = {r.patient.mrn: r for r in load_states(session, p.c.mrn.in_([g[0].mrn for g in batch]))}
    for group in batch:
        if group[0].mrn not in records:
            for row in group:
                problems.append(Problem(row.line, "mrn", f"no patient with MRN {row.mrn!r}"))
    ids = [r.patient.id for r in records.values() if r.patient.id is not None]
    live = safety.live_alerts(session, ids) if ids else {}
    return records, live


def _current(record: PatientRecord) -> Any:
    return max(record.regimens, key=lambda r: r.number)


def _finish(record: PatientRecord, made: Replanned | None, writer: PlanWriter, live: dict[int, list[Any]]) -> None:
    if made is None:
        return
    patient = record.patient
    writer.plan(record, made, live)
    writer.patient_updates.append(
        {"b_id": patient.id, "planned_through": made.planned_through, "pernicious": patient.pernicious}
    )


def _enrolled(session: Session, batch: list[list[Row]],
              problems: list[Problem]) -> Iterator[tuple[list[Row], PatientRecord, dict[int, list[Any]]]]:
    """Each patient's rows of ``batch`` with the patient's record (a row of an MRN
    that is not enrolled is a problem of ``_load``'s) and their live alerts."""
    records, live = _load(session, batch, problems)
    for group in batch:
        record = records.get(group[0].mrn)
        if record is not None:
            yield group, record, live


def _import_doses(session: Session, ctx: Context, batch: list[list[Row]], problems: list[Problem],
                  report: ImportReport, writer: PlanWriter) -> None:
    for group, record, live in _enrolled(session, batch, problems):
        patient = record.patient
        recorded = {d.given_on for d in record.doses}
        events: Sequence[Any] = record.events
        made: Replanned | None = None
        for row in group:
            on: date = row.values["given_on"]
            if on in recorded:
                report.unchanged += 1
                continue
            regimen = _current(record)
            try:
                service.check_active(patient)
            except BadInput as exc:
                _problem(problems, row.line, "mrn", exc)
                continue
            try:
                event = service.check_dose(
                    ctx, row.mrn, on, regimen_number=regimen.number, regimen_start=regimen.start,
                    regimen_protocol=regimen.protocol, given=[d.given_on for d in record.doses_in_force],
                    decisions=record.decisions_in_force, events=events, early=True,  # history: as it was given
                )
            except BadInput as exc:
                _problem(problems, row.line, "given_on", exc)
                continue
            record.doses.append(_Added(next(_ids), patient_id=patient.id, event_key=event.key, given_on=on))  # type: ignore[arg-type]
            writer.add(Dose, patient_id=patient.id, event_key=event.key, given_on=on, recorded_by=ctx.actor,
                       recorded_at=writer.now)
            writer.audit("give", patient.id, event=event.key, given_on=on, source="import")
            made = plan_record(record, ctx.calendar, ctx.today, ctx.policy)
            patient.planned_through = made.planned_through
            events = made.events
            report.added += 1
        if made is not None:
            report.patients += 1
        _finish(record, made, writer, live)


def _same_result(old: Any, code: str, value: float | None, text: str | None, on: date) -> bool:
    return old.code == code and old.taken_on == on and old.value == value and old.text == text


def _import_labs(session: Session, ctx: Context, batch: list[list[Row]], problems: list[Problem],
                 report: ImportReport, writer: PlanWriter) -> None:
    for group, record, live in _enrolled(session, batch, problems):
        patient = record.patient
        events: Sequence[Any] = record.events
        made: Replanned | None = None
        existing = list(record.results)
        # One lab record per day and order, like one `cobalt lab` command.
        for (on, order), same_day in itertools.groupby(group, key=lambda r: (r.values["on"], r.values["order"])):
            rows = []
            for row in same_day:
                code, value, text = labs.parse_result(f"{row.values['code']}={row.values['value']}")
                if any(_same_result(old, code, value, text, on) for old in existing):
                    report.unchanged += 1
                else:
                    rows.append(row)
            if not rows:
                continue
            refusal = (_refusal(partial(service.check_active, patient), "mrn")
                       or _refusal(partial(service.not_future, ctx, on, "a lab result"), "on"))
            if refusal:
                column, exc = refusal
                for row in rows:
                    _problem(problems, row.line, column, exc)
                continue
            seen: dict[str, int] = {}
            for row in rows:
                if row.values["code"] in seen:
                    problems.append(Problem(row.line, "code", f"{row.values['code']} is also on line "
                                                              f"{seen[row.values['code']]}, for the same day"))
                seen.setdefault(row.values["code"], row.line)
            if len(seen) < len(rows):
                continue
            try:
                parsed = service.check_results([f"{r.values['code']}={r.values['value']}" for r in rows])
                chosen, covered = service.choose_order(events, group[0].mrn, on, order, [c for c, _, _ in parsed])
            except BadInput as exc:
                _problem(problems, rows[0].line, "order", exc)
                continue
            order_key = chosen.key if chosen else None
            for code, value, text in parsed:
                key = order_key if code in covered else None
                record.results.append(_Added(next(_ids), patient_id=patient.id, code=code, value=value,  # type: ignore[arg-type]
                                             text=text, taken_on=on, order_key=key))
                writer.add(LabResult, patient_id=patient.id, code=code, value=value, text=text,
                           unit=labs.CATALOG[code].unit or "", taken_on=on, order_key=key,
                           recorded_by=ctx.actor, recorded_at=writer.now)
            writer.audit("lab", patient.id, order=order_key, on=on, codes=[c for c, _, _ in parsed],
                         source="import")
            if is_pernicious(record.lab_results()) and not patient.pernicious:
                patient.pernicious = True
                writer.audit("mark-pernicious", patient.id)
            made = plan_record(record, ctx.calendar, ctx.today, ctx.policy)
            patient.planned_through = made.planned_through
            events = made.events
            report.added += len(parsed)
        if made is not None:
            report.patients += 1
        _finish(record, made, writer, live)


def example_header(kind: str) -> str:
    return ",".join(COLUMNS[kind])

