"""asyncore's public API on top of :mod:`selectors`.

Drop-in for the ``asyncore`` module removed from Python 3.12: the same
``dispatcher`` class and hooks, ``loop()``, ``poll()``/``poll2()``,
``socket_map`` and ``close_all()``.  What differs is underneath:

* the loop uses ``selectors.DefaultSelector`` (epoll on Linux), so descriptors
  above 1024 work and an idle connection costs nothing per iteration;
* a dispatcher is registered lazily, the first time a loop iteration sees it,
  and its interest is only recomputed when it changes (see ``_reactor``);
* an ``EMFILE``/``ENFILE`` on ``accept()`` pauses accepting briefly instead of
  closing the listening socket;
* ``log_info()`` and ``handle_error()`` report through the ``logging`` module
  (logger ``smtpd_compat``) instead of printing to stdout.

Socket objects are created through this module's ``socket`` global, so a test
may replace it with a mock module (``asyncore.socket = mock_socket``).
"""

from __future__ import annotations

import logging
import os
import select
import socket
import sys
import time
import warnings
from errno import (
    EAGAIN,
    EALREADY,
    EBADF,
    ECONNABORTED,
    ECONNRESET,
    EINPROGRESS,
    EINVAL,
    EISCONN,
    EMFILE,
    ENFILE,
    ENOBUFS,
    ENOMEM,
    ENOTCONN,
    EPIPE,
    ESHUTDOWN,
    EWOULDBLOCK,
    errorcode,
)
from typing import Any, Dict, Optional, Set, Tuple

from . import _pollers, _reactor
from ._reactor import ExitNow

__all__ = [
    "ExitNow",
    "close_all",
    "compact_traceback",
    "dispatcher",
    "dispatcher_with_send",
    "loop",
    "poll",
    "poll2",
    "read",
    "readwrite",
    "socket_map",
    "write",
]
# CPython's asyncore had no __all__, so "from asyncore import *" also gave
# the modules and errno names it imported; code written against that keeps
# them (select and time are imported above for this alone).
__all__ += [
    "EAGAIN", "EALREADY", "EBADF", "ECONNABORTED", "ECONNRESET", "EINPROGRESS", "EINVAL", "EISCONN",
    "ENOTCONN", "EPIPE", "ESHUTDOWN", "EWOULDBLOCK", "errorcode",
    "os", "poll3", "select", "socket", "sys", "time", "warnings",
]

log = logging.getLogger("smtpd_compat")

_DISCONNECTED = frozenset({ECONNRESET, ENOTCONN, ESHUTDOWN, ECONNABORTED, EPIPE, EBADF})
# Running out of descriptors or buffers is a passing condition for a server:
# back off and accept again later rather than closing the listening socket.
_ACCEPT_BACKOFF_ERRORS = frozenset({EMFILE, ENFILE, ENOBUFS, ENOMEM})
ACCEPT_BACKOFF = 0.1

# A socket map: file descriptor -> dispatcher.
SocketMap = Dict[int, Any]

socket_map: SocketMap = {}

_reraised_exceptions = (ExitNow, KeyboardInterrupt, SystemExit)


def _strerror(err: int) -> str:
    try:
        return os.strerror(err)
    except (ValueError, OverflowError, NameError):
        if err in errorcode:
            return errorcode[err]
        return "Unknown error %s" % err


# -- one-event helpers (asyncore's module-level API) ---------------------------
def _handle(obj: "dispatcher", event: str) -> None:
    try:
        getattr(obj, event)()
    except _reraised_exceptions:
        raise
    except BaseException:
        obj.handle_error()


def read(obj: "dispatcher") -> None:
    _handle(obj, "handle_read_event")


def write(obj: "dispatcher") -> None:
    _handle(obj, "handle_write_event")


def _exception(obj: "dispatcher") -> None:
    _handle(obj, "handle_expt_event")


def readwrite(obj: "dispatcher", flags: int) -> None:
    """Dispatch *flags* (``select.POLL*`` bits) to *obj*'s event handlers."""
    import select

    try:
        if flags & select.POLLIN:
            obj.handle_read_event()
        if flags & select.POLLOUT:
            obj.handle_write_event()
        if flags & select.POLLPRI:
            obj.handle_expt_event()
        if flags & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
            obj.handle_close()
    except BaseException as exc:
        _event_failed(obj, exc)


def _dispatch(obj: "dispatcher", mask: int) -> None:
    # In readwrite()'s order: read, write, then out-of-band data.
    try:
        if mask & _pollers.EVENT_READ:
            obj.handle_read_event()
        if mask & _pollers.EVENT_WRITE and obj._fileno is not None:
            obj.handle_write_event()
        if mask & _pollers.EVENT_EXPT and obj._fileno is not None:
            obj.handle_expt_event()
    except BaseException as exc:
        _event_failed(obj, exc)


