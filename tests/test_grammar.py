"""Table-driven tests of the pure protocol core (``smtpd_compat._grammar``).

No sockets here: every case is text in, value (or ``AddressError`` /
``ReplyError``) out.  Where CPython 3.11's smtpd had defined behaviour, the
expected values are smtpd's; two differential tests also check the parser
against ``email._header_value_parser``, which smtpd used, on generated valid
addresses.
"""

from __future__ import annotations

import string
from typing import Dict, List, Optional, Tuple, Union

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd_compat import _grammar as P
from smtpd_compat import _replies as R

# -- split_command / strip_keyword ------------------------------------------------
SPLIT_CASES = [
    ("NOOP", ("NOOP", None)),
    ("noop", ("NOOP", None)),
    ("NOOP ", ("NOOP", "")),  # smtpd: a space means an (empty) argument
    ("HELO example.org", ("HELO", "example.org")),
    ("helo   example.org  ", ("HELO", "example.org")),
    ("MAIL FROM:<a@b> SIZE=10", ("MAIL", "FROM:<a@b> SIZE=10")),
    ("MAIL\tFROM:<a@b>", ("MAIL\tFROM:<A@B>", None)),  # only a space separates
    ("", ("", None)),
    (" NOOP", ("", "NOOP")),
]


@pytest.mark.parametrize("line, expected", SPLIT_CASES)
def test_split_command(line: str, expected: Tuple[str, Optional[str]]) -> None:
    assert P.split_command(line) == expected


STRIP_CASES = [
    ("FROM:", "FROM:<a@b>", "<a@b>"),
    ("FROM:", "from:<a@b>", "<a@b>"),
    ("FROM:", "From:  <a@b>  ", "<a@b>"),
    ("FROM:", "FROM:", ""),
    ("FROM:", "FROM <a@b>", ""),  # no colon: smtpd gave '' (then 501)
    ("FROM:", "<a@b>", ""),
    ("TO:", "TO:<a@b>", "<a@b>"),
    ("TO:", "to: <a@b> NOTIFY=NEVER", "<a@b> NOTIFY=NEVER"),
]


@pytest.mark.parametrize("keyword, arg, expected", STRIP_CASES)
def test_strip_keyword(keyword: str, arg: str, expected: str) -> None:
    assert P.strip_keyword(keyword, arg) == expected


