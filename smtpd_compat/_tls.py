"""STARTTLS (RFC 3207), implicit TLS (RFC 8314) and AUTH (RFC 4954) on the selectors loop.

Everything is opt-in through keyword-only ``SMTPServer`` options (the
``DEFAULTS`` table below); with none of them the channel behaves, and its
EHLO reply reads, exactly as CPython's smtpd.

:class:`SecureChannelMixin` is a base class of ``SMTPChannel``.  It gives the
channel a small TLS state machine below the SMTP framing:

``plain``
    an ordinary connection;
``flushing``
    ``220 Ready to start TLS`` was queued: input is no longer read (the next
    bytes are the client's TLS handshake) and whatever the client pipelined
    after ``STARTTLS`` has been dropped; once the reply is sent the socket is
    wrapped with ``ssl`` (``do_handshake_on_connect=False``);
``handshaking``
    ``do_handshake()`` is driven by read/write events, a timer bounds how
    long it may take; replies queued meanwhile (the SMTPS greeting) wait;
``active``
    TLS is up: ``recv``/``send`` go through the ``SSLSocket``, whose "want
    read"/"want write" conditions become read/write interest, and decrypted
    bytes held inside the ``SSLSocket`` (``pending()``, invisible to the
    selector) are picked up through the reactor's ``read_again()``.

It also implements ``smtp_STARTTLS`` and ``smtp_AUTH`` as ordinary
``smtp_<VERB>`` methods that subclasses may override, and the hooks
``SMTPChannel`` calls for EHLO keywords, MAIL refusal and ``process_message``
keyword arguments.  The SASL mechanics (base64, PLAIN and LOGIN) are in the
pure module ``_auth``.

:class:`SecureServerMixin` is a base class of ``SMTPServer``: its
:meth:`~SecureServerMixin.authenticate` is the override point deciding
whether a login and password are right.

:func:`relay_client` and :func:`secure_relay_session` are the client side,
for PureProxy's upstream connection (``_relay.connect``): STARTTLS or SMTPS
with a verified certificate, then AUTH.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import logging
import smtplib
import socket as _socket
import ssl
from errno import EAGAIN
from typing import Any, Callable, Dict, List, Optional

from . import _options, _reactor, asynchat, asyncore
from . import _replies as R
from ._auth import MECHANISMS, AuthExchange, Credentials, PasswordFile, check_in_worker
from ._protocol import ReplyError

log = logging.getLogger("smtpd_compat")

# Keyword-only options this module adds to SMTPServer(...), with defaults
# (kept in the server's _options.Options).
DEFAULTS: Dict[str, Any] = {
    # An ssl.SSLContext (server side): offer STARTTLS with it.
    "tls_context": None,
    # Refuse MAIL with 530 until the session has switched to TLS.
    "require_starttls": False,
    # An ssl.SSLContext: every accepted connection speaks TLS from its first
    # byte (SMTPS, RFC 8314); the greeting follows the handshake.
    "implicit_tls_context": None,
    # Seconds a client may take to complete a TLS handshake (None: no bound).
    "tls_handshake_timeout": 30.0,
    # callable(server, channel, mechanism, login, password) -> bool; AUTH is
    # offered when this is set or the server class overrides authenticate().
    "authenticator": None,
    # Offer and accept AUTH only over TLS (passwords are sent in clear).
    "auth_require_tls": True,
    # Refuse MAIL with 530 until the client has authenticated.
    "auth_required": False,
    # SASL mechanisms offered, in EHLO order.
    "auth_mechanisms": MECHANISMS,
    # Wrong passwords allowed per session; the next is answered 421 and the
    # connection closed (None or 0: no limit).
    "max_auth_failures": 3,
    # PureProxy's connection to its upstream server (see _relay): None, or
    # "starttls" / "smtps" to relay over TLS ...
    "relay_tls": None,
    # ... verified with this client ssl.SSLContext (None: the system's CAs
    # and the upstream host name, ssl.create_default_context()) ...
    "relay_tls_context": None,
    # ... and (login, password) to authenticate with there, over TLS only.
    "relay_auth": None,
}

_options.register(__name__, DEFAULTS)

RELAY_TLS_MODES = ("starttls", "smtps")

# RFC 4954 section 4: an AUTH command line may be up to 12288 octets, so that
# an initial response of reasonable size fits; the same bound applies to
# each response line of the exchange.
AUTH_LINE_LIMIT = 12288

_PLAIN = "plain"
_FLUSHING = "flushing"
_HANDSHAKING = "handshaking"
_ACTIVE = "active"

_READ = _reactor.EVENT_READ
_WRITE = _reactor.EVENT_WRITE


# -- server side ---------------------------------------------------------------------
def check_options(options: Any, server: Any) -> None:
    """Reject inconsistent TLS/AUTH *options* when *server* is created."""
    for name in ("tls_context", "implicit_tls_context"):
        value = getattr(options, name)
        if value is not None and not isinstance(value, ssl.SSLContext):
            raise TypeError("%s must be an ssl.SSLContext, not %s" % (name, type(value).__name__))
    if options.require_starttls and options.tls_context is None and options.implicit_tls_context is None:
        raise ValueError("require_starttls needs tls_context (the certificate to offer STARTTLS with)")
    mechanisms = tuple(m.upper() for m in options.auth_mechanisms)
    unknown = [m for m in mechanisms if m not in MECHANISMS]
    if unknown:
        raise ValueError("unsupported auth_mechanisms %s (supported: %s)" % (", ".join(unknown), ", ".join(MECHANISMS)))
    options.auth_mechanisms = mechanisms
    if options.authenticator is not None and not callable(options.authenticator):
        raise TypeError("authenticator must be callable(server, channel, mechanism, login, password)")
    if auth_enabled(server):
        if not mechanisms:
            raise ValueError("auth_mechanisms is empty: no way to authenticate")
        if options.auth_require_tls and options.tls_context is None and options.implicit_tls_context is None:
            raise ValueError(
                "AUTH is only offered over TLS: give tls_context or implicit_tls_context, "
                "or auth_require_tls=False to accept passwords in clear"
            )
    elif options.auth_required:
        raise ValueError("auth_required needs an authenticator (or an authenticate() override)")
    if options.relay_tls not in (None,) + RELAY_TLS_MODES:
        raise ValueError("relay_tls must be None, 'starttls' or 'smtps', not %r" % (options.relay_tls,))
    if options.relay_tls_context is not None and not isinstance(options.relay_tls_context, ssl.SSLContext):
        raise TypeError("relay_tls_context must be an ssl.SSLContext")
    if options.relay_auth is not None:
        auth = options.relay_auth
        if not (isinstance(auth, (tuple, list)) and len(auth) == 2 and all(isinstance(x, str) and x for x in auth)):
            raise TypeError("relay_auth must be a (login, password) pair of non-empty strings")
        if options.relay_tls is None:
            raise ValueError("relay_auth would send the password in clear: set relay_tls to 'starttls' or 'smtps'")


def auth_enabled(server: Any) -> bool:
    """Whether *server* offers AUTH: it has an ``authenticator``, or its
    class overrides :meth:`SecureServerMixin.authenticate`."""
    if _options.of(server).authenticator is not None:
        return True
    return _overrides_authenticate(type(server))


@functools.lru_cache(maxsize=None)
def _overrides_authenticate(cls: type) -> bool:
    """Whether *cls* overrides authenticate() with this package's meaning.

    A server written for the standard library may have a method of that
    name for its own AUTH code, with another signature: it must not turn
    this package's AUTH on.  Only an override that takes ``(channel,
    mechanism, login, password)`` counts.
    """
    method = getattr(cls, "authenticate", None)
    if method is None or method is SecureServerMixin.authenticate:
        return False
    try:
        inspect.signature(method).bind(None, None, None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (a builtin): assume ours
        return True
    return True


def wrap_accepted(server: Any, conn: Any) -> Optional[Any]:
    """The socket a new channel should use: *conn* itself, or for SMTPS an
    ``SSLSocket`` whose handshake the channel will drive.  None if it could
    not be wrapped (the connection is then closed)."""
    context = _options.of(server).implicit_tls_context
    if context is None:
        return conn
    try:
        conn.setblocking(False)
        return context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
    except (OSError, ValueError) as err:
        log.warning("cannot start TLS on an accepted connection: %s", err)
        conn.close()
        return None


# -- PureProxy's upstream connection -----------------------------------------------------
def _relay_context(server: Any) -> ssl.SSLContext:
    context = _options.of(server).relay_tls_context
    return context if context is not None else ssl.create_default_context()


def relay_client(server: Any, **kwargs: Any) -> smtplib.SMTP:
    """An unconnected ``smtplib`` client for *server*'s upstream: ``SMTP_SSL``
    when ``relay_tls="smtps"``, ``SMTP`` otherwise (*kwargs* go to it)."""
    if _options.of(server).relay_tls == "smtps":
        conn: smtplib.SMTP = smtplib.SMTP_SSL(context=_relay_context(server), **kwargs)
    else:
        conn = smtplib.SMTP(**kwargs)
    # smtplib checks the certificate against (and sends as SNI) the host
    # given to its constructor, which would also connect; the relay connects
    # later, so name the host now.
    conn._host = server._remoteaddr[0]
    return conn


class RelaySecurityError(smtplib.SMTPException):
    """The upstream session could not be secured or authenticated as
    configured.  It carries no SMTP code on purpose: the relay answers its
    client with a temporary failure (the fix is on our side, the client
    should keep the message and retry)."""


def secure_relay_session(server: Any, conn: smtplib.SMTP) -> None:
    """After the upstream EHLO: STARTTLS (and EHLO again), then AUTH, as
    *server*'s ``relay_tls`` and ``relay_auth`` ask.  Raises
    RelaySecurityError (or OSError) when that is impossible; never sends a
    password over an unencrypted connection."""
    mode = _options.of(server).relay_tls
    if mode == "starttls":
        if not conn.has_extn("starttls"):
            raise RelaySecurityError("the upstream server does not offer STARTTLS")
        try:
            code, text = conn.starttls(context=_relay_context(server))
        except smtplib.SMTPResponseException as err:
            raise RelaySecurityError("upstream STARTTLS refused: %d %s" % (err.smtp_code, _reply_text(err.smtp_error))) from None
        conn.ehlo()
    auth = _options.of(server).relay_auth
    if auth is None:
        return
    if mode is None or not isinstance(conn.sock, ssl.SSLSocket):
        raise RelaySecurityError("refusing to send the upstream password without TLS")
    login, password = auth
    try:
        conn.login(login, password)
    except smtplib.SMTPNotSupportedError:
        raise RelaySecurityError("the upstream server does not offer AUTH") from None
    except smtplib.SMTPException as err:
        # The password is in neither the message nor the traceback.
        code = getattr(err, "smtp_code", None)
        reply = _reply_text(getattr(err, "smtp_error", "")) if code else str(err)
        raise RelaySecurityError("upstream AUTH as %r failed: %s %s" % (login, code or "", reply)) from None


def _reply_text(text: Any) -> str:
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("ascii", "replace")
    return str(text)


class SecureServerMixin:
    """``SMTPServer``'s part of AUTH: the decision on credentials."""

    def authenticate(self, channel: Any, mechanism: str, login: str, password: str) -> bool:
        """Return whether *login*/*password* may use this server.

        *channel* is the ``SMTPChannel`` of the session (``channel.peer``,
        ``channel.tls_active``); *mechanism* is ``"PLAIN"`` or ``"LOGIN"``.
        The default asks the ``authenticator`` option; a subclass may
        override this method instead (AUTH is then offered).  An exception
        is answered ``454`` (temporary failure) and logged.
        """
        authenticator = _options.of(self).authenticator
        if authenticator is None:
            return False
        return bool(authenticator(self, channel, mechanism, login, password))


