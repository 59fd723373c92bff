"""Shared pieces of the web tests: a clinic with users and patients, and a client
that signs in and posts forms with the page's CSRF token."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from sqlalchemy import Engine

from scheduler import db, service
from scheduler.config import ClinicSettings, Settings
from scheduler.users import add_user

PASSWORD = "correct horse battery"
USERS = {"nina": "nurse", "carl": "clinician", "ada": "admin"}
XSS_NAME = "<script>alert(1)</script>{{7*7}}"
TODAY = date(2026, 3, 2)  # a Monday


def web_settings(database_url: str, base_dir: Any) -> Settings:
    return Settings(database_url=database_url, base_dir=base_dir,
                    clinic=ClinicSettings(name="Riverside clinic", timezone="Europe/Berlin"))


def populate(engine: Engine, settings: Settings) -> None:
    """Three users and three patients: one overdue with low platelets, one due today
    with a critical count (an urgent alert), one whose name is an attack."""
    with db.transaction(engine) as session:
        for name, role in USERS.items():
            add_user(session, "setup", name, role, PASSWORD)
        ctx = service.Context(settings.clinic.calendar(), TODAY, "setup")
        service.enroll(session, ctx, mrn="MRN-OVERDUE", name="Olive Overdue", protocol="hydroxo-neuro",
                       neuro=True, start=date(2026, 2, 23), platelets=40)
        service.enroll(session, ctx, mrn="MRN-TODAY", name="Tom Today", protocol="hydroxo",
                       start=TODAY, platelets=5, email="tom@example.org")
        service.enroll(session, ctx, mrn="MRN-XSS", name=XSS_NAME, protocol="hydroxo",
                       start=date(2026, 3, 4))


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "the page carries a CSRF token"
    return found.group(1)
