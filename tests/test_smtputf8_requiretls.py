"""SMTPUTF8 (RFC 6531) done right, and REQUIRETLS (RFC 8689), opt-in.

Byte-exact transcripts with raw sockets (STARTTLS through tls_helpers),
smtplib where it fits, and PureProxy relaying to an upstream server of this
package, with and without the extension the message needs: what it asks
for is passed on, or the client is refused, never silently downgraded.
"""

from __future__ import annotations

import smtplib
import ssl
from typing import Any, List, Optional

import pytest

from smtpd_compat import _cli, _cli_args, _relay, smtpd
from smtpd_compat import _replies as R

from conftest import TIMEOUT, RawClient, RecordingSMTPServer
from tls_helpers import client_context, server_context, starttls, tls_client, tls_files  # noqa: F401  (fixtures)

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


def connect(server: Any) -> RawClient:
    client = RawClient(server.address)
    assert client.read_reply().startswith(b"220 ")
    return client


def transcript(client: RawClient, lines: List[bytes]) -> List[bytes]:
    return [client.command(line) for line in lines]


# -- SMTPUTF8 ----------------------------------------------------------------------------------
def test_smtputf8_is_always_announced_with_8bitmime(server_factory: Any) -> None:
    # RFC 6531 section 3.1 item 7: SMTPUTF8 implies 8BITMIME.
    client = connect(server_factory(enable_SMTPUTF8=True, data_size_limit=0))
    assert client.command(b"EHLO c") == b"250-localhost\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 HELP\r\n"
    # The only way to drop 8BITMIME (decode_data) cannot go with SMTPUTF8.
    with pytest.raises(ValueError):
        smtpd.SMTPServer(("127.0.0.1", 0), None, enable_SMTPUTF8=True, decode_data=True, map={})


@pytest.mark.parametrize("enhanced", [False, True])
def test_non_ascii_addresses_need_smtputf8_on_mail(server_factory: Any, enhanced: bool) -> None:
    server = server_factory(enable_SMTPUTF8=True, enhanced_status_codes=enhanced)
    client = connect(server)
    client.command(b"EHLO c")
    ok_mail = b"250 2.1.0 OK\r\n" if enhanced else b"250 OK\r\n"
    ok_rcpt = b"250 2.1.5 OK\r\n" if enhanced else b"250 OK\r\n"
    assert transcript(client, [
        "MAIL FROM:<pelé@example.com>".encode(),
        b"MAIL FROM:<a@example.com>",
        "RCPT TO:<jürgen@example.com>".encode(),
        b"RSET",
        "MAIL FROM:<pelé@example.com> SMTPUTF8".encode(),
        "RCPT TO:<jürgen@example.com>".encode(),
    ]) == [
        # The codes are part of the text, with the option on or off.
        b"553 5.6.7 Non-ASCII addresses not permitted for that sender without SMTPUTF8\r\n",
        ok_mail,
        b"553 5.6.7 Non-ASCII addresses not permitted for that recipient without SMTPUTF8\r\n",
        b"250 2.0.0 OK\r\n" if enhanced else b"250 OK\r\n",
        ok_mail,
        ok_rcpt,
    ]


def test_without_enable_smtputf8_non_ascii_addresses_are_smtpds(server_factory: Any) -> None:
    # smtpd 3.11 answered 250 here (it announces no SMTPUTF8); kept byte for byte.
    client = connect(server_factory())
    client.command(b"EHLO c")
    assert transcript(client, ["MAIL FROM:<pelé@example.com>".encode(), "RCPT TO:<jürgen@example.com>".encode()]) == [
        b"250 OK\r\n", b"250 OK\r\n",
    ]
    # SMTPUTF8 is then an unknown parameter, as in smtpd.
    assert client.command(b"RSET") == b"250 OK\r\n"
    assert client.command(b"MAIL FROM:<a@example.com> SMTPUTF8") == b"555 MAIL FROM parameters not recognized or not implemented\r\n"


@pytest.mark.parametrize("utf8", [False, True])
def test_invalid_utf8_is_refused(server_factory: Any, utf8: bool) -> None:
    client = connect(server_factory(enable_SMTPUTF8=utf8))
    client.command(b"EHLO c")
    assert client.command(b"MAIL FROM:<p\xe9l\xc3@example.com> SMTPUTF8") == b"500 Error: bad syntax, command is not valid UTF-8\r\n"
    assert client.command(b"NOOP") == b"250 OK\r\n"


