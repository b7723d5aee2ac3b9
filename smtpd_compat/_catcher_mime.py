"""The catcher's reading of a captured message: pure, no I/O, no locks.

From the raw bytes of a message this module makes what the HTTP API
shows: the list's summary (:func:`summary`), the message's parsed parts
(:func:`detail`), its headers (:func:`headers`), its MIME tree
(:func:`tree`), one decoded part (:func:`part`), the text searched
(:func:`search_fields`) and the HTML shown in the page's sandboxed frame
(:func:`view_html`).

A captured message is untrusted and may be broken in any way: every
function here answers for any bytes, with what could be parsed and
defaults for the rest, and never raises (the email package's parser is
lenient, but reading a header or decoding a part can still raise, so each
such read goes through :func:`_safe`).  Nothing here escapes for HTML:
values leave as JSON strings, and the page puts them in the DOM as text.

Part IDs number the leaves and containers as IMAP does (RFC 3501 6.4.5):
the children of a multipart are ``1``, ``2``..., their children ``1.1``,
``1.2``...; a message that is not multipart has the one part ``1``; the
tree's root (the whole message) is ``0``.
"""

from __future__ import annotations

import base64
import email
import email.message
import email.policy
import email.utils
import functools
import re
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, TypeVar

T = TypeVar("T")
Message = email.message.Message
Addr = Dict[str, str]

#: The most of a message's body text kept for searching and the snippet
#: (kept in memory for every message, also with a Maildir).
SEARCH_BODY_LIMIT = 16 * 1024
SNIPPET_LENGTH = 250


def _safe(func: Callable[[], T], default: T) -> T:
    """*func*'s result, or *default* when the captured message makes it
    raise (a broken header, an unknown charset, a bad transfer encoding)."""
    try:
        return func()
    except Exception:  # noqa: BLE001 - any input gives an answer, never an exception
        return default


def _once(part: Message, key: str, compute: Callable[[], T]) -> T:
    """*compute*'s result for *part*, computed once per parsed part.  Reading
    a header through the default policy's registry is most of the cost of
    indexing a message, and the list, the bodies, the files and the search
    each ask a part for its type (about 50 times for a message with two
    bodies, 5.7 ms a message before this)."""
    memo: Dict[str, Any] = part.__dict__.setdefault("_catcher_once", {})
    if key not in memo:
        memo[key] = compute()
    return memo[key]  # type: ignore[no-any-return]


def parse(raw: bytes) -> Message:
    """*raw* parsed with :data:`email.policy.default` (an empty message
    when even that fails)."""
    return _safe(lambda: email.message_from_bytes(raw, policy=email.policy.default), email.message.EmailMessage())


def _text(value: Any) -> str:
    """A header value as one line of text (folds and control characters
    made spaces: a value is shown on one line, and never sent in an HTTP
    header anyway)."""
    return " ".join(str(value).split())


def header(message: Message, name: str) -> str:
    """The first *name* header, decoded, on one line ('' when absent or broken)."""
    return _once(message, "h:" + name.lower(), lambda: _safe(lambda: _text(message.get(name, "")), ""))


def _raw_header_values(message: Message, name: str) -> List[str]:
    return _safe(lambda: [str(v) for v in message.get_all(name, [])], [])


def addresses(message: Message, name: str) -> List[Addr]:
    """The addresses of every *name* header, as ``{"Name", "Address"}``."""
    return [dict(a) for a in _once(message, "a:" + name.lower(), lambda: _addresses(message, name))]


def _addresses(message: Message, name: str) -> List[Addr]:
    values = _raw_header_values(message, name)
    no_pairs: List[Tuple[str, str]] = []
    pairs = _safe(lambda: email.utils.getaddresses(values), no_pairs)
    return [{"Name": _text(n), "Address": _text(a)} for n, a in pairs if n or a]


def date_of(message: Message) -> Optional[str]:
    """The Date header as an RFC 3339 UTC string, None when absent or unreadable."""
    value = header(message, "Date")
    if not value:
        return None
    when = _safe(lambda: email.utils.parsedate_to_datetime(value), None)
    if when is None or when.tzinfo is None:
        return None
    return _safe(lambda: rfc3339(when.timestamp()), None)


def rfc3339(timestamp: float) -> str:
    """Seconds since the epoch as ``2026-12-02T12:34:56.789Z``."""
    import datetime

    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)


# -- parts ----------------------------------------------------------------------------
def numbered(message: Message) -> Iterator[Tuple[str, Message]]:
    """Every part below the root with its part ID, depth first."""
    if not _container(message):
        yield "1", message
        return
    yield from _children("", message)


def _children(prefix: str, message: Message) -> Iterator[Tuple[str, Message]]:
    payload: Any = _safe(message.get_payload, None)
    if not isinstance(payload, list):
        return
    for index, child in enumerate(payload[:1000], 1):
        if not isinstance(child, email.message.Message):
            continue
        part_id = "%s%d" % (prefix, index)
        yield part_id, child
        if _container(child):
            yield from _children(part_id + ".", child)


