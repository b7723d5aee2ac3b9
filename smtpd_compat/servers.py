"""Ready-made servers beside DebuggingServer and PureProxy.

* :class:`ReadableDebuggingServer` prints each message like
  DebuggingServer, but decoded for people (``-c DebuggingServer
  --readable`` on the command line).
* :class:`RecordingServer` keeps every message it accepts in memory, for
  tests: envelope, raw bytes and an :class:`email.message.EmailMessage`.
* :class:`MailboxServer` delivers every message to a Maildir or an mbox
  file, so that ``python -m smtpd_compat -n -c MailboxServer --maildir
  ./mail`` is a local mail catcher.

Both are :class:`~smtpd_compat.smtpd.SMTPServer` subclasses and take the
same arguments (``remoteaddr`` may be omitted), so they also work with
:class:`~smtpd_compat.controller.Controller` and ``serve_forever()``.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import errno
import itertools
import mailbox
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from . import _chunked_mail, _mbox
from ._mbox import mbox_entry
from .smtpd import DebuggingServer, SMTPServer

__all__ = ["MailboxPathError", "MailboxServer", "ReadableDebuggingServer", "RecordedMessage", "RecordingServer"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class RecordedMessage:
    """One message accepted by a :class:`RecordingServer`.

    ``data`` is the message exactly as ``process_message()`` received it
    (dot-stuffing removed, lines ending in ``\\n``; sent with ``BDAT``, the
    octets as sent), always as ``bytes``
    (UTF-8 encoded when the server runs with ``decode_data=True``);
    ``message`` is ``data`` parsed with :data:`email.policy.default`.
    """

    peer: Any
    mailfrom: str
    rcpttos: List[str]
    data: bytes
    message: email.message.EmailMessage
    mail_options: List[str] = field(default_factory=list)
    rcpt_options: List[str] = field(default_factory=list)
    received_at: float = 0.0


def _as_bytes(data: Union[bytes, str]) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    return bytes(data)


class RecordingServer(SMTPServer):
    """An SMTP server that keeps what it receives, for tests.

    Methods for the caller: :attr:`messages` (a copy of the list received
    so far, in order), :meth:`wait_for` (block until *n* have arrived),
    :meth:`clear`.  All are thread-safe: the server runs in its loop thread
    (see :class:`~smtpd_compat.controller.Controller`), the test in another.

    Set the attribute ``reply`` to a full reply line (``"550 No thanks"``)
    to answer messages with it instead of ``250 OK``; a message answered
    with anything but a ``2xx`` reply is not recorded.
    """

    reply: Optional[str] = None
    # Refused by serve_forever(workers=N): see _workers.check().
    _one_process_only = "it keeps messages in this process's memory, which other processes cannot share"

    def __init__(self, localaddr: Any, remoteaddr: Any = None, *args: Any, **kwargs: Any) -> None:
        self._records: List[RecordedMessage] = []
        self._records_cond = threading.Condition()
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    @property
    def messages(self) -> List[RecordedMessage]:
        """The messages accepted so far, oldest first (a copy)."""
        with self._records_cond:
            return list(self._records)

    def wait_for(self, count: int = 1, timeout: Optional[float] = 10.0) -> List[RecordedMessage]:
        """Wait until at least *count* messages have been accepted.

        Returns all messages accepted so far; raises :class:`TimeoutError`
        after *timeout* seconds (``None``: wait without limit).
        """
        with self._records_cond:
            if not self._records_cond.wait_for(lambda: len(self._records) >= count, timeout):
                raise TimeoutError(
                    "expected %d message(s) within %s s, got %d" % (count, timeout, len(self._records))
                )
            return list(self._records)

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._records_cond:
            del self._records[:]

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Optional[str]:
        """Record the message (unless ``reply`` refuses it)."""
        reply = self.reply
        if reply is not None and not reply.startswith("2"):
            return reply
        raw = _as_bytes(data)
        record = RecordedMessage(
            peer=peer,
            mailfrom=mailfrom,
            rcpttos=list(rcpttos),
            data=raw,
            message=email.message_from_bytes(raw, policy=email.policy.default),
            mail_options=list(kwargs.get("mail_options") or ()),
            rcpt_options=list(kwargs.get("rcpt_options") or ()),
            received_at=time.time(),
        )
        with self._records_cond:
            self._records.append(record)
            self._records_cond.notify_all()
        return reply


def trace_headers(peer: Any, mailfrom: str, rcpttos: List[str]) -> bytes:
    """``Return-Path``, ``X-Peer`` and ``X-RcptTo`` header lines (LF-ended)."""
    sender = mailfrom if mailfrom.startswith("<") else "<%s>" % mailfrom
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    lines = [
        "Return-Path: %s" % sender,
        "X-Peer: %s" % host,
        "X-RcptTo: %s" % ", ".join(rcpttos),
    ]
    # SMTPUTF8 addresses are UTF-8 in the header too (RFC 6532).
    return "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")


class MailboxPathError(ValueError):
    """The ``maildir=`` or ``mbox=`` path of a :class:`MailboxServer` is
    not a mailbox it can deliver to: raised when the server is created.

    ``option`` is the keyword (``"maildir"`` or ``"mbox"``), ``path`` the
    path given, ``reason`` what is wrong with it.
    """

    def __init__(self, option: str, path: str, reason: str) -> None:
        super().__init__("%s=%r: %s" % (option, path, reason))
        self.option = option
        self.path = path
        self.reason = reason


_MAILDIR_SUBDIRS = ("tmp", "new", "cur")


def _maildir_problem(path: str) -> Optional[str]:
    """Make *path* a Maildir if it does not exist or is an empty directory;
    what is wrong with it otherwise (None: a Maildir we can deliver to).

    mailbox.Maildir(create=True) accepted any existing path, even a file,
    and every message then failed with FileNotFoundError."""
    if not os.path.lexists(path):
        try:
            os.mkdir(path, 0o700)
        except OSError as err:
            return "cannot create the directory: %s" % (err.strerror or err)
    elif not os.path.isdir(path):
        return "exists and is not a directory"
    missing = [name for name in _MAILDIR_SUBDIRS if not os.path.isdir(os.path.join(path, name))]
    try:
        if missing and os.listdir(path):
            # Someone else's directory: filling it with subdirectories
            # would only hide the mistake.
            return "not a Maildir (no %s/) and not empty" % "/, ".join(missing)
        for name in missing:
            os.mkdir(os.path.join(path, name), 0o700)
    except OSError as err:
        return "cannot make it a Maildir: %s" % (err.strerror or err)
    for name in ("tmp", "new"):  # where delivery writes
        if not os.access(os.path.join(path, name), os.W_OK | os.X_OK):
            return "%s/ is not writable" % name
    return None


class MailboxServer(SMTPServer):
    """Deliver every message to a Maildir or to an mbox file.

    Exactly one of the keyword arguments *maildir* (a directory; it and its
    ``tmp``/``new``/``cur`` subdirectories are created when it is missing or
    empty) or *mbox* (a file, created when missing) must be given.  Any
    other path (a file as the Maildir, a directory that is not empty and is
    not a Maildir, an mbox that is not one, a path that cannot be created)
    raises :class:`MailboxPathError`, a :class:`ValueError` naming the
    option, before the server listens.  Each message gets
    ``Return-Path``, ``X-Peer`` and ``X-RcptTo`` header lines in front of
    it; the rest is stored as received.

    Maildir delivery is atomic: the message is written in ``tmp/``, synced
    to disk, then moved into ``new/`` (:meth:`mailbox.Maildir.add`).  mbox
    delivery holds the mailbox's locks (``fcntl`` plus a dot-lock, as
    :meth:`mailbox.mbox.lock`; a stale dot-lock left by a crash is
    removed) while appending and syncing; lines of the
    body beginning with ``From`` are quoted as ``>From``, as mbox requires.
    An append that fails part-way is cut back off the file, and an entry
    left unfinished by someone else is closed off before the next one
    (:mod:`smtpd_compat._mbox`).

    A failed delivery (disk full, permissions) is answered ``451`` so that
    the client keeps the message and retries; the error is logged.
    Delivery happens on the server's loop thread.
    """

    def __init__(
        self,
        localaddr: Any,
        remoteaddr: Any = None,
        *args: Any,
        maildir: Optional[PathLike] = None,
        mbox: Optional[PathLike] = None,
        **kwargs: Any,
    ) -> None:
        if (maildir is None) == (mbox is None):
            raise ValueError("MailboxServer needs exactly one of maildir= or mbox=")
        self.maildir: Optional[str] = os.fspath(maildir) if maildir is not None else None
        self.mbox: Optional[str] = os.fspath(mbox) if mbox is not None else None
        self._maildir: Optional[mailbox.Maildir] = None
        # Check and create the mailbox now: a bad path is an error at
        # start-up, not a 451 for every message.
        if self.maildir is not None:
            problem = _maildir_problem(self.maildir)
            if problem is not None:
                raise MailboxPathError("maildir", self.maildir, problem)
            self._maildir = mailbox.Maildir(self.maildir, factory=None, create=False)
        else:
            assert self.mbox is not None
            problem = _mbox.problem(self.mbox)
            if problem is not None:
                raise MailboxPathError("mbox", self.mbox, problem)
        super().__init__(localaddr, remoteaddr, *args, **kwargs)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Optional[str]:
        """Deliver the message; an exception is answered ``451``."""
        head, binary = _head(peer, mailfrom, rcpttos, kwargs)
        body = _as_bytes(data)
        if kwargs.get("chunked") and not binary:
            body = _chunked_mail.data_form(body)
        message = head + body
        if binary and self._maildir is not None:
            _maildir_add(self._maildir, [message], raw=True)
        elif self._maildir is not None:
            self._maildir.add(message)
        else:
            self._deliver_mbox(mailfrom, message)
        return None

    def _deliver_mbox(self, mailfrom: str, message: bytes) -> None:
        assert self.mbox is not None
        _mbox.append(self.mbox, mbox_entry(_from_line(mailfrom), message))

    def process_message_stream(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kwargs: Any) -> Optional[str]:
        """With ``spool_threshold``: deliver the message from its spool
        file, block by block (see docs/big-messages.md), to the same bytes
        in the mailbox as :meth:`process_message`."""
        head, binary = _head(peer, mailfrom, rcpttos, kwargs)
        blocks = _file_blocks(getattr(data, "buffer", data))
        if kwargs.get("chunked") and not binary:
            blocks = _chunked_mail.data_form_blocks(blocks)
        chunks = itertools.chain([head], blocks)
        if self._maildir is not None:
            _maildir_add(self._maildir, chunks, raw=binary)
        else:
            assert self.mbox is not None
            _mbox.append_chunks(self.mbox, _mbox.entry_chunks(_from_line(mailfrom), chunks))
        return None


def _head(peer: Any, mailfrom: str, rcpttos: List[str], kwargs: Dict[str, Any]) -> Tuple[bytes, bool]:
    """The trace header lines for a message, and whether it is binary: a
    BINARYMIME message received with BDAT (process_message()'s chunked and
    mail_options), stored as its octets, after header lines that end with
    CRLF as its own do.  A text message received with BDAT is stored in
    DATA's form (see _chunked_mail), as a DATA client's would be."""
    head = trace_headers(peer, mailfrom, rcpttos)
    if kwargs.get("chunked") and _chunked_mail.is_binary(kwargs.get("mail_options")):
        return head.replace(b"\n", b"\r\n"), True
    return head, False


def _from_line(mailfrom: str) -> bytes:
    """An mbox entry's ``From sender date`` line (no line end)."""
    sender = "_".join(mailfrom.strip("<>").split()) or "MAILER-DAEMON"
    return ("From %s %s" % (sender, time.asctime(time.gmtime()))).encode("utf-8", "surrogateescape")


