"""Pins the public API: the migration contract of issue 2.

``from smtpd_compat import smtpd, asyncore, asynchat`` must give modules with
CPython 3.11's public names and values; ``import smtpd_compat`` gives the
short surface.  A change to these lists must be deliberate: update the test
with it.  Also: ``install_aliases()`` under 3.12+ and 3.11, and the check
that importing the package loads nothing outside the standard library.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import io
import os
import socket
import subprocess
import sys
from typing import Any, List, Optional

import pytest

import smtpd_compat
from smtpd_compat import asynchat, asyncore, smtpd

from conftest import REPO_ROOT, RawClient, RecordingSMTPServer, ServerThread


# -- smtpd -----------------------------------------------------------------------------------
def test_smtpd_all_is_exactly_cpythons() -> None:
    assert smtpd.__all__ == ["SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy"]


def test_smtpd_module_globals() -> None:
    assert smtpd.__version__ == "Python SMTP proxy version 0.3"
    assert smtpd.DATA_SIZE_DEFAULT == 33554432
    assert smtpd.NEWLINE == "\n"
    assert smtpd.COMMASPACE == ", "
    assert isinstance(smtpd.program, str)
    assert isinstance(smtpd.DEBUGSTREAM, smtpd.Devnull)
    devnull = smtpd.Devnull()
    assert devnull.write("anything") is None and devnull.flush() is None
    assert callable(smtpd.usage) and callable(smtpd.parseargs)
    assert inspect.isclass(smtpd.Options)
    assert "Usage:" in smtpd.__doc__ and "%(program)s" in smtpd.__doc__ and "%(__version__)s" in smtpd.__doc__


def test_usage_exits_with_the_code(capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        smtpd.usage(3, "the message")
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "Usage:" in err and err.rstrip().endswith("the message")


def test_class_signatures_and_defaults() -> None:
    init = inspect.signature(smtpd.SMTPServer.__init__).parameters
    assert list(init)[:7] == ["self", "localaddr", "remoteaddr", "data_size_limit", "map", "enable_SMTPUTF8", "decode_data"]
    assert init["data_size_limit"].default == 33554432
    assert init["map"].default is None
    assert init["enable_SMTPUTF8"].default is False and init["decode_data"].default is False
    chan = inspect.signature(smtpd.SMTPChannel.__init__).parameters
    assert list(chan) == ["self", "server", "conn", "addr", "data_size_limit", "map", "enable_SMTPUTF8", "decode_data"]
    assert chan["data_size_limit"].default == 33554432
    assert smtpd.SMTPServer.channel_class is smtpd.SMTPChannel
    assert (smtpd.SMTPChannel.COMMAND, smtpd.SMTPChannel.DATA) == (0, 1)
    assert smtpd.SMTPChannel.command_size_limit == 512
    assert issubclass(smtpd.SMTPChannel, asynchat.async_chat)
    assert issubclass(smtpd.SMTPServer, asyncore.dispatcher)
    assert issubclass(smtpd.DebuggingServer, smtpd.SMTPServer) and issubclass(smtpd.PureProxy, smtpd.SMTPServer)
    for verb in ("HELO", "EHLO", "NOOP", "QUIT", "MAIL", "RCPT", "RSET", "DATA", "HELP", "VRFY", "EXPN"):
        assert callable(getattr(smtpd.SMTPChannel, "smtp_" + verb))
    ppm = inspect.signature(smtpd.SMTPServer.process_message).parameters
    assert list(ppm) == ["self", "peer", "mailfrom", "rcpttos", "data", "kwargs"]


def test_both_utf8_and_decode_data_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        RecordingSMTPServer(("127.0.0.1", 0), None, map={}, enable_SMTPUTF8=True, decode_data=True)


def test_documented_channel_attributes(smtp_server: ServerThread) -> None:
    with RawClient(smtp_server.address) as client:
        client.read_reply()
        client.command(b"HELO me")
        client.command(b"MAIL FROM:<a@b>")
        client.command(b"RCPT TO:<c@d>")
        channel = smtp_server.call(lambda: next(o for o in smtp_server.map.values() if isinstance(o, smtpd.SMTPChannel)))
        values = smtp_server.call(lambda: {name: getattr(channel, name) for name in (
            "smtp_server", "conn", "addr", "received_lines", "smtp_state", "seen_greeting", "mailfrom",
            "rcpttos", "received_data", "fqdn", "peer")})
        local = client.sock.getsockname()
    assert values["smtp_server"] is smtp_server.server
    assert values["conn"] is channel.socket
    assert values["addr"] == values["peer"] == local
    assert values["smtp_state"] == smtpd.SMTPChannel.COMMAND
    assert values["seen_greeting"] == "me"
    assert values["mailfrom"] == "a@b"
    assert values["rcpttos"] == ["c@d"]
    assert values["received_lines"] == [] and values["received_data"] == ""
    assert isinstance(values["fqdn"], str) and values["fqdn"]


def test_deprecated_private_aliases_warn(smtp_server: ServerThread) -> None:
    with RawClient(smtp_server.address) as client:
        client.read_reply()
        client.command(b"HELO me")
        channel = smtp_server.call(lambda: next(o for o in smtp_server.map.values() if isinstance(o, smtpd.SMTPChannel)))

        def read_aliases() -> Any:
            with pytest.warns(DeprecationWarning):
                greeting = channel._SMTPChannel__greeting
            with pytest.warns(DeprecationWarning):
                channel._SMTPChannel__greeting = "changed"
            return greeting, channel.seen_greeting

        assert smtp_server.call(read_aliases) == ("me", "changed")
    for old in ("server", "line", "state", "greeting", "mailfrom", "rcpttos", "data", "fqdn", "peer", "conn", "addr"):
        assert isinstance(getattr(smtpd.SMTPChannel, "_SMTPChannel__" + old), property)


def test_debugstream_assignment_takes_effect_on_a_live_channel(monkeypatch: Any) -> None:
    stream = io.StringIO()
    with ServerThread(RecordingSMTPServer) as st:
        with RawClient(st.address) as client:
            client.read_reply()
            monkeypatch.setattr(smtpd, "DEBUGSTREAM", stream)  # after the session started
            assert client.command(b"HELO me").startswith(b"250")
            assert client.command(b"MAIL FROM:<debug@example.org>") == b"250 OK\r\n"
            assert client.command(b"QUIT") == b"221 Bye\r\n"
    text = stream.getvalue()
    assert "Data: b'MAIL FROM:<debug@example.org>'" in text
    assert "sender: debug@example.org" in text


def test_smtpd_socket_is_a_module_global() -> None:
    """Test suites assign smtpd.socket = mock_socket; it must be looked up there."""
    assert smtpd.socket is __import__("socket")
    assert asyncore.socket is __import__("socket")


# -- asyncore / asynchat -------------------------------------------------------------------------
ASYNCORE_NAMES = ["dispatcher", "dispatcher_with_send", "loop", "poll", "poll2", "poll3", "socket_map", "close_all",
                  "ExitNow", "compact_traceback", "read", "write", "readwrite", "file_dispatcher", "file_wrapper"]
DISPATCHER_METHODS = [
    "create_socket", "set_socket", "set_reuse_addr", "bind", "listen", "accept", "connect", "send", "recv", "close",
    "readable", "writable", "add_channel", "del_channel", "log", "log_info", "handle_read_event",
    "handle_write_event", "handle_expt_event", "handle_connect_event", "handle_error", "handle_expt",
    "handle_read", "handle_write", "handle_connect", "handle_accept", "handle_accepted", "handle_close",
]
ASYNCHAT_METHODS = ["push", "push_with_producer", "set_terminator", "get_terminator", "collect_incoming_data",
                    "found_terminator", "close_when_done", "discard_buffers", "initiate_send", "handle_read",
                    "handle_write", "handle_close", "readable", "writable"]


def test_asyncore_names() -> None:
    for name in ASYNCORE_NAMES:
        assert hasattr(asyncore, name), name
    for name in DISPATCHER_METHODS:
        assert callable(getattr(asyncore.dispatcher, name)), name
    d = asyncore.dispatcher(map={})
    assert (d.socket, d.addr, d.connected, d.accepting, d.connecting, d.closing) == (None, None, False, False, False, False)
    assert d._map == {}
    assert isinstance(asyncore.socket_map, dict)
    assert issubclass(asyncore.ExitNow, Exception)
    assert list(inspect.signature(asyncore.loop).parameters.items())[0][1].default == 30.0
    assert list(inspect.signature(asyncore.loop).parameters) == ["timeout", "use_poll", "map", "count"]
    assert list(inspect.signature(asyncore.close_all).parameters) == ["map", "ignore_all"]


def test_asynchat_names() -> None:
    for name in ("async_chat", "simple_producer", "find_prefix_at_end"):
        assert hasattr(asynchat, name)
    for name in ASYNCHAT_METHODS:
        assert callable(getattr(asynchat.async_chat, name)), name
    assert asynchat.async_chat.ac_in_buffer_size == 65536
    assert asynchat.async_chat.ac_out_buffer_size == 65536
    assert issubclass(asynchat.async_chat, asyncore.dispatcher)


def _stdlib(name: str) -> Optional[Any]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            module = importlib.import_module(name)
        except ImportError:
            return None
    return None if "smtpd_compat" in (getattr(module, "__file__", "") or "") else module


# Names CPython's modules had only because they imported them, and
# MailmanProxy, removed in 3.11 (the contract is 3.11's namespace).
STDLIB_ONLY = {
    "asynchat": {"warn"},
    "smtpd": {"getopt", "os", "get_addr_spec", "get_angle_addr", "MailmanProxy"},
}


@pytest.mark.parametrize("name", ["smtpd", "asyncore", "asynchat"])
def test_every_public_name_of_cpythons_module_exists(name: str) -> None:
    theirs = _stdlib(name)
    if theirs is None:
        pytest.skip("CPython's %s is not available on this interpreter" % name)
    ours = getattr(smtpd_compat, name)
    public = {n for n in dir(theirs) if not n.startswith("_")} - STDLIB_ONLY.get(name, set())
    missing = sorted(n for n in public if not hasattr(ours, n))
    assert missing == []
    for cls_name in {"smtpd": ["SMTPChannel", "SMTPServer"], "asyncore": ["dispatcher"], "asynchat": ["async_chat"]}[name]:
        their_cls, our_cls = getattr(theirs, cls_name), getattr(ours, cls_name)
        missing = sorted(n for n in dir(their_cls) if not n.startswith("__") and not hasattr(our_cls, n))
        assert missing == [], cls_name


def star_import(module_name: str) -> set:
    namespace: dict = {}
    exec("from %s import *" % module_name, namespace)
    return set(namespace) - {"__builtins__", "__warningregistry__"}


@pytest.mark.parametrize("name", ["smtpd", "asyncore", "asynchat"])
def test_star_import_gives_what_cpythons_gave(name: str) -> None:
    """``from asynchat import *`` then ``asyncore.loop()``: old code relies on
    what a star import of the original modules (asyncore and asynchat had
    no __all__) put in its namespace."""
    if _stdlib(name) is None:
        pytest.skip("CPython's %s is not available on this interpreter" % name)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        theirs = star_import(name)
    ours = star_import("smtpd_compat." + name)
    assert sorted(theirs - ours - STDLIB_ONLY.get(name, set())) == []


def test_star_import_names_pinned() -> None:
    assert {"asyncore", "deque", "async_chat", "simple_producer", "find_prefix_at_end"} <= star_import("smtpd_compat.asynchat")
    assert {"dispatcher", "loop", "socket", "select", "errorcode", "EWOULDBLOCK", "poll3"} <= star_import("smtpd_compat.asyncore")
    assert star_import("smtpd_compat.smtpd") == {"SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy"}


# -- the package ---------------------------------------------------------------------------------
# The package's public surface.  Adding a name is an API decision: add it here too.
PACKAGE_ALL = [
    "CatcherServer", "Controller", "DebuggingServer", "MailboxServer", "PasswordFile", "PureProxy", "RecordingServer",
    "SMTPChannel", "SMTPServer", "asynchat", "asyncore", "close_all", "install_aliases", "loop", "smtpd",
    "LMTPServer",
]


def test_package_all() -> None:
    assert sorted(smtpd_compat.__all__) == sorted(PACKAGE_ALL)
    for name in smtpd_compat.__all__:
        assert hasattr(smtpd_compat, name), name


def test_package_reexports() -> None:
    assert smtpd_compat.smtpd is smtpd and smtpd_compat.asyncore is asyncore and smtpd_compat.asynchat is asynchat
    for name in ("SMTPServer", "SMTPChannel", "DebuggingServer", "PureProxy"):
        assert getattr(smtpd_compat, name) is getattr(smtpd, name)
    assert smtpd_compat.loop is asyncore.loop
    assert smtpd_compat.close_all is asyncore.close_all
    assert isinstance(smtpd_compat.__version__, str)


# -- install_aliases() in other interpreters -------------------------------------------------------
def interpreter(version: str) -> Optional[str]:
    if "%d.%d" % sys.version_info[:2] == version:
        return sys.executable
    found = sorted(glob.glob("/root/.pyenv/versions/%s.*/bin/python" % version))
    return found[-1] if found else None


ALIAS_SCRIPT = r"""
import sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)
import smtpd_compat
aliased = smtpd_compat.install_aliases()
import smtpd, asyncore, asynchat
ours = [smtpd is smtpd_compat.smtpd, asyncore is smtpd_compat.asyncore, asynchat is smtpd_compat.asynchat]
print(sorted(aliased), ours, smtpd.SMTPServer.__module__)
# Idempotent.
print(smtpd_compat.install_aliases())
"""


def run_alias_script(python: str) -> List[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([python, "-c", ALIAS_SCRIPT], cwd=str(REPO_ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_install_aliases_where_smtpd_is_gone(version: str) -> None:
    python = interpreter(version)
    if python is None:
        pytest.skip("Python %s is not installed" % version)
    first, second = run_alias_script(python)
    assert first == "['asynchat', 'asyncore', 'smtpd'] [True, True, True] smtpd_compat.smtpd"
    assert second == "[]"


def test_install_aliases_leaves_the_real_modules_alone() -> None:
    python = interpreter("3.11")
    if python is None:
        pytest.skip("Python 3.11 is not installed")
    first, second = run_alias_script(python)
    assert first == "[] [False, False, False] smtpd"
    assert second == "[]"


# A stand-in for PyPI's pyasyncore (or pyasynchat): installed on the path,
# found by "import asyncore" on 3.12+, with a loop over a map of its own.
FAKE_MODULE = """
FAKE = True
socket_map = {}

