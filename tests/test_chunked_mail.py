"""Messages received with BDAT (RFC 3030) on their way on: PureProxy relaying
them (with BDAT to an upstream server that announces CHUNKING, in DATA's
form to one that does not, a BINARYMIME one refused there), MailboxServer
storing them.  See smtpd_compat/_chunked_mail.py.

No client library speaks BDAT: the clients are raw sockets; the DATA
clients they are compared with are smtplib.  The upstream servers are our
own (SMTPServer with chunking records exactly what it received) and
test_proxy's FakeUpstream (the raw bytes of DATA).
"""

from __future__ import annotations

import mailbox
import os
import smtplib
import socket
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_proxy import FakeUpstream, proxy_factory

from smtpd_compat import MailboxServer, _chunked_mail, _grammar, _relay, _spool, smtpd

from conftest import TIMEOUT, RawClient, RecordingSMTPServer

# Text: dot lines (one is a lone dot), a line starting "From ", 8-bit text.
TEXT = (b"Subject: text\r\nFrom: a@example.com\r\n\r\n"
        + b".leading dot\r\n.\r\n..two\r\nFrom here\r\nplain caf\xc3\xa9\r\n" * 40)
# Binary: what no DATA could carry (the end of data, bare CR and LF, NUL,
# 8-bit octets, a BDAT command), a "From " line, and no line end at the end.
BINARY = (b"Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n"
          + b"\x00\x01\xff\r\n.\r\nbare LF\nbare CR\r\nFrom x\r\nBDAT 3 LAST\r\n\xfe" * 40)
THRESHOLD = 1024
PEER = b"X-Peer: 127.0.0.1\r\n"
NOT_RELAYED = b"554 5.6.3 Conversion required but not supported: upstream server does not accept BINARYMIME\r\n"
modes = pytest.mark.parametrize("options", [{}, {"spool_threshold": THRESHOLD}], ids=["memory", "spooled"])


def bdat(chunk: bytes, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def send_bdat(address: Any, message: bytes, params: bytes = b"", rcpts: Sequence[bytes] = (b"b@example.com",),
              rcpt_params: bytes = b"", chunks: int = 3) -> bytes:
    """Send *message* in *chunks* BDAT chunks; the reply to the last one."""
    with RawClient(address) as client:
        assert client.read_reply()[:4] == b"220 "
        assert b"250-CHUNKING\r\n" in client.command(b"EHLO client.example")
        assert client.command(b"MAIL FROM:<a@example.com>" + params) == b"250 OK\r\n"
        for rcpt in rcpts:
            assert client.command(b"RCPT TO:<" + rcpt + b">" + rcpt_params) == b"250 OK\r\n"
        step = -(-len(message) // chunks) or 1
        pieces = [message[i : i + step] for i in range(0, len(message), step)] or [b""]
        for piece in pieces[:-1]:
            client.send(bdat(piece))
            assert client.read_reply() == b"250 %d octets received\r\n" % len(piece)
        client.send(bdat(pieces[-1], last=True))
        reply = client.read_reply()
        assert client.command(b"QUIT")[:4] == b"221 "
        return reply


def send_data(address: Any, message: bytes) -> None:
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        client.sendmail("a@example.com", ["b@example.com"], message)


def upstream_server(server_factory: Any, **options: Any) -> Any:
    return server_factory(RecordingSMTPServer, **options)


def proxy(server_factory: Any, upstream: Any, cls: Any = smtpd.PureProxy, **options: Any) -> Any:
    return server_factory(proxy_factory(upstream, cls), chunking=True, **options)


# -- the pure parts ------------------------------------------------------------------
def cut(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


octets = st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b".", b"\r\n\r\n", b"\xff"]), max_size=40).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(octets, st.lists(st.integers(0, 200), max_size=8))
def test_data_form_in_blocks_is_the_data_form(data: bytes, cuts: List[int]) -> None:
    assert b"".join(_chunked_mail.data_form_blocks(cut(data, cuts))) == _chunked_mail.data_form(data)


