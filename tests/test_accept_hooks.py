"""SMTPServer.accept_mail()/accept_rcpt(): a server decides on a sender or
a recipient when the client names it, without overriding smtp_MAIL/RCPT."""

from __future__ import annotations

from typing import Any, List, Optional

from conftest import GREETING, RawClient, RecordingSMTPServer, running_server


class Picky(RecordingSMTPServer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: List[Any] = []

    def accept_mail(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
        self.asked.append(("MAIL", address, params, channel.peer[0]))
        return "550 5.7.1 Sender rejected" if address.startswith("spammer@") else None

    def accept_rcpt(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
        self.asked.append(("RCPT", address, channel.mailfrom, list(channel.rcpttos)))
        return "550 5.1.1 No such user here" if address.startswith("nobody@") else None


def test_refused_senders_and_recipients_get_the_hooks_reply() -> None:
    with running_server(Picky) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            client.command(b"EHLO me")
            assert client.command(b"MAIL FROM:<spammer@example.com>") == b"550 5.7.1 Sender rejected\r\n"
            assert client.command(b"MAIL FROM:<a@example.com> SIZE=10") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<nobody@example.com>") == b"550 5.1.1 No such user here\r\n"
            assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
            assert client.command(b"DATA").startswith(b"354 ")
            assert client.command(b"hi\r\n.") == b"250 OK\r\n"
        [message] = st.server.wait_for(1)
        assert (message.mailfrom, message.rcpttos) == ("a@example.com", ["b@example.com"])
        assert st.server.asked == [
            ("MAIL", "spammer@example.com", [], "127.0.0.1"),
            ("MAIL", "a@example.com", ["SIZE=10"], "127.0.0.1"),
            ("RCPT", "nobody@example.com", "a@example.com", []),
            ("RCPT", "b@example.com", "a@example.com", []),
        ]


def test_the_hooks_see_only_what_passed_the_servers_own_checks() -> None:
    with running_server(Picky) as st:
        with RawClient(st.address) as client:
            client.read_reply()
            client.command(b"HELO me")
            assert client.command(b"MAIL FROM:<a@").startswith(b"501 ")
            assert client.command(b"RCPT TO:<b@example.com>") == b"503 Error: need MAIL command\r\n"
        assert st.server.asked == []


def test_without_overrides_replies_stay_smtpds() -> None:
    with running_server() as st:
        with RawClient(st.address) as client:
            client.read_reply()
            client.command(b"HELO me")
            assert client.command(b"MAIL FROM:<spammer@example.com>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<nobody@example.com>") == b"250 OK\r\n"
