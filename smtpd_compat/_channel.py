"""SMTPChannel: smtpd's session class, an adapter over :class:`_session.Session`.

The channel is what smtpd's users subclass: ``smtp_<VERB>`` methods,
``push(text)``, ``collect_incoming_data()``/``found_terminator()`` and
smtpd's attributes.  It owns none of the protocol's rules: input arrives
from :mod:`asynchat` (framed by ``_framing``), a command goes to the
session (straight to its rule when the class keeps SMTPChannel's
``smtp_<VERB>``, decided once per class), and replies go out through
``push()``.  It also answers what the session asks of its host (the
``_session_*`` methods, see ``_state.Host``) and starts the pieces around
a session: its :class:`_guard.SessionGuard`, its place in the server's
registry (``_serving``), the delivery of a message (``_delivery``).

``smtpd`` re-exports the class; it lives here so that the server module
stays about serving.
"""

from __future__ import annotations

import errno
import logging
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple, Union

from . import (
    _admission,
    _auth,
    _chunking,
    _delivery,
    _extensions,
    _globals,
    _grammar,
    _guard,
    _limits,
    _lmtp,  # noqa: F401  (its session class, for _extensions.session_class)
    _logging,
    _options,
    _serving,
    _session,
    _tls,
    _transport,
    _unix,
    _views,
    asynchat,
)
from . import _replies as R
from ._session import Session, State

__all__ = ["DATA_SIZE_DEFAULT", "NEWLINE", "SMTPChannel"]

NEWLINE = "\n"
DATA_SIZE_DEFAULT = 33554432

log = logging.getLogger("smtpd_compat")

# The fixed replies that SessionGuard.over_budget() does not count, as bytes.
_QUEUED_AS_IS = {text: data for text, data in R.WIRE.items() if not text.startswith(_limits.ERROR_CODES)}

# Logger.isEnabledFor() is a Python call, asked for every command and reply.
# Its answers are kept in the logger's _cache dict, which logging empties
# whenever a level changes: an answer found there is the same without the call.
_log_cache_get = getattr(log, "_cache", {}).get
_DEBUG = logging.DEBUG
_COMMAND, _DATA, _AUTH, _FOREIGN = State.COMMAND, State.DATA, State.AUTH, State.FOREIGN
_BDAT = State.BDAT


def _session_of(channel: Any, cls: Callable[[Any], Session] = Session) -> Session:
    """*channel*'s Session, made on first use (of class *cls*): a subclass
    may set smtpd's attributes (views of the session) before calling
    SMTPChannel.__init__.  Kept as an ordinary instance attribute with no
    class attribute of that name, so that Python 3.11 specialises the
    ``self._session`` reads."""
    session: Optional[Session] = getattr(channel, "_session", None)  # no exception made when absent
    if session is None:
        session = channel._session = cls(channel)
    return session


