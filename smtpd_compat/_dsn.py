"""DSN (RFC 3461): the parameters a client gives MAIL (``RET``, ``ENVID``)
and RCPT (``NOTIFY``, ``ORCPT``) so that the servers after this one know
which delivery status notifications to send, and what to put in them.
Parsing and checking, with no I/O; docs/extensions.md says what is honoured.

On a server with the option ``dsn`` the session (``_extensions.DSNSession``)
announces ``DSN`` and ``_mail_params`` hands these parameters here: each is
checked as section 4 defines it, xtext (section 4) decoded, and kept in the
session's :class:`Transaction` (``session.dsn``), which ``process_message()``
gets as its ``dsn`` argument (a :class:`DSN`).  Without the option they are
unknown parameters, refused ``555`` as smtpd refused them.

The values are read from the parameters as the client wrote them: smtpd
upper-cases ``mail_options`` and ``rcpt_options``, but an ``ENVID`` or an
``ORCPT`` address is the client's, case included.
"""

from __future__ import annotations

import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from . import _grammar
from . import _replies as R

__all__ = ["DSN", "Recipient", "Transaction", "mail_params", "rcpt_params", "xtext_decode", "xtext_encode"]

# RFC 3461 section 4.4 and 4.2: the longest ENVID and ORCPT values.
ENVID_MAX = 100
ORCPT_MAX = 500
# How much longer MAIL and RCPT lines may be after EHLO (RFC 1869 4.7):
# " RET=HDRS" and " ENVID=" with its value; " NOTIFY=SUCCESS,FAILURE,DELAY"
# and " ORCPT=" with its value.
MAIL_LINE_GROWTH = len(" RET=HDRS") + len(" ENVID=") + ENVID_MAX
RCPT_LINE_GROWTH = len(" NOTIFY=SUCCESS,FAILURE,DELAY") + len(" ORCPT=") + ORCPT_MAX

# xtext (section 4): "+" and two upper-case hex digits, or a printable
# US-ASCII character other than "+" and "=".
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*\Z")
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
# RFC 6533 section 3, the "utf-8" address type: QCHARs (printable US-ASCII
# but "+", "=" and "\"), "\x{HEX}" for any other character and, in an
# SMTPUTF8 transaction, UTF-8 characters as they are.
_UTF8_ADDR = re.compile(r"(?:[!-*,-<>-\[\]-~]|\\x\{[0-9A-Fa-f]{1,6}\})+\Z")
_UTF8_ADDR_UNITEXT = re.compile(r"(?:[!-*,-<>-\[\]-~\u0080-\U0010ffff]|\\x\{[0-9A-Fa-f]{1,6}\})+\Z")
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")
# An address type: an atom, in practice a registered name such as
# "rfc822", "utf-8" or "x400".
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")

NOTIFY_VALUES = ("SUCCESS", "FAILURE", "DELAY")


class Recipient(NamedTuple):
    """The DSN parameters of one recipient (one RCPT command)."""

    address: str
    # ("NEVER",), or some of ("SUCCESS", "FAILURE", "DELAY") in the
    # client's order; None when NOTIFY was not given.
    notify: Optional[Tuple[str, ...]] = None
    # (address type in lower case, address decoded): ("rfc822",
    # "Bob@example.com"); None when ORCPT was not given.
    orcpt: Optional[Tuple[str, str]] = None
    # The NOTIFY and ORCPT parameters as the client wrote them, which
    # PureProxy relays.
    params: Tuple[str, ...] = ()


class DSN(NamedTuple):
    """What ``process_message()`` gets as ``dsn``: the DSN parameters of
    the message's transaction."""

    # "FULL" or "HDRS"; None when RET was not given.
    ret: Optional[str]
    # The envelope identifier, xtext decoded; None when not given.
    envid: Optional[str]
    # One Recipient per address of rcpttos, in the same order (notify and
    # orcpt None for a recipient given without them).
    recipients: Tuple[Recipient, ...]
    # The RET and ENVID parameters as the client wrote them.
    params: Tuple[str, ...] = ()


class Transaction:
    """The DSN parameters of the transaction being received (the session's
    ``dsn``): MAIL's, and each recipient's by its index in rcpttos."""

    __slots__ = ("ret", "envid", "params", "recipients")

    def __init__(self, ret: Optional[str] = None, envid: Optional[str] = None, params: Tuple[str, ...] = ()) -> None:
        self.ret = ret
        self.envid = envid
        self.params = params
        self.recipients: Dict[int, Recipient] = {}

    def dsn(self, rcpttos: Sequence[str]) -> DSN:
        """The :class:`DSN` of the message to *rcpttos*."""
        recipients = self.recipients
        return DSN(
            self.ret,
            self.envid,
            tuple(recipients.get(index) or Recipient(address) for index, address in enumerate(rcpttos)),
            self.params,
        )


def of(transaction: Optional[Transaction], rcpttos: Sequence[str]) -> DSN:
    """The :class:`DSN` of a message (*transaction*: the session's ``dsn``,
    None when no DSN parameter was given)."""
    return (transaction or Transaction()).dsn(rcpttos)


