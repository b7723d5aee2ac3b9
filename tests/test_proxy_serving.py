"""Serving behind a proxy (``proxy_protocol=True``), on loopback sockets.

Raw sockets play the proxy (nothing else sends hand-made headers): the
client the header names becomes ``peer`` for process_message, the logs and
the Received header; the greeting waits for the header; SMTP bytes sent
with the header are read; STARTTLS, SMTPS and AUTH work behind it; an
untrusted source, a missing, late or invalid header close the connection
unanswered.  Then a real HAProxy (``send-proxy`` and ``send-proxy-v2``)
with smtplib clients bound to 127.0.0.2, so that the client's address
differs from the proxy's (127.0.0.1).  With the option off, nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest
from test_auth import check
from test_cli import free_port, run_cli, served, start  # noqa: F401  (served: a fixture)

from smtpd_compat import _logging, _proxy_io, _serving, _transport
from smtpd_compat._proxy_protocol import V2_SIGNATURE

from conftest import TIMEOUT, RawClient, RecordingSMTPServer, running_server
from tls_helpers import PASSWORD, USER, b64, client_context, server_context, tls_files  # noqa: F401  (fixtures)

HAPROXY = "/usr/sbin/haproxy"
V1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 4321 25\r\n"
MESSAGE = [b"HELO client.example", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"DATA"]


def v2_ipv6(src: str, sport: int) -> bytes:
    block = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("!HH", sport, 25)
    block += b"\x04\x00\x03abc"  # a TLV (PP2_TYPE_NOOP), skipped
    return V2_SIGNATURE + b"\x21\x21" + struct.pack("!H", len(block)) + block


def v2_local() -> bytes:
    return V2_SIGNATURE + b"\x20\x00\x00\x00"


def send_message(client: RawClient, helo: bool = True) -> None:
    for line in MESSAGE if helo else MESSAGE[1:]:
        assert client.command(line)[:1] in (b"2", b"3")
    assert client.command(b"Subject: hi\r\n\r\nbody\r\n.") == b"250 OK\r\n"


def closed_unanswered(client: RawClient) -> bool:
    """Whether the server closes *client*'s connection without sending a byte
    (a reset, when it closes with the client's bytes unread, counts)."""
    try:
        return client.read_until_closed() == b""
    except ConnectionResetError:
        return True


# -- the client named in the header is the peer --------------------------------------
@pytest.mark.parametrize("header, peer", [
    (V1, ("192.0.2.1", 4321)),
    (v2_ipv6("2001:db8::7", 40000), ("2001:db8::7", 40000, 0, 0)),
], ids=["v1", "v2-ipv6"])
def test_the_client_in_the_header_is_the_peer(header: bytes, peer: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="smtpd_compat")
    with running_server(RecordingSMTPServer, proxy_protocol=True, add_received_header=True) as st, RawClient(st.address) as c:
        c.send(header)
        assert c.read_reply().startswith(b"220 ")
        send_message(c)
        message = st.server.wait_for(1)[0]
    assert message.peer == peer
    literal = "[%s]" % peer[0] if len(peer) == 2 else "[IPv6:%s]" % peer[0]
    assert message.data.startswith(b"Received: from client.example (" + literal.encode() + b")")
    assert "connection from %s" % _logging.format_address(peer) in caplog.text
    assert "127.0.0.1" not in caplog.text  # the proxy's address is not the session's


def test_the_greeting_waits_for_the_header_sent_a_byte_at_a_time() -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True) as st, RawClient(st.address) as c:
        c.send_bytewise(V1[:-1])
        c.sock.settimeout(0.2)
        with pytest.raises(socket.timeout):
            c.sock.recv(1)  # nothing before the header is complete
        c.send(V1[-1:])
        assert c.read_reply().startswith(b"220 ")
        send_message(c)
        assert st.server.wait_for(1)[0].peer == ("192.0.2.1", 4321)


@pytest.mark.parametrize("header", [V1, v2_ipv6("2001:db8::7", 40000)], ids=["v1", "v2"])
def test_smtp_bytes_sent_with_the_header_are_read(header: bytes) -> None:
    """A client that pipelines past the greeting: its commands, in the same
    segment as the header, are not lost (the reader takes only the header)."""
    with running_server(RecordingSMTPServer, proxy_protocol=True) as st, RawClient(st.address) as c:
        c.send(header + b"EHLO client.example\r\nNOOP\r\n")
        assert c.read_reply().startswith(b"220 ")
        assert c.read_reply().startswith(b"250-")
        assert c.read_reply() == b"250 OK\r\n"


