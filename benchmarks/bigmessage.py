#!/usr/bin/env python3
"""Mail bigger than memory: peak RSS and throughput of one big message.

Each server runs as its own process (``python -m smtpd_compat`` with
``--spool-threshold``, or Postfix's ``smtp-sink``); one Python client sends
a message of SIZE bytes made block by block (it never holds the message),
and the time from the first byte of the message to the reply to its end is
measured.  The server's peak RSS above idle is its ``VmHWM`` at the end
minus its ``VmRSS`` after a first small message (``/proc/PID/status``).

Servers (each skipped when unavailable):

  smtp-sink     Postfix's smtp-sink: receives and discards (the reference)
  sink          smtpd_compat, a process_message_stream() that discards
                (the message is spooled, then dropped)
  maildir       smtpd_compat's MailboxServer --maildir (spooled, then
                copied into the Maildir and fsync'ed)
  proxy         smtpd_compat's PureProxy relaying to an smtp-sink
  maildir-memory  MailboxServer --maildir without the spool, for comparison
                (not in the default list: it holds the message in memory)
  forward       a reference for proxy (not in the default list): a Python
                process that passes bytes between the client and an
                smtp-sink and does nothing else: what the extra hop costs
  forward-check the same, also doing the per-byte work a relay that passes
                the client's text on cannot skip, as proxy does it: the
                search for the end of data and the proof that every CR and
                LF is in a CRLF (_cut_through.RawCheck)

    python3 benchmarks/bigmessage.py --quick            # 8 MiB, 1 run: CI
    python3 benchmarks/bigmessage.py --size 100M --repeat 3
    python3 benchmarks/bigmessage.py --size 1G --repeat 3 --servers maildir,proxy
    python3 benchmarks/bigmessage.py --servers smtp-sink,forward,forward-check,proxy

Standard library only; Linux (``/proc``).  Temporary directories are
removed at the end.  Prints a markdown table: median seconds, MiB/s, ratio
to smtp-sink, peak RSS above idle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMTP_SINK = "/usr/sbin/smtp-sink"
THRESHOLD = 1 << 20
TIMEOUT = 600.0

SINK_CLASS = '''
from smtpd_compat.smtpd import SMTPServer
class Sink(SMTPServer):
    def process_message(self, *args, **kwargs):
        return None
    def process_message_stream(self, *args, **kwargs):
        return None
'''

# One block of message text: 78-character lines, one in 16 starting with a
# dot (sent stuffed), so the unstuffing is exercised.
_LINE = b"x" * 76 + b"\r\n"
_DOT_LINE = b".." + b"y" * 75 + b"\r\n"
BLOCK = (_LINE * 15 + _DOT_LINE) * 52


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited: %s" % proc.args)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.recv(512)
                s.sendall(b"QUIT\r\n")
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen: %s" % proc.args)


def status(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM of *pid*, in bytes."""
    values = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values


