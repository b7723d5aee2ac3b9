"""Regression tests for CPython 3.11 smtpd's known defects, SMTP smuggling,
and clients that drip, flood or never read.

Each defect test states what CPython 3.11's smtpd did; each one fails
against that behaviour.  Everything runs over real loopback sockets.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any, List, Optional

import pytest

from smtpd_compat import _replies as R
from smtpd_compat import smtpd

from conftest import FQDN, GREETING, REPO_ROOT, TIMEOUT, RawClient, RecordingSMTPServer, running_server, send_while_reading
from test_limits import SmallBufferServer, channels, non_reading_client

START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
OK = b"250 OK\r\n"
HELO_OK = ("250 %s\r\n" % FQDN).encode()


def open_session(address: Any, greeting: bytes = b"HELO client.example", **kwargs: Any) -> RawClient:
    client = RawClient(address, **kwargs)
    assert client.read_reply() == GREETING
    assert client.command(greeting).startswith(b"250")
    return client


def start_data(client: RawClient, rcpts: List[bytes] = (b"rcpt@example.org",)) -> None:
    assert client.command(b"MAIL FROM:<sender@example.com>") == OK
    for rcpt in rcpts:
        assert client.command(b"RCPT TO:<" + rcpt + b">") == OK
    assert client.command(b"DATA") == START_DATA


def deliver(address: Any, body: bytes = b"Subject: hi\r\n\r\nhello\r\n") -> None:
    with open_session(address) as client:
        start_data(client)
        client.send(body + b".\r\n")
        assert client.read_reply() == OK
        assert client.command(b"QUIT") == b"221 Bye\r\n"


# -- 1. empty message -------------------------------------------------------------
# smtpd: "DATA" then "." alone was never recognised: the session hung and
# the following commands became message text.
@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_empty_message_is_delivered(smtp_server, bytewise):
    with open_session(smtp_server.address) as client:
        start_data(client)
        if bytewise:
            client.send_bytewise(b".\r\n")
        else:
            client.send(b".\r\n")
        assert client.read_reply() == OK
        assert client.command(b"NOOP") == OK
    [message] = smtp_server.server.wait_for(1)
    assert message.data == b""


# -- 2. 552, then back to command state, memory bounded ------------------------------------
class MeasuringChannel(smtpd.SMTPChannel):
    """Records the most message bytes it ever held in memory."""

    most_buffered = 0

    def collect_incoming_data(self, data: bytes) -> None:
        super().collect_incoming_data(data)
        # The message collects in received_lines, as in smtpd.
        held = sum(len(piece) for piece in self.received_lines)
        type(self).most_buffered = max(type(self).most_buffered, held)


class MeasuringServer(RecordingSMTPServer):
    channel_class = MeasuringChannel


def test_552_ends_the_transaction_and_memory_stays_bounded():
    limit = 10_000
    MeasuringChannel.most_buffered = 0
    with running_server(MeasuringServer, data_size_limit=limit) as st:
        with open_session(st.address) as client:
            start_data(client)
            # 100 times the limit, in lines: smtpd kept all of it.
            line = b"x" * 998 + b"\r\n"
            for _ in range(100 * limit // len(line)):
                client.send(line)
            client.send(b".\r\n")
            assert client.read_reply() == b"552 Error: Too much mail data\r\n"
            # smtpd stayed in DATA state: RSET and MAIL became message text.
            assert client.command(b"RSET") == OK
            start_data(client)
            client.send(b"small\r\n.\r\n")
            assert client.read_reply() == OK
        [message] = st.server.wait_for(1)
        assert message.data == b"small"
    # The limit plus one read (64 KiB) at most, whatever the client sent.
    assert MeasuringChannel.most_buffered <= limit + 65536


# A command line (or a line answering an AUTH challenge) is counted, not
# kept, beyond the command size limit: docs/hardening.md's table.
@pytest.mark.parametrize("before", [[], [b"EHLO me", b"AUTH LOGIN"]], ids=["command", "auth-response"])
def test_an_endless_line_is_counted_not_kept(before: List[bytes]) -> None:
    MeasuringChannel.most_buffered = 0
    with running_server(MeasuringServer, authenticator=lambda *args: False, auth_require_tls=False) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            for line in before:
                assert client.command(line)[:1] in (b"2", b"3")
            for _ in range(1000):  # 1 MB without a line end
                client.send(b"x" * 1000)
            assert client.command(b"") == b"500 Error: line too long\r\n"
            assert client.command(b"NOOP") == OK
    assert 512 < MeasuringChannel.most_buffered <= 548 + 65536


def test_552_then_mail_directly():
    with running_server(data_size_limit=100) as st:
        with open_session(st.address) as client:
            start_data(client)
            client.send(b"y" * 300 + b"\r\n.\r\n")
            assert client.read_reply() == b"552 Error: Too much mail data\r\n"
            start_data(client)
            assert client.command(b"short\r\n.") == OK


# -- 3. bytes that are not UTF-8 in a command ------------------------------------------------
# smtpd: UnicodeDecodeError, the connection dropped without a reply.
@pytest.mark.parametrize("line", [b"\xff\xfe", b"NOOP \xff", b"MAIL FROM:<\xe9@example.com>", b"HELO \xc3"])
def test_non_utf8_command_gets_500_and_the_session_continues(smtp_server, line):
    with open_session(smtp_server.address) as client:
        assert client.command(line) == (R.BAD_ENCODING + "\r\n").encode()
        assert client.command(b"NOOP") == OK


# -- 4. malformed addresses --------------------------------------------------------------------
# smtpd: an exception out of email._header_value_parser dropped the connection.
@pytest.mark.parametrize(
    "address",
    [b"<@x>", b"<a@b", b"<>>", b'<"unterminated@example.com>', b"<a@[1.2.3.4>", b"<a@b..c>", b"<@a,@b>", b"<a@>"],
)
def test_malformed_address_gets_501_and_the_session_continues(smtp_server, address):
    with open_session(smtp_server.address) as client:
        assert client.command(b"MAIL FROM:" + address) == b"501 Syntax: MAIL FROM: <address>\r\n"
        assert client.command(b"MAIL FROM:<ok@example.com>") == OK
        assert client.command(b"RCPT TO:" + address) == b"501 Syntax: RCPT TO: <address>\r\n"
        assert client.command(b"RCPT TO:<ok@example.org>") == OK


# -- 5. process_message raising ------------------------------------------------------------
# smtpd: the connection was closed without a reply after the whole message.
def test_process_message_exception_is_451_logged_and_sessions_continue(smtp_server, caplog):
    server = smtp_server.server
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        with open_session(smtp_server.address) as failing, open_session(smtp_server.address) as other:
            server.error = RuntimeError("secret database password in this message")
            start_data(failing)
            failing.send(b"Subject: doomed\r\n\r\nbody\r\n.\r\n")
            reply = failing.read_reply()
            assert reply == (R.PROCESSING_FAILED + "\r\n").encode()
            assert b"secret" not in reply and b"RuntimeError" not in reply
            server.error = None
            # The same session goes on, and so does every other.
            assert failing.command(b"NOOP") == OK
            start_data(failing)
            assert failing.command(b"again\r\n.") == OK
            start_data(other)
            assert other.command(b"meanwhile\r\n.") == OK
    assert [m.data for m in server.wait_for(3)] == [b"Subject: doomed\n\nbody", b"again", b"meanwhile"]
    assert "secret database password" in caplog.text  # the traceback is logged
    assert "Traceback" in caplog.text


# -- 6. legacy four-argument process_message ---------------------------------------------------
class LegacyServer(smtpd.SMTPServer):
    """Written as many subclasses were: no **kwargs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.received: List[Any] = []
        self.done = threading.Event()
        super().__init__(*args, **kwargs)

    def process_message(self, peer, mailfrom, rcpttos, data):
        self.received.append((mailfrom, rcpttos, data))
        self.done.set()


