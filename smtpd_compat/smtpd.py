"""An RFC 5321 SMTP server with the RFC 1870 SIZE, RFC 6152 8BITMIME and
RFC 6531 SMTPUTF8 extensions: a drop-in for CPython 3.11's ``smtpd``.

Usage: %(program)s [options] [localhost:localport [remotehost:remoteport]]

Options:

    --nosetuid
    -n
        Do not try to switch to the user `nobody'.  Without this option the
        program calls setuid(nobody), which only root may do.

    --version
    -V
        Print the version number and exit.

    --class classname
    -c classname
        The server class to run: DebuggingServer, PureProxy (the default),
        another name defined in this module, or a dotted path such as
        mypackage.mymodule.MyServer.

    --size limit
    -s limit
        Largest message accepted, in bytes, announced through the RFC 1870
        SIZE extension.  Default: 33554432.

    --smtputf8
    -u
        Announce and accept the RFC 6531 SMTPUTF8 extension.

    --debug
    -d
        Print protocol debugging output to stderr.

    --help
    -h
        Print this message and exit.

Version: %(__version__)s

The local address defaults to localhost:8025 and the remote address (used by
PureProxy) to localhost:25.
"""

from __future__ import annotations

import collections  # noqa: F401  (CPython's smtpd namespace had it)
import errno
import logging
import socket
import sys
import time
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from warnings import warn  # noqa: F401  (CPython's smtpd namespace had it)

from . import (
    _auth,
    _delivery,
    _grammar,
    _guard,
    _limits,
    _logging,
    _options,
    _relay,
    _serving,
    _session,
    _tls,
    _transport,
    _views,
    asynchat,
    asyncore,
)
from . import _replies as R
from ._session import Session, State

if _TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy"]

program = sys.argv[0]
__version__ = "Python SMTP proxy version 0.3"

log = logging.getLogger("smtpd_compat")


class Devnull:
    """A stream that discards what is written to it (the default DEBUGSTREAM)."""

    def write(self, msg: str) -> None:
        pass

    def flush(self) -> None:
        pass


DEBUGSTREAM: Any = Devnull()
NEWLINE = "\n"
COMMASPACE = ", "
DATA_SIZE_DEFAULT = 33554432
# Listening backlog: CPython used listen(5), which overflows as soon as a
# handful of clients connect at once; the kernel caps this at somaxconn.
_LISTEN_BACKLOG = 4096


def usage(code: int, msg: Any = "") -> None:
    print(__doc__ % globals(), file=sys.stderr)
    if msg:
        print(msg, file=sys.stderr)
    sys.exit(code)


def _debug(*args: Any) -> None:
    stream = DEBUGSTREAM
    if not isinstance(stream, Devnull):
        print(*args, file=stream)


# socket.getfqdn() may do a DNS round trip; smtpd called it for every
# connection.  It is asked once per socket module (tests swap the module).
_fqdn_memo: Tuple[Any, str] = (None, "")


def _getfqdn() -> str:
    global _fqdn_memo
    module, name = _fqdn_memo
    if module is not socket:
        name = socket.getfqdn()
        _fqdn_memo = (socket, name)
    return name



# The fixed replies that SessionGuard.over_budget() does not count, as bytes.
_QUEUED_AS_IS = {text: data for text, data in R.WIRE.items() if not text.startswith(_limits.ERROR_CODES)}

