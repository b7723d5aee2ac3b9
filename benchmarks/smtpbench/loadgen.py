"""The load generators: a built-in selectors client, and Postfix smtp-source.

Both speak the same dialogue: HELO once per connection, then MAIL/RCPT/DATA
per message, no pipelining.  Each returns a GenResult; measure.py turns it
into figures.
"""

import errno
import os
import re
import selectors
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Dict, List, Optional, Set

from .common import HELO_NAME, HOST, MAIL_FROM, RCPT_TO, vlog
from .loads import Load, build_message


@dataclass
class GenResult:
    delivered: int = 0
    failed: int = 0
    expected: int = 0
    elapsed: float = 0.0
    errors: Dict[str, int] = field(default_factory=dict)
    held: int = 0  # hold mode: most connections greeted and held at once
    retries: int = 0  # connections dropped for want of a greeting and retried
    hold_info: Dict[str, float] = field(default_factory=dict)

    def add_error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def error_summary(self, n: int = 3) -> str:
        items = sorted(self.errors.items(), key=lambda kv: -kv[1])[:n]
        return "; ".join("%s (x%d)" % (k, v) for k, v in items)


# connection states of the built-in generator
CONNECTING, GREETING, HELD, HELO, MAIL, RCPT, DATA, DOT, QUIT = range(9)
STATE_NAMES = ["connect", "greeting", "held", "HELO", "MAIL", "RCPT", "DATA", "end-of-data", "QUIT"]
EXPECTED = {GREETING: (220,), HELD: (), HELO: (250,), MAIL: (250,), RCPT: (250, 251),
            DATA: (354,), DOT: (250,), QUIT: (221,)}


class _Conn:
    __slots__ = ("sock", "state", "inbuf", "out", "has_claim", "writing", "started", "attempt")

    def __init__(self, sock: socket.socket, attempt: int) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.inbuf = bytearray()
        self.out: Optional[memoryview] = None
        self.has_claim = False
        self.writing = True
        self.started = time.perf_counter()
        self.attempt = attempt


