"""Delivery: SMTP against a real aiosmtpd server, and the .eml outbox folder."""

from __future__ import annotations

import email
import email.policy
import email.utils
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from smtp_sink import PERMANENT, TEMPORARY, SmtpSink, free_port

from scheduler.errors import CobaltError
from scheduler.mailer import (
    FileMailer,
    Mailer,
    PermanentSendError,
    SmtpMailer,
    TemporarySendError,
    build,
    safe_file_name,
    to_email,
)
from scheduler.messages import Message, make_message_id

SENDER = "clinic@example.org"


def message(n: int = 1, *, to: str = "ann@example.org", kind: str = "dose-reminder") -> Message:
    return Message(
        kind=kind,
        to=to,
        subject=f"Reminder {n}: your appointment on Wednesday 4 March 2026",
        text=f"Dear Ann Lee,\nappointment {n}\n",
        html=f"<p>Dear Ann Lee,</p><p>appointment {n}</p>\n",
        message_id=make_message_id(f"event:{n}:{kind}:{to}", "example.org"),
    )


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def smtp_mailer(sink: SmtpSink, timeout: float = 5.0) -> SmtpMailer:
    return SmtpMailer(sink.host, sink.port, SENDER, timeout=timeout)


def parts(mail: EmailMessage) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in mail.iter_parts()}


# -- the MIME form ------------------------------------------------------------


def test_to_email_is_multipart_alternative_with_text_then_html() -> None:
    sent_at = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)

    mail = to_email(message(), SENDER, date=sent_at)

    assert mail.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in mail.iter_parts()] == ["text/plain", "text/html"]
    assert mail["From"] == SENDER
    assert mail["To"] == "ann@example.org"
    assert mail["Subject"] == message().subject
    assert mail["Message-ID"] == message().message_id
    assert email.utils.parsedate_to_datetime(mail["Date"]) == sent_at


def test_to_email_keeps_non_ascii_text_intact() -> None:
    accented = Message(
        kind="digest",
        to="nurses@example.org",
        subject="Zoë Ødegård — overdue",
        text="Zoë Ødegård\n",
        html="<p>Zoë Ødegård</p>\n",
        message_id="<cobalt.x@example.org>",
    )

    raw = to_email(accented, SENDER).as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)

    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"] == "Zoë Ødegård — overdue"
    assert parts(parsed)["text/plain"] == "Zoë Ødegård\n"


# -- SMTP ---------------------------------------------------------------------


def test_smtp_mailer_delivers_both_parts_with_the_stable_message_id(sink: SmtpSink) -> None:
    with smtp_mailer(sink).session() as session:
        session.send(message(1))

    [received] = sink.messages
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["ann@example.org"]
    assert received.message["Subject"] == message(1).subject
    assert received.message["Message-ID"] == message(1).message_id
    assert parts(received.message) == {
        "text/plain": message(1).text,
        "text/html": message(1).html,
    }


def test_one_connection_carries_a_whole_session(sink: SmtpSink) -> None:
    with smtp_mailer(sink).session() as session:
        for n in range(1, 4):
            session.send(message(n, to=f"patient{n}@example.org"))

    assert sink.connections == 1
    assert [m.rcpt_tos for m in sink.messages] == [
        ["patient1@example.org"],
        ["patient2@example.org"],
        ["patient3@example.org"],
    ]
    assert {m.connection for m in sink.messages} == {1}


def test_each_session_opens_its_own_connection(sink: SmtpSink) -> None:
    mailer = smtp_mailer(sink)
    for n in (1, 2):
        with mailer.session() as session:
            session.send(message(n))

    assert sink.connections == 2


def test_an_empty_session_does_not_connect(sink: SmtpSink) -> None:
    with smtp_mailer(sink).session():
        pass

    assert sink.connections == 0


@pytest.mark.parametrize("switch", ["rcpt_reply", "data_reply"])
def test_a_451_reply_is_a_temporary_error(sink: SmtpSink, switch: str) -> None:
    setattr(sink, switch, TEMPORARY)

    with smtp_mailer(sink).session() as session, pytest.raises(TemporarySendError, match="451"):
        session.send(message())

    assert sink.messages == []


@pytest.mark.parametrize("switch", ["rcpt_reply", "data_reply"])
def test_a_550_reply_is_a_permanent_error(sink: SmtpSink, switch: str) -> None:
    setattr(sink, switch, PERMANENT)

    with smtp_mailer(sink).session() as session, pytest.raises(PermanentSendError, match="550"):
        session.send(message())

    assert sink.messages == []