# Logger.isEnabledFor() is a Python call, asked for every command and reply.
# Its answers are kept in the logger's _cache dict, which logging empties
# whenever a level changes: an answer found there is the same without the call.
_log_cache_get = getattr(log, "_cache", {}).get
_COMMAND, _DATA, _AUTH, _FOREIGN = State.COMMAND, State.DATA, State.AUTH, State.FOREIGN


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

    COMMAND = 0
    DATA = 1

    # verb -> Session rule, for the smtp_<VERB> methods the class keeps (see
    # _verbs_of; computed for each subclass when it is defined).
    _smtp_verbs: Dict[str, Callable[..., Any]] = {}

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
    tls_active = _views.View(lambda self: self._session.tls_active,
                               "Whether the session runs over TLS (after STARTTLS, or SMTPS).")
    auth_login = _views.View(lambda self: self._session.auth_login,
                               "The login the client authenticated as, or None.")

    command_size_limit = 512

    # smtpd's transaction attributes, kept by the session.
    smtp_state = _views.session_view("smtp_state")
    seen_greeting = _views.session_view("seen_greeting")
    extended_smtp = _views.session_view("extended_smtp")
    mailfrom = _views.session_view("mailfrom")
    rcpttos = _views.session_view("rcpttos")
    mail_options = _views.session_view("mail_options")
    rcpt_options = _views.session_view("rcpt_options")
    require_SMTPUTF8 = _views.session_view("require_SMTPUTF8")
    num_bytes = _views.session_view("num_bytes")
    received_lines = _views.session_view("received_lines")
    received_data = _views.session_view("received_data")
    # Each channel has its own (smtpd shared one class-level dict, so one
    # session's EHLO raised the limit for all of them).
    command_size_limits = _views.session_view("command_size_limits")

    @property
    def max_command_size_limit(self) -> int:
        return self._session.max_command_size_limit

    # The channel's Session, made on first use (a subclass may set smtpd's
    # attributes, which are views of the session, before calling
    # SMTPChannel.__init__) and then an ordinary instance attribute.
    _session = _views.Lazy(Session)

    def __init__(
        self,
        server: "SMTPServer",
        conn: Any,
        addr: Any,
        data_size_limit: int = DATA_SIZE_DEFAULT,
        map: Optional[Dict[int, Any]] = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
    ) -> None:
        session = self._session
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
            self._emptystring: Union[str, bytes] = ""
            self._linesep: Union[str, bytes] = "\r\n"
            self._dotsep: Union[str, int] = "."
            self._newline: Union[str, bytes] = NEWLINE
        else:
            self._emptystring = b""
            self._linesep = b"\r\n"
            self._dotsep = ord(b".")
            self._newline = b"\n"
        session.features = _features(server)
        self._set_rset_state()
        session.seen_greeting = ""
        session.extended_smtp = False
        session.command_size_limits.clear()
        self.fqdn = _getfqdn()
        try:
            self.peer = conn.getpeername()
        except OSError as err:
            # The client may already be gone.
            self.close()
            if err.errno != errno.ENOTCONN:
                raise
            return
        _debug("Peer:", repr(self.peer))
        self._guard = _guard.SessionGuard(self, server)
        _serving.sessions(server).add(self)
        if self._ac_transport is not None and self._ac_transport.handshaking:
            self._guard.watch_handshake()  # SMTPS: the greeting waits for it
        self.push(R.GREETING % (self.fqdn, __version__))

    # -- smtpd's state resets ----------------------------------------------------
    def _set_post_data_state(self) -> None:
        """Reset the transaction (envelope and framing) after DATA."""
        self._session.post_data_state()

    def _set_rset_state(self) -> None:
        """Reset everything but the greeting."""
        self._session.rset_state()

    # -- output --------------------------------------------------------------------
    def push(self, msg: str) -> None:  # type: ignore[override]
        """Send the reply line *msg* (a str without line ending)."""
        debug = _log_cache_get(logging.DEBUG)
        if debug or (debug is None and log.isEnabledFor(logging.DEBUG)):
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
            msg = R.TOO_MANY_ERRORS % self.fqdn
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
        server = self.__dict__.get("smtp_server")
        if server is not None:
            _serving.sessions(server).discard(self)
        if self._fileno is not None:
            _logging.log_closed(self)
        super().close()  # async_chat: TLS close_notify, then the socket
        session = self.__dict__.get("_session")
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
            _delivery.deliver(self, session.raw_lines(), DEBUGSTREAM.__class__ is not Devnull)
            _serving.after_data(self)  # a graceful shutdown ends the session here
        elif state is _AUTH:
            pieces = session.raw_lines()
            size, session.num_bytes = session.num_bytes, 0
            # The answer to an AUTH challenge: not a command, never shown.
            session.auth_line(b"".join(pieces), size)
        elif state is _FOREIGN:
            session.confused()
        else:
            session.received_lines = []  # closing, or switching to TLS: ignored

    def _ac_record(self, piece: bytes, size: int = -1) -> None:
        """A line or a message that arrived whole (see async_chat): what
        collect_incoming_data() and found_terminator() would do with it, in
        one call (while the class keeps both hooks).  A command line is
        traced, logged, then dispatched to smtp_<VERB>; found_terminator()
        passes one with its *size* (what was counted of it)."""
        session = self._session
        state = session.state
        if session.received_lines or state is not _COMMAND:
            if state is _DATA and not session.received_lines:
                if piece and self.data_size_limit:
                    session.num_bytes = len(piece)
                _delivery.deliver(self, [piece] if piece else [], DEBUGSTREAM.__class__ is not Devnull)
                _serving.after_data(self)  # a graceful shutdown ends the session here
            else:
                self.collect_incoming_data(piece)
                self.found_terminator()
            return
        tracing = DEBUGSTREAM.__class__ is not Devnull
        session.tracing = tracing
        if tracing:
            shown = _logging.redact_debug_line(piece)
            _debug("Data:", repr(shown.decode("utf-8", "surrogateescape") if self._decode_data else shown))
        debug = _log_cache_get(logging.DEBUG)
        if debug or (debug is None and log.isEnabledFor(logging.DEBUG)):
            _logging.log_command(self, piece)
        serving = getattr(self.smtp_server, "_serving_state", None)
        if serving is not None and serving.closing and _serving.refuse_command(self, piece):
            return  # the server is shutting down: answered 421
        command = session.command_line(piece, size if size >= 0 else len(piece))
        if command is None:
            return
        verb, arg = command
        name = "smtp_" + verb
        handler = self._smtp_verbs.get(verb)
        if handler is not None and name not in self.__dict__:
            handler(session, arg)  # smtp_<VERB> is SMTPChannel's own: the session's rule
            return
        method = getattr(self, name, None)
        if method is None:
            session.unknown(verb)
        else:
            method(arg)

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
        _debug(*args)

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
}