def test_legacy_process_message_signature():
    # smtpd: TypeError (unexpected keyword arguments mail_options and
    # rcpt_options) with the default decode_data=False.
    with running_server(LegacyServer) as st:
        with open_session(st.address, b"EHLO client.example") as client:
            start_data(client)
            assert client.command(b"legacy\r\n.") == OK
        assert st.server.done.wait(TIMEOUT)
        assert st.server.received == [("sender@example.com", ["rcpt@example.org"], b"legacy")]


# -- 7. nothing after QUIT -----------------------------------------------------------------------
# smtpd: a message pipelined after QUIT in the same packet was delivered.
def test_nothing_pipelined_after_quit_is_processed(smtp_server):
    with open_session(smtp_server.address) as client:
        client.send(
            b"QUIT\r\n"
            b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
            b"Subject: after quit\r\n\r\nsmuggled\r\n.\r\n"
        )
        assert client.read_until_closed() == b"221 Bye\r\n"
    # The session is over; a later message is the only one delivered.
    deliver(smtp_server.address, b"Subject: legit\r\n\r\nlegit\r\n")
    messages = smtp_server.server.wait_for(1)
    assert [m.data for m in messages] == [b"Subject: legit\n\nlegit"]


# -- 8. decode_data=True decodes whole lines and messages --------------------------------------------
# smtpd: each network chunk was decoded alone; a character split across two
# segments raised UnicodeDecodeError and dropped the session.
def test_decode_data_utf8_split_across_segments():
    with running_server(decode_data=True) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            client.send_bytewise("HELO caf\u00e9.example\r\n".encode("utf-8"))
            assert client.read_reply() == HELO_OK
            start_data(client)
            client.send_bytewise("Subject: caf\u00e9\r\n\r\nna\u00efve \u2603\r\n.\r\n".encode("utf-8"))
            assert client.read_reply() == OK
        [message] = st.server.wait_for(1)
        assert message.data == "Subject: caf\u00e9\n\nna\u00efve \u2603"


