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

# The keyword options of SMTPServer that this module applies, with their
# defaults (all declared in _options.Options).
DEFAULTS: Dict[str, Any] = _options.defaults(_options.LIMITS)


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
    The command line's flags apply the same ranges (_cli_args)."""
    for name in TIMEOUTS:
        value = getattr(options, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError("%s must be a number of seconds or None, not %s" % (name, type(value).__name__))
        if not timeout_in_range(float(value)):
            raise ValueError("%s must be a positive number of seconds or None, not %r" % (name, value))
    for name in COUNTS:
        value = getattr(options, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError("%s must be an integer or None, not %s" % (name, type(value).__name__))
        if not count_in_range(int(value)):
            raise ValueError("%s must not be negative, not %r" % (name, value))


def _option(server: Any, name: str) -> Any:
    # A channel may be built with a stand-in server object (tests): then
    # _options.of() gives the defaults.
    return getattr(_options.of(server), name)