def _verbs_of(cls: type) -> Dict[str, Callable[..., Any]]:
    """The verbs whose smtp_<VERB> *cls* keeps from SMTPChannel: for those,
    a command goes straight to the session's rule (decided once per class)."""
    return {
        verb: rule
        for verb, rule in _SESSION_VERBS.items()
        if getattr(cls, "smtp_" + verb, None) is SMTPChannel.__dict__["smtp_" + verb]
    }


SMTPChannel._smtp_verbs = _verbs_of(SMTPChannel)


def _features(server: Any) -> _session.Features:
    """What *server*'s options offer beyond smtpd, for its sessions."""
    options = _options.of(server)
    auth = server is not None and _tls.auth_enabled(server)
    return _session.Features(
        max_recipients=options.max_recipients,
        starttls=options.tls_context is not None,
        require_starttls=options.require_starttls,
        auth=auth,
        auth_mechanisms=tuple(options.auth_mechanisms),
        auth_require_tls=options.auth_require_tls,
        auth_required=options.auth_required,
        max_auth_failures=options.max_auth_failures,
        ask_mail=_overrides(server, "accept_mail"),
        ask_rcpt=_overrides(server, "accept_rcpt"),
    )


def _overrides(server: Any, name: str) -> bool:
    """Whether *server*'s class has its own SMTPServer method *name*."""
    method = getattr(type(server), name, None)
    return method is not None and method is not getattr(SMTPServer, name)


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