def _file_blocks(file: Any, size: int = 1 << 20) -> Iterator[bytes]:
    block = file.read(size)
    while block:
        yield block
        block = file.read(size)


def _maildir_add(box: Any, chunks: Iterable[bytes], raw: bool = False) -> str:
    """:meth:`mailbox.Maildir.add` for a message given in pieces: written
    to a new file in ``tmp/``, synced, then linked (or renamed) into
    ``new/``; the same bytes as ``add(bytes)`` writes (with *raw*: the
    bytes given, no ``\\n`` made ``os.linesep``).  Returns its key."""
    tmp = box._create_tmp()
    try:
        for chunk in chunks:
            tmp.write(chunk if raw else chunk.replace(b"\n", _mbox._LINESEP))
        tmp.flush()
        os.fsync(tmp.fileno())
    except BaseException:
        tmp.close()
        os.remove(tmp.name)
        raise
    tmp.close()
    key: str = os.path.basename(tmp.name).split(box.colon)[0]
    dest = os.path.join(box._path, "new", key)
    try:
        try:
            os.link(tmp.name, dest)
        except (AttributeError, PermissionError):  # no hard links here
            os.rename(tmp.name, dest)
        else:
            os.remove(tmp.name)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp.name)
        if err.errno == errno.EEXIST:
            raise mailbox.ExternalClashError("name clash with an existing message: %s" % dest) from None
        raise
    return key