def _event_failed(obj: "dispatcher", exc: BaseException) -> None:
    """What an exception out of an event handler does (called inside the
    ``except`` block, so handle_error() sees it): a lost connection closes
    the dispatcher, asyncore.ExitNow and interrupts stop the loop, anything
    else goes to handle_error()."""
    if isinstance(exc, OSError) and exc.errno in _DISCONNECTED:
        obj.handle_close()
    elif isinstance(exc, _reraised_exceptions):
        raise exc
    else:
        obj.handle_error()


# -- the loop -------------------------------------------------------------------
def poll(timeout: Optional[float] = 0.0, map: Optional[SocketMap] = None) -> None:
    """Run one loop iteration over *map*, waiting at most *timeout* seconds."""
    if map is None:
        map = socket_map
    if not map:
        return
    reactor = _reactor.reactor_for(map)
    assert reactor is not None  # create=True makes one
    reactor.poll(timeout, _dispatch, _event_failed)


# poll2 and poll3 chose between select() and poll() in asyncore; both are one
# selector iteration here.
poll2 = poll3 = poll


def loop(
    timeout: float = 30.0,
    use_poll: bool = False,
    map: Optional[SocketMap] = None,
    count: Optional[int] = None,
) -> None:
    """Serve the dispatchers in *map* until it is empty, or *count* iterations.

    *use_poll* is accepted for compatibility; the best selector available
    (epoll on Linux) is always used.
    """
    if map is None:
        map = socket_map
    if count is None:
        while map:
            poll(timeout, map)
    else:
        while map and count > 0:
            poll(timeout, map)
            count -= 1
    if not map:
        _reactor.forget(map)


# Implementations of readable()/writable() whose answers only change when
# the dispatcher says so (see dispatcher._interest_changed).
_TRACKED_READABLE: Set[Any] = set()
_TRACKED_WRITABLE: Set[Any] = set()


