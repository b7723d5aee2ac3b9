"""The catcher's security model: CSRF refusals, the Host check, basic
auth, the remote-bind flag, response headers that captured values cannot
split, hostile messages kept inert in JSON, and any bytes at all listed
without a crash (hypothesis)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from catcher_helpers import Web, catcher, multipart, simple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smtpd_compat import CatcherServer, PasswordFile
from smtpd_compat import _catcher_mime as mime
from smtpd_compat._catcher_http import content_disposition, header_value, json_response
from smtpd_compat._catcher_store import Store


# -- CSRF -------------------------------------------------------------------------------------
def test_cross_origin_writes_are_refused() -> None:
    with catcher() as c:
        c.send(simple())
        web = c.web
        for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                        {"Origin": "http://127.0.0.1:%d" % (web.port + 1)},
                        {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
            for method in ("DELETE", "PUT"):
                status, _, body = web.request(method, "/api/v1/messages", {"IDs": [], "Read": True}, headers)
                assert status == 403, (method, headers, body)
        assert len(c.ids()) == 1
        assert web.request("PUT", "/api/v1/messages", {"Read": True}, {"Origin": web.origin})[0] == 200
        assert web.request("PUT", "/api/v1/messages", {"Read": True}, {"Sec-Fetch-Site": "same-origin"})[0] == 200


def test_form_content_types_are_refused() -> None:
    with catcher() as c:
        c.send(simple())
        for kind in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", ""):
            status, _, _ = c.web.request("DELETE", "/api/v1/messages", b'{"IDs": []}', {"Content-Type": kind})
            assert status == 415, kind
        assert len(c.ids()) == 1


def test_a_foreign_host_name_is_refused() -> None:
    """A DNS-rebinding page reaches the loopback address under its own name."""
    with catcher() as c:
        c.send(simple())
        assert c.web.request("GET", "/api/v1/messages", headers={"Host": "evil.example:%d" % c.web.port})[0] == 421
        assert c.web.request("GET", "/api/v1/messages", headers={"Host": "localhost:%d" % c.web.port})[0] == 200


def test_a_non_loopback_web_address_needs_the_flag() -> None:
    with pytest.raises(ValueError, match="loopback"):
        CatcherServer(("127.0.0.1", 0), None, map={}, web=("0.0.0.0", 0))


def test_remote_allowed_accepts_any_host_name() -> None:
    with catcher(host="127.0.0.1", web_allow_remote=True) as c:
        assert c.web.request("GET", "/api/v1/info", headers={"Host": "catcher.lan"})[0] == 200


# -- basic auth --------------------------------------------------------------------------------------
def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


@pytest.mark.parametrize("hashed", [False, True])
def test_basic_auth_guards_every_route(tmp_path: Path, hashed: bool) -> None:
    from smtpd_compat._auth import hash_password

    path = tmp_path / "users"
    path.write_text("ann:%s\n" % (hash_password("s3cret", iterations=1000) if hashed else "s3cret"))
    os.chmod(str(path), stat.S_IRUSR | stat.S_IWUSR)
    with catcher(web_auth=PasswordFile.load(str(path))) as c:
        for route in ("/", "/static/app.js", "/api/v1/messages", "/api/v1/events", "/api/v1/info", "/view/x.html"):
            status, headers, _ = c.web.request("GET", route)
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm="), route
        assert c.web.request("GET", "/api/v1/info", headers={"Authorization": _basic("ann", "wrong")})[0] == 401
        assert c.web.request("GET", "/api/v1/info", headers={"Authorization": _basic("bob", "s3cret")})[0] == 401
        assert c.web.request("GET", "/api/v1/info", headers={"Authorization": "Basic !!"})[0] == 401
        for _ in range(2):  # the second time from the cache of passed headers
            assert c.web.request("GET", "/api/v1/info", headers={"Authorization": _basic("ann", "s3cret")})[0] == 200
        authed = Web(c.server.web_address, auth=_basic("ann", "s3cret"))
        assert authed.request("DELETE", "/api/v1/messages", {}, {"Origin": authed.origin})[0] == 200


# -- response headers ---------------------------------------------------------------------------------
def test_header_values_cannot_split_a_response() -> None:
    assert header_value("a\r\nSet-Cookie: x=1") == "a  Set-Cookie: x=1"
    assert header_value("naïve €") == "naïve ?"


@pytest.mark.parametrize("name", ['evil"; x=".pdf', "a\r\nSet-Cookie: x=1", "../../etc/passwd", "résumé 2026.pdf",
                                  "", "=?utf-8?q?x?=", "\\server\\share"])
def test_content_disposition_is_rfc5987_and_inert(name: str) -> None:
    value = content_disposition(name)
    assert value.startswith("attachment; filename=\"")
    assert all(32 <= ord(ch) < 127 for ch in value)
    fallback, star = value.split("; filename*=UTF-8''")
    assert fallback.count('"') == 2 and "/" not in star and "\\" not in star and "'" not in star
    assert " " not in star and ";" not in star and '"' not in star


HOSTILE_HTML = ('<p onclick="alert(1)">x</p><script>alert(1)</script><a href="javascript:alert(1)">go</a>'
                '<img src="http://tracker.example/p.gif"><style>@import url(http://evil.example/x.css)</style>'
                '<meta http-equiv="refresh" content="0;url=http://evil.example/">')


def test_hostile_message_stays_data() -> None:
    evil = '<img src=x onerror=alert(1)>"\'\r\nX-Injected: yes'
    with catcher() as c:
        # A file name with CR LF in it, as RFC 2231 can carry it.
        raw = multipart(subject="<script>alert(1)</script>", filename="PLACEHOLDER.pdf", html=HOSTILE_HTML)
        raw = raw.replace(b'filename="PLACEHOLDER.pdf"',
                          b"filename*=utf-8''%22%3E%3Csvg%20onload%3Dalert%281%29%3E%0D%0AX-Evil%3A%201.html")
        c.send(raw)
        c.send(simple(subject=evil.replace("\r\n", " "), sender='"<script>" <a@example.org>'))
        listing = c.web.json("/api/v1/messages")
        subjects = [m["Subject"] for m in listing["messages"]]
        assert "<script>alert(1)</script>" in subjects  # kept as text, for the page to show as text
        ident = listing["messages"][1]["ID"]
        message = c.web.json("/api/v1/message/" + ident)
        (attachment,) = message["Attachments"]
        assert attachment["FileName"] == '"><svg onload=alert(1)> X-Evil: 1.html'  # one line, as text
        status, headers, _ = c.web.request("GET", "/api/v1/message/%s/part/%s" % (ident, attachment["PartID"]))
        assert status == 200 and "X-Evil" not in headers
        assert headers["Content-Disposition"].startswith("attachment;")
        assert headers["Content-Security-Policy"] == "sandbox"
        status, headers, body = c.web.request("GET", "/view/%s.html" % ident)
        assert headers["Content-Security-Policy"].startswith("sandbox; default-src 'none'")
        assert "script-src" not in headers["Content-Security-Policy"]
        assert b"http-equiv" not in body.replace(b"data-blocked-http-equiv", b"")
        status, headers, _ = c.web.request("GET", "/api/v1/message/%s/raw" % ident)
        assert headers["Content-Type"] == "text/plain; charset=utf-8" and headers["X-Content-Type-Options"] == "nosniff"


def test_a_text_only_view_is_escaped() -> None:
    with catcher() as c:
        c.send(simple(body="<script>alert(1)</script>"))
        (ident,) = c.ids()
        body = c.web.request("GET", "/view/%s.html" % ident)[2]
        assert b"<script>" not in body and b"&lt;script&gt;" in body


# -- any bytes -----------------------------------------------------------------------------------------
MIME_PIECES = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"--b\r\n", b"--b--\r\n", b"\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Type: text/html; charset=x-unknown\r\n", b"Content-Disposition: attachment; filename*=bad''%ZZ\r\n",
    b"Subject: =?utf-8?b?!!!?=\r\n", b"From: <<<@>>>,\r\n", b"To: \"unterminated\r\n", b"Date: not a date\r\n",
    b"Content-ID: <x>\r\n", b"=\r\n", b"\xff\xfe\x00", b"Content-Type: message/rfc822\r\n",
])
ANY_MESSAGE = st.one_of(st.binary(max_size=2000), st.lists(st.one_of(MIME_PIECES, st.binary(max_size=40)), max_size=40).map(b"".join))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_MESSAGE)
def test_any_bytes_are_read_without_an_exception(raw: bytes) -> None:
    store = Store(10)
    entry = store.add(raw, {"MailFrom": "a@b", "RcptTos": ["c@d"]})
    json_response(entry.summary())
    message = mime.parse(raw)
    json_response(mime.detail(message))
    json_response(mime.headers(message))
    json_response(mime.tree(message, len(raw)))
    for part_id, _ in mime.numbered(message):
        assert mime.part(message, part_id) is not None
    mime.view_html(message)


def test_broken_messages_still_list_through_the_api() -> None:
    broken = [b"\x00\xff garbage without headers", b"Subject: =?bad?=\r\nContent-Type: multipart/mixed; boundary=\r\n\r\n--\r\n",
              b"Content-Type: text/plain; charset=nonexistent\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n"]
    with catcher() as c:
        for raw in broken:
            c.server.capture(raw, {"MailFrom": "", "RcptTos": []})
        listing = c.web.json("/api/v1/messages")
        assert listing["total"] == 3
        for summary in listing["messages"]:
            for suffix in ("", "/headers", "/tree", "/raw"):
                assert c.web.request("GET", "/api/v1/message/%s%s" % (summary["ID"], suffix))[0] == 200
            assert c.web.request("GET", "/view/%s.html" % summary["ID"])[0] == 200
