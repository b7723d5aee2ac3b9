"""Session limits: idle timeouts, max_connections, max_errors, max_output,
max_recipients.

CPython's smtpd had none of them: a client that connected and said nothing
held its descriptor forever, any number of sessions, errors and recipients
were allowed, and replies a client never read piled up without bound.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Any, List, Tuple

import pytest

from smtpd_compat import _limits, _reactor, smtpd
from smtpd_compat import _replies as R

from conftest import FQDN, GREETING, TIMEOUT, RawClient, RecordingSMTPServer, running_server, send_while_reading
from tls_helpers import client_context, server_context, tls_files  # noqa: F401  (fixtures)

IDLE = ("%s\r\n" % (R.IDLE_TIMEOUT % FQDN)).encode()
TOO_MANY_ERRORS = ("%s\r\n" % (R.TOO_MANY_ERRORS % FQDN)).encode()
TOO_MANY_CONNECTIONS = ("%s\r\n" % (R.TOO_MANY_CONNECTIONS % FQDN)).encode()
UNKNOWN = b'500 Error: command "BOGUS" not recognized\r\n'


def channels(st: Any) -> List[smtpd.SMTPChannel]:
    return [c for c in st.map.values() if isinstance(c, smtpd.SMTPChannel)]


def test_defaults_are_declared():
    assert _limits.DEFAULTS == {
        "command_timeout": 300.0,
        "data_timeout": 180.0,
        "max_connections": None,
        "max_errors": 20,
        "max_output": 131072,
        "max_recipients": 1000,
        "reply_timeout": 600.0,
    }
    server = smtpd.SMTPServer(("127.0.0.1", 0), None, map={}, command_timeout=None, max_errors=None)
    try:
        assert server.command_timeout is None and server.max_errors is None
        assert server.data_timeout == 180.0 and server.max_output == 131072
    finally:
        server.close()


@pytest.mark.parametrize(
    "options, error",
    [
        ({"command_timeout": 0}, ValueError),
        ({"command_timeout": -1.0}, ValueError),
        ({"data_timeout": float("inf")}, ValueError),
        ({"data_timeout": float("nan")}, ValueError),
        ({"command_timeout": "300"}, TypeError),
        ({"data_timeout": True}, TypeError),
        ({"max_connections": -1}, ValueError),
        ({"max_errors": 2.5}, TypeError),
        ({"max_output": "128k"}, TypeError),
        ({"max_errors": False}, TypeError),
        ({"reply_timeout": 0}, ValueError),
        ({"max_recipients": -1}, ValueError),
        ({"max_recipients": "1000"}, TypeError),
    ],
)
def test_bad_option_values_are_refused_at_creation(options: dict, error: type) -> None:
    # Before, a string timeout failed inside a timer callback on the first
    # session, and a negative one closed every session at once.
    name, value = next(iter(options.items()))
    with pytest.raises(error, match=name):
        smtpd.SMTPServer(("127.0.0.1", 0), None, map={}, **options)


def test_edge_option_values_are_accepted() -> None:
    server = smtpd.SMTPServer(
        ("127.0.0.1", 0), None, map={},
        command_timeout=0.5, data_timeout=1, max_connections=0, max_errors=0, max_output=0,
    )
    server.close()


def test_max_connections_zero_refuses_every_connection():
    with running_server(max_connections=0) as st:
        with RawClient(st.address) as client:
            assert client.read_until_closed() == TOO_MANY_CONNECTIONS


# -- idle timeouts ------------------------------------------------------------------
def test_silent_client_is_answered_421_and_closed():
    with running_server(command_timeout=0.3) as st:
        started = time.monotonic()  # before the session exists
        with RawClient(st.address) as client:
            assert client.read_until_closed() == GREETING + IDLE
            elapsed = time.monotonic() - started
        assert 0.3 <= elapsed < TIMEOUT
        assert st.call(lambda: channels(st)) == []


def open_transaction(client: RawClient) -> None:
    """Greeting, HELO, MAIL and RCPT: the session is ready for DATA."""
    assert client.read_reply() == GREETING
    assert client.command(b"HELO me") == ("250 %s\r\n" % FQDN).encode()
    assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
    assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"


def test_data_timeout_is_shorter_than_command_timeout():
    # The timer armed for the 60 s command deadline must be brought forward
    # when the session enters DATA with a 0.3 s data deadline.
    with running_server(command_timeout=60.0, data_timeout=0.3) as st:
        with RawClient(st.address) as client:
            open_transaction(client)
            assert client.command(b"DATA").startswith(b"354 ")
            client.send(b"Subject: half a message\r\n")
            assert client.read_until_closed() == IDLE
        assert st.server.messages == []


def test_data_timeout_after_the_timer_fired_early():
    # Idle for longer than the data timeout before DATA: the timer fires
    # early (the command timeout applies) and must still be armed so that
    # the data deadline, counted from DATA, is kept, not the old one.
    with running_server(command_timeout=3.0, data_timeout=0.3) as st:
        with RawClient(st.address) as client:
            open_transaction(client)
            threading.Event().wait(0.6)  # the idle time under test
            # Timed from before the DATA line is sent: the server's deadline
            # counts from when it read it, which is later (from its 354 reply,
            # which the client reads later still, it may be a little less).
            entered = time.monotonic()
            assert client.command(b"DATA").startswith(b"354 ")
            assert client.read_until_closed() == IDLE
            assert 0.3 <= time.monotonic() - entered < 2.0  # 2.4 s if the old deadline held


def test_data_timeout_longer_than_command_timeout():
    with running_server(command_timeout=0.3, data_timeout=3.0) as st:
        with RawClient(st.address) as client:
            open_transaction(client)
            assert client.command(b"DATA").startswith(b"354 ")
            threading.Event().wait(0.8)  # idle in DATA: longer than the command timeout
            done = time.monotonic()  # before the server reads the end (see above)
            assert client.command(b"Subject: late\r\n\r\nbody\r\n.") == b"250 OK\r\n"
            assert client.read_until_closed() == IDLE
            assert 0.3 <= time.monotonic() - done < 2.0
        assert len(st.server.messages) == 1


def test_activity_keeps_the_session_alive():
    # 5 commands 0.3 s apart span 1.5 s, more than the 1 s timeout: each
    # one resets the idle time.  (The gaps are the behaviour under test,
    # not a wait for something to happen.)
    with running_server(command_timeout=1.0) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            for _ in range(5):
                threading.Event().wait(0.3)
                assert client.command(b"NOOP") == b"250 OK\r\n"
            assert client.command(b"QUIT") == b"221 Bye\r\n"


def test_one_lazy_timer_per_session():
    # Reading input only records the time; the session keeps one timer.
    with running_server() as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            client.send(b"NOOP\r\n" * 500)
            for _ in range(500):
                assert client.read_reply() == b"250 OK\r\n"
            reactor = _reactor.reactor_for(st.map)
            pending = st.call(lambda: [h for _, _, h in reactor.timers if not h.cancelled])
            assert len(pending) == 1


def test_timeouts_can_be_disabled():
    with running_server(command_timeout=None, data_timeout=None) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            assert client.command(b"NOOP") == b"250 OK\r\n"
            assert st.call(lambda: [c._guard.timer for c in channels(st)]) == [None]


def test_channel_outside_a_loop_gets_no_timer():
    # CPython's test suite builds channels over mock sockets and never runs
    # a loop: no reactor, no timer, no behaviour change.
    server = smtpd.SMTPServer(("127.0.0.1", 0), None, map={})
    a, b = socket.socketpair()
    try:
        channel = smtpd.SMTPChannel(server, a, ("127.0.0.1", 1), map=server._map)
        assert channel._guard is not None and channel._guard.timer is None
        assert _reactor.reactor_for(server._map, create=False) is None
        channel.close()
    finally:
        b.close()
        server.close()


# -- max_connections ----------------------------------------------------------------
def test_max_connections():
    with running_server(max_connections=2) as st:
        first, second = RawClient(st.address), RawClient(st.address)
        try:
            assert first.read_reply() == GREETING
            assert second.read_reply() == GREETING
            with RawClient(st.address) as third:
                assert third.read_until_closed() == TOO_MANY_CONNECTIONS
            # A session that ends makes room for the next one.
            assert first.command(b"QUIT") == b"221 Bye\r\n"
            assert first.read_until_closed() == b""
            with RawClient(st.address) as fourth:
                assert fourth.read_reply() == GREETING
                assert second.command(b"NOOP") == b"250 OK\r\n"
                assert fourth.command(b"NOOP") == b"250 OK\r\n"
        finally:
            first.close()
            second.close()


class OwnChannelServer(RecordingSMTPServer):
    """Old-style code: handle_accepted() builds the channel itself and never
    calls the base method."""

    def handle_accepted(self, conn: Any, addr: Any) -> None:
        self.channel_class(self, conn, addr, map=self._map)


def test_max_connections_holds_when_handle_accepted_is_overridden():
    with running_server(OwnChannelServer, max_connections=1) as st:
        with RawClient(st.address) as first:
            assert first.read_reply() == GREETING
            with RawClient(st.address) as second:
                assert second.read_until_closed() == TOO_MANY_CONNECTIONS
            assert first.command(b"NOOP") == b"250 OK\r\n"


def test_sessions_are_counted_per_server():
    with running_server(max_connections=1) as st1, running_server(max_connections=1) as st2:
        with RawClient(st1.address) as a, RawClient(st2.address) as b:
            assert a.read_reply() == GREETING
            assert b.read_reply() == GREETING


# -- max_errors ---------------------------------------------------------------------
def test_error_budget_then_421():
    with running_server(max_errors=3) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            assert client.command(b"BOGUS") == UNKNOWN
            assert client.command(b"MAIL FROM:<a@example.com>") == b"503 Error: send HELO first\r\n"
            # Good commands do not count, nor refund.
            assert client.command(b"NOOP") == b"250 OK\r\n"
            assert client.command(b"HELO") == b"501 Syntax: HELO hostname\r\n"
            client.send(b"BOGUS\r\nNOOP\r\n")  # the NOOP after the 421 is not processed
            assert client.read_until_closed() == TOO_MANY_ERRORS


def test_default_error_budget_is_20():
    with running_server() as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            client.send(b"BOGUS\r\n" * 25)
            assert client.read_until_closed() == UNKNOWN * 20 + TOO_MANY_ERRORS


def test_error_budget_can_be_disabled():
    with running_server(max_errors=None) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            client.send(b"BOGUS\r\n" * 50)
            for _ in range(50):
                assert client.read_reply() == UNKNOWN
            assert client.command(b"NOOP") == b"250 OK\r\n"


def test_message_refusals_do_not_count_as_errors():
    with running_server(max_errors=1) as st:
        st.server.reply = "550 No thanks"
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            assert client.command(b"HELO me").startswith(b"250 ")
            for _ in range(3):
                assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
                assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
                assert client.command(b"DATA").startswith(b"354 ")
                assert client.command(b"body\r\n.") == b"550 No thanks\r\n"
            assert client.command(b"NOOP") == b"250 OK\r\n"


# -- max_recipients -------------------------------------------------------------------
TOO_MANY_RECIPIENTS = b"452 4.5.3 Too many recipients\r\n"


def rcpts(first: int, count: int) -> bytes:
    return b"".join(b"RCPT TO:<r%d@example.com>\r\n" % n for n in range(first, first + count))


def test_recipients_beyond_the_limit_get_452():
    with running_server(max_recipients=3) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            assert client.command(b"EHLO me").startswith(b"250-")
            assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<c@example.com>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<d@example.com>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<e@example.com>") == TOO_MANY_RECIPIENTS
            assert client.command(b"RCPT TO:<f@example.com> NOTIFY=NEVER") == TOO_MANY_RECIPIENTS
            assert client.command(b"DATA").startswith(b"354 ")
            assert client.command(b"body\r\n.") == b"250 OK\r\n"
            # A new transaction starts from none.
            assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
            client.send(rcpts(0, 4))
            assert [client.read_reply() for _ in range(4)] == [b"250 OK\r\n"] * 3 + [TOO_MANY_RECIPIENTS]
            assert client.command(b"RSET") == b"250 OK\r\n"
        (first,) = st.server.wait_for(1)
        assert first.rcpttos == ["b@example.com", "c@example.com", "d@example.com"]
        assert first.kwargs["rcpt_options"] == []  # the refused RCPT's parameters were not taken


def test_default_limit_is_1000_recipients():
    # Before: every RCPT was kept, a million of them in 70 MB.
    with running_server() as st:
        with RawClient(st.address) as client:
            open_transaction(client)
            client.send(rcpts(1, 1000))
            replies = [client.read_reply() for _ in range(1000)]
            assert replies == [b"250 OK\r\n"] * 999 + [TOO_MANY_RECIPIENTS]
            assert client.command(b"DATA").startswith(b"354 ")
            assert client.command(b".") == b"250 OK\r\n"
        assert len(st.server.wait_for(1)[0].rcpttos) == 1000


def test_too_many_recipients_does_not_count_as_an_error():
    with running_server(max_recipients=1, max_errors=1) as st:
        with RawClient(st.address) as client:
            open_transaction(client)
            client.send(rcpts(0, 5))
            assert [client.read_reply() for _ in range(5)] == [TOO_MANY_RECIPIENTS] * 5
            assert client.command(b"NOOP") == b"250 OK\r\n"
            assert client.command(b"BOGUS") == UNKNOWN  # the budget is still whole
            client.send(b"BOGUS\r\n")
            assert client.read_until_closed() == TOO_MANY_ERRORS


def test_recipient_limit_can_be_disabled():
    with running_server(max_recipients=None) as st:
        with RawClient(st.address) as client:
            open_transaction(client)
            client.send(rcpts(1, 1500))
            assert [client.read_reply() for _ in range(1500)] == [b"250 OK\r\n"] * 1500
            assert client.command(b"DATA").startswith(b"354 ")
            assert client.command(b".") == b"250 OK\r\n"
        assert len(st.server.wait_for(1)[0].rcpttos) == 1501


# -- max_output ---------------------------------------------------------------------
class PauseSignallingChannel(smtpd.SMTPChannel):
    # _ac_pause() is what the package calls to pause (pause_reading() is
    # the public name, left to subclasses).
    def _ac_pause(self, reason: str) -> None:
        super()._ac_pause(reason)
        if reason == "output":
            self.smtp_server.output_paused.set()

    def close(self) -> None:
        super().close()
        self.smtp_server.closed.set()


class SmallBufferServer(RecordingSMTPServer):
    """Sessions with a small kernel send buffer, so that a client that does
    not read fills it after a few kilobytes, not megabytes; events tell
    when a session stops reading because of its output, and when one ends."""

    channel_class = PauseSignallingChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.output_paused = threading.Event()
        self.closed = threading.Event()
        super().__init__(*args, **kwargs)

    def handle_accepted(self, conn: Any, addr: Any) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        super().handle_accepted(conn, addr)


def non_reading_client(address: Any) -> socket.socket:
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.settimeout(TIMEOUT)
    client.connect(address)
    return client


def send_until_paused(sock: socket.socket, st: Any, line: bytes) -> Tuple[int, bytes]:
    """Send *line* over and over without reading until the server has
    stopped reading this client for good: its session is paused for unread
    output and its socket cannot take more (so nothing can drain until the
    client reads).  Return the number of lines begun and the bytes that
    complete the last one (sent only once the client reads)."""

    def stuck() -> bool:
        found = channels(st)
        if not found:
            return True  # already closed (a short command_timeout)
        [channel] = found
        if "output" not in channel._ac_paused:
            return False
        return not select.select([], [channel.socket], [], 0)[1]

    chunk = line * 1000
    deadline = time.monotonic() + TIMEOUT
    sent = 0
    sock.setblocking(False)
    try:
        while True:
            assert time.monotonic() < deadline, "the server never stopped reading"
            try:
                sent += sock.send(chunk[sent % len(line) :])
                continue
            except BlockingIOError:
                pass
            except OSError:
                break  # the server closed the session (a short command_timeout)
            # The kernel buffers are full: done if the server is stuck on
            # its output, else wait until it reads on and makes room.
            if st.server.output_paused.is_set() and st.call(stuck):
                break
            select.select([], [sock], [], 0.05)
    finally:
        sock.settimeout(TIMEOUT)
    return -(-sent // len(line)), line[sent % len(line) :] if sent % len(line) else b""


def test_output_bound_pauses_a_client_that_does_not_read():
    with running_server(SmallBufferServer, max_output=8192, max_errors=None) as st:
        client = non_reading_client(st.address)
        try:
            noops, rest = send_until_paused(client, st, b"NOOP\r\n")

            def state() -> Any:
                [channel] = channels(st)
                return channel._ac_out_queued, sorted(channel._ac_paused)

            queued, paused = st.call(state)
            assert paused == ["output"]
            # Bounded: the limit plus the replies to one read at most.
            assert 8192 < queued <= 8192 + 65536 // len(b"NOOP\r\n") * len(b"250 OK\r\n")

            # Another client is served meanwhile.
            with RawClient(st.address) as other:
                assert other.read_reply() == GREETING
                assert other.command(b"HELO other").startswith(b"250 ")
                assert other.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
                assert other.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
                assert other.command(b"DATA").startswith(b"354 ")
                assert other.command(b"hello\r\n.") == b"250 OK\r\n"
            assert st.server.wait_for(1)[0].data == b"hello"

            # Once the client reads, every NOOP it sent is answered.  (The
            # rest of its input is sent while it reads: the server takes no
            # more input before its replies are read.)
            received = send_while_reading(client, rest + b"QUIT\r\n")
            assert received == GREETING + b"250 OK\r\n" * noops + b"221 Bye\r\n"
        finally:
            client.close()


def test_stuck_client_is_closed_by_the_command_timeout():
    with running_server(SmallBufferServer, max_output=4096, max_errors=None, command_timeout=0.5) as st:
        client = non_reading_client(st.address)
        try:
            send_until_paused(client, st, b"NOOP\r\n")
            assert st.server.closed.wait(TIMEOUT), "the stuck session was never closed"
            assert st.call(lambda: channels(st)) == []
        finally:
            client.close()


def test_output_bound_can_be_disabled():
    with running_server(max_output=None) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            assert st.call(lambda: [c.ac_max_output for c in channels(st)]) == [None]


@pytest.mark.parametrize("name", sorted(_limits.DEFAULTS))
def test_unknown_keyword_is_still_a_type_error(name):
    with pytest.raises(TypeError):
        smtpd.SMTPServer(("127.0.0.1", 0), None, map={}, **{name + "_typo": 1})


def test_max_connections_on_an_smtps_port_closes_without_plain_text(server_context, client_context):
    with running_server(max_connections=1, implicit_tls_context=server_context) as st:
        with socket.create_connection(st.address, timeout=TIMEOUT) as raw:
            first = client_context.wrap_socket(raw, server_hostname="127.0.0.1")
            assert first.recv(1024) == GREETING
            # The second client gets no plain-text 421 in place of a
            # handshake: the connection is just closed.
            with socket.create_connection(st.address, timeout=TIMEOUT) as second:
                second.settimeout(TIMEOUT)
                assert second.recv(1024) == b""
