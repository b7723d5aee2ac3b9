"""The session-limit flags of ``python -m smtpd_compat`` (``--command-timeout``,
``--data-timeout``, ``--max-connections``, ``--max-errors``, ``--max-output``,
``--max-recipients``, ``--reply-timeout``)
and SIGTERM while the server is still being built.

The servers run as real subprocesses on 127.0.0.1 (``cli_server``: the
class announces its port on stderr, so no probe connection is made); every
wait is bounded by ``TIMEOUT``.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, List, Optional

import pytest
from test_cli import env, one_error_line, run_cli

from smtpd_compat import _cli, _limits, _replies

from conftest import FQDN, REPO_ROOT, TIMEOUT, RawClient
from tls_helpers import cli_server  # noqa: F401  (fixture)

IDLE = (_replies.IDLE_TIMEOUT % FQDN + "\r\n").encode("ascii")
TOO_MANY_ERRORS = (_replies.TOO_MANY_ERRORS % FQDN + "\r\n").encode("ascii")
TOO_MANY_CONNECTIONS = (_replies.TOO_MANY_CONNECTIONS % FQDN + "\r\n").encode("ascii")
UNKNOWN = b'500 Error: command "XYZZY" not recognized\r\n'
FLAGS = ("--command-timeout", "--data-timeout", "--max-connections", "--max-errors", "--max-output",
         "--max-recipients", "--reply-timeout")


def connect(server: Any) -> RawClient:
    client = RawClient(("127.0.0.1", server.port))
    assert client.read_reply().startswith(b"220 ")
    return client


def start_transaction(client: RawClient) -> None:
    """HELO, MAIL and the first RCPT (b@example.org)."""
    assert client.command(b"HELO me").startswith(b"250")
    assert client.command(b"MAIL FROM:<a@example.org>") == b"250 OK\r\n"
    assert client.command(b"RCPT TO:<b@example.org>") == b"250 OK\r\n"


# -- help and bad values ------------------------------------------------------------
def test_help_lists_the_limit_flags() -> None:
    result = run_cli("-h")
    assert result.returncode == 0
    for flag in FLAGS:
        assert flag in result.stdout


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--command-timeout", "0"),
        ("--command-timeout", "-5"),
        ("--command-timeout", "soon"),
        ("--data-timeout", "inf"),
        ("--data-timeout", "nan"),
        ("--max-connections", "-1"),
        ("--max-connections", "many"),
        ("--max-errors", "2.5"),
        ("--max-errors", "nothing"),
        ("--max-output", "-1"),
        ("--max-output", "1k"),
        ("--reply-timeout", "0"),
        ("--max-recipients", "-1"),
        ("--max-recipients", "lots"),
    ],
)
def test_bad_values_give_one_line_and_status_2(flag: str, value: str) -> None:
    result = run_cli("-n", "-c", "DebuggingServer", flag, value, "127.0.0.1:0")
    line = one_error_line(result)
    assert result.returncode == 2
    assert flag in line and value in line
    assert result.stdout == ""


# -- the flags reach the server --------------------------------------------------------
def build(argv: List[str]) -> Any:
    return _cli.make_server(_cli.parse_args(["-n", "-c", "DebuggingServer", *argv, "127.0.0.1:0"]))


def test_flags_set_the_server_options() -> None:
    server = build(["--command-timeout", "2.5", "--data-timeout", "7", "--max-connections", "3",
                    "--max-errors", "0", "--max-output", "4096", "--reply-timeout", "60", "--max-recipients", "100"])
    try:
        assert (server.command_timeout, server.data_timeout, server.max_connections, server.max_errors,
                server.max_output, server.reply_timeout, server.max_recipients) == (2.5, 7.0, 3, 0, 4096, 60.0, 100)
    finally:
        server.close()


def test_none_in_any_case_disables() -> None:
    server = build(["--command-timeout", "none", "--data-timeout", "NONE", "--max-connections", "None",
                    "--max-errors", "nOnE", "--max-output", "none", "--reply-timeout", "none",
                    "--max-recipients", "none"])
    try:
        assert (server.command_timeout, server.data_timeout, server.max_connections, server.max_errors,
                server.max_output, server.reply_timeout, server.max_recipients) == (None,) * 7
    finally:
        server.close()


def test_absent_flags_keep_the_defaults() -> None:
    server = build([])
    try:
        for name, default in _limits.DEFAULTS.items():
            assert getattr(server, name) == default, name
    finally:
        server.close()


PLAIN_SERVER = '''
from smtpd_compat import smtpd

class Plain(smtpd.SMTPServer):
    """A user's class from before the limit options: no **options."""

    def __init__(self, localaddr, remoteaddr, data_size_limit, enable_SMTPUTF8=False):
        smtpd.SMTPServer.__init__(self, localaddr, remoteaddr, data_size_limit,
                                  enable_SMTPUTF8=enable_SMTPUTF8)
