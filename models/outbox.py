"""The outbox of messages, what senders know of the mail server, and how far the
passes got: loaded on first use (see ``models``)."""

from datetime import date, datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint, text
from sqlmodel import Field

from models import TableModel, ts, ts_null

# The messages whose bodies are still kept: the purge reads only these (migration 0012).
_BODY_KEPT = text("body_text <> ''")


class Outbox(TableModel, table=True):
    """A message decided by a pass: rendered, queued, then sent once.

    ``dedupe_key`` is unique per (event, message kind, recipient), or per (day,
    digest, recipient), so no pass in any process can queue a message twice. A
    sender claims a row (``status = 'sending'`` until ``claimed_until``) with a
    conditional UPDATE; a claim that expires is taken over by the next pass.
    """

    __table_args__ = (
        UniqueConstraint("dedupe_key"),
        # A sender's claim: the queued rows in the order it sends them (migration 0015).
        Index("ix_outbox_status_next_attempt_at_id", "status", "next_attempt_at", "id"),
        Index("ix_outbox_event_id_kind", "event_id", "kind"),
        Index("ix_outbox_kind_event_due_event_id", "kind", "event_due", "event_id"),  # what patients were told
        Index("ix_outbox_status_reported", "status", "reported"),  # the digest's failed and not sent
        # The purge's: a row leaves it when its body is cleared, so the purge reads what is left to clear.
        Index("ix_outbox_created_at_body_kept", "created_at", sqlite_where=_BODY_KEPT, postgresql_where=_BODY_KEPT),
    )
    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(max_length=200)
    kind: str = Field(max_length=32)
    recipient: str = Field(max_length=320)
    patient_id: int | None = Field(default=None, foreign_key="patient.id")
    event_id: int | None = None  # no foreign key: a replan may drop the event
    event_due: date | None = None  # the due date the message speaks of
    message_id: str = Field(max_length=200)
    subject: str = Field(max_length=400)
    body_text: str = Field(sa_column=Column(Text, nullable=False))
    body_html: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="queued", max_length=16)  # queued|sending|sent|failed|skipped
    attempts: int = 0
    next_attempt_at: datetime = ts()  # type: ignore[assignment]
    not_after: datetime | None = ts_null()  # type: ignore[assignment]  # stale after this
    claimed_until: datetime | None = ts_null()  # type: ignore[assignment]
    claimed_by: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, max_length=400)
    reported: bool = False  # a failure listed in a clinic digest
    created_at: datetime = ts()  # type: ignore[assignment]
    sent_at: datetime | None = ts_null()  # type: ignore[assignment]


class MailServer(TableModel, table=True):
    """What every sender knows about the mail server (SMTP, or the outbox folder).

    A connection-level failure (refused, a timeout, a 421 or 4xx greeting, a
    refused login) is the server's, not a message's: it is counted here, and no
    sender tries the server again before ``next_probe_at`` (a back-off with a
    ceiling of a few minutes). The first pass that reaches it again resets this.
    """

    __tablename__ = "mail_server"
    name: str = Field(primary_key=True, max_length=64)
    failures: int = 0  # connection-level failures in a row
    down_since: datetime | None = ts_null()  # type: ignore[assignment]
    next_probe_at: datetime | None = ts_null()  # type: ignore[assignment]
    last_error: str | None = Field(default=None, max_length=400)


class PassMark(TableModel, table=True):
    """How far the passes got: ``day`` is the last clinic day whose patient messages
    were decided at or after ``send_time``, so the next pass knows which days a
    downtime passed over."""

    __tablename__ = "pass_mark"  # type: ignore[assignment]

    name: str = Field(primary_key=True, max_length=32)
    day: date
    at: datetime = ts()  # type: ignore[assignment]


class EventChange(TableModel, table=True):
    """An event changed (or was deleted) since the pass last compared it with what its
    patient was told: written by the database's triggers (migration 0010), cleared by
    the pass (scheduler.told)."""

    __tablename__ = "event_change"  # type: ignore[assignment]

    event_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
