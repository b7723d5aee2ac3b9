"""Messages bigger than memory: ``spool_threshold`` (smtpd_compat._spool).

The incremental transforms are held to the in-memory ones they replace
(hypothesis: any message, any split into reads); the servers are held to
their in-memory selves on real loopback sessions with smtplib: the same
``process_message`` data, the same mailbox files, the same bytes upstream.
"""

from __future__ import annotations

import io
import mailbox
import os
import smtplib
import time
from pathlib import Path
from typing import Any, Dict, List, Optional
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd_compat import MailboxServer, _grammar, _mbox, _relay, _serving, _spool, smtpd

from conftest import TIMEOUT, RawClient, RecordingSMTPServer, running_server

# Message text made of the bytes that matter to (un)stuffing.
texts = st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.", b"\nFrom ", b"F", b"\xc3\xa9"]),
                 max_size=40).map(b"".join)


def split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in points + [len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


# -- the incremental transforms ------------------------------------------------
@given(texts, st.lists(st.integers(0, 200), max_size=8))
def test_unstuffer_gives_what_the_in_memory_path_gives(data: bytes, cuts: List[int]) -> None:
    unstuffer = _spool.Unstuffer()
    streamed = b"".join(unstuffer.feed(piece) for piece in split(data, cuts)) + unstuffer.finish()
    assert streamed == _grammar.unstuff_chunks([data])
    assert streamed == _grammar.unstuff_chunks(split(data, cuts))


@given(texts, st.lists(st.integers(0, 200), max_size=8))
def test_stuffer_gives_what_the_relay_sends(data: bytes, cuts: List[int]) -> None:
    stuffer = _spool.Stuffer()
    assert b"".join(stuffer.wire(split(data, cuts))) == _relay.wire_data(data)
    assert _spool.Stuffer().size(split(data, cuts)) == len(_relay.wire_data(data))


@given(texts, st.lists(st.integers(0, 200), max_size=8))
def test_mbox_entry_in_pieces_is_the_same_entry(data: bytes, cuts: List[int]) -> None:
    streamed = b"".join(_mbox.entry_chunks(b"From a@b Thu Jan  1 00:00:00 2026", split(data, cuts)))
    assert streamed == _mbox.mbox_entry(b"From a@b Thu Jan  1 00:00:00 2026", data)


@settings(max_examples=200)
@given(texts, st.integers(1, 7))
def test_relay_payload_from_a_file_is_the_in_memory_payload(data: bytes, block: int) -> None:
    expected = _relay.wire_data(_grammar.add_peer_header(data, "192.0.2.1"))
    with mock.patch.object(_relay, "_BLOCK", block):
        payload = _relay.StreamPayload(io.BytesIO(data), "192.0.2.1")
        assert b"".join(payload.blocks()) == expected
        assert len(payload) == len(expected)
        assert payload.isascii() == expected.isascii()


# -- the spool -------------------------------------------------------------------
def test_spool_keeps_small_data_in_memory_and_the_rest_in_an_unnamed_file(tmp_path: Path) -> None:
    before = _spool.open_spools()
    spool = _spool.Spool(10, str(tmp_path))
    spool.write(b"0123456789")
    assert not spool.on_disk and spool.getvalue() == b"0123456789"
    spool.write(b"abc")
    spool.write(b"")
    assert spool.on_disk and spool.size == 13
    assert os.listdir(tmp_path) == []  # anonymous: nothing to clean up after a crash
    assert spool.getvalue() == b"0123456789abc"
    assert list(spool.chunks(5)) == [b"01234", b"56789", b"abc"]
    reader = spool.reader(b"HEAD:")
    assert reader.read(7) == b"HEAD:01"
    assert reader.read() == b"23456789abc"
    reader.seek(3)
    assert reader.read(4) == b"D:01"
    assert spool.is_utf8()
    assert _spool.open_spools() == before + 1
    spool.close()
    spool.close()
    assert _spool.open_spools() == before
    with pytest.raises(ValueError):
        reader.seek(6)
        reader.read()


def test_spool_says_whether_it_holds_utf8() -> None:
    with _spool.Spool(1) as spool:
        spool.write(b"caf\xc3")
        assert not spool.is_utf8()  # cut inside a character
        spool.write(b"\xa9")
        assert spool.is_utf8()


@pytest.mark.parametrize("value, error", [(-1, ValueError), ("1", TypeError), (True, TypeError), (1.5, TypeError)])
def test_spool_threshold_is_checked_when_the_server_is_made(value: Any, error: type) -> None:
    with pytest.raises(error, match="spool_threshold"):
        smtpd.SMTPServer(("127.0.0.1", 0), None, map={}, spool_threshold=value)


def test_spool_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="spool_dir"):
        smtpd.SMTPServer(("127.0.0.1", 0), None, map={}, spool_threshold=0, spool_dir=tmp_path / "missing")


