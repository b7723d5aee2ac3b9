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
from typing import Any, Dict

from . import _options

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
