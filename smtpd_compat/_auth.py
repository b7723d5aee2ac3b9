"""Password checking for SMTP AUTH: the ``--auth-file`` authenticator.

The SASL mechanisms themselves (PLAIN, LOGIN, the exchange) are in
``_sasl``; the names this module used to define are re-exported here.

:class:`PasswordFile` is the authenticator behind the command line's
``--auth-file``: ``user:password`` lines, the password either in clear or as
a PBKDF2 hash made by :func:`hash_password`
(``python -m smtpd_compat hash-password USER`` prints such a line).
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import hashlib
import hmac
import os
import stat
import threading
from typing import Any, Dict, Optional, Tuple, Union

from . import _sasl
from ._sasl import DEFAULT_MECHANISMS, Credentials, decode_base64, mechanism_for, parse_plain

__all__ = [
    "MECHANISMS",
    "AuthExchange",
    "AuthFileError",
    "Credentials",
    "PasswordFile",
    "decode_base64",
    "hash_password",
    "load_credentials",
    "parse_plain",
    "read_password_file",
]

# The SASL mechanisms live in _sasl; these names are kept for the code and
# tests that imported them from here.
MECHANISMS = DEFAULT_MECHANISMS
Step = _sasl.Step


def AuthExchange(mechanism: str, initial_response: Optional[str] = None) -> _sasl.Mechanism:  # noqa: N802
    """The server side of one AUTH exchange (see ``_sasl.Mechanism``)."""
    return mechanism_for(mechanism, initial_response)


# -- the --auth-file authenticator -------------------------------------------------
HASH_SCHEME = "pbkdf2_sha256"
# OWASP's Password Storage Cheat Sheet (2023): 600,000 rounds for
# PBKDF2-HMAC-SHA256.  A check costs a few hundred milliseconds; it runs in
# a worker thread (check_in_worker), so sessions are not stalled by it.
# The count is stored in each hash: hashes made with fewer rounds (100,000
# before) keep verifying.
HASH_ITERATIONS = 600_000


class AuthFileError(Exception):
    """The password file is missing, malformed or readable by others."""


def hash_password(password: str, iterations: int = HASH_ITERATIONS, salt: Optional[bytes] = None) -> str:
    """A ``pbkdf2_sha256$iterations$salt$hash`` string for a password file."""
    if salt is None:
        salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return "%s$%d$%s$%s" % (
        HASH_SCHEME,
        iterations,
        base64.b64encode(salt).decode("ascii"),
        base64.b64encode(digest).decode("ascii"),
    )


def _check_hashed(stored: str, password: str) -> bool:
    try:
        _, iterations, salt, digest = stored.split("$")
        expected = base64.b64decode(digest, validate=True)
        salt_bytes = base64.b64decode(salt, validate=True)
        actual = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt_bytes, int(iterations))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(actual, expected)


def _is_hashed(stored: str) -> bool:
    return stored.startswith(HASH_SCHEME + "$")


def _iterations(stored: str) -> int:
    """The PBKDF2 iteration count of a stored hash (0 for clear text)."""
    fields = stored.split("$")
    if not _is_hashed(stored) or len(fields) != 4 or not fields[1].isdigit():
        return 0
    return int(fields[1])


def read_password_file(path: Union[str, "os.PathLike[str]"]) -> Dict[str, str]:
    """The ``user:password`` entries of *path* (see :meth:`PasswordFile.load`).

    Refuses (:class:`AuthFileError`, one line that never quotes the file's
    content) a file that group or others may access, or a malformed line.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise AuthFileError(
                    "auth file %s is accessible by group or others (mode %03o); "
                    "run: chmod 600 %s" % (path, stat.S_IMODE(st.st_mode), path)
                )
            raw = f.read()
    except OSError as err:
        raise AuthFileError("cannot read auth file %s: %s" % (path, err.strerror or err)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthFileError("auth file %s is not UTF-8" % path) from None
    entries: Dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        user = user.strip()
        if not sep or not user or not password:
            # Never echo the line: it may hold a password.
            raise AuthFileError("auth file %s line %d: expected user:password" % (path, number))
        entries[user] = password
    return entries


def load_credentials(path: Union[str, "os.PathLike[str]"]) -> Tuple[str, str]:
    """The one ``user:password`` of *path* (mode-checked like an auth file),
    for logging in to an upstream server; the password in clear."""
    entries = read_password_file(path)
    if len(entries) != 1:
        raise AuthFileError("credentials file %s must hold exactly one user:password line" % os.fspath(path))
    [(user, password)] = entries.items()
    if _is_hashed(password):
        raise AuthFileError("credentials file %s: the upstream server needs the password itself, not a hash" % os.fspath(path))
    return user, password


class PasswordFile:
    """An authenticator that checks logins against ``user:password`` entries.

    Use it as ``SMTPServer(..., authenticator=PasswordFile.load(path))`` or
    build it from a dict.  A password that starts with ``pbkdf2_sha256$`` is
    a hash made by :func:`hash_password`; any other is compared as clear
    text.  Comparisons take the same time whether or not the user exists.
    """

    def __init__(self, entries: Dict[str, str]) -> None:
        self._entries = dict(entries)
        # Checked when the user is unknown, so that a wrong user costs as
        # much as a wrong password: a hash of the same cost when the file
        # holds hashes, clear text otherwise.  Its digest never matches.
        iterations = [n for n in map(_iterations, self._entries.values()) if n]
        if iterations:
            zeros = base64.b64encode(bytes(32)).decode("ascii")
            self._dummy = "%s$%d$%s$%s" % (HASH_SCHEME, max(iterations), zeros, zeros)
        else:
            self._dummy = "\0" * 16

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return "<PasswordFile: %d users>" % len(self._entries)

    @classmethod
    def load(cls, path: Union[str, "os.PathLike[str]"]) -> "PasswordFile":
        """Read *path*; :class:`AuthFileError` if it is readable or writable
        by group or others, unreadable, or has a line that is not
        ``user:password`` (blank lines and ``#`` comments are skipped)."""
        return cls(read_password_file(path))

    def check(self, login: str, password: str) -> bool:
        """Whether *password* is right for *login*."""
        stored = self._entries.get(login)
        if stored is None:
            if _is_hashed(self._dummy):
                _check_hashed(self._dummy, password)
            else:
                hmac.compare_digest(self._dummy.encode("utf-8"), password.encode("utf-8"))
            return False
        if _is_hashed(stored):
            return _check_hashed(stored, password)
        return hmac.compare_digest(stored.encode("utf-8"), password.encode("utf-8"))

    def __call__(self, server: Any, channel: Any, mechanism: str, login: str, password: str) -> bool:
        return self.check(login, password)

    @property
    def hashed(self) -> bool:
        """Whether a check costs a PBKDF2 computation (the file holds hashes)."""
        return _is_hashed(self._dummy)


_checker: Optional[concurrent.futures.ThreadPoolExecutor] = None
_checker_lock = threading.Lock()


def _forget_checker_after_fork() -> None:
    # The pool's threads stayed in the parent: a child makes its own.
    global _checker, _checker_lock
    _checker = None
    _checker_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_checker_after_fork)


def check_in_worker(passwords: PasswordFile, login: str, password: str) -> "concurrent.futures.Future[bool]":
    """``passwords.check(login, password)`` in a worker thread.

    A hashed password takes tens of milliseconds to check (PBKDF2, which
    releases the GIL); on the loop's thread that would stall every session
    for each attempt, however wrong.
    """
    global _checker
    with _checker_lock:
        if _checker is None:
            _checker = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="smtpd_compat-auth")
    return _checker.submit(passwords.check, login, password)


if __name__ == "__main__":  # pragma: no cover - the old spelling of the command
    import sys

    from ._cli import main

    sys.exit(main(["hash-password", *sys.argv[1:]]))