# -- xtext -----------------------------------------------------------------------------------
def xtext_decode(text: str) -> Optional[str]:
    """*text* decoded from xtext (RFC 3461 section 4), or None when it is
    not xtext, or encodes octets that are not UTF-8."""
    if not _XTEXT.match(text):
        return None
    if "+" not in text:
        return text
    octets = bytearray()
    start = 0
    for hexchar in _HEXCHAR.finditer(text):
        octets += text[start : hexchar.start()].encode("ascii")
        octets.append(int(hexchar.group(1), 16))
        start = hexchar.end()
    octets += text[start:].encode("ascii")
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        return None


def xtext_encode(text: str) -> str:
    """*text* as xtext: "+", "=", controls, space and non-ASCII (as UTF-8
    octets) hex-encoded."""
    return "".join(
        ch if "!" <= ch <= "~" and ch not in "+=" else "".join("+%02X" % octet for octet in ch.encode("utf-8"))
        for ch in text
    )


def _utf8_address_decode(text: str, unitext: bool) -> Optional[str]:
    """An ORCPT address of type "utf-8" (RFC 6533 section 3) decoded, or
    None.  UTF-8 characters as such only in an SMTPUTF8 transaction."""
    if not (_UTF8_ADDR_UNITEXT if unitext else _UTF8_ADDR).match(text):
        return None
    points = [int(m.group(1), 16) for m in _EMBEDDED.finditer(text)]
    if any(point == 0 or point > 0x10FFFF or 0xD800 <= point <= 0xDFFF for point in points):
        return None
    return _EMBEDDED.sub(lambda m: chr(int(m.group(1), 16)), text)


# -- the parameters ----------------------------------------------------------------------------
def _given(params: str, names: Tuple[str, ...]) -> Dict[str, Optional[str]]:
    """The parameters of *names* in *params* (as the client wrote them),
    by upper-case keyword: their value, or None for a keyword without one.
    ReplyError for one given twice (smtpd's dict of parameters would keep
    the last one silently)."""
    given: Dict[str, Optional[str]] = {}
    for token in params.split():
        keyword, eq, value = token.partition("=")
        keyword = keyword.upper()
        if keyword in names:
            if keyword in given:
                raise _grammar.ReplyError(R.DSN_DUPLICATE % keyword)
            given[keyword] = value if eq else None
    return given


def mail_params(parsed: Dict[str, Union[str, bool]], params: str) -> Optional[Transaction]:
    """MAIL's RET and ENVID, taken out of *parsed* (the parameters as
    ``_getparams`` made them; *params*: as the client wrote them): the
    :class:`Transaction` they start, None when neither was given.
    ReplyError for one that is not valid."""
    given = _given(params, ("RET", "ENVID"))
    if not given:
        return None
    ret = envid = None
    if "RET" in given:
        ret = (given["RET"] or "").upper()
        if ret not in ("FULL", "HDRS"):
            raise _grammar.ReplyError(R.DSN_BAD_RET)
    if "ENVID" in given:
        value = given["ENVID"] or ""
        envid = xtext_decode(value) if 0 < len(value) <= ENVID_MAX else None
        # Section 4.4: printable (graphic) US-ASCII characters.
        if not envid or not all("!" <= ch <= "~" for ch in envid):
            raise _grammar.ReplyError(R.DSN_BAD_ENVID)
    for keyword in given:
        parsed.pop(keyword, None)
    return Transaction(ret, envid, tuple(_written(params, given)))


def rcpt_params(parsed: Dict[str, Union[str, bool]], params: str, address: str, utf8: bool) -> Recipient:
    """RCPT's NOTIFY and ORCPT, taken out of *parsed* (see
    :func:`mail_params`), for the recipient *address*; *utf8*: the
    transaction is SMTPUTF8.  ReplyError for one that is not valid."""
    given = _given(params, ("NOTIFY", "ORCPT"))
    notify = orcpt = None
    if "NOTIFY" in given:
        notify = _notify(given["NOTIFY"] or "")
    if "ORCPT" in given:
        orcpt = _orcpt(given["ORCPT"] or "", utf8)
    for keyword in given:
        parsed.pop(keyword, None)
    return Recipient(address, notify, orcpt, tuple(_written(params, given)))


def _notify(value: str) -> Tuple[str, ...]:
    """NOTIFY's value (section 4.1): NEVER alone, or a list of SUCCESS,
    FAILURE and DELAY (one mentioned twice counts once)."""
    words = value.upper().split(",")
    if words == ["NEVER"]:
        return ("NEVER",)
    if not all(word in NOTIFY_VALUES for word in words):
        raise _grammar.ReplyError(R.DSN_BAD_NOTIFY)
    return tuple(dict.fromkeys(words))


def _orcpt(value: str, utf8: bool) -> Tuple[str, str]:
    """ORCPT's value (section 4.2): ``addr-type;xtext``, at most 500
    characters; the "utf-8" type's address as RFC 6533 section 3 encodes it."""
    addr_type, semicolon, encoded = value.partition(";")
    decoded: Optional[str] = None
    if semicolon and len(value) <= ORCPT_MAX and _ADDR_TYPE.match(addr_type) and encoded:
        addr_type = addr_type.lower()
        decoded = _utf8_address_decode(encoded, utf8) if addr_type == "utf-8" else xtext_decode(encoded)
    if not decoded:
        raise _grammar.ReplyError(R.DSN_BAD_ORCPT)
    return addr_type, decoded


def _written(params: str, given: Dict[str, Optional[str]]) -> List[str]:
    """The parameters of *given* as the client wrote them, in its order."""
    return [token for token in params.split() if token.partition("=")[0].upper() in given]
