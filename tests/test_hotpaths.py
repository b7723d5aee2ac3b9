"""Behaviour pins for the optimised hot paths (docs/performance.md).

Each optimisation replaced a simple formulation with a faster one; these
tests check the fast version against the simple one, or against the
behaviour CPython's smtpd/asynchat had, over many inputs.  No timing here:
speed is measured by benchmarks/bench.py, not by tests.
"""

from __future__ import annotations

import random
import socket
import time
from typing import Any, Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd_compat import _framing, _grammar, _reactor, asynchat, asyncore

from test_grammar import smtpd_unstuff

_STOP = frozenset(' \t\r\n<>()[],;:@"\\')


def _bad(ch: str) -> bool:
    # The character rule _grammar._run applied before it became a regex.
    return ch in _STOP or ch < " " or ch == "\x7f"


def _slow_run(text: str, i: int) -> int:
    # The character loop _grammar._run used before it became a regex.
    while i < len(text) and not _bad(text[i]):
        i += 1
    return i


def test_address_run_regex_matches_character_rule() -> None:
    # Every code point of the BMP's first part plus the extremes, alone,
    # inside other text and repeated, from two start positions.
    code_points = list(range(0x3000)) + [0xD7FF, 0xE000, 0xFFFD, 0x10FFFF]
    for cp in code_points:
        ch = chr(cp)
        for text in (ch, "ab" + ch + "cd", ch * 3):
            for start in (0, 1):
                assert _grammar._run(text, start) == _slow_run(text, start), (hex(cp), text, start)


def _parse(parser: Any, text: str) -> Any:
    try:
        return parser(text)
    except _grammar.AddressError:
        return "AddressError"


# Characters that decide how a path parses: every delimiter, dots, quotes,
# source-route punctuation, a non-ASCII letter, spaces and control bytes.
PATH_ALPHABET = 'ab.@<>"\\:,[] \t\r\x00\x7fé'


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=PATH_ALPHABET, max_size=14))
def test_common_path_match_agrees_with_the_stepwise_parse(text: str) -> None:
    assert _parse(_grammar.parse_path, text) == _parse(_grammar._parse_path_stepwise, text.lstrip())


@pytest.mark.parametrize(
    "text",
    ["<a@b>", "<a.b@c.d> SIZE=10", "<.a@b>", "<a.@b>", "<...@b>", "<a@.b>", "<a@b.>", "<a@b..c>", "<a@b>>", "<é@b>", "<a@b", "<a@b c>"],
)
def test_common_path_edge_cases(text: str) -> None:
    assert _parse(_grammar.parse_path, text) == _parse(_grammar._parse_path_stepwise, text)


def test_common_path_takes_the_usual_addresses() -> None:
    assert _grammar._COMMON_PATH.match("<bench.user@mail.example.com>") is not None
    assert _grammar.parse_path("<bench.user@mail.example.com> SIZE=1000") == ("bench.user@mail.example.com", " SIZE=1000")


def test_address_run_stops_at_every_delimiter() -> None:
    for delim in ' \t\r\n<>()[],;:@"\\\x00\x1f\x7f':
        assert _grammar._run("abc" + delim + "def", 0) == 3
    assert _grammar._run("", 0) == 0
    assert _grammar._run("abc", 3) == 3


# -- message text: unstuff_chunks --------------------------------------------------
def _is_message_text(raw: bytes) -> bool:
    framed = _grammar.DATA_START + raw + _grammar.END_OF_DATA
    return framed.find(_grammar.END_OF_DATA) == len(_grammar.DATA_START + raw)


def _cuts(raw: bytes, rnd: random.Random) -> List[bytes]:
    points = sorted(rnd.sample(range(len(raw) + 1), min(len(raw) + 1, rnd.randint(0, 3))))
    return [raw[a:b] for a, b in zip([0] + points, points + [len(raw)])]


def test_unstuff_chunks_matches_smtpd_on_small_texts() -> None:
    rnd = random.Random(4)
    pieces = [b"\r", b"\n", b".", b"x", b"\r\n", b"\r\n.", b".."]
    checked = 0
    for _ in range(20000):
        raw = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 10)))
        if not _is_message_text(raw):
            continue
        result = _grammar.unstuff_chunks(_cuts(raw, rnd))
        assert result == smtpd_unstuff(raw), raw
        assert type(result) is bytes
        checked += 1
    assert checked > 5000


