"""AUTH (RFC 4954) on the server: PLAIN and LOGIN over real loopback TLS sessions.

smtplib's login()/auth() for the normal paths, a raw TLS client for the
byte-level ones (challenges, cancel, malformed base64, pipelining), and the
debug stream and log checked for leaked credentials.
"""

from __future__ import annotations

import io
import logging
import smtplib
import ssl
import threading
from typing import Any, List

import pytest

from smtpd_compat import _auth, smtpd
from smtpd_compat._auth import PasswordFile

from conftest import TIMEOUT, RawClient, RecordingSMTPServer
from tls_helpers import (  # noqa: F401  (fixtures)
    PASSWORD,
    USER,
    b64,
    client_context,
    server_context,
    starttls,
    tls_client,
    tls_files,
)

PLAIN_IR = b64(b"\0" + USER.encode() + b"\0" + PASSWORD.encode())
WRONG_IR = b64(b"\0" + USER.encode() + b"\0wrong")


def check(server: Any, channel: Any, mechanism: str, login: str, password: str) -> bool:
    return (login, password) == (USER, PASSWORD)


@pytest.fixture
def auth_server(server_factory: Any, server_context: ssl.SSLContext) -> Any:
    """A recording server with STARTTLS and AUTH (over TLS only)."""
    return server_factory(tls_context=server_context, authenticator=check)


def login_client(st: Any, client_context: ssl.SSLContext) -> smtplib.SMTP:
    client = smtplib.SMTP(*st.address, timeout=TIMEOUT)
    client.starttls(context=client_context)
    client.ehlo("client.example")
    return client


# -- the normal paths ----------------------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_login_and_identity_reaches_process_message(mechanism: str, auth_server: Any, client_context: ssl.SSLContext) -> None:
    with login_client(auth_server, client_context) as client:
        assert client.has_extn("auth") and client.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        method = {"PLAIN": client.auth_plain, "LOGIN": client.auth_login}[mechanism]
        client.user, client.password = USER, PASSWORD
        # initial_response_ok=False: the challenge/response form.
        code, text = client.auth(mechanism, method, initial_response_ok=False)
        assert (code, text) == (235, b"Authentication successful")
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n")
    [message] = auth_server.server.wait_for(1)
    assert message.kwargs["auth_login"] == USER


def test_login_with_initial_response(auth_server: Any, client_context: ssl.SSLContext) -> None:
    with login_client(auth_server, client_context) as client:
        assert client.login(USER, PASSWORD) == (235, b"Authentication successful")
        assert client.docmd("AUTH", "PLAIN " + PLAIN_IR.decode()) == (503, b"Error: already authenticated")


def test_unauthenticated_message_has_no_login(auth_server: Any, client_context: ssl.SSLContext) -> None:
    with login_client(auth_server, client_context) as client:
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nhi\r\n")
    [message] = auth_server.server.wait_for(1)
    assert message.kwargs["auth_login"] is None


