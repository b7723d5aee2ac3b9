"""A process that forks keeps a working loop on both sides (_reactor's
at-fork handler): the child gets a poller and wake-up pair of its own
instead of sharing the parent's epoll instance.

The fork runs in a child Python (a pytest process has threads, and forking
those is unsafe), which prints what each side saw."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPT = r'''
import os, smtplib, sys, threading
from smtpd_compat import _reactor, asyncore, smtpd

class Server(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kw):
        print("%s delivered %s" % (WHO[0], data.decode()), flush=True)

WHO = ["parent"]
socket_map = {}
server = Server(("127.0.0.1", 0), None, map=socket_map)
port = server.socket.getsockname()[1]
asyncore.loop(timeout=0.01, map=socket_map, count=3)   # the reactor exists, registered
parent_reactor = _reactor.reactor_for(socket_map, create=False)
parent_poller = parent_reactor.selector

pid = os.fork()
if pid == 0:
    WHO[0] = "child"
    reactor = _reactor.reactor_for(socket_map, create=False)
    assert reactor.selector is not parent_poller, "the child kept the parent's poller"
    # The child serves one message on the inherited listening socket.
    def client():
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
            c.sendmail("a@example.com", ["b@example.com"], b"from-the-child")
        reactor.call_soon_threadsafe(lambda: (_ for _ in ()).throw(asyncore.ExitNow()))
    t = threading.Thread(target=client); t.start()
    try:
        asyncore.loop(timeout=0.05, map=socket_map)
    except asyncore.ExitNow:
        pass
    t.join(10)
    os._exit(0)

_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status, flush=True)
# The parent's loop still works: its poller was not disturbed by the child.
def client():
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.sendmail("a@example.com", ["b@example.com"], b"from-the-parent")
    parent_reactor.call_soon_threadsafe(lambda: (_ for _ in ()).throw(asyncore.ExitNow()))
t = threading.Thread(target=client); t.start()
try:
    asyncore.loop(timeout=0.05, map=socket_map)
except asyncore.ExitNow:
    pass
t.join(10)
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_and_its_parent_both_serve() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["child delivered from-the-child", "child exit 0", "parent delivered from-the-parent"], (
        result.stdout + result.stderr
    )
