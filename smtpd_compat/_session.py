"""One SMTP session's rules and state: the protocol core, with no I/O.

:class:`Session` holds everything a session knows (the greeting, the
envelope, the message being received, TLS and AUTH facts) and implements
every command smtpd had, plus STARTTLS and AUTH, exactly as CPython 3.11's
``smtpd.SMTPChannel`` answered them.  It never touches a socket, a clock or
a thread: what it decides goes out through its *host* (:class:`Host`), the
object that owns the connection — ``SMTPChannel`` in the package, a plain
recorder in the tests.

Replies go out through ``host.push()``, so a subclass that overrides
``push()`` sees each line, as it did.  The hooks smtpd's methods called
(``_getaddr``, ``_getparams``, ``_strip_command_keyword``, ``_set_rset_state``,
``_set_post_data_state``, ``set_terminator``, ``close_when_done``) are the
host's, so overrides of those keep working too.  What smtpd did not have is
asked of the host through methods starting with ``_session_`` (start TLS,
check credentials, hand a message over, show a debug trace).

The phase of the session is one :class:`~_state.State`; every change of
phase goes through :meth:`Session._move`, and ``_state.TRANSITIONS`` lists
them all.  smtpd's ``smtp_state`` (``COMMAND`` = 0, ``DATA`` = 1, or a
value of a subclass's own) is a view of it.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Tuple, Union

from . import _grammar, _mail_params, _sasl
from . import _replies as R
from ._sasl import Credentials, Mechanism
from ._state import (  # the S_/E_ names: members read per command, as globals (see _state)
    AUTH_LINE_LIMIT,
    COMMAND,
    DATA,
    E_CLOSE,
    E_DATA,
    E_MESSAGE,
    E_REFUSED,
    E_REPLIED,
    S_AWAIT_REPLY,
    S_COMMAND,
    S_DATA,
    S_FOREIGN,
    S_STARTTLS,
    TRANSITIONS,
    Detached,
    Event,
    Features,
    Host,
    State,
)
from ._state import NO_LIMITS as _NO_LIMITS
from ._state import CommandSizeLimits as _CommandSizeLimits

log = logging.getLogger("smtpd_compat")

__all__ = ["AUTH_LINE_LIMIT", "Event", "Features", "Host", "Session", "State", "TRANSITIONS"]


class Session:
    """The state and rules of one SMTP session (see the module docstring).
    Its attributes with smtpd's names (``mailfrom``, ``rcpttos``,
    ``smtp_state``...) are what ``SMTPChannel`` shows under those names."""

    def __init__(self, host: Host, features: Optional[Features] = None) -> None:
        self.host = host
        self.features = features if features is not None else Features()
        self.state = S_COMMAND
        self.foreign: Any = None  # smtp_state while FOREIGN
        # smtpd's transaction state.
        self.seen_greeting = ""
        self.extended_smtp = False
        self.mailfrom: Optional[str] = None
        self.rcpttos: List[str] = []
        self.mail_options: List[str] = []
        self.rcpt_options: List[str] = []
        self.require_SMTPUTF8 = False
        self.num_bytes = 0
        self.received_lines: List[Any] = []
        self.received_data: Union[str, bytes] = ""
        limit = host.command_size_limit
        self.command_size_limits: Any = _CommandSizeLimits(lambda: limit)
        # Beyond smtpd.
        self.tls_active = False
        self.auth_login: Optional[str] = None
        self.auth_failures = 0
        self.sasl: Optional[Mechanism] = None
        # Whether to call host._session_trace() (smtpd's DEBUGSTREAM).
        self.tracing = False

    # -- the phase -------------------------------------------------------------------
    def _move(self, event: Event) -> None:
        try:
            self.state = TRANSITIONS[self.state, event]
        except KeyError:
            raise RuntimeError("SMTP session: %s while in %s" % (event.value, self.state.value)) from None

    @property
    def smtp_state(self) -> Any:
        """smtpd's view of the phase: DATA (1), COMMAND (0) for every phase
        of this package's own, or the value a subclass set."""
        state = self.state
        if state is S_DATA:
            return DATA
        if state is S_FOREIGN:
            return self.foreign
        return COMMAND

    @smtp_state.setter
    def smtp_state(self, value: Any) -> None:
        # A subclass (or smtpd's own code) sets the phase by hand.
        if value == DATA:
            self.state = S_DATA
        elif value == COMMAND:
            if self.state in (S_DATA, S_FOREIGN):
                self.state = S_COMMAND
        else:
            self.state, self.foreign = S_FOREIGN, value

    @property
    def max_command_size_limit(self) -> int:
        limits = self.command_size_limits
        cached = limits.__class__ is _CommandSizeLimits
        if cached:
            largest = limits.largest
            if largest is not None:
                return self.host.command_size_limit if largest is _NO_LIMITS else largest
        largest = max(limits.values(), default=_NO_LIMITS)
        if cached:
            limits.largest = largest
        return self.host.command_size_limit if largest is _NO_LIMITS else largest

    # -- smtpd's state resets (the host's hooks of those names call these) -------
    def post_data_state(self) -> None:
        """Reset the transaction after a message (smtpd's _set_post_data_state)."""
        if self.state in (S_DATA, S_FOREIGN):
            self.state = S_COMMAND
        self.mailfrom = None
        self.rcpttos = []
        self.require_SMTPUTF8 = False
        self.dsn: Any = None  # _dsn.Transaction: the DSN parameters given (option dsn)
        self.num_bytes = 0
        self.host.set_terminator(b"\r\n")

    def rset_state(self) -> None:
        """Reset everything but the greeting (smtpd's _set_rset_state)."""
        self.host._set_post_data_state()
        self.received_data = ""
        self.received_lines = []

    # -- input -------------------------------------------------------------------------
    def collect(self, data: Any) -> None:
        """A piece of the line or message being received (smtpd's
        collect_incoming_data): counted against its limit, kept unless
        over it."""
        state = self.state
        if state is S_DATA:
            limit = self.host.data_size_limit
        elif state is S_FOREIGN:
            limit = None
        else:
            limit = self.max_command_size_limit
        if limit:
            if self.num_bytes > limit:
                return  # over the limit: keep counting nothing, store nothing
            self.num_bytes += len(data)
        if self.host._decode_data:
            # smtpd kept str pieces here, and subclasses join them; it
            # decoded each piece strictly, so a character split between two
            # reads (or a stray byte) crashed the session.  Undecodable
            # bytes become lone surrogates: raw_lines() gives the very bytes.
            data = str(data, "utf-8", "surrogateescape")
        self.received_lines.append(data)

    def raw_lines(self) -> List[bytes]:
        """Take received_lines, as the bytes received."""
        pieces, self.received_lines = self.received_lines, []
        if self.host._decode_data:
            return [p.encode("utf-8", "surrogateescape") if isinstance(p, str) else p for p in pieces]
        return pieces

    def command_line(self, line: bytes, size: int = -1) -> Optional[Tuple[str, Optional[str]]]:
        """A complete command line: ``(VERB, argument)`` for the host to
        dispatch, or None when it was answered here (empty, too long, not
        UTF-8).  *size* is what was counted of it (num_bytes), when it was
        collected in pieces; by default its length."""
        if not line:
            self.host.push(R.BAD_SYNTAX)
            return None
        if size < 0:
            size = len(line)
        limits = self.command_size_limits
        largest = limits.largest if limits.__class__ is _CommandSizeLimits else None
        if largest is _NO_LIMITS:
            largest = self.host.command_size_limit  # no per-command limits (HELO)
        elif largest is None:
            largest = self.max_command_size_limit
        if not largest:
            size = 0  # no limit: collect() counted nothing
        elif size > largest:
            # Too long for any command, and cut short while it was read:
            # where the cut fell (perhaps inside a UTF-8 character) must not
            # change the reply.
            self.host.push(R.LINE_TOO_LONG)
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.host.push(R.BAD_ENCODING)
            return None
        # _grammar.split_command(), inlined: once per command.
        verb, space, rest = text.partition(" ")
        command = verb.upper()
        arg = rest.strip() if space else None
        if size > (self._size_limit(command) if self.extended_smtp else self.host.command_size_limit):
            self.host.push(R.LINE_TOO_LONG)
            return None
        return command, arg

    def _size_limit(self, command: str) -> int:
        """The largest *command* line after EHLO (RFC 1869 extensions may
        raise it for their command)."""
        limits = self.command_size_limits
        if command in limits:
            limit: int = limits[command]
        else:
            factory = getattr(limits, "default_factory", None)
            limit = factory() if factory else self.host.command_size_limit
        return limit

    def unknown(self, verb: str) -> None:
        """No smtp_<VERB> method: smtpd's 500."""
        self.host.push(R.UNKNOWN_COMMAND % _grammar.reply_safe(verb))

    def confused(self) -> None:
        """A line ended in a phase that expects none (smtpd's 451)."""
        self.received_lines = []
        self.host.push(R.INTERNAL_CONFUSION)
        self.num_bytes = 0

    # -- the message -------------------------------------------------------------------
    def end_of_data(self, pieces: List[bytes]) -> Optional[Union[bytes, str]]:
        """The message is complete (*pieces*: the raw bytes received).

        Returns the message as ``process_message`` takes it (the phase is
        then AWAIT_REPLY: the host hands it over, calls its
        ``_set_post_data_state()`` and answers with :meth:`replied`), or
        None when it was refused here (too large, not UTF-8 with
        decode_data).
        """
        host = self.host
        if host.data_size_limit and self.num_bytes > host.data_size_limit:
            # The transaction is over: smtpd stayed in DATA state here and
            # swallowed the next commands as message text.
            host._set_post_data_state()
            self._move_if(S_DATA, E_REFUSED)
            host.push(R.TOO_MUCH_DATA)
            return None
        data: Union[bytes, str] = _grammar.unstuff_chunks(pieces)
        if host._decode_data:
            try:
                data = data.decode("utf-8")  # type: ignore[union-attr]
            except UnicodeDecodeError:
                # smtpd crashed the session here; refuse the message instead.
                host._set_post_data_state()
                self._move_if(S_DATA, E_REFUSED)
                host.push(R.DATA_NOT_UTF8)
                return None
        self.received_data = data
        if self.state is S_DATA:  # (a subclass may have set smtp_state by hand)
            self._move(E_MESSAGE)
        return data

    def _move_if(self, state: State, event: Event) -> None:
        # A subclass may have set smtp_state by hand (or a handler changed
        # it meanwhile): move only from the phase the event belongs to.
        if self.state is state:
            self._move(event)

    def message_options(self) -> Dict[str, Any]:
        """The keyword arguments for process_message: smtpd's
        (``mail_options``, ``rcpt_options``, unless decode_data) and ours."""
        options: Dict[str, Any] = {}
        if not self.host._decode_data:
            options = {"mail_options": self.mail_options, "rcpt_options": self.rcpt_options}
        if self.features.auth:
            options["auth_login"] = self.auth_login
        return options

    def replied(self, status: Any) -> None:
        """Answer the message with what process_message returned (None or
        a false value: ``250 OK``)."""
        if self.state is S_AWAIT_REPLY:
            self._move(E_REPLIED)
        if not status:
            self.host.push(R.OK)
        else:
            if isinstance(status, bytes):
                status = status.decode("utf-8", "replace")
            self.host.push(status)

    # -- smtpd's commands ------------------------------------------------------------
    def _greeted(self, arg: Optional[str], syntax: str) -> bool:
        """HELO's and EHLO's checks: a name is given, and no greeting yet (a
        second one is refused: smtpd's choice, bpo-21783).  True once the
        session is reset and greeted."""
        if not arg:
            self.host.push(syntax)
            return False
        if self.seen_greeting:
            self.host.push(R.DUPLICATE_HELO)
            return False
        self.host._set_rset_state()
        self.seen_greeting = arg
        return True

    def helo(self, arg: Optional[str]) -> None:
        if self._greeted(arg, R.SYNTAX_HELO):
            self.host.push(R.HELO_OK % self.host.fqdn)

    def ehlo(self, arg: Optional[str], syntax: str = R.SYNTAX_EHLO) -> None:
        if not self._greeted(arg, syntax):  # (LMTP's LHLO gives its own *syntax* reply)
            return
        host = self.host
        self.extended_smtp = True
        keywords = [host.fqdn]
        if host.data_size_limit:
            keywords.append(R.EHLO_SIZE % host.data_size_limit)
            self.command_size_limits["MAIL"] += 26
        if not host._decode_data:
            keywords.append(R.EHLO_8BITMIME)
        if host.enable_SMTPUTF8:
            keywords.append(R.EHLO_SMTPUTF8)
            self.command_size_limits["MAIL"] += 10
        keywords.extend(self._extension_keywords())
        keywords.append(R.EHLO_HELP)
        for line in R.reply_lines(250, keywords):
            host.push(line)

    def _extension_keywords(self) -> List[str]:
        """EHLO keywords beyond smtpd's (none by default, so the reply stays
        smtpd's byte for byte)."""
        features = self.features
        keywords = list(features.keywords)  # PIPELINING, ENHANCEDSTATUSCODES
        if features.starttls and not self.tls_active:
            keywords.append(R.EHLO_STARTTLS)
        if self._auth_offered():
            keywords.append(R.EHLO_AUTH % " ".join(features.auth_mechanisms))
            # Like SIZE raising the MAIL limit: AUTH lines may be long.
            self.command_size_limits["AUTH"] = AUTH_LINE_LIMIT
        if features.requiretls and self.tls_active:  # RFC 8689: over TLS only
            keywords.append(R.EHLO_REQUIRETLS)
            self.command_size_limits["MAIL"] += 11
        return keywords

    def noop(self, arg: Optional[str]) -> None:
        self.host.push(R.SYNTAX_NOOP if arg else R.OK)

    def quit(self, arg: Optional[str]) -> None:
        # The argument is ignored.
        self.host.push(R.BYE)
        self.host.close_when_done()
        self._move(E_CLOSE)

    def help(self, arg: Optional[str]) -> None:
        if not arg:
            self.host.push(R.HELP_ALL)
            return
        topic = arg.upper()
        reply = R.HELP_SYNTAX.get(topic)
        if reply is None:
            self.host.push(R.HELP_UNKNOWN)
        elif topic in ("MAIL", "RCPT"):
            self.host.push(self._syntax_error(reply))
        else:
            self.host.push(reply)

    def vrfy(self, arg: Optional[str]) -> None:
        host = self.host
        if not arg:
            host.push(R.SYNTAX_VRFY)
            return
        address, _ = host._getaddr(arg)
        if address:
            host.push(R.VRFY_CANNOT)
        else:
            host.push(R.VRFY_FAILED % _grammar.reply_safe(arg))

    def expn(self, arg: Optional[str]) -> None:
        self.host.push(R.EXPN_UNSUPPORTED)

    def rset(self, arg: Optional[str]) -> None:
        if arg:
            self.host.push(R.SYNTAX_RSET)
            return
        self.host._set_rset_state()
        self.host.push(R.OK)

    def mail(self, arg: Optional[str]) -> None:
        host = self.host
        if not self.seen_greeting:
            host.push(R.NEED_HELO)
            return
        if self.features.mail_rules:
            refusal = self._refuse_mail()
            if refusal:
                host.push(refusal)
                return
        if self.tracing:
            host._session_trace("===> MAIL", arg)
        syntaxerr = self._syntax_error(R.SYNTAX_MAIL)
        path = self._path("FROM:", arg, syntaxerr)
        if path is None:
            return
        address, params = path
        if self.mailfrom:
            host.push(R.NESTED_MAIL)
            return
        self.mail_options = params.upper().split()
        parsed = host._getparams(self.mail_options)
        if parsed is None:
            host.push(syntaxerr)
            return
        # Most MAIL commands have no parameters (and no SMTPUTF8): nothing to check.
        if parsed or (host.enable_SMTPUTF8 and not address.isascii()):
            refusal = _mail_params.mail_refusal(self, parsed, address, syntaxerr, params)
            if refusal:
                host.push(refusal)
                return
        if self.features.ask_mail:
            refusal = host._session_accept("MAIL", address, self.mail_options)
            if refusal:
                _mail_params.mail_refused(self)  # what the checks above noted is dropped
                host.push(refusal)
                return
        self.mailfrom = address
        if self.tracing:
            host._session_trace("sender:", address)
        host.push(R.OK)

    def rcpt(self, arg: Optional[str]) -> None:
        host = self.host
        if not self.seen_greeting:
            host.push(R.NEED_HELO)
            return
        if self.tracing:
            host._session_trace("===> RCPT", arg)
        if not self.mailfrom:
            host.push(R.NEED_MAIL)
            return
        syntaxerr = self._syntax_error(R.SYNTAX_RCPT)
        path = self._path("TO:", arg, syntaxerr)
        if path is None:
            return
        address, params = path
        if host.enable_SMTPUTF8 and not address.isascii():  # RFC 6531 section 3.5
            refusal = _mail_params.rcpt_refusal(self, address)
            if refusal:
                host.push(refusal)
                return
        limit = self.features.max_recipients
        if limit is not None and len(self.rcpttos) >= limit:
            # max_recipients: the client sends to the rest in another
            # transaction.  Not an error (the budget does not count it).
            host.push(R.TOO_MANY_RECIPIENTS)
            return
        self.rcpt_options = params.upper().split()
        parsed = host._getparams(self.rcpt_options)
        if parsed != {}:  # a syntax error (None), or parameters: DSN's are known, with the option
            refusal = _mail_params.rcpt_params_refusal(self, parsed, params, address, syntaxerr)
            if refusal:
                host.push(refusal)
                return
        if self.features.ask_rcpt:
            refusal = host._session_accept("RCPT", address, self.rcpt_options)
            if refusal:
                _mail_params.rcpt_refused(self)
                host.push(refusal)
                return
        self.rcpttos.append(address)
        if self.tracing:
            host._session_trace("recips:", self.rcpttos)
        host.push(R.OK)

    def data(self, arg: Optional[str]) -> None:
        host = self.host
        if not self.seen_greeting:
            host.push(R.NEED_HELO)
            return
        if not self.rcpttos:
            host.push(R.NEED_RCPT)
            return
        if arg:
            host.push(R.SYNTAX_DATA)
            return
        self._move(E_DATA)
        host.set_terminator(_grammar.END_OF_DATA)
        host._session_data_started()
        host.push(R.START_DATA)

    def _syntax_error(self, reply: str) -> str:
        return reply + R.PARAMS_SUFFIX if self.extended_smtp else reply

    def _path(self, keyword: str, arg: Optional[str], syntaxerr: str) -> Optional[Tuple[str, str]]:
        """Parse ``FROM:<path> params`` / ``TO:<path> params`` as MAIL and
        RCPT share it: ``(address, params)``, or None after replying
        *syntaxerr*."""
        host = self.host
        if arg is None:
            host.push(syntaxerr)
            return None
        address, params = host._getaddr(host._strip_command_keyword(keyword, arg))
        if not address or (params and not self.extended_smtp):
            host.push(syntaxerr)
            return None
        return address, params

    def _refuse_mail(self) -> Optional[str]:
        features = self.features
        if features.require_starttls and not self.tls_active:
            return R.STARTTLS_REQUIRED
        if features.auth_required and self.auth_login is None:
            return R.AUTH_REQUIRED
        return None

    # -- STARTTLS (RFC 3207) ---------------------------------------------------------
    def starttls(self, arg: Optional[str]) -> None:
        host = self.host
        if self.tls_active:
            host.push(R.TLS_ALREADY_ACTIVE)
        elif not self.features.starttls:
            # Not configured: the reply smtpd gave to any unknown command.
            host.push(R.UNKNOWN_COMMAND % "STARTTLS")
        elif arg:
            host.push(R.SYNTAX_STARTTLS)
        elif not self.seen_greeting:
            host.push(R.NEED_HELO)
        elif not host._session_can_start_tls():
            host.push(R.TLS_NOT_AVAILABLE)
        else:
            self._move(Event.STARTTLS)
            # What the client pipelined after STARTTLS was sent in clear
            # before the handshake: it is never read as if it came over TLS.
            self.received_lines = []
            host._session_start_tls()
            host.push(R.READY_TLS)

    def tls_started(self) -> None:
        """TLS is up (after STARTTLS, or at once for implicit TLS)."""
        self.tls_active = True
        if self.state is not S_STARTTLS:
            return  # SMTPS: nothing was said in clear
        # RFC 3207 section 4.2: forget everything learnt from the client
        # before TLS (its EHLO, any envelope, any authentication).
        self._move(Event.TLS_UP)
        self.seen_greeting = ""
        self.extended_smtp = False
        self.host._set_rset_state()
        self.mail_options = []
        self.rcpt_options = []
        self.command_size_limits.clear()
        self.auth_login = None
        self.sasl = None

    # -- AUTH (RFC 4954): the rules are in _sasl --------------------------------------
    def _auth_offered(self) -> bool:
        features = self.features
        return features.auth and (self.tls_active or not features.auth_require_tls)

    def auth(self, arg: Optional[str]) -> None:
        _sasl.command(self, arg)

    def auth_line(self, line: bytes, size: int) -> None:
        """A line answering an AUTH challenge (the phase is AUTH)."""
        _sasl.response(self, line, size)

    def auth_verdict(self, credentials: Credentials, ok: bool) -> None:
        """The authenticator's decision on *credentials*."""
        _sasl.verdict(self, credentials, ok)

    def auth_failed_to_check(self) -> None:
        """The authenticator raised: a temporary failure (454)."""
        _sasl.failed_to_check(self)

    def closing(self) -> None:
        """The session ends once its last reply is sent (QUIT, a 421)."""
        self._move(E_CLOSE)

    def detach(self) -> None:
        """The connection is closed: let go of the host (which holds the
        session), so that no cycle keeps the session and its last message
        alive.  What is asked of the host afterwards goes nowhere."""
        self.host = Detached(self.host)
