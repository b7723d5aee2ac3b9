"""Starting a server on a free port, waiting for its greeting, stopping it.

Every run gets a fresh server, so one run's leftovers (sessions, memory)
cannot colour the next.
"""

import os
import signal
import socket
import subprocess
import time

from .common import HOST, START_TIMEOUT, free_port, tail_file, vlog
from .servers import Server


class ServerStartError(Exception):
    pass


class RunningServer:
    def __init__(self, server: Server, port: int, logpath: str) -> None:
        self.server = server
        self.port = port
        self.logpath = logpath
        self._logf = open(logpath, "wb")
        try:
            self.proc = subprocess.Popen(
                server.argv(port),
                stdin=subprocess.DEVNULL,
                stdout=self._logf,
                stderr=subprocess.STDOUT,
                env=server.env(),
                cwd=server.ctx.workdir,
            )
        except OSError as e:
            self._logf.close()
            raise ServerStartError("cannot execute: %s" % e) from e
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def death_note(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            return ""
        return "server exited (code %s): %s" % (rc, tail_file(self.logpath, 2) or "no output")

    def _greets(self, deadline: float) -> str:
        """Connect once and say QUIT after a 220; '' when greeted, else why not."""
        with socket.create_connection((HOST, self.port), timeout=2) as s:
            s.settimeout(max(0.5, deadline - time.monotonic()))
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            if not buf.startswith(b"220"):
                return "bad greeting %r" % buf[:80]
            s.sendall(b"QUIT\r\n")
            try:
                s.recv(4096)
            except OSError:
                pass
            return ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = "never accepted"
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerStartError(self.death_note())
            try:
                last = self._greets(deadline)
                if not last:
                    time.sleep(0.05)
                    return
            except OSError as e:  # refused while starting up, or timed out
                last = str(e) or e.__class__.__name__
            time.sleep(0.05)
        log_tail = tail_file(self.logpath, 2)
        raise ServerStartError("not ready within %.0f s (%s)%s" % (
            timeout, last, ("; log: " + log_tail) if log_tail else ""))

    def stop(self) -> None:
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except OSError:
                pass
        self._logf.close()


def start_server(server: Server, run_tag: str) -> RunningServer:
    port = free_port()
    logpath = os.path.join(server.ctx.workdir, "%s-%s.log" % (server.key, run_tag))
    vlog("start %s on port %d: %s" % (server.key, port, " ".join(server.argv(port))))
    rs = RunningServer(server, port, logpath)
    try:
        rs.wait_ready()
    except ServerStartError:
        rs.stop()
        raise
    return rs
