"""Cobalt's tables: one SQLModel class per table.

State that must survive a restart (the plan, what was given and measured, the
decisions, the outbox, the alerts) lives here, not in APScheduler's job store.
Timestamps are timezone-aware UTC set in Python (``utcnow``), never by the
database's clock, so time-travel tests can move them.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Column, Index, MetaData, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from models.types import UTCDateTime, utcnow

# Stable constraint names, so migrations name what they create and drop.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata: MetaData = SQLModel.metadata


def _ts(**kw: object) -> object:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, **kw))  # type: ignore[arg-type]


def _ts_null(**kw: object) -> object:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True, **kw))  # type: ignore[arg-type]


class PatientBase(SQLModel):
    mrn: str = Field(max_length=64, unique=True, index=True)
    name: str = Field(max_length=200)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=40)  # for the clinic's "to telephone" list
    neuro: bool = False
    renal_impairment: bool = False
    on_folic_acid: bool = False
    pernicious: bool = False  # lifelong parenteral B12 (intrinsic factor antibodies)
    opted_out: bool = False  # the patient receives no messages; the clinic still does
    # Reminders of loading doses: "every-dose", or "first-of-week" (the first of each week).
    loading_reminders: str = Field(default="every-dose", max_length=16,
                                   sa_column_kwargs={"server_default": "every-dose"})


class Patient(PatientBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    status: str = Field(default="active", max_length=16)  # active | discharged
    discharged_on: date | None = None
    discharge_reason: str | None = None
    # The plan reaches this day; the pass replans patients whose plan runs short.
    planned_through: date | None = Field(default=None, index=True)
    created_at: datetime = _ts()  # type: ignore[assignment]
    updated_at: datetime = _ts()  # type: ignore[assignment]


class Regimen(SQLModel, table=True):
    """A protocol the patient is on from ``start``; a switch adds the next one."""

    __table_args__ = (UniqueConstraint("patient_id", "number"),)
    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    number: int
    protocol: str = Field(max_length=32)
    start: date
    maintenance_months: int
    created_at: datetime = _ts()  # type: ignore[assignment]


class Event(SQLModel, table=True):
    """One line of a patient's timeline, as the planner last planned it."""

    __table_args__ = (
        UniqueConstraint("patient_id", "key"),
        Index("ix_event_status_due", "status", "due"),
        Index("ix_event_status_kind_due", "status", "kind", "due"),  # reminders and gate checks
        # What a pass has left to decide (scheduler.told); no status column, so no other index
        # serves the claims (their planner cannot know that the window's rows are the decided ones).
        Index("ix_event_kind_told_due", "kind", "told", "due"),
    )
    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id")
    key: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    phase: str = Field(max_length=16)
    seq: int
    label: str = Field(max_length=32)
    due: date
    status: str = Field(max_length=16)
    done_on: date | None = None
    tests: str = Field(default="", max_length=200)  # space-separated test codes
    because: str = Field(max_length=400)
    updated_at: datetime = _ts()  # type: ignore[assignment]
    # When the plan gave the event its present date and status: what comes after a
    # day's send_time is told at the next day's (None: before this was kept).
    due_set_at: datetime | None = _ts_null()  # type: ignore[assignment]
    # What the pass has decided about the event at its present date (scheduler.told):
    # one bit per kind of message. A change of date, status or patient clears it
    # (database triggers, migration 0010), so a writer never sets it.
    told: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


class EventChange(SQLModel, table=True):
    """An event changed (or was deleted) since the pass last compared it with what its
    patient was told: written by the database's triggers, cleared by the pass."""

    __tablename__ = "event_change"  # type: ignore[assignment]

    event_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})


class Voidable(SQLModel):
    """A record entered in error stays, marked void: it no longer counts (SPEC section 7)."""

    voided_at: datetime | None = Field(default=None, sa_type=UTCDateTime, nullable=True)  # type: ignore[call-overload]
    voided_by: str | None = Field(default=None, max_length=64)
    void_reason: str | None = Field(default=None, max_length=400)


_IN_FORCE = text("voided_at IS NULL")


class Dose(Voidable, table=True):
    """A dose given; one a day at most among the doses in force."""

    __table_args__ = (
        Index("ux_dose_patient_id_given_on_in_force", "patient_id", "given_on", unique=True,
              sqlite_where=_IN_FORCE, postgresql_where=_IN_FORCE),
    )
    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id")
    event_key: str = Field(max_length=64)
    given_on: date
    recorded_by: str = Field(max_length=64)
    recorded_at: datetime = _ts()  # type: ignore[assignment]


