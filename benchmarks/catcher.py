#!/usr/bin/env python3
"""Load benchmark of the mail catcher's HTTP API (CatcherServer).

A catcher is started in a process of its own (this script with ``--serve``)
and filled with N generated messages (10,000; 500 with ``--quick``): plain
text, HTML with a text alternative, and messages with one or two
attachments, from a few hundred senders, in a fixed mix drawn from a seeded
random source.  They are put **directly into its store** (``capture()``,
the call ``process_message()`` makes for each message, with the same
parsing), not sent over SMTP: the fill then takes seconds and what is
measured is the API, not the SMTP path (``bench.py`` measures that).
``--smtp`` sends them over SMTP instead, one session, to see the whole path.

Then this process measures, with ``http.client`` and a new connection per
request (as the server speaks HTTP/1.0), the latency of:

* ``GET /api/v1/messages?limit=50`` at offsets 0, the middle and the end;
* ``GET /api/v1/search?query=...&limit=50`` for a few queries (a common
  word, a sender, a subject term, a term found nowhere: a full scan);
* ``GET /api/v1/message/{ID}`` of the newest message and ``GET /``.

Each is requested ``--requests`` times (200; 50 with ``--quick``) after one
warm-up request; the table gives p50, p99 and the maximum in ms, and the
goal, p99 < 100 ms for a page of 50, is checked for the list and search
rows.  The exit status is 0 whatever the figures (CI does not judge speed);
1 only if a request fails.  Standard library only; Python 3.9+.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
import smtplib
import subprocess
import sys
import threading
import time
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_MS = 100.0

WORDS = ("invoice order shipping account password reset welcome newsletter report weekly monthly meeting "
         "agenda project release build failure success payment receipt reminder update security alert "
         "delivery status customer support ticket survey feedback offer discount trial renewal").split()
DOMAINS = ("example.com", "example.net", "example.org", "shop.example", "bank.example", "news.example")


# -- the messages ------------------------------------------------------------------------
def _sentence(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def _paragraphs(rng: random.Random, lines: int) -> str:
    return "\r\n".join(_sentence(rng, 12) for _ in range(lines))


def _attachment(rng: random.Random, size: int) -> str:
    blob = bytes(rng.getrandbits(8) for _ in range(min(size, 96)))
    text = base64.b64encode(blob * max(1, size // len(blob))).decode("ascii")
    return "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


def make_message(rng: random.Random, number: int) -> Tuple[bytes, str, List[str]]:
    """Message *number*: its bytes, envelope sender and recipients."""
    sender = "user%d@%s" % (rng.randrange(300), rng.choice(DOMAINS))
    rcpt = "dev%d@%s" % (rng.randrange(50), rng.choice(DOMAINS))
    subject = "%s %s #%d" % (rng.choice(WORDS).capitalize(), _sentence(rng, 3), number)
    head = ("From: Sender %d <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: Wed, 02 Dec 2026 12:00:00 +0000\r\n"
            "Message-ID: <%d.bench@example.com>\r\nMIME-Version: 1.0\r\n" % (number, sender, rcpt, subject, number))
    kind = rng.random()
    text = _paragraphs(rng, rng.randrange(5, 40))
    if kind < 0.5:
        body = "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n"
    elif kind < 0.85:
        html = "<html><body><h1>%s</h1><p>%s</p></body></html>" % (subject, text.replace("\r\n", "</p>\r\n<p>"))
        body = ("Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n--alt\r\nContent-Type: text/plain; "
                "charset=utf-8\r\n\r\n%s\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n%s\r\n--alt--\r\n"
                % (text, html))
    else:
        parts = "".join(
            "--mix\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
            "filename=\"file%d.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n%s\r\n" % (i, _attachment(rng, rng.randrange(2000, 40000)))
            for i in range(rng.randrange(1, 3)))
        body = ("Content-Type: multipart/mixed; boundary=\"mix\"\r\n\r\n--mix\r\nContent-Type: text/plain; "
                "charset=utf-8\r\n\r\n%s\r\n%s--mix--\r\n" % (text, parts))
    return (head + body).encode("utf-8"), sender, [rcpt]


# -- the catcher's process (--serve) -----------------------------------------------------
def serve(count: int, seed: int, smtp: bool) -> None:
    """Start a catcher, fill it, print ``READY <web port> <fill seconds>``, serve."""
    sys.path.insert(0, ROOT)
    from smtpd_compat import CatcherServer

    server = CatcherServer(("127.0.0.1", 0), None, web=("127.0.0.1", 0), max_messages=0)
    rng = random.Random(seed)
    started = time.perf_counter()
    if smtp:  # the loop serves in a thread while this one sends
        loop = threading.Thread(target=server.serve_forever, daemon=True)
        loop.start()
        with smtplib.SMTP(*server.address, timeout=60) as client:
            for number in range(count):
                raw, sender, rcpts = make_message(rng, number)
                client.sendmail(sender, rcpts, raw)
    else:
        for number in range(count):
            raw, sender, rcpts = make_message(rng, number)
            server.capture(raw, {"MailFrom": sender, "RcptTos": rcpts, "Peer": "127.0.0.1:1", "TLS": None,
                                 "Auth": None, "MailOptions": [], "RcptOptions": []})
    print("READY %d %.2f" % (server.web_address[1], time.perf_counter() - started), flush=True)
    if smtp:
        loop.join()
    else:
        server.serve_forever()


# -- the measuring process -----------------------------------------------------------------
def start_catcher(count: int, seed: int, smtp: bool) -> Tuple[subprocess.Popen, int, float]:  # type: ignore[type-arg]
    command = [sys.executable, os.path.abspath(__file__), "--serve", "--messages", str(count), "--seed", str(seed)]
    if smtp:
        command.append("--smtp")
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline()  # the fill is bounded by the message count; the child dies on error
    if not line.startswith("READY "):
        child.kill()
        raise SystemExit("the catcher did not start (%r)" % line)
    _, port, seconds = line.split()
    return child, int(port), float(seconds)


def request(port: int, path: str) -> Tuple[float, int, bytes]:
    """One GET on a new connection: ``(seconds, status, body)``."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return time.perf_counter() - started, response.status, body


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def measure(port: int, path: str, times: int) -> Dict[str, Any]:
    _, status, body = request(port, path)  # warm-up
    if status != 200:
        raise SystemExit("GET %s: %d %r" % (path, status, body[:200]))
    seconds = []
    for _ in range(times):
        elapsed, status, _ = request(port, path)
        if status != 200:
            raise SystemExit("GET %s: %d" % (path, status))
        seconds.append(elapsed * 1000)
    found = None
    if path.startswith("/api/v1/messages?") or path.startswith("/api/v1/search"):
        data = json.loads(body)
        found = "%d of %d" % (data["count"], data["total"])
    return {"path": path, "n": times, "p50": percentile(seconds, 0.5), "p99": percentile(seconds, 0.99),
            "max": max(seconds), "found": found}


