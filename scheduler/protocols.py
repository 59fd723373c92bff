"""The treatment protocols of SPEC section 1, as data a nurse would recognise.

Each protocol is a list of loading phases (doses a fixed number of days apart,
or open-ended), a maintenance interval in calendar months, and the reviews that
gate it. The planner (``scheduler.planning``) reads these and nothing else, so a
change of regimen is a change of data here.
"""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.errors import BadInput

# Clinic policy: the cyanocobalamin response gate is reviewed this long after
# the treatment start.
RESPONSE_GATE_AFTER_DAYS = 7


@dataclass(frozen=True)
class LoadingPhase:
    """Doses of one loading phase.

    ``intervals`` are the days between consecutive doses of the phase, so a
    phase has ``len(intervals) + 1`` doses. ``gap`` is the days from the last
    dose of the previous phase to the first of this one. An open-ended phase
    repeats ``every`` days until a clinician ends it.
    """

    label: str
    intervals: tuple[int, ...] = ()
    gap: int = 0
    every: int | None = None
    gated: bool = False  # held until the response is confirmed

    @property
    def open_ended(self) -> bool:
        return self.every is not None

    @property
    def doses(self) -> int | None:
        return None if self.open_ended else len(self.intervals) + 1


@dataclass(frozen=True)
class Protocol:
    id: str
    drug: str
    dose: str
    route: str
    summary: str
    loading: tuple[LoadingPhase, ...]
    maintenance_months: tuple[int, ...]  # the allowed intervals, default first
    maintenance_label: str = "maintenance"

    @property
    def default_maintenance_months(self) -> int:
        return self.maintenance_months[0]

    @property
    def open_ended(self) -> bool:
        return any(phase.open_ended for phase in self.loading)

    @property
    def gated(self) -> bool:
        return any(phase.gated for phase in self.loading)


HYDROXO_NEURO = Protocol(
    id="hydroxo-neuro",
    drug="hydroxocobalamin",
    dose="1 mg",
    route="IM",
    summary=(
        "neurological symptoms: alternate days until no further neurological "
        "improvement, then every 2 months for life"
    ),
    loading=(LoadingPhase("loading", every=2),),
    maintenance_months=(2,),
)

HYDROXO = Protocol(
    id="hydroxo",
    drug="hydroxocobalamin",
    dose="1 mg",
    route="IM",
    summary="three times a week for 2 weeks (6 doses), then every 3 months for life",
    # Offsets 0, 2, 4, 7, 9, 11: Monday, Wednesday, Friday when started on a Monday.
    loading=(LoadingPhase("loading", intervals=(2, 2, 3, 2, 2)),),
    maintenance_months=(3, 2),
)

CYANO = Protocol(
    id="cyano",
    drug="cyanocobalamin",
    dose="100 mcg",
    route="IM",
    summary=(
        "daily for 7 days; after a confirmed response, alternate days for 7 doses; "
        "then every 3 days for 3 weeks; then monthly for life. Not in renal dysfunction"
    ),
    loading=(
        LoadingPhase("phase-1", intervals=(1,) * 6),
        LoadingPhase("phase-2", intervals=(2,) * 6, gap=2, gated=True),
        LoadingPhase("phase-3", intervals=(3,) * 6, gap=3),
    ),
    maintenance_months=(1,),
)

PROTOCOLS: dict[str, Protocol] = {p.id: p for p in (HYDROXO_NEURO, HYDROXO, CYANO)}


def get_protocol(protocol_id: str) -> Protocol:
    try:
        return PROTOCOLS[protocol_id]
    except KeyError:
        known = ", ".join(PROTOCOLS)
        raise BadInput(f"unknown protocol {protocol_id!r}: choose one of {known}") from None


def check_maintenance_months(protocol: Protocol, months: int) -> int:
    if months not in protocol.maintenance_months:
        allowed = " or ".join(str(m) for m in sorted(protocol.maintenance_months))
        raise BadInput(
            f"maintenance every {months} months is not valid for {protocol.id}: use {allowed}"
        )
    return months
