"""Start-up benchmark (SPEC section 6): `cobalt --help` and a read command, measured
side by side in one run against the plain interpreter and `import sqlmodel`.

    .venv/bin/python tests/bench_startup.py [--cobalt PATH] [--runs N] [--json FILE]

Targets (the install issue): `cobalt --help` <= 3x `python -c pass`, and `cobalt due`
on a small database <= 1.3x `python -c "import sqlmodel"`. Run it against a
cobalt installed from the wheel (`--cobalt /path/to/venv/bin/cobalt`) to measure
what a clinic gets: an editable install adds its own import hook. Figures go in
docs/benchmarks.md. Not a test: a timed test is flaky, a benchmark is read.

Each figure is the median wall time, and (``*_cpu_ms``, ``*_ratio_cpu``) the median
CPU time (user + system) of the child: on a shared machine the wall times swing
with the load, the CPU times much less.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def median_seconds(argv: list[str], runs: int, cwd: str, env: dict[str, str]) -> tuple[float, float]:
    """The median wall time and the median CPU time (user + system) of ``runs`` runs."""
    times, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return statistics.median(times), statistics.median(cpu)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cobalt", default=str(Path(sys.executable).with_name("cobalt")))
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--json", dest="json_file")
    args = parser.parse_args()
    python = str(Path(args.cobalt).with_name("python"))
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COBALT_")}
        env["COBALT_DATABASE_URL"] = f"sqlite:///{folder}/small.db"
        for n in range(20):  # a small clinic's database
            subprocess.run([args.cobalt, "enroll", "--mrn", f"S{n}", "--name", f"Patient {n}",
                            "--start", "2026-03-02", "--by", "bench"], cwd=folder, env=env, check=True,
                           stdout=subprocess.DEVNULL)
        commands = {
            "python_pass": [python, "-c", "pass"],
            "import_sqlmodel": [python, "-c", "import sqlmodel"],
            "cobalt_help": [args.cobalt, "--help"],
            "cobalt_due": [args.cobalt, "due", "--on", "2026-03-10"],
            "cobalt_schedule": [args.cobalt, "schedule", "S1"],
        }
        for argv in commands.values():  # warm the file cache
            subprocess.run(argv, cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
        measured = {name: median_seconds(argv, args.runs, folder, env) for name, argv in commands.items()}
    ms = {name: 1000 * wall for name, (wall, _) in measured.items()}
    cpu_ms = {name: 1000 * cpu for name, (_, cpu) in measured.items()}
    figures = {
        **{f"{name}_ms": round(value, 1) for name, value in ms.items()},
        **{f"{name}_cpu_ms": round(value, 1) for name, value in cpu_ms.items()},
        "help_ratio": round(ms["cobalt_help"] / ms["python_pass"], 2),
        "due_ratio": round(ms["cobalt_due"] / ms["import_sqlmodel"], 2),
        "help_ratio_cpu": round(cpu_ms["cobalt_help"] / cpu_ms["python_pass"], 2),
        "due_ratio_cpu": round(cpu_ms["cobalt_due"] / cpu_ms["import_sqlmodel"], 2),
    }
    for name, value in figures.items():
        print(f"{name:>20}: {value}")
    print(f"targets: help_ratio <= 3 ({'met' if figures['help_ratio'] <= 3 else 'NOT met'}), "
          f"due_ratio <= 1.3 ({'met' if figures['due_ratio'] <= 1.3 else 'NOT met'})")
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