def test_send_errors_are_cobalt_errors() -> None:
    assert issubclass(TemporarySendError, CobaltError)
    assert issubclass(PermanentSendError, CobaltError)


def test_the_error_text_does_not_repeat_the_recipients_address(sink: SmtpSink) -> None:
    sink.rcpt_reply = "550 5.1.1 <ann@example.org>: Recipient address rejected"

    with smtp_mailer(sink).session() as session, pytest.raises(PermanentSendError) as caught:
        session.send(message())

    assert "ann@example.org" not in str(caught.value)
    assert "<recipient>" in str(caught.value)


def test_the_session_goes_on_after_a_permanent_refusal(sink: SmtpSink) -> None:
    with smtp_mailer(sink).session() as session:
        sink.rcpt_reply = PERMANENT
        with pytest.raises(PermanentSendError):
            session.send(message(1))
        sink.rcpt_reply = None
        session.send(message(2))

    assert [m.message["Message-ID"] for m in sink.messages] == [message(2).message_id]
    assert sink.connections == 1


def test_after_a_temporary_error_the_next_send_reconnects(sink: SmtpSink) -> None:
    with smtp_mailer(sink).session() as session:
        sink.data_reply = TEMPORARY
        with pytest.raises(TemporarySendError):
            session.send(message(1))
        sink.data_reply = None
        session.send(message(1))
        session.send(message(2))

    assert sink.connections == 2
    assert [m.connection for m in sink.messages] == [2, 2]


def test_no_server_listening_is_a_temporary_error() -> None:
    mailer = SmtpMailer("127.0.0.1", free_port(), SENDER, timeout=2.0)

    with mailer.session() as session, pytest.raises(TemporarySendError, match="cannot connect"):
        session.send(message())


def test_a_server_slower_than_the_timeout_is_a_temporary_error() -> None:
    with (
        SmtpSink(delay=1.0) as slow,
        smtp_mailer(slow, timeout=0.3).session() as session,
        pytest.raises(TemporarySendError),
    ):
        session.send(message())


def test_log_lines_name_only_the_message_id_and_kind(
    sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="scheduler.mailer")
    with smtp_mailer(sink).session() as session:
        session.send(message(1))
        sink.rcpt_reply = PERMANENT
        with pytest.raises(PermanentSendError):
            session.send(message(2))

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert message(1).message_id in logged and message(2).message_id in logged
    assert "dose-reminder" in logged
    assert "ann@example.org" not in logged
    assert "Ann Lee" not in logged and "Reminder" not in logged


# -- the outbox folder --------------------------------------------------------


def test_file_mailer_writes_one_eml_per_message(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"  # not there yet
    with FileMailer(outbox, SENDER).session() as session:
        session.send(message(1))
        session.send(message(2))

    files = sorted(outbox.iterdir())
    assert [f.name for f in files] == sorted(
        f"{safe_file_name(message(n).message_id)}.eml" for n in (1, 2)
    )
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Message-ID"] in {message(1).message_id, message(2).message_id}
    assert set(parts(parsed)) == {"text/plain", "text/html"}


def test_file_mailer_writing_the_same_message_twice_leaves_one_file(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path, SENDER)
    with mailer.session() as session:
        session.send(message(1))
        session.send(message(1))

    assert [f.name for f in tmp_path.iterdir()] == [mailer.path_for(message(1)).name]


def test_file_mailer_cannot_write_is_a_temporary_error(tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the folder should be")

    with (
        FileMailer(blocker, SENDER).session() as session,
        pytest.raises(TemporarySendError),
    ):
        session.send(message())


def test_the_file_name_comes_from_the_message_id_and_is_safe() -> None:
    assert safe_file_name("<cobalt.0a1b@example.org>") == "cobalt.0a1b@example.org"
    assert safe_file_name("<../../etc/passwd>") == "_.._etc_passwd"


def test_both_mailers_fit_the_mailer_protocol(tmp_path: Path) -> None:
    mailers: list[Mailer] = [FileMailer(tmp_path, SENDER), SmtpMailer("localhost", 25, SENDER)]

    assert all(callable(m.session) for m in mailers)


# -- the message built --------------------------------------------------------


def test_a_header_the_email_package_would_refuse_is_refused() -> None:
    for bad in (message(to="ann@example.org\nBcc: eve@example.org"),
                Message(kind="digest", to="ann@example.org", subject="a\nBcc: eve@example.org", text="",
                        html="", message_id="<cobalt.4@example.org>")):
        with pytest.raises(PermanentSendError):
            build(bad, SENDER)