class SMTPServer(_tls.SecureServerMixin, asyncore.dispatcher):
    """Listen on *localaddr* and start a ``channel_class`` per connection.

    Subclasses override :meth:`process_message` to do something with each
    message.  *remoteaddr* is kept for subclasses that relay (PureProxy).
    """

    channel_class = SMTPChannel

    def __init__(
        self,
        localaddr: Tuple[Any, int],
        remoteaddr: Any,
        data_size_limit: int = DATA_SIZE_DEFAULT,
        map: Optional[Dict[int, Any]] = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        **options: Unpack[_options.ServerOptions],
    ) -> None:
        self._apply_options(dict(options))
        self._localaddr = localaddr
        self._remoteaddr = remoteaddr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot be set to True at the same time")
        asyncore.dispatcher.__init__(self, map=map)
        try:
            gai_results = socket.getaddrinfo(*localaddr, type=socket.SOCK_STREAM)
            self.create_socket(gai_results[0][0], gai_results[0][1])
            self.set_reuse_addr()
            self.bind(localaddr)
            self.listen(_LISTEN_BACKLOG)
        except BaseException:
            self.close()
            raise
        else:
            _debug(
                "%s started at %s\n\tLocal addr: %s\n\tRemote addr:%s"
                % (self.__class__.__name__, time.ctime(time.time()), localaddr, remoteaddr)
            )

    def _apply_options(self, options: Dict[str, Any]) -> None:
        """Keep the keyword-only options of the feature modules (_limits,
        _tls, _serving declare them with their defaults) in the server's
        private _options.Options; an unknown keyword is a TypeError, as for
        any function."""
        try:
            values = _options.make(options)
        except TypeError as err:
            raise TypeError("%s() got %s" % (type(self).__name__, err)) from None
        self.__dict__[_options.ATTRIBUTE] = values
        _limits.check_options(values)
        _tls.check_options(values, self)

    # What this package adds to smtpd's SMTPServer are names a subclass
    # written for smtpd may use for its own purposes (self.port = ...).
    # They are views a subclass or an instance may replace, and methods
    # that only delegate; the package itself calls _serving and reads
    # _options, so it works whatever a subclass does with these names.
    address = _views.View(
        _serving.bound_address,
        """``(host, port)`` the server is bound to: the real port when bound
        to port 0, also for IPv6 (no flow info/scope id), and still known
        after the server was closed.""",
    )
    port = _views.View(lambda self: _serving.bound_address(self)[1], "The port the server is bound to.")

    # -- serving API (socketserver style); implemented in _serving ----------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve this server's socket map until :meth:`shutdown` completes.

        Another thread's ``shutdown()`` wakes the loop at once (through the
        loop's wake-up socket); *poll_interval* only bounds one wait.  A
        server that was shut down stays closed: a later call returns at once.
        """
        _serving.serve_forever(self, poll_interval)

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Shut down gracefully and wait until ``serve_forever()`` returns.

        Thread-safe.  New connections are refused; sessions receiving a
        message may finish it (for at most *timeout* seconds, by default
        the ``shutdown_timeout`` option), every other session is answered
        ``421`` and closed.  Called from the loop's own thread, or when no
        ``serve_forever()`` runs, it starts the shutdown without waiting.
        """
        _serving.shutdown(self, timeout)

    def server_close(self) -> None:
        """Close the listening socket and every session of this server now."""
        _serving.server_close(self)

    def __enter__(self) -> "SMTPServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _serving.server_close(self)

    def handle_accept(self) -> None:
        # Take a burst of waiting connections per wake-up, not just one.
        for _ in range(64):
            pair = self.accept()
            if pair is None:
                return
            # max_connections is applied here rather than in handle_accepted(),
            # so that subclasses overriding that one (often without calling
            # it: it only builds the channel) stay bounded too.
            if not _serving.refuse_connection(self, *pair, lambda: R.TOO_MANY_CONNECTIONS % _getfqdn()):
                self.handle_accepted(*pair)
            if not self.accepting:
                return

    def handle_accepted(self, conn: Any, addr: Any) -> None:
        _debug("Incoming connection from %s" % repr(addr))
        _logging.log_connection(self, addr)
        conn = _tls.wrap_accepted(self, conn)  # SMTPS: TLS before the greeting
        if conn is None:
            return
        self.channel_class(
            self,
            conn,
            addr,
            self.data_size_limit,
            self._map,
            self.enable_SMTPUTF8,
            self._decode_data,
        )

    def accept_mail(self, channel: SMTPChannel, address: str, params: List[str]) -> Optional[str]:
        """Decide on the sender of a new transaction; override this to refuse
        some.

        Called once ``MAIL FROM:<address>`` has passed every check of its
        own (syntax, sequence, parameters), with the session's channel
        (``channel.peer``, ``channel.auth_login``...), the *address* as
        ``process_message`` will get it and the upper-cased *params*.
        Return None to accept it (``250 OK``), or the complete reply line
        refusing it, such as ``"550 5.7.1 Sender rejected"``.  Not called
        unless a subclass overrides it, so the default costs nothing.
        """
        return None

    def accept_rcpt(self, channel: SMTPChannel, address: str, params: List[str]) -> Optional[str]:
        """Decide on one recipient; override this to refuse some.

        Called for each ``RCPT TO:<address>`` that has passed every check
        of its own; ``channel.mailfrom`` and ``channel.rcpttos`` (the
        recipients accepted so far) describe the transaction.  Return None
        to accept it (``250 OK``), or the complete reply line refusing it,
        such as ``"550 5.1.1 No such user here"``: the transaction goes on
        with the other recipients.  Not called unless a subclass overrides
        it.
        """
        return None

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Optional[str]:  # noqa: E501
        """Handle one message; override this.

        *peer* is the client's address, *mailfrom* the envelope sender and
        *rcpttos* the list of envelope recipients.  *data* is the message
        with dot-stuffing removed and lines joined by ``\\n``: ``bytes``, or
        ``str`` when the server was created with ``decode_data=True``.

        Unless ``decode_data`` is true, *kwargs* holds ``mail_options`` and
        ``rcpt_options``: the upper-cased parameters of MAIL and of the last
        RCPT, e.g. ``['BODY=8BITMIME', 'SMTPUTF8']``.  An override that does
        not declare ``**kwargs`` is called without them.

        Return None for ``250 OK``, or a full reply line such as
        ``"550 No such user"``.  An exception is answered with a ``451`` and
        logged; the session continues.

        Work that takes time (delivering elsewhere) may run in another
        thread: return a ``concurrent.futures.Future`` whose result is that
        return value.  The session stops reading the client's input and
        answers once the future is done, and the loop keeps serving every
        other session meanwhile.  An exception set on the future is answered
        ``451`` and logged.
        """
        raise NotImplementedError


