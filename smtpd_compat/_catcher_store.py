"""The catcher's messages: kept in memory under a bound, or in a Maildir.

One :class:`Store` holds the index of every captured message (an
:class:`Entry`: ID, envelope, the list's summary, the text searched) in
arrival order, behind one lock, because two threads use it: the SMTP
loop's thread adds messages (:meth:`Store.add`), the HTTP server's threads
read, search, mark and delete them.  Who waits for a change
(``/api/v1/messages/wait``) waits on the store's condition; who follows
changes (``/api/v1/events``) gets them in a queue of its own
(:meth:`Store.subscribe`).

The raw bytes are kept by a backend: :class:`MemoryBackend` (a dict) or
:class:`MaildirBackend`.  In a Maildir, each message is one file in
``new/`` (``cur/`` with the ``S`` flag once read, so a mail reader sees
the same), written atomically as :class:`~smtpd_compat.servers.MailboxServer`
writes, beginning with one ``X-Catcher-Envelope:`` header line that holds
the SMTP envelope as base64 JSON: one file per message, one rename to
deliver it, and the envelope survives a restart with the message.  That
line is not part of the message the API shows.  A Maildir written by
MailboxServer loads too: its ``Return-Path``/``X-Peer``/``X-RcptTo`` lines
give the envelope.

``max_messages`` bounds the count: the oldest message is dropped (its
file deleted, in a Maildir) when one more arrives, and ``dropped`` counts
them since the store was made.
"""

from __future__ import annotations

import base64
import itertools
import json
import mailbox
import os
import queue
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from . import _catcher_mime as mime

#: Events a subscriber queue holds before the subscriber is cut off (a
#: client that does not read its event stream must not grow memory).
SUBSCRIBER_QUEUE = 1000
ENVELOPE_HEADER = b"X-Catcher-Envelope: "

Event = Tuple[str, Any]


@dataclass
class Entry:
    """One captured message as the index keeps it (the bytes are the backend's)."""

    id: str
    seq: int
    created: float
    size: int
    envelope: Dict[str, Any]
    fields: Dict[str, Any]  # the Summary's fields from the message (_catcher_mime.summary)
    search: Dict[str, str]
    read: bool = False
    key: str = ""  # the backend's name for it

    def summary(self) -> Dict[str, Any]:
        """The list's Summary of this message."""
        result = {"ID": self.id, "Read": self.read, "Created": self.fields["Created"]}
        result.update(self.fields)
        return result


def make_entry(ident: str, seq: int, raw: bytes, envelope: Dict[str, Any], created: float) -> Entry:
    """Index *raw*: parse it once, keep what the list and the search need."""
    message = mime.parse(raw)
    fields = mime.summary(message, len(raw))
    fields["Created"] = mime.rfc3339(created)
    search = mime.search_fields(message, str(envelope.get("MailFrom", "")), list(envelope.get("RcptTos", [])))
    search["any"] = "\n".join(search.values())  # a bare term looks in all of them at once
    return Entry(ident, seq, created, len(raw), envelope, fields, search)


# -- search --------------------------------------------------------------------------
_PREFIXES = ("from", "to", "subject")


def matcher(query: str) -> Callable[[Entry], bool]:
    """A test for the search *query*: whitespace-separated terms, all of
    which must match (case-insensitive substrings); ``from:``, ``to:``,
    ``subject:`` narrow a term to that field; ``"quoted words"`` are one term."""
    chosen = terms(query)

    def matches(entry: Entry) -> bool:
        fields = entry.search
        return all(text in fields[name] for name, text in chosen)

    return matches


def terms(query: str) -> List[Tuple[str, str]]:
    """``(field, lowercased text)`` for each term of *query* (field ``any``
    for a bare term)."""
    found: List[Tuple[str, str]] = []
    for word in _split_terms(query):
        name, sep, rest = word.partition(":")
        if sep and name.lower() in _PREFIXES and rest:
            found.append((name.lower(), rest.lower()))
        else:
            found.append(("any", word.lower()))
    return found


def _split_terms(query: str) -> List[str]:
    words: List[str] = []
    for index, chunk in enumerate(query.split('"')):
        if index % 2:
            if chunk.strip():
                words.append(chunk)
        else:
            words.extend(chunk.split())
    return words[:32]


