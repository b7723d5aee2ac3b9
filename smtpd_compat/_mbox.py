"""Appending a message to an mbox file: the entry's bytes, the locks, and
undoing an append that failed part-way.

:class:`~smtpd_compat.servers.MailboxServer` delivers to an mbox through
:func:`append`.  What it guarantees:

* **Entries stay separate.**  Before the new entry, a file that does not end
  with a blank line gets the line ends it lacks: an entry left without its
  end (by a program killed while writing) cannot swallow the next one.
* **A failed append leaves nothing.**  On any error (disk full, quota,
  ``RLIMIT_FSIZE``, an interrupt) the file is cut back to its size before
  the append, so the client's retry does not leave a broken copy behind.
* **Locks as other mail programs take them**, and none that outlives its
  holder for long: see :func:`locked`.

Standard library only; ``fcntl`` is optional (absent on Windows).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mailbox
import os
import stat
import threading
import time
from typing import BinaryIO, Iterable, Iterator, Optional, Set

try:
    import fcntl
except ImportError:  # Windows: the dot-lock alone (see locked())
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("smtpd_compat")

_LINESEP = os.linesep.encode("ascii")  # what the mailbox module writes
_BLANK_LINE = _LINESEP * 2

# A dot-lock older than this is stale whoever made it: no delivery holds
# its lock for minutes, while a lock left by a crash would otherwise stop
# delivery for good.  Five minutes, as mail delivery agents commonly use.
STALE_AFTER = 300.0

# The mbox files (real paths) this process is appending to.  POSIX record
# locks belong to the process, not to a thread or a descriptor: a second
# delivery from this process would be granted the fcntl lock, and closing
# its descriptor would release the first one's.  So deliveries from one
# process are serialised here, before the file is opened.
_in_use: Set[str] = set()
_in_use_lock = threading.Lock()

# How long a delivery waits for the fcntl lock held by another process
# before it is answered 451: none, except in the workers of
# serve_forever(workers=N), which _workers sets to a second, since they
# append to the same mbox at the same time and each holds it for an append.
LOCK_WAIT = 0.0


class MailboxLocked(mailbox.ExternalClashError):
    """Another delivery or mail program holds the mbox's lock."""


def mbox_entry(from_line: bytes, message: bytes) -> bytes:
    """*message* as :meth:`mailbox.mbox.add` writes it after *from_line*
    (``From sender date``, no line end): lines of the message starting
    with ``From `` quoted as ``>From ``, a line end at the end, and the
    blank line that separates messages."""
    body = message.replace(b"\nFrom ", b"\n>From ").replace(b"\n", _LINESEP)
    if not body.endswith(_LINESEP):
        body += _LINESEP
    return from_line + _LINESEP + body + _LINESEP


