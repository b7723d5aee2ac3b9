"""The catcher's JSON API against a running CatcherServer on loopback:
every endpoint, paging, search, delete, read flags, wait, max_messages.
Messages are sent with smtplib; requests are made with http.client."""

from __future__ import annotations

import ssl
import threading

import pytest
from catcher_helpers import catcher, multipart, simple

from tls_helpers import PASSWORD, USER, client_context, server_context, tls_files  # noqa: F401  (fixtures)


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


def _send_many(c, count: int) -> None:  # type: ignore[no-untyped-def]
    for number in range(count):
        c.send(simple("message %d" % number, body="body number %d" % number))


def test_paging_newest_first() -> None:
    with catcher() as c:
        _send_many(c, 7)
        first = c.web.json("/api/v1/messages?start=0&limit=3")
        assert (first["total"], first["count"], first["start"]) == (7, 3, 0)
        assert [m["Subject"] for m in first["messages"]] == ["message 6", "message 5", "message 4"]
        last = c.web.json("/api/v1/messages?start=6&limit=3")
        assert [m["Subject"] for m in last["messages"]] == ["message 0"]
        assert c.web.json("/api/v1/messages?start=50")["messages"] == []
        assert c.web.json("/api/v1/message/latest")["Subject"] == "message 6"  # Mailpit's alias
        assert c.web.json("/api/v1/messages?limit=-1", expect=400)["Error"]
        assert c.web.json("/api/v1/messages?start=x", expect=400)["Error"]


def test_search_terms_and_prefixes() -> None:
    with catcher() as c:
        c.send(simple("Invoice 42", body="pay soon", sender="Shop <shop@example.org>", to="ann@example.org"))
        c.send(simple("Welcome", body="hello ann", sender="News <news@example.org>", to="bob@example.org"),
               sender="bounce@lists.example.org", rcpts=["envelope-only@example.org"])

        def subjects(query: str) -> list:  # type: ignore[type-arg]
            from urllib.parse import quote

            found = c.web.json("/api/v1/search?query=" + quote(query))
            assert found["total"] == found["count"] == len(found["messages"])
            return sorted(m["Subject"] for m in found["messages"])

        assert subjects("invoice") == ["Invoice 42"]          # subject, any case
        assert subjects("ann") == ["Invoice 42", "Welcome"]    # recipient of one, body of the other
        assert subjects("to:ann") == ["Invoice 42"]
        assert subjects("from:news") == ["Welcome"]
        assert subjects("from:bounce@lists") == ["Welcome"]    # the envelope sender
        assert subjects("to:envelope-only") == ["Welcome"]      # an envelope recipient
        assert subjects("subject:welcome hello") == ["Welcome"]
        assert subjects("subject:welcome invoice") == []        # terms are ANDed
        assert subjects('"pay soon"') == ["Invoice 42"]
        assert subjects("") == ["Invoice 42", "Welcome"]


def test_delete_some_then_all() -> None:
    with catcher() as c:
        _send_many(c, 4)
        ids = c.ids()
        assert c.web.write("DELETE", "/api/v1/messages", {"IDs": ids[:2]}) == b"ok"
        assert c.ids() == ids[2:]
        c.web.json("/api/v1/message/" + ids[0], expect=404)
        c.web.write("DELETE", "/api/v1/messages", {"IDs": ["unknown"]})
        assert c.ids() == ids[2:]
        c.web.write("DELETE", "/api/v1/messages", {})
        assert c.ids() == []
        _send_many(c, 2)
        c.web.write("DELETE", "/api/v1/messages")  # no body: all
        assert c.ids() == []
        c.web.write("DELETE", "/api/v1/messages", {"IDs": "x"}, expect=400)
        c.web.write("DELETE", "/api/v1/messages", b"{not json", expect=400)


def test_read_flags() -> None:
    with catcher() as c:
        _send_many(c, 3)
        ids = c.ids()
        c.web.write("PUT", "/api/v1/messages", {"IDs": [ids[0]], "Read": True})
        listing = c.web.json("/api/v1/messages")
        assert listing["unread"] == 2 and [m["Read"] for m in listing["messages"]] == [True, False, False]
        c.web.write("PUT", "/api/v1/messages", {"IDs": [], "Read": True})
        assert c.web.json("/api/v1/messages")["unread"] == 0
        c.web.write("PUT", "/api/v1/messages", {"Read": False})
        assert c.web.json("/api/v1/messages")["unread"] == 3
        c.web.write("PUT", "/api/v1/messages", {"IDs": ids}, expect=400)  # Read missing


