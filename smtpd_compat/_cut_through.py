"""PureProxy relaying a big message while it arrives (cut-through).

With ``spool_threshold``, a message sent with ``DATA`` goes to a spool
(_spool).  Store and forward would relay it once it is complete, so the
client's wait is receiving plus relaying.  Here the relay starts as soon
as the spool goes to disk (the message has passed the threshold): a relay
worker (_relay's thread pool) opens the upstream transaction and sends
what the spool holds, then what is added to it, while the rest arrives.

* Below the threshold nothing changes: such a message is relayed once
  complete, as before (no upstream session for a message that may turn
  out small, and ``SIZE=``/``BODY=`` from the content itself).  Only the
  spool's file is shared between the threads, never its memory part.
* The loop thread (the receiver) writes the spool as before and tells the
  :class:`Follower` how far it is written (:meth:`Follower.grew`); the
  worker reads the file with ``os.pread()`` on a descriptor of its own,
  in blocks of at most :data:`_READ` bytes.  An upstream slower than the
  client leaves the difference in the spool file, never in memory: the
  receiver never waits for the worker, and the worker holds one block.
* What the upstream server receives is what store and forward sends
  (``Received:`` header first when asked, the ``X-Peer`` header before the
  first empty line, CRLF line ends, dot-stuffing; see
  :func:`_relay.with_peer_header`).
  Past the first empty line the session spools the client's text as sent,
  and it goes on unconverted while its line ends are CRLF
  (:class:`RawCheck`, :class:`RawWire`): byte for byte the same from a
  client that stuffs its dot lines, the same stored message from one that
  does not.  ``MAIL``'s parameters are decided before the
  content is known: ``SIZE=`` is the client's declared size plus the
  added headers (none when the client declared none), and ``BODY=8BITMIME``
  is sent when the client declared it (store and forward looks at the
  content).  ``SMTPUTF8``, ``REQUIRETLS`` and the DSN parameters as ever.
* The reply to the client's end of data is still the upstream server's
  verdict (_relay.reply_for): the client waits at its end of data for the
  upstream's reply to ours.  A refusal of ``MAIL`` or ``RCPT`` ends the
  upstream session early; the client learns of it at its end of data, as
  with store and forward.  A message abandoned by its client (it
  disconnects, the session times out) or refused here (over
  ``data_size_limit``, not UTF-8 with ``decode_data``, a full disk) has
  its upstream connection closed before our end of data: the upstream
  server discards an unfinished transaction (RFC 5321 section 3.3), and
  nothing is delivered.
* Only the stock relay: a class that overrides ``process_message``,
  ``process_message_stream``, ``_deliver`` or ``_relay`` gets its hook
  called as before (:func:`stock`, decided once per class).  Messages sent
  with ``BDAT`` are not followed (store and forward).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple, Type, cast

from . import _options, _received, _relay, _spool

log = logging.getLogger("smtpd_compat")

# Bytes read from the spool at a time by the worker (more than _relay's
# 64 KiB block, to spend less per block on a fast upstream; still small).
_READ = 1 << 18
# The hooks a subclass may override to see or change what is relayed.
_HOOKS = ("process_message", "process_message_stream", "_deliver", "_relay")

_RECEIVING, _ENDED, _ABANDONED = "receiving", "ended", "abandoned"


class Abandoned(OSError):
    """The client's message will not be complete: the relay stops where
    it is, and the upstream connection is closed (see _relay.deliver)."""


_STOCK: Dict[Type[Any], bool] = {}


def stock(cls: Type[Any], base: Type[Any]) -> bool:
    """Whether the server class *cls* relays as *base* (PureProxy) does:
    none of the hooks overridden.  Decided once per class."""
    known = _STOCK.get(cls)
    if known is None:
        known = _STOCK[cls] = all(getattr(cls, name) is getattr(base, name) for name in _HOOKS)
    return known


def follow(server: Any, channel: Any, session: Any, spool: _spool.Spool, base: Type[Any]) -> Optional["Follower"]:
    """The spool of *session*'s message went to disk: start relaying it
    (worker thread) and return its Follower, or None when *server*'s class
    is not the stock relay or the message came by BDAT."""
    if not stock(type(server), base) or getattr(session, "chunked", False):
        return None
    decode = channel._decode_data
    head: Any = "" if decode else b""
    if session.features.received_header:
        head = _received.prepend(channel, session, head, time.time())
    options = session.message_options()
    mail_options: Sequence[str] = options.get("mail_options") or ()
    rcpttos = list(session.rcpttos)
    needs = _relay.needs_of(session.mailfrom, rcpttos, mail_options, options.get("dsn"))
    try:
        follower = Follower(spool, head.encode("utf-8") if decode else head)
    except OSError as err:  # no descriptor to spare (EMFILE): relayed once complete
        log.warning("relaying a message from %r once complete: %s", channel.peer, err)
        return None
    payload = CutPayload(follower, channel.peer[0], mail_options, _options.of(server).reply_timeout)
    # A client silent for that long mid-message gives up its relay (451).
    payload.wait_timeout = getattr(server, "relay_timeout", _relay.DEFAULT_TIMEOUT)
    follower.future = _relay.executor(server).submit(_run, server, follower, session.mailfrom, rcpttos, payload, needs)
    follower.future.add_done_callback(lambda _: follower.close())  # (also when cancelled before it ran)
    return follower


def _run(server: Any, follower: "Follower", mailfrom: str, rcpttos: List[str], payload: "CutPayload",
         needs: _relay.Needs) -> Optional[str]:
    """The worker: relay as PureProxy._relay does, unless already abandoned."""
    if follower.state is _ABANDONED:
        return None  # nobody will read this reply
    return cast(Optional[str], server._relay(mailfrom, rcpttos, payload, needs))


class Follower:
    """The growing spool as the relay worker sees it: how much of it is
    written, where the client's raw text starts in it, and whether the
    message is complete or abandoned.  The loop thread calls :meth:`grew`,
    :meth:`finish` or :meth:`abort`; the worker reads :meth:`pieces`."""

    future: "concurrent.futures.Future[Optional[str]]"

    def __init__(self, spool: _spool.Spool, head: bytes) -> None:
        self.fd: Optional[int] = spool.share()
        self.head = head
        self.written = spool.size
        # Where the spool stops holding unstuffed text and holds the text
        # as the client sent it (None: not yet): see grew().
        self.raw_from: Optional[int] = None
        self.check = RawCheck()
        self.state = _RECEIVING
        self.ended_at = 0.0
        self._cond = threading.Condition(threading.Lock())
        # The text's last byte so far, and whether it has its first empty line.
        try:
            self._last, self._blank = _scan(self.fd, spool.size, head)
        except OSError:
            self.close()
            raise

    # -- the loop thread --
    def grew(self, spool: _spool.Spool, text: bytes, unstuffer: Optional[_spool.Unstuffer]) -> bool:
        """*text* was written to *spool* (unstuffed by *unstuffer*).  True
        when the session is to write the rest of the message raw, as the
        client sends it: once the text has its first empty line (the
        ``X-Peer`` header's place) and stops in the middle of a line where
        the client's text does too: right before a CRLF (held by the
        unstuffer, the next thing written raw), after anything but a CR; or
        with nothing held, after anything but a CR or LF (an LF may stand
        for a CRLF whose next dot was taken).  The worker then passes on the
        client's dot-stuffing and line ends instead of undoing and redoing
        them: each raw piece is checked here (:class:`RawCheck`), where the
        loop thread waits for the client anyway, and a CR at its end is not
        shown to the worker until the next piece has been checked."""
        spool.flush()
        switch = False
        if self.raw_from is not None:
            self.check.feed(spool.size - len(text), text)
        elif unstuffer is not None:
            if text:
                self._blank = self._blank or (self._last + text).find(b"\n\n") >= 0
                self._last = text[-1:]
            held = unstuffer.held()
            switch = self._blank and self._last not in (b"", b"\r") and (
                held == b"\r\n" or held == b"" and self._last != b"\n")
        with self._cond:
            if switch:
                self.raw_from = spool.size
            self.written = spool.size - len(self.check.held)
            self._cond.notify()
        return switch

    def finish(self, spool: _spool.Spool) -> "concurrent.futures.Future[Optional[str]]":
        """The message is complete and accepted here: the worker sends the
        rest and its end.  Closes *spool*; returns the Future of the reply."""
        spool.flush()
        self.check.finish(spool.size)
        with self._cond:
            self.written = spool.size
            self.state = _ENDED
            self.ended_at = time.monotonic()
            self._cond.notify()
        spool.close()  # the worker reads its own descriptor
        return self.future

    def abort(self) -> None:
        with self._cond:
            if self.state is _RECEIVING:
                self.state = _ABANDONED
                self._cond.notify()

    def size_with_header(self, spool: _spool.Spool) -> int:
        # (Past raw_from the spool holds the client's stuffed text: a few
        # bytes more than the message; this size is the log's.)
        return len(self.head) + spool.size

    # -- the worker --
    def pieces(self, timeout: Optional[float], raw: bool = False) -> Iterator[bytes]:
        """The unstuffed text (head first), as it is written, to its end or
        to raw_from; with *raw*, the raw text from raw_from to the end.
        Raises Abandoned, or socket.timeout when nothing is written for
        *timeout* seconds."""
        if self.head and not raw:
            yield self.head
        offset = self.raw_from if raw else 0
        assert offset is not None
        while True:
            written, raw_from = self._wait(offset, timeout)
            end = written if raw or raw_from is None else raw_from
            if offset >= end:
                return
            while offset < end:
                assert self.fd is not None
                block = os.pread(self.fd, min(_READ, end - offset), offset)
                if not block:
                    raise OSError("the spool is shorter than written")
                offset += len(block)
                yield block

    def _wait(self, offset: int, timeout: Optional[float]) -> Tuple[int, Optional[int]]:
        """How far the spool is written once past *offset* (or complete),
        and raw_from."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.written > offset or self.state is not _RECEIVING, timeout):
                raise socket.timeout("nothing more of the message from the client in %ss" % timeout)
            if self.state is _ABANDONED:
                raise Abandoned("the client's message was abandoned before its end")
            return self.written, self.raw_from

    def close(self) -> None:
        """The worker is done: its descriptor is closed."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


def _scan(fd: int, size: int, head: bytes) -> Tuple[bytes, bool]:
    """The last byte of *head* and the first *size* bytes of the file
    *fd*, and whether they hold an empty line (or start with one)."""
    last, blank = head[-1:], head[:1] == b"\n" or b"\n\n" in head
    offset = 0
    while offset < size and not blank:
        block = os.pread(fd, min(_spool.BLOCK, size - offset), offset)
        if not block:
            break
        blank = (last + block).find(b"\n\n") >= 0 or (not last and block[:1] == b"\n")
        last, offset = block[-1:], offset + len(block)
    if offset < size:
        last = os.pread(fd, 1, size - 1)
    return last, blank


class RawCheck:
    """Which part of the raw text (the client's, past raw_from) can go on
    as it is: up to :attr:`slow_from` (None: all of it so far), checked
    piece by piece as it is written (loop thread).

    A client that ends its lines as RFC 5321 says has made DATA's wire
    form already: a piece passes when every CR and LF in it is in a CRLF
    (three counts, no copy).  A CR at the end of a piece is :attr:`held`
    until the next piece shows whether an LF follows.  From the first piece
    that fails (a bare CR or LF) to the end, the worker converts the text
    (:class:`RawWire`), as Stuffer would have made it.

    The client's dot-stuffing is passed on unchecked: a line starting with
    one dot that is not stuffing (a client that forgot to stuff) loses that
    dot at the upstream server as it would here (RFC 5321 4.5.2), so the
    upstream server stores the same message either way; a line of one dot
    cannot occur inside the text (it would have ended it).
    """

    def __init__(self) -> None:
        self.held = b""
        self.slow_from: Optional[int] = None

    def feed(self, offset: int, text: bytes) -> None:
        """*text* was written at *offset*."""
        if self.slow_from is not None or not text:
            return
        if self.held:
            text, offset = self.held + text, offset - len(self.held)
        cut = len(text) - 1 if text[-1:] == b"\r" else len(text)
        crlf = text.count(b"\r\n", 0, cut)
        if text.count(b"\n", 0, cut) == crlf == text.count(b"\r", 0, cut):
            self.held = text[cut:]
        else:
            self.slow_from, self.held = offset, b""

    def finish(self, end: int) -> None:
        """The text ends at *end*: a CR held there is a bare one."""
        if self.slow_from is None and self.held:
            self.slow_from = end - len(self.held)
        self.held = b""


class RawWire:
    """The raw text from *start* in DATA's wire form (worker thread): as
    it is before the RawCheck's slow_from, unstuffed and stuffed again
    from there (starting in the middle of a line, as it does)."""

    def __init__(self, start: int) -> None:
        self.pos = start
        self._slow: Optional[Tuple[_spool.Unstuffer, _spool.Stuffer]] = None

    def feed(self, block: bytes, slow_from: Optional[int]) -> bytes:
        pos = self.pos
        self.pos += len(block)
        head = b""
        if self._slow is None:
            if slow_from is None or self.pos <= slow_from:
                return block
            head, block = block[: slow_from - pos], block[slow_from - pos :]
            self._slow = _mid_line()
        unstuffer, stuffer = self._slow
        return head + stuffer.feed(unstuffer.feed(block))

    def finish(self) -> bytes:
        """The rest, and the end of data."""
        if self._slow is None:
            return b"\r\n.\r\n"
        unstuffer, stuffer = self._slow
        return stuffer.feed(unstuffer.finish()) + stuffer.finish()


def _mid_line() -> Tuple[_spool.Unstuffer, _spool.Stuffer]:
    """An unstuffer and a stuffer for text that starts in the middle of a line."""
    unstuffer, stuffer = _spool.Unstuffer(), _spool.Stuffer()
    unstuffer.stop()
    stuffer._line_start = False
    return unstuffer, stuffer


class CutPayload(_relay.StreamPayload):
    """The DATA payload of a message still arriving: what StreamPayload
    gives for the complete spool, made as the spool grows."""

    def __init__(self, follower: Follower, peer_host: str, mail_options: Sequence[str],
                 reply_timeout: Optional[float]) -> None:
        super().__init__(cast(BinaryIO, None), peer_host)
        self.follower = follower
        self.reply_timeout = reply_timeout
        self.wait_timeout: Optional[float] = None
        self.declared = _declared_size(mail_options)
        self.eight_bit = any(option.upper() == "BODY=8BITMIME" for option in mail_options)

    def blocks(self) -> Iterator[bytes]:
        follower, stuffer = self.follower, _spool.Stuffer()
        for piece in _relay.with_peer_header(follower.pieces(self.wait_timeout), self.header):
            out = stuffer.feed(piece)
            if out:
                yield out
        if follower.raw_from is None:
            yield stuffer.finish()
            return
        # The text stopped in the middle of a line, with nothing held (see
        # Follower.grew): the raw text follows on from there.
        assert follower.raw_from is not None
        wire = RawWire(follower.raw_from)
        for piece in follower.pieces(self.wait_timeout, raw=True):
            out = wire.feed(piece, follower.check.slow_from)  # (set before the piece was shown)
            if out:
                yield out
        yield wire.finish()

    def size_param(self) -> Optional[int]:
        if self.declared is None:
            return None
        # The client's estimate, and what is added (RFC 1870: an estimate).
        return self.declared + len(self.follower.head) + len(self.header) + 2

    def isascii(self) -> bool:
        return not self.eight_bit

    def __len__(self) -> int:
        return self.size_param() or 0

    def deadline(self, default: Optional[float]) -> Optional[float]:
        # reply_timeout counts from the client's end of data, not from the
        # start of the relay (the client is still sending before it).
        if self.reply_timeout is None or self.follower.state is not _ENDED:
            return None
        return self.follower.ended_at + self.reply_timeout


def _declared_size(mail_options: Sequence[str]) -> Optional[int]:
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None
