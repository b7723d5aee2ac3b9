"""ESMTP extensions smtpd did not have, each behind an option that is off by
default: PIPELINING (RFC 2920) and ENHANCEDSTATUSCODES (RFC 2034, with the
codes of RFC 3463).  docs/extensions.md says what each honours.

PIPELINING changes nothing but the EHLO reply (``Features.keywords``): the
framer reads every command already in the buffer and the channel answers
them in order, in one write.

ENHANCEDSTATUSCODES rewrites the replies of the server's own as they leave
the session, and only in a session that has it: ``SMTPChannel`` makes its
session of :func:`session_class` (an :class:`EnhancedSession`), and
:func:`enable` gives it an :class:`EnhancingHost` over the channel.  The host looks each reply up in ``_replies.ENHANCED`` (by
the verb of the last command line where one text answers several commands:
``250 OK`` to MAIL is ``250 2.1.0 OK``).  The default path has no extra step:
a session without the option is a plain Session whose host is the channel.

Replies that are the user's are sent as given: what a subclass pushes itself
(it calls the channel's ``push()``, not the session's host), what
``process_message()`` returns, and the refusals ``accept_mail()`` /
``accept_rcpt()`` return.  Our own replies made outside the session's rules
(idle timeout, shutdown, error budget, the 451 of a failed
``process_message()``) go through :func:`own_reply`.
"""

from __future__ import annotations

import operator
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type, cast

from . import _dsn, _spool
from . import _replies as R
from ._session import Session
from ._state import Features, Host

__all__ = [
    "DSNSession", "EnhancedSession", "EnhancingHost", "add_session_class", "check_options", "check_requiretls", "enable",
    "own_reply", "session_class",
]


def check_options(options: Any, names: Iterable[str]) -> None:
    """Reject an extension option (of *names*: ``_options.EXTENSIONS``)
    that is not a bool (``pipelining=1``, ``enhanced_status_codes="no"``)
    when the server is created."""
    for name in names:
        value = getattr(options, name)
        if not isinstance(value, bool):
            raise TypeError("%s must be True or False, not %r" % (name, value))


def check_requiretls(options: Any, decode_data: bool) -> None:
    """REQUIRETLS (RFC 8689) is announced over TLS only: a server with
    ``requiretls`` and no TLS could never offer it.  And PureProxy (or any
    process_message) learns of the parameter from ``mail_options``, which
    smtpd does not pass with ``decode_data=True``."""
    if not options.requiretls:
        return
    if options.tls_context is None and options.implicit_tls_context is None:
        raise ValueError("requiretls needs TLS: give tls_context (STARTTLS) or implicit_tls_context (SMTPS)")
    if decode_data:
        raise ValueError("requiretls cannot be used with decode_data=True (process_message gets no mail_options then)")


class EnhancedSession(Session):
    """A Session whose server has enhanced_status_codes: it notes the verb
    of each command line and which reply is the user's, for its host."""

    # The verb of the last command line (None while a line is being
    # checked, and after one that was refused before its verb was known).
    command: Optional[str] = None
    # The user's reply being pushed, sent as given.
    theirs: Optional[str] = None

    def command_line(self, line: bytes, size: int = -1) -> Optional[Tuple[str, Optional[str]]]:
        self.command = None
        command = super().command_line(line, size)
        if command is not None:
            self.command = command[0]
        return command

    def replied(self, status: Any) -> None:
        if status:
            # process_message()'s reply: the user's own text.
            if isinstance(status, bytes):
                status = status.decode("utf-8", "replace")
            self.theirs = status
        super().replied(status)


class EnhancingHost:
    """The host of an :class:`EnhancedSession`: its channel, with the
    server's own replies given their enhanced status code on their way to
    the channel's ``push()``.  Everything else is the channel's (the
    properties defined after the class)."""

    def __init__(self, session: EnhancedSession, host: Host) -> None:
        self.session = session
        self.host = host

    @property
    def _wrapped_channel(self) -> Host:
        """The channel itself (what _spool hands a server's _follow_spool())."""
        return self.host

    def push(self, msg: str) -> None:
        session = self.session
        if msg is session.theirs:
            session.theirs = None
        else:
            msg = R.enhanced(msg, session.command)
        self.host.push(msg)

    def _session_accept(self, verb: str, address: str, params: List[str]) -> Optional[str]:
        # A refusal from accept_mail()/accept_rcpt() is the user's text.
        refusal = self.host._session_accept(verb, address, params)
        self.session.theirs = refusal
        return refusal