def _part_text(part: email.message.Message) -> Optional[str]:
    """The decoded text of a text part that is not an attachment, else None."""
    if part.get_content_maintype() != "text" or part.get_content_disposition() == "attachment":
        return None
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, ValueError, AssertionError):  # an unknown charset, a broken encoding
        pass
    payload = part.get_payload(decode=True)
    return bytes(payload or b"").decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)


def _part_summary(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    size = len(payload) if isinstance(payload, bytes) else 0
    name = part.get_filename()
    return "%s%s, %d bytes" % (part.get_content_type(), ', "%s"' % name if name else "", size)


def _readable_body(message: email.message.Message) -> List[str]:
    if not message.is_multipart():
        text = _part_text(message)
        return text.splitlines() if text is not None else ["[%s]" % _part_summary(message)]
    lines: List[str] = []
    leaves = [part for part in message.walk() if not part.is_multipart()]
    for number, part in enumerate(leaves, 1):
        text = _part_text(part)
        if text is None:
            lines.append("[part %d: %s]" % (number, _part_summary(part)))
        else:
            lines.append("[part %d: %s]" % (number, part.get_content_type()))
            lines.extend(text.splitlines())
    return lines


def readable_lines(peer: Any, mailfrom: str, rcpttos: List[str], data: bytes) -> List[str]:
    """*data* as :class:`ReadableDebuggingServer` prints it, line by line."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    envelope = ["X-Peer: %s" % host, "X-MailFrom: %s" % mailfrom, "X-RcptTo: %s" % ", ".join(rcpttos)]
    try:
        message = email.message_from_bytes(data, policy=email.policy.default)
        headers = ["%s: %s" % (name, " ".join(str(value).split())) for name, value in message.items()]
        body = _readable_body(message)
    except Exception:  # noqa: BLE001 - whatever the parser dislikes is still printed
        head, _, rest = data.replace(b"\r\n", b"\n").partition(b"\n\n")
        headers = head.decode("utf-8", "replace").splitlines()
        body = rest.decode("utf-8", "replace").splitlines()
    return headers + envelope + [""] + body


class ReadableDebuggingServer(DebuggingServer):
    """DebuggingServer for people who use it as a mail catcher.

    Prints each message between the same ``MESSAGE FOLLOWS`` / ``END
    MESSAGE`` lines, but as text: the headers with their encoded words
    (RFC 2047) decoded and folded lines joined, then ``X-Peer``,
    ``X-MailFrom`` and ``X-RcptTo``; after a blank line the body, decoded
    from its transfer encoding and charset.  Of a multipart message each
    text part follows a ``[part N: text/plain]`` line, and every other part
    is one line (``[part 2: image/png, "logo.png", 1234 bytes]``).
    DebuggingServer itself keeps smtpd's ``b'...'`` reprs, which scripts
    parse.  On the command line: ``-c DebuggingServer --readable``.
    """

    # DebuggingServer prints the frame and the MAIL/RCPT options, then calls
    # _print_message_content(peer, data), which has no envelope: it is kept
    # here for that call (process_message runs on the loop's thread, one
    # message at a time).
    _readable_envelope: Any = ("", [])

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Optional[str]:
        self._readable_envelope = (mailfrom, rcpttos)
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)

    def _print_message_content(self, peer: Any, data: Union[bytes, str]) -> None:
        mailfrom, rcpttos = self._readable_envelope
        for line in readable_lines(peer, mailfrom, rcpttos, _as_bytes(data)):
            print(line)
