"""DSN (RFC 3461), opt-in: MAIL's RET and ENVID, RCPT's NOTIFY and ORCPT.

Byte-exact transcripts on raw sockets (every invalid form, duplicates,
xtext), what ``process_message()`` gets, smtplib as a real client, and
PureProxy relaying the parameters to an upstream server of this package
that records them per recipient, or leaving them out for one without DSN.
Off by default: the parameters are then smtpd's unknown ones (555).
"""

from __future__ import annotations

import smtplib
from typing import Any, List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_session import Recorder

from smtpd_compat import _cli, _cli_args, _dsn, _extensions, smtpd
from smtpd_compat import _replies as R
from smtpd_compat._state import Features

from conftest import TIMEOUT, RawClient, RecordingSMTPServer

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"
OK = b"250 OK\r\n"
MAIL_UNKNOWN = b"555 MAIL FROM parameters not recognized or not implemented\r\n"
RCPT_UNKNOWN = b"555 RCPT TO parameters not recognized or not implemented\r\n"


def connect(server: Any, ehlo: bool = True) -> RawClient:
    client = RawClient(server.address)
    assert client.read_reply().startswith(b"220 ")
    if ehlo:
        assert client.command(b"EHLO c").startswith(b"250-")
    return client


def transcript(client: RawClient, lines: List[bytes]) -> List[bytes]:
    return [client.command(line) for line in lines]


def wire(reply: str) -> bytes:
    return reply.encode() + b"\r\n"


# -- off by default ---------------------------------------------------------------------------------
def test_off_by_default_the_parameters_are_smtpds_unknown_ones(server_factory: Any) -> None:
    server = server_factory()
    client = connect(server, ehlo=False)
    assert client.command(b"EHLO c") == b"250-localhost\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n"
    assert transcript(client, [
        b"MAIL FROM:<a@example.com> RET=FULL",
        b"MAIL FROM:<a@example.com> ENVID=x",
        b"MAIL FROM:<a@example.com>",
        b"RCPT TO:<b@example.com> NOTIFY=NEVER",
        b"RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com",
        b"RCPT TO:<b@example.com>",
        b"DATA",
        MESSAGE + b".",
    ]) == [MAIL_UNKNOWN, MAIL_UNKNOWN, OK, RCPT_UNKNOWN, RCPT_UNKNOWN, OK, b"354 End data with <CR><LF>.<CR><LF>\r\n", OK]
    [message] = server.server.wait_for(1)
    assert "dsn" not in message.kwargs


def test_option_checks_and_cli_flag() -> None:
    with pytest.raises(TypeError, match="dsn must be True or False"):
        smtpd.SMTPServer(("127.0.0.1", 0), None, dsn=1, map={})
    server = smtpd.SMTPServer(("127.0.0.1", 0), None, dsn=True, map={})
    assert server.dsn is True
    server.close()
    assert _cli.server_options(_cli_args.parse_args(["--dsn"]))["dsn"] is True
    assert "dsn" not in _cli.server_options(_cli_args.parse_args([]))


# -- the session ------------------------------------------------------------------------------------
@pytest.mark.parametrize("others", [False, True])
def test_ehlo_announces_dsn(server_factory: Any, others: bool) -> None:
    extra = {"pipelining": True, "enhanced_status_codes": True} if others else {}
    client = connect(server_factory(dsn=True, data_size_limit=0, **extra), ehlo=False)
    keywords = b"250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n" if others else b""
    assert client.command(b"EHLO c") == b"250-localhost\r\n250-8BITMIME\r\n" + keywords + b"250-DSN\r\n250 HELP\r\n"
    # HELO: no extension, and no parameter at all (smtpd's syntax error).
    client = connect(server_factory(dsn=True), ehlo=False)
    assert client.command(b"HELO c") == b"250 localhost\r\n"
    assert client.command(b"MAIL FROM:<a@example.com> RET=FULL").startswith(b"501 ")


