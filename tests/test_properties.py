"""Property tests: random and mutated sessions, in random chunkings, over
real sockets.

For any input:

* every complete command line gets exactly one reply (one or more lines
  with the same code, the last one with a space after the code), lines of
  a message get none, and the end of data gets one;
* a ``221``/``421`` reply ends the session: nothing follows it but the
  end of the stream;
* afterwards the session is still in step: a ``NOOP`` gets exactly
  ``250 OK`` (no stray reply was waiting);
* nothing is logged at ERROR level (no exception reached the loop) and
  the loop thread stays up;
* another session, open on the same server all along, completes its
  message.

Sessions are cut at their first QUIT so that the server never closes a
socket with input still unread (the kernel would then reset the
connection and could discard replies the client has not read yet; what
follows QUIT is tested in test_hardening).
"""

from __future__ import annotations

import logging
import re
from typing import Any, List, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GREETING, RawClient, RecordingSMTPServer, running_server

REPLY_LINE = re.compile(rb"\A([2-5][0-9][0-9])([ -])[\x20-\x7e]*\r\n\Z")

COMMANDS = [
    b"HELO client.example",
    b"EHLO client.example",
    b"HELO",
    b"MAIL FROM:<a@example.com>",
    b"MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME",
    b"MAIL FROM:<>",
    b"MAIL FROM:<@bad>",
    b"MAIL FROM:<a@example.com> SIZE=999999999999",
    b"MAIL TO:<a@example.com>",
    b"RCPT TO:<r@example.org>",
    b"RCPT TO:<r@example.org> NOTIFY=NEVER",
    b"RCPT TO:<unterminated@x",
    b"DATA",
    b"DATA now",
    b"RSET",
    b"NOOP",
    b"NOOP x",
    b"VRFY <a@example.com>",
    b"VRFY",
    b"EXPN list",
    b"HELP",
    b"HELP MAIL",
    b"HELP NOSUCH",
    b"BOGUS",
    b"",
    b" ",
    b"mail from:<lower@example.com>",
    b"\xff\xfe\xfd",
    b"NOOP \xc3",
    b"MAIL FROM:<" + b"a" * 600 + b"@example.com>",
    b"X" * 1000,
]
DATA_LINES = [b"Subject: test", b"", b".", b"..", b".leading", b"body", b"\x00\x01\xff", b"a\rb", b"a\nb", b"\n.\n", b"\r.\r"]

# A line may hold anything but CRLF, which would make it two lines.
raw_line = st.binary(max_size=80).map(lambda b: b.replace(b"\r\n", b"\r "))
line = st.one_of(st.sampled_from(COMMANDS), st.sampled_from(DATA_LINES), raw_line)