@pytest.mark.parametrize("header", [v2_local(), b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"],
                         ids=["v2-LOCAL", "v1-UNKNOWN", "v1-UNKNOWN-with-addresses"])
def test_local_and_unknown_keep_the_connection_address(header: bytes) -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True) as st, RawClient(st.address) as c:
        c.send(header)
        assert c.read_reply().startswith(b"220 ")
        send_message(c)
        peer = st.server.wait_for(1)[0].peer
        assert peer == c.sock.getsockname()


def test_a_subclass_handle_accepted_gets_the_client_address() -> None:
    seen: List[Any] = []

    class Server(RecordingSMTPServer):
        def handle_accepted(self, conn: Any, addr: Any) -> None:
            seen.append((addr, conn.getpeername()))
            super().handle_accepted(conn, addr)

    with running_server(Server, proxy_protocol=True) as st, RawClient(st.address) as c:
        c.send(V1)
        assert c.read_reply().startswith(b"220 ")
        assert c.command(b"QUIT").startswith(b"221")
    assert seen == [(("192.0.2.1", 4321), ("192.0.2.1", 4321))]


# -- what is refused --------------------------------------------------------------------
def test_an_untrusted_source_is_closed_unanswered(caplog: Any) -> None:
    """127.0.0.1 is not in proxy_trusted: even a valid header is not read."""
    with running_server(RecordingSMTPServer, proxy_protocol=True, proxy_trusted=["10.0.0.0/8", "::1"]) as st:
        with RawClient(st.address) as c:
            c.send(V1 + b"EHLO client.example\r\n")
            assert closed_unanswered(c)
        with RawClient(st.address) as c:
            assert closed_unanswered(c)  # one that waits for a greeting gets none either
        assert st.server.messages == []
    assert "not a trusted proxy" in caplog.text


def test_a_trusted_network_other_than_loopback() -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True, proxy_trusted=["10.0.0.0/8", "127.0.0.1/32"]) as st:
        with RawClient(st.address) as c:
            c.send(V1)
            assert c.read_reply().startswith(b"220 ")


def test_no_header_is_closed_after_the_timeout(caplog: Any) -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True, proxy_timeout=0.2) as st:
        with RawClient(st.address) as c:
            assert closed_unanswered(c)
        with RawClient(st.address) as c:
            c.send(V1[:20])  # half a header
            assert closed_unanswered(c)
        assert not _serving.sessions(st.server)
    assert caplog.text.count("within proxy_timeout") == 2


@pytest.mark.parametrize("data", [
    b"EHLO client.example\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 4321 99999\r\n",
    b"PROXY UNKNOWN " + b"x" * 200,
    b"PROXY TCP4 192.0.2.1 198.51.100.2 4321 25\n",
    V2_SIGNATURE + b"\x21\x11\x00\x04abcd",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
], ids=["smtp", "bad-port", "too-long", "lf", "v2-short", "tls"])
def test_an_invalid_header_is_closed_unanswered(data: bytes, caplog: Any) -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True) as st, RawClient(st.address) as c:
        c.send(data)
        assert closed_unanswered(c)
    assert "invalid PROXY protocol header" in caplog.text


def test_a_proxy_that_hangs_up_mid_header() -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True) as st:
        with RawClient(st.address) as c:
            c.send(V1[:10])
        with RawClient(st.address) as c:  # the server goes on
            c.send(V1)
            assert c.read_reply().startswith(b"220 ")


def test_closing_the_server_closes_connections_waiting_for_a_header() -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True) as st, RawClient(st.address) as c:
        c.send(V1[:10])
        deadline = time.monotonic() + TIMEOUT
        while not st.call(lambda: len(st.server.__dict__.get("_compat_proxy_pending", ()))):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        st.call(st.server.server_close)
        assert closed_unanswered(c)
        assert not [obj for obj in list(st.map.values()) if isinstance(obj, _proxy_io.HeaderReader)]


def test_a_graceful_shutdown_closes_connections_waiting_for_a_header() -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True) as st, RawClient(st.address) as c:
        c.send(V1[:10])
        deadline = time.monotonic() + TIMEOUT
        while not st.call(lambda: len(st.server.__dict__.get("_compat_proxy_pending", ()))):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        st.call(lambda: _serving.begin_shutdown(st.server))
        assert closed_unanswered(c)


