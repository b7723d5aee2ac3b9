"""Logging through the ``smtpd_compat`` logger, with credentials never shown."""

from __future__ import annotations

import base64
import io
import logging
import smtplib
from typing import Any, List

import pytest

from smtpd_compat import Controller, RecordingServer, _logging, smtpd

from conftest import TIMEOUT, RawClient

LOGGER = "smtpd_compat"


def messages(caplog: pytest.LogCaptureFixture, level: int) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def test_connection_commands_replies_and_close_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with Controller(RecordingServer) as controller:
        with RawClient(controller.address) as client:
            local = client.sock.getsockname()
            client.read_reply()
            client.command(b"EHLO test")
            client.command(b"MAIL FROM:<a@example.com>")
            client.command(b"RCPT TO:<b@example.com>")
            client.command(b"DATA")
            client.command(b"Subject: s\r\n\r\nsecret body text\r\n.")
            client.command(b"QUIT")
            client.read_until_closed()
        controller.server.wait_for(1, TIMEOUT)
    peer = "%s:%s" % local[:2]
    info = messages(caplog, logging.INFO)
    debug = messages(caplog, logging.DEBUG)
    assert "RecordingServer: connection from %s" % peer in info
    assert "%s: connection closed" % peer in info
    assert any(m.startswith("RecordingServer shutting down") for m in info)
    assert "%s >>> MAIL FROM:<a@example.com>" % peer in debug
    assert "%s <<< 250 OK" % peer in debug
    assert "%s <<< 221 Bye" % peer in debug
    # Message content is never logged.
    assert not any("secret body text" in m for m in info + debug)


def test_nothing_below_warning_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with Controller(RecordingServer) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            client.noop()
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_auth_lines_and_sasl_responses_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    user, password = "alice", "correct horse battery staple"
    secrets = [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(b"\0alice\0" + password.encode()).decode(),
    ]

    def authenticator(server: Any, channel: Any, mechanism: str, login: str, passwd: str) -> bool:
        return login == user and passwd == password

    with Controller(RecordingServer, authenticator=authenticator, auth_require_tls=False) as controller:
        with RawClient(controller.address) as client:
            client.read_reply()
            client.command(b"EHLO test")
            # Initial response on the AUTH line.
            reply = client.command(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0" + password.encode()))
            assert reply.startswith(b"235")
        with RawClient(controller.address) as client:
            client.read_reply()
            client.command(b"EHLO test")
            # Continuation lines of a LOGIN exchange.
            assert client.command(b"AUTH LOGIN").startswith(b"334")
            assert client.command(base64.b64encode(user.encode())).startswith(b"334")
            assert client.command(base64.b64encode(password.encode())).startswith(b"235")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "AUTH PLAIN" in logged and "AUTH LOGIN" in logged
    for secret in secrets:
        assert secret not in logged


class FakeChannel:
    peer = ("127.0.0.1", 1)


@pytest.mark.parametrize(
    "line, shown",
    [
        (b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", "AUTH PLAIN [redacted]"),
        (b"auth login YWxpY2U=", "AUTH login [redacted]"),
        (b"AUTH", "AUTH [redacted]"),
        (b"AUTHX whatever", "AUTH [redacted]"),
        (b"MAIL FROM:<a@b.c>", "MAIL FROM:<a@b.c>"),
        (b"\xff\xfe", "\\xff\\xfe"),
    ],
)
def test_redact_command(line: bytes, shown: str) -> None:
    assert _logging.redact_command(FakeChannel(), line) == shown


def test_sasl_state_hides_everything() -> None:
    channel = FakeChannel()
    channel._sasl = object()  # type: ignore[attr-defined]
    assert "EHLO" not in _logging.redact_command(channel, b"EHLO looks like a command")
    other = FakeChannel()
    other._sasl_continuation = lambda: True  # type: ignore[attr-defined]
    assert _logging.redact_command(other, b"c2VjcmV0") == "[redacted SASL response]"


def test_debugstream_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(smtpd, "DEBUGSTREAM", stream)
    with Controller(RecordingServer) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: s\r\n\r\nx\r\n")
        controller.server.wait_for(1, TIMEOUT)
    text = stream.getvalue()
    assert "Incoming connection from" in text
    assert "Peer:" in text and "===> MAIL" in text


def test_format_address() -> None:
    assert _logging.format_address(("::1", 25, 0, 0)) == "[::1]:25"
    assert _logging.format_address(("10.0.0.1", 25)) == "10.0.0.1:25"
    assert _logging.format_address("/tmp/sock") == "/tmp/sock"
