"""PureProxy relaying a big message while it arrives (_cut_through).

Real sockets: a client (smtplib or raw) -> PureProxy with a small
spool_threshold -> a scripted upstream server (test_proxy.FakeUpstream),
which records what it has received of a message so far, so a test can see
the message reach it before the client has sent its end.  The pieces that
make the wire form are held to the store-and-forward path's by hypothesis.
"""

from __future__ import annotations

import errno
import io
import re
import smtplib
from typing import Any, Dict, Iterator, List, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_proxy import FakeUpstream, proxy_factory

from smtpd_compat import _cut_through, _grammar, _relay, _spool, smtpd

from conftest import TIMEOUT, RawClient, running_server

THRESHOLD = 1024
HEAD = b"Subject: big\r\nFrom: a@example.com\r\n\r\n"
# Dot lines, a bare CR, 8-bit text, a line of dots: most of it past the threshold.
BODY = b".leading dot\r\n..two\r\nplain caf\xc3\xa9 line\rwith a bare CR\r\n...\r\nFrom here\r\n" * 2000
MESSAGE = HEAD + BODY
PEER = b"X-Peer: 127.0.0.1"
# MESSAGE as a client sends it (dot-stuffed as smtplib does), and its end.
SENT = re.sub(rb"(?m)^\.", b"..", MESSAGE)
END = b".\r\n"


def split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


# -- the pieces ----------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b.replace(b"\x00", b"\n").replace(b"\x01", b"\r")),
       st.lists(st.integers(0, 80), max_size=6))
def test_the_header_goes_where_the_stream_payload_puts_it(text: bytes, cuts: List[int]) -> None:
    # Both the relay from a complete spool and the relay of a spool still
    # growing (in any pieces) put it where add_peer_header() does in the
    # whole text.
    expected = _grammar.add_peer_header(text, "h")
    whole = _relay.StreamPayload(io.BytesIO(text), "h")
    assert b"".join(whole._text()) == expected
    got = b"".join(_relay.with_peer_header(iter(split(text, cuts)), whole.header))
    assert got == expected


def _reference(raw: bytes) -> bytes:
    unstuffer, stuffer = _cut_through._mid_line()
    return stuffer.feed(unstuffer.feed(raw)) + stuffer.feed(unstuffer.finish()) + stuffer.finish()


def _stored(wire: bytes) -> bytes:
    """What an upstream server stores of *wire* (mid-line, ending <CRLF>.<CRLF>)."""
    assert wire.endswith(b"\r\n.\r\n")
    unstuffer, _ = _cut_through._mid_line()
    return unstuffer.feed(wire[:-5]) + unstuffer.finish()


raw_text = st.lists(st.sampled_from([b"a", b".", b"\r\n", b"\r", b"\n", b"\xc3\xa9"]), max_size=40).map(b"".join)


def _raw_wire(raw: bytes, written: List[bytes], read: List[bytes], start: int = 7) -> bytes:
    """The wire form of *raw* (at offset *start*), checked as *written* and
    converted as *read* (two splits of it)."""
    check, offset = _cut_through.RawCheck(), start
    for piece in written:
        check.feed(offset, piece)
        offset += len(piece)
    check.finish(offset)
    wire = _cut_through.RawWire(start)
    return b"".join(wire.feed(block, check.slow_from) for block in read) + wire.finish()


@settings(max_examples=400, deadline=None)
@given(raw_text, st.lists(st.integers(0, 80), max_size=6), st.lists(st.integers(0, 80), max_size=6))
def test_the_raw_text_reaches_the_upstream_server_as_the_same_message(raw: bytes, cuts: List[int],
                                                                        other_cuts: List[int]) -> None:
    if b"\r\n.\r\n" in b"\r\n" + raw + b"\r\n":
        return  # would have ended the message (or be its end)
    got = _raw_wire(raw, split(raw, cuts), split(raw, other_cuts))
    expected = _reference(raw)
    assert _stored(got) == _stored(expected)
    assert b"\r" not in got.replace(b"\r\n", b"") and b"\n" not in got.replace(b"\r\n", b"")
    if b"\r\n." not in raw.replace(b"\r\n..", b"") and not raw.startswith(b"."):
        assert got == expected  # the client stuffed every dot line: byte for byte


