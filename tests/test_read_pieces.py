"""Every transcript with each read holding a chosen piece of the input.

The loop is pumped here, one ``poll()`` per piece, so the pieces the server
reads are exactly the pieces sent: one command per read (an interactive
client), one byte per read, everything at once, and random cuts.  Each is
played through a plain channel and through one whose class overrides
``handle_read`` (so that no shortcut can depend on the class keeping
smtpd's methods), and both must give the expected bytes and messages.

(These tests once compared a "fast lane" with the general read path; there
is one read path now, and the path-counting assertions went with the lane.)
"""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Any, List, Tuple

import pytest

from smtpd_compat import asyncore

from conftest import GREETING, RawClient, RecordingSMTPServer
from test_transcripts import CONFIGS, TRANSCRIPTS, Transcript, check_messages, full_steps


class GeneralChannel(RecordingSMTPServer.channel_class):  # type: ignore[misc,valid-type]
    """Overrides one of smtpd's read hooks (and calls it)."""

    def handle_read(self) -> None:
        super().handle_read()


class GeneralServer(RecordingSMTPServer):
    channel_class = GeneralChannel


class Session:
    """A server and one client in this thread; ``feed()`` delivers one
    piece and lets the server read it (and only it) in one poll."""

    def __init__(self, server_class: Any, **options: Any) -> None:
        self.map: dict = {}
        self.server = server_class(("127.0.0.1", 0), None, map=self.map, **options)
        self.client = socket.create_connection(self.server.address)
        # Each piece leaves at once (no Nagle delay), so it is read alone.
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.setblocking(False)
        self.output = bytearray()
        self.channel = None
        deadline = time.monotonic() + 5
        while len(self.output) < len(GREETING) and time.monotonic() < deadline:
            self.pump()
        assert bytes(self.output) == GREETING
        self.channel = next(o for o in self.map.values() if isinstance(o, GeneralChannel.__mro__[1]))

    def pump(self, timeout: float = 0.05) -> bool:
        """One loop iteration, then read what the client got; False once
        the server has closed the connection."""
        asyncore.poll(timeout, self.map)
        try:
            while True:
                data = self.client.recv(65536)
                if not data:
                    return False
                self.output += data
        except BlockingIOError:
            return True

    def feed(self, piece: bytes) -> None:
        self.client.sendall(piece)
        self.pump()

    def finish(self) -> bytes:
        deadline = time.monotonic() + 5
        while self.pump(0.001):
            assert time.monotonic() < deadline, "the server did not close"
        self.client.close()
        self.server.close()
        asyncore.close_all(self.map)
        return bytes(self.output)


def pieces(t: Transcript, how: str) -> List[bytes]:
    data = [d for d, _ in full_steps(t)]
    stream = b"".join(data)
    if how == "steps":
        return data  # what an interactive client sends: the fast lane's case
    if how == "whole":
        return [stream]
    if how == "bytes":
        return [stream[i : i + 1] for i in range(len(stream))]
    rng = random.Random("%s/%s" % (t.name, how))
    cuts = sorted(rng.sample(range(1, len(stream)), min(8, len(stream) - 1)))
    return [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]


def play(server_class: Any, t: Transcript, how: str) -> Tuple[bytes, Any]:
    session = Session(server_class, **CONFIGS[t.config])
    for piece in pieces(t, how):
        session.feed(piece)
    output = session.finish()
    return output, session.server.messages


def _names(t: Transcript) -> str:
    return t.name


@pytest.mark.parametrize("how", ["steps", "bytes", "whole", "cuts"])
@pytest.mark.parametrize("t", TRANSCRIPTS, ids=_names)
def test_every_split_into_reads_gives_the_transcript(t: Transcript, how: str) -> None:
    expected = GREETING + b"".join(reply for _, reply in full_steps(t))
    plain, plain_messages = play(RecordingSMTPServer, t, how)
    general, general_messages = play(GeneralServer, t, how)
    assert plain == expected
    assert general == expected
    check_messages(plain_messages, t)
    check_messages(general_messages, t)


