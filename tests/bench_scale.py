"""Scale benchmark: how Cobalt's hot paths behave with many patients.

Not a test (pytest collects nothing here): speed and memory targets live in
this script and in docs/benchmarks.md, never in timed tests. Run it with

    .venv/bin/python tests/bench_scale.py --patients 20000 --backend sqlite
    .venv/bin/python tests/bench_scale.py --patients 100000 --backend postgresql

What it does:

1. builds a database of N patients: a few hundred *templates* are enrolled
   through ``scheduler.service`` (enroll, give, lab, review, end-loading,
   confirm-response, opt-out) with start dates over the last three years, so
   their rows are what the service writes; then the patient, regimen, event,
   dose, lab_result, decision, alert and audit rows are replicated set-based
   (one INSERT ... SELECT per table) with new ids, MRNs and e-mail addresses;
2. spreads ``planned_through`` over a month as a running clinic has it (each
   plan is redone when less than 12 months remain), with one day's share due;
3. measures, each step in a fresh child process (so its peak RSS is its own):
   (a) ``service.worklist`` for today (and for today + 7 days, the digest's);
   (b) one scheduler pass at a fixed ``now`` with the FileMailer into a temp
       directory, split into roll-forward, queueing and delivery;
   (c) a second pass at the same ``now`` (idempotent: should do nothing);
   (d) a roll-forward where every plan has run short (one UPDATE sets
       ``planned_through`` back, then ``roll_forward`` a month later): first one
       call as a pass makes it (stopped by ``[scheduler] replan_per_pass``), then
       the rest with that cap raised, so the full roll-forward is measured too;
   (e) the query plans (EXPLAIN QUERY PLAN on SQLite, EXPLAIN ANALYZE on
       PostgreSQL) of the statements the worklist and a pass (roll-forward,
       queueing, digest, delivery, purge) really run, captured from the engine,
       and whether they use their index (``ix_event_status_due`` or
       ``ix_event_status_kind_due`` for the event queries);
4. prints a table of the results, the time spent in SQL by statement, and the
   plans (``--json FILE`` also writes everything).

PostgreSQL: the server is COBALT_BENCH_POSTGRES or COBALT_TEST_POSTGRES (default
postgresql+psycopg://postgres@127.0.0.1:5432); a database cobalt_bench_* is
created for the run and dropped after it (unless --keep). See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from smtp_sink import SmtpSink  # tests/, beside this script
from sqlalchemy import Engine, create_engine, delete, event, func, inspect, text, update
from sqlmodel import Session, col, select

from models import Event, Outbox, Patient, metadata
from scheduler import db, service
from scheduler import outbox as outbox_module
from scheduler.alerts import AlertPolicy
from scheduler.config import Settings, SmtpSettings
from scheduler.errors import BadInput
from scheduler.labs import result_codes
from scheduler.messages import Templates
from scheduler.outbox import Clock, deliver, purge_old_bodies, queue_due_messages
from scheduler.passes import local_today, roll_forward
from scheduler.planning import ROLL_FORWARD_BELOW_MONTHS, add_months
from scheduler.store import get_patient, load_record

# The server (not a database: the benchmark creates and drops its own), as for the tests.
PG_SERVER = (os.environ.get("COBALT_BENCH_POSTGRES") or os.environ.get("COBALT_TEST_POSTGRES")
             or "postgresql+psycopg://postgres@127.0.0.1:5432")
DEFAULT_NOW = "2026-11-24T09:00:00+00:00"  # a Tuesday, after send_time: every kind of message is due
ROLL_FORWARD_LATER_DAYS = 30  # (d) runs this much later, so every plan really gains a month
NO_CAP = 10**9  # (d): replan_per_pass raised so that one call rolls every plan forward
ROLLFORWARD_PLANS = 0  # (d): stop after this many plans in all (--rollforward-plans; 0: every plan)
EVENT_INDEXES = ("ix_event_planned_due", "ix_event_open_due", "ix_event_status_due", "ix_event_status_kind_due")

# Lab values a treated patient plausibly has (no alert is raised by them).
BASELINE = {"b12": "120", "hb": "10.5", "wbc": "6.0", "platelets": "240", "mcv": "108",
            "ldh": "480", "gastrin": "60", "if-antibodies": "negative", "folate": "12"}
FOLLOW_UP = {"b12": "420", "hb": "13.6", "wbc": "6.4", "platelets": "250", "mcv": "92",
             "reticulocytes": "3.1", "ldh": "210", "bilirubin": "9", "homocysteine": "8",
             "mma": "150", "gastrin": "60", "if-antibodies": "negative", "folate": "14",
             "egfr": "85"}
REPLICATED = ("patient", "regimen", "event", "dose", "lab_result", "decision", "alert", "audit")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_now(value: str) -> datetime:
    now = datetime.fromisoformat(value)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def bench_settings(url: str, workdir: Path) -> Settings:
    return Settings(database_url=url, smtp=SmtpSettings(outbox_dir="outbox"), base_dir=workdir)


# -- building the database ---------------------------------------------------------


def _lab_results(tests: str, baseline: bool) -> list[str]:
    values = BASELINE if baseline else FOLLOW_UP
    codes = result_codes(tuple(tests.split())) if tests else ()
    return [f"{c}={values.get(c, FOLLOW_UP.get(c, '1'))}" for c in codes] or ["b12=420"]


def _simulate(session: Any, ctx: service.Context, mrn: str, cutoff: date, skip_labs_after: date,
              end_loading_after: int) -> int:
    """Record what the clinic did for one patient up to ``cutoff``, in date order, through the
    service: every dose given on its due day, labs taken, reviews and decisions. Returns the
    number of actions."""
    patient = get_patient(session, mrn)
    actions = 0
    skipped: set[str] = set()
    while True:
        record = load_record(session, patient)
        todo = sorted(
            (e for e in record.events if e.status == "planned" and e.due <= cutoff and e.key not in skipped),
            key=lambda e: (e.due, {"dose": 0, "lab": 1, "review": 2}[e.kind], e.seq),
        )
        if not todo:
            return actions
        ev = todo[0]
        try:
            if ev.kind == "dose":
                service.give(session, ctx, mrn, ev.due)
            elif ev.kind == "lab":
                if ev.due > skip_labs_after:
                    skipped.add(ev.key)
                    continue
                service.record_lab(session, ctx, mrn, _lab_results(ev.tests, ev.label == "baseline"),
                                   on=ev.due, order=ev.label)
            elif ev.label == "response-gate":
                service.confirm_response(session, ctx, mrn, ev.due)
            elif (ev.due - record.regimens[0].start).days >= end_loading_after:
                service.end_loading(session, ctx, mrn, ev.due)
            else:
                service.review(session, ctx, mrn, ev.due)
        except BadInput:
            skipped.add(ev.key)
            continue
        actions += 1


def protocol_mix(rng: random.Random) -> tuple[str, int]:
    """A protocol and maintenance interval in a clinic's proportions: hydroxo every 3
    months 60 %, hydroxo-neuro 15 %, cyano 10 %, hydroxo every 2 months 15 %."""
    roll = rng.random()
    if roll < 0.15:
        return "hydroxo-neuro", 2
    if roll < 0.25:
        return "cyano", 1
    if roll < 0.40:
        return "hydroxo", 2
    return "hydroxo", 3


def enrol_templates(engine: Engine, settings: Settings, today: date, count: int, seed: int) -> int:
    """Enrol ``count`` patients through the service and record their history. Returns actions."""
    rng = random.Random(seed)
    ctx = service.Context(settings.clinic.calendar(), today, "bench",
                          AlertPolicy.from_mapping(settings.alerts))
    actions = 0
    for n in range(1, count + 1):
        mrn = f"T{n:06d}"
        protocol, months = protocol_mix(rng)
        # Most patients started over the last three years; some in the last six weeks (loading).
        if rng.random() < 0.08:
            start = today - timedelta(days=rng.randrange(0, 42))
        else:
            start = today - timedelta(days=rng.randrange(42, 3 * 365))
        # Most patients are up to date; some missed their latest doses or labs (overdue).
        cutoff = today - timedelta(days=1)
        if rng.random() < 0.10:
            cutoff = today - timedelta(days=rng.randrange(2, 30))
        skip_labs_after = cutoff if rng.random() < 0.85 else today - timedelta(days=rng.randrange(20, 200))
        with db.transaction(engine) as session:
            service.enroll(session, ctx, mrn=mrn, name=f"Template Patient {n}",
                           email=None if rng.random() < 0.08 else f"t{n}@patient.example",
                           protocol=protocol, start=start, neuro=protocol == "hydroxo-neuro",
                           maintenance_months=months)
            actions += 1 + _simulate(session, ctx, mrn, cutoff, skip_labs_after,
                                     end_loading_after=rng.choice((28, 56, 84, 120)))
            if rng.random() < 0.03:
                service.set_opt_out(session, ctx, mrn, True)
            if rng.random() < 0.02 and start < cutoff:
                service.discharge(session, ctx, mrn, "moved away", cutoff)
    return actions


def _columns(engine: Engine, table: str) -> list[str]:
    return [c.name for c in metadata.tables[table].columns]


def replicate(engine: Engine, templates: int, patients: int) -> None:
    """Copy the template rows set-based until there are ``patients`` patients: copy k of
    template patient t gets id t + k * templates; every other row keeps its table's id
    stride the same way. One INSERT ... SELECT per table, in bulk mode (``_bulk_load``)."""
    copies = math.ceil(patients / templates) - 1
    if copies <= 0:
        return
    with engine.connect() as conn:
        strides = {t: conn.execute(text(f"SELECT COALESCE(MAX(id), 0) FROM {t}")).scalar_one()
                   for t in REPLICATED}
    assert strides["patient"] == templates, "the template patients must have ids 1..templates"
    copies_cte = ("WITH RECURSIVE copies(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM copies "
                  "WHERE k < :copies) ")
    with _bulk_load(engine) as execute:
        for table in REPLICATED:
            cols = _columns(engine, table)
            exprs = []
            for c in cols:
                if c == "id":
                    exprs.append(f"t.id + copies.k * {strides[table]}")
                elif c == "patient_id":
                    exprs.append(f"t.patient_id + copies.k * {templates}")
                elif table == "patient" and c == "mrn":
                    exprs.append("t.mrn || '-' || CAST(copies.k AS VARCHAR(12))")
                elif table == "patient" and c == "email":
                    exprs.append(f"CASE WHEN t.email IS NULL THEN NULL ELSE 'p' || "
                                 f"CAST(t.id + copies.k * {templates} AS VARCHAR(12)) || "
                                 f"'@patient.example' END")
                elif table == "patient" and c == "name":
                    exprs.append(f"'Patient ' || CAST(t.id + copies.k * {templates} AS VARCHAR(12))")
                else:
                    exprs.append(f't."{c}"')
            key = "t.id" if table == "patient" else "t.patient_id"
            where = f"WHERE {key} + copies.k * {templates} <= :patients"
            if table == "audit":
                where += " AND t.patient_id IS NOT NULL"
            col_list = ", ".join(f'"{c}"' for c in cols)
            started = time.perf_counter()
            execute(f"{copies_cte}INSERT INTO {table} ({col_list}) SELECT {', '.join(exprs)} "
                    f"FROM {table} AS t CROSS JOIN copies {where}", {"copies": copies, "patients": patients})
            log(f"  replicated {table} in {time.perf_counter() - started:.1f} s")
        if engine.dialect.name == "postgresql":
            for table in REPLICATED + ("outbox",):
                execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)", {})


@contextmanager
def _bulk_load(engine: Engine) -> Iterator[Callable[[str, dict[str, Any]], None]]:
    """A bulk load as a database administrator makes one: the replicated tables' secondary
    indexes dropped and built again afterwards (one sorted build instead of millions of
    random inserts), no journal or fsync on SQLite, no foreign-key triggers on PostgreSQL.
    The schema afterwards is the migrated one (the same index definitions)."""
    names = ", ".join(f"'{t}'" for t in REPLICATED)
    if engine.dialect.name == "sqlite":
        import sqlite3

        engine.dispose()
        conn = sqlite3.connect(engine.url.database or "", isolation_level=None)
        try:
            indexes = conn.execute(
                f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                f"AND tbl_name IN ({names})").fetchall()
            for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-1000000",
                           "foreign_keys=OFF"):
                conn.execute(f"PRAGMA {pragma}")
            for name, _ in indexes:
                conn.execute(f'DROP INDEX "{name}"')

            def execute(sql: str, params: dict[str, Any]) -> None:
                conn.execute(sql, params)

            conn.execute("BEGIN")
            yield execute
            conn.execute("COMMIT")
            started = time.perf_counter()
            for _, sql in indexes:
                conn.execute(sql)
            log(f"  built {len(indexes)} indexes in {time.perf_counter() - started:.1f} s")
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        return
    with engine.begin() as conn:
        indexes = conn.execute(text(
            f"SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema() "
            f"AND tablename IN ({names}) AND indexname NOT IN (SELECT conname FROM pg_constraint)")).all()
        for name, _ in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
        conn.execute(text("SET LOCAL session_replication_role = replica"))  # no FK triggers
        conn.execute(text("SET LOCAL synchronous_commit = off"))

        def execute_pg(sql: str, params: dict[str, Any]) -> None:
            conn.execute(text(sql), params)

        yield execute_pg
        conn.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
        started = time.perf_counter()
        for _, sql in indexes:
            conn.execute(text(sql))
        log(f"  built {len(indexes)} indexes in {time.perf_counter() - started:.1f} s")


def settle_stamps(engine: Engine, now: datetime) -> None:
    """As in a running clinic, no event got its date after the pass's ``now``: the templates'
    ``due_set_at`` (the build's wall clock, which may be later than --now) is set to two days
    before ``now``, and those changes are not listed as news for the pass (``event_change``).
    Run on the templates, before replication."""
    from models import EventChange  # here: the script also measures code from before it

    with Session(engine) as session, session.begin():
        session.execute(update(Event).where(col(Event.due_set_at) > now)
                        .values(due_set_at=now - timedelta(days=2)))
        session.execute(delete(EventChange))


def spread_planned_through(engine: Engine, today: date) -> None:
    """As a running clinic has it: plans were made over the last month, so planned_through is
    spread over [threshold, threshold + 30 days]; one day's share (1/31) is below the threshold."""
    threshold = add_months(today, ROLL_FORWARD_BELOW_MONTHS)
    with engine.begin() as conn:
        for residue in range(31):
            conn.execute(
                text("UPDATE patient SET planned_through = :d WHERE status = 'active' AND id % 31 = :r"),
                {"d": threshold + timedelta(days=residue - 1), "r": residue},
            )


def build(url: str, settings: Settings, patients: int, templates: int, now: datetime,
          seed: int) -> dict[str, Any]:
    engine = db.make_engine(url)
    db.upgrade(engine)
    today = local_today(settings, now)
    templates = min(templates, patients)
    info: dict[str, Any] = {}
    started = time.perf_counter()
    actions = enrol_templates(engine, settings, today, templates, seed)
    info["templates_seconds"] = time.perf_counter() - started
    info["templates"] = templates
    info["service_actions"] = actions
    log(f"enrolled {templates} template patients through scheduler.service ({actions} actions) "
        f"in {info['templates_seconds']:.1f} s")
    settle_stamps(engine, now)
    started = time.perf_counter()
    replicate(engine, templates, patients)
    spread_planned_through(engine, today)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))  # what autovacuum does soon after a bulk load
    info["replicate_seconds"] = time.perf_counter() - started
    log(f"replicated to {patients} patients set-based (INSERT ... SELECT) in "
        f"{info['replicate_seconds']:.1f} s")
    info["method"] = (f"{templates} enrolled through scheduler.service, replicated set-based "
                      f"(INSERT ... SELECT) to {patients}")
    describe(engine, info)
    engine.dispose()
    return info


