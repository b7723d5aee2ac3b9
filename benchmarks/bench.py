#!/usr/bin/env python3
"""Side-by-side SMTP server benchmark: smtpd_compat against its peers.

Servers (each used only where it is available on the machine):

  compat    this project, ``python -m smtpd_compat`` with a discarding sink
  cpython   the stdlib ``smtpd`` of a CPython <= 3.11 interpreter
  aiosmtpd  aiosmtpd in a cached virtualenv (benchmarks/.venv-aiosmtpd)
  smtp-sink Postfix's C test server

Loads:

  one          1 session, 1 KB messages, one connection
  persistent20 20 sessions, 1 KB messages, persistent connections
  newconn20    20 sessions, 1 KB messages, a new connection per message
  big          4 sessions, 1 MB messages, persistent connections
  mem32        one 32 MiB message: server peak RSS above idle / message size
  hold         N connections held open at once: server RSS per connection,
               then each sends one message over its own connection

Every run starts a fresh server on a free 127.0.0.1 port and kills it
afterwards.  The load generator is Postfix ``smtp-source`` when installed,
else a selectors-based generator built into this script (``--loadgen``).
``mem32`` and ``hold`` always use the built-in generator.

Standard library only; Python 3.9+.  See benchmarks/README.md.
"""

import argparse
import errno
import glob
import json
import os
import platform
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

try:
    import resource
except ImportError:  # pragma: no cover - non-POSIX
    resource = None  # type: ignore[assignment]

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
HOST = "127.0.0.1"
HELO_NAME = "localhost"
MAIL_FROM = "bench@example.com"
RCPT_TO = "sink@example.com"
# -s for the Python servers: one explicit limit for all, large enough for
# mem32 (32 MiB + headers).  Without -s, CPython's smtpd has no limit while
# smtpd_compat and aiosmtpd default to 33554432 bytes.
SIZE_LIMIT = 1 << 30
START_TIMEOUT = 10.0  # seconds a server gets to accept and greet
KIB = 1024
MIB = 1024 * 1024

VERBOSE = False


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vlog(msg: str) -> None:
    if VERBOSE:
        log("    " + msg)


# --------------------------------------------------------------------------
# Loads
# --------------------------------------------------------------------------


@dataclass
class Load:
    name: str
    kind: str  # "throughput", "mem" or "hold"
    sessions: int
    messages: int
    size: int  # payload bytes per message (headers not included)
    persistent: bool = True

    def describe(self) -> str:
        if self.kind == "mem":
            return "1 msg of %s, peak RSS" % human_size(self.size)
        if self.kind == "hold":
            return "%d conns held, then 1 x %s each" % (self.sessions, human_size(self.size))
        return "%d sess, %d x %s, %s" % (
            self.sessions,
            self.messages,
            human_size(self.size),
            "persistent" if self.persistent else "new conn/msg",
        )


LOAD_ORDER = ["one", "persistent20", "newconn20", "big", "mem32", "hold"]


def make_loads(quick: bool, hold_conns: Optional[int]) -> Dict[str, Load]:
    if quick:
        hold = hold_conns or 200
        return {
            "one": Load("one", "throughput", 1, 50, 1000),
            "persistent20": Load("persistent20", "throughput", 20, 100, 1000),
            "newconn20": Load("newconn20", "throughput", 20, 50, 1000, persistent=False),
            "big": Load("big", "throughput", 4, 8, 1000000),
            "mem32": Load("mem32", "mem", 1, 1, 4 * MIB),
            "hold": Load("hold", "hold", hold, hold, 1000, persistent=False),
        }
    hold = hold_conns or 10000
    return {
        "one": Load("one", "throughput", 1, 2000, 1000),
        "persistent20": Load("persistent20", "throughput", 20, 10000, 1000),
        "newconn20": Load("newconn20", "throughput", 20, 2000, 1000, persistent=False),
        "big": Load("big", "throughput", 4, 200, 1000000),
        "mem32": Load("mem32", "mem", 1, 1, 32 * MIB),
        "hold": Load("hold", "hold", hold, hold, 1000, persistent=False),
    }


