"""Several processes: ``serve_forever(workers=N)`` and ``--workers N``.

The parent has bound and listens on the server's socket (so port 0 works
and every worker shares one accept queue); it forks *N* workers, each of
which runs the usual :func:`_serving.serve_forever` on its own copy of the
server with a reactor of its own (``_reactor``'s at-fork handler), and
then only supervises:

* a worker that ends while the server is not stopping is started again;
  one that ends less than ``START_GRACE`` seconds after it was started
  counts as a failed start, retried after a growing back-off, and after
  ``MAX_FAILED_STARTS`` failed starts in a row of one worker the parent
  stops the others and raises :class:`WorkerFailed` (the command line
  exits with status 1);
* SIGTERM and SIGINT are sent on to every worker as SIGTERM, each of which
  shuts down gracefully (``_serving``: every message answered 250 is
  delivered, other sessions get 421); the parent returns once all have
  ended, and raises :class:`WorkerFailed` if one of them ended badly;
* a worker whose parent is gone (killed with SIGKILL, say) sees its
  lifeline socket close and shuts down gracefully too.

SIGHUP is not handled.  docs/workers.md says what is per worker and what
is shared.  Nothing here runs unless ``workers`` is above 1.
"""

from __future__ import annotations

import logging
import mmap
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _admission, _listener, _mbox, _platform, _serving, asyncore

log = logging.getLogger("smtpd_compat")

# A worker that ends sooner than this after its start failed to start.
START_GRACE = 2.0
# Failed starts in a row of one worker before the parent gives up.
MAX_FAILED_STARTS = 5
# The back-off after the n-th failed start: FIRST_BACKOFF * 2**(n-1), capped.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
MAX_WORKERS = 1024
# How long a worker waits for another worker's lock on an mbox (_mbox).
MBOX_LOCK_WAIT = 1.0
# How often the parent looks for ended workers if no signal tells it.
_REAP_INTERVAL = 1.0
_STOP_SIGNALS = ("SIGTERM", "SIGINT")

Count = Union[int, str, None]


class WorkerFailed(RuntimeError):
    """The workers could not be kept running, or one ended badly while the
    server was stopping; the message says which and how."""


def count(workers: Count) -> int:
    """The number of processes *workers* asks for: ``None`` is 1, ``"auto"``
    the number of CPUs; ValueError for anything but 1..MAX_WORKERS."""
    if workers is None:
        return 1
    if workers == "auto":
        return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
        raise ValueError("workers must be a number from 1 to %d, 'auto' or None, not %r" % (MAX_WORKERS, workers))
    return workers


def check(server: Any, workers: int) -> None:
    """Refuse what cannot run in *workers* processes, before anything forks."""
    if workers <= 1:
        return
    reason = getattr(server, "_one_process_only", None)
    if reason:
        raise ValueError("%s cannot run with workers=%d: %s" % (type(server).__name__, workers, reason))
    _platform.require("fork", hint="run with one worker")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve_forever(workers=%d) must run on the main thread (it handles signals); "
                           "a Controller runs one process only" % workers)
    if threading.active_count() > 1:
        raise RuntimeError("serve_forever(workers=%d) must be called before any thread is started: "
                           "forking a process with threads is unsafe (%d threads running)"
                           % (workers, threading.active_count()))
    if not getattr(server, "accepting", False):
        raise RuntimeError("serve_forever(workers=%d): the server is not listening" % workers)


def serve_forever(server: Any, poll_interval: float = 0.5, workers: Count = None) -> None:
    """Serve *server* in *workers* processes until SIGTERM or SIGINT; one
    process (no fork, today's loop) when *workers* is 1 or None."""
    number = count(workers)
    if number == 1:
        _serving.serve_forever(server, poll_interval)
        return
    check(server, number)
    _Supervisor(server, poll_interval, number).run()