# -- reply_safe -------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("FOO", "FOO"),
        ("FOO\nBAR", "FOO\\x0aBAR"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("tab\there", "tab\\x09here"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("NÖÖP ☃", "NÖÖP ☃"),  # non-ASCII is left to the reply's encoding
        ("", ""),
    ],
)
def test_reply_safe(text: str, expected: str) -> None:
    assert P.reply_safe(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_reply_safe_leaves_no_line_break(text: str) -> None:
    safe = P.reply_safe(text)
    assert "\r" not in safe and "\n" not in safe
    if text.isprintable():
        assert safe == text


# -- parse_path ---------------------------------------------------------------------
# (argument, address, rest): what smtpd's _getaddr returned for the address;
# ``rest`` is everything after it (the ESMTP parameters).
VALID_PATHS = [
    # plain and angle-bracketed
    ("<a@example.org>", "a@example.org", ""),
    ("a@example.org", "a@example.org", ""),
    ("  <a@example.org>", "a@example.org", ""),
    ("<a@example.org> SIZE=10", "a@example.org", " SIZE=10"),
    ("a@example.org SIZE=10 BODY=8BITMIME", "a@example.org", " SIZE=10 BODY=8BITMIME"),
    ("<a@example.org>junk", "a@example.org", "junk"),
    ("<a@b>,<c@d>", "a@b", ",<c@d>"),
    ("<first.last+tag=x@sub.example.org>", "first.last+tag=x@sub.example.org", ""),
    ("<!#$%&'*+-/=?^_`{|}~@x>", "!#$%&'*+-/=?^_`{|}~@x", ""),
    # no domain (postmaster and local users)
    ("<postmaster>", "postmaster", ""),
    ("<Postmaster>", "Postmaster", ""),
    ("user", "user", ""),
    # the null reverse-path
    ("<>", "<>", ""),
    ("<> SIZE=100", "<>", " SIZE=100"),
    # quoted local parts: quotes kept only where needed
    ('<"a b"@example.org>', '"a b"@example.org', ""),
    ('<"ab"@example.org>', "ab@example.org", ""),
    ('<"a@b"@example.org>', '"a@b"@example.org', ""),
    ('<"a\\"b"@example.org>', '"a\\"b"@example.org', ""),
    ('<"a\\\\b"@example.org>', '"a\\\\b"@example.org', ""),
    ('<"">', '""', ""),
    ('<""@example.org>', '""@example.org', ""),
    ('"a b"@example.org SIZE=1', '"a b"@example.org', " SIZE=1"),
    # source routes (RFC 5321 4.1.2, obsolete): accepted and dropped
    ("<@relay.example:a@example.org>", "a@example.org", ""),
    ("<@r1.example,@r2.example:a@example.org>", "a@example.org", ""),
    ("<@[10.0.0.1],@r2:a@b> SIZE=5", "a@b", " SIZE=5"),
    # address literals
    ("<a@[127.0.0.1]>", "a@[127.0.0.1]", ""),
    ("<a@[IPv6:::1]>", "a@[IPv6:::1]", ""),
    ("<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", ""),
    ("a@[192.0.2.1] SIZE=1", "a@[192.0.2.1]", " SIZE=1"),
    # internationalised (RFC 6531)
    ("<José@example.org>", "José@example.org", ""),
    ("<a@bücher.example>", "a@bücher.example", ""),
    ("<用户@例子.广告>", "用户@例子.广告", ""),
    # obsolete local parts smtpd accepted
    ("<a..b@c>", "a..b@c", ""),
    ("<.a@b>", ".a@b", ""),
    ("<a.@b>", "a.@b", ""),
]


@pytest.mark.parametrize("arg, address, rest", VALID_PATHS)
def test_parse_path_valid(arg: str, address: str, rest: str) -> None:
    assert P.parse_path(arg) == (address, rest)


def test_parse_path_empty() -> None:
    assert P.parse_path("") == ("", "")
    assert P.parse_path("   ") == ("", "")


MALFORMED_PATHS = [
    "<a@b",  # missing '>'
    "<a@b SIZE=1",
    "<@>",
    "<@x>",  # a route with no mailbox
    "<@r1:>",
    "<@r1,a@b>",  # route not ended by ':'
    "<@a,b@c>",
    "@b",
    "a@",
    "<a@>",
    "<a@@b>",
    "<a b@c>",  # unquoted space
    "<a@b c>",
    "<a@ b>",
    "<a@b..c>",
    "<a@.b>",  # empty label at either end of the domain
    "<a@b.>",
    "<a@b.c.>",
    "a@b.",
    "<a@...>",
    '<"unterminated@b>',
    '<"a"b@c>',
    "<a@[1.2.3.4>",  # unterminated literal
    "<a@[1.2.3.4]x>",
    "<a@[1 2]>",
    "<a(comment)@b>",  # RFC 5322 comments are not RFC 5321 syntax
    "<a@b(comment)>",
    "<a@b:c>",
    "<a@b;c>",
    "<a\\b@c>",
    "<a@b\\c>",
    "<\x01a@b>",  # control characters
    "<a@\x01b>",
    "<a\x7f@b>",
    "<a\r\nb@c>",
    "<",
    "<<a@b>>",
    "<.>",
    ">",
]


@pytest.mark.parametrize("arg", MALFORMED_PATHS)
def test_parse_path_malformed(arg: str) -> None:
    with pytest.raises(P.AddressError):
        P.parse_path(arg)


def test_address_error_is_value_error() -> None:
    # Code catching ValueError around address parsing keeps working.
    assert issubclass(P.AddressError, ValueError)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable + "é\x00\x7f用", max_size=40))
def test_parse_path_total(arg: str) -> None:
    """Any text: an (address, rest) pair or AddressError, nothing else."""
    try:
        address, rest = P.parse_path(arg)
    except P.AddressError:
        return
    assert isinstance(address, str) and isinstance(rest, str)
    if arg.strip():
        assert address
        # What follows the address is the tail of the argument, unchanged.
        assert arg.endswith(rest)


# -- differential: the parser smtpd used, on valid addresses ------------------------
def smtpd_getaddr(arg: str) -> Tuple[str, str]:
    """CPython 3.11 smtpd's SMTPChannel._getaddr, on the same stdlib parser."""
    from email._header_value_parser import get_addr_spec, get_angle_addr

    if arg.lstrip().startswith("<"):
        address, rest = get_angle_addr(arg)
    else:
        address, rest = get_addr_spec(arg)
    if not address:
        return address, rest
    return address.addr_spec, rest


ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
atoms = st.text(alphabet=ATEXT, min_size=1, max_size=8)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
labels = st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=8)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)
quoted_locals = st.text(alphabet=string.ascii_letters + ' @,;:<>()[]."\\', min_size=1, max_size=8).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
)


@settings(max_examples=200, deadline=None)
@given(
    local=st.one_of(dot_atoms, quoted_locals),
    domain=st.one_of(domains, st.just("[127.0.0.1]"), st.just("[IPv6:2001:db8::1]")),
    angle=st.booleans(),
)
def test_parse_path_matches_smtpd_on_valid_addresses(local: str, domain: str, angle: bool) -> None:
    arg = "%s@%s" % (local, domain)
    if angle:
        arg = "<" + arg + ">"
    ours = P.parse_path(arg)
    theirs = smtpd_getaddr(arg)
    assert ours[0] == theirs[0]
    assert ours[1] == theirs[1] == ""