def test_text_that_ends_its_lines_well_goes_on_unchanged() -> None:
    raw = b"rest of a line\r\n..dot\r\nnext\r"
    check = _cut_through.RawCheck()
    check.feed(100, raw)
    assert (check.held, check.slow_from) == (b"\r", None)  # the last CR waits for the next piece
    check.feed(100 + len(raw), b"\nmore")
    assert (check.held, check.slow_from) == (b"", None)
    check.feed(105 + len(raw), b" bare\nLF")
    assert check.slow_from == 105 + len(raw)


def test_a_cr_ending_a_piece_is_shown_to_the_worker_once_checked(tmp_path: Any) -> None:
    with _spool.Spool(0, str(tmp_path)) as spool:
        spool.write(b"Subject: x\n\nbody")
        follower = _cut_through.Follower(spool, b"")
        try:
            assert follower.grew(spool, b"", _spool.Unstuffer())  # mid-line, after the empty line: raw from here
            assert follower.raw_from == spool.size
            for piece in (b"\r\nline\r", b"x"):
                spool.write(piece)
                follower.grew(spool, piece, None)
                if piece != b"x":
                    assert follower.written == spool.size - 1  # the CR waits
            assert follower.written == spool.size and follower.check.slow_from == spool.size - 2
        finally:
            follower.close()


# -- end to end ------------------------------------------------------------------------
@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream()
    up.ehlo = [b"250-upstream", b"250-8BITMIME", b"250-SMTPUTF8", b"250-DSN", b"250 SIZE 100000000"]
    yield up
    up.close()


def start(client: RawClient, mail: bytes = b"MAIL FROM:<a@example.com>", rcpts: Sequence[bytes] = (b"<b@example.com>",)) -> None:
    assert client.read_reply().startswith(b"220 ")
    assert client.command(b"EHLO client.example").startswith(b"250-")
    assert client.command(mail).startswith(b"250 ")
    for rcpt in rcpts:
        assert client.command(b"RCPT TO:" + rcpt).startswith(b"250 ")
    assert client.command(b"DATA").startswith(b"354 ")


def wait_upstream(upstream: FakeUpstream, condition: Any) -> None:
    with upstream.cond:
        assert upstream.cond.wait_for(lambda: condition(upstream), TIMEOUT), upstream.transactions


def partial(upstream: FakeUpstream) -> bytes:
    return bytes(upstream.transactions[-1].get("partial", b"")) if upstream.transactions else b""


def store_and_forward(message: bytes, **options: Any) -> Dict[str, Any]:
    """What PureProxy without the spool sends upstream for *message*."""
    up = FakeUpstream()
    try:
        with running_server(proxy_factory(up.address), **options) as st_:
            with smtplib.SMTP(*st_.address, timeout=TIMEOUT) as client:
                client.sendmail("a@example.com", ["b@example.com"], message)
        return up.wait_for_data(1)[0]
    finally:
        up.close()


