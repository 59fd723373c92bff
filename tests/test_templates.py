"""The message templates, their filters, and the injection-technique note."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from scheduler import messages
from scheduler.messages import (
    DEFAULT_TEMPLATES_DIR,
    KINDS,
    PATIENT_KINDS,
    Message,
    TemplateError,
    Templates,
    longdate,
    make_message_id,
    shortdate,
)
from scheduler.technique import (
    APPROVED_SITES,
    FINE_NEEDLE_FROM,
    STANDARD_ABOVE,
    TRANSFUSION_BELOW,
    Band,
    band,
    injection_note,
)

CLINIC = {
    "name": "Riverside clinic",
    "email": "clinic@example.org",
    "timezone": "Europe/Berlin",
    "address": "12 River Road, Leeds LS1 4AB",
    "phone": "0113 496 0000",
    "hours": "Monday to Friday, 08:00-17:00",
}
REMINDERS = ("dose-reminder", "lab-reminder")
TODAY = date(2026, 3, 5)

# Words a patient message must never carry: diagnosis, drug, tests, lab units.
FORBIDDEN_IN_PATIENT_MESSAGES = (
    "b12",
    "cobalamin",
    "anaemia",
    "anemia",
    "folate",
    "platelet",
    "haemoglobin",
    "hemoglobin",
    "homocysteine",
    "pernicious",
    "deficiency",
    "mmol",
    "pmol",
    "g/dl",
)


def digest_item(**changes: Any) -> dict[str, Any]:
    item = {
        "mrn": "M100",
        "name": "Ann Lee",
        "kind": "dose",
        "label": "maintenance",
        "seq": 4,
        "due": TODAY,
        "because": "3 months after dose 3, given 2025-12-05",
        "tests": [],
        "platelets": 30.0,
    }
    return item | changes


def full_context(kind: str) -> dict[str, Any]:
    """A complete context for ``kind``, as the scheduler builds it."""
    if kind == "changed":
        return {
            "clinic": CLINIC,
            "patient": {"name": "Ann Lee"},
            "what": "appointment",
            "old": date(2026, 3, 4),
            "new": date(2026, 3, 6),
        }
    if kind == "missed":
        return {"clinic": CLINIC, "patient": {"name": "Ann Lee"}, "due": date(2026, 3, 2)}
    if kind in PATIENT_KINDS:
        return {
            "clinic": CLINIC,
            "patient": {"name": "Ann Lee"},
            "due": date(2026, 3, 4),
            "time": "08:00",
        }
    if kind == "overdue":
        return {
            "clinic": CLINIC,
            "patient": {"mrn": "M100", "name": "Ann Lee", "platelets": 30.0},
            "event": {
                "kind": "dose",
                "label": "loading",
                "seq": 2,
                "due": date(2026, 3, 2),
                "because": "2 days after dose 1, given 2026-02-28",
                "tests": [],
            },
            "today": TODAY,
        }
    if kind == "alert":
        return {
            "clinic": CLINIC,
            "patient": {"mrn": "M100", "name": "Ann Lee"},
            "alert": {
                "code": "hb-critical",
                "severity": "urgent",
                "message": "Packed red cells; review today.",
                "since": date(2026, 3, 4),
            },
        }
    if kind == "digest":
        return {
            "clinic": CLINIC,
            "today": TODAY,
            "due_today": [digest_item()],
            "overdue": [
                digest_item(mrn="M200", name="Bo Park", due=date(2026, 3, 1), platelets=None),
                digest_item(
                    mrn="M300",
                    name="Cy Diaz",
                    kind="lab",
                    label="3-month",
                    due=date(2026, 3, 4),
                    tests=["b12", "cbc"],
                    platelets=None,
                ),
            ],
            "upcoming": [digest_item(mrn="M400", name="Di Wu", due=date(2026, 3, 9))],
            "alerts": [
                {
                    "mrn": "M100",
                    "name": "Ann Lee",
                    "code": "platelets-low",
                    "severity": "info",
                    "message": "25-27G needle, 5-10 minutes of pressure",
                    "since": date(2026, 3, 1),
                },
            ],
            "totals": {"due_today": 1, "overdue": 2, "upcoming": 1, "to_telephone": 2, "not_sent": 1},
            "to_telephone": [
                {"mrn": "M200", "name": "Bo Park", "phone": "07700 900123",
                 "reasons": ["overdue since 2026-02-20 (13 days)"]},
                {"mrn": "M500", "name": "Ed Moss", "phone": None,
                 "reasons": ["no email address; due 2026-03-06"]},
            ],
            "not_sent": [
                {"kind": "dose-reminder", "mrn": "M600", "name": "Fay Ng", "phone": "07700 900456",
                 "due": date(2026, 3, 4)},
            ],
            "failed": [
                {
                    "kind": "dose-reminder",
                    "to": "eve@example.org",
                    "subject": "Reminder",
                    "error": "SMTP 550 on RCPT TO",
                },
            ],
        }
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates()


def render(templates: Templates, kind: str, context: dict[str, Any] | None = None) -> Message:
    return templates.render(
        kind,
        full_context(kind) if context is None else context,
        to="someone@example.org",
        message_id="<cobalt.test@example.org>",
    )


def visible_text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


# -- every kind renders -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_from_a_full_context(templates: Templates, kind: str) -> None:
    message = render(templates, kind)

    assert message.kind == kind
    assert message.to == "someone@example.org"
    assert message.message_id == "<cobalt.test@example.org>"
    assert message.subject and "\n" not in message.subject
    assert message.text.strip()
    assert message.html.lstrip().startswith("<!DOCTYPE html>")
    assert CLINIC["email"] in message.text and CLINIC["email"] in message.html


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_variable_is_an_error_not_a_blank(templates: Templates, kind: str) -> None:
    context = full_context(kind)
    del context["clinic"]

    with pytest.raises(TemplateError, match="clinic"):
        render(templates, kind, context)


def test_a_missing_key_inside_a_variable_is_an_error(templates: Templates) -> None:
    context = full_context("overdue")
    del context["event"]["because"]

    with pytest.raises(TemplateError, match="because"):
        render(templates, "overdue", context)


def test_an_unknown_kind_is_refused(templates: Templates) -> None:
    with pytest.raises(TemplateError, match="unknown message kind"):
        templates.render("postcard", {}, to="a@example.org", message_id="<x@example.org>")


def test_the_default_templates_folder_is_the_repositorys(templates: Templates) -> None:
    assert (Path(__file__).resolve().parent.parent / "templates").resolve() == DEFAULT_TEMPLATES_DIR.resolve()
    assert templates.path == DEFAULT_TEMPLATES_DIR
    for kind in KINDS:
        for part in ("subject.txt", "body.txt", "body.html"):
            assert (DEFAULT_TEMPLATES_DIR / kind / part).is_file()


def test_a_multi_line_subject_is_folded_into_one_line(tmp_path: Path) -> None:
    (tmp_path / "alert").mkdir()
    (tmp_path / "alert" / "subject.txt").write_text("  Urgent:\n  {{ alert }}\n\n")
    (tmp_path / "alert" / "body.txt").write_text("{{ alert }}\n")
    (tmp_path / "alert" / "body.html").write_text("<p>{{ alert }}</p>\n")

    message = Templates(tmp_path).render(
        "alert", {"alert": "check   M1"}, to="c@example.org", message_id="<x@example.org>"
    )

    assert message.subject == "Urgent: check M1"
    assert message.text == "check   M1\n"  # bodies keep their trailing newline


# -- escaping -----------------------------------------------------------------

HOSTILE_NAME = "<b>Eve</b> {{ clinic.name }}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_hostile_patient_name_is_escaped_in_html_and_literal_in_text(
    templates: Templates, kind: str
) -> None:
    context = full_context(kind)
    if kind == "digest":
        context["due_today"] = [digest_item(name=HOSTILE_NAME)]
    else:
        context["patient"]["name"] = HOSTILE_NAME

    message = render(templates, kind, context)

    assert HOSTILE_NAME in message.text
    assert "&lt;b&gt;Eve&lt;/b&gt; {{ clinic.name }}" in message.html
    assert "<b>Eve</b>" not in message.html


def test_the_subject_is_not_html_escaped(templates: Templates) -> None:
    context = full_context("dose-reminder")
    context["clinic"] = CLINIC | {"name": "Smith & Jones <surgery>"}

    message = render(templates, "dose-reminder", context)

    assert "Smith & Jones <surgery>" in message.subject
    assert "Smith &amp; Jones &lt;surgery&gt;" in message.html


# -- patient messages ---------------------------------------------------------


@pytest.mark.parametrize("kind", PATIENT_KINDS)
@pytest.mark.parametrize("part", ["subject", "text", "html"])
def test_patient_reminder_never_mentions_a_diagnosis_drug_test_or_lab_value(
    templates: Templates, kind: str, part: str
) -> None:
    content = getattr(render(templates, kind), part).lower()

    for word in FORBIDDEN_IN_PATIENT_MESSAGES:
        assert word not in content, f"{kind} {part} says {word!r}"


@pytest.mark.parametrize("kind", REMINDERS)
def test_patient_reminder_says_when_where_and_how_to_rearrange(
    templates: Templates, kind: str
) -> None:
    message = render(templates, kind)

    for content in (message.text, visible_text(message.html)):
        assert "Dear Ann Lee" in content
        assert "Wednesday 4 March 2026 at 08:00" in content
        assert "Riverside clinic" in content
        assert "bring" in content
        assert "clinic@example.org" in content
    assert "Wednesday 4 March 2026" in message.subject


@pytest.mark.parametrize("kind", REMINDERS)
def test_patient_reminder_without_a_time_gives_only_the_date(
    templates: Templates, kind: str
) -> None:
    context = full_context(kind) | {"time": ""}

    message = render(templates, kind, context)

    assert "Wednesday 4 March 2026" in message.text
    assert " at \n" not in message.text and "Wednesday 4 March 2026 at" not in message.text


# -- clinic messages ----------------------------------------------------------


def test_overdue_dose_carries_the_technique_note_and_the_approved_sites(
    templates: Templates,
) -> None:
    message = render(templates, "overdue")  # platelets 30

    for content in (message.text, message.html):
        assert injection_note(30.0) in content
        assert "25-27G needle" in content
        assert APPROVED_SITES in content
    assert "M100" in message.text and "Ann Lee" in message.text
    assert "2 days after dose 1, given 2026-02-28" in message.text
    assert "3 days ago" in message.text


def test_overdue_lab_lists_its_tests_and_no_technique_note(templates: Templates) -> None:
    context = full_context("overdue")
    context["event"] |= {
        "kind": "lab",
        "label": "3-month",
        "due": date(2026, 3, 4),
        "tests": ["b12", "cbc", "homocysteine"],
    }

    message = render(templates, "overdue", context)

    assert "b12, cbc, homocysteine" in message.text
    assert "1 day ago" in message.text
    assert APPROVED_SITES not in message.text


def test_digest_gives_each_dose_its_technique_note(templates: Templates) -> None:
    message = render(templates, "digest")

    assert injection_note(30.0) in message.text
    assert injection_note(None) in message.text  # Bo Park: no count recorded
    assert message.text.count(APPROVED_SITES) == 3  # three doses, not the lab
    assert "b12, cbc" in message.text
    for mrn in ("M100", "M200", "M300", "M400"):
        assert mrn in message.text and mrn in message.html
    assert "platelets-low" in message.text
    assert "eve@example.org" in message.text
    assert "1 due today, 2 overdue" in message.subject


def test_digest_says_none_for_each_empty_section(templates: Templates) -> None:
    context = full_context("digest") | {
        "due_today": [],
        "overdue": [],
        "upcoming": [],
        "totals": {"due_today": 0, "overdue": 0, "upcoming": 0, "to_telephone": 0, "not_sent": 0},
        "to_telephone": [],
        "not_sent": [],
        "alerts": [],
        "failed": [],
    }

    message = render(templates, "digest", context)

    assert message.text.count("\nnone\n") == 7
    assert message.html.count("<p>none</p>") == 7


def test_alert_names_the_patient_the_code_and_what_to_do(templates: Templates) -> None:
    message = render(templates, "alert")

    assert message.subject == "[URGENT] hb-critical: MRN M100"
    for content in (message.text, message.html):
        assert "Ann Lee" in content
        assert "Packed red cells; review today." in content
        assert "Wednesday 4 March 2026" in content


# -- filters and Message-IDs --------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 3, 4), "Wednesday 4 March 2026"),
        (date(2026, 12, 31), "Thursday 31 December 2026"),
        (date(2028, 2, 29), "Tuesday 29 February 2028"),
    ],
)
def test_longdate_writes_the_weekday_day_without_zero_month_and_year(
    day: date, expected: str
) -> None:
    assert longdate(day) == expected


def test_shortdate_is_iso() -> None:
    assert shortdate(date(2026, 3, 4)) == "2026-03-04"


def test_a_date_filter_refuses_a_string() -> None:
    with pytest.raises(TemplateError, match="longdate needs a date"):
        longdate("2026-03-04")  # type: ignore[arg-type]


def test_message_id_is_stable_for_the_same_key_and_differs_for_another() -> None:
    first = make_message_id("event:17:dose-reminder:ann@example.org", "example.org")

    assert first == make_message_id("event:17:dose-reminder:ann@example.org", "example.org")
    assert first != make_message_id("event:18:dose-reminder:ann@example.org", "example.org")
    assert re.fullmatch(r"<cobalt\.[0-9a-f]{24}@example\.org>", first)


def test_message_id_refuses_a_domain_that_is_not_one() -> None:
    with pytest.raises(ValueError):
        make_message_id("key", "a@b")


# -- injection technique ------------------------------------------------------


@pytest.mark.parametrize(
    ("platelets", "expected"),
    [
        (None, Band.STANDARD),
        (400.0, Band.STANDARD),
        (50.1, Band.STANDARD),
        (50.0, Band.FINE_NEEDLE),
        (30.0, Band.FINE_NEEDLE),
        (25.0, Band.FINE_NEEDLE),
        (24.9, Band.VERY_LOW),
        (10.0, Band.VERY_LOW),
        (9.9, Band.CRITICAL),
        (0.0, Band.CRITICAL),
    ],
)
def test_technique_band_at_each_edge(platelets: float | None, expected: Band) -> None:
    assert band(platelets) is expected


def test_the_thresholds_are_the_seeds() -> None:
    assert (STANDARD_ABOVE, FINE_NEEDLE_FROM, TRANSFUSION_BELOW) == (50, 25, 10)


@pytest.mark.parametrize("platelets", [None, 50.1, 150.0])
def test_a_normal_or_unknown_count_means_standard_im(platelets: float | None) -> None:
    note = injection_note(platelets)

    assert "standard intramuscular" in note
    assert "needle" not in note and "transfusion" not in note


@pytest.mark.parametrize("platelets", [50.0, 25.0])
def test_from_25_to_50_means_a_fine_needle_and_pressure(platelets: float) -> None:
    note = injection_note(platelets)

    assert "25-27G needle" in note and "5-10 minutes" in note
    assert "treat anyway" not in note and "transfusion" not in note


@pytest.mark.parametrize("platelets", [24.9, 10.0])
def test_below_25_means_treat_anyway_with_neurological_symptoms(platelets: float) -> None:
    note = injection_note(platelets)

    assert "with neurological symptoms, treat anyway" in note
    assert "25-27G needle" in note
    assert "transfusion" not in note


def test_below_10_means_consider_platelet_transfusion_support() -> None:
    note = injection_note(9.9)

    assert "consider platelet transfusion support" in note
    assert "with neurological symptoms, treat anyway" in note


@pytest.mark.parametrize("platelets", [-1.0, float("nan")])
def test_a_count_that_is_not_a_count_is_refused(platelets: float) -> None:
    with pytest.raises(ValueError):
        injection_note(platelets)


def test_the_approved_sites_never_include_the_buttock_without_saying_why() -> None:
    assert "deltoid" in APPROVED_SITES and "vastus lateralis" in APPROVED_SITES
    assert "never the buttock" in APPROVED_SITES and "sciatic" in APPROVED_SITES


def test_digest_counts_what_it_does_not_list(templates: Templates) -> None:
    context = full_context("digest") | {
        "totals": {"due_today": 1, "overdue": 502, "upcoming": 1, "to_telephone": 2, "not_sent": 1}}

    message = render(templates, "digest", context)

    assert "Overdue (502)" in message.text
    assert "and 500 more" in message.text and "and 500 more" in message.html
    assert "502 overdue" in message.subject


def test_digest_counts_the_open_alerts_it_does_not_list(templates: Templates) -> None:
    context = full_context("digest")
    context["totals"] = {**context["totals"], "alerts": len(context["alerts"]) + 700}

    message = render(templates, "digest", context)

    assert f"Open alerts ({len(context['alerts']) + 700})" in message.text
    assert "and 700 more: run `cobalt alerts`" in message.text and "and 700 more" in message.html


@pytest.mark.parametrize(("neuro", "says"), [
    (True, "neurological symptoms are recorded: treat anyway"),
    (False, "no neurological symptoms are recorded: check with the clinician first"),
])
def test_below_25_the_note_follows_the_recorded_neuro_flag(templates: Templates, neuro: bool, says: str) -> None:
    context = full_context("overdue")
    context["patient"] = {**context["patient"], "platelets": 18.0, "neuro": neuro}

    message = render(templates, "overdue", context)

    assert says in message.text and says in message.html


# -- truthful messages: where, changed, missed, to telephone ------------------------


@pytest.mark.parametrize("kind", PATIENT_KINDS)
def test_every_patient_message_gives_the_clinics_address_telephone_and_hours(
    templates: Templates, kind: str
) -> None:
    message = render(templates, kind)

    for content in (message.text, visible_text(message.html)):
        assert "Where: Riverside clinic, 12 River Road, Leeds LS1 4AB" in " ".join(content.split()) \
            or "Where Riverside clinic, 12 River Road, Leeds LS1 4AB" in " ".join(content.split())
        assert "Telephone 0113 496 0000" in content
        assert "Monday to Friday, 08:00-17:00" in content
        assert "clinic@example.org" in content


@pytest.mark.parametrize("kind", PATIENT_KINDS)
def test_a_clinic_without_address_telephone_or_hours_still_renders(templates: Templates, kind: str) -> None:
    context = full_context(kind) | {"clinic": CLINIC | {"address": "", "phone": "", "hours": ""}}

    message = render(templates, kind, context)

    assert "Where: Riverside clinic\n" in message.text
    assert "Telephone" not in message.text and "Open" not in message.text


def test_a_moved_event_tells_the_old_date_the_new_one_and_how_to_rearrange(templates: Templates) -> None:
    message = render(templates, "changed")

    assert message.subject == "Your appointment at Riverside clinic has moved to Friday 6 March 2026"
    for content in (message.text, visible_text(message.html)):
        flat = " ".join(content.split())
        assert "Wednesday 4 March 2026 (no longer)" in flat
        assert "Friday 6 March 2026" in flat
        assert "If the day does not suit you" in flat and "0113 496 0000" in flat


def test_a_cancelled_event_says_so_and_gives_no_new_date(templates: Templates) -> None:
    context = full_context("changed") | {"what": "blood test", "new": None}

    message = render(templates, "changed", context)

    assert message.subject == "Your blood test at Riverside clinic on Wednesday 4 March 2026 is cancelled"
    for content in (message.text, visible_text(message.html)):
        flat = " ".join(content.split())
        assert "blood test on Wednesday 4 March 2026 is cancelled" in flat
        assert "please do not come" in flat
        assert "March 2026" not in flat.replace("Wednesday 4 March 2026", "")


def test_the_missed_follow_up_says_we_missed_you_and_asks_to_book(templates: Templates) -> None:
    message = render(templates, "missed")

    assert "We missed you" in message.subject and "Monday 2 March 2026" in message.subject
    for content in (message.text, visible_text(message.html)):
        flat = " ".join(content.split())
        assert "We missed you at your appointment on Monday 2 March 2026" in flat
        assert "please book a new appointment" in flat and "0113 496 0000" in flat


def test_the_digest_lists_whom_to_telephone_with_their_numbers_and_what_was_not_sent(
    templates: Templates,
) -> None:
    message = render(templates, "digest")

    for content in (message.text, visible_text(message.html)):
        assert "To telephone (2)" in content
        assert "M200 Bo Park" in content and "07700 900123" in content
        assert "overdue since 2026-02-20 (13 days)" in content
        assert "M500 Ed Moss" in content and "no telephone number recorded" in content
        assert "Reminders not sent because their moment passed (1)" in content
        assert "M600 Fay Ng" in content and "2026-03-04" in content and "07700 900456" in content
    assert "2 to telephone" in message.subject


def test_every_kind_fails_on_a_missing_clinic_address_key(templates: Templates) -> None:
    for kind in KINDS:
        context = full_context(kind) | {"clinic": {k: v for k, v in CLINIC.items() if k != "hours"}}
        with pytest.raises(TemplateError, match="hours"):
            render(templates, kind, context)


# -- compiled templates kept across passes ------------------------------------


def _alert_templates(folder: Path, subject: str) -> None:
    (folder / "alert").mkdir(exist_ok=True)
    (folder / "alert" / "subject.txt").write_text(subject)
    (folder / "alert" / "body.txt").write_text("{{ alert }}\n")
    (folder / "alert" / "body.html").write_text("<p>{{ alert }}</p>\n")


def _subject(folder: Path) -> str:
    return Templates(folder).render("alert", {"alert": "A"}, to="c@example.org", message_id="<x@example.org>").subject


def test_a_template_edited_between_passes_is_compiled_afresh_though_compiled_ones_are_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(messages, "_bytecode_cache", lambda: messages._BytecodeCache(str(cache)))
    folder = tmp_path / "templates"
    folder.mkdir()
    _alert_templates(folder, "First {{ alert }}")
    assert _subject(folder) == "First A"
    kept = sorted(cache.iterdir())
    assert len(kept) == 3  # subject, text and HTML compiled once, for the next pass
    assert _subject(folder) == "First A"
    _alert_templates(folder, "Second {{ alert }}")
    assert _subject(folder) == "Second A"


def test_a_cache_that_cannot_be_written_only_costs_a_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "_bytecode_cache", lambda: messages._BytecodeCache(str(tmp_path / "no such folder")))
    _alert_templates(tmp_path, "Still {{ alert }}")
    assert _subject(tmp_path) == "Still A"
