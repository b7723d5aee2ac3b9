"""CHUNKING and BINARYMIME (RFC 3030), behind the option ``chunking``.

No client library speaks BDAT (smtplib, swaks and Postfix's smtp-source
do not), so the conversations are raw bytes on real loopback sockets; smtplib
checks what a client library sees of the EHLO reply and of DATA.  Each
transcript runs with ``enhanced_status_codes`` on and off (off: the same
replies without the code), and the hypothesis test cuts a message into
chunks, and the byte stream into reads, at random.
"""

from __future__ import annotations

import concurrent.futures
import queue
import re
import smtplib
from typing import Any, Callable, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_read_pieces import Session as PumpedSession
from test_serving import SHUTTING_DOWN, begin_stop, join

from smtpd_compat import Controller, _cli, _cli_args, _replies, _serving, smtpd
from smtpd_compat._state import State

from conftest import FQDN, GREETING, TIMEOUT, RawClient, RecordingSMTPServer
from tls_helpers import cli_server  # noqa: F401  (fixture)

ENHANCED_CODE = re.compile(rb"^(\d{3}[ -])[245]\.\d{1,3}\.\d{1,3} ", re.M)
MAIL = b"MAIL FROM:<a@example.com>\r\n"
RCPT = b"RCPT TO:<b@example.com>\r\n"
OK_MAIL, OK_RCPT, OK = b"250 2.1.0 OK\r\n", b"250 2.1.5 OK\r\n", b"250 2.0.0 OK\r\n"
NEED_MAIL = b"503 5.5.1 Error: need MAIL command\r\n"
SYNTAX = b"501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n"
TOO_LARGE = b"552 5.3.4 Error: message size exceeds fixed maximum message size\r\n"
# Octets no DATA could carry as they are: the end of data, a dot-stuffed
# line, bare LF and CR, NUL, 8-bit bytes, and a BDAT command.
AWKWARD = b".leading dot\r\n.\r\n..two\r\nbare LF\nbare CR\rNUL\x00\xff\xfe\r\nBDAT 3 LAST\r\n"


