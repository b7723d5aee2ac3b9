"""Serving API: serve_forever/shutdown, graceful shutdown, session logging.

:class:`~smtpd_compat.smtpd.SMTPServer` exposes this module as methods
(``serve_forever()``, ``shutdown()``, ``server_close()``, the context
manager, ``address``/``port``); the implementation lives here so that
``smtpd.py`` stays the thin drop-in module.

Graceful shutdown, in the order it happens on the loop thread:

1. the kernel is told to start no new connections (on Linux; see
   ``_listener``), the connections it has already completed
   are accepted until none is left (so they are answered instead of reset)
   and the listening socket is closed: new connections are refused from
   then on;
2. every session of this server that is *not* receiving a message (state
   ``DATA``, or waiting for a deferred reply to its message) is answered
   ``421 <fqdn> Service shutting down`` and closed once that reply is sent;
   its further input is ignored.  A session that was active (sent a
   command, or was answered) less than ``_QUIT_GRACE`` seconds ago gets the
   rest of that time first: its client has most likely just had its reply
   and is about to send the next command.  Its ``QUIT`` is answered ``221``
   and the session ends as the client asked; any other command gets the
   ``421`` (see :func:`refuse_command`);
3. a session that is receiving a message may finish it: the message is
   handed to ``process_message()`` and answered as usual, then the session
   gets the same grace to ``QUIT`` before the ``421``, and is closed;
4. after ``shutdown_timeout`` seconds, sessions still in ``DATA`` get the
   ``421`` (their message is dropped and was never acknowledged); any
   session that still has not gone ``_FLUSH_GRACE`` seconds later (a client
   that does not read) is closed outright.  A session whose message is
   being processed is never cut: it is answered first.

So a message is either acknowledged with ``250`` and handed to
``process_message()``, or not acknowledged at all: nothing in between.

Shutdown progress is logged at INFO to the ``smtpd_compat`` logger.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from . import _grammar, _listener, _logging, _options, _proxy_io, _reactor

# The keyword options of SMTPServer that this module applies, with their
# defaults (all declared in _options.Options).
DEFAULTS: Dict[str, Any] = _options.defaults(_options.SERVING)

log = logging.getLogger("smtpd_compat")

# After the shutdown timeout, how long sessions that were told 421 may take
# to receive it before their sockets are closed regardless, and how often
# the remaining sessions are looked at meanwhile.
_FLUSH_GRACE = 2.0
_LATE_SWEEP_INTERVAL = 0.1
# During a graceful shutdown, how long after its last activity an idle
# session may still send QUIT and be answered 221 instead of being told 421.
# A client that has just been answered sends its next command within
# milliseconds, and for the common one, QUIT, a 421 is an error
# (smtplib's "with SMTP(...)" raises SMTPResponseException).  Sessions idle
# for longer are told at once; the shutdown timeout cuts this short.
_QUIT_GRACE = 1.0
_states_lock = threading.Lock()


class _State:
    """Per-server bookkeeping of the serving API (not an option)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.serving = False  # serve_forever() is running
        self.loop_thread: Optional[int] = None  # ident of that thread
        self.stopped = threading.Event()  # set whenever serve_forever() is not running
        self.stopped.set()
        self.requested = False  # shutdown asked for (any thread)
        self.closing = False  # graceful shutdown has begun
        self.expired = False  # the shutdown timeout has passed
        self.timeout: Optional[float] = None  # overrides shutdown_timeout
        self.timers: List[_reactor.TimerHandle] = []
        self.told_at: Dict[Any, float] = {}  # session -> when it was told 421
        self.answered_at: Dict[Any, float] = {}  # session -> when its message was answered
        self.watching = False  # _watch is scheduled


def _state(server: Any) -> _State:
    st: Optional[_State] = server.__dict__.get("_serving_state")
    if st is None:
        with _states_lock:
            st = server.__dict__.get("_serving_state")
            if st is None:
                st = server.__dict__["_serving_state"] = _State()
    return st


# -- address -------------------------------------------------------------------
def bound_address(server: Any) -> Tuple[str, int]:
    """``(host, port)`` the server's socket is bound to, also after closing.

    IPv6 addresses are reported as ``(host, port)`` too (without flow info
    and scope id), so ``smtplib.SMTP(*server.address)`` works for both
    families.  A Unix socket's address is returned as the kernel reports it
    (a ``str``: typed for the TCP servers SMTP is served on).
    """
    sock = getattr(server, "socket", None)
    name: Any
    if sock is not None:
        try:
            name = sock.getsockname()
        except (OSError, AttributeError):
            name = None
        if name is not None:
            if isinstance(name, tuple) and len(name) > 2:
                name = name[:2]
            server.__dict__["_bound_address"] = name
            address: Tuple[str, int] = name
            return address
    cached: Optional[Tuple[str, int]] = server.__dict__.get("_bound_address")
    if cached is None:
        raise OSError(errno.EBADF, "the server socket is not open")
    return cached


