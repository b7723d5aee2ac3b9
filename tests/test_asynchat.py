"""The asynchat layer on its own, over real sockets.

Framing cases feed a chat channel chunk by chunk through a socket pair and
wait until each chunk has been read on its own, so the split points are
exactly the ones in the table.  Where the interpreter still ships CPython's
asynchat (3.9-3.11), each framing case is also run against it and must give
the same events.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from smtpd_compat import asynchat, asyncore

from conftest import TIMEOUT, stdlib_modules

OURS = (asynchat, asyncore)
STDLIB = stdlib_modules("asynchat", "asyncore")


def pump(core: Any, map: dict, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Run loop iterations until done() (bounded in time)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        core.loop(timeout=0.2, map=map, count=1)


def make_chat_class(chat_module: Any) -> Any:
    class Chat(chat_module.async_chat):  # type: ignore[misc,name-defined]
        """Records each frame and what the input buffer held at that moment."""

        def __init__(self, sock: Any, map: dict, terminator: Any, on_frame: Any = None) -> None:
            chat_module.async_chat.__init__(self, sock, map=map)
            self.set_terminator(terminator)
            self.collected: List[bytes] = []
            self.frames: List[Tuple[bytes, Any]] = []
            self.pending: List[bytes] = []  # ac_in_buffer seen in found_terminator
            self.reads = 0
            self.on_frame = on_frame

        def handle_read(self) -> None:
            self.reads += 1
            chat_module.async_chat.handle_read(self)

        def collect_incoming_data(self, data: bytes) -> None:
            self.collected.append(bytes(data))

        def found_terminator(self) -> None:
            frame = b"".join(self.collected)
            self.collected = []
            self.frames.append((frame, self.get_terminator()))
            self.pending.append(bytes(self.ac_in_buffer))
            if self.on_frame is not None:
                self.on_frame(self, frame)

    return Chat


def run_chat(modules: Tuple[Any, Any], terminator: Any, chunks: List[bytes], on_frame: Any = None) -> Any:
    """Feed *chunks* to a chat channel, one read per chunk; return the channel."""
    chat_module, core = modules
    a, b = socket.socketpair()
    map: Dict[int, Any] = {}
    chat = make_chat_class(chat_module)(a, map, terminator, on_frame)
    try:
        for chunk in chunks:
            before = chat.reads
            b.sendall(chunk)
            pump(core, map, lambda before=before: chat.reads > before or not map)
            if not map:
                break
    finally:
        b.close()
        core.close_all(map=map)
    return chat


def both(terminator: Any, chunks: List[bytes], on_frame: Any = None) -> Any:
    """Run with this package, and with CPython's asynchat when available;
    assert they agree; return this package's channel."""
    ours = run_chat(OURS, terminator, chunks, on_frame)
    if STDLIB is not None:
        theirs = run_chat(STDLIB, terminator, chunks, on_frame)
        assert ours.frames == theirs.frames
        assert b"".join(ours.collected) == b"".join(theirs.collected)
        assert ours.pending == theirs.pending
    return ours


def splits(data: bytes) -> List[List[bytes]]:
    """Every way of cutting *data* in two, plus one byte per chunk."""
    cuts = [[data[:i], data[i:]] for i in range(1, len(data))]
    return [[data]] + cuts + [[data[i : i + 1] for i in range(len(data))]]


# -- byte-string terminators of 1, 2 and 5 bytes, split anywhere ---------------------------
@pytest.mark.parametrize("term", [b"\n", b"\r\n", b"<END>"], ids=["1-byte", "2-bytes", "5-bytes"])
def test_bytes_terminator_split_anywhere(term: bytes) -> None:
    # Includes an empty frame, partial terminators inside data, and data left over.
    pieces = [b"alpha", b"", b"be" + term[:-1] + b"ta", term[:-1] * 2, b"gamma"]
    data = b"".join(p + term for p in pieces) + b"tail" + term[:-1]
    expected = [(p, term) for p in pieces]
    for chunks in splits(data):
        chat = both(term, chunks)
        assert chat.frames == expected, chunks
        # What is not framed yet: "tail" was collected, the partial
        # terminator is still buffered.
        assert b"".join(chat.collected) == b"tail"
        assert chat.ac_in_buffer == term[:-1]


