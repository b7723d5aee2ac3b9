"""The event loop behind a socket map: one selector, timers and a wake-up pipe.

asyncore's API is built around a plain ``dict`` (the *socket map*, fd ->
dispatcher) that code may mutate at any time.  A :class:`Reactor` is attached
to one map the first time a loop runs over it and keeps the selector in step
with the map:

* registration is lazy: a dispatcher is registered when a loop iteration
  first sees it, so code that never runs a loop (mock sockets, unit tests
  that call ``handle_read()`` directly) never touches a selector;
* interest (read/write) is recomputed only for dispatchers that said their
  state changed (``dispatcher._interest_changed()``), or every iteration for
  subclasses that override ``readable()``/``writable()``, whose answers can
  change at any time;
* timers (idle timeouts, accept back-off) and callbacks posted from other
  threads run on the loop's thread; another thread wakes a blocked loop
  through a socket pair, not by polling.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket as _socket
import sys
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from ._pollers import _IN, _OUT, EVENT_EXPT, EVENT_READ, EVENT_WRITE, POLLER, POLLER_VARIABLE, _Poller  # noqa: F401  (re-exported)

log = logging.getLogger("smtpd_compat")


class ExitNow(Exception):
    """Raise from a handler to leave ``loop()`` at once."""

    __module__ = "smtpd_compat.asyncore"  # asyncore.ExitNow, where users meet it


# id(map) -> Reactor.  The reactor holds the map itself, so an id is never
# reused while its entry exists; the entry is dropped by forget().
_reactors: Dict[int, "Reactor"] = {}
_reactors_lock = threading.Lock()


def reactor_for(map: Dict[int, Any], create: bool = True) -> Optional["Reactor"]:
    """Return the reactor serving *map*, creating it when *create* is true."""
    reactor = _reactors.get(id(map))
    if reactor is None and create:
        with _reactors_lock:
            reactor = _reactors.get(id(map))
            if reactor is None:
                reactor = _reactors[id(map)] = Reactor(map)
    return reactor


# Longest single wait, in seconds: epoll takes at most INT_MAX milliseconds
# (about 24.8 days) and raises OverflowError beyond, which a long timer (a
# command_timeout of a month) or loop(timeout=1e7) would reach.  Waking
# once an hour to wait again costs nothing.
#
# On Windows Ctrl-C does not interrupt a select() in progress: the
# KeyboardInterrupt is raised only when the wait ends.  Waits are kept to
# half a second there, so that Ctrl-C stops a loop in that time whatever
# timeout it was given (asyncore's loop() waited out its 30 s).
MAX_WAIT = 0.5 if sys.platform == "win32" else 3600.0

# reactor_of(id(map)): the reactor serving *map*, or None; reactor_for()
# without creating one, and without a Python call (async_chat asks once per
# read that queued replies).
reactor_of = _reactors.get


def forget(map: Dict[int, Any]) -> None:
    """Close and drop the reactor of *map*, if there is one."""
    with _reactors_lock:
        reactor = _reactors.pop(id(map), None)
    if reactor is not None:
        reactor.close()


class TimerHandle:
    """A scheduled call; ``cancel()`` makes it a no-op."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        # Drop the callback at once: a cancelled timer stays in the heap
        # until its time comes, and its callback (a bound method) would keep
        # a closed session, and the last message it received, alive.
        self.cancelled = True
        self.callback = _cancelled_callback


def _cancelled_callback() -> None:
    pass



def _interest(obj: Any) -> int:
    mask = 0
    if obj.readable():
        mask |= EVENT_READ
    if obj.writable() and not obj.accepting:
        mask |= EVENT_WRITE
    return mask


# Implementations of handle_expt_event() and handle_expt() that do nothing
# visible with out-of-band data (asyncore adds its defaults, which only log
# a warning that is ignored by default).  Out-of-band data is watched only
# for objects whose class replaces one of them: an urgent byte that nobody
# reads stays pending, and a poller would report it on every iteration, so
# one byte from a client would otherwise turn the loop into a busy loop.
DEFAULT_EXPT_HANDLERS: Set[Any] = set()


