"""Logging: the ``smtpd_compat`` logger's records for sessions, and what
is hidden from them and from smtpd's ``DEBUGSTREAM``.

Connections opened and closed and messages answered are logged at INFO
(never a message's content), command lines and reply lines at DEBUG (:func:`log_command`, :func:`log_reply`), prefixed by the
peer.  Credentials never reach a log: an ``AUTH`` line keeps only its
mechanism, in the logger's words (:func:`redact_command`: ``AUTH PLAIN
[redacted]``) and in ``DEBUGSTREAM``'s (:func:`redact_debug_line`:
``AUTH PLAIN ***``, smtpd's own format for its debug stream), and the lines
of a SASL exchange are logged by neither.  Message content is never logged.
"""

from __future__ import annotations

import logging
from typing import Any, List

log = logging.getLogger("smtpd_compat")

__all__ = [
    "format_address",
    "log_delivery",
    "log_closed",
    "log_command",
    "log_connection",
    "log_reply",
    "redact_command",
    "redact_debug_line",
]


def peer_text(channel: Any) -> str:
    return format_address(getattr(channel, "peer", None) or getattr(channel, "addr", None))


def format_address(addr: Any) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        if str(host).startswith("unix:"):
            return str(host)  # a Unix socket's client (see _unix.peer)
        if ":" in str(host):
            return "[%s]:%s" % (host, port)
        return "%s:%s" % (host, port)
    return str(addr) or "a Unix socket"  # accept()'s address of a Unix socket's client: ''


def _in_sasl_exchange(channel: Any) -> bool:
    """Whether the lines *channel* receives now are SASL responses.

    SMTPChannel keeps the exchange in progress in ``_sasl`` (and does not
    even pass such lines to the command log); a subclass may also say so
    with a true ``_sasl_continuation`` attribute or method.  Those lines
    are never logged.
    """
    if getattr(channel, "_sasl", None) is not None:
        return True
    state = getattr(channel, "_sasl_continuation", None)
    if callable(state):
        try:
            state = state()
        except Exception:
            state = True  # when in doubt, redact
    return bool(state)


def redact_command(channel: Any, line: bytes) -> str:
    """The text of a command line as it may be logged.

    ``AUTH`` lines keep only their mechanism; SASL responses are hidden.
    """
    if _in_sasl_exchange(channel):
        return "[redacted SASL response]"
    text = line.decode("utf-8", "backslashreplace")
    if text[:4].upper() == "AUTH":
        words = text.split()
        mechanism = words[1] if len(words) > 1 and words[0].upper() == "AUTH" else ""
        if mechanism and mechanism.replace("-", "").replace("_", "").isalnum() and len(mechanism) <= 40:
            return "AUTH %s [redacted]" % mechanism
        return "AUTH [redacted]"
    return text


def log_command(channel: Any, line: bytes) -> None:
    """Log a command line received (DEBUG); callers check the level first."""
    log.debug("%s >>> %s", peer_text(channel), redact_command(channel, line))


def log_reply(channel: Any, reply: str) -> None:
    """Log a reply sent (DEBUG); callers check the level first."""
    log.debug("%s <<< %s", peer_text(channel), reply)


def _recipients(rcpttos: List[str]) -> str:
    shown = ", ".join(rcpttos[:3])
    if len(rcpttos) > 3:
        shown += " and %d more" % (len(rcpttos) - 3)
    return shown


def log_delivery(peer: Any, mailfrom: str, rcpttos: List[str], size: int, reply: Any) -> None:
    """Log a message answered (INFO): the peer, the envelope, its size and
    the reply (never its content)."""
    if log.isEnabledFor(logging.INFO):
        if isinstance(reply, bytes):
            reply = reply.decode("utf-8", "replace")
        elif isinstance(reply, (list, tuple)):  # LMTP: one reply per recipient
            reply = "; ".join(r.decode("utf-8", "replace") if isinstance(r, bytes) else (r or "250 OK") for r in reply)
        log.info("%s: message from %s to %s, %d bytes: %s", format_address(peer), mailfrom,
                 _recipients(rcpttos), size, reply or "250 OK")


def log_connection(server: Any, addr: Any) -> None:
    """Log a connection accepted (INFO)."""
    if log.isEnabledFor(logging.INFO):
        log.info("%s: connection from %s", type(server).__name__, format_address(addr))


def log_closed(channel: Any) -> None:
    """Log the end of a session (INFO)."""
    if log.isEnabledFor(logging.INFO):
        log.info("%s: connection closed", peer_text(channel))


def redact_debug_line(line: bytes) -> bytes:
    """*line* as it may be shown in a debug stream: an AUTH command keeps its
    mechanism and loses its initial response; other lines are unchanged."""
    verb, sep, rest = line.partition(b" ")
    if verb.upper() != b"AUTH" or not sep:
        return line
    mechanism, sep, response = rest.strip().partition(b" ")
    if sep and response.strip():
        return b"AUTH " + mechanism + b" ***"
    return line