# -- which dispatchers belong to a server -------------------------------------
def sessions(server: Any) -> Set[Any]:
    """The live sessions (channels) of *server*: the one registry of them,
    for ``max_connections`` and for shutting down.  A channel joins it when
    it greets its client and leaves it when it closes."""
    try:
        registry: Set[Any] = server.__dict__["_compat_sessions"]
        return registry
    except KeyError:
        found: Set[Any] = set()
        server.__dict__["_compat_sessions"] = found
        return found
    except AttributeError:  # a server object without a __dict__
        return set()


def refuse_connection(server: Any, conn: Any, addr: Any, reply: Callable[[], str]) -> bool:
    """If *server* already has ``max_connections`` sessions, send ``reply()``
    (a ``421`` line, made only then; not on an SMTPS port) on the
    just-accepted *conn* (from *addr*), close it and return True."""
    limit = _options.of(server).max_connections
    if limit is None or len(sessions(server)) < limit:
        return False
    log.warning("refusing a connection from %r: %d sessions open (max_connections)", addr, limit)
    try:
        # On an implicit-TLS (SMTPS) port the client starts with a TLS
        # handshake, to which a plain-text line is garbage: just close.
        if _options.of(server).implicit_tls_context is None:
            conn.setblocking(False)
            # A fresh socket has an empty send buffer: one short line fits.
            conn.send((reply() + "\r\n").encode("ascii", "backslashreplace"))
    except OSError:
        pass
    finally:
        conn.close()
    return True


def _channels(server: Any) -> Iterator[Any]:
    """The live sessions of *server*, in a list (closing one changes the set)."""
    return iter(list(sessions(server)))


def _finished(server: Any) -> bool:
    if server._fileno is not None:
        return False
    for _ in _channels(server):
        return False
    return True


# -- serve_forever / shutdown ----------------------------------------------------
def serve_forever(server: Any, poll_interval: float = 0.5) -> None:
    """Run the server's loop until :func:`shutdown` has completed.

    See ``SMTPServer.serve_forever``.
    """
    from . import asyncore

    st = _state(server)
    map = server._map
    with st.lock:
        if st.serving:
            raise RuntimeError("serve_forever() is already running for this server")
        # The reactor exists before `serving` is announced, so a shutdown
        # request made from now on always finds something to wake up.
        _reactor.reactor_for(map)
        st.serving = True
        st.loop_thread = threading.get_ident()
        st.stopped.clear()
    try:
        while True:
            if st.requested and not st.closing:
                begin_shutdown(server)
            if st.closing and _finished(server):
                break
            if not map:
                break  # nothing left to serve (the server was closed)
            asyncore.poll(poll_interval, map)
    finally:
        with st.lock:
            st.serving = False
            st.loop_thread = None
        if st.closing:
            _cancel_timers(st)
        if not map:
            _reactor.forget(map)
        st.stopped.set()


def request_shutdown(server: Any, timeout: Optional[float] = None) -> None:
    """Ask for a graceful shutdown and return at once.

    Safe from any thread and from a signal handler running on the loop
    thread: the work itself is done by the thread that runs the loop.
    *timeout* overrides the server's ``shutdown_timeout``.
    """
    st = _state(server)
    with st.lock:
        if timeout is not None and (st.timeout is None or timeout < st.timeout):
            st.timeout = timeout
            if st.closing and not st.expired:
                # Already shutting down with a longer bound: shorten it.
                _post(server, lambda: _schedule_expiry(server))
        if st.requested:
            _wake(server)
            return
        st.requested = True
        if st.serving:
            _wake(server)
            return
        reactor = _reactor.reactor_for(server._map, create=False)
        if reactor is not None and not reactor.closed and reactor.thread_id is not None:
            # Someone drives this map with asyncore.loop(): let that thread
            # do the work between two events.
            reactor.call_soon_threadsafe(lambda: begin_shutdown(server))
            return
        # No loop is running (none has ever polled this map): nothing can
        # race with us.  Holding st.lock keeps a serve_forever() that starts
        # now from polling before this is done.
        begin_shutdown(server)


