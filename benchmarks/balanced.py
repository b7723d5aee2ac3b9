#!/usr/bin/env python3
"""Messages/s through HAProxy to one and to two smtpd_compat servers.

The deployment of docs/deployment.md, measured: HAProxy (TCP mode,
roundrobin, send-proxy, smtpchk checks) in front of N ``python -m
smtpd_compat --proxy-protocol`` processes whose server class discards
every message, loaded by Postfix ``smtp-source`` (20 sessions, 1 KB
messages, persistent connections) through HAProxy.  Rows:

  direct      smtp-source straight to one server, no proxy (the baseline)
  haproxy-1   through HAProxy to one server
  haproxy-2   through HAProxy to two servers

Two servers help only where there are cores to spare: on a machine with two
cores, HAProxy, smtp-source and the servers share them, so haproxy-2 mostly
shows what the extra hop costs.  Loopback only; every run is bounded by
--timeout.  Needs /usr/sbin/haproxy and /usr/sbin/smtp-source (Debian
packages haproxy and postfix); Linux.

    python benchmarks/balanced.py                  # 20000 messages per row
    python benchmarks/balanced.py --messages 2000  # a quick look
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAPROXY = "/usr/sbin/haproxy"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SINK = (
    "from smtpd_compat.smtpd import SMTPServer\n\n\n"
    "class Sink(SMTPServer):\n"
    "    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):\n"
    "        return None\n"
)
CONFIG = """\
global
    maxconn 1024
defaults
    mode tcp
    timeout connect 1s
    timeout client 10m
    timeout server 10m
frontend smtp
    bind 127.0.0.1:{front}
    default_backend mx
backend mx
    balance roundrobin
    option smtpchk EHLO bench.example
    default-server send-proxy check check-send-proxy inter 2s fall 2 rise 2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: "subprocess.Popen[bytes]", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit("a process exited at start-up: %r" % proc.args)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("nothing listens on port %d" % port) from None
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(workdir: str, port: int, proxy: bool) -> "subprocess.Popen[bytes]":
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([workdir, REPO]))
    argv = [sys.executable, "-m", "smtpd_compat", "-n", "-c", "lb_sink.Sink", "-s", "0"]
    argv += ["--proxy-protocol"] if proxy else []
    # With the PROXY protocol the readiness probe below sends no header: the
    # server drops it after proxy_timeout, which does not disturb the run.
    proc = subprocess.Popen(argv + ["127.0.0.1:%d" % port], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # (cwd: "-m" looks there first)
    wait_listening(port, proc)
    return proc


def run_row(name: str, servers: int, messages: int, timeout: float, workdir: str) -> str:
    ports = [free_port() for _ in range(servers)]
    procs = [start_server(workdir, port, proxy=name != "direct") for port in ports]
    target = ports[0]
    if name != "direct":
        target = free_port()
        config = os.path.join(workdir, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(CONFIG.format(front=target))
            for i, port in enumerate(ports):
                f.write("    server s%d 127.0.0.1:%d\n" % (i, port))
        procs.append(subprocess.Popen([HAPROXY, "-db", "-f", config], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        wait_listening(target, procs[-1])
    try:
        before = [cpu_seconds(p.pid) for p in procs]
        t0 = time.monotonic()
        subprocess.run([SMTP_SOURCE, "-s", "20", "-m", str(messages), "-l", "1000", "-d",
                        "127.0.0.1:%d" % target], check=True, timeout=timeout, stdout=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        cpu = [cpu_seconds(p.pid) - b for p, b in zip(procs, before)]
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=35)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    servers_cpu = sum(cpu[:servers]) * 1e6 / messages
    proxy_cpu = "%.0f" % (cpu[servers] * 1e6 / messages) if name != "direct" else "-"
    return "| %s | %d | %d | %.0f | %.0f | %s |" % (name, servers, messages, messages / wall, servers_cpu, proxy_cpu)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages per row (default 20000)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per row at most (default 300)")
    args = parser.parse_args(argv)
    for program in (HAPROXY, SMTP_SOURCE):
        if not os.path.exists(program):
            print("%s is not installed" % program, file=sys.stderr)
            return 2
    rows = ["| row | servers | messages | messages/s | servers' CPU µs/message | HAProxy CPU µs/message |",
            "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as workdir:
        with open(os.path.join(workdir, "lb_sink.py"), "w") as f:
            f.write(SINK)
        for name, servers in (("direct", 1), ("haproxy-1", 1), ("haproxy-2", 2)):
            rows.append(run_row(name, servers, args.messages, args.timeout, workdir))
            print(rows[-1], file=sys.stderr)
    print("%d cores; Python %s" % (os.cpu_count() or 0, sys.version.split()[0]))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