@st.composite
def mutated(draw: Any, base: bytes) -> bytes:
    """*base* with a few byte-level mutations."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "upper"]))
        position = draw(st.integers(0, len(data)))
        if kind == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and position < len(data):
            del data[position]
        elif kind == "upper":
            data = bytearray(bytes(data).upper())
    return bytes(data).replace(b"\r\n", b"\r ")


TEMPLATE = [
    b"EHLO client.example",
    b"MAIL FROM:<sender@example.com>",
    b"RCPT TO:<one@example.org>",
    b"RCPT TO:<two@example.org>",
    b"DATA",
    b"Subject: template",
    b"",
    b"..stuffed",
    b"body",
    b".",
    b"RSET",
    b"NOOP",
]


@st.composite
def mutated_session(draw: Any) -> List[bytes]:
    lines = []
    for base in TEMPLATE:
        choice = draw(st.sampled_from(["keep", "keep", "mutate", "drop", "twice"]))
        if choice == "keep":
            lines.append(base)
        elif choice == "mutate":
            lines.append(draw(mutated(base)))
        elif choice == "twice":
            lines.extend([base, base])
    return lines


def cut_at_quit(lines: List[bytes]) -> List[bytes]:
    for i, text in enumerate(lines):
        if text.upper().startswith(b"QUIT") and text[4:5] in (b"", b" "):
            return lines[:i]
    return lines


class ErrorCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def read_reply(client: RawClient) -> bytes:
    """One whole reply, checked for form: same code on every line."""
    reply = client.read_reply()
    lines = reply.splitlines(keepends=True)
    codes = set()
    for i, text in enumerate(lines):
        match = REPLY_LINE.match(text)
        assert match, "malformed reply line %r" % text
        codes.add(match.group(1))
        assert (match.group(2) == b" ") == (i == len(lines) - 1)
    assert len(codes) == 1, "mixed codes in %r" % reply
    return reply


def walk(client: RawClient, lines: List[bytes], in_data: bool = False) -> Tuple[bool, bool]:
    """Consume the replies owed for *lines* (already sent), starting in
    DATA state if *in_data*; return (in_data, closed)."""
    for text in lines:
        if in_data:
            if text == b".":
                read_reply(client)
                in_data = False
            continue
        code = read_reply(client)[:3]
        if code == b"354":
            in_data = True
        elif code in (b"221", b"421"):
            assert client.read_until_closed() == b"", "bytes after %s" % code
            return in_data, True
    return in_data, False


def run_session(address: Any, lines: List[bytes], fragment: bytes, cuts: List[int]) -> None:
    stream = b"".join(text + b"\r\n" for text in lines) + fragment
    with RawClient(address, timeout=5.0) as client:
        assert client.read_reply() == GREETING
        points = sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]
        start = 0
        for point in points:
            if point > start:
                client.send(stream[start:point])
                start = point
        in_data, closed = walk(client, lines)
        if closed:
            return
        if fragment:
            # Nothing is owed for a partial line; completed, it is one more.
            client.send(b"\r\n")
            in_data, closed = walk(client, [fragment], in_data)
            if closed:
                return
        if in_data:
            client.send(b".\r\n")
            read_reply(client)
        # In step: exactly one reply per command, nothing stray.
        assert client.command(b"NOOP") == b"250 OK\r\n"
        assert client.command(b"QUIT") == b"221 Bye\r\n"
        assert client.read_until_closed() == b""


def check_with_witness(sessions_test: Any) -> None:
    """Run *sessions_test(address)* examples on one server while a witness
    session stays open; then the witness completes its message."""
    collector = ErrorCollector()
    logger = logging.getLogger("smtpd_compat")
    logger.addHandler(collector)
    try:
        # No error budget: a session closed by the server with input still
        # unread would be reset (see the module docstring).
        with running_server(RecordingSMTPServer, max_errors=None) as server:
            with RawClient(server.address) as witness:
                assert witness.read_reply() == GREETING
                assert witness.command(b"HELO witness.example").startswith(b"250 ")
                assert witness.command(b"MAIL FROM:<witness@example.com>") == b"250 OK\r\n"
                sessions_test(server.address)
                assert witness.command(b"RCPT TO:<w@example.org>") == b"250 OK\r\n"
                assert witness.command(b"DATA").startswith(b"354 ")
                assert witness.command(b"witnessed\r\n.") == b"250 OK\r\n"
                assert any(m.mailfrom == "witness@example.com" and m.data == b"witnessed" for m in server.server.messages)
            assert server.error is None
    finally:
        logger.removeHandler(collector)
    assert not collector.records, [r.getMessage() for r in collector.records]


SETTINGS = settings(
    max_examples=100,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_random_sessions_in_random_chunks():
    @SETTINGS
    @given(
        lines=st.lists(line, max_size=30),
        fragment=st.one_of(st.just(b""), raw_line),
        cuts=st.lists(st.integers(0, 10**6), max_size=12),
    )
    def sessions(address: Any, lines: List[bytes], fragment: bytes, cuts: List[int]) -> None:
        lines = cut_at_quit(lines)
        if len(cut_at_quit(lines + [fragment])) > len(lines):
            run_session(address, lines, fragment, cuts)
        else:
            run_session(address, lines, b"", cuts)  # the fragment is a QUIT

    check_with_witness(lambda address: sessions(address))


def test_mutated_sessions_in_random_chunks():
    @SETTINGS
    @given(lines=mutated_session(), cuts=st.lists(st.integers(0, 10**6), max_size=20))
    def sessions(address: Any, lines: List[bytes], cuts: List[int]) -> None:
        run_session(address, cut_at_quit(lines), b"", cuts)

    check_with_witness(lambda address: sessions(address))
