"""What the kernel says about a server process (Linux /proc) and our fd limit.

Every reader degrades to None elsewhere, so a run on another system still
reports throughput.
"""

import os
import threading
from typing import Dict, List, Optional, Tuple

try:
    import resource
except ImportError:  # pragma: no cover - non-POSIX
    resource = None  # type: ignore[assignment]

RLIM_INFINITY = getattr(resource, "RLIM_INFINITY", -1)


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


def child_pids(pid: int) -> List[int]:
    """The live children of *pid* (the workers of ``--workers N``)."""
    found: List[int] = []
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return found
    for task in tasks:
        try:
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                found.extend(int(p) for p in f.read().split())
        except (OSError, ValueError):
            pass
    return found


def tree_cpu_seconds(pid: int) -> Dict[int, float]:
    """CPU seconds of *pid* and of each of its live children, by pid (a
    child's CPU is not in its parent's figure until the parent reaps it)."""
    found: Dict[int, float] = {}
    for p in [pid] + child_pids(pid):
        cpu = proc_cpu_seconds(p)
        if cpu is not None:
            found[p] = cpu
    return found


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