def loop(timeout=30.0, use_poll=False, map=None, count=None):
    pass  # its map is empty: returns at once, as pyasyncore's loop() did
"""

SHADOW_SCRIPT = r"""
import json, sys, warnings
sys.path.append(sys.argv[3])  # where pip installs: after the standard library
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    if sys.argv[2] == "imported":
        __import__(sys.argv[1])  # legacy code imported it before install_aliases()
    import smtpd_compat
    aliased = smtpd_compat.install_aliases()
import smtpd, asyncore, asynchat
# What legacy code does next: build a server, then run asyncore.loop().
server = smtpd.SMTPServer(("127.0.0.1", 0), None)
served = server._fileno in asyncore.socket_map
server.close()
print(json.dumps({
    "aliased": sorted(aliased),
    "ours": [m is getattr(smtpd_compat, m.__name__.rpartition(".")[2], None) for m in (smtpd, asyncore, asynchat)],
    "served": served,
    "warnings": [(w.category.__name__, str(w.message)) for w in caught],
}))
"""


def run_shadow_script(python: str, tmp_path: Any, name: str, when: str) -> Any:
    import json

    package = tmp_path / name
    package.mkdir()
    (package / "__init__.py").write_text(FAKE_MODULE, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1")
    result = subprocess.run([python, "-c", SHADOW_SCRIPT, name, when, str(tmp_path)], cwd=str(REPO_ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", ["asyncore", "asynchat"])
@pytest.mark.parametrize("when", ["on-path", "imported"])
@pytest.mark.parametrize("version", ["3.12", "3.13"])
def test_install_aliases_over_a_third_party_module(tmp_path: Any, version: str, name: str, when: str) -> None:
    # With pyasyncore installed, only smtpd and asynchat were aliased:
    # legacy code then ran pyasyncore's loop() over an empty map, and
    # exited 0 without ever serving.
    python = interpreter(version)
    if python is None:
        pytest.skip("Python %s is not installed" % version)
    report = run_shadow_script(python, tmp_path, name, when)
    assert report["aliased"] == ["asynchat", "asyncore", "smtpd"]
    assert report["ours"] == [True, True, True]
    assert report["served"] is True
    ((category, message),) = report["warnings"]
    assert category == "RuntimeWarning"
    assert str(tmp_path / name) in message
    if when == "imported":
        assert message.startswith("install_aliases() comes too late: %s was already imported from " % name)
    else:
        assert message.startswith("install_aliases(): smtpd_compat.%s shadows the %s module found at " % (name, name))


def test_install_aliases_never_replaces_the_stdlib(tmp_path: Any) -> None:
    # Where the interpreter ships smtpd, nothing is aliased, whatever else
    # is on the path.
    python = interpreter("3.11") or interpreter("3.9")
    if python is None:
        pytest.skip("no Python with smtpd in its standard library")
    report = run_shadow_script(python, tmp_path, "asyncore", "on-path")
    assert report["aliased"] == [] and report["ours"] == [False, False, False]
    assert [w for w in report["warnings"] if "install_aliases" in w[1]] == []


# -- runtime: the standard library only -------------------------------------------------------------
STDLIB_SCRIPT = r"""
import os, sys, sysconfig
before = set(sys.modules)
import importlib, pkgutil
import smtpd_compat
if sys.argv[1] == "all":
    for info in pkgutil.iter_modules(smtpd_compat.__path__, "smtpd_compat."):
        # __main__ runs the CLI; pytest_plugin is loaded by pytest only, and
        # imports it by design.
        if info.name.rpartition(".")[2] not in ("__main__", "pytest_plugin"):
            importlib.import_module(info.name)
