"""STARTTLS (RFC 3207) and implicit TLS (SMTPS) over real loopback sockets.

Clients: smtplib (starttls(), SMTP_SSL), raw sockets wrapped by ssl for
byte-level cases, and swaks and curl against the command line server.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
from typing import Any

import pytest

from smtpd_compat import _reactor, _transport, asyncore, smtpd

from conftest import FQDN, GREETING, TIMEOUT, RawClient, RecordingSMTPServer, has_ipv6
from tls_helpers import (  # noqa: F401  (fixtures)
    PASSWORD,
    USER,
    auth_file,
    cli_server,
    client_context,
    need_program,
    run_client,
    server_context,
    starttls,
    tls_client,
    tls_files,
)

MESSAGE = (
    b"From: a@example.com\r\nTo: b@example.com\r\nSubject: over TLS\r\n\r\n"
    b"line one\r\n.a line that starts with a dot\r\n\xc3\xa9 8-bit text\r\n"
)
# What process_message receives: dot-unstuffed, LF line ends, no final LF.
RECEIVED = MESSAGE.replace(b"\r\n", b"\n").rstrip(b"\n")

DEFAULT_EHLO = b"250-%s\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n" % FQDN.encode()


# -- without options: smtpd's behaviour ----------------------------------------------------
def test_default_server_is_byte_identical(smtp_server: Any, raw_client: Any) -> None:
    client = raw_client(smtp_server.address)
    assert client.read_reply() == GREETING
    assert client.command(b"EHLO client.example") == DEFAULT_EHLO
    assert client.command(b"STARTTLS") == b'500 Error: command "STARTTLS" not recognized\r\n'
    assert client.command(b"AUTH PLAIN AHVAcA==") == b'500 Error: command "AUTH" not recognized\r\n'


# -- STARTTLS ----------------------------------------------------------------------------------
def test_starttls_smtplib_message_arrives_intact(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        code, text = client.ehlo("client.example")
        assert code == 250 and b"STARTTLS" in text.split(b"\n")
        assert client.starttls(context=client_context)[0] == 220
        assert client.sock.version() is not None
        code, text = client.ehlo("client.example")
        assert b"STARTTLS" not in text  # only offered before TLS
        assert client.sendmail("a@example.com", ["b@example.com", "c@example.com"], MESSAGE) == {}
    [message] = st.server.wait_for(1)
    assert message.data == RECEIVED
    assert message.mailfrom == "a@example.com"
    assert message.rcpttos == ["b@example.com", "c@example.com"]
    assert "auth_login" not in message.kwargs  # AUTH is not configured


def test_starttls_large_message(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    # Several TLS records per read and many reads: nothing lost or reordered.
    body = b"".join(b"%08d abcdefghijklmnopqrstuvwxyz0123456789\r\n" % i for i in range(40000))
    st = server_factory(tls_context=server_context)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.starttls(context=client_context)
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: big\r\n\r\n" + body)
    [message] = st.server.wait_for(1)
    assert message.data == (b"Subject: big\r\n\r\n" + body).replace(b"\r\n", b"\n").rstrip(b"\n")


def test_starttls_resets_the_session(server_factory: Any, raw_client: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context)
    client = raw_client(st.address)
    client.read_reply()
    client.command(b"EHLO client.example")
    assert client.command(b"MAIL FROM:<before@example.com>") == b"250 OK\r\n"
    starttls(client, client_context)
    # RFC 3207 4.2: the greeting and the envelope are forgotten.
    assert client.command(b"MAIL FROM:<after@example.com>") == b"503 Error: send HELO first\r\n"
    assert client.command(b"EHLO client.example").startswith(b"250-")
    assert client.command(b"MAIL FROM:<after@example.com>") == b"250 OK\r\n"
    assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
    assert client.command(b"DATA").startswith(b"354")
    assert client.command(b"hello\r\n.") == b"250 OK\r\n"
    [message] = st.server.wait_for(1)
    assert message.mailfrom == "after@example.com"


def test_starttls_refusals(server_factory: Any, raw_client: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context)
    client = raw_client(st.address)
    client.read_reply()
    assert client.command(b"STARTTLS") == b"503 Error: send HELO first\r\n"
    client.command(b"EHLO client.example")
    assert client.command(b"STARTTLS now") == b"501 Syntax: STARTTLS\r\n"
    starttls(client, client_context)
    client.command(b"EHLO client.example")
    assert client.command(b"STARTTLS") == b"503 Error: TLS already active\r\n"
    assert client.command(b"NOOP") == b"250 OK\r\n"  # the session goes on


def test_pipelined_plaintext_after_starttls_is_discarded(server_factory: Any, raw_client: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    # CVE-2024-34083 class: commands sent in clear right behind STARTTLS must
    # not be executed as if they had arrived over TLS.
    st = server_factory(tls_context=server_context)
    client = raw_client(st.address)
    client.read_reply()
    client.command(b"EHLO client.example")
    client.send(b"STARTTLS\r\nEHLO injected.example\r\nMAIL FROM:<injected@example.com>\r\n")
    assert client.read_reply() == b"220 Ready to start TLS\r\n"
    assert client.buffer == b""  # nothing was answered in clear either
    client.sock = client_context.wrap_socket(client.sock, server_hostname="127.0.0.1")
    # The first reply over TLS answers our first command over TLS.
    assert client.command(b"NOOP") == b"250 OK\r\n"
    assert client.command(b"MAIL FROM:<a@example.com>") == b"503 Error: send HELO first\r\n"
    client.command(b"EHLO client.example")
    assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"  # no nested MAIL


def test_require_starttls(server_factory: Any, raw_client: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context, require_starttls=True)
    client = raw_client(st.address)
    client.read_reply()
    client.command(b"EHLO client.example")
    assert client.command(b"MAIL FROM:<a@example.com>") == b"530 Must issue a STARTTLS command first\r\n"
    starttls(client, client_context)
    client.command(b"EHLO client.example")
    assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"


def test_handshake_garbage_closes_only_that_session(server_factory: Any, raw_client: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context)
    bad = raw_client(st.address)
    bad.read_reply()
    bad.command(b"EHLO client.example")
    assert bad.command(b"STARTTLS") == b"220 Ready to start TLS\r\n"
    bad.send(b"EHLO this is not a TLS ClientHello\r\n")
    try:
        data = bad.read_until_closed()  # at most a TLS alert, then the end
    except ConnectionResetError:
        data = b""  # closed with unread input: the kernel resets
    assert b"250" not in data  # nothing was executed
    good = tls_client(st.address, client_context)
    assert good.command(b"NOOP") == b"250 OK\r\n"


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_stalled_handshake_times_out_while_others_are_served(mode: str, server_factory: Any, raw_client: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    option = "tls_context" if mode == "starttls" else "implicit_tls_context"
    st = server_factory(**{option: server_context, "tls_handshake_timeout": 0.5})
    staller = raw_client(st.address)
    if mode == "starttls":
        staller.read_reply()
        staller.command(b"EHLO client.example")
        assert staller.command(b"STARTTLS") == b"220 Ready to start TLS\r\n"
    # ... and now the staller never sends a ClientHello.
    done = threading.Event()
    errors = []

    def other_session() -> None:
        try:
            if mode == "starttls":
                client = smtplib.SMTP(*st.address, timeout=TIMEOUT)
                client.starttls(context=client_context)
            else:
                client = smtplib.SMTP_SSL(*st.address, timeout=TIMEOUT, context=client_context)
            with client:
                client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=other_session)
    worker.start()
    assert done.wait(TIMEOUT)
    worker.join(TIMEOUT)
    assert not errors, errors
    [message] = st.server.wait_for(1)
    assert message.data == RECEIVED
    # The staller is disconnected by the handshake timer, having been sent
    # nothing in clear (SMTPS: not even the greeting).
    assert staller.read_until_closed() == b""


def test_handshake_timer_is_cancelled_on_success(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context, tls_handshake_timeout=0.2)
    client = tls_client(st.address, client_context)
    assert client.command(b"NOOP") == b"250 OK\r\n"

    def timers() -> list:
        channels = [obj for obj in st.map.values() if isinstance(obj, smtpd.SMTPChannel)]
        assert len(channels) == 1 and channels[0].tls_active
        pending = [h for _, _, h in _reactor.reactor_for(st.map).timers if not h.cancelled]
        guard = channels[0]._guard  # the session's timers (_guard.SessionGuard)
        handshake = [h.callback for h in pending if getattr(h.callback, "__func__", None) is type(guard)._handshake_expired]
        return [guard.tls_timer, handshake]

    assert st.call(timers) == [None, []]


# -- implicit TLS (SMTPS) --------------------------------------------------------------------
def test_smtps_smtplib(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(implicit_tls_context=server_context)
    with smtplib.SMTP_SSL(*st.address, timeout=TIMEOUT, context=client_context) as client:
        code, text = client.ehlo("client.example")
        assert code == 250 and b"STARTTLS" not in text
        assert client.docmd("STARTTLS") == (503, b"Error: TLS already active")
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    [message] = st.server.wait_for(1)
    assert message.data == RECEIVED


def test_smtps_greeting_comes_after_the_handshake(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(implicit_tls_context=server_context)
    raw = socket.create_connection(st.address, timeout=TIMEOUT)
    with client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        client = RawClient.__new__(RawClient)
        client.sock, client.timeout, client.buffer = tls, TIMEOUT, b""
        assert client.read_reply() == GREETING
        assert client.command(b"EHLO client.example") == DEFAULT_EHLO


def test_concurrent_tls_sessions(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    # Handshakes and messages of many sessions interleave in one loop.
    st = server_factory(tls_context=server_context, authenticator=lambda *a: a[3:] == (USER, PASSWORD))
    count = 16
    errors: list = []

    def session(i: int) -> None:
        try:
            with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
                client.starttls(context=client_context)
                client.login(USER, PASSWORD)
                client.sendmail("s%d@example.com" % i, ["b@example.com"], MESSAGE)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert not errors, errors
    messages = st.server.wait_for(count)
    assert sorted(m.mailfrom for m in messages) == sorted("s%d@example.com" % i for i in range(count))
    assert all(m.data == RECEIVED and m.kwargs["auth_login"] == USER for m in messages)


# -- decrypted bytes held inside the SSLSocket ----------------------------------------------------
class _TinyReadChannel(smtpd.SMTPChannel):
    # A read of 7 bytes leaves most of each TLS record inside the SSLSocket
    # (pending()): the selector never reports those bytes.
    ac_in_buffer_size = 7


class _TinyReadServer(RecordingSMTPServer):
    channel_class = _TinyReadChannel


def test_pending_tls_bytes_are_processed(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(_TinyReadServer, tls_context=server_context)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.starttls(context=client_context)
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    [message] = st.server.wait_for(1)
    assert message.data == RECEIVED


def test_pending_tls_bytes_need_read_again(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext, monkeypatch: Any) -> None:
    # The control for the test above: without the reactor's read_again()
    # the session stalls, so that test does exercise it.
    monkeypatch.setattr(_reactor.Reactor, "read_again", lambda self, fd: None)
    st = server_factory(_TinyReadServer, tls_context=server_context)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.starttls(context=client_context)
        client.sock.settimeout(1.0)
        with pytest.raises((socket.timeout, smtplib.SMTPServerDisconnected)):
            client.ehlo("client.example")


@pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback")
def test_starttls_over_ipv6(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(host="::1", tls_context=server_context)
    with smtplib.SMTP("::1", st.port, timeout=TIMEOUT) as client:
        client.starttls(context=client_context)
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    assert st.server.wait_for(1)[0].data == RECEIVED


# -- options ---------------------------------------------------------------------------------------
def test_option_errors(server_context: ssl.SSLContext) -> None:
    with pytest.raises(ValueError, match="require_starttls"):
        smtpd.SMTPServer(("127.0.0.1", 0), None, require_starttls=True, map={})
    with pytest.raises(TypeError, match="SSLContext"):
        smtpd.SMTPServer(("127.0.0.1", 0), None, tls_context="cert.pem", map={})


# -- the command line, with real clients ----------------------------------------------------------
def test_cli_swaks_starttls_with_auth(cli_server: Any, tls_files: Any, auth_file: str) -> None:
    swaks = need_program("swaks")
    server = cli_server("-d", "--tls-cert", tls_files.cert, "--tls-key", tls_files.key, "--auth-file", auth_file, "--auth-required")
    for mechanism in ("PLAIN", "LOGIN"):
        run_client([
            swaks, "--server", "127.0.0.1", "--port", str(server.port), "--tls",
            "--auth", mechanism, "--auth-user", USER, "--auth-password", PASSWORD,
            "--from", "a@example.com", "--to", "b@example.com",
            "--header", "Subject: swaks %s" % mechanism, "--body", "hello over STARTTLS", "--timeout", "20",
        ])
    messages = server.messages()
    assert [m["auth_login"] for m in messages] == [USER, USER]
    assert all(m["rcpttos"] == ["b@example.com"] for m in messages)
    assert b"Subject: swaks PLAIN" in messages[0]["data"] and b"hello over STARTTLS" in messages[0]["data"]
    stderr = server.stop()
    assert "Data: b'AUTH PLAIN ***'" in stderr  # the debug stream shows the command...
    assert PASSWORD not in stderr  # ...never the credentials
    for secret in (b"\0alice\0" + PASSWORD.encode(), PASSWORD.encode()):
        import base64

        assert base64.b64encode(secret).decode() not in stderr


def test_cli_swaks_smtps(cli_server: Any, tls_files: Any, auth_file: str) -> None:
    swaks = need_program("swaks")
    server = cli_server("--smtps", "--tls-cert", tls_files.cert, "--tls-key", tls_files.key, "--auth-file", auth_file)
    run_client([
        swaks, "--server", "127.0.0.1", "--port", str(server.port), "--tlsc",
        "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
        "--from", "a@example.com", "--to", "b@example.com", "--body", "hello over SMTPS", "--timeout", "20",
    ])
    [message] = server.messages()
    assert message["auth_login"] == USER and b"hello over SMTPS" in message["data"]


@pytest.mark.parametrize("scheme", ["smtp", "smtps"])
def test_cli_curl(scheme: str, cli_server: Any, tls_files: Any, auth_file: str, tmp_path: Any) -> None:
    curl = need_program("curl")
    tls_args = ["--smtps"] if scheme == "smtps" else ["--require-starttls"]
    server = cli_server(*tls_args, "--tls-cert", tls_files.cert, "--tls-key", tls_files.key, "--auth-file", auth_file)
    body = tmp_path / "mail.txt"
    body.write_bytes(MESSAGE)
    run_client([
        curl, "-sS", "--max-time", "20", "--url", "%s://127.0.0.1:%d" % (scheme, server.port),
        "--ssl-reqd", "--cacert", tls_files.cert, "--user", "%s:%s" % (USER, PASSWORD),
        "--mail-from", "a@example.com", "--mail-rcpt", "b@example.com", "--upload-file", str(body),
    ])
    [message] = server.messages()
    assert message["auth_login"] == USER
    assert message["data"] == RECEIVED


def test_cli_curl_without_auth_insecure(cli_server: Any, tls_files: Any, tmp_path: Any) -> None:
    # -k: curl does not verify the certificate; STARTTLS still required.
    curl = need_program("curl")
    server = cli_server("--tls-cert", tls_files.cert, "--tls-key", tls_files.key, "--require-starttls")
    body = tmp_path / "mail.txt"
    body.write_bytes(MESSAGE)
    run_client([
        curl, "-sS", "-k", "--max-time", "20", "--url", "smtp://localhost:%d" % server.port, "--ssl-reqd",
        "--mail-from", "a@example.com", "--mail-rcpt", "b@example.com", "--upload-file", str(body),
    ])
    [message] = server.messages()
    assert message["auth_login"] is None and message["data"] == RECEIVED


@pytest.mark.parametrize(
    "args, error",
    [
        (["--smtps"], "--smtps needs --tls-cert"),
        (["--require-starttls"], "--require-starttls needs --tls-cert"),
        # Names the flag and the file (deliberately changed from "cannot
        # load the TLS certificate ...", which also blamed the certificate
        # for an unreadable key).
        (["--tls-cert", "/nonexistent/cert.pem"], "--tls-cert /nonexistent/cert.pem: No such file"),
        (["--auth-required"], "--auth-required needs --auth-file"),
    ],
)
def test_cli_refuses_bad_tls_options(args: list, error: str, capsys: Any) -> None:
    from smtpd_compat import _cli

    assert _cli.main(["-n", *args, "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and error in err


def test_cli_refuses_a_readable_auth_file(tls_files: Any, auth_file: str, capsys: Any) -> None:
    import os

    from smtpd_compat import _cli

    os.chmod(auth_file, 0o644)
    assert _cli.main(["-n", "--tls-cert", tls_files.cert, "--tls-key", tls_files.key, "--auth-file", auth_file, "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chmod 600" in err and PASSWORD not in err


def test_quit_over_tls_ends_with_close_notify(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    # Clients tell a clean end from a truncation attack by the close_notify.
    st = server_factory(tls_context=server_context)
    client = RawClient(st.address)
    client.read_reply()
    client.command(b"EHLO client.example")
    assert client.command(b"STARTTLS").startswith(b"220")
    client.sock = client_context.wrap_socket(client.sock, server_hostname="127.0.0.1", suppress_ragged_eofs=False)
    assert client.command(b"QUIT") == b"221 Bye\r\n"
    # Without close_notify this read raises SSLEOFError.
    assert client.read_until_closed() == b""
    client.close()


# -- a read that needs a write, a write that needs a read -----------------------------------------
class _ScriptedTLSSocket:
    """Stands in for an established SSLSocket: recv()/send() return or raise
    the scripted outcomes in order, so that TLS's "want write while
    reading" / "want read while writing" can be produced at will."""

    def __init__(self, sock: socket.socket, recv_script: list, send_script: list) -> None:
        self.sock = sock
        self.recv_script = recv_script
        self.send_script = send_script
        self.sent = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        outcome = self.recv_script.pop(0) if self.recv_script else ssl.SSLWantReadError()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def send(self, data: bytes) -> int:
        outcome = self.send_script.pop(0) if self.send_script else None
        if isinstance(outcome, BaseException):
            raise outcome
        self.sent += bytes(data)
        return len(data)

    def pending(self) -> int:
        return 0

    def unwrap(self) -> None:
        raise OSError("not a real TLS socket")

    def close(self) -> None:
        self.sock.close()


