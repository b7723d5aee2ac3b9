"""Admission control with ``--workers 2``: the per-address counts are one
count for all workers, and a worker killed with SIGKILL leaks none of it
(smtpd_compat/_admission.py, docs/admission.md).

The server runs as a real subprocess (the pytest process never forks).
Its ``process_message`` can hold its worker: it writes a file saying so
and waits (bounded) for the test to create another, so that the test knows
that the next connection can only be taken by the other worker.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from test_cli import env
from test_cli_usability import Announced

from conftest import TIMEOUT

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")

HOLDING_SERVER = '''
import os, time
from smtpd_compat import smtpd

class HoldingServer(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        if data.startswith(b"X-Hold: "):
            directory = data.split(b"\\n", 1)[0][8:].decode()
            open(os.path.join(directory, "held"), "w").close()
            deadline = time.monotonic() + 30
            while not os.path.exists(os.path.join(directory, "release")) and time.monotonic() < deadline:
                time.sleep(0.01)
        return "250 OK pid %d" % os.getpid()
'''

REFUSED = b"421 4.7.0 Too many connections from your address, try again later\r\n"


@pytest.fixture
def holding_server(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "holdingserver.py").write_text(HOLDING_SERVER)
    started: List[Announced] = []

    def start(*args: str) -> Announced:
        path = str(tmp_path) + os.pathsep + env()["PYTHONPATH"]
        server = Announced(["-c", "holdingserver.HoldingServer", *args, "127.0.0.1:0"], extra_env={"PYTHONPATH": path})
        started.append(server)
        return server

    yield start
    (tmp_path / "release").touch()
    for server in started:
        if server.proc.poll() is None:
            server.stop()
        server.kill()


def first_line(port: int) -> bytes:
    """What a new connection from 127.0.0.1 is answered first."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(1024)
            if not chunk:
                break
            data += chunk
        return data


def send(client: smtplib.SMTP, body: bytes) -> int:
    """Send a message on *client*; the pid of the worker that answered."""
    client.ehlo_or_helo_if_needed()
    client.mail("a@example.org")
    client.rcpt("b@example.org")
    code, text = client.data(body)
    assert code == 250, (code, text)
    return int(text.rsplit(b" ", 1)[1])


def wait_for(path: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not path.exists():
        assert time.monotonic() < deadline, "%s never appeared" % path
        time.sleep(0.01)


def test_connections_on_two_workers_are_counted_as_one(holding_server: Any, tmp_path: Path) -> None:
    server = holding_server("--workers", "2", "--max-connections-per-ip", "2")
    held = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
    held.ehlo()
    held.mail("a@example.org")
    held.rcpt("b@example.org")
    held.putcmd("data")
    assert held.getreply()[0] == 354
    held.send(b"X-Hold: %s\r\n\r\nheld\r\n.\r\n" % str(tmp_path).encode())
    wait_for(tmp_path / "held")
    # That worker is busy: only the other one accepts now.  It has one
    # session of its own, yet the address has two: the third is refused.
    other = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
    assert first_line(server.port) == REFUSED
    (tmp_path / "release").touch()
    code, text = held.getreply()
    assert code == 250
    held_pid = int(text.rsplit(b" ", 1)[1])
    other_pid = send(other, b"Subject: other\r\n\r\nhi\r\n")
    assert held_pid != other_pid  # the two sessions were on two workers
    other.quit()
    held.quit()


def test_a_killed_worker_leaks_no_count(holding_server: Any) -> None:
    server = holding_server("--workers", "2", "--max-connections-per-ip", "1")
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
    pid = send(client, b"Subject: one\r\n\r\nhi\r\n")
    assert first_line(server.port) == REFUSED  # counted, whichever worker takes this one
    os.kill(pid, signal.SIGKILL)
    client.close()
    # Once the parent has seen the worker end, the address may connect again.
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            again = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
            break
        except smtplib.SMTPConnectError as err:
            assert err.smtp_code == 421 and time.monotonic() < deadline, err
            time.sleep(0.05)
    with again:
        assert send(again, b"Subject: two\r\n\r\nhi\r\n") != pid