STDLIB_DIRS = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}

def in_stdlib(name):
    top = name.partition(".")[0]
    if top == "smtpd_compat" or top.startswith("_sysconfigdata_"):
        return True  # the package itself; generated by the stdlib build
    if hasattr(sys, "stdlib_module_names"):  # 3.10+
        return top in sys.stdlib_module_names
    path = getattr(sys.modules.get(name), "__file__", None)
    if not path:
        return True  # built in or frozen
    path = os.path.realpath(path)
    return "site-packages" not in path and any(path.startswith(d + os.sep) for d in STDLIB_DIRS)

loaded = sorted(set(sys.modules) - before)
print(len(loaded), [m for m in loaded if not in_stdlib(m)])
"""


def run_stdlib_check(which: str, *flags: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, *flags, "-c", STDLIB_SCRIPT, which], cwd=str(REPO_ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    count, outside = result.stdout.split(" ", 1)
    assert int(count) > 0
    assert outside.strip() == "[]"


def test_importing_smtpd_compat_loads_only_the_standard_library() -> None:
    """``import smtpd_compat`` alone (what users do) adds only stdlib modules."""
    run_stdlib_check("package")


def test_every_runtime_module_loads_only_the_standard_library() -> None:
    # -S: no site-packages at all, so a third-party import would also fail.
    run_stdlib_check("all", "-S")


def test_pyproject_declares_no_runtime_dependencies() -> None:
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert "\ndependencies = []" in text


# -- the listening socket's hooks ----------------------------------------------------------------
def test_server_bind_and_server_activate_are_hooks_around_smtpds_calls() -> None:
    """socketserver's hooks: server_bind() (an override sets options before
    the bind) then server_activate(); underneath, the calls smtpd made
    (set_reuse_addr, bind, listen) still reach a subclass that overrides
    them, and the server accepts sessions as usual."""
    calls: List[Any] = []

    class Hooked(RecordingSMTPServer):
        def server_bind(self) -> None:
            calls.append("server_bind")
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            super().server_bind()

        def server_activate(self) -> None:
            calls.append("server_activate")
            super().server_activate()

        def set_reuse_addr(self) -> None:
            calls.append("set_reuse_addr")
            super().set_reuse_addr()

        def bind(self, addr: Any) -> Any:
            calls.append(("bind", addr))
            return super().bind(addr)

        def listen(self, num: int) -> Any:
            calls.append(("listen", num))
            return super().listen(num)

    with ServerThread(Hooked) as thread:
        server = thread.server
        assert calls == ["server_bind", "set_reuse_addr", ("bind", ("127.0.0.1", 0)), "server_activate", ("listen", 4096)]
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        with RawClient(thread.address) as client:
            assert client.read_reply().startswith(b"220 ")


def test_a_failing_server_bind_closes_the_socket() -> None:
    made: List[Any] = []

    class Failing(RecordingSMTPServer):
        def server_bind(self) -> None:
            made.append(self.socket)
            raise OSError("no")

    with pytest.raises(OSError, match="no"):
        Failing(("127.0.0.1", 0), None, map={})
    assert made and made[0].fileno() == -1  # closed