class _OldStyleServer(smtpd.SMTPServer):
    """process_message without **kwargs, as many existing subclasses are."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.got: List[Any] = []
        super().__init__(*args, **kwargs)

    def process_message(self, peer, mailfrom, rcpttos, data):  # type: ignore[no-untyped-def]
        self.got.append(mailfrom)


def test_process_message_without_kwargs_still_works(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(_OldStyleServer, tls_context=server_context, authenticator=check)
    with login_client(st, client_context) as client:
        client.login(USER, PASSWORD)
        assert client.sendmail("a@example.com", ["b@example.com"], b"hi\r\n") == {}
    assert st.call(lambda: st.server.got) == ["a@example.com"]


class _MethodAuthServer(RecordingSMTPServer):
    """Decides through an authenticate() override instead of the option."""

    def authenticate(self, channel: Any, mechanism: str, login: str, password: str) -> bool:
        return channel.tls_active and login == "method" and password == "override"


def test_authenticate_override_enables_auth(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(_MethodAuthServer, tls_context=server_context)
    with login_client(st, client_context) as client:
        assert client.login("method", "override")[0] == 235


# -- failures ----------------------------------------------------------------------------------
def test_wrong_password_then_limit_closes(auth_server: Any, client_context: ssl.SSLContext) -> None:
    client = tls_client(auth_server.address, client_context)
    assert client.command(b"AUTH PLAIN " + WRONG_IR) == b"535 Authentication credentials invalid\r\n"
    assert client.command(b"AUTH PLAIN " + b64(b"\0nobody\0" + PASSWORD.encode())) == b"535 Authentication credentials invalid\r\n"
    # The third failure (max_auth_failures=3) ends the session.
    assert client.command(b"AUTH PLAIN " + WRONG_IR) == (
        b"421 %s Error: too many failed authentication attempts, closing connection\r\n" % smtpd._getfqdn().encode()
    )
    assert client.read_until_closed() == b""


def test_failure_limit_is_configurable(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context, authenticator=check, max_auth_failures=1)
    client = tls_client(st.address, client_context)
    assert client.command(b"AUTH PLAIN " + WRONG_IR).startswith(b"421 ")
    assert client.read_until_closed() == b""


def test_right_password_after_a_wrong_one(auth_server: Any, client_context: ssl.SSLContext) -> None:
    client = tls_client(auth_server.address, client_context)
    assert client.command(b"AUTH PLAIN " + WRONG_IR).startswith(b"535 ")
    assert client.command(b"AUTH PLAIN " + PLAIN_IR) == b"235 Authentication successful\r\n"


@pytest.mark.parametrize(
    "line, reply",
    [
        (b"AUTH", b"501 Syntax: AUTH mechanism [initial-response]\r\n"),
        (b"AUTH PLAIN a b", b"501 Syntax: AUTH mechanism [initial-response]\r\n"),
        (b"AUTH CRAM-MD5", b"504 Unrecognized authentication type\r\n"),
        (b"AUTH GSSAPI dGVzdA==", b"504 Unrecognized authentication type\r\n"),
        (b"AUTH PLAIN not-base64!", b"501 Cannot decode response\r\n"),
        (b"AUTH PLAIN dXNlcg", b"501 Cannot decode response\r\n"),
        (b"AUTH PLAIN " + b64(b"no-nul-here"), b"501 Malformed authentication response\r\n"),
        (b"AUTH PLAIN " + b64(b"someone-else\0" + USER.encode() + b"\0" + PASSWORD.encode()), b"535 Authentication credentials invalid\r\n"),
    ],
)
def test_bad_auth_commands(line: bytes, reply: bytes, auth_server: Any, client_context: ssl.SSLContext) -> None:
    client = tls_client(auth_server.address, client_context)
    assert client.command(line) == reply
    assert client.command(b"NOOP") == b"250 OK\r\n"  # the session goes on, in command state


@pytest.mark.parametrize("mechanism", [b"PLAIN", b"LOGIN"])
def test_cancel_with_star(mechanism: bytes, auth_server: Any, client_context: ssl.SSLContext) -> None:
    client = tls_client(auth_server.address, client_context)
    assert client.command(b"AUTH " + mechanism).startswith(b"334 ")
    assert client.command(b"*") == b"501 Authentication cancelled\r\n"
    # Back in command state: the next line is a command again.
    assert client.command(b"NOOP") == b"250 OK\r\n"
    assert client.command(b"AUTH PLAIN " + PLAIN_IR) == b"235 Authentication successful\r\n"


def test_challenge_lines_are_not_commands(auth_server: Any, client_context: ssl.SSLContext) -> None:
    client = tls_client(auth_server.address, client_context)
    assert client.command(b"AUTH PLAIN") == b"334 \r\n"  # PLAIN's empty challenge
    # A command while a response is expected is a malformed response, not
    # a command ("QUIT" even is valid base64, of a malformed PLAIN message).
    assert client.command(b"MAIL FROM:<a@example.com>") == b"501 Cannot decode response\r\n"
    assert client.command(b"AUTH PLAIN") == b"334 \r\n"
    assert client.command(b"QUIT") == b"501 Malformed authentication response\r\n"
    assert client.command(b"NOOP") == b"250 OK\r\n"
    assert client.command(b"AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"  # "Username:"
    assert client.command(b64(USER.encode())) == b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
    assert client.command(b64(PASSWORD.encode())) == b"235 Authentication successful\r\n"


def test_auth_before_ehlo_and_after_helo(auth_server: Any, client_context: ssl.SSLContext) -> None:
    client = RawClient(auth_server.address)
    client.read_reply()
    client.command(b"EHLO client.example")
    starttls(client, client_context)
    assert client.command(b"AUTH PLAIN " + PLAIN_IR) == b"503 Error: send EHLO first\r\n"
    client.command(b"HELO client.example")
    assert client.command(b"AUTH PLAIN " + PLAIN_IR) == b"503 Error: send EHLO first\r\n"
    client.close()


def test_auth_during_a_transaction(auth_server: Any, client_context: ssl.SSLContext) -> None:
    client = tls_client(auth_server.address, client_context)
    client.command(b"MAIL FROM:<a@example.com>")
    assert client.command(b"AUTH PLAIN " + PLAIN_IR) == b"503 Error: AUTH not permitted during a mail transaction\r\n"


def test_auth_without_tls_is_refused_and_not_offered(auth_server: Any, raw_client: Any) -> None:
    client = raw_client(auth_server.address)
    client.read_reply()
    ehlo = client.command(b"EHLO client.example")
    assert b"AUTH" not in ehlo and b"250-STARTTLS\r\n" in ehlo
    assert client.command(b"AUTH PLAIN " + PLAIN_IR) == b"538 Encryption required for requested authentication mechanism\r\n"


def test_auth_in_clear_when_allowed(server_factory: Any, raw_client: Any) -> None:
    st = server_factory(authenticator=check, auth_require_tls=False, auth_mechanisms=("LOGIN",))
    client = raw_client(st.address)
    client.read_reply()
    assert b"250-AUTH LOGIN\r\n" in client.command(b"EHLO client.example")
    assert client.command(b"AUTH PLAIN " + PLAIN_IR) == b"504 Unrecognized authentication type\r\n"
    assert client.command(b"AUTH LOGIN " + b64(USER.encode())) == b"334 UGFzc3dvcmQ6\r\n"
    assert client.command(b64(PASSWORD.encode())) == b"235 Authentication successful\r\n"


def test_starttls_forgets_authentication(server_factory: Any, raw_client: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context, authenticator=check, auth_require_tls=False, auth_required=True)
    client = raw_client(st.address)
    client.read_reply()
    client.command(b"EHLO client.example")
    assert client.command(b"AUTH PLAIN " + PLAIN_IR).startswith(b"235 ")
    starttls(client, client_context)
    client.command(b"EHLO client.example")
    assert client.command(b"MAIL FROM:<a@example.com>") == b"530 Authentication required\r\n"


def test_auth_required(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context, authenticator=check, auth_required=True)
    client = tls_client(st.address, client_context)
    assert client.command(b"MAIL FROM:<a@example.com>") == b"530 Authentication required\r\n"
    client.command(b"AUTH PLAIN " + PLAIN_IR)
    assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"


def test_authenticator_error_is_a_temporary_failure(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext, caplog: Any) -> None:
    def broken(*args: Any) -> bool:
        raise RuntimeError("directory unavailable")

    st = server_factory(tls_context=server_context, authenticator=broken)
    client = tls_client(st.address, client_context)
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert client.command(b"AUTH PLAIN " + PLAIN_IR) == b"454 Temporary authentication failure\r\n"
        assert client.command(b"NOOP") == b"250 OK\r\n"
    assert "directory unavailable" in caplog.text and PASSWORD not in caplog.text


# -- hashed password files are checked off the loop's thread --------------------------------
@pytest.fixture
def hashed_server(server_factory: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """AUTH in clear against a hashed PasswordFile whose checks wait for
    ``st.gate`` (the test decides when the worker thread may answer)."""
    gate = threading.Event()
    real_check = PasswordFile.check

    def gated_check(self: PasswordFile, login: str, password: str) -> bool:
        assert threading.current_thread() is not threading.main_thread()
        assert gate.wait(TIMEOUT)
        if password == "explode":
            raise OSError("password store unavailable")
        return real_check(self, login, password)

    monkeypatch.setattr(PasswordFile, "check", gated_check)
    passwords = PasswordFile({USER: _auth.hash_password(PASSWORD, iterations=1000)})
    st = server_factory(authenticator=passwords, auth_require_tls=False)
    st.gate = gate
    return st


def test_hashed_check_does_not_stall_other_sessions(hashed_server: Any, raw_client: Any) -> None:
    st = hashed_server
    first = raw_client(st.address)
    first.read_reply()
    first.command(b"EHLO client.example")
    first.send(b"AUTH PLAIN " + PLAIN_IR + b"\r\n")
    # While that check waits in its worker thread, another session is served.
    second = raw_client(st.address)
    assert second.read_reply().startswith(b"220 ")
    assert second.command(b"NOOP") == b"250 OK\r\n"
    st.gate.set()
    assert first.read_reply() == b"235 Authentication successful\r\n"


def test_input_after_a_hashed_check_waits_for_its_verdict(hashed_server: Any, raw_client: Any) -> None:
    st = hashed_server
    st.gate.set()
    client = raw_client(st.address)
    client.read_reply()
    client.command(b"EHLO client.example")
    client.send(b"AUTH PLAIN " + WRONG_IR + b"\r\nNOOP\r\nAUTH PLAIN " + PLAIN_IR + b"\r\nNOOP\r\n")
    assert client.read_reply() == b"535 Authentication credentials invalid\r\n"
    assert client.read_reply() == b"250 OK\r\n"
    assert client.read_reply() == b"235 Authentication successful\r\n"
    assert client.read_reply() == b"250 OK\r\n"


def test_hashed_check_error_is_a_temporary_failure(hashed_server: Any, raw_client: Any, caplog: Any) -> None:
    st = hashed_server
    st.gate.set()
    client = raw_client(st.address)
    client.read_reply()
    client.command(b"EHLO client.example")
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        assert client.command(b"AUTH PLAIN " + b64(b"\0" + USER.encode() + b"\0explode")) == b"454 Temporary authentication failure\r\n"
        assert client.command(b"NOOP") == b"250 OK\r\n"
    assert "password store unavailable" in caplog.text and "explode" not in caplog.text


def test_long_initial_response_is_accepted(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    # RFC 4954: AUTH lines may be up to 12288 octets (a token as password).
    token = "t" * 4000
    st = server_factory(tls_context=server_context, authenticator=lambda s, c, m, login, pw: pw == token)
    client = tls_client(st.address, client_context)
    assert client.command(b"AUTH PLAIN " + b64(b"\0u\0" + token.encode())) == b"235 Authentication successful\r\n"


# -- credentials never shown ----------------------------------------------------------------------
def test_credentials_never_in_debugstream_or_log(auth_server: Any, client_context: ssl.SSLContext, monkeypatch: Any, caplog: Any) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(smtpd, "DEBUGSTREAM", stream)
    with caplog.at_level(logging.DEBUG, logger="smtpd_compat"):
        client = tls_client(auth_server.address, client_context)
        assert client.command(b"AUTH PLAIN " + WRONG_IR).startswith(b"535")
        assert client.command(b"AUTH LOGIN").startswith(b"334")
        assert client.command(b64(USER.encode())).startswith(b"334")
        assert client.command(b64(PASSWORD.encode())).startswith(b"235")
        assert client.command(b"QUIT").startswith(b"221")
        client.read_until_closed()
    shown = stream.getvalue() + caplog.text
    assert "Data: b'AUTH PLAIN ***'" in stream.getvalue()
    assert "Data: b'AUTH LOGIN'" in stream.getvalue()
    for secret in (PASSWORD, "wrong", PLAIN_IR.decode(), WRONG_IR.decode(), b64(PASSWORD.encode()).decode()):
        assert secret not in shown


# -- options ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, error",
    [
        ({"authenticator": check}, "only offered over TLS"),
        ({"auth_required": True}, "auth_required needs an authenticator"),
        ({"authenticator": check, "auth_require_tls": False, "auth_mechanisms": ("CRAM-MD5",)}, "unsupported auth_mechanisms"),
        ({"authenticator": check, "auth_require_tls": False, "auth_mechanisms": ()}, "empty"),
        ({"authenticator": "not callable", "auth_require_tls": False}, "callable"),
    ],
)
def test_option_errors(options: dict, error: str) -> None:
    with pytest.raises((TypeError, ValueError), match=error):
        smtpd.SMTPServer(("127.0.0.1", 0), None, map={}, **options)


def test_mechanisms_are_case_insensitive(server_factory: Any) -> None:
    st = server_factory(authenticator=check, auth_require_tls=False, auth_mechanisms=("login", "plain"))
    assert st.server.auth_mechanisms == ("LOGIN", "PLAIN")


def test_overlong_response_ends_the_exchange(auth_server: Any, client_context: ssl.SSLContext) -> None:
    client = tls_client(auth_server.address, client_context)
    assert client.command(b"AUTH PLAIN") == b"334 \r\n"
    assert client.command(b"QUFB" * 4000) == b"500 Error: line too long\r\n"
    assert client.command(b"NOOP") == b"250 OK\r\n"  # a command again