# -- end to end ---------------------------------------------------------------------
# Dot-stuffed lines, a line that is one dot, a bare CR, 8-bit text: more than
# the threshold, so most of it is on disk.
MESSAGE = (b"Subject: big\r\nFrom: a@example.com\r\n\r\n"
           + b".leading dot\r\n..two\r\n.\r\nplain caf\xc3\xa9 line\rwith a bare CR\r\nFrom here\r\n" * 3000)
THRESHOLD = 4096


def send(address: Any, message: bytes = MESSAGE, rcpts: Optional[List[str]] = None) -> None:
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        client.sendmail("a@example.com", rcpts or ["b@example.com"], message)


def received(cls: Any = RecordingSMTPServer, **kwargs: Any) -> Any:
    with running_server(cls, **kwargs) as st:
        send(st.address)
        return st.server.wait_for(1)[0]


@pytest.mark.parametrize("decode_data", [False, True])
def test_process_message_gets_what_it_gets_without_the_spool(decode_data: bool) -> None:
    before = _spool.open_spools()
    spooled = received(decode_data=decode_data, spool_threshold=THRESHOLD)
    in_memory = received(decode_data=decode_data)
    assert type(spooled.data) is type(in_memory.data) is (str if decode_data else bytes)
    assert spooled.data == in_memory.data
    assert spooled.kwargs == in_memory.kwargs
    assert _spool.open_spools() == before


class StreamServer(RecordingSMTPServer):
    """Records what process_message_stream reads (process_message must not run)."""

    def process_message_stream(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kwargs: Any) -> Optional[str]:
        content = data.read()
        data.seek(0)
        assert data.read(5) == content[:5]
        return RecordingSMTPServer.process_message(self, peer, mailfrom, rcpttos, content, **kwargs)

    def process_message(self, *args: Any, **kwargs: Any) -> Optional[str]:
        raise AssertionError("process_message called instead of process_message_stream")


@pytest.mark.parametrize("decode_data", [False, True])
def test_the_stream_hook_reads_the_same_content(decode_data: bool, tmp_path: Path) -> None:
    streamed = received(StreamServer, decode_data=decode_data, spool_threshold=THRESHOLD, spool_dir=str(tmp_path))
    in_memory = received(decode_data=decode_data)
    assert streamed.data == in_memory.data
    assert streamed.kwargs == in_memory.kwargs
    assert os.listdir(tmp_path) == []


def test_the_stream_hook_gets_the_received_header_first() -> None:
    streamed = received(StreamServer, spool_threshold=0, add_received_header=True)
    in_memory = received(add_received_header=True)
    head, _, rest = streamed.data.partition(b"\n\t")
    assert head.startswith(b"Received: from ") and in_memory.data.startswith(head)
    assert streamed.data.endswith(in_memory.data[-1000:])
    assert len(streamed.data) == len(in_memory.data)


def test_the_stream_hook_is_not_called_without_the_option() -> None:
    with running_server(StreamServer) as st:
        with pytest.raises(smtplib.SMTPDataError):  # process_message raised: 451
            send(st.address)


def maildir_files(path: Path) -> List[bytes]:
    # (Sorted by content: Maildir names do not sort by arrival.)
    return sorted((path / "new" / name).read_bytes() for name in os.listdir(path / "new"))


def test_maildir_stores_the_same_file(tmp_path: Path) -> None:
    for name, options in (("spooled", {"spool_threshold": THRESHOLD}), ("memory", {})):
        with running_server(MailboxServer, maildir=tmp_path / name, **options) as st:
            send(st.address)
            send(st.address, b"Subject: small\r\n\r\nsmall\r\n")
    assert maildir_files(tmp_path / "spooled") == maildir_files(tmp_path / "memory")
    assert len(maildir_files(tmp_path / "spooled")) == 2
    assert os.listdir(tmp_path / "spooled" / "tmp") == []


