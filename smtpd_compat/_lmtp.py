"""LMTP (RFC 2033): the rules that differ from SMTP, in a session of their
own class (the option ``lmtp``; docs/lmtp.md).

A server with ``lmtp=True`` gives each connection an :class:`LMTPSession`,
chosen when the channel is set up (``_extensions.session_class``, which
makes a class of it and those of the other options that need one), so the
SMTP sessions of other servers take no extra step.  What it changes:

- ``LHLO`` is the greeting (section 4.1): answered as ``EHLO`` is, with
  its keywords; ``HELO`` and ``EHLO`` are answered ``500`` (the RFC says
  LHLO MUST be used), and ``HELP`` names ``LHLO``.  These are decided on
  the command line, before any ``smtp_<VERB>`` method, so an LMTP session
  never reaches the channel's ``smtp_HELO``/``smtp_EHLO``.  ``LHLO`` is
  dispatched as any command: to the channel's ``smtp_LHLO`` (the hook a
  subclass overrides, calling ``super().smtp_LHLO(arg)`` to answer it),
  whose own rule is :meth:`LMTPSession.lhlo`.
- ``PIPELINING`` and ``ENHANCEDSTATUSCODES`` are always on (section 5):
  :func:`check_options` turns the two options on, and an LMTPSession is
  an ``EnhancedSession``.
- After the message, one reply **per accepted recipient**, in the order of
  their ``RCPT`` commands (section 4.2): :meth:`LMTPSession.replied`
  takes what ``process_message()`` returned (or its Future gave): a list
  or tuple of one reply per recipient (``None`` being ``250 OK``), or one
  value meaning the same reply for every recipient, so an smtpd-era
  ``process_message()`` returning None or a str works unchanged.  A
  refusal of the whole message made here (too large, not UTF-8) is
  repeated for each recipient too.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple, cast

from . import _extensions
from . import _replies as R
from ._extensions import EnhancedSession
from ._state import Host

__all__ = ["LMTPSession", "check_options", "per_recipient"]

log = logging.getLogger("smtpd_compat")


def _help(arg: Optional[str]) -> Optional[str]:
    """HELP's reply where LMTP's differs from SMTP's, else None: the list
    names LHLO; HELP LHLO gives its syntax; HELO, EHLO and unknown topics
    list LMTP's commands (501, as smtpd's HELP does SMTP's)."""
    if not arg:
        return R.LMTP_HELP_ALL
    topic = arg.upper()
    if topic == "LHLO":
        return R.LMTP_HELP_LHLO
    if topic in ("HELO", "EHLO") or topic not in R.HELP_SYNTAX:
        return R.LMTP_HELP_UNKNOWN
    return None


def check_options(options: Any) -> None:
    """``lmtp`` is a bool; when true, PIPELINING and ENHANCEDSTATUSCODES
    are on whatever was asked (RFC 2033 section 5: an LMTP server MUST
    offer both)."""
    _extensions.check_options(options, ("lmtp",))
    if options.lmtp:
        options.pipelining = True
        options.enhanced_status_codes = True


def per_recipient(status: Any, count: int) -> Optional[List[Any]]:
    """The *count* replies *status* (what process_message returned) stands
    for: its items when it is a list or tuple of *count* items, *count*
    times *status* when it is a single reply; None when it is a sequence
    of another length."""
    if isinstance(status, (list, tuple)):
        return list(status) if len(status) == count else None
    return [status] * count


class _Repeating:
    """The host of an LMTP session while a message is checked: each reply
    goes out once per recipient (a refusal of the whole message)."""

    def __init__(self, host: Host, count: int) -> None:
        self._host = host
        self._count = count

    def push(self, msg: str) -> None:
        for _ in range(self._count):
            self._host.push(msg)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


class LMTPSession(EnhancedSession):
    """The session of a server with ``lmtp=True`` (see the module docstring)."""

    # Recipients of the message being answered (taken at its end: the
    # envelope is reset before process_message's reply arrives).
    recipients = 1

    def command_line(self, line: bytes, size: int = -1) -> Optional[Tuple[str, Optional[str]]]:
        command = super().command_line(line, size)
        if command is None:
            return None
        verb, arg = command
        reply = R.LMTP_SEND_LHLO if verb in ("HELO", "EHLO") else _help(arg) if verb == "HELP" else None
        if reply is None:
            return command  # LHLO too: the channel's smtp_LHLO (a subclass's hook), or lhlo()
        self.host.push(reply)
        return None

    def lhlo(self, arg: Optional[str]) -> None:
        """LHLO (section 4.1): answered as EHLO is, with its own syntax reply."""
        self.ehlo(arg, R.SYNTAX_LHLO)

    def end_of_data(self, pieces: List[bytes]) -> Any:
        count = self.recipients = max(len(self.rcpttos), 1)
        host = self.host
        self.host = cast(Host, _Repeating(host, count))
        try:
            return super().end_of_data(pieces)
        finally:
            self.host = host

    def replied(self, status: Any) -> None:
        replies = per_recipient(status, self.recipients)
        if replies is None:
            log.error("process_message() returned %d replies for a message to %d recipients: replying 451 to each",
                      len(status), self.recipients)
            replies = [_extensions.own_reply(self, R.PROCESSING_FAILED)] * self.recipients
        for reply in replies:
            super().replied(reply)


_extensions.add_session_class("lmtp", LMTPSession)