def describe(engine: Engine, info: dict[str, Any]) -> None:
    """What the built database holds: rows per table, its size, active patients, and the
    patients whose next planned dose is in loading or in maintenance."""
    info["rows"] = table_counts(engine)
    info["db_bytes"] = database_bytes(engine)
    with db.transaction(engine) as session:
        info["active"] = session.exec(
            select(func.count()).select_from(Patient).where(Patient.status == "active")).one()
        phases = session.exec(
            select(Event.phase, func.count(func.distinct(Event.patient_id)))
            .where(Event.status == "planned", Event.kind == "dose").group_by(Event.phase)).all()
        info["patients_with_next_dose"] = dict(phases)


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                for t in (*REPLICATED, "outbox")}


def database_bytes(engine: Engine) -> int:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
        page_size = conn.execute(text("PRAGMA page_size")).scalar_one()
        pages = conn.execute(text("PRAGMA page_count")).scalar_one()
        return int(page_size * pages)


# -- measuring (in a child process per step) ---------------------------------------


class Meter:
    """Wall time of named parts, and the process's peak RSS (and, with --tracemalloc, the
    peak of Python allocations) over the whole step."""

    def __init__(self, trace: bool) -> None:
        self.trace = trace
        self.parts: dict[str, float] = {}
        self.base_rss = _peak_rss()
        if trace:
            tracemalloc.start()

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.parts[name] = self.parts.get(name, 0.0) + time.perf_counter() - started

    def result(self, **extra: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": self.parts, "peak_rss_mb": _peak_rss() / 1024,
                               "rss_growth_mb": (_peak_rss() - self.base_rss) / 1024, **extra}
        if self.trace:
            out["py_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        return out


def _peak_rss() -> int:
    """KiB: this process's peak RSS. ``VmHWM`` on Linux, which starts afresh at exec;
    ``ru_maxrss`` keeps the parent's peak at the fork, so a step would report the
    parent's memory (the templates enrolled in it) instead of its own."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def step_worklist(engine: Engine, settings: Settings, now: datetime, meter: Meter) -> dict[str, Any]:
    today = local_today(settings, now)
    with meter.part("worklist today"), db.transaction(engine) as session:
        today_rows = sum(1 for _ in service.worklist(session, today))
    with meter.part("worklist +7 days"), db.transaction(engine) as session:
        week_rows, patients = 0, set()
        for row in service.worklist(session, today + timedelta(days=7)):  # streamed: no list of them all
            week_rows += 1
            patients.add(row.patient_id)
    return meter.result(rows_today=today_rows, rows_week=week_rows, patients_week=len(patients))


QUEUE_STEPS = {"_urgent_alerts": "alert", "_patient_reminders": None, "_overdue_notices": "overdue",
               "_digest": "digest"}


@contextmanager
def timed_queue_steps() -> Iterator[dict[str, list[float]]]:
    """Time each kind ``queue_due_messages`` queues, by wrapping its steps (it looks them
    up in ``scheduler.outbox`` when it calls them). kind -> [seconds, messages queued]."""
    found: dict[str, list[float]] = {}
    originals = {name: getattr(outbox_module, name) for name in QUEUE_STEPS}

    def wrap(name: str, step: Callable[..., int]) -> Callable[..., int]:
        def timed(*args: Any) -> int:
            kind = QUEUE_STEPS[name] or args[3]  # _patient_reminders(session, clock, templates, kind)
            started = time.perf_counter()
            queued = step(*args)
            entry = found.setdefault(kind, [0.0, 0])
            entry[0] += time.perf_counter() - started
            entry[1] += queued
            return queued
        return timed

    for name, step in originals.items():
        setattr(outbox_module, name, wrap(name, step))
    try:
        yield found
    finally:
        for name, step in originals.items():
            setattr(outbox_module, name, step)


def _pass(engine: Engine, settings: Settings, now: datetime, meter: Meter) -> dict[str, Any]:
    """What ``run_pass`` does, part by part."""
    with timed_statements(engine) as statements:
        with meter.part("roll-forward"):
            replanned = roll_forward(engine, settings, now)
        with meter.part("queue"), timed_queue_steps() as queue_steps:
            queued = queue_due_messages(engine, settings, now)
        with meter.part("deliver"):
            delivery = deliver(engine, settings, now)
        with meter.part("purge"), db.transaction(engine) as purge_session:
            purged = purge_old_bodies(purge_session, settings, now)
    with db.transaction(engine) as session:
        digest = session.exec(select(func.max(func.length(Outbox.body_html)))
                              .where(Outbox.kind == "digest")).one()
        kinds = dict(session.exec(select(Outbox.kind, func.count()).group_by(Outbox.kind)).all())
    return meter.result(replanned=replanned, queued=queued, sent=delivery.sent,
                        skipped=delivery.skipped, failed=delivery.failed, retried=delivery.retried,
                        purged=purged, outbox_by_kind=kinds, digest_html_bytes=digest,
                        queue_steps=queue_steps, statements=statements)


def step_pass(engine: Engine, settings: Settings, now: datetime, meter: Meter) -> dict[str, Any]:
    return _pass(engine, settings, now, meter)


def step_rollforward(engine: Engine, settings: Settings, now: datetime, meter: Meter) -> dict[str, Any]:
    later = now + timedelta(days=ROLL_FORWARD_LATER_DAYS)
    old = local_today(settings, now) - timedelta(days=400)
    with db.transaction(engine) as session:
        events_before = session.exec(select(func.count()).select_from(Event)).one()
    with meter.part("UPDATE planned_through"), engine.begin() as conn:
        short = conn.execute(text("UPDATE patient SET planned_through = :d WHERE status = 'active'"),
                             {"d": old}).rowcount
    rest_cap = NO_CAP if not ROLLFORWARD_PLANS else max(ROLLFORWARD_PLANS - settings.scheduler.replan_per_pass, 0)
    uncapped = settings.model_copy(
        update={"scheduler": settings.scheduler.model_copy(update={"replan_per_pass": rest_cap})})
    with timed_statements(engine) as statements:
        # One call as a pass makes it: it stops after replan_per_pass plans (the next pass goes on).
        with meter.part("roll-forward, one pass"):
            one_pass = roll_forward(engine, settings, later)
        # The rest, with the cap raised: the whole roll-forward, as consecutive passes would do it.
        with meter.part("roll-forward, the rest"):
            rest = roll_forward(engine, uncapped, later) if rest_cap else 0
    with db.transaction(engine) as session:
        events_after = session.exec(select(func.count()).select_from(Event)).one()
        days = session.exec(
            select(Patient.planned_through, func.count()).where(Patient.status == "active")
            .group_by(Patient.planned_through).order_by(func.count().desc())).all()
    replanned = one_pass + rest
    seconds = meter.parts["roll-forward, one pass"] + meter.parts["roll-forward, the rest"]
    return meter.result(short=short, replan_per_pass=settings.scheduler.replan_per_pass,
                        one_pass=one_pass, replanned=replanned,
                        per_second=replanned / seconds if seconds else 0, full_seconds=seconds,
                        events_added=events_after - events_before, at=later.isoformat(),
                        planned_through_days=len(days),
                        planned_through_top=[(str(d), n) for d, n in days[:3]], statements=statements)


ROLL_FORWARD_PICK = "roll-forward: patients whose plan runs short"
CLAIM = "deliver: claim queued outbox rows"
CLAIM_LEASES = "deliver: claim outbox rows whose lease ran out"
PURGE = "purge: sent bodies older than outbox_keep_days"
# The index each explained statement should read through (any of them); event queries: EVENT_INDEXES.
EXPLAINED_INDEX = {ROLL_FORWARD_PICK: ("ix_patient_planned_through",),
                   CLAIM: ("ix_outbox_status_next_attempt_at_id",),
                   CLAIM_LEASES: ("ix_outbox_status_next_attempt_at_id",), PURGE: ("ix_outbox_created_at_body_kept",)}
EXPLAINED = ("worklist", "roll-forward", "alert check", "queue", "digest", "deliver", "purge")


def label(statement: str) -> str:
    """A name for a statement Cobalt runs: the ones that matter by purpose, the rest by table."""
    s = " ".join(statement.split())
    if s.startswith("SELECT"):
        if "planned_through <" in s:
            return ROLL_FORWARD_PICK
        if "FROM patient JOIN event" in s or "FROM patient WHERE patient.id IN (SELECT event.patient_id" in s:
            return "alert check: response gates due (due_for_alert_check)"
        if "FROM event JOIN patient" in s:
            if "outbox" not in s:
                if "LIMIT" not in s and "count(" not in s.lower():
                    return "worklist (service.worklist)"
                section = ("due today" if "event.due = " in s else "overdue" if "event.due < " in s
                           else "upcoming")
                return f"digest: {section}, {'count' if 'count(' in s.lower() else 'first rows'}"
            if "event.due =" in s:
                return "queue: dose-reminder candidates"
            if "patient.email IS NOT NULL" in s:
                return "queue: lab-reminder candidates"
            return "queue: overdue candidates"
        if s.startswith("SELECT outbox.id FROM outbox WHERE") and "outbox.status = " in s:
            return CLAIM_LEASES if "claimed_until <" in s else CLAIM
    if s.startswith("UPDATE outbox SET body_text"):
        return PURGE
    match = re.match(r"(SELECT|INSERT INTO|UPDATE|DELETE FROM)\b.*?(?:\bFROM\b\s+)?\"?(\w+)", s)
    if match and match.group(1) == "SELECT":
        table = re.search(r"\bFROM\s+\"?(\w+)", s)
        return f"SELECT {table.group(1) if table else '?'}"
    return f"{match.group(1)} {match.group(2)}" if match else s.split()[0]


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every single SELECT the engine runs meanwhile, and the purge's UPDATE (explained in a
    transaction that is rolled back), with their (already converted) parameters."""
    found: list[tuple[str, Any]] = []

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE OUTBOX SET BODY_TEXT")) and not many:
            found.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    try:
        yield found
    finally:
        event.remove(engine, "before_cursor_execute", listen)


@contextmanager
def timed_statements(engine: Engine) -> Iterator[dict[str, list[float]]]:
    """Count and time the statements the engine runs meanwhile, by ``label``."""
    found: dict[str, list[float]] = {}

    def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        took = time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())
        entry = found.setdefault(label(statement), [0, 0.0])
        entry[0] += 1
        entry[1] += took

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield found
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def explain(engine: Engine, statement: str, parameters: Any) -> str:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            return "\n".join(f"{r[3]}" for r in rows)
        rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters).all()
        conn.rollback()
        return "\n".join(r[0] for r in rows)


