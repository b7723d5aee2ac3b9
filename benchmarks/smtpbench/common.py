"""Constants, logging and the run context every module shares."""

import argparse
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from typing import Optional

# benchmarks/, not this package: the aiosmtpd virtualenv is cached there.
BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(BENCH_DIR)
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

_verbose = False


def set_verbose(on: bool) -> None:
    global _verbose
    _verbose = on


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def vlog(msg: str) -> None:
    if _verbose:
        log("    " + msg)


@dataclass
class Context:
    """What one benchmark run decided once and every run reads."""

    args: argparse.Namespace
    workdir: str
    loadgen: str
    smtp_source: Optional[str]
    run_timeout: float
    max_conns: int


def find_sbin(name: str) -> Optional[str]:
    # Postfix installs its tools in sbin, which a non-root PATH often lacks.
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/usr/local/sbin:/sbin"
    return shutil.which(name, path=path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


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