# -- TLS and AUTH behind the proxy --------------------------------------------------------
def test_starttls_and_auth_behind_the_header(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True, tls_context=server_context, authenticator=check,
                        add_received_header=True) as st, RawClient(st.address) as c:
        c.send(V1)
        assert c.read_reply().startswith(b"220 ")
        assert b"STARTTLS" in c.command(b"EHLO client.example")
        assert c.command(b"STARTTLS") == b"220 Ready to start TLS\r\n"
        c.sock = client_context.wrap_socket(c.sock, server_hostname="127.0.0.1")
        assert b"AUTH" in c.command(b"EHLO client.example")
        assert c.command(b"AUTH PLAIN " + b64(b"\0" + USER.encode() + b"\0" + PASSWORD.encode())).startswith(b"235")
        send_message(c, helo=False)
        message = st.server.wait_for(1)[0]
    assert message.peer == ("192.0.2.1", 4321)
    assert message.data.startswith(b"Received: from client.example ([192.0.2.1])")
    assert b"with ESMTPSA" in message.data


def test_implicit_tls_behind_the_header(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    """SMTPS: the header comes first, in clear, then the TLS handshake."""
    with running_server(RecordingSMTPServer, proxy_protocol=True, implicit_tls_context=server_context) as st:
        raw = socket.create_connection(st.address, timeout=TIMEOUT)
        raw.sendall(v2_ipv6("2001:db8::9", 1234))
        c = RawClient.__new__(RawClient)
        c.sock, c.timeout, c.buffer = client_context.wrap_socket(raw, server_hostname="127.0.0.1"), TIMEOUT, b""
        with c:
            assert c.read_reply().startswith(b"220 ")
            assert c.command(b"EHLO client.example").startswith(b"250-")
            send_message(c, helo=False)
        assert st.server.wait_for(1)[0].peer == ("2001:db8::9", 1234, 0, 0)


# -- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, error", [
    (dict(proxy_protocol=1), TypeError),
    (dict(proxy_protocol=True, proxy_trusted="10.0.0.0/8"), TypeError),
    (dict(proxy_protocol=True, proxy_trusted=["10.0.0.0/33"]), ValueError),
    (dict(proxy_protocol=True, proxy_trusted=["10.0.0.1/8"]), ValueError),  # host bits set: a typo?
    (dict(proxy_protocol=True, proxy_trusted=[10]), TypeError),
    (dict(proxy_protocol=True, proxy_timeout=0), ValueError),
    (dict(proxy_protocol=True, proxy_timeout=None), ValueError),
    (dict(proxy_protocol=True, proxy_timeout=True), ValueError),
    (dict(proxy_trusted=["nonsense"]), ValueError),  # checked with the option off too
], ids=str)
def test_bad_options(options: Any, error: Any) -> None:
    with pytest.raises(error):
        RecordingSMTPServer(("127.0.0.1", 0), None, map={}, **options)


def test_the_options_read_back() -> None:
    import ipaddress

    server = RecordingSMTPServer(("127.0.0.1", 0), None, map={}, proxy_protocol=True,
                                 proxy_trusted=[ipaddress.ip_network("10.0.0.0/8"), "::1"], proxy_timeout=2)
    try:
        assert server.proxy_protocol is True
        assert server.proxy_timeout == 2
        assert "handle_accepted" in server.__dict__
    finally:
        server.close()


def test_with_the_option_off_a_proxy_header_is_a_command() -> None:
    """The default: smtpd's greeting at once, and a PROXY line is an unknown command."""
    with running_server(RecordingSMTPServer) as st, RawClient(st.address) as c:
        assert "handle_accepted" not in st.server.__dict__
        assert c.read_reply().startswith(b"220 ")
        assert c.command(V1[:-2]) == b'500 Error: command "PROXY" not recognized\r\n'


def test_a_proxied_socket_sends_replies_in_one_write() -> None:
    """ProxiedSocket keeps the plain socket's sendmsg (one write for the
    replies of one read), as socket.socket does."""
    a, b = socket.socketpair()
    try:
        proxied = _transport.ProxiedSocket.adopt(a, ("192.0.2.1", 1))
        transport = _transport.PlainTransport(proxied)
        assert transport.sendmsg == proxied.sendmsg
        assert proxied.getpeername() == ("192.0.2.1", 1)
        proxied.close()
    finally:
        a.close()
        b.close()


def test_a_proxied_socket_keeps_its_peer_under_tls(server_context: ssl.SSLContext) -> None:
    """STARTTLS wraps the channel's socket: the TLS socket answers the
    client's address too (channel.conn after the handshake)."""
    a, b = socket.socketpair()
    try:
        proxied = _transport.ProxiedSocket.adopt(a, ("192.0.2.1", 1))
        tls = _transport.TLSTransport.start(proxied, server_context)
        assert tls.sock.getpeername() == ("192.0.2.1", 1)
        tls.sock.close()
    finally:
        a.close()
        b.close()


