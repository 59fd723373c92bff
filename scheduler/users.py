"""Web users, roles and what each role may change (SPEC section 9).

Passwords are stored as argon2 hashes (argon2-cffi's defaults: memory-hard).
Five wrong passwords in a row lock the name for 15 minutes; a right password
after the lock has run out starts the count again. The clock comes from the edge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, col, select

from models import User
from scheduler.errors import BadInput
from scheduler.store import audit

# Clinic policy (SPEC section 9).
LOCK_AFTER_FAILURES = 5
LOCK_FOR = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 8

_hasher = PasswordHasher()
# Verified when the name is unknown, so an unknown name costs the same time as a known one.
_DUMMY_HASH = _hasher.hash("not a password anyone has")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class Role(StrEnum):
    NURSE = "nurse"
    CLINICIAN = "clinician"
    ADMIN = "admin"


class Action(StrEnum):
    """A change made through the web app; each is allowed to some roles."""

    ENROL = "enrol"
    GIVE = "give"
    LAB = "lab"
    MOVE = "move"
    EDIT = "edit"
    ACK = "ack"  # info and warning alerts
    ACK_URGENT = "ack-urgent"
    END_LOADING = "end-loading"
    CONFIRM_RESPONSE = "confirm-response"
    REVIEW = "review"
    SWITCH = "switch"
    DISCHARGE = "discharge"
    VOID = "void"
    MANAGE_USERS = "manage-users"
    ADMIN_PAGES = "admin-pages"  # the outbox and the audit trail


_NURSE = frozenset({Action.ENROL, Action.GIVE, Action.LAB, Action.MOVE, Action.EDIT, Action.ACK})
PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.NURSE: _NURSE,
    Role.CLINICIAN: _NURSE | {Action.ACK_URGENT, Action.END_LOADING, Action.CONFIRM_RESPONSE,
                              Action.REVIEW, Action.SWITCH, Action.DISCHARGE, Action.VOID},
    Role.ADMIN: frozenset({Action.MANAGE_USERS, Action.ADMIN_PAGES}),
}


def may(role: str, action: Action) -> bool:
    try:
        return action in PERMISSIONS[Role(role)]
    except ValueError:
        return False


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in: the user, or why not (no hint which of name or password)."""

    user: User | None
    locked: bool = False


def check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise BadInput(f"unknown role {role!r}: choose one of {', '.join(r.value for r in Role)}") from None


def check_name(name: str) -> str:
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise BadInput(f"user name {name!r} must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)")
    return name


def add_user(session: Session, actor: str, name: str, role: str, password: str) -> User:
    name, chosen = check_name(name), check_role(role)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadInput(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if session.exec(select(User.id).where(User.name == name)).first() is not None:
        raise BadInput(f"a user named {name!r} already exists")
    user = User(name=name, role=chosen.value, password_hash=_hasher.hash(password))
    session.add(user)
    session.flush()
    audit(session, actor, "user-add", None, user=name, role=chosen.value)
    return user


def list_users(session: Session) -> list[dict[str, Any]]:
    return [
        {"name": u.name, "role": u.role, "active": u.active,
         "locked_until": u.locked_until.isoformat() if u.locked_until else None,
         "last_login_at": u.last_login_at.isoformat() if u.last_login_at else None}
        for u in session.exec(select(User).order_by(col(User.name)))
    ]


def disable_user(session: Session, actor: str, name: str) -> bool:
    """Returns whether anything changed. A disabled user's sessions end at their next request."""
    user = session.exec(select(User).where(User.name == name.strip())).first()
    if user is None:
        raise BadInput(f"no user named {name.strip()!r}")
    if not user.active:
        return False
    user.active = False
    session.add(user)
    audit(session, actor, "user-disable", None, user=user.name)
    return True


def sign_in(session: Session, name: str, password: str, now: datetime) -> SignIn:
    """Check a name and password; count a wrong password, lock after five in a row."""
    query = select(User).where(User.name == name.strip())
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    user = session.exec(query).first()
    if user is None or not user.active:
        _verify(_DUMMY_HASH, password)
        return SignIn(None)
    if user.locked_until is not None and user.locked_until > now:
        return SignIn(None, locked=True)
    if not _verify(user.password_hash, password):
        user.failed_logins += 1
        if user.failed_logins >= LOCK_AFTER_FAILURES:
            user.failed_logins = 0
            user.locked_until = now + LOCK_FOR
            audit(session, user.name, "user-locked", None, user=user.name)
        session.add(user)
        return SignIn(None, locked=user.locked_until is not None and user.locked_until > now)
    user.failed_logins, user.locked_until, user.last_login_at = 0, None, now
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    session.add(user)
    return SignIn(user)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def active_user(session: Session, user_id: int) -> User | None:
    user = session.get(User, user_id)
    return user if user is not None and user.active else None