class Client:
    """A minimal SMTP client on a blocking socket."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""
        self.greeted = False
        self.reply()

    def reply(self) -> bytes:
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise RuntimeError("connection closed")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            if line[3:4] != b"-":
                return line

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def message(self, size: int) -> float:
        """Send one message of about *size* bytes; seconds from its first
        byte to the reply to its end."""
        dialogue = [(b"MAIL FROM:<a@example.com>", b"250"), (b"RCPT TO:<b@example.com>", b"250"), (b"DATA", b"354")]
        if not self.greeted:
            self.greeted = True
            dialogue.insert(0, (b"EHLO bench.example", b"250"))
        for line, code in dialogue:
            reply = self.command(line)
            if not reply.startswith(code):
                raise RuntimeError("%r answered %r" % (line, reply))
        start = time.perf_counter()
        for block in blocks(size):
            self.sock.sendall(block)
        reply = self.command(b".")
        elapsed = time.perf_counter() - start
        if not reply.startswith(b"250"):
            raise RuntimeError("end of data answered %r" % reply)
        return elapsed

    def close(self) -> None:
        try:
            self.command(b"QUIT")
        finally:
            self.sock.close()


def blocks(size: int) -> Iterator[bytes]:
    yield b"Subject: big\r\nFrom: a@example.com\r\n\r\n"
    sent = 0
    while sent < size:
        yield BLOCK
        sent += len(BLOCK)


def start_smtp_sink(port: int) -> subprocess.Popen:  # type: ignore[type-arg]
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([SMTP_SINK, *user, "127.0.0.1:%d" % port, "64"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc


def start_compat(kind: str, port: int, work: str, upstream: Optional[int]) -> subprocess.Popen:  # type: ignore[type-arg]
    args = [sys.executable, "-m", "smtpd_compat", "-n", "-q", "-s", "0"]
    if kind != "maildir-memory":
        args += ["--spool-threshold", str(THRESHOLD), "--spool-dir", work]
    if kind == "sink":
        args += ["-c", "bench_big_sink.Sink"]
    elif kind in ("maildir", "maildir-memory"):
        args += ["-c", "MailboxServer", "--maildir", os.path.join(work, "Maildir")]
    else:
        args += ["-c", "PureProxy"]
    args.append("127.0.0.1:%d" % port)
    if upstream is not None:
        args.append("127.0.0.1:%d" % upstream)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, work]))
    # (In REPO: "-m" puts the working directory first on sys.path, and the
    # package of another checkout there would be the one measured.)
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_listening(port, proc)
    return proc


def start_forward(kind: str, port: int, upstream: int) -> subprocess.Popen:  # type: ignore[type-arg]
    args = [sys.executable, os.path.abspath(__file__), "--forward", str(port), str(upstream)]
    if kind == "forward-check":
        args.append("--check")
    proc = subprocess.Popen(args, env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL)
    wait_listening(port, proc)
    return proc


def forward(port: int, upstream: int, check: bool) -> None:
    """The forward servers: each connection to *port* is joined to a new
    one to *upstream*, a thread per direction.  With *check*, what goes
    upstream is searched for the end of data and its line ends proven as
    PureProxy's cut-through does it (the results are not used: this
    measures the work)."""
    import threading

    from smtpd_compat import _cut_through, _framing

    def pump(source: socket.socket, sink: socket.socket, inspect: bool) -> None:
        proof, offset = _cut_through.RawCheck(), 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if inspect:
                    _framing._find_large(bytearray(data), b"\r\n.\r\n", 0)
                    proof.feed(offset, data)
                    offset += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sink.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    listener = socket.create_server(("127.0.0.1", port))
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(("127.0.0.1", upstream))
        threading.Thread(target=pump, args=(client, server, check), daemon=True).start()
        threading.Thread(target=pump, args=(server, client, False), daemon=True).start()


def run_once(kind: str, size: int, work: str) -> Tuple[float, Optional[int]]:
    """Seconds for one message of *size* to *kind*, and the server's peak
    RSS above idle (None for smtp-sink, which forks)."""
    port = free_port()
    procs = []
    try:
        if kind == "smtp-sink":
            procs.append(start_smtp_sink(port))
            server_pid = None
        else:
            upstream = None
            if kind in ("proxy", "forward", "forward-check"):
                upstream = free_port()
                procs.append(start_smtp_sink(upstream))
            if kind.startswith("forward"):
                assert upstream is not None
                procs.append(start_forward(kind, port, upstream))
            else:
                procs.append(start_compat(kind, port, work, upstream))
            server_pid = procs[-1].pid
        client = Client(port)
        client.message(64 << 10)  # warm up: every module the path needs is loaded
        idle = status(server_pid)["VmRSS"] if server_pid else 0
        seconds = client.message(size)
        peak = status(server_pid)["VmHWM"] - idle if server_pid else None
        client.close()
        return seconds, peak
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        maildir = os.path.join(work, "Maildir")
        if os.path.isdir(maildir):
            shutil.rmtree(maildir)


def available(kind: str) -> bool:
    if kind in ("smtp-sink", "proxy", "forward", "forward-check"):
        return os.access(SMTP_SINK, os.X_OK)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="100M", help="message size: bytes, or with K/M/G (default 100M)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server (default 3; medians are shown)")
    parser.add_argument("--servers", default="smtp-sink,sink,maildir,proxy")
    parser.add_argument("--quick", action="store_true", help="8 MiB, one run (CI: it must run, speed is not judged)")
    parser.add_argument("--forward", nargs=2, type=int, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    if ns.forward:
        forward(ns.forward[0], ns.forward[1], ns.check)
        return 0
    size = parse_size("8M" if ns.quick else ns.size)
    repeat = 1 if ns.quick else max(1, ns.repeat)
    work = tempfile.mkdtemp(prefix="bigmessage-")
    results: Dict[str, Tuple[List[float], Optional[int]]] = {}
    try:
        with open(os.path.join(work, "bench_big_sink.py"), "w") as f:
            f.write(SINK_CLASS)
        kinds = []
        for kind in ns.servers.split(","):
            if available(kind):
                kinds.append(kind)
            else:
                print("%s: skipped (not available)" % kind, file=sys.stderr)
        runs: Dict[str, List[Tuple[float, Optional[int]]]] = {kind: [] for kind in kinds}
        # Round by round, each server once per round: on a shared machine
        # the servers compared see the same load, more or less.
        for _ in range(repeat):
            for kind in kinds:
                runs[kind].append(run_once(kind, size, work))
                leftovers = [name for name in os.listdir(work) if name != "bench_big_sink.py" and not name.startswith("__")]
                if leftovers:
                    print("%s: left %s in the spool directory" % (kind, leftovers), file=sys.stderr)
                    return 1
        for kind in kinds:
            peaks = [p for _, p in runs[kind] if p is not None]
            results[kind] = ([s for s, _ in runs[kind]], max(peaks) if peaks else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(results, size, repeat)
    return 0


def report(results: Dict[str, Tuple[List[float], Optional[int]]], size: int, repeat: int) -> None:
    """Medians; the range of a server's times; and its ratio to smtp-sink
    round by round (the median of each round's ratio: the two ran minutes
    apart at most, so a slow spell of the machine counts for both)."""
    mib = size / (1 << 20)
    reference = results.get("smtp-sink", ([], None))[0]
    print("message: %.0f MiB, %d run(s) each, median; spool threshold %d bytes" % (mib, repeat, THRESHOLD))
    print()
    print("| server | seconds | fastest-slowest | MiB/s | × smtp-sink | × smtp-sink by round | peak RSS above idle (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for kind, (times, peak) in results.items():
        seconds = statistics.median(times)
        ratio = by_round = "-"
        if reference:
            ratio = "%.2f" % (statistics.median(reference) / seconds)
            by_round = "%.2f" % statistics.median(ref / mine for ref, mine in zip(reference, times))
        shown = "%.1f" % (peak / (1 << 20)) if peak is not None else "-"
        print("| %s | %.2f | %.2f-%.2f | %.0f | %s | %s | %s |" % (
            kind, seconds, min(times), max(times), mib / seconds, ratio, by_round, shown))


if __name__ == "__main__":
    sys.exit(main())
