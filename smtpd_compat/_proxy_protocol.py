"""The PROXY protocol header (HAProxy's, versions 1 and 2): a pure parser.

A proxy in front of the server (HAProxy, nginx's stream module, a cloud
load balancer) opens each connection with one header naming the client it
relays for.  :func:`parse` takes the bytes read so far and gives ``None``
while they are the beginning of a header, a :class:`Header` once one is
complete (``length`` says where the SMTP bytes start), or raises
:class:`ProxyProtocolError`.  It never raises anything else, whatever the
input (``tests/test_proxy_protocol.py`` checks that with hypothesis), and
never looks past the header.  :func:`wanted` says how many more bytes may
belong to the header, so that the caller reads no SMTP byte by mistake.

Version 1 (text): ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` or
``PROXY UNKNOWN ...\\r\\n``, at most 107 bytes with the CRLF.  Version 2
(binary): a 12-byte signature, the version and command, the address family
and transport, a 16-bit length and that many bytes of addresses followed by
TLVs (walked to check that they fit, otherwise ignored).  The version is
told from the first byte.  No I/O, no clock: the reading lives in
``_proxy_io``.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, NamedTuple, Optional, Tuple

__all__ = ["Header", "ProxyProtocolError", "V1_MAX", "V2_SIGNATURE", "parse", "wanted"]

V1_PREFIX = b"PROXY "
V1_MAX = 107  # "PROXY TCP6" with two longest IPv6 addresses and ports, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # signature, version/command, family/transport, length
V2_MAX = V2_FIXED + 0xFFFF

# Version 2's address families (high nibble of byte 14), and the size of
# their address block: source and destination addresses, then ports (INET).
_UNSPEC, _INET, _INET6, _UNIX = 0, 1, 2, 3
_ADDRESS_SIZE = {_UNSPEC: 0, _INET: 12, _INET6: 36, _UNIX: 216}
# The family/transport bytes a sender may emit (section 2.2).  TCP over IPv4
# and IPv6 name the client; for the others a receiver falls back to UNSPEC,
# the connection's own addresses ("DGRAM" has no place under SMTP, UNIX no IP).
_TCP = (0x11, 0x21)
_VALID_FAMILIES = (0x00, 0x11, 0x12, 0x21, 0x22, 0x31, 0x32)


class ProxyProtocolError(ValueError):
    """The bytes are not a valid PROXY protocol header: the connection is closed."""


class Header(NamedTuple):
    """A complete header.

    ``version`` is 1 or 2; ``length`` the number of bytes it took.
    ``command`` is ``"PROXY"`` when the header names the connection's real
    ends, ``"LOCAL"`` when it names none (version 2's LOCAL command, a
    version 1 ``UNKNOWN`` line, or a version 2 family and transport other
    than TCP over IPv4 or IPv6: ``UNSPEC``, UDP, ``UNIX``, for which the
    specification has a receiver fall back to the connection's addresses).  ``source`` and ``destination``
    are ``(host, port)`` for TCP over IPv4 or IPv6, the socket path (a str)
    for version 2's UNIX family, None otherwise.  ``tlvs`` are version 2's
    ``(type, value)`` pairs, in order.
    """

    version: int
    length: int
    command: str
    source: Optional[Any] = None
    destination: Optional[Any] = None
    tlvs: Tuple[Tuple[int, bytes], ...] = ()


def wanted(data: bytes) -> int:
    """How many more bytes may still belong to the header that *data*
    starts (a proper beginning of one: :func:`parse` gave None).  Reading
    no more than that never reads past the header, except for version 1,
    whose end is known only when its CRLF is seen (peek, then take up to it)."""
    if not data:
        return V1_MAX  # either version: a peek may look this far
    if data[:1] == V1_PREFIX[:1]:
        return V1_MAX - len(data)
    if len(data) < V2_FIXED:
        return V2_FIXED - len(data)
    length: int = struct.unpack_from("!H", data, 14)[0]
    return V2_FIXED + length - len(data)


def parse(data: bytes) -> Optional[Header]:
    """The header *data* starts with; None while *data* could still be the
    beginning of one; :class:`ProxyProtocolError` when it cannot be."""
    if not data:
        return None
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    raise ProxyProtocolError("not a PROXY protocol header")


# -- version 1 ---------------------------------------------------------------------
def _parse_v1(data: bytes) -> Optional[Header]:
    head = data[: len(V1_PREFIX)]
    if head != V1_PREFIX[: len(head)]:
        raise ProxyProtocolError("not a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        bare = data.find(b"\n", 0, V1_MAX)
        if bare >= 0 or data.find(b"\r", 0, V1_MAX - 1) not in (-1, len(data) - 1):
            raise ProxyProtocolError("PROXY line not ended by CRLF")
        if len(data) >= V1_MAX:
            raise ProxyProtocolError("PROXY line longer than %d bytes" % V1_MAX)
        return None
    if data.find(b"\n", 0, end) >= 0 or data.find(b"\r", 0, end) >= 0:
        raise ProxyProtocolError("PROXY line not ended by CRLF")
    fields = data[len(V1_PREFIX) : end].split(b" ")
    length = end + 2
    if fields[0] == b"UNKNOWN":
        # The proxy does not know the client: the rest of the line is ignored, as the spec says.
        return Header(1, length, "LOCAL")
    if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
        raise ProxyProtocolError("PROXY line: expected TCP4, TCP6 or UNKNOWN with two addresses and two ports")
    kind = ipaddress.IPv4Address if fields[0] == b"TCP4" else ipaddress.IPv6Address
    source = (_v1_address(kind, fields[1]), _v1_port(fields[3]))
    destination = (_v1_address(kind, fields[2]), _v1_port(fields[4]))
    return Header(1, length, "PROXY", source, destination)


def _v1_address(kind: Any, field: bytes) -> str:
    try:
        if b"%" in field:  # a scoped IPv6 address (Python 3.9+ takes them)
            raise ValueError(field)
        return str(kind(field.decode("ascii")))
    except ValueError:  # UnicodeDecodeError is one
        raise ProxyProtocolError("PROXY line: bad address %r" % field) from None


def _v1_port(field: bytes) -> int:
    # Decimal, 0-65535, no sign, no leading zero.
    if not field.isdigit() or (len(field) > 1 and field[:1] == b"0") or int(field) > 65535:
        raise ProxyProtocolError("PROXY line: bad port %r" % field)
    return int(field)


# -- version 2 ---------------------------------------------------------------------
def _parse_v2(data: bytes) -> Optional[Header]:
    head = data[: len(V2_SIGNATURE)]
    if head != V2_SIGNATURE[: len(head)]:
        raise ProxyProtocolError("not a PROXY protocol header")
    if len(data) > len(V2_SIGNATURE):
        version, command = data[12] >> 4, data[12] & 0x0F
        if version != 2:
            raise ProxyProtocolError("PROXY protocol version %d not supported" % version)
        if command > 1:
            raise ProxyProtocolError("PROXY protocol v2: unknown command %d" % command)
    if len(data) > 13 and data[12] & 0x0F and data[13] not in _VALID_FAMILIES:
        # (With LOCAL the block is discarded whatever it says: the spec.)
        raise ProxyProtocolError("PROXY protocol v2: unknown family/transport 0x%02x" % data[13])
    if len(data) < V2_FIXED:
        return None
    size = struct.unpack_from("!H", data, 14)[0]
    if len(data) < V2_FIXED + size:
        if data[12] & 0x0F and size < _ADDRESS_SIZE[data[13] >> 4]:
            raise ProxyProtocolError("PROXY protocol v2: length %d too short for the addresses" % size)
        return None
    return _v2_header(data[V2_FIXED : V2_FIXED + size], data[12] & 0x0F, data[13])


def _v2_header(block: bytes, command: int, kind: int) -> Header:
    length = V2_FIXED + len(block)
    family = kind >> 4
    used = _ADDRESS_SIZE[family] if command else 0
    if len(block) < used:
        raise ProxyProtocolError("PROXY protocol v2: length %d too short for the addresses" % len(block))
    tlvs = _v2_tlvs(block[used:] if command else b"")
    if not command or kind not in _TCP:
        if command and family == _UNIX:
            return Header(2, length, "LOCAL", _unix_path(block[:108]), _unix_path(block[108:216]), tlvs)
        return Header(2, length, "LOCAL", tlvs=tlvs)
    width = 4 if family == _INET else 16
    sport, dport = struct.unpack_from("!HH", block, 2 * width)
    address = ipaddress.IPv4Address if family == _INET else ipaddress.IPv6Address
    source = (str(address(block[:width])), sport)
    destination = (str(address(block[width : 2 * width])), dport)
    return Header(2, length, "PROXY", source, destination, tlvs)


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _v2_tlvs(rest: bytes) -> Tuple[Tuple[int, bytes], ...]:
    """The TLVs after the addresses (with LOCAL, whatever follows the fixed
    part is skipped unread, as the spec asks); each must fit in the header."""
    found = []
    offset = 0
    while offset < len(rest):
        if len(rest) - offset < 3:
            raise ProxyProtocolError("PROXY protocol v2: truncated TLV")
        kind, size = rest[offset], struct.unpack_from("!H", rest, offset + 1)[0]
        if offset + 3 + size > len(rest):
            raise ProxyProtocolError("PROXY protocol v2: TLV longer than the header")
        found.append((kind, rest[offset + 3 : offset + 3 + size]))
        offset += 3 + size
    return tuple(found)
