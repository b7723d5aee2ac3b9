"""The asyncore layer on its own, over real loopback sockets.

Most tests drive the loop from the test's own thread with ``loop(count=1)``
until a condition holds (bounded in time); the descriptor test runs an
SMTP server in a loop thread.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import time
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from smtpd_compat import _pollers, _reactor, asyncore

from conftest import GREETING, TIMEOUT, RawClient, RecordingSMTPServer, ServerThread


def run_until(map: dict, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Run loop iterations over *map* until done(); fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        asyncore.loop(timeout=0.05, map=map, count=1)


@pytest.fixture
def map() -> Any:
    m: Dict[int, Any] = {}
    yield m
    asyncore.close_all(map=m, ignore_all=True)


@pytest.fixture(params=["epoll", "poll", "select"])
def poller(request: Any, monkeypatch: Any) -> str:
    """The test's loops run under this poller (each map's reactor makes its
    poller when a loop first runs over it); skipped where it is missing."""
    factory = _pollers._available_pollers().get(request.param)
    if factory is None:
        pytest.skip("no %s() on this platform" % request.param)
    monkeypatch.setattr(_reactor, "_Poller", factory)
    return str(request.param)


class Server(asyncore.dispatcher):
    """Listens and keeps each accepted (sock, addr)."""

    def __init__(self, map: dict, family: int = socket.AF_INET, host: str = "127.0.0.1") -> None:
        asyncore.dispatcher.__init__(self, map=map)
        self.create_socket(family, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind((host, 0))
        self.listen(16)
        self.address = self.socket.getsockname()
        self.accepted: List[Tuple[Any, Any]] = []

    def handle_accepted(self, sock: Any, addr: Any) -> None:
        self.accepted.append((sock, addr))


class Echo(asyncore.dispatcher_with_send):
    def handle_read(self) -> None:
        data = self.recv(65536)
        if data:
            self.send(data)


class Client(asyncore.dispatcher):
    """Connects, sends ``to_send``, collects what comes back."""

    def __init__(self, map: dict, address: Tuple[str, int], to_send: bytes = b"", family: int = socket.AF_INET) -> None:
        asyncore.dispatcher.__init__(self, map=map)
        self.create_socket(family, socket.SOCK_STREAM)
        self.to_send = to_send
        self.received = b""
        self.events: List[str] = []
        self.connect(address)

    def handle_connect(self) -> None:
        self.events.append("connect")

    def writable(self) -> bool:
        return not self.connected or bool(self.to_send)

    def handle_write(self) -> None:
        sent = self.send(self.to_send)
        self.to_send = self.to_send[sent:]

    def handle_read(self) -> None:
        self.received += self.recv(65536)

    def handle_close(self) -> None:
        self.events.append("close")
        self.close()


# -- dispatcher basics ----------------------------------------------------------------
def test_create_bind_listen_accept_connect(map: dict) -> None:
    server = Server(map)
    assert server.accepting and not server.connected
    assert server.addr == ("127.0.0.1", 0)
    client = Client(map, server.address, b"hello")
    assert client.connecting or client.connected
    run_until(map, lambda: bool(server.accepted) and "connect" in client.events and not client.to_send)
    assert client.connected and not client.connecting
    sock, addr = server.accepted[0]
    assert addr == client.socket.getsockname()
    sock.settimeout(TIMEOUT)
    assert sock.recv(100) == b"hello"
    sock.close()


def test_echo_round_trip_and_close(map: dict) -> None:
    class EchoServer(Server):
        def handle_accepted(self, sock: Any, addr: Any) -> None:
            self.accepted.append((Echo(sock, map=map), addr))

    server = EchoServer(map)
    payload = os.urandom(300000)
    client = Client(map, server.address, payload)
    run_until(map, lambda: len(client.received) == len(payload))
    assert client.received == payload
    echo = server.accepted[0][0]
    assert echo.connected and echo.addr == client.socket.getsockname()
    echo.close()
    run_until(map, lambda: "close" in client.events)
    assert client.socket.fileno() == -1
    assert set(map) == {server._fileno}


def test_dispatcher_with_sock_and_repr(map: dict) -> None:
    a, b = socket.socketpair()
    try:
        d = asyncore.dispatcher(a, map=map)
        assert d.connected
        assert map[a.fileno()] is d
        assert "connected" in repr(d)
        d.close()
        assert a.fileno() not in map and not d.connected
    finally:
        b.close()


def test_connect_refused_goes_to_handle_error_and_closes(map: dict, caplog: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed

    class Refused(Client):
        errors = 0

        def handle_error(self) -> None:
            Refused.errors += 1
            asyncore.dispatcher.handle_error(self)

    client = Refused(map, ("127.0.0.1", port))
    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        run_until(map, lambda: not map)
    # As with asyncore: the failed connect reaches handle_error(), which
    # closes the dispatcher; nothing escapes the loop.
    assert Refused.errors == 1
    assert "connect" not in client.events
    assert not client.connected and client.socket.fileno() == -1


def test_socket_global_can_be_replaced(monkeypatch: Any) -> None:
    """create_socket() looks socket up through the module global, so tests
    can substitute a mock socket module (CPython's test_smtpd does)."""
    made = []

    class FakeSocket:
        def __init__(self, family: int, type: int) -> None:
            made.append((family, type))
            self.blocking = None

        def setblocking(self, flag: bool) -> None:
            self.blocking = flag

        def fileno(self) -> int:
            return 123456

        def close(self) -> None:
            pass

    fake = types.SimpleNamespace(socket=FakeSocket, AF_INET=socket.AF_INET, SOCK_STREAM=socket.SOCK_STREAM)
    monkeypatch.setattr(asyncore, "socket", fake)
    m: Dict[int, Any] = {}
    d = asyncore.dispatcher(map=m)
    d.create_socket(socket.AF_INET6, socket.SOCK_STREAM)
    assert made == [(socket.AF_INET6, socket.SOCK_STREAM)]
    assert d.socket.blocking is False
    assert m == {123456: d}
    d.close()
    assert m == {}


# -- loop(), poll(), count ------------------------------------------------------------------
class AlwaysWritable(asyncore.dispatcher):
    """writable() overridden: asked on every iteration, as in asyncore."""

    def __init__(self, sock: Any, map: dict) -> None:
        asyncore.dispatcher.__init__(self, sock, map=map)
        self.writes = 0

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def handle_write(self) -> None:
        self.writes += 1


def test_loop_count_runs_exactly_that_many_iterations(map: dict) -> None:
    a, b = socket.socketpair()
    try:
        d = AlwaysWritable(a, map)
        asyncore.loop(timeout=TIMEOUT, map=map, count=3)
        assert d.writes == 3
        asyncore.loop(timeout=TIMEOUT, map=map, count=1)
        assert d.writes == 4
        asyncore.poll(timeout=TIMEOUT, map=map)
        asyncore.poll2(timeout=TIMEOUT, map=map)
        assert d.writes == 6
    finally:
        b.close()


def test_loop_returns_when_map_is_empty() -> None:
    started = time.monotonic()
    asyncore.loop(timeout=5, map={})
    asyncore.loop(timeout=5, map={}, count=10)
    asyncore.poll(timeout=5, map={})
    assert time.monotonic() - started < 1


def test_loop_ends_when_last_dispatcher_closes(map: dict) -> None:
    a, b = socket.socketpair()

    class CloseOnRead(asyncore.dispatcher):
        def handle_read(self) -> None:
            self.recv(10)
            self.close()

    CloseOnRead(a, map=map)
    b.send(b"x")
    try:
        asyncore.loop(timeout=TIMEOUT, map=map)  # returns once the map is empty
        assert not map
    finally:
        b.close()


def test_poll_timeout_returns_without_events(map: dict) -> None:
    a, b = socket.socketpair()
    try:
        reads = []

        class Reader(asyncore.dispatcher):
            def writable(self) -> bool:
                return False

            def handle_read(self) -> None:
                reads.append(self.recv(10))

        Reader(a, map=map)
        started = time.monotonic()
        asyncore.poll(timeout=0.05, map=map)
        assert reads == []
        assert time.monotonic() - started < 2
        b.send(b"ping")
        asyncore.poll(timeout=TIMEOUT, map=map)
        assert reads == [b"ping"]
    finally:
        b.close()


def test_interest_of_overridden_readable_is_asked_every_iteration(map: dict) -> None:
    """A subclass whose readable() changes on its own (no notification) gets
    its events as soon as it says yes, as with asyncore's select loop."""
    a, b = socket.socketpair()
    try:

        class Gated(asyncore.dispatcher):
            open_gate = False
            reads: List[bytes] = []
            asked = 0

            def readable(self) -> bool:
                Gated.asked += 1
                return self.open_gate

            def writable(self) -> bool:
                return False

            def handle_read(self) -> None:
                Gated.reads.append(self.recv(100))

        d = Gated(a, map=map)
        b.send(b"waiting")
        for _ in range(3):
            asyncore.loop(timeout=0.01, map=map, count=1)
        assert Gated.reads == []
        assert Gated.asked >= 3
        d.open_gate = True  # no _interest_changed(): must still be seen
        asyncore.loop(timeout=TIMEOUT, map=map, count=1)
        # The change is seen at the start of the next iteration at the latest.
        if not Gated.reads:
            asyncore.loop(timeout=TIMEOUT, map=map, count=1)
        assert Gated.reads == [b"waiting"]
    finally:
        b.close()


def test_fd_reused_by_a_new_dispatcher(map: dict) -> None:
    """A descriptor closed and reused by a new dispatcher in the same loop
    (same selector) gets its events."""
    got: List[bytes] = []

    class Reader(asyncore.dispatcher):
        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            got.append(self.recv(100))

    k1, k2 = socket.socketpair()
    keep = Reader(k1, map=map)  # keeps the map (and its reactor) alive throughout
    a, b = socket.socketpair()
    first = Reader(a, map=map)
    b.send(b"one")
    run_until(map, lambda: got == [b"one"])
    fd = a.fileno()
    first.close()
    b.close()
    c, d = socket.socketpair()
    if c.fileno() != fd:
        c.close()
        d.close()
        pytest.skip("the descriptor was not reused")
    Reader(c, map=map)
    assert keep._fileno in map
    d.send(b"two")
    try:
        run_until(map, lambda: got == [b"one", b"two"])
    finally:
        d.close()
        k2.close()


# -- errors --------------------------------------------------------------------------------------
def test_exitnow_leaves_the_loop(map: dict) -> None:
    a, b = socket.socketpair()
    try:

        class Quitter(asyncore.dispatcher):
            def handle_read(self) -> None:
                raise asyncore.ExitNow("bye")

            def writable(self) -> bool:
                return False

        Quitter(a, map=map)
        b.send(b"x")
        with pytest.raises(asyncore.ExitNow):
            asyncore.loop(timeout=TIMEOUT, map=map)
        assert a.fileno() in map  # nothing was closed
    finally:
        b.close()


@pytest.mark.parametrize("error, closed_by", [(ConnectionResetError(errno.ECONNRESET, "reset"), "handle_close"), (OSError(errno.EIO, "io"), "handle_error")])
def test_os_errors_from_a_read_handler(map: dict, caplog: Any, error: OSError, closed_by: str) -> None:
    # A lost connection closes quietly; any other OSError is an error.
    a, b = socket.socketpair()
    calls: List[str] = []
    try:

        class Failing(asyncore.dispatcher):
            def writable(self) -> bool:
                return False

            def handle_read(self) -> None:
                raise error

            def handle_close(self) -> None:
                calls.append("handle_close")
                self.close()

            def handle_error(self) -> None:
                calls.append("handle_error")
                self.close()

        Failing(a, map=map)
        b.send(b"x")
        run_until(map, lambda: a.fileno() == -1)
        assert calls == [closed_by]
    finally:
        b.close()


def test_handle_error_logs_and_closes_and_others_go_on(map: dict, caplog: Any) -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:

        class Broken(asyncore.dispatcher):
            def writable(self) -> bool:
                return False

            def handle_read(self) -> None:
                raise ValueError("boom in handler")

        got: List[bytes] = []

        class Fine(asyncore.dispatcher):
            def writable(self) -> bool:
                return False

            def handle_read(self) -> None:
                got.append(self.recv(10))

        broken = Broken(a, map=map)
        Fine(c, map=map)
        b.send(b"x")
        d.send(b"y")
        with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
            run_until(map, lambda: a.fileno() == -1 and got == [b"y"])
        assert not broken.connected
        assert list(map) == [c.fileno()]
        records = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "smtpd_compat"]
        assert records and records[0].exc_info and records[0].exc_info[0] is ValueError
        assert "boom in handler" in caplog.text
        # Nothing printed on stdout, unlike asyncore (stdout belongs to the app).
    finally:
        for s in (b, d):
            s.close()


