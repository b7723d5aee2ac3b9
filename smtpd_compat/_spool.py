"""Messages bigger than memory: the spool a message is written to as it
arrives, and the incremental forms of dot-unstuffing and dot-stuffing.

With the server option ``spool_threshold`` (bytes; None, the default, keeps
smtpd's in-memory path untouched) a session is a :class:`SpoolingSession`:
each piece of message text the framer hands out during ``DATA`` is
unstuffed at once (:class:`Unstuffer`) and written to a :class:`Spool`,
which keeps up to the threshold in memory and the rest in an anonymous
temporary file.  Nothing of the message is kept in ``received_lines``.
``_delivery.deliver_spooled()`` then hands the spool to
``process_message_stream()`` as a file, or loads it for ``process_message()``.

:class:`Spool` knows nothing of SMTP: ``write(bytes)`` in, ``size``,
``getvalue()``, ``reader()`` (a binary file from the start), ``close()``.
``BDAT`` chunks (RFC 3030) can be written to one as they are, with no
unstuffing.

:class:`Unstuffer` gives exactly what ``_grammar.unstuff_chunks()`` gives
for the whole message, however the message is split into pieces;
:class:`Stuffer` exactly what ``_relay.wire_data()`` gives (the hypothesis
tests in ``tests/test_spool.py`` hold both to that).
"""

from __future__ import annotations

import codecs
import io
import logging
import os
import tempfile
import threading
from typing import Any, BinaryIO, Iterable, Iterator, List, Optional, Tuple, cast

from . import _replies as R
from ._session import Session
from ._state import E_REFUSED, S_DATA

log = logging.getLogger("smtpd_compat")

__all__ = ["Spool", "SpoolingSession", "Stuffer", "Unstuffer", "check_options", "open_spools"]

_CRLF = b"\r\n"
# Bytes read or copied at a time from a spool on disk.
BLOCK = 1 << 16
# Bytes asked for by each read from the client once its message is past
# the threshold (asynchat asks for 64 KiB): a big message then takes a
# quarter of the steps (reads, spool writes, wake-ups of a relay worker).
BULK_READ = 1 << 18

# How many spools are open in this process (tests: none is left behind).
# A spool may be closed on another thread (a Future's done-callback).
_open = [0]
_open_lock = threading.Lock()


def open_spools() -> int:
    """The number of spools of this process not closed yet."""
    return _open[0]


def _count(change: int) -> None:
    with _open_lock:
        _open[0] += change


def check_options(options: Any) -> None:
    """``spool_threshold``: None or a number of bytes (an int >= 0);
    ``spool_dir``: None or an existing directory (checked when the server
    is created, not at the first big message)."""
    threshold = options.spool_threshold
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int):
            raise TypeError("spool_threshold must be None or an int (bytes), not %r" % (threshold,))
        if threshold < 0:
            raise ValueError("spool_threshold must be >= 0, not %d" % threshold)
    directory = options.spool_dir
    if directory is not None:
        directory = options.spool_dir = os.fspath(directory)
        if not os.path.isdir(directory):
            raise ValueError("spool_dir=%r is not a directory" % (directory,))


