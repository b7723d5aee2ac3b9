"""SMTP's grammar and the message's transformations: pure functions, no I/O.

Command lines (:func:`split_command`), paths (:func:`parse_path`, the one
address parser), ESMTP parameters (:func:`parse_params`,
:func:`check_mail_params`), dot-unstuffing (:func:`unstuff_chunks`) and the
reply-safe echo of client text (:func:`reply_safe`).  Nothing here touches a
socket, a clock or a global: each function takes text or bytes and returns a
value or raises :class:`ReplyError`, which carries the reply the session
should send.  The session (``_session``) calls these functions; tests
exercise them directly.
"""

from __future__ import annotations

import re
from typing import AnyStr, Dict, List, Optional, Tuple, Union

from . import _replies as R


class ReplyError(Exception):
    """A protocol error that the session answers with ``reply``."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class AddressError(ValueError):
    """The text is not a valid reverse-path/forward-path."""


# -- command lines ------------------------------------------------------------
def split_command(line: str) -> Tuple[str, Optional[str]]:
    """Split ``"VERB arguments"`` into ``("VERB", "arguments")``.

    The verb is upper-cased; the argument is stripped, or None when the line
    has no space at all (smtpd's rule: ``"NOOP "`` has an empty argument).
    """
    verb, space, arg = line.partition(" ")
    if not space:
        return verb.upper(), None
    return verb.upper(), arg.strip()


def strip_keyword(keyword: str, arg: str) -> str:
    """Return *arg* after the case-insensitive *keyword* (``"FROM:"``), or ''."""
    n = len(keyword)
    if arg[:n].upper() == keyword:
        return arg[n:].strip()
    return ""


# Control characters in client text echoed into a reply: a CR or LF there
# would split the reply into lines of the client's choosing, and reply text
# is printable by design.
_UNSAFE_IN_REPLY = re.compile(r"[\x00-\x1f\x7f]")


def reply_safe(text: str) -> str:
    """*text* from the client, made safe to echo inside one reply line.

    CR, LF and the other control characters (TAB included) and DEL become
    ``\\xNN`` escapes; everything else is kept as smtpd echoed it.
    """
    return _UNSAFE_IN_REPLY.sub(lambda m: "\\x%02x" % ord(m.group()), text)


# -- addresses -----------------------------------------------------------------
# A local part holding any of these must be written as a quoted string.
_NEEDS_QUOTES = frozenset(' \t()<>@,:;\\"[]')


def _quoted_string(text: str, i: int) -> Tuple[str, int]:
    # text[i] is the opening quote; returns (unescaped value, index after).
    out = []
    i += 1
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            if i + 1 >= n:
                break
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), i + 1
        elif ch in "\r\n":
            break
        else:
            out.append(ch)
            i += 1
    raise AddressError("unterminated quoted string")


# Characters that end an unquoted local part or a domain (controls, space,
# DEL and RFC 5322 specials), as a regular expression class: a run of
# address characters is then found in C, not one Python call per character.
_STOP_CLASS = r'\x00-\x20<>()\[\],;:@"\\\x7f'
_RUN = re.compile("[^%s]*" % _STOP_CLASS)


def _run(text: str, i: int) -> int:
    return _RUN.match(text, i).end()  # type: ignore[union-attr]  # "*" always matches


def _domain(text: str, i: int) -> Tuple[str, int]:
    if text[i : i + 1] == "[":
        end = text.find("]", i)
        if end < 0 or any(c in " \t\r\n[\\" for c in text[i + 1 : end]):
            raise AddressError("bad address literal")
        return text[i : end + 1], end + 1
    end = _run(text, i)
    domain = text[i:end]
    # Every label must be non-empty: "a@.b" and "a@b." are not RFC 5321
    # domains (smtpd's parser raised on them and dropped the connection).
    if not domain or domain[0] == "." or domain[-1] == "." or ".." in domain:
        raise AddressError("bad domain")
    return domain, end


def _mailbox(text: str, i: int) -> Tuple[str, int]:
    """Parse ``local-part ["@" domain]`` at text[i:]; return (address, end)."""
    if text[i : i + 1] == '"':
        local, i = _quoted_string(text, i)
        if any(c in _NEEDS_QUOTES for c in local) or not local:
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        end = _run(text, i)
        local = text[i:end]
        if not local or local.strip(".") == "":
            raise AddressError("missing local part")
        i = end
    if text[i : i + 1] == "@":
        domain, i = _domain(text, i + 1)
        return local + "@" + domain, i
    return local, i


def _route(text: str, i: int) -> int:
    """Skip an obsolete source route ``@a,@b:`` (RFC 5321 4.1.2); its hops
    are not kept, as smtpd did not keep them."""
    while True:
        if text[i : i + 1] != "@":
            raise AddressError("bad source route")
        _, i = _domain(text, i + 1)
        if text[i : i + 1] == ",":
            i += 1
            continue
        if text[i : i + 1] == ":":
            return i + 1
        raise AddressError("bad source route")


def parse_path(arg: str) -> Tuple[str, str]:
    """Parse the address at the start of a MAIL/RCPT/VRFY argument.

    Returns ``(address, rest)`` where *rest* is the text after the address
    (the ESMTP parameters).  ``<>`` (the null reverse-path) is returned as
    ``"<>"`` and a quoted local part keeps its quotes only where needed, both
    as smtpd did.  An empty argument gives ``("", "")``.  Anything that is
    not an address raises :class:`AddressError`.
    """
    text = arg.lstrip()
    match = _COMMON_PATH.match(text)
    if match is not None:
        return match.group(1), text[match.end() :]
    return _parse_path_stepwise(text)


# The usual path, "<local@domain>" with an unquoted local part: in one
# match, with the results of the step-by-step parse below (tests check it):
# the local part holds something besides dots, every domain label is
# non-empty.
_COMMON_PATH = re.compile(r"<(\.*{label}{char}*@{label}+(?:\.{label}+)*)>".format(char="[^%s]" % _STOP_CLASS, label="[^.%s]" % _STOP_CLASS))


def _parse_path_stepwise(text: str) -> Tuple[str, str]:
    if not text:
        return "", ""
    if text[0] != "<":
        address, end = _mailbox(text, 0)
        return address, text[end:]
    i = 1
    if text[1:2] == ">":
        return "<>", text[2:]
    if text[1:2] == "@":
        i = _route(text, 1)
    address, end = _mailbox(text, i)
    if text[end : end + 1] != ">":
        raise AddressError("missing '>'")
    return address, text[end + 1 :]


# -- ESMTP parameters ----------------------------------------------------------
def parse_params(words: List[str]) -> Optional[Dict[str, Union[str, bool]]]:
    """Turn ``["SIZE=10", "SMTPUTF8"]`` into ``{"SIZE": "10", "SMTPUTF8": True}``.

    Returns None when a word is not ``keyword[=value]`` (RFC 5321 esmtp-param).
    """
    result: Dict[str, Union[str, bool]] = {}
    for word in words:
        key, eq, value = word.partition("=")
        if not key.isalnum() or (eq and not value):
            return None
        result[key] = value if eq else True
    return result


def check_mail_params(
    params: Dict[str, Union[str, bool]],
    syntax_error: str,
    *,
    decode_data: bool,
    enable_smtputf8: bool,
    data_size_limit: Optional[int],
) -> bool:
    """Validate the MAIL FROM parameters the server knows, in smtpd's order.

    Removes BODY, SMTPUTF8 and SIZE from *params*; returns whether the
    message requires SMTPUTF8.  Raises :class:`ReplyError` on a bad value.
    Parameters left in *params* afterwards are unknown to the server.
    """
    require_smtputf8 = False
    if not decode_data:
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME"):
            raise ReplyError(R.BAD_BODY)
    if enable_smtputf8:
        smtputf8 = params.pop("SMTPUTF8", False)
        if smtputf8 is True:
            require_smtputf8 = True
        elif smtputf8 is not False:
            raise ReplyError(R.SMTPUTF8_NO_ARGS)
    size = params.pop("SIZE", None)
    if size:
        if not isinstance(size, str) or not size.isdigit():
            raise ReplyError(syntax_error)
        if data_size_limit and int(size) > data_size_limit:
            raise ReplyError(R.SIZE_EXCEEDED)
    return require_smtputf8


# -- message data ----------------------------------------------------------------
# The CRLF that ended the DATA command line: it is also the start of the end
# of data, so a message may be empty ("DATA", then "." at once).
DATA_START = b"\r\n"
END_OF_DATA = b"\r\n.\r\n"


def unstuff_chunks(chunks: List[bytes]) -> bytes:
    """Undo dot-stuffing (RFC 5321 4.5.2) and turn CRLF into LF, for a
    message kept as the pieces it arrived in.

    *chunks* hold the raw message text (without ``DATA_START``) up to, not
    including, the final ``<CRLF>.<CRLF>``; the list is emptied.  Result:
    what smtpd passed to ``process_message`` when ``decode_data`` is false:
    lines joined by ``b"\n"``, one leading dot removed from each line.  Pieces
    are joined once, so at most two copies of the message exist at a time
    (the pieces and the joined text, then the joined and the converted
    text), and the result needs no final copy to drop a sentinel.
    """
    if len(chunks) == 1:
        # A message read at once (most small ones): no junctions to check.
        text = chunks.pop()
        if text[:1] != b"." and _BARE_CR.search(text) is None and not _has_stuffed_line(text):
            return text.translate(None, b"\r")  # see below
    elif _plain_pieces(chunks):
        # Then unstuffing is deleting every CR, which translate() does at a
        # third of the cost of replace(CRLF, LF) (that one pays for each of
        # the many matches).  Piece by piece, each result takes the place,
        # and the memory, of the piece it replaces: the message exists
        # twice only while the pieces are joined.
        for i, piece in enumerate(chunks):
            chunks[i] = piece.translate(None, b"\r")
        text = b"".join(chunks)
        chunks.clear()
        return text
    else:
        text = b"".join(chunks)
        chunks.clear()
    if text[:1] == b".":
        text = text[1:]  # the first line has no CRLF before its dot
    if _has_stuffed_line(text):
        text = text.replace(b"\r\n.", b"\r\n")
    return text.replace(b"\r\n", b"\n")


# A CR that does not end a line (RFC 5322 forbids it; it must then be kept),
# or that ends a piece.
_BARE_CR = re.compile(rb"\r(?!\n)")


def _plain_pieces(chunks: List[bytes]) -> bool:
    """Whether the message in *chunks* has no line starting with a dot and
    no CR other than in CRLF, judged piece by piece without joining them.

    A CR at the end of a piece counts as bare (the answer may be a false
    "no", never a false "yes"), so CRLF-dot can only span two pieces as
    CRLF | dot, which is checked at each junction.
    """
    line_start = True  # the message starts a line
    for piece in chunks:
        if not piece:
            continue
        if line_start and piece[:1] == b".":
            return False
        if _BARE_CR.search(piece) is not None or _has_stuffed_line(piece):
            return False
        line_start = piece.endswith(b"\r\n")
    return True


def _has_stuffed_line(text: bytes) -> bool:
    """Whether a line of *text* after the first starts with a dot.

    Searching for CRLF-dot costs a pass over the whole message; looking at
    each dot first costs a memchr() pass plus one test per dot, far less in
    mail with few dots (attachments in base64 have none).  After a number
    of dots proportional to the size, the plain search takes over, so text
    full of dots costs little more than it did.
    """
    budget = len(text) >> 12
    i = text.find(b".", 2)
    while budget > 0:
        if i < 0:
            return False
        if text.startswith(b"\r\n", i - 2):
            return True
        budget -= 1
        i = text.find(b".", i + 1)
    return text.find(b"\r\n.", max(0, i - 2)) >= 0 if i >= 0 else False


def add_peer_header(data: AnyStr, peer_host: str) -> AnyStr:
    """Insert ``X-Peer: <host>`` before the first empty line (the end of the
    headers), or after the last line when there is none, as PureProxy did."""
    if isinstance(data, str):
        nl, header = "\n", "X-Peer: %s" % peer_host
    else:
        nl, header = b"\n", ("X-Peer: %s" % peer_host).encode("ascii", "backslashreplace")
    if not data or data.startswith(nl):
        return header + nl + data
    end = data.find(nl + nl)
    if end >= 0:
        return data[: end + 1] + header + nl + data[end + 1 :]
    if data.endswith(nl):
        return data + header + nl
    return data + nl + header
