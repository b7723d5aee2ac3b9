"""``python -m smtpd_compat`` in a subprocess, and ``smtpd.parseargs()``.

The server is waited for by polling ``connect()`` until a deadline, never by
sleeping a fixed time.  Where a Python 3.11 with its own smtpd is installed,
DebuggingServer's output and parseargs() are compared with CPython's.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

import smtpd_compat
from smtpd_compat import _cli, _globals, smtpd

from conftest import REPO_ROOT, TIMEOUT


def env() -> Dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["PYTHONUNBUFFERED"] = "1"
    e.pop("PYTHONWARNINGS", None)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, python: str = sys.executable, module: str = "smtpd_compat") -> subprocess.CompletedProcess:
    """Run the CLI to completion (for options that exit at once)."""
    return subprocess.run(
        [python, "-m", module, *args], cwd=str(REPO_ROOT), env=env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
    )


class Served:
    """A CLI server process, with the address it listens on."""

    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.address = ("127.0.0.1", port)

    def stop(self, sig: int = signal.SIGINT) -> Tuple[int, str, str]:
        """Send *sig*; return (exit status, stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError("the server did not stop on signal %d; stderr: %s" % (sig, err)) from None
        return self.proc.returncode, out, err


def start(*args: str, python: str = sys.executable, module: str = "smtpd_compat") -> Served:
    """Start the CLI on a free port and wait until it accepts connections."""
    for _ in range(3):  # the free port may be taken in between; try another
        port = free_port()
        proc = subprocess.Popen(
            [python, "-m", module, "-n", *args, "127.0.0.1:%d" % port], cwd=str(REPO_ROOT), env=env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        )
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                # Not listening yet: wait for the process a little instead
                # of spinning (returns early if it exits).
                try:
                    proc.wait(timeout=0.02)
                except subprocess.TimeoutExpired:
                    pass
                continue
            return Served(proc, port)
        out, err = proc.communicate(timeout=TIMEOUT) if proc.poll() is not None else ("", "")
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
            raise AssertionError("the server never accepted connections")
        if "in use" not in err:
            raise AssertionError("the server exited with %s: %s" % (proc.returncode, err))
    raise AssertionError("no free port")


@pytest.fixture
def served() -> Iterator[List[Served]]:
    """Processes started by a test; killed at the end if still running."""
    procs: List[Served] = []
    yield procs
    for s in procs:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.communicate()


def one_error_line(result: Any) -> str:
    """Assert a clean failure: non-zero status, no traceback, one line on stderr."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- options that exit at once --------------------------------------------------------------
def test_version() -> None:
    result = run_cli("-V")
    assert (result.returncode, result.stdout, result.stderr) == (0, "Python SMTP proxy version 0.3\n", "")
    # --version is the package's own version (deliberately changed: smtpd
    # printed its version for both; -V keeps doing so).
    assert run_cli("--version").stdout == "smtpd_compat %s\n" % smtpd_compat.__version__


def test_help() -> None:
    result = run_cli("-h")
    assert result.returncode == 0
    assert "Traceback" not in result.stderr
    text = result.stdout + result.stderr
    # One argparse help now, instead of smtpd's usage text followed by
    # argparse's (deliberately changed): "usage:", and smtpd's version in -V's line.
    assert "usage:" in text
    for option in ("--nosetuid", "--version", "--class", "--size", "--smtputf8", "--debug", "--help"):
        assert option in text
    assert "Python SMTP proxy version 0.3" in " ".join(text.split())
    assert run_cli("--help").returncode == 0


def test_help_lists_the_options_beyond_smtpd() -> None:
    text = run_cli("-h").stdout
    for option in ("--maildir", "--mbox", "--tls-cert", "--tls-key", "--smtps", "--require-starttls",
                   "--auth-file", "--auth-required", "--relay-tls", "--relay-cafile", "--relay-auth-file"):
        assert option in text


@pytest.mark.parametrize(
    "args, words",
    [
        (["-n", "127.0.0.1:notaport"], ["port"]),
        (["-n", "127.0.0.1:99999"], ["port"]),
        (["-n", "no-colon-here"], ["address"]),
        (["-n", "-c", "NoSuchServer", "127.0.0.1:0"], ["NoSuchServer"]),
        (["-n", "-c", "no_such_module_xyz.Server", "127.0.0.1:0"], ["no_such_module_xyz"]),
        (["-n", "-c", "smtpd_compat.smtpd.NoSuchServer", "127.0.0.1:0"], ["NoSuchServer"]),
        (["-n", "-s", "big", "127.0.0.1:0"], ["size"]),
        (["-n", "--no-such-option"], ["no-such-option"]),
        (["-n", "a:1", "b:2", "c:3"], []),
    ],
    ids=["port-not-a-number", "port-out-of-range", "no-port", "unknown-class", "unknown-module",
         "unknown-class-in-module", "bad-size", "unknown-option", "too-many-arguments"],
)
def test_bad_arguments_give_one_line(args: List[str], words: List[str]) -> None:
    line = one_error_line(run_cli(*args))
    for word in words:
        assert word in line


def test_port_in_use_gives_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = one_error_line(run_cli("-n", "-c", "DebuggingServer", "127.0.0.1:%d" % port))
    assert str(port) in line
    assert "in use" in line


def test_setuid_refused_gives_one_line(monkeypatch: Any, capsys: Any) -> None:
    """No permission to setuid: one line, non-zero status (in-process, since
    the tests may run as root, where setuid succeeds)."""

    def refuse(uid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setuid", refuse)
    assert _cli.main(["-c", "DebuggingServer", "127.0.0.1:0"]) != 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "setuid" in lines[0] and "-n" in lines[0]
    assert captured.out == ""


# -- a running DebuggingServer ------------------------------------------------------------------
MESSAGE = b"Subject: hello\r\nFrom: a@example.org\r\n\r\nfirst line\r\n.starts with a dot\r\n\r\nlast \xc3\xa9\r\n"


def expected_debugging_output(data: bytes, mail_options: List[str], peer: str = "127.0.0.1") -> str:
    """DebuggingServer's stdout for one message, in CPython 3.11's format."""
    out = ["---------- MESSAGE FOLLOWS ----------"]
    if mail_options:
        out.append("mail options: %s" % mail_options)
    in_headers = True
    for line in data.splitlines():
        if in_headers and not line:
            out.append(repr(("X-Peer: " + peer).encode()))
            in_headers = False
        out.append(repr(line))
    out.append("------------ END MESSAGE ------------")
    return "\n".join(out) + "\n"


def send_message(address: Tuple[str, int]) -> None:
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        client.sendmail("a@example.org", ["b@example.org", "c@example.org"], MESSAGE)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_debugging_server_prints_cpython_format_and_stops_cleanly(served: List[Served], sig: int) -> None:
    s = start("-c", "DebuggingServer")
    served.append(s)
    send_message(s.address)
    status, out, err = s.stop(sig)
    assert status == 0, err
    assert "Traceback" not in err
    data = MESSAGE[:-2].replace(b"\r\n", b"\n")  # smtpd's view: LF lines, final CRLF ends DATA
    assert out == expected_debugging_output(data, ["SIZE=%d" % len(MESSAGE)])


def test_dotted_class_size_and_smtputf8_options(served: List[Served]) -> None:
    s = start("-c", "smtpd_compat.smtpd.DebuggingServer", "-s", "1000", "-u")
    served.append(s)
    with smtplib.SMTP(*s.address, timeout=TIMEOUT) as client:
        code, reply = client.ehlo("me")
        assert code == 250
        assert reply.splitlines()[1:] == [b"SIZE 1000", b"8BITMIME", b"SMTPUTF8", b"HELP"]
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail("a@b", ["c@d"], b"x" * 2000)
        assert info.value.smtp_code == 552
    status, out, err = s.stop()
    assert status == 0 and out == ""


def test_debug_option_prints_protocol_on_stderr(served: List[Served]) -> None:
    s = start("-c", "DebuggingServer", "-d")
    served.append(s)
    send_message(s.address)
    status, out, err = s.stop()
    assert status == 0
    assert "Peer: ('127.0.0.1'," in err
    assert "Data:" in err
    assert "Traceback" not in err
    assert "MESSAGE FOLLOWS" in out


def python311() -> Optional[str]:
    """A Python 3.11 interpreter whose stdlib still has smtpd, if any."""
    if sys.version_info[:2] == (3, 11):
        candidates = [sys.executable]
    else:
        candidates = sorted(glob.glob("/root/.pyenv/versions/3.11*/bin/python")) + [shutil.which("python3.11") or ""]
    for python in candidates:
        if python and os.path.exists(python):
            check = subprocess.run([python, "-c", "import sys, warnings; warnings.simplefilter('ignore'); import smtpd"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if check.returncode == 0:
                return python
    return None


PY311 = python311()


@pytest.mark.skipif(PY311 is None, reason="no Python 3.11 with smtpd installed")
def test_debugging_server_output_equals_cpython(served: List[Served]) -> None:
    """Same message to `python3.11 -m smtpd` and to us: same stdout.

    ``-s`` is given because without it smtpd ran with no size limit (so no
    SIZE option), while smtpd_compat applies the documented default."""
    outputs = []
    for module in ("smtpd", "smtpd_compat"):
        s = start("-c", "DebuggingServer", "-s", "33554432", python=PY311, module=module)  # type: ignore[arg-type]
        served.append(s)
        send_message(s.address)
        status, out, err = s.stop(signal.SIGINT)
        assert status == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert "MESSAGE FOLLOWS" in outputs[0]


# -- smtpd.parseargs() ----------------------------------------------------------------------------
PARSEARGS_CASES = [
    [],
    ["-n"],
    ["--nosetuid", "-c", "DebuggingServer"],
    ["--class=mypkg.mymod.Server", "127.0.0.1:2525"],
    ["-s", "1024", "-u", "0.0.0.0:25", "relay.example:2525"],
    ["--size", "0", "--smtputf8", "localhost:1"],
]
ATTRS = ["setuid", "classname", "size_limit", "enable_SMTPUTF8", "localhost", "localport", "remotehost", "remoteport"]


def parse_with(module: Any, argv: List[str], monkeypatch: Any) -> Dict[str, Any]:
    monkeypatch.setattr(sys, "argv", ["smtpd"] + argv)
    options = module.parseargs()
    assert isinstance(options, module.Options)
    return {name: getattr(options, name) for name in ATTRS}


def test_parseargs_defaults(monkeypatch: Any) -> None:
    assert parse_with(smtpd, [], monkeypatch) == {
        "setuid": True, "classname": "PureProxy", "size_limit": None, "enable_SMTPUTF8": False,
        "localhost": "localhost", "localport": 8025, "remotehost": "localhost", "remoteport": 25,
    }


def test_parseargs_options(monkeypatch: Any) -> None:
    assert parse_with(smtpd, ["-n", "-c", "DebuggingServer", "-s", "100", "-u", "127.0.0.1:2525", "mx:26"], monkeypatch) == {
        "setuid": False, "classname": "DebuggingServer", "size_limit": 100, "enable_SMTPUTF8": True,
        "localhost": "127.0.0.1", "localport": 2525, "remotehost": "mx", "remoteport": 26,
    }


def test_parseargs_debug_sets_debugstream(monkeypatch: Any) -> None:
    monkeypatch.setattr(smtpd, "DEBUGSTREAM", smtpd.DEBUGSTREAM)
    parse_with(smtpd, ["-d"], monkeypatch)
    assert smtpd.DEBUGSTREAM is sys.stderr
    # ... where the sessions read it: they trace from now on.
    assert _globals.DEBUGSTREAM is sys.stderr and _globals.tracing


@pytest.mark.parametrize("argv, status", [(["-V"], 0), (["-h"], 0), (["--bogus"], 1), (["-s", "x"], 1), (["nocolon"], 1)])
def test_parseargs_exits(monkeypatch: Any, capsys: Any, argv: List[str], status: int) -> None:
    monkeypatch.setattr(sys, "argv", ["smtpd"] + argv)
    with pytest.raises(SystemExit) as info:
        smtpd.parseargs()
    assert (info.value.code or 0) == status
    if argv == ["-V"]:
        assert capsys.readouterr().out == "Python SMTP proxy version 0.3\n"


def test_options_class_defaults() -> None:
    assert (smtpd.Options.setuid, smtpd.Options.classname, smtpd.Options.size_limit, smtpd.Options.enable_SMTPUTF8) == (
        True, "PureProxy", None, False)


@pytest.mark.skipif(PY311 is None, reason="no Python 3.11 with smtpd installed")
def test_parseargs_equals_cpython() -> None:
    """parseargs() of both modules, on the same command lines, in Python 3.11."""
    script = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import smtpd as theirs
from smtpd_compat import smtpd as ours
cases, attrs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = []
for argv in cases:
    row = []
    for module in (theirs, ours):
        sys.argv = ["smtpd"] + argv
        o = module.parseargs()
        row.append({a: getattr(o, a) for a in attrs})
    out.append(row)
print(json.dumps(out))
"""
    result = subprocess.run([PY311, "-c", script, json.dumps(PARSEARGS_CASES), json.dumps(ATTRS)],  # type: ignore[list-item]
                            cwd=str(REPO_ROOT), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for (theirs, ours), argv in zip(json.loads(result.stdout), PARSEARGS_CASES):
        assert ours == theirs, argv
