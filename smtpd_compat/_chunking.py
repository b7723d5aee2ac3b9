"""CHUNKING and BINARYMIME (RFC 3030), behind the option ``chunking``: the
``BDAT`` command, and MAIL's ``BODY=BINARYMIME``.  docs/extensions.md says
what is honoured.

A session of a server with the option is a :class:`ChunkingSession` (its
class chosen when the channel is set up, as ``_extensions`` chooses
``EnhancedSession``), so the default path has no test for it: a server
without the option answers ``BDAT`` with smtpd's ``500 Error: command
"BDAT" not recognized`` (:func:`command`).

``BDAT <size> [LAST]`` is followed by exactly *size* octets, counted, never
searched (the framer takes a byte count as its terminator) nor unstuffed.
The command is decided when its line arrives, so that a chunk too large for
``data_size_limit`` is refused before any of its octets is kept; its octets
are read all the same (and dropped), and the reply, refusal or not, is sent
once they are (section 2: "accept and discard the associated message data
before sending the appropriate 5XX or 4XX code").  A refused BDAT fails the
transaction: it is reset, so the chunks a client pipelined after it are
refused too (``503 need MAIL``) and discarded.

The chunks accepted are kept in :attr:`ChunkingSession.chunks` (the octets
as received, in the pieces the framer handed out); after ``BDAT … LAST``
they go to ``_delivery.deliver()``, the entry point of DATA's messages, and
``process_message()`` gets them joined, exactly as sent (CRLF line ends),
with ``chunked=True`` (False for a DATA message) when it takes that
argument: what PureProxy and MailboxServer go by (``_chunked_mail``).
On a server with ``spool_threshold`` they go to a ``_spool.Spool`` as they
arrive instead (:class:`SpooledChunks`), handed over with
``_delivery.deliver_spool()``: a message sent with BDAT is never held whole
either.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple, Union, cast

from . import _delivery, _extensions, _globals, _serving, _spool
from . import _replies as R
from ._session import Session
from ._state import Event, State

__all__ = ["ChunkingSession", "check_options", "chunk_done", "command", "enable"]

_S_BDAT, _S_COMMAND = State.BDAT, State.COMMAND

log = logging.getLogger("smtpd_compat")


def check_options(options: Any, decode_data: bool) -> None:
    """A BINARYMIME message is any octets: it has no ``str`` form for a
    server with ``decode_data=True`` (whose ``process_message`` would not
    learn of ``BODY`` either, getting no ``mail_options``)."""
    if options.chunking and decode_data:
        raise ValueError("chunking cannot be used with decode_data=True (a BINARYMIME message is not text)")


def parse(arg: Optional[str]) -> Optional[Tuple[int, bool]]:
    """``BDAT``'s argument (RFC 3030 section 2: ``chunk-size [SP "LAST"]``)
    as ``(size, last)``, or None when it is not that."""
    words = arg.split() if arg else []
    if not 1 <= len(words) <= 2:
        return None
    size = words[0]
    if not (size.isascii() and size.isdigit()):
        return None
    if len(words) == 2 and words[1].upper() != "LAST":
        return None
    return int(size), len(words) == 2


class ChunkingSession(Session):
    """A Session whose server has ``chunking``: BDAT, and DATA refused in a
    transaction that used BDAT or announced BINARYMIME (RFC 3030 sections
    2 and 3)."""

    # The transaction's message so far (chunks accepted), its size, and
    # whether a BDAT was accepted in it.
    chunks: Union[List[bytes], SpooledChunks]
    message_size = 0
    chunked = False
    # The chunk being read: its size, whether it is the last one, and the
    # reply refusing it (None: accepted).
    chunk_size = 0
    chunk_last = False
    chunk_refusal: Optional[str] = None

    def collect(self, data: Any) -> None:
        if self.state is _S_BDAT:
            if self.chunk_refusal is None:
                self.chunks.append(data)
            return  # a refused chunk's octets are dropped as they come
        super().collect(data)

    def post_data_state(self) -> None:
        super().post_data_state()
        self._drop_chunks()
        self.message_size = 0
        self.chunked = False

    def message_options(self) -> Dict[str, Any]:
        # chunked: the message is octets as sent, not DATA's form (see
        # _chunked_mail), for a process_message that takes it.
        options = super().message_options()
        options["chunked"] = self.chunked
        return options

    def data(self, arg: Optional[str]) -> None:
        if self.rcpttos:
            refusal = None
            if self.chunked:
                refusal = R.DATA_AFTER_BDAT  # section 2
            elif "BODY=BINARYMIME" in self.mail_options:
                refusal = R.BINARYMIME_NEEDS_BDAT  # section 3
            if refusal is not None:
                # "The resulting state ... is indeterminate": nothing of the
                # transaction is kept, whatever the client does next.
                self.host._set_post_data_state()
                self.host.push(refusal)
                return
        super().data(arg)

    def bdat(self, arg: Optional[str]) -> None:
        """``BDAT <size> [LAST]``: read the chunk's octets next (the reply
        comes once they are read, see :func:`chunk_done`)."""
        host = self.host
        parsed = parse(arg)
        if parsed is None:
            # No size to read: nothing can be discarded, and what follows
            # will be read as commands.  The transaction fails (section 2).
            if self.mailfrom:
                host._set_post_data_state()
            host.push(R.SYNTAX_BDAT)
            return
        size, last = parsed
        refusal = self._refusal(size)
        if refusal is None:
            self.chunked = True
            self.message_size += size
            if self.features.spool_threshold is not None and type(self.chunks) is list:
                self.chunks = SpooledChunks(self.features, getattr(host, "peer", None))
        elif self.mailfrom:
            host._set_post_data_state()  # section 2: the transaction fails
        self.chunk_size, self.chunk_last, self.chunk_refusal = size, last, refusal
        self._move(Event.BDAT)
        if size:
            host.set_terminator(size)

    def _refusal(self, size: int) -> Optional[str]:
        if not self.seen_greeting:
            return R.NEED_HELO
        if not self.mailfrom:
            return R.NEED_MAIL
        if not self.rcpttos:
            return R.NEED_RCPT
        limit = self.host.data_size_limit
        if limit and self.message_size + size > limit:
            return R.SIZE_EXCEEDED  # before any octet of the chunk is kept
        return None

    def chunk_received(self) -> None:
        """The chunk's octets are read and it is not the end of the message:
        answer it."""
        refusal = self.chunk_refusal
        self.chunk_refusal = None
        self._move(Event.CHUNK if refusal is None else Event.REFUSED)
        self.host.set_terminator(b"\r\n")
        self.host.push(R.CHUNK_RECEIVED % self.chunk_size if refusal is None else refusal)

    def end_of_data(self, pieces: List[bytes]) -> Optional[Union[bytes, str]]:
        if self.state is not _S_BDAT:
            return super().end_of_data(pieces)  # DATA's message
        # The size was checked chunk by chunk; the octets are the message.
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self.received_data = data
        self._move(Event.MESSAGE)
        return data

    def take_message(self) -> Any:
        """The chunks of the message (a list, or SpooledChunks), the
        caller's now."""
        chunks, self.chunks = self.chunks, []
        return chunks

    def _drop_chunks(self) -> None:
        chunks, self.chunks = self.chunks, []
        if type(chunks) is SpooledChunks:
            chunks.spool.close()  # a transaction reset before its LAST chunk

    def detach(self) -> None:
        self._drop_chunks()
        super().detach()