for _name in _options.names():
    setattr(SMTPServer, _name, _views.option_view(_name))
del _name


class DebuggingServer(SMTPServer):
    """Print each message to stdout instead of delivering it."""

    def _print_message_content(self, peer: Any, data: Union[bytes, str]) -> None:
        inheaders = True
        for line in data.splitlines():
            if inheaders and not line:
                peerheader: str = "X-Peer: " + peer[0]
                if not isinstance(data, str):
                    # Bytes data: print the header as its bytes repr too.
                    peerheader = repr(peerheader.encode("utf-8"))
                print(peerheader)
                inheaders = False
            if not isinstance(data, str):
                line = repr(line)
            print(line)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Optional[str]:
        print("---------- MESSAGE FOLLOWS ----------")
        if kwargs:
            if kwargs.get("mail_options"):
                print("mail options: %s" % kwargs["mail_options"])
            if kwargs.get("rcpt_options"):
                print("rcpt options: %s\n" % kwargs["rcpt_options"])
        self._print_message_content(peer, data)
        print("------------ END MESSAGE ------------")
        try:
            sys.stdout.flush()
        except (AttributeError, OSError, ValueError):
            pass
        return None


class PureProxy(SMTPServer):
    """Relay every message to the SMTP server at *remoteaddr*.

    The client is answered with the upstream server's verdict: ``250`` once
    the upstream server has accepted the message for every recipient, its
    refusal otherwise (naming each refused recipient when only some were
    refused; the message is then relayed to none), ``451`` when it cannot
    be reached.  The message arrives upstream as the client sent it, plus
    an ``X-Peer`` header, with every line end (bare CR and LF included) a
    CRLF.

    The upstream conversation runs in a worker thread (``process_message``
    returns a ``concurrent.futures.Future``), so other sessions are served
    meanwhile.  Subclasses may override ``_deliver()``, which runs in that
    thread.  ``relay_timeout`` (seconds per upstream operation, each 64 KiB
    block of a message being one) and ``relay_workers`` (conversations at
    once) may be set on a subclass or an instance.
    """

    relay_timeout: float = _relay.DEFAULT_TIMEOUT
    relay_workers: int = _relay.DEFAULT_WORKERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("enable_SMTPUTF8"):
            raise ValueError("PureProxy does not support SMTPUTF8.")
        super().__init__(*args, **kwargs)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Any:
        if isinstance(data, str):
            data = _grammar.add_peer_header(data, peer[0])
        else:
            data = _grammar.add_peer_header(data, peer[0])
        return _relay.executor(self).submit(self._relay, mailfrom, list(rcpttos), data)

    def _relay(self, mailfrom: str, rcpttos: List[str], data: Union[bytes, str]) -> Optional[str]:
        """Deliver one message (worker thread); return the client's reply."""
        refused = self._deliver(mailfrom, rcpttos, data)
        if refused:
            _debug("we got some refusals:", refused)
        return _relay.reply_for(refused, rcpttos)

    def _deliver(self, mailfrom: str, rcpttos: List[str], data: Union[bytes, str]) -> Dict[str, Tuple[int, Any]]:
        """Send one message upstream; return the refused recipients as
        ``{address: (code, reply text)}`` (code -1: the upstream server
        could not be reached), as smtpd's PureProxy did.  ``{}`` means it
        was accepted for every recipient."""
        return _relay.deliver(self, mailfrom, rcpttos, data)

    def close(self) -> None:
        super().close()
        _relay.shutdown_executor(self)


