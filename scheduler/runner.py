"""``cobalt run``: APScheduler 3 in the foreground, kept thin.

Two jobs, both one-line wrappers around the pass that ``cobalt tick`` runs: the
pass every ``pass_every_seconds``, and the same pass at ``send_time`` in the
clinic's time zone, so the digest goes out on the minute. The jobs are added
from code at start and live in APScheduler's memory store only: what must
survive a restart (the plan, the outbox, what was sent) is in Cobalt's own
tables, and several processes may run this side by side on one database.
"""

from __future__ import annotations

import logging
import signal
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from scheduler.config import Settings
from scheduler.passes import run_pass

log = logging.getLogger("cobalt.run")


def scheduled_pass(engine: Engine, settings: Settings) -> None:
    """The job: read the clock once, run the pass. Errors are logged, never fatal."""
    try:
        run_pass(engine, settings, datetime.now(UTC))
    except Exception:  # a failed pass is retried by the next one
        log.exception("the pass failed; the next one will try again")


def build_scheduler(engine: Engine, settings: Settings,
                    kind: type[BaseScheduler] = BlockingScheduler) -> BaseScheduler:
    """The two jobs on a scheduler of ``kind`` (a background one for ``cobalt web --with-scheduler``)."""
    tz = settings.clinic.tz
    scheduler = kind(timezone=tz)
    # A late pass still runs (generous grace), missed runs collapse into one, and
    # a slow pass never overlaps itself within a process.
    job = {"coalesce": True, "max_instances": 1,
           "misfire_grace_time": settings.scheduler.misfire_grace_seconds,
           "args": (engine, settings), "replace_existing": True}
    scheduler.add_job(
        scheduled_pass, IntervalTrigger(seconds=settings.scheduler.pass_every_seconds, timezone=tz),
        id="pass", name="scheduler pass", next_run_time=datetime.now(tz), **job,
    )
    send_at = settings.clinic.send_at
    scheduler.add_job(
        scheduled_pass, CronTrigger(hour=send_at.hour, minute=send_at.minute, timezone=tz),
        id="digest", name="daily digest at send_time", **job,
    )
    return scheduler


def run_forever(engine: Engine, settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheduler = build_scheduler(engine, settings)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received signal %d: stopping after the running job", signum)
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("cobalt scheduler started: pass every %ds, digest at %s %s",
             settings.scheduler.pass_every_seconds, settings.clinic.send_time, settings.clinic.timezone)
    scheduler.start()
    log.info("cobalt scheduler stopped")