class SMTPChannel(asynchat.async_chat):
    """One SMTP session with a client: smtpd's API over a :class:`_session.Session`.

    Attributes (as in smtpd): ``smtp_server``, ``conn``, ``addr``,
    ``received_lines``, ``smtp_state`` (``COMMAND`` or ``DATA``),
    ``seen_greeting``, ``mailfrom``, ``rcpttos``, ``received_data``, ``fqdn``,
    ``peer``.  A command ``VERB`` is handled by the method ``smtp_VERB(arg)``;
    subclasses add or override commands by defining such methods and reply
    with ``self.push(text)``.

    The session's state and rules live in ``_session.Session``; the
    attributes above that belong to the transaction are views of it, and
    the ``smtp_<VERB>`` methods call it.  The hooks smtpd called
    (``push``, ``collect_incoming_data``, ``found_terminator``,
    ``_getaddr``, ``_getparams``, ``_set_rset_state``...) are called as
    smtpd called them, so overriding them works as it did.
    """

    __module__ = "smtpd_compat.smtpd"  # where users import it from

    COMMAND = 0
    DATA = 1

    # verb -> (SMTPChannel's smtp_<VERB>, the Session rule it stands for),
    # for the methods the class keeps (see _verbs_of; computed for each
    # subclass when it is defined).
    _smtp_verbs: Dict[str, Tuple[Callable[..., Any], Callable[..., Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._smtp_verbs = _verbs_of(cls)

    # Idle timeouts, error budget, session count (see _limits); None until
    # the channel is set up.
    _guard: Optional[_guard.SessionGuard] = None
    # (Future, its reply_timeout timer) while process_message's reply is awaited.
    _reply_wait: Optional[Tuple[Any, Any]] = None
    # Views that a subclass may replace with attributes of its own (code
    # written for smtpd that did its own TLS or AUTH used such names).
    tls_active = _views.View(lambda self: _session_of(self).tls_active,
                               "Whether the session runs over TLS (after STARTTLS, or SMTPS).")
    auth_login = _views.View(lambda self: _session_of(self).auth_login,
                               "The login the client authenticated as, or None.")

    command_size_limit = 512
    # smtpd's joining and splitting values for bytes input (decode_data
    # false); __init__ sets the str ones on a decoding channel.  Class
    # attributes, not four more per instance: a channel keeps within 29
    # instance attributes, so that its dict shares its keys with the other
    # channels' (CPython 3.11-3.13), which costs a held connection about
    # 1 KiB less and lets 3.11 specialise attribute loads on it.  For the
    # same reason nothing on the way of a command reads ``self.__dict__``
    # (a dict made for it stops that specialisation).  tests/test_hotpaths.py
    # counts the attributes.
    _emptystring: Union[str, bytes] = b""
    _linesep: Union[str, bytes] = b"\r\n"
    _dotsep: Union[str, int] = ord(b".")
    _newline: Union[str, bytes] = b"\n"

    # smtpd's transaction attributes, kept by the session.
    smtp_state = _views.session_view("smtp_state", _session_of)
    seen_greeting = _views.session_view("seen_greeting", _session_of)
    extended_smtp = _views.session_view("extended_smtp", _session_of)
    mailfrom = _views.session_view("mailfrom", _session_of)
    rcpttos = _views.session_view("rcpttos", _session_of)
    mail_options = _views.session_view("mail_options", _session_of)
    rcpt_options = _views.session_view("rcpt_options", _session_of)
    require_SMTPUTF8 = _views.session_view("require_SMTPUTF8", _session_of)
    num_bytes = _views.session_view("num_bytes", _session_of)
    received_lines = _views.session_view("received_lines", _session_of)
    received_data = _views.session_view("received_data", _session_of)
    # Each channel has its own (smtpd shared one class-level dict, so one
    # session's EHLO raised the limit for all of them).
    command_size_limits = _views.session_view("command_size_limits", _session_of)

    # The channel's Session (see _session_of): declared, never a class attribute.
    _session: Session

    @property
    def max_command_size_limit(self) -> int:
        return _session_of(self).max_command_size_limit

    def __init__(
        self,
        server: Any,
        conn: Any,
        addr: Any,
        data_size_limit: int = DATA_SIZE_DEFAULT,
        map: Optional[Dict[int, Any]] = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
    ) -> None:
        features = _features(server)
        # With the extensions that need one, the session is of its class from the start (see _extensions.enable).
        session_class = _extensions.session_class(features)
        session = _session_of(self, session_class)
        asynchat.async_chat.__init__(self, conn, map=map)
        self.smtp_server = server
        self.conn = conn
        self.addr = addr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot be set to True at the same time")
        if decode_data:
            # smtpd's str values; the bytes ones are the class's.
            self._emptystring = ""
            self._linesep = "\r\n"
            self._dotsep = "."
            self._newline = NEWLINE
        session.features = features
        if session_class is not Session:
            _extensions.enable(session)  # (a session made before __init__ ran gets its class here)
        if features.chunking:
            _chunking.enable(self, session)
        self._set_rset_state()
        session.seen_greeting = ""
        session.extended_smtp = False
        session.command_size_limits.clear()
        self.fqdn = _globals.fqdn()
        try:
            self.peer = conn.getpeername()
            if self.peer.__class__ is not tuple:  # a Unix socket's client
                self.peer = _unix.peer(conn, self.peer)
        except OSError as err:
            # The client may already be gone.
            self.close()
            if err.errno != errno.ENOTCONN:
                raise
            return
        _globals.debug("Peer:", repr(self.peer))
        self._guard = _guard.SessionGuard(self, server)
        _serving.sessions(server).add(self)
        if self._ac_transport is not None and self._ac_transport.handshaking:
            self._guard.watch_handshake()  # SMTPS: the greeting waits for it
        self.push(R.GREETING % (self.fqdn, R.SMTPD_VERSION))

    # -- smtpd's state resets ----------------------------------------------------
    def _set_post_data_state(self) -> None:
        """Reset the transaction (envelope and framing) after DATA."""
        try:
            session = self._session
        except AttributeError:  # called before SMTPChannel.__init__
            session = _session_of(self)
        session.post_data_state()

    def _set_rset_state(self) -> None:
        """Reset everything but the greeting."""
        try:
            session = self._session
        except AttributeError:  # called before SMTPChannel.__init__
            session = _session_of(self)
        session.rset_state()

    # -- output --------------------------------------------------------------------
    def push(self, msg: str) -> None:  # type: ignore[override]
        """Send the reply line *msg* (a str without line ending)."""
        debug = _log_cache_get(_DEBUG)
        if debug or (debug is None and log.isEnabledFor(_DEBUG)):
            _logging.log_reply(self, msg)
        data = _QUEUED_AS_IS.get(msg)
        if data is not None and self._ac_batching:
            # A fixed reply that no budget counts, while input is being
            # processed (the usual case): it joins the queue.
            self.producer_fifo.append(data)
            self._ac_out_queued += len(data)
            return
        guard = self._guard
        over_budget = guard is not None and msg.startswith(_limits.ERROR_CODES) and guard.over_budget(msg)
        if over_budget:
            msg = _extensions.own_reply(self._session, R.TOO_MANY_ERRORS % self.fqdn)
        data = R.WIRE.get(msg)
        if data is None:
            line = msg + "\r\n"
            try:
                data = line.encode("utf-8" if self._session.require_SMTPUTF8 else "ascii")
            except UnicodeEncodeError:
                # An echoed argument may hold non-ASCII text; never fail a reply.
                data = line.encode("ascii", "backslashreplace")
        if self._ac_batching:
            # What async_chat.push() does while input is being processed.
            self.producer_fifo.append(data)
            self._ac_out_queued += len(data)
        else:
            asynchat.async_chat.push(self, data)
        if over_budget:
            self.close_when_done()
            self._session.closing()

    def close(self) -> None:
        # Replies pushed before the close go out first (see async_chat.close).
        self._ac_send_held()
        if self._guard is not None:
            self._guard.close()
            # The guard points back at the channel: break the cycle so that a
            # closed session (and the last message it holds) is freed at once,
            # not whenever the cyclic collector next runs.
            self._guard = None
        _delivery.cancel_wait(self)
        server = getattr(self, "smtp_server", None)
        if server is not None:
            _serving.sessions(server).discard(self)
        if self._fileno is not None:
            _logging.log_closed(self)
        super().close()  # async_chat: TLS close_notify, then the socket
        session: Optional[Session] = getattr(self, "_session", None)
        if session is not None:
            session.detach()

    # -- input -----------------------------------------------------------------------
    def collect_incoming_data(self, data: bytes) -> None:
        self._session.collect(data)

    def found_terminator(self) -> None:
        session = self._session
        state = session.state
        if state is _COMMAND:
            pieces = session.raw_lines()
            line = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            size, session.num_bytes = session.num_bytes, 0
            self._ac_record(line, size)
        elif state is _DATA:
            _delivery.deliver(self, session.raw_lines(), _globals.tracing)
            _serving.after_data(self)  # a graceful shutdown ends the session here
        elif state is _AUTH:
            pieces = session.raw_lines()
            size, session.num_bytes = session.num_bytes, 0
            # The answer to an AUTH challenge: not a command, never shown.
            session.auth_line(b"".join(pieces), size)
        elif state is _FOREIGN:
            session.confused()
        elif state is _BDAT:
            _chunking.chunk_done(self)  # a chunk's octets are read
        else:
            session.received_lines = []  # closing, or switching to TLS: ignored

    def _ac_record(self, piece: bytes, size: int = -1) -> None:
        """A line or a message that arrived whole (see async_chat): what
        collect_incoming_data() and found_terminator() would do with it, in
        one call (while the class keeps both hooks).  A command line is
        traced, logged, then dispatched to smtp_<VERB>; found_terminator()
        passes one with its *size* (what was counted of it)."""
        session = self._session
        if session.received_lines or session.state is not _COMMAND:
            self._record_other(piece)
            return
        tracing = session.tracing = _globals.tracing
        if tracing:
            shown = _logging.redact_debug_line(piece)
            _globals.debug("Data:", repr(shown.decode("utf-8", "surrogateescape") if self._decode_data else shown))
        debug = _log_cache_get(_DEBUG)
        if debug or (debug is None and log.isEnabledFor(_DEBUG)):
            _logging.log_command(self, piece)
        serving = getattr(self.smtp_server, "_serving_state", None)
        if serving is not None and serving.closing and _serving.refuse_command(self, piece):
            return  # the server is shutting down: answered 421
        command = session.command_line(piece, size)
        if command is None:
            return
        verb, arg = command
        method = getattr(self, "smtp_" + verb, None)
        if method is None:
            session.unknown(verb)
            return
        own = self._smtp_verbs.get(verb)
        if own is not None and getattr(method, "__func__", None) is own[0]:
            own[1](session, arg)  # smtp_<VERB> is SMTPChannel's own: the session's rule
        else:
            method(arg)  # a subclass's, or one set on the instance

    def _record_other(self, piece: bytes) -> None:
        """_ac_record() of what is not a whole command line: a message that
        arrived whole, or the last piece of a line or message."""
        session = self._session
        if session.state is _DATA and not session.received_lines:
            if piece and self.data_size_limit:
                session.num_bytes = len(piece)
            _delivery.deliver(self, [piece] if piece else [], _globals.tracing)
            _serving.after_data(self)  # a graceful shutdown ends the session here
        else:
            self.collect_incoming_data(piece)
            self.found_terminator()

    # -- what the session asks of its host beyond smtpd (see _session.Host) --------
    def _session_data_started(self) -> None:
        # The CRLF that ended the DATA line counts towards the end of data,
        # so a message may be empty ("DATA", then "." at once).
        self._ac_framer.prefix_seen = _grammar.DATA_START

    def _session_accept(self, verb: str, address: str, params: List[str]) -> Optional[str]:
        server = self.smtp_server
        if verb == "MAIL":
            reply = server.accept_mail(self, address, params)
        else:
            reply = server.accept_rcpt(self, address, params)
        return None if reply is None else str(reply)

    def _session_trace(self, *args: Any) -> None:
        _globals.debug(*args)

    def _session_can_start_tls(self) -> bool:
        return _transport.can_start_tls(self.socket)  # not a test double

    def _session_start_tls(self) -> None:
        context = _options.of(self.smtp_server).tls_context
        assert context is not None  # the session offers STARTTLS only with one
        self._ac_start_tls(context)

    def _session_check(self, credentials: _auth.Credentials) -> None:
        _tls.check_credentials(self, credentials)

    # -- TLS: the handshake (see async_chat) --------------------------------------
    def _ac_tls_starting(self) -> None:
        if self._guard is not None:  # not yet during __init__ (SMTPS: see there)
            self._guard.watch_handshake()

    def _ac_tls_ready(self) -> None:
        if self._guard is not None:
            self._guard.handshake_done()
        self.conn = self.socket
        self._session.tls_started()  # after STARTTLS: RFC 3207's reset

    # -- helpers kept from smtpd for subclasses ----------------------------------
    def _strip_command_keyword(self, keyword: str, arg: str) -> str:
        return _grammar.strip_keyword(keyword, arg)

    def _getaddr(self, arg: Optional[str]) -> Tuple[str, str]:
        if not arg:
            return "", ""
        try:
            return _grammar.parse_path(arg)
        except _grammar.AddressError:
            return "", ""

    def _getparams(self, params: List[str]) -> Optional[Dict[str, Union[str, bool]]]:
        return _grammar.parse_params(params)

    # -- SMTP and ESMTP commands (the session implements them) -------------------
    def smtp_HELO(self, arg: Optional[str]) -> None:
        self._session.helo(arg)

    def smtp_EHLO(self, arg: Optional[str]) -> None:
        self._session.ehlo(arg)

    def smtp_NOOP(self, arg: Optional[str]) -> None:
        self._session.noop(arg)

    def smtp_QUIT(self, arg: Optional[str]) -> None:
        self._session.quit(arg)

    def smtp_HELP(self, arg: Optional[str]) -> None:
        self._session.help(arg)

    def smtp_VRFY(self, arg: Optional[str]) -> None:
        self._session.vrfy(arg)

    def smtp_MAIL(self, arg: Optional[str]) -> None:
        self._session.mail(arg)

    def smtp_RCPT(self, arg: Optional[str]) -> None:
        self._session.rcpt(arg)

    def smtp_RSET(self, arg: Optional[str]) -> None:
        self._session.rset(arg)

    def smtp_DATA(self, arg: Optional[str]) -> None:
        self._session.data(arg)

    def smtp_EXPN(self, arg: Optional[str]) -> None:
        self._session.expn(arg)

    def smtp_STARTTLS(self, arg: Optional[str]) -> None:
        """Switch the session to TLS (RFC 3207), when the server offers it."""
        self._session.starttls(arg)

    def smtp_AUTH(self, arg: Optional[str]) -> None:
        """Authenticate (RFC 4954), when the server offers it."""
        self._session.auth(arg)

    def smtp_BDAT(self, arg: Optional[str]) -> None:
        """Send a chunk of the message (RFC 3030), when the server offers CHUNKING."""
        _chunking.command(self, arg)

    def smtp_LHLO(self, arg: Optional[str]) -> None:
        """LMTP's greeting (RFC 2033), on a server with ``lmtp``; elsewhere
        an unknown command, as in smtpd."""
        _lhlo(self._session, arg)


def _lhlo(session: Session, arg: Optional[str]) -> None:
    lhlo = getattr(session, "lhlo", None)  # an LMTPSession's
    if lhlo is None:
        session.unknown("LHLO")
    else:
        lhlo(arg)


# The commands the session implements, by verb: SMTPChannel.smtp_<VERB>
# calls Session.<method>.
_SESSION_VERBS = {
    "HELO": Session.helo,
    "EHLO": Session.ehlo,
    "NOOP": Session.noop,
    "QUIT": Session.quit,
    "HELP": Session.help,
    "VRFY": Session.vrfy,
    "MAIL": Session.mail,
    "RCPT": Session.rcpt,
    "RSET": Session.rset,
    "DATA": Session.data,
    "EXPN": Session.expn,
    "STARTTLS": Session.starttls,
    "AUTH": Session.auth,
    "LHLO": _lhlo,
}


def _verbs_of(cls: type) -> Dict[str, Tuple[Callable[..., Any], Callable[..., Any]]]:
    """The verbs whose smtp_<VERB> *cls* keeps from SMTPChannel, each with
    that method and the session's rule it stands for (decided once per
    class): a command whose method is still that one goes straight to the
    rule."""
    return {
        verb: (SMTPChannel.__dict__["smtp_" + verb], rule)
        for verb, rule in _SESSION_VERBS.items()
        if getattr(cls, "smtp_" + verb, None) is SMTPChannel.__dict__["smtp_" + verb]
    }


SMTPChannel._smtp_verbs = _verbs_of(SMTPChannel)


def _features(server: Any) -> _session.Features:
    """What *server*'s options offer beyond smtpd, for its sessions."""
    options = _options.of(server)
    auth = server is not None and _tls.auth_enabled(server)
    # The accept_mail/accept_rcpt hooks its class overrides (SMTPServer's
    # __init_subclass__ notes them), asked only then.
    hooks: FrozenSet[str] = getattr(server, "_overridden_hooks", frozenset())
    return _session.Features(
        max_recipients=options.max_recipients,
        starttls=options.tls_context is not None,
        require_starttls=options.require_starttls,
        auth=auth,
        auth_mechanisms=tuple(options.auth_mechanisms),
        auth_require_tls=options.auth_require_tls,
        auth_required=options.auth_required,
        max_auth_failures=options.max_auth_failures,
        ask_mail="accept_mail" in hooks,
        ask_rcpt="accept_rcpt" in hooks,
        pipelining=options.pipelining,
        enhanced_status_codes=options.enhanced_status_codes,
        requiretls=options.requiretls,
        received_header=options.add_received_header,
        chunking=options.chunking,
        dsn=options.dsn,
        lmtp=options.lmtp,
        spool_threshold=options.spool_threshold,
        spool_dir=options.spool_dir,
        auth_throttle=_admission.auth_throttle(server),
    )


for _old, _new in (
    ("server", "smtp_server"),
    ("line", "received_lines"),
    ("state", "smtp_state"),
    ("greeting", "seen_greeting"),
    ("mailfrom", "mailfrom"),
    ("rcpttos", "rcpttos"),
    ("data", "received_data"),
    ("fqdn", "fqdn"),
    ("peer", "peer"),
    ("conn", "conn"),
    ("addr", "addr"),
):
    setattr(SMTPChannel, "_SMTPChannel__" + _old, _views.deprecated_alias(_old, _new))
del _old, _new
