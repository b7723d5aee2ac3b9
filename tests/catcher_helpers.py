"""Helpers of the catcher's tests: a running catcher, an HTTP client, sending mail.

``catcher(**options)`` runs a :class:`smtpd_compat.CatcherServer` under a
:class:`~smtpd_compat.controller.Controller` on loopback (its web server on a
free port) and stops it on exit.  :class:`Web` makes requests with
``http.client`` and returns ``(status, headers, body)``; ``send()`` sends a
message with smtplib.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import smtplib
from typing import Any, Dict, Iterator, List, Optional, Tuple

from smtpd_compat import CatcherServer, Controller

TIMEOUT = 10.0


class Web:
    """Requests to one catcher's web server."""

    def __init__(self, address: Tuple[str, int], auth: Optional[str] = None) -> None:
        self.host, self.port = address[0], address[1]
        self.auth = auth

    @property
    def origin(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "http://%s:%d" % (host, self.port)

    def request(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
                timeout: float = TIMEOUT) -> Tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        sent = dict(headers or {})
        if self.auth is not None:
            sent.setdefault("Authorization", self.auth)
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
            sent.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return response.status, response.msg, response.read()
        finally:
            conn.close()

    def json(self, path: str, expect: int = 200) -> Any:
        status, _, body = self.request("GET", path)
        assert status == expect, (status, body)
        return json.loads(body.decode("utf-8"))

    def write(self, method: str, path: str, body: Any = None, expect: int = 200) -> bytes:
        status, _, data = self.request(method, path, body)
        assert status == expect, (status, data)
        return data


class Running:
    """What ``catcher()`` yields: the server, its SMTP address, its web client."""

    def __init__(self, controller: "Controller[CatcherServer]") -> None:
        self.controller = controller
        self.server = controller.server
        self.smtp = controller.address
        address = self.server.web_address
        assert address is not None
        self.web = Web(address)

    def send(self, message: bytes, sender: str = "from@example.org", rcpts: Optional[List[str]] = None) -> None:
        with smtplib.SMTP(self.smtp[0], self.smtp[1], timeout=TIMEOUT) as client:
            client.sendmail(sender, rcpts or ["to@example.org"], message)

    def ids(self) -> List[str]:
        return [m["ID"] for m in self.web.json("/api/v1/messages?limit=1000")["messages"]]


@contextlib.contextmanager
def catcher(host: str = "127.0.0.1", **options: Any) -> Iterator[Running]:
    options.setdefault("web", (host, 0))
    options.setdefault("shutdown_timeout", 2.0)
    with Controller(CatcherServer, (host, 0), **options) as controller:
        yield Running(controller)


def simple(subject: str = "hello", body: str = "the body", sender: str = "Sender <from@example.org>",
           to: str = "to@example.org") -> bytes:
    return ("From: %s\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: <m1@example.org>\r\n"
            "Date: Wed, 02 Dec 2026 10:00:00 +0000\r\n\r\n%s\r\n" % (sender, to, subject, body)).encode("utf-8")


def multipart(subject: str = "with parts", filename: str = "report.pdf", html: str = "<p>Hi <img src=\"cid:logo@x\"></p>") -> bytes:
    """text + HTML alternative, an inline image (cid logo@x), an attachment."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = "Bob <bob@example.org>, carol@example.org"
    msg["Cc"] = "dave@example.org"
    msg["Subject"] = subject
    msg.set_content("plain text body\n")
    msg.add_alternative(html, subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<logo@x>")
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf", filename=filename)
    return msg.as_bytes()


def api(server: Any, method: str, path: str, body: Any = None, timeout: float = 30) -> Tuple[int, Any]:
    """One request to *server*'s API, a JSON body when given: (status, the
    JSON answer, or the text of any other)."""
    conn = http.client.HTTPConnection(*server.web_address, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(data) if kind.startswith("application/json") else data.decode()
