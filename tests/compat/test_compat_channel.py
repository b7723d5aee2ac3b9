"""SMTPChannel subclasses as third-party code writes them: states of their
own, overridden framing hooks, ``received_lines`` read directly."""

from __future__ import annotations

import base64
from typing import Any, List

import pytest

from harness import Client, Events, Impl, Loop, address_of, fqdn, greeting, impl  # noqa: F401  (impl: the fixture)


def recording_server(impl: Impl, channel_class: Any, events: Events, **kwargs: Any) -> Any:
    class Server(impl.smtpd.SMTPServer):
        def process_message(self, peer: Any, mailfrom: str, rcpttos: Any, data: Any, **kw: Any) -> None:
            events.add(("message", mailfrom, list(rcpttos), data))

    Server.channel_class = channel_class
    server_map: dict = {}
    server = Server(("127.0.0.1", 0), None, map=server_map, **kwargs)
    return server, Loop(impl, server_map)


def auth_channel_class(impl: Impl, events: Events) -> Any:
    class AuthChannel(impl.smtpd.SMTPChannel):
        """AUTH LOGIN done the smtpd way: a state of its own, and the
        answers read from received_lines in found_terminator()."""

        AUTH = 2

        def smtp_AUTH(self, arg: Any) -> None:
            self.smtp_state = self.AUTH
            self.auth_step = 0
            self.push("334 VXNlcm5hbWU6")

        def found_terminator(self) -> None:
            if self.smtp_state != self.AUTH:
                super().found_terminator()
                return
            line = self._emptystring.join(self.received_lines)
            self.received_lines = []
            events.add(("auth", type(line).__name__, line))
            if self.auth_step == 0:
                self.auth_step = 1
                self.push("334 UGFzc3dvcmQ6")
            else:
                self.smtp_state = self.COMMAND
                self.push("235 Authentication successful")

    return AuthChannel


@pytest.mark.parametrize("decode_data", [False, True])
def test_a_state_of_their_own_sees_the_stdlib_types(impl: Impl, decode_data: bool) -> None:
    events = Events()
    server, loop = recording_server(impl, auth_channel_class(impl, events), events, decode_data=decode_data)
    user = base64.b64encode(b"j\xc3\xb8rn").decode("ascii")
    try:
        with Client(address_of(server)) as client:
            client.reply()
            client.command(b"EHLO there")
            assert client.command(b"AUTH LOGIN") == b"334 VXNlcm5hbWU6\r\n"
            assert client.command(user.encode("ascii")) == b"334 UGFzc3dvcmQ6\r\n"
            assert client.command(b"c2VjcmV0") == b"235 Authentication successful\r\n"
            assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
            assert client.command(b"DATA") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
            assert client.command(b"Subject: hi\r\n\r\nbody\r\n.") == b"250 OK\r\n"
            assert client.command(b"QUIT") == b"221 Bye\r\n"
        text = str if decode_data else bytes
        body = "Subject: hi\n\nbody" if decode_data else b"Subject: hi\n\nbody"
        seen = events.wait_for(lambda e: len(e) >= 3)
        assert seen == [
            ("auth", text.__name__, text(user) if decode_data else user.encode("ascii")),
            ("auth", text.__name__, "c2VjcmV0" if decode_data else b"c2VjcmV0"),
            ("message", "a@example.com", ["b@example.com"], body),
        ]
    finally:
        loop.stop()


def peeking_channel_class(impl: Impl, events: Events) -> Any:
    class Peeking(impl.smtpd.SMTPChannel):
        """Looks at the pieces of each line and message before smtpd does."""

        def found_terminator(self) -> None:
            joined = self._emptystring.join(self.received_lines)
            events.add((self.smtp_state, type(joined).__name__, joined))
            super().found_terminator()

    return Peeking


@pytest.mark.parametrize("decode_data", [False, True])
def test_received_lines_hold_the_line_and_the_message(impl: Impl, decode_data: bool) -> None:
    events = Events()
    server, loop = recording_server(impl, peeking_channel_class(impl, events), events, decode_data=decode_data)
    try:
        with Client(address_of(server)) as client:
            client.reply()
            client.command(b"HELO there")
            client.command(b"MAIL FROM:<a@example.com>")
            client.command(b"RCPT TO:<b@example.com>")
            client.command(b"DATA")
            assert client.command(b"Subject: caf\xc3\xa9\r\n\r\n..dot\r\n.") == b"250 OK\r\n"
        seen = events.wait_for(lambda e: len(e) >= 6)
    finally:
        loop.stop()
    conv = (lambda b: b.decode("utf-8")) if decode_data else (lambda b: b)
    kind = "str" if decode_data else "bytes"
    assert seen[:5] == [
        (0, kind, conv(b"HELO there")),
        (0, kind, conv(b"MAIL FROM:<a@example.com>")),
        (0, kind, conv(b"RCPT TO:<b@example.com>")),
        (0, kind, conv(b"DATA")),
        (1, kind, conv(b"Subject: caf\xc3\xa9\r\n\r\n..dot")),
    ]
    assert seen[5] == ("message", "a@example.com", ["b@example.com"], conv(b"Subject: caf\xc3\xa9\n\n.dot"))


def hooked_channel_class(impl: Impl, events: Events) -> Any:
    class Hooked(impl.smtpd.SMTPChannel):
        """Overrides the framing and output hooks, calling the originals."""

        def handle_read(self) -> None:
            events.add("handle_read")
            super().handle_read()

        def collect_incoming_data(self, data: bytes) -> None:
            events.add(("collect", data))
            super().collect_incoming_data(data)

        def push(self, msg: str) -> None:
            events.add(("push", msg))
            super().push(msg)

    return Hooked


def test_overridden_hooks_are_called_as_smtpd_called_them(impl: Impl) -> None:
    events = Events()
    server, loop = recording_server(impl, hooked_channel_class(impl, events), events)
    try:
        with Client(address_of(server)) as client:
            assert client.reply() == greeting(impl)
            assert client.command(b"EHLO there") == (
                "250-%s\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n" % fqdn()
            ).encode("ascii")
            assert client.command(b"NOOP") == b"250 OK\r\n"
            assert client.command(b"QUIT") == b"221 Bye\r\n"
            assert client.rest_until_closed() == b""
        seen = events.wait_for(lambda e: ("push", "221 Bye") in e)
    finally:
        loop.stop()
    expected: List[Any] = [
        ("push", "220 %s %s" % (fqdn(), impl.smtpd.__version__)),
        "handle_read", ("collect", b"EHLO there"),
        ("push", "250-%s" % fqdn()), ("push", "250-SIZE 33554432"), ("push", "250-8BITMIME"), ("push", "250 HELP"),
        "handle_read", ("collect", b"NOOP"), ("push", "250 OK"),
        "handle_read", ("collect", b"QUIT"), ("push", "221 Bye"),
    ]
    assert seen[: len(expected)] == expected
