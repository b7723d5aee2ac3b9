"""MailboxServer's mbox delivery when things go wrong: a failed or cut-off
append, locks held by others, locks left behind by a crash.

Disk-full and crash cases run in subprocesses with real resource limits and
real signals, each bounded by TIMEOUT.
"""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from conftest import REPO_ROOT, TIMEOUT
from smtpd_compat import MailboxServer, servers

OLD_ENTRY = servers.mbox_entry(b"From old@example.com Sat Nov 28 23:59:00 2026", b"Subject: old\n\nold body\n")


def deliver(path: Path, subject: str) -> Any:
    server = MailboxServer(("127.0.0.1", 0), map={}, mbox=path)
    try:
        return server.process_message(("127.0.0.1", 1), "s@example.com", ["r@example.com"],
                                      b"Subject: %s\n\nbody" % subject.encode())
    finally:
        server.close()


def subjects(path: Path) -> List[str]:
    box = mailbox.mbox(str(path), create=False)
    try:
        return [box.get_message(key)["Subject"] for key in box.keys()]
    finally:
        box.close()


def child_env() -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONDONTWRITEBYTECODE="1")


# -- entries stay separate ---------------------------------------------------------------------
@pytest.mark.parametrize("tail", [b"partial", b"partial\n", b"Subject: cut\n\nhalf a li"])
def test_an_entry_left_unfinished_does_not_swallow_the_next(tmp_path: Path, tail: bytes) -> None:
    # A writer killed mid-entry leaves no line end: the next "From " line
    # was glued to it, and readers saw the new message as part of the old.
    path = tmp_path / "mbox"
    path.write_bytes(OLD_ENTRY + b"From cut@example.com Sat Nov 28 23:59:30 2026\n" + tail)
    assert deliver(path, "new") is None
    names = subjects(path)
    assert len(names) == 3 and names[-1] == "new"
    data = path.read_bytes()
    # The new entry starts after a blank line, and nothing before it changed.
    start = data.index(b"From s@example.com ")
    assert data[start - 2 : start] == b"\n\n"
    assert data[:start].rstrip(b"\n") == (OLD_ENTRY + b"From cut@example.com Sat Nov 28 23:59:30 2026\n" + tail).rstrip(b"\n")


def test_a_complete_mbox_gets_no_extra_line(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    path.write_bytes(OLD_ENTRY)
    assert deliver(path, "new") is None
    assert path.read_bytes().startswith(OLD_ENTRY + b"From s@example.com ")
    assert subjects(path) == ["old", "new"]


# -- a failed append is undone ---------------------------------------------------------------
DISK_FULL_CHILD = r"""
import json, os, resource, smtplib, sys
from smtpd_compat import Controller, MailboxServer

path = sys.argv[1]
before = os.path.getsize(path)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
result = {"before": before}
with Controller(MailboxServer, mbox=path) as controller:
    with smtplib.SMTP(*controller.address, timeout=10) as client:
        # Room for part of the next entry only: the write fails half-way.
        resource.setrlimit(resource.RLIMIT_FSIZE, (before + 500, hard))
        try:
            client.sendmail("a@example.com", ["b@example.com"],
                            b"Subject: too big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 100)
            result["big"] = 250
        except smtplib.SMTPDataError as err:
            result["big"] = err.smtp_code
        result["after_failure"] = os.path.getsize(path)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: small\r\n\r\nfits\r\n")
        result["small"] = 250
print(json.dumps(result))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE behaviour is Linux's")
def test_a_write_that_fails_part_way_is_cut_back(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    path.write_bytes(OLD_ENTRY)
    result = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(path)], env=child_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            timeout=3 * TIMEOUT)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["big"] == 451  # the client keeps the message
    assert report["after_failure"] == report["before"]  # nothing of it stayed
    assert "File too large" in result.stderr  # logged with its reason
    assert subjects(path) == ["old", "small"]
    assert path.read_bytes().startswith(OLD_ENTRY + b"From a@example.com ")