def _full_scans(plan: str) -> list[str]:
    """Tables read whole: ``SCAN t`` (SQLite, also ``SCAN t USING INDEX``), ``Seq Scan on t``."""
    found = re.findall(r"(?:^|\s)SCAN (\w+)|Seq Scan on (\w+)", plan, flags=re.M)
    return sorted({a or b for a, b in found})


def step_explain(engine: Engine, settings: Settings, now: datetime, meter: Meter) -> dict[str, Any]:
    """The plans of the statements the worklist and a pass (roll-forward, queueing, delivery,
    purge) run, captured from the engine during a pass at ``now`` that has nothing left to do.
    The digest of ``now`` is already queued, so its statements are captured from the next
    day's digest, built in a transaction that is rolled back."""
    today = local_today(settings, now)
    with captured(engine) as statements:
        with db.transaction(engine) as session:
            for _ in service.worklist(session, today):
                pass
        roll_forward(engine, settings, now)
        queue_due_messages(engine, settings, now)
        deliver(engine, settings, now)
        with db.transaction(engine) as purge_session:
            purge_old_bodies(purge_session, settings, now)
        session = Session(engine, expire_on_commit=False)
        try:
            templates = Templates(settings.templates_path) if settings.templates_path else Templates()
            outbox_module._digest(session, Clock(now + timedelta(days=1), settings), templates)
        finally:
            session.rollback()
            session.close()
    plans: dict[str, dict[str, Any]] = {}
    for statement, parameters in statements:
        what = label(statement)
        if not what.startswith(EXPLAINED) or what in plans:
            continue
        plan = explain(engine, statement, parameters)
        expected = EXPLAINED_INDEX.get(what, EVENT_INDEXES)
        used = sorted(set(re.findall(r"\b(?:ix|pk)_\w+", plan)))
        plans[what] = {"sql": " ".join(statement.split()), "plan": plan, "expected": list(expected),
                       "indexes": used, "full_scans": _full_scans(plan),
                       "uses_index": any(i in used for i in expected) if expected else None}
    return meter.result(plans=plans)


