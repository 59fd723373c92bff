"""How to give the injection, from the patient's latest platelet count (SPEC section 1).

Pure: no clock, no database. Counts are in x10^9/L. The bands, from the top:

- above 50, or no count recorded: a standard intramuscular injection;
- 25 to 50 (both ends included): a 25-27G needle and 5-10 minutes of pressure;
- below 25: with neurological symptoms, treat anyway (the nerve damage of an
  untreated deficiency outweighs the bleeding risk); the fine needle and the
  pressure still apply. Without neurological symptoms the seed is silent, so
  the note asks the nurse to check with the clinician first;
- below 10: as below 25, and consider platelet transfusion support first.

The messages print these notes for nurses; patient messages never carry them.
"""

from __future__ import annotations

import math
from enum import StrEnum

APPROVED_SITES = "deltoid or vastus lateralis (never the buttock: sciatic nerve)"

# Thresholds in x10^9/L, from SPEC section 1.
STANDARD_ABOVE = 50.0  # above this: standard IM technique
FINE_NEEDLE_FROM = 25.0  # from this up to STANDARD_ABOVE: fine needle and pressure
TRANSFUSION_BELOW = 10.0  # below this: consider platelet transfusion support

_FINE_NEEDLE = "use a 25-27G needle and apply pressure for 5-10 minutes after the injection."


class Band(StrEnum):
    """The platelet band an injection falls in."""

    STANDARD = "standard"  # above 50, or unknown
    FINE_NEEDLE = "fine-needle"  # 25 to 50
    VERY_LOW = "very-low"  # 10 up to (not including) 25
    CRITICAL = "critical"  # below 10


def band(platelets: float | None) -> Band:
    """The band for a platelet count; ``None`` (no count recorded) is standard."""
    if platelets is None:
        return Band.STANDARD
    if math.isnan(platelets) or platelets < 0:
        raise ValueError(f"not a platelet count: {platelets!r}")
    if platelets > STANDARD_ABOVE:
        return Band.STANDARD
    if platelets >= FINE_NEEDLE_FROM:
        return Band.FINE_NEEDLE
    if platelets >= TRANSFUSION_BELOW:
        return Band.VERY_LOW
    return Band.CRITICAL


def injection_note(platelets: float | None, neuro: bool | None = None) -> str:
    """One or two sentences a nurse reads before giving the injection.

    ``neuro``: whether the patient has neurological symptoms on record (None: not
    known here), which decides what to do below 25."""
    which = band(platelets)
    if platelets is None:
        return "No platelet count recorded: standard intramuscular injection."
    count = f"Platelets {platelets:g} x10^9/L"
    if which is Band.STANDARD:
        return f"{count}: standard intramuscular injection."
    if which is Band.FINE_NEEDLE:
        return f"{count} (25 to 50): {_FINE_NEEDLE}"
    if neuro is True:
        decision = "neurological symptoms are recorded: treat anyway."
    elif neuro is False:
        decision = "no neurological symptoms are recorded: check with the clinician first."
    else:
        decision = "with neurological symptoms, treat anyway; otherwise check with the clinician first."
    treat_anyway = f"{decision} If given, {_FINE_NEEDLE}"
    if which is Band.VERY_LOW:
        return f"{count} (below 25): {treat_anyway}"
    return (
        f"{count} (below 10): consider platelet transfusion support before the injection; "
        f"{treat_anyway}"
    )
