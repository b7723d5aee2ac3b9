"""Several processes: ``serve_forever(workers=N)`` and ``--workers N``
(smtpd_compat/_workers.py, docs/workers.md).

Every server runs as a real subprocess (the CLI, or a small script): the
pytest process itself never forks.  Messages go to a Maildir through a
MailboxServer whose ``process_message`` notes the worker's pid in the
message and in its ``250`` reply, so the client knows which process holds
its session and the test which process delivered each message.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set

import pytest
from test_cli import env, one_error_line, run_cli
from test_cli_usability import Announced

from smtpd_compat import Controller, RecordingServer, _workers

from conftest import REPO_ROOT, TIMEOUT

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")

PID_SERVER = '''
import os
import time
from smtpd_compat import MailboxServer

class PidServer(MailboxServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        super().process_message(peer, mailfrom, rcpttos, b"X-Worker-Pid: %d\\n" % os.getpid() + data, **kwargs)
        if data.startswith(b"X-Hold: "):
            # Keep this worker busy (it accepts nothing meanwhile), having
            # said so in the file the header names.
            with open(data.split(b"\\n", 1)[0][8:].decode(), "w") as f:
                f.write("%d" % os.getpid())
            time.sleep(1.0)
        return "250 OK pid %d" % os.getpid()
'''

REPLY_PID = re.compile(rb"pid (\d+)")
# Where held messages say they are held (see PidServer).
MARKERS = tempfile.TemporaryDirectory(prefix="smtpd-compat-held-")
STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


@pytest.fixture
def pid_server(tmp_path: Path) -> Iterator[Any]:
    """Start ``--workers N`` PidServers on port 0; stopped (killed) after the test."""
    (tmp_path / "pidserver.py").write_text(PID_SERVER)
    started: List[Announced] = []

    def start(*args: str) -> Announced:
        path = str(tmp_path) + os.pathsep + env()["PYTHONPATH"]
        server = Announced(["-c", "pidserver.PidServer", "--maildir", str(tmp_path / "mail"), *args, "127.0.0.1:0"],
                           extra_env={"PYTHONPATH": path})
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()  # gracefully: the workers end with it and close its stderr
        server.kill()


def delivered(maildir: Path) -> List[bytes]:
    return [path.read_bytes() for path in sorted((maildir / "new").iterdir())]


def delivering_pids(maildir: Path) -> Set[int]:
    return {int(m.split(b"X-Worker-Pid: ", 1)[1].split(b"\n", 1)[0]) for m in delivered(maildir)}


class Session:
    """One client session that sends numbered messages and remembers which
    worker answered them."""

    def __init__(self, port: int) -> None:
        self.client = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
        self.client.ehlo()
        self.pid: Optional[int] = None

    def send(self, number: int, hold: Optional[Path] = None) -> int:
        """Send message *number*; return the pid of the worker that said 250.
        With *hold*, the worker holds the message a second, after writing
        that file."""
        c = self.client
        c.mail("a@example.org")
        c.rcpt("b@example.org")
        head = b"X-Hold: %s\r\n" % str(hold).encode() if hold is not None else b""
        code, text = c.data(head + b"X-Seq: %d\r\n\r\nmessage %d\r\n" % (number, number))
        assert code == 250, (code, text)
        match = REPLY_PID.search(text)
        assert match, text
        self.pid = int(match.group(1))
        return self.pid

    def close(self) -> None:
        try:
            self.client.quit()
        except (smtplib.SMTPException, OSError):
            self.client.close()


def sequence_numbers(maildir: Path) -> List[int]:
    return sorted(int(m.split(b"X-Seq: ", 1)[1].split(b"\n", 1)[0]) for m in delivered(maildir))


def worker_pids(server: Announced, count: int) -> Dict[int, int]:
    """worker number -> pid, read from the ``-v`` log (the last start of each)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        found = {int(m.group(1)): int(m.group(2)) for m in STARTED.finditer("".join(server.stderr))}
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError("workers not started: %s" % "".join(server.stderr))


