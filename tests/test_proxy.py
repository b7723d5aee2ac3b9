"""PureProxy: byte-exact relay, upstream verdicts, no blocking, no lost mail.

CPython 3.11's PureProxy crashed with the default options (``process_message``
without ``**kwargs``, ``str`` methods on ``bytes``), answered ``250`` whatever
the upstream server said or whether it was reachable at all, and blocked
every other session while it talked to the upstream server.

The upstream server here is a small scripted one (threads and blocking
sockets) that records each transaction's raw bytes, so what the relay sends
is checked byte for byte.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import socket
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpd_compat import _relay, smtpd
from smtpd_compat import _replies as R

from conftest import TIMEOUT, RawClient, running_server

START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"


class FakeUpstream:
    """A scripted SMTP server on 127.0.0.1 that records what it receives.

    ``transactions`` holds one dict per MAIL command: ``mail`` (the MAIL
    line), ``rcpts`` (RCPT lines), ``data`` (raw bytes between the DATA
    reply and the final ``.``, dot-stuffing and all, or None), ``rset``.
    Replies are configurable: ``greeting``, ``mail_reply``, ``rcpt_replies``
    (by address), ``data_reply``, ``final_reply``.  A transaction with a
    recipient in ``stall`` waits for the ``release`` event before answering
    its end of data.  ``drop_after_data`` closes the connection instead of
    answering the end of data.

    With ``lenient`` set it behaves like the upstream servers that SMTP
    smuggling exploits: a bare CR or a bare LF ends a line as CRLF does, in
    commands and in the message (so ``<CR>.<CR>`` ends a message).

    With ``data_rate`` set (bytes per second) it reads the message no faster
    than that, steadily, like a server behind a slow link; *rcvbuf* shrinks
    its receive buffer so that the link, not the kernel, sets the pace.
    ``ended`` counts the connections it has finished with.
    """

    def __init__(self, rcvbuf: Optional[int] = None) -> None:
        self.greeting = b"220 upstream ESMTP"
        self.ehlo = [b"250-upstream", b"250-8BITMIME", b"250 SIZE 10000000"]
        self.mail_reply = b"250 2.1.0 Ok"
        self.rcpt_replies: Dict[str, bytes] = {}
        self.data_reply = b"354 go ahead"
        self.final_reply = b"250 2.0.0 queued"
        self.stall: set = set()
        self.release = threading.Event()
        self.stalled = threading.Event()
        self.stall_expired = False  # a stall ended by timeout, not by release
        self.drop_after_data = False
        self.drop_during_data: Optional[int] = None  # close after this many bytes of a message
        self.lenient = False
        self.data_rate: Optional[float] = None
        self.ended = 0
        self.transactions: List[Dict[str, Any]] = []
        self.connections = 0
        self.cond = threading.Condition()
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by accept()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = self.sock.getsockname()
        self.threads: List[threading.Thread] = []
        self.closing = False
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.cond:
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(TIMEOUT)
        buf = b""
        current: Optional[Dict[str, Any]] = None
        held = b""  # lenient: a CR at the end of a read, perhaps half a CRLF
        paced: Optional[List[float]] = None  # [start, bytes] while reading a message at data_rate

        def recv() -> bytes:
            nonlocal held
            while True:
                if paced is None:
                    chunk = conn.recv(65536)
                else:
                    # Small reads, each when the link would have carried it.
                    ahead = paced[1] / self.data_rate - (time.monotonic() - paced[0])
                    if ahead > 0:
                        time.sleep(ahead)
                    chunk = conn.recv(8192)
                    paced[1] += len(chunk)
                if not self.lenient or not chunk:
                    return chunk
                chunk, held = held + chunk, b""
                if chunk.endswith(b"\r"):
                    chunk, held = chunk[:-1], b"\r"
                if chunk:
                    # Every line end becomes CRLF: the parser below applies.
                    return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")

        def line() -> Optional[bytes]:
            nonlocal buf
            while b"\r\n" not in buf:
                chunk = recv()
                if not chunk:
                    return None
                buf += chunk
            text, _, buf = buf.partition(b"\r\n")
            return text

        try:
            conn.sendall(self.greeting + b"\r\n")
            if not self.greeting.startswith(b"220"):
                return
            while True:
                cmd = line()
                if cmd is None:
                    return
                verb = cmd[:4].upper()
                if verb == b"EHLO":
                    conn.sendall(b"\r\n".join(self.ehlo) + b"\r\n")
                elif verb == b"HELO":
                    conn.sendall(b"250 upstream\r\n")
                elif verb == b"MAIL":
                    current = {"mail": cmd, "rcpts": [], "data": None, "rset": False}
                    with self.cond:
                        self.transactions.append(current)
                        self.cond.notify_all()
                    conn.sendall(self.mail_reply + b"\r\n")
                elif verb == b"RCPT":
                    assert current is not None
                    current["rcpts"].append(cmd)
                    address = cmd.decode().split("<", 1)[1].rstrip(">")
                    conn.sendall(self.rcpt_replies.get(address, b"250 2.1.5 Ok") + b"\r\n")
                elif verb == b"RSET":
                    if current is not None:
                        current["rset"] = True
                    conn.sendall(b"250 Ok\r\n")
                elif verb == b"DATA":
                    conn.sendall(self.data_reply + b"\r\n")
                    if not self.data_reply.startswith(b"354"):
                        continue
                    # The CRLF that ended DATA starts the terminator.
                    raw = bytearray(b"\r\n" + buf)
                    assert current is not None
                    current["partial"] = raw  # what has come so far (tests of cut-through)
                    if self.data_rate is not None:
                        paced = [time.monotonic(), 0.0]
                    end = raw.find(b"\r\n.\r\n")
                    while end < 0:
                        chunk = recv()
                        if not chunk:
                            return
                        with self.cond:
                            raw += chunk
                            self.cond.notify_all()
                        if self.drop_during_data is not None and len(raw) >= self.drop_during_data:
                            return
                        end = raw.find(b"\r\n.\r\n", max(0, len(raw) - len(chunk) - 4))
                    paced = None
                    data, buf = bytes(raw[2 : end + 2]), bytes(raw[end + 5 :])
                    assert current is not None
                    with self.cond:
                        current["data"] = data
                        self.cond.notify_all()
                    if any(r in cmd for cmd in current["rcpts"] for r in (b"<%s>" % s.encode() for s in self.stall)):
                        self.stalled.set()
                        if not self.release.wait(TIMEOUT):
                            self.stall_expired = True
                    if self.drop_after_data:
                        return
                    conn.sendall(self.final_reply + b"\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 Bye\r\n")
                    return
                else:
                    conn.sendall(b"502 unknown\r\n")
        except OSError:
            pass
        finally:
            conn.close()
            with self.cond:
                self.ended += 1
                self.cond.notify_all()

    def wait_for_data(self, count: int = 1) -> List[Dict[str, Any]]:
        with self.cond:
            ok = self.cond.wait_for(
                lambda: len([t for t in self.transactions if t["data"] is not None]) >= count, TIMEOUT
            )
        assert ok, "upstream received %r" % self.transactions
        return [t for t in self.transactions if t["data"] is not None]

    def close(self) -> None:
        self.release.set()
        self.sock.close()
        for t in self.threads:
            t.join(TIMEOUT)


@pytest.fixture
def upstream():
    up = FakeUpstream()
    yield up
    up.close()


def proxy_factory(remote: Any, cls: Any = smtpd.PureProxy):
    def make(local: Any, _remote: Any, **kwargs: Any) -> Any:
        return cls(local, remote, **kwargs)

    return make


def envelope(client: RawClient, rcpts: List[bytes] = (b"rcpt@example.org",), sender: bytes = b"sender@example.com") -> None:
    assert client.read_reply().startswith(b"220 ")
    assert client.command(b"EHLO client.example").startswith(b"250-")
    assert client.command(b"MAIL FROM:<" + sender + b">") == b"250 OK\r\n"
    for rcpt in rcpts:
        assert client.command(b"RCPT TO:<" + rcpt + b">") == b"250 OK\r\n"
    assert client.command(b"DATA") == START_DATA


def send_message(address: Any, body: bytes, rcpts: List[bytes] = (b"rcpt@example.org",)) -> bytes:
    """Send one message (body already dot-stuffed, CRLF-terminated); return
    the reply to its end of data."""
    with RawClient(address) as client:
        envelope(client, rcpts)
        client.send(body + b".\r\n")
        reply = client.read_reply()
        assert client.command(b"QUIT") == b"221 Bye\r\n"
        return reply


# -- byte-exact relay ------------------------------------------------------------
def test_relays_byte_exact_with_default_options(upstream):
    # Dot-stuffed lines, 8-bit bytes, trailing spaces, an empty line in the
    # body, no final empty line; a bare CR and a CR before CRLF, the only
    # bytes that change (RFC 5321 2.3.8: they go out as one CRLF each).
    body = (
        b"From: a@example.com\r\n"
        b"Subject: exact  \r\n"
        b"\r\n"
        b"..leading dot (stuffed)\r\n"
        b"bare\rcr and cr-crlf\r\r\n"
        b"8bit: \xc3\xa9\xff\r\n"
        b"\r\n"
        b"  indented\t\r\n"
    )
    with running_server(proxy_factory(upstream.address)) as px:
        assert send_message(px.address, body) == b"250 OK\r\n"
    [t] = upstream.wait_for_data(1)
    expected = body.replace(b"\r\n\r\n", b"\r\nX-Peer: 127.0.0.1\r\n\r\n", 1)
    expected = expected.replace(b"bare\rcr and cr-crlf\r\r\n", b"bare\r\ncr and cr-crlf\r\n")
    assert t["data"] == expected
    assert t["mail"].startswith(b"MAIL FROM:<sender@example.com>")
    # 8-bit content is declared when the upstream server supports it.
    assert b" BODY=8BITMIME" in t["mail"]
    assert t["rcpts"] == [b"RCPT TO:<rcpt@example.org>"]


def test_message_without_headers_gets_peer_header_at_end(upstream):
    with running_server(proxy_factory(upstream.address)) as px:
        assert send_message(px.address, b"just one line\r\n") == b"250 OK\r\n"
    [t] = upstream.wait_for_data(1)
    assert t["data"] == b"just one line\r\nX-Peer: 127.0.0.1\r\n"


def test_bare_lf_sequences_cannot_end_the_message_upstream(upstream):
    # "\n.\n" is message text here; relayed with CRLF line ends and the dot
    # stuffed, it cannot end the message at a lenient upstream server.
    body = b"Subject: s\r\n\r\nbefore\n.\nMAIL FROM:<evil@example.com>\r\n"
    with running_server(proxy_factory(upstream.address)) as px:
        assert send_message(px.address, body) == b"250 OK\r\n"
    [t] = upstream.wait_for_data(1)
    assert t["data"].endswith(b"before\r\n..\r\nMAIL FROM:<evil@example.com>\r\n")
    assert len(upstream.transactions) == 1


@pytest.mark.parametrize("end", [b"\r.\r", b"\r.\r\n", b"\r.\n"])
def test_bare_cr_sequences_cannot_end_the_message_at_a_lenient_upstream(upstream, end):
    # The client's message holds a fake end of data made with bare CRs and
    # a second transaction behind it.  An upstream server that takes a bare
    # CR for a line end would see two messages, the second with an envelope
    # the client chose, while the client got one 250.
    upstream.lenient = True
    body = (
        b"Subject: s\r\n\r\nbefore" + end
        + b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n"
    )
    with running_server(proxy_factory(upstream.address)) as px:
        assert send_message(px.address, body) == b"250 OK\r\n"
    upstream.close()  # the relay has ended its session: everything was seen
    [t] = upstream.transactions
    assert t["rcpts"] == [b"RCPT TO:<rcpt@example.org>"]
    # The fake end is text: its CRs are line ends now and its dot is stuffed.
    assert t["data"].endswith(b"before\r\n..\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.org>\r\n"
                              b"DATA\r\nsmuggled\r\n")


def test_empty_message_and_null_sender(upstream):
    with running_server(proxy_factory(upstream.address)) as px:
        with RawClient(px.address) as client:
            assert client.read_reply().startswith(b"220 ")
            assert client.command(b"HELO client.example").startswith(b"250 ")
            assert client.command(b"MAIL FROM:<>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<postmaster@example.org>") == b"250 OK\r\n"
            assert client.command(b"DATA") == START_DATA
            assert client.command(b".") == b"250 OK\r\n"
    [t] = upstream.wait_for_data(1)
    assert t["mail"].startswith(b"MAIL FROM:<>")
    # The header, then the empty line that ends the header section.
    assert t["data"] == b"X-Peer: 127.0.0.1\r\n\r\n"


def test_decode_data_true_relays_utf8(upstream):
    body = "Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode("utf-8")
    with running_server(proxy_factory(upstream.address), decode_data=True) as px:
        assert send_message(px.address, body) == b"250 OK\r\n"
    [t] = upstream.wait_for_data(1)
    assert t["data"] == body.replace(b"\r\n\r\n", b"\r\nX-Peer: 127.0.0.1\r\n\r\n", 1)


# -- upstream verdicts -----------------------------------------------------------------
def test_unreachable_upstream_is_451_never_250(caplog):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()
    probe.close()  # nothing listens there now: connection refused
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
        with running_server(proxy_factory(dead)) as px:
            reply = send_message(px.address, b"Subject: x\r\n\r\nbody\r\n")
    assert reply == (R.RELAY_UNAVAILABLE + "\r\n").encode()
    assert "relay to" in caplog.text


def test_upstream_refusing_every_recipient_alike_is_passed_through(upstream):
    upstream.rcpt_replies = {"nobody@example.org": b"550 5.1.1 <nobody@example.org>: User unknown"}
    with running_server(proxy_factory(upstream.address)) as px:
        reply = send_message(px.address, b"Subject: x\r\n\r\nbody\r\n", rcpts=[b"nobody@example.org"])
    assert reply == b"550 5.1.1 <nobody@example.org>: User unknown\r\n"
    [t] = upstream.transactions
    assert t["data"] is None and t["rset"]


def test_some_recipients_refused_relays_to_none_and_names_each(upstream):
    upstream.rcpt_replies = {
        "gone@example.org": b"550 5.1.1 User unknown",
        "full@example.org": b"452 4.2.2 Mailbox full",
    }
    rcpts = [b"ok@example.org", b"gone@example.org", b"full@example.org"]
    with running_server(proxy_factory(upstream.address)) as px:
        reply = send_message(px.address, b"Subject: x\r\n\r\nbody\r\n", rcpts=rcpts)
    # One permanent refusal makes the whole reply permanent: the same
    # transaction can never succeed.
    assert reply == (
        b"550-<gone@example.org>: upstream replied: 550 5.1.1 User unknown\r\n"
        b"550-<full@example.org>: upstream replied: 452 4.2.2 Mailbox full\r\n"
        b"550 Message not relayed: upstream refused 2 of 3 recipients, relayed to none\r\n"
    )
    [t] = upstream.transactions
    assert t["data"] is None, "a partial delivery was made"
    assert t["rset"]


def test_only_temporary_refusals_give_a_temporary_reply(upstream):
    upstream.rcpt_replies = {"full@example.org": b"452 4.2.2 Mailbox full"}
    with running_server(proxy_factory(upstream.address)) as px:
        reply = send_message(px.address, b"body\r\n", rcpts=[b"ok@example.org", b"full@example.org"])
    assert reply.startswith(b"452-<full@example.org>: upstream replied: 452 4.2.2 Mailbox full\r\n452 ")
    assert upstream.transactions[0]["data"] is None


@pytest.mark.parametrize(
    "setting, value, expected",
    [
        ("mail_reply", b"553 5.7.1 Sender rejected", b"553 5.7.1 Sender rejected\r\n"),
        ("data_reply", b"554 5.3.0 No data today", b"554 5.3.0 No data today\r\n"),
        ("final_reply", b"552 5.3.4 Message too big", b"552 5.3.4 Message too big\r\n"),
        ("final_reply", b"451 4.3.0 Try later", b"451 4.3.0 Try later\r\n"),
        ("greeting", b"554 5.7.1 Go away", b"554 5.7.1 Go away\r\n"),
        # The upstream server closing its session is no reason to close ours.
        ("greeting", b"421 4.3.2 Busy", b"451 4.3.2 Busy\r\n"),
    ],
)
def test_upstream_refusal_is_passed_to_the_client(upstream, setting, value, expected):
    setattr(upstream, setting, value)
    with running_server(proxy_factory(upstream.address)) as px:
        assert send_message(px.address, b"Subject: x\r\n\r\nbody\r\n") == expected


def test_upstream_closing_after_data_is_451(upstream):
    upstream.drop_after_data = True
    with running_server(proxy_factory(upstream.address)) as px:
        reply = send_message(px.address, b"Subject: x\r\n\r\nbody\r\n")
    assert reply == (R.RELAY_UNAVAILABLE + "\r\n").encode()


@contextlib.contextmanager
def slow_upstream(monkeypatch: pytest.MonkeyPatch, rate: float) -> Iterator[FakeUpstream]:
    """An upstream server that reads each message at *rate* bytes/s, as if
    behind a slow link.

    On loopback the kernel takes megabytes of a message at once, which a
    slow link would not: small buffers on both ends (the relay's send
    buffer through its connect(); its code is unchanged) let the upstream's
    pace of reading set the pace of sending, as a real slow link does.
    """
    real_connect = _relay.connect

    def connect(server: Any) -> Any:
        conn = real_connect(server)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        return conn

    monkeypatch.setattr(_relay, "connect", connect)
    up = FakeUpstream(rcvbuf=16384)
    up.data_rate = rate
    try:
        yield up
    finally:
        up.close()


def relay_timeout_proxy(seconds: float) -> Any:
    """PureProxy with another relay_timeout (a class attribute)."""
    return type("Proxy", (smtpd.PureProxy,), {"relay_timeout": seconds})


# 4 MiB in lines of 1000 bytes.
LARGE_TEXT = (b"x" * 998 + b"\r\n") * 4200
LARGE_BODY = b"Subject: large\r\n\r\n" + LARGE_TEXT


def test_relay_timeout_bounds_each_block_not_the_whole_message(monkeypatch):
    # 4 MiB read steadily at 4 MB/s take a second, twice relay_timeout: a
    # bound on the whole transfer fails every time (and the client, answered
    # 451, retries for ever).  Each 64 KiB block takes about 16 ms.
    with slow_upstream(monkeypatch, 4e6) as up:
        with running_server(proxy_factory(up.address, relay_timeout_proxy(0.5))) as px:
            assert send_message(px.address, LARGE_BODY) == b"250 OK\r\n"
        [t] = up.wait_for_data(1)
        assert t["data"].endswith(b"\r\n\r\n" + LARGE_TEXT)


def test_the_relay_gives_up_once_the_client_has_been_answered(monkeypatch):
    # With reply_timeout=1 the client is answered 451 after a second and
    # will send the message again.  At 1 MB/s the transfer takes 4 s, each
    # block well within relay_timeout: the relay must stop at reply_timeout
    # rather than deliver a message the client is going to send again.
    with slow_upstream(monkeypatch, 1e6) as up:
        with running_server(proxy_factory(up.address, relay_timeout_proxy(30.0)), reply_timeout=1.0) as px:
            # From the channel's reply_timeout or from the relay giving up,
            # whichever comes first: the two bounds are the same.
            assert send_message(px.address, LARGE_BODY).startswith(b"451 ")
            with up.cond:
                assert up.cond.wait_for(lambda: up.ended >= 1, TIMEOUT)
        [t] = up.transactions
        assert t["data"] is None, "delivered after the client was told to send it again"


def test_upstream_reply_text_is_sanitised():
    refused = {"a@x": (550, b"bad\r\n550 injected\x00line")}
    assert _relay.reply_for(refused, ["a@x"]) == "550 bad 550 injected line"
    long = {"a@x": (550, b"x" * 1000)}
    assert len(_relay.reply_for(long, ["a@x"])) < 220


# -- no blocking, no loss ----------------------------------------------------------------
def test_slow_upstream_does_not_block_other_sessions(upstream):
    upstream.stall = {"slow@example.org"}
    with running_server(proxy_factory(upstream.address)) as px:
        with RawClient(px.address) as slow:
            envelope(slow, [b"slow@example.org"])
            # End of data, with a command pipelined behind it: it must wait
            # for the relay's verdict and be answered after it.
            slow.send(b"Subject: slow\r\n\r\nbody\r\n.\r\nNOOP\r\n")
            assert upstream.stalled.wait(TIMEOUT)
            # The upstream server sits on the first message; another client
            # is served completely meanwhile, its message relayed too.
            assert send_message(px.address, b"Subject: fast\r\n\r\nbody\r\n") == b"250 OK\r\n"
            # ... while the first one was still held upstream.
            assert not upstream.stall_expired
            upstream.release.set()
            assert slow.read_reply() == b"250 OK\r\n"
            assert slow.read_reply() == b"250 OK\r\n"
            assert slow.command(b"QUIT") == b"221 Bye\r\n"
    datas = [t["data"] for t in upstream.wait_for_data(2)]
    assert sorted(d.split(b"\r\n")[0] for d in datas) == [b"Subject: fast", b"Subject: slow"]


def test_idle_timeout_does_not_fire_while_waiting_for_upstream(upstream):
    upstream.stall = {"slow@example.org"}
    with running_server(proxy_factory(upstream.address), command_timeout=60.0) as px:
        with RawClient(px.address) as client:
            envelope(client, [b"slow@example.org"])
            client.send(b"body\r\n.\r\n")
            assert upstream.stalled.wait(TIMEOUT)

            def expire_now() -> List[bool]:
                [channel] = [c for c in px.map.values() if isinstance(c, smtpd.SMTPChannel)]
                guard = channel._guard
                assert "reply" in channel._ac_paused
                guard.last -= 3600  # as if the client had been silent for an hour
                guard._fire()
                return [channel.connected]

            assert px.call(expire_now) == [True]
            upstream.release.set()
            assert client.read_reply() == b"250 OK\r\n"
            assert client.command(b"NOOP") == b"250 OK\r\n"


def test_messages_of_one_session_are_relayed_in_order(upstream):
    with running_server(proxy_factory(upstream.address)) as px:
        with RawClient(px.address) as client:
            assert client.read_reply().startswith(b"220 ")
            assert client.command(b"HELO client.example").startswith(b"250 ")
            # Two whole transactions pipelined in one packet.
            client.send(
                b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: 1\r\n\r\nx\r\n.\r\n"
                b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nSubject: 2\r\n\r\ny\r\n.\r\n"
                b"QUIT\r\n"
            )
            replies = [client.read_reply() for _ in range(9)]
            assert replies == [b"250 OK\r\n", b"250 OK\r\n", START_DATA, b"250 OK\r\n"] * 2 + [b"221 Bye\r\n"]
    datas = [t["data"] for t in upstream.wait_for_data(2)]
    assert [d.split(b"\r\n")[0] for d in datas] == [b"Subject: 1", b"Subject: 2"]


# -- subclasses ---------------------------------------------------------------------------
class CapturingProxy(smtpd.PureProxy):
    """The classic test double: override _deliver instead of relaying."""

    refusals: Dict[str, Any] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.delivered: List[Any] = []
        self.threads: List[str] = []
        self.done = threading.Event()
        super().__init__(*args, **kwargs)

    def _deliver(self, mailfrom, rcpttos, data):  # the legacy signature
        self.delivered.append((mailfrom, rcpttos, data))
        self.threads.append(threading.current_thread().name)
        self.done.set()
        return self.refusals


def test_deliver_override_keeps_working_and_runs_off_the_loop_thread():
    with running_server(proxy_factory(("127.0.0.1", 9), CapturingProxy)) as px:
        assert send_message(px.address, b"Subject: x\r\n\r\nbody\r\n") == b"250 OK\r\n"
        assert px.server.done.wait(TIMEOUT)
        [(mailfrom, rcpttos, data)] = px.server.delivered
        assert (mailfrom, rcpttos) == ("sender@example.com", ["rcpt@example.org"])
        assert data == b"Subject: x\nX-Peer: 127.0.0.1\n\nbody"
        assert px.server.threads[0].startswith("smtpd-relay")


def test_deliver_override_refusals_become_the_reply():
    class Refusing(CapturingProxy):
        refusals = {"rcpt@example.org": (550, b"No such user here")}

    with running_server(proxy_factory(("127.0.0.1", 9), Refusing)) as px:
        assert send_message(px.address, b"body\r\n") == b"550 No such user here\r\n"


def test_deliver_override_raising_is_451_and_logged(caplog):
    class Broken(CapturingProxy):
        def _deliver(self, mailfrom, rcpttos, data):
            raise RuntimeError("secret internal detail")

    with caplog.at_level(logging.ERROR, logger="smtpd_compat"):
        with running_server(proxy_factory(("127.0.0.1", 9), Broken)) as px:
            reply = send_message(px.address, b"body\r\n")
    assert reply == (R.PROCESSING_FAILED + "\r\n").encode()
    assert b"secret" not in reply
    assert "secret internal detail" in caplog.text


def test_process_message_returns_a_future():
    proxy = CapturingProxy(("127.0.0.1", 0), ("127.0.0.1", 9), map={})
    try:
        future = proxy.process_message(("10.0.0.1", 1234), "a@x", ["b@y"], b"Subject: s\n\nbody")
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(TIMEOUT) is None
        assert proxy.delivered[0][2] == b"Subject: s\nX-Peer: 10.0.0.1\n\nbody"
    finally:
        proxy.close()


# -- the pure helpers ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, wire",
    [
        (b"", b"\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\nb", b"a\r\nb\r\n.\r\n"),
        (b".a\n.\n..b", b"..a\r\n..\r\n...b\r\n.\r\n"),
        # A CR before a line end merges with it; any other CR is a line end.
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
        (b"x\ry", b"x\r\ny\r\n.\r\n"),
        (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\r\n.", b"a\r\n\r\n..\r\n.\r\n"),
        (b"\r", b"\r\n\r\n.\r\n"),
        (b"end\n", b"end\r\n\r\n.\r\n"),
        ("caf\u00e9", "caf\u00e9\r\n.\r\n".encode("utf-8")),
    ],
)
def test_wire_data(data, wire):
    assert _relay.wire_data(data) == wire


@given(st.binary(max_size=64) | st.lists(st.sampled_from([b"\r", b"\n", b".", b"x"]), max_size=24).map(b"".join))
def test_wire_data_has_one_end_for_every_reading_of_a_line_end(data):
    wire = _relay.wire_data(data)
    # No CR or LF but in CRLF: a server that also takes CR or LF alone for a
    # line end reads the same lines as a strict one...
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
    # ... and the only end of data is the last line (the first line follows
    # the CRLF of the DATA command).
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3


def test_reply_for_cases():
    assert _relay.reply_for({}, ["a"]) is None
    assert _relay.reply_for(None, ["a"]) is None
    assert _relay.reply_for({"a": (-1, "refused"), "b": (-1, "refused")}, ["a", "b"]) == R.RELAY_UNAVAILABLE
    assert _relay.reply_for({"a": (550, b"No"), "b": (550, b"No")}, ["a", "b"]) == "550 No"
    # The same refusal, but not for everyone: name the recipient.
    partial = _relay.reply_for({"a": (550, b"No")}, ["a", "b"])
    assert partial.split("\r\n") == [
        "550-<a>: upstream replied: 550 No",
        "550 Message not relayed: upstream refused 1 of 2 recipients, relayed to none",
    ]
    mixed = _relay.reply_for({"a": (-1, "boom"), "b": (450, b"Later")}, ["a", "b"])
    assert mixed.split("\r\n")[0] == "450-<a>: upstream replied: " + R.RELAY_UNREACHABLE_DETAIL


# -- real clients ---------------------------------------------------------------------------
def test_swaks_through_the_proxy(upstream):
    import shutil
    import subprocess

    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed")
    with running_server(proxy_factory(upstream.address)) as px:
        proc = subprocess.run(
            [swaks, "--server", "127.0.0.1", "--port", str(px.port), "--from", "a@example.com",
             "--to", "b@example.org", "--header", "Subject: via swaks", "--body", "hello from swaks"],
            capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, proc.stdout.decode(errors="replace")
        assert b"<-  250 OK" in proc.stdout
    [t] = upstream.wait_for_data(1)
    assert b"Subject: via swaks\r\n" in t["data"]
    assert b"X-Peer: 127.0.0.1\r\n" in t["data"]
    assert b"hello from swaks" in t["data"]


def test_smtplib_sees_the_upstream_refusal(upstream):
    import smtplib

    upstream.rcpt_replies = {"gone@example.org": b"550 5.1.1 User unknown"}
    with running_server(proxy_factory(upstream.address)) as px:
        with smtplib.SMTP(px.host, px.port, timeout=TIMEOUT) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@example.com", ["ok@example.org", "gone@example.org"], b"Subject: s\r\n\r\nbody\r\n")
    assert refused.value.smtp_code == 550
    assert b"<gone@example.org>: upstream replied: 550 5.1.1 User unknown" in refused.value.smtp_error
    assert upstream.transactions[0]["data"] is None