def test_unstuff_chunks_matches_smtpd_on_large_texts() -> None:
    # Large enough for the per-dot look-ahead of _has_stuffed_line to run
    # out of budget, with dots before and after the first stuffed line.
    rnd = random.Random(5)
    for _ in range(60):
        parts = [rnd.choice([b"X" * rnd.randint(0, 90), b".", b"a.b", b"..", b"\r\n", b"\r", b"\n"]) for _ in range(rnd.randint(0, 4000))]
        raw = b"".join(parts)
        if not _is_message_text(raw):
            continue
        assert _grammar._has_stuffed_line(raw) == (b"\r\n." in raw)
        assert _grammar.unstuff_chunks(_cuts(raw, rnd)) == smtpd_unstuff(raw)


def test_stuffed_line_found_after_many_dots() -> None:
    body = b"a.b.c.d\r\n" * 5000  # 20000 dots, none at a line start
    assert not _grammar._has_stuffed_line(body)
    assert _grammar._has_stuffed_line(body + b"\r\n..x")
    assert _grammar.unstuff_chunks([body, b"\r\n..x"]) == smtpd_unstuff(body + b"\r\n..x")
    assert _grammar.unstuff_chunks([]) == b""
    assert _grammar.unstuff_chunks([b".x"]) == b"x"


def test_unstuff_chunks_keeps_bare_carriage_returns() -> None:
    # Without a bare CR every CR is deleted at once; with one, only CRLF
    # becomes LF.
    assert _grammar.unstuff_chunks([b"a\r\nb\r\n"]) == b"a\nb\n"
    assert _grammar.unstuff_chunks([b"a\rb\r\nc"]) == b"a\rb\nc"
    assert _grammar.unstuff_chunks([b"a\r\r\nb\r"]) == b"a\r\nb\r"
    assert _grammar.unstuff_chunks([b"\r"]) == b"\r"


def test_plain_pieces_judges_each_piece_and_each_junction() -> None:
    plain = _grammar._plain_pieces
    assert plain([b"a\r\n", b"b\r\n"]) and plain([]) and plain([b""])
    assert not plain([b".a"])  # the first line starts with a dot
    assert not plain([b"a\r\n", b".b"])  # CRLF | dot
    assert plain([b"a", b".b"])  # the dot is not at a line start
    assert not plain([b"a\r", b"\nb"])  # a CR ending a piece counts as bare
    assert not plain([b"a\rb"]) and not plain([b"a\r\n.b"])
    assert _grammar.unstuff_chunks([b"a\r\n", b".b"]) == b"a\nb"
    assert _grammar.unstuff_chunks([b"a\r", b"\nb"]) == b"a\nb"


def test_unstuff_chunks_empties_the_list() -> None:
    chunks = [b"a\r\n", b"b"]
    assert _grammar.unstuff_chunks(chunks) == b"a\nb"
    assert chunks == []


# -- asynchat helpers for large input ------------------------------------------------
def test_find_large_equals_find() -> None:
    rnd = random.Random(6)
    terms = [b"\r\n.\r\n", b"\r\n", b"\n", b"END", b"\r\n\r\n"]
    for _ in range(3000):
        buf = bytearray(b"".join(rnd.choice([b"\r", b"\n", b".", b"x", b"E", b"END", b"\r\n.\r\n"]) for _ in range(rnd.randint(0, 40))))
        term = rnd.choice(terms)
        pos = rnd.randint(0, len(buf))
        assert _framing._find_large(buf, term, pos) == buf.find(term, pos), (buf, term, pos)


def test_bytes_of_copies_a_slice() -> None:
    buf = bytearray(range(256)) * 100
    part = _framing._bytes_of(buf, 10, 20000)
    assert part == bytes(buf[10:20000]) and type(part) is bytes
    buf += b"more"  # no export left behind: the buffer can still grow
    del buf[:5]


class _Collector(asynchat.async_chat):
    def __init__(self, terminator: bytes) -> None:
        super().__init__()
        self.set_terminator(terminator)
        self.pieces: List[bytes] = []
        self.frames: List[bytes] = []

    def collect_incoming_data(self, data: bytes) -> None:
        assert type(data) is bytes
        self.pieces.append(data)

    def found_terminator(self) -> None:
        self.frames.append(b"".join(self.pieces))
        self.pieces = []


