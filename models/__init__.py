"""Cobalt's tables: one SQLModel class per table.

Building a table class costs a few milliseconds (pydantic and SQLAlchemy both
inspect it), and a nurse runs many short commands: this module defines the
tables of the plan (patients, regimens, events), which every command reads; the
others are defined in ``models.records``, ``models.alert``, ``models.outbox`` and
``models.user`` on first use (``from models import Dose`` loads them).
``models.metadata`` (or ``load_all()``) is every table: migrations, ``create_all``
and the schema tests use it. ``SQLModel.metadata`` alone may not be complete.

State that must survive a restart (the plan, what was given and measured, the
decisions, the outbox, the alerts) lives here, not in APScheduler's job store.
Timestamps are timezone-aware UTC set in Python (``utcnow``), never by the
database's clock, so time-travel tests can move them.
"""

import importlib
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict
from sqlalchemy import Column, ColumnClause, ColumnElement, Index, MetaData, UniqueConstraint, case, literal_column
from sqlmodel import Field, SQLModel, col

from models.types import UTCDateTime, utcnow

# Stable constraint names, so migrations name what they create and drop.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class TableModel(SQLModel):
    """The base of every table class. Pydantic builds a table's validator on first
    use, not at import: a read command never validates a row."""

    model_config = ConfigDict(defer_build=True)  # type: ignore[assignment]


def ts(**kw: object) -> object:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, **kw))  # type: ignore[arg-type]


def ts_null(**kw: object) -> object:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=True, **kw))  # type: ignore[arg-type]


class PatientBase(TableModel):
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
    created_at: datetime = ts()  # type: ignore[assignment]
    updated_at: datetime = ts()  # type: ignore[assignment]


class Regimen(TableModel, table=True):
    """A protocol the patient is on from ``start``; a switch adds the next one."""

    __table_args__ = (UniqueConstraint("patient_id", "number"),)
    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    number: int
    protocol: str = Field(max_length=32)
    start: date
    maintenance_months: int
    created_at: datetime = ts()  # type: ignore[assignment]


# The open events' term, ``event.status = 'planned'``, written with the literal: a
# partial index serves a query only when the query says the index's WHERE itself
# (SQLite matches no bound parameter with it, nor does a generic PostgreSQL plan).
PLANNED: ColumnClause[str] = literal_column("'planned'")


class Event(TableModel, table=True):
    """One line of a patient's timeline, as the planner last planned it."""

    __table_args__ = (
        UniqueConstraint("patient_id", "key"),
        Index("ix_event_status_due", "status", "due"),
        Index("ix_event_status_kind_due", "status", "kind", "due"),  # reminders and gate checks
        # What a pass has left to decide (scheduler.told); no status column, so no other index
        # serves the claims (their planner cannot know that the window's rows are the decided ones).
        Index("ix_event_kind_told_due", "kind", "told", "due"),
        # ix_event_planned_due, the open events by due date, is defined in models.records.
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
    updated_at: datetime = ts()  # type: ignore[assignment]
    # When the plan gave the event its present date and status: what comes after a
    # day's send_time is told at the next day's (None: before this was kept).
    due_set_at: datetime | None = ts_null()  # type: ignore[assignment]
    # What the pass has decided about the event at its present date (scheduler.told):
    # one bit per kind of message. A change of date, status or patient clears it
    # (database triggers, migration 0010), so a writer never sets it.
    told: int = Field(default=0, sa_column_kwargs={"server_default": "0"})


# An open event's due date, NULL for every other: PostgreSQL's ``ix_event_open_due``
# (migration 0014) indexes this very expression and keeps its statistics, so a window
# written on it (``OPEN_DUE <= day``) is estimated from the open events' own dates,
# not from "planned" and "due by then" taken as independent. SQLite has no such index:
# its planner reads ``ix_event_planned_due`` for ``status = PLANNED AND due <= day``.
OPEN_DUE: ColumnElement[date] = case((col(Event.status) == PLANNED, col(Event.due)))

# Indexes that only a migration defines, for one database: autogenerate cannot compare
# an expression index, so the models-vs-migrations comparison leaves them out.
MIGRATION_ONLY_INDEXES = frozenset({"ix_event_open_due"})


def compared(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic's ``include_object``: what autogenerate compares (all but ``MIGRATION_ONLY_INDEXES``)."""
    return not (type_ == "index" and name in MIGRATION_ONLY_INDEXES)


# What is defined where: loaded on first use.
_LAZY = {
    **dict.fromkeys(("Voidable", "Dose", "LabResult", "Decision", "EventMove", "Audit"), "models.records"),
    **dict.fromkeys(("Outbox", "MailServer", "PassMark", "EventChange"), "models.outbox"),
    "Alert": "models.alert",
    "User": "models.user",
}


def load_all() -> MetaData:
    """Every table defined: the metadata migrations and ``create_all`` work with."""
    for module in sorted(set(_LAZY.values())):
        importlib.import_module(module)
    return SQLModel.metadata


def __getattr__(name: str) -> Any:
    if name == "metadata":
        return load_all()
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from models.alert import Alert as Alert
    from models.outbox import EventChange as EventChange
    from models.outbox import MailServer as MailServer
    from models.outbox import Outbox as Outbox
    from models.outbox import PassMark as PassMark
    from models.records import Audit as Audit
    from models.records import Decision as Decision
    from models.records import Dose as Dose
    from models.records import EventMove as EventMove
    from models.records import LabResult as LabResult
    from models.records import Voidable as Voidable
    from models.user import User as User

    metadata: MetaData