# -- backends --------------------------------------------------------------------------
class MemoryBackend:
    """The raw bytes in a dict."""

    kind = "memory"

    def __init__(self) -> None:
        self._data: Dict[str, bytes] = {}

    def load(self) -> List[Entry]:
        return []

    def save(self, ident: str, raw: bytes, envelope: Dict[str, Any]) -> str:
        self._data[ident] = raw
        return ident

    def raw(self, entry: Entry) -> Optional[bytes]:
        return self._data.get(entry.key)

    def delete(self, entry: Entry) -> None:
        self._data.pop(entry.key, None)

    def set_read(self, entry: Entry, read: bool) -> None:
        pass


class MaildirBackend:
    """The raw bytes in a Maildir (see the module's docstring)."""

    kind = "maildir"

    def __init__(self, path: str) -> None:
        self.path = path
        self._box = mailbox.Maildir(path, factory=None, create=False)
        self._files: Dict[str, str] = {}  # key -> path relative to the Maildir

    def load(self) -> List[Entry]:
        """Index every message of ``new/`` and ``cur/``, oldest first."""
        found = []
        for sub in ("new", "cur"):
            directory = os.path.join(self.path, sub)
            for name in os.listdir(directory):
                if name.startswith("."):
                    continue
                full = os.path.join(directory, name)
                try:
                    found.append((os.stat(full).st_mtime, name, sub))
                except OSError:
                    continue
        entries = []
        for seq, (mtime, name, sub) in enumerate(sorted(found)):
            entry = self._load_one(seq, mtime, name, sub)
            if entry is not None:
                entries.append(entry)
        return entries

    def _load_one(self, seq: int, mtime: float, name: str, sub: str) -> Optional[Entry]:
        key = name.split(":")[0]
        relative = os.path.join(sub, name)
        try:
            with open(os.path.join(self.path, relative), "rb") as f:
                stored = f.read()
        except OSError:
            return None
        raw, envelope = split_envelope(stored)
        self._files[key] = relative
        created = float(envelope.pop("Created", mtime) or mtime)
        entry = make_entry(key, seq, raw, envelope, created)
        entry.key = key
        entry.read = sub == "cur" and "S" in name.partition(":2,")[2]
        return entry

    def save(self, ident: str, raw: bytes, envelope: Dict[str, Any]) -> str:
        from .servers import _maildir_add  # the same atomic delivery as MailboxServer's

        key = _maildir_add(self._box, [envelope_line(envelope), raw], raw=True)
        self._files[key] = os.path.join("new", key)
        return key

    def raw(self, entry: Entry) -> Optional[bytes]:
        relative = self._files.get(entry.key)
        if relative is None:
            return None
        try:
            with open(os.path.join(self.path, relative), "rb") as f:
                return split_envelope(f.read())[0]
        except OSError:
            return None

    def delete(self, entry: Entry) -> None:
        relative = self._files.pop(entry.key, None)
        if relative is not None:
            try:
                os.remove(os.path.join(self.path, relative))
            except FileNotFoundError:
                pass

    def set_read(self, entry: Entry, read: bool) -> None:
        """Move the file to ``cur/`` with (or without) the ``S`` flag."""
        relative = self._files.get(entry.key)
        if relative is None:
            return
        name = os.path.basename(relative)
        flags = set(name.partition(":2,")[2]) - {"S"}
        if read:
            flags.add("S")
        target = os.path.join("cur", "%s:2,%s" % (entry.key, "".join(sorted(flags))))
        if target != relative:
            try:
                os.rename(os.path.join(self.path, relative), os.path.join(self.path, target))
            except OSError:
                return
            self._files[entry.key] = target


def envelope_line(envelope: Dict[str, Any]) -> bytes:
    """The ``X-Catcher-Envelope:`` line put before a message in a Maildir."""
    data = json.dumps(envelope, ensure_ascii=True, sort_keys=True).encode("ascii")
    return ENVELOPE_HEADER + base64.b64encode(data) + b"\n"