def paths(count: int, newest: Optional[str]) -> List[Tuple[str, bool]]:
    """The requests measured, and whether the goal applies to each."""
    search = ["invoice", "from:user7@", "subject:receipt", "payment alert", "zzznowhere"]
    chosen: List[Tuple[str, bool]] = [("/api/v1/messages?start=%d&limit=50" % start, True)
                                      for start in sorted({0, count // 2, max(0, count - 50)})]
    chosen += [("/api/v1/search?" + urllib.parse.urlencode({"query": q, "limit": 50}), True) for q in search]
    if newest:
        chosen.append(("/api/v1/message/%s" % newest, False))
    chosen.append(("/", False))
    return chosen


def report(rows: List[Dict[str, Any]], count: int, fill: float, smtp: bool) -> None:
    how = "over SMTP" if smtp else "into the store directly"
    print("\n%d messages, filled %s in %.1f s (%d/s)\n" % (count, how, fill, count / fill if fill else 0))
    print("| request | N | p50 ms | p99 ms | max ms | page |")
    print("|---|---:|---:|---:|---:|---|")
    for row in rows:
        print("| `%s` | %d | %.1f | %.1f | %.1f | %s |" % (row["path"], row["n"], row["p50"], row["p99"], row["max"],
                                                      row["found"] or ""))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 messages, 50 requests each (CI)")
    parser.add_argument("--messages", type=int, help="messages to fill (default 10000; 500 with --quick)")
    parser.add_argument("--requests", type=int, help="requests per row (default 200; 50 with --quick)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--smtp", action="store_true", help="fill over SMTP instead of the store")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    count = args.messages or (500 if args.quick else 10000)
    if args.serve:
        serve(count, args.seed, args.smtp)
        return 0
    times = args.requests or (50 if args.quick else 200)
    child, port, fill = start_catcher(count, args.seed, args.smtp)
    try:
        _, _, body = request(port, "/api/v1/messages?limit=1")
        newest = json.loads(body)["messages"][0]["ID"] if count else None
        rows = [dict(measure(port, path, times), goal=goal) for path, goal in paths(count, newest)]
    finally:
        child.terminate()
        child.wait(30)
    report(rows, count, fill, args.smtp)
    worst = max(row["p99"] for row in rows if row["goal"])
    print("\ngoal p99 < %.0f ms for a page of 50 (list and search): %s (worst p99 %.1f ms)"
          % (GOAL_MS, "met" if worst < GOAL_MS else "NOT met", worst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