class Options:
    """The command line options, as ``parseargs()`` returns them."""

    setuid = True
    classname = "PureProxy"
    size_limit: Optional[int] = None
    enable_SMTPUTF8 = False


def parseargs(argv: Optional[List[str]] = None) -> Options:
    """Parse smtpd's command line (``sys.argv[1:]`` by default).

    Prints usage and exits on an error or ``-h``, as smtpd did; ``-V`` and
    ``--version`` print smtpd's version and exit; ``-d`` sends the
    debugging output to stderr.  The flags are those of ``python -m
    smtpd_compat``, whose extra flags are accepted and left out here.
    """
    # The command line's parser (no cycle: _cli_args imports nothing that
    # imports smtpd).  Imported here, so that serving never loads argparse.
    from . import _cli_args

    try:
        ns = _cli_args.parse_args(sys.argv[1:] if argv is None else argv)
    except _cli_args.UsageError as err:
        usage(1, err)
        raise  # not reached: usage() exits
    if ns.help:
        usage(0)
    if ns.smtpd_version or ns.version:
        print(__version__)
        sys.exit(0)
    if ns.debug:
        # Set as callers set it, on the module object: a global statement
        # would write the module's dict past whatever the module object does
        # with such an assignment.
        this: Any = sys.modules[__name__]
        this.DEBUGSTREAM = sys.stderr
    options = Options()
    for name in ("setuid", "classname", "size_limit", "enable_SMTPUTF8",
                 "localhost", "localport", "remotehost", "remoteport"):
        setattr(options, name, getattr(ns, name))
    return options


if __name__ == "__main__":
    from smtpd_compat._cli import main

    sys.exit(main())
