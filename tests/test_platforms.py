"""Portability: platforms that lack what Linux has.

Other platforms are emulated here as far as Linux allows: a child Python
whose ``sitecustomize`` takes capabilities away before anything is imported
(no epoll or poll, no Unix sockets, no fork, setuid, SIGTERM or SIGHUP, no
fcntl, pwd or resource module).
"""

from __future__ import annotations

import os
import signal
import smtplib
import sys
from typing import Any

import pytest

from conftest import TIMEOUT
from smtpd_compat import _platform
from test_cli import one_error_line, run_cli, start

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


@pytest.fixture
def emulate(tmp_path: Any, monkeypatch: Any) -> Any:
    """``emulate(code)``: child Pythons started by the test run *code* first
    (a ``sitecustomize`` on their PYTHONPATH)."""

    def install(code: str) -> None:
        (tmp_path / "sitecustomize.py").write_text(code)
        monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    return install


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