'''


def test_class_without_options_works_without_the_flags(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    (tmp_path / "plain_server_mod.py").write_text(PLAIN_SERVER, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    server = _cli.make_server(_cli.parse_args(["-n", "-c", "plain_server_mod.Plain", "127.0.0.1:0"]))
    try:
        assert server.max_errors == _limits.DEFAULTS["max_errors"]
    finally:
        server.close()
    # Given a flag it cannot take, the class fails with one line, status 2.
    assert _cli.main(["-n", "-c", "plain_server_mod.Plain", "--max-errors", "3", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "cannot start plain_server_mod.Plain" in err and "max_errors" in err


# -- behaviour on the wire -----------------------------------------------------------------
def test_command_timeout_closes_an_idle_session(cli_server: Any) -> None:
    server = cli_server("--command-timeout", "1")
    with connect(server) as client:
        started = time.monotonic()
        assert client.read_until_closed() == IDLE  # bounded by TIMEOUT
        assert time.monotonic() - started >= 0.9


def test_command_timeout_none_keeps_an_idle_session(cli_server: Any) -> None:
    """With the data timeout shorter, 'none' on the command timeout keeps a
    session that waits between commands; the data timeout still applies."""
    server = cli_server("--command-timeout", "none", "--data-timeout", "0.5")
    with connect(server) as client:
        # A session that idles past the data timeout between commands...
        client.sock.settimeout(1.5)
        with pytest.raises(OSError):  # socket.timeout: nothing was sent
            client.sock.recv(100)
        assert client.command(b"NOOP") == b"250 OK\r\n"
        # ...is closed when it idles inside DATA.
        start_transaction(client)
        assert client.command(b"DATA").startswith(b"354")
        assert client.read_until_closed() == IDLE
    assert server.messages() == []


def test_data_timeout_closes_a_session_idle_in_data(cli_server: Any) -> None:
    server = cli_server("--data-timeout", "1")
    with connect(server) as client:
        start_transaction(client)
        assert client.command(b"DATA").startswith(b"354")
        client.send(b"Subject: unfinished\r\n")
        started = time.monotonic()
        assert client.read_until_closed() == IDLE
        assert time.monotonic() - started >= 0.9
    assert server.messages() == []


def test_max_connections_refuses_the_next_connection(cli_server: Any) -> None:
    server = cli_server("--max-connections", "1")
    with connect(server) as first:
        with RawClient(("127.0.0.1", server.port)) as second:
            assert second.read_until_closed() == TOO_MANY_CONNECTIONS
        assert first.command(b"NOOP") == b"250 OK\r\n"


def test_max_errors_closes_after_the_budget(cli_server: Any) -> None:
    server = cli_server("--max-errors", "2")
    with connect(server) as client:
        assert client.command(b"XYZZY") == UNKNOWN
        assert client.command(b"XYZZY") == UNKNOWN
        client.send(b"XYZZY\r\n")
        assert client.read_until_closed() == TOO_MANY_ERRORS


def test_max_errors_none_never_closes(cli_server: Any) -> None:
    server = cli_server("--max-errors", "none")
    count = _limits.DEFAULTS["max_errors"] + 5  # beyond the default budget
    with connect(server) as client:
        client.send(b"XYZZY\r\n" * count)
        for _ in range(count):
            assert client.read_reply() == UNKNOWN
        assert client.command(b"NOOP") == b"250 OK\r\n"


def test_max_recipients_answers_452_beyond_the_limit(cli_server: Any) -> None:
    server = cli_server("--max-recipients", "2")
    with connect(server) as client:
        start_transaction(client)
        assert client.command(b"RCPT TO:<c@example.org>") == b"250 OK\r\n"
        assert client.command(b"RCPT TO:<d@example.org>") == b"452 4.5.3 Too many recipients\r\n"


# -- SIGTERM while the server is being built ------------------------------------------------
SLOW_SERVER = '''
import sys, time
from smtpd_compat import smtpd

class SlowStart(smtpd.SMTPServer):
    """Takes its time to start: %(where)s binding its port."""

    def __init__(self, *args, **kwargs):
        if %(after)r:
            smtpd.SMTPServer.__init__(self, *args, **kwargs)
        print("BUILDING", file=sys.stderr, flush=True)
        try:
            time.sleep(%(sleep)r)
        except Exception:  # as a class might guard a slow step
            print("SWALLOWED", file=sys.stderr, flush=True)
        if not %(after)r:
            smtpd.SMTPServer.__init__(self, *args, **kwargs)
        print("BUILT", file=sys.stderr, flush=True)
'''


def read_lines(proc: subprocess.Popen, lines: "queue.Queue[Optional[str]]") -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.put(line)
    lines.put(None)


@pytest.mark.parametrize("after", [False, True], ids=["before-bind", "after-bind"])
def test_sigterm_while_the_server_is_built_exits_cleanly(tmp_path: Path, after: bool) -> None:
    module = tmp_path / "slow_server_mod.py"
    module.write_text(textwrap.dedent(SLOW_SERVER % {
        "where": "after" if after else "before", "after": after, "sleep": 3 * TIMEOUT}), encoding="utf-8")
    environ = env()
    environ["PYTHONPATH"] = str(tmp_path) + os.pathsep + environ["PYTHONPATH"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpd_compat", "-n", "-c", "slow_server_mod.SlowStart", "127.0.0.1:0"],
        cwd=str(REPO_ROOT), env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, universal_newlines=True,
    )
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    reader = threading.Thread(target=read_lines, args=(proc, lines), daemon=True)
    reader.start()
    seen: List[str] = []
    try:
        while True:
            line = lines.get(timeout=TIMEOUT)  # queue.Empty fails the test
            assert line is not None, "the server exited early: %s" % "".join(seen)
            seen.append(line)
            if line == "BUILDING\n":
                break
        # The class is now inside its __init__, sleeping.
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        reader.join(TIMEOUT)
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
    while True:
        line = lines.get(timeout=TIMEOUT)
        if line is None:
            break
        seen.append(line)
    err = "".join(seen)
    assert status == 0, err
    assert err == "BUILDING\n"  # no traceback; the class's "except Exception" did not catch the stop
    assert out == ""
