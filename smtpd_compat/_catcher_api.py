"""The catcher's JSON API: ``/api/v1/...`` (list, search, message, raw,
headers, part, tree, delete, read flags, wait, info).

Shapes follow Mailpit's API where that cost little (docs/catcher.md has
the mapping); every captured value leaves as a JSON string (the page puts
it in the DOM as text) or, for a part download, as an ``attachment`` with
``nosniff`` and a ``sandbox`` CSP, its file name RFC 5987-encoded.  Each
handler takes ``(request, match)`` and returns a
:class:`~smtpd_compat._catcher_http.Response`; they are registered with
:func:`~smtpd_compat._catcher_http.route` when this module is imported.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

from . import _catcher_mime as mime
from ._catcher_http import Request, Response, content_disposition, error, json_response, ok, route
from ._catcher_store import Entry

PAGE_LIMIT = 50
MAX_LIMIT = 1000
WAIT_DEFAULT = 10.0
WAIT_MAX = 300.0
_ID = r"(?P<id>[^/]{1,255})"


def _int(query: Dict[str, str], name: str, default: int, top: int) -> int:
    text = query.get(name, "")
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError("%s must be a whole number" % name) from None
    if value < 0:
        raise ValueError("%s must not be negative" % name)
    return min(value, top)


def _listing(request: Request, query: str) -> Response:
    store = request.app.store
    start = _int(request.query, "start", 0, 1 << 31)
    limit = _int(request.query, "limit", PAGE_LIMIT, MAX_LIMIT)
    total, unread, entries = store.page(start, limit, query)
    counts = store.counts()
    return json_response({
        "total": total,
        "unread": unread,
        "count": len(entries),
        "start": start,
        "messages_count": counts["Messages"],
        "dropped": counts["Dropped"],
        "max_messages": counts["MaxMessages"],
        "messages": [entry.summary() for entry in entries],
    })


@route("GET", r"/api/v1/messages")
def list_messages(request: Request, match: Any) -> Response:
    """The list, newest first: ``start``, ``limit`` (default 50)."""
    return _listing(request, "")


@route("GET", r"/api/v1/search")
def search(request: Request, match: Any) -> Response:
    """The list of messages matching ``query`` (see _catcher_store.matcher)."""
    return _listing(request, request.query.get("query", ""))


def _ids(body: Any) -> Optional[List[str]]:
    """The ``IDs`` of a request body; None (all) when absent or empty."""
    if body is None:
        return None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    ids = body.get("IDs")
    if ids is None or ids == []:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("IDs must be a list of strings")
    return ids


@route("DELETE", r"/api/v1/messages")
def delete_messages(request: Request, match: Any) -> Response:
    """Delete the messages of ``{"IDs": [...]}``; all without IDs."""
    request.app.store.delete(_ids(request.json()))
    return ok()


@route("PUT", r"/api/v1/messages")
def mark_messages(request: Request, match: Any) -> Response:
    """``{"IDs": [...], "Read": bool}``: mark read or unread (all without IDs)."""
    body = request.json()
    ids = _ids(body)
    read = body.get("Read") if isinstance(body, dict) else None
    if not isinstance(read, bool):
        raise ValueError("Read must be true or false")
    request.app.store.set_read(ids, read)
    return ok()


def _entry(request: Request, match: Any) -> Optional[Entry]:
    entry: Optional[Entry] = request.app.store.get(match.group("id"))
    return entry


def _missing() -> Response:
    return error(404, "message not found")


def _message(request: Request, entry: Optional[Entry]) -> Any:
    """``(raw, parsed)`` of *entry*; None when there is no such message
    (or it went meanwhile)."""
    raw = request.app.store.raw(entry) if entry is not None else None
    return None if raw is None else (raw, mime.parse(raw))


@route("GET", r"/api/v1/message/" + _ID)
def get_message(request: Request, match: Any) -> Response:
    """The message: summary fields, Text, HTML, parts, envelope; marks it read."""
    entry = _entry(request, match)
    loaded = _message(request, entry)
    if entry is None or loaded is None:
        return _missing()
    raw, message = loaded
    request.app.store.set_read([entry.id], True)
    result = entry.summary()
    result.update(mime.detail(message))
    result["Read"] = True
    if result["Date"] is None:
        result["Date"] = result["Created"]
    result["Envelope"] = envelope(entry)
    return json_response(result)


def envelope(entry: Entry) -> Dict[str, Any]:
    """The SMTP envelope of *entry* as the API shows it."""
    stored = entry.envelope
    return {
        "MailFrom": str(stored.get("MailFrom", "")),
        "RcptTos": list(stored.get("RcptTos", [])),
        "Peer": str(stored.get("Peer", "")),
        "TLS": stored.get("TLS"),
        "Auth": stored.get("Auth"),
        "MailOptions": list(stored.get("MailOptions", [])),
        "RcptOptions": list(stored.get("RcptOptions", [])),
        "Received": mime.rfc3339(entry.created),
    }


@route("GET", r"/api/v1/message/" + _ID + r"/raw")
def get_raw(request: Request, match: Any) -> Response:
    """The source as received, as text/plain (never rendered)."""
    entry = _entry(request, match)
    raw = request.app.store.raw(entry) if entry is not None else None
    if raw is None:
        return _missing()
    return Response(200, raw, "text/plain; charset=utf-8")


@route("GET", r"/api/v1/message/" + _ID + r"/headers")
def get_headers(request: Request, match: Any) -> Response:
    loaded = _message(request, _entry(request, match))
    if loaded is None:
        return _missing()
    return json_response(mime.headers(loaded[1]))


@route("GET", r"/api/v1/message/" + _ID + r"/tree")
def get_tree(request: Request, match: Any) -> Response:
    loaded = _message(request, _entry(request, match))
    if loaded is None:
        return _missing()
    return json_response(mime.tree(loaded[1], len(loaded[0])))


_PART = re.compile(r"[0-9]{1,4}(\.[0-9]{1,4}){0,20}")


@route("GET", r"/api/v1/message/" + _ID + r"/part/(?P<part>[0-9.]{1,100})")
def get_part(request: Request, match: Any) -> Response:
    """One part, decoded, as a download that no browser renders."""
    loaded = _message(request, _entry(request, match))
    if loaded is None:
        return _missing()
    part_id = match.group("part")
    found = mime.part(loaded[1], part_id) if _PART.fullmatch(part_id) else None
    if found is None:
        return error(404, "part not found")
    content, kind, name = found
    if not re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", kind):
        kind = "application/octet-stream"
    headers = [("Content-Disposition", content_disposition(name or "part-%s" % part_id)),
               ("Content-Security-Policy", "sandbox")]
    return Response(200, content, kind, headers)


@route("GET", r"/api/v1/messages/wait")
def wait(request: Request, match: Any) -> Response:
    """Wait for a message newer than ``after`` (or than the call) matching ``query``."""
    store = request.app.store
    try:
        timeout = float(request.query.get("timeout") or WAIT_DEFAULT)
    except ValueError:
        raise ValueError("timeout must be a number of seconds") from None
    if not 0 <= timeout < float("inf"):
        raise ValueError("timeout must be a number of seconds")
    after = request.query.get("after", "")
    if after:
        seq = store.seq_of(after)
        if seq is None:
            return error(404, "no message %s to wait after" % after)
        first = seq + 1
    else:
        first = store.next_seq()
    entry = store.wait(first, request.query.get("query", ""), min(timeout, WAIT_MAX))
    if entry is None:
        return error(408, "timeout")
    return json_response(entry.summary())


@route("GET", r"/api/v1/info")
def info(request: Request, match: Any) -> Response:
    app = request.app
    counts = app.store.counts()
    return json_response({
        "Version": app.version,
        "Messages": counts["Messages"],
        "Unread": counts["Unread"],
        "Dropped": counts["Dropped"],
        "MaxMessages": counts["MaxMessages"],
        "Storage": app.store.kind,
        "SMTP": app.smtp_address_text(),
        "Release": bool(getattr(app, "release_to", None)),
        "Chaos": bool(getattr(app, "chaos_rules", None)),
    })
