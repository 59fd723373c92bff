"""Safety alerts on patients (SPEC section 5), as ``scheduler.safety`` stores them.

A row is one episode of one alert code on one patient:

- ``open``: the rule's condition holds and nobody has acknowledged it;
- ``acknowledged``: a nurse or clinician closed it (``cobalt ack``) while the
  condition still held; ``closed_at``/``closed_by`` say when and who;
- ``closed``: Cobalt closed it by itself because the condition no longer held
  (``closed_by = "cobalt"``), or the patient was discharged.

``cleared_at`` is when the condition stopped holding (for an acknowledged row,
it may come later than the acknowledgement). A row with ``cleared_at`` set is
history: if the condition is raised again, that is a new row.
"""

from datetime import date, datetime

from sqlalchemy import Column, Index
from sqlmodel import Field

from models import TableModel
from models.types import UTCDateTime, utcnow


class Alert(TableModel, table=True):
    __table_args__ = (Index("ix_alert_status_severity", "status", "severity"),)

    id: int | None = Field(default=None, primary_key=True)
    patient_id: int = Field(foreign_key="patient.id", index=True)
    code: str = Field(max_length=32)
    severity: str = Field(max_length=16)  # info | warning | urgent
    message: str = Field(max_length=600)  # what to do, in a nurse's words
    since: date  # the date the condition was first shown (by a result, a flag, a due date)
    status: str = Field(default="open", max_length=16)  # open | acknowledged | closed
    opened_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False)
    )
    closed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    closed_by: str | None = Field(default=None, max_length=64)  # the actor, or "cobalt"
    cleared_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    notified: bool = False  # an urgent alert sent to the clinic at once
