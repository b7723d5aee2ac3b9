"""Shared test helpers: a server running in a thread, a recording server, a raw client.

Everything here uses real loopback sockets and waits on events with
timeouts; nothing sleeps to synchronise.

Fixtures and helpers for other test modules:

* ``RecordingSMTPServer`` -- an ``SMTPServer`` that keeps every message it
  receives and lets a test wait for the N-th one;
* ``running_server(cls, **kwargs)`` -- a context manager that starts *cls* on
  ``("127.0.0.1", 0)`` with its own socket map and a loop thread, and stops,
  closes and joins everything on exit;
* the ``server_factory`` fixture -- the same, stopped automatically at the
  end of the test;
* ``RawClient`` / the ``raw_client`` fixture -- a blocking socket client that
  sends bytes and reads replies with timeouts.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from smtpd_compat import _reactor, _serving, asyncore, smtpd  # noqa: E402  # noqa: E402

# Generous upper bound for anything a test waits for; a passing test never
# comes near it, a failing one does not hang the suite.
TIMEOUT = 10.0


def has_ipv6() -> bool:
    """Whether a socket can be bound to ``::1`` on this machine."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# -- the recording server ----------------------------------------------------
class Message(NamedTuple):
    """One message as ``process_message`` received it."""

    peer: Any
    mailfrom: str
    rcpttos: List[str]
    data: Any
    kwargs: Dict[str, Any]


class RecordingSMTPServer(smtpd.SMTPServer):
    """An SMTPServer that records each message and answers ``reply``.

    ``messages`` is the list of :class:`Message` received so far, in order;
    ``wait_for(n)`` blocks until at least *n* have arrived.  Set ``reply``
    (a full reply line, e.g. ``"550 No"``) to answer something other than
    ``250 OK``, or ``error`` to an exception instance that process_message
    then raises.
    """

    reply: Optional[str] = None
    error: Optional[BaseException] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.messages: List[Message] = []
        self._messages_cond = threading.Condition()
        super().__init__(*args, **kwargs)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kwargs: Any) -> Optional[str]:
        kwargs = {k: (list(v) if isinstance(v, list) else v) for k, v in kwargs.items()}
        with self._messages_cond:
            self.messages.append(Message(peer, mailfrom, list(rcpttos), data, kwargs))
            self._messages_cond.notify_all()
        if self.error is not None:
            raise self.error
        return self.reply

    def wait_for(self, count: int = 1, timeout: float = TIMEOUT) -> List[Message]:
        """Wait until *count* messages have arrived; return them all.

        Fails the test (AssertionError) after *timeout* seconds.
        """
        with self._messages_cond:
            ok = self._messages_cond.wait_for(lambda: len(self.messages) >= count, timeout)
            assert ok, "expected %d message(s), got %d" % (count, len(self.messages))
            return list(self.messages)


# -- a server in a thread ------------------------------------------------------
class ServerThread:
    """A server with its own socket map, served by ``asyncore.loop`` in a thread.

    ``server`` is the server object, ``map`` its socket map, ``address`` the
    bound ``(host, port)``.  ``stop()`` ends the loop (through the reactor's
    cross-thread wake-up, not by polling), closes every dispatcher of the map
    and joins the thread; an exception that escaped the loop is re-raised
    there so that the test fails.
    """

    def __init__(self, cls: Callable[..., Any], host: str = "127.0.0.1", **kwargs: Any) -> None:
        self.map: Dict[int, Any] = {}
        kwargs.setdefault("map", self.map)
        self.map = kwargs["map"]
        self.server = cls((host, 0), None, **kwargs)
        # Asked of the package, not of server.address: a subclass may use
        # that name for something else (tests/test_added_names.py).
        self.address: Tuple[str, int] = _serving.bound_address(self.server)[:2]
        self.host, self.port = self.address
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="smtpd-loop-%d" % self.port, daemon=True)
        self._stopped = False
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncore.loop(timeout=0.05, map=self.map)
        except asyncore.ExitNow:
            pass
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def call(self, func: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
        """Run *func* on the loop thread and return its result."""
        done = threading.Event()
        box: Dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = func()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        _reactor.reactor_for(self.map).call_soon_threadsafe(run)
        assert done.wait(timeout), "the loop thread did not run the call"
        if "error" in box:
            raise box["error"]
        return box.get("result")

    def stop(self, timeout: float = TIMEOUT) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():

            def leave() -> None:
                raise asyncore.ExitNow()

            _reactor.reactor_for(self.map).call_soon_threadsafe(leave)
            self._thread.join(timeout)
        alive = self._thread.is_alive()
        if not alive:
            asyncore.close_all(map=self.map, ignore_all=True)
        assert not alive, "the server loop did not stop"
        if self.error is not None:
            raise self.error

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def running_server(cls: Callable[..., Any] = RecordingSMTPServer, host: str = "127.0.0.1", **kwargs: Any) -> Iterator[ServerThread]:
    """Run ``cls((host, 0), None, **kwargs)`` in a loop thread for a ``with`` block."""
    st = ServerThread(cls, host=host, **kwargs)
    try:
        yield st
    finally:
        st.stop()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerThread]]:
    """``server_factory(cls=RecordingSMTPServer, host="127.0.0.1", **kwargs)``
    starts a server in a loop thread and returns its :class:`ServerThread`;
    all servers started are stopped when the test ends."""
    started: List[ServerThread] = []

    def factory(cls: Callable[..., Any] = RecordingSMTPServer, host: str = "127.0.0.1", **kwargs: Any) -> ServerThread:
        st = ServerThread(cls, host=host, **kwargs)
        started.append(st)
        return st

    yield factory
    errors = []
    for st in reversed(started):
        try:
            st.stop()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture
