"""The records of what was done (doses, lab results, decisions, moves) and the
audit trail: loaded on first use (see ``models``)."""

from datetime import date, datetime

from sqlalchemy import Index, text
from sqlmodel import Field, col

from models import Event, TableModel, ts
from models.types import UTCDateTime

# The open events by due date (the worklist, the digest; migration 0012): the planned
# rows only, so what it holds and what a window reads follow what is open, not the whole
# history. It leads with status, like ix_event_status_due, so that SQLite prefers it
# (without statistics it weighs the two by their columns), and ends with patient_id, so
# that a count of open events joined to their patients reads it alone. Defined here, not
# with Event: a partial index names the PostgreSQL dialect, which the read commands on
# SQLite (they define no record table) do not load; ``models.metadata`` loads this module.
_OPEN = text("status = 'planned'")
Index("ix_event_planned_due", col(Event.status), col(Event.due), col(Event.patient_id),
      sqlite_where=_OPEN, postgresql_where=_OPEN)


class Voidable(TableModel):
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
    patient_id: int = Field(foreign_key="patient.id", index=True)  # a patient's doses, voided ones too
    event_key: str = Field(max_length=64)
    given_on: date
    recorded_by: str = Field(max_length=64)
    recorded_at: datetime = ts()  # type: ignore[assignment]


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
    recorded_at: datetime = ts()  # type: ignore[assignment]


class Decision(Voidable, table=True):
    """A clinician's decision: review, end-loading, confirm-response, switch, discharge."""

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    kind: str = Field(max_length=32)
    on: date
    note: str | None = Field(default=None, max_length=400)
    recorded_by: str = Field(max_length=64)
    recorded_at: datetime = ts()  # type: ignore[assignment]


class EventMove(TableModel, table=True):
    """A planned event moved to another day (``cobalt move``); the latest move counts."""

    __tablename__ = "event_move"  # type: ignore[assignment]

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    event_key: str = Field(max_length=64)
    moved_from: date
    moved_to: date
    reason: str | None = Field(default=None, max_length=400)
    recorded_by: str = Field(max_length=64)
    recorded_at: datetime = ts()  # type: ignore[assignment]


class Audit(TableModel, table=True):
    """Every change: what, when, by whom. Details name records, not clinical values."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = ts()  # type: ignore[assignment]
    actor: str = Field(max_length=64)
    action: str = Field(max_length=32)
    patient_id: int | None = Field(default=None, foreign_key="patient.id", index=True)
    detail: str = Field(default="", max_length=2000)