# -- channel side --------------------------------------------------------------------
class SecureChannelMixin(asynchat.async_chat):
    """``SMTPChannel``'s TLS transport, ``STARTTLS`` and ``AUTH``.

    Attributes: ``tls_active`` (the session is encrypted), ``auth_login``
    (the authenticated login, or None).  Commands: ``smtp_STARTTLS``,
    ``smtp_AUTH``; override them like any other ``smtp_<VERB>`` method.
    """

    # Class-level defaults: SMTPChannel.__init__ does not call this class's
    # __init__, and most sessions never leave the plain state.
    _tls_phase = _PLAIN
    _tls_implicit = False
    _tls_want = 0  # what do_handshake() waits for: _READ or _WRITE
    _tls_read_needs_write = False
    _tls_write_needs_read = False
    _tls_timer: Optional[_reactor.TimerHandle] = None
    # The AUTH exchange waiting for the client's next line: while it is set,
    # that line is a SASL response, not a command.
    _sasl: Optional[AuthExchange] = None
    _auth_failures = 0
    _auth_login: Optional[str] = None

    # Views that a subclass may replace with attributes of its own (code
    # written for smtpd that did its own TLS or AUTH used such names);
    # the package itself reads _tls_phase and _auth_login.
    tls_active = _options.View(lambda self: self._tls_phase == _ACTIVE,
                               "Whether the session runs over TLS (after STARTTLS, or SMTPS).")
    auth_login = _options.View(lambda self: self._auth_login,
                               "The login the client authenticated as, or None.")

    def _security_option(self, name: str) -> Any:
        # The server may be a stand-in without options (tests build
        # channels around all kinds of objects): of() gives the defaults.
        return getattr(_options.of(getattr(self, "smtp_server", None)), name)

    # -- hooks called by SMTPChannel ------------------------------------------------
    def _security_ehlo_keywords(self) -> List[str]:
        keywords = []
        if self._tls_phase == _PLAIN and self._security_option("tls_context") is not None:
            keywords.append(R.EHLO_STARTTLS)
        if self._auth_offered():
            keywords.append(R.EHLO_AUTH % " ".join(self._security_option("auth_mechanisms")))
            # Like SIZE raising the MAIL limit: AUTH lines may be long.
            self.command_size_limits["AUTH"] = AUTH_LINE_LIMIT
        return keywords

    def _security_refuse_mail(self) -> Optional[str]:
        options = _options.of(getattr(self, "smtp_server", None))
        if options.require_starttls and self._tls_phase != _ACTIVE:
            return R.STARTTLS_REQUIRED
        if options.auth_required and self._auth_login is None:
            return R.AUTH_REQUIRED
        return None

    def _security_message_options(self) -> Dict[str, Any]:
        server = getattr(self, "smtp_server", None)  # _auth_enabled(), inlined (per message)
        if server is not None and auth_enabled(server):
            return {"auth_login": self._auth_login}
        return {}

    # -- STARTTLS ---------------------------------------------------------------------
    def smtp_STARTTLS(self, arg: Optional[str]) -> None:
        """Switch the session to TLS (RFC 3207)."""
        if self._tls_phase != _PLAIN:
            self.push(R.TLS_ALREADY_ACTIVE)
            return
        if self._security_option("tls_context") is None:
            # Not configured: the reply smtpd gave to any unknown command.
            self.push(R.UNKNOWN_COMMAND % "STARTTLS")
            return
        if arg:
            self.push(R.SYNTAX_STARTTLS)
            return
        if not self.seen_greeting:
            self.push(R.NEED_HELO)
            return
        if not isinstance(self.socket, _socket.socket):
            self.push(R.TLS_NOT_AVAILABLE)  # not a real socket: nothing to wrap
            return
        self._tls_phase = _FLUSHING
        # What the client pipelined after STARTTLS was sent in clear before
        # the handshake: it must never be read as if it came over TLS.
        # Closed input makes the framing drop the rest of this read, and
        # nothing more is read until the socket is wrapped.
        self._ac_input_closed = True
        self.received_lines = []
        self._interest_changed()
        # The clock runs from here: a client that does not read the 220
        # is bounded as well as one that stalls in the handshake.
        self._arm_handshake_timer()
        self.push(R.READY_TLS)

    def _tls_wrap(self) -> None:
        """The 220 is out: put TLS under the session and wait for the handshake."""
        context = self._security_option("tls_context")
        try:
            tls_socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as err:
            log.warning("STARTTLS with %r failed: %s", getattr(self, "peer", None), err)
            self.handle_close()
            return
        # Same descriptor, so the socket map entry stays valid.
        self.socket = tls_socket
        self.conn = tls_socket
        self._ac_framer.clear()
        self._begin_handshake(implicit=False)

    def _begin_handshake(self, implicit: bool) -> None:
        self._tls_phase = _HANDSHAKING
        self._tls_implicit = implicit
        self._tls_want = _READ  # the client speaks first in TLS
        self._interest_changed()
        if implicit:
            # The server is not known yet when the socket is set (see
            # set_socket); read the timeout once the channel is built.
            _reactor.reactor_for(self._map).call_later(0, self._arm_handshake_timer)

    def _arm_handshake_timer(self) -> None:
        timeout = self._security_option("tls_handshake_timeout")
        if timeout and self._tls_phase in (_FLUSHING, _HANDSHAKING) and self._fileno is not None:
            self._tls_timer = _reactor.reactor_for(self._map).call_later(timeout, self._handshake_timed_out)

    def _handshake_timed_out(self) -> None:
        self._tls_timer = None
        if self._tls_phase in (_FLUSHING, _HANDSHAKING) and self._fileno is not None:
            log.info("TLS handshake with %r timed out", getattr(self, "peer", None))
            self.handle_close()

    def _handshake_step(self) -> None:
        try:
            self.socket.do_handshake()
        except ssl.SSLWantReadError:
            want = _READ
        except ssl.SSLWantWriteError:
            want = _WRITE
        except (OSError, ValueError) as err:
            # A client that is not speaking TLS, or disagrees on versions or
            # ciphers, or went away; not the server's error.
            log.info("TLS handshake with %r failed: %s", getattr(self, "peer", None), err)
            self.handle_close()
            return
        else:
            self._handshake_done()
            return
        if want != self._tls_want:
            self._tls_want = want
            self._interest_changed()

    def _handshake_done(self) -> None:
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        self._tls_phase = _ACTIVE
        self._tls_want = 0
        if not self._tls_implicit:
            self._reset_after_starttls()
        self._interest_changed()
        # SMTPS: the greeting queued at connection time goes out now.
        self.initiate_send()
        # The client's first command may already sit in the TLS buffers.
        self._read_again()

    def _reset_after_starttls(self) -> None:
        # RFC 3207 section 4.2: forget everything learnt from the client
        # before TLS (its EHLO, any envelope, any authentication).
        self.seen_greeting = ""
        self.extended_smtp = False
        self._set_rset_state()
        self.mail_options = []
        self.rcpt_options = []
        self.command_size_limits.clear()
        self._auth_login = None
        self._sasl = None
        if None not in self.producer_fifo:
            self._ac_input_closed = False

    # -- the TLS transport ---------------------------------------------------------------
    def set_socket(self, sock: Any, map: Optional[dict] = None) -> None:
        super().set_socket(sock, map)
        # A server-side SSLSocket that has not been through its handshake
        # (SMTPS, see wrap_accepted): do it in the loop before anything is
        # sent.  version() is None until the handshake has completed.
        if isinstance(sock, ssl.SSLSocket) and sock.server_side and sock.version() is None:
            self._begin_handshake(implicit=True)

    def readable(self) -> bool:
        phase = self._tls_phase
        if phase == _PLAIN:
            return super().readable()
        if phase == _HANDSHAKING:
            return self._tls_want == _READ
        if phase == _FLUSHING:
            return False
        if self._tls_write_needs_read:
            return True
        if self._tls_read_needs_write:
            return False  # the socket may be readable, but TLS must write first
        return super().readable()

    def writable(self) -> bool:
        phase = self._tls_phase
        if phase == _HANDSHAKING:
            return self._tls_want == _WRITE
        if phase == _ACTIVE:
            if self._tls_read_needs_write:
                return True
            if self._tls_write_needs_read:
                return False  # the socket may be writable, but TLS must read first
        return super().writable()

    def handle_read_event(self) -> None:
        phase = self._tls_phase
        if phase == _PLAIN:
            super().handle_read_event()
        elif phase == _HANDSHAKING:
            self._handshake_step()
        elif phase == _ACTIVE:
            if self._tls_write_needs_read:
                self._tls_write_needs_read = False
                self._interest_changed()
                self.initiate_send()
                if self._fileno is None:
                    return
            if super().readable():
                super().handle_read_event()
        # _FLUSHING: nothing is read until the socket is wrapped.

    def handle_write_event(self) -> None:
        phase = self._tls_phase
        if phase == _HANDSHAKING:
            self._handshake_step()
            return
        if phase == _ACTIVE and self._tls_read_needs_write:
            self._tls_read_needs_write = False
            self._interest_changed()
            self.handle_read()
            if self._fileno is None:
                return
        super().handle_write_event()

    def initiate_send(self) -> None:
        phase = self._tls_phase
        if phase == _HANDSHAKING:
            return  # replies wait for the handshake (the SMTPS greeting)
        if self._tls_write_needs_read:
            return  # TLS must read first; the next read event retries
        super().initiate_send()
        if phase == _FLUSHING and not self.producer_fifo and self._fileno is not None:
            self._tls_wrap()

    def recv(self, buffer_size: int) -> bytes:
        if self._tls_phase != _ACTIVE:
            return super().recv(buffer_size)
        sock = self.socket
        chunks = []
        total = 0
        # One SSL read returns at most one TLS record (16 KiB): read until
        # the buffer size or until TLS has nothing more.
        while total < buffer_size:
            try:
                data = sock.recv(buffer_size - total)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self._tls_read_needs_write = True
                self._interest_changed()
                break
            except (OSError, ValueError) as err:
                log.info("TLS connection with %r failed: %s", getattr(self, "peer", None), err)
                self.handle_close()
                return b""
            if not data:
                if chunks:
                    break  # deliver what came before the end; it is seen again next time
                self.handle_close()
                return b""
            chunks.append(data)
            total += len(data)
        if not chunks:
            raise BlockingIOError(EAGAIN, "no application data yet")
        if total >= buffer_size and sock.pending():
            # Decrypted bytes left inside the SSLSocket: the selector will
            # not report them, so ask the loop for another read.
            self._read_again()
        return b"".join(chunks)

    def send(self, data: bytes) -> int:
        if self._tls_phase != _ACTIVE:
            return super().send(data)
        try:
            return self.socket.send(data)
        except ssl.SSLWantWriteError:
            return 0
        except ssl.SSLWantReadError:
            self._tls_write_needs_read = True
            self._interest_changed()
            return 0
        except (OSError, ValueError) as err:
            log.info("TLS connection with %r failed: %s", getattr(self, "peer", None), err)
            self.handle_close()
            return 0

    def _interest_changed(self) -> None:
        super()._interest_changed()
        # Reading resumed (after a pause) with decrypted input still inside
        # the SSLSocket: no read event would announce it.
        if self._tls_phase == _ACTIVE and self._fileno is not None:
            try:
                pending = self.socket.pending()
            except (OSError, ValueError):
                pending = 0
            if pending:
                self._read_again()

    def _read_again(self) -> None:
        reactor = _reactor.reactor_for(self._map, create=False)
        if reactor is not None and self._fileno is not None:
            reactor.read_again(self._fileno)

    def close(self) -> None:
        self._ac_send_held()  # before close_notify, not after (async_chat.close)
        if self._tls_timer is not None:
            self._tls_timer.cancel()
            self._tls_timer = None
        if self._tls_phase == _ACTIVE and self._fileno is not None:
            self._tls_phase = _PLAIN
            # Send our close_notify (best effort, never waiting for the
            # client's): clients tell a clean end from a truncation by it.
            try:
                self.socket.unwrap()
            except (OSError, ValueError):
                pass
        super().close()

    # -- AUTH (RFC 4954) ----------------------------------------------------------------
    def _auth_enabled(self) -> bool:
        server = getattr(self, "smtp_server", None)
        return server is not None and auth_enabled(server)

    def _auth_offered(self) -> bool:
        return self._auth_enabled() and (self._tls_phase == _ACTIVE or not self._security_option("auth_require_tls"))

    def smtp_AUTH(self, arg: Optional[str]) -> None:
        """Authenticate with SASL PLAIN or LOGIN (RFC 4954)."""
        if not self._auth_enabled():
            # Not configured: the reply smtpd gave to any unknown command.
            self.push(R.UNKNOWN_COMMAND % "AUTH")
            return
        if not self.extended_smtp:
            self.push(R.NEED_EHLO)
            return
        if self._auth_login is not None:
            self.push(R.AUTH_ALREADY)
            return
        if self.mailfrom:
            self.push(R.AUTH_IN_TRANSACTION)
            return
        words = arg.split() if arg else []
        if not 1 <= len(words) <= 2:
            self.push(R.SYNTAX_AUTH)
            return
        mechanism = words[0].upper()
        if mechanism not in self._security_option("auth_mechanisms"):
            self.push(R.AUTH_UNKNOWN_MECHANISM)
            return
        if self._tls_phase != _ACTIVE and self._security_option("auth_require_tls"):
            self.push(R.AUTH_ENCRYPTION_REQUIRED)
            return
        exchange = AuthExchange(mechanism, words[1] if len(words) == 2 else None)
        self._auth_step(exchange, exchange.start)

    def _auth_response(self, line: bytes, size: int) -> None:
        """A line answering an AUTH challenge (called instead of a command)."""
        exchange = self._sasl
        assert exchange is not None
        if size > self.max_command_size_limit:
            self._sasl = None
            self.push(R.LINE_TOO_LONG)
            return
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            self._sasl = None
            self.push(R.AUTH_BAD_BASE64)
            return
        self._auth_step(exchange, lambda: exchange.respond(text))

    def _auth_step(self, exchange: AuthExchange, step: Callable[[], Any]) -> None:
        try:
            result = step()
        except ReplyError as err:
            self._sasl = None
            self.push(err.reply)
            return
        if isinstance(result, Credentials):
            self._sasl = None
            self._auth_check(result)
        else:
            self._sasl = exchange
            self.push(R.AUTH_CHALLENGE % result)

    def _auth_check(self, credentials: Credentials) -> None:
        mechanism, login, password, authzid = credentials
        server = self.smtp_server
        # Acting as another identity (PLAIN's authzid) is not supported.
        if authzid and authzid != login:
            self._auth_verdict(credentials, False)
            return
        passwords = _options.of(server).authenticator
        reactor = self._reactor()
        overridden = _overrides_authenticate(type(server))
        if isinstance(passwords, PasswordFile) and passwords.hashed and reactor is not None and not overridden:
            # What the default authenticate() does, in a worker thread
            # (check_in_worker); the session reads nothing meanwhile.
            future = check_in_worker(passwords, login, password)
            self._ac_pause("auth")
            future.add_done_callback(lambda done: reactor.call_soon_threadsafe(lambda: self._auth_checked(credentials, done)))
            return
        try:
            if overridden:
                ok = server.authenticate(self, mechanism, login, password)
            else:
                ok = SecureServerMixin.authenticate(server, self, mechanism, login, password)
        except Exception:
            self._auth_failed_to_check(login)
            return
        self._auth_verdict(credentials, ok)

    def _auth_checked(self, credentials: Credentials, future: "concurrent.futures.Future[bool]") -> None:
        if self._fileno is not None:
            try:
                ok = future.result()
            except Exception:
                self._auth_failed_to_check(credentials.login)
            else:
                self._auth_verdict(credentials, ok)
        self._ac_resume("auth")  # after the verdict: pipelined input follows it

    def _auth_failed_to_check(self, login: str) -> None:
        # The traceback is logged; the password is not (it is neither in
        # the message nor in a Credentials repr).
        log.exception("authenticate() failed for login %r from %r", login, getattr(self, "peer", None))
        self.push(R.AUTH_TEMP_FAILURE)

    def _auth_verdict(self, credentials: Credentials, ok: bool) -> None:
        mechanism, login = credentials.mechanism, credentials.login
        if ok:
            self._auth_login = login
            log.info("%r authenticated as %r (%s)", getattr(self, "peer", None), login, mechanism)
            self.push(R.AUTH_OK)
            return
        self._auth_failures += 1
        log.info("authentication failed for login %r from %r", login, getattr(self, "peer", None))
        limit = self._security_option("max_auth_failures")
        if limit and self._auth_failures >= limit:
            self.push(R.TOO_MANY_AUTH_FAILURES % self.fqdn)
            self.close_when_done()
            return
        self.push(R.AUTH_FAILED)


# SecureChannelMixin's readable()/writable() only change when it calls
# _interest_changed(), like async_chat's: keep such channels off the
# every-iteration poll.
asyncore._TRACKED_READABLE.add(SecureChannelMixin.readable)
asyncore._TRACKED_WRITABLE.add(SecureChannelMixin.writable)
# On a plain socket its send() is dispatcher.send: keep sendmsg() batching.
asynchat._PLAIN_SENDS.add(SecureChannelMixin.send)
# Likewise its recv() is dispatcher.recv on a plain socket: handle_read() may
# read the socket directly (asynchat._PLAIN_RECVS).
asynchat._PLAIN_RECVS.add(SecureChannelMixin.recv)