def smtp_server(server_factory: Callable[..., ServerThread]) -> ServerThread:
    """A default :class:`RecordingSMTPServer` on 127.0.0.1, in a loop thread."""
    return server_factory()


# -- a raw client -----------------------------------------------------------------
class RawClient:
    """A blocking TCP client with timeouts, for byte-exact conversations.

    ``send(data)`` sends all of *data*; ``read_reply()`` returns one complete
    (possibly multi-line) SMTP reply as bytes; ``read_exactly(n)`` and
    ``read_until_closed()`` read raw bytes.  Every read fails the test after
    ``timeout`` seconds instead of hanging.
    """

    def __init__(self, address: Tuple[str, int], timeout: float = TIMEOUT, nodelay: bool = True) -> None:
        self.sock = socket.create_connection(address[:2], timeout=timeout)
        if nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_bytewise(self, data: bytes) -> None:
        """Send *data* one byte per ``send()`` call."""
        for i in range(len(data)):
            self.sock.sendall(data[i : i + 1])

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False at end of stream."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("timed out; received so far: %r" % self.buffer)
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError("timed out; received so far: %r" % self.buffer) from None
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_line(self) -> bytes:
        """One line including its CRLF."""
        deadline = time.monotonic() + self.timeout
        while b"\r\n" not in self.buffer:
            if not self._fill(deadline):
                raise AssertionError("connection closed; received so far: %r" % self.buffer)
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def read_reply(self) -> bytes:
        """One complete reply: lines up to one whose 4th byte is not ``-``."""
        lines = []
        while True:
            line = self.read_line()
            lines.append(line)
            if line[3:4] != b"-":
                return b"".join(lines)

    def read_exactly(self, size: int) -> bytes:
        deadline = time.monotonic() + self.timeout
        while len(self.buffer) < size:
            if not self._fill(deadline):
                raise AssertionError("connection closed; received so far: %r" % self.buffer)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def read_until_closed(self) -> bytes:
        """Everything up to the server's end of stream."""
        deadline = time.monotonic() + self.timeout
        while self._fill(deadline):
            pass
        data, self.buffer = self.buffer, b""
        return data

    def command(self, line: bytes) -> bytes:
        """Send *line* plus CRLF and return the reply."""
        self.send(line + b"\r\n")
        return self.read_reply()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def send_while_reading(sock: socket.socket, data: bytes) -> bytes:
    """Send *data* from a helper thread while reading everything until the
    server closes; returns what was read.  For a client whose input the
    server only takes as its replies are read (its output is bounded)."""
    sender = threading.Thread(target=sock.sendall, args=(data,), daemon=True)
    sender.start()
    received = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sender.join(TIMEOUT)
    return bytes(received)


@pytest.fixture
def raw_client() -> Iterator[Callable[..., RawClient]]:
    """``raw_client(address)`` opens a :class:`RawClient`; all are closed at
    the end of the test."""
    clients: List[RawClient] = []

    def connect(address: Tuple[str, int], **kwargs: Any) -> RawClient:
        client = RawClient(address, **kwargs)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


FQDN = socket.getfqdn()
GREETING = ("220 %s %s\r\n" % (FQDN, smtpd.__version__)).encode("ascii")


def stdlib_modules(*names: str) -> Optional[Tuple[Any, ...]]:
    """CPython's own modules *names* (``"smtpd"``, ``"asyncore"``...) to
    compare with, or None where the interpreter no longer ships them (3.12+)
    or they are aliases to this package (``install_aliases()``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            modules = tuple(importlib.import_module(name) for name in names)
        except ImportError:
            return None
    for name, module in zip(names, modules):
        if module.__name__ != name or "smtpd_compat" in getattr(module, "__file__", ""):
            return None
    return modules