def test_large_input_framed_like_small_input() -> None:
    # Message-sized input (past _framing.LARGE) goes through the memchr
    # search and the single-copy slices; the frames are the same whatever
    # the read sizes.
    body = (b"X" * 78 + b"\r\n") * 2000 + b"a.b\r\n..c\r\n"
    stream = body + b"\r\n.\r\n" + b"tail" + b"\r\n.\r\n"
    expected = [body, b"tail"]
    for size in (1, 7, 4096, 5000, 65536, len(stream)):
        chat = _Collector(b"\r\n.\r\n")
        chat._fileno = -1  # framing stops for closed channels; fake an open one
        for i in range(0, len(stream), size):
            chat._ac_consume(stream[i : i + size])
        assert chat.frames == expected, size


# -- max_command_size_limit is cached in the channel's command_size_limits -----------
def test_command_size_limits_forget_their_largest_value_on_every_change() -> None:
    from smtpd_compat._state import CommandSizeLimits as _CommandSizeLimits

    limits = _CommandSizeLimits(lambda: 512)
    changes = [
        lambda: limits.__setitem__("MAIL", 538),
        lambda: limits.update(RCPT=600),
        lambda: limits.setdefault("AUTH", 12288),
        lambda: limits.pop("AUTH"),
        lambda: limits.__delitem__("RCPT"),
        lambda: limits.__ior__({"X": 1}),
        lambda: limits["NEW"],  # a missing key is inserted by the factory
        lambda: limits.popitem(),
        lambda: limits.clear(),
    ]
    for change in changes:
        limits.largest = -1
        change()
        assert limits.largest is None


def test_max_command_size_limit_follows_the_limits() -> None:
    from smtpd_compat import _state, smtpd

    channel = smtpd.SMTPChannel.__new__(smtpd.SMTPChannel)
    channel.command_size_limits = _state.CommandSizeLimits(lambda: 512)
    assert channel.max_command_size_limit == 512  # empty: command_size_limit
    channel.command_size_limits["MAIL"] += 26
    assert channel.max_command_size_limit == 538
    assert channel.command_size_limits.largest == 538
    channel.command_size_limits["AUTH"] = 12288
    assert channel.max_command_size_limit == 12288
    del channel.command_size_limits["AUTH"]
    assert channel.max_command_size_limit == 538
    # Any mapping still works, uncached, as in smtpd.
    channel.command_size_limits = {"MAIL": 700}
    assert channel.max_command_size_limit == 700
    # An empty dict (a HELO session) is remembered as such: the channel's
    # command_size_limit is read each time.
    channel.command_size_limits = _state.CommandSizeLimits(lambda: 512)
    channel.command_size_limit = 512
    assert channel.max_command_size_limit == 512
    assert channel.command_size_limits.largest is _state.NO_LIMITS
    channel.command_size_limit = 100
    assert channel.max_command_size_limit == 100
    channel.command_size_limits["MAIL"] = 300
    assert channel.max_command_size_limit == 300


# -- the reactor's busy-poll ----------------------------------------------------------
class _Reader(asyncore.dispatcher):
    def handle_read(self) -> None:
        self.recv(4096)

    def writable(self) -> bool:
        return False


class _CountingSelects:
    """Wraps a reactor's selector.select to record each call's timeout."""

    def __init__(self, reactor: Any) -> None:
        self.timeouts: List[Any] = []
        self._select = reactor.selector.select
        reactor.selector.select = self

    def __call__(self, timeout: Any) -> Any:
        self.timeouts.append(timeout)
        return self._select(timeout)


def _active_reactor(busy_poll: float) -> Any:
    """A map with one reader, after an iteration that handled an event."""
    map: Dict[int, Any] = {}
    a, b = socket.socketpair()
    _Reader(a, map=map)
    b.send(b"x")
    asyncore.poll(1.0, map)
    reactor = _reactor.reactor_for(map)
    reactor.busy_poll = busy_poll
    return map, reactor, b


