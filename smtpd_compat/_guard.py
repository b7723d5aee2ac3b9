"""The limits of one session in time and errors: idle timeouts, the error
budget, the TLS handshake bound (options in ``_limits``, docs/hardening.md).

A :class:`SessionGuard` belongs to one ``SMTPChannel``; it reads the time
of the last input from the channel (``_ac_last_read``) and reports through
the channel's own methods (``push``, ``close``).  Nothing here starts a
timer for a channel that no loop runs: channels made by hand over mock
sockets (CPython's test suite) never meet a reactor, and their behaviour
stays smtpd's.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from . import _extensions, _options
from . import _replies as R
from ._limits import ERROR_CODES
from ._state import State

_BDAT = State.BDAT

log = logging.getLogger("smtpd_compat")
_monotonic = time.monotonic

__all__ = ["SessionGuard"]


class SessionGuard:
    """The limits of one session: idle timer, error budget, recipients.

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
        "tls_timer",
        "reply_timeout",
        "soonest",
        "last",
        "timer",
        "closed",
    )

    def __init__(self, channel: Any, server: Any) -> None:
        self.channel = channel
        self.server = server
        # A channel may be built with a stand-in server object (tests): then
        # _options.of() gives the defaults.
        options = _options.of(server)
        self.command_timeout: Optional[float] = options.command_timeout
        self.data_timeout: Optional[float] = options.data_timeout
        self.reply_timeout: Optional[float] = options.reply_timeout
        self.max_errors: Optional[int] = options.max_errors
        channel.ac_max_output = options.max_output
        timeouts = [t for t in (self.command_timeout, self.data_timeout) if t is not None]
        self.soonest: Optional[float] = min(timeouts) if timeouts else None
        self.errors = 0
        self.last = time.monotonic()
        self.timer: Any = None
        self.tls_timer: Any = None
        self.closed = False
        self._arm()

    # -- idle timeouts ------------------------------------------------------------
    def _timeout(self) -> Optional[float]:
        channel = self.channel
        if channel.smtp_state == channel.DATA:
            return self.data_timeout
        if getattr(getattr(channel, "_session", None), "state", None) is _BDAT:
            return self.data_timeout  # a chunk's octets are awaited (RFC 3030, _chunking)
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
        soonest = self.soonest
        assert soonest is not None  # else no timer would have been armed
        if timeout is None:
            # No timeout in this state, but the session may enter one that
            # has one (DATA) without a timer being armed: look again then.
            self._arm(now + soonest)
            return
        last = self._heard()
        if last + timeout > now:
            # Early: there was input since, or this state has the longer
            # timeout.  Input arriving later may enter a state with the
            # shorter one, and touch() will not move the timer: so look
            # again after at most the shorter timeout.
            self._arm(min(last + timeout, now + soonest))
            return
        log.info("session from %r idle for %.0fs, closing", getattr(channel, "peer", None), timeout)
        try:
            # Sent at once if the client reads at all; a client that does
            # not is closed anyway, with the reply still queued.
            channel.push(_extensions.own_reply(channel._session, R.IDLE_TIMEOUT % channel.fqdn))
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

    # -- the TLS handshake -------------------------------------------------------
    def watch_handshake(self) -> None:
        """A TLS handshake is awaited (STARTTLS's reply is queued, or an
        SMTPS connection): bound it by ``tls_handshake_timeout``.  The clock
        runs from here, so a client that does not read the 220 is bounded
        as well as one that stalls in the handshake."""
        timeout = _options.of(self.server).tls_handshake_timeout
        reactor = self.channel._reactor()
        if timeout and reactor is not None and self.tls_timer is None and not self.closed:
            self.tls_timer = reactor.call_later(timeout, self._handshake_expired)

    def handshake_done(self) -> None:
        if self.tls_timer is not None:
            self.tls_timer.cancel()
            self.tls_timer = None

    def _handshake_expired(self) -> None:
        self.tls_timer = None
        channel = self.channel
        if not self.closed and channel._fileno is not None and channel._ac_tls_pending():
            log.info("TLS handshake with %r timed out", getattr(channel, "peer", None))
            channel.handle_close()

    # -- end of the session ------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.handshake_done()