def test_tls_want_write_on_read_and_want_read_on_write() -> None:
    socket_map: dict = {}
    server = RecordingSMTPServer(("127.0.0.1", 0), None, map=socket_map)
    here, there = socket.socketpair()
    try:
        channel = smtpd.SMTPChannel(server, here, ("127.0.0.1", 1), map=socket_map)
        assert there.recv(1024) == GREETING
        fake = _ScriptedTLSSocket(here, [ssl.SSLWantWriteError(), b"NOOP\r\n"], [ssl.SSLWantReadError()])
        # An established TLS session over the scripted socket.
        channel._ac_transport = _transport.TLSTransport(fake, handshaking=False)  # type: ignore[arg-type]
        channel.socket = fake
        assert channel.readable() and not channel.writable()

        channel.handle_read_event()  # TLS must write before it can read
        assert not channel.readable() and channel.writable()

        channel.handle_write_event()  # retries the read: NOOP is answered...
        assert fake.sent == b""  # ...but the reply's write needs a read first
        assert channel.readable() and not channel.writable()
        assert channel.producer_fifo

        channel.handle_read_event()  # retries the write, then reads (nothing yet)
        assert fake.sent == b"250 OK\r\n"
        assert channel.readable() and not channel.writable()
        assert not channel.producer_fifo
    finally:
        there.close()
        asyncore.close_all(map=socket_map, ignore_all=True)