def test_terminator_prefix_then_mismatch() -> None:
    # "<EN" looks like the start of "<END>" until the next read says otherwise.
    chat = both(b"<END>", [b"a<EN", b"X<END>"])
    assert chat.frames == [(b"a<ENX", b"<END>")]


def test_many_frames_in_one_read() -> None:
    lines = [b"line %d" % i for i in range(500)]
    chat = both(b"\r\n", [b"".join(line + b"\r\n" for line in lines)])
    assert [f for f, _ in chat.frames] == lines


# -- integer terminators ---------------------------------------------------------------------
@pytest.mark.parametrize("chunks", splits(b"0123456789abcdef"))
def test_int_terminator(chunks: List[bytes]) -> None:
    def next_count(chat: Any, frame: bytes) -> None:
        # 5 bytes, then 3, then 4; then the terminator stays 0 (all data).
        counts = chat.__dict__.setdefault("counts", [3, 4])
        if counts:
            chat.set_terminator(counts.pop(0))

    chat = both(5, chunks, next_count)
    assert [f for f, _ in chat.frames] == [b"01234", b"567", b"89ab"]
    # After the count is reached the terminator is 0 (collect everything).
    assert [t for _, t in chat.frames] == [0, 0, 0]
    assert b"".join(chat.collected) == b"cdef"


def test_int_terminator_counts_down_across_reads() -> None:
    chat = run_chat(OURS, 10, [b"abc"])
    assert chat.get_terminator() == 7
    assert chat.frames == []


def test_negative_int_terminator_rejected() -> None:
    a, b = socket.socketpair()
    map: Dict[int, Any] = {}
    try:
        chat = make_chat_class(asynchat)(a, map, b"\n")
        with pytest.raises(ValueError):
            chat.set_terminator(-1)
    finally:
        b.close()
        asyncore.close_all(map=map)


# -- None: everything is data ------------------------------------------------------------------
def test_none_terminator_collects_everything() -> None:
    chat = both(None, [b"abc\r\n", b"def", b"\r\n.\r\n"])
    assert chat.frames == []
    assert b"".join(chat.collected) == b"abc\r\ndef\r\n.\r\n"


# -- changing the terminator while framing -------------------------------------------------------
def test_switch_from_lines_to_count_within_one_read() -> None:
    """A header line announces a body length (as HTTP or BDAT do)."""

    def switch(chat: Any, frame: bytes) -> None:
        if frame.startswith(b"LEN "):
            chat.set_terminator(int(frame[4:]))
        elif isinstance(chat.get_terminator(), int):
            chat.set_terminator(b"\r\n")

    data = b"LEN 7\r\nab\r\ncdeNEXT\r\nLEN 0\r\n"
    for chunks in splits(data):
        chat = both(b"\r\n", chunks, switch)
        assert [f for f, _ in chat.frames] == [b"LEN 7", b"ab\r\ncde", b"NEXT", b"LEN 0"]


def test_ac_in_buffer_in_found_terminator_is_what_follows() -> None:
    """Inside found_terminator, ac_in_buffer holds the input not framed yet
    (code uses this to notice a client that talks before its turn)."""
    chat = both(b"\n", [b"one\ntwo\nthree"])
    assert chat.pending == [b"two\nthree", b"three"]


def test_discard_buffers_in_found_terminator_drops_the_rest() -> None:
    def discard(chat: Any, frame: bytes) -> None:
        if frame == b"stop":
            chat.discard_buffers()

    chat = both(b"\n", [b"go\nstop\nignored\nalso ignored\n", b"later\n"], discard)
    assert [f for f, _ in chat.frames] == [b"go", b"stop", b"later"]


