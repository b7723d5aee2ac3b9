"""The listening socket's options, and its end: closing it without
resetting the connections the kernel has already completed.

:func:`exclusive_address` is what ``SMTPServer.server_bind()`` sets on
Windows instead of ``SO_REUSEADDR``.

A graceful shutdown (``_serving``) first makes the kernel start no new
handshake (:func:`refuse_handshakes`, Linux), then accepts what waits in the
backlog (:func:`drain_backlog`), so that every client that got a connection
is answered ``421`` rather than reset, and only then closes the socket.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import sys
import time
from typing import Any

from . import _reactor

__all__ = ["drain_backlog", "exclusive_address", "refuse_handshakes"]

log = logging.getLogger("smtpd_compat")

# Bounds on accepting the backlog (and answering it 421) before the listening
# socket is closed: handle_accept() calls, and seconds.  Only a handle_accept()
# that does not accept, or connections arriving faster than they are accepted
# where new handshakes cannot be stopped, come near them.
_BACKLOG_DRAIN_CALLS = 4096
_BACKLOG_DRAIN_SECONDS = 1.0
# A classic BPF program (SO_ATTACH_FILTER) for a listening TCP socket: drop
# segments with SYN set, keep the others.  A socket filter sees the TCP
# header at offset 0; byte 13 holds its flags (SYN is 0x02).
_SO_ATTACH_FILTER = 26
_DROP_SYN = (
    (0x30, 0, 0, 13),  # ldb [13]
    (0x45, 0, 1, 0x02),  # jset #SYN, next, skip one
    (0x06, 0, 0, 0),  # ret #0: drop
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: keep all
)


def refuse_handshakes(sock: Any) -> bool:
    """Make the kernel start no new connection on the listening TCP socket
    *sock*, while it still completes those under way; True if it could.

    Closing a listening socket resets every connection the kernel has
    completed but nobody accepted, so accepting them first (see
    :func:`drain_backlog`) is only as good as the gap between the last
    accept() and close() is empty.  Lowering the backlog does not empty it
    (and while the backlog is full the kernel drops the ACK that completes
    a handshake it has answered, leaving that client waiting for nothing),
    and shutdown() of a listening socket resets its backlog at once.  A
    socket filter that drops SYN segments does: clients
    that try now retransmit their SYN a second later and are refused then,
    while a handshake already under way still ends in the backlog and is
    accepted.  Linux only (SO_ATTACH_FILTER); elsewhere the gap stays.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return False
        import ctypes  # the filter's address goes in the option; stdlib, though not everywhere

        code = b"".join(struct.pack("HBBI", *insn) for insn in _DROP_SYN)
        program = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("HP", len(_DROP_SYN), ctypes.addressof(program))
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except (ImportError, OSError, AttributeError) as err:
        log.debug("cannot stop new connections before closing the listening socket: %s", err)
        return False
    return True


def drain_backlog(server: Any) -> None:
    """Accept what already waits in the backlog, until nothing is left, so
    that it can be answered."""
    reactor = _reactor.reactor_for(server._map, create=False)
    deadline = time.monotonic() + _BACKLOG_DRAIN_SECONDS
    for _ in range(_BACKLOG_DRAIN_CALLS):
        fd = server._fileno
        if fd is None or not server.accepting or not _connection_waiting(fd):
            return
        if reactor is not None and fd in reactor.suspended:
            return  # accept() hit EMFILE and backs off: it cannot take them
        if time.monotonic() > deadline:
            log.warning("closing the listening socket with connections still in its backlog")
            return
        try:
            server.handle_accept()
        except Exception:
            log.exception("accepting the backlog during shutdown failed")
            return


def _connection_waiting(fd: int) -> bool:
    """Whether the listening socket *fd* has a connection to accept."""
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return False


def exclusive_address(sock: Any) -> None:
    """Keep every other socket off *sock*'s address (Windows'
    ``SO_EXCLUSIVEADDRUSE``).  There ``SO_REUSEADDR`` lets a second process
    bind a port that a server listens on, and connections then go to
    either; the price of exclusivity is that a restarted server cannot bind
    while connections of the old one linger.  Best effort: where the option
    does not exist or is refused, the socket is left as it is."""
    option = getattr(socket, "SO_EXCLUSIVEADDRUSE", None)
    if option is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
    except OSError as err:
        log.debug("cannot make the listening address exclusive: %s", err)
