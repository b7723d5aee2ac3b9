"""The ``Received:`` header (RFC 5321 section 4.4) of a server with
``add_received_header=True``: :func:`build` makes it from the session's
facts and a clock value (pure, no I/O); :func:`prepend` gathers those facts
from a channel and puts the header in front of the message that
``_delivery`` hands to ``process_message()``.

What it says (docs/extensions.md has the reasons)::

    Received: from client.example ([192.0.2.1])
    \t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)
    \tby mx.example (smtpd_compat 0.1.0) with ESMTPSA for <bob@example.com>;
    \tWed, 02 Dec 2026 06:00:00 +0100

- ``from``: the HELO/EHLO name when it is a domain or an address literal,
  then the client's address literal (no reverse DNS).  Any other name (or
  none) gives ``from [192.0.2.1] (helo=...)``, the name quoted in a comment.
- ``with``: RFC 3848's ``SMTP``/``ESMTP`` plus ``S`` (TLS) and ``A``
  (authenticated), or RFC 6531's ``UTF8SMTP…`` when MAIL had ``SMTPUTF8``.
- ``for``: only when the message has exactly one recipient.
- no ``id``: the package has no queue ids to tie it to.

Line ends are ``\\n``, as in the data smtpd delivers; lines are folded at
clause boundaries to stay within 78 characters where that is possible.
Outside an SMTPUTF8 transaction the header is ASCII: anything else the
client sent (a name, an address) is replaced or left out.
"""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
import re
from typing import Any, List, Optional, Sequence, Tuple, Union

__all__ = ["MAX_LINE", "address_literal", "build", "prepend", "protocol"]

# RFC 5322 2.1.1: lines SHOULD be no longer than 78 characters.
MAX_LINE = 78

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(r"(?:%s\.)*%s\Z" % (_LABEL, _LABEL))
# With SMTPUTF8, U-labels (RFC 6531 3.3): any non-ASCII character but the
# C1 controls is a letter.
_ULABEL = r"[A-Za-z0-9\u00a0-\U0010ffff](?:[A-Za-z0-9\u00a0-\U0010ffff-]*[A-Za-z0-9\u00a0-\U0010ffff])?"
_UDOMAIN = re.compile(r"(?:%s\.)*%s\Z" % (_ULABEL, _ULABEL))
# RFC 5321 4.1.3, loosely: printable ASCII but brackets and backslash.
_LITERAL = re.compile(r"\[[!-Z^-~]+\]\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL, C1 (NEL...)
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def protocol(extended: bool, tls: bool, auth: bool, utf8: bool) -> str:
    """The ``with`` value: RFC 3848 (``ESMTPSA``...), RFC 6531 4.3 when the
    transaction used SMTPUTF8 (``UTF8SMTPS``...).  TLS and AUTH being ESMTP
    extensions, a session that has either is ``ESMTP…`` even after HELO."""
    if utf8:
        base = "UTF8SMTP"
    elif extended or tls or auth:
        base = "ESMTP"
    else:
        return "SMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")


def address_literal(peer: Any) -> Optional[str]:
    """``[192.0.2.1]`` / ``[IPv6:2001:db8::1]`` for *peer* (a socket
    address), None when it is not an IP address (a Unix socket)."""
    host = peer[0] if isinstance(peer, tuple) and peer else None
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # no IPv6 scope id
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # a dual-stack socket's IPv4 client
            return "[%s]" % ip.ipv4_mapped
        return "[IPv6:%s]" % ip.compressed
    return "[%s]" % ip


def _comment_words(text: str, utf8: bool) -> List[str]:
    """*text* as the words of a comment's content: control characters (and
    non-ASCII outside SMTPUTF8) replaced by ``?``, parentheses and
    backslashes quoted (RFC 5322 3.2.2), spaces collapsed."""
    text = _CONTROL.sub("?", text)
    if not utf8:
        text = _NON_ASCII.sub("?", text)
    text = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return text.split()


def _from_clause(helo: str, peer: Optional[str], utf8: bool) -> List[str]:
    if helo and ((_UDOMAIN if utf8 else _DOMAIN).match(helo) or _LITERAL.match(helo)):
        return ["from", helo] + (["(%s)" % peer] if peer else [])
    words = ["from", peer or "unknown"]
    shown = _comment_words(helo, utf8)
    if shown:
        shown[0] = "(helo=" + shown[0]
        shown[-1] += ")"
        words += shown
    return words


