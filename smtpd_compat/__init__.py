"""smtpd_compat: CPython's smtpd, asyncore and asynchat without asyncore.

Existing code changes one import::

    from smtpd_compat import smtpd, asyncore, asynchat

New code can use the short surface of this package directly::

    from smtpd_compat import SMTPServer, loop
"""

from __future__ import annotations

import importlib.util
import sys

from . import asynchat, asyncore, smtpd
from .asyncore import close_all, loop
from .smtpd import DebuggingServer, PureProxy, SMTPChannel, SMTPServer
from .controller import Controller
from .servers import MailboxServer, RecordingServer
from ._auth import PasswordFile

__version__ = "0.1.0"

__all__ = [
    "Controller",
    "DebuggingServer",
    "MailboxServer",
    "PasswordFile",
    "PureProxy",
    "RecordingServer",
    "SMTPChannel",
    "SMTPServer",
    "asynchat",
    "asyncore",
    "close_all",
    "install_aliases",
    "loop",
    "smtpd",
]

_ALIASES = {"smtpd": smtpd, "asyncore": asyncore, "asynchat": asynchat}


def install_aliases() -> list:
    """Make ``import smtpd``/``asyncore``/``asynchat`` give this package's modules.

    Only names the interpreter does not provide are aliased (Python 3.12 and
    later, or where a module is missing), so a real stdlib module is never
    replaced.  Returns the names that were aliased.  Use it for third-party
    code that cannot be edited to import from ``smtpd_compat``.
    """
    aliased = []
    for name, module in _ALIASES.items():
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            sys.modules[name] = module
            aliased.append(name)
    return aliased
