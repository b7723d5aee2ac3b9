"""The phases of an SMTP session, the table of its transitions, and what a
session needs of its host: the vocabulary of ``_session``, without rules.

:class:`State` is the phase; :data:`TRANSITIONS` lists every change of phase
(``Session._move`` applies it).  :class:`Features` is what the server offers
beyond smtpd, :class:`Host` the interface of the object that owns the
connection (``SMTPChannel``), :class:`CommandSizeLimits` smtpd's
``command_size_limits`` with its largest value remembered, and
:class:`Credentials` what a session hands its host to check (made by the
SASL mechanisms of ``_sasl``).
"""

from __future__ import annotations

import collections
import enum
import hmac
from typing import Any, Dict, List, NamedTuple, Optional, Tuple, Union

from ._replies import EHLO_BINARYMIME, EHLO_CHUNKING, EHLO_DSN, EHLO_ENHANCEDSTATUSCODES, EHLO_PIPELINING

__all__ = [
    "AUTH_LINE_LIMIT",
    "COMMAND",
    "DATA",
    "NO_LIMITS",
    "TRANSITIONS",
    "CommandSizeLimits",
    "Credentials",
    "Detached",
    "Event",
    "Features",
    "Host",
    "State",
]

# RFC 4954 section 4: an AUTH command line may be up to 12288 octets, so that
# an initial response of reasonable size fits; the same bound applies to
# each response line of the exchange.
AUTH_LINE_LIMIT = 12288


class Credentials(NamedTuple):
    """What the client presented: checked by the server's authenticator.

    For mechanisms that send the password (PLAIN, LOGIN) ``password`` holds
    it; :meth:`check` compares it with a stored secret in constant time.
    """

    mechanism: str
    login: str
    password: str
    # PLAIN's authorization identity ("act as"); empty when not given.
    authzid: str = ""

    def check(self, secret: str) -> bool:
        """Whether the client proved knowledge of *secret* (the password)."""
        return hmac.compare_digest(self.password.encode("utf-8"), secret.encode("utf-8"))

    def __repr__(self) -> str:
        # A Credentials may end up in a traceback or a debug print: never
        # show the password.
        return "Credentials(mechanism=%r, login=%r, password=<redacted>, authzid=%r)" % (
            self.mechanism,
            self.login,
            self.authzid,
        )


class State(enum.Enum):
    """The phase of a session."""

    COMMAND = "command"  # reading commands
    DATA = "data"  # reading a message (after 354)
    AUTH = "auth"  # an AUTH exchange: lines are SASL responses
    AWAIT_REPLY = "await reply"  # the message was handed over; its reply is pending
    STARTTLS = "starttls"  # 220 Ready to start TLS sent; TLS not up yet
    CLOSING = "closing"  # the session ends once its last reply is sent
    FOREIGN = "foreign"  # smtp_state holds a value a subclass defined
    BDAT = "bdat"  # reading the octets of a BDAT chunk (RFC 3030; see _chunking)

    # Members are singletons: hash them by identity, in C.  Enum's own
    # __hash__ is a Python method, and TRANSITIONS is looked up by
    # (State, Event) a few times per message.
    __hash__ = object.__hash__


class Event(enum.Enum):
    """What moves a session from one phase to another."""

    DATA = "DATA accepted"
    MESSAGE = "message complete"
    REFUSED = "message refused"
    REPLIED = "message answered"
    AUTH = "AUTH challenge sent"
    AUTH_DONE = "AUTH exchange over"
    STARTTLS = "STARTTLS accepted"
    TLS_UP = "TLS handshake done"
    CLOSE = "closing"
    BDAT = "BDAT accepted"  # its chunk is read next, accepted or to be discarded
    CHUNK = "chunk received"

    __hash__ = object.__hash__  # as State's