def human_size(n: float) -> str:
    if n >= MIB and n % MIB == 0:
        return "%d MiB" % (n // MIB)
    if n >= 1000000 and n % 1000000 == 0:
        return "%d MB" % (n // 1000000)
    if n >= 1000 and n % 1000 == 0:
        return "%d KB" % (n // 1000)
    return "%d B" % n


def build_message(size: int, tag: str = "bench") -> bytes:
    """Headers + a body of ``size`` bytes in 80-byte lines + the end marker.

    No body line starts with '.', so no dot-stuffing is needed.
    """
    headers = (
        "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s@localhost>\r\n\r\n"
        % (MAIL_FROM, RCPT_TO, tag, tag)
    ).encode("ascii")
    line = b"X" * 78 + b"\r\n"
    full, rem = divmod(size, len(line))
    body = line * full
    if rem >= 2:
        body += b"Y" * (rem - 2) + b"\r\n"
    elif rem == 1 and full:
        body = body[:-2] + b"Y\r\n"
    return headers + body + b".\r\n"


# --------------------------------------------------------------------------
# /proc helpers (Linux); every helper degrades to None elsewhere
# --------------------------------------------------------------------------


def proc_status_kb(pid: int, fieldname: str) -> Optional[int]:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(fieldname + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def proc_cpu_seconds(pid: int) -> Optional[float]:
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
        fields = data[data.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def listen_overflows() -> Optional[int]:
    """TcpExt ListenOverflows of this network namespace (accept queue full)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines, lines[1:]):
        if names.startswith("TcpExt:") and values.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            try:
                return int(table["ListenOverflows"])
            except (KeyError, ValueError):
                return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/%d/clear_refs" % pid, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """Fallback peak finder when clear_refs is not writable (and soak.py's
    once-a-second sampler)."""

    def __init__(self, pid: int, interval: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            v = proc_status_kb(self.pid, "VmRSS")
            if v is not None:
                self.samples += 1
                if v > self.peak_kb:
                    self.peak_kb = v
            self._stop_evt.wait(self.interval)

    def stop(self) -> int:
        self._stop_evt.set()
        self.join(2)
        return self.peak_kb


# --------------------------------------------------------------------------
# Process / environment helpers
# --------------------------------------------------------------------------


def raise_nofile_limit() -> Tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit.

    Rlimits are inherited across fork/exec, so every server and load
    generator this script starts gets the raised limit too.
    """
    if resource is None:
        return (0, 0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        for t in (target, 1 << 20, 65536):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(t, target), hard))
                break
            except (ValueError, OSError):
                continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def python_version_of(exe: str, timeout: float = 15.0) -> Optional[Tuple[Tuple[int, int, int], str]]:
    """(version tuple, real sys.executable) of an interpreter, or None."""
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3]); print(sys.executable)"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    lines = out.stdout.split()
    if len(lines) < 2:
        return None
    try:
        ver = tuple(int(x) for x in lines[0].split("."))
    except ValueError:
        return None
    return ver, lines[1]  # type: ignore[return-value]


def candidate_pythons() -> List[str]:
    """Interpreters to consider: pyenv versions, then pythonX.Y on PATH."""
    seen = []
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv"), "/root/.pyenv"]
    for root in roots:
        if not root:
            continue
        for p in sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python3"))):
            if p not in seen:
                seen.append(p)
    for minor in range(20, 7, -1):
        p = shutil.which("python3.%d" % minor)
        if p and p not in seen:
            seen.append(p)
    for name in ("python3", "python"):
        p = shutil.which(name)
        if p and p not in seen:
            seen.append(p)
    return seen


def find_sbin(name: str) -> Optional[str]:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/local/sbin:/sbin"
    return shutil.which(name, path=path)


def tail_file(path: str, n: int = 4) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    # drop traceback position markers ("    ^^^^^^") and blank lines
    lines = [line for line in lines if line.strip(" \t^~")]
    return " | ".join(line.strip() for line in lines[-n:])


# --------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------


class ServerStartError(Exception):
    pass


class Server:
    """One server implementation under test."""

    key = ""
    column = ""

    def __init__(self, ctx: "Context") -> None:
        self.ctx = ctx
        self.label = self.column
        self.skip_reason: Optional[str] = None

    def prepare(self) -> Optional[str]:
        """Check availability; return a reason to skip, or None."""
        raise NotImplementedError

    def argv(self, port: int) -> List[str]:
        raise NotImplementedError

    def env(self) -> Dict[str, str]:
        return dict(os.environ)


def _python_env(extra_path: List[str]) -> Dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(extra_path + ([old] if old else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # never write __pycache__ into the repo
    env.pop("PYTHONWARNINGS", None)
    return env


COMPAT_SINK = '''\
"""Discarding sink for the benchmark (generated by benchmarks/bench.py)."""
try:
    from smtpd_compat.smtpd import SMTPServer as _Base
except ImportError:
    from smtpd_compat import SMTPServer as _Base


class Sink(_Base):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None
'''

STDLIB_SINK = '''\
"""Discarding sink for the benchmark (generated by benchmarks/bench.py)."""
import smtpd


class Sink(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):
        return None
'''


class CompatServer(Server):
    key = "compat"
    column = "smtpd_compat"

    def prepare(self) -> Optional[str]:
        self.python = self.ctx.args.compat_python or sys.executable
        info = python_version_of(self.python)
        if info is None:
            return "interpreter %s does not run" % self.python
        ver, self.python = info
        self.label = "smtpd_compat (working tree, Python %s)" % ".".join(map(str, ver))
        with open(os.path.join(self.ctx.workdir, "bench_sink_compat.py"), "w") as f:
            f.write(COMPAT_SINK)
        out = subprocess.run(
            [self.python, "-c", "import bench_sink_compat"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
            cwd=self.ctx.workdir,
        )
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines()
            return "cannot import the sink: %s" % (lines[-1] if lines else "exit %d" % out.returncode)
        return None

    def env(self) -> Dict[str, str]:
        return _python_env([REPO_ROOT, self.ctx.workdir])

    def argv(self, port: int) -> List[str]:
        return [self.python, "-m", "smtpd_compat", "-n", "-c", "bench_sink_compat.Sink",
                "-s", str(SIZE_LIMIT), "%s:%d" % (HOST, port)]


class CPythonSmtpdServer(Server):
    key = "cpython"
    column = "cpython-smtpd"

    def prepare(self) -> Optional[str]:
        chosen = None
        candidates = []
        if self.ctx.args.cpython:
            candidates = [self.ctx.args.cpython]
        else:
            p311 = shutil.which("python3.11")
            candidates = ([p311] if p311 else []) + candidate_pythons()
        best_ver = None
        for exe in candidates:
            info = python_version_of(exe)
            if info is None:
                continue
            ver, real = info
            if ver >= (3, 12) or ver < (3, 6):
                continue
            # prefer 3.11, then the newest older one
            rank = (ver[:2] == (3, 11), ver)
            if best_ver is not None and rank <= best_ver:
                continue
            ok = subprocess.run(
                [real, "-W", "ignore", "-c", "import smtpd"],
                capture_output=True,
                timeout=30,
            )
            if ok.returncode == 0:
                chosen, best_ver = (real, ver), rank
        if chosen is None:
            return "no Python <= 3.11 with a working 'import smtpd' found"
        self.python, ver = chosen
        self.label = "CPython %s smtpd" % ".".join(map(str, ver))
        with open(os.path.join(self.ctx.workdir, "bench_sink_stdlib.py"), "w") as f:
            f.write(STDLIB_SINK)
        return None

    def env(self) -> Dict[str, str]:
        return _python_env([self.ctx.workdir])

    def argv(self, port: int) -> List[str]:
        return [self.python, "-W", "ignore", "-m", "smtpd", "-n", "-c", "bench_sink_stdlib.Sink",
                "-s", str(SIZE_LIMIT), "%s:%d" % (HOST, port)]


class AiosmtpdServer(Server):
    key = "aiosmtpd"
    column = "aiosmtpd"

    def venv_dir(self) -> str:
        return self.ctx.args.aiosmtpd_venv or os.path.join(HERE, ".venv-aiosmtpd")

    def _venv_python(self) -> str:
        return os.path.join(self.venv_dir(), "bin", "python")

    def _probe(self) -> Optional[str]:
        py = self._venv_python()
        if not os.path.exists(py):
            return None
        try:
            out = subprocess.run(
                [py, "-c", "import sys, aiosmtpd; print(aiosmtpd.__version__, '%d.%d.%d' % sys.version_info[:3])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    def _base_python(self) -> Optional[str]:
        if self.ctx.args.aiosmtpd_python:
            return self.ctx.args.aiosmtpd_python
        best = None
        for exe in candidate_pythons() + [sys.executable]:
            info = python_version_of(exe)
            if info is None:
                continue
            ver, real = info
            if ver < (3, 8):
                continue
            # any Python >= 3.12 beats older ones; among those, the newest
            rank = (ver >= (3, 12), ver)
            if best is None or rank > best[0]:
                best = (rank, real)
        return best[1] if best else None

    def _install(self) -> Optional[str]:
        vdir = self.venv_dir()
        base = self._base_python()
        if base is None:
            return "no Python >= 3.8 to build the aiosmtpd virtualenv"
        log("  creating %s with %s and 'pip install aiosmtpd' ..." % (os.path.relpath(vdir), base))
        if os.path.isdir(vdir):
            shutil.rmtree(vdir, ignore_errors=True)
        logpath = os.path.join(self.ctx.workdir, "aiosmtpd-install.log")
        try:
            with open(logpath, "w") as lf:
                r = subprocess.run([base, "-m", "venv", vdir], stdout=lf, stderr=subprocess.STDOUT, timeout=180)
                if r.returncode == 0:
                    r = subprocess.run(
                        [self._venv_python(), "-m", "pip", "install", "--disable-pip-version-check", "aiosmtpd"],
                        stdout=lf,
                        stderr=subprocess.STDOUT,
                        timeout=self.ctx.args.install_timeout,
                    )
        except subprocess.TimeoutExpired:
            shutil.rmtree(vdir, ignore_errors=True)
            return "virtualenv/pip install timed out"
        except OSError as e:
            shutil.rmtree(vdir, ignore_errors=True)
            return "virtualenv creation failed: %s" % e
        if r.returncode != 0:
            shutil.rmtree(vdir, ignore_errors=True)
            return "virtualenv/pip install failed: %s" % tail_file(logpath, 2)
        return None

    def prepare(self) -> Optional[str]:
        probe = self._probe()
        if probe is None:
            if self.ctx.args.no_install:
                return "no cached virtualenv at %s (--no-install given)" % os.path.relpath(self.venv_dir())
            err = self._install()
            if err:
                return err
            probe = self._probe()
            if probe is None:
                return "aiosmtpd not importable after install"
        aver, pyver = probe.split()
        self.label = "aiosmtpd %s (Python %s)" % (aver, pyver)
        return None

    def env(self) -> Dict[str, str]:
        env = _python_env([])
        env.pop("PYTHONPATH", None)
        return env

    def argv(self, port: int) -> List[str]:
        return [
            self._venv_python(), "-m", "aiosmtpd", "-n",
            "-l", "%s:%d" % (HOST, port),
            "-c", "aiosmtpd.handlers.Sink",
            "-s", str(SIZE_LIMIT),
        ]


class SmtpSinkServer(Server):
    key = "smtp-sink"
    column = "smtp-sink"

    def prepare(self) -> Optional[str]:
        self.exe = find_sbin("smtp-sink")
        if not self.exe:
            return "smtp-sink not installed (Debian package postfix)"
        self.label = "Postfix smtp-sink"
        postconf = find_sbin("postconf")
        if postconf:
            try:
                out = subprocess.run([postconf, "-d", "mail_version"], capture_output=True, text=True, timeout=10)
                m = re.search(r"=\s*(\S+)", out.stdout)
                if m:
                    self.label = "Postfix %s smtp-sink" % m.group(1)
            except (OSError, subprocess.SubprocessError):
                pass
        return None

    def argv(self, port: int) -> List[str]:
        argv = [self.exe]
        if os.geteuid() == 0:
            argv += ["-u", self.ctx.args.sink_user]  # required when run as root
        # -m: max simultaneous connections (default 256), raised for "hold".
        argv += ["-m", str(max(256, self.ctx.max_conns + 64)), "%s:%d" % (HOST, port), "1024"]
        return argv


SERVER_CLASSES = [CompatServer, CPythonSmtpdServer, AiosmtpdServer, SmtpSinkServer]
SERVER_ALIASES = {
    "compat": "compat", "smtpd_compat": "compat", "smtpd-compat": "compat",
    "cpython": "cpython", "cpython-smtpd": "cpython", "smtpd": "cpython", "stdlib": "cpython",
    "aiosmtpd": "aiosmtpd",
    "smtp-sink": "smtp-sink", "sink": "smtp-sink", "postfix": "smtp-sink",
}


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
            raise ServerStartError("cannot execute: %s" % e)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def death_note(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            return ""
        return "server exited (code %s): %s" % (rc, tail_file(self.logpath, 2) or "no output")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = "never accepted"
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerStartError(self.death_note())
            try:
                with socket.create_connection((HOST, self.port), timeout=2) as s:
                    s.settimeout(max(0.5, deadline - time.monotonic()))
                    buf = b""
                    while b"\n" not in buf:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                    if buf.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        try:
                            s.recv(4096)
                        except OSError:
                            pass
                        time.sleep(0.05)
                        return
                    last = "bad greeting %r" % buf[:80]
            except (ConnectionRefusedError, socket.timeout, OSError) as e:
                last = str(e) or e.__class__.__name__
            time.sleep(0.05)
        raise ServerStartError("not ready within %.0f s (%s)%s" % (
            timeout, last, ("; log: " + tail_file(self.logpath, 2)) if tail_file(self.logpath, 2) else ""))

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


# --------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------


@dataclass
class GenResult:
    delivered: int = 0
    failed: int = 0
    expected: int = 0
    elapsed: float = 0.0
    errors: Dict[str, int] = field(default_factory=dict)
    held: int = 0  # hold mode: most connections greeted and held at once
    retries: int = 0  # connections dropped for want of a greeting and retried
    hold_info: Dict[str, float] = field(default_factory=dict)

    def add_error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def error_summary(self, n: int = 3) -> str:
        items = sorted(self.errors.items(), key=lambda kv: -kv[1])[:n]
        return "; ".join("%s (x%d)" % (k, v) for k, v in items)


# connection states of the built-in generator
CONNECTING, GREETING, HELD, HELO, MAIL, RCPT, DATA, DOT, QUIT = range(9)
STATE_NAMES = ["connect", "greeting", "held", "HELO", "MAIL", "RCPT", "DATA", "end-of-data", "QUIT"]
EXPECTED = {GREETING: (220,), HELD: (), HELO: (250,), MAIL: (250,), RCPT: (250, 251),
            DATA: (354,), DOT: (250,), QUIT: (221,)}


class _Conn:
    __slots__ = ("sock", "state", "inbuf", "out", "has_claim", "writing", "started", "attempt")

    def __init__(self, sock: socket.socket, attempt: int) -> None:
        self.sock = sock
        self.state = CONNECTING
        self.inbuf = bytearray()
        self.out: Optional[memoryview] = None
        self.has_claim = False
        self.writing = True
        self.started = time.perf_counter()
        self.attempt = attempt


class PyLoadGen:
    """Single-threaded, selectors-based SMTP client; no command pipelining.

    ``sessions`` connections run in parallel and share ``messages`` messages.
    Each connection sends HELO once, then MAIL/RCPT/DATA per message, and
    QUIT.  With ``persistent`` False a connection carries one message and the
    session reconnects for the next one (like smtp-source without -d).

    A connection that is not greeted within ``greeting_timeout`` seconds is
    dropped and retried (up to ``max_attempts`` times) and counted in
    ``GenResult.retries``: with a tiny listen backlog and SYN cookies the
    kernel can drop the final handshake ACK silently, which leaves a client
    of a server-speaks-first protocol waiting forever.

    Hold mode: ``sessions`` connections are opened (at most ``max_connecting``
    being set up at a time) and parked after the greeting; once all are
    greeted or failed ``on_held`` is called, then every connection sends one
    message and quits.
    """

    def __init__(self, port: int, sessions: int, messages: int, size: int, persistent: bool,
                 timeout: float, hold: bool = False, on_held: Optional[Callable[[int], None]] = None,
                 max_connecting: int = 4, greeting_timeout: float = 3.0, max_attempts: int = 5,
                 stall_timeout: float = 30.0) -> None:
        self.addr = (HOST, port)
        self.sessions = sessions
        self.messages = messages
        self.payload = build_message(size)
        self.persistent = persistent and not hold
        self.timeout = timeout
        self.hold = hold
        self.on_held = on_held
        self.max_connecting = max_connecting
        self.greeting_timeout = greeting_timeout
        self.max_attempts = max_attempts
        self.stall_timeout = stall_timeout
        self.progress = 0  # replies received + sends completed
        self.sel = selectors.DefaultSelector()
        self.unclaimed = messages
        self.open = 0
        self.setting_up: set = set()  # connections not greeted yet
        self.pending = 0  # hold mode: connections not started yet
        self.held: List[_Conn] = []
        self.released = not hold
        self.res = GenResult(expected=messages)
        self.helo = ("HELO %s\r\n" % HELO_NAME).encode()
        self.mail = ("MAIL FROM:<%s>\r\n" % MAIL_FROM).encode()
        self.rcpt = ("RCPT TO:<%s>\r\n" % RCPT_TO).encode()

    # -- connection management -------------------------------------------
    def _claim(self) -> bool:
        if self.unclaimed > 0:
            self.unclaimed -= 1
            return True
        return False

    def _start_conn(self, claimed: bool = False, attempt: int = 1) -> bool:
        """Open a connection carrying one claimed message."""
        if not claimed and not self._claim():
            return False
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            self.res.failed += 1
            self.res.add_error("socket(): %s" % e.strerror)
            return False
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, attempt)
        conn.has_claim = True
        self.open += 1
        self.setting_up.add(conn)
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._fail(conn, os.strerror(err))
            return False
        self.sel.register(sock, selectors.EVENT_WRITE, conn)
        return True

    def _close(self, conn: _Conn) -> None:
        if conn.sock is None:
            return
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.sock = None  # type: ignore[assignment]
        self.setting_up.discard(conn)
        self.open -= 1

    def _fail(self, conn: _Conn, what: str) -> None:
        self.res.add_error("%s: %s" % (STATE_NAMES[conn.state], what))
        if conn.has_claim:
            conn.has_claim = False
            self.res.failed += 1
        if conn.state == HELD:
            try:
                self.held.remove(conn)
            except ValueError:
                pass
        self._close(conn)
        # the session slot is abandoned (like smtp-source without -A)

    def _check_setup_timeouts(self, now: float) -> None:
        for conn in [c for c in self.setting_up if now - c.started > self.greeting_timeout]:
            if conn.attempt >= self.max_attempts:
                self._fail(conn, "no greeting after %d attempts" % conn.attempt)
                continue
            self.res.retries += 1
            conn.has_claim = False
            self._close(conn)
            self._start_conn(claimed=True, attempt=conn.attempt + 1)

    # -- I/O ---------------------------------------------------------------
    def _send(self, conn: _Conn, data: bytes, state: int) -> None:
        conn.state = state
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._fail(conn, "send: %s" % (e.strerror or e))
            return
        if n < len(data):
            conn.out = memoryview(data)[n:]
            if not conn.writing:
                conn.writing = True
                self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)

    def _on_writable(self, conn: _Conn) -> None:
        if conn.state == CONNECTING:
            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(conn, os.strerror(err))
                return
            conn.state = GREETING
            conn.writing = False
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        out = conn.out
        if out is not None:
            try:
                n = conn.sock.send(out)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(conn, "send: %s" % (e.strerror or e))
                return
            out = out[n:]
            conn.out = out if len(out) else None
            self.progress += 1
        if conn.out is None and conn.writing:
            conn.writing = False
            self.sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(conn, "recv: %s" % (e.strerror or e))
            return
        if not data:
            if conn.state == QUIT and not conn.inbuf:
                self._finish(conn)  # server closed right after 221
            else:
                self._fail(conn, "connection closed by server")
            return
        buf = conn.inbuf
        buf += data
        while conn.sock is not None:
            # a reply is complete at a line whose 4th character is not '-'
            pos = 0
            code = None
            while True:
                nl = buf.find(b"\n", pos)
                if nl < 0:
                    break
                line = buf[pos:nl]
                pos = nl + 1
                if len(line) < 4 or line[3:4] != b"-":
                    head = bytes(line[:3])
                    code = int(head) if head.isdigit() else -1
                    break
            if code is None:
                return
            text = bytes(buf[:pos]).strip()
            del buf[:pos]
            self._on_reply(conn, code, text)

    def _finish(self, conn: _Conn) -> None:
        self._close(conn)
        if not self.persistent and not self.hold:
            self._start_conn()  # next message of this session, if any

    def _on_reply(self, conn: _Conn, code: int, text: bytes) -> None:
        state = conn.state
        self.progress += 1
        if code not in EXPECTED[state]:
            self._fail(conn, "unexpected reply %r" % text[:60].decode("latin-1"))
            return
        if state == DOT:
            conn.has_claim = False
            self.res.delivered += 1
            if self.persistent and self._claim():
                conn.has_claim = True
                self._send(conn, self.mail, MAIL)
            else:
                self._send(conn, b"QUIT\r\n", QUIT)
        elif state == MAIL:
            self._send(conn, self.rcpt, RCPT)
        elif state == RCPT:
            self._send(conn, b"DATA\r\n", DATA)
        elif state == DATA:
            self._send(conn, self.payload, DOT)
        elif state == HELO:
            self._send(conn, self.mail, MAIL)
        elif state == GREETING:
            self.setting_up.discard(conn)
            if self.released:
                self._send(conn, self.helo, HELO)
            else:
                conn.state = HELD
                self.held.append(conn)
                if len(self.held) > self.res.held:
                    self.res.held = len(self.held)
        elif state == QUIT:
            self._finish(conn)

    # -- main loop ---------------------------------------------------------
    def _fill_setup(self) -> None:
        while self.pending > 0 and len(self.setting_up) < self.max_connecting:
            self.pending -= 1
            self._start_conn()

    def run(self) -> GenResult:
        t0 = time.perf_counter()
        deadline = t0 + self.timeout
        if self.hold:
            self.pending = self.sessions
            self._fill_setup()
        else:
            for _ in range(self.sessions):
                if not self._start_conn():
                    break
        t_measure = t0
        next_check = t0 + 0.25
        last_progress, t_progress = -1, t0
        sel = self.sel
        EV_R, EV_W = selectors.EVENT_READ, selectors.EVENT_WRITE
        while self.open > 0 or self.pending > 0:
            if self.hold:
                self._fill_setup()
                if not self.released and self.pending == 0 and not self.setting_up:
                    self.res.hold_info["connect_s"] = time.perf_counter() - t0
                    if self.on_held is not None:
                        self.on_held(len(self.held))
                    self.released = True
                    t_measure = time.perf_counter()
                    for conn in list(self.held):
                        if conn.sock is not None:
                            self._send(conn, self.helo, HELO)
                    self.held = []
                    continue
            now = time.perf_counter()
            if now >= deadline:
                self.res.add_error("run timed out after %.0f s" % self.timeout)
                break
            if now >= next_check:
                next_check = now + 0.25
                if self.progress != last_progress:
                    last_progress, t_progress = self.progress, now
                elif now - t_progress > self.stall_timeout:
                    self.res.add_error("stalled: no progress for %.0f s" % self.stall_timeout)
                    break
                if self.setting_up:
                    self._check_setup_timeouts(now)
                    continue
            for key, mask in sel.select(min(0.25, deadline - now)):
                conn = key.data
                if mask & EV_W:
                    self._on_writable(conn)
                if mask & EV_R and conn.sock is not None:
                    self._on_readable(conn)
        if self.open > 0 or self.pending > 0:
            for key in list(sel.get_map().values()):
                self._fail(key.data, "timeout")
            self.res.failed += self.unclaimed
        self.res.elapsed = time.perf_counter() - t_measure
        sel.close()
        return self.res


def run_smtp_source(exe: str, port: int, load: Load, timeout: float, stall_timeout: float) -> GenResult:
    """Run Postfix smtp-source; -c makes it print a running count of messages.

    The count lets a run that stalls (no message for ``stall_timeout`` s) be
    cut short and still report how many messages got through.
    """
    argv = [exe, "-c", "-s", str(load.sessions), "-m", str(load.messages), "-l", str(load.size)]
    if load.persistent:
        argv.append("-d")
    argv += ["-f", MAIL_FROM, "-t", RCPT_TO, "-M", HELO_NAME, "%s:%d" % (HOST, port)]
    vlog("loadgen: " + " ".join(argv))
    res = GenResult(expected=load.messages)
    count = [0]
    err_chunks: List[bytes] = []

    def read_counter(stream) -> None:
        tail = b""
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
            if not chunk:
                break
            tail += chunk
            parts = re.split(rb"[\r\n]", tail)
            tail = parts.pop()  # possibly incomplete
            for part in reversed(parts):
                if part.strip().isdigit():
                    count[0] = int(part)
                    break
        if tail.strip().isdigit():
            count[0] = int(tail)

    def read_err(stream) -> None:
        for chunk in iter(lambda: stream.read(4096), b""):
            err_chunks.append(chunk)

    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        res.failed = load.messages
        res.add_error("cannot run smtp-source: %s" % e)
        return res
    readers = [threading.Thread(target=read_counter, args=(proc.stdout,), daemon=True),
               threading.Thread(target=read_err, args=(proc.stderr,), daemon=True)]
    for t in readers:
        t.start()
    deadline = t0 + timeout
    last_count, last_progress = 0, t0
    why = None
    while True:
        try:
            proc.wait(0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.perf_counter()
        if count[0] != last_count:
            last_count, last_progress = count[0], now
        if now >= deadline:
            why = "timed out after %.0f s" % timeout
        elif now - last_progress > stall_timeout:
            why = "stalled: no message for %.0f s" % stall_timeout
        if why:
            proc.kill()
            proc.wait()
            break
    res.elapsed = time.perf_counter() - t0
    for t in readers:
        t.join(2)
    if why is None and proc.returncode == 0:
        res.delivered = load.messages
        return res
    res.delivered = min(count[0], load.messages)
    res.failed = load.messages - res.delivered
    if why:
        res.add_error("smtp-source %s" % why)
    else:
        msg = b"".join(err_chunks).decode("utf-8", "replace").strip().splitlines()
        res.add_error("smtp-source exit %d: %s" % (proc.returncode, msg[-1] if msg else ""))
    return res


# --------------------------------------------------------------------------
# Running one load against one server
# --------------------------------------------------------------------------


@dataclass
class RunResult:
    ok: bool
    error: Optional[str] = None
    msgs_per_s: Optional[float] = None
    delivered: int = 0
    expected: int = 0
    elapsed: float = 0.0
    metrics: Dict[str, float] = field(default_factory=dict)


def _finish_run(rs: RunningServer, gen: GenResult, cpu0: Optional[float], ovf0: Optional[int]) -> RunResult:
    r = RunResult(ok=False, delivered=gen.delivered, expected=gen.expected, elapsed=gen.elapsed)
    ovf1 = listen_overflows()
    if ovf0 is not None and ovf1 is not None:
        r.metrics["listen_overflows"] = ovf1 - ovf0
    cpu1 = proc_cpu_seconds(rs.pid)
    if cpu0 is not None and cpu1 is not None:
        r.metrics["server_cpu_s"] = round(cpu1 - cpu0, 3)
        if gen.delivered and cpu1 - cpu0 >= 0.2:  # /proc counts in 10 ms ticks
            r.metrics["cpu_us_per_msg"] = round((cpu1 - cpu0) * 1e6 / gen.delivered, 1)
    hwm = proc_status_kb(rs.pid, "VmHWM")
    if hwm is not None:
        r.metrics["server_hwm_kb"] = hwm
    if gen.retries:
        r.metrics["greeting_retries"] = gen.retries
    if gen.elapsed > 0 and gen.delivered:
        r.msgs_per_s = gen.delivered / gen.elapsed
    if gen.delivered == gen.expected and not gen.errors:
        r.ok = True
    else:
        why = gen.error_summary() or "delivered %d/%d" % (gen.delivered, gen.expected)
        note = rs.death_note()
        r.error = "%d/%d delivered: %s%s" % (gen.delivered, gen.expected, why, ("; " + note) if note else "")
    return r


def run_throughput(rs: RunningServer, load: Load, ctx: "Context") -> RunResult:
    cpu0, ovf0 = proc_cpu_seconds(rs.pid), listen_overflows()
    if ctx.loadgen == "smtp-source":
        gen = run_smtp_source(ctx.smtp_source, rs.port, load, ctx.run_timeout, ctx.args.stall_timeout)
    else:
        gen = PyLoadGen(rs.port, load.sessions, load.messages, load.size, load.persistent, ctx.run_timeout,
                        greeting_timeout=ctx.args.greeting_timeout, stall_timeout=ctx.args.stall_timeout).run()
    return _finish_run(rs, gen, cpu0, ovf0)


def run_mem(rs: RunningServer, load: Load, ctx: "Context") -> RunResult:
    time.sleep(0.2)  # let the server settle after the readiness probe
    idle = proc_status_kb(rs.pid, "VmRSS")
    if idle is None:
        return RunResult(ok=False, error="cannot read /proc/%d/status" % rs.pid)
    exact = reset_peak_rss(rs.pid)
    sampler = None
    if not exact:
        sampler = RssSampler(rs.pid)
        sampler.start()
    cpu0, ovf0 = proc_cpu_seconds(rs.pid), listen_overflows()
    gen = PyLoadGen(rs.port, 1, 1, load.size, True, ctx.run_timeout,
                    greeting_timeout=ctx.args.greeting_timeout, stall_timeout=ctx.args.stall_timeout).run()
    if exact:
        peak = proc_status_kb(rs.pid, "VmHWM") or 0
    else:
        peak = sampler.stop()  # type: ignore[union-attr]
    time.sleep(0.3)  # the client has quit; give the server time to drop the session
    after = proc_status_kb(rs.pid, "VmRSS") or 0
    r = _finish_run(rs, gen, cpu0, ovf0)
    delta = max(0, peak - idle) * KIB
    r.metrics.update({
        "idle_rss_kb": idle,
        "peak_rss_kb": peak,
        "retained_kb": max(0, after - idle),
        "peak_delta_bytes": delta,
        "peak_ratio": round(delta / load.size, 3),
        "peak_method": "VmHWM" if exact else "sampled",
    })
    return r


def run_hold(rs: RunningServer, load: Load, ctx: "Context") -> RunResult:
    time.sleep(0.2)
    idle = proc_status_kb(rs.pid, "VmRSS")
    held_rss: Dict[str, int] = {}

    def on_held(n: int) -> None:
        time.sleep(0.5)  # let the server finish per-connection setup
        held_rss["rss"] = proc_status_kb(rs.pid, "VmRSS") or 0
        held_rss["n"] = n

    cpu0, ovf0 = proc_cpu_seconds(rs.pid), listen_overflows()
    gen = PyLoadGen(rs.port, load.sessions, load.messages, load.size, False, ctx.run_timeout,
                    hold=True, on_held=on_held, max_connecting=ctx.args.hold_connect_parallel,
                    greeting_timeout=ctx.args.greeting_timeout, stall_timeout=ctx.args.stall_timeout).run()
    r = _finish_run(rs, gen, cpu0, ovf0)
    r.metrics["held"] = gen.held
    r.metrics["connect_s"] = round(gen.hold_info.get("connect_s", 0.0), 3)
    if idle is not None and held_rss.get("n"):
        r.metrics["idle_rss_kb"] = idle
        r.metrics["held_rss_kb"] = held_rss["rss"]
        r.metrics["per_conn_bytes"] = round((held_rss["rss"] - idle) * KIB / held_rss["n"])
    if gen.held < load.sessions and r.ok:
        r.ok = False
    if gen.held < load.sessions and not r.error:
        r.error = "only %d/%d connections held" % (gen.held, load.sessions)
    return r


def run_one(server: Server, load: Load, ctx: "Context", rep: int) -> RunResult:
    tag = "%s-%d" % (load.name, rep)
    try:
        rs = start_server(server, tag)
    except ServerStartError as e:
        return RunResult(ok=False, error="did not start: %s" % e)
    try:
        if load.kind == "mem":
            return run_mem(rs, load, ctx)
        if load.kind == "hold":
            return run_hold(rs, load, ctx)
        return run_throughput(rs, load, ctx)
    except Exception as e:  # keep going with the other servers
        return RunResult(ok=False, error="benchmark error: %r" % e)
    finally:
        rs.stop()


# --------------------------------------------------------------------------
# Aggregation and output
# --------------------------------------------------------------------------


@dataclass
class Cell:
    runs: List[RunResult]

    @property
    def ok_runs(self) -> List[RunResult]:
        return [r for r in self.runs if r.ok]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(r.ok for r in self.runs)

    def median(self, key: str) -> Optional[float]:
        vals = []
        for r in self.ok_runs:
            v = r.msgs_per_s if key == "msgs_per_s" else r.metrics.get(key)
            if isinstance(v, (int, float)):
                vals.append(float(v))
        return statistics.median(vals) if vals else None

    def first_error(self) -> str:
        for r in self.runs:
            if r.error:
                return r.error
        return ""


@dataclass
class Context:
    args: argparse.Namespace
    workdir: str
    loadgen: str
    smtp_source: Optional[str]
    run_timeout: float
    max_conns: int


def fmt_num(v: Optional[float], digits: int = 0) -> str:
    if v is None:
        return "-"
    if digits == 0:
        return "{:,.0f}".format(v)
    return "{:,.{d}f}".format(v, d=digits)


def fmt_ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return "%.2fx" % (a / b)


def render(results: Dict[str, Dict[str, Cell]], servers: List[Server], skipped: Dict[str, str],
           loads: List[Load], ctx: Context, notes: List[str]) -> str:
    cols = [s for s in servers if s.key not in skipped]
    out: List[str] = []
    w = out.append
    w("# SMTP server benchmark")
    w("")
    w("- machine: %s, %d CPUs, Python %s (runner)" % (platform.platform(), os.cpu_count() or 0, platform.python_version()))
    w("- load generator: %s (mem32 and hold: built-in); repeat: %d (median); %s mode"
      % (ctx.loadgen, ctx.args.repeat, "quick" if ctx.args.quick else "full"))
    for s in servers:
        if s.key in skipped:
            w("- %s: **skipped**: %s" % (s.column, skipped[s.key]))
        else:
            w("- %s: %s" % (s.column, s.label))
    w("")

    def cell_text(cell: Optional[Cell], key: str, digits: int = 0, scale: float = 1.0) -> str:
        if cell is None:
            return "n/a"
        v = cell.median(key)
        if not cell.ok_runs:
            partial = [r.msgs_per_s for r in cell.runs if r.msgs_per_s]
            if key == "msgs_per_s" and partial:
                return "FAIL (%s partial)" % fmt_num(statistics.median(partial))
            return "FAIL"
        txt = fmt_num(v * scale if v is not None else None, digits)
        if not cell.ok:
            txt += " (%d/%d ok)" % (len(cell.ok_runs), len(cell.runs))
        return txt

    tp_loads = [ld for ld in loads if ld.kind in ("throughput", "hold")]
    if tp_loads and cols:
        w("## Throughput (messages/s, higher is better)")
        w("")
        w("| load | " + " | ".join(s.column for s in cols) + " |")
        w("|---|" + "---:|" * len(cols))
        for ld in tp_loads:
            row = [cell_text(results.get(ld.name, {}).get(s.key), "msgs_per_s") for s in cols]
            w("| %s (%s) | %s |" % (ld.name, ld.describe(), " | ".join(row)))
        w("")

    cpu_rows = [(ld.name, [cell_text(results.get(ld.name, {}).get(s.key), "cpu_us_per_msg") for s in cols])
                for ld in tp_loads]
    if cols and any(t[0].isdigit() for _, row in cpu_rows for t in row):
        w("## Server CPU time per message (µs, lower is better)")
        w("")
        w("| load | " + " | ".join(s.column for s in cols) + " |")
        w("|---|" + "---:|" * len(cols))
        for name, row in cpu_rows:
            w("| %s | %s |" % (name, " | ".join(row)))
        w("")

    mem_loads = [ld for ld in loads if ld.kind in ("mem", "hold")]
    if mem_loads and cols:
        w("## Memory (lower is better)")
        w("")
        w("| metric | " + " | ".join(s.column for s in cols) + " |")
        w("|---|" + "---:|" * len(cols))
        for ld in mem_loads:
            cells = [results.get(ld.name, {}).get(s.key) for s in cols]
            if ld.kind == "mem":
                w("| mem32: idle RSS (MiB) | %s |" % " | ".join(cell_text(c, "idle_rss_kb", 1, 1 / KIB) for c in cells))
                w("| mem32: peak RSS above idle (MiB) for %s | %s |" % (
                    human_size(ld.size), " | ".join(cell_text(c, "peak_delta_bytes", 1, 1 / MIB) for c in cells)))
                w("| mem32: peak above idle / message size | %s |" % " | ".join(cell_text(c, "peak_ratio", 2) for c in cells))
                w("| mem32: still held after the message (MiB) | %s |" % " | ".join(
                    cell_text(c, "retained_kb", 1, 1 / KIB) for c in cells))
            else:
                w("| hold: connections held | %s |" % " | ".join(
                    (fmt_num(max((r.metrics.get("held", 0) for r in c.runs), default=0)) if c else "n/a")
                    for c in cells))
                w("| hold: RSS per held connection (KiB) | %s |" % " | ".join(
                    cell_text(c, "per_conn_bytes", 1, 1 / KIB) for c in cells))
        w("")

    compat = next((s for s in cols if s.key == "compat"), None)
    peers = [s for s in cols if s.key != "compat"]
    if compat is not None and peers:
        w("## smtpd_compat relative to each peer (same run)")
        w("")
        w("Throughput rows: smtpd_compat msgs/s ÷ peer msgs/s (>1: smtpd_compat faster). "
          "Memory rows: smtpd_compat ÷ peer (<1: smtpd_compat uses less).")
        w("")
        w("| metric | " + " | ".join("vs " + s.column for s in peers) + " |")
        w("|---|" + "---:|" * len(peers))

        def ratio_row(title: str, load: str, key: str) -> None:
            mine = results.get(load, {}).get("compat")
            a = mine.median(key) if mine else None
            vals = []
            for p in peers:
                c = results.get(load, {}).get(p.key)
                vals.append(fmt_ratio(a, c.median(key) if c else None))
            w("| %s | %s |" % (title, " | ".join(vals)))

        for ld in tp_loads:
            ratio_row("%s msgs/s" % ld.name, ld.name, "msgs_per_s")
        for ld in mem_loads:
            if ld.kind == "mem":
                ratio_row("mem32 peak RSS above idle", ld.name, "peak_delta_bytes")
            else:
                ratio_row("hold RSS per connection", ld.name, "per_conn_bytes")
        w("")

    failures = []
    for ld in loads:
        for s in cols:
            c = results.get(ld.name, {}).get(s.key)
            if c is not None and not c.ok:
                failures.append("- %s / %s: %s" % (ld.name, s.column, c.first_error()))
    if failures or notes:
        w("## Failures and notes")
        w("")
        out.extend(failures)
        out.extend("- " + n for n in notes)
        w("")
    return "\n".join(out)


def to_json(results: Dict[str, Dict[str, Cell]], servers: List[Server], skipped: Dict[str, str],
            loads: List[Load], ctx: Context, notes: List[str]) -> dict:
    return {
        "config": {
            "quick": ctx.args.quick,
            "repeat": ctx.args.repeat,
            "loadgen": ctx.loadgen,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "runner_python": platform.python_version(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "servers": {s.key: {"label": s.label, "skipped": skipped.get(s.key)} for s in servers},
        "loads": {ld.name: {"kind": ld.kind, "sessions": ld.sessions, "messages": ld.messages,
                            "size": ld.size, "persistent": ld.persistent} for ld in loads},
        "results": {
            lname: {
                skey: {
                    "ok": cell.ok,
                    "msgs_per_s_median": cell.median("msgs_per_s"),
                    "runs": [
                        {"ok": r.ok, "error": r.error, "msgs_per_s": r.msgs_per_s, "delivered": r.delivered,
                         "expected": r.expected, "elapsed_s": round(r.elapsed, 4), **r.metrics}
                        for r in cell.runs
                    ],
                }
                for skey, cell in per.items()
            }
            for lname, per in results.items()
        },
        "notes": notes,
    }


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark smtpd_compat against CPython smtpd, aiosmtpd and smtp-sink.")
    p.add_argument("--quick", action="store_true", help="tiny counts (smoke test, < 60 s)")
    p.add_argument("--loads", default=",".join(LOAD_ORDER), help="comma list of: " + ",".join(LOAD_ORDER))
    p.add_argument("--servers", default="compat,cpython,aiosmtpd,smtp-sink",
                   help="comma list of: compat,cpython,aiosmtpd,smtp-sink")
    p.add_argument("--repeat", type=int, default=1, help="runs per (server, load); the median is reported")
    p.add_argument("--json", metavar="FILE", help="also write all results as JSON to FILE")
    p.add_argument("--loadgen", choices=["auto", "smtp-source", "python"], default="auto",
                   help="throughput load generator (default: smtp-source if installed)")
    p.add_argument("--hold-conns", type=int, default=None, help="connections for the hold load (10000; quick: 200)")
    p.add_argument("--hold-connect-parallel", type=int, default=4, metavar="N",
                   help="hold: connections being set up at once (default 4; kept below small listen backlogs)")
    p.add_argument("--greeting-timeout", type=float, default=3.0, metavar="SEC",
                   help="built-in generator: reconnect when no greeting within SEC (default 3)")
    p.add_argument("--stall-timeout", type=float, default=None, metavar="SEC",
                   help="abort a run when nothing progresses for SEC (default 30; quick: 8)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (default 120; quick: 15)")
    p.add_argument("--no-install", action="store_true", help="do not create the aiosmtpd virtualenv")
    p.add_argument("--install-timeout", type=float, default=300.0, help="seconds for 'pip install aiosmtpd'")
    p.add_argument("--aiosmtpd-venv", help="virtualenv for aiosmtpd (default benchmarks/.venv-aiosmtpd)")
    p.add_argument("--aiosmtpd-python", help="interpreter to build the aiosmtpd virtualenv with")
    p.add_argument("--cpython", help="Python <= 3.11 interpreter whose stdlib smtpd is measured")
    p.add_argument("--compat-python", help="interpreter for smtpd_compat (default: this one)")
    p.add_argument("--sink-user", default="nobody", help="user smtp-sink switches to when run as root")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    global VERBOSE
    args = parse_args(argv)
    VERBOSE = args.verbose
    t_start = time.monotonic()

    all_loads = make_loads(args.quick, args.hold_conns)
    load_names = [x.strip() for x in args.loads.split(",") if x.strip()]
    bad = [x for x in load_names if x not in all_loads]
    if bad:
        log("unknown load(s): %s (choose from %s)" % (", ".join(bad), ", ".join(LOAD_ORDER)))
        return 2
    server_keys = []
    for x in args.servers.split(","):
        x = x.strip().lower()
        if not x:
            continue
        if x not in SERVER_ALIASES:
            log("unknown server %r (choose from compat, cpython, aiosmtpd, smtp-sink)" % x)
            return 2
        if SERVER_ALIASES[x] not in server_keys:
            server_keys.append(SERVER_ALIASES[x])

    notes: List[str] = []
    soft, hard = raise_nofile_limit()
    loads = [all_loads[n] for n in LOAD_ORDER if n in load_names]
    hold = all_loads["hold"]
    if "hold" in load_names and soft and soft != getattr(resource, "RLIM_INFINITY", -1):
        room = soft - 100
        if hold.sessions > room:
            notes.append("hold: RLIMIT_NOFILE is %d, so %d connections instead of %d" % (soft, room, hold.sessions))
            hold.sessions = hold.messages = max(1, room)
    max_conns = hold.sessions if "hold" in load_names else 0

    smtp_source = find_sbin("smtp-source")
    if args.loadgen == "smtp-source" and not smtp_source:
        log("--loadgen smtp-source: smtp-source is not installed")
        return 2
    loadgen = "smtp-source" if (args.loadgen != "python" and smtp_source) else "python"
    run_timeout = args.timeout or (15.0 if args.quick else 120.0)
    if args.stall_timeout is None:
        args.stall_timeout = 8.0 if args.quick else 30.0

    workdir = tempfile.mkdtemp(prefix="smtpbench-")
    ctx = Context(args=args, workdir=workdir, loadgen=loadgen, smtp_source=smtp_source,
                  run_timeout=run_timeout, max_conns=max_conns)
    servers: List[Server] = [cls(ctx) for cls in SERVER_CLASSES if cls.key in server_keys]
    skipped: Dict[str, str] = {}
    log("RLIMIT_NOFILE %s/%s; load generator: %s; workdir %s" % (soft, hard, loadgen, workdir))
    for s in servers:
        try:
            reason = s.prepare()
        except Exception as e:  # an odd interpreter must not stop the others
            reason = "availability check failed: %r" % e
        if reason:
            skipped[s.key] = reason
            log("- %s: skipped: %s" % (s.column, reason))
        else:
            log("- %s: %s" % (s.column, s.label))
    if not os.path.exists("/proc/self/status"):
        notes.append("no /proc: memory figures unavailable")

    results: Dict[str, Dict[str, Cell]] = {}
    active = [s for s in servers if s.key not in skipped]
    for ld in loads:
        results[ld.name] = {}
        for s in active:
            results[ld.name][s.key] = Cell(runs=[])
        for rep in range(args.repeat):
            for s in active:
                r = run_one(s, ld, ctx, rep)
                results[ld.name][s.key].runs.append(r)
                if r.ok:
                    extra = ""
                    if "peak_ratio" in r.metrics:
                        extra = ", peak/size %.2f" % r.metrics["peak_ratio"]
                    if "per_conn_bytes" in r.metrics:
                        extra = ", %.1f KiB/conn" % (r.metrics["per_conn_bytes"] / KIB)
                    log("[%s] %s run %d: %s msgs/s in %.2f s%s" % (
                        ld.name, s.column, rep + 1, fmt_num(r.msgs_per_s), r.elapsed, extra))
                else:
                    log("[%s] %s run %d: FAILED: %s" % (ld.name, s.column, rep + 1, r.error))

    stalls = False
    for ld in loads:
        for s in active:
            runs = results[ld.name][s.key].runs
            ovf = sum(int(r.metrics.get("listen_overflows", 0)) for r in runs)
            retries = sum(int(r.metrics.get("greeting_retries", 0)) for r in runs)
            if ovf or retries:
                stalls = True
                notes.append("%s / %s: %d listen-queue overflow(s)%s" % (
                    ld.name, s.column, ovf, (", %d connection(s) retried for want of a greeting" % retries)
                    if retries else ""))
    if stalls:
        notes.append("listen-queue overflows: the server's accept queue (listen backlog) was full, so the "
                     "kernel dropped handshakes; clients then stall on SYN/SYN-ACK retransmits (1 s, 3 s, 7 s...) "
                     "or, when SYN cookies were used, wait for a greeting that never comes (the built-in "
                     "generator reconnects after --greeting-timeout). Counted from /proc/net/netstat.")
    if loadgen == "python" and any(ld.kind == "throughput" for ld in loads):
        notes.append("throughput measured with the built-in Python load generator, which may itself be "
                     "the bottleneck for the fastest servers")
    if args.quick:
        notes.append("--quick: runs last milliseconds, so these figures are a smoke test, not a measurement")
    notes.append("total benchmark time %.1f s" % (time.monotonic() - t_start))

    report = render(results, servers, skipped, loads, ctx, notes)
    print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(results, servers, skipped, loads, ctx, notes), f, indent=2)
        log("wrote %s" % args.json)
    shutil.rmtree(workdir, ignore_errors=True)

    if "compat" in server_keys:
        if "compat" in skipped:
            log("smtpd_compat could not be served: %s" % skipped["compat"])
            return 1
        bad_loads = [ld.name for ld in loads if not results[ld.name]["compat"].ok]
        if bad_loads:
            log("smtpd_compat failed load(s): %s" % ", ".join(bad_loads))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
