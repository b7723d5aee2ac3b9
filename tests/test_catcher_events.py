"""The catcher's Server-Sent Events (``/api/v1/events``), read from a raw
socket with timeouts; the stream ends when the server closes; IPv6."""

from __future__ import annotations

import json
import socket
from typing import Any, List, Optional, Tuple

import pytest
from catcher_helpers import catcher, simple

from conftest import has_ipv6


class EventReader:
    """A client of the event stream: the response head, then one event at a time."""

    def __init__(self, address: Tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        host = "[%s]" % address[0] if ":" in address[0] else address[0]
        self.sock.sendall(b"GET /api/v1/events HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (host.encode(), address[1]))
        self.buffer = b""
        self.head = self._block()

    def _block(self) -> Optional[bytes]:
        """The next block ended by a blank line; None at the end of the stream."""
        while True:
            for end in (b"\r\n\r\n", b"\n\n"):
                index = self.buffer.find(end)
                if index >= 0:
                    block, self.buffer = self.buffer[:index], self.buffer[index + len(end):]
                    return block
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data

    def event(self) -> Optional[Tuple[str, Any]]:
        """The next event (comments skipped); None when the stream ends."""
        for _ in range(100):
            block = self._block()
            if block is None:
                return None
            fields = {}
            for line in block.decode("utf-8").split("\n"):
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value
            if "event" in fields:
                return fields["event"], json.loads(fields["data"])
        raise AssertionError("no event in 100 blocks")

    def close(self) -> None:
        self.sock.close()


def test_events_new_read_deleted() -> None:
    with catcher() as c:
        reader = EventReader(c.server.web_address)
        try:
            assert reader.head is not None and b" 200 " in reader.head.split(b"\r\n")[0]
            assert b"Content-Type: text/event-stream" in reader.head
            c.send(simple("live"))
            name, summary = reader.event()
            assert name == "new" and summary["Subject"] == "live" and summary["Read"] is False
            c.web.json("/api/v1/message/" + summary["ID"])
            assert reader.event() == ("read", {"IDs": [summary["ID"]], "Read": True})
            c.web.write("PUT", "/api/v1/messages", {"Read": False})
            assert reader.event() == ("read", {"IDs": None, "Read": False})
            c.web.write("DELETE", "/api/v1/messages", {"IDs": [summary["ID"]]})
            assert reader.event() == ("deleted", {"IDs": [summary["ID"]]})
            c.send(simple("again"))
            assert reader.event()[0] == "new"
            c.web.write("DELETE", "/api/v1/messages")
            assert reader.event() == ("deleted", {"IDs": None})
        finally:
            reader.close()


def test_a_dropped_message_is_a_deleted_event() -> None:
    with catcher(max_messages=1) as c:
        reader = EventReader(c.server.web_address)
        try:
            c.send(simple("one"))
            c.send(simple("two"))
            events: List[Any] = [reader.event() for _ in range(3)]
            assert [e[0] for e in events] == ["new", "deleted", "new"]
            assert events[1][1] == {"IDs": [events[0][1]["ID"]]}
        finally:
            reader.close()


def test_the_stream_ends_when_the_server_closes() -> None:
    with catcher() as c:
        reader = EventReader(c.server.web_address)
    try:
        assert reader.event() is None
    finally:
        reader.close()


@pytest.mark.skipif(not has_ipv6(), reason="no ::1 on this machine")
def test_ipv6_web_and_smtp() -> None:
    with catcher(host="::1") as c:
        assert c.server.web_address[0] == "::1"
        assert c.server.web_url == "http://[::1]:%d" % c.server.web_address[1]
        reader = EventReader(c.server.web_address)
        try:
            c.send(simple("over v6"))
            assert reader.event()[1]["Subject"] == "over v6"
        finally:
            reader.close()
        assert c.web.json("/api/v1/messages")["messages"][0]["Subject"] == "over v6"
        assert c.web.request("PUT", "/api/v1/messages", {"Read": True}, {"Origin": c.web.origin})[0] == 200


def test_a_quiet_stream_gets_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    from smtpd_compat import _catcher_pages

    monkeypatch.setattr(_catcher_pages, "PING_SECONDS", 0.05)
    with catcher() as c:
        reader = EventReader(c.server.web_address)
        try:
            assert reader._block() == b": connected"
            assert reader._block() == b": ping"
        finally:
            reader.close()


def test_requests_and_streams_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from smtpd_compat import _catcher_http

    monkeypatch.setattr(_catcher_http, "MAX_REQUESTS", 2)
    monkeypatch.setattr(_catcher_http, "MAX_STREAMS", 1)
    with catcher() as c:
        first = EventReader(c.server.web_address)  # a request slot and the stream slot
        try:
            assert first.head is not None and b" 200 " in first.head
            status, _, body = c.web.request("GET", "/api/v1/events")
            assert (status, json.loads(body)) == (503, {"Error": "too many event streams"})
            # A client that never finishes its request holds the other slot
            # (unless the refused request above still held it when the
            # stalled one was accepted: then that one was refused; again).
            for _ in range(50):
                stalled = socket.create_connection(c.server.web_address, timeout=10)
                try:
                    stalled.sendall(b"GET /api/v1/info HTTP/1.1\r\n")
                    if c.web.request("GET", "/api/v1/info")[0] == 503:
                        break
                finally:
                    stalled.close()
            else:
                raise AssertionError("never refused a request beyond the bound")
            for _ in range(100):  # the stalled request's thread ends when its client goes
                if c.web.request("GET", "/api/v1/info")[0] == 200:
                    break
            else:
                raise AssertionError("the slot was never given back")
        finally:
            first.close()