# Everything else the session reads of its host is the channel's, read
# when asked (a subclass may change data_size_limit...): Host's names, and
# the peer the logs show.  Properties, not __getattr__, which would slow
# down every attribute read of the host (CPython then calls it through a
# slot that no read is specialised for).
for _name in [*vars(Host), "peer"]:
    if not _name.startswith("__") and _name not in vars(EnhancingHost):
        setattr(EnhancingHost, _name, property(operator.attrgetter("host." + _name)))
del _name


class DSNSession(Session):
    """A Session whose server has the option dsn (RFC 3461): EHLO
    announces DSN (``Features.keywords``) and lets MAIL and RCPT lines grow
    by the parameters' length, and process_message() gets the DSN
    parameters as ``dsn``.  The parameters themselves are checked where
    MAIL's and RCPT's are (``_mail_params``, ``_dsn``)."""

    dsn: Any = None  # the transaction's _dsn.Transaction (post_data_state() resets it)

    def _extension_keywords(self) -> List[str]:
        keywords = super()._extension_keywords()
        limits = self.command_size_limits
        limits["MAIL"] += _dsn.MAIL_LINE_GROWTH
        limits["RCPT"] += _dsn.RCPT_LINE_GROWTH
        return keywords

    def message_options(self) -> Dict[str, Any]:
        options = super().message_options()
        options["dsn"] = _dsn.of(self.dsn, self.rcpttos)
        return options


# The session classes of the options that need one, by the Features
# attribute that asks for it; a session with several is of a class made of
# theirs, as bases in the order of _SESSION_ORDER (the first one's methods
# are found first; each calls the next with super()).  Extension modules
# above this one add theirs (add_session_class).
_SESSION_ORDER = ("lmtp", "chunking", "spool_threshold", "enhanced_status_codes", "dsn")
_SESSION_CLASSES: Dict[str, Type[Session]] = {
    "spool_threshold": _spool.SpoolingSession,
    "enhanced_status_codes": EnhancedSession,
    "dsn": DSNSession,
}
_COMPOSED: Dict[Tuple[Type[Session], ...], Type[Session]] = {}


def add_session_class(feature: str, cls: Type[Session]) -> None:
    """Sessions whose Features have *feature* (of _SESSION_ORDER) true are
    of *cls* (with the classes of the other features they have)."""
    _SESSION_CLASSES[feature] = cls


def _on(value: Any) -> bool:
    return value is not None and value is not False


def session_class(features: Features) -> Type[Session]:
    """The class of a session that has *features*: Session, the class of
    the one option that needs one, or a class made of several (made once
    per combination)."""
    # (A feature is on when true, or for spool_threshold when not None: 0 is a threshold.)
    if not (features.lmtp or features.chunking or features.enhanced_status_codes or features.dsn
            or features.spool_threshold is not None):
        return Session  # smtpd's session: decided without the loop below (once per connection)
    bases = tuple(_SESSION_CLASSES[name] for name in _SESSION_ORDER if _on(getattr(features, name)))
    if len(bases) < 2:
        return bases[0] if bases else Session
    cls = _COMPOSED.get(bases)
    if cls is None:
        name = "".join(base.__name__[: -len("Session")] for base in bases) + "Session"
        cls = _COMPOSED[bases] = type(name, bases, {"__doc__": "A Session of the options of %s." % name})
    return cls


def enable(session: Session) -> None:
    """Give *session* what its server's extensions ask of its class
    (enhanced_status_codes, dsn): with enhanced status codes, its replies
    go through an EnhancingHost."""
    cls = session_class(session.features)
    if not isinstance(session, cls):
        # Made before SMTPChannel.__init__ ran (a subclass set smtpd's
        # attributes first).  Session and its subclasses here have the same
        # layout: the object keeps its identity (a subclass may hold it)
        # and its attributes, though Python then reads them less quickly
        # than in a session made of its class (session_class()).
        session.__class__ = cls
    if not isinstance(session, EnhancedSession):
        return
    if not isinstance(session.host, EnhancingHost):  # (SMTPChannel.__init__ may run twice)
        session.host = cast(Host, EnhancingHost(session, session.host))


def own_reply(session: Session, text: str) -> str:
    """*text*, a reply of the server's own made outside the session's
    rules, as *session* sends it: with its enhanced status code when the
    session has them."""
    return R.enhanced(text) if session.features.enhanced_status_codes else text
