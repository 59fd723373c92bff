"""Render a message from its Jinja templates: pure, no clock, no I/O beyond reading them.

Each kind has three templates in ``templates/KIND/``: ``subject.txt``,
``body.txt`` and ``body.html`` (which extends ``templates/layout.html``). Text
is rendered with autoescaping off, HTML with it on; both use ``StrictUndefined``,
so a missing variable is a ``TemplateError``, never a blank.

Sending is ``scheduler.mailer``'s job; this module only builds a ``Message``.

The context each kind expects (dates are ``datetime.date``)::

    every kind    clinic = {"name": str, "email": str, "timezone": str, "address": str,
                            "phone": str, "hours": str}  ("" when not configured)

    dose-reminder patient = {"name": str}
    lab-reminder  due = date
                  time = str, e.g. "08:00"; "" when no time is given

    changed       patient = {"name": str}
                  what = "appointment" | "blood test"
                  old = date (what the patient was told)
                  new = date, or None when it is cancelled

    missed        patient = {"name": str}
                  due = date (the dose that was missed)

    overdue       patient = {"mrn": str, "name": str, "platelets": float | None,
                             "neuro": bool (optional)}
                  event = {"kind": "dose" | "lab" | "review", "label": str, "seq": int,
                           "due": date, "because": str, "tests": list[str],
                           "drug": str | None, "amount": str | None (a dose's, optional)}
                  today = date

    alert         patient = {"mrn": str, "name": str}
                  alert = {"code": str, "severity": str, "message": str, "since": date}

    digest        today = date
                  due_today, overdue, upcoming = lists of
                      {"mrn": str, "name": str, "kind": str, "label": str, "seq": int,
                       "due": date, "because": str, "tests": list[str],
                       "platelets": float | None, "neuro": bool (optional),
                       "drug", "amount": str | None (optional: a dose's),
                       "count": int, "what": str (optional: a patient's overdue
                       events of one kind as one line, scheduler.worklist)}
                  alerts = list of {"mrn", "name", "code", "severity", "message",
                                    "since": date}
                  failed = list of {"kind", "to", "subject", "error"}
                  to_telephone = list of {"mrn", "name", "phone": str | None,
                                          "reasons": list[str]}
                  not_sent = list of {"kind", "mrn", "name", "phone": str | None,
                                      "due": date | None}
                  totals = {"due_today", "overdue", "upcoming", "to_telephone",
                            "not_sent": int}

Patient messages (``dose-reminder``, ``lab-reminder``, ``changed``, ``missed``) say only who, when,
where, what to bring and how to rearrange: no diagnosis, drug, test or lab
value. Clinic messages carry the injection-technique note
(``technique.injection_note``) and the approved sites for every dose; the
templates reach them as the globals ``injection_note(platelets, neuro)`` and
``approved_sites``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2

from scheduler.errors import CobaltError
from scheduler.technique import APPROVED_SITES, injection_note

# Shipped inside the package (the checkout's top-level `templates` links here).
DEFAULT_TEMPLATES_DIR = Path(str(files("scheduler") / "templates"))

PATIENT_KINDS = ("dose-reminder", "lab-reminder", "changed", "missed")
CLINIC_KINDS = ("overdue", "digest", "alert")
KINDS = PATIENT_KINDS + CLINIC_KINDS

MESSAGE_ID_HASH_LENGTH = 24

# English names, not the process locale's: a clinic reads the same dates everywhere.
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


class TemplateError(CobaltError):
    """A message could not be rendered: unknown kind, missing template or variable."""


@dataclass(frozen=True)
class Message:
    """A rendered message, ready for a ``Mailer``."""

    kind: str
    to: str
    subject: str
    text: str
    html: str
    message_id: str
    calendar: str | None = None  # an iCalendar attachment (text/calendar), for patient reminders


def longdate(value: date) -> str:
    """``date(2026, 3, 4)`` -> ``"Wednesday 4 March 2026"`` (no leading zero)."""
    _require_date(value, "longdate")
    return f"{_WEEKDAYS[value.weekday()]} {value.day} {_MONTHS[value.month - 1]} {value.year}"


def shortdate(value: date) -> str:
    """``date(2026, 3, 4)`` -> ``"2026-03-04"``."""
    _require_date(value, "shortdate")
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d}"


def _require_date(value: object, name: str) -> None:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # raises UndefinedError
    if not isinstance(value, date):
        raise TemplateError(f"{name} needs a date, got {type(value).__name__}")


def make_message_id(dedupe_key: str, domain: str) -> str:
    """A Message-ID that is the same for the same key, on every run and every host."""
    if not domain or any(c in domain for c in "<>@ \t\r\n"):
        raise ValueError(f"not a mail domain: {domain!r}")
    digest = hashlib.sha256(dedupe_key.encode("utf-8")).hexdigest()
    return f"<cobalt.{digest[:MESSAGE_ID_HASH_LENGTH]}@{domain}>"


class _BytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja's compiled templates, kept on disk across processes and passes (Jinja's
    per-user folder in the temporary directory): each entry is keyed by the
    template's file and checked against its source, so an edited template is
    compiled afresh. Compiling the templates was ~0.1 s of every pass. A cache that
    cannot be written only makes rendering slower, never wrong."""

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


@functools.cache
def _bytecode_cache() -> jinja2.BytecodeCache | None:
    try:
        return _BytecodeCache()
    except (OSError, RuntimeError):  # no safe folder of this user's: compile each time
        return None


class Templates:
    """The message templates in one folder, ready to render."""

    def __init__(self, path: Path = DEFAULT_TEMPLATES_DIR) -> None:
        self.path = Path(path)
        self._text = self._environment(autoescape=False)
        self._html = self._environment(autoescape=True)
        # Each template compiled once for this object's life (a pass makes its own, so an
        # edited template is read by the next pass); not looked up and stat'ed per message.
        self._compiled: dict[tuple[bool, str], jinja2.Template] = {}

    def _environment(self, *, autoescape: bool) -> jinja2.Environment:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(self.path),
            autoescape=autoescape,
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,  # a Templates object lives for a pass: no stat of every file per message
            bytecode_cache=_bytecode_cache(),
        )
        env.filters["longdate"] = longdate
        env.filters["shortdate"] = shortdate
        env.globals["injection_note"] = injection_note
        env.globals["approved_sites"] = APPROVED_SITES
        return env

    def render(self, kind: str, context: Mapping[str, Any], *, to: str, message_id: str) -> Message:
        """Render the subject (one line), text and HTML of ``kind`` for ``to``."""
        if kind not in KINDS:
            raise TemplateError(f"unknown message kind {kind!r}; known: {', '.join(KINDS)}")
        values = dict(context)
        subject = self._render(False, kind, "subject.txt", values)
        return Message(
            kind=kind,
            to=to,
            subject=" ".join(subject.split()),
            text=self._render(False, kind, "body.txt", values),
            html=self._render(True, kind, "body.html", values),
            message_id=message_id,
        )

    def _render(self, html: bool, kind: str, name: str, context: dict[str, Any]) -> str:
        path = f"{kind}/{name}"
        try:
            template = self._compiled.get((html, path))
            if template is None:
                template = self._compiled[(html, path)] = (self._html if html else self._text).get_template(path)
            return template.render(context)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{path}: {exc}") from exc