def sigterm_handler(server: Any) -> Any:
    """A signal handler that asks *server*'s ``serve_forever()`` (running on
    the main thread) to shut down gracefully.

    It takes no lock, so it cannot deadlock with the code it interrupts: it
    sets a flag that ``serve_forever()`` checks before each wait, and wakes
    a wait already in progress.
    """
    st = _state(server)  # created now, never inside the handler

    def handler(signum: int, frame: Any) -> None:
        st.requested = True
        _wake(server)

    return handler


def _loop_reactor(server: Any) -> _reactor.Reactor:
    reactor = _reactor.reactor_for(server._map)
    assert reactor is not None  # create=True always gives one
    return reactor


def _wake(server: Any) -> None:
    reactor = _reactor.reactor_for(server._map, create=False)
    if reactor is not None:
        reactor.wakeup()


def _post(server: Any, callback: Any) -> None:
    reactor = _reactor.reactor_for(server._map, create=False)
    if reactor is not None and not reactor.closed:
        reactor.call_soon_threadsafe(callback)


def shutdown(server: Any, timeout: Optional[float] = None) -> None:
    """Request a graceful shutdown and wait until ``serve_forever()`` returns.

    Called on the loop thread itself (from ``process_message()``, say), or
    while no ``serve_forever()`` runs, it only makes the request.
    """
    request_shutdown(server, timeout)
    st = _state(server)
    with st.lock:
        wait = st.serving and st.loop_thread != threading.get_ident()
    if wait:
        st.stopped.wait()


def server_close(server: Any) -> None:
    """Close the listening socket and every session of *server* now.

    A ``serve_forever()`` running in another thread is first stopped (with
    no grace period for messages in progress).
    """
    st = _state(server)
    with st.lock:
        serving_elsewhere = st.serving and st.loop_thread != threading.get_ident()
        serving_here = st.serving and not serving_elsewhere
    if serving_elsewhere:
        shutdown(server, timeout=0.0)
    _remember_address(server)
    server.close()
    for channel in _channels(server):
        channel.close()
    _proxy_io.close_pending(server)
    st.closing = True
    st.requested = True
    _cancel_timers(st)
    if not serving_here and not server._map:
        _reactor.forget(server._map)


# -- graceful shutdown, on the loop thread -----------------------------------------
def begin_shutdown(server: Any) -> None:
    """Stop accepting, answer idle sessions 421, let DATA transactions end."""
    st = _state(server)
    if st.closing:
        return
    st.closing = True
    st.requested = True
    _remember_address(server)
    if server._fileno is not None and server.accepting:
        alone = server.__dict__.get("_compat_worker_alone")  # _workers: the other workers go on
        if alone is None or not alone():
            _listener.refuse_handshakes(server.socket)
            _listener.drain_backlog(server)
        server.close()
    _proxy_io.close_pending(server)  # connections that never said who their client is
    in_data = 0
    told = 0
    active = 0
    now = time.monotonic()
    for channel in _channels(server):
        if _receiving_message(channel):
            in_data += 1
        elif _quit_grace_left(channel, st, now) > 0:
            active += 1
        elif _tell(channel, st):
            told += 1
    log.info(
        "%s shutting down: %d session(s) closed, %d just active (may QUIT first), %d message(s) being received",
        type(server).__name__,
        told,
        active,
        in_data,
    )
    _schedule_expiry(server)
    _watch(server)


def _schedule_expiry(server: Any) -> None:
    st = _state(server)
    if st.expired or not st.closing:
        return
    timeout = st.timeout
    if timeout is None:
        timeout = _options.of(server).shutdown_timeout
    if timeout is None:
        return  # wait for messages in progress without a bound
    if not any(True for _ in _channels(server)):
        return
    reactor = _loop_reactor(server)
    st.timers.append(reactor.call_later(max(0.0, float(timeout)), lambda: _expire(server)))


def _watch(server: Any) -> None:
    """Tell each session 421 once it is idle and its QUIT grace is over.

    Nothing else notices those moments: a deferred reply being sent, the
    grace running out.  So while sessions wait for a deferred reply this
    looks every ``_LATE_SWEEP_INTERVAL`` seconds, and while sessions have
    grace left, when the first grace ends.
    """
    st = _state(server)
    st.watching = False
    if st.expired:
        return  # the late sweep looks at every session from now on
    now = time.monotonic()
    again: Optional[float] = None
    for channel in _channels(server):
        if _awaiting_reply(channel):
            wait = _LATE_SWEEP_INTERVAL
        elif _in_data(channel) or channel in st.told_at:
            continue
        else:
            wait = _quit_grace_left(channel, st, now)
            if wait <= 0:
                _tell(channel, st)
                continue
        again = wait if again is None else min(again, wait)
    if again is not None:
        st.watching = True
        reactor = _loop_reactor(server)
        st.timers.append(reactor.call_later(again, lambda: _watch(server)))


