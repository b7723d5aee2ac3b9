"""Portability: the poller switch, and platforms that lack what Linux has.

Other platforms are emulated here as far as Linux allows (docs/platforms.md
says what is tested where): a child Python whose ``sitecustomize`` takes
capabilities away before anything is imported (no epoll or poll, no Unix
sockets, no fork, setuid, SIGTERM or SIGHUP, no fcntl, pwd or resource
module), or whose line separator is Windows'.  The suite as a whole runs
under each poller in ``.ci/run`` (``SMTPD_COMPAT_POLLER``).
"""

from __future__ import annotations

import os
import select
import signal
import smtplib
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from test_cli import one_error_line, run_cli, start

from smtpd_compat import _platform, _pollers, _reactor

from conftest import REPO_ROOT, TIMEOUT

MESSAGE = b"Subject: platforms\r\n\r\nFrom here on\r\n"

# Run in a child before anything else: a platform with select() only and
# none of the optional capabilities.
LACKING = r'''
import functools, os, select, signal, socket, sys

for module, names in (
    (select, ("epoll", "poll", "devpoll", "kqueue")),
    (os, ("fork", "setuid")),
    (signal, ("SIGTERM", "SIGHUP")),
):
    for name in names:
        if hasattr(module, name):
            delattr(module, name)
# Windows makes socketpair() from TCP sockets; keep Linux's working one,
# which would look for AF_UNIX.
socket.socketpair = functools.partial(socket.socketpair, socket.AF_UNIX)
del socket.AF_UNIX
for name in ("fcntl", "pwd", "resource"):
    sys.modules[name] = None  # "import fcntl" raises ImportError
'''

# Windows' line separator: the mailbox module writes it (os.linesep).
CRLF = r'''
import os
os.linesep = "\r\n"
'''


@pytest.fixture
def emulate(tmp_path: Any, monkeypatch: Any) -> Any:
    """``emulate(code)``: child Pythons started by the test run *code* first
    (a ``sitecustomize`` on their PYTHONPATH)."""

    def install(code: str) -> None:
        (tmp_path / "sitecustomize.py").write_text(code)
        monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # The emulated platform chooses its own poller.
        monkeypatch.delenv(_reactor.POLLER_VARIABLE, raising=False)

    return install


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=str(REPO_ROOT), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
    )


# -- the poller switch -------------------------------------------------------------------------
def test_the_default_poller_is_epoll_where_there_is_epoll() -> None:
    if not hasattr(select, "epoll"):
        pytest.skip("no epoll on this platform")
    name, factory = _pollers._choose_poller("")
    assert (name, factory) == ("epoll", _pollers._EpollPoller)


def test_the_variable_chooses_the_poller() -> None:
    code = "from smtpd_compat import _reactor; r = _reactor.Reactor({}); print(_reactor.POLLER, type(r.selector).__name__)"
    for value, expected in [("select", "select _SelectPoller"), (" Poll ", "poll _PollPoller")]:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **{_reactor.POLLER_VARIABLE: value})
        result = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, universal_newlines=True, timeout=60)
        assert result.stdout.split("\n")[0] == expected


def test_a_poller_the_platform_lacks_fails_at_the_first_loop(monkeypatch: Any) -> None:
    monkeypatch.delattr(select, "epoll", raising=False)
    name, factory = _pollers._choose_poller("epoll")
    assert name == "epoll"
    with pytest.raises(_platform.NotAvailable, match="^the epoll poller is not available on this platform .*available: "):
        factory()
    assert _pollers._choose_poller("")[0] in ("poll", "select")


def test_an_unknown_poller_fails_at_the_first_loop() -> None:
    name, factory = _pollers._choose_poller("kqueue2")
    with pytest.raises(ValueError, match="SMTPD_COMPAT_POLLER='kqueue2': expected epoll, poll or select"):
        factory()


# -- what a platform lacks fails where it is used ---------------------------------------------
FEATURES = ["setuid", "unix_sockets", "fork", "sighup", "fcntl"]


@pytest.mark.parametrize("feature", FEATURES)
def test_require_names_the_feature_and_what_it_needs(feature: str, monkeypatch: Any) -> None:
    hide = {
        "setuid": lambda: monkeypatch.setitem(sys.modules, "pwd", None),
        "unix_sockets": lambda: monkeypatch.delattr("socket.AF_UNIX", raising=False),
        "fork": lambda: monkeypatch.delattr(os, "fork", raising=False),
        "sighup": lambda: monkeypatch.delattr(signal, "SIGHUP", raising=False),
        "fcntl": lambda: monkeypatch.setitem(sys.modules, "fcntl", None),
    }
    hide[feature]()
    assert not _platform.available(feature)
    with pytest.raises(_platform.NotAvailable) as info:
        _platform.require(feature, hint="do without")
    message = str(info.value)
    assert "\n" not in message
    assert " is not available on this platform (it needs " in message and message.endswith("; do without")


def test_the_package_works_without_optional_platform_features(emulate: Any) -> None:
    """Every module imports, the loop runs on select(), and a message is
    delivered; each planned feature then refuses with its own message."""
    emulate(LACKING)
    result = run_python(textwrap.dedent(r'''
        import importlib, pkgutil, smtplib
        import smtpd_compat
        for info in pkgutil.iter_modules(smtpd_compat.__path__):
            if not info.name.startswith("__"):  # __main__ would run the server
                importlib.import_module("smtpd_compat." + info.name)
        from smtpd_compat import Controller, RecordingServer, _platform, _reactor
        print(_reactor.POLLER)
        with Controller(RecordingServer) as controller:
            with smtplib.SMTP(*controller.address, timeout=10) as client:
                client.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nover select()\r\n")
            print(controller.server.wait_for(1, timeout=10)[0].data)
        for feature in %r:
            try:
                _platform.require(feature)
            except _platform.NotAvailable as exc:
                print(exc)
    ''' % FEATURES))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["select", repr(b"Subject: x\n\nover select()")]
    assert len(lines) == 2 + len(FEATURES)
    assert all(" is not available on this platform " in line for line in lines[2:])


