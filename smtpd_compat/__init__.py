"""smtpd_compat: CPython's smtpd, asyncore and asynchat without asyncore.

Existing code changes one import::

    from smtpd_compat import smtpd, asyncore, asynchat

New code can use the short surface of this package directly::

    from smtpd_compat import SMTPServer, loop
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from typing import List

from . import asynchat, asyncore, smtpd
from ._auth import PasswordFile
from .asyncore import close_all, loop
from .catcher import CatcherServer
from .controller import Controller
from .lmtp import LMTPServer
from .servers import MailboxServer, RecordingServer
from .smtpd import DebuggingServer, PureProxy, SMTPChannel, SMTPServer

__version__ = "0.1.0"

__all__ = [
    "CatcherServer",
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
    "LMTPServer",
]

_ALIASES = {"smtpd": smtpd, "asyncore": asyncore, "asynchat": asynchat}


def _stdlib_has_smtpd() -> bool:
    # smtpd, asyncore and asynchat left the standard library together in
    # 3.12.  Before that, an smtpd that can be found is the stdlib's (the
    # standard library comes before site-packages on sys.path).
    if sys.version_info >= (3, 12):
        return False
    try:
        return importlib.util.find_spec("smtpd") is not None
    except (ImportError, ValueError):
        return False


def _origin(module: object) -> str:
    spec = getattr(module, "__spec__", None)
    return str(getattr(spec, "origin", None) or getattr(module, "__file__", None) or module)


def install_aliases() -> List[str]:
    """Make ``import smtpd``/``asyncore``/``asynchat`` give this package's modules.

    All three or none: this package's smtpd runs on its own asyncore, so
    code that imports ``smtpd`` and calls ``asyncore.loop()`` must get both
    from here.  Where the interpreter ships smtpd (Python 3.11 and earlier)
    nothing is aliased and the standard library stays in charge.  Where it
    does not (3.12 and later) all three names are aliased, even over an
    ``asyncore`` or ``asynchat`` installed from PyPI (``pyasyncore``),
    with a :class:`RuntimeWarning` naming what is shadowed; a louder one
    when such a module was imported already, since the code that imported
    it keeps it.  Returns the names that were aliased (none on a second
    call).  Use it for third-party code that cannot be edited to import
    from ``smtpd_compat``; call it before that code is imported.
    """
    if _stdlib_has_smtpd():
        return []
    aliased = []
    for name, module in _ALIASES.items():
        current = sys.modules.get(name)
        if current is module:
            continue
        if current is not None:
            warnings.warn(
                "install_aliases() comes too late: %s was already imported from %s. Later imports get "
                "smtpd_compat.%s, but code that imported it already keeps the other module, and a loop() "
                "there does not serve smtpd_compat's servers. Call install_aliases() before anything "
                "imports smtpd, asyncore or asynchat." % (name, _origin(current), name),
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            if spec is not None:
                warnings.warn(
                    "install_aliases(): smtpd_compat.%s shadows the %s module found at %s (pyasyncore or "
                    "the like): smtpd_compat's smtpd, asyncore and asynchat only work together."
                    % (name, name, spec.origin),
                    RuntimeWarning,
                    stacklevel=2,
                )
        sys.modules[name] = module
        aliased.append(name)
    return aliased