def test_mbox_stores_the_same_entries(tmp_path: Path) -> None:
    for name, options in (("spooled", {"spool_threshold": THRESHOLD}), ("memory", {})):
        with running_server(MailboxServer, mbox=tmp_path / name, **options) as st:
            send(st.address)
            send(st.address, b"Subject: small\r\n\r\nFrom me\r\nno end")
    # The From_ lines carry the time of delivery: compare everything else.
    spooled, memory = ([line for line in (tmp_path / name).read_bytes().split(b"\n") if not line.startswith(b"From ")]
                       for name in ("spooled", "memory"))
    assert spooled == memory
    assert len(mailbox.mbox(str(tmp_path / "spooled"))) == 2


def test_pure_proxy_relays_the_same_bytes() -> None:
    from test_proxy import FakeUpstream, proxy_factory

    seen: Dict[str, Any] = {}
    for name, options in (("spooled", {"spool_threshold": THRESHOLD}), ("memory", {})):
        upstream = FakeUpstream()
        try:
            with running_server(proxy_factory(upstream.address), **options) as st:
                send(st.address, rcpts=["r1@example.org", "r2@example.org"])
            upstream.wait_for_data(1)
            seen[name] = upstream.transactions
        finally:
            upstream.close()
    # MAIL's SIZE= and BODY= differ: a spooled message is relayed while it
    # arrives, with the client's declarations (tests/test_cut_through.py).
    for transactions in seen.values():
        for transaction in transactions:
            transaction["mail"] = transaction["mail"].split(b" ")[1]
    assert seen["spooled"] == seen["memory"]
    assert len(seen["spooled"][0]["data"]) > len(MESSAGE)


# -- limits and the end of a session --------------------------------------------------
def session_count(st: Any) -> int:
    return int(st.call(lambda: len(_serving.sessions(st.server))))


