"""Several servers behind a load balancer (docs/deployment.md), for real.

A real HAProxy, started with a temporary config on loopback ports, balances
(roundrobin) over two ``python -m smtpd_compat`` processes, each a
MailboxServer with its own Maildir and ``--proxy-protocol``.  HAProxy checks
them with ``option smtpchk`` (EHLO, then QUIT) over connections that send
the PROXY header too (``check-send-proxy``).  smtplib clients bound to
127.0.0.2 send through HAProxy (127.0.0.1), so the address in the Maildir's
``X-Peer`` is the client's, not the proxy's.  Then a rolling restart: one
backend gets SIGTERM in the middle of a bounded load and is started again on
the same port while the clients retry as an MTA would; no message that was
answered 250 is lost, and a message is stored twice only if its sender
never saw the 250.  The tests skip where HAProxy is not installed.
"""

from __future__ import annotations

import collections
import contextlib
import email.parser
import logging
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Counter, Deque, Dict, Iterator, List

from test_cli import REPO_ROOT, env, free_port
from test_proxy_serving import V1, haproxy_program, run_haproxy

from conftest import TIMEOUT, RawClient, RecordingSMTPServer, running_server

DOC = REPO_ROOT / "docs" / "deployment.md"


def documented_config() -> str:
    """The HAProxy configuration docs/deployment.md shows: the test runs that
    very text, with its loopback ports and admin socket made placeholders."""
    text = DOC.read_text()
    block = text[text.index("```\nglobal\n") + 4:]
    block = block[:block.index("```")]
    for literal, name in (("/run/haproxy/admin.sock", "{admin}"), ("127.0.0.1:2525", "127.0.0.1:{front}"),
                          ("127.0.0.1:2601", "127.0.0.1:{a}"), ("127.0.0.1:2602", "127.0.0.1:{b}")):
        assert block.count(literal) == 1, literal
        block = block.replace(literal, name)
    return block


CLIENTS = 4
MESSAGES = 200  # at least; the load goes on until the restarted backend has taken some
MOST = 1000
PER_CONNECTION = 5
BOUND = 120.0  # seconds for the whole load, however slow the machine


class Backend:
    """``python -m smtpd_compat`` as a MailboxServer behind the proxy."""

    def __init__(self, port: int, maildir: Path, *extra: str) -> None:
        self.port, self.maildir = port, maildir
        self.log = maildir.with_suffix(".log")
        with open(str(self.log), "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "smtpd_compat", "-n", "-c", "MailboxServer", "--maildir", str(maildir),
                 "--proxy-protocol", "--proxy-trusted", "127.0.0.1/32", *extra, "127.0.0.1:%d" % port],
                cwd=str(REPO_ROOT), env=env(), stdout=subprocess.DEVNULL, stderr=log)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=TIMEOUT * 4)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the backend did not stop on signal %d" % sig) from None

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def message_ids(self) -> List[str]:
        parser = email.parser.BytesHeaderParser()
        found = []
        for path in sorted((self.maildir / "new").iterdir()):
            headers = parser.parsebytes(path.read_bytes())
            assert headers["X-Peer"] == "127.0.0.2", headers["X-Peer"]  # the client's, not HAProxy's
            found.append(str(headers["Message-ID"]))
        return found