def test_handle_error_does_not_write_to_stdout(map: dict, capsys: Any) -> None:
    a, b = socket.socketpair()
    try:

        class Broken(asyncore.dispatcher):
            def handle_read(self) -> None:
                raise RuntimeError("quiet")

        Broken(a, map=map)
        b.send(b"x")
        run_until(map, lambda: not map)
        assert capsys.readouterr().out == ""
    finally:
        b.close()


def test_compact_traceback() -> None:
    def inner() -> None:
        raise KeyError("k")

    try:
        inner()
    except KeyError:
        (file, function, line), t, v, info = asyncore.compact_traceback()
    assert function == "inner" and t is KeyError and isinstance(v, KeyError)
    assert file == __file__ and line.isdigit()
    assert "[%s|inner|%s]" % (__file__, line) in info
    with pytest.raises(AssertionError):
        asyncore.compact_traceback()  # no exception being handled


# -- close_all ----------------------------------------------------------------------------------
def test_close_all_closes_and_empties(map: dict) -> None:
    socks = [socket.socketpair() for _ in range(3)]
    ds = [asyncore.dispatcher(a, map=map) for a, _ in socks]
    assert len(map) == 3
    asyncore.close_all(map=map)
    assert map == {}
    assert all(d.socket.fileno() == -1 for d in ds)
    for _, b in socks:
        b.close()


