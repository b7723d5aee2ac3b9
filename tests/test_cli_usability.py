"""What ``python -m smtpd_compat`` tells its user: the start-up line, the
log (``-v``, ``-vv``, ``--log-level``, ``--log-format``), ``--version``, the
help, ``:PORT`` addresses, flags that do not apply to the class, TLS file
errors that name the right flag and file, and ``--readable``.

Servers run as real subprocesses on ``127.0.0.1:0``: the start-up line is
how a test (and a user) learns the port, so no probe connection is made.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from test_cli import env, one_error_line, run_cli

import smtpd_compat
from smtpd_compat import Controller, _cli, _cli_args, servers, smtpd

from conftest import REPO_ROOT, TIMEOUT
from tls_helpers import TLSFiles, tls_files  # noqa: F401  (fixture)

STARTUP = re.compile(r"^smtpd_compat (\S+): (\w+) listening on 127\.0\.0\.1:(\d+)(.*)$")


class Announced:
    """A CLI server on 127.0.0.1:0; its port read from the start-up line."""

    def __init__(self, args: List[str], extra_env: Optional[dict] = None) -> None:
        environment = env()
        environment.update(extra_env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpd_compat", "-n", *args], cwd=str(REPO_ROOT), env=environment,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        )
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.stderr: List[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            # -d prints smtpd's "started at" lines while the server is
            # built, before the start-up line.
            self.first_line = self._next_line()
            while not STARTUP.match(self.first_line) and self.first_line.startswith(("DebuggingServer started at", "\t")):
                self.first_line = self._next_line()
            match = STARTUP.match(self.first_line)
            assert match, "not a start-up line: %r" % self.first_line
        except BaseException:
            self.kill()  # the fixture never saw this server: do not leave it running
            raise
        self.port = int(match.group(3))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        try:
            for line in self.proc.stderr:
                self.stderr.append(line)
                self.lines.put(line)
        except ValueError:
            pass  # kill() closed the pipe that a forked worker still held open
        self.lines.put(None)

    def _next_line(self) -> str:
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError("no start-up line") from None
        if line is None:
            self.proc.wait(TIMEOUT)
            raise AssertionError("exited with %s: %s" % (self.proc.returncode, "".join(self.stderr)))
        return line.rstrip("\n")

    def send(self, message: bytes = b"Subject: hi\r\n\r\nhello\r\n", rcpttos: Tuple[str, ...] = ("b@example.org",)) -> None:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=TIMEOUT) as client:
            client.sendmail("a@example.org", list(rcpttos), message)

    def stop(self, sig: int = signal.SIGTERM) -> Tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out = self.proc.stdout.read() if self.proc.stdout else ""
            self.proc.wait(TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(TIMEOUT)
        return self.proc.returncode, out, "".join(self.stderr)


@pytest.fixture
def announced() -> Iterator[Any]:
    started: List[Announced] = []

    def start(*args: str, **kwargs: Any) -> Announced:
        server = Announced(list(args), **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


# -- the start-up line --------------------------------------------------------------
def test_startup_line_gives_the_bound_port_of_port_0(announced: Any) -> None:
    server = announced("-c", "DebuggingServer", "127.0.0.1:0")
    match = STARTUP.match(server.first_line)
    assert match and match.group(1) == smtpd_compat.__version__ and match.group(2) == "DebuggingServer"
    assert server.port != 0
    assert match.group(4) == ", printing every message on stdout"
    server.send()  # the port announced is the one served
    status, out, err = server.stop()
    assert status == 0 and "MESSAGE FOLLOWS" in out


def test_default_class_says_it_relays_and_where(announced: Any) -> None:
    server = announced("127.0.0.1:0")
    assert server.first_line.endswith(
        "PureProxy listening on 127.0.0.1:%d, relaying every message to localhost:25 "
        "(smtpd's default class; -c DebuggingServer prints messages instead)" % server.port)
    server.stop()


def test_startup_line_names_the_relay_and_tls(announced: Any, tls_files: TLSFiles) -> None:
    server = announced("-c", "PureProxy", "--tls-cert", tls_files.cert, "--tls-key", tls_files.key,
                       "--relay-tls", "smtps", "127.0.0.1:0", "[::1]:465")
    assert server.first_line.endswith("(STARTTLS), relaying every message to [::1]:465 over SMTPS")
    server.stop()


def test_startup_line_names_the_extensions_turned_on(announced: Any, tls_files: TLSFiles) -> None:
    server = announced("-c", "DebuggingServer", "--pipelining", "--enhanced-status-codes", "--add-received-header",
                       "127.0.0.1:0")
    assert server.first_line.endswith(
        "DebuggingServer listening on 127.0.0.1:%d (PIPELINING, ENHANCEDSTATUSCODES, Received header), "
        "printing every message on stdout" % server.port)
    server.stop()
    server = announced("-c", "DebuggingServer", "--tls-cert", tls_files.cert, "--tls-key", tls_files.key,
                       "--requiretls", "127.0.0.1:0")
    assert server.first_line.endswith("(STARTTLS, REQUIRETLS), printing every message on stdout")
    server.stop()


def test_startup_line_names_the_spool_and_the_limits_per_address(announced: Any, tmp_path: Path) -> None:
    server = announced("-c", "DebuggingServer", "--spool-threshold", "1048576", "--spool-dir", str(tmp_path),
                       "--max-connections-per-ip", "5", "--connection-rate-per-ip", "10/60",
                       "--auth-failures-per-ip", "3/300", "127.0.0.1:0")
    assert server.first_line.endswith(
        "DebuggingServer listening on 127.0.0.1:%d (spool above 1048576 bytes in %s, at most 5 connections per "
        "address, 10 connections per 60 s per address, 3 AUTH failures per 300 s per address), "
        "printing every message on stdout" % (server.port, tmp_path))
    server.stop()
    server = announced("-c", "DebuggingServer", "--spool-threshold", "0", "127.0.0.1:0")
    assert server.first_line.endswith("(spool above 0 bytes), printing every message on stdout")
    server.stop()


def test_startup_line_names_the_mailbox(announced: Any, tmp_path: Path) -> None:
    server = announced("-c", "MailboxServer", "--maildir", str(tmp_path / "mail"), "127.0.0.1:0")
    assert server.first_line.endswith(", delivering to the Maildir %s" % (tmp_path / "mail"))
    server.stop()


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    # -q: no start-up line (so no port to read: a fixed free port instead).
    from test_cli import start

    s = start("-c", "DebuggingServer", "-q")
    status, out, err = s.stop(signal.SIGTERM)
    assert (status, out, err) == (0, "", "")


def test_debug_option_keeps_the_debugstream_output(announced: Any) -> None:
    """-d prints smtpd's lines (the address as given, port 0 included);
    the start-up line is the one that tells the real port."""
    server = announced("-c", "DebuggingServer", "-d", "127.0.0.1:0")
    server.send()
    status, out, err = server.stop()
    assert "DebuggingServer started at " in err
    assert "\tLocal addr: ('127.0.0.1', 0)\n" in err
    assert re.search("===> MAIL FROM:<a@example.org>", err, re.I)  # smtplib's case varies by version
    # -d alone does not turn the log on.
    assert " INFO " not in err and " DEBUG " not in err


# -- addresses -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, expected",
    [
        (":8025", ("localhost", 8025)),
        ("[::1]:8025", ("::1", 8025)),
        ("127.0.0.1:25", ("127.0.0.1", 25)),
        ("[2001:db8::1]:0", ("2001:db8::1", 0)),
    ],
)
def test_address_forms(spec: str, expected: Tuple[str, int]) -> None:
    assert _cli_args.split_hostport(spec, "local") == expected


def test_colon_port_is_accepted_on_the_command_line(announced: Any) -> None:
    server = announced("-c", "DebuggingServer", "--readable", ":0")
    assert server.port != 0
    server.stop()


# -- logging -------------------------------------------------------------------------
def test_verbose_logs_sessions_messages_and_shutdown_with_time_and_level(announced: Any) -> None:
    server = announced("-c", "DebuggingServer", "-v", "127.0.0.1:0")
    server.send(rcpttos=("b@example.org", "c@example.org", "d@example.org", "e@example.org"))
    status, out, err = server.stop()
    assert status == 0
    lines = err.splitlines()[1:]
    stamp = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO smtpd_compat: "
    assert any(re.match(stamp + r"DebuggingServer: connection from 127\.0\.0\.1:\d+$", line) for line in lines), err
    assert any(re.match(stamp + r"127\.0\.0\.1:\d+: message from a@example\.org to b@example\.org, "
                        r"c@example\.org, d@example\.org and 1 more, \d+ bytes: 250 OK$", line) for line in lines), err
    assert any(re.match(stamp + r"127\.0\.0\.1:\d+: connection closed$", line) for line in lines), err
    assert any(re.match(stamp + "DebuggingServer shutting down", line) for line in lines), err
    assert any(re.match(stamp + "DebuggingServer stopped$", line) for line in lines), err
    assert " DEBUG " not in err
    assert "hello" not in err  # message content is never logged


def test_vv_logs_the_transcript_at_debug(announced: Any) -> None:
    server = announced("-c", "DebuggingServer", "-vv", "127.0.0.1:0")
    server.send()
    err = server.stop()[2]
    assert re.search(r" DEBUG smtpd_compat: 127\.0\.0\.1:\d+ >>> mail FROM:<a@example\.org> size=\d+\n", err, re.I), err
    assert re.search(r" DEBUG smtpd_compat: 127\.0\.0\.1:\d+ <<< 250 OK\n", err), err


def test_log_level_and_format(announced: Any) -> None:
    server = announced("-c", "DebuggingServer", "--log-level", "info", "--log-format", "%(levelname)s|%(message)s",
                       "127.0.0.1:0")
    server.send()
    err = server.stop()[2]
    assert re.search(r"^INFO\|127\.0\.0\.1:\d+: message from a@example\.org", err, re.M), err


def test_nothing_is_logged_by_default(announced: Any) -> None:
    server = announced("-c", "DebuggingServer", "127.0.0.1:0")
    server.send()
    status, out, err = server.stop()
    assert err == server.first_line + "\n"


def test_warnings_are_logged_with_time_and_level(announced: Any) -> None:
    """A PureProxy whose upstream is down: the failure is a WARNING record
    in the configured format, not a bare line."""
    from test_cli import free_port

    server = announced("-c", "PureProxy", "127.0.0.1:0", "127.0.0.1:%d" % free_port())
    with pytest.raises(smtplib.SMTPDataError):
        server.send()
    err = server.stop()[2]
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ WARNING smtpd_compat: relay to .* failed", err, re.M), err


def test_importing_the_package_configures_no_logging() -> None:
    code = (
        "import logging, smtplib\n"
        "from smtpd_compat import Controller, RecordingServer\n"
        "with Controller(RecordingServer) as c:\n"
        "    smtplib.SMTP(*c.address).quit()\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "assert logging.getLogger('smtpd_compat').handlers == []\n"
        "assert logging.getLogger().level == logging.WARNING\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr


class Legacy(smtpd.SMTPServer):
    """smtpd-era signature: no **kwargs."""

    got: List[bytes] = []

    def process_message(self, peer, mailfrom, rcpttos, data):  # type: ignore[no-untyped-def]
        self.got.append(data)


class Deferred(smtpd.SMTPServer):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: bytes, **kwargs: Any) -> Any:
        return self.pool.submit(lambda: "250 Queued as 42")


@pytest.mark.parametrize("cls, reply", [(Legacy, "250 OK"), (Deferred, "250 Queued as 42")])
def test_delivery_log_keeps_the_signature_and_waits_for_futures(cls: Any, reply: str, caplog: Any) -> None:
    """The per-message line (logged by the package, _delivery) leaves
    process_message alone: a class without **kwargs still gets only what it
    takes (here with SMTPUTF8, which passes mail_options), and a deferred
    reply is logged once known."""
    caplog.set_level(logging.INFO, logger="smtpd_compat")
    with Controller(cls, enable_SMTPUTF8=True) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n", mail_options=["SMTPUTF8"])
    lines = [r.getMessage() for r in caplog.records if "message from" in r.getMessage()]
    assert len(lines) == 1 and re.search(r"to b@example\.org, \d+ bytes: %s$" % reply, lines[0]), lines
    if cls is Legacy:
        assert Legacy.got[-1] == b"Subject: x\n\ny"


def test_delivery_log_is_off_below_info(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="smtpd_compat")
    with Controller(Legacy) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\ny\r\n")
    assert not [r for r in caplog.records if "message from" in r.getMessage()]


# -- version and help ----------------------------------------------------------------
def test_version_comes_from_one_place() -> None:
    assert run_cli("--version").stdout == "smtpd_compat %s\n" % smtpd_compat.__version__
    assert run_cli("-V").stdout == "Python SMTP proxy version 0.3\n"
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M), "the version is written in __init__.py only"
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.M)
    assert 'version = {attr = "smtpd_compat.__version__"}' in pyproject


def test_help_is_one_grouped_text_with_every_class_and_examples() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    assert text.count("usage:") == 1 and "Usage:" not in text  # smtpd's old text is gone
    for group in ("smtpd's options:", "server classes:", "mailbox (-c MailboxServer):", "relay (-c PureProxy):",
                  "TLS and AUTH", "limits", "output and logging:", "examples:"):
        assert "\n%s" % group in text, group
    for name in ("DebuggingServer", "PureProxy", "RecordingServer", "MailboxServer", "hash-password"):
        assert name in text
    for flag in ("-q", "--verbose", "--log-level", "--log-format", "--readable", "--version"):
        assert flag in text


def test_console_script_name_in_help() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv[0] = '/usr/bin/smtpd-compat'; "
                               "from smtpd_compat._cli import main; sys.exit(main(['-h']))"],
        cwd=str(REPO_ROOT), env=env(), stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.stdout.startswith("usage: smtpd-compat [options]")


def test_parseargs_keeps_smtpds_version_option(monkeypatch: Any, capsys: Any) -> None:
    """smtpd.parseargs() is smtpd's API: --version prints smtpd's version there."""
    monkeypatch.setattr(sys, "argv", ["smtpd", "--version"])
    with pytest.raises(SystemExit):
        smtpd.parseargs()
    assert capsys.readouterr().out == "Python SMTP proxy version 0.3\n"


# -- flags that do not apply ------------------------------------------------------------
@pytest.mark.parametrize(
    "args, expected",
    [
        (["-c", "DebuggingServer", "--relay-tls", "starttls"], "--relay-tls applies to -c PureProxy"),
        (["-c", "MailboxServer", "--maildir", "m", "--relay-cafile", "x"], "--relay-cafile applies to -c PureProxy"),
        (["-c", "RecordingServer", "--relay-auth-file", "x"], "--relay-auth-file applies to -c PureProxy"),
        (["-c", "PureProxy", "--maildir", "m"], "--maildir applies to -c MailboxServer, not to PureProxy"),
        (["-c", "DebuggingServer", "--mbox", "m"], "--mbox applies to -c MailboxServer"),
        (["-c", "PureProxy", "--readable"], "--readable applies to -c DebuggingServer, not to PureProxy"),
        (["--readable"], "--readable applies to -c DebuggingServer"),
        (["-c", "MailboxServer"], "-c MailboxServer needs --maildir DIR or --mbox FILE"),
        (["-c", "MailboxServer", "--maildir", "a", "--mbox", "b"], "--maildir or --mbox, not both"),
        (["--log-level", "loud"], "invalid log level"),
        (["--log-format", "%(nope"], "invalid log format"),
        (["-c", "DebuggingServer", ":http"], "bad local port"),
    ],
)
def test_flags_that_do_not_apply_are_errors(args: List[str], expected: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "smtpd_compat", "-n", *args, "127.0.0.1:0"], cwd=str(tmp_path),
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            timeout=60)
    line = one_error_line(result)
    assert result.returncode == 2 and expected in line, line
    assert list(tmp_path.iterdir()) == []  # nothing was created on the way


# -- TLS files: the right flag and file -----------------------------------------------------
def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None
    subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def bad_tls(tmp_path_factory: Any, tls_files: TLSFiles) -> Path:
    d = tmp_path_factory.mktemp("badtls")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=other", "-keyout", str(d / "other.key"), "-out", str(d / "other.pem"))
    _openssl("pkey", "-in", tls_files.key, "-aes256", "-passout", "pass:x", "-out", str(d / "encrypted.key"))
    (d / "garbage.pem").write_text("not a certificate\n")
    (d / "both.pem").write_text(Path(tls_files.cert).read_text() + Path(tls_files.key).read_text())
    return d


@pytest.mark.parametrize(
    "cert, key, expected",
    [
        ("CERT", None, "--tls-cert {CERT} holds no private key: give it with --tls-key FILE"),
        ("CERT", "{D}/other.key", "--tls-key {D}/other.key does not belong to the certificate in --tls-cert {CERT}"),
        ("CERT", "{D}/encrypted.key", "--tls-key {D}/encrypted.key is encrypted"),
        ("{D}/garbage.pem", "KEY", "--tls-cert {D}/garbage.pem: no PEM certificate in it"),
        ("CERT", "{D}/garbage.pem", "--tls-key {D}/garbage.pem: no PEM private key in it"),
        ("CERT", "{D}/missing.key", "--tls-key {D}/missing.key: No such file or directory"),
        ("CERT", "{D}", "--tls-key {D}: Is a directory"),
        ("{D}/missing.pem", "KEY", "--tls-cert {D}/missing.pem: No such file or directory"),
    ],
    ids=["cert-without-key", "key-mismatch", "encrypted-key", "garbage-cert", "garbage-key", "missing-key",
         "key-is-directory", "missing-cert"],
)
def test_tls_file_errors_name_the_flag_and_file(cert: str, key: Optional[str], expected: str, bad_tls: Path,
                                                tls_files: TLSFiles) -> None:
    def fill(text: str) -> str:
        return text.replace("{CERT}", "CERT").replace("CERT", tls_files.cert).replace("KEY", tls_files.key) \
            .replace("{D}", str(bad_tls))

    args = ["-c", "DebuggingServer", "--tls-cert", fill(cert)] + (["--tls-key", fill(key)] if key else [])
    line = one_error_line(run_cli("-n", *args, "127.0.0.1:0"))
    assert line.startswith("smtpd_compat: error: " + fill(expected)), line


def test_key_and_cert_in_one_file_work(bad_tls: Path) -> None:
    assert isinstance(_cli.server_tls_context(str(bad_tls / "both.pem"), None), type(_cli.ssl.create_default_context()))


def test_unreadable_key_blames_the_key(monkeypatch: Any, tls_files: TLSFiles) -> None:
    """In-process: the tests may run as root, who can read a mode-000 file."""
    real_open = open

    def guarded_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == tls_files.key:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    with pytest.raises(_cli.UsageError) as info:
        _cli.server_tls_context(tls_files.cert, tls_files.key)
    assert str(info.value) == "--tls-key %s: Permission denied" % tls_files.key


# -- --readable --------------------------------------------------------------------------
READABLE_MESSAGE = (
    b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\n"
    b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n"
    b"  and more\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n'
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=C3=BC=C3=9Fe, Bob\r\n"
    b"--b\r\n"
    b"Content-Type: image/png\r\n"
    b'Content-Disposition: attachment; filename="logo.png"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"iVBORw0KGgo=\r\n"
    b"--b--\r\n"
)


def test_readable_lines_decode_headers_and_parts() -> None:
    lines = servers.readable_lines(("127.0.0.1", 1), "j@example.org", ["b@example.org", "c@example.org"],
                                   READABLE_MESSAGE.replace(b"\r\n", b"\n"))
    assert lines[:2] == ["From: Jörg <j@example.org>", "Subject: Grüße and more"]
    blank = lines.index("")
    assert lines[blank - 3:blank] == ["X-Peer: 127.0.0.1", "X-MailFrom: j@example.org",
                                      "X-RcptTo: b@example.org, c@example.org"]
    assert lines[blank + 1:] == ["[part 1: text/plain]", "Grüße, Bob", '[part 2: image/png, "logo.png", 8 bytes]']


@pytest.mark.parametrize("data", [b"", b"no headers at all", b"Subject: \xff\xfe\n\n\xff body\n",
                                  b"Content-Type: text/plain; charset=no-such-charset\n\nx\n",
                                  b"Content-Type: multipart/mixed\n\nno boundary\n"])
def test_readable_lines_never_fail(data: bytes) -> None:
    lines = servers.readable_lines("peer", "a@b", ["c@d"], data)
    assert all(isinstance(line, str) for line in lines) and "X-MailFrom: a@b" in lines


def test_readable_debugging_server_on_the_command_line(announced: Any) -> None:
    server = announced("-c", "DebuggingServer", "--readable", "127.0.0.1:0")
    assert server.first_line.endswith("DebuggingServer listening on 127.0.0.1:%d, printing every message on "
                                      "stdout, decoded" % server.port)
    server.send(READABLE_MESSAGE)
    status, out, err = server.stop()
    assert status == 0
    assert out.splitlines()[0] == "---------- MESSAGE FOLLOWS ----------"
    assert "Subject: Grüße and more\n" in out and "Grüße, Bob\n" in out
    assert out.endswith("------------ END MESSAGE ------------\n")
    assert "b'" not in out
