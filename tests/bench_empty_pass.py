"""The empty pass at two sizes: what a pass costs when it has nothing left to do.

A focused companion of ``tests/bench_scale.py`` (its build functions, its data):

    # SQLite databases of N patients each (300 templates through the service, then
    # replicated set-based, then ANALYZE), in DIR
    python tests/bench_empty_pass.py build DIR 10000 100000
    # on each: a first pass at --now (queueing; the queued rows are then marked sent by
    # one UPDATE), then --runs passes with nothing to do; prints their median
    python tests/bench_empty_pass.py passes DIR/p10000.db DIR/p100000.db [--upgrade]

``passes`` runs whatever ``scheduler`` is imported, so the code before a change
can be measured on the same databases by putting its checkout first on
``PYTHONPATH`` (the databases stay usable by the older code: ``--upgrade``
migrates them first for the newer). ``explain URL`` prints the plans of the
statements of one empty pass (``EXPLAIN`` on PostgreSQL, ``EXPLAIN QUERY PLAN``
on SQLite), UPDATE and DELETE included.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

sys.path.insert(0, str(Path(__file__).parent))

import bench_scale as bench  # noqa: E402

from scheduler import db  # noqa: E402
from scheduler.outbox import queue_due_messages, skip_passed_moments  # noqa: E402
from scheduler.passes import local_today, roll_forward, run_pass  # noqa: E402


def build(args: argparse.Namespace) -> int:
    now = bench.parse_now(args.now)
    args.dir.mkdir(parents=True, exist_ok=True)
    templates = args.dir / "templates.db"
    settings = bench.bench_settings(f"sqlite:///{templates}", args.dir)
    if not templates.exists():
        engine = db.make_engine(f"sqlite:///{templates}")
        db.upgrade(engine)
        started = time.perf_counter()
        actions = bench.enrol_templates(engine, settings, local_today(settings, now), args.templates, args.seed)
        bench.settle_stamps(engine, now)
        engine.dispose()
        bench.log(f"enrolled {args.templates} templates ({actions} actions) in {time.perf_counter() - started:.0f} s")
    for n in args.patients:
        path = args.dir / f"p{n}.db"
        shutil.copyfile(templates, path)
        engine = db.make_engine(f"sqlite:///{path}")
        started = time.perf_counter()
        bench.replicate(engine, args.templates, n)
        bench.spread_planned_through(engine, local_today(settings, now))
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        engine.dispose()
        bench.log(f"replicated to {n:,} patients in {time.perf_counter() - started:.0f} s: {path}")
    return 0


def passes(args: argparse.Namespace) -> int:
    now = bench.parse_now(args.now)
    workdir = Path(tempfile.mkdtemp(prefix="cobalt-empty-pass-"))
    results = []
    try:
        for path in args.databases:
            url = f"sqlite:///{path}"
            engine = db.make_engine(url)
            if args.upgrade:
                db.upgrade(engine)
                with engine.begin() as conn:
                    conn.exec_driver_sql("ANALYZE")
            settings = bench.bench_settings(url, workdir)
            started = time.perf_counter()
            roll_forward(engine, settings, now)
            skip_passed_moments(engine, settings, now)
            queued = queue_due_messages(engine, settings, now)
            with engine.begin() as conn:
                conn.execute(text("UPDATE outbox SET status = 'sent', sent_at = :now, claimed_until = NULL, "
                                  "claimed_by = NULL WHERE status = 'queued'"), {"now": now})
            first = time.perf_counter() - started
            runs: list[float] = []
            did = []
            for i in range(args.runs):
                timed = bench.timed_statements(engine) if i == args.runs - 1 else None
                statements: dict[str, list[float]] = {}
                if timed is not None:
                    statements = timed.__enter__()
                started = time.perf_counter()
                report = run_pass(engine, settings, now)
                runs.append((time.perf_counter() - started) * 1000)
                if timed is not None:
                    timed.__exit__(None, None, None)
                if report.replanned or report.queued or report.sent or report.skipped:
                    did.append(str(report))
            patients = engine.connect().execute(text("SELECT COUNT(*) FROM patient")).scalar_one()
            engine.dispose()
            top = sorted(statements.items(), key=lambda kv: -kv[1][1])[:8]
            result = {"database": str(path), "patients": patients, "scheduler": sys.modules["scheduler"].__file__,
                      "first_pass_s": round(first, 2), "first_pass_queued": queued,
                      "empty_pass_ms": round(statistics.median(runs), 1), "runs_ms": [round(r, 1) for r in runs],
                      "empty_pass_did": did,
                      "last_run_statements_ms": {k: [v[0], round(v[1] * 1000, 1)] for k, v in top}}
            results.append(result)
            print(json.dumps(result), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if len(results) == 2:
        a, b = results
        print(f"empty pass: {a['empty_pass_ms']} ms at {a['patients']:,} patients, {b['empty_pass_ms']} ms at "
              f"{b['patients']:,}: ratio {b['empty_pass_ms'] / a['empty_pass_ms']:.2f}")
    return 0


def explain(args: argparse.Namespace) -> int:
    """The plans of every statement one empty pass runs (after a first pass at --now)."""
    now = bench.parse_now(args.now)
    workdir = Path(tempfile.mkdtemp(prefix="cobalt-empty-pass-"))
    settings = bench.bench_settings(args.url, workdir)
    if args.patients:
        info = bench.build(args.url, settings, args.patients, args.templates, now, 1)
        bench.log(f"built: {info['method']}")
    engine = db.make_engine(args.url)
    run_pass(engine, settings, now)
    found: list[tuple[str, Any]] = []

    def listen(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if not many and statement.lstrip().split()[0].upper() in ("SELECT", "UPDATE", "DELETE", "WITH"):
            found.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listen)
    run_pass(engine, settings, now)
    event.remove(engine, "before_cursor_execute", listen)
    seen = set()
    for statement, parameters in found:
        what = bench.label(statement)
        if statement in seen:
            continue
        seen.add(statement)
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                plan = [r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)]
            else:
                plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN (COSTS OFF) " + statement, parameters)]
            conn.rollback()
        print(f"-- {what}\n   {' '.join(statement.split())[:400]}")
        print("\n".join(f"   | {line}" for line in plan) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--now", default=bench.DEFAULT_NOW)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir", type=Path)
    b.add_argument("patients", type=int, nargs="+")
    b.add_argument("--templates", type=int, default=300)
    b.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("passes")
    p.add_argument("databases", type=Path, nargs="+")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--upgrade", action="store_true", help="migrate the databases to this code's head first")
    e = sub.add_parser("explain")
    e.add_argument("url")
    e.add_argument("--patients", type=int, help="first build this many patients into the (empty) database")
    e.add_argument("--templates", type=int, default=300)
    args = parser.parse_args(argv)
    return {"build": build, "passes": passes, "explain": explain}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