def wait_until_no_session(st: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while session_count(st) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert session_count(st) == 0


def start_message(client: RawClient) -> None:
    assert client.read_reply().startswith(b"220 ")
    assert client.command(b"HELO client.example").startswith(b"250 ")
    assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
    assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
    assert client.command(b"DATA").startswith(b"354 ")


def test_too_much_data_is_refused_and_the_session_goes_on() -> None:
    before = _spool.open_spools()
    with running_server(spool_threshold=100, data_size_limit=5000) as st:
        with RawClient(st.address) as client:
            start_message(client)
            client.send((b"x" * 98 + b"\r\n") * 200)
            assert client.command(b".") == b"552 Error: Too much mail data\r\n"
            assert client.command(b"NOOP") == b"250 OK\r\n"
            start_message_after_greeting(client)
            client.send(b"small\r\n")
            assert client.command(b".") == b"250 OK\r\n"
        assert [m.data for m in st.server.wait_for(1)] == [b"small"]
        wait_until_no_session(st)
    assert _spool.open_spools() == before


def start_message_after_greeting(client: RawClient) -> None:
    assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
    assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
    assert client.command(b"DATA").startswith(b"354 ")


def test_a_client_that_leaves_mid_message_leaves_no_spool(tmp_path: Path) -> None:
    before = _spool.open_spools()
    with running_server(spool_threshold=100, spool_dir=str(tmp_path)) as st:
        with RawClient(st.address) as client:
            start_message(client)
            client.send(b"a line of the message\r\n" * 5000)
        wait_until_no_session(st)
        assert _spool.open_spools() == before
        assert st.server.messages == []
    assert os.listdir(tmp_path) == []


def test_shutdown_closes_the_spool_of_a_message_being_received() -> None:
    before = _spool.open_spools()
    with running_server(spool_threshold=100) as st:
        with RawClient(st.address) as client:
            start_message(client)
            client.send(b"a line of the message\r\n" * 5000)
            client.send(b"NOOP\r\n")  # message text too; read before the stop below
            deadline = time.monotonic() + TIMEOUT
            while _spool.open_spools() == before and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _spool.open_spools() == before + 1
            st.stop()
    assert _spool.open_spools() == before


def test_ehlo_and_replies_are_unchanged_by_the_option() -> None:
    replies = []
    for options in ({"spool_threshold": 0}, {}):
        with running_server(**options) as st, RawClient(st.address) as client:
            greeting = client.read_reply()
            replies.append((greeting.split(b" ", 2)[2:], client.command(b"EHLO client.example"),
                            client.command(b"MAIL FROM:<a@example.com>"), client.command(b"RCPT TO:<b@example.com>"),
                            client.command(b"DATA"), client.command(b"hello\r\n."), client.command(b"QUIT")))
    assert replies[0] == replies[1]


# -- the command line -----------------------------------------------------------------
def test_the_flags_reach_the_server_only_when_given(tmp_path: Path) -> None:
    from smtpd_compat import _cli, _cli_args

    ns = _cli_args.parse_args(["--spool-threshold", "1048576", "--spool-dir", str(tmp_path)])
    assert _cli.server_options(ns) == {"spool_threshold": 1048576, "spool_dir": str(tmp_path)}
    assert "spool_threshold" not in _cli.server_options(_cli_args.parse_args([]))
    with pytest.raises(_cli_args.UsageError, match="--spool-threshold"):
        _cli.server_options(_cli_args.parse_args(["--spool-dir", str(tmp_path)]))


def test_with_enhanced_status_codes_the_spool_still_serves() -> None:
    with running_server(spool_threshold=0, enhanced_status_codes=True) as st:
        with RawClient(st.address) as client:
            assert client.read_reply().startswith(b"220 ")
            assert b"250-ENHANCEDSTATUSCODES\r\n" in client.command(b"EHLO client.example")
            assert client.command(b"MAIL FROM:<a@example.com>") == b"250 2.1.0 OK\r\n"
            assert client.command(b"RCPT TO:<b@example.com>") == b"250 2.1.5 OK\r\n"
            assert client.command(b"DATA").startswith(b"354 ")
            client.send(b"..dot\r\nline\r\n")
            assert client.command(b".") == b"250 2.0.0 OK\r\n"
            assert st.call(lambda: type(next(iter(_serving.sessions(st.server)))._session).__name__) == "SpoolingEnhancedSession"
        assert [m.data for m in st.server.wait_for(1)] == [b".dot\nline"]


def test_received_data_holds_the_message_process_message_got() -> None:
    with running_server(spool_threshold=THRESHOLD) as st:
        with RawClient(st.address) as client:
            start_message(client)
            client.send(b"Subject: x\r\n\r\n" + b"..body\r\n" * 1000)
            assert client.command(b".") == b"250 OK\r\n"
            data = st.call(lambda: next(iter(_serving.sessions(st.server))).received_data)
        assert data == st.server.wait_for(1)[0].data == b"Subject: x\n\n" + b".body\n" * 999 + b".body"


# -- any split into reads, through the framer ----------------------------------------
def _reads(server_options: Dict[str, Any], reads: List[bytes]) -> Any:
    from test_read_pieces import Session as Reads

    session = Reads(RecordingSMTPServer, **server_options)
    for piece in reads:
        session.feed(piece)
    return session.finish(), [(m.mailfrom, m.rcpttos, m.data) for m in session.server.messages]


def _transcripts() -> List[Any]:
    from test_transcripts import TRANSCRIPTS

    return TRANSCRIPTS


@pytest.mark.parametrize("how", ["steps", "whole", "cuts"])
@pytest.mark.parametrize("t", _transcripts(), ids=lambda t: t.name)
def test_every_transcript_gives_the_same_with_the_spool(t: Any, how: str) -> None:
    # Every message of every transcript on disk (threshold 0): the same
    # replies and the same messages as in memory.
    from test_read_pieces import pieces

    from test_transcripts import CONFIGS

    reads = pieces(t, how)
    assert _reads(dict(CONFIGS[t.config], spool_threshold=0), reads) == _reads(CONFIGS[t.config], reads)


ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n"


@settings(max_examples=40, deadline=None)
@given(texts, st.lists(st.integers(0, 300), max_size=6))
def test_any_message_read_in_any_pieces_is_delivered_as_in_memory(text: bytes, cuts: List[int]) -> None:
    stream = ENVELOPE + text + b"\r\n.\r\nQUIT\r\n"
    # The message is what lies between DATA's line and the first end of data.
    reads = split(stream, [len(ENVELOPE) + c for c in cuts])
    spooled = _reads({"spool_threshold": 3}, reads)
    assert spooled == _reads({}, reads)
    assert b"221 Bye" in spooled[0]


def test_a_spool_that_cannot_be_written_is_answered_452_and_the_session_goes_on() -> None:
    write = _spool.Spool.write

    def full_disk(self: _spool.Spool, data: bytes) -> None:
        if self.size + len(data) > 10000:
            raise OSError(28, "No space left on device")
        write(self, data)

    before = _spool.open_spools()
    with mock.patch.object(_spool.Spool, "write", full_disk), running_server(spool_threshold=100) as st:
        with RawClient(st.address) as client:
            start_message(client)
            client.send(b"a line of the message\r\n" * 2000)
            assert client.command(b".") == b"452 Error: insufficient system storage\r\n"
            assert client.command(b"NOOP") == b"250 OK\r\n"
            start_message_after_greeting(client)
            client.send(b"small\r\n")
            assert client.command(b".") == b"250 OK\r\n"
        assert [m.data for m in st.server.wait_for(1)] == [b"small"]
        wait_until_no_session(st)
    assert _spool.open_spools() == before


# BDAT (chunking) on a spooling server: the chunks go to the spool as they
# arrive, and a transaction reset before its LAST chunk closes it.


def _bdat(client: RawClient, chunks: List[bytes]) -> List[bytes]:
    replies = []
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        client.send(b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk)
        replies.append(client.read_reply())
    return replies


def test_bdat_chunks_go_to_the_spool_and_reach_the_stream_hook(tmp_path: Path) -> None:
    chunks = [b"Subject: big\r\n\r\n", b".dot\r\n\x00binary\xff" * 3000, b"\r\n.\r\nend\r\n"]
    before = _spool.open_spools()
    with running_server(StreamServer, chunking=True, spool_threshold=100, spool_dir=str(tmp_path)) as st:
        with RawClient(st.address) as client:
            assert client.read_reply().startswith(b"220 ")
            assert b"CHUNKING" in client.command(b"EHLO client.example")
            assert client.command(b"MAIL FROM:<a@example.com> BODY=BINARYMIME") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
            replies = _bdat(client, chunks)
            assert replies == [b"250 %d octets received\r\n" % len(chunks[0]), b"250 %d octets received\r\n" % len(chunks[1]), b"250 OK\r\n"]
            # Reset between two chunks: that spool is closed, nothing delivered.
            assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
            client.send(b"BDAT 500\r\n" + b"x" * 500)
            assert client.read_reply() == b"250 500 octets received\r\n"
            assert _spool.open_spools() == before + 1
            assert client.command(b"RSET") == b"250 OK\r\n"
            assert _spool.open_spools() == before
        (message,) = st.server.wait_for(1)
        assert message.data == b"".join(chunks)
        wait_until_no_session(st)
    assert _spool.open_spools() == before
    assert os.listdir(tmp_path) == []


class ReadSizeChannel(smtpd.SMTPChannel):
    """Records, for each piece of message text, the read size asked for;
    slow at the first piece past the threshold, so that the client's text
    piles up in the socket and the next reads come back full."""

    def collect_incoming_data(self, data: bytes) -> None:
        sizes = self.smtp_server.read_sizes
        if self._ac_read_size and not any(size for size, _ in sizes):
            time.sleep(0.2)
        sizes.append((self._ac_read_size, len(data)))
        super().collect_incoming_data(data)


class ReadSizeServer(RecordingSMTPServer):
    channel_class = ReadSizeChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_sizes: List[Any] = []


def test_a_message_past_the_threshold_is_read_in_bigger_pieces() -> None:
    # 4 MiB: past the 4 KiB threshold, reads ask for BULK_READ bytes (and
    # get them once text waits in the socket); the next message, under
    # the threshold, is read as asynchat reads (ac_in_buffer_size).
    big = b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 52000
    with running_server(ReadSizeServer, spool_threshold=THRESHOLD) as st:
        send(st.address, big)
        assert st.server.wait_for(1)[0].data == _grammar.unstuff_chunks([big[:-2]])  # (its last CRLF ends the data)
        sizes = list(st.server.read_sizes)
        del st.server.read_sizes[:]
        send(st.address, b"Subject: small\r\n\r\nsmall\r\n")
        st.server.wait_for(2)
        small = list(st.server.read_sizes)
    assert {size for size, _ in sizes} == {0, _spool.BULK_READ}
    assert max(length for size, length in sizes if size) > 2 * 65536  # reads bigger than asynchat's
    assert max(length for _, length in sizes) <= _spool.BULK_READ + 4  # (+ the framer's held CRLF, at most)
    assert small and {size for size, _ in small} == {0}
