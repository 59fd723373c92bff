"""Lab result codes and the lab monitoring plan, as data.

Two vocabularies meet here:

- *result codes* (``CATALOG``): what a nurse records with ``cobalt lab MRN
  --result CODE=VALUE``, each with its canonical unit and a plausible range.
- *order tests* (``ORDER_TESTS``): what a lab order asks the laboratory for.
  Most are result codes; a few are panels (``cbc``) or reports (``smear``) that
  come back as several results, or as none Cobalt records.

The plausible ranges are wide enough for very sick patients (a pancytopenic
patient with platelets of 3, an LDH in the thousands from ineffective
erythropoiesis) but narrow enough to refuse a typo or a value in the wrong unit
(a B12 of 180 pmol/L typed as 18000, an haemoglobin in g/L typed as g/dL).
Bounds are inclusive.

Pure: no database, no clock, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass

from scheduler.errors import BadInput


@dataclass(frozen=True)
class LabCode:
    """One result code: numeric (``unit``, ``low``..``high``) or qualitative (``allowed``)."""

    code: str
    name: str
    unit: str | None = None  # canonical unit; None for a qualitative result
    low: float | None = None  # plausible range, inclusive
    high: float | None = None
    allowed: tuple[str, ...] = ()  # qualitative results: the words accepted (lower case)

    @property
    def qualitative(self) -> bool:
        return bool(self.allowed)

    def range_text(self) -> str:
        """The accepted values in words, e.g. ``10-10000 pmol/L`` or ``positive or negative``."""
        if self.qualitative:
            return " or ".join(self.allowed)
        return f"{_num(self.low)}-{_num(self.high)} {self.unit}"


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:g}"


_CODES = (
    LabCode("b12", "serum vitamin B12 (cobalamin)", "pmol/L", 10, 10000),
    LabCode("folate", "serum folate", "nmol/L", 0.5, 150),
    LabCode("hb", "haemoglobin", "g/dL", 1, 25),
    LabCode("wbc", "white cell count", "10^9/L", 0, 500),
    LabCode("platelets", "platelet count", "10^9/L", 0, 2000),
    LabCode("mcv", "mean cell volume", "fL", 40, 160),
    LabCode("reticulocytes", "reticulocytes", "%", 0, 50),
    LabCode("ldh", "lactate dehydrogenase", "U/L", 10, 50000),
    LabCode("bilirubin", "total bilirubin", "umol/L", 0, 1000),
    LabCode("homocysteine", "total homocysteine", "umol/L", 0, 500),
    LabCode("mma", "methylmalonic acid", "nmol/L", 0, 100000),
    LabCode("gastrin", "fasting serum gastrin", "pg/mL", 0, 100000),
    LabCode("if-antibodies", "intrinsic factor antibodies", allowed=("positive", "negative")),
    LabCode("egfr", "estimated glomerular filtration rate", "mL/min/1.73m2", 0, 200),
)

CATALOG: dict[str, LabCode] = {lab.code: lab for lab in _CODES}
"""Every result code Cobalt records, by code (lower case)."""


ORDER_TESTS: dict[str, tuple[str, ...]] = {
    # Panels and reports: what the laboratory is asked for -> the result codes it yields.
    "cbc": ("hb", "wbc", "platelets", "mcv"),  # complete blood count
    # Peripheral blood smear (hypersegmented neutrophils, macro-ovalocytes): read by
    # the haematology laboratory and reported in words; Cobalt records no coded result.
    "smear": (),
    # Every result code can also be ordered on its own.
    **{code: (code,) for code in CATALOG},
}
"""Test codes a lab order may carry, each mapped to the result codes it yields."""


def result_codes(order_tests: tuple[str, ...]) -> tuple[str, ...]:
    """The result codes a lab order with these tests yields, in order, without repeats."""
    codes: dict[str, None] = {}
    for test in order_tests:
        for code in ORDER_TESTS[test]:
            codes[code] = None
    return tuple(codes)


def asked_codes(order_tests: Iterable[str]) -> tuple[str, ...]:
    """The result codes an order with these tests asks for (unknown tests ask for nothing)."""
    return result_codes(tuple(t for t in order_tests if t in ORDER_TESTS))


def missing_tests(order_tests: Iterable[str], recorded: Iterable[str]) -> list[str]:
    """The tests of an order still without a result, in the order's order.

    A panel has a result once any of its codes has one (``cbc``: hb, wbc,
    platelets or mcv). A report Cobalt records no code for (``smear``) is never
    missing: there is nothing to record.
    """
    have = set(recorded)
    return [t for t in order_tests if ORDER_TESTS.get(t) and not have & set(ORDER_TESTS[t])]


# A plain decimal number: refuses what float() would also take ("1_000", "١٢", " nan").
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def parse_result(text: str) -> tuple[str, float | None, str | None]:
    """Parse ``CODE=VALUE`` into ``(code, value, text)``.

    The code is case-insensitive and returned in lower case. A numeric result
    gives ``(code, value, None)``; a qualitative one ``(code, None, word)`` with
    the word in lower case. Anything else raises ``BadInput`` with one line
    saying what was wrong and what is accepted.
    """
    if "=" not in text:
        raise BadInput(f"lab result {text.strip()!r} must be CODE=VALUE, e.g. b12=180")
    raw_code, raw_value = (part.strip() for part in text.split("=", 1))
    code = raw_code.lower()
    lab = CATALOG.get(code)
    if lab is None:
        what = f"unknown lab code {raw_code!r}" if raw_code else f"lab result {text!r} has no code"
        raise BadInput(f"{what}: known codes are {', '.join(CATALOG)}")

    if lab.qualitative:
        word = raw_value.lower()
        if word not in lab.allowed:
            raise BadInput(f"{code} must be {lab.range_text()}, not {raw_value!r}")
        return code, None, word

    try:
        value = float(raw_value)
    except ValueError:
        value = None
    if value is not None and not math.isfinite(value):
        raise BadInput(f"{code} must be a finite number in {lab.unit}, not {raw_value!r}")
    if value is None or not _NUMBER.fullmatch(raw_value):
        raise BadInput(f"{code} must be a number in {lab.unit}, not {raw_value!r}")
    assert lab.low is not None and lab.high is not None
    if not lab.low <= value <= lab.high:
        raise BadInput(
            f"{code}={raw_value} is outside the plausible range {lab.range_text()}: "
            f"check for a typo or a different unit"
        )
    return code, value, None


@dataclass(frozen=True)
class LabOrderRule:
    """One lab order of the monitoring plan: ``tests`` due ``days`` + ``months`` after the start.

    The start (the anchor) is the date the first dose was given, or the planned
    start date until then; a protocol switch does not move it.
    """

    label: str
    _: KW_ONLY
    days: int = 0
    months: int = 0  # calendar months, clamped at month end
    tests: tuple[str, ...]  # order test codes (keys of ORDER_TESTS)


MONITORING_PLAN: tuple[LabOrderRule, ...] = (
    LabOrderRule("baseline", tests=("b12", "cbc", "smear", "ldh", "if-antibodies", "gastrin")),
    LabOrderRule("early-response", days=7, tests=("reticulocytes", "cbc")),
    LabOrderRule("2-week", days=14, tests=("cbc", "ldh", "bilirubin")),
    LabOrderRule("3-month", months=3, tests=("b12", "cbc", "homocysteine")),
    LabOrderRule("6-month", months=6, tests=("b12", "cbc", "homocysteine")),
    LabOrderRule("12-month", months=12, tests=("b12", "cbc", "homocysteine")),
)
"""The one-off lab orders of SPEC section 2, in due order. ``ANNUAL`` follows them."""

ANNUAL = LabOrderRule("annual", months=12, tests=("b12", "homocysteine"))
"""The yearly lab order, for life, after the 12-month one.

Annual order n (n = 1, 2, ...) is due at start + (12 + 12n) months: 24, 36, ...
``months`` here is the interval between them; see ``annual_months``.
"""


def annual_months(n: int) -> int:
    """Months from the start to annual lab order ``n`` (1-based): 24, 36, 48, ..."""
    if n < 1:
        raise ValueError(f"annual lab orders are numbered from 1, not {n}")
    return ANNUAL.months + ANNUAL.months * n
