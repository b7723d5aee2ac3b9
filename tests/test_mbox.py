"""MailboxServer's mbox delivery when things go wrong: a failed or cut-off
append, locks held by others, locks left behind by a crash.

Disk-full and crash cases run in subprocesses with real resource limits and
real signals, each bounded by TIMEOUT.
"""

from __future__ import annotations

import json
import mailbox
import os
import selectors
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

from smtpd_compat import MailboxServer, servers

from conftest import REPO_ROOT, TIMEOUT

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


def run_child(script: str, path: Path) -> "subprocess.CompletedProcess[str]":
    """Run *script* with the mbox *path* as its argument; it must succeed."""
    result = subprocess.run([sys.executable, "-c", script, str(path)], env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=3 * TIMEOUT)
    assert result.returncode == 0, result.stderr
    return result


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
    result = run_child(DISK_FULL_CHILD, path)
    report = json.loads(result.stdout)
    assert report["big"] == 451  # the client keeps the message
    assert report["after_failure"] == report["before"]  # nothing of it stayed
    assert "File too large" in result.stderr  # logged with its reason
    assert subjects(path) == ["old", "small"]
    assert path.read_bytes().startswith(OLD_ENTRY + b"From a@example.com ")


# -- locks: respected while held, broken when their holder is gone ---------------------------------
def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


HOLDING_CHILD = r"""
import os, sys
from smtpd_compat import MailboxServer

def hold(fd):
    # Called with the entry written and the mbox locked: stay here until
    # the parent kills this process.
    print("HOLDING", flush=True)
    sys.stdin.read()

os.fsync = hold
server = MailboxServer(("127.0.0.1", 0), map={}, mbox=sys.argv[1])
server.process_message(("127.0.0.1", 1), "dying@example.com", ["r@example.com"], b"Subject: dying\n\nbody")
"""


def wait_for_line(proc: "subprocess.Popen[str]", expected: str) -> None:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(TIMEOUT), "the child did not get the lock in time"
    line = proc.stdout.readline()
    assert line == expected + "\n", line


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_lock_left_by_a_killed_delivery_does_not_stop_delivery(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    path.write_bytes(OLD_ENTRY)
    proc = subprocess.Popen([sys.executable, "-c", HOLDING_CHILD, str(path)], env=child_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True)
    try:
        wait_for_line(proc, "HOLDING")
        # While its holder lives, the lock holds: 451 for now.
        with pytest.raises(mailbox.ExternalClashError):
            deliver(path, "meanwhile")
        proc.kill()
        proc.wait(TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.stdout.close()
    assert lock_path(path).exists()  # what the crash left behind
    assert deliver(path, "new") is None  # before: 451 until someone removed it by hand
    assert not lock_path(path).exists()
    assert subjects(path) == ["old", "dying", "new"]


def test_a_dot_lock_naming_a_live_process_is_respected_until_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    path.write_bytes(OLD_ENTRY)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        lock_path(path).write_bytes(b"%d\n" % holder.pid)
        with pytest.raises(mailbox.ExternalClashError):
            deliver(path, "refused")
        assert lock_path(path).exists()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(TIMEOUT)
    assert deliver(path, "new") is None  # its PID no longer runs
    assert not lock_path(path).exists()
    assert subjects(path) == ["old", "new"]


def test_a_dot_lock_without_a_pid_is_stale_after_five_minutes(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    path.write_bytes(OLD_ENTRY)
    lock = lock_path(path)
    lock.write_bytes(b"")  # as mailbox.mbox.lock() makes it
    with pytest.raises(mailbox.ExternalClashError):
        deliver(path, "refused")
    assert lock.exists()
    old = os.stat(lock).st_mtime - 301
    os.utime(lock, (old, old))
    assert deliver(path, "new") is None
    assert not lock.exists()
    assert subjects(path) == ["old", "new"]


def test_a_dot_lock_with_our_own_pid_was_left_by_an_earlier_process(tmp_path: Path) -> None:
    # A server restarted in a container gets the same PID (often 1): the
    # lock its predecessor left names a process that does run, this one.
    path = tmp_path / "mbox"
    path.write_bytes(OLD_ENTRY)
    lock_path(path).write_bytes(b"%d\n" % os.getpid())
    assert deliver(path, "new") is None
    assert subjects(path) == ["old", "new"]


def test_two_deliveries_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    # fcntl locks do not exclude each other within a process: the second
    # delivery must not get in (nor, closing its descriptor, release the
    # first one's lock).
    from smtpd_compat import _mbox

    path = tmp_path / "mbox"
    path.write_bytes(OLD_ENTRY)
    with _mbox.locked(str(path)):
        with pytest.raises(mailbox.ExternalClashError):
            deliver(path, "refused")
    assert deliver(path, "new") is None
    assert subjects(path) == ["old", "new"]


NO_FCNTL_CHILD = r"""
import os, sys
sys.modules["fcntl"] = None  # as on Windows: "import fcntl" fails
import mailbox
import smtpd_compat
from smtpd_compat import _mbox, MailboxServer
assert _mbox.fcntl is None
path = sys.argv[1]
server = MailboxServer(("127.0.0.1", 0), map={}, mbox=path)
try:
    message = ("127.0.0.1", 1), "s@example.com", ["r@example.com"], b"Subject: new\n\nbody"
    # The dot-lock still works: a live holder is respected...
    with open(path + ".lock", "w") as lock:
        lock.write("%d\n" % os.getppid())
    try:
        server.process_message(*message)
    except mailbox.ExternalClashError:
        print("locked")
    os.remove(path + ".lock")
    # ...and without one the message is delivered.
    print(server.process_message(*message), os.path.exists(path + ".lock"))
finally:
    server.close()
"""


def test_without_fcntl_the_dot_lock_alone_is_used(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    path.write_bytes(OLD_ENTRY)
    result = run_child(NO_FCNTL_CHILD, path)
    assert result.stdout.splitlines() == ["locked", "None False"]
    assert subjects(path) == ["old", "new"]