def test_valid_parameters_reach_process_message(server_factory: Any) -> None:
    server = server_factory(dsn=True)
    client = connect(server)
    assert transcript(client, [
        b"MAIL FROM:<a@example.com> ret=hdrs ENVID=QQ+2B314159+3Dx",
        b"RCPT TO:<b@example.com> NOTIFY=success,Delay ORCPT=rfc822;Bob+40Example.com",
        b"RCPT TO:<c@example.com>",
        b"RCPT TO:<d@example.com> NOTIFY=NEVER",
        b"RCPT TO:<b@example.com> ORCPT=x400;a+2Bb NOTIFY=FAILURE,FAILURE",
        b"DATA",
        MESSAGE + b".",
    ]) == [OK] * 5 + [b"354 End data with <CR><LF>.<CR><LF>\r\n", OK]
    [message] = server.server.wait_for(1)
    dsn = message.kwargs["dsn"]
    assert isinstance(dsn, _dsn.DSN)
    assert (dsn.ret, dsn.envid, dsn.params) == ("HDRS", "QQ+314159=x", ("ret=hdrs", "ENVID=QQ+2B314159+3Dx"))
    assert dsn.recipients == (
        _dsn.Recipient("b@example.com", ("SUCCESS", "DELAY"), ("rfc822", "Bob@Example.com"),
                       ("NOTIFY=success,Delay", "ORCPT=rfc822;Bob+40Example.com")),
        _dsn.Recipient("c@example.com"),
        _dsn.Recipient("d@example.com", ("NEVER",), None, ("NOTIFY=NEVER",)),
        _dsn.Recipient("b@example.com", ("FAILURE",), ("x400", "a+b"), ("ORCPT=x400;a+2Bb", "NOTIFY=FAILURE,FAILURE")),
    )
    # smtpd's arguments as smtpd made them: upper-cased, rcpt_options the last RCPT's.
    assert message.kwargs["mail_options"] == ["RET=HDRS", "ENVID=QQ+2B314159+3DX"]
    assert message.kwargs["rcpt_options"] == ["ORCPT=X400;A+2BB", "NOTIFY=FAILURE,FAILURE"]
    assert message.rcpttos == ["b@example.com", "c@example.com", "d@example.com", "b@example.com"]


def test_a_message_without_parameters_gets_an_empty_dsn(server_factory: Any) -> None:
    server = server_factory(dsn=True)
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    [message] = server.server.wait_for(1)
    assert message.kwargs["dsn"] == _dsn.DSN(None, None, (_dsn.Recipient("b@example.com"),))


BAD_MAIL = [
    (b"RET=FOO", R.DSN_BAD_RET),
    (b"RET", R.DSN_BAD_RET),
    (b"RET=FULL,HDRS", R.DSN_BAD_RET),
    (b"ENVID", R.DSN_BAD_ENVID),
    (b"ENVID=" + b"x" * 101, R.DSN_BAD_ENVID),
    (b"ENVID=a+2b", R.DSN_BAD_ENVID),  # hex digits are upper case
    (b"ENVID=a+2", R.DSN_BAD_ENVID),
    (b"ENVID=a=b", R.DSN_BAD_ENVID),
    (b"ENVID=a+20b", R.DSN_BAD_ENVID),  # a space: not printable (graphic)
    (b"ENVID=a+0Ab", R.DSN_BAD_ENVID),
    (b"ENVID=+C3+A9", R.DSN_BAD_ENVID),  # not US-ASCII
    ("ENVID=é".encode(), R.DSN_BAD_ENVID),
    (b"RET=FULL RET=HDRS", R.DSN_DUPLICATE % "RET"),
    (b"RET=FULL ret=FULL", R.DSN_DUPLICATE % "RET"),
    (b"ENVID=a ENVID=a", R.DSN_DUPLICATE % "ENVID"),
    (b"RET=FULL FOO=BAR", R.MAIL_PARAMS_UNKNOWN),
    (b"NOTIFY=NEVER", R.MAIL_PARAMS_UNKNOWN),  # RCPT's, not MAIL's
    (b"RET=", R.SYNTAX_MAIL + R.PARAMS_SUFFIX),  # smtpd's _getparams: no empty value
]
BAD_RCPT = [
    (b"NOTIFY=NEVER,SUCCESS", R.DSN_BAD_NOTIFY),
    (b"NOTIFY=SUCCESS,,DELAY", R.DSN_BAD_NOTIFY),
    (b"NOTIFY=SOMETIMES", R.DSN_BAD_NOTIFY),
    (b"NOTIFY", R.DSN_BAD_NOTIFY),
    (b"ORCPT", R.DSN_BAD_ORCPT),
    (b"ORCPT=rfc822", R.DSN_BAD_ORCPT),
    (b"ORCPT=rfc822;", R.DSN_BAD_ORCPT),
    (b"ORCPT=;b@example.com", R.DSN_BAD_ORCPT),
    (b"ORCPT=rfc_822;b@example.com", R.DSN_BAD_ORCPT),
    (b"ORCPT=rfc822;b+4", R.DSN_BAD_ORCPT),
    (b"ORCPT=rfc822;b=c", R.DSN_BAD_ORCPT),
    (b"ORCPT=rfc822;" + b"b" * 494, R.DSN_BAD_ORCPT),  # 501 characters
    ("ORCPT=rfc822;jürgen@example.com".encode(), R.DSN_BAD_ORCPT),
    ("ORCPT=utf-8;jürgen@example.com".encode(), R.DSN_BAD_ORCPT),  # raw UTF-8 only with SMTPUTF8
    (b"ORCPT=utf-8;a+2Bb", R.DSN_BAD_ORCPT),  # RFC 6533: "+" is not a QCHAR
    (b"ORCPT=utf-8;a\\x{D800}", R.DSN_BAD_ORCPT),
    (b"NOTIFY=NEVER NOTIFY=NEVER", R.DSN_DUPLICATE % "NOTIFY"),
    (b"ORCPT=rfc822;a ORCPT=rfc822;a", R.DSN_DUPLICATE % "ORCPT"),
    (b"NOTIFY=NEVER FOO=BAR", R.RCPT_PARAMS_UNKNOWN),
    (b"RET=FULL", R.RCPT_PARAMS_UNKNOWN),  # MAIL's, not RCPT's
    (b"NOTIFY=", R.SYNTAX_RCPT + R.PARAMS_SUFFIX),
]


