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
import threading
import traceback
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.base import STATE_STOPPED, BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from scheduler.config import Settings
from scheduler.errors import describe_error
from scheduler.outbox import deliver
from scheduler.passes import run_pass

log = logging.getLogger("cobalt.run")


def scheduled_pass(engine: Engine, settings: Settings) -> None:
    """The job: read the clock once, run the pass. Errors are logged, never fatal."""
    try:
        run_pass(engine, settings, datetime.now(UTC))
    except Exception as exc:  # a failed pass is retried by the next one
        _log_failure("the pass", exc)


def scheduled_delivery(engine: Engine, settings: Settings) -> None:
    """The job between passes: send what is queued, and take over the rows of a
    sender that died (its lease has ended) without waiting for the next pass."""
    try:
        deliver(engine, settings, datetime.now(UTC))
    except Exception as exc:
        _log_failure("delivery", exc)


def _log_failure(what: str, exc: Exception) -> None:
    """The error in one line that names no patient (no bound values, no driver
    detail), then where it happened: file, line and code, never the values."""
    where = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
    log.error("%s failed: %s; the next one will try again\n%s", what, describe_error(exc), where)


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
    # Delivery alone, as often as a lease lasts: a dead sender's messages go out
    # within two leases, whatever the pass interval.
    scheduler.add_job(
        scheduled_delivery, IntervalTrigger(seconds=settings.scheduler.claim_seconds, timezone=tz),
        id="delivery", name="delivery between passes", **job,
    )
    send_at = settings.clinic.send_at
    scheduler.add_job(
        scheduled_pass, CronTrigger(hour=send_at.hour, minute=send_at.minute, timezone=tz),
        id="digest", name="daily digest at send_time", **job,
    )
    return scheduler


def request_stop(scheduler: BaseScheduler) -> threading.Thread | None:
    """Shut ``scheduler`` down from a thread of its own.

    A signal handler runs in the main thread, which is also the thread that
    processes the jobs of a blocking scheduler: shutting down from the handler
    would re-enter the job stores' lock in the middle of that processing and
    empty the store under it (APScheduler then fails with ``JobLookupError``).
    From another thread the shutdown waits for the lock, so the processing
    finishes first. A second signal while stopping does nothing."""
    if scheduler.state == STATE_STOPPED:
        return None

    def shut_down() -> None:
        if scheduler.state != STATE_STOPPED:
            scheduler.shutdown(wait=False)

    thread = threading.Thread(target=shut_down, name="cobalt-stop")
    thread.start()
    return thread


def run_forever(engine: Engine, settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheduler = build_scheduler(engine, settings)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received signal %d: stopping after the running job", signum)
        request_stop(scheduler)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("cobalt scheduler started: pass every %ds, digest at %s %s",
             settings.scheduler.pass_every_seconds, settings.clinic.send_time, settings.clinic.timezone)
    scheduler.start()
    log.info("cobalt scheduler stopped")