def sessions_on_every_worker(port: int, pids: Set[int], counter: List[int]) -> List[Session]:
    """Open sessions (each sends one message to learn its worker) until every
    pid in *pids* holds at least one.  The workers share one accept queue
    and a loaded machine may let one of them take every connection, so each
    worker found is kept busy (a held message) while the next session
    connects: another worker must take it.  Bounded."""
    sessions: List[Session] = []
    holds: List[threading.Thread] = []
    held: List[int] = []
    try:
        for attempt in range(3 * len(pids)):
            session = Session(port)
            counter[0] += 1
            session.send(counter[0])
            sessions.append(session)
            if {s.pid for s in sessions} >= pids:
                return sessions
            marker = Path(MARKERS.name) / ("held-%d-%d" % (os.getpid(), attempt))
            counter[0] += 1
            number = counter[0]
            hold = threading.Thread(target=lambda s=session, n=number, m=marker: held.append(s.send(n, m)))
            hold.start()
            holds.append(hold)
            deadline = time.monotonic() + TIMEOUT
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert marker.exists(), "the worker did not hold the message"
        raise AssertionError("sessions went to %s only" % {s.pid for s in sessions})
    finally:
        for hold in holds:
            hold.join(TIMEOUT)
        assert len(held) == len(holds), "a held message was not answered 250"


# -- every worker serves -------------------------------------------------------------
def test_every_worker_takes_connections(pid_server: Any, tmp_path: Path) -> None:
    server = pid_server("--workers", "2", "-v")
    assert server.first_line.endswith("(2 worker processes), delivering to the Maildir %s" % (tmp_path / "mail"))
    pids = set(worker_pids(server, 2).values())
    assert len(pids) == 2 and server.proc.pid not in pids
    counter = [0]
    sessions = sessions_on_every_worker(server.port, pids, counter)
    for session in sessions:
        session.close()
    assert delivering_pids(tmp_path / "mail") == pids
    status, _, err = server.stop()
    assert status == 0, err
    # Each record says which process wrote it.
    for pid in pids:
        assert "[worker " in err and " pid %d]: " % pid in err
    assert "[main pid %d]: " % server.proc.pid in err


def test_one_worker_does_not_fork(pid_server: Any, tmp_path: Path) -> None:
    server = pid_server("--workers", "1", "-v")
    assert "worker processes" not in server.first_line
    assert Session(server.port).send(1) == server.proc.pid
    status, _, err = server.stop()
    assert status == 0 and "[worker" not in err and "[main" not in err, err


# -- a worker killed is replaced; nothing acknowledged is lost ------------------------------------
def test_a_killed_worker_is_restarted_and_no_acknowledged_message_is_lost(pid_server: Any, tmp_path: Path) -> None:
    server = pid_server("--workers", "2", "-v")
    pids = worker_pids(server, 2)
    victim, survivor = pids[1], pids[2]
    counter = [0]
    acknowledged: List[int] = []
    sessions = sessions_on_every_worker(server.port, {victim, survivor}, counter)
    acknowledged.extend(range(1, counter[0] + 1))
    survivors = [s for s in sessions if s.pid == survivor]
    os.kill(victim, signal.SIGKILL)
    new_pid = None
    deadline = time.monotonic() + 3 * TIMEOUT
    for _ in range(2000):  # load goes on until the replacement has answered one
        assert time.monotonic() < deadline, "no replacement worker: %s" % "".join(server.stderr)
        # A new session each round, which any worker may take.
        sessions.append(Session(server.port))
        for session in list(sessions):
            counter[0] += 1
            try:
                pid = session.send(counter[0])
            except (smtplib.SMTPException, OSError):
                # Only the sessions of the killed worker may fail.
                assert session not in survivors, "a session of the surviving worker failed"
                sessions.remove(session)
                session.client.close()
                sessions.append(Session(server.port))
                continue
            acknowledged.append(counter[0])
            if pid not in (victim, survivor):
                new_pid = pid
        if new_pid is not None:
            break
    assert new_pid is not None
    deadline = time.monotonic() + TIMEOUT
    while worker_pids(server, 2)[1] != new_pid and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker_pids(server, 2)[1] == new_pid  # worker 1 again, restarted by the parent
    for session in sessions:
        session.close()
    status, _, err = server.stop()
    assert status == 0, err
    assert "worker 1 (pid %d) ended with signal SIGKILL; starting it again in " % victim in err
    assert set(acknowledged) <= set(sequence_numbers(tmp_path / "mail"))


