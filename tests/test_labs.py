"""The lab catalog, result parsing and the monitoring plan (scheduler.labs)."""

from __future__ import annotations

import pytest

from scheduler.errors import BadInput
from scheduler.labs import (
    ANNUAL,
    CATALOG,
    MONITORING_PLAN,
    ORDER_TESTS,
    annual_months,
    parse_result,
    result_codes,
)

EXPECTED_UNITS = {
    "b12": "pmol/L",
    "folate": "nmol/L",
    "hb": "g/dL",
    "wbc": "10^9/L",
    "platelets": "10^9/L",
    "mcv": "fL",
    "reticulocytes": "%",
    "ldh": "U/L",
    "bilirubin": "umol/L",
    "homocysteine": "umol/L",
    "mma": "nmol/L",
    "gastrin": "pg/mL",
    "egfr": "mL/min/1.73m2",
}


@pytest.mark.parametrize(("code", "unit"), sorted(EXPECTED_UNITS.items()))
def test_each_numeric_code_has_its_canonical_unit_and_a_range(code: str, unit: str) -> None:
    lab = CATALOG[code]
    assert lab.code == code
    assert lab.unit == unit
    assert lab.name
    assert not lab.qualitative
    assert lab.low is not None and lab.high is not None and lab.low < lab.high


def test_intrinsic_factor_antibodies_are_positive_or_negative() -> None:
    lab = CATALOG["if-antibodies"]
    assert lab.qualitative
    assert lab.allowed == ("positive", "negative")
    assert lab.unit is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("b12=180", ("b12", 180.0, None)),
        ("B12=180", ("b12", 180.0, None)),
        ("  hb = 4.9 ", ("hb", 4.9, None)),
        ("platelets=0", ("platelets", 0.0, None)),
        ("platelets=2000", ("platelets", 2000.0, None)),
        ("hb=1", ("hb", 1.0, None)),
        ("hb=25", ("hb", 25.0, None)),
        ("b12=10", ("b12", 10.0, None)),
        ("b12=10000", ("b12", 10000.0, None)),
        ("b12=1e3", ("b12", 1000.0, None)),
        ("mcv=.5e2", ("mcv", 50.0, None)),
        ("egfr=59.9", ("egfr", 59.9, None)),
        ("if-antibodies=Positive", ("if-antibodies", None, "positive")),
        ("IF-ANTIBODIES = negative", ("if-antibodies", None, "negative")),
    ],
)
def test_a_good_result_parses_to_code_value_and_text(
    text: str, expected: tuple[str, float | None, str | None]
) -> None:
    assert parse_result(text) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("b12 180", "must be CODE=VALUE"),
        ("", "must be CODE=VALUE"),
        ("vitd=50", "unknown lab code 'vitd': known codes are b12, folate"),
        ("cbc=5", "unknown lab code 'cbc'"),
        ("=180", "has no code"),
        ("b12=", "b12 must be a number in pmol/L"),
        ("b12=low", "b12 must be a number in pmol/L, not 'low'"),
        ("b12=180 pmol/L", "b12 must be a number in pmol/L"),
        ("hb=4,9", "hb must be a number in g/dL"),
        ("b12=1_000", "b12 must be a number"),
        ("b12=nan", "b12 must be a finite number"),
        ("b12=inf", "b12 must be a finite number"),
        ("b12=-Infinity", "b12 must be a finite number"),
        ("b12=1e400", "b12 must be a finite number"),
        ("b12=9.9", "outside the plausible range 10-10000 pmol/L"),
        ("b12=18000", "outside the plausible range 10-10000 pmol/L"),
        ("hb=120", "outside the plausible range 1-25 g/dL"),
        ("hb=0.9", "outside the plausible range 1-25 g/dL"),
        ("platelets=-1", "outside the plausible range 0-2000 10^9/L"),
        ("platelets=2000.1", "outside the plausible range 0-2000 10^9/L"),
        ("if-antibodies=maybe", "if-antibodies must be positive or negative, not 'maybe'"),
        ("if-antibodies=1", "if-antibodies must be positive or negative"),
    ],
)
def test_bad_input_is_refused_with_one_clear_line(text: str, says: str) -> None:
    with pytest.raises(BadInput) as caught:
        parse_result(text)
    message = str(caught.value)
    assert says in message
    assert "\n" not in message


def test_cbc_orders_the_blood_count_results() -> None:
    assert ORDER_TESTS["cbc"] == ("hb", "wbc", "platelets", "mcv")


def test_every_result_code_can_be_ordered_on_its_own() -> None:
    for code in CATALOG:
        assert ORDER_TESTS[code] == (code,)


def test_a_smear_yields_no_coded_result() -> None:
    assert ORDER_TESTS["smear"] == ()
    assert "smear" not in CATALOG


def test_result_codes_expand_panels_without_repeats() -> None:
    assert result_codes(("reticulocytes", "cbc", "hb")) == (
        "reticulocytes",
        "hb",
        "wbc",
        "platelets",
        "mcv",
    )


@pytest.mark.parametrize(
    ("label", "days", "months", "tests"),
    [
        ("baseline", 0, 0, ("b12", "cbc", "smear", "ldh", "if-antibodies", "gastrin")),
        ("early-response", 7, 0, ("reticulocytes", "cbc")),
        ("2-week", 14, 0, ("cbc", "ldh", "bilirubin")),
        ("3-month", 0, 3, ("b12", "cbc", "homocysteine")),
        ("6-month", 0, 6, ("b12", "cbc", "homocysteine")),
        ("12-month", 0, 12, ("b12", "cbc", "homocysteine")),
    ],
)
def test_monitoring_plan_follows_the_spec(
    label: str, days: int, months: int, tests: tuple[str, ...]
) -> None:
    rule = next(r for r in MONITORING_PLAN if r.label == label)
    assert (rule.days, rule.months, rule.tests) == (days, months, tests)


def test_monitoring_plan_is_in_due_order_and_has_no_annual_rule() -> None:
    labels = [r.label for r in MONITORING_PLAN]
    assert labels == ["baseline", "early-response", "2-week", "3-month", "6-month", "12-month"]


def test_every_test_in_the_plan_is_an_order_test() -> None:
    for rule in (*MONITORING_PLAN, ANNUAL):
        for test in rule.tests:
            assert test in ORDER_TESTS, (rule.label, test)


def test_annual_orders_ask_for_b12_and_homocysteine() -> None:
    assert ANNUAL.label == "annual"
    assert ANNUAL.tests == ("b12", "homocysteine")


@pytest.mark.parametrize(("n", "months"), [(1, 24), (2, 36), (3, 48), (10, 132)])
def test_annual_order_n_is_due_twelve_plus_twelve_n_months_after_the_start(
    n: int, months: int
) -> None:
    assert annual_months(n) == months


def test_annual_orders_are_numbered_from_one() -> None:
    with pytest.raises(ValueError):
        annual_months(0)
