#!/usr/bin/env python3
"""Soak run: does the server's memory stay flat under a long load?

Not a timed test and not a benchmark: it reports the RSS of a
``python -m smtpd_compat`` server, sampled every second, over three phases,
each against a fresh server on a free 127.0.0.1 port:

  messages        100,000 messages of 1 KB over 20 persistent sessions
  rcpt-unlimited  1,000,000 RCPT commands in one transaction, server run
                  with --max-recipients none: memory grows with the envelope
  rcpt-default    the same with the default max_recipients (1000): flat

For each: RSS at the start (idle server), the peak of the samples and the
kernel's exact peak (VmHWM, reset at the start where the kernel allows it),
and at the end (sessions closed; for the RCPT phases also right after
RSET, while the session is still open).  Every loop is bounded in count and
in time (--timeout per phase); only loopback is used.  Linux (/proc).

    python benchmarks/soak.py                  # the full run, a few minutes
    python benchmarks/soak.py --messages 2000 --rcpts 20000   # a quick look

Standard library only; reuses bench.py's package (smtpbench) for the
server start-up, load generator and /proc readers.  See benchmarks/README.md.
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import types
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# after the path is set
from smtpbench.common import HOST, log  # noqa: E402
from smtpbench.launch import start_server  # noqa: E402
from smtpbench.loadgen import PyLoadGen  # noqa: E402
from smtpbench.procfs import RssSampler, proc_status_kb, reset_peak_rss  # noqa: E402
from smtpbench.servers import COMPAT_SINK, CompatServer, write_sink  # noqa: E402

PHASES = ("messages", "rcpt-unlimited", "rcpt-default")


class SoakServer(CompatServer):
    """``python -m smtpd_compat`` with bench.py's discarding sink and *flags*
    in place of bench's ``-s``: the soak measures the defaults."""

    key = "soak"

    def __init__(self, workdir: str, flags: List[str]) -> None:
        super().__init__(types.SimpleNamespace(workdir=workdir))  # type: ignore[arg-type]
        self.python = sys.executable
        self.soak_flags = flags

    def flags(self) -> List[str]:
        return self.soak_flags


def rss_kb(pid: int) -> int:
    value = proc_status_kb(pid, "VmRSS")
    if value is None:
        raise SystemExit("cannot read /proc/%d/status: this script needs Linux" % pid)
    return value


class Phase:
    """One server, RSS sampled every second while *run* drives it."""

    def __init__(self, name: str, workdir: str, flags: List[str]) -> None:
        self.name = name
        self.report: Dict[str, object] = {"phase": name, "server flags": " ".join(flags) or "(defaults)"}
        self.rs = start_server(SoakServer(workdir, flags), name)

    def __enter__(self) -> "Phase":
        time.sleep(0.5)  # let the server settle after bench's readiness probe
        self.report["start_kb"] = rss_kb(self.rs.pid)
        self.exact_peak = reset_peak_rss(self.rs.pid)
        self.sampler = RssSampler(self.rs.pid, interval=1.0)
        self.sampler.start()
        self.started = time.monotonic()
        return self

    def note_rss(self, label: str) -> None:
        self.report[label] = rss_kb(self.rs.pid)

    def __exit__(self, *exc: object) -> None:
        try:
            self.report["seconds"] = round(time.monotonic() - self.started, 1)
            time.sleep(1.0)  # the sessions have quit: let the server close them
            self.report["end_kb"] = rss_kb(self.rs.pid)
            # The samples, and the readings taken at the start, RSET and end.
            readings = [v for k, v in self.report.items() if k.endswith("_kb") and isinstance(v, int)]
            self.report["peak_sampled_kb"] = max([self.sampler.stop()] + readings)
            self.report["samples"] = self.sampler.samples
            if self.exact_peak:
                self.report["peak_hwm_kb"] = proc_status_kb(self.rs.pid, "VmHWM")
            if not self.rs.alive():
                self.report["error"] = self.rs.death_note()
        finally:
            self.rs.stop()


def run_messages(phase: Phase, sessions: int, messages: int, timeout: float) -> None:
    gen = PyLoadGen(phase.rs.port, sessions, messages, 1000, True, timeout, stall_timeout=30.0).run()
    phase.report.update({"sessions": sessions, "messages": messages, "delivered": gen.delivered,
                         "messages/s": round(gen.delivered / gen.elapsed) if gen.elapsed else None})
    if gen.errors:
        phase.report["error"] = gen.error_summary()