class LabResult(Voidable, table=True):
    __tablename__ = "lab_result"  # type: ignore[assignment]

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    code: str = Field(max_length=32)
    value: float | None = None
    text: str | None = Field(default=None, max_length=32)
    unit: str = Field(default="", max_length=32)
    taken_on: date
    order_key: str | None = Field(default=None, max_length=64)  # the lab order it completed
    recorded_by: str = Field(max_length=64)
    recorded_at: datetime = _ts()  # type: ignore[assignment]


class Decision(Voidable, table=True):
    """A clinician's decision: review, end-loading, confirm-response, switch, discharge."""

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    kind: str = Field(max_length=32)
    on: date
    note: str | None = Field(default=None, max_length=400)
    recorded_by: str = Field(max_length=64)
    recorded_at: datetime = _ts()  # type: ignore[assignment]


class EventMove(SQLModel, table=True):
    """A planned event moved to another day (``cobalt move``); the latest move counts."""

    __tablename__ = "event_move"  # type: ignore[assignment]

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    event_key: str = Field(max_length=64)
    moved_from: date
    moved_to: date
    reason: str | None = Field(default=None, max_length=400)
    recorded_by: str = Field(max_length=64)
    recorded_at: datetime = _ts()  # type: ignore[assignment]


class Audit(SQLModel, table=True):
    """Every change: what, when, by whom. Details name records, not clinical values."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts()  # type: ignore[assignment]
    actor: str = Field(max_length=64)
    action: str = Field(max_length=32)
    patient_id: int | None = Field(default=None, foreign_key="patient.id", index=True)
    detail: str = Field(default="", max_length=2000)


class Outbox(SQLModel, table=True):
    """A message decided by a pass: rendered, queued, then sent once.

    ``dedupe_key`` is unique per (event, message kind, recipient), or per (day,
    digest, recipient), so no pass in any process can queue a message twice. A
    sender claims a row (``status = 'sending'`` until ``claimed_until``) with a
    conditional UPDATE; a claim that expires is taken over by the next pass.
    """

    __table_args__ = (
        UniqueConstraint("dedupe_key"),
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_event_id_kind", "event_id", "kind"),
        Index("ix_outbox_kind_event_due_event_id", "kind", "event_due", "event_id"),  # what patients were told
        Index("ix_outbox_status_reported", "status", "reported"),  # the digest's failed and not sent
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
    next_attempt_at: datetime = _ts()  # type: ignore[assignment]
    not_after: datetime | None = _ts_null()  # type: ignore[assignment]  # stale after this
    claimed_until: datetime | None = _ts_null()  # type: ignore[assignment]
    claimed_by: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, max_length=400)
    reported: bool = False  # a failure listed in a clinic digest
    created_at: datetime = _ts()  # type: ignore[assignment]
    sent_at: datetime | None = _ts_null()  # type: ignore[assignment]


class MailServer(SQLModel, table=True):
    """What every sender knows about the mail server (SMTP, or the outbox folder).

    A connection-level failure (refused, a timeout, a 421 or 4xx greeting, a
    refused login) is the server's, not a message's: it is counted here, and no
    sender tries the server again before ``next_probe_at`` (a back-off with a
    ceiling of a few minutes). The first pass that reaches it again resets this.
    """

    __tablename__ = "mail_server"
    name: str = Field(primary_key=True, max_length=64)
    failures: int = 0  # connection-level failures in a row
    down_since: datetime | None = _ts_null()  # type: ignore[assignment]
    next_probe_at: datetime | None = _ts_null()  # type: ignore[assignment]
    last_error: str | None = Field(default=None, max_length=400)
class PassMark(SQLModel, table=True):
    """How far the passes got: ``day`` is the last clinic day whose patient messages
    were decided at or after ``send_time``, so the next pass knows which days a
    downtime passed over."""

    __tablename__ = "pass_mark"  # type: ignore[assignment]

    name: str = Field(primary_key=True, max_length=32)
    day: date
    at: datetime = _ts()  # type: ignore[assignment]


from models.alert import Alert  # noqa: E402,F401
from models.user import User  # noqa: E402,F401