def test_smtplib_sends_utf8_mail(server_factory: Any) -> None:
    server = server_factory(enable_SMTPUTF8=True)
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.sendmail("pelé@example.com", ["jürgen@example.com"], MESSAGE, mail_options=["SMTPUTF8"])
        with pytest.raises(smtplib.SMTPSenderRefused) as info:
            client.sendmail("pelé@example.com", ["b@example.com"], MESSAGE)
        assert info.value.smtp_code == 553
    [message] = server.server.wait_for(1)
    assert message.mailfrom == "pelé@example.com" and message.rcpttos == ["jürgen@example.com"]
    assert "SMTPUTF8" in message.kwargs["mail_options"]


# -- REQUIRETLS: options ---------------------------------------------------------------------------
def test_requiretls_option_checks(server_context: ssl.SSLContext) -> None:
    with pytest.raises(ValueError, match="requiretls needs TLS"):
        smtpd.SMTPServer(("127.0.0.1", 0), None, requiretls=True, map={})
    with pytest.raises(TypeError, match="requiretls must be True or False"):
        smtpd.SMTPServer(("127.0.0.1", 0), None, requiretls=1, tls_context=server_context, map={})
    with pytest.raises(ValueError, match="decode_data"):
        smtpd.SMTPServer(("127.0.0.1", 0), None, requiretls=True, tls_context=server_context, decode_data=True, map={})
    for tls in ({"tls_context": server_context}, {"implicit_tls_context": server_context}):
        server = smtpd.SMTPServer(("127.0.0.1", 0), None, requiretls=True, map={}, **tls)
        assert server.requiretls is True
        server.close()


def test_cli_requiretls_flag(tls_files: Any) -> None:
    argv = ["--requiretls", "--tls-cert", tls_files.cert, "--tls-key", tls_files.key]
    options = _cli.server_options(_cli_args.parse_args(argv))
    assert options["requiretls"] is True and isinstance(options["tls_context"], ssl.SSLContext)
    with pytest.raises(_cli_args.UsageError, match="--requiretls needs --tls-cert"):
        _cli.server_options(_cli_args.parse_args(["--requiretls"]))
    assert "requiretls" not in _cli.server_options(_cli_args.parse_args([]))