def test_close_all_ignore_all(map: dict) -> None:
    class Stubborn(asyncore.dispatcher):
        def close(self) -> None:
            raise RuntimeError("cannot close")

    class BadFd(asyncore.dispatcher):
        def close(self) -> None:
            raise OSError(errno.EBADF, "gone")

    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        Stubborn(a, map=map)
        with pytest.raises(RuntimeError):
            asyncore.close_all(map=map)
        Stubborn(a, map=map)
        BadFd(c, map=map)
        asyncore.close_all(map=map, ignore_all=True)
        assert map == {}
        BadFd(c, map=map)
        asyncore.close_all(map=map)  # EBADF is always ignored
        assert map == {}
    finally:
        for s in (a, b, c, d):
            s.close()


def test_close_all_default_map() -> None:
    a, b = socket.socketpair()
    try:
        d = asyncore.dispatcher(a)
        assert asyncore.socket_map[a.fileno()] is d
        asyncore.close_all()
        assert asyncore.socket_map == {}
    finally:
        b.close()


# -- dispatcher_with_send ------------------------------------------------------------------------
def test_dispatcher_with_send_buffers_for_a_slow_peer(map: dict) -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        d = asyncore.dispatcher_with_send(a, map=map)
        payload = os.urandom(1 << 20)
        d.send(payload)
        assert d.out_buffer, "everything was sent at once; the test proves nothing"
        assert d.writable()
        b.setblocking(False)
        received = bytearray()
        deadline = time.monotonic() + TIMEOUT
        while len(received) < len(payload):
            assert time.monotonic() < deadline
            try:
                received += b.recv(65536)
            except BlockingIOError:
                pass
            asyncore.loop(timeout=0.01, map=map, count=1)
        assert bytes(received) == payload
        assert d.out_buffer == b"" and not d.writable()
    finally:
        b.close()