class PyLoadGen:
    """Single-threaded, selectors-based SMTP client; no command pipelining.

    ``sessions`` connections run in parallel and share ``messages`` messages.
    Each connection sends HELO once, then MAIL/RCPT/DATA per message, and
    QUIT.  With ``persistent`` False a connection carries one message and the
    session reconnects for the next one (like smtp-source without -d).

    A connection that is not greeted within ``greeting_timeout`` seconds is
    dropped and retried (up to ``max_attempts`` times) and counted in
    ``GenResult.retries``: with a tiny listen backlog and SYN cookies the
    kernel can drop the final handshake ACK silently, which leaves a client
    of a server-speaks-first protocol waiting forever.

    Hold mode: ``sessions`` connections are opened (at most ``max_connecting``
    being set up at a time) and parked after the greeting; once all are
    greeted or failed ``on_held`` is called, then every connection sends one
    message and quits.
    """

    def __init__(self, port: int, sessions: int, messages: int, size: int, persistent: bool,
                 timeout: float, hold: bool = False, on_held: Optional[Callable[[int], None]] = None,
                 max_connecting: int = 4, greeting_timeout: float = 3.0, max_attempts: int = 5,
                 stall_timeout: float = 30.0) -> None:
        self.addr = (HOST, port)
        self.sessions = sessions
        self.messages = messages
        self.payload = build_message(size)
        self.persistent = persistent and not hold
        self.timeout = timeout
        self.hold = hold
        self.on_held = on_held
        self.max_connecting = max_connecting
        self.greeting_timeout = greeting_timeout
        self.max_attempts = max_attempts
        self.stall_timeout = stall_timeout
        self.progress = 0  # replies received + sends completed
        self.sel = selectors.DefaultSelector()
        self.unclaimed = messages
        self.open = 0
        self.setting_up: Set[_Conn] = set()  # connections not greeted yet
        self.pending = 0  # hold mode: connections not started yet
        self.held: List[_Conn] = []
        self.released = not hold
        self.res = GenResult(expected=messages)
        # Progress watch (run() resets the times): replies + sends at the
        # last check, and when that count last moved.
        self.last_progress = -1
        self.t_progress = self.t_measure = 0.0
        self.helo = ("HELO %s\r\n" % HELO_NAME).encode()
        self.mail = ("MAIL FROM:<%s>\r\n" % MAIL_FROM).encode()
        self.rcpt = ("RCPT TO:<%s>\r\n" % RCPT_TO).encode()

    # -- connection management -------------------------------------------
    def _claim(self) -> bool:
        if self.unclaimed > 0:
            self.unclaimed -= 1
            return True
        return False

    def _start_conn(self, claimed: bool = False, attempt: int = 1) -> bool:
        """Open a connection carrying one claimed message."""
        if not claimed and not self._claim():
            return False
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            self.res.failed += 1
            self.res.add_error("socket(): %s" % e.strerror)
            return False
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, attempt)
        conn.has_claim = True
        self.open += 1
        self.setting_up.add(conn)
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._fail(conn, os.strerror(err))
            return False
        self.sel.register(sock, selectors.EVENT_WRITE, conn)
        return True

    def _close(self, conn: _Conn) -> None:
        if conn.sock is None:
            return
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.sock = None  # type: ignore[assignment]
        self.setting_up.discard(conn)
        self.open -= 1

    def _fail(self, conn: _Conn, what: str) -> None:
        self.res.add_error("%s: %s" % (STATE_NAMES[conn.state], what))
        if conn.has_claim:
            conn.has_claim = False
            self.res.failed += 1
        if conn.state == HELD:
            try:
                self.held.remove(conn)
            except ValueError:
                pass
        self._close(conn)
        # the session slot is abandoned (like smtp-source without -A)

    def _check_setup_timeouts(self, now: float) -> None:
        for conn in [c for c in self.setting_up if now - c.started > self.greeting_timeout]:
            if conn.attempt >= self.max_attempts:
                self._fail(conn, "no greeting after %d attempts" % conn.attempt)
                continue
            self.res.retries += 1
            conn.has_claim = False
            self._close(conn)
            self._start_conn(claimed=True, attempt=conn.attempt + 1)

    # -- I/O ---------------------------------------------------------------
    def _send(self, conn: _Conn, data: bytes, state: int) -> None:
        conn.state = state
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._fail(conn, "send: %s" % (e.strerror or e))
            return
        if n < len(data):
            conn.out = memoryview(data)[n:]
            if not conn.writing:
                conn.writing = True
                self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _on_writable(self, conn: _Conn) -> None:
        if conn.state == CONNECTING:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(conn, os.strerror(err))
                return
            conn.state = GREETING
            conn.writing = False
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        out = conn.out
        if out is not None:
            try:
                n = conn.sock.send(out)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(conn, "send: %s" % (e.strerror or e))
                return
            out = out[n:]
            conn.out = out if len(out) else None
            self.progress += 1
        if conn.out is None and conn.writing:
            conn.writing = False
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(conn, "recv: %s" % (e.strerror or e))
            return
        if not data:
            if conn.state == QUIT and not conn.inbuf:
                self._finish(conn)  # server closed right after 221
            else:
                self._fail(conn, "connection closed by server")
            return
        buf = conn.inbuf
        buf += data
        while conn.sock is not None:
            # a reply is complete at a line whose 4th character is not '-'
            pos = 0
            code = None
            while True:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    break
                line = buf[pos:nl]
                pos = nl + 1
                if len(line) < 4 or line[3:4] != b"-":
                    head = bytes(line[:3])
                    code = int(head) if head.isdigit() else -1
                    break
            if code is None:
                return
            text = bytes(buf[:pos]).strip()
            del buf[:pos]
            self._on_reply(conn, code, text)

    def _finish(self, conn: _Conn) -> None:
        self._close(conn)
        if not self.persistent and not self.hold:
            self._start_conn()  # next message of this session, if any

    def _on_reply(self, conn: _Conn, code: int, text: bytes) -> None:
        state = conn.state
        self.progress += 1
        if code not in EXPECTED[state]:
            self._fail(conn, "unexpected reply %r" % text[:60].decode("latin-1"))
            return
        if state == DOT:
            conn.has_claim = False
            self.res.delivered += 1
            if self.persistent and self._claim():
                conn.has_claim = True
                self._send(conn, self.mail, MAIL)
            else:
                self._send(conn, b"QUIT\r\n", QUIT)
        elif state == MAIL:
            self._send(conn, self.rcpt, RCPT)
        elif state == RCPT:
            self._send(conn, b"DATA\r\n", DATA)
        elif state == DATA:
            self._send(conn, self.payload, DOT)
        elif state == HELO:
            self._send(conn, self.mail, MAIL)
        elif state == GREETING:
            self.setting_up.discard(conn)
            if self.released:
                self._send(conn, self.helo, HELO)
            else:
                conn.state = HELD
                self.held.append(conn)
                if len(self.held) > self.res.held:
                    self.res.held = len(self.held)
        elif state == QUIT:
            self._finish(conn)

    # -- main loop ---------------------------------------------------------
    def _fill_setup(self) -> None:
        while self.pending > 0 and len(self.setting_up) < self.max_connecting:
            self.pending -= 1
            self._start_conn()

    def _release_held(self, t0: float) -> bool:
        """Hold mode: once every connection is greeted or failed, report the
        count to on_held, then let them all send; True when that happened."""
        self._fill_setup()
        if self.released or self.pending or self.setting_up:
            return False
        self.res.hold_info["connect_s"] = time.perf_counter() - t0
        if self.on_held is not None:
            self.on_held(len(self.held))
        self.released = True
        self.t_measure = time.perf_counter()  # the messages, not the set-up
        for conn in list(self.held):
            if conn.sock is not None:
                self._send(conn, self.helo, HELO)
        self.held = []
        return True

    def _stalled(self, now: float) -> bool:
        if self.progress != self.last_progress:
            self.last_progress, self.t_progress = self.progress, now
            return False
        return now - self.t_progress > self.stall_timeout

    def run(self) -> GenResult:
        t0 = self.t_measure = self.t_progress = time.perf_counter()
        deadline = t0 + self.timeout
        if self.hold:
            self.pending = self.sessions
            self._fill_setup()
        else:
            for _ in range(self.sessions):
                if not self._start_conn():
                    break
        next_check = t0 + 0.25
        sel = self.sel
        EV_R, EV_W = selectors.EVENT_READ, selectors.EVENT_WRITE
        while self.open > 0 or self.pending > 0:
            if self.hold and self._release_held(t0):
                continue
            now = time.perf_counter()
            if now >= deadline:
                self.res.add_error("run timed out after %.0f s" % self.timeout)
                break
            if now >= next_check:
                next_check = now + 0.25
                if self._stalled(now):
                    self.res.add_error("stalled: no progress for %.0f s" % self.stall_timeout)
                    break
                if self.setting_up:
                    self._check_setup_timeouts(now)
                    continue
            for key, mask in sel.select(min(0.25, deadline - now)):
                conn = key.data
                if mask & EV_W:
                    self._on_writable(conn)
                if mask & EV_R and conn.sock is not None:
                    self._on_readable(conn)
        if self.open > 0 or self.pending > 0:
            for key in list(sel.get_map().values()):
                self._fail(key.data, "timeout")
            self.res.failed += self.unclaimed
        self.res.elapsed = time.perf_counter() - self.t_measure
        sel.close()
        return self.res