class _Supervisor:
    """The parent: starts the workers, restarts them, stops them."""

    def __init__(self, server: Any, poll_interval: float, number: int) -> None:
        self.server = server
        self.poll_interval = poll_interval
        self.number = number
        self.pids: Dict[int, Tuple[int, float]] = {}  # pid -> (worker number, started at)
        self.failed_starts = [0] * number
        self.restarts: List[Tuple[float, int]] = []  # (when, worker number)
        self.stop_signal: Optional[int] = None
        self.stopping = False
        self.failure: Optional[str] = None
        self.wake_r, self.wake_w = socket.socketpair()
        # One byte shared with the workers, set when all of them stop: a
        # worker stopping alone leaves the shared listening socket as it is.
        self.all_stopping = mmap.mmap(-1, 1)
        # Lifeline: the parent keeps one end, the workers the other (see _Lifeline).
        self.lifeline, self.lifeline_child = socket.socketpair()
        # The per-address counters, shared by the workers (_admission).
        _admission.prepare_workers(server, number)

    # -- the parent's loop --------------------------------------------------
    def run(self) -> None:
        restore = self._install_signals()
        tag_log_records("main pid %d" % os.getpid())
        try:
            log.info("%s: starting %d worker processes", type(self.server).__name__, self.number)
            for worker in range(1, self.number + 1):
                self._start(worker)
            while self.pids or (self.restarts and not self.stopping):
                self._wait()
                # The signal first: Ctrl-C, or systemd's SIGTERM to the whole
                # group, reaches the workers too, which then end at once.
                if self.stop_signal is not None and not self.stopping:
                    self._stop("signal %d" % self.stop_signal)
                self._reap()
                self._restart_due()
        finally:
            for pid in list(self.pids):  # only if the parent itself failed
                _kill(pid, signal.SIGTERM)
            restore()
            for sock in (self.lifeline, self.lifeline_child, self.wake_r, self.wake_w):
                sock.close()
            self.all_stopping.close()
        if self.failure is not None:
            raise WorkerFailed(self.failure)
        log.info("%s: all workers stopped", type(self.server).__name__)

    def _install_signals(self) -> Callable[[], None]:
        for sock in (self.wake_r, self.wake_w):
            sock.setblocking(False)
        previous_fd = signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        previous = {}
        for name in _STOP_SIGNALS + ("SIGCHLD",):
            signum = getattr(signal, name, None)
            if signum is not None:
                handler = self._on_child if name == "SIGCHLD" else self._on_stop
                previous[signum] = signal.signal(signum, handler)

        def restore() -> None:
            for signum, handler in previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            signal.set_wakeup_fd(previous_fd)

        return restore

    def _on_stop(self, signum: int, frame: Any) -> None:
        self.stop_signal = signum  # acted upon by run(), woken by the wake-up fd

    def _on_child(self, signum: int, frame: Any) -> None:
        pass  # only wakes run() up

    def _wait(self) -> None:
        timeout = _REAP_INTERVAL
        if self.restarts and not self.stopping:
            timeout = min(timeout, max(0.0, min(self.restarts)[0] - time.monotonic()))
        try:
            select.select([self.wake_r], [], [], timeout)
            while self.wake_r.recv(256):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- workers ending -----------------------------------------------------------
    def _reap(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.pids.clear()
                return
            if pid == 0:
                return
            entry = self.pids.pop(pid, None)
            if entry is not None:
                self._ended(pid, entry[0], entry[1], status)

    def _ended(self, pid: int, worker: int, started: float, status: int) -> None:
        how = _describe(status)
        _admission.worker_ended(self.server, worker)  # its sessions are gone: uncount them
        if self.stopping:
            if how != "exit status 0":
                log.warning("worker %d (pid %d) ended with %s while stopping", worker, pid, how)
                self.failure = self.failure or "worker %d (pid %d) ended with %s while stopping" % (worker, pid, how)
            return
        if time.monotonic() - started < START_GRACE:
            self.failed_starts[worker - 1] += 1
        else:
            self.failed_starts[worker - 1] = 0
        failed = self.failed_starts[worker - 1]
        if failed >= MAX_FAILED_STARTS:
            self.failure = ("worker %d ended within %.0f s of starting %d times in a row (last: pid %d, %s); "
                            "giving up" % (worker, START_GRACE, failed, pid, how))
            log.error("%s", self.failure)
            self._stop("failed starts")
            return
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (failed - 1)) if failed else 0.0
        log.warning("worker %d (pid %d) ended with %s; starting it again in %.1f s", worker, pid, how, delay)
        self.restarts.append((time.monotonic() + delay, worker))

    def _restart_due(self) -> None:
        if self.stopping:
            del self.restarts[:]
            return
        now = time.monotonic()
        due = [entry for entry in self.restarts if entry[0] <= now]
        for entry in due:
            self.restarts.remove(entry)
            self._start(entry[1])

    def _stop(self, why: str) -> None:
        self.stopping = True
        self.all_stopping[0] = 1
        # No new handshakes from now on; the workers accept those the
        # kernel has completed (_serving.begin_shutdown).
        _listener.refuse_handshakes(self.server.socket)
        del self.restarts[:]
        log.info("stopping %d worker(s) gracefully (%s)", len(self.pids), why)
        for pid in self.pids:
            _kill(pid, signal.SIGTERM)

    # -- a worker starting ---------------------------------------------------------
    def _start(self, worker: int) -> None:
        _flush()
        # A stop signal that reached the child before it has its own
        # handlers would run the parent's (copied) handler there and be
        # lost, leaving a worker that never stops: the child starts with
        # them blocked and unblocks them once its handlers are in place.
        stops = {getattr(signal, name) for name in _STOP_SIGNALS}
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            pid = os.fork()
            if pid == 0:
                self._child(worker, mask)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.pids[pid] = (worker, time.monotonic())
        log.info("worker %d started (pid %d)", worker, pid)

    def _child(self, worker: int, mask: Any) -> None:
        status = 1
        try:
            self._become_worker(worker)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a stop signal sent meanwhile is handled now
            _serving.serve_forever(self.server, self.poll_interval)
            status = 0
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
        except KeyboardInterrupt:
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            _flush()
            os._exit(status)

    def _become_worker(self, worker: int) -> None:
        signal.set_wakeup_fd(-1)
        self.wake_r.close()
        self.wake_w.close()
        self.lifeline.close()
        handler = _serving.sigterm_handler(self.server)
        for name in _STOP_SIGNALS:
            signal.signal(getattr(signal, name), handler)
        if hasattr(signal, "SIGCHLD"):
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        tag_log_records("worker %d pid %d" % (worker, os.getpid()))
        _mbox.LOCK_WAIT = MBOX_LOCK_WAIT  # the other workers append to the same mbox
        _admission.worker_started(self.server, worker)  # its own column of open sessions
        shared = self.all_stopping
        self.server.__dict__["_compat_worker_alone"] = lambda: not shared[0]
        _Lifeline(self.lifeline_child, self.server)


class _Lifeline(asyncore.dispatcher):
    """A worker's end of a socket pair whose other end only the parent
    holds: when the parent is gone it reads end-of-file, and the worker
    shuts down gracefully.  Nothing is ever sent on it."""

    def __init__(self, sock: socket.socket, server: Any) -> None:
        super().__init__(sock, map=server._map)
        self.server = server

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        self.recv(1)  # only end-of-file ever comes: handle_close()

    def handle_close(self) -> None:
        log.warning("the supervisor is gone: shutting down")
        self.close()
        _serving.request_shutdown(self.server)


def tag_log_records(tag: str) -> None:
    """Give every log record of this process a ``worker`` attribute
    (``%(worker)s`` in a log format)."""
    make = logging.getLogRecordFactory()
    inner = getattr(make, "_compat_inner", make)

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = inner(*args, **kwargs)
        record.worker = tag
        return record

    factory._compat_inner = inner  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return "signal %s" % signal.Signals(number).name
        except ValueError:
            return "signal %d" % number
    return "exit status %d" % os.WEXITSTATUS(status)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