@pytest.mark.parametrize("enhanced", [False, True])
def test_each_invalid_form_is_refused(server_factory: Any, enhanced: bool) -> None:
    client = connect(server_factory(dsn=True, enhanced_status_codes=enhanced, max_errors=None))
    expected = (lambda reply: R.enhanced(reply)) if enhanced else (lambda reply: reply)
    for params, reply in BAD_MAIL:
        assert client.command(b"MAIL FROM:<a@example.com> " + params) == wire(expected(reply)), params
    assert client.command(b"MAIL FROM:<a@example.com>") == (b"250 2.1.0 OK\r\n" if enhanced else OK)
    for params, reply in BAD_RCPT:
        assert client.command(b"RCPT TO:<b@example.com> " + params) == wire(expected(reply)), params
    if enhanced:  # RFC 3463 X.5.4: invalid command arguments
        assert client.command(b"RCPT TO:<b@example.com> NOTIFY=NO") == wire("501 5.5.4 " + R.DSN_BAD_NOTIFY[4:])


def test_longest_values_fit_the_longer_lines(server_factory: Any) -> None:
    server = server_factory(dsn=True)
    client = connect(server)
    envid = b"E" * 100
    orcpt = b"rfc822;" + b"o" * 493  # 500 characters
    mail = b"MAIL FROM:<" + b"a" * 400 + b"@example.com> SIZE=10 RET=HDRS ENVID=" + envid
    rcpt = b"RCPT TO:<" + b"b" * 60 + b"@example.com> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=" + orcpt
    assert len(mail) > 512 and len(rcpt) > 512
    assert transcript(client, [mail, rcpt, b"DATA", MESSAGE + b"."]) == [OK, OK, b"354 End data with <CR><LF>.<CR><LF>\r\n", OK]
    [message] = server.server.wait_for(1)
    assert message.kwargs["dsn"].envid == "E" * 100
    assert message.kwargs["dsn"].recipients[0].orcpt == ("rfc822", "o" * 493)
    # Without the option the same lines are too long.
    client = connect(server_factory())
    assert client.command(mail) == wire(R.LINE_TOO_LONG)
    client.command(b"MAIL FROM:<a@example.com>")
    assert client.command(rcpt) == wire(R.LINE_TOO_LONG)


