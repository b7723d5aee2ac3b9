"""The ESMTP extensions behind options: PIPELINING (RFC 2920) and
ENHANCEDSTATUSCODES (RFC 2034 / RFC 3463), both off by default.

Real loopback sessions: smtplib for what a client library sees (the EHLO
keywords), a raw client for the exact bytes.  The transcripts run twice,
with ``enhanced_status_codes`` on and off: off, every reply must be
smtpd's, i.e. the same text without the enhanced code.
"""

from __future__ import annotations

import concurrent.futures
import queue
import re
import smtplib
import ssl
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_properties import COMMANDS, DATA_LINES
from test_session import Recorder

from smtpd_compat import _cli, _cli_args, _extensions, _replies, _serving, smtpd
from smtpd_compat._state import Features, State
from smtpd_compat.servers import RecordingServer

from conftest import FQDN, TIMEOUT, RawClient, RecordingSMTPServer
from tls_helpers import (  # noqa: F401  (fixtures)
    PASSWORD,
    USER,
    b64,
    cli_server,
    client_context,
    server_context,
    tls_files,
)

MAIL, RCPT = b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@example.com>"
MESSAGE = b"Subject: x\r\n\r\nhello\r\n."
PLAIN_IR = b64(b"\0" + USER.encode() + b"\0" + PASSWORD.encode())
WRONG_IR = b64(b"\0" + USER.encode() + b"\0wrong")
ENHANCED_CODE = re.compile(rb"^(\d{3}[ -])[245]\.\d{1,3}\.\d{1,3} ", re.M)

# A step of a transcript: the line sent, the reply expected with enhanced
# status codes on, and the reply without them (None: the same reply with
# the code taken out, i.e. smtpd's own text).
Step = Tuple[bytes, bytes, Optional[bytes]]


def check(server: Any, channel: Any, mechanism: str, login: str, password: str) -> bool:
    return (login, password) == (USER, PASSWORD)


def broken_check(server: Any, channel: Any, mechanism: str, login: str, password: str) -> bool:
    raise RuntimeError("the password database is down")


def plain(reply: bytes) -> bytes:
    return ENHANCED_CODE.sub(rb"\1", reply)


def line(text: str) -> bytes:
    return (text + "\r\n").encode("ascii")


def connect(st: Any) -> RawClient:
    client = RawClient(st.address)
    greeting = client.read_reply()
    assert greeting == line("220 %s %s" % (FQDN, smtpd.__version__))  # RFC 2034: no code on the greeting
    return client


def run(client: RawClient, steps: Sequence[Step], enhanced: bool) -> None:
    for sent, with_codes, without in steps:
        expected = with_codes if enhanced else (plain(with_codes) if without is None else without)
        assert client.command(sent) == expected, sent


# -- the EHLO keywords -------------------------------------------------------------------
@pytest.mark.parametrize("pipelining", [False, True])
@pytest.mark.parametrize("enhanced", [False, True])
def test_ehlo_announces_each_extension_only_when_enabled(server_factory: Any, pipelining: bool, enhanced: bool) -> None:
    st = server_factory(pipelining=pipelining, enhanced_status_codes=enhanced)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        code, text = client.ehlo("client.example")
        assert code == 250
        assert client.has_extn("pipelining") is pipelining
        assert client.has_extn("enhancedstatuscodes") is enhanced
        # RFC 2034 section 3: no enhanced code on the EHLO reply.
        assert not ENHANCED_CODE.search(text)


def test_default_ehlo_reply_is_smtpds(server_factory: Any) -> None:
    client = connect(server_factory())
    assert client.command(b"EHLO client.example") == (
        line("250-" + FQDN) + b"250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n"
    )


def test_ehlo_reply_with_both_extensions(server_factory: Any) -> None:
    client = connect(server_factory(pipelining=True, enhanced_status_codes=True))
    assert client.command(b"EHLO client.example") == (
        line("250-" + FQDN)
        + b"250-SIZE 33554432\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n"
    )
    # The HELO reply carries no code either.
    client = connect(server_factory(enhanced_status_codes=True))
    assert client.command(b"HELO client.example") == line("250 " + FQDN)


