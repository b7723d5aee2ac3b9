"""Admission control: who may connect, how often, and how many AUTH
failures an address may cause (docs/admission.md).

Three options, all off by default, and one hook:

- ``max_connections_per_ip``: sessions open at once from one client address;
- ``connection_rate_per_ip`` (``"N/SECONDS"``): a token bucket per address,
  N connections at once, refilled at N per SECONDS;
- ``auth_failures_per_ip`` (``"K/SECONDS"``): the same bucket counting
  failed AUTH exchanges; while it is empty, AUTH is answered ``454`` without
  looking at the credentials;
- ``SMTPServer.accept_connection(peer)``, asked before the greeting when a
  subclass overrides it.

A connection refused by a limit is answered ``421 4.7.0 ...`` in place of
the greeting and closed; one refused by the hook gets the hook's line.

The counters live in a :class:`Table`: a fixed number of slots in an
anonymous shared ``mmap``, an address's slot chosen by a hash of it, so
that the workers forked by ``serve_forever(workers=N)`` share them
(two addresses that share a slot share its limits: a collision makes them
stricter, never looser).  Each worker counts its open sessions in a column
of its own, which the parent zeroes when that worker ends, so a killed
worker leaks nothing; with workers the table is guarded by an ``fcntl``
lock on an unlinked temporary file, which the kernel releases when a
process dies.

Nothing here runs unless an option is set or the hook overridden
(:func:`install` replaces the server's ``handle_accepted`` on the instance
only then); the address is the client's, also behind a PROXY protocol
proxy (``_proxy_io`` calls :func:`gate_of` after the header).
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import mmap
import struct
import tempfile
import time
import zlib
from typing import Any, Callable, Dict, Optional, Set, Tuple

from . import _logging, _options
from . import _replies as R

__all__ = ["Table", "check_options", "gate_of", "install", "parse_rate", "prepare_workers", "worker_ended", "worker_started"]

log = logging.getLogger("smtpd_compat")

OPTIONS = _options.ADMISSION
# Slots of the table: 4096 distinct addresses before two share a slot.
SLOTS = 4096
# The server's attributes: its Table, and the step after the PROXY header.
_TABLE = "_compat_admission"
GATE = "_compat_admission_gate"

# A slot: two token buckets (connections, AUTH failures) of (used, stamp)
# doubles, then one unsigned count of open sessions per column.
_BUCKETS = struct.Struct("=dddd")
_COUNT = struct.Struct("=I")

Clock = Callable[[], float]


def parse_rate(value: Any, name: str) -> Optional[Tuple[int, float]]:
    """``"N/SECONDS"`` (or ``(N, SECONDS)``) as ``(N, SECONDS)``; None for
    None; ValueError/TypeError otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        count, slash, seconds = value.partition("/")
        try:
            pair: Tuple[Any, Any] = (int(count), float(seconds)) if slash else (None, None)
        except ValueError:
            pair = (None, None)
    elif isinstance(value, tuple) and len(value) == 2:
        pair = value
    else:
        raise TypeError("%s must be a string such as '10/60' (N per SECONDS), not %r" % (name, value))
    number, seconds = pair
    if isinstance(number, bool) or not isinstance(number, int) or number < 1 \
            or isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < float("inf"):
        raise ValueError("%s must be N/SECONDS with N a whole number from 1 and SECONDS above 0, such as '10/60', "
                         "not %r" % (name, value))
    return number, float(seconds)


def check_options(options: Any) -> None:
    """Reject bad admission options when the server is created."""
    limit = options.max_connections_per_ip
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError("max_connections_per_ip must be a whole number from 1, or None, not %r" % (limit,))
    parse_rate(options.connection_rate_per_ip, "connection_rate_per_ip")
    parse_rate(options.auth_failures_per_ip, "auth_failures_per_ip")


def wanted(options: Any, server: Any) -> bool:
    """Whether *server* needs admission control at all."""
    return any(getattr(options, name) is not None for name in OPTIONS) or "accept_connection" in server._overridden_hooks


def client_key(addr: Any) -> Optional[str]:
    """The client address that limits are counted by (an IPv4-mapped IPv6
    address as IPv4); None when it is not an IP address (a Unix socket)."""
    host = addr[0] if isinstance(addr, tuple) and addr else None
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


class _NoLock:
    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


class _FileLock:
    """A lock between processes: ``fcntl.lockf`` on an unlinked temporary
    file, inherited by the workers; the kernel drops it if its holder dies."""

    def __init__(self) -> None:
        import fcntl  # POSIX only, as workers are

        self._fcntl = fcntl
        self.file = tempfile.TemporaryFile()

    def acquire(self) -> None:
        self._fcntl.lockf(self.file.fileno(), self._fcntl.LOCK_EX)

    def release(self) -> None:
        self._fcntl.lockf(self.file.fileno(), self._fcntl.LOCK_UN)