# --------------------------------------------------------------------------
# Postfix smtp-source
# --------------------------------------------------------------------------


def _smtp_source_argv(exe: str, port: int, load: Load) -> List[str]:
    argv = [exe, "-c", "-s", str(load.sessions), "-m", str(load.messages), "-l", str(load.size)]
    if load.persistent:
        argv.append("-d")
    return argv + ["-f", MAIL_FROM, "-t", RCPT_TO, "-M", HELO_NAME, "%s:%d" % (HOST, port)]


def _read_counter(stream: IO[bytes], count: List[int]) -> None:
    """Keep count[0] at the last number smtp-source -c printed."""
    tail = b""
    while True:
        chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
        if not chunk:
            break
        tail += chunk
        parts = re.split(rb"[\r\n]", tail)
        tail = parts.pop()  # possibly incomplete
        for part in reversed(parts):
            if part.strip().isdigit():
                count[0] = int(part)
                break
    if tail.strip().isdigit():
        count[0] = int(tail)


def _read_all(stream: IO[bytes], chunks: List[bytes]) -> None:
    for chunk in iter(lambda: stream.read(4096), b""):
        chunks.append(chunk)


def _watch(proc: "subprocess.Popen[bytes]", count: List[int], t0: float, timeout: float,
           stall_timeout: float) -> Optional[str]:
    """Wait for smtp-source; kill it and say why when it times out or stalls."""
    deadline = t0 + timeout
    last_count, last_progress = 0, t0
    while True:
        try:
            proc.wait(0.1)
            return None
        except subprocess.TimeoutExpired:
            pass
        now = time.perf_counter()
        if count[0] != last_count:
            last_count, last_progress = count[0], now
        why = None
        if now >= deadline:
            why = "timed out after %.0f s" % timeout
        elif now - last_progress > stall_timeout:
            why = "stalled: no message for %.0f s" % stall_timeout
        if why:
            proc.kill()
            proc.wait()
            return why


def run_smtp_source(exe: str, port: int, load: Load, timeout: float, stall_timeout: float) -> GenResult:
    """Run Postfix smtp-source; -c makes it print a running count of messages.

    The count lets a run that stalls (no message for ``stall_timeout`` s) be
    cut short and still report how many messages got through.
    """
    argv = _smtp_source_argv(exe, port, load)
    vlog("loadgen: " + " ".join(argv))
    res = GenResult(expected=load.messages)
    count = [0]
    err_chunks: List[bytes] = []
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        res.failed = load.messages
        res.add_error("cannot run smtp-source: %s" % e)
        return res
    readers = [threading.Thread(target=_read_counter, args=(proc.stdout, count), daemon=True),
               threading.Thread(target=_read_all, args=(proc.stderr, err_chunks), daemon=True)]
    for t in readers:
        t.start()
    why = _watch(proc, count, t0, timeout, stall_timeout)
    res.elapsed = time.perf_counter() - t0
    for t in readers:
        t.join(2)
    if why is None and proc.returncode == 0:
        res.delivered = load.messages
        return res
    res.delivered = min(count[0], load.messages)
    res.failed = load.messages - res.delivered
    if why:
        res.add_error("smtp-source %s" % why)
    else:
        msg = b"".join(err_chunks).decode("utf-8", "replace").strip().splitlines()
        res.add_error("smtp-source exit %d: %s" % (proc.returncode, msg[-1] if msg else ""))
    return res
