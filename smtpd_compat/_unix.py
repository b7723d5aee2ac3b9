"""Listening on a Unix socket (the options ``unix_socket`` and ``unix_mode``).

``SMTPServer.__init__`` makes an ``AF_UNIX`` socket instead of resolving
*localaddr* when ``unix_socket`` is given (:func:`create`);
``server_bind()`` binds it here (:func:`bind`):

- a file already at the path is removed only when it is a socket that
  nobody listens on (left by a server that crashed); anything else (a
  regular file, a socket a live server answers on) is an error, and the
  file is left alone;
- the socket's permissions are set to ``unix_mode`` after ``bind()`` and
  before ``listen()``: nobody can connect before ``listen()``, so there is
  no window with the umask's permissions;
- :func:`unlink` (called by ``SMTPServer.close()``) removes the socket file,
  but only in the process that bound it (not in a forked child) and only
  while the file at the path is still the one it bound (a newer server's
  socket at the same path is not touched).

A client of a Unix socket has no address (``getpeername()`` gives ``''``):
the channel's ``peer`` is then :func:`peer`'s ``("unix:<path>", 0)``, the
path of the socket it came in through, a tuple so that code written for
``(host, port)`` (``peer[0]`` in ``X-Peer`` headers) keeps working.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any, Optional, Tuple

from . import _options
from ._platform import require

__all__ = ["bind", "check_options", "create", "path_of", "peer", "unlink"]

# What the server notes of the socket file it bound: (pid, st_dev, st_ino).
_BOUND = "_unix_socket_bound"


def check_options(options: Any) -> None:
    """``unix_socket`` is a path (str or os.PathLike, kept as str) or None;
    ``unix_mode`` an int permission mode (0o000-0o777)."""
    path = options.unix_socket
    if path is not None:
        try:
            path = os.fspath(path)
        except TypeError:
            raise TypeError("unix_socket must be a path, not %r" % (path,)) from None
        if not isinstance(path, str) or not path:
            raise ValueError("unix_socket must be a non-empty str path, not %r" % (path,))
        options.unix_socket = path
    mode = options.unix_mode
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise TypeError("unix_mode must be an int such as 0o660, not %r" % (mode,))
    if not 0 <= mode <= 0o777:
        raise ValueError("unix_mode must be between 0o000 and 0o777, not %s" % oct(mode))


def path_of(server: Any) -> Optional[str]:
    """The Unix socket path *server* listens on, or None (TCP)."""
    path = _options.of(server).unix_socket
    return None if path is None else os.fspath(path)  # (a str once check_options() ran)


def create(server: Any) -> None:
    """Make *server*'s listening socket, an ``AF_UNIX`` stream socket;
    :class:`~_platform.NotAvailable` where the platform has none."""
    require("unix_sockets", hint="listen on a TCP address instead")
    server.create_socket(socket.AF_UNIX, socket.SOCK_STREAM)


def bind(server: Any, path: str) -> None:
    """Bind *server*'s socket to *path* (see the module docstring), with
    the ``unix_mode`` permissions."""
    _remove_stale(path)
    server.bind(path)
    info = os.stat(path)
    server.__dict__[_BOUND] = (os.getpid(), info.st_dev, info.st_ino)
    os.chmod(path, _options.of(server).unix_mode)


def _remove_stale(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, "%s exists and is not a socket (not removed)" % path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: a socket file left behind
    except OSError as err:
        raise OSError(err.errno, "%s: cannot tell whether a server listens there: %s" % (path, err.strerror)) from None
    else:
        raise OSError(errno.EADDRINUSE, "%s: another server listens on this socket" % path)
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def unlink(server: Any) -> None:
    """Remove the socket file *server* bound, if this process bound it and
    it is still that file."""
    bound: Optional[Tuple[int, int, int]] = server.__dict__.pop(_BOUND, None)
    path = path_of(server)
    if bound is None or path is None or bound[0] != os.getpid():
        return
    try:
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == bound[1:] and stat.S_ISSOCK(info.st_mode):
            os.unlink(path)
    except OSError:
        pass  # gone already, or not ours to remove


def peer(conn: Any, name: Any) -> Any:
    """The ``peer`` of a connection whose ``getpeername()`` gave *name*:
    *name* itself for an IP socket, ``("unix:<path>", 0)`` for a Unix
    socket's client (*path*: the socket it came in through)."""
    if isinstance(name, tuple):
        return name
    try:
        local = conn.getsockname()
    except OSError:
        local = ""
    if isinstance(local, bytes):  # an abstract socket (Linux)
        local = local.decode("utf-8", "backslashreplace")
    return ("unix:" + (local or "?"), 0)
