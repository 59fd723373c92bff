"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, recording what it receives.

    with SmtpSink() as sink:
        mailer = SmtpMailer(sink.host, sink.port, sender="clinic@example.org")
        ...
        assert sink.messages[0].rcpt_tos == ["ann@example.org"]

Switches, settable at any time (also while running):

- ``rcpt_reply`` / ``data_reply``: a full reply line (e.g. ``TEMPORARY`` or
  ``PERMANENT``) given instead of ``250 OK`` to RCPT TO / DATA; None accepts;
- ``rcpt_replies``: address -> reply line, for those recipients alone;
- ``delay``: seconds the server waits before answering each DATA (a slow server).

``connections`` counts the client connections that greeted the server
(EHLO/HELO); the probe the aiosmtpd Controller makes at start-up never greets.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

TEMPORARY = "451 4.3.0 Temporary failure, try again later"
PERMANENT = "550 5.1.1 Mailbox unavailable"

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A port nothing listens on right now (Controller cannot bind port 0 everywhere)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    connection: int  # 1 for the first connection that greeted, 2 for the next, ...


class SmtpSink:
    """An aiosmtpd server in a background thread that keeps every message it accepts."""

    def __init__(
        self,
        *,
        rcpt_reply: str | None = None,
        data_reply: str | None = None,
        delay: float = 0.0,
    ) -> None:
        self.host = HOST
        self.port = 0
        self.rcpt_reply = rcpt_reply
        self.rcpt_replies: dict[str, str] = {}
        self.data_reply = data_reply
        self.delay = delay
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._connections = 0
        self._controller: Controller | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self, port: int | None = None) -> SmtpSink:
        """Listen on ``port`` (the same one again after a ``stop``), or a free one."""
        if port is not None:
            controller = Controller(_Handler(self), hostname=self.host, port=port)
            controller.start()
            self._controller, self.port = controller, port
            return self
        # Another process may take the free port before we bind it: try a few.
        for attempt in range(5):
            port = free_port(self.host)
            controller = Controller(_Handler(self), hostname=self.host, port=port)
            try:
                controller.start()
            except OSError:
                controller.loop.close()
                if attempt == 4:
                    raise
                continue
            self._controller, self.port = controller, port
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what was received ---------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self._connections = 0

    # -- called from the server thread ---------------------------------------

    def _greeted(self, session: Any) -> None:
        with self._lock:
            if getattr(session, "sink_connection", None) is None:
                self._connections += 1
                session.sink_connection = self._connections

    def _record(self, session: Any, envelope: Any) -> None:
        # SMTP carries CRLF line ends; a mail client shows the message with plain "\n".
        raw = envelope.original_content.replace(b"\r\n", b"\n")
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._lock:
            self._received.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    message=parsed,
                    connection=getattr(session, "sink_connection", 0),
                )
            )


class _Handler:
    """aiosmtpd hooks; each reads the sink's switches when the command arrives."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_HELO(self, server: Any, session: Any, envelope: Any, hostname: str) -> str:
        self.sink._greeted(session)
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sink._greeted(session)
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if self.sink.rcpt_reply is not None:
            return self.sink.rcpt_reply
        if address in self.sink.rcpt_replies:
            return self.sink.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.sink.delay:
            await asyncio.sleep(self.sink.delay)
        if self.sink.data_reply is not None:
            return self.sink.data_reply
        self.sink._record(session, envelope)
        return "250 OK: queued"
