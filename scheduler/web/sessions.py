"""Signed session cookies and CSRF tokens.

The cookie holds the user's id and a CSRF token, signed with the clinic's
secret (itsdangerous) and stamped with the time it was issued. Every request
re-issues it, so a session ends after ``IDLE_TIMEOUT`` without a request. It is
HttpOnly, SameSite=Lax, and Secure whenever the request came over TLS (through
a reverse proxy that says so in ``X-Forwarded-Proto``).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "cobalt_session"
IDLE_TIMEOUT = timedelta(hours=12)  # SPEC section 9
SECRET_FILE = "cobalt-web-secret.key"


@dataclass
class WebSession:
    user_id: int | None = None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), str(token).encode())


class SessionCodec:
    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="cobalt-session")

    def dumps(self, session: WebSession) -> str:
        return self._serializer.dumps({"u": session.user_id, "c": session.csrf})

    def loads(self, cookie: str | None) -> WebSession | None:
        if not cookie:
            return None
        try:
            data: Any = self._serializer.loads(cookie, max_age=int(IDLE_TIMEOUT.total_seconds()))
        except BadSignature:  # also an expired signature
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        user_id = data.get("u")
        return WebSession(user_id if isinstance(user_id, int) else None, data["c"])


def load_secret(explicit: str, base_dir: Path) -> str:
    """The signing secret: COBALT_WEB_SECRET_KEY, else a key file made once beside cobalt.toml
    (readable by its owner only), so sessions survive a restart and several workers agree."""
    if explicit:
        return explicit
    path = base_dir / SECRET_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(48)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    except FileExistsError:  # another worker made it first
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secret + "\n")
    return secret