def test_a_worker_stopped_alone_is_replaced_and_the_others_keep_the_port_open(pid_server: Any, tmp_path: Path) -> None:
    server = pid_server("--workers", "2", "-v")
    pids = worker_pids(server, 2)
    counter = [0]
    sessions = sessions_on_every_worker(server.port, set(pids.values()), counter)
    on_survivor = [s for s in sessions if s.pid == pids[2]]
    os.kill(pids[1], signal.SIGTERM)  # that worker alone shuts down gracefully
    deadline = time.monotonic() + 3 * TIMEOUT
    while worker_pids(server, 2)[1] == pids[1]:
        assert time.monotonic() < deadline, "worker 1 was not restarted: %s" % "".join(server.stderr)
        time.sleep(0.05)
    replacement = worker_pids(server, 2)[1]
    for session in on_survivor:  # untouched
        counter[0] += 1
        assert session.send(counter[0]) == pids[2]
    # New connections still reach the workers (the stopping worker did not
    # make the shared socket refuse handshakes), the new one among them.
    seen: Set[int] = set()
    for _ in range(200):
        session = Session(server.port)
        counter[0] += 1
        seen.add(session.send(counter[0]))
        session.close()
        if replacement in seen:
            break
    assert replacement in seen and seen <= {replacement, pids[2]}
    for session in sessions:
        session.close()
    status, _, err = server.stop()
    assert status == 0, err
    assert "worker 1 (pid %d) ended with exit status 0; starting it again" % pids[1] in err


