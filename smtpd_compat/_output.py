"""The output queue of a channel: what to write next, and what to put back.

``async_chat.producer_fifo`` is asynchat's queue, which subclasses may read
and append to: bytes-like entries, producers (objects with ``more()``), and
``None``, the mark ``close_when_done()`` leaves.  These functions work on
that deque and nothing else (no socket, no channel), so that the writing
code in ``asynchat`` says only when to write:

* :func:`take` removes the chunks one write may carry (up to a size and a
  buffer count, running a producer at the head);
* :func:`put_back` returns to the head of the queue, in order, what the
  socket did not take of them;
* :class:`simple_producer` is asynchat's producer of a bytes object.
"""

from __future__ import annotations

from typing import Any, Deque, List, Optional, Tuple

__all__ = ["MAX_IOV", "put_back", "simple_producer", "take"]

# sendmsg() takes at most IOV_MAX buffers; stay well below it.
MAX_IOV = 64


def take(fifo: Deque[Any], limit: int, encoding: Optional[str] = None) -> Tuple[List[Any], int, int]:
    """Take the bytes at the head of *fifo*, at most about *limit* of them,
    running a producer found at the head (a str it returns is encoded with
    *encoding* when given, asynchat's use_encoding).

    Returns ``(chunks, size, counted)``: the chunks to write, in order,
    their total size, and how much of it came from bytes-like entries
    (producers' output is not counted in the queue's size).  Stops before
    a ``None`` mark, which stays at the head.
    """
    chunks: List[Any] = []
    size = counted = 0
    while fifo and len(chunks) < MAX_IOV and size < limit:
        first = fifo[0]
        if first is None:
            break
        if first.__class__ is bytes or isinstance(first, (bytearray, memoryview)):
            n = len(first)
            if n:
                chunks.append(first)
                size += n
                counted += n
            fifo.popleft()
            continue
        if chunks:
            break  # a producer waits for the next write: its output is unbounded
        data = first.more()
        if data:
            if isinstance(data, str) and encoding is not None:
                data = bytes(data, encoding)
            chunks.append(data)
            size += len(data)
            break
        fifo.popleft()  # a producer that ran dry
    return chunks, size, counted


def put_back(fifo: Deque[Any], chunks: List[Any], sent: int) -> int:
    """The socket took the first *sent* bytes of *chunks*: put the rest back
    at the head of *fifo*, in order.  Returns the number of bytes put back."""
    unsent = []
    for chunk in chunks:
        if sent >= len(chunk):
            sent -= len(chunk)
            continue
        unsent.append(memoryview(chunk)[sent:] if sent else chunk)
        sent = 0
    fifo.extendleft(reversed(unsent))
    return sum(len(chunk) for chunk in unsent)


class simple_producer:
    """Serve *data* in pieces of *buffer_size* bytes through ``more()``."""

    __module__ = "smtpd_compat.asynchat"  # asynchat.simple_producer, where users meet it

    def __init__(self, data: bytes, buffer_size: int = 512) -> None:
        self.data = data
        self.buffer_size = buffer_size

    def more(self) -> bytes:
        if len(self.data) > self.buffer_size:
            result = self.data[: self.buffer_size]
            self.data = self.data[self.buffer_size :]
            return result
        result = self.data
        self.data = b""
        return result