def split_envelope(stored: bytes) -> Tuple[bytes, Dict[str, Any]]:
    """A Maildir file's message and envelope: from our first line when it
    is there, else from MailboxServer's trace headers (or empty)."""
    if stored.startswith(ENVELOPE_HEADER):
        line, _, rest = stored.partition(b"\n")
        try:
            envelope = json.loads(base64.b64decode(line[len(ENVELOPE_HEADER):].strip(), validate=True))
        except ValueError:
            envelope = None
        if isinstance(envelope, dict):
            return rest, envelope
    return stored, _trace_envelope(stored)


def _trace_envelope(stored: bytes) -> Dict[str, Any]:
    message = mime.parse(stored[:65536])
    rcpts = [a.strip() for a in mime.header(message, "X-RcptTo").split(",") if a.strip()]
    return {"MailFrom": mime.header(message, "Return-Path").strip("<>"), "RcptTos": rcpts,
            "Peer": mime.header(message, "X-Peer")}


# -- the store ---------------------------------------------------------------------------------
@dataclass
class _Counts:
    dropped: int = 0
    next_seq: int = 0
    subscribers: List["queue.Queue[Optional[Event]]"] = field(default_factory=list)


class Store:
    """Every captured message, newest last; thread-safe (see the module docstring).

    *max_messages*: the most kept (0 or None: no bound).  *maildir*: a
    Maildir path to keep them in (loaded now), else memory.
    """

    def __init__(self, max_messages: Optional[int] = None, maildir: Optional[str] = None) -> None:
        self.max_messages = max_messages or None
        self.backend: Any = MaildirBackend(maildir) if maildir is not None else MemoryBackend()
        self.cond = threading.Condition()
        self._entries: Dict[str, Entry] = {}  # in arrival order (dicts keep it)
        self._counts = _Counts()
        self.closed = False
        for entry in self.backend.load():
            self._entries[entry.id] = entry
        self._counts.next_seq = len(self._entries)
        # Kept as messages arrive, are read and go: a list page then costs the
        # page, not a count over every message (10,000 of them: 3.6 ms).
        self._unread = sum(1 for e in self._entries.values() if not e.read)
        with self.cond:
            self._drop_over_bound()

    @property
    def kind(self) -> str:
        return str(self.backend.kind)

    # -- writers ---------------------------------------------------------------------------
    def add(self, raw: bytes, envelope: Dict[str, Any], created: Optional[float] = None) -> Entry:
        """Store a message; returns its entry.  Parsing happens outside the lock."""
        created = time.time() if created is None else created
        ident = secrets.token_urlsafe(12)
        entry = make_entry(ident, 0, raw, envelope, created)
        stored = dict(envelope, Created=created)
        key = self.backend.save(ident, raw, stored)
        entry.key = key
        if key != ident:  # a Maildir's key is the ID: it survives a restart
            entry.id = key
        with self.cond:
            entry.seq = self._counts.next_seq
            self._counts.next_seq += 1
            self._entries[entry.id] = entry
            self._unread += not entry.read
            self._drop_over_bound()
            self._publish("new", entry.summary())
            self.cond.notify_all()
        return entry

    def _drop_over_bound(self) -> None:
        bound = self.max_messages
        if bound is None:
            return
        while len(self._entries) > bound:
            oldest = next(iter(self._entries))
            entry = self._entries.pop(oldest)
            self._unread -= not entry.read
            self.backend.delete(entry)
            self._counts.dropped += 1
            self._publish("deleted", {"IDs": [oldest]})

    def delete(self, ids: Optional[Iterable[str]] = None) -> List[str]:
        """Delete the messages *ids* (None: all); returns the IDs deleted."""
        with self.cond:
            chosen = list(self._entries) if ids is None else self._known(ids)
            for ident in chosen:
                entry = self._entries.pop(ident)
                self._unread -= not entry.read
                self.backend.delete(entry)
            if chosen:
                self._publish("deleted", {"IDs": None if ids is None else chosen})
            return chosen

    def _known(self, ids: Iterable[str]) -> List[str]:
        """The IDs among *ids* that are stored, each once (a request may
        name one twice)."""
        return [i for i in dict.fromkeys(ids) if i in self._entries]

    def set_read(self, ids: Optional[Iterable[str]], read: bool) -> List[str]:
        """Mark the messages *ids* (None: all) read or unread."""
        with self.cond:
            chosen = list(self._entries) if ids is None else self._known(ids)
            changed = [i for i in chosen if self._entries[i].read != read]
            for ident in changed:
                entry = self._entries[ident]
                entry.read = read
                self._unread += -1 if read else 1
                self.backend.set_read(entry, read)
            if changed:
                self._publish("read", {"IDs": None if ids is None else changed, "Read": read})
            return changed

    # -- readers ---------------------------------------------------------------------------
    def get(self, ident: str) -> Optional[Entry]:
        """The message *ident*; ``latest`` is the newest (Mailpit's alias)."""
        with self.cond:
            if ident == "latest" and ident not in self._entries:
                return next(reversed(self._entries.values()), None) if self._entries else None
            return self._entries.get(ident)

    def raw(self, entry: Entry) -> Optional[bytes]:
        with self.cond:
            return self.backend.raw(entry) if entry.id in self._entries else None

    def page(self, start: int, limit: int, query: str = "") -> Tuple[int, int, List[Entry]]:
        """``(total matching, unread matching, the page)``, newest first."""
        if not terms(query):  # the list: the page only, the counts kept as they change
            with self.cond:
                page = list(itertools.islice(reversed(self._entries.values()), start, start + limit))
                return len(self._entries), self._unread, page
        with self.cond:
            entries = list(self._entries.values())
        entries.reverse()
        for key, text in terms(query):  # one comprehension per term: the fast form of a scan
            entries = [e for e in entries if text in e.search[key]]
        unread = sum(1 for e in entries if not e.read)
        return len(entries), unread, entries[start:start + limit]

    def counts(self) -> Dict[str, Any]:
        """Messages, Unread, Dropped, MaxMessages."""
        with self.cond:
            return {"Messages": len(self._entries), "Unread": self._unread, "Dropped": self._counts.dropped,
                    "MaxMessages": self.max_messages}

    def seq_of(self, ident: str) -> Optional[int]:
        with self.cond:
            entry = self._entries.get(ident)
            return None if entry is None else entry.seq

    def next_seq(self) -> int:
        with self.cond:
            return self._counts.next_seq

    def wait(self, after_seq: int, query: str, timeout: float) -> Optional[Entry]:
        """The first message with a seq >= *after_seq* matching *query*,
        waiting up to *timeout* seconds for one; None on timeout or close."""
        test = matcher(query) if query.strip() else None
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.closed:
                found = self._first_since(after_seq, test)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
        return None

    def _first_since(self, after_seq: int, test: Optional[Callable[[Entry], bool]]) -> Optional[Entry]:
        """The oldest entry from *after_seq* on that passes *test*; only the
        newer entries are looked at (newest first, up to *after_seq*)."""
        found = None
        for entry in reversed(self._entries.values()):
            if entry.seq < after_seq:
                break
            if test is None or test(entry):
                found = entry
        return found

    # -- followers ---------------------------------------------------------------------------
    def subscribe(self) -> "queue.Queue[Optional[Event]]":
        """A queue of the changes from now on: ``(event, data)``; None when
        the store closes or the subscriber fell too far behind."""
        events: "queue.Queue[Optional[Event]]" = queue.Queue(SUBSCRIBER_QUEUE)
        with self.cond:
            if self.closed:
                events.put(None)
            else:
                self._counts.subscribers.append(events)
        return events

    def unsubscribe(self, events: "queue.Queue[Optional[Event]]") -> None:
        with self.cond:
            if events in self._counts.subscribers:
                self._counts.subscribers.remove(events)

    def _publish(self, name: str, data: Any) -> None:
        for events in list(self._counts.subscribers):
            try:
                events.put_nowait((name, data))
            except queue.Full:
                self._counts.subscribers.remove(events)
                _end(events)

    def close(self) -> None:
        """Wake every waiter and end every subscription (the server stops)."""
        with self.cond:
            self.closed = True
            for events in self._counts.subscribers:
                _end(events)
            del self._counts.subscribers[:]
            self.cond.notify_all()


def _end(events: "queue.Queue[Optional[Event]]") -> None:
    """Put the end marker in a queue, making room for it when it is full."""
    while True:
        try:
            events.put_nowait(None)
            return
        except queue.Full:
            try:
                events.get_nowait()
            except queue.Empty:
                pass