@settings(max_examples=300, deadline=None)
@given(octets, st.integers(1, 5))
def test_octets_from_a_file_are_the_octets_in_memory(data: bytes, piece: int) -> None:
    spool = _spool.Spool(0, None)
    saved = _chunked_mail._PIECE
    _chunked_mail._PIECE = piece  # blank lines and CRLFs cut between reads
    try:
        spool.write(data)
        payload = _chunked_mail.Octets(spool.reader(), "127.0.0.1")
        expected = _chunked_mail.add_peer_header(data, "127.0.0.1")
        assert b"".join(payload.blocks()) == expected
        assert len(payload) == len(expected) and payload.isascii() == expected.isascii()
    finally:
        _chunked_mail._PIECE = saved
        spool.close()


lines = st.lists(st.sampled_from([b"", b"a", b".", b"..x", b"From y", b"\xc3\xa9"]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(lines, st.booleans())
def test_the_header_goes_where_datas_goes(text_lines: List[bytes], final_crlf: bool) -> None:
    data = b"\r\n".join(text_lines) + (b"\r\n" if final_crlf and text_lines else b"")
    as_data = _chunked_mail.data_form(data)
    assert (_chunked_mail.data_form(_chunked_mail.add_peer_header(data, "h"))
            == _grammar.add_peer_header(as_data, "h"))


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 2500])
def test_bdat_wire_cuts_chunks(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    monkeypatch.setattr(_chunked_mail, "CHUNK", 1000)
    data = bytes(range(256)) * 10
    data = data[:size]
    wire = list(_chunked_mail.bdat_wire(data, len(data)))
    commands = [w for w in wire if w is not None and w.startswith(b"BDAT ")]
    sizes = [int(c.split()[1]) for c in commands]
    assert sum(sizes) == size and all(s == 1000 for s in sizes[:-1]) and sizes[-1] <= 1000
    assert commands[-1].endswith(b" LAST\r\n") and not any(c.endswith(b" LAST\r\n") for c in commands[:-1])
    assert wire.count(None) == len(commands) - 1
    assert b"".join(w for w in wire if w is not None and w not in commands) == data


# -- PureProxy ---------------------------------------------------------------------------
@modes
def test_text_to_an_upstream_without_chunking_is_what_data_makes_it(server_factory: Any, options: Dict[str, Any]) -> None:
    upstream = FakeUpstream()  # 8BITMIME and SIZE, no CHUNKING: the raw DATA bytes
    try:
        st_ = proxy(server_factory, upstream.address, **options)
        no_end = b"Subject: short\r\n\r\nno line end"
        for message in (TEXT, no_end):
            send_data(st_.address, message)
            assert send_bdat(st_.address, message) == b"250 OK\r\n"
        seen = upstream.wait_for_data(4)
    finally:
        upstream.close()
    assert seen[0]["data"] == seen[1]["data"] and seen[2]["data"] == seen[3]["data"]
    # A spooled DATA message is relayed while it arrives: its SIZE= and BODY=
    # are the client's declarations, not measured (tests/test_cut_through.py).
    compared = (lambda mail: mail.split(b" ")[1]) if options else (lambda mail: mail)
    assert compared(seen[0]["mail"]) == compared(seen[1]["mail"])
    assert seen[1]["data"].startswith(b"Subject: text\r\nFrom: a@example.com\r\n" + PEER + b"\r\n..leading dot\r\n..\r\n")
    assert seen[3]["data"].endswith(b"\r\nno line end\r\n")


@modes
def test_text_to_an_upstream_with_chunking_goes_by_bdat(server_factory: Any, options: Dict[str, Any]) -> None:
    upstream = upstream_server(server_factory, chunking=True)
    st_ = proxy(server_factory, upstream.address, **options)
    assert send_bdat(st_.address, TEXT) == b"250 OK\r\n"
    send_data(st_.address, TEXT)
    by_bdat, by_data = upstream.server.wait_for(2)
    assert by_bdat.kwargs["chunked"] is True and by_data.kwargs["chunked"] is False
    assert by_bdat.data == TEXT.replace(b"\r\n\r\n", b"\r\n" + PEER + b"\r\n", 1)
    assert _chunked_mail.data_form(by_bdat.data) == by_data.data
    # SIZE= is the octets sent: by BDAT the message's, by DATA the stuffed text's.
    assert by_bdat.kwargs["mail_options"] == ["SIZE=%d" % len(by_bdat.data), "BODY=8BITMIME"]
    # Spooled, the DATA message is relayed while it arrives: BODY= is what the
    # client declared (smtplib: nothing), not what its content needs.
    assert by_data.kwargs["mail_options"][1:] == ([] if options else ["BODY=8BITMIME"])


@modes
def test_binary_to_an_upstream_with_chunking_is_relayed_unchanged(server_factory: Any, options: Dict[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_chunked_mail, "CHUNK", 1000)  # several upstream chunks
    upstream = upstream_server(server_factory, chunking=True)
    st_ = proxy(server_factory, upstream.address, **options)
    assert send_bdat(st_.address, BINARY, b" BODY=BINARYMIME", chunks=4) == b"250 OK\r\n"
    (got,) = upstream.server.wait_for(1)
    assert got.data == BINARY.replace(b"\r\n\r\n", b"\r\n" + PEER + b"\r\n", 1)
    assert got.kwargs["chunked"] is True and "BODY=BINARYMIME" in got.kwargs["mail_options"]


@modes
def test_binary_to_an_upstream_without_chunking_is_refused(server_factory: Any, options: Dict[str, Any]) -> None:
    upstream = upstream_server(server_factory)
    st_ = proxy(server_factory, upstream.address, **options)
    assert send_bdat(st_.address, BINARY, b" BODY=BINARYMIME") == NOT_RELAYED
    assert send_bdat(st_.address, TEXT) == b"250 OK\r\n"  # the session and the relay go on
    (got,) = upstream.server.wait_for(1)
    assert got.data == _chunked_mail.data_form(TEXT.replace(b"\r\n\r\n", b"\r\n" + PEER + b"\r\n", 1))
    assert len(upstream.server.messages) == 1


def test_the_refusal_carries_its_code_once_with_enhanced_status_codes(server_factory: Any) -> None:
    upstream = upstream_server(server_factory)
    st_ = proxy(server_factory, upstream.address, enhanced_status_codes=True)
    with RawClient(st_.address) as client:
        client.read_reply()
        client.command(b"EHLO client.example")
        client.command(b"MAIL FROM:<a@example.com> BODY=BINARYMIME")
        client.command(b"RCPT TO:<b@example.com>")
        client.send(bdat(BINARY, last=True))
        assert client.read_reply() == NOT_RELAYED


class WatchingProxy(smtpd.PureProxy):
    """Notes what _deliver() gets and how the spool is read."""

    seen: List[Any] = []

    def _deliver(self, mailfrom: str, rcpttos: List[str], data: Any) -> Dict[str, Any]:
        blocks = [len(block) for block in data.blocks()] if isinstance(data, _chunked_mail.Octets) else None
        self.seen.append((type(data), blocks, _spool.open_spools()))
        return super()._deliver(mailfrom, rcpttos, data)


def test_a_spooled_message_is_relayed_from_its_spool_in_blocks(server_factory: Any, tmp_path: Path) -> None:
    big = BINARY * 200  # about 2.5 MB: three chunks of 1 MiB upstream
    upstream = upstream_server(server_factory, chunking=True, data_size_limit=0)
    before = _spool.open_spools()
    WatchingProxy.seen = []
    st_ = proxy(server_factory, upstream.address, WatchingProxy, spool_threshold=THRESHOLD,
                spool_dir=str(tmp_path), data_size_limit=0)
    assert send_bdat(st_.address, big, b" BODY=BINARYMIME", chunks=7) == b"250 OK\r\n"
    (got,) = upstream.server.wait_for(1)
    assert got.data == big.replace(b"\r\n\r\n", b"\r\n" + PEER + b"\r\n", 1)
    ((kind, blocks, spools),) = WatchingProxy.seen
    assert kind is _chunked_mail.Octets
    assert sum(blocks) == len(got.data) and max(blocks) <= 65536 + len(PEER)
    assert spools > before  # the message was on disk while relayed
    assert _spool.open_spools() == before and os.listdir(tmp_path) == []


def test_dsn_parameters_go_with_a_bdat_message(server_factory: Any) -> None:
    upstream = upstream_server(server_factory, chunking=True, dsn=True)
    st_ = proxy(server_factory, upstream.address, dsn=True)
    reply = send_bdat(st_.address, BINARY, b" BODY=BINARYMIME RET=HDRS ENVID=QQ314159", rcpt_params=b" NOTIFY=SUCCESS,FAILURE")
    assert reply == b"250 OK\r\n"
    (got,) = upstream.server.wait_for(1)
    assert got.kwargs["mail_options"] == ["SIZE=%d" % len(got.data), "BODY=BINARYMIME", "RET=HDRS", "ENVID=QQ314159"]
    assert got.kwargs["rcpt_options"] == ["NOTIFY=SUCCESS,FAILURE"]
    assert got.data == BINARY.replace(b"\r\n\r\n", b"\r\n" + PEER + b"\r\n", 1)


class RedirectingProxy(smtpd.PureProxy):
    """A subclass's _deliver() changing the recipients, as smtpd allowed."""

    def _deliver(self, mailfrom: str, rcpttos: List[str], data: Any) -> Dict[str, Any]:
        return super()._deliver(mailfrom, ["other@example.org"], data)


@modes
def test_a_deliver_override_keeps_working(server_factory: Any, options: Dict[str, Any]) -> None:
    upstream = upstream_server(server_factory, chunking=True)
    st_ = proxy(server_factory, upstream.address, RedirectingProxy, **options)
    assert send_bdat(st_.address, BINARY, b" BODY=BINARYMIME") == b"250 OK\r\n"
    (got,) = upstream.server.wait_for(1)
    assert got.rcpttos == ["other@example.org"]
    assert got.data == BINARY.replace(b"\r\n\r\n", b"\r\n" + PEER + b"\r\n", 1)


def test_smtputf8_is_still_refused_first(server_factory: Any) -> None:
    upstream = upstream_server(server_factory, chunking=True)  # no SMTPUTF8
    st_ = proxy(server_factory, upstream.address, enable_SMTPUTF8=True)
    reply = send_bdat(st_.address, BINARY, b" BODY=BINARYMIME SMTPUTF8", rcpts=("b\u00e9@example.com".encode(),))
    assert reply.startswith(b"553 5.6.7 ")
    assert upstream.server.messages == []


# -- MailboxServer -------------------------------------------------------------------
def maildir_files(path: Path) -> List[bytes]:
    return sorted((path / "new" / name).read_bytes() for name in os.listdir(path / "new"))


def mbox_lines(path: Path) -> List[bytes]:
    # The From_ lines carry the time of delivery: everything else.
    return [line for line in path.read_bytes().split(b"\n") if not line.startswith(b"From a@")]


HEAD_CRLF = b"Return-Path: <a@example.com>\r\nX-Peer: 127.0.0.1\r\nX-RcptTo: b@example.com\r\n"


def deliver(server_factory: Any, send: Callable[[Any], Any], options: Dict[str, Any], **box: Any) -> None:
    st_ = server_factory(MailboxServer, chunking=True, **box, **options)
    send(st_.address)


@modes
def test_maildir_stores_a_bdat_text_message_as_datas(server_factory: Any, options: Dict[str, Any], tmp_path: Path) -> None:
    deliver(server_factory, lambda a: send_data(a, TEXT), options, maildir=tmp_path / "data")
    deliver(server_factory, lambda a: send_bdat(a, TEXT), options, maildir=tmp_path / "bdat")
    stored = maildir_files(tmp_path / "bdat")
    assert stored == maildir_files(tmp_path / "data") and len(stored) == 1
    assert b"\r" not in stored[0]


@modes
def test_maildir_stores_a_binary_message_unchanged(server_factory: Any, options: Dict[str, Any], tmp_path: Path) -> None:
    deliver(server_factory, lambda a: send_bdat(a, BINARY, b" BODY=BINARYMIME"), options, maildir=tmp_path)
    assert maildir_files(tmp_path) == [HEAD_CRLF + BINARY]


@modes
def test_mbox_stores_a_bdat_text_message_as_datas(server_factory: Any, options: Dict[str, Any], tmp_path: Path) -> None:
    deliver(server_factory, lambda a: send_data(a, TEXT), options, mbox=tmp_path / "data")
    deliver(server_factory, lambda a: send_bdat(a, TEXT), options, mbox=tmp_path / "bdat")
    assert mbox_lines(tmp_path / "bdat") == mbox_lines(tmp_path / "data")
    assert b"\r" not in (tmp_path / "bdat").read_bytes()
    assert len(mailbox.mbox(str(tmp_path / "bdat"))) == 1


@modes
def test_mbox_stores_a_binary_message_quoted_only(server_factory: Any, options: Dict[str, Any], tmp_path: Path) -> None:
    deliver(server_factory, lambda a: send_bdat(a, BINARY, b" BODY=BINARYMIME"), options, mbox=tmp_path / "box")
    content = (tmp_path / "box").read_bytes()
    first, _, rest = content.partition(b"\n")
    assert first.startswith(b"From a@example.com ")
    # The one change: From_ quoting, which mbox makes to every message; a
    # line end after the last octet, and the blank line ending the entry.
    assert rest == HEAD_CRLF + BINARY.replace(b"\nFrom ", b"\n>From ") + b"\n\n"
    assert len(mailbox.mbox(str(tmp_path / "box"))) == 1


def test_spooled_and_in_memory_stores_are_the_same(server_factory: Any, tmp_path: Path) -> None:
    for name, options in (("spooled", {"spool_threshold": THRESHOLD}), ("memory", {})):
        st_ = server_factory(MailboxServer, chunking=True, maildir=tmp_path / name, **options)
        send_bdat(st_.address, TEXT)
        send_bdat(st_.address, BINARY, b" BODY=BINARYMIME")
        send_bdat(st_.address, b"")
    assert maildir_files(tmp_path / "spooled") == maildir_files(tmp_path / "memory")
    assert len(maildir_files(tmp_path / "memory")) == 3


def test_needs_of_a_bdat_message() -> None:
    assert _relay.needs_of("a", ["b"], ["BODY=BINARYMIME"], chunked=True)[3:] == (True, True)
    assert _relay.needs_of("a", ["b"], ["BODY=8BITMIME"], chunked=True)[3:] == (True, False)
    assert _relay.needs_of("a", ["b"], ["BODY=BINARYMIME"]) == _relay.NO_NEEDS  # DATA's: refused before


@modes
def test_the_upstream_servers_refusal_of_a_bdat_message_reaches_the_client(server_factory: Any,
                                                                           options: Dict[str, Any]) -> None:
    upstream = upstream_server(server_factory, chunking=True)
    upstream.server.reply = "550 5.7.1 Not this one"
    st_ = proxy(server_factory, upstream.address, **options)
    assert send_bdat(st_.address, BINARY, b" BODY=BINARYMIME") == b"550 5.7.1 Not this one\r\n"
    assert send_bdat(st_.address, TEXT) == b"550 5.7.1 Not this one\r\n"


class ChunkRefusingUpstream:
    """A raw upstream announcing CHUNKING and BINARYMIME that answers the
    first BDAT chunk 452, after reading its octets; it records each line."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.lines: List[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rb") as reader:
            conn.settimeout(TIMEOUT)
            conn.sendall(b"220 upstream\r\n")
            while True:
                line = reader.readline()
                if not line:
                    return
                self.lines.append(line)
                verb = line.split()[0].upper()
                if verb == b"EHLO":
                    conn.sendall(b"250-upstream\r\n250-CHUNKING\r\n250 BINARYMIME\r\n")
                elif verb == b"BDAT":
                    reader.read(int(line.split()[1]))
                    conn.sendall(b"452 4.3.1 Insufficient system storage\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")

    def close(self) -> None:
        self.sock.close()
        self.thread.join(TIMEOUT)


def test_a_chunk_refused_upstream_ends_the_relay(server_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_chunked_mail, "CHUNK", 1000)
    upstream = ChunkRefusingUpstream()
    try:
        st_ = proxy(server_factory, upstream.address)
        assert send_bdat(st_.address, BINARY, b" BODY=BINARYMIME") == b"452 4.3.1 Insufficient system storage\r\n"
    finally:
        upstream.close()
    verbs = [line.split()[0].upper() for line in upstream.lines]
    assert verbs == [b"EHLO", b"MAIL", b"RCPT", b"BDAT", b"QUIT"]  # no chunk after the refused one
    assert upstream.lines[1] == b"MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n"
    assert upstream.lines[3] == b"BDAT 1000\r\n"


@pytest.mark.parametrize("needle", [b"\n\n", b"\r\n\r\n"])
@pytest.mark.parametrize("where", [0, 65533, 65534, 65535, 65536, 200000])
def test_find_in_file_across_block_boundaries(needle: bytes, where: int) -> None:
    """The blank line that ends the header is found wherever it falls, also
    across the boundary of two blocks read from the spool file."""
    import io

    from smtpd_compat._chunked_mail import find_in_file

    text = b"x" * where + needle + b"y" * 70000 + needle
    assert find_in_file(io.BytesIO(text), needle) == where
    assert find_in_file(io.BytesIO(b"x" * where), needle) == -1