def test_assigning_ac_in_buffer_in_found_terminator() -> None:
    """Legacy code may replace the pending input; framing goes on with it."""

    def replace(chat: Any, frame: bytes) -> None:
        if frame == b"swap":
            chat.ac_in_buffer = b"injected\n"

    chat = both(b"\n", [b"swap\ndropped\n"], replace)
    assert [f for f, _ in chat.frames] == [b"swap", b"injected"]


# -- output: push, producers, partial sends ------------------------------------------------------
class Sender(asynchat.async_chat):
    def __init__(self, sock: Any, map: dict) -> None:
        asynchat.async_chat.__init__(self, sock, map=map)
        self.set_terminator(None)
        self.closed = False

    def collect_incoming_data(self, data: bytes) -> None:
        pass

    def found_terminator(self) -> None:
        pass

    def handle_close(self) -> None:
        self.closed = True
        self.close()


def read_all(peer: socket.socket, map: dict, done: Callable[[], bool], size: Optional[int] = None, step: int = 65536) -> bytes:
    """Alternate reading what is available from *peer* (in recv() calls of
    *step* bytes, at most 64 kB a round) and running one loop iteration,
    until *size* bytes arrived (or EOF when size is None) and done()."""
    peer.setblocking(False)
    received = bytearray()
    deadline = time.monotonic() + TIMEOUT
    eof = False
    while True:
        assert time.monotonic() < deadline, "timed out after %d bytes" % len(received)
        for _ in range(max(1, 65536 // step)):
            try:
                chunk = peer.recv(step)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            received += chunk
        if done() and (eof if size is None else len(received) >= size):
            return bytes(received)
        if map:
            asyncore.loop(timeout=0.01, map=map, count=1)


def make_sender() -> Tuple[Sender, socket.socket, dict]:
    a, b = socket.socketpair()
    # Small buffers, so large pushes are only partly accepted by send().
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    map: Dict[int, Any] = {}
    return Sender(a, map), b, map


def test_partial_sends_deliver_everything_in_order() -> None:
    sender, peer, map = make_sender()
    try:
        pieces = [bytes([65 + i % 26]) * (1000 * (i + 1)) for i in range(40)]  # ~820 kB
        for piece in pieces:
            sender.push(piece)
        assert sender.producer_fifo, "the socket took everything at once; the test proves nothing"
        expected = b"".join(pieces)
        got = read_all(peer, map, lambda: not sender.producer_fifo, size=len(expected), step=1000)
        assert got == expected
    finally:
        peer.close()
        asyncore.close_all(map=map)


def test_one_large_push_to_a_slow_reader() -> None:
    sender, peer, map = make_sender()
    try:
        data = bytes(range(256)) * 16384  # 4 MiB
        sender.push(data)
        sender.push(b"END")
        got = read_all(peer, map, lambda: not sender.producer_fifo, size=len(data) + 3, step=7919)
        assert got == data + b"END"
    finally:
        peer.close()
        asyncore.close_all(map=map)


def test_push_with_producer_and_simple_producer_in_order() -> None:
    sender, peer, map = make_sender()
    try:
        sender.push(b"head:")
        sender.push_with_producer(asynchat.simple_producer(b"0123456789" * 1000, buffer_size=7))
        sender.push(b":middle:")
        sender.push_with_producer(asynchat.simple_producer(b""))
        sender.push_with_producer(asynchat.simple_producer(b"tail", buffer_size=1))
        sender.close_when_done()
        got = read_all(peer, map, lambda: sender.closed)
        assert got == b"head:" + b"0123456789" * 1000 + b":middle:tail"
    finally:
        peer.close()
        asyncore.close_all(map=map)


def test_simple_producer() -> None:
    p = asynchat.simple_producer(b"abcdefg", buffer_size=3)
    assert [p.more(), p.more(), p.more(), p.more()] == [b"abc", b"def", b"g", b""]
    assert asynchat.simple_producer(b"xy").more() == b"xy"


def test_push_rejects_str() -> None:
    sender, peer, map = make_sender()
    try:
        with pytest.raises(TypeError):
            sender.push("text")  # type: ignore[arg-type]
    finally:
        peer.close()
        asyncore.close_all(map=map)


def test_push_accepts_bytearray_and_memoryview() -> None:
    sender, peer, map = make_sender()
    try:
        sender.push(bytearray(b"ab"))
        sender.push(memoryview(b"cd"))
        sender.close_when_done()
        assert read_all(peer, map, lambda: sender.closed) == b"abcd"
    finally:
        peer.close()
        asyncore.close_all(map=map)


# -- close_when_done and discard_buffers -----------------------------------------------------------
def test_close_when_done_sends_then_closes() -> None:
    sender, peer, map = make_sender()
    try:
        sender.push(b"x" * 100000)
        sender.close_when_done()
        assert not sender.closed
        got = read_all(peer, map, lambda: sender.closed, step=4096)
        assert got == b"x" * 100000
        assert not map
    finally:
        peer.close()
        asyncore.close_all(map=map)


def test_input_after_close_when_done_is_ignored() -> None:
    def quit_on_quit(chat: Any, frame: bytes) -> None:
        if frame == b"QUIT":
            chat.push(b"bye\n")
            chat.close_when_done()

    a, b = socket.socketpair()
    map: Dict[int, Any] = {}
    chat = make_chat_class(asynchat)(a, map, b"\n", quit_on_quit)
    try:
        b.sendall(b"one\nQUIT\nafter\nmore\n")
        pump(asyncore, map, lambda: not map)
        assert [f for f, _ in chat.frames] == [b"one", b"QUIT"]
        b.settimeout(TIMEOUT)
        assert b.recv(100) == b"bye\n"
        assert b.recv(100) == b""
    finally:
        b.close()
        asyncore.close_all(map=map)


def test_discard_buffers_drops_output() -> None:
    sender, peer, map = make_sender()
    try:
        sender.push(b"y" * 500000)
        assert sender.producer_fifo
        sender.discard_buffers()
        assert not sender.producer_fifo
        assert not sender.writable()
        sender.push(b"after")
        sender.close_when_done()
        got = read_all(peer, map, lambda: sender.closed)
        # Whatever the socket had taken before the discard, then only "after".
        assert got.endswith(b"after") and set(got[:-5]) <= {ord("y")}
        assert len(got) < 500000
    finally:
        peer.close()
        asyncore.close_all(map=map)


# -- find_prefix_at_end -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "haystack, needle, expected",
    [
        (b"qwerty\r", b"\r\n", 1),
        (b"qwerty\r\n", b"\r\n", 0),  # a whole needle is not a *prefix* at the end
        (b"qwertydkjf", b"\r\n", 0),
        (b"abc\r\n.", b"\r\n.\r\n", 3),
        (b"abc\r\n.\r", b"\r\n.\r\n", 4),
        (b"", b"\r\n", 0),
        (b"\r", b"\r\n.\r\n", 1),
        (b"aaa", b"aab", 2),
        (b"x", b"x", 0),
    ],
)
def test_find_prefix_at_end(haystack: bytes, needle: bytes, expected: int) -> None:
    assert asynchat.find_prefix_at_end(haystack, needle) == expected
    if STDLIB is not None:
        assert STDLIB[0].find_prefix_at_end(haystack, needle) == expected


def test_get_and_set_terminator() -> None:
    a, b = socket.socketpair()
    map: Dict[int, Any] = {}
    try:
        chat = make_chat_class(asynchat)(a, map, b"\r\n")
        assert chat.get_terminator() == b"\r\n"
        for term in (b"X", 42, None, 0):
            chat.set_terminator(term)
            assert chat.get_terminator() == term
    finally:
        b.close()
        asyncore.close_all(map=map)


def test_push_before_connected_is_sent_once_connected() -> None:
    """A client chat channel may push before its connect() completed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    map: Dict[int, Any] = {}
    try:
        chat = make_chat_class(asynchat)(None, map, b"\n")
        chat.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        chat.connect(listener.getsockname())
        chat.push(b"early\n")
        chat.push_with_producer(asynchat.simple_producer(b"producer\n", buffer_size=3))
        listener.settimeout(TIMEOUT)
        peer, _ = listener.accept()
        with peer:
            got = b""
            peer.setblocking(False)
            deadline = time.monotonic() + TIMEOUT
            while got != b"early\nproducer\n":
                assert time.monotonic() < deadline, got
                asyncore.loop(timeout=0.05, map=map, count=1)
                try:
                    got += peer.recv(100)
                except BlockingIOError:
                    pass
            assert chat.connected
            peer.sendall(b"reply\n")
            pump(asyncore, map, lambda: bool(chat.frames))
            assert chat.frames == [(b"reply", b"\n")]
    finally:
        listener.close()
        asyncore.close_all(map=map)


# -- differential: random input, random read boundaries, against CPython's asynchat -------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TERMINATORS = [b"\n", b"\r\n", b"\r\n.\r\n", b"<END>"]


def switching(first: Any) -> Any:
    """A callback that changes the terminator the way protocols do: an
    empty frame switches to a 3-byte count, the count back to *first*."""

    def on_frame(chat: Any, frame: bytes) -> None:
        if isinstance(chat.get_terminator(), int):
            chat.set_terminator(first)
        elif frame == b"":
            chat.set_terminator(3)

    return on_frame


@pytest.mark.skipif(STDLIB is None, reason="CPython's asynchat is not available (3.12+)")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.sampled_from([b"a", b"\r", b"\n", b".", b"<", b"END", b">", b"\r\n", b"\r\n.\r\n"]), max_size=40).map(b"".join),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=6),
    term=st.sampled_from(TERMINATORS),
)
def test_random_framing_equals_cpython_asynchat(data: bytes, cuts: List[int], term: bytes) -> None:
    points = sorted({c for c in cuts if c < len(data)})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)])]
    chunks = [c for c in chunks if c]
    if not chunks:
        return
    both(term, chunks, switching(term))  # asserts that they agree


def test_pause_and_resume_inside_found_terminator_without_a_loop() -> None:
    """resume_reading() from a callback when no loop has run yet (input fed
    by calling handle_read() directly): framing goes on once, in order; it
    recursed on the line being handled."""
    a, b = socket.socketpair()
    map: Dict[int, Any] = {}

    def pause_resume(chat: Any, frame: bytes) -> None:
        if frame == b"a":
            chat.pause_reading("test")
            chat.resume_reading("test")

    try:
        chat = make_chat_class(asynchat)(a, map, b"\n", pause_resume)
        b.sendall(b"a\nb\nc\n")
        chat.handle_read()
        assert [f for f, _ in chat.frames] == [b"a", b"b", b"c"]
    finally:
        b.close()
        asyncore.close_all(map=map)


def test_pause_inside_found_terminator_then_resume_later() -> None:
    """Paused by a callback: the rest of the read waits, in the buffer, until
    resume_reading(); then it is framed in order."""
    a, b = socket.socketpair()
    map: Dict[int, Any] = {}

    def pause(chat: Any, frame: bytes) -> None:
        if frame == b"a":
            chat.pause_reading("test")

    try:
        chat = make_chat_class(asynchat)(a, map, b"\n", pause)
        b.sendall(b"a\nb\nc\n")
        chat.handle_read()
        assert [f for f, _ in chat.frames] == [b"a"]
        assert not chat.readable()
        chat.resume_reading("test")
        pump(asyncore, map, lambda: len(chat.frames) == 3)
        assert [f for f, _ in chat.frames] == [b"a", b"b", b"c"]
    finally:
        b.close()
        asyncore.close_all(map=map)
