"""One load against one fresh server -> RunResult; a Cell holds the repeats.

Rates come from the load generator (messages delivered / wall time); CPU and
memory come from the server's /proc entries, read before and after.
"""

import statistics
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

from .common import KIB, Context
from .launch import RunningServer, ServerStartError, start_server
from .loadgen import GenResult, PyLoadGen, run_smtp_source
from .loads import Load
from .procfs import RssSampler, listen_overflows, proc_status_kb, reset_peak_rss, tree_cpu_seconds
from .servers import Server

Metric = Union[float, str]  # every figure is a number but peak_method


@dataclass
class RunResult:
    ok: bool
    error: Optional[str] = None
    msgs_per_s: Optional[float] = None
    delivered: int = 0
    expected: int = 0
    elapsed: float = 0.0
    metrics: Dict[str, Metric] = field(default_factory=dict)


@dataclass
class Cell:
    """The runs of one (load, server) pair; figures are medians of the good ones."""

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


class Baseline:
    """Server CPU and the kernel's listen-overflow count before a load."""

    def __init__(self, rs: RunningServer) -> None:
        self.rs = rs
        self.tree = tree_cpu_seconds(rs.pid)  # the server and its workers (--workers N)
        self.cpu = sum(self.tree.values()) if self.tree else None
        self.overflows = listen_overflows()

    def metrics(self, delivered: int) -> Dict[str, Metric]:
        m: Dict[str, Metric] = {}
        ovf = listen_overflows()
        if self.overflows is not None and ovf is not None:
            m["listen_overflows"] = ovf - self.overflows
        tree = tree_cpu_seconds(self.rs.pid)
        # Processes present before and after (a worker restarted in between is left out).
        used = {p: tree[p] - self.tree[p] for p in tree if p in self.tree}
        cpu = sum(used.values()) if used else None
        if self.cpu is not None and cpu is not None:
            m["server_cpu_s"] = round(cpu, 3)
            if delivered and cpu >= 0.2:  # /proc counts in 10 ms ticks
                m["cpu_us_per_msg"] = round(cpu * 1e6 / delivered, 1)
        workers = [used[p] for p in used if p != self.rs.pid]
        if len(workers) > 1 and sum(workers) >= 0.2:
            # How evenly the kernel spread the connections: the busiest
            # worker's share of the workers' CPU (50% is even for two).
            m["workers"] = len(workers)
            m["busiest_worker_pct"] = round(100 * max(workers) / sum(workers), 1)
        hwm = proc_status_kb(self.rs.pid, "VmHWM")
        if hwm is not None:
            m["server_hwm_kb"] = hwm
        return m


def finish_run(rs: RunningServer, gen: GenResult, before: Baseline) -> RunResult:
    r = RunResult(ok=False, delivered=gen.delivered, expected=gen.expected, elapsed=gen.elapsed)
    r.metrics.update(before.metrics(gen.delivered))
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


def run_throughput(rs: RunningServer, load: Load, ctx: Context) -> RunResult:
    before = Baseline(rs)
    if ctx.loadgen == "smtp-source" and ctx.smtp_source:
        gen = run_smtp_source(ctx.smtp_source, rs.port, load, ctx.run_timeout, ctx.args.stall_timeout)
    else:
        gen = PyLoadGen(rs.port, load.sessions, load.messages, load.size, load.persistent, ctx.run_timeout,
                        greeting_timeout=ctx.args.greeting_timeout, stall_timeout=ctx.args.stall_timeout).run()
    return finish_run(rs, gen, before)


def run_mem(rs: RunningServer, load: Load, ctx: Context) -> RunResult:
    time.sleep(0.2)  # let the server settle after the readiness probe
    idle = proc_status_kb(rs.pid, "VmRSS")
    if idle is None:
        return RunResult(ok=False, error="cannot read /proc/%d/status" % rs.pid)
    exact = reset_peak_rss(rs.pid)
    sampler = None
    if not exact:
        sampler = RssSampler(rs.pid)
        sampler.start()
    before = Baseline(rs)
    gen = PyLoadGen(rs.port, 1, 1, load.size, True, ctx.run_timeout,
                    greeting_timeout=ctx.args.greeting_timeout, stall_timeout=ctx.args.stall_timeout).run()
    if sampler is None:
        peak = proc_status_kb(rs.pid, "VmHWM") or 0
    else:
        peak = sampler.stop()
    time.sleep(0.3)  # the client has quit; give the server time to drop the session
    after = proc_status_kb(rs.pid, "VmRSS") or 0
    r = finish_run(rs, gen, before)
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


def run_hold(rs: RunningServer, load: Load, ctx: Context) -> RunResult:
    time.sleep(0.2)
    idle = proc_status_kb(rs.pid, "VmRSS")
    held_rss: Dict[str, int] = {}

    def on_held(n: int) -> None:
        time.sleep(0.5)  # let the server finish per-connection setup
        held_rss["rss"] = proc_status_kb(rs.pid, "VmRSS") or 0
        held_rss["n"] = n

    before = Baseline(rs)
    gen = PyLoadGen(rs.port, load.sessions, load.messages, load.size, False, ctx.run_timeout,
                    hold=True, on_held=on_held, max_connecting=ctx.args.hold_connect_parallel,
                    greeting_timeout=ctx.args.greeting_timeout, stall_timeout=ctx.args.stall_timeout).run()
    r = finish_run(rs, gen, before)
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


def run_one(server: Server, load: Load, ctx: Context, rep: int) -> RunResult:
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