# -- file_dispatcher -------------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="posix only")
def test_file_dispatcher_reads_a_pipe(map: dict) -> None:
    r, w = os.pipe()
    got: List[bytes] = []

    class PipeReader(asyncore.file_dispatcher):
        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            got.append(self.recv(100))

    d = PipeReader(r, map=map)
    os.close(r)  # the dispatcher holds its own duplicate
    try:
        os.write(w, b"through a pipe")
        run_until(map, lambda: got == [b"through a pipe"])
    finally:
        os.close(w)
        d.close()


def test_file_dispatcher_serves_regular_files(map: dict, poller: str, tmp_path: Any) -> None:
    """select() and poll() report a regular file ready at once; epoll
    refuses to watch one.  Under every poller a file_dispatcher on a file
    is read to its end and written to."""
    content = os.urandom(20000)
    source = tmp_path / "source"
    source.write_bytes(content)
    got: List[bytes] = []
    closed: List[bool] = []

    class Reader(asyncore.file_dispatcher):
        def writable(self) -> bool:
            return False

        def handle_read(self) -> None:
            got.append(self.recv(4096))

        def handle_close(self) -> None:  # the read at the end of the file
            closed.append(True)
            self.close()

    class Writer(asyncore.file_dispatcher):
        pending = b"written through the loop\n" * 400

        def readable(self) -> bool:
            return False

        def writable(self) -> bool:
            return bool(self.pending)

        def handle_write(self) -> None:
            self.pending = self.pending[self.send(self.pending[:4096]) :]

    fd = os.open(str(source), os.O_RDONLY)
    Reader(fd, map=map)
    os.close(fd)  # the dispatcher holds its own duplicate
    target = tmp_path / "target"
    fd = os.open(str(target), os.O_WRONLY | os.O_CREAT)
    writer = Writer(fd, map=map)
    os.close(fd)
    run_until(map, lambda: bool(closed) and not writer.pending)
    writer.close()
    assert b"".join(got) == content
    assert target.read_bytes() == Writer.pending


