"""The scheduler pass: what ``cobalt tick`` and each ``cobalt run`` job do.

One ``now`` per pass, read by the caller and passed down. Every step claims its
work in the database, so any number of processes may run passes at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Engine
from sqlmodel import col, select

from models import Patient
from scheduler.alerts import AlertPolicy
from scheduler.config import Settings
from scheduler.db import transaction
from scheduler.mailer import Mailer
from scheduler.outbox import deliver, queue_due_messages, skip_passed_moments
from scheduler.planning import ROLL_FORWARD_BELOW_MONTHS, add_months
from scheduler.safety import due_for_alert_check
from scheduler.store import replan_set

log = logging.getLogger("cobalt.pass")


@dataclass
class PassReport:
    replanned: int = 0
    queued: int = 0
    sent: int = 0
    skipped: int = 0
    retried: int = 0
    failed: int = 0
    server_down: bool = False

    def __str__(self) -> str:
        return (
            f"replanned {self.replanned}, queued {self.queued}, sent {self.sent}, "
            f"skipped {self.skipped}, retried {self.retried}, failed {self.failed}"
            + ("; the mail server is unavailable: messages wait for it" if self.server_down else "")
        )


def local_today(settings: Settings, now: datetime) -> date:
    return now.astimezone(settings.clinic.tz).date()


def roll_forward(engine: Engine, settings: Settings, now: datetime) -> int:
    """Replan every active patient whose plan reaches less than 12 months ahead.

    Works in batches through the ``planned_through`` index; on PostgreSQL each
    batch is claimed with ``FOR UPDATE SKIP LOCKED`` so several processes share
    the work instead of repeating it.
    """
    today = local_today(settings, now)
    calendar = settings.clinic.calendar()
    policy = AlertPolicy.from_mapping(settings.alerts)
    threshold = add_months(today, ROLL_FORWARD_BELOW_MONTHS)
    total = 0
    while True:
        with transaction(engine) as session:
            query = (
                select(Patient.id)
                .where(Patient.status == "active", col(Patient.planned_through) < threshold)
                .order_by(col(Patient.planned_through))
                .limit(settings.scheduler.replan_batch)
            )
            if engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = [pid for pid in session.exec(query) if pid is not None]
            if not ids:
                break
            total += replan_set(session, ids, calendar, today, policy=policy)
        if total >= settings.scheduler.replan_per_pass:
            break  # the next pass goes on; reminders are not held up behind a big roll-forward
    # Alerts that a date alone sets off (an unconfirmed response gate).
    with transaction(engine) as session:
        due = [p.id for p in due_for_alert_check(session, today) if p.id is not None]
        if due:
            query = select(Patient.id).where(col(Patient.id).in_(due))
            if engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)  # another process has them
            total += replan_set(session, [pid for pid in session.exec(query) if pid is not None], calendar,
                                today, policy=policy)
    if total:
        log.info("replanned %d patients", total)
    return total


def run_pass(engine: Engine, settings: Settings, now: datetime, mailer: Mailer | None = None) -> PassReport:
    """Plan forward, queue what is due at ``now``, deliver what is queued."""
    report = PassReport()
    report.replanned = roll_forward(engine, settings, now)
    passed_over = skip_passed_moments(engine, settings, now)  # days a downtime passed over
    try:
        report.queued = queue_due_messages(engine, settings, now)
    except Exception:
        # What is already queued still goes out; the error is reported after.
        deliver(engine, settings, now, mailer)
        raise
    delivery = deliver(engine, settings, now, mailer)
    report.sent, report.skipped = delivery.sent, delivery.skipped + passed_over
    report.retried, report.failed = delivery.retried, delivery.failed
    report.server_down = delivery.server_down
    log.info("pass: %s", report)
    return report
