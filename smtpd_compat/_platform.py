"""What the platform lacks, checked where a feature is used.

``import smtpd_compat`` works wherever Python runs.  A feature that needs
something only some platforms have checks for it when it starts, with
:func:`require`, and fails there with :class:`NotAvailable`: one line that
names the feature and what it needs.  The command line prints that line as
its error and exits with status 2.  docs/platforms.md lists what each
feature needs and where it is tested.

Imports nothing from this package, so that any module may use it.
"""

from __future__ import annotations

import importlib
import os
import signal
import socket
from typing import Callable, Dict, Optional, Tuple

__all__ = ["NotAvailable", "available", "require"]


class NotAvailable(RuntimeError):
    """A feature this platform does not have, raised when it is used.

    A RuntimeError rather than NotImplementedError: smtpd re-raises a
    NotImplementedError out of ``process_message()`` (the base class's
    "override me"), and a missing platform feature must not end the loop.
    """


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# feature -> (what it is called, what it needs, whether the platform has it).
# Asked at each call, never cached: a test may take a capability away.
_FEATURES: Dict[str, Tuple[str, str, Callable[[], bool]]] = {
    "setuid": ('switching to the user "nobody" (setuid)', "the pwd module and os.setuid",
               lambda: hasattr(os, "setuid") and _importable("pwd")),
    "unix_sockets": ("listening on a Unix socket", "socket.AF_UNIX", lambda: hasattr(socket, "AF_UNIX")),
    "fork": ("fork-based workers", "os.fork", lambda: hasattr(os, "fork")),
    "sighup": ("SIGHUP handling", "signal.SIGHUP", lambda: hasattr(signal, "SIGHUP")),
    "fcntl": ("fcntl locking", "the fcntl module", lambda: _importable("fcntl")),
}


def available(feature: str) -> bool:
    """Whether this platform has what *feature* (a key of the table above) needs."""
    return _FEATURES[feature][2]()


def require(feature: str, hint: Optional[str] = None) -> None:
    """Raise :class:`NotAvailable` unless the platform has what *feature* needs.

    *hint* (``"run with -n"``) ends the message: what to do instead.
    """
    name, needs, present = _FEATURES[feature]
    if not present():
        message = "%s is not available on this platform (it needs %s)" % (name, needs)
        if hint:
            message += "; " + hint
        raise NotAvailable(message)