def test_the_upstream_server_gets_the_message_before_the_client_has_sent_it_all(upstream: FakeUpstream) -> None:
    before = _spool.open_spools()
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD) as st_:
        with RawClient(st_.address) as client:
            start(client)
            client.send(SENT[: len(SENT) // 2])
            # The first half reaches the upstream server while the client waits.
            wait_upstream(upstream, lambda up: len(partial(up)) > THRESHOLD * 4)
            assert partial(upstream).startswith(b"\r\nSubject: big\r\nFrom: a@example.com\r\n" + PEER + b"\r\n\r\n")
            assert upstream.transactions[0]["data"] is None  # not complete: no end yet
            client.send(SENT[len(SENT) // 2 :] + END)
            assert client.read_reply() == b"250 OK\r\n"
            assert client.command(b"QUIT").startswith(b"221 ")
    got = upstream.wait_for_data(1)[0]
    assert got["data"] == store_and_forward(MESSAGE)["data"]
    assert _spool.open_spools() == before


@pytest.mark.parametrize("decode_data", [False, True])
def test_the_relayed_bytes_are_those_of_store_and_forward(upstream: FakeUpstream, decode_data: bool) -> None:
    messages = [
        MESSAGE,
        b"no header section, no empty line\r\n" + BODY,  # X-Peer at the end
        b"\r\n" + BODY,  # an empty first line: X-Peer first
        HEAD + b"x" * 5000 + b"\nbare LF " + b"y" * 5000,  # the client's line ends fixed on the way
        HEAD + b"\r\n".join(b"." * n for n in range(1, 200)),  # dot lines, none the end
    ]
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD, decode_data=decode_data) as st_:
        for message in messages:
            with smtplib.SMTP(*st_.address, timeout=TIMEOUT) as client:
                client.sendmail("a@example.com", ["b@example.com"], message)
    got = upstream.wait_for_data(len(messages))
    for message, transaction in zip(messages, got):
        assert transaction["data"] == store_and_forward(message, decode_data=decode_data)["data"]


def test_size_is_the_declared_size_and_what_is_added(upstream: FakeUpstream) -> None:
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD) as st_:
        with smtplib.SMTP(*st_.address, timeout=TIMEOUT) as client:  # declares SIZE=len(MESSAGE)
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        with RawClient(st_.address) as client:  # declares nothing
            start(client)
            client.send(SENT + END)
            assert client.read_reply() == b"250 OK\r\n"
    with_size, without = upstream.wait_for_data(2)
    assert with_size["mail"] == b"MAIL FROM:<a@example.com> SIZE=%d" % (len(MESSAGE) + len(PEER) + 2)
    assert without["mail"] == b"MAIL FROM:<a@example.com>"


def test_body_8bitmime_is_passed_on_when_the_client_declared_it(upstream: FakeUpstream) -> None:
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD) as st_:
        for mail in (b"MAIL FROM:<a@example.com> BODY=8BITMIME", b"MAIL FROM:<a@example.com>"):
            with RawClient(st_.address) as client:
                start(client, mail)
                client.send(SENT + END)
                assert client.read_reply() == b"250 OK\r\n"
    declared, undeclared = upstream.wait_for_data(2)
    assert declared["mail"] == b"MAIL FROM:<a@example.com> BODY=8BITMIME"
    # Store and forward would see the 8-bit text and add BODY=8BITMIME.
    assert undeclared["mail"] == b"MAIL FROM:<a@example.com>"
    assert declared["data"] == undeclared["data"]


def test_smtputf8_and_dsn_parameters_go_upstream(upstream: FakeUpstream) -> None:
    options = {"spool_threshold": THRESHOLD, "enable_SMTPUTF8": True, "dsn": True}
    with running_server(proxy_factory(upstream.address), **options) as st_:
        with RawClient(st_.address) as client:
            start(client, "MAIL FROM:<a@exämple.com> SMTPUTF8 RET=HDRS ENVID=e1".encode(),
                  [b"<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com"])
            client.send(SENT + END)
            assert client.read_reply() == b"250 OK\r\n"
    (got,) = upstream.wait_for_data(1)
    assert got["mail"] == "MAIL FROM:<a@exämple.com> SMTPUTF8 RET=HDRS ENVID=e1".encode()
    assert got["rcpts"] == [b"RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@example.com"]


def test_the_received_header_goes_first(upstream: FakeUpstream) -> None:
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD, add_received_header=True) as st_:
        with smtplib.SMTP(*st_.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (got,) = upstream.wait_for_data(1)
    expected = store_and_forward(MESSAGE, add_received_header=True)["data"]
    head, _, rest = got["data"].partition(b"\r\nSubject: big\r\n")
    assert head.startswith(b"Received: from ") and expected.startswith(head.split(b";")[0])
    assert rest == expected.partition(b"\r\nSubject: big\r\n")[2]


# -- failures ------------------------------------------------------------------------------
def _ended(upstream: FakeUpstream) -> bool:
    return upstream.ended >= 1


def test_a_client_that_leaves_mid_message_delivers_nothing(upstream: FakeUpstream) -> None:
    before = _spool.open_spools()
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD) as st_:
        with RawClient(st_.address) as client:
            start(client)
            client.send(SENT)
            wait_upstream(upstream, lambda up: len(partial(up)) > THRESHOLD * 4)
        # The upstream connection is closed before any end of data.
        wait_upstream(upstream, _ended)
        assert upstream.transactions[0]["data"] is None
        assert _spool.open_spools() == before


def test_too_much_data_closes_the_upstream_transaction_and_is_answered_552(upstream: FakeUpstream) -> None:
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD, data_size_limit=20000) as st_:
        with RawClient(st_.address) as client:
            start(client)
            client.send(SENT[:10000])
            wait_upstream(upstream, lambda up: len(partial(up)) > THRESHOLD * 2)
            client.send(SENT[10000:] + END)
            assert client.read_reply() == b"552 Error: Too much mail data\r\n"
            wait_upstream(upstream, _ended)
            assert client.command(b"NOOP") == b"250 OK\r\n"
    assert [t["data"] for t in upstream.transactions] == [None]