# -- out-of-band data ----------------------------------------------------------------------------
class UrgentReader(Client):
    """Handles out-of-band data: reads the urgent byte."""

    def __init__(self, map: dict, address: Tuple[str, int]) -> None:
        Client.__init__(self, map, address)
        self.urgent: List[bytes] = []

    def handle_expt(self) -> None:
        self.urgent.append(self.socket.recv(1, socket.MSG_OOB))


def connected_pair(map: dict, client: Client, server: Server) -> socket.socket:
    """Run the loop until *client* is connected; the server's end of it."""
    run_until(map, lambda: bool(server.accepted) and client.connected)
    sock: socket.socket = server.accepted[0][0]
    return sock


def test_out_of_band_data_reaches_handle_expt(map: dict, poller: str) -> None:
    """As with asyncore's select() and poll() loops: an urgent byte calls
    handle_expt_event(), which calls handle_expt()."""
    if sys.platform == "darwin" and poller == "poll":
        pytest.skip("poll() is unreliable on some macOS versions; CPython skips this case too (bpo-28087)")
    server = Server(map)
    client = UrgentReader(map, server.address)
    with connected_pair(map, client, server) as sock:
        sock.send(b"!", socket.MSG_OOB)
        run_until(map, lambda: client.urgent == [b"!"])
        sock.send(b"ordinary")
        run_until(map, lambda: client.received == b"ordinary")


def test_out_of_band_data_does_not_wake_a_dispatcher_that_ignores_it(map: dict, poller: str, caplog: Any) -> None:
    """A dispatcher whose class keeps the default handle_expt() is not
    watched for out-of-band data: nothing would read the urgent byte, and
    every loop iteration would report it again (a busy loop)."""
    server = Server(map)
    client = Client(map, server.address)
    client.ignore_log_types = frozenset()  # so the default handle_expt() would log
    with connected_pair(map, client, server) as sock:
        sock.send(b"before!", socket.MSG_OOB)  # one segment; its last byte is urgent
        with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
            run_until(map, lambda: client.received == b"before")  # the urgent byte has arrived too
            asyncore.loop(timeout=0.0, map=map, count=3)
    assert "priority event" not in caplog.text
    assert client.received == b"before"