# -- SIGTERM during load: every 250 delivered, parent exits 0 ---------------------------------------
def _load(port: int, acknowledged: List[int], numbers: Iterator[int], lock: threading.Lock, errors: List[str]) -> None:
    """Send until the server refuses connections (bounded)."""
    for _ in range(500):
        try:
            session = Session(port)
        except ConnectionRefusedError:
            return
        except (smtplib.SMTPException, OSError):
            continue  # told 421 at the greeting, or reset while shutting down
        try:
            for _ in range(20):
                with lock:
                    number = next(numbers)
                session.send(number)
                with lock:
                    acknowledged.append(number)
        except AssertionError as err:
            if "421" not in str(err):
                errors.append(str(err))
        except (smtplib.SMTPException, OSError):
            pass  # the server is shutting down
        finally:
            session.client.close()
    errors.append("the server still accepted connections after 500 sessions")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_load_delivers_every_acknowledged_message(pid_server: Any, tmp_path: Path,
                                                                       signum: int) -> None:
    server = pid_server("--workers", "2")
    acknowledged: List[int] = []
    errors: List[str] = []
    lock = threading.Lock()
    numbers = iter(range(1, 1_000_000))
    threads = [threading.Thread(target=_load, args=(server.port, acknowledged, numbers, lock, errors), daemon=True)
               for _ in range(4)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 3 * TIMEOUT
    while len(acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(acknowledged) >= 40, errors
    server.proc.send_signal(signum)
    for thread in threads:
        thread.join(3 * TIMEOUT)
        assert not thread.is_alive()
    status, _, err = server.stop()
    assert status == 0, err
    assert not errors, errors
    assert sorted(acknowledged) == sequence_numbers(tmp_path / "mail")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_stops_without_restarts(tmp_path: Path, signum: int) -> None:
    """Ctrl-C in a terminal, or systemd stopping a unit, signals every
    process of the group at once: the workers end by themselves, and the
    parent must not take that for deaths to repair."""
    proc = subprocess.Popen([sys.executable, "-m", "smtpd_compat", "-n", "-v", "-c", "MailboxServer", "--maildir",
                             str(tmp_path / "mail"), "--workers", "2", "127.0.0.1:0"], cwd=str(REPO_ROOT), env=env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            universal_newlines=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        lines = []
        while len([line for line in lines if STARTED.search(line)]) < 2:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=3 * TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert "starting it again" not in err and "all workers stopped" in err, err


def test_the_workers_stop_when_the_parent_is_killed(pid_server: Any) -> None:
    server = pid_server("--workers", "2", "-v")
    worker_pids(server, 2)
    server.proc.kill()
    server.proc.wait(TIMEOUT)
    deadline = time.monotonic() + 3 * TIMEOUT
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT).close()
        except ConnectionRefusedError:
            return  # the orphaned workers shut down and closed the socket
        time.sleep(0.05)
    raise AssertionError("the workers kept serving after their parent was killed")


def test_workers_share_an_mbox_without_mixing_messages(tmp_path: Path) -> None:
    """mbox appends take an fcntl lock and a dot-lock, both of which exclude
    the other workers: every acknowledged message is there, whole."""
    import mailbox

    path = tmp_path / "box"
    server = Announced(["-c", "MailboxServer", "--mbox", str(path), "--workers", "2", "127.0.0.1:0"])
    try:
        acknowledged: List[int] = []
        lock = threading.Lock()

        def client(first: int) -> None:
            for number in range(first, first + 25):
                # A body of many lines, so that interleaved appends would show.
                body = b"".join(b"message %d line %d\r\n" % (number, line) for line in range(200))
                with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as c:
                    c.sendmail("a@example.org", ["b@example.org"], b"X-Seq: %d\r\n\r\n" % number + body)
                with lock:
                    acknowledged.append(number)

        threads = [threading.Thread(target=client, args=(first,)) for first in (0, 100, 200, 300)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(6 * TIMEOUT)
        status, _, err = server.stop()
    finally:
        server.kill()
    assert status == 0, err
    assert len(acknowledged) == 100
    box = mailbox.mbox(str(path))
    seen = []
    for message in box:
        number = int(message["X-Seq"])
        body = message.get_payload(decode=True)
        assert body.splitlines() == [b"message %d line %d" % (number, line) for line in range(200)]
        seen.append(number)
    assert sorted(seen) == sorted(acknowledged)


# -- a worker that cannot start ------------------------------------------------------------------
BROKEN = '''
import sys
from smtpd_compat import _cli, _serving

def broken(*args, **kwargs):
    raise RuntimeError("broken at start-up")

_serving.serve_forever = broken  # what each worker runs
sys.exit(_cli.main(["-n", "-q", "-c", "DebuggingServer", "--workers", "2", "127.0.0.1:0"]))
'''


def test_a_worker_that_keeps_dying_at_start_up_makes_the_parent_give_up() -> None:
    result = subprocess.run([sys.executable, "-c", BROKEN], cwd=str(REPO_ROOT), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(r"smtpd_compat: error: worker \d ended within 2 s of starting 5 times in a row "
                    r"\(last: pid \d+, exit status 1\); giving up$", last), result.stderr
    assert "RuntimeError: broken at start-up" in result.stderr  # each worker's traceback


# -- what cannot have workers ---------------------------------------------------------------------
def test_recording_server_is_refused_on_the_command_line() -> None:
    line = one_error_line(run_cli("-n", "-c", "RecordingServer", "--workers", "2", "127.0.0.1:0"))
    assert line == ("smtpd_compat: error: --workers 2: RecordingServer cannot run with workers=2: it keeps "
                    "messages in this process's memory, which other processes cannot share")


def test_no_fork_is_a_clear_error(monkeypatch: Any) -> None:
    from smtpd_compat import smtpd
    from smtpd_compat._platform import NotAvailable

    server = smtpd.SMTPServer(("127.0.0.1", 0), None, map={})
    monkeypatch.delattr(os, "fork")
    try:
        with pytest.raises(NotAvailable, match=r"^fork-based workers is not available on this platform "
                                               r"\(it needs os.fork\); run with one worker$"):
            server.serve_forever(workers=2)
    finally:
        server.server_close()


def test_recording_server_is_refused_by_serve_forever() -> None:
    server = RecordingServer(("127.0.0.1", 0), None, map={})
    try:
        with pytest.raises(ValueError, match="RecordingServer cannot run with workers=2"):
            server.serve_forever(workers=2)
    finally:
        server.server_close()


def test_controller_refuses_workers() -> None:
    with pytest.raises(ValueError, match="Controller serves in a thread"):
        Controller(RecordingServer, workers=2)
    with Controller(RecordingServer, workers=1) as controller:  # one process: as without it
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.org", ["b@example.org"], b"hi")
        assert len(controller.server.wait_for(1)) == 1


@pytest.mark.parametrize("value", ["0", "-1", "two", "1025", ""])
def test_bad_worker_counts_are_usage_errors(value: str) -> None:
    line = one_error_line(run_cli("-n", "-c", "DebuggingServer", "--workers", value, "127.0.0.1:0"))
    assert line.startswith("smtpd_compat: error: argument --workers: invalid worker count")


@pytest.mark.parametrize("value, expected", [(None, 1), (1, 1), (3, 3), ("auto", max(1, os.cpu_count() or 1))])
def test_count(value: Any, expected: int) -> None:
    assert _workers.count(value) == expected


@pytest.mark.parametrize("value", [0, -2, True, 2.0, "3", 1025])
def test_count_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="workers must be"):
        _workers.count(value)


def test_describe_exit_statuses() -> None:
    assert _workers._describe(0) == "exit status 0"
    assert _workers._describe(3 << 8) == "exit status 3"
    assert _workers._describe(signal.SIGKILL) == "signal SIGKILL"