def test_utf8_orcpt_with_smtputf8(server_factory: Any) -> None:
    server = server_factory(dsn=True, enable_SMTPUTF8=True)
    client = connect(server)
    assert transcript(client, [
        b"MAIL FROM:<a@example.com> SMTPUTF8",
        "RCPT TO:<jürgen@example.com> ORCPT=utf-8;jürgen@example.com".encode(),
        b"RCPT TO:<k@example.com> ORCPT=utf-8;k\\x{FC}rt\\x{2B}x@example.com",
        b"DATA",
        MESSAGE + b".",
    ])[:3] == [OK, OK, OK]
    [message] = server.server.wait_for(1)
    assert [r.orcpt for r in message.kwargs["dsn"].recipients] == [("utf-8", "jürgen@example.com"), ("utf-8", "kürt+x@example.com")]


def test_refused_commands_leave_nothing_behind(server_factory: Any) -> None:
    class Picky(RecordingSMTPServer):
        def accept_mail(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
            return "550 no" if address.startswith("no") else None

        def accept_rcpt(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
            return "550 no" if address.startswith("no") else None

    server = server_factory(Picky, dsn=True)
    client = connect(server)
    assert transcript(client, [
        b"MAIL FROM:<no@example.com> RET=HDRS",  # refused by accept_mail
        b"MAIL FROM:<a@example.com> RET=FOO",  # refused here
        b"MAIL FROM:<a@example.com>",
        b"RCPT TO:<no@example.com> NOTIFY=NEVER",  # refused by accept_rcpt
        b"RCPT TO:<b@example.com> NOTIFY=BAD",
        b"RCPT TO:<b@example.com>",
        b"DATA",
        MESSAGE + b".",
        b"MAIL FROM:<a@example.com> ENVID=one",
        b"RCPT TO:<b@example.com> NOTIFY=DELAY",
        b"RSET",  # the transaction is dropped with its parameters
        b"MAIL FROM:<a@example.com>",
        b"RCPT TO:<b@example.com>",
        b"DATA",
        MESSAGE + b".",
    ]) == [b"550 no\r\n", wire(R.DSN_BAD_RET), OK, b"550 no\r\n", wire(R.DSN_BAD_NOTIFY), OK, b"354 End data with <CR><LF>.<CR><LF>\r\n", OK,
           OK, OK, OK, OK, OK, b"354 End data with <CR><LF>.<CR><LF>\r\n", OK]
    first, second = server.server.wait_for(2)
    for message in (first, second):
        assert message.kwargs["dsn"] == _dsn.DSN(None, None, (_dsn.Recipient("b@example.com"),))


def test_process_message_gets_dsn_only_when_it_takes_it(server_factory: Any) -> None:
    got: List[Any] = []

    class Plain(smtpd.SMTPServer):  # smtpd's signature without **kwargs
        def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, mail_options: Any = None) -> None:
            got.append(("plain", mail_options))

    class Named(smtpd.SMTPServer):
        def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, *, dsn: Any = None) -> None:
            got.append(("named", dsn.ret))

    for cls in (Plain, Named):
        server = server_factory(cls, dsn=True)
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE, mail_options=["RET=FULL"])
    assert [(name, "RET=FULL" in value if name == "plain" else value) for name, value in got] == [("plain", True), ("named", "FULL")]


