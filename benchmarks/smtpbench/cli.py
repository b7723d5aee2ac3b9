"""Command line: choose loads and servers, run every pair, print the report.

Exit status: 0 when smtpd_compat served every selected load (missing peers
are fine), 1 when it failed to start or failed a load, 2 on bad arguments.
"""

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from .common import KIB, Context, find_sbin, log, set_verbose
from .loads import LOAD_ORDER, Load, make_loads
from .measure import Cell, RunResult, run_one
from .procfs import RLIM_INFINITY, raise_nofile_limit
from .report import Results, fmt_num, render, to_json
from .servers import DEFAULT_SERVERS, SERVER_ALIASES, SERVER_CLASSES, Server


class UsageError(Exception):
    """A bad argument found after parsing: logged, exit status 2."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Benchmark smtpd_compat against CPython smtpd, aiosmtpd and smtp-sink.")
    p.add_argument("--quick", action="store_true", help="tiny counts (smoke test, < 60 s)")
    p.add_argument("--loads", default=",".join(LOAD_ORDER), help="comma list of: " + ",".join(LOAD_ORDER))
    p.add_argument("--servers", default=DEFAULT_SERVERS,
                   help="comma list of: compat,cpython,aiosmtpd,smtp-sink,floor (default: all but floor)")
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
    p.add_argument("--compat-python", help="interpreter for smtpd_compat and floor (default: this one)")
    p.add_argument("--sink-user", default="nobody", help="user smtp-sink switches to when run as root")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    return args


def load_names(spec: str, all_loads: Dict[str, Load]) -> List[str]:
    names = [x.strip() for x in spec.split(",") if x.strip()]
    bad = [x for x in names if x not in all_loads]
    if bad:
        raise UsageError("unknown load(s): %s (choose from %s)" % (", ".join(bad), ", ".join(LOAD_ORDER)))
    return names


def server_keys(spec: str) -> List[str]:
    keys: List[str] = []
    for x in spec.split(","):
        x = x.strip().lower()
        if not x:
            continue
        if x not in SERVER_ALIASES:
            raise UsageError("unknown server %r (choose from compat, cpython, aiosmtpd, smtp-sink, floor)" % x)
        if SERVER_ALIASES[x] not in keys:
            keys.append(SERVER_ALIASES[x])
    return keys


def fit_hold(hold: Load, soft: int, notes: List[str]) -> None:
    """Shrink the hold load to what RLIMIT_NOFILE lets the server accept."""
    if not soft or soft == RLIM_INFINITY:
        return
    room = soft - 100  # the server's own files, and some slack
    if hold.sessions > room:
        notes.append("hold: RLIMIT_NOFILE is %d, so %d connections instead of %d" % (soft, room, hold.sessions))
        hold.sessions = hold.messages = max(1, room)


def choose_loadgen(choice: str) -> Tuple[str, Optional[str]]:
    """(generator name, smtp-source path) for --loadgen."""
    smtp_source = find_sbin("smtp-source")
    if choice == "smtp-source" and not smtp_source:
        raise UsageError("--loadgen smtp-source: smtp-source is not installed")
    return ("smtp-source" if (choice != "python" and smtp_source) else "python"), smtp_source


def prepare_servers(servers: List[Server]) -> Dict[str, str]:
    """Check each server; the reasons of those that are skipped, by key."""
    skipped: Dict[str, str] = {}
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
    return skipped


def log_run(ld: Load, s: Server, rep: int, r: RunResult) -> None:
    if not r.ok:
        log("[%s] %s run %d: FAILED: %s" % (ld.name, s.column, rep + 1, r.error))
        return
    extra = ""
    if "peak_ratio" in r.metrics:
        extra = ", peak/size %.2f" % float(r.metrics["peak_ratio"])
    if "per_conn_bytes" in r.metrics:
        extra = ", %.1f KiB/conn" % (float(r.metrics["per_conn_bytes"]) / KIB)
    log("[%s] %s run %d: %s msgs/s in %.2f s%s" % (
        ld.name, s.column, rep + 1, fmt_num(r.msgs_per_s), r.elapsed, extra))


def run_matrix(loads: List[Load], active: List[Server], ctx: Context) -> Results:
    """Every load against every server, --repeat times; servers alternate
    within a repeat so a slow spell on the machine hits them all alike."""
    results: Results = {}
    for ld in loads:
        results[ld.name] = {s.key: Cell(runs=[]) for s in active}
        for rep in range(ctx.args.repeat):
            for s in active:
                r = run_one(s, ld, ctx, rep)
                results[ld.name][s.key].runs.append(r)
                log_run(ld, s, rep, r)
    return results


OVERFLOW_NOTE = (
    "listen-queue overflows: the server's accept queue (listen backlog) was full, so the "
    "kernel dropped handshakes; clients then stall on SYN/SYN-ACK retransmits (1 s, 3 s, 7 s...) "
    "or, when SYN cookies were used, wait for a greeting that never comes (the built-in "
    "generator reconnects after --greeting-timeout). Counted from /proc/net/netstat.")


def stall_notes(results: Results, loads: List[Load], active: List[Server]) -> List[str]:
    notes = []
    for ld in loads:
        for s in active:
            runs = results[ld.name][s.key].runs
            ovf = sum(int(r.metrics.get("listen_overflows", 0)) for r in runs)
            retries = sum(int(r.metrics.get("greeting_retries", 0)) for r in runs)
            if ovf or retries:
                notes.append("%s / %s: %d listen-queue overflow(s)%s" % (
                    ld.name, s.column, ovf, (", %d connection(s) retried for want of a greeting" % retries)
                    if retries else ""))
    return notes + [OVERFLOW_NOTE] if notes else []


def run_notes(results: Results, loads: List[Load], active: List[Server], ctx: Context) -> List[str]:
    """What a reader needs to judge the figures: stalls, generator, mode."""
    notes = stall_notes(results, loads, active)
    if ctx.loadgen == "python" and any(ld.kind == "throughput" for ld in loads):
        notes.append("throughput measured with the built-in Python load generator, which may itself be "
                     "the bottleneck for the fastest servers")
    if ctx.args.quick:
        notes.append("--quick: runs last milliseconds, so these figures are a smoke test, not a measurement")
    return notes


def compat_status(keys: List[str], skipped: Dict[str, str], loads: List[Load], results: Results) -> int:
    if "compat" not in keys:
        return 0
    if "compat" in skipped:
        log("smtpd_compat could not be served: %s" % skipped["compat"])
        return 1
    bad_loads = [ld.name for ld in loads if not results[ld.name]["compat"].ok]
    if bad_loads:
        log("smtpd_compat failed load(s): %s" % ", ".join(bad_loads))
        return 1
    return 0


def make_context(args: argparse.Namespace, max_conns: int) -> Context:
    loadgen, smtp_source = choose_loadgen(args.loadgen)
    if args.stall_timeout is None:
        args.stall_timeout = 8.0 if args.quick else 30.0
    return Context(args=args, workdir=tempfile.mkdtemp(prefix="smtpbench-"), loadgen=loadgen,
                   smtp_source=smtp_source, run_timeout=args.timeout or (15.0 if args.quick else 120.0),
                   max_conns=max_conns)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    set_verbose(args.verbose)
    t_start = time.monotonic()
    all_loads = make_loads(args.quick, args.hold_conns)
    notes: List[str] = []
    try:
        names, keys = load_names(args.loads, all_loads), server_keys(args.servers)
        soft, hard = raise_nofile_limit()
        if "hold" in names:
            fit_hold(all_loads["hold"], soft, notes)
        loads = [all_loads[n] for n in LOAD_ORDER if n in names]
        ctx = make_context(args, all_loads["hold"].sessions if "hold" in names else 0)
    except UsageError as e:
        log(str(e))
        return 2
    try:
        servers = [cls(ctx) for cls in SERVER_CLASSES if cls.key in keys]
        log("RLIMIT_NOFILE %s/%s; load generator: %s; workdir %s" % (soft, hard, ctx.loadgen, ctx.workdir))
        skipped = prepare_servers(servers)
        if not os.path.exists("/proc/self/status"):
            notes.append("no /proc: memory figures unavailable")
        active = [s for s in servers if s.key not in skipped]
        results = run_matrix(loads, active, ctx)
        notes += run_notes(results, loads, active, ctx)
        notes.append("total benchmark time %.1f s" % (time.monotonic() - t_start))
        print(render(results, servers, skipped, loads, ctx, notes))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(to_json(results, servers, skipped, loads, ctx, notes), f, indent=2)
            log("wrote %s" % args.json)
    finally:
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    return compat_status(keys, skipped, loads, results)