@pytest.mark.parametrize("refusal", ["mail", "rcpt"])
def test_an_early_refusal_is_the_reply_to_the_end_of_data_as_before(refusal: str) -> None:
    replies = {}
    for name, options in (("cut", {"spool_threshold": THRESHOLD}), ("memory", {})):
        up = FakeUpstream()
        if refusal == "mail":
            up.mail_reply = b"451 4.3.0 try later"
        else:
            up.rcpt_replies = {"c@example.com": b"550 5.1.1 no such user"}
        try:
            with running_server(proxy_factory(up.address), **options) as st_:
                with RawClient(st_.address) as client:
                    start(client, rcpts=[b"<b@example.com>", b"<c@example.com>"])
                    client.send(SENT[:5000])
                    if options:  # refused: the upstream session ends at once
                        wait_upstream(up, _ended)
                    client.send(SENT[5000:] + END)
                    replies[name] = client.read_reply()
        finally:
            up.close()
        assert all(t["data"] is None for t in up.transactions)
    assert replies["cut"] == replies["memory"]
    assert replies["cut"].startswith(b"451 4.3.0 try later" if refusal == "mail" else b"550-")


def test_an_upstream_that_dies_mid_message_is_answered_451(upstream: FakeUpstream) -> None:
    upstream.drop_during_data = 20000
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD) as st_:
        with RawClient(st_.address) as client:
            start(client)
            client.send(SENT[:50000])
            wait_upstream(upstream, _ended)
            client.send(SENT[50000:] + END)
            assert client.read_reply() == b"451 Requested action aborted: upstream server unavailable\r\n"
            assert client.command(b"NOOP") == b"250 OK\r\n"


def test_an_upstream_slower_than_the_client_still_gets_it_all() -> None:
    up = FakeUpstream(rcvbuf=4096)
    up.data_rate = 400000.0  # bytes/s: the client is done long before
    try:
        with running_server(proxy_factory(up.address), spool_threshold=THRESHOLD) as st_:
            with RawClient(st_.address) as client:
                start(client)
                client.send(SENT + END)
                assert client.read_reply() == b"250 OK\r\n"
        assert up.wait_for_data(1)[0]["data"] == store_and_forward(MESSAGE)["data"]
    finally:
        up.close()


# -- who gets it -----------------------------------------------------------------------------
class OwnProcessMessage(smtpd.PureProxy):
    seen: List[bytes] = []

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kwargs: Any) -> Any:
        self.seen.append(data)
        return super().process_message(peer, mailfrom, rcpttos, data, **kwargs)


class OwnDeliver(smtpd.PureProxy):
    seen: List[Any] = []

    def _deliver(self, mailfrom: str, rcpttos: List[str], data: Any) -> Any:
        self.seen.append(type(data))
        return super()._deliver(mailfrom, rcpttos, data)


@pytest.mark.parametrize("cls", [OwnProcessMessage, OwnDeliver])
def test_a_subclass_with_its_own_hook_gets_it_called(upstream: FakeUpstream, cls: Any) -> None:
    cls.seen = []
    with running_server(proxy_factory(upstream.address, cls), spool_threshold=THRESHOLD) as st_:
        with RawClient(st_.address) as client:
            start(client)
            client.send(SENT + END)
            assert client.read_reply() == b"250 OK\r\n"
    (got,) = upstream.wait_for_data(1)
    assert got["data"] == store_and_forward(MESSAGE)["data"]
    assert len(cls.seen) == 1
    if cls is OwnDeliver:
        assert cls.seen == [_relay.StreamPayload]
    assert not _cut_through.stock(cls, smtpd.PureProxy) and _cut_through.stock(smtpd.PureProxy, smtpd.PureProxy)


def test_without_a_descriptor_to_spare_the_message_is_stored_and_forwarded(upstream: FakeUpstream,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def no_descriptor(self: _spool.Spool) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(_spool.Spool, "share", no_descriptor)
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD) as st_:
        with smtplib.SMTP(*st_.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    (got,) = upstream.wait_for_data(1)
    assert got == store_and_forward(MESSAGE)  # SIZE= measured: relayed once complete


def test_a_small_message_is_stored_and_forwarded(upstream: FakeUpstream) -> None:
    small = HEAD + b"caf\xc3\xa9\r\n"
    with running_server(proxy_factory(upstream.address), spool_threshold=THRESHOLD) as st_:
        with smtplib.SMTP(*st_.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.com", ["b@example.com"], small)
    (got,) = upstream.wait_for_data(1)
    assert got == store_and_forward(small)  # SIZE= measured, BODY=8BITMIME seen in the content
