"""``python -m smtpd_compat hash-password``: the --auth-file line maker.

Run as a real subprocess: with the password on a pipe, and on a terminal
(a pseudo-terminal made the child's controlling terminal, as a user's
shell would have it) to check the prompt and that nothing is echoed.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from typing import List, Optional

import pytest
from test_cli import env

from smtpd_compat import _auth
from smtpd_compat._auth import PasswordFile

from conftest import REPO_ROOT, TIMEOUT


def hash_password(*args: str, stdin: str = "", module: str = "smtpd_compat",
                  first: Optional[List[str]] = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", module, *(["hash-password"] if first is None else first), *args]
    return subprocess.run(argv, input=stdin, cwd=str(REPO_ROOT), env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)


def fast(*args: str) -> List[str]:
    # The default 600,000 rounds cost a noticeable fraction of a second per
    # hash on a shared CI machine; the count itself is tested once below.
    return ["--iterations", "1000", *args]


def test_prints_a_line_that_verifies() -> None:
    result = hash_password(*fast("alice"), stdin="correct horse\n")
    assert result.returncode == 0 and result.stderr == ""
    user, _, hashed = result.stdout.rstrip("\n").partition(":")
    assert user == "alice" and hashed.startswith("pbkdf2_sha256$1000$")
    passwords = PasswordFile({user: hashed})
    assert passwords.check("alice", "correct horse")
    assert not passwords.check("alice", "correct horse\n")


def test_without_a_user_prints_the_hash_alone() -> None:
    result = hash_password(*fast(), stdin="pw\n")
    assert result.returncode == 0
    assert result.stdout.startswith("pbkdf2_sha256$1000$") and result.stdout.count("$") == 3


def test_default_parameters_follow_owasp() -> None:
    assert _auth.HASH_ITERATIONS >= 600_000
    result = hash_password("bob", stdin="pw\n")
    assert result.stdout.startswith("bob:pbkdf2_sha256$%d$" % _auth.HASH_ITERATIONS)


def test_hashes_made_with_the_old_count_keep_verifying() -> None:
    # Made by the previous release's hash_password("s3cret", salt=bytes(16)),
    # whose default was 100,000 rounds.
    old = "pbkdf2_sha256$100000$AAAAAAAAAAAAAAAAAAAAAA==$SmLiCTmAvY0e0Rtkx+AR4JGMjIQcGSqPKLfT3SoDTuA="
    assert PasswordFile({"u": old}).check("u", "s3cret")
    assert not PasswordFile({"u": old}).check("u", "s3creT")


def test_help_is_help_not_a_user_name() -> None:
    for flag in ("--help", "-h"):
        result = hash_password(flag)
        assert result.returncode == 0 and result.stdout.startswith("usage: python -m smtpd_compat hash-password")
        assert "pbkdf2" in result.stdout


@pytest.mark.parametrize("stdin", ["", "\n"], ids=["end-of-input", "empty-line"])
def test_no_password_is_one_line_no_traceback(stdin: str) -> None:
    result = hash_password(*fast("alice"), stdin=stdin)
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smtpd_compat: error: "), result.stderr


@pytest.mark.parametrize("args", [["a:b"], [" "], ["--iterations", "0", "a"], ["a", "b"], ["--bogus"]])
def test_bad_arguments_are_usage_errors(args: List[str]) -> None:
    result = hash_password(*args, stdin="pw\n")
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_old_module_spelling_still_works() -> None:
    """``python -m smtpd_compat._auth alice`` (documented before) runs the
    same command; Python's runpy may warn on stderr, since the package
    imports the module."""
    result = hash_password(*fast("alice"), stdin="pw\n", module="smtpd_compat._auth", first=[])
    assert result.returncode == 0 and result.stdout.startswith("alice:pbkdf2_sha256$1000$")


# -- on a terminal -------------------------------------------------------------------
def _read_until(fd: int, wanted: bytes, seen: bytearray) -> None:
    deadline = time.monotonic() + TIMEOUT
    while wanted not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no %r on the terminal; got %r" % (wanted, bytes(seen)))
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError("terminal closed before %r; got %r" % (wanted, bytes(seen)))
            seen += chunk


def _on_terminal(answers: List[bytes], args: List[str]) -> "tuple[subprocess.CompletedProcess, bytes]":
    """Run hash-password with a pseudo-terminal as its controlling terminal
    and stdin; type each answer after its prompt.  Returns the process
    (stdout and stderr captured apart) and everything the terminal showed."""
    pty = pytest.importorskip("pty")
    import termios  # noqa: F401  (pty exists, so termios does)

    master, slave = pty.openpty()

    def become_session_leader_with_terminal() -> None:
        import fcntl

        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "smtpd_compat", "hash-password", *args], cwd=str(REPO_ROOT), env=env(),
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=become_session_leader_with_terminal,
    )
    os.close(slave)
    shown = bytearray()
    try:
        for prompt, answer in zip((b"password for alice: ", b"again: "), answers):
            _read_until(master, prompt, shown)
            os.write(master, answer)
        out, err = proc.communicate(timeout=TIMEOUT)
        try:
            while select.select([master], [], [], 0.1)[0]:
                chunk = os.read(master, 1024)
                if not chunk:
                    break
                shown += chunk
        except OSError:
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    return result, bytes(shown)


@pytest.mark.skipif(not hasattr(os, "setsid"), reason="needs POSIX terminals")
def test_terminal_prompt_twice_without_echo() -> None:
    result, shown = _on_terminal([b"hunter2 secret\n", b"hunter2 secret\n"], fast("alice"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("alice:pbkdf2_sha256$1000$")
    assert b"hunter2" not in shown
    assert PasswordFile.check(PasswordFile(dict([result.stdout.strip().split(":", 1)])), "alice", "hunter2 secret")


@pytest.mark.skipif(not hasattr(os, "setsid"), reason="needs POSIX terminals")
def test_terminal_passwords_that_differ() -> None:
    result, shown = _on_terminal([b"one\n", b"two\n"], fast("alice"))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "smtpd_compat: error: the passwords differ\n"


@pytest.mark.skipif(not hasattr(os, "setsid"), reason="needs POSIX terminals")
def test_terminal_end_of_input() -> None:
    result, shown = _on_terminal([b"\x04"], fast("alice"))  # Ctrl-D at the first prompt
    assert result.returncode == 1 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "smtpd_compat: error: no password given (end of input)"
