"""The loads, and the message every load generator sends."""

from dataclasses import dataclass
from typing import Dict, List, Optional

from .common import MAIL_FROM, MIB, RCPT_TO


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
    """The loads of a full run, or of --quick (same shapes, tiny counts)."""
    q = quick
    hold = hold_conns or (200 if q else 10000)
    loads: List[Load] = [
        Load("one", "throughput", 1, 50 if q else 2000, 1000),
        Load("persistent20", "throughput", 20, 100 if q else 10000, 1000),
        Load("newconn20", "throughput", 20, 50 if q else 2000, 1000, persistent=False),
        Load("big", "throughput", 4, 8 if q else 200, 1000000),
        Load("mem32", "mem", 1, 1, (4 if q else 32) * MIB),
        Load("hold", "hold", hold, hold, 1000, persistent=False),
    ]
    return {ld.name: ld for ld in loads}


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