class Replies:
    """Reads reply lines from a blocking socket, each within the deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("phase timeout")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the session")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> bytes:
        """One reply (the last line of a multi-line one)."""
        while True:
            line = self.line()
            if line[3:4] != b"-":
                return line


def run_rcpts(phase: Phase, count: int, timeout: float, batch: int = 1000) -> None:
    deadline = time.monotonic() + timeout
    codes: Dict[str, int] = {}
    sent = 0
    with socket.create_connection((HOST, phase.rs.port), timeout=30) as sock:
        replies = Replies(sock, deadline)
        assert replies.reply().startswith(b"220")
        for command in (b"HELO soak.example", b"MAIL FROM:<soak@example.com>"):
            sock.sendall(command + b"\r\n")
            assert replies.reply().startswith(b"250"), command
        try:
            # Pipelined in batches: each batch's replies (8 KB) stay well
            # under max_output, so the server never pauses the session.
            while sent < count:
                n = min(batch, count - sent)
                sock.sendall(b"".join(b"RCPT TO:<rcpt%07d@example.com>\r\n" % i for i in range(sent, sent + n)))
                for _ in range(n):
                    code = replies.reply()[:3].decode("ascii", "replace")
                    codes[code] = codes.get(code, 0) + 1
                sent += n
        except (OSError, TimeoutError) as err:
            phase.report["error"] = "after %d RCPT: %s" % (sent, err)
        phase.note_rss("before_rset_kb")
        if "error" not in phase.report:
            sock.sendall(b"RSET\r\n")
            assert replies.reply().startswith(b"250")
            phase.note_rss("after_rset_kb")
            sock.sendall(b"QUIT\r\n")
            replies.reply()
    phase.report.update({"rcpts sent": sent, "replies": codes})


def fmt_mb(kb: object) -> str:
    return "%.1f MiB" % (kb / 1024.0) if isinstance(kb, int) else "-"


def render(reports: List[Dict[str, object]]) -> str:
    rows = ["| phase | server flags | load | start | peak (sampled / VmHWM) | before RSET | after RSET | end | time |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        if r["phase"] == "messages":
            load = "%s of %s messages over %s sessions (%s msg/s)" % (
                r.get("delivered"), r.get("messages"), r.get("sessions"), r.get("messages/s"))
        else:
            load = "%s RCPT in one transaction: %s" % (
                r.get("rcpts sent"), ", ".join("%s x %s" % (n, c) for c, n in sorted(r.get("replies", {}).items())))  # type: ignore[attr-defined]
        rows.append("| %s | `%s` | %s | %s | %s / %s | %s | %s | %s | %s s |" % (
            r["phase"], r["server flags"], load, fmt_mb(r.get("start_kb")),
            fmt_mb(r.get("peak_sampled_kb")), fmt_mb(r.get("peak_hwm_kb")),
            fmt_mb(r.get("before_rset_kb")), fmt_mb(r.get("after_rset_kb")), fmt_mb(r.get("end_kb")), r.get("seconds")))
    errors = ["%s: %s" % (r["phase"], r["error"]) for r in reports if r.get("error")]
    return "\n".join(rows + (["", "Errors:"] + errors if errors else []))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Server RSS under a long load (soak run).")
    p.add_argument("--phases", default=",".join(PHASES), help="comma list of: " + ",".join(PHASES))
    p.add_argument("--messages", type=int, default=100000, help="messages in the messages phase (100000)")
    p.add_argument("--sessions", type=int, default=20, help="sessions in the messages phase (20)")
    p.add_argument("--rcpts", type=int, default=1000000, help="RCPT commands per RCPT phase (1000000)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a phase may take at most (600)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = p.parse_args(argv)
    args.phases = [name for name in args.phases.split(",") if name]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error("unknown phase(s): %s" % ", ".join(sorted(unknown)))
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory(prefix="smtpd-soak-") as workdir:
        write_sink(workdir, SoakServer.sink_module, COMPAT_SINK)
        for name in args.phases:
            flags = ["--max-recipients", "none"] if name == "rcpt-unlimited" else []
            log("phase %s ..." % name)
            with Phase(name, workdir, flags) as phase:
                if name == "messages":
                    run_messages(phase, args.sessions, args.messages, args.timeout)
                else:
                    run_rcpts(phase, args.rcpts, args.timeout)
            reports.append(phase.report)
            log("  %s" % json.dumps(phase.report))
    print("Python %s, %s" % (sys.version.split()[0], time.strftime("%Y-%m-%d")))
    print(render(reports))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)
    return 1 if any(r.get("error") for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