def test_decode_data_invalid_utf8_message_is_554():
    with running_server(decode_data=True) as st:
        with open_session(st.address) as client:
            start_data(client)
            client.send(b"Subject: latin-1 \xe9\r\n\r\n.\r\n")
            assert client.read_reply() == (R.DATA_NOT_UTF8 + "\r\n").encode()
            assert client.command(b"NOOP") == OK
            start_data(client)
            assert client.command(b"fine\r\n.") == OK
        assert [m.data for m in st.server.wait_for(1)] == ["fine"]


# -- 9. command_size_limits per channel ------------------------------------------------------------
# smtpd: one class-level dict; every new channel cleared it, so a session
# that had said EHLO lost its larger MAIL limit when another client connected.
def test_command_size_limits_are_per_channel(smtp_server):
    mail = b"MAIL FROM:<" + b"a" * 500 + b"@example.com>"  # 524 bytes: over 512, within 512 + 26
    assert 512 < len(mail) <= 538
    with open_session(smtp_server.address, b"EHLO client.example") as extended:
        with open_session(smtp_server.address) as plain:
            assert extended.command(mail) == OK
            assert plain.command(mail) == b"500 Error: line too long\r\n"
            assert smtp_server.call(lambda: len({id(c.command_size_limits) for c in channels(smtp_server)})) == 2


# -- 11. EMFILE on accept -----------------------------------------------------------------------
EMFILE_SERVER = r"""
import logging, os, resource, sys
from smtpd_compat import asyncore, smtpd

logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(message)s")


class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        print("MESSAGE", rcpttos[0], flush=True)


socket_map = {}
server = Sink(("127.0.0.1", 0), None, map=socket_map)
asyncore.poll(0.0, socket_map)  # the loop's own descriptors exist from here on
fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
# Room for two more descriptors: the third accepted connection hits EMFILE.
resource.setrlimit(resource.RLIMIT_NOFILE, (max(fds) + 3, hard))
print("PORT", server.port, flush=True)
asyncore.loop(timeout=1.0, map=socket_map)
"""


