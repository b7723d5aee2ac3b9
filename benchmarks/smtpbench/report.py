"""The markdown report and the JSON dump of a finished run.

Servers are columns, loads are rows; a skipped server is listed in the
header and gets no column.
"""

import os
import platform
import statistics
import time
from typing import Any, Dict, List, Optional, Tuple

from .common import KIB, MIB, Context
from .loads import Load, human_size
from .measure import Cell
from .servers import Server

Results = Dict[str, Dict[str, Cell]]  # load name -> server key -> cell


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


Row = Tuple[str, List[str]]  # first column, then one cell per server (or peer)


class Report:
    """Builds the markdown, one section per method, in report order."""

    def __init__(self, results: Results, servers: List[Server], skipped: Dict[str, str],
                 loads: List[Load], ctx: Context, notes: List[str]) -> None:
        self.results = results
        self.servers = servers
        self.skipped = skipped
        self.ctx = ctx
        self.notes = notes
        self.loads = loads
        self.cols = [s for s in servers if s.key not in skipped]
        self.tp_loads = [ld for ld in loads if ld.kind in ("throughput", "hold")]
        self.mem_loads = [ld for ld in loads if ld.kind in ("mem", "hold")]
        self.out: List[str] = []

    def cell(self, load: str, server: str) -> Optional[Cell]:
        return self.results.get(load, {}).get(server)

    def cells(self, load: str, key: str, digits: int = 0, scale: float = 1.0) -> List[str]:
        """One load's *key* across the server columns."""
        return [cell_text(self.cell(load, s.key), key, digits, scale) for s in self.cols]

    def w(self, line: str) -> None:
        self.out.append(line)

    def section(self, title: str, first: str, names: List[str], rows: List[Row], intro: str = "") -> None:
        """A titled table; nothing at all when it has no rows."""
        if not rows:
            return
        self.out += ["## " + title, ""] + ([intro, ""] if intro else [])
        self.w("| %s | %s |" % (first, " | ".join(names)))
        self.w("|---|" + "---:|" * len(names))
        self.out += ["| %s | %s |" % (head, " | ".join(cells)) for head, cells in rows]
        self.w("")

    def render(self) -> str:
        self.header()
        if self.cols:
            names = [s.column for s in self.cols]
            self.section("Throughput (messages/s, higher is better)", "load", names, [
                ("%s (%s)" % (ld.name, ld.describe()), self.cells(ld.name, "msgs_per_s")) for ld in self.tp_loads])
            self.section("Server CPU time per message (µs, lower is better)", "load", names, self.cpu_rows())
            self.section("Worker processes: the busiest worker's share of the workers' CPU (%; 50 is an even "
                         "split of 2)", "load", names, self.worker_rows())
            self.section("Memory (lower is better)", "metric", names,
                         [row for ld in self.mem_loads for row in self.memory_rows(ld)])
            self.ratios()
        self.failures()
        return "\n".join(self.out)

    def header(self) -> None:
        self.w("# SMTP server benchmark")
        self.w("")
        self.w("- machine: %s, %d CPUs, Python %s (runner)"
               % (platform.platform(), os.cpu_count() or 0, platform.python_version()))
        self.w("- load generator: %s (mem32 and hold: built-in); repeat: %d (median); %s mode"
               % (self.ctx.loadgen, self.ctx.args.repeat, "quick" if self.ctx.args.quick else "full"))
        for s in self.servers:
            if s.key in self.skipped:
                self.w("- %s: **skipped**: %s" % (s.column, self.skipped[s.key]))
            else:
                self.w("- %s: %s" % (s.column, s.label))
        self.w("")

    def cpu_rows(self) -> List[Row]:
        rows = [(ld.name, self.cells(ld.name, "cpu_us_per_msg")) for ld in self.tp_loads]
        # Only when some run used enough CPU to be measured (measure.py).
        return rows if any(t[0].isdigit() for _, row in rows for t in row) else []

    def worker_rows(self) -> List[Row]:
        rows = [(ld.name, self.cells(ld.name, "busiest_worker_pct", 1)) for ld in self.tp_loads]
        # Only when a server with workers (compat-w2) was measured.
        return rows if any(t[0].isdigit() for _, row in rows for t in row) else []

    def memory_rows(self, ld: Load) -> List[Row]:
        if ld.kind == "mem":
            return [
                ("mem32: idle RSS (MiB)", self.cells(ld.name, "idle_rss_kb", 1, 1 / KIB)),
                ("mem32: peak RSS above idle (MiB) for %s" % human_size(ld.size),
                 self.cells(ld.name, "peak_delta_bytes", 1, 1 / MIB)),
                ("mem32: peak above idle / message size", self.cells(ld.name, "peak_ratio", 2)),
                ("mem32: still held after the message (MiB)", self.cells(ld.name, "retained_kb", 1, 1 / KIB)),
            ]
        held = []
        for s in self.cols:
            c = self.cell(ld.name, s.key)
            held.append(fmt_num(max((float(r.metrics.get("held", 0)) for r in c.runs), default=0)) if c else "n/a")
        return [("hold: connections held", held),
                ("hold: RSS per held connection (KiB)", self.cells(ld.name, "per_conn_bytes", 1, 1 / KIB))]

    def ratios(self) -> None:
        peers = [s for s in self.cols if s.key != "compat"]
        if not peers or not any(s.key == "compat" for s in self.cols):
            return

        def ratio_row(title: str, load: str, key: str) -> Row:
            mine = self.cell(load, "compat")
            a = mine.median(key) if mine else None
            vals = []
            for p in peers:
                c = self.cell(load, p.key)
                vals.append(fmt_ratio(a, c.median(key) if c else None))
            return title, vals

        rows = [ratio_row("%s msgs/s" % ld.name, ld.name, "msgs_per_s") for ld in self.tp_loads]
        for ld in self.mem_loads:
            if ld.kind == "mem":
                rows.append(ratio_row("mem32 peak RSS above idle", ld.name, "peak_delta_bytes"))
            else:
                rows.append(ratio_row("hold RSS per connection", ld.name, "per_conn_bytes"))
        self.section("smtpd_compat relative to each peer (same run)", "metric", ["vs " + s.column for s in peers],
                     rows, intro="Throughput rows: smtpd_compat msgs/s ÷ peer msgs/s (>1: smtpd_compat faster). "
                     "Memory rows: smtpd_compat ÷ peer (<1: smtpd_compat uses less).")

    def failures(self) -> None:
        failures = []
        for ld in self.loads:
            for s in self.cols:
                c = self.cell(ld.name, s.key)
                if c is not None and not c.ok:
                    failures.append("- %s / %s: %s" % (ld.name, s.column, c.first_error()))
        if failures or self.notes:
            self.w("## Failures and notes")
            self.w("")
            self.out.extend(failures)
            self.out.extend("- " + n for n in self.notes)
            self.w("")


def render(results: Results, servers: List[Server], skipped: Dict[str, str],
           loads: List[Load], ctx: Context, notes: List[str]) -> str:
    return Report(results, servers, skipped, loads, ctx, notes).render()


def _cell_json(cell: Cell) -> Dict[str, Any]:
    return {
        "ok": cell.ok,
        "msgs_per_s_median": cell.median("msgs_per_s"),
        "runs": [
            {"ok": r.ok, "error": r.error, "msgs_per_s": r.msgs_per_s, "delivered": r.delivered,
             "expected": r.expected, "elapsed_s": round(r.elapsed, 4), **r.metrics}
            for r in cell.runs
        ],
    }


def to_json(results: Results, servers: List[Server], skipped: Dict[str, str],
            loads: List[Load], ctx: Context, notes: List[str]) -> Dict[str, Any]:
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
        "results": {lname: {skey: _cell_json(cell) for skey, cell in per.items()}
                    for lname, per in results.items()},
        "notes": notes,
    }