def bdat(chunk: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def received(size: int) -> bytes:
    return b"250 2.0.0 %d octets received\r\n" % size


def plain(reply: bytes) -> bytes:
    return ENHANCED_CODE.sub(rb"\1", reply)


def connect(st: Any, ehlo: bool = True) -> RawClient:
    client = RawClient(st.address)
    assert client.read_reply() == GREETING
    if ehlo:
        reply = client.command(b"EHLO client.example")
        assert b"250-CHUNKING\r\n250-BINARYMIME\r\n" in reply
    return client


def converse(client: RawClient, steps: Sequence[Tuple[bytes, bytes]], enhanced: bool) -> None:
    """Send each step's bytes in one write; its replies must be the
    expected ones (written with codes; without them when not *enhanced*)."""
    for sent, expected in steps:
        if not enhanced:
            expected = plain(expected)
        client.send(sent)
        assert client.read_exactly(len(expected)) == expected, sent
    client.send(b"NOOP\r\n")  # every byte was consumed: the session is in step
    assert client.read_reply() == (OK if enhanced else b"250 OK\r\n")


def messages(st: Any) -> List[bytes]:
    return [m.data for m in st.server.messages]


both = pytest.mark.parametrize("enhanced", [True, False])


# -- EHLO, options, command line -------------------------------------------------------
def test_off_by_default(smtp_server: Any) -> None:
    client = connect(smtp_server, ehlo=False)
    reply = client.command(b"EHLO client.example")
    assert b"CHUNKING" not in reply and b"BINARYMIME" not in reply
    # smtpd's reply to an unknown command; the chunk is then read as commands.
    assert client.command(b"BDAT 4") == b'500 Error: command "BDAT" not recognized\r\n'
    assert client.command(b"MAIL FROM:<a@example.com> BODY=BINARYMIME") == (
        b"501 Error: BODY can only be one of 7BIT, 8BITMIME\r\n")


def test_ehlo_with_the_other_extensions(server_factory: Any) -> None:
    st = server_factory(chunking=True, pipelining=True, enhanced_status_codes=True)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        code, text = client.ehlo("client.example")
        assert code == 250 and text.split(b"\n")[1:] == [
            b"SIZE 33554432", b"8BITMIME", b"PIPELINING", b"ENHANCEDSTATUSCODES", b"CHUNKING", b"BINARYMIME", b"HELP"]
        # DATA is still DATA (smtplib sends nothing else).
        assert client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\n.hi\r\n") == {}
    assert messages(st) == [b"Subject: x\n\n.hi"]


@pytest.mark.parametrize("options, error, message", [
    ({"chunking": 1}, TypeError, "chunking must be True or False"),
    ({"chunking": True, "decode_data": True}, ValueError, "chunking cannot be used with decode_data=True"),
])
def test_bad_options_are_rejected(options: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        RecordingSMTPServer(("127.0.0.1", 0), None, map={}, **options)


def test_option_is_readable() -> None:
    server = RecordingSMTPServer(("127.0.0.1", 0), None, map={}, chunking=True)
    try:
        assert server.chunking is True
    finally:
        server.close()


def test_cli_flag_becomes_the_option() -> None:
    assert _cli.extension_options(_cli_args.parse_args(["--chunking"])) == {"chunking": True}
    assert _cli.extension_options(_cli_args.parse_args([])) == {}


def test_cli_server_with_the_flag(cli_server: Callable[..., Any]) -> None:  # noqa: F811
    server = cli_server("--chunking")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        assert client.has_extn("chunking") and client.has_extn("binarymime")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        client.send(bdat(b"Subject: x\r\n\r\n", last=False) + bdat(b"\x00binary\r\n", last=True))
        assert client.getreply() == (250, b"14 octets received")
        assert client.getreply() == (250, b"OK")
    assert len(server.messages()) == 1


# -- transcripts ---------------------------------------------------------------------------
@both
def test_two_chunks(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced)
    converse(connect(st), [
        (MAIL, OK_MAIL),
        (RCPT, OK_RCPT),
        (bdat(b"Subject: x\r\n"), received(12)),
        (bdat(b"\r\nhello\r\n", last=True), OK),
        (bdat(b"late\r\n"), NEED_MAIL),  # section 2: after LAST, 503 (and its octets dropped)
    ], enhanced)
    assert messages(st) == [b"Subject: x\r\n\r\nhello\r\n"]
    assert st.server.messages[0].kwargs == {"mail_options": [], "rcpt_options": [], "chunked": True}


@both
def test_a_pipelined_transaction_in_one_write(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced, pipelining=True)
    stream = MAIL + RCPT + bdat(b"one\r\n") + bdat(b"two\r\n") + bdat(b"three\r\n", last=True)
    converse(connect(st), [
        (stream + stream, (OK_MAIL + OK_RCPT + received(5) + received(5) + OK) * 2),
    ], enhanced)
    assert messages(st) == [b"one\r\ntwo\r\nthree\r\n"] * 2


def test_a_transaction_sent_byte_by_byte(server_factory: Any) -> None:
    st = server_factory(chunking=True)
    client = connect(st)
    client.send_bytewise(MAIL + RCPT + bdat(b"Subject: x\r\n\r\n") + bdat(AWKWARD, last=True) + b"NOOP\r\n")
    expected = plain(OK_MAIL + OK_RCPT + received(14) + OK + OK)
    assert client.read_exactly(len(expected)) == expected
    assert messages(st) == [b"Subject: x\r\n\r\n" + AWKWARD]


@both
def test_octets_are_delivered_unchanged(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced)
    binary = bytes(range(256)) * 4
    converse(connect(st), [
        (b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n", OK_MAIL),
        (RCPT, OK_RCPT),
        (bdat(AWKWARD), received(len(AWKWARD))),
        (bdat(binary) + bdat(b"\r\n.\r\n", last=True), received(len(binary)) + OK),
    ], enhanced)
    assert messages(st) == [AWKWARD + binary + b"\r\n.\r\n"]
    assert st.server.messages[0].kwargs["mail_options"] == ["BODY=BINARYMIME"]


@both
def test_empty_chunks(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced)
    converse(connect(st), [
        (MAIL + RCPT + b"BDAT 0 LAST\r\n", OK_MAIL + OK_RCPT + OK),  # an empty message, as DATA allows
        (MAIL + RCPT + bdat(b"x") + b"BDAT 0\r\n" + b"bdat 0 last\r\n", OK_MAIL + OK_RCPT + received(1) + received(0) + OK),
    ], enhanced)
    assert messages(st) == [b"", b"x"]


@both
def test_bad_bdat_commands(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced)
    bad = [b"BDAT", b"BDAT ", b"BDAT x", b"BDAT -1", b"BDAT +1", b"BDAT 1.0", b"BDAT 1 FIRST",
           b"BDAT 1 LAST more", "BDAT \u00b2".encode()]
    converse(connect(st), [(line + b"\r\n", SYNTAX) for line in bad] + [
        # In a transaction, it fails the transaction (RFC 3030 section 2):
        # the next chunk is refused, and discarded.
        (MAIL + RCPT + b"BDAT many\r\n", OK_MAIL + OK_RCPT + SYNTAX),
        (bdat(b"NOOP\r\n", last=True), NEED_MAIL),
    ], enhanced)
    assert messages(st) == []


@both
def test_bdat_out_of_sequence(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced)
    client = connect(st, ehlo=False)
    # Each refused chunk's octets are read and dropped, then it is answered.
    converse(client, [(bdat(b"NOOP\r\n"), b"503 5.5.1 Error: send HELO first\r\n")], enhanced)
    assert b"CHUNKING" in client.command(b"EHLO client.example")
    converse(client, [
        (bdat(b"RSET\r\n", last=True), NEED_MAIL),
        (MAIL + bdat(b"QUIT\r\n"), OK_MAIL + b"503 5.5.1 Error: need RCPT command\r\n"),
        (RCPT, NEED_MAIL),  # the transaction failed with its BDAT
    ], enhanced)
    assert messages(st) == []


@both
def test_data_after_bdat(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced)
    converse(connect(st), [
        (MAIL + RCPT + bdat(b"Subject: x\r\n"), OK_MAIL + OK_RCPT + received(12)),
        (b"DATA\r\n", b"503 5.5.1 Error: DATA not allowed after BDAT in a transaction\r\n"),
        # RFC 3030 section 2: the state is indeterminate, so nothing is kept.
        (bdat(b"\r\nhi\r\n", last=True), NEED_MAIL),
        (b"RSET\r\n", OK),
        (MAIL + RCPT + bdat(b"again\r\n", last=True), OK_MAIL + OK_RCPT + OK),
    ], enhanced)
    assert messages(st) == [b"again\r\n"]


@both
def test_binarymime_needs_bdat(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced)
    converse(connect(st), [
        (b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n" + RCPT, OK_MAIL + OK_RCPT),
        (b"DATA\r\n", b"503 5.5.1 Error: BODY=BINARYMIME requires BDAT, not DATA\r\n"),  # section 3
        (bdat(b"\x00\x01", last=True), NEED_MAIL),
        (b"MAIL FROM:<a@example.com> BODY=8BITMIME\r\n" + RCPT + b"DATA\r\n",
         OK_MAIL + OK_RCPT + b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        (b"caf\xc3\xa9\r\n.\r\n", OK),
        (b"MAIL FROM:<a@example.com> BODY=BINARY\r\n",
         b"501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME, BINARYMIME\r\n"),
    ], enhanced)
    assert messages(st) == [b"caf\xc3\xa9"]


@both
def test_rset_between_chunks(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced)
    converse(connect(st), [
        (MAIL + RCPT + bdat(b"first\r\n"), OK_MAIL + OK_RCPT + received(7)),
        (b"RSET\r\n", OK),
        (bdat(b"second\r\n", last=True), NEED_MAIL),
        (MAIL + RCPT + bdat(b"third\r\n", last=True), OK_MAIL + OK_RCPT + OK),
    ], enhanced)
    assert messages(st) == [b"third\r\n"]


@both
def test_the_size_limit_applies_to_each_chunk(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced, data_size_limit=100, pipelining=True)
    converse(connect(st), [
        (b"MAIL FROM:<a@example.com> SIZE=101\r\n", TOO_LARGE),  # at MAIL, as before
        (MAIL + RCPT + bdat(b"x" * 60), OK_MAIL + OK_RCPT + received(60)),
        # 120 octets: refused when its BDAT line arrives, its octets read and
        # dropped; the chunks pipelined after it are refused and dropped too.
        (bdat(b"y" * 60) + bdat(b"NOOP\r\n") + bdat(b"z", last=True), TOO_LARGE + NEED_MAIL + NEED_MAIL),
        (MAIL + RCPT + bdat(b"a" * 100, last=True), OK_MAIL + OK_RCPT + OK),  # exactly the limit
        (MAIL + RCPT + bdat(b"b" * 101, last=True), OK_MAIL + OK_RCPT + TOO_LARGE),
    ], enhanced)
    assert messages(st) == [b"a" * 100]


def test_a_refused_chunk_is_never_kept() -> None:
    """While the octets of a chunk arrive, an accepted chunk's are kept and
    a refused one's are not (the limit is checked before them)."""
    session = PumpedSession(RecordingSMTPServer, chunking=True, data_size_limit=1000)
    try:
        for piece in (b"EHLO c\r\n", MAIL, RCPT, b"BDAT 1000\r\n", b"k" * 600):
            session.feed(piece)
        state = session.channel._session
        assert state.state is State.BDAT and b"".join(state.chunks) == b"k" * 600
        session.feed(b"k" * 400 + b"BDAT 500000 LAST\r\n")
        for _ in range(10):
            session.feed(b"d" * 30000)
        assert state.state is State.BDAT and state.chunks == [] and state.chunk_refusal is not None
        for _ in range(20):
            session.feed(b"d" * 10000)
        session.feed(b"QUIT\r\n")
        output = session.finish()
        assert output.endswith(b"250 1000 octets received\r\n" + plain(TOO_LARGE) + b"221 Bye\r\n")
        assert session.server.messages == []
    finally:
        session.client.close()
        session.server.close()


@both
def test_the_message_is_answered_as_datas(server_factory: Any, enhanced: bool) -> None:
    st = server_factory(chunking=True, enhanced_status_codes=enhanced)
    st.server.reply = "550 Not this one"  # the user's reply: as given
    converse(connect(st), [
        (MAIL + RCPT + bdat(b"a\r\n") + bdat(b"b\r\n", last=True), OK_MAIL + OK_RCPT + received(3)
         + b"550 Not this one\r\n"),
    ], enhanced)
    st.server.reply = None
    st.server.error = RuntimeError("disk full")
    converse(connect(st), [
        (MAIL + RCPT + bdat(b"c\r\n", last=True) + b"NOOP\r\n",
         OK_MAIL + OK_RCPT + b"451 4.3.0 Requested action aborted: local error in processing\r\n" + OK),
    ], enhanced)
    assert messages(st) == [b"a\r\nb\r\n", b"c\r\n"]


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


def test_pipelined_chunks_wait_for_a_deferred_reply(server_factory: Any) -> None:
    st = server_factory(DeferringServer, chunking=True, pipelining=True)
    client = connect(st)
    client.send(MAIL + RCPT + bdat(b"one\r\n", last=True) + MAIL + RCPT + bdat(b"two\r\n") + bdat(b"", last=True))
    expected = plain(OK_MAIL + OK_RCPT)
    assert client.read_exactly(len(expected)) == expected
    st.server.futures.get(timeout=TIMEOUT).set_result("250 Queued as 1")
    # The second transaction waited in the buffer, and is answered now.
    expected = b"250 Queued as 1\r\n" + plain(OK_MAIL + OK_RCPT + received(5))
    assert client.read_exactly(len(expected)) == expected
    st.server.futures.get(timeout=TIMEOUT).set_result(None)
    assert client.read_reply() == b"250 OK\r\n"
    assert messages(st) == [b"one\r\n", b"two\r\n"]


def test_data_timeout_applies_while_a_chunk_is_read(server_factory: Any) -> None:
    # No command timeout: only the data timeout can end this session.
    st = server_factory(chunking=True, command_timeout=None, data_timeout=0.3)
    client = connect(st)
    client.send(MAIL + RCPT + b"BDAT 10\r\nhalf")
    assert client.read_until_closed() == plain(OK_MAIL + OK_RCPT) + (
        b"421 %s Error: timeout exceeded, closing connection\r\n" % FQDN.encode())
    assert messages(st) == []


def test_graceful_shutdown_lets_a_bdat_transaction_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    # No grace for a QUIT: a session not receiving a message is told 421 at once.
    monkeypatch.setattr(_serving, "_QUIT_GRACE", 0.0)
    controller = Controller(RecordingSMTPServer, chunking=True, shutdown_timeout=TIMEOUT).start()
    sender = None
    try:
        sender = connect(controller)
        converse(sender, [(MAIL + RCPT + bdat(b"first\r\n"), plain(OK_MAIL + OK_RCPT + received(7)))], False)
        sender.send(b"BDAT 4\r\nse")  # in the middle of a chunk
        stopper, box = begin_stop(controller)
        sender.send(b"co")
        assert sender.read_reply() == b"250 4 octets received\r\n"
        assert stopper.is_alive()  # waiting for the message
        # Between two chunks, the next BDAT is not refused: it is the message.
        sender.send(bdat(b"nd\r\n", last=True))
        assert sender.read_reply() == b"250 OK\r\n"
        assert sender.read_until_closed() == SHUTTING_DOWN
        join(stopper, box)
        assert [m.data for m in controller.server.messages] == [b"first\r\nsecond\r\n"]
    finally:
        if sender is not None:
            sender.close()
        controller.stop()


def test_received_header_ends_its_lines_as_the_message(server_factory: Any) -> None:
    st = server_factory(chunking=True, add_received_header=True)
    converse(connect(st), [(MAIL + RCPT + bdat(b"Subject: x\r\n\r\nhi\r\n", last=True), OK_MAIL + OK_RCPT + OK)], False)
    data = messages(st)[0]
    header, _, rest = data.partition(b"\r\nSubject: x")
    assert header.startswith(b"Received: from client.example") and b"by %s" % FQDN.encode() in header
    assert b"\n" not in header.replace(b"\r\n", b"") and rest == b"\r\n\r\nhi\r\n"


class EarlyChannel(smtpd.SMTPChannel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.received_lines = []  # smtpd's attribute, before SMTPChannel.__init__: the session is made here
        super().__init__(*args, **kwargs)


class OwnDataChannel(smtpd.SMTPChannel):
    def smtp_DATA(self, arg: Optional[str]) -> None:
        super().smtp_DATA(arg)  # the session's rule, through the method


class HooksChannel(smtpd.SMTPChannel):
    """Overrides smtpd's input hooks (and calls them): no whole-record path."""

    def collect_incoming_data(self, data: bytes) -> None:
        super().collect_incoming_data(data)

    def found_terminator(self) -> None:
        super().found_terminator()


@pytest.mark.parametrize("channel_class", [EarlyChannel, OwnDataChannel, HooksChannel])
@both
def test_channel_subclasses(server_factory: Any, channel_class: Any, enhanced: bool) -> None:
    server_class = type("Server", (RecordingSMTPServer,), {"channel_class": channel_class})
    st = server_factory(server_class, chunking=True, enhanced_status_codes=enhanced)
    converse(connect(st), [
        (MAIL + RCPT + bdat(b"a\r\n"), OK_MAIL + OK_RCPT + received(3)),
        (b"DATA\r\n", b"503 5.5.1 Error: DATA not allowed after BDAT in a transaction\r\n"),
        (MAIL + RCPT + bdat(b"b\r\n", last=True), OK_MAIL + OK_RCPT + OK),
    ], enhanced)
    assert messages(st) == [b"b\r\n"]


def test_every_new_reply_has_its_code() -> None:
    for text in (_replies.CHUNK_RECEIVED, _replies.SYNTAX_BDAT, _replies.BAD_BODY_CHUNKING,
                 _replies.DATA_AFTER_BDAT, _replies.BINARYMIME_NEEDS_BDAT):
        assert text in _replies.STATUS_CODES
    assert _replies.enhanced(_replies.CHUNK_RECEIVED % 12, "BDAT") == "250 2.0.0 12 octets received"


# -- any split --------------------------------------------------------------------------------
def _cut(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=st.binary(max_size=300),
    chunk_cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    empty_last=st.booleans(),
    read_cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
def test_any_chunking_and_any_reads_deliver_the_message(
    message: bytes, chunk_cuts: List[int], empty_last: bool, read_cuts: List[int]
) -> None:
    """Any cut of a message into BDAT chunks (the last one maybe empty),
    sent in any cut of the byte stream into reads: the same message, and
    one reply per chunk."""
    chunks = _cut(message, chunk_cuts) if message else []
    if empty_last or not chunks:
        chunks.append(b"")
    stream = b"EHLO c\r\n" + MAIL + RCPT
    stream += b"".join(bdat(chunk, last=i == len(chunks) - 1) for i, chunk in enumerate(chunks)) + b"QUIT\r\n"
    session = PumpedSession(RecordingSMTPServer, chunking=True)
    for piece in _cut(stream, read_cuts):
        if piece:
            session.feed(piece)
    output = session.finish()
    replies = b"".join(b"250 %d octets received\r\n" % len(chunk) for chunk in chunks[:-1])
    assert output.endswith(b"250 OK\r\n250 OK\r\n" + replies + b"250 OK\r\n221 Bye\r\n")
    assert [m.data for m in session.server.messages] == [message]