class Table:
    """The per-address counters of one server, shared by its workers."""

    def __init__(self, options: Any, columns: int = 1, clock: Clock = time.monotonic, shared: bool = False) -> None:
        self.max_open: Optional[int] = options.max_connections_per_ip
        self.rate = parse_rate(options.connection_rate_per_ip, "connection_rate_per_ip")
        self.auth = parse_rate(options.auth_failures_per_ip, "auth_failures_per_ip")
        self.column = 0  # this process's column (a worker's number - 1)
        self.clock = clock
        self.lock: Any = _NoLock()
        self.allocate(columns)
        if shared:
            self.lock = _FileLock()

    def allocate(self, columns: int) -> None:
        """Start afresh with *columns* columns of open sessions."""
        self.columns = columns
        self.slot_size = _BUCKETS.size + _COUNT.size * columns
        old = getattr(self, "memory", None)
        # Anonymous and shared: forked workers see one another's counts.
        self.memory = mmap.mmap(-1, SLOTS * self.slot_size)  # zeroed: full buckets, nothing open
        if old is not None:
            old.close()

    def _slot(self, key: str) -> int:
        return (zlib.crc32(key.encode("ascii")) % SLOTS) * self.slot_size

    def _open(self, base: int) -> int:
        return sum(_COUNT.unpack_from(self.memory, base + _BUCKETS.size + _COUNT.size * c)[0] for c in range(self.columns))

    def _add_open(self, base: int, delta: int) -> None:
        offset = base + _BUCKETS.size + _COUNT.size * self.column
        _COUNT.pack_into(self.memory, offset, max(0, _COUNT.unpack_from(self.memory, offset)[0] + delta))

    def _used(self, base: int, which: int, rate: Tuple[int, float], now: float) -> float:
        """What is used of bucket *which* (0: connections, 1: AUTH failures)
        of the slot at *base*, after its refill since it was last touched."""
        used, stamp = _BUCKETS.unpack_from(self.memory, base)[2 * which:2 * which + 2]
        capacity, period = rate
        return float(max(0.0, used - (now - stamp) * capacity / period))

    def _take(self, base: int, which: int, rate: Tuple[int, float], force: bool = False) -> bool:
        """Take a token from a bucket if one is left (or anyway, *force*:
        a failure to note, up to the capacity); whether one was left."""
        now = self.clock()
        used = self._used(base, which, rate, now)
        allowed = used + 1 <= rate[0]
        if allowed or force:
            used = min(float(rate[0]), used + 1)
        values = list(_BUCKETS.unpack_from(self.memory, base))
        values[2 * which], values[2 * which + 1] = used, now
        _BUCKETS.pack_into(self.memory, base, *values)
        return allowed

    def admit(self, key: str) -> Optional[str]:
        """Count a new connection from *key*; its refusal (a reply) if a
        limit says no, else None (then :meth:`release` it once closed)."""
        base = self._slot(key)
        self.lock.acquire()
        try:
            if self.rate is not None and not self._take(base, 0, self.rate):
                return R.TOO_MANY_CONNECTIONS_RATE
            if self.max_open is not None:
                if self._open(base) >= self.max_open:
                    return R.TOO_MANY_CONNECTIONS_PER_IP
                self._add_open(base, 1)
            return None
        finally:
            self.lock.release()

    def release(self, key: str) -> None:
        """A connection from *key* counted by :meth:`admit` has ended."""
        if self.max_open is None:
            return
        self.lock.acquire()
        try:
            self._add_open(self._slot(key), -1)
        finally:
            self.lock.release()

    def open_count(self, key: str) -> int:
        """Sessions open from *key* (in every worker)."""
        return self._open(self._slot(key))

    # -- AUTH failures (the session's Features.auth_throttle) --------------------------
    def auth_blocked(self, peer: Any) -> bool:
        """Whether AUTH from *peer* is refused for now (its bucket is empty)."""
        key = client_key(peer)
        if key is None or self.auth is None:
            return False
        self.lock.acquire()
        try:
            return self._used(self._slot(key), 1, self.auth, self.clock()) + 1 > self.auth[0]
        finally:
            self.lock.release()

    def auth_failed(self, peer: Any) -> None:
        """Note a failed AUTH exchange from *peer*."""
        key = client_key(peer)
        if key is None or self.auth is None:
            return
        self.lock.acquire()
        try:
            self._take(self._slot(key), 1, self.auth, force=True)
        finally:
            self.lock.release()

    def zero_column(self, column: int) -> None:
        """Forget the sessions counted by *column* (its worker has ended)."""
        self.lock.acquire()
        try:
            for slot in range(SLOTS):
                _COUNT.pack_into(self.memory, slot * self.slot_size + _BUCKETS.size + _COUNT.size * column, 0)
        finally:
            self.lock.release()