_extensions.add_session_class("chunking", ChunkingSession)


class SpooledChunks:
    """``ChunkingSession.chunks`` of a server with ``spool_threshold``: the
    octets of each accepted chunk written to a spool as they arrive (no
    unstuffing: BDAT has no dot-stuffing).  A write that fails (a full
    disk) closes the spool; the message is then answered 452 at its end."""

    def __init__(self, features: Any, peer: Any) -> None:
        self.spool = _spool.Spool(features.spool_threshold or 0, features.spool_dir)
        self.peer = peer

    def append(self, data: Any) -> None:
        spool = self.spool
        if spool.closed:
            return
        try:
            spool.write(bytes(data))
        except OSError as err:
            log.error("spooling a message from %r failed, answering 452: %s", self.peer, err)
            spool.close()

    def __len__(self) -> int:
        return self.spool.size


def _deliver_spooled(channel: Any, session: ChunkingSession, chunks: SpooledChunks) -> None:
    """After ``BDAT … LAST`` on a spooling server: hand the spool over, or
    answer 452 (per recipient in LMTP) when writing it failed."""
    if chunks.spool.closed:
        session._move(Event.REFUSED)
        count = len(session.rcpttos) if session.features.lmtp else 1
        channel._set_post_data_state()
        for _ in range(max(count, 1)):
            session.host.push(R.SPOOL_FAILED)
        return
    session.end_of_data([])  # the phase, and an LMTP session's count of replies
    _delivery.deliver_spool(channel, chunks.spool, _globals.tracing)


def enable(channel: Any, session: Session) -> None:
    """Give *session* (its server has ``chunking``) BDAT: its class, its
    list of chunks, and *channel*'s DATA going to its rule."""
    if channel._decode_data:  # a channel made by hand: see check_options
        raise ValueError("chunking cannot be used with decode_data=True (a BINARYMIME message is not text)")
    if not isinstance(session, ChunkingSession):
        # Made before SMTPChannel.__init__ ran (see _extensions.enable): the
        # same layout, so the object keeps its identity.
        session.__class__ = _extensions.session_class(session.features)
    cast(ChunkingSession, session).chunks = []
    # SMTPChannel dispatches a DATA it keeps straight to Session.data (its
    # class's table): this channel's own table sends it to the rule above.
    verbs = dict(channel._smtp_verbs)
    if "DATA" in verbs:
        verbs["DATA"] = (verbs["DATA"][0], ChunkingSession.data)
        channel._smtp_verbs = verbs


def command(channel: Any, arg: Optional[str]) -> None:
    """``BDAT`` on *channel* (``SMTPChannel.smtp_BDAT``)."""
    session = channel._session
    if not isinstance(session, ChunkingSession):
        session.unknown("BDAT")  # smtpd's reply: no CHUNKING offered
        return
    session.bdat(arg)
    if session.state is _S_BDAT and not session.chunk_size:
        chunk_done(channel)  # BDAT 0: no octet to wait for


def chunk_done(channel: Any) -> None:
    """The octets of *channel*'s chunk are read (``found_terminator`` in
    the BDAT phase): answer it, or hand the message over after LAST."""
    session = channel._session
    if session.chunk_last and session.chunk_refusal is None:
        chunks = session.take_message()
        if type(chunks) is list:
            _delivery.deliver(channel, chunks, _globals.tracing)
        else:
            _deliver_spooled(channel, session, chunks)
        _serving.after_data(channel)  # a graceful shutdown ends the session here
    else:
        session.chunk_received()
