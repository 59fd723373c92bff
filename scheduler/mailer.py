"""Deliver rendered messages: by SMTP, or as ``.eml`` files in an outbox folder.

Rendering is ``scheduler.messages``' job; a mailer only sends what it is given.
Every failure is one of three exceptions, so the caller knows whose fault it
is and whether to retry:

- ``ServerUnavailable`` (a ``TemporarySendError``): the server, not the
  message: no connection, a timeout, a dropped connection, a 421 (the server
  is closing), a 4xx greeting, a refused STARTTLS or login, an outbox folder
  that cannot be written. It says nothing about any one message: the caller
  keeps the message as it was and tries the server again later;
- ``TemporarySendError``: the server answered this message with a 4xx (RCPT
  TO, DATA): try it again later;
- ``PermanentSendError``: the server refused this message for good (a 5xx
  reply to MAIL FROM, RCPT TO or DATA), or the message cannot be built (an
  address the email library cannot put in a header); retrying will not help.

Log lines name only the Message-ID and the kind: never an address, a name or a
subject, which can identify a patient. Exception texts may carry the server's
reply (with the recipient's address masked) for the outbox's error column.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import re
import smtplib
import ssl
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from pathlib import Path
from typing import Any, Protocol

from scheduler.errors import CobaltError
from scheduler.messages import Message

log = logging.getLogger(__name__)


class TemporarySendError(CobaltError):
    """The message was not sent this time; sending it again later may work."""


class PermanentSendError(CobaltError):
    """The server refused the message for good; sending it again will not help."""


class ServerUnavailable(TemporarySendError):
    """The server cannot be reached or will not talk now: no fault of the message."""


def build(message: Message, sender: str, *, sender_name: str = "", reply_to: str = "",
          linesep: str = "\n") -> bytes:
    """``to_email`` written out once, with ``linesep`` ("\\r\\n" for SMTP, as
    ``smtplib.SMTP.send_message`` writes it), with any failure of the email library
    (a malformed address that slipped in before addresses were checked) as a
    ``PermanentSendError`` whose text names no address."""
    try:
        mail = to_email(message, sender, sender_name=sender_name, reply_to=reply_to)
        return mail.as_bytes(policy=mail.policy.clone(linesep=linesep))  # header problems show here
    except Exception as exc:
        raise PermanentSendError(f"cannot build the message ({type(exc).__name__}): check the address") from exc


# Headers that are the same on every message (or on many): parsed and folded once,
# not once a message, which is most of the time a message takes to build.
_SAME_HEADERS = frozenset({"from", "reply-to", "auto-submitted", "x-cobalt-kind", "mime-version",
                           "content-transfer-encoding", "content-disposition"})
_CACHE_LIMIT = 1024


class _Policy(EmailPolicy):
    """``email.policy.default`` that remembers the headers in ``_SAME_HEADERS``: the
    parsed header for a (name, text), and its folded bytes for a policy's line
    settings. What it writes is what ``default`` writes."""

    _parsed: dict[tuple[str, str], Any] = {}
    _folded: dict[tuple[str, str, str, int | None, bool], bytes] = {}

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        if type(value) is not str or name.lower() not in _SAME_HEADERS:
            return super().header_store_parse(name, value)  # type: ignore[no-any-return]
        key = (name, value)
        found = self._parsed.get(key)
        if found is None:
            found = super().header_store_parse(name, value)
            if len(self._parsed) >= _CACHE_LIMIT:
                self._parsed.clear()
            self._parsed[key] = found
        return found  # type: ignore[no-any-return]

    def fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() not in _SAME_HEADERS or not hasattr(value, "name"):
            return super().fold_binary(name, value)  # type: ignore[no-any-return]
        key = (name, str(value), self.linesep, self.max_line_length, self.utf8)
        found = self._folded.get(key)
        if found is None:
            found = super().fold_binary(name, value)
            if len(self._folded) >= _CACHE_LIMIT:
                self._folded.clear()
            self._folded[key] = found
        return found


_POLICY = _Policy()


def to_email_checked(message: Message, sender: str, *, sender_name: str = "",
                     reply_to: str = "") -> EmailMessage:
    """``to_email``, checked as ``build`` checks it."""
    build(message, sender, sender_name=sender_name, reply_to=reply_to)
    return to_email(message, sender, sender_name=sender_name, reply_to=reply_to)


def to_email(message: Message, sender: str, *, date: datetime | None = None, sender_name: str = "",
             reply_to: str = "") -> EmailMessage:
    """The MIME form of ``message``: multipart/alternative, plain text then HTML.

    ``sender_name`` (the clinic's name) is From's display name; ``reply_to`` is
    where a patient's reply goes (the clinic's address).
    """
    mail = EmailMessage(policy=_POLICY)
    mail["From"] = _with_name(sender, sender_name)
    if reply_to and reply_to.isprintable() and " " not in reply_to:
        mail["Reply-To"] = reply_to
    mail["To"] = message.to
    mail["Subject"] = message.subject
    mail["Date"] = email.utils.format_datetime(date or datetime.now(UTC))
    mail["Message-ID"] = message.message_id
    # Tells autoresponders (out-of-office replies) not to answer; people still can.
    mail["Auto-Submitted"] = "auto-generated"
    # Lets a clinic's mail rules sort digests, overdue notices and alerts.
    mail["X-Cobalt-Kind"] = message.kind
    mail.set_content(message.text)
    mail.add_alternative(message.html, subtype="html")
    if message.calendar:
        mail.add_attachment(message.calendar, subtype="calendar", filename="appointment.ics")
    return mail


def _with_name(address: str, name: str) -> str | Address:
    """``clinic@example.org`` as ``"Riverside clinic" <clinic@example.org>``; the name is
    one line of printable text (quoted or encoded by the email library as needed)."""
    name = " ".join("".join(c if c.isprintable() else " " for c in name).split())
    if not name or address.count("@") != 1:
        return address
    user, _, domain = address.partition("@")
    return Address(display_name=name, username=user, domain=domain)


class Sender(Protocol):
    """What a mailer's session yields: sends one message, or raises a send error."""

    def send(self, message: Message) -> None: ...