S, E = State, Event
# The members as module globals, for the code that reads them per command:
# in Python 3.11 ``State.DATA`` goes through the enum metaclass's
# __getattr__, about twenty times the cost of reading a global.
S_COMMAND, S_DATA, S_AUTH, S_AWAIT_REPLY = S.COMMAND, S.DATA, S.AUTH, S.AWAIT_REPLY
S_STARTTLS, S_CLOSING, S_FOREIGN = S.STARTTLS, S.CLOSING, S.FOREIGN
E_DATA, E_MESSAGE, E_REFUSED, E_REPLIED, E_CLOSE = E.DATA, E.MESSAGE, E.REFUSED, E.REPLIED, E.CLOSE
# Every change of phase: (phase, event) -> next phase.  Anything else is a
# bug (Session._move raises).  CLOSE is allowed from every phase.
TRANSITIONS: Dict[Tuple[State, Event], State] = {
    (S.COMMAND, E.DATA): S.DATA,
    (S.DATA, E.MESSAGE): S.AWAIT_REPLY,
    (S.DATA, E.REFUSED): S.COMMAND,
    (S.AWAIT_REPLY, E.REPLIED): S.COMMAND,
    (S.COMMAND, E.AUTH): S.AUTH,
    (S.AUTH, E.AUTH): S.AUTH,
    (S.COMMAND, E.AUTH_DONE): S.COMMAND,  # decided at once (initial response)
    (S.AUTH, E.AUTH_DONE): S.COMMAND,
    (S.COMMAND, E.STARTTLS): S.STARTTLS,
    (S.STARTTLS, E.TLS_UP): S.COMMAND,
    # CHUNKING (RFC 3030, _chunking): a chunk is read, then the next command
    # (or, after BDAT LAST, the message is handed over like DATA's).
    (S.COMMAND, E.BDAT): S.BDAT,
    (S.BDAT, E.CHUNK): S.COMMAND,
    (S.BDAT, E.REFUSED): S.COMMAND,
    (S.BDAT, E.MESSAGE): S.AWAIT_REPLY,
}
for _state in State:
    TRANSITIONS[_state, E.CLOSE] = S.CLOSING
del _state, S, E

# smtpd's smtp_state values.
COMMAND, DATA = 0, 1


class Features:
    """What the server offers beyond smtpd (from its options), fixed for a
    session.  The defaults are smtpd's: nothing extra."""

    __slots__ = (
        "max_recipients",
        "starttls",
        "require_starttls",
        "auth",
        "auth_mechanisms",
        "auth_require_tls",
        "auth_required",
        "max_auth_failures",
        "ask_mail",
        "ask_rcpt",
        "mail_rules",
        "pipelining",
        "enhanced_status_codes",
        "requiretls",
        "keywords",
        "received_header",
        "chunking",
        "dsn",
        "lmtp",
        "spool_threshold",
        "spool_dir",
        "auth_throttle",
    )

    def __init__(self, **values: Any) -> None:
        self.max_recipients: Optional[int] = None
        self.starttls = False  # a tls_context is configured
        self.require_starttls = False
        self.auth = False  # AUTH is offered (an authenticator exists)
        self.auth_mechanisms: Tuple[str, ...] = ()
        self.auth_require_tls = True
        self.auth_required = False
        self.max_auth_failures: Optional[int] = None
        # The server overrides accept_mail()/accept_rcpt(): ask it.
        self.ask_mail = False
        self.ask_rcpt = False
        # ESMTP extensions announced (see _extensions).
        self.pipelining = False
        self.enhanced_status_codes = False
        self.requiretls = False  # announced over TLS only (Session._extension_keywords)
        # Prepend a Received: header to each message (see _received).
        self.received_header = False
        # Offer CHUNKING and BINARYMIME, take BDAT (RFC 3030; see _chunking).
        self.chunking = False
        # DSN (RFC 3461): a session of its own class (_dsn.DSNSession).
        self.dsn = False
        # LMTP (RFC 2033) instead of SMTP: the session is an _lmtp.LMTPSession.
        self.lmtp = False
        # Spool message text beyond this many bytes to a file (see _spool).
        self.spool_threshold: Optional[int] = None
        self.spool_dir: Optional[str] = None
        # auth_failures_per_ip: the table that counts AUTH failures per client
        # address (_admission.Table: auth_blocked(peer), auth_failed(peer)).
        self.auth_throttle: Any = None
        for name, value in values.items():
            setattr(self, name, value)
        # Whether MAIL must pass a rule of these features (TLS or AUTH first).
        self.mail_rules = self.require_starttls or self.auth_required
        # The EHLO keywords that depend on these features alone, in order.
        self.keywords: Tuple[str, ...] = tuple(
            keyword
            for keyword, offered in (
                (EHLO_PIPELINING, self.pipelining),
                (EHLO_ENHANCEDSTATUSCODES, self.enhanced_status_codes),
                (EHLO_DSN, self.dsn),
            )
            if offered
        )
        if self.chunking:
            self.keywords += (EHLO_CHUNKING, EHLO_BINARYMIME)