def test_an_interactive_session() -> None:
    body = b"Subject: hi\r\n\r\n" + b"x" * 900 + b"\r\n..dot-stuffed\r\n.\r\n"
    script = [b"EHLO client.example\r\n"]
    for _ in range(3):
        script += [b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@example.org>\r\n", b"DATA\r\n", body]
    script.append(b"QUIT\r\n")
    session = Session(RecordingSMTPServer)
    for piece in script:
        session.feed(piece)
    output = session.finish()
    assert output.count(b"250 OK\r\n") == 9 and output.endswith(b"221 Bye\r\n")
    assert [m.data for m in session.server.messages] == [b"Subject: hi\n\n" + b"x" * 900 + b"\n.dot-stuffed"] * 3


def run_reads(server_class: Any, reads: List[bytes]) -> Tuple[bytes, List[Any]]:
    session = Session(server_class)
    for piece in reads:
        session.feed(piece)
    session.feed(b"QUIT\r\n")
    output = session.finish()
    return output, [(m.mailfrom, m.rcpttos, m.data) for m in session.server.messages]


ENVELOPE = [b"HELO c\r\n", b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<c@d.example>\r\n", b"DATA\r\n"]


@pytest.mark.parametrize(
    "reads",
    [
        [b"\r", b"\n"],  # a one-byte read is not a line (find() == -1 == 1 - 2)
        [b"NOOP\r", b"\n"],
        [b"NO", b"OP\r\n"],
        [b"NOOP\r\nNOOP\r\n"],
        [b"\r\n"],
        ENVELOPE + [b"part one\r\npart", b" two\r\n.\r\n"],
        ENVELOPE + [b".\r\n"],  # the empty message: its end began with DATA's CRLF
        ENVELOPE + [b".\r\nNOOP\r\n.\r\n"],  # empty message, then two commands
        ENVELOPE + [b"\r\n.\r\n"],
        ENVELOPE + [b"a\r\n.\r\nNOOP\r\n"],  # a message and a pipelined command
        ENVELOPE + [b"..\r\n.\r\n"],
        ENVELOPE + [b"x\r\n.\r", b"\n"],
    ],
)
def test_unusual_reads_give_the_same_result_through_both_classes(reads: List[bytes]) -> None:
    fast = run_reads(RecordingSMTPServer, reads)
    general = run_reads(GeneralServer, reads)
    assert fast[:2] == general[:2]
    assert fast[0].startswith(GREETING) and fast[0].endswith(b"221 Bye\r\n")


def test_partial_reads_are_framed() -> None:
    output, _ = run_reads(RecordingSMTPServer, [b"\r", b"\n", b"NO", b"OP\r\n"])
    assert output == GREETING + b"500 Error: bad syntax\r\n250 OK\r\n221 Bye\r\n"


def test_message_split_over_reads_and_empty_message() -> None:
    output, messages = run_reads(RecordingSMTPServer, ENVELOPE + [b"part one\r\npart", b" two\r\n.\r\n"] + ENVELOPE[1:] + [b".\r\n"])
    assert [m[2] for m in messages] == [b"part one\npart two", b""]


def test_under_serve_forever() -> None:
    server = RecordingSMTPServer(("127.0.0.1", 0), None, map={})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with RawClient(server.address) as client:
            assert client.read_reply() == GREETING
            assert client.command(b"HELO c").startswith(b"250 ")
            assert client.command(b"MAIL FROM:<a@b.example>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<c@d.example>") == b"250 OK\r\n"
            assert client.command(b"DATA").startswith(b"354 ")
            assert client.command(b"hello\r\n.") == b"250 OK\r\n"
            assert client.command(b"QUIT") == b"221 Bye\r\n"
        assert server.wait_for(1)[0].data == b"hello"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


class UnlimitedChannel(RecordingSMTPServer.channel_class):  # type: ignore[misc,valid-type]
    command_size_limit = 0  # no limit on command lines: sizes are not counted


class UnlimitedServer(RecordingSMTPServer):
    channel_class = UnlimitedChannel


class UnlimitedGeneralChannel(UnlimitedChannel):
    def handle_read(self) -> None:
        super().handle_read()


class UnlimitedGeneralServer(RecordingSMTPServer):
    channel_class = UnlimitedGeneralChannel


def test_command_size_limit_zero_counts_nothing_through_both_classes() -> None:
    reads = [b"HELO " + b"h" * 600 + b"\r\n", b"NOOP\r\n"]
    fast = run_reads(UnlimitedServer, reads)
    general = run_reads(UnlimitedGeneralServer, reads)
    assert fast[0] == general[0]
    assert fast[0].startswith(GREETING + b"250 ") and fast[0].endswith(b"250 OK\r\n221 Bye\r\n")