def table_of(server: Any) -> Optional[Table]:
    """*server*'s Table, or None when it has no admission control."""
    found: Optional[Table] = getattr(server, "__dict__", {}).get(_TABLE)
    return found


class _Registry(set):  # type: ignore[type-arg]
    """The server's registry of sessions (``_serving.sessions``) that also
    notes which admitted connection each session is, to release it on close."""

    def __init__(self, table: Table) -> None:
        super().__init__()
        self.table = table
        self.expecting: Optional[str] = None  # the key being admitted
        self.keys: Dict[Any, str] = {}

    def add(self, channel: Any) -> None:
        if self.expecting is not None and channel not in self:
            self.keys[channel] = self.expecting
            self.expecting = None
        super().add(channel)

    def discard(self, channel: Any) -> None:
        super().discard(channel)
        key = self.keys.pop(channel, None)
        if key is not None:
            self.table.release(key)


def install(server: Any, options: Any) -> None:
    """Set up admission control on *server* (when :func:`wanted`)."""
    table = Table(options)
    registry = _Registry(table)
    server.__dict__[_TABLE] = table
    server.__dict__["_compat_sessions"] = registry
    ask = "accept_connection" in server._overridden_hooks

    def gate(conn: Any, addr: Any) -> None:
        key = client_key(addr)
        refusal = table.admit(key) if key is not None else None
        counted = key is not None and refusal is None and table.max_open is not None
        if refusal is None and ask:
            refusal = _ask(server, addr)
        if refusal is not None:
            if counted:
                table.release(key)  # type: ignore[arg-type]
            _refuse(server, conn, addr, refusal)
            return
        registry.expecting = key if counted else None
        try:
            type(server).handle_accepted(server, conn, addr)
        finally:
            if registry.expecting is not None:  # no session came of it
                registry.expecting = None
                table.release(key)  # type: ignore[arg-type]

    server.__dict__[GATE] = gate
    if not options.proxy_protocol:
        server.__dict__["handle_accepted"] = gate  # (with it, _proxy_io calls the gate after the header)


def gate_of(server: Any) -> Optional[Callable[[Any, Any], None]]:
    """The admission step to call with the client's address (``_proxy_io``)."""
    found: Optional[Callable[[Any, Any], None]] = server.__dict__.get(GATE)
    return found


def _ask(server: Any, addr: Any) -> Optional[str]:
    """``accept_connection(addr)``'s verdict; an exception closes the
    connection unanswered (logged), as a listening server must go on."""
    try:
        refusal: Optional[str] = server.accept_connection(addr)
    except Exception:
        log.exception("accept_connection() failed for %s: closing the connection", _logging.format_address(addr))
        return ""
    return refusal  # sent as written, as accept_mail()'s


def _refuse(server: Any, conn: Any, addr: Any, reply: str) -> None:
    log.warning("refusing a connection from %s: %s", _logging.format_address(addr), reply or "(closed unanswered)")
    try:
        # An SMTPS client starts with a handshake, to which a line is garbage.
        if reply and _options.of(server).implicit_tls_context is None:
            conn.setblocking(False)
            conn.send((reply + "\r\n").encode("ascii", "backslashreplace"))
    except OSError:
        pass
    finally:
        conn.close()


# -- workers (_workers) -------------------------------------------------------------------
def prepare_workers(server: Any, number: int) -> None:
    """Before forking *number* workers: a table they share, a column each."""
    table = table_of(server)
    if table is not None:
        table.allocate(number)
        if isinstance(table.lock, _NoLock):
            table.lock = _FileLock()


def worker_started(server: Any, worker: int) -> None:
    """In worker *worker* (1..N): count in its column."""
    table = table_of(server)
    if table is not None:
        table.column = worker - 1


def worker_ended(server: Any, worker: int) -> None:
    """In the parent, once worker *worker* has ended: its sessions are gone."""
    table = table_of(server)
    if table is not None:
        table.zero_column(worker - 1)


def known_keys(server: Any) -> Set[str]:
    """The addresses of this process's open counted sessions (for tests)."""
    registry = server.__dict__.get("_compat_sessions")
    return set(registry.keys.values()) if isinstance(registry, _Registry) else set()


def is_hook(method: Any) -> bool:
    """Whether *method*, a subclass's ``accept_connection``, has this
    package's meaning: it takes ``(peer)``.  A server written for the
    standard library may have a method of that name with another shape: it
    is left alone (as ``authenticate`` is)."""
    try:
        inspect.signature(method).bind(None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (a builtin): assume ours
        return True
    return True


def auth_throttle(server: Any) -> Optional[Table]:
    """What a session of *server* counts its AUTH failures with
    (``Features.auth_throttle``): its Table with ``auth_failures_per_ip``."""
    table = table_of(server) if server is not None else None
    return table if table is not None and table.auth is not None else None
