"""Checks of what comes in from people: one place for each kind of value, called
by every way in (enrolment, corrections, import, the configuration).

An email address is checked with ``email-validator`` (the library pydantic
uses), without asking DNS: it must be one bare address (``ann@example.org``),
with no display name (``Ann <ann@example.org>``), no second address
(``a@b.c,evil@x.y``), no encoded words (``=?utf-8?q?...?=``), no quoting tricks
and no control characters (a CR or LF would start a new mail header).
"""

from __future__ import annotations

import functools
import re
from datetime import date

from scheduler.errors import BadInput


def check_email(value: str, flag: str) -> str:
    """``value`` as one plain email address (domain normalised), or ``BadInput``
    naming ``flag`` (``--email``, ``[clinic] email``, a CSV column, ...)."""
    if not isinstance(value, str):
        raise BadInput(f"{flag} must be an email address, not {type(value).__name__}")
    checked, problem = email_problem(value)
    if problem:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise BadInput(f"{flag} {shown!r} {problem}")
    return checked


def email_problem(value: str) -> tuple[str, str | None]:
    """(the normalised address, None), or (``value``, what is wrong with it in words)."""
    from email_validator import EmailNotValidError, validate_email

    if not value.isprintable():
        return value, "is not an email address: it holds control characters"
    text = value.strip()
    if not text:
        return value, "is not an email address: it is empty"
    if "=?" in text or '"' in text or "\\" in text:
        return value, "is not a plain email address (no quoting or encoded words)"
    local, at, domain = text.rpartition("@")
    if at and _PLAIN_LOCAL.fullmatch(local) and len(text) <= _MAX_ADDRESS:
        # A plain ASCII dot-atom local part is valid as it is: only the domain needs
        # the library, and a cohort shares a few domains (tests/test_bulk_write.py
        # checks this path against the library's own answer).
        normalised = _domain(domain)
        if normalised is not None and len(local) + 1 + len(normalised) <= _MAX_ADDRESS:
            return f"{local}@{normalised}", None
    try:
        checked = validate_email(text, check_deliverability=False, allow_quoted_local=False,
                                 allow_display_name=False, allow_domain_literal=False)
    except EmailNotValidError as exc:
        return value, f"is not an email address: {exc}"
    return str(checked.normalized), None


# RFC 5322 dot-atom of ASCII atext, at most 64 characters: what email-validator accepts as
# it is; anything else (Unicode, quoting, odd dots) goes to the library whole.
_PLAIN_LOCAL = re.compile(r"(?=.{1,64}\Z)[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*",
                          flags=re.ASCII)
_MAX_ADDRESS = 254


@functools.lru_cache(maxsize=4096)
def _domain(domain: str) -> str | None:
    """The domain as email-validator normalises it (checked with a plain local part), or None."""
    from email_validator import EmailNotValidError, validate_email

    try:
        checked = validate_email(f"a@{domain}", check_deliverability=False, allow_quoted_local=False,
                                 allow_display_name=False, allow_domain_literal=False)
    except EmailNotValidError:
        return None
    return str(checked.domain)


# Sane bounds for dates typed by a person: a treatment start or a record before
# EARLIEST_DATE is a slip of the keyboard; the plan reaches years past the latest.
EARLIEST_DATE = date(1990, 1, 1)
LATEST_YEAR = 9000
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", flags=re.ASCII)  # not 20260302 nor 2026-W10-1


def check_date(text: str) -> date:
    """``YYYY-MM-DD`` within sane bounds, or ``ValueError`` saying why in words
    (the command line and import each name the option or column)."""
    try:
        if not _ISO_DATE.fullmatch(text):
            raise ValueError(text)
        value = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    if value < EARLIEST_DATE:
        raise ValueError(f"{text!r} is before {EARLIEST_DATE.year}: check the year")
    if value.year > LATEST_YEAR:
        raise ValueError(f"{text!r} is too far in the future")
    return value