# -- the enhanced status code of each reply ----------------------------------------------
HELO_SESSION: List[Step] = [
    (b"MAIL FROM:<a@example.com>", b"503 5.5.1 Error: send HELO first\r\n", None),
    (b"RCPT TO:<b@example.com>", b"503 5.5.1 Error: send HELO first\r\n", None),
    (b"DATA", b"503 5.5.1 Error: send HELO first\r\n", None),
    # Replies to HELO and EHLO have none (RFC 2034 section 3).
    (b"HELO", b"501 Syntax: HELO hostname\r\n", None),
    (b"EHLO", b"501 Syntax: EHLO hostname\r\n", None),
    (b"HELO client.example", line("250 " + FQDN), None),
    (b"HELO client.example", b"503 Duplicate HELO/EHLO\r\n", None),
    (b"EHLO client.example", b"503 Duplicate HELO/EHLO\r\n", None),
    (b"", b"500 5.5.2 Error: bad syntax\r\n", None),
    (b"XYZZY", b'500 5.5.2 Error: command "XYZZY" not recognized\r\n', None),
    (b"\xff\xfe", b"500 5.5.2 Error: bad syntax, command is not valid UTF-8\r\n", None),
    (b"NOOP " + b"x" * 600, b"500 5.5.2 Error: line too long\r\n", None),
    (b"NOOP", b"250 2.0.0 OK\r\n", None),
    (b"NOOP x", b"501 5.5.4 Syntax: NOOP\r\n", None),
    (b"RSET x", b"501 5.5.4 Syntax: RSET\r\n", None),
    (b"VRFY", b"501 5.5.4 Syntax: VRFY <address>\r\n", None),
    (b"VRFY <b@example.com>",
     b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n", None),
    (b"VRFY <@>", b"502 5.5.4 Could not VRFY <@>\r\n", None),
    (b"EXPN list", b"502 5.5.1 EXPN not implemented\r\n", None),
    (b"HELP", b"250 2.0.0 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY\r\n", None),
    (b"HELP MAIL", b"250 2.0.0 Syntax: MAIL FROM: <address>\r\n", None),
    (b"HELP XYZZY", b"501 5.5.4 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY\r\n", None),
    (b"STARTTLS", b'500 5.5.2 Error: command "STARTTLS" not recognized\r\n', None),
    (b"AUTH PLAIN", b'500 5.5.2 Error: command "AUTH" not recognized\r\n', None),
    (b"RCPT TO:<b@example.com>", b"503 5.5.1 Error: need MAIL command\r\n", None),
    (b"DATA", b"503 5.5.1 Error: need RCPT command\r\n", None),
    (b"MAIL FROM:", b"501 5.5.4 Syntax: MAIL FROM: <address>\r\n", None),
    (b"MAIL FROM:<a@example.com> SIZE=10", b"501 5.5.4 Syntax: MAIL FROM: <address>\r\n", None),
    (MAIL, b"250 2.1.0 OK\r\n", None),
    (MAIL, b"503 5.5.1 Error: nested MAIL command\r\n", None),
    (b"RCPT TO:", b"501 5.5.4 Syntax: RCPT TO: <address>\r\n", None),
    (b"DATA", b"503 5.5.1 Error: need RCPT command\r\n", None),
    (RCPT, b"250 2.1.5 OK\r\n", None),
    (b"DATA x", b"501 5.5.4 Syntax: DATA\r\n", None),
    (b"DATA", b"354 End data with <CR><LF>.<CR><LF>\r\n", None),  # no class 3 in RFC 3463
    (MESSAGE, b"250 2.0.0 OK\r\n", None),
    (b"RSET", b"250 2.0.0 OK\r\n", None),
    (b"QUIT", b"221 2.0.0 Bye\r\n", None),
]

EHLO_SESSION: List[Step] = [
    (b"EHLO client.example", b"", None),  # (checked by the caller)
    (b"HELP RCPT", b"250 2.0.0 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n", None),
    (b"MAIL FROM:<a@example.com> SIZE=1000",
     b"552 5.3.4 Error: message size exceeds fixed maximum message size\r\n", None),
    (b"MAIL FROM:<a@example.com> BODY=9BIT", b"501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME\r\n", None),
    (b"MAIL FROM:<a@example.com> XYZZY=1",
     b"555 5.5.4 MAIL FROM parameters not recognized or not implemented\r\n", None),
    (b"MAIL FROM:", b"501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n", None),
    (b"MAIL FROM:<a@example.com> BODY=8BITMIME", b"250 2.1.0 OK\r\n", None),
    (b"RCPT TO:<b@example.com> XYZZY=1",
     b"555 5.5.4 RCPT TO parameters not recognized or not implemented\r\n", None),
    (b"RCPT TO:", b"501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n", None),
    (RCPT, b"250 2.1.5 OK\r\n", None),
    # max_recipients=1: the reply has its code already, with the option or without.
    (b"RCPT TO:<c@example.com>", b"452 4.5.3 Too many recipients\r\n", b"452 4.5.3 Too many recipients\r\n"),
    (b"DATA", b"354 End data with <CR><LF>.<CR><LF>\r\n", None),
    (b"Subject: x\r\n\r\n" + b"x" * 200 + b"\r\n.", b"552 5.3.4 Error: Too much mail data\r\n", None),
    (b"QUIT", b"221 2.0.0 Bye\r\n", None),
]


@pytest.mark.parametrize("enhanced", [True, False])
def test_replies_of_a_helo_session(server_factory: Any, enhanced: bool) -> None:
    client = connect(server_factory(enhanced_status_codes=enhanced, max_errors=None))
    run(client, HELO_SESSION, enhanced)
    assert client.read_until_closed() == b""


@pytest.mark.parametrize("enhanced", [True, False])
def test_replies_of_an_ehlo_session(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(enhanced_status_codes=enhanced, data_size_limit=100, max_recipients=1)
    client = connect(st)
    assert not ENHANCED_CODE.search(client.command(EHLO_SESSION[0][0]))
    run(client, EHLO_SESSION[1:], enhanced)


@pytest.mark.parametrize("enhanced", [True, False])
def test_replies_of_smtputf8_and_decode_data(server_factory: Any, enhanced: bool) -> None:
    client = connect(server_factory(enhanced_status_codes=enhanced, enable_SMTPUTF8=True))
    client.command(b"EHLO client.example")
    run(client, [(b"MAIL FROM:<a@example.com> SMTPUTF8=YES", b"501 5.5.4 Error: SMTPUTF8 takes no arguments\r\n", None)],
        enhanced)
    client = connect(server_factory(enhanced_status_codes=enhanced, decode_data=True))
    run(client, [
        (b"HELO client.example", line("250 " + FQDN), None),
        (MAIL, b"250 2.1.0 OK\r\n", None),
        (RCPT, b"250 2.1.5 OK\r\n", None),
        (b"DATA", b"354 End data with <CR><LF>.<CR><LF>\r\n", None),
        (b"Subject: \xff\r\n\r\nx\r\n.", b"554 5.6.0 Error: message is not valid UTF-8\r\n", None),
    ], enhanced)


@pytest.mark.parametrize("enhanced", [True, False])
def test_replies_of_auth(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(enhanced_status_codes=enhanced, authenticator=check, auth_require_tls=False, max_errors=None)
    client = connect(st)
    run(client, [
        (b"HELO client.example", line("250 " + FQDN), None),
        (b"AUTH PLAIN " + PLAIN_IR, b"503 5.5.1 Error: send EHLO first\r\n", None),
    ], enhanced)
    client = connect(st)
    client.command(b"EHLO client.example")
    run(client, [
        (b"AUTH", b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n", None),
        (b"AUTH CRAM-MD5", b"504 5.5.4 Unrecognized authentication type\r\n", None),
        (b"AUTH PLAIN " + WRONG_IR, b"535 5.7.8 Authentication credentials invalid\r\n", None),
        (b"AUTH LOGIN", b"334 VXNlcm5hbWU6\r\n", None),  # a challenge: no code
        (b"*", b"501 5.7.0 Authentication cancelled\r\n", None),
        (b"AUTH LOGIN", b"334 VXNlcm5hbWU6\r\n", None),
        (b"!!!", b"501 5.5.2 Cannot decode response\r\n", None),
        (b"AUTH LOGIN", b"334 VXNlcm5hbWU6\r\n", None),
        (b"A" * 13000, b"500 5.5.6 Error: line too long\r\n", None),  # RFC 4954 section 4
        (b"NOOP " + b"x" * 13000, b"500 5.5.2 Error: line too long\r\n", None),  # a command line
        (b"AUTH PLAIN " + b64(b"no-nul"), b"501 5.5.2 Malformed authentication response\r\n", None),
        (MAIL, b"250 2.1.0 OK\r\n", None),
        (b"AUTH PLAIN " + PLAIN_IR, b"503 5.5.1 Error: AUTH not permitted during a mail transaction\r\n", None),
        (b"RSET", b"250 2.0.0 OK\r\n", None),
        (b"AUTH PLAIN " + PLAIN_IR, b"235 2.7.0 Authentication successful\r\n", None),
        (b"AUTH PLAIN " + PLAIN_IR, b"503 5.5.1 Error: already authenticated\r\n", None),
    ], enhanced)


@pytest.mark.parametrize("enhanced", [True, False])
def test_replies_of_auth_limits(server_factory: Any, enhanced: bool) -> None:
    options = dict(enhanced_status_codes=enhanced, auth_require_tls=False)
    client = connect(server_factory(authenticator=check, auth_required=True, max_auth_failures=1, **options))
    client.command(b"EHLO client.example")
    run(client, [
        (MAIL, b"530 5.7.0 Authentication required\r\n", None),
        (b"AUTH PLAIN " + WRONG_IR,
         line("421 4.7.0 %s Error: too many failed authentication attempts, closing connection" % FQDN), None),
    ], enhanced)
    assert client.read_until_closed() == b""
    client = connect(server_factory(authenticator=broken_check, **options))
    client.command(b"EHLO client.example")
    run(client, [(b"AUTH PLAIN " + PLAIN_IR, b"454 4.7.0 Temporary authentication failure\r\n", None)], enhanced)


@pytest.mark.parametrize("enhanced", [True, False])
def test_replies_of_starttls(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext,
                             enhanced: bool) -> None:
    st = server_factory(enhanced_status_codes=enhanced, tls_context=server_context, require_starttls=True,
                        authenticator=check)
    client = connect(st)
    client.command(b"EHLO client.example")
    run(client, [
        (MAIL, b"530 5.7.0 Must issue a STARTTLS command first\r\n", None),
        (b"AUTH PLAIN " + PLAIN_IR, b"538 5.7.11 Encryption required for requested authentication mechanism\r\n", None),
        (b"STARTTLS now", b"501 5.5.4 Syntax: STARTTLS\r\n", None),
        (b"STARTTLS", b"220 2.0.0 Ready to start TLS\r\n", None),
    ], enhanced)
    client.sock = client_context.wrap_socket(client.sock, server_hostname="127.0.0.1")
    assert not ENHANCED_CODE.search(client.command(b"EHLO client.example"))
    run(client, [
        (b"STARTTLS", b"503 5.5.1 Error: TLS already active\r\n", None),
        (b"AUTH PLAIN " + PLAIN_IR, b"235 2.7.0 Authentication successful\r\n", None),
        (MAIL, b"250 2.1.0 OK\r\n", None),
    ], enhanced)


# -- replies made outside the session's rules ---------------------------------------------
@pytest.mark.parametrize("enhanced", [True, False])
def test_error_budget_idle_timeout_and_connection_limit(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(enhanced_status_codes=enhanced, max_errors=1, max_connections=2, command_timeout=0.3)
    client = connect(st)
    run(client, [
        (b"XYZZY", b'500 5.5.2 Error: command "XYZZY" not recognized\r\n', None),
        (b"XYZZY", line("421 4.7.0 %s Error: too many errors, closing connection" % FQDN), None),
    ], enhanced)
    assert client.read_until_closed() == b""
    first, second = connect(st), connect(st)
    third = RawClient(st.address)
    expected = line("421 4.3.2 %s Error: too many connections, try again later" % FQDN)
    assert third.read_until_closed() == (expected if enhanced else plain(expected))
    expected = line("421 4.4.2 %s Error: timeout exceeded, closing connection" % FQDN)
    for idle in (first, second):  # bounded by TIMEOUT
        assert idle.read_until_closed() == (expected if enhanced else plain(expected))


@pytest.mark.parametrize("enhanced", [True, False])
def test_shutdown(enhanced: bool) -> None:
    server = RecordingServer(("127.0.0.1", 0), map={}, enhanced_status_codes=enhanced)
    thread_done: "queue.Queue[Optional[BaseException]]" = queue.Queue()

    def serve() -> None:
        try:
            server.serve_forever(poll_interval=0.05)
            thread_done.put(None)
        except BaseException as exc:
            thread_done.put(exc)

    threading.Thread(target=serve, daemon=True).start()
    try:
        client = RawClient(_serving.bound_address(server))
        assert client.read_reply().startswith(b"220 ")
        server.shutdown()
        expected = line("421 4.3.2 %s Service shutting down, closing connection" % FQDN)
        assert client.read_until_closed() == (expected if enhanced else plain(expected))
        assert thread_done.get(timeout=TIMEOUT) is None
    finally:
        server.server_close()


@pytest.mark.parametrize("enhanced", [True, False])
def test_process_message_failure(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(enhanced_status_codes=enhanced)
    st.server.error = RuntimeError("disk full")
    client = connect(st)
    run(client, [
        (b"HELO client.example", line("250 " + FQDN), None),
        (MAIL, b"250 2.1.0 OK\r\n", None),
        (RCPT, b"250 2.1.5 OK\r\n", None),
        (b"DATA", b"354 End data with <CR><LF>.<CR><LF>\r\n", None),
        (MESSAGE, b"451 4.3.0 Requested action aborted: local error in processing\r\n", None),
    ], enhanced)


class ForeignStateChannel(smtpd.SMTPChannel):
    def smtp_XSTATE(self, arg: Optional[str]) -> None:
        self.push("250 switched")
        self.smtp_state = "a state of its own"


class ForeignStateServer(RecordingSMTPServer):
    channel_class = ForeignStateChannel


@pytest.mark.parametrize("enhanced", [True, False])
def test_internal_confusion(server_factory: Any, enhanced: bool) -> None:
    client = connect(server_factory(ForeignStateServer, enhanced_status_codes=enhanced))
    run(client, [
        (b"XSTATE", b"250 switched\r\n", b"250 switched\r\n"),
        (b"anything", b"451 4.3.0 Internal confusion\r\n", None),
    ], enhanced)


class EarlyChannel(smtpd.SMTPChannel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.received_lines = []  # smtpd's attribute, before SMTPChannel.__init__: the session is made here
        super().__init__(*args, **kwargs)


class EarlyServer(RecordingSMTPServer):
    channel_class = EarlyChannel


def test_a_session_made_before_the_channels_init(server_factory: Any) -> None:
    client = connect(server_factory(EarlyServer, enhanced_status_codes=True, max_errors=None))
    run(client, HELO_SESSION, True)


# -- the user's replies are sent as given --------------------------------------------------
class OwnRepliesChannel(smtpd.SMTPChannel):
    def smtp_XHELLO(self, arg: Optional[str]) -> None:
        self.push("250 OK")

    def smtp_RCPT(self, arg: Optional[str]) -> None:
        super().smtp_RCPT(arg)  # the session's rule: its reply is the server's own


class OwnRepliesServer(RecordingSMTPServer):
    channel_class = OwnRepliesChannel

    def accept_mail(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
        return "550 5.7.1 Not you" if address == "spammer@example.com" else None

    def accept_rcpt(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
        # The text of one of the server's own replies, but the user's: as given.
        return "451 Requested action aborted: local error in processing" if address == "nobody@example.com" else None


def test_user_replies_are_sent_as_given(server_factory: Any) -> None:
    st = server_factory(OwnRepliesServer, enhanced_status_codes=True)
    st.server.reply = "250 OK"  # what process_message returns
    client = connect(st)
    steps: List[Step] = [
        (b"XHELLO", b"250 OK\r\n", None),
        (b"HELO client.example", line("250 " + FQDN), None),
        (b"MAIL FROM:<spammer@example.com>", b"550 5.7.1 Not you\r\n", None),
        (MAIL, b"250 2.1.0 OK\r\n", None),
        (b"RCPT TO:<nobody@example.com>", b"451 Requested action aborted: local error in processing\r\n", None),
        (RCPT, b"250 2.1.5 OK\r\n", None),
        (b"DATA", b"354 End data with <CR><LF>.<CR><LF>\r\n", None),
        (MESSAGE, b"250 OK\r\n", None),
        (b"NOOP", b"250 2.0.0 OK\r\n", None),
    ]
    run(client, steps, True)
    st.server.reply = None  # None: the server's own 250
    run(client, [
        (MAIL, b"250 2.1.0 OK\r\n", None),
        (RCPT, b"250 2.1.5 OK\r\n", None),
        (b"DATA", b"354 End data with <CR><LF>.<CR><LF>\r\n", None),
        (MESSAGE, b"250 2.0.0 OK\r\n", None),
    ], True)


# -- pipelining -------------------------------------------------------------------------
def test_pipelined_groups_are_answered_in_order(server_factory: Any) -> None:
    st = server_factory(pipelining=True)
    client = connect(st)
    assert b"250-PIPELINING\r\n" in client.command(b"EHLO client.example")
    # RFC 2920 section 3.1: a failed RCPT does not make DATA fail while
    # another one succeeded; nothing of the group is lost.
    client.send(MAIL + b"\r\n" + RCPT + b"\r\nRCPT TO:\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
    expected = (b"250 OK\r\n250 OK\r\n501 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n250 OK\r\n"
                b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert client.read_exactly(len(expected)) == expected
    # The message may start a group (RFC 2920 section 3.1): here the next
    # transaction, up to its DATA.
    client.send(MESSAGE + b"\r\nRSET\r\nMAIL FROM:<d@example.com>\r\nRCPT TO:<e@example.com>\r\nDATA\r\n")
    expected = b"250 OK\r\n250 OK\r\n250 OK\r\n250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    assert client.read_exactly(len(expected)) == expected
    # Commands after QUIT are not executed.
    client.send(MESSAGE + b"\r\nNOOP\r\nQUIT\r\nNOOP\r\n")
    assert client.read_until_closed() == b"250 OK\r\n250 OK\r\n221 Bye\r\n"
    first, second = st.server.wait_for(2)
    assert (first.mailfrom, first.rcpttos) == ("a@example.com", ["b@example.com", "c@example.com"])
    assert (second.mailfrom, second.rcpttos) == ("d@example.com", ["e@example.com"])


def test_pipelined_group_whose_transaction_fails(server_factory: Any) -> None:
    # RFC 2920 section 3.1: when MAIL fails, each later command of the group
    # fails too, in order; DATA is refused (503), so the client never sends
    # the message.
    client = connect(server_factory(pipelining=True, enhanced_status_codes=True))
    client.command(b"EHLO client.example")
    client.send(b"MAIL FROM:<a@example.com> XYZZY=1\r\n" + RCPT + b"\r\nDATA\r\nNOOP\r\n")
    expected = (b"555 5.5.4 MAIL FROM parameters not recognized or not implemented\r\n"
                b"503 5.5.1 Error: need MAIL command\r\n503 5.5.1 Error: need RCPT command\r\n250 2.0.0 OK\r\n")
    assert client.read_exactly(len(expected)) == expected


def test_what_follows_an_accepted_data_is_the_message(server_factory: Any) -> None:
    # A client that does not wait for the 354 (RFC 2920 puts DATA last in a
    # group): whatever follows an accepted DATA is message text, QUIT too.
    st = server_factory(pipelining=True, enhanced_status_codes=True)
    client = connect(st)
    client.command(b"EHLO client.example")
    client.send(MAIL + b"\r\n" + RCPT + b"\r\nDATA\r\nQUIT\r\n.\r\nNOOP\r\n")
    expected = (b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                b"250 2.0.0 OK\r\n250 2.0.0 OK\r\n")
    assert client.read_exactly(len(expected)) == expected
    [message] = st.server.wait_for(1)
    assert message.data == b"QUIT"


class DeferringServer(RecordingSMTPServer):
    """process_message returns a Future the test completes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.futures: "queue.Queue[concurrent.futures.Future[Any]]" = queue.Queue()
        super().__init__(*args, **kwargs)

    def process_message(self, *args: Any, **kwargs: Any) -> Any:
        super().process_message(*args, **kwargs)
        future: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        self.futures.put(future)
        return future


@pytest.mark.parametrize("result, reply", [
    (None, b"250 2.0.0 OK\r\n"),
    ("250 2.6.0 Queued as 42", b"250 2.6.0 Queued as 42\r\n"),
    ("250 Queued", b"250 Queued\r\n"),  # the user's: as given
    (RuntimeError("boom"), b"451 4.3.0 Requested action aborted: local error in processing\r\n"),
])
def test_pipelined_commands_wait_for_a_deferred_reply(server_factory: Any, result: Any, reply: bytes) -> None:
    st = server_factory(DeferringServer, pipelining=True, enhanced_status_codes=True)
    client = connect(st)
    client.command(b"EHLO client.example")
    client.send(MAIL + b"\r\n" + RCPT + b"\r\nDATA\r\n")
    expected = b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    assert client.read_exactly(len(expected)) == expected
    client.send(MESSAGE + b"\r\n" + MAIL + b"\r\n" + RCPT + b"\r\nDATA\r\n")
    future = st.server.futures.get(timeout=TIMEOUT)
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
    expected = reply + b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    assert client.read_exactly(len(expected)) == expected


# -- options and command line --------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"enhanced_statuscodes": True}, "enhanced_statuscodes"),
    ({"pipelineing": True}, "pipelineing"),
    ({"pipelining": 1}, "pipelining must be True or False"),
    ({"enhanced_status_codes": "yes"}, "enhanced_status_codes must be True or False"),
])
def test_bad_options_are_rejected(options: Any, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        RecordingServer(("127.0.0.1", 0), map={}, **options)


def test_options_are_readable() -> None:
    server = RecordingServer(("127.0.0.1", 0), map={}, pipelining=True)
    try:
        assert (server.pipelining, server.enhanced_status_codes) == (True, False)
    finally:
        server.server_close()


@pytest.mark.parametrize("argv, options", [
    ([], {}),
    (["--pipelining"], {"pipelining": True}),
    (["--enhanced-status-codes"], {"enhanced_status_codes": True}),
    (["--pipelining", "--enhanced-status-codes"], {"pipelining": True, "enhanced_status_codes": True}),
])
def test_cli_flags_become_options(argv: List[str], options: Any) -> None:
    assert _cli.extension_options(_cli_args.parse_args(argv)) == options
    assert _cli.server_options(_cli_args.parse_args(argv)) == options


def test_cli_server_with_both_flags(cli_server: Callable[..., Any]) -> None:
    server = cli_server("--pipelining", "--enhanced-status-codes")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        assert client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
        assert client.mail("a@example.com") == (250, b"2.1.0 OK")
        assert client.rcpt("b@example.com") == (250, b"2.1.5 OK")
        assert client.data(b"Subject: x\r\n\r\nhi\r\n") == (250, b"2.0.0 OK")
    assert len(server.messages()) == 1


# -- the table --------------------------------------------------------------------------------
def test_each_code_is_of_its_replys_class() -> None:
    for text, code in _replies.STATUS_CODES.items():
        assert text[0] == code[0] and text[0] in "245", text
        assert re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", code), code
    for (_verb, text), code in _replies.STATUS_CODES_BY_COMMAND.items():
        assert text in _replies.STATUS_CODES and text[0] == code[0]


def test_every_reply_has_a_code_or_a_reason_not_to() -> None:
    # A new reply constant must be given a code (or be added here, with the reason).
    without = {
        _replies.GREETING, _replies.HELO_OK, _replies.SYNTAX_HELO, _replies.SYNTAX_EHLO,  # RFC 2034 section 3
        _replies.DUPLICATE_HELO,
        _replies.SYNTAX_LHLO,  # LMTP's EHLO
        _replies.START_DATA, _replies.AUTH_CHALLENGE,  # 3xx
        *_replies.CODED,  # have their code already
    }
    replies = [value for name, value in vars(_replies).items()
               if name.isupper() and isinstance(value, str) and value[:3].isdigit()]
    assert replies
    for text in replies:
        assert (text in _replies.STATUS_CODES) != (text in without), text


def test_multi_line_replies_carry_the_code_on_each_line() -> None:
    assert _replies.with_status_code("550-a\r\n550-b\r\n550 c", "5.1.1") == "550-5.1.1 a\r\n550-5.1.1 b\r\n550 5.1.1 c"
    assert _replies.enhanced("250 OK", "MAIL") == "250 2.1.0 OK"
    assert _replies.enhanced("250 OK", "NOOP") == "250 2.0.0 OK"
    assert _replies.enhanced("250 Queued") == "250 Queued"


def test_the_default_paths_tables_hold_no_enhanced_text() -> None:
    # push() looks every reply up in WIRE: its keys stay smtpd's replies.
    assert not any(ENHANCED_CODE.match(text.encode()) for text in _replies.WIRE if text not in _replies.CODED)


# -- any session, in memory --------------------------------------------------------------------
LINES = COMMANDS + DATA_LINES + [b"RCPT TO:<c@example.org>", b"QUIT", b"AUTH PLAIN", b"STARTTLS"]
CODE = re.compile(r"\A\d{3}[ -]([245])\.\d{1,3}\.\d{1,3} ")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LINES), max_size=30))
def test_any_session_gets_smtpds_replies_with_their_codes(lines: List[bytes]) -> None:
    """The same input to a session with enhanced status codes and to one
    without: the same replies but for the code, which every reply has but
    the 3xx ones and those to HELO and EHLO, with the class of its reply."""
    features = dict(max_recipients=2)
    smtpd_host = Recorder(Features(**features))
    host = Recorder(Features(enhanced_status_codes=True, **features))
    _extensions.enable(host.session)
    for sent in lines:
        greeting = host.session.state is State.COMMAND and sent.split(b" ")[0].upper() in (b"HELO", b"EHLO")
        before, smtpd_before = len(host.replies), len(smtpd_host.replies)
        host.feed(sent + b"\r\n")
        smtpd_host.feed(sent + b"\r\n")
        replies = [r for r in host.replies[before:] if r != "250-ENHANCEDSTATUSCODES"]  # (EHLO's keyword)
        assert [plain(r.encode()) for r in replies] == [plain(r.encode()) for r in smtpd_host.replies[smtpd_before:]]
        for reply in replies:
            code = CODE.match(reply)
            if greeting or reply.startswith("3"):
                assert code is None, (sent, reply)
            else:
                assert code is not None and code.group(1) == reply[0], (sent, reply)