def _container(part: Message) -> bool:
    """Whether the part's children are parts of this message (multipart/*);
    an attached message (message/rfc822) is one part, a file."""
    return _content_type(part).startswith("multipart/") and _safe(part.is_multipart, False)


def _content_type(part: Message) -> str:
    return _once(part, "type", lambda: _safe(part.get_content_type, "text/plain"))


def _disposition(part: Message) -> Optional[str]:
    return _once(part, "disposition", lambda: _safe(part.get_content_disposition, None))


def filename(part: Message) -> str:
    """The part's file name (Content-Disposition's, or Content-Type's name), on one line."""
    return _once(part, "filename", lambda: _text(_safe(part.get_filename, None) or ""))


def decoded(part: Message) -> bytes:
    """The part's content, transfer encoding undone (its bytes as sent when that fails)."""
    payload = _safe(lambda: part.get_payload(decode=True), None)
    if isinstance(payload, bytes):
        return payload
    inner = _safe(part.get_payload, None)
    if isinstance(inner, list):  # a multipart, or an attached message: its bytes
        if len(inner) == 1 and not _container(part) and isinstance(inner[0], email.message.Message):
            return _safe(inner[0].as_bytes, b"")
        return _safe(part.as_bytes, b"")
    raw: Any = _safe(lambda: _payload(part), "")
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _payload(part: Message) -> Any:
    return part.get_payload(decode=False)


def part_text(part: Message) -> str:
    """A text part decoded to str, by its charset (UTF-8 with replacements otherwise)."""
    content = _safe(part.get_content, None) if hasattr(part, "get_content") else None
    if isinstance(content, str):
        return content
    charset = _safe(part.get_content_charset, None) or "utf-8"
    data = decoded(part)
    return _safe(lambda: data.decode(charset, "replace"), data.decode("utf-8", "replace"))


def _is_attachment(part: Message) -> bool:
    return _disposition(part) == "attachment" or bool(filename(part))


def _bodies(message: Message) -> Tuple[Optional[str], Optional[str]]:
    """The part IDs of the text and HTML bodies (the first of each kind
    that is not an attachment)."""
    text = html = None
    for part_id, part in numbered(message):
        kind = _content_type(part)
        if _is_attachment(part) or _container(part):
            continue
        if kind == "text/plain" and text is None:
            text = part_id
        elif kind == "text/html" and html is None:
            html = part_id
    return text, html


def _attachment(part_id: str, part: Message) -> Dict[str, Any]:
    return {
        "PartID": part_id,
        "FileName": filename(part),
        "ContentType": _content_type(part),
        "ContentID": header(part, "Content-ID").strip("<>"),
        "Size": len(decoded(part)),
    }


def _files(message: Message, bodies: Tuple[Optional[str], Optional[str]]) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(inline parts, attachments): leaves other than the bodies; inline
    ones have a Content-ID and no ``attachment`` disposition."""
    inline: List[Dict[str, Any]] = []
    attached: List[Dict[str, Any]] = []
    for part_id, part in numbered(message):
        if part_id in bodies or _container(part):
            continue
        kind = _content_type(part)
        if not _is_attachment(part) and kind.startswith("text/") and not header(part, "Content-ID"):
            continue  # a further text body (an alternative in a third form): not a file
        if header(part, "Content-ID") and _disposition(part) != "attachment":
            inline.append(_attachment(part_id, part))
        else:
            attached.append(_attachment(part_id, part))
    return inline, attached


def find_part(message: Message, part_id: str) -> Optional[Message]:
    """The part *part_id* of *message*, None when there is none."""
    for number, part in numbered(message):
        if number == part_id:
            return part
    return None


# -- what the API shows -----------------------------------------------------------------
def _text_and_html(message: Message) -> Tuple[str, str]:
    return _once(message, "bodies", lambda: _read_bodies(message))


def _read_bodies(message: Message) -> Tuple[str, str]:
    text_id, html_id = _bodies(message)
    text_part = find_part(message, text_id) if text_id else None
    html_part = find_part(message, html_id) if html_id else None
    text = part_text(text_part) if text_part is not None else ""
    html = part_text(html_part) if html_part is not None else ""
    return text, html


_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)


def html_to_text(html: str) -> str:
    """Rough text of an HTML body, for search and the snippet only."""
    import html as html_module

    return html_module.unescape(_TAGS.sub(" ", html))


def summary(message: Message, size: int) -> Dict[str, Any]:
    """The fields of the list's Summary that come from the message itself
    (the store adds ``ID``, ``Read``, ``Created``)."""
    text, html = _text_and_html(message)
    body = text or html_to_text(html)
    inline, attached = _files(message, _bodies(message))
    senders = addresses(message, "From")
    return {
        "MessageID": header(message, "Message-ID").strip("<>"),
        "From": senders[0] if senders else None,
        "To": addresses(message, "To"),
        "Cc": addresses(message, "Cc"),
        "Bcc": addresses(message, "Bcc"),
        "ReplyTo": addresses(message, "Reply-To"),
        "Subject": header(message, "Subject"),
        "Size": size,
        "Attachments": len(attached),
        "Snippet": " ".join(body[:SEARCH_BODY_LIMIT].split())[:SNIPPET_LENGTH],
        "Tags": [],
    }


def detail(message: Message) -> Dict[str, Any]:
    """The fields of ``GET /api/v1/message/{ID}`` that come from the message."""
    text, html = _text_and_html(message)
    inline, attached = _files(message, _bodies(message))
    return {
        "ReturnPath": header(message, "Return-Path").strip("<>"),
        "Date": date_of(message),
        "Text": text,
        "HTML": html,
        "Inline": inline,
        "Attachments": attached,
    }


def headers(message: Message) -> Dict[str, List[str]]:
    """Every header, decoded, by name (in the case first seen), values in order."""
    result: Dict[str, List[str]] = {}
    names: Dict[str, str] = {}
    no_items: List[Tuple[str, Any]] = []
    for name, value in _safe(lambda: list(message.raw_items()), no_items):
        text = _safe(functools.partial(_fetch, message, name, value), _text(value))
        key = names.setdefault(name.lower(), name)
        result.setdefault(key, []).append(text)
    return result


def _fetch(message: Message, name: str, value: Any) -> str:
    """A raw header value decoded by the message's policy, on one line."""
    policy: Any = message.policy
    return _text(policy.header_fetch_parse(name, value))


