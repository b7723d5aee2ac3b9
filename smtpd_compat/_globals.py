"""smtpd's module globals that callers replace, as the modules below smtpd read them.

Code written for smtpd, CPython's own test suite first, assigns two of its
globals: ``smtpd.DEBUGSTREAM = io.StringIO()`` to capture the debug output,
and ``smtpd.socket = mock_socket`` to run sessions without a network.  The
session code lives below ``smtpd`` (``_channel``), so ``smtpd``'s module
object forwards those assignments here (:class:`ForwardingModule`), and the
code reads them from this module:

* :data:`DEBUGSTREAM` and :data:`tracing` (whether it is anything but a
  :class:`Devnull`, asked once per command), :func:`debug` to print to it;
* :func:`fqdn`, the host name the greeting announces, asked of
  ``smtpd.socket`` once per socket module.

Imports nothing from this package.
"""

from __future__ import annotations

import socket as _socket
import types
from typing import Any, Callable, Dict, Tuple

__all__ = ["DEBUGSTREAM", "Devnull", "ForwardingModule", "debug", "fqdn", "tracing"]


class Devnull:
    """A stream that discards what is written to it (the default DEBUGSTREAM)."""

    __module__ = "smtpd_compat.smtpd"  # smtpd.Devnull, where users meet it

    def write(self, msg: str) -> None:
        pass

    def flush(self) -> None:
        pass


DEBUGSTREAM: Any = Devnull()
# Whether DEBUGSTREAM is a real stream: read on every command line, so kept
# as a flag rather than asked of the stream each time.
tracing = False
# The module smtpd.socket names, and the name its getfqdn() gave.
_socket_module: Any = _socket
_fqdn: Tuple[Any, str] = (None, "")


def set_debugstream(stream: Any) -> None:
    global DEBUGSTREAM, tracing
    DEBUGSTREAM = stream
    tracing = stream.__class__ is not Devnull


def set_socket_module(module: Any) -> None:
    global _socket_module
    _socket_module = module


def debug(*args: Any) -> None:
    """``print(*args, file=DEBUGSTREAM)``, skipped for a Devnull."""
    stream = DEBUGSTREAM
    if not isinstance(stream, Devnull):
        print(*args, file=stream)


def fqdn() -> str:
    """The host's name for greetings and refusals.

    ``socket.getfqdn()`` may do a DNS round trip; smtpd called it for every
    connection.  Here it is asked once per socket module (tests swap it).
    """
    global _fqdn
    module, name = _fqdn
    if module is not _socket_module:
        name = _socket_module.getfqdn()
        _fqdn = (_socket_module, name)
    return name


_FORWARDED: Dict[str, Callable[[Any], None]] = {
    "DEBUGSTREAM": set_debugstream,
    "socket": set_socket_module,
}


class ForwardingModule(types.ModuleType):
    """The class of the ``smtpd`` module object: an assignment to one of
    the globals above reaches this module too (``monkeypatch.setattr`` and
    its undo included)."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        forward = _FORWARDED.get(name)
        if forward is not None:
            forward(value)