class LineReader:
    """Lines from a pipe, waiting with a deadline (no sleeping)."""

    def __init__(self, pipe: Any) -> None:
        self.fd = pipe.fileno()
        self.buffer = b""
        self.lines: List[bytes] = []

    def ready(self) -> bool:
        return b"\n" in self.buffer

    def feed(self) -> bool:
        chunk = os.read(self.fd, 65536)
        self.buffer += chunk
        return bool(chunk)

    def readline(self, timeout: float = TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and select.select([self.fd], [], [], remaining)[0], "no line; got %r" % self.buffer
            assert self.feed(), "pipe closed; got %r" % self.buffer
        line, _, self.buffer = self.buffer.partition(b"\n")
        self.lines.append(line)
        return line


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
def test_emfile_on_accept_backs_off_and_keeps_serving():
    pytest.importorskip("resource")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", EMFILE_SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    held: List[RawClient] = []
    try:
        out, err = LineReader(proc.stdout), LineReader(proc.stderr)
        port = int(out.readline().split()[1])
        warned = False
        pending: Optional[RawClient] = None
        # Open connections until one is not greeted because accept() failed.
        for _ in range(20):
            client = RawClient(("127.0.0.1", port))
            held.append(client)
            deadline = time.monotonic() + TIMEOUT
            while True:
                ready = select.select([client.sock, err.fd], [], [], deadline - time.monotonic())[0]
                assert ready, "neither a greeting nor a warning"
                if err.fd in ready:
                    assert err.feed()
                    if b"accept() failed" in err.buffer:
                        warned = True
                        break
                    continue
                assert client.read_reply() == GREETING
                break
            if warned:
                pending = client
                break
        assert warned and pending is not None, "accept() never ran out of descriptors"
        assert b"WARNING accept() failed (Too many open files)" in err.buffer
        # Free the descriptors: the server, still listening, accepts the
        # waiting connection after its back-off and serves it.
        for client in held[:-1]:
            client.close()
        assert pending.read_reply() == GREETING
        assert pending.command(b"HELO client.example").startswith(b"250 ")
        assert pending.command(b"MAIL FROM:<a@example.com>") == OK
        assert pending.command(b"RCPT TO:<after-emfile@example.org>") == OK
        assert pending.command(b"DATA") == START_DATA
        assert pending.command(b"body\r\n.") == OK
        assert out.readline() == b"MESSAGE after-emfile@example.org"
        assert pending.command(b"QUIT") == b"221 Bye\r\n"
        assert proc.poll() is None, "the server died"
    finally:
        for client in held:
            client.close()
        proc.kill()
        proc.communicate(timeout=TIMEOUT)


# -- SMTP smuggling: only <CRLF>.<CRLF> ends a message --------------------------------------------
SMUGGLED = b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n"


@pytest.mark.parametrize(
    "fake_end", [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r"], ids=["LF.LF", "LF.CRLF", "CRLF.LF", "CR.CR"]
)
def test_smuggling_sequence_does_not_end_the_message(smtp_server, fake_end):
    with open_session(smtp_server.address) as client:
        start_data(client)
        client.send(b"Subject: carrier\r\n\r\nbody" + fake_end + SMUGGLED + b".\r\n")
        # One message, one reply: nothing after the fake end was a command.
        assert client.read_reply() == OK
        assert client.command(b"QUIT") == b"221 Bye\r\n"
        assert client.read_until_closed() == b""
    [message] = smtp_server.server.wait_for(1)
    assert message.mailfrom == "sender@example.com"
    # Everything up to the real end is message text (a line starting with
    # a dot after CRLF loses that dot, as dot-unstuffing requires).
    assert message.data.startswith(b"Subject: carrier\n\nbody")
    assert message.data.endswith(b"MAIL FROM:<evil@example.com>\nRCPT TO:<victim@example.org>\nDATA\nSubject: smuggled\n\nevil")


# -- hostile clients ---------------------------------------------------------------------------------
def test_slow_drip_client_does_not_stall_others(smtp_server):
    # One byte per send (TCP_NODELAY), and between two bytes another client
    # runs a whole step of its session: the drip never holds the loop.
    command = b"MAIL FROM:<slow@example.com>\r\n"
    with open_session(smtp_server.address) as slow, RawClient(smtp_server.address) as fast:
        steps = [
            (None, GREETING),
            (b"HELO fast.example", HELO_OK),
            (b"MAIL FROM:<fast@example.com>", OK),
            (b"RCPT TO:<rcpt@example.org>", OK),
            (b"DATA", START_DATA),
            (b"Subject: fast\r\n\r\nquick\r\n.", OK),
            (b"QUIT", b"221 Bye\r\n"),
        ]
        position = 0
        for request, expected in steps:
            slow.send(command[position : position + 3])
            position += 3
            assert (fast.read_reply() if request is None else fast.command(request)) == expected
        assert smtp_server.server.wait_for(1)[0].mailfrom == "fast@example.com"
        slow.send_bytewise(command[position:])
        assert slow.read_reply() == OK


def send_stream_until_paused(sock: socket.socket, st: Any, stream: bytes) -> int:
    """Send *stream* without reading until the server stops reading this
    client for good (see test_limits.send_until_paused); return the number
    of bytes sent."""

    def stuck() -> bool:
        [channel] = [c for c in channels(st) if "output" in c._ac_paused] or [None]
        return channel is not None and not select.select([], [channel.socket], [], 0)[1]

    deadline = time.monotonic() + TIMEOUT
    sent = 0
    sock.setblocking(False)
    try:
        while sent < len(stream):
            assert time.monotonic() < deadline, "the server never stopped reading"
            try:
                sent += sock.send(stream[sent : sent + 65536])
                continue
            except BlockingIOError:
                pass
            if st.server.output_paused.is_set() and st.call(stuck):
                break
            select.select([], [sock], [], 0.05)
    finally:
        sock.settimeout(TIMEOUT)
    assert sent < len(stream), "the server read everything"
    return sent


def test_client_that_never_reads_gets_every_reply_in_order_and_others_are_served():
    # Replies of different lengths (each echoes its command), so that output
    # put back after a partial send would show up reordered or mangled.
    lines = [b"X%dY%s" % (i, b"Z" * (i * 37 % 300)) for i in range(20000)]
    stream = b"".join(line + b"\r\n" for line in lines)
    with running_server(SmallBufferServer, max_output=8192, max_errors=None) as st:
        client = non_reading_client(st.address)
        try:
            sent = send_stream_until_paused(client, st, stream)
            deliver(st.address)  # another session completes a message meanwhile
            assert len(st.server.wait_for(1)) == 1
            # Finish the current line, then QUIT, while reading everything.
            end = stream.index(b"\r\n", sent - 1) + 2 if sent else 0
            received = send_while_reading(client, stream[sent:end] + b"QUIT\r\n")
        finally:
            client.close()
    answered = stream[:end].count(b"\r\n")
    expected = b"".join(b'500 Error: command "%s" not recognized\r\n' % line for line in lines[:answered])
    assert received == GREETING + expected + b"221 Bye\r\n"