def test_parts_headers_raw_tree() -> None:
    with catcher() as c:
        raw = multipart()
        c.send(raw)
        (ident,) = c.ids()
        message = c.web.json("/api/v1/message/" + ident)
        assert message["Text"] == "plain text body\n" and "cid:logo@x" in message["HTML"]
        assert [a["FileName"] for a in message["Attachments"]] == ["report.pdf"]
        assert [(i["ContentID"], i["ContentType"]) for i in message["Inline"]] == [("logo@x", "image/png")]
        assert message["Cc"] == [{"Name": "", "Address": "dave@example.org"}]
        attachment = message["Attachments"][0]
        status, headers, body = c.web.request("GET", "/api/v1/message/%s/part/%s" % (ident, attachment["PartID"]))
        assert status == 200 and body == b"%PDF-1.4 fake" and attachment["Size"] == len(body)
        assert headers["Content-Type"] == "application/pdf"
        assert headers["Content-Disposition"] == "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["Content-Security-Policy"] == "sandbox"
        assert c.web.request("GET", "/api/v1/message/%s/part/9" % ident)[0] == 404
        status, headers, body = c.web.request("GET", "/api/v1/message/%s/raw" % ident)
        assert status == 200 and headers["Content-Type"] == "text/plain; charset=utf-8"
        assert body.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
        names = c.web.json("/api/v1/message/%s/headers" % ident)
        assert names["Subject"] == ["with parts"] and names["To"] == ["Bob <bob@example.org>, carol@example.org"]
        tree = c.web.json("/api/v1/message/%s/tree" % ident)
        assert tree["PartID"] == "0" and tree["ContentType"] == "multipart/mixed"
        kinds = [(n["PartID"], n["ContentType"]) for n in tree["Children"]]
        assert kinds == [("1", "multipart/alternative"), ("2", "application/pdf")]
        alternative = tree["Children"][0]["Children"]
        assert [n["PartID"] for n in alternative] == ["1.1", "1.2"]
        assert alternative[1]["Children"][1] == {"PartID": "1.2.2", "ContentType": "image/png", "FileName": "",
                                                  "Size": 9, "Children": []}


def test_wait_returns_the_next_message_or_408() -> None:
    with catcher() as c:
        assert c.web.json("/api/v1/messages/wait?timeout=0.2", expect=408) == {"Error": "timeout"}
        c.send(simple("zero"))
        (zero,) = c.ids()
        results = []

        def waiter() -> None:
            # after=: deterministic whenever the request arrives
            results.append(c.web.json("/api/v1/messages/wait?timeout=10&query=subject:second&after=" + zero))

        thread = threading.Thread(target=waiter)
        thread.start()
        c.send(simple("first"))
        c.send(simple("second"))
        thread.join(15)
        assert [r["Subject"] for r in results] == ["second"]
        first_id = c.ids()[1]
        after = c.web.json("/api/v1/messages/wait?timeout=1&after=" + first_id)
        assert after["Subject"] == "second"  # already there: at once
        assert c.web.json("/api/v1/messages/wait?after=nope", expect=404)["Error"]
        assert c.web.json("/api/v1/messages/wait?timeout=x", expect=400)["Error"]


def test_max_messages_drops_the_oldest_and_counts() -> None:
    with catcher(max_messages=3) as c:
        _send_many(c, 5)
        listing = c.web.json("/api/v1/messages")
        assert [m["Subject"] for m in listing["messages"]] == ["message 4", "message 3", "message 2"]
        assert (listing["total"], listing["dropped"], listing["max_messages"]) == (3, 2, 3)
        info = c.web.json("/api/v1/info")
        assert (info["Messages"], info["Dropped"], info["MaxMessages"], info["Storage"]) == (3, 2, 3, "memory")


def test_no_bound() -> None:
    with catcher(max_messages=0) as c:
        _send_many(c, 2)
        assert c.web.json("/api/v1/messages")["max_messages"] is None


def test_info() -> None:
    with catcher() as c:
        c.send(simple())
        info = c.web.json("/api/v1/info")
        import smtpd_compat

        assert info == {"Version": smtpd_compat.__version__, "Messages": 1, "Unread": 1, "Dropped": 0,
                        "MaxMessages": 1000, "Storage": "memory", "SMTP": "127.0.0.1:%d" % c.smtp[1],
                        "Release": False, "Chaos": False}


