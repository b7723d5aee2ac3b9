"""The framer: bytes in, pieces of data and terminators out; no I/O.

asynchat splits its input by a *terminator* that the code consuming the
input may change between any two pieces: a delimiter (``b"\\r\\n"`` for SMTP
commands, ``b"\\r\\n.\\r\\n"`` for a message), a byte count, or nothing (all
input is data).  :class:`Framer` keeps the input and hands it out one step
at a time, under the terminator given for that step, so a change made while
a piece is handled applies to the very next byte.

Each step returns ``(piece, found)``: the bytes before the terminator and
True when the terminator (or the byte count) was reached, or bytes that
cannot be part of a terminator and False.  Input that may be the start of a
delimiter is kept until more arrives, and no byte is searched twice: what
is handed out is consumed, and a kept tail is shorter than the delimiter.

``prefix_seen`` is what SMTP needs for ``DATA``: the CRLF that ended the
``DATA`` command line is also the start of ``<CRLF>.<CRLF>``, so a message
may be empty.  The consumer sets it when it switches to the message's
terminator; any other step forgets it.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

__all__ = ["Framer", "Terminator", "find_prefix_at_end"]

Terminator = Union[bytes, int, None]
Step = Tuple[bytes, bool]

# Input past this size (message text, not command lines) is searched and
# copied with the helpers at the end of this module.
LARGE = 4096


class Framer:
    """The input of one connection, split by terminators step by step.

    Methods for the caller: :meth:`feed` with what was read, then
    :meth:`next` until it returns None (nothing more can be handed out
    until more input arrives).  The input handed out is dropped from the
    buffer when :meth:`next` returns None, or by :meth:`compact`.
    """

    __slots__ = ("_buf", "_pos", "_src", "prefix_seen")

    def __init__(self) -> None:
        self._buf = bytearray()
        # Where the input not yet handed out begins.
        self._pos = 0
        # The bytes object the buffer holds exactly, when it does (one
        # read, fed into an empty buffer): pieces are sliced from it, one
        # copy instead of the two of bytes(buf[a:b]).
        self._src: Optional[bytes] = None
        self.prefix_seen = b""

    # -- input ------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Add *data* (bytes-like) after the input already held."""
        buf = self._buf
        if self._pos:
            del buf[: self._pos]
            self._pos = 0
        self._src = data if not buf and data.__class__ is bytes else None
        buf += data

    def compact(self) -> None:
        """Drop the input already handed out (memory only; no effect on
        what :meth:`next` returns)."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
            self._src = None

    def pending(self) -> bytes:
        """The input not handed out yet (a copy)."""
        return bytes(self._buf[self._pos :])

    def __len__(self) -> int:
        return len(self._buf) - self._pos

    def replace(self, data: bytes) -> None:
        """Make *data* the whole input not handed out yet."""
        self._buf = bytearray(data)
        self._pos = 0
        self._src = None

    def clear(self) -> None:
        self.replace(b"")

    # -- output -----------------------------------------------------------------
    def whole(self, data: bytes, term: Terminator) -> Optional[bytes]:
        """If nothing is buffered and *data* is exactly one record under the
        delimiter *term* (the usual read: one command line, or one small
        message), the record, which is then consumed; else None, and
        *data* is left for :meth:`feed`.

        The same result as feeding *data* and taking one step; a read
        larger than LARGE is not looked at here, so that no byte of a large
        message is searched twice.
        """
        if self._buf or term.__class__ is not bytes or not term or len(data) > LARGE:
            return None
        size = len(data) - len(term)
        # The delimiter's first place is at the end: one record, nothing after.
        if size < 0 or data.find(term) != size:
            return None
        prefix = self.prefix_seen
        if prefix:
            if data.startswith(term[len(prefix) :]):
                return None  # the terminator completes at once (an empty message)
            self.prefix_seen = b""
        return data[:size]

    def next(self, term: Terminator) -> Optional[Step]:
        """The next step under *term*, or None when more input is needed.

        A delimiter gives ``(bytes before it, True)`` and consumes it, or
        ``(bytes that cannot start it, False)``.  A count *n* gives
        ``(n bytes, True)`` or ``(fewer, False)``: the caller lowers its
        count by what it got.  None, 0 or ``b""`` hand out everything as
        ``(data, False)``.
        """
        buf = self._buf
        pos = self._pos
        end = len(buf)
        if pos >= end:
            if pos:
                # All handed out: forget it (the common end of a read).
                buf.clear()
                self._pos = 0
                self._src = None
            return None
        if term.__class__ is bytes and term and not self.prefix_seen:
            # The usual case, a delimiter.
            if end - pos <= LARGE:
                index = buf.find(term, pos)
            else:
                index = _find_large(buf, term, pos)
            if index >= 0:
                self._pos = index + len(term)
                src = self._src
                if src is not None:
                    # A whole read ending with the delimiter (a command
                    # line): one slice, no copy of the buffer.
                    return src[pos:index], True
                return self._slice(pos, index), True
            cut = end - _partial_at_end(buf, pos, term)
            if cut > pos:
                self._pos = cut
                return self._slice(pos, cut), False
            if pos:
                self.compact()
            return None
        if not term:
            self._pos = end
            return self._slice(pos, end), False
        if isinstance(term, int):
            if end - pos < term:
                self._pos = end
                return self._slice(pos, end), False
            self._pos = pos + term
            return self._slice(pos, pos + term), True
        return self._after_prefix(term)

    def _after_prefix(self, term: bytes) -> Optional[Step]:
        """A delimiter whose start was consumed already (prefix_seen)."""
        pos = self._pos
        rest = term[len(self.prefix_seen) :]
        head = bytes(self._buf[pos : pos + len(rest)])
        if head == rest:
            self.prefix_seen = b""
            self._pos = pos + len(rest)
            return b"", True
        if rest.startswith(head):
            return None  # could still complete: wait for more input
        self.prefix_seen = b""
        return self.next(term)

    def _slice(self, start: int, end: int) -> bytes:
        src = self._src
        if src is not None:
            return src if start == 0 and end == len(src) else src[start:end]
        if end - start > LARGE:
            return _bytes_of(self._buf, start, end)
        return bytes(self._buf[start:end])


def _find_large(buf: bytearray, term: bytes, pos: int) -> int:
    """``buf.find(term, pos)``, skipping ahead with memchr() where it can.

    The terminator cannot start before the first occurrence of its first
    byte that is neither CR nor LF (the dot of ``<CRLF>.<CRLF>``) minus that
    byte's offset in it.  Finding a single byte is a memchr() pass, many
    times faster than a substring search, and message text that lacks the
    byte (base64, for a dot) is then not searched at all.
    """
    for k, byte in enumerate(term):
        if byte != 13 and byte != 10:
            first = buf.find(term[k : k + 1], pos + k)
            if first < 0:
                return -1
            return buf.find(term, first - k)
    return buf.find(term, pos)


def _bytes_of(buf: bytearray, start: int, end: int) -> bytes:
    """``bytes(buf[start:end])`` in one copy instead of two (large slices)."""
    view = memoryview(buf)
    try:
        part = view[start:end]
        try:
            return part.tobytes()
        finally:
            part.release()
    finally:
        view.release()


def _partial_at_end(buf: bytearray, pos: int, term: bytes) -> int:
    """Like find_prefix_at_end(buf[pos:], term), without copying buf."""
    for n in range(min(len(term) - 1, len(buf) - pos), 0, -1):
        if buf.endswith(term[:n]):
            return n
    return 0


def find_prefix_at_end(haystack: bytes, needle: bytes) -> int:
    """Length of the longest proper prefix of *needle* that ends *haystack*
    (asynchat's public helper)."""
    n = min(len(needle) - 1, len(haystack))
    while n > 0:
        if haystack[-n:] == needle[:n]:
            return n
        n -= 1
    return 0
