"""Replies to pipelined commands leave in one send call, not one per reply.

The server and the client run in this test's thread: the test pumps the
server's loop (``asyncore.poll`` on a private map) and reads the client's
socket without blocking, so nothing here depends on thread timing.  Which
system calls the channel makes is observed with ``sys.setprofile``: it
reports every call of a C function, so the calls of ``send``/``sendmsg``
(and friends) on the channel's own socket object can be counted without
replacing the socket or any method of the channel.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from smtpd_compat import asyncore, smtpd

TIMEOUT = 10.0
SEND_CALLS = frozenset({"send", "sendall", "sendmsg", "sendto", "write"})
RECV_CALLS = frozenset({"recv", "recv_into", "recvfrom", "recvmsg", "read"})


class Sink(smtpd.SMTPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.messages: List[bytes] = []
        super().__init__(*args, **kwargs)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kwargs: Any) -> Optional[str]:
        self.messages.append(data)
        return None


class SocketCalls:
    """A profile function counting C calls made on one socket object."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.calls: List[str] = []

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__self__", None) is self.sock:
            self.calls.append(arg.__name__)

    def sends(self) -> List[str]:
        return [name for name in self.calls if name in SEND_CALLS]

    def recvs(self) -> List[str]:
        return [name for name in self.calls if name in RECV_CALLS]


class Session:
    """A server on a private map plus one connected client, in this thread."""

    def __init__(self) -> None:
        self.map: Dict[int, Any] = {}
        self.server = Sink(("127.0.0.1", 0), None, map=self.map)
        self.client = socket.create_connection(self.server.address[:2], timeout=TIMEOUT)
        self.client.setblocking(False)
        self.received = b""
        self.closed = False
        self.pump(lambda: len(self.map) == 2)
        self.channel = next(obj for obj in self.map.values() if isinstance(obj, smtpd.SMTPChannel))
        self.read_replies(1)  # the greeting

    def pump(self, done: Callable[[], bool]) -> None:
        """Run the server's loop until *done()*, reading what the client gets."""
        deadline = time.monotonic() + TIMEOUT
        for _ in range(100000):
            if done():
                return
            assert time.monotonic() < deadline, "timed out; client received %r" % self.received
            asyncore.poll(0.01, self.map)
            try:
                chunk = self.client.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.closed = True
                if done():
                    return
                raise AssertionError("server closed the connection; received %r" % self.received)
            self.received += chunk
        raise AssertionError("loop bound reached")

    def read_replies(self, count: int) -> List[bytes]:
        """Pump until *count* complete replies arrived; return their lines."""

        def complete() -> int:
            lines = self.received.split(b"\r\n")[:-1]
            return sum(1 for line in lines if line[3:4] != b"-")

        self.pump(lambda: complete() >= count)
        lines = self.received.split(b"\r\n")
        taken: List[bytes] = []
        finals = 0
        for line in lines:
            if finals == count:
                break
            taken.append(line)
            if line[3:4] != b"-":
                finals += 1
        self.received = b"\r\n".join(lines[len(taken):])
        return taken

    def exchange(self, data: bytes, replies: int) -> Tuple[List[bytes], SocketCalls]:
        """Send *data* at once; pump until *replies* replies; count the
        channel's socket calls meanwhile."""
        counter = SocketCalls(self.channel.socket)
        self.client.sendall(data)
        previous = sys.getprofile()
        sys.setprofile(counter)
        try:
            lines = self.read_replies(replies)
        finally:
            sys.setprofile(previous)
        return lines, counter

    def close(self) -> None:
        self.client.close()
        asyncore.close_all(map=self.map, ignore_all=True)


@pytest.fixture
def session() -> Any:
    s = Session()
    yield s
    s.close()


def test_each_lockstep_reply_is_one_send(session: Session) -> None:
    # The control case: one command per read gives one send per reply, so
    # the counter does see the channel's sends.
    for command in (b"HELO there\r\n", b"NOOP\r\n", b"RSET\r\n"):
        lines, calls = session.exchange(command, 1)
        assert lines[0].startswith(b"250")
        assert len(calls.recvs()) == 1
        assert len(calls.sends()) == 1, calls.calls


def test_pipelined_envelope_answered_in_one_send(session: Session) -> None:
    lines, _ = session.exchange(b"EHLO there\r\n", 1)
    assert lines[-1] == b"250 HELP"
    burst = (
        b"MAIL FROM:<a@example.com>\r\n"
        b"RCPT TO:<b@example.com>\r\n"
        b"RCPT TO:<c@example.com>\r\n"
        b"DATA\r\n"
    )
    lines, calls = session.exchange(burst, 4)
    assert lines == [b"250 OK", b"250 OK", b"250 OK", b"354 End data with <CR><LF>.<CR><LF>"]
    # Loopback delivers the burst whole, so the server reads it at once...
    assert len(calls.recvs()) == 1, calls.calls
    # ...and answers the four commands with one system call.
    assert len(calls.sends()) == 1, calls.calls


def test_pipelined_message_end_and_next_transaction_in_one_send(session: Session) -> None:
    session.exchange(b"EHLO there\r\n", 1)
    session.exchange(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n", 3)
    burst = (
        b"Subject: one\r\n\r\nbody\r\n.\r\n"
        b"MAIL FROM:<a@example.com>\r\n"
        b"RCPT TO:<b@example.com>\r\n"
        b"NOOP\r\n"
        b"RSET\r\n"
    )
    lines, calls = session.exchange(burst, 5)
    assert lines == [b"250 OK"] * 5
    assert session.server.messages == [b"Subject: one\n\nbody"]
    assert len(calls.recvs()) == 1, calls.calls
    assert len(calls.sends()) == 1, calls.calls


def test_multiline_ehlo_reply_is_one_send(session: Session) -> None:
    # EHLO pushes one line per keyword; they leave together.
    lines, calls = session.exchange(b"EHLO there\r\n", 1)
    assert len(lines) >= 3
    assert lines[-1] == b"250 HELP"
    assert len(calls.sends()) == 1, calls.calls


def test_errors_in_a_burst_are_answered_in_order_in_one_send(session: Session) -> None:
    burst = b"NOOP\r\nBOGUS\r\nMAIL FROM:<a@example.com>\r\nHELO there\r\nVRFY\r\n"
    lines, calls = session.exchange(burst, 5)
    assert lines == [
        b"250 OK",
        b'500 Error: command "BOGUS" not recognized',
        b"503 Error: send HELO first",
        b"250 " + session.channel.fqdn.encode("ascii"),
        b"501 Syntax: VRFY <address>",
    ]
    assert len(calls.sends()) == 1, calls.calls


def test_quit_in_a_burst_is_answered_with_the_rest_and_stops_input(session: Session) -> None:
    burst = b"HELO there\r\nNOOP\r\nQUIT\r\nNOOP\r\n"
    counter = SocketCalls(session.channel.socket)
    session.client.sendall(burst)
    previous = sys.getprofile()
    sys.setprofile(counter)
    try:
        session.pump(lambda: session.closed)
    finally:
        sys.setprofile(previous)
    lines = session.received.split(b"\r\n")
    assert lines[:3] == [b"250 " + session.channel.fqdn.encode("ascii"), b"250 OK", b"221 Bye"]
    assert lines[3:] == [b""]  # nothing after QUIT was answered
    assert len(counter.sends()) == 1, counter.calls
