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
* **Locks as other mail programs take them**: see :func:`locked`.
"""

from __future__ import annotations

import contextlib
import logging
import mailbox
import os
from typing import BinaryIO, Iterator

log = logging.getLogger("smtpd_compat")

_LINESEP = os.linesep.encode("ascii")  # what the mailbox module writes
_BLANK_LINE = _LINESEP * 2


def mbox_entry(from_line: bytes, message: bytes) -> bytes:
    """*message* as :meth:`mailbox.mbox.add` writes it after *from_line*
    (``From sender date``, no line end): lines of the message starting
    with ``From `` quoted as ``>From ``, a line end at the end, and the
    blank line that separates messages."""
    body = message.replace(b"\nFrom ", b"\n>From ").replace(b"\n", _LINESEP)
    if not body.endswith(_LINESEP):
        body += _LINESEP
    return from_line + _LINESEP + body + _LINESEP


def append(path: str, entry: bytes) -> None:
    """Append *entry* (see :func:`mbox_entry`) to the mbox at *path* under
    its locks and sync it to disk; on failure the file is as it was."""
    with locked(path) as box:
        fd = box.fileno()
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, _separator(box, size) + entry)
            os.fsync(fd)
        except BaseException:
            _cut_back(path, fd, size)
            raise


@contextlib.contextmanager
def locked(path: str) -> Iterator[BinaryIO]:
    """The mbox at *path*, opened for appending (created when missing),
    under the lock :meth:`mailbox.mbox.lock` takes (``fcntl`` and a
    dot-lock), as mail readers expect."""
    box = mailbox.mbox(path, create=True)
    try:
        box.lock()
        with open(path, "a+b", buffering=0) as target:
            yield target  # unbuffered (FileIO): each os.write() is seen at once
    finally:
        box.close()  # also unlocks


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
