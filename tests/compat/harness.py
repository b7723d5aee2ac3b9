"""Run third-party-style code against smtpd_compat and, where the interpreter
still ships them (3.9-3.11), against CPython's own smtpd/asyncore/asynchat.

Each case in this folder is written once, as a function of the three modules
(``impl.smtpd``, ``impl.asyncore``, ``impl.asynchat``), the way code written
for the standard library uses them.  The ``impl`` fixture runs every test once
per implementation; a test compares what it saw (bytes on the wire, hook
calls, delivered messages) with one expected value, so the standard library
and this package must produce the same thing.

Servers run in a thread with their own socket map, driven by the module's own
``asyncore.loop()`` (or ``poll``/``poll2``) one iteration at a time, so that
the same harness drives both implementations; the stdlib loop has no
wake-up, so iterations are bounded by a short timeout.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
TESTS = REPO_ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from smtpd_compat import asynchat as our_asynchat  # noqa: E402
from smtpd_compat import asyncore as our_asyncore  # noqa: E402
from smtpd_compat import smtpd as our_smtpd  # noqa: E402

from conftest import stdlib_modules  # noqa: E402

TIMEOUT = 10.0


class Impl(NamedTuple):
    name: str
    smtpd: Any
    asyncore: Any
    asynchat: Any


IMPLS: Dict[str, Impl] = {"smtpd_compat": Impl("smtpd_compat", our_smtpd, our_asyncore, our_asynchat)}
_stdlib = stdlib_modules("smtpd", "asyncore", "asynchat")
if _stdlib is not None:
    IMPLS["stdlib"] = Impl("stdlib", *_stdlib)

HAS_STDLIB = "stdlib" in IMPLS


@pytest.fixture(params=sorted(IMPLS))
def impl(request: Any) -> Impl:
    """Each implementation in turn: this package's modules, and CPython's
    where they exist."""
    return IMPLS[request.param]


class Loop:
    """Drive a socket map in a thread with the implementation's own loop.

    *how* picks the entry point: ``"loop"`` (``asyncore.loop(count=1)``),
    ``"loop_poll"`` (the same with ``use_poll=True``), ``"poll"`` or
    ``"poll2"`` (one call each).  The loop ends when ``stop()`` is called,
    when the map becomes empty, or when a handler raises (``ExitNow``
    included); ``exit`` then holds the exception.
    """

    def __init__(self, impl: Impl, map: Dict[int, Any], how: str = "loop") -> None:
        self.impl = impl
        self.map = map
        self.how = how
        self.exit: Optional[BaseException] = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="compat-loop", daemon=True)
        self.thread.start()

    def _step(self) -> None:
        asyncore = self.impl.asyncore
        if self.how == "loop":
            asyncore.loop(timeout=0.02, map=self.map, count=1)
        elif self.how == "loop_poll":
            asyncore.loop(timeout=0.02, use_poll=True, map=self.map, count=1)
        elif self.how == "poll":
            asyncore.poll(0.02, self.map)
        elif self.how == "poll2":
            asyncore.poll2(0.02, self.map)
        else:
            raise ValueError(self.how)

    def _run(self) -> None:
        try:
            while self.map and not self._stop.is_set():
                self._step()
        except BaseException as exc:
            self.exit = exc

    def join(self, timeout: float = TIMEOUT) -> None:
        """Wait for the loop to end by itself (a test that expects it to)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the loop did not end"

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "the loop did not stop"
        self.impl.asyncore.close_all(map=self.map, ignore_all=True)


class Client:
    """A blocking client that records every byte the server sends."""

    def __init__(self, address: Tuple[str, int], ssl_context: Any = None) -> None:
        sock = socket.create_connection(address[:2], timeout=TIMEOUT)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.received = b""
        self._unread = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError("timed out; received so far: %r" % self.received) from None
        self.received += chunk
        self._unread += chunk
        return bool(chunk)

    def reply(self) -> bytes:
        """One complete SMTP reply (multi-line replies whole)."""
        while True:
            lines = self._unread.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if line[3:4] != b"-":
                    taken = b"\r\n".join(lines[: i + 1]) + b"\r\n"
                    self._unread = self._unread[len(taken) :]
                    return taken
            if not self._fill():
                raise AssertionError("connection closed; received so far: %r" % self.received)

    def line(self) -> bytes:
        while b"\n" not in self._unread:
            if not self._fill():
                raise AssertionError("connection closed; received so far: %r" % self.received)
        line, _, self._unread = self._unread.partition(b"\n")
        return line + b"\n"

    def exactly(self, size: int) -> bytes:
        while len(self._unread) < size:
            if not self._fill():
                raise AssertionError("connection closed; received so far: %r" % self.received)
        data, self._unread = self._unread[:size], self._unread[size:]
        return data

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def rest_until_closed(self, timeout: float = TIMEOUT) -> bytes:
        """Everything the server sends until it closes the connection."""
        self.sock.settimeout(timeout)
        while self._fill():
            pass
        rest, self._unread = self._unread, b""
        return rest

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def address_of(server: Any) -> Tuple[str, int]:
    """The bound address, asked of the socket (the stdlib has no
    ``server.address``)."""
    return server.socket.getsockname()[:2]


def fqdn() -> str:
    return socket.getfqdn()


def greeting(impl: Impl) -> bytes:
    return ("220 %s %s\r\n" % (fqdn(), impl.smtpd.__version__)).encode("ascii")


class Events:
    """A thread-safe list of what hooks saw, with a way to wait for entries."""

    def __init__(self) -> None:
        self.items: List[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[List[Any]], bool], timeout: float = TIMEOUT) -> List[Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.items), timeout)
            assert ok, "waited in vain; events so far: %r" % (self.items,)
            return list(self.items)

