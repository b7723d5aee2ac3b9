"""Test support for TLS and AUTH (imported by test_tls.py and test_auth.py).

* the ``tls_files`` fixture: a self-signed certificate for ``localhost`` and
  ``127.0.0.1``/``::1``, made by the ``openssl`` command when the session
  starts (tests that need it skip when openssl is missing); nothing is
  kept in the repository;
* ``server_context`` / ``client_context``: ``ssl`` contexts for both ends;
* ``tls_client(address, context)``: a ``RawClient`` driven through
  ``EHLO``/``STARTTLS`` and then wrapped, for byte-level conversations;
* ``SpoolServer`` and ``CliServer``: ``python -m smtpd_compat`` in a
  subprocess with a server class that writes each message as JSON to a
  directory, for real clients (swaks, curl).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import pytest

from smtpd_compat import smtpd

from conftest import REPO_ROOT, TIMEOUT, RawClient

TESTS_DIR = Path(__file__).resolve().parent
SPOOL_ENV = "SMTPD_COMPAT_TEST_SPOOL"
USER, PASSWORD = "alice", "correct horse battery staple"


class TLSFiles(NamedTuple):
    cert: str
    key: str


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: Any) -> TLSFiles:
    """A throw-away certificate and key, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return TLSFiles(str(cert), str(key))


@pytest.fixture(scope="session")
def server_context(tls_files: TLSFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    return context


@pytest.fixture(scope="session")
def client_context(tls_files: TLSFiles) -> ssl.SSLContext:
    """Verifies the server against the test certificate (hostname included)."""
    return ssl.create_default_context(cafile=tls_files.cert)


def starttls(client: RawClient, context: ssl.SSLContext, hostname: str = "127.0.0.1") -> None:
    """Send STARTTLS on *client*, expect 220, then wrap its socket."""
    reply = client.command(b"STARTTLS")
    assert reply == b"220 Ready to start TLS\r\n", reply
    assert client.buffer == b""
    client.sock = context.wrap_socket(client.sock, server_hostname=hostname)


def tls_client(address: Tuple[str, int], context: ssl.SSLContext, ehlo: bool = True) -> RawClient:
    """A RawClient that has done EHLO, STARTTLS and the handshake (and EHLO
    again when *ehlo*)."""
    client = RawClient(address)
    client.read_reply()
    assert client.command(b"EHLO client.example").startswith(b"250-")
    starttls(client, context)
    if ehlo:
        assert client.command(b"EHLO client.example").startswith(b"250-")
    return client


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# -- the command line server ------------------------------------------------------------
class SpoolServer(smtpd.SMTPServer):
    """Writes each message as ``<n>.json`` into the directory named by the
    environment variable SMTPD_COMPAT_TEST_SPOOL, and announces its port on
    stderr as ``LISTENING <port>`` (it is started on port 0)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count = 0
        print("LISTENING %d" % self.port, file=sys.stderr, flush=True)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: bytes, **kwargs: Any) -> None:
        self._count += 1
        record = {
            "mailfrom": mailfrom,
            "rcpttos": rcpttos,
            "data": base64.b64encode(data).decode("ascii"),
            "auth_login": kwargs.get("auth_login"),
        }
        path = Path(os.environ[SPOOL_ENV]) / ("%d.json" % self._count)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        tmp.replace(path)


class AnnouncingProxy(smtpd.PureProxy):
    """PureProxy that announces its port on stderr like SpoolServer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        print("LISTENING %d" % self.port, file=sys.stderr, flush=True)


class CliServer:
    """``python -m smtpd_compat -n -c tls_helpers.SpoolServer ARGS 127.0.0.1:0``.

    ``port`` is where it listens, ``messages()`` what it received so far,
    ``stop()`` ends it with SIGTERM and returns everything it wrote to
    stderr (with ``-d``: the protocol debug stream).
    """

    def __init__(self, args: List[str], spool: Path, cls: str = "tls_helpers.SpoolServer", remote: Optional[str] = None) -> None:
        self.spool = spool
        env = dict(os.environ)
        env[SPOOL_ENV] = str(spool)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpd_compat", "-n", "-c", cls, *args, "127.0.0.1:0", *([remote] if remote else [])],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._stderr: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self._wait_listening()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self._stderr.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def _wait_listening(self) -> int:
        while True:
            try:
                line = self._lines.get(timeout=TIMEOUT)
            except queue.Empty:
                self.stop()
                raise AssertionError("the server did not start: %s" % "".join(self._stderr)) from None
            if line is None:
                self.stop()
                raise AssertionError("the server exited: %s" % "".join(self._stderr))
            if line.startswith("LISTENING "):
                return int(line.split()[1])

    def messages(self) -> List[Dict[str, Any]]:
        records = []
        for path in sorted(self.spool.glob("*.json"), key=lambda p: int(p.stem)):
            record = json.loads(path.read_text(encoding="utf-8"))
            record["data"] = base64.b64decode(record["data"])
            records.append(record)
        return records

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        self._reader.join(TIMEOUT)
        return "".join(self._stderr)


@pytest.fixture
def cli_server(tmp_path: Path) -> Iterator[Any]:
    """``cli_server(*args, cls=..., remote=...)`` starts a CliServer; all are
    stopped at the end."""
    started: List[CliServer] = []

    def start(*args: str, **kwargs: Any) -> CliServer:
        spool = tmp_path / ("spool%d" % len(started))
        spool.mkdir()
        server = CliServer(list(args), spool, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def auth_file(tmp_path: Path) -> str:
    """A password file (mode 600) with USER and PASSWORD."""
    path = tmp_path / "users"
    path.write_text("# test users\n%s:%s\nbob:other\n" % (USER, PASSWORD), encoding="utf-8")
    os.chmod(path, 0o600)
    return str(path)


def need_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip("%s is not installed" % name)
    return path


def run_client(argv: List[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run an external client; fail the test with its output if it fails."""
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, "%s exited %d\nstdout:\n%s\nstderr:\n%s" % (
        argv[0], proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))
    return proc