def test_view_html_and_text() -> None:
    with catcher() as c:
        c.send(multipart())
        (ident,) = c.ids()
        status, headers, body = c.web.request("GET", "/view/%s.html" % ident)
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["Content-Security-Policy"] == "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        assert b'src="data:image/png;base64,' in body and b"cid:" not in body  # inlined
        remote = c.web.request("GET", "/view/%s.html?remote=1" % ident)[1]["Content-Security-Policy"]
        assert remote.startswith("sandbox; default-src 'none'") and "img-src data: http: https:" in remote
        status, headers, body = c.web.request("GET", "/view/%s.txt" % ident)
        assert (status, body) == (200, b"plain text body\n")
        assert c.web.request("GET", "/view/nope.html")[0] == 404


def test_envelope_options_and_smtputf8() -> None:
    import smtplib

    with catcher(enable_SMTPUTF8=True) as c:
        with smtplib.SMTP(*c.smtp, timeout=10) as client:
            client.sendmail("jörg@example.org", ["zoë@example.org"], simple().replace(b"hello", "grüße".encode()),
                            mail_options=["SMTPUTF8"])
        (ident,) = c.ids()
        envelope = c.web.json("/api/v1/message/" + ident)["Envelope"]
        assert envelope["MailFrom"] == "jörg@example.org" and envelope["RcptTos"] == ["zoë@example.org"]
        assert "SMTPUTF8" in envelope["MailOptions"]
        assert c.web.json("/api/v1/messages")["messages"][0]["Subject"] == "grüße"


def test_wait_without_after_ignores_what_is_there() -> None:
    with catcher() as c:
        c.send(simple("already here"))
        assert c.web.json("/api/v1/messages/wait?timeout=0.3", expect=408) == {"Error": "timeout"}


def test_envelope_has_tls_and_auth_facts(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    import smtplib

    from smtpd_compat import PasswordFile

    with catcher(tls_context=server_context, authenticator=PasswordFile({USER: PASSWORD})) as c:
        with smtplib.SMTP("localhost", c.smtp[1], timeout=10) as client:
            client.starttls(context=client_context)
            client.login(USER, PASSWORD)
            client.sendmail("a@example.org", ["b@example.org"], simple())
        (ident,) = c.ids()
        envelope = c.web.json("/api/v1/message/" + ident)["Envelope"]
        assert envelope["TLS"]["Version"].startswith("TLSv1") and envelope["TLS"]["Cipher"]
        assert envelope["Auth"] == USER


def test_an_attached_message_is_one_attachment() -> None:
    from email.message import EmailMessage

    inner = EmailMessage()
    inner["Subject"] = "the forwarded one"
    inner.set_content("inner body\n")
    outer = EmailMessage()
    outer["Subject"] = "fwd"
    outer.set_content("see attached\n")
    outer.add_attachment(inner, filename="forwarded.eml")
    with catcher() as c:
        c.send(outer.as_bytes())
        (ident,) = c.ids()
        message = c.web.json("/api/v1/message/" + ident)
        assert message["Text"] == "see attached\n"
        (attachment,) = message["Attachments"]
        assert (attachment["PartID"], attachment["ContentType"], attachment["FileName"]) == ("2", "message/rfc822", "forwarded.eml")
        body = c.web.request("GET", "/api/v1/message/%s/part/2" % ident)[2]
        assert body.startswith(b"Subject: the forwarded one") and attachment["Size"] == len(body)
        tree = c.web.json("/api/v1/message/%s/tree" % ident)
        assert [n["ContentType"] for n in tree["Children"]] == ["text/plain", "message/rfc822"]
        assert tree["Children"][1]["Children"] == []


def test_a_store_that_fails_is_answered_451() -> None:
    import smtplib

    with catcher() as c:
        def full(*args: object, **kwargs: object) -> None:
            raise OSError(28, "No space left on device")

        c.server.store.add = full  # type: ignore[method-assign]
        with pytest.raises(smtplib.SMTPDataError) as info:
            c.send(simple())
        assert info.value.smtp_code == 451


def test_after_close_a_message_is_stored_at_once() -> None:
    """A graceful shutdown closes the server first, then lets messages being received end."""
    from smtpd_compat import CatcherServer

    server = CatcherServer(("127.0.0.1", 0), None, map={})
    server.close()
    assert server.process_message(("127.0.0.1", 1), "a@example.org", ["b@example.org"], b"Subject: late\n\nx\n") is None
    (entry,) = server.store.page(0, 10)[2]
    assert entry.fields["Subject"] == "late"
