"""Settings: ``cobalt.toml`` (or the file named by ``COBALT_CONFIG``), then the
environment, then defaults (SPEC section 3).

Every setting is declared here once, with its type and its sane range
(pydantic-settings); a bad value is refused at start with one line naming the
key (``[scheduler] max_attempts = -1: ...``), exit status 2. A new clinic
setting is one line in ``ClinicSettings``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import time
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from scheduler.clinic_calendar import ClinicCalendar, load_holidays, parse_open_days
from scheduler.errors import ConfigError
from scheduler.validation import email_problem

DEFAULT_DATABASE_URL = "sqlite:///cobalt.db"


# -- value checks (each raises ValueError: pydantic names the key) ------------------


def _plain_text(value: str) -> str:
    """One line of printable text: no NUL, no newline, no control character."""
    if not value.isprintable():
        raise ValueError("must not contain control characters (NUL, newlines, tabs, ...)")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not an IANA time zone (e.g. Europe/London)") from None
    return value


def _send_time(value: str) -> str:
    if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", value, flags=re.ASCII):
        raise ValueError("is not HH:MM")
    return value


def _open_days(value: Any) -> Any:
    if isinstance(value, str):  # from the environment: "mon,tue wed"
        value = [v for v in re.split(r"[,\s]+", value) if v]
    if isinstance(value, list | tuple):
        parse_open_days(str(v) for v in value)  # ConfigError is a ValueError
    return value


def _holidays(value: str) -> str:
    load_holidays(value)
    return value


def _email(value: str) -> str:
    checked, problem = email_problem(value)
    if problem:
        raise ValueError(problem)
    return checked


Text = Annotated[str, AfterValidator(_plain_text)]
Email = Annotated[str, AfterValidator(_email)]
Seconds = Annotated[int, Field(ge=1, le=7 * 24 * 3600)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ClinicSettings(_Section):
    """``[clinic]``: who the clinic is and when it is open."""

    name: Annotated[Text, AfterValidator(_not_blank), Field(max_length=200)] = "B12 clinic"
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"
    open_days: Annotated[tuple[str, ...], BeforeValidator(_open_days)] = ("mon", "tue", "wed", "thu", "fri")
    holidays: Annotated[Text, AfterValidator(_holidays)] = ""
    email: Email = "clinic@example.org"
    send_time: Annotated[str, AfterValidator(_send_time)] = "08:00"
    # clinic policy: hydroxo-neuro "improvement continuing?" reviews, every so many days
    neuro_review_days: Annotated[int, Field(ge=7, le=90)] = 14
    # clinic policy: a dose given more days early than this needs `give --early`
    early_days_loading: Annotated[int, Field(ge=0, le=365)] = 1
    early_days_maintenance: Annotated[int, Field(ge=0, le=365)] = 14
    address: Text = ""  # shown in every patient message's "Where" and footer
    phone: Text = ""  # the clinic's telephone, in every patient message
    hours: Text = ""  # opening hours, e.g. "Mon-Fri 08:00-17:00"
    # clinic policy: the "we missed you" follow-up, days after a missed dose
    missed_after_days: Annotated[int, Field(ge=1, le=365)] = 3
    # clinic policy: the digest's "to telephone" lists patients this late, and those without email due this soon
    telephone_overdue_days: Annotated[int, Field(ge=1, le=365)] = 7
    telephone_ahead_days: Annotated[int, Field(ge=1, le=365)] = 7
    calendar_drug_names: bool = True  # patient calendar entries name the drug and dose

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def send_at(self) -> time:
        hours, minutes = self.send_time.split(":")
        return time(int(hours), int(minutes))

    def calendar(self) -> ClinicCalendar:
        return ClinicCalendar(parse_open_days(self.open_days), load_holidays(self.holidays),
                              self.neuro_review_days)


class SmtpSettings(_Section):
    """``[smtp]``: where messages go."""

    host: Text = ""
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    username: Text = ""
    password: str = Field(default="", repr=False)  # never in a repr or a log
    starttls: bool = False
    sender: Email = "clinic@example.org"
    outbox_dir: Annotated[Text, AfterValidator(_not_blank)] = "outbox"
    timeout: Annotated[float, Field(gt=0, le=600)] = 30.0


class SchedulerSettings(_Section):
    """``[scheduler]``: how ``cobalt run`` and the pass behave."""

    pass_every_seconds: Seconds = 60
    misfire_grace_seconds: Seconds = 3600
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = 200  # outbox rows one sender claims at a time
    # Senders a pass runs side by side (threads; each claims its own batches, SKIP
    # LOCKED on PostgreSQL, and keeps its own mail connection; on SQLite their writes
    # take turns). A process killed mid-batch may send one message twice per sender.
    senders: Annotated[int, Field(ge=1, le=32)] = 1
    # A sender's lease on the rows it claimed; renewed while it works, so a dead
    # sender's rows are taken over this long after it died (docs/faults.md).
    claim_seconds: Annotated[int, Field(ge=3, le=3600)] = 20
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 10  # a message's own 4xx answers before it fails
    retry_base_seconds: Seconds = 60  # back-off: base * 2**attempts, capped at a day
    overdue_catch_up_days: Annotated[int, Field(ge=1, le=366)] = 7  # after downtime, overdue notices this far back
    replan_batch: Annotated[int, Field(ge=1, le=100_000)] = 500  # patients replanned per transaction
    replan_per_pass: Annotated[int, Field(ge=1)] = 20000  # at most this many per pass; the next pass goes on
    outbox_keep_days: Annotated[int, Field(ge=1, le=36_500)] = 90  # then a sent message's body is cleared


_SOURCES: ContextVar[tuple[dict[str, Any], dict[str, Any]] | None] = ContextVar("cobalt_sources", default=None)


class _Layer(PydanticBaseSettingsSource):
    """One layer of settings already read into a dict (the file, or the environment)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class Settings(BaseSettings):
    """Everything Cobalt is configured with. ``load_settings()`` reads it;
    ``Settings(...)`` alone is the defaults and what is passed in."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    database_url: Annotated[Text, AfterValidator(_not_blank)] = DEFAULT_DATABASE_URL
    clinic: ClinicSettings = Field(default_factory=ClinicSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    alerts: dict[str, Any] = Field(default_factory=dict)  # see scheduler.alerts.AlertPolicy
    templates_dir: Text = ""  # empty: the templates shipped with Cobalt
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)  # relative paths are relative to this

    @field_validator("alerts")
    @classmethod
    def _alert_policy(cls, value: dict[str, Any]) -> dict[str, Any]:
        from scheduler.alerts import AlertPolicy

        AlertPolicy.from_mapping(value)  # ConfigError (a ValueError) names the key
        return value

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        layers = _SOURCES.get()
        if layers is None:
            return (init_settings,)
        environment, file = layers
        return (init_settings, _Layer(settings_cls, environment), _Layer(settings_cls, file))

    @property
    def outbox_path(self) -> Path:
        return self.base_dir / self.smtp.outbox_dir

    @property
    def templates_path(self) -> Path | None:
        return (self.base_dir / self.templates_dir) if self.templates_dir else None


# Environment variables that override the file: name -> (section, key).
ENVIRONMENT = {
    "COBALT_DATABASE_URL": (None, "database_url"),
    "COBALT_TEMPLATES_DIR": (None, "templates_dir"),
    "COBALT_CLINIC_NAME": ("clinic", "name"),
    "COBALT_CLINIC_TIMEZONE": ("clinic", "timezone"),
    "COBALT_CLINIC_HOLIDAYS": ("clinic", "holidays"),
    "COBALT_CLINIC_EMAIL": ("clinic", "email"),
    "COBALT_SEND_TIME": ("clinic", "send_time"),
    "COBALT_SMTP_HOST": ("smtp", "host"),
    "COBALT_SMTP_PORT": ("smtp", "port"),
    "COBALT_SMTP_USERNAME": ("smtp", "username"),
    "COBALT_SMTP_PASSWORD": ("smtp", "password"),
    "COBALT_SMTP_SENDER": ("smtp", "sender"),
    "COBALT_OUTBOX_DIR": ("smtp", "outbox_dir"),
}


@contextmanager
def _layers(environment: dict[str, Any], file: dict[str, Any]) -> Iterator[None]:
    token = _SOURCES.set((environment, file))
    try:
        yield
    finally:
        _SOURCES.reset(token)


def load_settings(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    cwd = cwd or Path.cwd()
    path = Path(environ.get("COBALT_CONFIG") or cwd / "cobalt.toml")
    file: dict[str, Any] = {}
    if path.exists():
        try:
            file = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    elif environ.get("COBALT_CONFIG"):  # set but empty: as if unset
        raise ConfigError(f"COBALT_CONFIG names {path}, which does not exist")
    if "base_dir" in file:
        raise ConfigError("cobalt.toml has no setting 'base_dir'")

    environment: dict[str, Any] = {}
    from_environment: dict[tuple[str, ...], str] = {}
    for name, (section, key) in ENVIRONMENT.items():
        if name in environ:
            target = environment if section is None else environment.setdefault(section, {})
            target[key] = environ[name]
            from_environment[(key,) if section is None else (section, key)] = name
    try:
        with _layers(environment, file):
            return Settings(base_dir=path.parent if path.exists() else cwd)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, from_environment)) from None


def _one_line(exc: ValidationError, from_environment: Mapping[tuple[str, ...], str]) -> str:
    """The first problem, naming its key: ``[scheduler] max_attempts = -1: must be at least 1``."""
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        where = f"[{loc[0]}]" if len(loc) > 1 else "cobalt.toml"
        return f"{where} has no setting {loc[-1]!r}"
    if loc[:2] in from_environment or loc[:1] in from_environment:
        key = from_environment.get(loc[:2]) or from_environment[loc[:1]]
    elif len(loc) >= 2 and loc[0] in ("clinic", "smtp", "scheduler", "alerts"):
        key = f"[{loc[0]}] {loc[1]}"
    elif loc:
        key = loc[0]
    else:
        key = "cobalt.toml"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind in ("model_type", "dict_type"):
        message = "must be a table of settings ([section] with key = value lines)"
    shown = error.get("input")
    if key.endswith("password") or "PASSWORD" in key:
        shown = "..."
    text = f"{key} = {shown!r}: {message}" if isinstance(shown, str | int | float | bool) else f"{key}: {message}"
    return " ".join(text.split())
