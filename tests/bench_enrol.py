"""One patient at a time through the service: what `cobalt enroll` and `cobalt give` cost.

    # N enrolments, then ANALYZE, then one dose given to each of the first G patients,
    # each in its own transaction as the command line makes them, on a new SQLite
    # database; prints JSON
    python tests/bench_enrol.py run --patients 2000 --gives 500
    # the same, alternately with the code of OLD_CHECKOUT and with this checkout's,
    # --rounds times each in one run; prints each one's median and new/old ratios
    python tests/bench_enrol.py compare OLD_CHECKOUT --patients 2000 --gives 500 --rounds 3

``run`` measures whatever ``scheduler`` is imported (``PYTHONPATH``); ``compare``
starts ``run`` in a fresh process for each measurement. Wall time and the process's
CPU time are both given: SQLite works in the process, so its CPU time counts, and
CPU time moves less than wall time on a loaded machine.

``ANALYZE`` before the doses: without statistics SQLite runs the told-mark trigger's
update of a patient's loading doses (migration 0010) through the (status, kind, due)
index, over every patient's planned doses, and a dose given costs ~100 ms of CPU at
2,000 patients whichever code writes the event.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TODAY = date(2026, 11, 24)  # a Tuesday


def run(args: argparse.Namespace) -> int:
    from bench_scale import protocol_mix  # the clinic's mix of protocols, as the scale benchmark's

    from scheduler import db, service
    from scheduler.clinic_calendar import ClinicCalendar
    from scheduler.errors import BadInput

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="cobalt-bench-enrol-") as workdir:
        engine = db.make_engine(f"sqlite:///{workdir}/cobalt.db")
        db.upgrade(engine)
        ctx = service.Context(ClinicCalendar(), TODAY, "bench")
        requests: list[dict[str, Any]] = []
        for n in range(1, args.patients + 1):
            protocol, months = protocol_mix(rng)
            labs: dict[str, float] = {}
            if rng.random() < 0.3:  # results taken at enrolment; a few low platelets raise an alert
                labs = {"egfr": 85.0, "hb": 10.5, "platelets": 90.0 if rng.random() < 0.1 else 240.0}
            requests.append(dict(mrn=f"B{n:06d}", name=f"Bench Patient {n}", email=f"b{n}@patient.example",
                                 protocol=protocol, maintenance_months=months, neuro=protocol == "hydroxo-neuro",
                                 start=TODAY - timedelta(days=rng.randrange(0, 42)), **labs))
        figures: dict[str, Any] = {}
        wall, cpu = time.perf_counter(), time.process_time()
        for request in requests:
            with db.transaction(engine) as session:
                service.enroll(session, ctx, **request)
        figures["enrol"] = _figures(len(requests), wall, cpu)
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
        given = 0
        wall, cpu = time.perf_counter(), time.process_time()
        for request in requests[:args.gives]:
            try:
                with db.transaction(engine) as session:
                    service.give(session, ctx, request["mrn"], TODAY, early=True)
                given += 1
            except BadInput:  # cyano's phase 2 is held until the response is confirmed
                pass
        figures["give"] = _figures(given, wall, cpu)
        engine.dispose()
    print(json.dumps(figures))
    return 0


def _figures(count: int, wall: float, cpu: float) -> dict[str, float]:
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"count": count, "wall": round(wall, 3), "cpu": round(cpu, 3),
            "per_second": round(count / wall, 1), "cpu_ms_each": round(1000 * cpu / count, 3)}


def compare(args: argparse.Namespace) -> int:
    checkouts = {"old": Path(args.old).resolve(), "new": HERE.parent}
    found: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for name, checkout in checkouts.items():
            env = {**os.environ, "PYTHONPATH": str(checkout)}
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "run", "--patients", str(args.patients),
                 "--gives", str(args.gives), "--seed", str(args.seed)],
                env=env, check=True, capture_output=True, text=True).stdout
            found[name].append(json.loads(out))
            print(name, out.strip(), file=sys.stderr, flush=True)
    summary: dict[str, Any] = {}
    for action in ("enrol", "give"):
        medians = {name: {key: statistics.median(r[action][key] for r in runs) for key in ("wall", "cpu")}
                   for name, runs in found.items()}
        summary[action] = {
            **{name: {**m, "count": found[name][0][action]["count"]} for name, m in medians.items()},
            "new/old wall": round(medians["new"]["wall"] / medians["old"]["wall"], 3),
            "new/old cpu": round(medians["new"]["cpu"] / medians["old"]["cpu"], 3),
        }
    print(json.dumps(summary, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run")
    one.add_argument("--patients", type=int, default=2000)
    one.add_argument("--gives", type=int, default=500)
    one.add_argument("--seed", type=int, default=1)
    one.set_defaults(func=run)
    both = commands.add_parser("compare")
    both.add_argument("old", help="a checkout of the code to compare with")
    both.add_argument("--patients", type=int, default=2000)
    both.add_argument("--gives", type=int, default=500)
    both.add_argument("--seed", type=int, default=1)
    both.add_argument("--rounds", type=int, default=3)
    both.set_defaults(func=compare)
    args = parser.parse_args()
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