# -- REQUIRETLS: the session ------------------------------------------------------------------------
def test_requiretls_is_announced_over_tls_only(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    server = server_factory(tls_context=server_context, requiretls=True, data_size_limit=0)
    client = connect(server)
    assert client.command(b"EHLO c") == b"250-localhost\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 HELP\r\n"
    # Before TLS the parameter is unknown, as any other.
    assert client.command(b"MAIL FROM:<a@example.com> REQUIRETLS") == b"555 MAIL FROM parameters not recognized or not implemented\r\n"
    starttls(client, client_context)
    assert client.command(b"EHLO c") == b"250-localhost\r\n250-8BITMIME\r\n250-REQUIRETLS\r\n250 HELP\r\n"
    # The MAIL line may be 11 octets longer (" REQUIRETLS"), no more.
    for extra, reply in ((11, b"250 OK\r\n"), (12, b"500 Error: line too long\r\n")):
        line = b"MAIL FROM:<%s@example.com> REQUIRETLS" % (b"a" * (512 + extra - 35))
        assert len(line) == 512 + extra  # without its CRLF, as smtpd counted
        assert transcript(client, [line, b"RSET"]) == [reply, b"250 OK\r\n"]
    assert transcript(client, [
        b"MAIL FROM:<a@example.com> REQUIRETLS=YES",
        b"MAIL FROM:<a@example.com> REQUIRETLS",
        b"RCPT TO:<b@example.com>",
        b"DATA",
    ]) == [
        b"501 Error: REQUIRETLS takes no arguments\r\n",
        b"250 OK\r\n",
        b"250 OK\r\n",
        b"354 End data with <CR><LF>.<CR><LF>\r\n",
    ]
    assert client.command(MESSAGE + b".") == b"250 OK\r\n"
    [message] = server.server.wait_for(1)
    assert message.kwargs["mail_options"] == ["REQUIRETLS"]


def test_requiretls_with_smtps_and_enhanced_codes(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    server = server_factory(implicit_tls_context=server_context, requiretls=True, enhanced_status_codes=True)
    client = RawClient(server.address)
    client.sock = client_context.wrap_socket(client.sock, server_hostname="127.0.0.1")
    assert client.read_reply().startswith(b"220 ")
    assert b"250-REQUIRETLS\r\n" in client.command(b"EHLO c")
    assert client.command(b"MAIL FROM:<a@example.com> REQUIRETLS=1") == b"501 5.5.4 Error: REQUIRETLS takes no arguments\r\n"
    assert client.command(b"MAIL FROM:<a@example.com> REQUIRETLS") == b"250 2.1.0 OK\r\n"


def test_requiretls_off_over_tls_is_unknown(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    client = tls_client(server_factory(tls_context=server_context).address, client_context, ehlo=False)
    assert b"REQUIRETLS" not in client.command(b"EHLO c")
    assert client.command(b"MAIL FROM:<a@example.com> REQUIRETLS") == b"555 MAIL FROM parameters not recognized or not implemented\r\n"


# -- PureProxy --------------------------------------------------------------------------------------
def _proxy_to(upstream: Any) -> type:
    class Proxy(smtpd.PureProxy):
        def __init__(self, localaddr: Any, remoteaddr: Any, **kwargs: Any) -> None:
            super().__init__(localaddr, upstream.address, **kwargs)

    return Proxy


@pytest.mark.parametrize("client_smtputf8", [True, False])
def test_proxy_passes_smtputf8_upstream(server_factory: Any, client_smtputf8: bool) -> None:
    upstream = server_factory(enable_SMTPUTF8=True)
    # With enable_SMTPUTF8 the client says SMTPUTF8; without, smtpd's
    # servers took non-ASCII addresses anyway: relayed with SMTPUTF8 too.
    proxy = server_factory(_proxy_to(upstream), enable_SMTPUTF8=client_smtputf8)
    options = ["SMTPUTF8"] if client_smtputf8 else []
    with smtplib.SMTP(*proxy.address, timeout=TIMEOUT) as client:
        client.command_encoding = "utf-8"
        assert client.sendmail("pelé@example.com", ["jürgen@example.com"], MESSAGE, mail_options=options) == {}
    [message] = upstream.server.wait_for(1)
    assert (message.mailfrom, message.rcpttos) == ("pelé@example.com", ["jürgen@example.com"])
    assert "SMTPUTF8" in message.kwargs["mail_options"]


def test_proxy_refuses_utf8_mail_when_upstream_lacks_smtputf8(server_factory: Any) -> None:
    upstream = server_factory()
    proxy = server_factory(_proxy_to(upstream), enable_SMTPUTF8=True)
    client = connect(proxy)
    client.command(b"EHLO c")
    assert transcript(client, [
        b"MAIL FROM:<a@example.com> SMTPUTF8", "RCPT TO:<jürgen@example.com>".encode(), b"DATA", MESSAGE + b".",
    ])[-1] == R.RELAY_NO_SMTPUTF8.encode() + b"\r\n"
    # An ASCII message with SMTPUTF8 needs it too (its headers may be UTF-8).
    assert transcript(client, [b"MAIL FROM:<a@example.com> SMTPUTF8", b"RCPT TO:<b@example.com>", b"DATA", MESSAGE + b"."])[-1] == (
        b"553 5.6.7 Non-ASCII addresses not permitted for that recipient: upstream server does not support SMTPUTF8\r\n"
    )
    # Plain mail is relayed as before.
    assert transcript(client, [b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>", b"DATA", MESSAGE + b"."])[-1] == b"250 OK\r\n"
    [message] = upstream.server.wait_for(1)
    assert "SMTPUTF8" not in message.kwargs["mail_options"]


def test_needs_of() -> None:
    assert _relay.needs_of("a@x", ["b@y"], []) is not _relay.NO_NEEDS
    assert _relay.needs_of("a@x", ["b@y"], []) == _relay.NO_NEEDS
    assert _relay.needs_of("a@x", ["bé@y"], []) == _relay.Needs(smtputf8=True)
    assert _relay.needs_of("a@x", ["b@y"], ["SMTPUTF8", "REQUIRETLS"]) == _relay.Needs(True, True)


def test_requiretls_is_never_relayed_in_clear() -> None:
    # Even to an upstream server that (wrongly) announces REQUIRETLS in clear.
    class Clear:
        sock = None

        def has_extn(self, name: str) -> bool:
            return True

    assert _relay._unmet(Clear(), _relay.Needs(requiretls=True)) == R.RELAY_NO_REQUIRETLS  # type: ignore[arg-type]
    assert _relay._unmet(Clear(), _relay.Needs(smtputf8=True)) is None  # type: ignore[arg-type]


def _requiretls_send(proxy: Any, client_context: ssl.SSLContext) -> Any:
    with smtplib.SMTP(*proxy.address, timeout=TIMEOUT) as client:
        client.starttls(context=client_context)
        return client.sendmail("a@example.com", ["b@example.com"], MESSAGE, mail_options=["REQUIRETLS"])


def test_proxy_relays_requiretls_over_tls_to_an_upstream_that_has_it(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    upstream = server_factory(tls_context=server_context, requiretls=True)
    proxy = server_factory(_proxy_to(upstream), tls_context=server_context, requiretls=True,
                           relay_tls="starttls", relay_tls_context=client_context)
    assert _requiretls_send(proxy, client_context) == {}
    [message] = upstream.server.wait_for(1)
    assert "REQUIRETLS" in message.kwargs["mail_options"]


@pytest.mark.parametrize("upstream_requiretls, relay_tls", [(False, "starttls"), (True, None)], ids=["upstream-lacks-it", "relay-in-clear"])
def test_proxy_refuses_requiretls_without_a_downgrade(
    server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext, upstream_requiretls: bool, relay_tls: Any,
) -> None:
    upstream = server_factory(tls_context=server_context, requiretls=upstream_requiretls)
    relay = {"relay_tls": relay_tls, "relay_tls_context": client_context} if relay_tls else {}
    proxy = server_factory(_proxy_to(upstream), tls_context=server_context, requiretls=True, **relay)
    with pytest.raises(smtplib.SMTPDataError) as info:
        _requiretls_send(proxy, client_context)
    assert (info.value.smtp_code, info.value.smtp_error) == (550, b"5.7.30 REQUIRETLS support required")
    assert upstream.call(lambda: upstream.server.messages) == []
    # Mail without REQUIRETLS still goes through.
    with smtplib.SMTP(*proxy.address, timeout=TIMEOUT) as client:
        client.starttls(context=client_context)
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    assert len(upstream.server.wait_for(1)) == 1


# -- SMTPUTF8 after a refused MAIL ---------------------------------------------------------------
def test_a_refused_mail_does_not_leave_smtputf8_set(server_factory: Any) -> None:
    # smtpd set require_SMTPUTF8 before its other checks and kept it until
    # RSET: the next MAIL, without SMTPUTF8, then took non-ASCII recipients.
    class Picky(RecordingSMTPServer):
        def accept_mail(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
            return "550 no" if address.startswith("no") else None

    client = connect(server_factory(Picky, enable_SMTPUTF8=True))
    client.command(b"EHLO c")
    for refused, reply in ((b"MAIL FROM:<a@example.com> SMTPUTF8 FOO=BAR", R.MAIL_PARAMS_UNKNOWN),
                           (b"MAIL FROM:<a@example.com> SMTPUTF8 SIZE=x", "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
                           (b"MAIL FROM:<no@example.com> SMTPUTF8", "550 no")):
        assert client.command(refused) == reply.encode() + b"\r\n"
        assert transcript(client, [b"MAIL FROM:<a@example.com>", "RCPT TO:<jürgen@example.com>".encode(), b"RSET"]) == [
            b"250 OK\r\n", R.NON_ASCII_RECIPIENT.encode() + b"\r\n", b"250 OK\r\n",
        ]
    # Accepted, it holds for the transaction.
    assert transcript(client, [b"MAIL FROM:<a@example.com> SMTPUTF8", "RCPT TO:<jürgen@example.com>".encode()]) == [b"250 OK\r\n"] * 2