class dispatcher:
    """A thin wrapper around a non-blocking socket, driven by ``loop()``.

    Methods that may be overridden: ``readable``, ``writable`` and the
    ``handle_*`` event hooks.  Methods for the caller: ``create_socket``,
    ``bind``, ``listen``, ``connect``, ``accept``, ``send``, ``recv``, ``close``.
    """

    debug = False
    connected = False
    accepting = False
    connecting = False
    closing = False
    addr: Any = None
    # The socket (or socket-like object) under this dispatcher; None until one is set.
    socket: Any
    ignore_log_types = frozenset({"warning"})

    def __init__(self, sock: Optional[Any] = None, map: Optional[SocketMap] = None) -> None:
        if map is None:
            self._map = socket_map
        else:
            self._map = map
        self._fileno: Optional[int] = None
        if sock:
            # A socket from a blocking source must not block the loop.
            sock.setblocking(False)
            self.set_socket(sock, map)
            self.connected = True
            try:
                self.addr = sock.getpeername()
            except OSError as err:
                if err.errno in (ENOTCONN, EINVAL):
                    self.connected = False  # a socket that is not connected yet
                else:
                    self.del_channel(map)
                    raise
        else:
            self.socket = None

    def __repr__(self) -> str:
        status = [self.__class__.__module__ + "." + self.__class__.__qualname__]
        if self.accepting and self.addr:
            status.append("listening")
        elif self.connected:
            status.append("connected")
        if self.addr is not None:
            try:
                status.append("%s:%d" % self.addr)
            except TypeError:
                status.append(repr(self.addr))
        return "<%s at %#x>" % (" ".join(status), id(self))

    # -- the map and the reactor ---------------------------------------------
    def _reactor(self) -> Optional[_reactor.Reactor]:
        return _reactor.reactor_for(self._map, create=False)

    def _interest_tracked(self) -> bool:
        cls = type(self)
        return cls.readable in _TRACKED_READABLE and cls.writable in _TRACKED_WRITABLE

    def _interest_changed(self) -> None:
        reactor = _reactor._reactors.get(id(self._map))
        if reactor is not None:
            reactor.mark(self._fileno)

    def add_channel(self, map: Optional[SocketMap] = None) -> None:
        if map is None:
            map = self._map
        assert self._fileno is not None
        map[self._fileno] = self
        reactor = _reactor.reactor_for(map, create=False)
        if reactor is not None:
            reactor.mark(self._fileno)

    def del_channel(self, map: Optional[SocketMap] = None) -> None:
        fd = self._fileno
        if map is None:
            map = self._map
        if fd is not None and fd in map:
            del map[fd]
        reactor = _reactor.reactor_for(map, create=False)
        if reactor is not None:
            reactor.drop(fd)
        self._fileno = None

    def create_socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> None:
        self.family_and_type = family, type
        sock = socket.socket(family, type)
        sock.setblocking(False)
        self.set_socket(sock)

    def set_socket(self, sock: Any, map: Optional[SocketMap] = None) -> None:
        self.socket = sock
        self._fileno = sock.fileno()
        self.add_channel(map)

    def set_reuse_addr(self) -> None:
        try:
            self.socket.setsockopt(
                socket.SOL_SOCKET,
                socket.SO_REUSEADDR,
                self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) | 1,
            )
        except OSError:
            pass

    # -- predicates the loop asks ---------------------------------------------
    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    # -- socket methods --------------------------------------------------------
    # asyncore's own cap on the backlog on Windows (SMTPServer lifts it).
    _cap_backlog_on_windows = True

    def listen(self, num: int) -> Any:
        self.accepting = True
        self._interest_changed()
        if os.name == "nt" and num > 5 and self._cap_backlog_on_windows:
            num = 5
        return self.socket.listen(num)

    def bind(self, addr: Any) -> Any:
        self.addr = addr
        return self.socket.bind(addr)

    def connect(self, address: Any) -> None:
        self.connected = False
        self.connecting = True
        self._interest_changed()
        err = self.socket.connect_ex(address)
        if err in (EINPROGRESS, EALREADY, EWOULDBLOCK) or (err == EINVAL and os.name == "nt"):
            self.addr = address
            return
        if err in (0, EISCONN):
            self.addr = address
            self.handle_connect_event()
        else:
            raise OSError(err, errorcode[err])

    def accept(self) -> Optional[Tuple[Any, Any]]:
        try:
            conn, addr = self.socket.accept()
        except TypeError:
            return None
        except OSError as why:
            if why.errno in (EWOULDBLOCK, ECONNABORTED, EAGAIN):
                return None
            if why.errno in _ACCEPT_BACKOFF_ERRORS:
                log.warning(
                    "accept() failed (%s); pausing accepts for %.1fs",
                    _strerror(why.errno),
                    ACCEPT_BACKOFF,
                )
                reactor = self._reactor()
                if reactor is not None:
                    reactor.suspend_reading(self, ACCEPT_BACKOFF)
                return None
            raise
        else:
            return conn, addr

    def send(self, data: bytes) -> int:
        try:
            sent: int = self.socket.send(data)
            return sent
        except OSError as why:
            if why.errno == EWOULDBLOCK:
                return 0
            if why.errno in _DISCONNECTED:
                self.handle_close()
                return 0
            raise

    def recv(self, buffer_size: int) -> bytes:
        try:
            data: bytes = self.socket.recv(buffer_size)
        except OSError as why:
            if why.errno in _DISCONNECTED:
                self.handle_close()
                return b""
            raise
        if not data:
            # A closed connection is signalled by a readable socket that
            # returns no data.
            self.handle_close()
            return b""
        return data

    def close(self) -> None:
        self.connected = False
        # Only if not the class's False (a channel's dict keeps its shared keys).
        if self.accepting:
            self.accepting = False
        if self.connecting:
            self.connecting = False
        # Unregister before closing, so the selector never holds a dead fd.
        self.del_channel()
        if self.socket is not None:
            try:
                self.socket.close()
            except OSError as why:
                if why.errno not in (ENOTCONN, EBADF):
                    raise

    # -- logging ---------------------------------------------------------------
    def log(self, message: Any) -> None:
        sys.stderr.write("log: %s\n" % str(message))

    def log_info(self, message: Any, type: str = "info") -> None:
        """Report *message* (asyncore printed it on stdout; here it goes to
        the ``smtpd_compat`` logger, with the traceback of the exception
        being handled when *type* is ``"error"``)."""
        if type not in self.ignore_log_types:
            level = {"error": logging.ERROR, "warning": logging.WARNING}.get(type, logging.INFO)
            exc_info = level == logging.ERROR and sys.exc_info()[0] is not None
            log.log(level, "%s", message, exc_info=exc_info)

    # -- event dispatch --------------------------------------------------------
    def handle_read_event(self) -> None:
        if self.accepting:
            # A listening socket is readable when a connection waits.
            self.handle_accept()
        elif not self.connected:
            if self.connecting:
                self.handle_connect_event()
            self.handle_read()
        else:
            self.handle_read()

    def handle_connect_event(self) -> None:
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, _strerror(err))
        self.handle_connect()
        self.connected = True
        self.connecting = False
        self._interest_changed()

    def handle_write_event(self) -> None:
        if self.accepting:
            return
        if not self.connected:
            if self.connecting:
                self.handle_connect_event()
        self.handle_write()

    def handle_expt_event(self) -> None:
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            self.handle_close()
        else:
            self.handle_expt()

    def handle_error(self) -> None:
        """Report the exception being handled through ``log_info()`` and
        close this dispatcher, as asyncore did."""
        nil, t, v, tbinfo = compact_traceback()
        try:
            self_repr = repr(self)
        except Exception:
            self_repr = "<__repr__(self) failed for object at %0x>" % id(self)
        self.log_info(
            "uncaptured python exception, closing channel %s (%s:%s %s)" % (self_repr, t, v, tbinfo),
            "error",
        )
        self.handle_close()

    def handle_expt(self) -> None:
        self.log_info("unhandled incoming priority event", "warning")

    def handle_read(self) -> None:
        self.log_info("unhandled read event", "warning")

    def handle_write(self) -> None:
        self.log_info("unhandled write event", "warning")

    def handle_connect(self) -> None:
        self.log_info("unhandled connect event", "warning")

    def handle_accept(self) -> None:
        pair = self.accept()
        if pair is not None:
            self.handle_accepted(*pair)

    def handle_accepted(self, sock: Any, addr: Any) -> None:
        sock.close()
        self.log_info("unhandled accepted event", "warning")

    def handle_close(self) -> None:
        self.log_info("unhandled close event", "warning")
        self.close()


