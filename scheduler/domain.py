"""Plain values the pure core works with: no database, no clock, no I/O.

The database layer (``scheduler.store``) turns rows into these values, calls the
pure functions (``planning.plan``, ``alerts.evaluate``) and saves what they
return. Nothing in this module, nor in the modules that only import it, may
read the clock or touch the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from enum import StrEnum


class Kind(StrEnum):
    DOSE = "dose"
    LAB = "lab"
    REVIEW = "review"


class Phase(StrEnum):
    LOADING = "loading"
    MAINTENANCE = "maintenance"
    MONITORING = "monitoring"
    REVIEW = "review"


class Status(StrEnum):
    PLANNED = "planned"
    DONE = "done"
    CANCELLED = "cancelled"
    HELD = "held"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    URGENT = "urgent"


SEVERITY_RANK = {Severity.URGENT: 0, Severity.WARNING: 1, Severity.INFO: 2}


@dataclass(frozen=True)
class Regimen:
    """One protocol a patient was on, from ``start`` (a switch starts a new one)."""

    protocol: str
    start: date
    maintenance_months: int


@dataclass(frozen=True)
class Enrolment:
    """What was decided at enrolment, and since, about a patient's treatment."""

    regimens: tuple[Regimen, ...]
    neuro: bool = False
    renal_impairment: bool = False
    on_folic_acid: bool = False
    discharged_on: date | None = None

    @property
    def current(self) -> Regimen:
        return self.regimens[-1]

    @property
    def protocol(self) -> str:
        return self.current.protocol

    @property
    def planned_start(self) -> date:
        """The first regimen's start: the lab anchor until a dose is given."""
        return self.regimens[0].start


@dataclass(frozen=True)
class GivenDose:
    """A dose recorded as given; ``key`` is the planned event it completed.

    A voided dose (entered in error) is kept in the history but does not count.
    """

    key: str
    given_on: date
    voided: bool = False


@dataclass(frozen=True)
class LabResult:
    """One recorded result. ``value`` for numbers, ``text`` for qualitative ones."""

    code: str
    taken_on: date
    value: float | None = None
    text: str | None = None
    order_label: str | None = None


@dataclass(frozen=True)
class ExtraLabOrder:
    """A lab order the safety rules add (e.g. ``mma`` for a borderline B12)."""

    label: str
    due: date
    tests: tuple[str, ...]
    because: str


class DecisionKind(StrEnum):
    REVIEW = "review"  # hydroxo-neuro: improvement continuing, loading goes on
    END_LOADING = "end-loading"  # hydroxo-neuro: no further improvement
    CONFIRM_RESPONSE = "confirm-response"  # cyano: response gate passed
    SWITCH = "switch"
    DISCHARGE = "discharge"


@dataclass(frozen=True)
class Decision:
    """A clinician's decision, dated; it applies to the regimen running on that date."""

    kind: DecisionKind
    on: date
    voided: bool = False


@dataclass(frozen=True)
class History:
    """Everything recorded about a patient that the planner plans from.

    ``moves``: planned events moved to another day (event key -> the day); a
    moved event is due on that day and the doses after it count from it.
    Voided doses and decisions may be listed: they do not count (``in_force``).
    """

    doses: tuple[GivenDose, ...] = ()
    labs_done: dict[str, date] = field(default_factory=dict)  # lab event key -> done on
    decisions: tuple[Decision, ...] = ()
    extra_lab_orders: tuple[ExtraLabOrder, ...] = ()
    moves: dict[str, date] = field(default_factory=dict)

    def in_force(self) -> History:
        """The history without the records entered in error: a voided record is not history."""
        return replace(
            self,
            doses=tuple(d for d in self.doses if not d.voided),
            decisions=tuple(d for d in self.decisions if not d.voided),
        )

    def given(self, key: str) -> date | None:
        for dose in self.doses:
            if dose.key == key and not dose.voided:
                return dose.given_on
        return None


@dataclass(frozen=True)
class PlannedEvent:
    """One line of a patient's timeline, past or planned."""

    key: str  # stable natural key within the patient, e.g. "r1:dose:loading:3"
    kind: Kind
    phase: Phase
    seq: int
    label: str
    due: date
    status: Status
    because: str
    done_on: date | None = None
    tests: tuple[str, ...] = ()


@dataclass(frozen=True)
class Alert:
    """A safety alert raised by a rule in ``scheduler.alerts``."""

    code: str
    severity: Severity
    message: str
    since: date