def _wants_expt(obj: Any) -> bool:
    cls = type(obj)
    event = getattr(cls, "handle_expt_event", None)
    if event is None:
        return False
    return event not in DEFAULT_EXPT_HANDLERS or getattr(cls, "handle_expt", None) not in DEFAULT_EXPT_HANDLERS


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Reactor:
    """Selector, timers and cross-thread calls for one socket map.

    ``busy_poll`` (seconds): after an iteration that handled socket events,
    the next one polls without blocking for up to this long before it
    sleeps.  A client that answers a reply within that time (SMTP without
    pipelining is a series of round trips) is then served without the
    server going to sleep and being woken again, which on a small machine
    costs more than the spin; an idle server spins once and then blocks.
    0 turns it off; it is off on a single CPU, where spinning would only
    delay the client.
    """

    busy_poll = 0.0001 if _cpus() > 1 else 0.0

    def __init__(self, map: Dict[int, Any]) -> None:
        self.map = map
        self.selector: Any = _Poller()
        # fd -> (dispatcher, registered mask); mask 0 means "known, not in
        # the selector" because selectors refuse an empty mask.
        self.known: Dict[int, Tuple[Any, int]] = {}
        self.dirty: Set[int] = set()
        self.polled: Set[int] = set()
        # fds whose dispatcher handles out-of-band data (_wants_expt): they
        # are watched for it whenever they are readable or writable, as
        # asyncore's select() loop did.
        self.expt: Set[int] = set()
        self.suspended: Dict[int, float] = {}
        self.timers: List[Tuple[float, int, TimerHandle]] = []
        self._compact_at = 256
        self._seq = itertools.count()
        self.calls: Deque[Callable[[], Any]] = deque()
        # Callbacks run in this iteration once every socket event it reported
        # has been handled (from the loop's thread only; append to it).
        # Channels send their replies from here: the replies of one
        # iteration then reach the clients together, and a client process
        # that serves many sessions is woken once for them, not once per
        # reply, which on a small machine costs the server more than the
        # sends themselves.
        self.after_events: List[Callable[[], Any]] = []
        # True while the events of an iteration are being handled: output
        # made then may wait for after_events.
        self.dispatching = False
        # fds owed a read event although the selector may not report one:
        # their dispatcher holds input above the socket (TLS, see read_again).
        self.read_ready: Set[int] = set()
        self.thread_id: Optional[int] = None
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self.selector.register(self._wake_fd, EVENT_READ)
        self.closed = False
        # Whether the last iteration handled a socket event, and whether
        # the last busy-poll ended without one (see busy_poll).
        self._active = False
        self._spin_missed = False

    # -- bookkeeping called by dispatchers ---------------------------------
    def mark(self, fd: Optional[int]) -> None:
        """The dispatcher on *fd* changed what it wants; recompute it."""
        if fd is not None:
            self.dirty.add(fd)

    def drop(self, fd: Optional[int]) -> None:
        """Unregister *fd* now (called before its socket is closed)."""
        if fd is None:
            return
        entry = self.known.pop(fd, None)
        self.dirty.discard(fd)
        self.polled.discard(fd)
        self.expt.discard(fd)
        self.suspended.pop(fd, None)
        self.read_ready.discard(fd)
        if entry is not None and entry[1]:
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass

    def suspend_reading(self, obj: Any, delay: float) -> None:
        """Stop read interest for *obj* for *delay* seconds (accept back-off)."""
        fd = obj._fileno
        if fd is None:
            return
        self.suspended[fd] = time.monotonic() + delay
        self.dirty.add(fd)

        def resume() -> None:
            self.suspended.pop(fd, None)
            self.dirty.add(fd)

        self.call_later(delay, resume)

    def read_again(self, fd: Optional[int]) -> None:
        """Give the dispatcher on *fd* a read event at the end of this loop
        iteration (or in the next one) even if its socket has no new bytes.

        For input the selector cannot see: an ``SSLSocket`` may hold
        decrypted bytes (``pending()``) after a read.  The event is only
        delivered while the dispatcher is ``readable()``; one that stops
        reading asks again when it resumes.
        """
        if fd is not None:
            self.read_ready.add(fd)

    # -- timers and cross-thread calls -------------------------------------
    def call_later(self, delay: float, callback: Callable[[], Any]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback)
        timers = self.timers
        if len(timers) >= self._compact_at:
            # Idle timeouts are mostly cancelled and re-armed: drop the
            # cancelled entries whenever the heap has doubled since the last
            # clean-up (amortised O(1) per timer).
            timers[:] = [entry for entry in timers if not entry[2].cancelled]
            heapq.heapify(timers)
            self._compact_at = max(256, 2 * len(timers))
        heapq.heappush(timers, (handle.when, next(self._seq), handle))
        if self.thread_id is not None and self.thread_id != threading.get_ident():
            self.wakeup()
        return handle

    def call_soon_threadsafe(self, callback: Callable[[], Any]) -> None:
        self.calls.append(callback)
        self.wakeup()

    def wakeup(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake-up is already pending) or closed

    # -- the loop body -------------------------------------------------------
    def _set(self, fd: int, obj: Any, mask: int) -> None:
        entry = self.known.get(fd)
        old_obj, old_mask = entry if entry is not None else (None, 0)
        if fd in self.suspended:
            mask &= ~EVENT_READ
        if entry is not None and old_obj is obj and old_mask == mask:
            return
        self.known[fd] = (obj, mask)
        try:
            if old_mask and mask:
                self.selector.modify(fd, mask)
            elif mask:
                self.selector.register(fd, mask)
            elif old_mask:
                self.selector.unregister(fd)
        except KeyError:
            # The selector and our table disagree (the fd was reused by a
            # new dispatcher); start afresh for this fd.
            try:
                self.selector.unregister(fd)
            except (KeyError, ValueError, OSError):
                pass
            if mask:
                self.selector.register(fd, mask)
        except (ValueError, OSError):
            # A closed or invalid descriptor: the dispatcher will notice on
            # its next operation; keep it out of the selector.
            self.known[fd] = (obj, 0)

    def _sync(self) -> None:
        map = self.map
        known = self.known
        if len(known) != len(map):
            # The map was changed without telling us (code may edit the
            # dict directly): reconcile the whole table once.
            for fd in [fd for fd in known if fd not in map]:
                self.drop(fd)
            for fd in map:
                if fd not in known:
                    self.dirty.add(fd)
        if self.dirty:
            dirty, self.dirty = self.dirty, set()
            for fd in dirty:
                obj = map.get(fd)
                if obj is None:
                    self.drop(fd)
                    continue
                entry = known.get(fd)
                if entry is None or entry[0] is not obj:
                    self._classify(fd, obj)
                self._update(fd, obj)
        for fd in list(self.polled):
            obj = map.get(fd)
            if obj is None:
                self.drop(fd)
            else:
                self._update(fd, obj)

    def _classify(self, fd: int, obj: Any) -> None:
        if getattr(obj, "_interest_tracked", None) is not None and obj._interest_tracked():
            self.polled.discard(fd)
        else:
            self.polled.add(fd)
        if _wants_expt(obj):
            self.expt.add(fd)
        else:
            self.expt.discard(fd)

    def _update(self, fd: int, obj: Any) -> None:
        try:
            mask = _interest(obj)
        except Exception:
            log.exception("readable()/writable() failed for %r", obj)
            mask = 0
        if mask and fd in self.expt:
            mask |= EVENT_EXPT
        self._set(fd, obj, mask)

    def poll(
        self,
        timeout: Optional[float],
        dispatch: Callable[[Any, int], None],
        failed: Optional[Callable[[Any, BaseException], None]] = None,
    ) -> None:
        """Run one iteration: wait up to *timeout* seconds, dispatch events,
        run due timers and posted calls.

        With *failed*, a read event (the most common) calls the object's
        ``handle_read_event()`` here, and ``failed(obj, exc)`` if it raises:
        what *dispatch* would do, without a call in between.
        """
        self.thread_id = threading.get_ident()
        # Most iterations change no interest: skip _sync() (a call and a
        # list) unless something is dirty, polled or added behind our back.
        if self.dirty or self.polled or len(self.known) != len(self.map):
            self._sync()
        events = self._wait(self._wait_for(timeout))
        self.dispatching = True
        try:
            self._dispatch(events, dispatch, failed)
            if self.read_ready:
                self._dispatch_read_again(dispatch)
        except BaseException:
            # A handler ended the loop (asyncore.ExitNow): replies queued
            # earlier in this iteration are still sent, as a push() in
            # asyncore would have sent them at once.
            self.dispatching = False
            self._run_after_events()
            raise
        self.dispatching = False
        if self.after_events:
            callbacks, self.after_events = self.after_events, []
            for callback in callbacks:  # _run(), inlined: once per reply
                try:
                    callback()
                except Exception as exc:
                    self._failed(callback, exc)
        if self.timers:
            self._run_timers()
        if self.calls:
            self._run_calls()

    def _wait_for(self, timeout: Optional[float]) -> float:
        """How long this iteration may wait: *timeout*, shortened by what is
        due (timers, posted calls, owed reads), within what epoll takes."""
        if self.calls or self.read_ready:
            return 0.0
        if self.timers:
            delay = max(0.0, self.timers[0][0] - time.monotonic())
            timeout = delay if timeout is None else min(timeout, delay)
        if timeout is None or timeout > MAX_WAIT:
            return MAX_WAIT
        return timeout if timeout > 0 else 0.0

    def _wait(self, timeout: float) -> List[Tuple[int, int]]:
        """The events of this iteration: after a brief busy poll when the
        last iteration was active (see busy_poll), else after waiting."""
        selector = self.selector
        try:
            spin = self.busy_poll
            if self._active and spin and timeout != 0:
                if self._spin_missed:
                    # The last spin found nothing: the peers are busy, and
                    # spinning would take CPU from them.  Sleep this time.
                    self._spin_missed = False
                else:
                    # Busy-poll briefly before sleeping, never past a timer
                    # that is due sooner.
                    if timeout < spin:
                        spin = timeout
                    start = time.monotonic()
                    deadline = start + spin
                    events = selector.select(0)
                    while not events and time.monotonic() < deadline:
                        events = selector.select(0)
                    self._spin_missed = not events
                    if events:
                        return events  # type: ignore[no-any-return]
                    timeout = max(0.0, timeout - (time.monotonic() - start))
            return selector.select(timeout)  # type: ignore[no-any-return]
        except InterruptedError:
            return []

    def _dispatch(
        self,
        events: List[Tuple[int, int]],
        dispatch: Callable[[Any, int], None],
        failed: Optional[Callable[[Any, BaseException], None]],
    ) -> None:
        """Hand each event to its dispatcher (through the socket map)."""
        map = self.map
        wake_fd = self._wake_fd
        selector = self.selector
        self._active = False
        for fd, bits in events:
            if fd == wake_fd:
                self._drain_wakeups()
                continue
            self._active = True
            obj = map.get(fd)
            if obj is None:
                continue
            if bits == _IN:
                if failed is None:
                    dispatch(obj, EVENT_READ)
                else:
                    try:
                        obj.handle_read_event()
                    except BaseException as exc:
                        failed(obj, exc)
            elif bits == _OUT:
                dispatch(obj, EVENT_WRITE)
            else:
                mask = selector.mask_of(fd, bits)
                if mask:
                    dispatch(obj, mask)

    def _run_after_events(self) -> None:
        callbacks, self.after_events = self.after_events, []
        for callback in callbacks:
            self._run(callback)

    def _dispatch_read_again(self, dispatch: Callable[[Any, int], None]) -> None:
        # Requests made during this iteration's events count too: a
        # dispatcher asks right after a read that left input buffered.
        ready, self.read_ready = self.read_ready, set()
        for fd in ready:
            obj = self.map.get(fd)
            if obj is None:
                continue
            try:
                if not obj.readable():
                    continue
            except Exception:
                log.exception("readable() failed for %r", obj)
                continue
            dispatch(obj, EVENT_READ)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _run_timers(self) -> None:
        timers = self.timers
        if not timers:
            return
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            handle = heapq.heappop(timers)[2]
            if handle.cancelled:
                continue
            handle.cancelled = True
            self._run(handle.callback)

    def _run_calls(self) -> None:
        for _ in range(len(self.calls)):
            self._run(self.calls.popleft())

    @staticmethod
    def _run(callback: Callable[[], Any]) -> None:
        try:
            callback()
        except Exception as exc:
            Reactor._failed(callback, exc)

    @staticmethod
    def _failed(callback: Callable[[], Any], exc: Exception) -> None:
        if isinstance(exc, ExitNow):
            raise exc  # it ends the loop
        log.exception("error in scheduled callback %r", callback, exc_info=exc)

    def _reopen_after_fork(self) -> None:
        """In a forked child: a poller and wake-up pair of this process's
        own, every dispatcher registered again at the next iteration."""
        old = (self.selector, self._wake_r, self._wake_w)
        self.selector = _Poller()
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self.selector.register(self._wake_fd, EVENT_READ)
        for resource in old:
            try:
                resource.close()  # the child's copies; the parent keeps its own
            except OSError:
                pass
        self.known.clear()
        self.polled.clear()
        self.dirty = set(self.map)
        self.calls.clear()  # posted by threads of the parent, which the child has not
        self.thread_id = None
        self.dispatching = False
        self._active = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.selector.close()
        finally:
            self._wake_r.close()
            self._wake_w.close()


def _after_fork_in_child() -> None:
    """A forked child has copies of the parent's reactors, whose epoll
    instance and wake-up sockets it would share with the parent (an epoll
    descriptor names the same kernel object in both), and none of the
    parent's threads: give every reactor a poller and wake-up pair of its
    own, and new locks."""
    global _reactors_lock
    _reactors_lock = threading.Lock()
    for reactor in list(_reactors.values()):
        if not reactor.closed:
            reactor._reopen_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