STEPS: dict[str, Callable[[Engine, Settings, datetime, Meter], dict[str, Any]]] = {
    "worklist": step_worklist,
    "pass": step_pass,
    "rollforward": step_rollforward,
    "explain": step_explain,
}


def run_step(name: str, url: str, workdir: Path, now: datetime, trace: bool,
             smtp_port: int | None = None, senders: int | None = None) -> dict[str, Any]:
    """Runs in the child: set up, then measure only the step."""
    settings = bench_settings(url, workdir)
    if smtp_port:
        settings = settings.model_copy(update={"smtp": settings.smtp.model_copy(
            update={"host": "127.0.0.1", "port": smtp_port})})
    if senders:
        settings = settings.model_copy(update={"scheduler": settings.scheduler.model_copy(
            update={"senders": senders})})
    engine = db.make_engine(url)
    db.ensure_schema(engine)
    meter = Meter(trace)
    try:
        return STEPS[name](engine, settings, now, meter)
    finally:
        engine.dispose()


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def in_child(step: str, url: str, workdir: Path, now: datetime, trace: bool,
             extra: list[str] | None = None, code: Path | None = None) -> dict[str, Any]:
    """Run ``step`` in a child process (``code``: with that source tree's ``scheduler``)."""
    cmd = [sys.executable, __file__, "--step", step, "--url", url, "--workdir", str(workdir),
           "--now", now.isoformat()] + (["--tracemalloc"] if trace else []) + (extra or [])
    env = None
    if code is not None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(code), str(Path(__file__).resolve().parent)])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"step {step} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- --quick: the ratios of issue 14 at N and 10N, one run ---------------------------

QUICK_N = 20_000
IMPORT_PATIENTS = 10_000  # patients in the CSV given to `cobalt import patients`
EMPTY_PASSES = 15  # empty passes run in a row; the median is reported (a few ms each: 5 were too few on a busy machine)
# After both first passes, the empty pass is measured again in rounds that take turns, N then
# 10N, each a fresh process: a drift of the machine (1-2 ms of a 10 ms pass) then falls on
# both sizes alike instead of on whichever ran second. The first passes of a process warm it.
EMPTY_ROUNDS = 4
EMPTY_WARM_UP = 3