def test_busy_poll_spins_after_activity_then_sleeps_then_stops() -> None:
    map, reactor, peer = _active_reactor(0.005)
    try:
        assert reactor._active
        calls = _CountingSelects(reactor)
        asyncore.poll(0.01, map)  # nothing comes: spin, then block
        assert calls.timeouts[0] == 0 and len(calls.timeouts) >= 2
        assert calls.timeouts[-1] is not None and calls.timeouts[-1] <= 0.01
        assert reactor._spin_missed and not reactor._active
        del calls.timeouts[:]
        asyncore.poll(0.01, map)  # idle: no spin at all
        assert calls.timeouts == [0.01]
        # Activity again, but the last spin missed: this time it sleeps.
        peer.send(b"y")
        asyncore.poll(1.0, map)
        assert reactor._active
        del calls.timeouts[:]
        asyncore.poll(0.01, map)
        assert calls.timeouts == [0.01] and not reactor._spin_missed
    finally:
        peer.close()
        asyncore.close_all(map=map)


def test_busy_poll_off() -> None:
    map, reactor, peer = _active_reactor(0.0)
    try:
        calls = _CountingSelects(reactor)
        asyncore.poll(0.01, map)
        assert calls.timeouts == [0.01]
    finally:
        peer.close()
        asyncore.close_all(map=map)


def test_busy_poll_never_runs_past_a_due_timer() -> None:
    # A spin far longer than the timer's delay stops at the timer, and the
    # timer runs in the same iteration.
    map, reactor, peer = _active_reactor(30.0)
    try:
        fired: List[float] = []
        reactor.call_later(0.01, lambda: fired.append(time.monotonic()))
        start = time.monotonic()
        asyncore.poll(30.0, map)
        assert fired, "the timer did not run in that iteration"
        assert fired[0] - start < 10.0  # bounded by the timer, not the spin
    finally:
        peer.close()
        asyncore.close_all(map=map)


# -- a channel's instance dict shares its keys ------------------------------------
# CPython (3.11-3.13) keeps an instance's attributes in a compact array whose
# keys all instances of the class share, for up to 29 attribute names per
# class; beyond that each instance gets a dict of its own (about 1.5 KiB per
# held connection) and 3.11 stops specialising attribute loads on it.
SHARED_KEYS_BUDGET = 29


def _channel_after_a_session(channel_class: Any) -> Any:
    from conftest import RecordingSMTPServer

    server_map: Dict[int, Any] = {}

    class Server(RecordingSMTPServer):
        pass

    Server.channel_class = channel_class
    server = Server(("127.0.0.1", 0), None, map=server_map)
    client = socket.create_connection(server.socket.getsockname(), timeout=5)
    client.setblocking(False)
    script = [b"EHLO me\r\n", b"MAIL FROM:<a@example.com>\r\n", b"RCPT TO:<b@example.com>\r\n",
              b"DATA\r\n", b"Subject: x\r\n\r\nhello\r\n.\r\n", b"NOOP\r\n"]
    replies = b""
    deadline = time.monotonic() + 10
    try:
        # One command after each complete reply, until NOOP's has come.
        while time.monotonic() < deadline:
            asyncore.loop(0.01, map=server_map, count=1)
            try:
                replies += client.recv(65536)
            except BlockingIOError:
                continue
            last = replies.rsplit(b"\r\n", 2)[-2:]
            if len(last) == 2 and last[1] == b"" and last[0][3:4] == b" ":
                if not script:
                    break
                client.sendall(script.pop(0))
        channel = next(o for o in server_map.values() if isinstance(o, channel_class))
        assert not script and replies.count(b"\r\n250 ") >= 5, replies
        return channel
    finally:
        client.close()
        server.close()


def test_a_channel_keeps_within_the_shared_keys_budget() -> None:
    from smtpd_compat import smtpd

    channel = _channel_after_a_session(smtpd.SMTPChannel)
    names = sorted(vars(channel))
    assert len(names) <= SHARED_KEYS_BUDGET, names


def test_an_smtp_method_set_on_the_instance_is_called() -> None:
    # smtpd looked smtp_<VERB> up on the instance; the dispatch that goes
    # straight to the session's rule must still see an instance's own.
    from smtpd_compat import smtpd

    calls: List[str] = []

    class Channel(smtpd.SMTPChannel):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

            def noop(arg: Any) -> None:
                calls.append("noop")
                self.push("250 instance noop")

            self.smtp_NOOP = noop

    _channel_after_a_session(Channel)
    assert calls == ["noop"]
