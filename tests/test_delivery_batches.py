"""Delivery in batches: each message's outcome is recorded as soon as it is known (a
commit that survives the process being killed), the batch is made durable once, at its
end, and a database connection is never left less safe than it was (docs/faults.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from scheduler.clinic_calendar import ClinicCalendar
from scheduler.config import SchedulerSettings, Settings, SmtpSettings
from scheduler.db import make_engine, transaction
from scheduler.mailer import FileMailer
from scheduler.messages import Message
from scheduler.outbox import deliver, make_mailer, queue_due_messages
from scheduler.service import Context, enroll

START = date(2026, 3, 2)
NOW = datetime(2026, 3, 3, 8, 30, tzinfo=UTC)
BOTH = [pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"]


def statuses(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {m: s for m, s in conn.execute(text("SELECT message_id, status FROM outbox"))}


def enrolled(engine: Engine, patients: int) -> None:
    ctx = Context(ClinicCalendar(), START, "test")
    with transaction(engine) as session:
        for n in range(patients):
            enroll(session, ctx, mrn=f"B{n:03d}", name=f"Patient {n}", email=f"b{n}@patient.example", start=START)


class Watching:
    """The real outbox-folder mailer; before each message it writes, and when each batch
    ends, it reads the outbox from a connection of its own."""

    def __init__(self, settings: Settings, engine: Engine, repeatable: bool) -> None:
        self.real = make_mailer(settings)
        self.repeatable = repeatable
        self.engine = engine
        self.before_each: list[tuple[str, dict[str, str]]] = []  # (message id, the outbox then)
        self.batches: list[list[str]] = []  # the message ids each batch sent
        self.at_batch_end: list[dict[str, str]] = []

    def session(self) -> Any:
        @contextlib.contextmanager
        def opened() -> Iterator[Any]:
            batch: list[str] = []
            watcher = self

            class Spy:
                def send(self, message: Message) -> None:
                    watcher.before_each.append((message.message_id, statuses(watcher.engine)))
                    real.send(message)
                    batch.append(message.message_id)

            with self.real.session() as real:
                yield Spy()
            self.batches.append(batch)
            self.at_batch_end.append(statuses(self.engine))
        return opened()


@pytest.mark.parametrize("backend", BOTH)
@pytest.mark.parametrize("repeatable", [False, True], ids=["a message sent again arrives twice",
                                                          "a message sent again replaces its file"])
def test_each_outcome_is_recorded_before_the_next_message_unless_a_repeat_is_harmless(
        database_url: str, tmp_path: Path, repeatable: bool) -> None:
    engine = make_engine(database_url)
    enrolled(engine, 12)
    settings = Settings(database_url=database_url, base_dir=tmp_path, smtp=SmtpSettings(outbox_dir="outbox"),
                        scheduler=SchedulerSettings(batch_size=5))
    queued = queue_due_messages(engine, settings, NOW)
    watching = Watching(settings, engine, repeatable)
    report = deliver(engine, settings, NOW, watching)
    final = statuses(engine)
    engine.dispose()

    assert report.sent == queued > 10 and set(final.values()) == {"sent"}
    seen: list[str] = []
    for batch, at_end in zip(watching.batches, watching.at_batch_end, strict=True):
        for n, message_id in enumerate(batch):
            before = dict(watching.before_each)[message_id]
            earlier, this_batch = seen[:len(seen) - n], seen[len(seen) - n:]
            assert all(before[m] == "sent" for m in earlier), message_id  # earlier batches: recorded
            # this batch's: recorded before the next send, or (harmless repeats) not before its end
            assert all(before[m] == ("sending" if repeatable else "sent") for m in this_batch), message_id
            assert before[message_id] == "sending"
            seen.append(message_id)
        # the batch's last outcome (all of them, for harmless repeats) waits for the end of
        # the mail session (the files synced); then one commit records them
        assert at_end[batch[-1]] == "sending"
        assert all(at_end[m] == ("sending" if repeatable else "sent") for m in batch[:-1])
    assert len(watching.batches) >= 3 and sorted(seen) == sorted(final)
    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert len(files) == queued and not [f for f in files if f.startswith(".")]


@pytest.mark.parametrize("backend", BOTH)
def test_a_commit_that_is_not_durable_leaves_the_connection_as_safe_as_it_was(database_url: str) -> None:
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    setting = "PRAGMA synchronous" if engine.dialect.name == "sqlite" else "SHOW synchronous_commit"
    try:
        with engine.connect() as conn:
            before = conn.exec_driver_sql(setting).scalar()
        with transaction(engine, durable=False) as session:
            session.execute(text("INSERT INTO mail_server (name, failures) VALUES ('a', 0)"))
        with pytest.raises(ZeroDivisionError), transaction(engine, durable=False) as session:
            session.execute(text("INSERT INTO mail_server (name, failures) VALUES ('b', 0)"))
            raise ZeroDivisionError
        with engine.connect() as conn:  # the one pooled connection, used by both
            after = conn.exec_driver_sql(setting).scalar()
            names = conn.execute(text("SELECT name FROM mail_server")).scalars().all()
    finally:
        engine.dispose()
    assert after == before and str(before).lower() in ("2", "on")  # FULL / on
    assert names == ["a"]  # committed; the other rolled back


def test_a_batch_of_files_is_all_there_complete_when_its_session_ends(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path / "outbox", "clinic@example.org")
    messages = [Message(kind="dose-reminder", to=f"p{n}@patient.example", subject=f"Reminder {n}",
                        text=f"Your dose {n}.", html=f"<p>Your dose {n}.</p>", message_id=f"<cobalt.{n}@example.org>")
                for n in range(20)]
    with mailer.session() as batch:
        for message in messages:
            batch.send(message)
        batch.send(messages[0])  # sent again in the batch: one file

    files = sorted((tmp_path / "outbox").iterdir())
    assert [f.name for f in files] == sorted(mailer.path_for(m).name for m in messages)
    for message in messages:
        data = mailer.path_for(message).read_bytes()
        assert message.message_id.encode() in data and data.rstrip().endswith(b"--")