def write_import_csv(path: Path, patients: int, today: date, seed: int) -> None:
    """New patients as a clinic brings them in: the protocol mix of the templates, starts over
    the last 60 days, most with an e-mail address."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        f.write("mrn,name,email,protocol,start,neuro,maintenance_months\n")
        for n in range(1, patients + 1):
            protocol, months = protocol_mix(rng)
            start = today - timedelta(days=rng.randrange(0, 60))
            email = "" if rng.random() < 0.08 else f"i{n}@patient.example"
            neuro = "true" if protocol == "hydroxo-neuro" else "false"
            f.write(f"I{n:07d},Imported Patient {n},{email},{protocol},{start},{neuro},{months}\n")


def measure_import(workdir: Path, patients: int, seed: int, *, url: str | None = None,
                   code: Path | None = None, name: str = "import") -> dict[str, Any]:
    """``cobalt import patients`` run as the real command (its own process) on a generated CSV
    into a fresh, migrated database (SQLite unless ``url``); then the same event rows by plain
    executemany into a fresh copy of the schema (migrated, with its indexes), in one transaction.

    ``code``: run the command from that source tree instead (a checkout of another commit), so
    two versions are measured side by side in one run."""
    folder = workdir / name
    folder.mkdir()
    url = url or f"sqlite:///{folder / 'import.db'}"
    (folder / "cobalt.toml").write_text(f'database_url = "{url}"\n', encoding="utf-8")
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    cobalt = [sys.executable, "-c", "import sys; from scheduler.cli import main; sys.exit(main())"]
    subprocess.run([*cobalt, "db", "upgrade"], cwd=folder, check=True, capture_output=True, env=env)
    csv_path = folder / "patients.csv"
    write_import_csv(csv_path, patients, date.today(), seed)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    proc = subprocess.run([*cobalt, "import", "patients", str(csv_path), "--json"], cwd=folder,
                          capture_output=True, text=True, check=False, env=env)
    import_seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"cobalt import failed:\n{proc.stderr}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    import_rss = max(before, usage.ru_maxrss) / 1024
    import_cpu = usage.ru_utime + usage.ru_stime - cpu_before  # less at the mercy of a busy machine
    source = db.make_engine(url)
    with source.connect() as conn:
        event_rows = [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM event").all()]
        event_cols = list(conn.exec_driver_sql("SELECT * FROM event LIMIT 0").keys())
        patient_rows = [tuple(r) for r in conn.exec_driver_sql("SELECT * FROM patient").all()]
        patient_cols = list(conn.exec_driver_sql("SELECT * FROM patient LIMIT 0").keys())
    source.dispose()
    postgres = url.startswith("postgresql")
    if postgres:
        raw_db = f"{url}_raw"
        admin = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{raw_db.rsplit("/", 1)[1]}"'))
        raw_url = raw_db
    else:
        raw_url = f"sqlite:///{folder / 'raw.db'}"
    raw = db.make_engine(raw_url)
    db.upgrade(raw)
    mark = "%s" if postgres else "?"

    def insert_sql(table: str, cols: list[str]) -> str:
        return (f"INSERT INTO {table} ({', '.join(cols)}) "
                f"VALUES ({', '.join(mark for _ in cols)})")

    dbapi = raw.raw_connection()
    try:
        cursor = dbapi.cursor()
        if not postgres:
            cursor.execute("BEGIN")  # the connection is in autocommit: BEGIN ... COMMIT by hand
        cursor.executemany(insert_sql("patient", patient_cols), patient_rows)  # not timed
        dbapi.commit() if postgres else cursor.execute("COMMIT")
        started, cpu_started = time.perf_counter(), time.process_time()
        if not postgres:
            cursor.execute("BEGIN")
        cursor.executemany(insert_sql("event", event_cols), event_rows)
        dbapi.commit() if postgres else cursor.execute("COMMIT")
        raw_seconds = time.perf_counter() - started
        raw_cpu = time.process_time() - cpu_started
    finally:
        dbapi.close()
        raw.dispose()
        if postgres:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{raw_db.rsplit("/", 1)[1]}" WITH (FORCE)'))
            admin.dispose()
    return {"patients": patients, "event_rows": len(event_rows), "import_seconds": import_seconds,
            "raw_seconds": raw_seconds, "import_rows_per_s": len(event_rows) / import_seconds,
            "raw_insert_rows_per_s": len(event_rows) / raw_seconds, "import_peak_rss_mb": import_rss,
            "import_cpu_seconds": import_cpu, "raw_cpu_seconds": raw_cpu, "summary": json.loads(proc.stdout)}


def only_import(args: argparse.Namespace) -> int:
    """--only import: the import-vs-raw measurement alone (``--compare TREE``: that source tree
    first, then this one, each into a fresh database, side by side)."""
    workdir = Path(tempfile.mkdtemp(prefix="cobalt-bench-import-"))
    runs: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.compare:
        runs.insert(0, (str(args.compare), args.compare.resolve()))
    results: dict[str, Any] = {"backend": args.backend, "machine": machine(), "runs": {}}
    try:
        for n, (title, code) in enumerate(runs):
            with database(args.backend, workdir, False) as url:
                imp = measure_import(workdir, args.import_patients, args.seed,
                                     url=None if args.backend == "sqlite" else url, code=code, name=f"run{n}")
            results["runs"][title] = imp
            log(f"{title}: {imp['event_rows']:,} event rows; import {imp['import_seconds']:.2f} s "
                f"({imp['import_rows_per_s']:,.0f} rows/s), raw {imp['raw_seconds']:.2f} s "
                f"({imp['raw_insert_rows_per_s']:,.0f} rows/s): ratio "
                f"{imp['import_rows_per_s'] / imp['raw_insert_rows_per_s']:.2f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nimport vs raw executemany, {args.backend}, {args.import_patients:,} patients ({machine()})")
    print("(ratio: raw time / import time, by the wall clock; CPU: the same by CPU seconds, the import's "
          "child process and the raw insert's own, less at the mercy of a busy machine; on PostgreSQL the "
          "server's CPU is not counted)")
    print(f"{'code':<32} {'event rows':>10} {'import s':>9} {'rows/s':>8} {'raw s':>6} {'raw rows/s':>10} "
          f"{'ratio':>5} {'import CPU':>10} {'raw CPU':>8} {'CPU ratio':>9}")
    for title, imp in results["runs"].items():
        print(f"{title[-32:]:<32} {imp['event_rows']:>10,} {imp['import_seconds']:>9.2f} "
              f"{imp['import_rows_per_s']:>8,.0f} {imp['raw_seconds']:>6.2f} {imp['raw_insert_rows_per_s']:>10,.0f} "
              f"{imp['import_rows_per_s'] / imp['raw_insert_rows_per_s']:>5.2f} {imp['import_cpu_seconds']:>10.2f} "
              f"{imp['raw_cpu_seconds']:>8.2f} {imp['raw_cpu_seconds'] / imp['import_cpu_seconds']:>9.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


OUTBOX_COMPARED = ("id", "dedupe_key", "kind", "recipient", "patient_id", "event_id", "event_due", "message_id",
                   "subject", "body_text", "body_html", "status", "attempts", "next_attempt_at", "not_after",
                   "reported", "created_at")


def step_queue(engine: Engine, settings: Settings, now: datetime, meter: Meter) -> dict[str, Any]:
    """--only queue, in the child: the first pass's roll-forward (not timed), then its
    ``queue_due_messages``, timed by the wall clock and by this process's CPU; then a hash
    of every outbox row and every told mark, so two versions can be shown to queue the
    same bytes."""
    roll_forward(engine, settings, now)
    with timed_queue_steps() as queue_steps:
        started, cpu = time.perf_counter(), time.process_time()
        with meter.part("queue"):
            queued = queue_due_messages(engine, settings, now)
        cpu_seconds = time.process_time() - cpu
        wall = time.perf_counter() - started
    rows = hashlib.sha256()
    marks = hashlib.sha256()
    with engine.connect() as conn:
        for row in conn.execute(text(f"SELECT {', '.join(OUTBOX_COMPARED)} FROM outbox ORDER BY id")):
            rows.update(repr(tuple(row)).encode())
        for row in conn.execute(text("SELECT id, told FROM event WHERE told <> 0 ORDER BY id")):
            marks.update(repr(tuple(row)).encode())
    return meter.result(queued=queued, queue_seconds=wall, queue_cpu_seconds=cpu_seconds,
                        queue_steps=queue_steps, outbox_sha256=rows.hexdigest(), told_sha256=marks.hexdigest())


STEPS["queue"] = step_queue


def only_queue(args: argparse.Namespace, now: datetime) -> int:
    """--only queue: the first pass's queueing at N on SQLite (``--db FILE``: a database built
    before with ``--build-only``, else one built here), each run in a child process on a fresh
    copy of it; ``--compare TREE``: that source tree too, the two taking turns, ``--rounds``
    times each. Prints the medians and whether both versions queued the same rows."""
    workdir = Path(tempfile.mkdtemp(prefix="cobalt-bench-queue-"))
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.compare:
        trees.insert(0, (str(args.compare), args.compare.resolve()))
    results: dict[str, Any] = {"backend": "sqlite", "machine": machine(), "now": now.isoformat(), "runs": {}}
    try:
        base = workdir / "base.db"
        if args.db:
            shutil.copyfile(args.db, base)
        else:
            log(f"building {args.patients:,} patients")
            build(f"sqlite:///{base}", bench_settings(f"sqlite:///{base}", workdir), args.patients,
                  args.templates, now, args.seed)
        engine = db.make_engine(f"sqlite:///{base}")
        db.upgrade(engine)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        results["rows"] = table_counts(engine)
        engine.dispose()
        for round_ in range(args.rounds):
            for title, code in trees:
                copy = workdir / "run.db"
                shutil.copyfile(base, copy)
                env = dict(os.environ)
                if code is not None:
                    env["PYTHONPATH"] = str(code)
                cmd = [sys.executable, __file__, "--step", "queue", "--url", f"sqlite:///{copy}",
                       "--workdir", str(workdir), "--now", now.isoformat()]
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
                if proc.returncode != 0:
                    raise SystemExit(f"queue step failed ({title}):\n{proc.stderr}")
                run = json.loads(proc.stdout.strip().splitlines()[-1])
                results["runs"].setdefault(title, []).append(run)
                log(f"round {round_ + 1}, {title}: {run['queued']:,} queued in {run['queue_seconds']:.2f} s "
                    f"(CPU {run['queue_cpu_seconds']:.2f} s)")
                copy.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nqueue_due_messages, the first pass at {now.isoformat()}, SQLite, "
          f"{results['rows']['patient']:,} patients ({machine()}); median of {args.rounds} runs each")
    print(f"{'code':<32} {'queued':>7} {'wall s':>7} {'msgs/s':>7} {'CPU s':>6} {'msgs/CPU s':>10}  "
          "per kind: wall s (messages)")
    hashes = set()
    for title, runs in results["runs"].items():
        wall, cpu = _median([r["queue_seconds"] for r in runs]), _median([r["queue_cpu_seconds"] for r in runs])
        queued = runs[0]["queued"]
        kinds = {k: _median([r["queue_steps"][k][0] for r in runs if k in r["queue_steps"]])
                 for k in runs[0]["queue_steps"]}
        per_kind = ", ".join(f"{k} {t:.2f} ({runs[0]['queue_steps'][k][1]})" for k, t in kinds.items())
        results["runs"][title] = {"runs": runs, "queue_seconds": wall, "queue_cpu_seconds": cpu,
                                  "queue_msgs_per_s": queued / wall, "queue_msgs_per_cpu_s": queued / cpu}
        print(f"{title[-32:]:<32} {queued:>7,} {wall:>7.2f} {queued / wall:>7,.0f} {cpu:>6.2f} "
              f"{queued / cpu:>10,.0f}  {per_kind}")
        hashes.update((r["outbox_sha256"], r["told_sha256"]) for r in runs)
    print("outbox rows and told marks: " + ("the same in every run" if len(hashes) == 1 else "DIFFERENT"))
    results["same_rows"] = len(hashes) == 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if len(hashes) == 1 else 1


def step_deliver(engine: Engine, settings: Settings, now: datetime, meter: Meter) -> dict[str, Any]:
    """``deliver`` alone, through the SMTP server of ``--smtp-port``: wall time and the CPU time
    of this process (all its senders' threads)."""
    started, cpu = time.perf_counter(), time.process_time()
    with meter.part("deliver"):
        delivery = deliver(engine, settings, now)
    cpu = time.process_time() - cpu
    seconds = time.perf_counter() - started
    return meter.result(sent=delivery.sent, skipped=delivery.skipped, failed=delivery.failed,
                        retried=delivery.retried, server_down=delivery.server_down,
                        deliver_seconds=seconds, deliver_cpu_seconds=cpu,
                        senders=settings.scheduler.senders)


STEPS["deliver"] = step_deliver


class CountingSink(SmtpSink):
    """The benchmark's mail server: aiosmtpd, as the tests' sink, but it keeps each message's
    bytes and counts them instead of parsing them with the ``email`` package (which cost the
    sink, on the same two cores, more than the sender spends on a message)."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[bytes] = []

    def _record(self, session: Any, envelope: Any) -> None:
        with self._lock:
            self.kept.append(envelope.original_content)

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self.kept.clear()


def _reset_outbox(url: str, now: datetime) -> None:
    """Every message the pass queued back to queued, as it was before the first delivery."""
    engine = db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET status = 'queued', attempts = 0, sent_at = NULL, "
                              "claimed_by = NULL, claimed_until = NULL, last_error = NULL, "
                              "next_attempt_at = :now WHERE id IN (SELECT id FROM bench_queued)"),
                         {"now": now})
            conn.execute(text("DELETE FROM mail_server"))
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE outbox"))
    finally:
        engine.dispose()


def only_deliver(args: argparse.Namespace, now: datetime) -> int:
    """--only deliver: the first pass's messages at N queued once, then delivered through a local
    aiosmtpd server by each code tree (``--compare TREE`` first, then this one) with 1 and then
    ``--senders`` senders, the outbox put back to queued before each run. The server runs in this
    process (``--sink count``: counts and keeps the bytes; ``parse``: the tests' sink)."""
    workdir = Path(tempfile.mkdtemp(prefix="cobalt-bench-deliver-"))
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.compare:
        trees.insert(0, (str(args.compare), args.compare.resolve()))
    senders = sorted({1, args.senders})
    results: dict[str, Any] = {"backend": args.backend, "patients": args.patients, "sink": args.sink,
                               "machine": machine(), "runs": []}
    try:
        with database(args.backend, workdir, False, args.db) as url:
            settings = bench_settings(url, workdir)
            if existing_build(url) is None:
                results["build"] = build(url, settings, args.patients, args.templates, now, args.seed)
            engine = db.make_engine(url)
            if "bench_queued" not in inspect(engine).get_table_names():  # else: queued by an earlier run (--db)
                roll_forward(engine, settings, now)
                queue_due_messages(engine, settings, now)
                with engine.begin() as conn:
                    conn.execute(text("CREATE TABLE bench_queued AS SELECT id FROM outbox WHERE status = 'queued'"))
            with engine.connect() as conn:
                results["queued"] = conn.execute(text("SELECT COUNT(*) FROM bench_queued")).scalar_one()
            engine.dispose()
            log(f"{results['queued']:,} messages queued to deliver")
            sink = CountingSink() if args.sink == "count" else SmtpSink()
            sink.start()
            try:
                for _ in range(args.repeat):
                    for title, code in trees:
                        for n in senders:
                            _reset_outbox(url, now)
                            sink.clear()
                            usage = resource.getrusage(resource.RUSAGE_SELF)
                            sink_cpu = usage.ru_utime + usage.ru_stime
                            r = in_child("deliver", url, workdir, now, False,
                                         ["--smtp-port", str(sink.port), "--senders", str(n)], code=code)
                            usage = resource.getrusage(resource.RUSAGE_SELF)
                            r["sink_cpu_seconds"] = usage.ru_utime + usage.ru_stime - sink_cpu
                            r["received"] = len(sink.kept) if isinstance(sink, CountingSink) else len(sink.messages)
                            r["tree"] = title
                            r["msgs_per_s"] = r["sent"] / r["deliver_seconds"]
                            results["runs"].append(r)
                            log(f"{title}, {n} sender(s): {r['sent']:,} sent in {r['deliver_seconds']:.2f} s "
                                f"= {r['msgs_per_s']:,.0f}/s; CPU {r['deliver_cpu_seconds']:.2f} s "
                                f"({r['deliver_cpu_seconds'] / max(r['sent'], 1) * 1000:.2f} ms a message), "
                                f"sink CPU {r['sink_cpu_seconds']:.2f} s; {r['received']:,} received")
            finally:
                sink.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ndeliver through SMTP, {args.backend}, N = {args.patients:,}, sink {args.sink} ({machine()})")
    print("(CPU: the delivering process's, all senders; sink CPU: the server's, in this process)")
    print(f"{'code':<32} {'senders':>7} {'sent':>6} {'seconds':>7} {'msgs/s':>7} {'CPU s':>6} "
          f"{'CPU ms/msg':>10} {'sink CPU s':>10}")
    for r in results["runs"]:
        print(f"{r['tree'][-32:]:<32} {r['senders']:>7} {r['sent']:>6,} {r['deliver_seconds']:>7.2f} "
              f"{r['msgs_per_s']:>7,.0f} {r['deliver_cpu_seconds']:>6.2f} "
              f"{r['deliver_cpu_seconds'] / max(r['sent'], 1) * 1000:>10.2f} {r['sink_cpu_seconds']:>10.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def step_quick_pass(engine: Engine, settings: Settings, now: datetime, meter: Meter) -> dict[str, Any]:
    """The first pass at ``now`` (queueing timed, delivery timed through SMTP when a server is
    set, else the queued rows are marked sent by one UPDATE), then EMPTY_PASSES passes with
    nothing to do, as ``run_pass`` makes them; their statements are timed and explained."""
    from scheduler.passes import run_pass

    with meter.part("roll-forward"):
        replanned = roll_forward(engine, settings, now)
    queue_cpu = time.process_time()
    with meter.part("queue"), timed_queue_steps() as queue_steps:
        queued = queue_due_messages(engine, settings, now)
    queue_cpu = time.process_time() - queue_cpu
    sent = 0
    if settings.smtp.host:
        with meter.part("deliver"):
            delivery = deliver(engine, settings, now)
        sent = delivery.sent
    else:
        with meter.part("mark sent"), engine.begin() as conn:
            sent = conn.execute(text("UPDATE outbox SET status = 'sent', sent_at = :now, "
                                     "claimed_until = NULL, claimed_by = NULL WHERE status = 'queued'"),
                                {"now": now}).rowcount
    empty: list[float] = []
    empty_cpu: list[float] = []  # this process's CPU: what the pass computes, without the waits (fsync)
    reports = []
    for _ in range(EMPTY_PASSES - 1):
        started, cpu = time.perf_counter(), time.process_time()
        reports.append(run_pass(engine, settings, now))
        empty.append(time.perf_counter() - started)
        empty_cpu.append(time.process_time() - cpu)
    with timed_statements(engine) as statements, captured(engine) as selects:
        started, cpu = time.perf_counter(), time.process_time()
        reports.append(run_pass(engine, settings, now))
        empty.append(time.perf_counter() - started)
        empty_cpu.append(time.process_time() - cpu)
    plans: dict[str, str] = {}
    for statement, parameters in selects:
        what = label(statement)
        if what not in plans:
            plans[what] = " ".join(statement.split())[:300] + "\n" + explain(engine, statement, parameters)
    busy = [str(r) for r in reports if r.replanned or r.queued or r.sent or r.skipped or r.failed]
    return meter.result(replanned=replanned, queued=queued, sent=sent, queue_cpu_seconds=queue_cpu,
                        queue_steps=queue_steps,
                        empty_pass_ms=sorted(empty)[len(empty) // 2] * 1000,
                        empty_pass_all_ms=[t * 1000 for t in empty], empty_pass_did=busy,
                        empty_pass_cpu_ms=sorted(empty_cpu)[len(empty_cpu) // 2] * 1000,
                        statements=statements, plans=plans)


STEPS["quickpass"] = step_quick_pass


def step_empty_passes(engine: Engine, settings: Settings, now: datetime, meter: Meter) -> dict[str, Any]:
    """One of --quick's rounds: EMPTY_WARM_UP + EMPTY_PASSES passes with nothing to do, in
    this fresh process; the warm-up ones are not counted."""
    from scheduler.passes import run_pass

    walls: list[float] = []
    cpus: list[float] = []
    busy = []
    for n in range(EMPTY_WARM_UP + EMPTY_PASSES):
        started, cpu = time.perf_counter(), time.process_time()
        report = run_pass(engine, settings, now)
        if n >= EMPTY_WARM_UP:
            walls.append((time.perf_counter() - started) * 1000)
            cpus.append((time.process_time() - cpu) * 1000)
        if report.replanned or report.queued or report.sent or report.skipped or report.failed:
            busy.append(str(report))
    return meter.result(empty_pass_all_ms=walls, empty_pass_cpu_all_ms=cpus, empty_pass_did=busy)


STEPS["emptypasses"] = step_empty_passes


def quick(args: argparse.Namespace, now: datetime) -> int:
    """--quick: SQLite at N and 10N (one template set, replicated twice), the import and the raw
    insert, the first pass's queueing and SMTP delivery at N, the empty pass at N and 10N."""
    n = args.patients
    workdir = Path(tempfile.mkdtemp(prefix="cobalt-bench-quick-"))
    results: dict[str, Any] = {"backend": "sqlite", "patients": n, "patients_10x": 10 * n,
                               "now": now.isoformat(), "machine": machine()}
    try:
        log(f"importing {args.import_patients} patients with `cobalt import patients`")
        imp = measure_import(workdir, args.import_patients, args.seed)
        results["import"] = imp
        log(f"  {imp['event_rows']:,} event rows: import {imp['import_seconds']:.1f} s, "
            f"raw executemany {imp['raw_seconds']:.2f} s")
        templates_db = workdir / "templates.db"
        settings = bench_settings(f"sqlite:///{templates_db}", workdir)
        engine = db.make_engine(f"sqlite:///{templates_db}")
        db.upgrade(engine)
        started = time.perf_counter()
        actions = enrol_templates(engine, settings, local_today(settings, now), args.templates, args.seed)
        settle_stamps(engine, now)
        engine.dispose()
        log(f"enrolled {args.templates} templates ({actions} actions) in {time.perf_counter() - started:.0f} s")
        sink = CountingSink().start()  # counts and keeps the bytes: see --only deliver --sink parse
        try:
            for key, patients in (("at_n", n), ("at_10n", 10 * n)):
                path = workdir / f"{key}.db"
                shutil.copyfile(templates_db, path)
                url = f"sqlite:///{path}"
                engine = db.make_engine(url)
                started = time.perf_counter()
                replicate(engine, args.templates, patients)
                spread_planned_through(engine, local_today(settings, now))
                with engine.begin() as conn:
                    conn.exec_driver_sql("ANALYZE")
                counts = table_counts(engine)
                engine.dispose()
                log(f"replicated to {patients:,} patients in {time.perf_counter() - started:.0f} s")
                smtp = ["--smtp-port", str(sink.port)] if key == "at_n" else []
                results[key] = in_child("quickpass", url, workdir, now, False, smtp)
                results[key]["rows"] = counts
                r = results[key]
                log(f"  pass: queued {r['queued']:,}, sent {r['sent']:,}; empty pass "
                    f"{r['empty_pass_ms']:.0f} ms (runs: {', '.join(f'{t:.0f}' for t in r['empty_pass_all_ms'])})")
            results["smtp_received"] = len(sink.kept)
        finally:
            sink.stop()
        pooled: dict[str, dict[str, list[float]]] = {key: {"wall": [], "cpu": []} for key in ("at_n", "at_10n")}
        for round_ in range(EMPTY_ROUNDS):
            for key in pooled:
                r = in_child("emptypasses", f"sqlite:///{workdir / f'{key}.db'}", workdir, now, False)
                if r["empty_pass_did"]:
                    raise SystemExit(f"an empty pass had work to do: {r['empty_pass_did'][0]}")
                pooled[key]["wall"] += r["empty_pass_all_ms"]
                pooled[key]["cpu"] += r["empty_pass_cpu_all_ms"]
            log(f"  empty passes, round {round_ + 1} of {EMPTY_ROUNDS} (N, then 10N): median so far "
                f"{_median(pooled['at_n']['wall']):.1f} and {_median(pooled['at_10n']['wall']):.1f} ms")
        for key, times in pooled.items():
            results[key]["empty_pass_after_first_ms"] = results[key]["empty_pass_ms"]  # right after the heavy pass
            results[key]["empty_pass_rounds_ms"] = times["wall"]
            results[key]["empty_pass_ms"] = _median(times["wall"])
            results[key]["empty_pass_cpu_ms"] = _median(times["cpu"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    a, b = results["at_n"], results["at_10n"]
    summary = {
        "import_rows_per_s": imp["import_rows_per_s"],
        "raw_insert_rows_per_s": imp["raw_insert_rows_per_s"],
        "empty_pass_ms": a["empty_pass_ms"],
        "empty_pass_ms_10x": b["empty_pass_ms"],
        "queue_msgs_per_s": a["queued"] / a["seconds"]["queue"],
        "queue_msgs_per_s_10x": b["queued"] / b["seconds"]["queue"],
        "deliver_msgs_per_s": a["sent"] / a["seconds"]["deliver"],
        "peak_rss_mb": max(imp["import_peak_rss_mb"], a["peak_rss_mb"], b["peak_rss_mb"]),
    }
    results.update(summary)
    ratio_import = summary["import_rows_per_s"] / summary["raw_insert_rows_per_s"]
    ratio_pass = summary["empty_pass_ms_10x"] / summary["empty_pass_ms"]
    results["ratio_import_raw"], results["ratio_empty_pass_10x"] = ratio_import, ratio_pass
    lines = [
        "", f"Cobalt scale benchmark --quick: SQLite, N = {n:,} and 10N = {10 * n:,} patients; {machine()}",
        f"import: {imp['patients']:,} patients, {imp['event_rows']:,} event rows; "
        f"`cobalt import patients` {imp['import_seconds']:.1f} s = {summary['import_rows_per_s']:,.0f} rows/s; "
        f"raw executemany {imp['raw_seconds']:.2f} s = {summary['raw_insert_rows_per_s']:,.0f} rows/s",
        f"queue at N: {a['queued']:,} messages in {_s(a['seconds']['queue'])} = "
        f"{summary['queue_msgs_per_s']:,.0f}/s; at 10N: {b['queued']:,} in {_s(b['seconds']['queue'])} = "
        f"{summary['queue_msgs_per_s_10x']:,.0f}/s (CPU {a['queue_cpu_seconds']:.2f} s and "
        f"{b['queue_cpu_seconds']:.2f} s; the digest, one message, {_s(a['queue_steps']['digest'][0])} and "
        f"{_s(b['queue_steps']['digest'][0])} of the wall time)",
        f"deliver at N through SMTP (aiosmtpd, counting): {a['sent']:,} in {_s(a['seconds']['deliver'])} = "
        f"{summary['deliver_msgs_per_s']:,.0f}/s ({results['smtp_received']:,} received)",
        f"empty pass: {summary['empty_pass_ms']:.1f} ms at N, {summary['empty_pass_ms_10x']:.1f} ms at 10N, "
        f"medians of {EMPTY_ROUNDS} rounds of {EMPTY_PASSES} taking turns (CPU of the process: "
        f"{a['empty_pass_cpu_ms']:.1f} ms at N, {b['empty_pass_cpu_ms']:.1f} ms at 10N; right after each "
        f"first pass: {a['empty_pass_after_first_ms']:.1f} and {b['empty_pass_after_first_ms']:.1f} ms)",
        f"peak RSS (largest step): {summary['peak_rss_mb']:.0f} MB",
        f"ratio import/raw: {ratio_import:.2f} (goal >= 0.5: {'met' if ratio_import >= 0.5 else 'NOT met'})",
        f"ratio empty pass 10N/N: {ratio_pass:.2f} (goal <= 1.2: {'met' if ratio_pass <= 1.2 else 'NOT met'})",
        *_statements("empty pass at N", a["statements"], top=12),
        *_statements("empty pass at 10N", b["statements"], top=12),
        "",
    ]
    for what, plan in b["plans"].items():
        lines += [f"-- empty pass at 10N: {what}", *(f"   | {x}" for x in plan.splitlines()), ""]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


# -- the report ----------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _statements(title: str, statements: dict[str, list[float]], top: int = 10) -> list[str]:
    ranked = sorted(statements.items(), key=lambda kv: -kv[1][1])[:top]
    return [f"   {title}: " + "; ".join(f"{what} {int(n):,}x {_s(t)}" for what, (n, t) in ranked)]


def report(results: dict[str, Any]) -> str:
    b = results["build"]
    lines = [
        "",
        f"Cobalt scale benchmark: {results['backend']}, {results['patients']:,} patients, "
        f"now = {results['now']}",
        f"machine: {results['machine']}",
        f"build: {b['method']}; service {_s(b['templates_seconds'])} ({b['service_actions']:,} actions), "
        f"replication {_s(b['replicate_seconds'])}",
        "rows: " + ", ".join(f"{t} {n:,}" for t, n in b["rows"].items()),
        f"database {b['db_bytes'] / 2**20:,.0f} MiB; active patients {b['active']:,}; "
        f"patients with a planned loading / maintenance dose: "
        f"{b['patients_with_next_dose'].get('loading', 0):,} / "
        f"{b['patients_with_next_dose'].get('maintenance', 0):,}",
        "",
        f"{'step':<44} {'time':>10} {'peak RSS':>9} {'RSS +':>7}  result"
        + ("   (tracemalloc on: times are inflated; py = peak Python allocations, MB)"
           if "py_peak_mb" in results["pass1"] else ""),
        "-" * 112,
    ]

    def row(name: str, seconds: float, step: dict[str, Any] | None, result: str) -> None:
        rss = f"{step['peak_rss_mb']:.0f} MB" if step else ""
        growth = f"{step['rss_growth_mb']:.0f} MB" if step else ""
        if step and "py_peak_mb" in step:
            result = f"[py {step['py_peak_mb']:.0f} MB] {result}"
        lines.append(f"{name:<44} {_s(seconds):>10} {rss:>9} {growth:>7}  {result}")

    w = results["worklist"]
    row("(a) worklist for today", w["seconds"]["worklist today"], w, f"{w['rows_today']:,} rows")
    row("(a) worklist for today + 7 days (digest's)", w["seconds"]["worklist +7 days"], None,
        f"{w['rows_week']:,} rows, {w['patients_week']:,} patients")
    for key, name in (("pass1", "(b) pass at now"), ("pass2", "(c) second pass at the same now")):
        p = results[key]
        row(name, sum(p["seconds"].values()), p,
            f"replanned {p['replanned']:,}, queued {p['queued']:,}, sent {p['sent']:,}, "
            f"skipped {p['skipped']:,}, failed {p['failed']:,}")
        row("    roll-forward", p["seconds"]["roll-forward"], None,
            f"{p['replanned'] / p['seconds']['roll-forward']:,.0f} patients/s" if p["replanned"] else "")
        row("    queueing", p["seconds"]["queue"], None, "")
        for kind, (seconds, queued) in p["queue_steps"].items():
            row(f"      {kind}", seconds, None,
                f"{queued:,} queued, {seconds / queued * 1000:.2f} ms each" if queued else "")
        row("    delivery (FileMailer)", p["seconds"]["deliver"], None,
            f"{p['seconds']['deliver'] / p['sent'] * 1000:.1f} ms a message" if p["sent"] else "")
        row("    purge of old bodies", p["seconds"]["purge"], None, f"{p['purged']:,} cleared")
    r = results["rollforward"]
    row("(d) UPDATE planned_through (all short)", r["seconds"]["UPDATE planned_through"], None,
        f"{r['short']:,} plans short")
    row(f"(d) one pass (replan_per_pass = {r['replan_per_pass']:,})", r["seconds"]["roll-forward, one pass"],
        None, f"{r['one_pass']:,} replanned")
    row("(d) the rest (replan_per_pass raised)", r["seconds"]["roll-forward, the rest"], None,
        f"{r['replanned'] - r['one_pass']:,} replanned")
    row(f"(d) roll-forward, {'every plan' if not ROLLFORWARD_PLANS else f'at most {ROLLFORWARD_PLANS:,} plans'} "
        f"(now + {ROLL_FORWARD_LATER_DAYS} d)", r["full_seconds"],
        r, f"{r['replanned']:,} replanned, {r['per_second']:,.0f} patients/s, "
           f"{r['events_added']:,} events added")
    lines.append(f"(d) planned_through afterwards: {r['planned_through_days']:,} distinct days; largest: "
                 + ", ".join(f"{d} {n:,}" for d, n in r["planned_through_top"]))
    e = results["explain"]
    for what, p in e["plans"].items():
        verdict = {None: "-", True: "yes", False: "NOT USED"}[p["uses_index"]]
        lines.append(f"(e) {what:<58} {verdict:<8} indexes: {', '.join(p['indexes']) or '-'}; "
                     f"whole-table scans: {', '.join(p['full_scans']) or '-'}")
    p1 = results["pass1"]
    lines += [
        "",
        f"pass at now: outbox by kind {p1['outbox_by_kind']}; the digest's HTML is "
        f"{p1['digest_html_bytes'] or 0:,} bytes (at most {outbox_module.DIGEST_SECTION_LIMIT} items a "
        f"section, the rest counted; the week has {w['rows_week']:,} items for {w['patients_week']:,} patients)",
        "time in SQL by statement (count, total; cursor.execute only: SQLite computes most of a "
        "SELECT's rows while they are fetched, so its SELECTs look cheaper than they are):",
        *_statements("(b) pass", p1["statements"]),
        *_statements("(c) second pass", results["pass2"]["statements"]),
        *_statements("(d) roll-forward", r["statements"]),
        "",
    ]
    for what, p in e["plans"].items():
        lines += [f"-- (e) {what}", f"   {p['sql'][:240]}{'...' if len(p['sql']) > 240 else ''}"]
        lines += [f"   | {line}" for line in p["plan"].splitlines()]
        lines.append("")
    return "\n".join(lines)


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {sys.version.split()[0]}"


# -- main ----------------------------------------------------------------------------


def existing_build(url: str) -> dict[str, Any] | None:
    """A database built before (``--db``): migrated to the head (a new migration runs on the
    built rows), analysed, and described as ``build`` describes it; None when it is empty."""
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            if not conn.execute(text("SELECT COUNT(*) FROM patient")).scalar_one():
                return None
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
        info: dict[str, Any] = {"templates_seconds": 0.0, "replicate_seconds": 0.0, "service_actions": 0,
                                "method": "built before (--db), measured as it is"}
        describe(engine, info)
        return info
    finally:
        engine.dispose()


@contextmanager
def database(backend: str, workdir: Path, keep: bool, given: str | None = None) -> Iterator[str]:
    if given:
        yield given if "://" in given else f"sqlite:///{Path(given).resolve()}"
        return
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    admin = create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    name = f"cobalt_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        if keep:
            log(f"kept database {name}")
        else:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, help="N (default 20,000)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--templates", type=int, default=300,
                        help="patients enrolled through the service before replication (default 300)")
    parser.add_argument("--now", default=DEFAULT_NOW, help=f"the pass's now (default {DEFAULT_NOW})")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also report the peak of Python allocations (slows every step)")
    parser.add_argument("--keep", action="store_true", help="keep the database and the outbox")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--db", help="use this database (a SQLite file or a PostgreSQL URL) and keep it: "
                                     "built there when it holds no patients, else measured as it is")
    parser.add_argument("--rollforward-plans", type=int, default=0,
                        help="(d): roll forward at most this many plans in all (default: every plan)")
    parser.add_argument("--build-only", action="store_true", help="stop after the build (with --db)")
    parser.add_argument("--quick", action="store_true",
                        help=f"SQLite at N (default {QUICK_N:,}) and 10N: import vs raw insert, queueing, "
                             "SMTP delivery, the empty pass; the ratio goals")
    parser.add_argument("--import-patients", type=int, default=IMPORT_PATIENTS,
                        help=f"patients in the CSV for `cobalt import patients` (default {IMPORT_PATIENTS:,})")
    parser.add_argument("--only", choices=("import", "queue", "deliver"),
                        help="import: only the import-vs-raw measurement of --quick (with --backend); "
                             "queue: only the first pass's queueing at N, SQLite (--db: a database built before); "
                             "deliver: only SMTP delivery at N, with 1 and --senders senders (with --backend)")
    parser.add_argument("--senders", type=int, default=4,
                        help="with --only deliver: also run this many senders (default 4)")
    parser.add_argument("--sink", choices=("count", "parse"), default="count",
                        help="with --only deliver: the mail server counts and keeps the bytes (default), "
                             "or parses every message as the tests' sink does")
    parser.add_argument("--repeat", type=int, default=1, help="with --only deliver: runs of each")
    parser.add_argument("--compare", type=Path, metavar="TREE",
                        help="with --only: also run it with this source tree "
                             "(e.g. `git archive` of another commit), first, side by side")
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --only queue: runs of each version, taking turns (default 3)")
    # internal: one measured step in a child process
    parser.add_argument("--step", choices=tuple(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--smtp-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global ROLLFORWARD_PLANS
    ROLLFORWARD_PLANS = args.rollforward_plans
    now = parse_now(args.now)
    args.patients = args.patients or QUICK_N

    if args.step:
        print(json.dumps(run_step(args.step, args.url, args.workdir, now, args.tracemalloc, args.smtp_port,
                                  args.senders if args.step == "deliver" else None), default=str))
        return 0
    if args.only == "import":
        return only_import(args)
    if args.only == "queue":
        return only_queue(args, now)
    if args.only == "deliver":
        return only_deliver(args, now)
    if args.quick:
        return quick(args, now)

    workdir = Path(tempfile.mkdtemp(prefix="cobalt-bench-"))
    results: dict[str, Any] = {"backend": args.backend, "patients": args.patients, "now": now.isoformat(),
                               "machine": machine()}
    try:
        with database(args.backend, workdir, args.keep, args.db) as url:
            settings = bench_settings(url, workdir)
            built = existing_build(url)
            if built is None:
                log(f"building {args.patients} patients on {args.backend} in {workdir}")
                results["build"] = build(url, settings, args.patients, args.templates, now, args.seed)
            else:
                log(f"measuring the database as it is ({built['rows']['patient']:,} patients)")
                results["build"] = built
            results["patients"] = results["build"]["rows"]["patient"]
            if args.build_only:
                log(json.dumps(results["build"], default=str))
                return 0
            for key, step in (("worklist", "worklist"), ("pass1", "pass"), ("pass2", "pass"),
                              ("explain", "explain"), ("rollforward", "rollforward")):
                log(f"measuring {key}")
                results[key] = in_child(step, url, workdir, now, args.tracemalloc,
                                        ["--rollforward-plans", str(args.rollforward_plans)])
            results["outbox_files"] = len(list((workdir / "outbox").glob("*.eml")))
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