def _quit_grace_left(channel: Any, st: _State, now: float) -> float:
    """Seconds *channel*, idle, may still send QUIT before it is told 421."""
    guard = getattr(channel, "_guard", None)
    if guard is None or not getattr(channel, "seen_greeting", ""):
        # Not an SMTPChannel; or a client that has not even said HELO (one
        # accepted from the backlog, say) and has no conversation to end.
        return 0.0
    # The guard's clock moves with each read and each deferred reply sent.
    since: float = max(guard.last, st.answered_at.get(channel, 0.0))
    return since + _QUIT_GRACE - now


def _expire(server: Any) -> None:
    st = _state(server)
    if st.expired:
        return
    st.expired = True
    cut = sum(1 for channel in _channels(server) if _in_data(channel))
    if cut:
        log.warning("shutdown timeout: %d message(s) still being received were dropped", cut)
    _late_sweep(server)


def _late_sweep(server: Any) -> None:
    """After the timeout: tell every remaining session 421, close those told
    at least ``_FLUSH_GRACE`` seconds ago, and look again shortly.

    A session whose message is being processed (its reply is deferred, see
    ``process_message`` returning a Future) is left alone until it has been
    answered: cutting it could lose a message that gets delivered anyway.
    """
    st = _state(server)
    now = time.monotonic()
    remaining = False
    for channel in _channels(server):
        remaining = True
        if _awaiting_reply(channel):
            continue
        told = st.told_at.get(channel)
        if told is None:
            _tell(channel, st)
            st.told_at.setdefault(channel, now)  # also a session closing on its own
        elif now - told >= _FLUSH_GRACE:
            log.info("closing %s: it did not take its 421 reply in time", _logging.peer_text(channel))
            channel.close()
    if remaining:
        reactor = _loop_reactor(server)
        st.timers.append(reactor.call_later(_LATE_SWEEP_INTERVAL, lambda: _late_sweep(server)))


def _cancel_timers(st: _State) -> None:
    for handle in st.timers:
        handle.cancel()
    del st.timers[:]
    st.told_at.clear()
    st.answered_at.clear()


def _in_data(channel: Any) -> bool:
    if getattr(channel, "smtp_state", None) == getattr(channel, "DATA", 1):
        return True
    # A BDAT transaction (RFC 3030, _chunking), in a chunk or between two:
    # its message is being received too.
    return getattr(getattr(channel, "_session", None), "chunked", False) is True


def _awaiting_reply(channel: Any) -> bool:
    """The session's message was handed over and its reply is pending."""
    return "reply" in getattr(channel, "_ac_paused", ())


def _receiving_message(channel: Any) -> bool:
    return _in_data(channel) or _awaiting_reply(channel)


def _tell(channel: Any, st: Optional[_State] = None) -> bool:
    """Answer *channel* 421 and close it once sent; False if already closing."""
    if channel._fileno is None or getattr(channel, "_ac_input_closed", False):
        return False
    from . import _extensions, _replies

    channel.push(_extensions.own_reply(channel._session, _replies.SHUTTING_DOWN % getattr(channel, "fqdn", "")))
    channel.close_when_done()
    if st is not None:
        st.told_at[channel] = time.monotonic()
    return True


def after_data(channel: Any) -> None:
    """Called by SMTPChannel once a message has been answered.

    During a graceful shutdown the session ends soon after its message's
    reply: it may still send QUIT for ``_QUIT_GRACE`` seconds, then it is
    told 421 (see _watch).  A reply still pending (deferred) comes first.
    """
    st = getattr(channel.smtp_server, "_serving_state", None)
    if st is None or not st.closing:
        return
    if not _awaiting_reply(channel):
        # Its input has not been timed yet (that comes after this call).
        st.answered_at[channel] = time.monotonic()
    if not st.watching:
        _watch(channel.smtp_server)


def refuse_command(channel: Any, line: Optional[bytes] = None) -> bool:
    """Called by SMTPChannel before it executes the command *line*: during a
    graceful shutdown the command is answered 421 instead (True), except
    ``QUIT``, which ends the session as the client asked."""
    st = getattr(channel.smtp_server, "_serving_state", None)
    if st is None or not st.closing:
        return False
    if line is not None and _is_quit(line):
        return False
    if _in_data(channel):
        return False  # the next chunk of a BDAT transaction (see _in_data)
    _tell(channel, st)
    return True


def _is_quit(line: bytes) -> bool:
    return _grammar.split_command(line.decode("utf-8", "replace"))[0] == "QUIT"


def _remember_address(server: Any) -> None:
    try:
        bound_address(server)
    except OSError:
        pass
