"""Settings: ``cobalt.toml`` (or the file named by ``COBALT_CONFIG``), then the
environment, then defaults (SPEC section 3)."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from scheduler.clinic_calendar import ClinicCalendar, load_holidays, parse_open_days
from scheduler.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite:///cobalt.db"


@dataclass(frozen=True)
class ClinicSettings:
    name: str = "B12 clinic"
    timezone: str = "UTC"
    open_days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    holidays: str = ""
    email: str = "clinic@example.org"
    send_time: str = "08:00"
    neuro_review_days: int = 14  # clinic policy: hydroxo-neuro "improvement continuing?" reviews
    early_days_loading: int = 1  # clinic policy: a loading dose more days early needs `give --early`
    early_days_maintenance: int = 14  # clinic policy: likewise for a maintenance dose

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


@dataclass(frozen=True)
class SmtpSettings:
    host: str = ""
    port: int = 25
    username: str = ""
    password: str = ""
    starttls: bool = False
    sender: str = "clinic@example.org"
    outbox_dir: str = "outbox"
    timeout: float = 30.0


@dataclass(frozen=True)
class SchedulerSettings:
    """``[scheduler]``: how ``cobalt run`` and the pass behave."""

    pass_every_seconds: int = 60
    misfire_grace_seconds: int = 3600
    batch_size: int = 200  # outbox rows one sender claims at a time
    claim_seconds: int = 300  # a claim not finished by then is taken over
    max_attempts: int = 10  # temporary failures before a message is marked failed
    retry_base_seconds: int = 60  # back-off: base * 2**attempts, capped at a day
    overdue_catch_up_days: int = 7  # after downtime, overdue notices this far back
    replan_batch: int = 500  # patients replanned per transaction when plans roll forward
    replan_per_pass: int = 20000  # at most this many per pass; the next pass goes on
    outbox_keep_days: int = 90  # then a sent message's body is cleared (its row stays: once-only)


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    clinic: ClinicSettings = field(default_factory=ClinicSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    alerts: dict[str, Any] = field(default_factory=dict)  # see scheduler.alerts.AlertPolicy
    templates_dir: str = ""  # empty: the templates shipped with Cobalt
    base_dir: Path = field(default_factory=Path.cwd)  # relative paths are relative to this

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


def _coerce(section: str, cls: type, raw: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    defaults = cls()
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"[{section}] has no setting {key!r}")
        default = getattr(defaults, key)
        try:
            if isinstance(default, bool):
                if isinstance(value, str):
                    value = value.strip().lower() in ("1", "true", "yes", "on")
                value = bool(value)
            elif isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            elif isinstance(default, tuple):
                if isinstance(value, str):
                    value = [v for v in re.split(r"[,\s]+", value) if v]
                value = tuple(str(v) for v in value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise ConfigError(f"[{section}] {key} = {value!r} is not a valid value") from None
        values[key] = value
    return replace(defaults, **values)


def load_settings(environ: dict[str, str] | None = None, cwd: Path | None = None) -> Settings:
    environ = dict(os.environ if environ is None else environ)
    cwd = cwd or Path.cwd()
    path = Path(environ.get("COBALT_CONFIG") or cwd / "cobalt.toml")
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    elif environ.get("COBALT_CONFIG"):  # set but empty: as if unset
        raise ConfigError(f"COBALT_CONFIG names {path}, which does not exist")

    for name, (section, key) in ENVIRONMENT.items():
        if name in environ:
            target = data if section is None else data.setdefault(section, {})
            target[key] = environ[name]

    top_level = {"database_url", "templates_dir", "clinic", "smtp", "scheduler", "alerts"}
    for key in data:
        if key not in top_level:
            raise ConfigError(f"cobalt.toml has no setting {key!r}")
    settings = Settings(
        database_url=str(data.get("database_url", DEFAULT_DATABASE_URL)),
        clinic=_coerce("clinic", ClinicSettings, data.get("clinic", {})),
        smtp=_coerce("smtp", SmtpSettings, data.get("smtp", {})),
        scheduler=_coerce("scheduler", SchedulerSettings, data.get("scheduler", {})),
        alerts=dict(data.get("alerts", {})),
        templates_dir=str(data.get("templates_dir", "")),
        base_dir=path.parent if path.exists() else cwd,
    )
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    clinic = settings.clinic
    try:
        ZoneInfo(clinic.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"[clinic] timezone {clinic.timezone!r} is not an IANA time zone") from None
    if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", clinic.send_time):
        raise ConfigError(f"[clinic] send_time {clinic.send_time!r} is not HH:MM")
    clinic.calendar()  # open days and holidays
    if not 7 <= clinic.neuro_review_days <= 90:
        raise ConfigError(f"[clinic] neuro_review_days {clinic.neuro_review_days} must be from 7 to 90")
    for key in ("early_days_loading", "early_days_maintenance"):
        if not 0 <= getattr(clinic, key) <= 365:
            raise ConfigError(f"[clinic] {key} {getattr(clinic, key)} must be from 0 to 365 days")
    if not 0 < settings.smtp.port < 65536:
        raise ConfigError(f"[smtp] port {settings.smtp.port} is not a port number")
    sched = settings.scheduler
    if sched.pass_every_seconds < 1 or sched.batch_size < 1 or sched.claim_seconds < 10:
        raise ConfigError("[scheduler] pass_every_seconds, batch_size and claim_seconds must be positive")
