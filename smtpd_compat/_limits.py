"""Session limits and timeouts (hardening): bounds on time, errors, connections, recipients and memory per session.

Options (keyword-only arguments of ``SMTPServer``, stored as attributes of
the same name; see ``docs/hardening.md``):

``command_timeout``
    Seconds a session may wait for the next command (input) before it is
    answered ``421`` and closed.  RFC 5321 section 4.5.3.2.7: at least five
    minutes.  ``None`` disables it.
``data_timeout``
    The same while a message is being received (after ``354``): RFC 5321
    section 4.5.3.2.5, three minutes between data blocks.  ``None`` disables it.
``max_connections``
    Sessions a server keeps at once; a connection beyond it is answered
    ``421`` and closed as soon as it is accepted.  ``None``: no limit.
``max_errors``
    Erroneous commands a session may send (replies ``500``-``504`` and
    ``555``: unknown commands, syntax and sequence errors).  The command
    after the budget is spent is answered ``421`` and the session is
    closed.  ``None``: no limit, as in CPython.
``max_recipients``
    Recipients one transaction may have: a ``RCPT`` beyond them is answered
    ``452 4.5.3 Too many recipients`` (RFC 5321 section 4.5.3.1.10), which
    tells the client to send the message to the rest in another
    transaction; it does not count against ``max_errors``.  ``None``: no
    limit, as in CPython (every recipient is kept in memory).
``max_output``
    Bytes of replies that may wait for a client that does not read them.
    Above it the session stops processing that client's input until its
    output drains; a session stuck that way is closed by
    ``command_timeout``.  ``None``: no bound, as in CPython.

Nothing here starts a timer for a channel that no loop runs: channels made
by hand over mock sockets (CPython's test suite) never meet a reactor, and
their behaviour stays smtpd's.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from typing import Any, Callable, Dict, Optional, Set

from . import _options
from . import _replies as R

log = logging.getLogger("smtpd_compat")
_monotonic = time.monotonic  # touch() runs once per read

# Keyword-only options this module adds to SMTPServer(...), with defaults
# (kept in the server's _options.Options).
DEFAULTS: Dict[str, Any] = {
    # RFC 5321 4.5.3.2.7: "at least 5 minutes" awaiting the next command.
    "command_timeout": 300.0,
    # RFC 5321 4.5.3.2.5: 3 minutes between data blocks.
    "data_timeout": 180.0,
    "max_connections": None,
    # Postfix's smtpd_hard_error_limit default: no real client comes near
    # 20 rejected commands, while a client speaking another protocol to the
    # port (an HTTP request from a browser, a scanner) is cut off quickly.
    "max_errors": 20,
    # Postfix's smtpd_recipient_limit.  RFC 5321 4.5.3.1.8 requires at
    # least 100; without a limit a session could grow by some 70 bytes per
    # RCPT for as long as it likes (70 MB for a million).
    "max_recipients": 1000,
    # Replies are tens of bytes: 128 KiB is thousands of pipelined replies
    # that the client has not read, on top of the kernel's socket buffers.
    "max_output": 131072,
    # RFC 5321 4.5.3.2.6: a client waits 10 minutes for the reply to the end
    # of its message; a process_message() Future still pending then is
    # answered 451, so that one that never completes does not hold the
    # session (and a max_connections slot) for ever.
    "reply_timeout": 600.0,
}

_options.register(__name__, DEFAULTS)

# Reply codes that count against max_errors: the command was not
# understood or not acceptable in this state (RFC 5321 4.2.4, 4.3.2).
ERROR_CODES = ("500", "501", "502", "503", "504", "555")


# The options in seconds, and the counts (DEFAULTS holds both kinds).
TIMEOUTS = ("command_timeout", "data_timeout", "reply_timeout")
COUNTS = ("max_connections", "max_errors", "max_output", "max_recipients")


def timeout_in_range(value: float) -> bool:
    """A timeout is a positive, finite number of seconds (or None)."""
    return math.isfinite(value) and value > 0


def count_in_range(value: int) -> bool:
    """A count is a non-negative integer (or None); 0 is meaningful."""
    return value >= 0


def check_options(options: Any) -> None:
    """Reject option values that would only misbehave later, in the loop (a
    string, a negative count, a timeout that is not a positive number).
    The command line's flags apply the same ranges (_cli)."""
    for name in TIMEOUTS:
        value = getattr(options, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError("%s must be a number of seconds or None, not %s" % (name, type(value).__name__))
        if not timeout_in_range(value):
            raise ValueError("%s must be a positive number of seconds or None, not %r" % (name, value))
    for name in COUNTS:
        value = getattr(options, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError("%s must be an integer or None, not %s" % (name, type(value).__name__))
        if not count_in_range(value):
            raise ValueError("%s must not be negative, not %r" % (name, value))


def _option(server: Any, name: str) -> Any:
    # A channel may be built with a stand-in server object (tests): then
    # _options.of() gives the defaults.
    return getattr(_options.of(server), name)


def sessions(server: Any) -> Set[Any]:
    """The live sessions (channels) of *server* that count towards
    ``max_connections``."""
    try:
        return server.__dict__["_limits_sessions"]
    except KeyError:
        found: Set[Any] = set()
        server.__dict__["_limits_sessions"] = found
        return found
    except AttributeError:  # a server object without a __dict__
        return set()


def refuse_connection(server: Any, conn: Any, addr: Any, reply: Callable[[], str]) -> bool:
    """If *server* already has ``max_connections`` sessions, send ``reply()``
    (a ``421`` line, made only then; not on an SMTPS port) on the
    just-accepted *conn* (from *addr*), close it and return True."""
    limit = _option(server, "max_connections")
    if limit is None or len(sessions(server)) < limit:
        return False
    log.warning("refusing a connection from %r: %d sessions open (max_connections)", addr, limit)
    try:
        # On an implicit-TLS (SMTPS) port the client starts with a TLS
        # handshake, to which a plain-text line is garbage: just close.
        if _options.of(server).implicit_tls_context is None:
            conn.setblocking(False)
            # A fresh socket has an empty send buffer: one short line fits.
            conn.send((reply() + "\r\n").encode("ascii", "backslashreplace"))
    except OSError:
        pass
    finally:
        conn.close()
    return True


class SessionGuard:
    """The limits of one session: idle timer, error budget, session count.

    One timer per session, re-armed lazily: reading input only records the
    time (``async_chat`` keeps it in ``_ac_last_read``; ``touch()`` records
    a reply the client waited for).  The timer is set for the shorter of the two
    timeouts after the last input, so it never fires late whatever the
    state becomes meanwhile; when it fires early it is armed again for the
    real deadline.  Entering DATA (once per message) then needs no new timer.
    """

    __slots__ = (
        "channel",
        "server",
        "command_timeout",
        "data_timeout",
        "max_errors",
        "errors",
        "max_recipients",
        "reply_timeout",
        "soonest",
        "last",
        "timer",
        "closed",
    )

    def __init__(self, channel: Any, server: Any) -> None:
        self.channel = channel
        self.server = server
        self.command_timeout: Optional[float] = _option(server, "command_timeout")
        self.data_timeout: Optional[float] = _option(server, "data_timeout")
        self.reply_timeout: Optional[float] = _option(server, "reply_timeout")
        self.max_errors: Optional[int] = _option(server, "max_errors")
        self.max_recipients: Optional[int] = _option(server, "max_recipients")
        channel.ac_max_output = _option(server, "max_output")
        timeouts = [t for t in (self.command_timeout, self.data_timeout) if t is not None]
        self.soonest: Optional[float] = min(timeouts) if timeouts else None
        self.errors = 0
        self.last = time.monotonic()
        self.timer: Any = None
        self.closed = False
        sessions(server).add(channel)
        self._arm()

    # -- idle timeouts ------------------------------------------------------------
    def _timeout(self) -> Optional[float]:
        channel = self.channel
        if channel.smtp_state == channel.DATA:
            return self.data_timeout
        return self.command_timeout

    def _arm(self, deadline: Optional[float] = None) -> None:
        """Start the timer for *deadline*, by default the shorter timeout
        after the last input."""
        if self.soonest is None or self.closed:
            return
        reactor = self.channel._reactor()
        if reactor is None:
            return  # no loop runs this channel (yet): see touch()
        if deadline is None:
            deadline = self._heard() + self.soonest
        self.timer = reactor.call_later(deadline - time.monotonic(), self._fire)

    def _heard(self) -> float:
        """When the session last saw activity: input read, or a touch()."""
        read = self.channel._ac_last_read
        return read if read > self.last else self.last

    def touch(self) -> None:
        """A reply the client waited for was sent: count the idle time from now."""
        self.last = _monotonic()
        if self.timer is None:
            self._arm()  # after a pause

    def _fire(self) -> None:
        self.timer = None
        channel = self.channel
        if self.closed or channel._fileno is None:
            return
        if "reply" in channel._ac_paused:
            # The client waits for us (process_message is still working):
            # not idle.  The reply re-arms the timer through touch().
            return
        timeout = self._timeout()
        now = time.monotonic()
        if timeout is None:
            # No timeout in this state, but the session may enter one that
            # has one (DATA) without a timer being armed: look again then.
            self._arm(now + self.soonest)  # type: ignore[operator]
            return
        last = self._heard()
        if last + timeout > now:
            # Early: there was input since, or this state has the longer
            # timeout.  Input arriving later may enter a state with the
            # shorter one, and touch() will not move the timer: so look
            # again after at most the shorter timeout.
            self._arm(min(last + timeout, now + self.soonest))
            return
        log.info("session from %r idle for %.0fs, closing", getattr(channel, "peer", None), timeout)
        try:
            # Sent at once if the client reads at all; a client that does
            # not is closed anyway, with the reply still queued.
            channel.push(R.IDLE_TIMEOUT % channel.fqdn)
        finally:
            channel.close()

    # -- error budget ----------------------------------------------------------
    def over_budget(self, reply: str) -> bool:
        """Count *reply* if it answers an erroneous command; True when the
        budget is spent (the caller then answers ``421`` and closes)."""
        if self.max_errors is None or not reply.startswith(ERROR_CODES):
            return False
        self.errors += 1
        return self.errors == self.max_errors + 1

    # -- recipients per transaction -----------------------------------------------
    def recipients_full(self, count: int) -> bool:
        """True when a transaction that has *count* recipients may take no
        more (the next ``RCPT`` is answered ``452``)."""
        return self.max_recipients is not None and count >= self.max_recipients

    # -- end of the session ------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sessions(self.server).discard(self.channel)