def test_smtplib_sends_dsn_parameters(server_factory: Any) -> None:
    server = server_factory(dsn=True)
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo()
        assert client.has_extn("dsn")
        refused = client.sendmail("a@example.com", ["b@example.com", "c@example.com"], MESSAGE,
                                  mail_options=["RET=HDRS", "ENVID=id+2B1"], rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;b@example.com"])
        assert refused == {}
    [message] = server.server.wait_for(1)
    dsn = message.kwargs["dsn"]
    assert (dsn.ret, dsn.envid) == ("HDRS", "id+1")
    assert [(r.address, r.notify, r.orcpt) for r in dsn.recipients] == [
        (address, ("SUCCESS", "FAILURE"), ("rfc822", "b@example.com")) for address in ("b@example.com", "c@example.com")
    ]


# -- PureProxy ----------------------------------------------------------------------------------------
def _proxy_to(upstream: Any) -> type:
    class Proxy(smtpd.PureProxy):
        def __init__(self, localaddr: Any, remoteaddr: Any, **kwargs: Any) -> None:
            super().__init__(localaddr, upstream.address, **kwargs)

    return Proxy


SEND = [
    b"MAIL FROM:<a@example.com> RET=HDRS ENVID=env+2B1",
    b"RCPT TO:<b@example.com> NOTIFY=SUCCESS ORCPT=rfc822;B+40example.com",
    b"RCPT TO:<c@example.com>",
    b"RCPT TO:<d@example.com> NOTIFY=NEVER",
    b"DATA",
    MESSAGE + b".",
]


def test_proxy_relays_dsn_parameters_per_recipient(server_factory: Any) -> None:
    upstream = server_factory(dsn=True)
    proxy = server_factory(_proxy_to(upstream), dsn=True)
    assert transcript(connect(proxy), SEND)[-1] == OK
    [message] = upstream.server.wait_for(1)
    dsn = message.kwargs["dsn"]
    assert (dsn.ret, dsn.envid) == ("HDRS", "env+1")
    assert [(r.address, r.notify, r.orcpt) for r in dsn.recipients] == [
        ("b@example.com", ("SUCCESS",), ("rfc822", "B@example.com")),
        ("c@example.com", None, None),
        ("d@example.com", ("NEVER",), None),
    ]


def test_proxy_leaves_them_out_for_an_upstream_without_dsn(server_factory: Any) -> None:
    upstream = server_factory()  # would answer 555 to any of them
    proxy = server_factory(_proxy_to(upstream), dsn=True)
    assert transcript(connect(proxy), SEND)[-1] == OK
    [message] = upstream.server.wait_for(1)
    assert [o for o in message.kwargs["mail_options"] if not o.startswith("SIZE=")] == [] and message.rcpttos == ["b@example.com", "c@example.com", "d@example.com"]


def test_proxy_subclass_deliver_with_other_recipients(server_factory: Any) -> None:
    upstream = server_factory(dsn=True)

    class Dropping(_proxy_to(upstream)):  # type: ignore[misc]
        def _deliver(self, mailfrom: str, rcpttos: List[str], data: Any) -> Any:
            return super()._deliver(mailfrom, [r for r in rcpttos if not r.startswith("b")] + ["x@example.com"], data)

    proxy = server_factory(Dropping, dsn=True)
    assert transcript(connect(proxy), SEND)[-1] == OK
    [message] = upstream.server.wait_for(1)
    assert [(r.address, r.notify) for r in message.kwargs["dsn"].recipients] == [
        ("c@example.com", None), ("d@example.com", ("NEVER",)), ("x@example.com", None),
    ]


# -- xtext and any input ----------------------------------------------------------------------------
def test_xtext() -> None:
    assert _dsn.xtext_decode("a+2Bb+3Dc\\d") == "a+b=c\\d"
    assert _dsn.xtext_decode("+C3+A9") == "é"
    for bad in ("a b", "a=b", "+2b", "+2", "+FF", "é"):
        assert _dsn.xtext_decode(bad) is None, bad
    assert _dsn.xtext_encode("a+b=c é\x01") == "a+2Bb+3Dc+20+C3+A9+01"


@given(st.text())
def test_xtext_round_trip(text: str) -> None:
    encoded = _dsn.xtext_encode(text)
    assert encoded.isascii() and _dsn.xtext_decode(encoded) == text


TOKENS = ["RET=FULL", "RET=hdrs", "RET", "ENVID=a+2B", "ENVID=+ZZ", "NOTIFY=NEVER", "NOTIFY=SUCCESS,DELAY", "NOTIFY=",
          "ORCPT=rfc822;a", "ORCPT=utf-8;\\x{E9}", "ORCPT=utf-8;\\x{110000}", "ORCPT=;", "SIZE=5", "BODY=8BITMIME", "X=Y", "é=1"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["MAIL FROM:<a@x>", "RCPT TO:<b@x>", "RSET", "DATA"]),
                          st.lists(st.sampled_from(TOKENS), max_size=4)), max_size=12))
def test_any_parameters_get_a_reply(commands: List[Any]) -> None:
    host = Recorder(Features(dsn=True))
    _extensions.enable(host.session)
    host.feed(b"EHLO c\r\n")
    for verb, tokens in commands:
        before = len(host.replies)
        host.feed((" ".join([verb] + tokens)).encode() + b"\r\n")
        if verb == "DATA" and host.replies[-1].startswith("354"):
            host.feed(b".\r\n")
        assert len(host.replies) > before
        assert all(reply[:3].isdigit() for reply in host.replies[before:])