# -- accept back-off on EMFILE ----------------------------------------------------------------------
class FlakyListener:
    """Wraps a listening socket; its first accept() fails with EMFILE."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.failures = 1

    def accept(self) -> Any:
        if self.failures:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self._sock.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_accept_emfile_backs_off_and_keeps_listening(map: dict, caplog: Any) -> None:
    server = Server(map)
    server.socket = FlakyListener(server.socket)
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
        c = socket.create_connection(server.address, timeout=TIMEOUT)
        try:
            run_until(map, lambda: bool(server.accepted))
        finally:
            c.close()
    assert server.accepting and server._fileno in map
    assert "accept() failed" in caplog.text
    for sock, _ in server.accepted:
        sock.close()


# -- more than 1024 descriptors ----------------------------------------------------------------------
N_CLIENTS = 1100


def _raise_nofile(needed: int) -> Optional[Tuple[int, int]]:
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft, hard
    if hard != resource.RLIM_INFINITY and hard < needed:
        return None
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return soft, hard


@pytest.mark.skipif(
    _reactor.POLLER == "select",
    reason="the select() poller takes descriptors below FD_SETSIZE (1024) only (docs/platforms.md)",
)
def test_more_than_1024_descriptors() -> None:
    """1100 sessions in one loop: a session whose descriptor is above 1024
    (where asyncore's select() loop fails) gets its greeting and delivers a
    message."""
    resource = pytest.importorskip("resource", reason="RLIMIT_NOFILE needs the resource module (POSIX)")
    needed = 2 * N_CLIENTS + 256
    previous = _raise_nofile(needed)
    if previous is None:
        pytest.skip("RLIMIT_NOFILE hard limit is below %d" % needed)
    clients: List[socket.socket] = []
    try:
        with ServerThread(RecordingSMTPServer) as st:
            for _ in range(N_CLIENTS):
                clients.append(socket.create_connection(st.address, timeout=TIMEOUT))
            # Every session is served, including those above descriptor 1024.
            for c in clients:
                c.settimeout(TIMEOUT)
                assert c.recv(len(GREETING)) == GREETING
            fds = st.call(lambda: sorted(fd for fd, obj in st.map.items() if obj is not st.server))
            assert len(fds) == N_CLIENTS and fds[-1] > 1024
            # The last connection was accepted last: the highest descriptor.
            last = RawClient.__new__(RawClient)
            last.sock, last.timeout, last.buffer = clients[-1], TIMEOUT, b""
            for line, reply in [
                (b"HELO x", b"250 "),
                (b"MAIL FROM:<a@b>", b"250 OK"),
                (b"RCPT TO:<c@d>", b"250 OK"),
                (b"DATA", b"354 "),
            ]:
                assert last.command(line).startswith(reply)
            assert last.command(b"above 1024\r\n.") == b"250 OK\r\n"
            (msg,) = st.server.wait_for(1)
            assert msg.data == b"above 1024"
            peer_port = clients[-1].getsockname()[1]
            assert msg.peer[1] == peer_port
            assert st.call(lambda: st.map[fds[-1]].peer[1]) == peer_port
    finally:
        for c in clients:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)


def test_reactor_is_forgotten_when_the_loop_empties_the_map(map: dict) -> None:
    a, b = socket.socketpair()
    b.close()

    class Closer(asyncore.dispatcher):
        def handle_read(self) -> None:
            self.recv(1)  # EOF: closes

        def handle_close(self) -> None:
            self.close()

    Closer(a, map=map)
    asyncore.loop(timeout=TIMEOUT, map=map)
    assert _reactor.reactor_for(map, create=False) is None


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_unix_socket_connect_completes_at_once(map: dict, tmp_path: Any) -> None:
    """A Unix-socket connect() succeeds immediately: handle_connect() runs
    from connect() itself, as in asyncore."""
    path = str(tmp_path / "sock")
    server = asyncore.dispatcher(map=map)
    server.create_socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(5)
    accepted: List[Any] = []
    server.handle_accepted = lambda sock, addr: accepted.append(sock)  # type: ignore[assignment]
    client = Client(map, path, b"over unix", family=socket.AF_UNIX)  # type: ignore[arg-type]
    assert client.connected and client.events == ["connect"]
    run_until(map, lambda: bool(accepted) and not client.to_send)
    accepted[0].settimeout(TIMEOUT)
    assert accepted[0].recv(100) == b"over unix"
    accepted[0].close()


@pytest.mark.parametrize(
    "error, outcome",
    [(ConnectionResetError(errno.ECONNRESET, "reset"), "handle_close"), (ValueError("boom"), "handle_error"), (asyncore.ExitNow("bye"), "raised")],
)
def test_readwrite_applies_the_event_error_policy(error: BaseException, outcome: str) -> None:
    import select

    calls: List[str] = []

    class Target:
        def handle_read_event(self) -> None:
            raise error

        def handle_close(self) -> None:
            calls.append("handle_close")

        def handle_error(self) -> None:
            calls.append("handle_error")

    try:
        asyncore.readwrite(Target(), select.POLLIN)
    except asyncore.ExitNow:
        calls.append("raised")
    assert calls == [outcome]