# -- the command line ----------------------------------------------------------------------------------
def test_the_command_line_flags(served: List[Any]) -> None:  # noqa: F811
    s = start("-c", "DebuggingServer", "--proxy-protocol", "--proxy-trusted", "127.0.0.0/8,::1", "--proxy-timeout", "3")
    served.append(s)
    with RawClient(s.address) as c:
        c.send(V1)
        assert c.read_reply().startswith(b"220 ")
        for line in MESSAGE:
            c.command(line)
        assert c.command(b"Subject: hi\r\n\r\nbody\r\n.") == b"250 OK\r\n"
        c.command(b"QUIT")
    code, out, err = s.stop()
    assert "X-Peer: 192.0.2.1" in out


@pytest.mark.parametrize("args, words", [
    (["--proxy-trusted", "10.0.0.0/8"], "--proxy-trusted needs --proxy-protocol"),
    (["--proxy-protocol", "--proxy-trusted", "10.0.0.0/40"], "--proxy-trusted"),
    (["--proxy-protocol", "--proxy-timeout", "0"], "invalid number of seconds"),
])
def test_bad_flags(args: List[str], words: str) -> None:
    result = run_cli("-n", "-c", "DebuggingServer", *args, "127.0.0.1:0")
    assert result.returncode == 2
    assert words in result.stderr


# -- a real HAProxy -------------------------------------------------------------------------------------
HAPROXY_CONFIG = """\
global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend v1
    bind 127.0.0.1:{v1}
    default_backend v1
backend v1
    server s1 127.0.0.1:{server} send-proxy
frontend v2
    bind 127.0.0.1:{v2}
    default_backend v2
backend v2
    server s1 127.0.0.1:{server} send-proxy-v2
"""


def haproxy_program() -> str:
    """The HAProxy executable; skips the test where there is none."""
    if os.path.exists(HAPROXY):
        return HAPROXY
    found = shutil.which("haproxy")
    if not found:
        pytest.skip("haproxy is not installed")
    return str(found)


@contextlib.contextmanager
def run_haproxy(config: Path, ports: Tuple[int, ...]) -> Iterator["subprocess.Popen[bytes]"]:
    """HAProxy in the foreground with the config file *config*; returns once
    it accepts connections on every one of *ports* (its frontends), stops it
    on the way out."""
    proc = subprocess.Popen([haproxy_program(), "-db", "-f", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        for port in ports:
            while True:
                assert proc.poll() is None, "haproxy exited: %s" % proc.communicate()[0].decode("utf-8", "replace")
                assert time.monotonic() < deadline, "haproxy did not listen"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@contextlib.contextmanager
def haproxy(tmp_path: Path, server_port: int) -> Iterator[Tuple[int, int]]:
    """HAProxy in the foreground, relaying two free ports to *server_port*
    with send-proxy (v1) and send-proxy-v2; yields those two ports."""
    haproxy_program()
    ports = free_port(), free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(HAPROXY_CONFIG.format(v1=ports[0], v2=ports[1], server=server_port))
    with run_haproxy(config, ports):
        yield ports


@pytest.mark.parametrize("version", [0, 1], ids=["send-proxy", "send-proxy-v2"])
def test_through_haproxy(version: int, tmp_path: Path, server_context: ssl.SSLContext,
                         client_context: ssl.SSLContext) -> None:
    with running_server(RecordingSMTPServer, proxy_protocol=True, tls_context=server_context, authenticator=check,
                        add_received_header=True) as st, haproxy(tmp_path, st.port) as ports:
        port = ports[version]
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT, source_address=("127.0.0.2", 0),
                          local_hostname="client.example") as client:
            client.ehlo("client.example")
            here = client.sock.getsockname()
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: plain\r\n\r\nbody\r\n")
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT, source_address=("127.0.0.2", 0),
                          local_hostname="client.example") as client:
            client.starttls(context=client_context)
            client.login(USER, PASSWORD)
            there = client.sock.getsockname()
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: tls\r\n\r\nbody\r\n")
        plain, tls = st.server.wait_for(2)
    # The address and port smtplib connected from, not HAProxy's 127.0.0.1.
    assert plain.peer == here[:2] and here[0] == "127.0.0.2"
    assert tls.peer == there[:2]
    assert plain.data.startswith(b"Received: from client.example ([127.0.0.2])")
    assert tls.data.startswith(b"Received: from client.example ([127.0.0.2])")
    assert b"with ESMTPSA" in tls.data