@pytest.mark.parametrize("arg", [a for a, _, _ in VALID_PATHS])
def test_valid_table_matches_smtpd(arg: str) -> None:
    """Every address in the table of valid paths is parsed as smtpd did
    (parameters aside: smtpd sometimes dropped the space before them)."""
    assert P.parse_path(arg)[0] == smtpd_getaddr(arg)[0]
    assert P.parse_path(arg)[1].strip() == smtpd_getaddr(arg)[1].strip()


# -- parse_params -------------------------------------------------------------------
PARAM_CASES: List[Tuple[List[str], Optional[Dict[str, Union[str, bool]]]]] = [
    ([], {}),
    (["SIZE=10"], {"SIZE": "10"}),
    (["SMTPUTF8"], {"SMTPUTF8": True}),
    (["SIZE=10", "BODY=8BITMIME", "SMTPUTF8"], {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": True}),
    (["X=a=b"], {"X": "a=b"}),  # the value is everything after the first '='
    (["SIZE=1", "SIZE=2"], {"SIZE": "2"}),  # the last one wins, as in smtpd
    (["SIZE="], None),  # '=' needs a value
    (["=10"], None),  # and a keyword
    (["X-Y=1"], None),  # smtpd accepted only alphanumeric keywords
    (["SIZE=10", "B@D"], None),
    ([""], None),
]


@pytest.mark.parametrize("words, expected", PARAM_CASES)
def test_parse_params(words: List[str], expected: Optional[Dict[str, Union[str, bool]]]) -> None:
    assert P.parse_params(words) == expected


# -- check_mail_params: the checks and their order ------------------------------------
SYNTAX = "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
DEFAULT = dict(decode_data=False, enable_smtputf8=False, data_size_limit=1000)
UTF8 = dict(decode_data=False, enable_smtputf8=True, data_size_limit=1000)
DECODE = dict(decode_data=True, enable_smtputf8=False, data_size_limit=1000)
UNLIMITED = dict(decode_data=False, enable_smtputf8=False, data_size_limit=0)

# (params, options, expected): expected is (require_smtputf8, params left
# over) or the reply of the ReplyError raised.
CHECK_CASES = [
    ({}, DEFAULT, (False, {})),
    ({"BODY": "7BIT"}, DEFAULT, (False, {})),
    ({"BODY": "8BITMIME"}, DEFAULT, (False, {})),
    ({"BODY": "BINARYMIME"}, DEFAULT, R.BAD_BODY),
    ({"BODY": True}, DEFAULT, R.BAD_BODY),
    ({"SIZE": "1000"}, DEFAULT, (False, {})),
    ({"SIZE": "0"}, DEFAULT, (False, {})),
    ({"SIZE": "1001"}, DEFAULT, R.SIZE_EXCEEDED),
    ({"SIZE": "99999999999"}, UNLIMITED, (False, {})),  # no limit, no check
    ({"SIZE": "ten"}, DEFAULT, SYNTAX),
    ({"SIZE": "-1"}, DEFAULT, SYNTAX),
    ({"SIZE": True}, DEFAULT, SYNTAX),  # smtpd crashed (AttributeError) here
    ({"SMTPUTF8": True}, UTF8, (True, {})),
    ({"SMTPUTF8": "yes"}, UTF8, R.SMTPUTF8_NO_ARGS),
    # not enabled / not applicable: left for the caller to refuse (555)
    ({"SMTPUTF8": True}, DEFAULT, (False, {"SMTPUTF8": True})),
    ({"BODY": "8BITMIME"}, DECODE, (False, {"BODY": "8BITMIME"})),
    ({"FOO": "1", "SIZE": "5"}, DEFAULT, (False, {"FOO": "1"})),
    # the order of the checks: BODY, then SMTPUTF8, then SIZE
    ({"SIZE": "ten", "BODY": "X"}, DEFAULT, R.BAD_BODY),
    ({"SIZE": "ten", "SMTPUTF8": "x"}, UTF8, R.SMTPUTF8_NO_ARGS),
    ({"SMTPUTF8": "x", "BODY": "X"}, UTF8, R.BAD_BODY),
    ({"SIZE": "5000", "SMTPUTF8": "x"}, UTF8, R.SMTPUTF8_NO_ARGS),
    ({"SIZE": "5000", "BODY": "8BITMIME", "SMTPUTF8": True}, UTF8, R.SIZE_EXCEEDED),
]


@pytest.mark.parametrize("params, options, expected", CHECK_CASES)
def test_check_mail_params(params: dict, options: dict, expected: object) -> None:
    params = dict(params)
    if isinstance(expected, str):
        with pytest.raises(P.ReplyError) as info:
            P.check_mail_params(params, SYNTAX, **options)
        assert info.value.reply == expected
        assert str(info.value) == expected
    else:
        require_smtputf8, left = expected  # type: ignore[misc]
        assert P.check_mail_params(params, SYNTAX, **options) is require_smtputf8
        assert params == left


# -- unstuff --------------------------------------------------------------------------
# The buffer holds DATA_START (the CRLF ending "DATA") and the raw text up to
# the final <CRLF>.<CRLF>; the result is what process_message receives.
UNSTUFF_CASES = [
    (b"", b""),  # the empty message
    (b"line", b"line"),
    (b"Subject: x\r\n\r\nbody", b"Subject: x\n\nbody"),
    (b"a\r\nb\r\n", b"a\nb\n"),  # the message ended with an empty line
    (b"\r\n", b"\n"),
    (b"..", b"."),  # a line holding one dot, as the client stuffed it
    (b".", b""),
    (b"..leading", b".leading"),
    (b".x", b"x"),  # an unstuffed leading dot is removed too (smtpd did)
    (b"a\r\n..\r\nb", b"a\n.\nb"),
    (b"a\r\n...b", b"a\n..b"),  # only one dot removed
    (b"a.\r\nb..c", b"a.\nb..c"),  # dots elsewhere untouched
    (b"bare\nlf", b"bare\nlf"),
    (b"bare\rcr", b"bare\rcr"),
    (b"\n.x", b"\n.x"),  # a dot after a bare LF is not at a line start
    (b"8bit \xe9\xff\r\n..\xe9", b"8bit \xe9\xff\n.\xe9"),
]


@pytest.mark.parametrize("raw, expected", UNSTUFF_CASES)
def test_unstuff(raw: bytes, expected: bytes) -> None:
    chunks = [raw]
    assert P.unstuff_chunks(chunks) == expected
    assert chunks == []  # consumed


def smtpd_unstuff(raw: bytes) -> bytes:
    """CPython 3.11 smtpd's transparency removal, for comparison."""
    out = []
    for text in raw.split(b"\r\n"):
        out.append(text[1:] if text[:1] == b"." else text)
    return b"\n".join(out)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r\n", b"\r", b"\n", b"\xff", b"x."]), max_size=30).map(b"".join))
def test_unstuff_matches_smtpd(raw: bytes) -> None:
    framed = P.DATA_START + raw + P.END_OF_DATA
    if framed.find(P.END_OF_DATA) != len(P.DATA_START + raw):
        return  # cannot occur: the framing would have ended the message earlier
    assert P.unstuff_chunks([raw]) == smtpd_unstuff(raw)


def test_unstuff_returns_bytes() -> None:
    assert type(P.unstuff_chunks([b"x"])) is bytes


# -- add_peer_header ------------------------------------------------------------------
PEER_CASES = [
    ("Subject: a\n\nbody", "Subject: a\nX-Peer: 192.0.2.1\n\nbody"),
    ("A: 1\nB: 2\n\nbody\n\nmore", "A: 1\nB: 2\nX-Peer: 192.0.2.1\n\nbody\n\nmore"),
    ("Subject: a", "Subject: a\nX-Peer: 192.0.2.1"),  # no body: appended
    ("Subject: a\n", "Subject: a\nX-Peer: 192.0.2.1\n"),
    ("", "X-Peer: 192.0.2.1\n"),
    ("\nbody", "X-Peer: 192.0.2.1\n\nbody"),
]


@pytest.mark.parametrize("data, expected", PEER_CASES)
def test_add_peer_header_str(data: str, expected: str) -> None:
    assert P.add_peer_header(data, "192.0.2.1") == expected


@pytest.mark.parametrize("data, expected", PEER_CASES)
def test_add_peer_header_bytes(data: str, expected: str) -> None:
    # smtpd's PureProxy raised TypeError on bytes (its default!); the same
    # insertion is made on bytes here.
    result = P.add_peer_header(data.encode(), "192.0.2.1")
    assert isinstance(result, bytes)
    assert result == expected.encode()


def smtpd_add_peer(data: str, host: str) -> str:
    """CPython 3.11 PureProxy.process_message's header insertion."""
    lines = data.split("\n")
    i = 0
    for line in lines:
        if not line:
            break
        i += 1
    lines.insert(i, "X-Peer: %s" % host)
    return "\n".join(lines)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["H: v", "", "body", "x"]), max_size=8).map("\n".join))
def test_add_peer_header_matches_pureproxy(data: str) -> None:
    assert P.add_peer_header(data, "::1") == smtpd_add_peer(data, "::1")


def test_reply_error_carries_reply() -> None:
    err = P.ReplyError("552 too big")
    assert err.reply == "552 too big"
    assert isinstance(err, Exception)
