"""``[scheduler] senders``: on PostgreSQL a pass delivers with several senders side by
side, each claiming its own batches, and every message still goes out once."""

from __future__ import annotations

import collections
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from smtp_sink import SmtpSink

from scheduler.clinic_calendar import ClinicCalendar
from scheduler.config import SchedulerSettings, Settings, SmtpSettings
from scheduler.db import make_engine, transaction
from scheduler.outbox import deliver, queue_due_messages
from scheduler.service import Context, enroll

START = date(2026, 3, 2)
NOW = datetime(2026, 3, 3, 8, 30, tzinfo=UTC)


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def test_several_senders_send_every_message_once(database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    ctx = Context(ClinicCalendar(), START, "test")
    with transaction(engine) as session:
        for n in range(40):
            enroll(session, ctx, mrn=f"S{n:03d}", name=f"Patient {n}", email=f"s{n}@patient.example", start=START)
    with SmtpSink() as smtp:
        settings = Settings(database_url=database_url, base_dir=tmp_path,
                            smtp=SmtpSettings(host=smtp.host, port=smtp.port),
                            scheduler=SchedulerSettings(batch_size=3, senders=4))
        queued = queue_due_messages(engine, settings, NOW)
        assert queued > 40
        report = deliver(engine, settings, NOW)
        ids = collections.Counter(m.message["Message-ID"] for m in smtp.messages)
    engine.dispose()
    assert report.sent == queued == len(ids) and set(ids.values()) == {1}