class Mailer(Protocol):
    """Opens a session in which a batch of messages is sent. ``repeatable``: sending a
    message again replaces what the first send left (a file of its own), so it never
    reaches anyone twice; a session's sends are safe only once it has closed. A mailer
    that is not repeatable has each outcome recorded before its next send."""

    repeatable: bool

    def session(self) -> contextlib.AbstractContextManager[Sender]: ...


class SmtpMailer:
    """Sends by SMTP, over one connection per session (opened at the first send)."""

    repeatable = False  # a message sent again reaches its recipient twice

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        username: str = "",
        password: str = "",
        starttls: bool = False,
        timeout: float = 30.0,
        sender_name: str = "",
        reply_to: str = "",
    ) -> None:
        self.sender_name = sender_name
        self.reply_to = reply_to
        self.host = host
        self.port = port
        self.sender = sender
        self.username = username
        self.password = password
        self.starttls = starttls
        self.timeout = timeout

    @contextlib.contextmanager
    def session(self) -> Iterator[SmtpSession]:
        smtp_session = SmtpSession(self)
        try:
            yield smtp_session
        finally:
            smtp_session.close()

    def connect(self) -> smtplib.SMTP:
        """A ready connection (greeted, secured and logged in as configured)."""
        try:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        except (smtplib.SMTPException, OSError) as exc:
            raise ServerUnavailable(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        try:
            connection.ehlo()
            if self.starttls:
                connection.starttls(context=ssl.create_default_context())
                connection.ehlo()
            if self.username:
                connection.login(self.username, self.password)
        except (smtplib.SMTPException, OSError) as exc:
            _close_quietly(connection)
            # Connection-level trouble says nothing about any one message.
            raise ServerUnavailable(
                f"SMTP session with {self.host}:{self.port} failed: {exc}"
            ) from exc
        return connection


class SmtpSession:
    """One batch: reuses its connection, and reconnects after a temporary error."""

    def __init__(self, mailer: SmtpMailer) -> None:
        self._mailer = mailer
        self._connection: smtplib.SMTP | None = None

    def send(self, message: Message) -> None:
        sender = self._mailer.sender
        international = not (sender.isascii() and message.to.isascii())
        # Written once (``send_message`` would write it again); an address that needs
        # SMTPUTF8 goes through ``send_message``, which asks the server for it.
        if international:
            mail = to_email_checked(message, sender, sender_name=self._mailer.sender_name,
                                    reply_to=self._mailer.reply_to)
        else:
            data = build(message, sender, sender_name=self._mailer.sender_name, reply_to=self._mailer.reply_to,
                         linesep="\r\n")
        error: TemporarySendError | PermanentSendError
        cause: BaseException | None = None
        try:
            if self._connection is None:
                self._connection = self._mailer.connect()
            if international:
                refused = self._connection.send_message(mail, from_addr=sender, to_addrs=[message.to])
            else:
                refused = self._connection.sendmail(sender, [message.to], data)
        except TemporarySendError as exc:
            error, cause = exc, exc.__cause__
        except smtplib.SMTPRecipientsRefused as exc:
            error, cause = _recipients_error(exc.recipients, message.to), exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            stage = "MAIL FROM" if isinstance(exc, smtplib.SMTPSenderRefused) else "DATA"
            error, cause = _reply_error(stage, exc.smtp_code, exc.smtp_error, message.to), exc
        except smtplib.SMTPNotSupportedError as exc:
            # The message needs an extension (SMTPUTF8) this server lacks.
            error, cause = PermanentSendError(f"server cannot take this message: {exc}"), exc
        except (smtplib.SMTPException, OSError) as exc:
            error = ServerUnavailable(f"SMTP connection failed: {type(exc).__name__}: {exc}")
            cause = exc
        else:
            if refused:  # some recipients refused; we only ever send to one
                error = _recipients_error(refused, message.to)
            else:
                log.info("sent %s (%s)", message.message_id, message.kind)
                return
        if isinstance(error, TemporarySendError):
            # The connection may be dead or half-way through a transaction: drop it
            # without a QUIT (which could wait out the timeout again); the next send
            # reconnects.
            self._discard()
        log.warning(
            "%s failure sending %s (%s)",
            "server" if isinstance(error, ServerUnavailable)
            else "temporary" if isinstance(error, TemporarySendError) else "permanent",
            message.message_id,
            message.kind,
        )
        raise error from cause

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            _close_quietly(connection)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            _close_quietly(connection)


def _close_quietly(connection: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError):
        connection.close()


def _recipients_error(
    refused: dict[str, tuple[int, bytes]], to: str
) -> TemporarySendError | PermanentSendError:
    code, reply = next(iter(refused.values()))
    return _reply_error("RCPT TO", code, reply, to)


def _reply_error(
    stage: str, code: int, reply: bytes | str, to: str
) -> TemporarySendError | PermanentSendError:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    text = " ".join(text.replace(to, "<recipient>").split())
    detail = f"SMTP {code} on {stage}: {text}"
    if 500 <= code < 600:
        return PermanentSendError(detail)
    if code == 421 or not 400 <= code < 500:  # 421: the server is closing the channel
        return ServerUnavailable(detail)
    return TemporarySendError(detail)


class FileMailer:
    """Writes each message to ``outbox_dir`` as ``<message-id>.eml``, for when there is no SMTP.

    The same message always goes to the same file, written atomically: sending
    it twice leaves one complete file. ``send`` syncs its file to the disk before
    it returns; a session (a batch) writes its files and syncs them all, and the
    folder, once, when it ends: a batch's files are all on the disk when the
    session has closed without an error.
    """

    repeatable = True

    def __init__(self, outbox_dir: Path, sender: str, sender_name: str = "", reply_to: str = "") -> None:
        self.outbox_dir = Path(outbox_dir)
        self.sender = sender
        self.sender_name = sender_name
        self.reply_to = reply_to

    @contextlib.contextmanager
    def session(self) -> Iterator[FileBatch]:
        batch = FileBatch(self)
        try:
            yield batch
        finally:
            batch.sync()

    def path_for(self, message: Message) -> Path:
        return self.outbox_dir / f"{safe_file_name(message.message_id)}.eml"

    def send(self, message: Message) -> None:
        with self.session() as batch:
            batch.send(message)

    def write(self, message: Message) -> Path:
        """Write ``message``'s file (atomically, not yet synced); returns its path."""
        target = self.path_for(message)
        data = build(message, self.sender, sender_name=self.sender_name, reply_to=self.reply_to)
        try:
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
            fd, temp_name = tempfile.mkstemp(dir=self.outbox_dir, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                os.replace(temp_name, target)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp_name)
                raise
        except OSError as exc:
            log.warning("cannot write %s (%s) to the outbox", message.message_id, message.kind)
            raise ServerUnavailable(f"cannot write to {self.outbox_dir}: {exc}") from exc
        log.info("wrote %s (%s) to the outbox", message.message_id, message.kind)
        return target


class FileBatch:
    """A ``FileMailer`` session: writes each message's file as it is sent, and ``sync``
    puts them all on the disk at the end (each file's data, then the folder's entries
    once), instead of one ``fsync`` a message."""

    def __init__(self, mailer: FileMailer) -> None:
        self._mailer = mailer
        self._written: dict[Path, None] = {}  # in the order written, each once

    def send(self, message: Message) -> None:
        self._written[self._mailer.write(message)] = None

    def sync(self) -> None:
        """Sync every file written so far, then the folder; raises ``ServerUnavailable``
        when the disk refuses (the files may then be lost: the caller sends them again)."""
        if not self._written:
            return
        folder = self._mailer.outbox_dir
        try:
            for path in (*self._written, folder):  # the files' data, then the folder's entries
                _fsync(path)
        except OSError as exc:
            log.warning("cannot sync %d messages in the outbox folder", len(self._written))
            raise ServerUnavailable(f"cannot sync the files in {folder}: {exc}") from exc
        self._written.clear()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def safe_file_name(message_id: str) -> str:
    """``<cobalt.ab12@example.org>`` -> ``cobalt.ab12@example.org``; odd characters -> ``_``."""
    name = re.sub(r"[^A-Za-z0-9._@+-]", "_", message_id.strip().strip("<>"))
    name = name.lstrip(".")  # no hidden files, no "..": the temp files start with "."
    if not name:
        raise ValueError(f"no file name in message id {message_id!r}")
    return name
