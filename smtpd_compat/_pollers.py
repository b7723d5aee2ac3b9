"""Pollers: one interface over epoll, poll() and select().

The reactor (``_reactor``) asks a poller to watch descriptors for reading,
writing and exceptional conditions (out-of-band data) and to wait for
events.  Each poller offers ``selectors``' register/modify/unregister
interface and a ``select(timeout)`` that returns ``(fd, events)`` pairs in
epoll's bits (:data:`IN`, :data:`PRI`, :data:`OUT`), so that a loop
iteration builds no ``SelectorKey`` list.  Which one is used is decided once,
at import: the best the platform has, or the one named by the environment
variable ``SMTPD_COMPAT_POLLER`` (docs/platforms.md).
"""

from __future__ import annotations

import math
import os
import select
import selectors
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ._platform import NotAvailable

EVENT_READ = selectors.EVENT_READ
EVENT_WRITE = selectors.EVENT_WRITE

# Event bits as the pollers below report them: epoll's values, which are
# also poll()'s (the select() poller builds them from its three sets).
IN = _IN = 0x001
PRI = _PRI = 0x002  # out-of-band data (TCP urgent): select()'s "exceptional" set
OUT = _OUT = 0x004

# A third interest bit beside selectors' EVENT_READ and EVENT_WRITE, for
# exceptional conditions (out-of-band data): asyncore's handle_expt_event().
# The pollers below take it; dispatch() receives it in the mask.
EVENT_EXPT = 4

# The environment variable that chooses the poller (docs/platforms.md).
POLLER_VARIABLE = "SMTPD_COMPAT_POLLER"


class _BitsPoller:
    """What the pollers share: ``selectors``' register/modify/unregister
    interface, the registered masks, and the mapping of unusual event bits
    back to a mask.

    ``select()`` returns ``(fd, events)`` pairs in the bits above, so a loop
    iteration builds no ``SelectorKey`` list; the reactor maps events to
    dispatchers through the socket map itself.  Errors follow ``selectors``:
    KeyError for an fd registered twice or not registered, OSError from the
    kernel for a bad descriptor.
    """

    def __init__(self) -> None:
        self._masks: Dict[int, int] = {}

    @staticmethod
    def _bits(mask: int) -> int:
        return (
            (_IN if mask & EVENT_READ else 0)
            | (_OUT if mask & EVENT_WRITE else 0)
            | (_PRI if mask & EVENT_EXPT else 0)
        )

    def mask_of(self, fd: int, events: int) -> int:
        """The mask for *events* other than a plain read or write: out-of-band
        data, and errors and hang-ups, which (as ``EpollSelector`` does)
        wake both directions the fd asked for."""
        mask = 0
        if events & _PRI:
            mask = EVENT_EXPT
            events &= ~_PRI
        if events & ~_IN:
            mask |= EVENT_WRITE
        if events & ~_OUT:
            mask |= EVENT_READ
        return mask & self._masks.get(fd, 0)


class _EpollPoller(_BitsPoller):
    """The poller on Linux: a bare ``epoll`` object.

    epoll refuses descriptors that never block (regular files, directories:
    EPERM), which select() and poll() report ready at once.  Such a
    descriptor is kept in ``_files`` and reported ready on every call, as
    they would, so a ``file_dispatcher`` on a file is served the same way.
    """

    def __init__(self) -> None:
        super().__init__()
        self._epoll = select.epoll()
        self._files: Dict[int, int] = {}  # fd -> the bits it is ready for

    def _watch(self, fd: int, mask: int) -> None:
        try:
            self._epoll.register(fd, self._bits(mask))
        except PermissionError:
            self._files[fd] = self._bits(mask) & (_IN | _OUT)  # never exceptional
            # Only while a file is registered does select() take the longer
            # path; an instance attribute shadows the method meanwhile.
            self.select = self._select_with_files  # type: ignore[method-assign]

    def _unwatch_file(self, fd: int) -> None:
        del self._files[fd]
        if not self._files:
            del self.select

    def register(self, fd: int, mask: int) -> None:
        if fd in self._masks:
            raise KeyError(fd)
        self._watch(fd, mask)
        self._masks[fd] = mask

    def modify(self, fd: int, mask: int) -> None:
        if fd not in self._masks:
            raise KeyError(fd)
        if fd in self._files:
            # Perhaps no longer the same file (closed and reused): ask epoll again.
            self._unwatch_file(fd)
            self._watch(fd, mask)
        else:
            try:
                self._epoll.modify(fd, self._bits(mask))
            except FileNotFoundError:
                # The descriptor was closed and reused behind our back; the
                # kernel forgot the old registration.
                self._watch(fd, mask)
        self._masks[fd] = mask

    def unregister(self, fd: int) -> None:
        del self._masks[fd]
        if fd in self._files:
            self._unwatch_file(fd)
            return
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # already closed: the kernel dropped it

    def select(self, timeout: Optional[float]) -> List[Tuple[int, int]]:
        return self._epoll.poll(-1 if timeout is None else timeout, max(len(self._masks), 1))

    def _select_with_files(self, timeout: Optional[float]) -> List[Tuple[int, int]]:
        # A file is always ready: look at the rest without waiting.
        events = self._epoll.poll(0, max(len(self._masks), 1))
        events.extend(self._files.items())
        return events

    def close(self) -> None:
        self._epoll.close()


