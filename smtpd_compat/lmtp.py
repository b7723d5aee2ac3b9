"""LMTP (RFC 2033): :class:`LMTPServer`, an ``SMTPServer`` that speaks LMTP.

LMTP is an option of every server (``lmtp=True``, ``--lmtp``), so that
``MailboxServer``, ``RecordingServer``, ``DebuggingServer`` or a class of
your own can be a local delivery agent behind Postfix; :class:`LMTPServer`
is :class:`~smtpd_compat.smtpd.SMTPServer` with that option on by default,
the base class to subclass for an LMTP server of your own.  See
docs/lmtp.md.
"""

from __future__ import annotations

from typing import Any

from .smtpd import SMTPServer

__all__ = ["LMTPServer"]


class LMTPServer(SMTPServer):
    """An LMTP server (RFC 2033): ``SMTPServer`` with ``lmtp=True``.

    Clients greet it with ``LHLO``; ``PIPELINING`` and
    ``ENHANCEDSTATUSCODES`` are always on; after a message it answers once
    per accepted recipient, in the order of their ``RCPT`` commands.

    Override :meth:`process_message` as for ``SMTPServer``.  It may return
    a list (or tuple) with one reply per recipient of *rcpttos*, in that
    order: ``None`` for ``250 OK`` or a reply line such as
    ``"452 4.2.2 Mailbox full"``; or a single value (``None``, a reply
    line), which answers every recipient alike.  A ``Future`` may give
    either.  Give ``unix_socket="/path"`` (and ``unix_mode``) to listen on
    a Unix socket, as Postfix's ``lmtp:unix:/path`` expects; *localaddr*
    may then be None.
    """

    def __init__(self, localaddr: Any, remoteaddr: Any = None, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("lmtp", True)
        super().__init__(localaddr, remoteaddr, *args, **kwargs)
