"""The PROXY protocol header parser (``_proxy_protocol``): pure, bytes in.

Each case is fed three ways, as h11's tests do: whole, one byte at a time
(every prefix gives None until the last byte), and followed by the SMTP
bytes a client may send in the same segment (which the header's ``length``
leaves out).  Then hypothesis: any input gives None, a header or
ProxyProtocolError, never another exception, and never None past the
largest header; headers built from any addresses parse back to them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd_compat._proxy_protocol import V1_MAX, V2_MAX, V2_SIGNATURE, Header, ProxyProtocolError, parse, wanted

SMTP = b"EHLO client.example\r\n"


def v2(command: int, family: int, block: bytes, version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(block)) + block


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!HH", sport, dport))


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def unix(src: bytes, dst: bytes) -> bytes:
    return src.ljust(108, b"\x00") + dst.ljust(108, b"\x00")


VALID: List[Tuple[str, bytes, Header]] = [
    ("v1 TCP4", b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
     Header(1, 44, "PROXY", ("192.0.2.1", 56324), ("198.51.100.2", 25))),
    ("v1 TCP6", b"PROXY TCP6 2001:db8::1 2001:db8::2 65535 0\r\n",
     Header(1, 44, "PROXY", ("2001:db8::1", 65535), ("2001:db8::2", 0))),
    ("v1 TCP6 normalised", b"PROXY TCP6 2001:DB8:0:0::1 0:0::0:0002 1 2\r\n",
     Header(1, 44, "PROXY", ("2001:db8::1", 1), ("::2", 2))),
    ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n", Header(1, 15, "LOCAL")),
    ("v1 UNKNOWN with addresses", b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", Header(1, 35, "LOCAL")),
    ("v1 longest", b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
     Header(1, 104, "PROXY", ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))),
    ("v1 UNKNOWN of the maximum length", b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n", Header(1, 107, "LOCAL")),
    ("v2 PROXY IPv4", v2(1, 0x11, inet("192.0.2.1", "10.0.0.1", 4321, 25)),
     Header(2, 28, "PROXY", ("192.0.2.1", 4321), ("10.0.0.1", 25))),
    ("v2 PROXY IPv6", v2(1, 0x21, inet6("2001:db8::7", "::1", 40000, 587)),
     Header(2, 52, "PROXY", ("2001:db8::7", 40000), ("::1", 587))),
    ("v2 PROXY IPv4 with TLVs", v2(1, 0x11, inet("192.0.2.1", "10.0.0.1", 1, 2) + tlv(0x04, b"") + tlv(0xEE, b"x" * 300)),
     Header(2, 334, "PROXY", ("192.0.2.1", 1), ("10.0.0.1", 2), ((0x04, b""), (0xEE, b"x" * 300)))),
    ("v2 LOCAL", v2(0, 0x00, b""), Header(2, 16, "LOCAL")),
    ("v2 LOCAL with a block it ignores", v2(0, 0x11, b"\xff" * 5), Header(2, 21, "LOCAL")),
    ("v2 LOCAL of any family", v2(0, 0xFF, b""), Header(2, 16, "LOCAL")),
    ("v2 PROXY UNSPEC", v2(1, 0x00, tlv(1, b"h2")), Header(2, 21, "LOCAL", tlvs=((1, b"h2"),))),
    ("v2 PROXY UNIX", v2(1, 0x31, unix(b"/run/client", b"/run/smtp.sock")),
     Header(2, 232, "LOCAL", "/run/client", "/run/smtp.sock")),
    # UDP: a combination the receiver need not support, so it falls back to UNSPEC (section 2.2).
    ("v2 PROXY UDP over IPv4", v2(1, 0x12, inet("192.0.2.1", "10.0.0.1", 1, 2)), Header(2, 28, "LOCAL")),
    ("v2 PROXY UDP over IPv6", v2(1, 0x22, inet6("::2", "::1", 1, 2) + tlv(4, b"")), Header(2, 55, "LOCAL", tlvs=((4, b""),))),
    ("v2 PROXY UNIX datagram", v2(1, 0x32, unix(b"/a", b"/b")), Header(2, 232, "LOCAL", "/a", "/b")),
]


@pytest.mark.parametrize("name, data, expected", VALID, ids=[case[0] for case in VALID])
def test_a_valid_header_whole(name: str, data: bytes, expected: Header) -> None:
    assert parse(data) == expected
    assert expected.length == len(data)


@pytest.mark.parametrize("name, data, expected", VALID, ids=[case[0] for case in VALID])
def test_a_valid_header_byte_by_byte(name: str, data: bytes, expected: Header) -> None:
    for end in range(len(data)):
        assert parse(data[:end]) is None, data[:end]
        # What the reader may take next without passing the header's end.
        assert 0 < wanted(data[:end])
        if data[:1] != b"P" and end > 0:
            assert end + wanted(data[:end]) <= len(data)  # v2: exact, never past the end
    assert parse(data) == expected


@pytest.mark.parametrize("name, data, expected", VALID, ids=[case[0] for case in VALID])
def test_a_valid_header_followed_by_smtp(name: str, data: bytes, expected: Header) -> None:
    header = parse(data + SMTP)
    assert header == expected
    assert (data + SMTP)[header.length :] == SMTP


def test_wanted_never_reads_past_a_v2_header() -> None:
    data = v2(1, 0x11, inet("192.0.2.1", "10.0.0.1", 1, 2) + tlv(3, b"abcd"))
    for end in range(16, len(data)):
        assert end + wanted(data[:end]) == len(data)
    for end in range(1, 16):
        assert end + wanted(data[:end]) == 16
    assert wanted(b"") == V1_MAX
    assert wanted(b"PROXY ") == V1_MAX - 6


INVALID: List[Tuple[str, bytes]] = [
    ("SMTP instead", b"EHLO client.example\r\n"),
    ("lower case", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("no space after PROXY", b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("unknown protocol", b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("TCP4 with an IPv6 address", b"PROXY TCP4 ::1 ::1 1 2\r\n"),
    ("TCP6 with an IPv4 address", b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("bad IPv4", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"),
    ("IPv4 with a leading zero", b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n"),
    ("scoped IPv6", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
    ("host name", b"PROXY TCP4 localhost 5.6.7.8 1 2\r\n"),
    ("port too large", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"),
    ("negative port", b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n"),
    ("port with a leading zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 025 2\r\n"),
    ("port with a sign", b"PROXY TCP4 1.2.3.4 5.6.7.8 +25 2\r\n"),
    ("non-ASCII digit", "PROXY TCP4 1.2.3.4 5.6.7.8 ٢٥ 2\r\n".encode("utf-8")),
    ("missing port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
    ("extra field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
    ("two spaces", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n"),
    ("trailing space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"),
    ("tab", b"PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n"),
    ("LF alone", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
    ("CR alone", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rEHLO"),
    ("CR inside", b"PROXY UNKNOWN a\rb\r\n"),
    ("too long", b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n"),
    ("no CRLF within 107 bytes", b"PROXY UNKNOWN " + b"x" * 200),
    ("PROXY alone", b"PROXY\r\n"),
    ("v2 bad signature", b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + b"\x00" * 12),
    ("v2 version 1", v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2), version=1)),
    ("v2 version 3", v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2), version=3)),
    ("v2 unknown command", v2(2, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2))),
    ("v2 unknown family", v2(1, 0x41, inet("1.2.3.4", "5.6.7.8", 1, 2))),
    ("v2 IPv4 of no transport", v2(1, 0x10, inet("1.2.3.4", "5.6.7.8", 1, 2))),
    ("v2 unknown transport", v2(1, 0x13, inet("1.2.3.4", "5.6.7.8", 1, 2))),
    ("v2 UDP block too short", v2(1, 0x12, inet("1.2.3.4", "5.6.7.8", 1, 2)[:8])),
    ("v2 IPv4 block too short", v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2)[:11])),
    ("v2 IPv6 block too short", v2(1, 0x21, inet("1.2.3.4", "5.6.7.8", 1, 2))),
    ("v2 UNIX block too short", v2(1, 0x31, b"/tmp/x\x00")),
    ("v2 truncated TLV", v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x01\x00")),
    ("v2 TLV longer than the header", v2(1, 0x11, inet("1.2.3.4", "5.6.7.8", 1, 2) + b"\x01\x00\x05abc")),
]


@pytest.mark.parametrize("name, data", INVALID, ids=[case[0] for case in INVALID])
def test_an_invalid_header_whole_and_followed_by_smtp(name: str, data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(data)
    with pytest.raises(ProxyProtocolError):
        parse(data + SMTP)


@pytest.mark.parametrize("name, data", INVALID, ids=[case[0] for case in INVALID])
def test_an_invalid_header_byte_by_byte(name: str, data: bytes) -> None:
    """Fed a byte at a time, the error comes at the latest with the last
    byte, and once raised it is raised for every longer prefix."""
    failed = False
    for end in range(1, len(data) + 1):
        try:
            result = parse(data[:end])
        except ProxyProtocolError:
            failed = True
            continue
        assert not failed, "accepted %r after refusing a prefix" % data[:end]
        assert result is None
    assert failed


def test_errors_are_value_errors() -> None:
    assert issubclass(ProxyProtocolError, ValueError)


def test_a_v2_length_announcing_too_little_fails_early() -> None:
    """A PROXY header whose length cannot hold its addresses is refused as
    soon as the length is read, not after waiting for the bytes."""
    with pytest.raises(ProxyProtocolError):
        parse((V2_SIGNATURE + b"\x21\x11\x00\x04")[:16])


def test_the_largest_v2_header() -> None:
    block = inet("1.2.3.4", "5.6.7.8", 1, 2) + tlv(0xEE, b"x" * (0xFFFF - 12 - 3))
    data = v2(1, 0x11, block)
    assert len(data) == V2_MAX
    header = parse(data + SMTP)
    assert header is not None and header.length == V2_MAX


# -- any input ---------------------------------------------------------------------------
def _outcome(data: bytes) -> Optional[Header]:
    try:
        return parse(data)
    except ProxyProtocolError:
        return None


PREFIXES = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", V2_SIGNATURE,
                            V2_SIGNATURE + b"\x21\x11", V2_SIGNATURE + b"\x20\x00", V2_SIGNATURE + b"\x21\x21\x00"])


@settings(max_examples=500, deadline=None)
@given(PREFIXES, st.binary(max_size=300))
def test_any_input_gives_none_a_header_or_its_own_error(prefix: bytes, rest: bytes) -> None:
    data = prefix + rest
    try:
        header = parse(data)
    except ProxyProtocolError:
        return
    if header is None:
        # Still the beginning of a header: never longer than the largest one,
        # and what may come next keeps within it.
        assert len(data) < (V1_MAX if data[:1] == b"P" else V2_MAX)
        assert wanted(data) > 0
    else:
        assert 15 <= header.length <= len(data)
        assert parse(data[: header.length]) == header  # it ends where it says


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_any_input_fed_byte_by_byte_agrees_with_whole(data: bytes) -> None:
    seen: Any = "none"
    for end in range(1, len(data) + 1):
        try:
            result = parse(data[:end])
        except ProxyProtocolError:
            result = "error"
        if result is None:
            continue
        seen = result
        break
    whole: Any
    try:
        whole = parse(data)
    except ProxyProtocolError:
        whole = "error"
    if seen == "none":
        assert whole is None
    else:
        assert whole == seen


ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
port = st.integers(0, 65535)


@given(ipv4, ipv4, port, port, st.booleans())
def test_any_ipv4_header_parses_back(src: str, dst: str, sport: int, dport: int, binary: bool) -> None:
    if binary:
        data = v2(1, 0x11, inet(src, dst, sport, dport))
    else:
        data = ("PROXY TCP4 %s %s %d %d\r\n" % (src, dst, sport, dport)).encode("ascii")
    header = parse(data + SMTP)
    assert header is not None
    assert (header.source, header.destination, header.length) == ((src, sport), (dst, dport), len(data))


@given(ipv6, ipv6, port, port, st.booleans())
def test_any_ipv6_header_parses_back(src: str, dst: str, sport: int, dport: int, binary: bool) -> None:
    if binary:
        data = v2(1, 0x21, inet6(src, dst, sport, dport))
    else:
        data = ("PROXY TCP6 %s %s %d %d\r\n" % (src, dst, sport, dport)).encode("ascii")
    header = parse(data + SMTP)
    assert header is not None
    assert (header.source, header.destination, header.length) == ((src, sport), (dst, dport), len(data))