class _PollPoller(_BitsPoller):
    """The poller where there is ``poll()`` but no epoll (macOS, the BSDs)."""

    def __init__(self) -> None:
        super().__init__()
        self._poll = select.poll()

    def register(self, fd: int, mask: int) -> None:
        if fd in self._masks:
            raise KeyError(fd)
        self._poll.register(fd, self._bits(mask))
        self._masks[fd] = mask

    def modify(self, fd: int, mask: int) -> None:
        if fd not in self._masks:
            raise KeyError(fd)
        self._poll.register(fd, self._bits(mask))  # poll's register() also modifies
        self._masks[fd] = mask

    def unregister(self, fd: int) -> None:
        del self._masks[fd]
        self._poll.unregister(fd)

    def select(self, timeout: Optional[float]) -> List[Tuple[int, int]]:
        # poll() takes milliseconds; rounding up keeps a timer from being
        # polled for again just before it is due.
        return self._poll.poll(None if timeout is None else math.ceil(timeout * 1e3))

    def close(self) -> None:
        pass


class _SelectPoller(_BitsPoller):
    """The poller where there is only ``select()`` (Windows).

    Descriptors must be below FD_SETSIZE (1024 on Linux; on Windows at most
    512 sockets), or select() raises ValueError: see docs/platforms.md.
    """

    def __init__(self) -> None:
        super().__init__()
        self._readers: Set[int] = set()
        self._writers: Set[int] = set()
        # Those waiting to write are watched for exceptional conditions too:
        # Windows reports a failed connect() there, not as writable.
        self._exceptional: Set[int] = set()

    def _place(self, fd: int, mask: int) -> None:
        for wanted, group in (
            (mask & EVENT_READ, self._readers),
            (mask & EVENT_WRITE, self._writers),
            (mask & (EVENT_WRITE | EVENT_EXPT), self._exceptional),
        ):
            if wanted:
                group.add(fd)
            else:
                group.discard(fd)

    def register(self, fd: int, mask: int) -> None:
        if fd in self._masks:
            raise KeyError(fd)
        if fd < 0:
            raise ValueError("invalid file descriptor %d" % fd)
        self._place(fd, mask)
        self._masks[fd] = mask

    def modify(self, fd: int, mask: int) -> None:
        if fd not in self._masks:
            raise KeyError(fd)
        self._place(fd, mask)
        self._masks[fd] = mask

    def unregister(self, fd: int) -> None:
        del self._masks[fd]
        self._place(fd, 0)

    def select(self, timeout: Optional[float]) -> List[Tuple[int, int]]:
        # Never three empty sets (which Windows refuses): the reactor's
        # wake-up socket is always registered for reading.
        readable, writable, exceptional = select.select(self._readers, self._writers, self._exceptional, timeout)
        ready = dict.fromkeys(readable, _IN)
        for fd in writable:
            ready[fd] = ready.get(fd, 0) | _OUT
        for fd in exceptional:
            mask = self._masks[fd]
            bits = (_PRI if mask & EVENT_EXPT else 0) | (_OUT if mask & EVENT_WRITE else 0)
            ready[fd] = ready.get(fd, 0) | bits
        return list(ready.items())

    def close(self) -> None:
        pass


def _available_pollers() -> Dict[str, Callable[[], Any]]:
    """The pollers this platform has, best first."""
    pollers: Dict[str, Callable[[], Any]] = {}
    if hasattr(select, "epoll"):
        pollers["epoll"] = _EpollPoller
    if hasattr(select, "poll"):
        pollers["poll"] = _PollPoller
    pollers["select"] = _SelectPoller
    return pollers


def _choose_poller(requested: str) -> Tuple[str, Callable[[], Any]]:
    """The poller named *requested* (the value of SMTPD_COMPAT_POLLER), or
    the best one available when it is empty.

    A name that is unknown or not available here is not an error at import:
    the factory returned raises when the first loop creates its poller.
    """
    pollers = _available_pollers()
    name = requested.strip().lower()
    if not name:
        name = next(iter(pollers))
    if name in pollers:
        return name, pollers[name]
    if name in ("epoll", "poll", "select"):
        error: Exception = NotAvailable(
            "the %s poller is not available on this platform (%s=%s; available: %s)"
            % (name, POLLER_VARIABLE, requested, ", ".join(pollers))
        )
    else:
        error = ValueError("%s=%r: expected epoll, poll or select" % (POLLER_VARIABLE, requested))

    def refuse() -> Any:
        raise error

    return name, refuse


# POLLER: the name of the poller every Reactor uses ("epoll" on Linux).
POLLER, _Poller = _choose_poller(os.environ.get(POLLER_VARIABLE, ""))