def tree(message: Message, size: int) -> Dict[str, Any]:
    """The MIME tree: ``{"PartID", "ContentType", "FileName", "Size", "Children"}``."""
    root: Dict[str, Any] = {"PartID": "0", "ContentType": _content_type(message), "FileName": "", "Size": size, "Children": []}
    nodes: Dict[str, Dict[str, Any]] = {"": root}
    if not _container(message):
        root["Children"].append(_node("1", message))
        return root
    for part_id, part in numbered(message):
        node = _node(part_id, part)
        parent = part_id.rpartition(".")[0]
        nodes.get(parent, root)["Children"].append(node)
        nodes[part_id] = node
    return root


def _node(part_id: str, part: Message) -> Dict[str, Any]:
    multipart = _container(part)
    size = 0 if multipart else len(decoded(part))
    return {"PartID": part_id, "ContentType": _content_type(part), "FileName": filename(part), "Size": size, "Children": []}


def part(message: Message, part_id: str) -> Optional[Tuple[bytes, str, str]]:
    """``(content, content type, file name)`` of part *part_id*, decoded; None when absent."""
    found = find_part(message, part_id)
    if found is None:
        return None
    return decoded(found), _content_type(found), filename(found)


def search_fields(message: Message, mailfrom: str, rcpttos: List[str]) -> Dict[str, str]:
    """The lowercased text each search prefix looks in: ``from``
    (header and envelope sender), ``to`` (To, Cc, Bcc and the envelope
    recipients), ``subject`` and ``body`` (text, or the HTML's text)."""
    def joined(names: List[str]) -> str:
        parts: List[str] = []
        for name in names:
            parts.extend("%s <%s>" % (a["Name"], a["Address"]) for a in addresses(message, name))
        return " ".join(parts)

    text, html = _text_and_html(message)
    body = (text + " " + html_to_text(html))[:SEARCH_BODY_LIMIT]
    return {
        "from": (joined(["From"]) + " " + mailfrom).lower(),
        "to": (joined(["To", "Cc", "Bcc"]) + " " + " ".join(rcpttos)).lower(),
        "subject": header(message, "Subject").lower(),
        "body": body.lower(),
    }


# -- the HTML body shown in the page's frame ------------------------------------------------
_CID = re.compile(r"""cid:([^"'\s)>]+)""", re.IGNORECASE)
# A <meta http-equiv="refresh"> would navigate the frame without any
# script: the attribute is renamed, so the browser ignores it.
_HTTP_EQUIV = re.compile(r"http-equiv", re.IGNORECASE)


def view_html(message: Message) -> str:
    """The HTML body for ``/view/{ID}.html``: ``cid:`` references to inline
    parts made ``data:`` URIs (allowed by the view's CSP, which loads
    nothing else), ``http-equiv`` attributes defused.  The text body in a
    ``<pre>`` when there is no HTML; that text is escaped."""
    text, html = _text_and_html(message)
    if not html:
        import html as html_module

        return "<!DOCTYPE html><pre>%s</pre>" % html_module.escape(text)
    images = _inline_by_cid(message)

    def inline(match: "re.Match[str]") -> str:
        return images.get(match.group(1).lower(), match.group(0))

    return _HTTP_EQUIV.sub("data-blocked-http-equiv", _CID.sub(inline, html))


def _inline_by_cid(message: Message) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for _, part in numbered(message):
        cid = header(part, "Content-ID").strip("<>").lower()
        kind = _content_type(part)
        if cid and kind.startswith("image/") and re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+-]+", kind):
            data = base64.b64encode(decoded(part)).decode("ascii")
            found[cid] = "data:%s;base64,%s" % (kind, data)
    return found