def test_cli_refuses_setuid_where_there_is_none(emulate: Any) -> None:
    emulate(LACKING)
    result = run_cli("-c", "DebuggingServer", "127.0.0.1:0")  # no -n: switch to nobody
    line = one_error_line(result)
    assert result.returncode == 2
    assert line.startswith("smtpd_compat: error: ")
    assert "not available on this platform" in line and "-n" in line


def test_cli_runs_where_there_is_no_sigterm(emulate: Any) -> None:
    emulate(LACKING)
    s = start("-c", "DebuggingServer")
    try:
        with smtplib.SMTP(*s.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        status, out, err = s.stop(signal.SIGINT)
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.communicate()
    assert status == 0, err
    assert "Traceback" not in err
    assert "From here on" in out


# -- Windows -----------------------------------------------------------------------------------
WINDOWS_WAIT = r'''
import importlib, socket, sys, time
from smtpd_compat import _reactor, asyncore

# _reactor as it is on Windows (it reads the platform when imported; the
# reload empties its tables, which this idle loop does not mind).
real, sys.platform = sys.platform, "win32"
try:
    importlib.reload(_reactor)
finally:
    sys.platform = real


class Idle(asyncore.dispatcher):
    def writable(self):
        return False


a, b = socket.socketpair()
map = {}
Idle(a, map=map)
start = time.monotonic()
asyncore.loop(timeout=30.0, map=map, count=1)
print(time.monotonic() - start)
'''


def test_on_windows_each_wait_ends_in_time_for_ctrl_c() -> None:
    """On Windows Ctrl-C does not interrupt a select() in progress: the
    KeyboardInterrupt is raised when the wait ends.  There a loop waits at
    most half a second at a time, whatever its timeout."""
    result = run_python(WINDOWS_WAIT, timeout=TIMEOUT)  # the loop's own timeout is 30 s
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 5.0


def test_mailboxes_have_the_platforms_line_ends(emulate: Any, tmp_path: Any) -> None:
    """Where os.linesep is CRLF (Windows) the mailbox module writes CRLF,
    and so does MailboxServer's own mbox append: every line of both files
    ends the same way, and the mailbox module reads back what was
    delivered."""
    emulate(CRLF)
    result = run_python(textwrap.dedent(r'''
        import glob, mailbox, os, sys
        from smtpd_compat import MailboxServer
        base, data = sys.argv[1], b"Subject: crlf\n\nFrom the start\nto the end\n"
        for kind in ("maildir", "mbox"):
            path = os.path.join(base, kind)
            server = MailboxServer(("127.0.0.1", 0), **{kind: path})
            for _ in range(2):
                server.process_message(("127.0.0.1", 1), "a@example.org", ["b@example.org"], data)
            server.close()
            box = mailbox.Maildir(path, factory=None) if kind == "maildir" else mailbox.mbox(path)
            stored = data if kind == "maildir" else data.replace(b"\nFrom ", b"\n>From ")  # mbox quotes it
            assert len(box) == 2 and all(box.get_bytes(key).endswith(stored) for key in box.keys()), kind
            for name in glob.glob(os.path.join(path, "new", "*")) if kind == "maildir" else [path]:
                with open(name, "rb") as f:
                    raw = f.read()
                assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b""), raw
        print("ok")
    '''), str(tmp_path))
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


WINDOWS_LISTENER = r'''
import os, socket
from smtpd_compat import asyncore, smtpd

calls = []
real_setsockopt, real_listen = socket.socket.setsockopt, socket.socket.listen


def setsockopt(self, level, option, value):
    calls.append(("setsockopt", level, option, value))
    if option != EXCLUSIVE:  # Linux has no such option
        real_setsockopt(self, level, option, value)


def listen(self, backlog):
    calls.append(("listen", backlog))
    real_listen(self, backlog)


EXCLUSIVE = -5  # Windows' SO_EXCLUSIVEADDRUSE (~SO_REUSEADDR)
socket.SO_EXCLUSIVEADDRUSE = EXCLUSIVE
socket.socket.setsockopt, socket.socket.listen = setsockopt, listen
os.name = "nt"  # after the imports: read where the listening socket is set up

server = smtpd.SMTPServer(("127.0.0.1", 0), None)
print(calls)
print(server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))
server.close()
del calls[:]
plain = asyncore.dispatcher()
plain.create_socket()
plain.bind(("127.0.0.1", 0))
plain.listen(4096)
print(calls)
plain.close()
'''


def test_on_windows_the_port_is_exclusive_and_the_backlog_is_not_capped() -> None:
    """On Windows SO_REUSEADDR lets a second server bind a port in use:
    SMTPServer makes its port exclusive instead, and asks for its backlog
    of 4096, not asyncore's 5 (a plain dispatcher keeps asyncore's cap)."""
    result = run_python(WINDOWS_LISTENER, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    server_calls, reuse, dispatcher_calls = result.stdout.splitlines()
    assert server_calls == "[('setsockopt', %d, -5, 1), ('listen', 4096)]" % socket.SOL_SOCKET
    assert reuse == "0"
    assert dispatcher_calls == "[('listen', 5)]"