def entry_chunks(from_line: bytes, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """:func:`mbox_entry` piece by piece, for a message that is not in
    memory whole: the same bytes, however the message is split.  A tail
    that may be the start of ``\\nFrom `` is held until the next piece."""
    yield from_line + _LINESEP
    held, tail = b"", b""
    for chunk in chunks:
        text = held + chunk
        newline = text.rfind(b"\n")
        if newline >= 0 and len(text) - newline < 6:
            held, text = text[newline:], text[:newline]
        else:
            held = b""
        if text:
            out = text.replace(b"\nFrom ", b"\n>From ").replace(b"\n", _LINESEP)
            tail = (tail + out)[-len(_LINESEP) :]
            yield out
    out = held.replace(b"\n", _LINESEP)  # too short to hold "\nFrom "
    tail = (tail + out)[-len(_LINESEP) :]
    yield out
    yield _LINESEP + _LINESEP if tail != _LINESEP else _LINESEP


def problem(path: str) -> Optional[str]:
    """Create an empty mbox at *path* if nothing is there; what is wrong
    with *path* otherwise (None: an mbox we can append to)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        return "cannot use it: %s" % (err.strerror or err)
    if mode is not None and not stat.S_ISREG(mode):
        # Opening a FIFO or a device for appending could block or worse.
        return "exists and is a directory" if stat.S_ISDIR(mode) else "exists and is not a regular file"
    try:
        with open(path, "a+b") as box:
            box.seek(0)
            head = box.read(5)
    except OSError as err:
        return "cannot open it for appending: %s" % (err.strerror or err)
    if head and head != b"From ":
        # Appending mail to a file that is not an mbox (a typo'd path,
        # /etc/passwd) would damage it.
        return 'not empty and not an mbox file (it does not begin with "From ")'
    return None


def append(path: str, entry: bytes) -> None:
    """Append *entry* (see :func:`mbox_entry`) to the mbox at *path* under
    its locks and sync it to disk; on failure the file is as it was."""
    append_chunks(path, [entry])


def append_chunks(path: str, entry: Iterable[bytes]) -> None:
    """:func:`append` for an entry given in pieces (see :func:`entry_chunks`)."""
    with locked(path) as box:
        fd = box.fileno()
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, _separator(box, size))
            for chunk in entry:
                _write_all(fd, chunk)
            os.fsync(fd)
        except BaseException:
            _cut_back(path, fd, size)
            raise


@contextlib.contextmanager
def locked(path: str) -> Iterator[BinaryIO]:
    """The mbox at *path*, opened for appending (created when missing) and
    locked against other deliveries and mail programs.

    The locks are those mail readers and delivery agents take: an ``fcntl``
    lock on the file, which the kernel releases when its holder dies, and
    the dot-lock ``<path>.lock``, which holds this process's PID.  A
    dot-lock is stale, and removed, when the PID it records is of no
    running process or is this process's own (left by an earlier process
    that had the same PID), or when it is older than :data:`STALE_AFTER` seconds
    whoever made it (the only rule for a dot-lock without a PID, such as
    :mod:`mailbox` makes).  Removing a stale dot-lock is safe against
    programs that also take the ``fcntl`` lock, which we hold by then.
    Without write access to the directory no dot-lock is taken, as
    :mod:`mailbox` does.  Where ``fcntl`` does not exist (Windows) the
    dot-lock is the only lock, and PIDs are not checked there (the age
    rule alone applies).

    A lock held by someone else raises :class:`MailboxLocked` at once: the
    delivery is answered ``451`` and the client retries later.
    """
    key = os.path.realpath(path)
    with _in_use_lock:
        if key in _in_use:
            raise MailboxLocked("mbox %s: another delivery of this process is under way" % path)
        _in_use.add(key)
    try:
        with open(path, "a+b", buffering=0) as box:
            if fcntl is not None:
                _lock_file(box.fileno(), path)
            try:
                with _dot_lock(path):
                    yield box  # unbuffered (FileIO): each os.write() is seen at once
            finally:
                if fcntl is not None:
                    fcntl.lockf(box.fileno(), fcntl.LOCK_UN)
    finally:
        with _in_use_lock:
            _in_use.discard(key)


def _lock_file(fd: int, path: str) -> None:
    """Take the fcntl lock, waiting up to LOCK_WAIT seconds for another process."""
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as err:
            if not isinstance(err, (BlockingIOError, PermissionError)):
                raise
            if time.monotonic() >= deadline:
                raise MailboxLocked("mbox %s: locked by another program (fcntl)" % path) from None
        time.sleep(0.002)


@contextlib.contextmanager
def _dot_lock(path: str) -> Iterator[None]:
    lock = path + ".lock"
    taken = _take_dot_lock(path, lock)
    try:
        yield
    finally:
        if taken:
            # Gone already if someone judged it stale: nothing to undo.
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)


def _take_dot_lock(path: str, lock: str) -> bool:
    """Create *lock* holding our PID; False when the directory is not
    writable (no dot-lock then).  A stale lock is removed, once."""
    removed_stale = False
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            reason = None if removed_stale else _stale_reason(lock)
            if reason is None:
                raise MailboxLocked("mbox %s: locked by another program (%s)" % (path, lock)) from None
            log.warning("removing the stale lock %s (%s)", lock, reason)
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)
            removed_stale = True
        except PermissionError:
            return False  # no write access to the directory
        except OSError as err:
            if err.errno == errno.EROFS:
                return False
            raise
    try:
        _write_all(fd, b"%d\n" % os.getpid())
    except BaseException:
        os.close(fd)
        os.remove(lock)  # an empty lock would look held for STALE_AFTER
        raise
    os.close(fd)
    return True


def _stale_reason(lock: str) -> Optional[str]:
    """Why the existing dot-lock *lock* is stale, or None if it may be held."""
    try:
        with open(lock, "rb") as f:
            age = time.time() - os.fstat(f.fileno()).st_mtime
            text = f.read(32)
    except FileNotFoundError:
        return "already gone"
    except OSError:
        return None  # unreadable: judge by nothing we cannot see
    if age > STALE_AFTER:
        return "older than %d s" % STALE_AFTER
    pid = _recorded_pid(text)
    if pid is None:
        return None
    if pid == os.getpid():
        # Our PID, but this process's deliveries of this mbox are counted
        # in _in_use: the lock was left by an earlier process that had the
        # same PID (a container's server restarted as PID 1).
        return "left by an earlier process with PID %d" % pid
    if not _pid_alive(pid):
        return "PID %d is not running" % pid
    return None


def _recorded_pid(text: bytes) -> Optional[int]:
    head = text.split(b"\n", 1)[0].strip()
    if not head.isdigit():
        return None
    pid = int(head)
    # 0 and negative numbers are process groups to kill(): never a lock holder.
    return pid if pid > 0 else None


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        # os.kill(pid, 0) terminates the process on Windows: the age rule
        # alone applies there.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it runs, as another user
    return True


def _separator(box: BinaryIO, size: int) -> bytes:
    """The line ends the file at *size* bytes lacks before a new entry: an
    mbox entry starts after a blank line, at the start of the file or after
    the previous entry's blank line."""
    if size == 0:
        return b""
    box.seek(max(0, size - len(_BLANK_LINE)))
    tail = box.read(len(_BLANK_LINE))
    if tail.endswith(_BLANK_LINE):
        return b""
    if tail.endswith(_LINESEP):
        return _LINESEP
    return _BLANK_LINE


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _cut_back(path: str, fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError as err:
        # The entry stays in part; the next append separates itself from it.
        log.error("could not cut %s back to %d bytes after a failed delivery: %s", path, size, err)