def _for_clause(recipients: Sequence[str], utf8: bool) -> List[str]:
    """``for <address>`` with one recipient (naming one of several would
    tell each who else got the message), and an address that can be shown."""
    if len(recipients) != 1:
        return []
    address = recipients[0]
    if not address or _CONTROL.search(address) or (not utf8 and _NON_ASCII.search(address)):
        return []
    return ["for", address if address.startswith("<") else "<%s>" % address]


_KEYWORDS = frozenset(["from", "by", "with", "for"])


def _fold(clauses: List[List[str]]) -> str:
    """The header's lines: each clause on the current line if it fits,
    else on a new one, folded between its words when it is too long even
    there; a keyword stays with its value, and a word longer than a line
    is left whole."""
    lines = ["Received:"]
    for words in clauses:
        if len(lines[-1]) + 1 + len(" ".join(words)) > MAX_LINE and lines[-1] != "Received:":
            lines.append("\t" + words[0])
            words = words[1:]
        for word in words:
            last = lines[-1].rsplit(None, 1)[-1]
            if len(lines[-1]) + 1 + len(word) <= MAX_LINE or last in _KEYWORDS or last == "Received:":
                lines[-1] += " " + word
            else:
                lines.append("\t" + word)
    return "\n".join(lines) + "\n"


def build(
    *,
    helo: str,
    peer: Optional[str],
    by: str,
    version: str,
    with_: str,
    tls: Optional[Tuple[str, str]] = None,
    recipients: Sequence[str] = (),
    utf8: bool = False,
    now: float,
    tz: Optional[datetime.tzinfo] = None,
) -> str:
    """The ``Received:`` header, ``\\n``-ended, folded.

    *helo*: the HELO/EHLO argument; *peer*: the client's address literal
    (:func:`address_literal`) or None; *by*: the server's name; *with_*:
    :func:`protocol`'s value; *tls*: ``(version, cipher)`` of a TLS session;
    *utf8*: the transaction used SMTPUTF8; *now*: seconds since the epoch,
    shown in *tz* (the local time zone when None).
    """
    clauses = [_from_clause(helo, peer, utf8)]
    if tls is not None:
        words = _comment_words("using %s with cipher %s" % tls, utf8)
        words[0], words[-1] = "(" + words[0], words[-1] + ")"
        clauses.append(words)
    clauses.append(["by", by, "(smtpd_compat", version + ")"])
    clauses.append(["with", with_])
    rcpt = _for_clause(recipients, utf8)
    if rcpt:
        clauses.append(rcpt)
    clauses[-1][-1] += ";"
    when = datetime.datetime.fromtimestamp(now, tz) if tz is not None else datetime.datetime.fromtimestamp(now).astimezone()
    clauses.append([email.utils.format_datetime(when)])
    return _fold(clauses)


def _tls_facts(channel: Any) -> Optional[Tuple[str, str]]:
    """``(version, cipher)`` of *channel*'s TLS session, or None."""
    transport = getattr(channel, "_ac_transport", None)
    if transport is None or not transport.tls:
        return None
    sock = transport.sock
    cipher = sock.cipher()
    return (sock.version() or "TLS", cipher[0] if cipher else "unknown")


def prepend(channel: Any, session: Any, data: Union[bytes, str], now: float) -> Union[bytes, str]:
    """*data* (as process_message takes it) with the Received header of
    *channel*'s transaction in front, as bytes or str like *data*."""
    from . import __version__  # the package, complete by the time a message arrives

    utf8 = bool(session.require_SMTPUTF8)
    tls = _tls_facts(channel) if session.tls_active else None
    header = build(
        helo=session.seen_greeting or "",
        peer=address_literal(channel.peer),
        by=channel.fqdn,
        version=__version__,
        with_=protocol(bool(session.extended_smtp), tls is not None, session.auth_login is not None, utf8),
        tls=tls,
        recipients=session.rcpttos,
        utf8=utf8,
        now=now,
    )
    if getattr(session, "chunked", False):
        header = header.replace("\n", "\r\n")  # BDAT's message is as sent: CRLF (see _chunking)
    if isinstance(data, str):
        return header + data
    return header.encode("utf-8" if utf8 else "ascii", "replace") + data