class Balancer:
    """What the test needs of HAProxy: its frontend port and its servers' state."""

    def __init__(self, front: int, admin: Path) -> None:
        self.front, self.admin = front, admin

    def states(self) -> Dict[str, int]:
        """Each server's operational state: 0 down, 2 up (HAProxy's numbers)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(TIMEOUT)
            s.connect(str(self.admin))
            s.sendall(b"show servers state mx\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        rows = [line.split() for line in data.decode().splitlines() if line and line[0].isdigit()]
        return {row[3]: int(row[5]) for row in rows if len(row) > 5}

    def wait_for(self, server: str, state: int) -> None:
        deadline = time.monotonic() + TIMEOUT * 2
        while self.state(server) != state:
            assert time.monotonic() < deadline, "HAProxy never saw %s in state %d: %r" % (server, state, self.states())
            time.sleep(0.05)

    def state(self, server: str) -> int:
        """*server*'s state, or -1 while the admin socket is not there yet
        (HAProxy may create it after its frontends listen)."""
        try:
            return self.states().get(server, -1)
        except (FileNotFoundError, ConnectionRefusedError):
            return -1


@contextlib.contextmanager
def deployment(tmp_path: Path, *extra: str, config_text: str = "", up: int = 2) -> Iterator[tuple]:
    """Two backends (Maildirs a and b) behind HAProxy with the documented
    configuration (or *config_text*); yields the balancer, once it sees both
    backends in state *up*, and the backends (a list: restarts are appended)."""
    haproxy_program()
    ports = {name: free_port() for name in ("front", "a", "b")}
    admin = tmp_path / "admin.sock"
    config = tmp_path / "haproxy.cfg"
    config.write_text((config_text or documented_config()).format(admin=admin, **ports))
    backends = [Backend(ports["a"], tmp_path / "a", *extra), Backend(ports["b"], tmp_path / "b", *extra)]
    try:
        with run_haproxy(config, (ports["front"],)):
            balancer = Balancer(ports["front"], admin)
            balancer.wait_for("a", up)
            balancer.wait_for("b", up)
            yield balancer, backends
    finally:
        for backend in backends:
            if backend.proc.poll() is None:
                backend.proc.kill()
                backend.proc.wait()


def message(number: int) -> bytes:
    return b"Message-ID: <%d@lb.test>\r\nSubject: load %d\r\n\r\nbody\r\n" % (number, number)


class Numbers:
    """Message numbers handed out to the senders until stopped, or at most *most*."""

    def __init__(self, most: int) -> None:
        self.lock, self.next, self.most, self.stopped = threading.Lock(), 0, most, False

    def take(self) -> int:
        with self.lock:
            if self.stopped or self.next >= self.most:
                return -1
            self.next += 1
            return self.next - 1


class Sender:
    """A client that keeps every message until it is answered 250, and
    retries on a 421 or a broken connection (through the balancer again)."""

    def __init__(self, port: int, numbers: Numbers, deadline: float) -> None:
        self.port, self.numbers, self.deadline = port, numbers, deadline
        self.pending: Deque[int] = collections.deque()
        self.acked: List[int] = []
        self.attempts: Counter[int] = collections.Counter()
        self.failures = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def more(self) -> bool:
        if not self.pending:
            number = self.numbers.take()
            if number >= 0:
                self.pending.append(number)
        return bool(self.pending)

    def run(self) -> None:
        while self.more() and time.monotonic() < self.deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=TIMEOUT, source_address=("127.0.0.2", 0),
                                  local_hostname="client.example") as client:
                    for _ in range(PER_CONNECTION):
                        if not self.more():
                            break
                        number = self.pending[0]
                        self.attempts[number] += 1
                        client.sendmail("a@example.com", ["b@example.com"], message(number))
                        self.acked.append(self.pending.popleft())
            except (smtplib.SMTPException, OSError):
                self.failures += 1
                time.sleep(0.02)  # a retry delay, as an MTA's queue has (much shorter)


def send_all(port: int, numbers: Numbers, clients: int, deadline: float) -> List[Sender]:
    """Start *clients* senders sharing out *numbers*."""
    senders = [Sender(port, numbers, deadline) for i in range(clients)]
    for s in senders:
        s.thread.start()
    return senders


def join(senders: List[Sender], deadline: float) -> None:
    for s in senders:
        s.thread.join(max(0.0, deadline - time.monotonic()))
    assert all(not s.thread.is_alive() and not s.pending for s in senders), "not every message was sent in time"


def stored(backend: Backend) -> int:
    return len(list((backend.maildir / "new").iterdir()))


def quiet(backend: Backend) -> None:
    """Nothing but the start-up line: no traceback, no warning, no error."""
    lines = [line for line in backend.stderr().splitlines() if "listening on" not in line]
    assert lines == [], lines


def test_the_health_check_speaks_smtp_and_is_quiet(tmp_path: Path) -> None:
    """smtpchk's connections (PROXY header, EHLO, QUIT) are sessions like any
    other: each ends with 221, with no warning or error (at the default log
    level nothing is logged for them: see the rolling restart below)."""
    with deployment(tmp_path, "-vv") as (balancer, backends):
        a = backends[0]
        deadline = time.monotonic() + TIMEOUT
        while a.stderr().count("<<< 221 Bye") < 3:  # three checks at least
            assert time.monotonic() < deadline, a.stderr()
            time.sleep(0.05)
        assert balancer.states() == {"a": 2, "b": 2}
        with smtplib.SMTP("127.0.0.1", balancer.front, timeout=TIMEOUT, source_address=("127.0.0.2", 0)) as client:
            client.sendmail("a@example.com", ["b@example.com"], message(1))
    log = a.stderr()
    assert ">>> EHLO lb.example" in log
    assert log.count(">>> QUIT") >= log.count(">>> EHLO lb.example") - 1  # the last one may be cut by the stop
    assert "WARNING" not in log and "ERROR" not in log and "Traceback" not in log


def test_a_check_without_the_header_marks_the_server_down(tmp_path: Path) -> None:
    """The symptom docs/deployment.md describes: checks on a port of their
    own do not send the PROXY header unless told to (check-send-proxy), the
    server waits for it, HAProxy's check times out, and the server is marked
    down; the server logs a warning for each of those connections."""
    config = documented_config().replace(" check-send-proxy inter 200ms", " inter 200ms")
    config = config.replace("server a 127.0.0.1:{a}", "server a 127.0.0.1:{a} port {a}")
    config = config.replace("server b 127.0.0.1:{b}", "server b 127.0.0.1:{b} port {b}")
    with deployment(tmp_path, config_text=config, up=0) as (balancer, backends):
        deadline = time.monotonic() + TIMEOUT
        while "before its header was complete" not in backends[0].stderr():
            assert time.monotonic() < deadline, backends[0].stderr()
            time.sleep(0.05)
        assert balancer.states() == {"a": 0, "b": 0}


def test_a_check_that_hangs_up_after_ehlo_is_not_an_error(caplog: Any) -> None:
    """Older HAProxy (before 2.2) closes the check connection as soon as EHLO
    is answered, without QUIT: an ordinary end of session, logged at INFO."""
    caplog.set_level(logging.DEBUG, logger="smtpd_compat")
    with running_server(RecordingSMTPServer, proxy_protocol=True) as st:
        for _ in range(3):
            with RawClient(st.address) as c:
                c.send(V1)
                assert c.read_reply().startswith(b"220 ")
                assert c.command(b"EHLO lb.example").startswith(b"250-")
        with RawClient(st.address) as c:  # and the server goes on
            c.send(V1)
            assert c.read_reply().startswith(b"220 ")
            assert c.command(b"QUIT").startswith(b"221")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_rolling_restart_under_load_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """SIGTERM to backend a in the middle of the load: it finishes the
    transactions under way and answers 421 to the rest; HAProxy's check marks
    it down and sends new connections to b; the clients retry what was not
    answered 250.  Backend a is started again on the same port (a new Maildir,
    a2), HAProxy marks it up, and it takes its share of the load again."""
    with deployment(tmp_path) as (balancer, backends):
        a, b = backends
        deadline = time.monotonic() + BOUND
        numbers = Numbers(MOST)
        senders = send_all(balancer.front, numbers, CLIENTS, deadline)
        while sum(len(s.acked) for s in senders) < MESSAGES // 4:
            assert time.monotonic() < deadline, "the load did not start"
            time.sleep(0.01)
        assert a.stop(signal.SIGTERM) == 0
        balancer.wait_for("a", 0)
        a2 = Backend(a.port, tmp_path / "a2")
        backends.append(a2)
        balancer.wait_for("a", 2)
        while (stored(a2) < 10 or numbers.next < MESSAGES) and numbers.next < MOST:
            assert time.monotonic() < deadline, "the restarted backend took no load"
            time.sleep(0.01)
        numbers.stopped = True
        join(senders, deadline)
        ids = {backend.maildir.name: backend.message_ids() for backend in (a, b, a2)}
        for backend in (a, b, a2):
            quiet(backend)
    attempts: Counter[int] = collections.Counter()
    acked: List[int] = []
    for s in senders:
        attempts.update(s.attempts)
        acked += s.acked
    copies = collections.Counter(mid for found in ids.values() for mid in found)
    assert sorted(acked) == list(range(numbers.next))  # every message was sent, in the end
    assert len(acked) >= MESSAGES
    for number in acked:
        mid = "<%d@lb.test>" % number
        assert copies[mid] >= 1, "message %d was answered 250 and lost" % number
        # Twice only if a first attempt's 250 never reached the client.
        assert copies[mid] <= attempts[number], (number, copies[mid], attempts[number])
    assert set(copies) == {"<%d@lb.test>" % n for n in acked}
    assert ids["a"] and ids["b"] and len(ids["a2"]) >= 10, {k: len(v) for k, v in ids.items()}
    print("messages: %d, retries: %d, duplicates: %d, per Maildir: %r"
          % (len(acked), sum(s.failures for s in senders), sum(n - 1 for n in copies.values()),
             {k: len(v) for k, v in ids.items()}))
