"""People who sign in to the web app (SPEC section 9), and their failed attempts.

A password is stored only as an argon2 hash. ``failed_logins`` counts wrong
passwords in a row; the fifth sets ``locked_until`` (see ``scheduler.users``).
"""

from datetime import datetime

from sqlalchemy import Column
from sqlmodel import Field

from models import TableModel
from models.types import UTCDateTime, utcnow


class User(TableModel, table=True):
    __tablename__ = "app_user"  # type: ignore[assignment]  # "user" is reserved in PostgreSQL

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    role: str = Field(max_length=16)  # nurse | clinician | admin
    password_hash: str = Field(max_length=200)
    active: bool = True
    failed_logins: int = 0
    locked_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    last_login_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
