"""The safety rules of SPEC section 5 (scheduler.alerts), one table per rule."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import pytest

from scheduler.alerts import (
    ALERT_CODES,
    AlertPolicy,
    evaluate,
    extra_lab_orders,
    is_pernicious,
)
from scheduler.domain import (
    SEVERITY_RANK,
    Alert,
    Enrolment,
    ExtraLabOrder,
    Kind,
    LabResult,
    Phase,
    PlannedEvent,
    Regimen,
    Severity,
    Status,
)
from scheduler.errors import ConfigError

START = date(2026, 3, 2)  # a Monday
TODAY = date(2026, 3, 30)


def day(n: int) -> date:
    return START + timedelta(days=n)


def enrolled(
    protocol: str = "hydroxo", *, renal_impairment: bool = False, on_folic_acid: bool = False
) -> Enrolment:
    return Enrolment(
        regimens=(Regimen(protocol, START, 3),),
        renal_impairment=renal_impairment,
        on_folic_acid=on_folic_acid,
    )


def lab(
    code: str,
    value: float | None = None,
    *,
    on: date = START,
    text: str | None = None,
    order: str | None = None,
) -> LabResult:
    return LabResult(code=code, taken_on=on, value=value, text=text, order_label=order)


def gate(due: date, status: Status = Status.PLANNED) -> PlannedEvent:
    return PlannedEvent(
        key="r1:review:response-gate:1",
        kind=Kind.REVIEW,
        phase=Phase.REVIEW,
        seq=1,
        label="response-gate",
        due=due,
        status=status,
        because="7 days after the start: confirm the reticulocyte response",
    )


def alerts(
    results: Sequence[LabResult] = (),
    *,
    enrolment: Enrolment | None = None,
    events: Sequence[PlannedEvent] = (),
    first_dose_on: date | None = START,
    today: date = TODAY,
    policy: AlertPolicy | None = None,
) -> list[Alert]:
    return evaluate(
        enrolment or enrolled(),
        results,
        events,
        first_dose_on,
        today,
        **({"policy": policy} if policy else {}),
    )


def codes(raised: list[Alert]) -> list[str]:
    return [a.code for a in raised]


def only(raised: list[Alert], code: str) -> Alert:
    found = [a for a in raised if a.code == code]
    assert len(found) == 1, codes(raised)
    return found[0]


def test_no_results_raise_no_alerts() -> None:
    assert alerts() == []


# --- renal-cyano -------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "renal_flag", "egfr", "expected"),
    [
        ("cyano", False, 59.9, ["renal-cyano"]),
        ("cyano", False, 60, []),
        ("cyano", False, None, []),
        ("cyano", True, None, ["renal-cyano"]),
        ("cyano", True, 90, ["renal-cyano"]),
        ("hydroxo", True, 20, []),
        ("hydroxo-neuro", False, 20, []),
    ],
)
def test_cyanocobalamin_with_renal_dysfunction_is_urgent(
    protocol: str, renal_flag: bool, egfr: float | None, expected: list[str]
) -> None:
    results = [lab("egfr", egfr, on=day(3))] if egfr is not None else []
    raised = alerts(results, enrolment=enrolled(protocol, renal_impairment=renal_flag))
    assert codes(raised) == expected


def test_renal_alert_names_hydroxocobalamin_and_cobalt_switch() -> None:
    alert = only(alerts([lab("egfr", 45, on=day(3))], enrolment=enrolled("cyano")), "renal-cyano")
    assert alert.severity == Severity.URGENT
    assert "hydroxocobalamin" in alert.message
    assert "cobalt switch" in alert.message
    assert "45" in alert.message
    assert alert.since == day(3)


def test_renal_flag_alert_is_raised_since_the_current_regimen_start() -> None:
    enrolment = Enrolment(
        regimens=(Regimen("hydroxo", START, 3), Regimen("cyano", day(20), 1)),
        renal_impairment=True,
    )
    assert only(alerts(enrolment=enrolment), "renal-cyano").since == day(20)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([50, 75], []),  # recovered
        ([75, 50], ["renal-cyano"]),
    ],
)
def test_renal_alert_follows_the_latest_egfr(counts: list[float], expected: list[str]) -> None:
    results = [lab("egfr", v, on=day(i)) for i, v in enumerate(counts)]
    assert codes(alerts(results, enrolment=enrolled("cyano"))) == expected


# --- platelets ---------------------------------------------------------------

PLATELET_CODES = {"platelets-low", "platelets-very-low", "platelets-critical"}


@pytest.mark.parametrize(
    ("count", "expected", "severity"),
    [
        (400, None, None),
        (50.1, None, None),
        (50, "platelets-low", Severity.INFO),
        (49.9, "platelets-low", Severity.INFO),
        (25, "platelets-low", Severity.INFO),
        (24.9, "platelets-very-low", Severity.WARNING),
        (10, "platelets-very-low", Severity.WARNING),
        (9.9, "platelets-critical", Severity.URGENT),
        (0, "platelets-critical", Severity.URGENT),
    ],
)
def test_one_platelet_alert_by_the_count_at_each_edge(
    count: float, expected: str | None, severity: Severity | None
) -> None:
    raised = [a for a in alerts([lab("platelets", count, on=day(1))]) if a.code in PLATELET_CODES]
    if expected is None:
        assert raised == []
    else:
        assert [(a.code, a.severity, a.since) for a in raised] == [(expected, severity, day(1))]


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        ([lab("platelets", 30, on=day(0)), lab("platelets", 80, on=day(7))], []),
        ([lab("platelets", 5, on=day(0)), lab("platelets", 51, on=day(7))], []),
        ([lab("platelets", 80, on=day(0)), lab("platelets", 30, on=day(7))], ["platelets-low"]),
        ([lab("platelets", 30, on=day(7)), lab("platelets", 80, on=day(0))], ["platelets-low"]),
        ([lab("platelets", 5, on=day(0)), lab("platelets", 20, on=day(7))], ["platelets-very-low"]),
        # Same day: the one recorded later wins.
        ([lab("platelets", 30, on=day(7)), lab("platelets", 80, on=day(7))], []),
        ([lab("platelets", 80, on=day(7)), lab("platelets", 30, on=day(7))], ["platelets-low"]),
    ],
)
def test_platelet_alert_follows_the_latest_count(
    results: list[LabResult], expected: list[str]
) -> None:
    assert codes(alerts(results)) == expected


def test_platelet_messages_say_what_to_do() -> None:
    low = only(alerts([lab("platelets", 40)]), "platelets-low").message
    assert "25-27G" in low and "5-10 minutes" in low and "buttock" in low
    very_low = only(alerts([lab("platelets", 20)]), "platelets-very-low").message
    assert "neurological" in very_low
    critical = only(alerts([lab("platelets", 5)]), "platelets-critical").message
    assert "transfusion" in critical


# --- hb-critical -------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([5], []),
        ([4.9], ["hb-critical"]),
        ([1], ["hb-critical"]),
        ([4.2, 6.0], []),  # transfused: the latest wins
        ([6.0, 4.2], ["hb-critical"]),
    ],
)
def test_haemoglobin_below_five_is_urgent(values: list[float], expected: list[str]) -> None:
    results = [lab("hb", v, on=day(i)) for i, v in enumerate(values)]
    raised = alerts(results)
    assert codes(raised) == expected
    if expected:
        alert = only(raised, "hb-critical")
        assert alert.severity == Severity.URGENT
        assert "packed red cells" in alert.message
        assert alert.since == day(len(values) - 1)


# --- folic-acid --------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_folic_acid", "folate_on", "first_dose_on", "since"),
    [
        (True, None, START, START),
        (True, None, None, START),
        (False, day(-1), START, day(-1)),
        (False, START, START, None),  # baseline blood on the day of the first dose
        (False, day(3), START, None),
        (False, day(3), None, day(3)),  # no dose given yet
        (False, None, None, None),
        (False, None, START, None),
    ],
)
def test_folic_acid_before_or_without_b12_is_a_warning(
    on_folic_acid: bool, folate_on: date | None, first_dose_on: date | None, since: date | None
) -> None:
    results = [lab("folate", 4.0, on=folate_on)] if folate_on else []
    raised = alerts(
        results, enrolment=enrolled(on_folic_acid=on_folic_acid), first_dose_on=first_dose_on
    )
    if since is None:
        assert raised == []
    else:
        alert = only(raised, "folic-acid")
        assert alert.severity == Severity.WARNING
        assert alert.since == since
        assert "subacute combined degeneration" in alert.message


# --- b12-borderline and its extra mma order ----------------------------------


@pytest.mark.parametrize(
    ("b12", "borderline"),
    [(90, False), (149.9, False), (150, True), (180, True), (221, True), (221.1, False)],
)
def test_baseline_b12_in_the_borderline_band_orders_mma(b12: float, borderline: bool) -> None:
    results = [lab("b12", b12, on=day(0), order="baseline")]
    raised = alerts(results)
    orders = extra_lab_orders(results)
    if borderline:
        alert = only(raised, "b12-borderline")
        assert (alert.severity, alert.since) == (Severity.INFO, day(0))
        assert orders == [
            ExtraLabOrder(
                label="mma",
                due=day(0),
                tests=("mma",),
                because=f"baseline B12 {b12:g} pmol/L is borderline: methylmalonic acid confirms",
            )
        ]
    else:
        assert raised == []
        assert orders == []


@pytest.mark.parametrize(
    ("results", "borderline"),
    [
        # The baseline order's result, even when an earlier one exists.
        ([lab("b12", 100, on=day(-10)), lab("b12", 200, on=day(0), order="baseline")], True),
        ([lab("b12", 200, on=day(-10)), lab("b12", 100, on=day(0), order="baseline")], False),
        # No baseline order: the earliest B12.
        ([lab("b12", 300, on=day(90)), lab("b12", 200, on=day(0))], True),
        ([lab("b12", 200, on=day(90)), lab("b12", 100, on=day(0))], False),
        # A later B12 in the band is not a baseline.
        ([lab("b12", 80, on=day(0), order="baseline"), lab("b12", 200, on=day(90))], False),
    ],
)
def test_borderline_is_judged_on_the_baseline_b12(
    results: list[LabResult], borderline: bool
) -> None:
    assert ("b12-borderline" in codes(alerts(results))) is borderline
    assert bool(extra_lab_orders(results)) is borderline


def test_the_clinic_may_move_the_borderline_band() -> None:
    policy = AlertPolicy.from_mapping({"b12_borderline_low": 140, "b12_borderline_high": 250})
    results = [lab("b12", 240, order="baseline")]
    assert codes(alerts(results, policy=policy)) == ["b12-borderline"]
    assert codes(alerts(results)) == []
    assert extra_lab_orders(results, policy)[0].due == START


# --- mma-confirms ------------------------------------------------------------


@pytest.mark.parametrize(("mma", "expected"), [(271, []), (271.1, ["mma-confirms"])])
def test_methylmalonic_acid_above_271_confirms(mma: float, expected: list[str]) -> None:
    raised = alerts([lab("mma", mma, on=day(2))])
    assert codes(raised) == expected
    if expected:
        assert only(raised, "mma-confirms").since == day(2)


def test_any_high_mma_confirms_even_after_treatment_lowers_it() -> None:
    results = [lab("mma", 900, on=day(1)), lab("mma", 150, on=day(90))]
    assert only(alerts(results), "mma-confirms").since == day(1)


# --- slow-response -----------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "later", "days", "order", "slow"),
    [
        (6.0, 6.9, 7, "early-response", True),
        (6.0, 7.0, 7, "early-response", False),
        (6.1, 7.1, 7, "early-response", False),  # 7.1 - 6.1 is 0.9999... in floating point
        (6.0, 7.9, 14, "2-week", True),
        (6.0, 8.0, 14, "2-week", False),
        (6.0, 5.5, 7, "early-response", True),  # falling
        (8.0, 8.2, 5, "early-response", True),  # early blood: 0.28 g/dL a week
        (8.0, 8.2, 1, "early-response", False),  # 1.4 g/dL a week
        (6.0, 6.0, 0, "early-response", False),  # same day: not compared
        (6.0, 6.5, 90, "3-month", False),  # not a response check
        (6.0, 6.5, 7, None, False),
    ],
)
def test_haemoglobin_rising_less_than_one_gram_a_week_is_slow(
    first: float, later: float, days: int, order: str | None, slow: bool
) -> None:
    results = [
        lab("hb", first, on=day(0), order="baseline"),
        lab("hb", later, on=day(days), order=order),
    ]
    raised = alerts(results)
    assert ("slow-response" in codes(raised)) is slow
    if slow:
        alert = only(raised, "slow-response")
        assert (alert.severity, alert.since) == (Severity.WARNING, day(days))
        assert "reassess" in alert.message


def test_slow_response_measures_from_the_earliest_haemoglobin() -> None:
    results = [
        lab("hb", 7.5, on=day(7), order="early-response"),
        lab("hb", 6.0, on=day(-3)),  # recorded later, taken earlier: the first result
    ]
    assert "slow-response" not in codes(alerts(results))  # 1.5 g/dL in 10 days = 1.05 a week


# --- not-resolved ------------------------------------------------------------

RESOLVED = {"wbc": 6.0, "platelets": 200.0, "hb": 13.0}


@pytest.mark.parametrize(
    ("code", "value", "unresolved"),
    [
        ("wbc", 3.9, True),
        ("wbc", 4.0, False),
        ("platelets", 149.9, True),
        ("platelets", 150, False),
        ("hb", 11.9, True),
        ("hb", 12.0, False),
    ],
)
def test_a_cytopenia_at_the_two_week_check_is_not_resolved(
    code: str, value: float, unresolved: bool
) -> None:
    cbc = {**RESOLVED, code: value}
    results = [lab(c, v, on=day(14), order="2-week") for c, v in cbc.items()]
    raised = alerts(results)
    assert codes(raised) == (["not-resolved"] if unresolved else [])
    if unresolved:
        alert = only(raised, "not-resolved")
        assert (alert.severity, alert.since) == (Severity.WARNING, day(14))
        assert f"{value:g}" in alert.message


def test_only_the_two_week_results_count_as_the_two_week_check() -> None:
    results = [
        lab("wbc", 2.0, on=day(7), order="early-response"),
        lab("wbc", 5.0, on=day(14), order="2-week"),
        lab("wbc", 3.0, on=day(90), order="3-month"),
    ]
    assert "not-resolved" not in codes(alerts(results))


def test_the_clinic_may_set_the_cytopenia_limits() -> None:
    policy = AlertPolicy.from_mapping({"cytopenia_hb_below": 13.0})
    results = [lab("hb", 12.5, on=day(14), order="2-week")]
    assert codes(alerts(results, policy=policy)) == ["not-resolved"]
    assert codes(alerts(results)) == []


# --- homocysteine-high -------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([9.9], []),
        ([10], ["homocysteine-high"]),
        ([35, 9.9], []),
        ([8, 12], ["homocysteine-high"]),
    ],
)
def test_homocysteine_at_or_above_ten_is_above_target(
    values: list[float], expected: list[str]
) -> None:
    results = [lab("homocysteine", v, on=day(90 * i)) for i, v in enumerate(values)]
    raised = alerts(results)
    assert codes(raised) == expected
    if expected:
        assert only(raised, "homocysteine-high").since == day(90 * (len(values) - 1))


# --- pernicious-anaemia ------------------------------------------------------


@pytest.mark.parametrize(
    ("results", "pernicious"),
    [
        ([lab("gastrin", 1000)], False),
        ([lab("gastrin", 1000.1)], True),
        ([lab("if-antibodies", text="positive")], True),
        ([lab("if-antibodies", text="Positive")], True),
        ([lab("if-antibodies", text="negative")], False),
        ([lab("if-antibodies", text="negative"), lab("gastrin", 400)], False),
        ([lab("if-antibodies", text="negative"), lab("gastrin", 2500)], True),
    ],
)
def test_intrinsic_factor_antibodies_or_high_gastrin_mean_pernicious_anaemia(
    results: list[LabResult], pernicious: bool
) -> None:
    assert is_pernicious(results) is pernicious
    assert codes(alerts(results)) == (["pernicious-anaemia"] if pernicious else [])


def test_pernicious_anaemia_is_raised_since_the_first_evidence() -> None:
    results = [lab("gastrin", 3000, on=day(10)), lab("if-antibodies", on=day(2), text="positive")]
    alert = only(alerts(results), "pernicious-anaemia")
    assert (alert.severity, alert.since) == (Severity.INFO, day(2))
    assert "for life" in alert.message


# --- response-gate -----------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "status", "today", "raised"),
    [
        ("cyano", Status.PLANNED, day(7), False),
        ("cyano", Status.PLANNED, day(8), False),  # due + 1
        ("cyano", Status.PLANNED, day(9), True),  # due + 2
        ("cyano", Status.PLANNED, day(30), True),
        ("cyano", Status.DONE, day(9), False),
        ("cyano", Status.CANCELLED, day(9), False),
        ("hydroxo", Status.PLANNED, day(9), False),
    ],
)
def test_an_unconfirmed_response_gate_warns_two_days_after_it_was_due(
    protocol: str, status: Status, today: date, raised: bool
) -> None:
    found = alerts(enrolment=enrolled(protocol), events=[gate(day(7), status)], today=today)
    if raised:
        alert = only(found, "response-gate")
        assert (alert.severity, alert.since) == (Severity.WARNING, day(9))
    else:
        assert found == []


# --- evaluate as a whole -----------------------------------------------------


def test_alerts_come_most_urgent_first() -> None:
    results = [
        lab("homocysteine", 15),
        lab("folate", 3, on=day(-1)),
        lab("platelets", 5),
        lab("mma", 500),
        lab("hb", 4),
    ]
    raised = alerts(results, enrolment=enrolled("cyano", renal_impairment=True))
    assert codes(raised) == [
        "renal-cyano",
        "platelets-critical",
        "hb-critical",
        "folic-acid",
        "mma-confirms",
        "homocysteine-high",
    ]
    ranks = [SEVERITY_RANK[a.severity] for a in raised]
    assert ranks == sorted(ranks)


def test_every_alert_code_is_in_the_spec_table() -> None:
    assert len(ALERT_CODES) == 13
    assert "platelets-critical" in ALERT_CODES and "response-gate" in ALERT_CODES


# --- AlertPolicy.from_mapping ------------------------------------------------


def test_an_empty_mapping_gives_the_spec_defaults() -> None:
    policy = AlertPolicy.from_mapping({})
    assert policy == AlertPolicy()
    assert (policy.b12_borderline_low, policy.b12_borderline_high) == (150, 221)
    assert (
        policy.cytopenia_wbc_below,
        policy.cytopenia_platelets_below,
        policy.cytopenia_hb_below,
    ) == (4.0, 150, 12)


def test_numeric_strings_from_the_environment_are_accepted() -> None:
    assert AlertPolicy.from_mapping({"cytopenia_wbc_below": " 3.5"}).cytopenia_wbc_below == 3.5


@pytest.mark.parametrize(
    ("mapping", "says"),
    [
        ({"platelets_critical": 5}, "unknown alert policy key 'platelets_critical'"),
        ({"b12_borderline_low": 5000}, "b12_borderline_low = 5000 is outside a number from 50"),
        ({"b12_borderline_high": -1}, "b12_borderline_high = -1 is outside"),
        ({"cytopenia_hb_below": 120}, "cytopenia_hb_below = 120 is outside a number from 7 to 18"),
        ({"cytopenia_wbc_below": "low"}, "cytopenia_wbc_below must be a number"),
        ({"cytopenia_wbc_below": True}, "cytopenia_wbc_below must be a number"),
        ({"cytopenia_wbc_below": float("nan")}, "cytopenia_wbc_below must be a number"),
        ({"cytopenia_platelets_below": None}, "cytopenia_platelets_below must be a number"),
        (
            {"b12_borderline_low": 250, "b12_borderline_high": 200},
            "b12_borderline_low (250) must not be above b12_borderline_high (200)",
        ),
    ],
)
def test_alert_policy_refuses_unknown_keys_and_insane_values(
    mapping: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        AlertPolicy.from_mapping(mapping)
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)
