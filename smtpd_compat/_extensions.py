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
from typing import Any, Iterable, List, Optional, Tuple, Type, cast

from . import _replies as R
from . import _spool
from ._session import Session
from ._state import Features, Host

__all__ = ["EnhancedSession", "EnhancingHost", "check_options", "check_requiretls", "enable", "own_reply", "session_class"]


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
        command = Session.command_line(self, line, size)
        if command is not None:
            self.command = command[0]
        return command

    def replied(self, status: Any) -> None:
        if status:
            # process_message()'s reply: the user's own text.
            if isinstance(status, bytes):
                status = status.decode("utf-8", "replace")
            self.theirs = status
        Session.replied(self, status)


class EnhancingHost:
    """The host of an :class:`EnhancedSession`: its channel, with the
    server's own replies given their enhanced status code on their way to
    the channel's ``push()``.  Everything else is the channel's (the
    properties defined after the class)."""

    def __init__(self, session: EnhancedSession, host: Host) -> None:
        self.session = session
        self.host = host

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


def session_class(features: Features) -> Type[Session]:
    """The class of a session that has *features*."""
    cls = EnhancedSession if features.enhanced_status_codes else Session
    return cls if features.spool_threshold is None else _spool.session_class(cls)


def enable(session: Session) -> None:
    """Give *session* (its server has enhanced_status_codes) enhanced
    status codes: its replies go through an EnhancingHost."""
    if not isinstance(session, EnhancedSession):
        # Made before SMTPChannel.__init__ ran (a subclass set smtpd's
        # attributes first).  Session and EnhancedSession have the same
        # layout: the object keeps its identity (a subclass may hold it)
        # and its attributes, though Python then reads them less quickly
        # than in a session made as an EnhancedSession (session_class()).
        session.__class__ = EnhancedSession
    enhanced = cast(EnhancedSession, session)
    if not isinstance(enhanced.host, EnhancingHost):  # (SMTPChannel.__init__ may run twice)
        enhanced.host = cast(Host, EnhancingHost(enhanced, enhanced.host))


def own_reply(session: Session, text: str) -> str:
    """*text*, a reply of the server's own made outside the session's
    rules, as *session* sends it: with its enhanced status code when the
    session has them."""
    return R.enhanced(text) if session.features.enhanced_status_codes else text
