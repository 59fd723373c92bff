"""The safety rules of SPEC section 5, as pure functions.

``evaluate`` takes what is known about a patient (the enrolment, the lab
results, the planned events, the date of the first dose) and a date, and
returns the alerts that stand on that date, most urgent first. The database
layer decides what is new, what was acknowledged and whom to tell.

Each rule is a function named after the alert code it raises, returning an
``Alert`` or ``None``. "Latest" means the result with the greatest
``taken_on``; among results taken on the same day, the one later in
``results`` wins (it was recorded later).

An alert's ``since`` is the date of the result that raised it (for rules on
"any" result, the earliest such result); for the renal-impairment or folic-acid
enrolment flags, the current regimen's start; for the response gate, the day it
became two days overdue.

Thresholds come in two kinds. The clinic may configure the B12 borderline band
and the cytopenia limits of the 2-week check (``AlertPolicy``); the others are
clinical facts and are module constants.

Pure: no database, no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, timedelta

from scheduler.domain import (
    SEVERITY_RANK,
    Alert,
    Enrolment,
    ExtraLabOrder,
    Kind,
    LabResult,
    PlannedEvent,
    Severity,
    Status,
)
from scheduler.errors import ConfigError
from scheduler.technique import FINE_NEEDLE_FROM, STANDARD_ABOVE, TRANSFUSION_BELOW

# Fixed clinical thresholds (SPEC section 1). Not clinic policy: do not configure.
# The platelet bands are the injection-technique bands (scheduler.technique).
PLATELETS_LOW = STANDARD_ABOVE  # x10^9/L; 25 to 50 inclusive: fine needle and pressure
PLATELETS_VERY_LOW = FINE_NEEDLE_FROM  # below: treat anyway with neurological symptoms
PLATELETS_CRITICAL = TRANSFUSION_BELOW  # below: consider platelet transfusion support
HB_CRITICAL = 5.0  # g/dL; below: packed red cells
MMA_CONFIRMS = 271.0  # nmol/L; above: functional B12 deficiency confirmed
HOMOCYSTEINE_TARGET = 10.0  # umol/L; the target is below this
GASTRIN_PERNICIOUS = 1000.0  # pg/mL; above: suggests pernicious anaemia
EGFR_RENAL = 60.0  # mL/min/1.73m2; below: renal dysfunction, no cyanocobalamin
SLOW_RESPONSE_G_DL_PER_WEEK = 1.0  # haemoglobin is expected to rise 1-2 g/dL a week
RESPONSE_GATE_GRACE_DAYS = 2  # cyano response gate: alert this many days after due

RESPONSE_LABELS = ("early-response", "2-week")  # lab orders whose CBC shows the response
RESPONSE_GATE_LABEL = "response-gate"  # the cyano review that holds phase 2

SEVERITY: dict[str, Severity] = {
    "renal-cyano": Severity.URGENT,
    "platelets-low": Severity.INFO,
    "platelets-very-low": Severity.WARNING,
    "platelets-critical": Severity.URGENT,
    "hb-critical": Severity.URGENT,
    "folic-acid": Severity.WARNING,
    "b12-borderline": Severity.INFO,
    "mma-confirms": Severity.INFO,
    "slow-response": Severity.WARNING,
    "not-resolved": Severity.WARNING,
    "homocysteine-high": Severity.INFO,
    "pernicious-anaemia": Severity.INFO,
    "response-gate": Severity.WARNING,
}
"""Every alert code, in the order of SPEC section 5, with its severity."""

ALERT_CODES: tuple[str, ...] = tuple(SEVERITY)


@dataclass(frozen=True)
class AlertPolicy:
    """The thresholds a clinic may configure (``[alerts]`` in cobalt.toml, say).

    Defaults are SPEC section 5. ``_LIMITS`` holds the range each may be set in.
    """

    b12_borderline_low: float = 150.0  # pmol/L, inclusive; below is plain deficiency
    b12_borderline_high: float = 221.0  # pmol/L, inclusive
    cytopenia_wbc_below: float = 4.0  # x10^9/L, at the 2-week check
    cytopenia_platelets_below: float = 150.0  # x10^9/L, at the 2-week check
    cytopenia_hb_below: float = 12.0  # g/dL, at the 2-week check

    @classmethod
    def from_mapping(cls, m: Mapping[str, object]) -> AlertPolicy:
        """A policy from configuration; keys not given keep their defaults.

        Values may be numbers or numeric strings (environment variables).
        An unknown key, a non-number or a value outside its sane range raises
        ``ConfigError`` with one line naming the key and the allowed range.
        """
        known = [f.name for f in fields(cls)]
        values: dict[str, float] = {}
        for key, raw in m.items():
            if key not in _LIMITS:
                raise ConfigError(
                    f"unknown alert policy key {key!r}: known keys are {', '.join(known)}"
                )
            low, high, unit = _LIMITS[key]
            allowed = f"a number from {low:g} to {high:g} {unit}"
            value = _as_number(raw)
            if value is None:
                raise ConfigError(f"alert policy {key} must be {allowed}, not {raw!r}")
            if not low <= value <= high:
                raise ConfigError(f"alert policy {key} = {value:g} is outside {allowed}")
            values[key] = value
        policy = cls(**values)
        if policy.b12_borderline_low > policy.b12_borderline_high:
            raise ConfigError(
                f"alert policy b12_borderline_low ({policy.b12_borderline_low:g}) must not be "
                f"above b12_borderline_high ({policy.b12_borderline_high:g})"
            )
        return policy


_LIMITS: dict[str, tuple[float, float, str]] = {
    "b12_borderline_low": (50.0, 400.0, "pmol/L"),
    "b12_borderline_high": (50.0, 400.0, "pmol/L"),
    "cytopenia_wbc_below": (1.0, 10.0, "x10^9/L"),
    "cytopenia_platelets_below": (50.0, 450.0, "x10^9/L"),
    "cytopenia_hb_below": (7.0, 18.0, "g/dL"),
}

DEFAULT_POLICY = AlertPolicy()


def _as_number(raw: object) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw.strip())
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def _num(value: float) -> str:
    return f"{value:g}"


def _alert(code: str, message: str, since: date) -> Alert:
    return Alert(code=code, severity=SEVERITY[code], message=message, since=since)


# --- picking results -------------------------------------------------------


def _numeric(results: Sequence[LabResult], code: str) -> list[LabResult]:
    """The results for ``code`` that carry a number, oldest first (stable on ties)."""
    found = [r for r in results if r.code.lower() == code and r.value is not None]
    return sorted(found, key=lambda r: r.taken_on)


def _latest(results: Sequence[LabResult], code: str) -> LabResult | None:
    found = _numeric(results, code)
    return found[-1] if found else None


def _value(result: LabResult) -> float:
    assert result.value is not None
    return result.value


def _first_where(
    results: Sequence[LabResult], code: str, test: Callable[[float], bool]
) -> LabResult | None:
    """The earliest result for ``code`` whose value passes ``test``."""
    return next((r for r in _numeric(results, code) if test(_value(r))), None)


# --- the rules, in the order of SPEC section 5 -----------------------------


def renal_dysfunction(renal_impairment: bool, results: Sequence[LabResult]) -> bool:
    """A recorded renal-impairment flag, or a latest eGFR below 60 (SPEC section 1)."""
    egfr = _latest(results, "egfr")
    return renal_impairment or (egfr is not None and _value(egfr) < EGFR_RENAL)


def renal_cyano(enrolment: Enrolment, results: Sequence[LabResult]) -> Alert | None:
    """A cyano patient with renal dysfunction: a recorded flag, or latest eGFR below 60."""
    if enrolment.protocol != "cyano":
        return None
    regimen_start = enrolment.current.start
    if enrolment.renal_impairment:
        why, since = "renal impairment is recorded", regimen_start
    else:
        egfr = _latest(results, "egfr")
        if egfr is None or not _value(egfr) < EGFR_RENAL:
            return None
        why = f"eGFR is {_num(_value(egfr))} mL/min/1.73m2 (below {_num(EGFR_RENAL)})"
        since = max(egfr.taken_on, regimen_start)
    return _alert(
        "renal-cyano",
        f"Stop cyanocobalamin: {why}. Cyanocobalamin must not be used in renal "
        f"dysfunction; switch to hydroxocobalamin (cobalt switch MRN --protocol hydroxo, "
        f"or hydroxo-neuro) before the next dose.",
        since,
    )


def platelets(results: Sequence[LabResult]) -> Alert | None:
    """``platelets-low``, ``-very-low`` or ``-critical`` by the latest count: at most one."""
    latest = _latest(results, "platelets")
    if latest is None:
        return None
    count = _value(latest)
    shown = f"Platelets {_num(count)} x10^9/L"
    if count < PLATELETS_CRITICAL:
        return _alert(
            "platelets-critical",
            f"{shown} (below {_num(PLATELETS_CRITICAL)}): consider platelet transfusion "
            f"support before the injection; speak to the clinician today.",
            latest.taken_on,
        )
    if count < PLATELETS_VERY_LOW:
        return _alert(
            "platelets-very-low",
            f"{shown} (below {_num(PLATELETS_VERY_LOW)}): with neurological symptoms give "
            f"the injection anyway (25-27G needle, 5-10 minutes of pressure); ask the "
            f"clinician about platelet support.",
            latest.taken_on,
        )
    if count <= PLATELETS_LOW:
        return _alert(
            "platelets-low",
            f"{shown}: inject with a 25-27G needle and press on the site for 5-10 minutes. "
            f"Deltoid or vastus lateralis, never the buttock.",
            latest.taken_on,
        )
    return None


def hb_critical(results: Sequence[LabResult]) -> Alert | None:
    """Latest haemoglobin below 5 g/dL."""
    latest = _latest(results, "hb")
    if latest is None or not _value(latest) < HB_CRITICAL:
        return None
    return _alert(
        "hb-critical",
        f"Haemoglobin {_num(_value(latest))} g/dL (below {_num(HB_CRITICAL)}): packed red "
        f"cells needed; the clinician must review the patient today.",
        latest.taken_on,
    )


def folic_acid(
    enrolment: Enrolment, results: Sequence[LabResult], first_dose_on: date | None
) -> Alert | None:
    """On folic acid at enrolment, or a folate result taken before the first B12 dose.

    "Before" is strictly before: blood taken on the day of the first dose counts
    as baseline. With no dose given yet, any folate result counts.
    """
    if enrolment.on_folic_acid:
        why, since = "the patient was enrolled on folic acid", enrolment.current.start
    else:
        folate = _first_where(results, "folate", lambda _: True)
        if folate is None or (first_dose_on is not None and folate.taken_on >= first_dose_on):
            return None
        why, since = "a folate level was taken before the first B12 dose", folate.taken_on
    return _alert(
        "folic-acid",
        f"Folic acid: {why}. Give no folic acid before or without B12: it can hide the "
        f"anaemia while subacute combined degeneration of the cord gets worse. Check the "
        f"B12 injections are under way and tell the clinician.",
        since,
    )


def _baseline_b12(results: Sequence[LabResult]) -> LabResult | None:
    """The b12 result of the ``baseline`` order (the latest, if twice), else the earliest."""
    b12 = _numeric(results, "b12")
    baseline = [r for r in b12 if r.order_label == "baseline"]
    if baseline:
        return baseline[-1]
    return b12[0] if b12 else None


def _borderline_b12(results: Sequence[LabResult], policy: AlertPolicy) -> LabResult | None:
    baseline = _baseline_b12(results)
    if baseline is None:
        return None
    if policy.b12_borderline_low <= _value(baseline) <= policy.b12_borderline_high:
        return baseline
    return None


def b12_borderline(
    results: Sequence[LabResult], policy: AlertPolicy = DEFAULT_POLICY
) -> Alert | None:
    """Baseline B12 within the borderline band, both ends included."""
    baseline = _borderline_b12(results, policy)
    if baseline is None:
        return None
    band = f"{_num(policy.b12_borderline_low)}-{_num(policy.b12_borderline_high)}"
    return _alert(
        "b12-borderline",
        f"Baseline B12 {_num(_value(baseline))} pmol/L is borderline ({band}): a "
        f"methylmalonic acid (mma) test is ordered now to confirm the deficiency.",
        baseline.taken_on,
    )


def extra_lab_orders(
    results: Sequence[LabResult], policy: AlertPolicy = DEFAULT_POLICY
) -> list[ExtraLabOrder]:
    """Lab orders the rules add: an ``mma`` order, due at once, for a borderline baseline B12."""
    baseline = _borderline_b12(results, policy)
    if baseline is None:
        return []
    return [
        ExtraLabOrder(
            label="mma",
            due=baseline.taken_on,
            tests=("mma",),
            because=(
                f"baseline B12 {_num(_value(baseline))} pmol/L is borderline: "
                f"methylmalonic acid confirms"
            ),
        )
    ]


def mma_confirms(results: Sequence[LabResult]) -> Alert | None:
    """Any methylmalonic acid above 271 nmol/L."""
    high = _first_where(results, "mma", lambda v: v > MMA_CONFIRMS)
    if high is None:
        return None
    return _alert(
        "mma-confirms",
        f"Methylmalonic acid {_num(_value(high))} nmol/L (above {_num(MMA_CONFIRMS)}): "
        f"functional B12 deficiency confirmed; continue B12 treatment.",
        high.taken_on,
    )


def slow_response(results: Sequence[LabResult]) -> Alert | None:
    """An early-response or 2-week haemoglobin rising less than 1 g/dL a week.

    The rise is measured from the first haemoglobin result (the earliest taken),
    and only for results taken at least one day after it.
    """
    hb = _numeric(results, "hb")
    if not hb:
        return None
    first = hb[0]
    for result in hb[1:]:
        days = (result.taken_on - first.taken_on).days
        if result.order_label not in RESPONSE_LABELS or days < 1:
            continue
        rise = _value(result) - _value(first)
        # Compare rise/days*7 with the expected rate without dividing, rounded so
        # that float noise (7.3 - 6.1 = 1.1999...) cannot decide an exact edge.
        if round(rise * 7, 6) < round(SLOW_RESPONSE_G_DL_PER_WEEK * days, 6):
            per_week = rise * 7 / days
            return _alert(
                "slow-response",
                f"Haemoglobin rose {_num(round(rise, 2))} g/dL in {days} days since "
                f"{first.taken_on.isoformat()} ({_num(round(per_week, 2))} g/dL a week; "
                f"expected 1-2): reassess adherence, the diagnosis and other deficiencies.",
                result.taken_on,
            )
    return None


def not_resolved(
    results: Sequence[LabResult], policy: AlertPolicy = DEFAULT_POLICY
) -> Alert | None:
    """The 2-week CBC still shows a cytopenia (policy limits, strictly below)."""
    two_week = [r for r in results if r.order_label == "2-week"]
    limits = (
        ("wbc", "wbc", policy.cytopenia_wbc_below, "x10^9/L"),
        ("platelets", "platelets", policy.cytopenia_platelets_below, "x10^9/L"),
        ("hb", "haemoglobin", policy.cytopenia_hb_below, "g/dL"),
    )
    found: list[str] = []
    since: date | None = None
    for code, name, limit, unit in limits:
        latest = _latest(two_week, code)
        if latest is not None and _value(latest) < limit:
            found.append(f"{name} {_num(_value(latest))} {unit} (below {_num(limit)})")
            since = latest.taken_on if since is None else max(since, latest.taken_on)
    if since is None:
        return None
    return _alert(
        "not-resolved",
        f"At the 2-week check {', '.join(found)}: the cytopenia has not resolved at 2 weeks; "
        f"ask the clinician to look for another cause.",
        since,
    )


def homocysteine_high(results: Sequence[LabResult]) -> Alert | None:
    """Latest homocysteine at or above the target of 10 umol/L."""
    latest = _latest(results, "homocysteine")
    if latest is None or not _value(latest) >= HOMOCYSTEINE_TARGET:
        return None
    return _alert(
        "homocysteine-high",
        f"Homocysteine {_num(_value(latest))} umol/L is above target (below "
        f"{_num(HOMOCYSTEINE_TARGET)}): tell the clinician at the next review.",
        latest.taken_on,
    )


def _pernicious_evidence(results: Sequence[LabResult]) -> tuple[str, date] | None:
    """What suggests pernicious anaemia, and since when (the earliest such result)."""
    evidence: list[tuple[date, str]] = []
    antibodies = [
        r
        for r in results
        if r.code.lower() == "if-antibodies" and (r.text or "").strip().lower() == "positive"
    ]
    if antibodies:
        first = min(antibodies, key=lambda r: r.taken_on)
        evidence.append((first.taken_on, "intrinsic factor antibodies are positive"))
    gastrin = _first_where(results, "gastrin", lambda v: v > GASTRIN_PERNICIOUS)
    if gastrin is not None:
        evidence.append((gastrin.taken_on, f"gastrin is {_num(_value(gastrin))} pg/mL"))
    if not evidence:
        return None
    evidence.sort(key=lambda e: e[0])
    return " and ".join(why for _, why in evidence), evidence[0][0]


def is_pernicious(results: Sequence[LabResult]) -> bool:
    """Intrinsic factor antibodies positive, or gastrin above 1000 pg/mL: B12 for life."""
    return _pernicious_evidence(results) is not None


def pernicious_anaemia(results: Sequence[LabResult]) -> Alert | None:
    """Intrinsic factor antibodies positive, or any gastrin above 1000 pg/mL."""
    evidence = _pernicious_evidence(results)
    if evidence is None:
        return None
    why, since = evidence
    return _alert(
        "pernicious-anaemia",
        f"Pernicious anaemia likely ({why}): B12 injections for life; the patient is marked so.",
        since,
    )


def response_gate(
    enrolment: Enrolment, events: Sequence[PlannedEvent], today: date
) -> Alert | None:
    """A cyano response gate still planned two days after it was due."""
    if enrolment.protocol != "cyano":
        return None
    grace = timedelta(days=RESPONSE_GATE_GRACE_DAYS)
    overdue = [
        e
        for e in events
        if e.kind == Kind.REVIEW
        and e.label == RESPONSE_GATE_LABEL
        and e.status == Status.PLANNED
        and today >= e.due + grace
    ]
    if not overdue:
        return None
    gate = min(overdue, key=lambda e: e.due)
    return _alert(
        "response-gate",
        f"The response review due {gate.due.isoformat()} is not confirmed: no documented "
        f"reticulocyte response. Reassess before going on to phase 2 (cobalt "
        f"confirm-response MRN once confirmed).",
        gate.due + grace,
    )


def evaluate(
    enrolment: Enrolment,
    results: Sequence[LabResult],
    events: Sequence[PlannedEvent],
    first_dose_on: date | None,
    today: date,
    policy: AlertPolicy = DEFAULT_POLICY,
) -> list[Alert]:
    """The alerts that stand on ``today``, most urgent first (then in SPEC order)."""
    raised = [
        renal_cyano(enrolment, results),
        platelets(results),
        hb_critical(results),
        folic_acid(enrolment, results, first_dose_on),
        b12_borderline(results, policy),
        mma_confirms(results),
        slow_response(results),
        not_resolved(results, policy),
        homocysteine_high(results),
        pernicious_anaemia(results),
        response_gate(enrolment, events, today),
    ]
    alerts = [a for a in raised if a is not None]
    return sorted(alerts, key=lambda a: SEVERITY_RANK[a.severity])