_TRACKED_READABLE.add(dispatcher.readable)
_TRACKED_WRITABLE.add(dispatcher.writable)
# Out-of-band data is watched only for classes that handle it (see _reactor).
_reactor.DEFAULT_EXPT_HANDLERS.update((dispatcher.handle_expt_event, dispatcher.handle_expt))


class dispatcher_with_send(dispatcher):
    """A dispatcher that buffers what ``send()`` could not write at once."""

    def __init__(self, sock: Optional[Any] = None, map: Optional[SocketMap] = None) -> None:
        dispatcher.__init__(self, sock, map)
        self.out_buffer = b""

    def initiate_send(self) -> None:
        num_sent = dispatcher.send(self, self.out_buffer[:65536])
        self.out_buffer = self.out_buffer[num_sent:]
        self._interest_changed()

    def handle_write(self) -> None:
        self.initiate_send()

    def writable(self) -> bool:
        return (not self.connected) or bool(len(self.out_buffer))

    def send(self, data: bytes) -> None:  # type: ignore[override]
        if self.debug:
            self.log_info("sending %s" % repr(data))
        self.out_buffer = self.out_buffer + data
        self.initiate_send()


_TRACKED_WRITABLE.add(dispatcher_with_send.writable)


def compact_traceback() -> Tuple[Tuple[str, str, str], Any, Any, str]:
    """Summarise the exception being handled as asyncore did."""
    t, v, tb = sys.exc_info()
    if not tb:
        raise AssertionError("traceback does not exist")
    frames = []
    while tb:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_frame.f_code.co_name, str(tb.tb_lineno)))
        tb = tb.tb_next
    del tb
    info = " ".join("[%s|%s|%s]" % frame for frame in frames)
    return frames[-1], t, v, info


def close_all(map: Optional[SocketMap] = None, ignore_all: bool = False) -> None:
    """Close every dispatcher in *map* (default: ``socket_map``) and empty it."""
    if map is None:
        map = socket_map
    for obj in list(map.values()):
        try:
            obj.close()
        except OSError as err:
            if err.errno == EBADF:
                pass
            elif not ignore_all:
                raise
        except _reraised_exceptions:
            raise
        except BaseException:
            if not ignore_all:
                raise
    map.clear()
    _reactor.forget(map)


if os.name == "posix":
    from ._file_wrapper import file_wrapper

    class file_dispatcher(dispatcher):
        """A dispatcher over a file descriptor (pipes, ttys)."""

        def __init__(self, fd: Any, map: Optional[SocketMap] = None) -> None:
            dispatcher.__init__(self, None, map)
            self.connected = True
            try:
                fd = fd.fileno()
            except AttributeError:
                pass
            self.set_file(fd)
            os.set_blocking(fd, False)

        def set_file(self, fd: int) -> None:
            self.socket = file_wrapper(fd)
            self._fileno = self.socket.fileno()
            self.add_channel()

    __all__ += ["file_dispatcher", "file_wrapper"]