class Host:
    """What a :class:`Session` needs of the object that owns the connection.

    ``SMTPChannel`` is the host in the package; this class documents the
    interface (and is the base of the tests' recording host).  The first
    group are smtpd's own attributes and hooks, which subclasses override.
    """

    fqdn: str = "localhost"
    data_size_limit: Optional[int] = 33554432
    enable_SMTPUTF8 = False
    _decode_data = False
    command_size_limit = 512

    def push(self, msg: str) -> None:
        raise NotImplementedError

    def close_when_done(self) -> None:
        raise NotImplementedError

    def set_terminator(self, term: Any) -> None:
        raise NotImplementedError

    def _set_rset_state(self) -> None:
        raise NotImplementedError

    def _set_post_data_state(self) -> None:
        raise NotImplementedError

    def _getaddr(self, arg: Optional[str]) -> Tuple[str, str]:
        raise NotImplementedError

    def _getparams(self, params: List[str]) -> Optional[Dict[str, Union[str, bool]]]:
        raise NotImplementedError

    def _strip_command_keyword(self, keyword: str, arg: str) -> str:
        raise NotImplementedError

    # -- beyond smtpd ---------------------------------------------------------------
    def _session_data_started(self) -> None:
        """DATA was accepted: the CRLF that ended its line starts the end of data."""

    def _session_can_start_tls(self) -> bool:
        return False

    def _session_start_tls(self) -> None:
        """STARTTLS was accepted: read nothing more in clear, and wrap the
        connection once the 220 is sent."""

    def _session_check(self, credentials: Credentials) -> None:
        """Decide on *credentials*; answer through Session.auth_verdict()
        (at once or later) or Session.auth_failed_to_check()."""
        raise NotImplementedError

    def _session_accept(self, verb: str, address: str, params: List[str]) -> Optional[str]:
        """The server's decision on a sender (``"MAIL"``) or a recipient
        (``"RCPT"``): None to accept, or the reply refusing it."""
        return None

    def _session_trace(self, *args: Any) -> None:
        """smtpd's debug output (DEBUGSTREAM); called only when tracing."""


_ABSENT = object()


class Detached(Host):
    """The host of a session whose connection is closed: it keeps the
    settings the rules read and ignores what they ask."""

    def __init__(self, host: Host) -> None:
        for name in ("fqdn", "data_size_limit", "enable_SMTPUTF8", "_decode_data", "command_size_limit", "peer"):
            value = getattr(host, name, _ABSENT)
            if value is not _ABSENT:
                setattr(self, name, value)

    def push(self, msg: str) -> None:
        pass

    def close_when_done(self) -> None:
        pass

    def set_terminator(self, term: Any) -> None:
        pass

    def _set_rset_state(self) -> None:
        pass

    def _set_post_data_state(self) -> None:
        pass

    def _getaddr(self, arg: Optional[str]) -> Tuple[str, str]:
        return "", ""

    def _getparams(self, params: List[str]) -> Optional[Dict[str, Union[str, bool]]]:
        return None

    def _strip_command_keyword(self, keyword: str, arg: str) -> str:
        return ""

    def _session_check(self, credentials: Credentials) -> None:
        pass


def _forgetting(name: str) -> Any:
    """defaultdict's method *name*, made to forget CommandSizeLimits.largest."""
    method = getattr(collections.defaultdict, name)

    def forget(self: "CommandSizeLimits", *args: Any, **kwargs: Any) -> Any:
        self.largest = None
        return method(self, *args, **kwargs)

    forget.__name__ = name
    return forget


class CommandSizeLimits(collections.defaultdict):  # type: ignore[type-arg]
    """A session's ``command_size_limits``: a defaultdict that remembers its
    largest value, which ``max_command_size_limit`` is asked for on every
    command line.  Every method that changes the dict forgets it."""

    # No instance dict (a defaultdict has none either): one per session.
    __slots__ = ("largest",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.largest: Optional[int] = None

    def __setitem__(self, key: Any, value: Any) -> None:
        self.largest = None
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.largest = None
        super().__delitem__(key)

    def __ior__(self, other: Any) -> Any:  # type: ignore[misc]  # defaultdict's own signature
        self.largest = None
        return super().__ior__(other)

    clear = _forgetting("clear")
    pop = _forgetting("pop")
    popitem = _forgetting("popitem")
    setdefault = _forgetting("setdefault")
    update = _forgetting("update")


# _CommandSizeLimits.largest of an empty dict (a HELO session): the host's
# command_size_limit applies.
NO_LIMITS: Any = object()
