"""The catcher's JSON API against a running CatcherServer on loopback:
every endpoint, paging, search, delete, read flags, wait, max_messages.
Messages are sent with smtplib; requests are made with http.client."""

from __future__ import annotations

import pytest
from catcher_helpers import catcher, simple


def test_a_message_sent_is_listed_and_read() -> None:
    with catcher() as c:
        c.send(simple("first <b>"), rcpts=["to@example.org", "bcc@example.org"])
        listing = c.web.json("/api/v1/messages")
        assert (listing["total"], listing["unread"], listing["count"], listing["start"]) == (1, 1, 1, 0)
        assert (listing["messages_count"], listing["dropped"], listing["max_messages"]) == (1, 0, 1000)
        (summary,) = listing["messages"]
        assert summary["Subject"] == "first <b>"
        assert summary["From"] == {"Name": "Sender", "Address": "from@example.org"}
        assert summary["To"] == [{"Name": "", "Address": "to@example.org"}]
        assert summary["MessageID"] == "m1@example.org"
        assert summary["Read"] is False and summary["Snippet"] == "the body"
        assert summary["Created"].endswith("Z") and summary["Size"] > 0
        message = c.web.json("/api/v1/message/" + summary["ID"])
        assert message["Text"].strip() == "the body" and message["HTML"] == ""
        assert message["Date"] == "2026-12-02T10:00:00.000Z"
        envelope = message["Envelope"]
        assert envelope["MailFrom"] == "from@example.org"
        assert envelope["RcptTos"] == ["to@example.org", "bcc@example.org"]
        assert envelope["Peer"].startswith("127.0.0.1:") and envelope["TLS"] is None and envelope["Auth"] is None
        assert c.web.json("/api/v1/messages")["unread"] == 0  # getting it marked it read


def test_replies_are_smtpds() -> None:
    import smtplib

    with catcher() as c, smtplib.SMTP(*c.smtp, timeout=10) as client:
        assert client.ehlo()[0] == 250
        assert client.mail("a@example.org") == (250, b"OK")
        assert client.rcpt("b@example.org") == (250, b"OK")
        assert client.data(simple()) == (250, b"OK")


def test_unknown_message_and_path() -> None:
    with catcher() as c:
        assert c.web.json("/api/v1/message/nope", expect=404) == {"Error": "message not found"}
        assert c.web.json("/api/v1/nothing", expect=404) == {"Error": "not found"}
        status, _, _ = c.web.request("POST", "/api/v1/info")
        assert status == 405


def test_the_page_and_its_headers() -> None:
    with catcher() as c:
        status, headers, body = c.web.request("GET", "/")
        assert status == 200 and b"<html" in body.lower()
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"


def test_closing_the_server_stops_the_web_server() -> None:
    import socket

    with catcher() as c:
        address = c.server.web_address
        assert address is not None
    with pytest.raises(OSError):
        socket.create_connection(address, timeout=2).close()