class Spool:
    """A message's bytes: in memory up to *threshold* bytes, then in an
    anonymous temporary file (in *directory*, or :func:`tempfile.gettempdir`).

    The file has no name once created (``tempfile.TemporaryFile``), so the
    system reclaims it when it is closed or the process dies.  Methods:
    :meth:`write`, :meth:`getvalue`, :meth:`reader`, :meth:`close`; ``size``
    is the number of bytes written, ``on_disk`` whether the file exists.
    """

    def __init__(self, threshold: int, directory: Optional[str] = None) -> None:
        self.threshold = threshold
        self.directory = directory
        self.size = 0
        self._memory: Optional[bytearray] = bytearray()
        self._file: Optional[io.BufferedRandom] = None
        self.closed = False
        _count(1)

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def write(self, data: bytes) -> None:
        """Append *data*."""
        if not data:
            return
        self.size += len(data)
        memory = self._memory
        if memory is not None:
            if self.size <= self.threshold:
                memory += data
                return
            self._file = tempfile.TemporaryFile(dir=self.directory)
            self._file.write(memory)
            self._memory = None
        assert self._file is not None, "write() to a closed Spool"
        self._file.write(data)

    def getvalue(self) -> bytes:
        """Everything written, as one bytes object."""
        if self._memory is not None:
            return bytes(self._memory)
        assert self._file is not None, "getvalue() of a closed Spool"
        self._file.seek(0)
        return self._file.read()

    def chunks(self, size: int = BLOCK) -> Iterator[bytes]:
        """What was written, *size* bytes at a time, from the start."""
        reader = self.reader()
        block = reader.read(size)
        while block:
            yield block
            block = reader.read(size)

    def reader(self, prefix: bytes = b"") -> BinaryIO:
        """A binary file reading *prefix* then what was written, from the
        start (readable and seekable; valid until :meth:`close`)."""
        if self._file is not None:
            self._file.flush()
        return cast(BinaryIO, io.BufferedReader(_Reader(self, prefix), BLOCK))

    def is_utf8(self) -> bool:
        """Whether what was written is valid UTF-8 (read through once)."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            for block in self.chunks():
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
        return True

    def share(self) -> int:
        """A new descriptor of the file (on disk only), for another thread to
        read what is written with ``os.pread()`` while it grows (see
        _cut_through); the caller closes it.  Written data is flushed."""
        assert self._file is not None, "share() of a Spool in memory"
        self._file.flush()
        return os.dup(self._file.fileno())

    def flush(self) -> None:
        """Make what was written readable through a :meth:`share` descriptor."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Free the memory and remove the file (again: no effect)."""
        if self.closed:
            return
        self.closed = True
        _count(-1)
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Reader(io.RawIOBase):
    """The raw file under :meth:`Spool.reader`: *prefix*, then the spool."""

    def __init__(self, spool: Spool, prefix: bytes) -> None:
        super().__init__()
        self._spool = spool
        self._prefix = prefix
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _length(self) -> int:
        return len(self._prefix) + self._spool.size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = (0, self._pos, self._length())[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        pos, head = self._pos, len(self._prefix)
        if pos < head:
            n = min(len(view), head - pos)
            view[:n] = self._prefix[pos : pos + n]
        else:
            n = self._read_spool(view, pos - head)
        self._pos += n
        return n

    def _read_spool(self, view: memoryview, offset: int) -> int:
        spool = self._spool
        if spool.closed:
            raise ValueError("I/O operation on a closed spool")
        memory = spool._memory
        if memory is not None:
            part = memory[offset : offset + len(view)]
            view[: len(part)] = part
            return len(part)
        assert spool._file is not None
        spool._file.seek(offset)
        return spool._file.readinto(view) or 0


class Unstuffer:
    """Dot-unstuffing and CRLF to LF, piece by piece (RFC 5321 4.5.2, as
    smtpd did it: each line's one leading dot removed, lines joined by
    ``\\n``; a bare CR or LF is message text).

    :meth:`feed` takes the raw message text (after ``DATA``'s line, before
    ``<CRLF>.<CRLF>``) in pieces split anywhere, and returns what is
    certain of the result so far; :meth:`finish` the rest.  A CR, or a CRLF,
    at the end of a piece is held until the next one shows whether a dot
    follows.  The message is treated as if it followed a CRLF (so its first
    line's dot goes too); that CRLF's LF is dropped from the first output.
    """

    __slots__ = ("_held", "_first")

    def __init__(self) -> None:
        self._held = _CRLF
        self._first = True

    def feed(self, piece: bytes) -> bytes:
        if not piece:
            return b""
        text = self._held + piece
        if text[-1:] == b"\r":
            cut = len(text) - 1
        elif text[-2:] == _CRLF:
            cut = len(text) - 2
        else:
            cut = len(text)
        self._held = text[cut:]
        return self._convert(text[:cut])

    def finish(self) -> bytes:
        """The end of the message: what was held back."""
        held, self._held = self._held, b""
        return self._convert(held)

    def held(self) -> bytes:
        """The raw text fed but not given out yet (a CR or a CRLF)."""
        return self._held

    def stop(self) -> bytes:
        """Give up unstuffing here: the raw text held, which :meth:`finish`
        will no longer give."""
        held, self._held = self._held, b""
        self._first = False
        return held

    def _convert(self, text: bytes) -> bytes:
        if not text:
            return b""
        # sep.join(text.split(old)) is text.replace(old, sep), at about
        # two thirds of the cost where the matches are many (a CRLF every
        # line): the one per-byte pass of a message on this path.
        text = b"\n".join(_CRLF.join(text.split(b"\r\n.")).split(_CRLF))
        if self._first:
            self._first = False
            text = text[1:]  # the LF of the CRLF the message is taken to follow
        return text


class Stuffer:
    """``_relay.wire_data()`` piece by piece: LF-separated text in (as
    process_message takes it), DATA's wire form out (every line end CRLF, a
    bare CR too, lines starting with a dot stuffed).  :meth:`finish` adds
    the rest and ``<CRLF>.<CRLF>``."""

    __slots__ = ("_held", "_line_start")

    def __init__(self) -> None:
        self._held = b""
        self._line_start = True

    def feed(self, piece: bytes) -> bytes:
        if not piece:
            return b""
        text = self._held + piece
        if text[-1:] == b"\r":  # perhaps the CR of a CRLF: wait for the next byte
            self._held, text = b"\r", text[:-1]
        else:
            self._held = b""
        return self._convert(text)

    def finish(self) -> bytes:
        held, self._held = self._held, b""
        return self._convert(held) + b"\r\n.\r\n"

    def _normalise(self, text: bytes) -> Tuple[bytes, int]:
        """*text* with its line ends LF, and 1 if its first line is to be
        stuffed (0 otherwise)."""
        if b"\r" in text:
            text = text.replace(_CRLF, b"\n").replace(b"\r", b"\n")
        lead = 1 if self._line_start and text[:1] == b"." else 0
        self._line_start = text[-1:] == b"\n"
        return text, lead

    def _convert(self, text: bytes) -> bytes:
        if not text:
            return b""
        text, lead = self._normalise(text)
        # (split and join: see Unstuffer._convert)
        text = _CRLF.join(b"\n..".join(text.split(b"\n.")).split(b"\n"))
        return b"." + text if lead else text

    def size(self, pieces: Iterable[bytes]) -> int:
        """The length of ``b"".join(self.wire(pieces))``, without making it."""
        total = 0
        for piece in pieces:
            text = self._held + piece
            self._held = b"\r" if text[-1:] == b"\r" else b""
            total += self._size(text[:-1] if self._held else text)
        held, self._held = self._held, b""
        return total + self._size(held) + 5  # <CRLF>.<CRLF>

    def _size(self, text: bytes) -> int:
        if not text:
            return 0
        text, lead = self._normalise(text)
        return len(text) + lead + text.count(b"\n.") + text.count(b"\n")

    def wire(self, pieces: Iterable[bytes]) -> Iterator[bytes]:
        """The wire form of all *pieces*, ``<CRLF>.<CRLF>`` included."""
        for piece in pieces:
            out = self.feed(piece)
            if out:
                yield out
        yield self.finish()


class SpoolingSession(Session):
    """A Session whose server has ``spool_threshold``: message text goes to
    a :class:`Spool` as it arrives, unstuffed, instead of into
    ``received_lines``.  Its host is the channel (``_delivery`` takes the
    spool with :meth:`end_of_spool`)."""

    # The message being received, its unstuffer, the raw bytes counted.
    spool: Optional[Spool] = None
    unstuffer: Optional[Unstuffer] = None
    spooled_raw = 0
    # What reads the spool while it grows, from when it went to disk: the
    # server's _follow_spool() made it (PureProxy's relay, see
    # _cut_through); told of each write (grew), of the end (finish) or of
    # the message's abandonment (abort).
    follower: Any = None
    # The follower takes the rest of the message as it comes (raw), not
    # unstuffed (see _cut_through.Follower.grew).
    raw = False

    def collect(self, data: Any) -> None:
        if self.state is not S_DATA:
            super().collect(data)
            return
        spool = self.spool
        if spool is None:
            spool = self._new_spool()
        limit = self.host.data_size_limit
        if limit and self.spooled_raw > limit:
            self.drop_follower()
            return  # over the limit: store nothing more (answered 552 at the end)
        self.spooled_raw += len(data)
        assert self.unstuffer is not None
        if spool.closed:
            return  # the spool failed: count, store nothing (answered 452 at the end)
        self._write(spool, bytes(data) if self.raw else self.unstuffer.feed(bytes(data)))

    def _write(self, spool: Spool, text: bytes) -> None:
        on_disk = spool.on_disk
        try:
            spool.write(text)
        except OSError as err:
            self._failed(spool, err)
            return
        if self.follower is not None:
            if self.follower.grew(spool, text, self.unstuffer) and not self.raw:
                # From here the spool holds the text as the client sent it.
                assert self.unstuffer is not None
                self.raw = True
                self._write(spool, self.unstuffer.stop())
        elif spool.on_disk and not on_disk:
            # Past the threshold: the server may read the message from now on.
            channel = self._channel()
            channel._ac_read_size = BULK_READ
            follow = getattr(getattr(channel, "smtp_server", None), "_follow_spool", None)
            self.follower = follow(channel, self, spool) if follow is not None else None

    def _channel(self) -> Any:
        return getattr(self.host, "_wrapped_channel", self.host)  # (an EnhancingHost's)

    def _small_reads(self) -> None:
        """The big message is over: reads are asynchat's size again."""
        channel = self._channel()
        if getattr(channel, "_ac_read_size", 0):
            channel._ac_read_size = 0

    def _failed(self, spool: Spool, err: OSError) -> None:
        """Writing *spool* failed (a full disk): the message is read to its
        end and answered 452, and the server goes on."""
        log.error("spooling a message from %r failed, answering 452: %s", getattr(self.host, "peer", None), err)
        spool.close()

    def _new_spool(self) -> Spool:
        self.drop_spool()
        self.spool = spool = Spool(self.features.spool_threshold or 0, self.features.spool_dir)
        self.unstuffer = Unstuffer()
        self.spooled_raw = 0
        self.raw = False
        return spool

    def end_of_spool(self, pieces: List[bytes]) -> Optional[Spool]:
        """The message is complete (*pieces*: raw text not collected yet):
        its spool, now the caller's to close, or None when it was refused
        here (too large, or not UTF-8 with decode_data) and answered."""
        for piece in pieces:
            self.collect(piece)
        self._small_reads()
        spool = self.spool if self.spool is not None else self._new_spool()
        assert self.unstuffer is not None
        if not spool.closed:
            self._write(spool, self.unstuffer.finish())
        self.spool = self.unstuffer = None
        self.num_bytes = self.spooled_raw  # what Session.end_of_data checks against the limit
        limit = self.host.data_size_limit
        if spool.closed and not (limit and self.num_bytes > limit):
            self.drop_follower()
            self.host._set_post_data_state()
            self._move_if(S_DATA, E_REFUSED)
            self.host.push(R.SPOOL_FAILED)
            return None
        if self.host._decode_data and not (limit and self.num_bytes > limit) and not spool.is_utf8():
            self.drop_follower()
            spool.close()
            self.end_of_data([b"\xff"])  # refused as the in-memory path refuses it: 554
            return None
        if self.end_of_data([]) is None:
            self.drop_follower()
            spool.close()
            return None
        return spool

    def drop_spool(self) -> None:
        """Close the spool of a message not handed over (the session ended)."""
        self.drop_follower()
        spool, self.spool = self.spool, None
        if spool is not None:
            self._small_reads()
            spool.close()

    def drop_follower(self) -> None:
        """The message will not be handed over: its follower abandons it."""
        follower, self.follower = self.follower, None
        if follower is not None:
            follower.abort()

    def detach(self) -> None:
        self.drop_spool()
        super().detach()
