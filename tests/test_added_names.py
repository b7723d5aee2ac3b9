"""The names smtpd_compat adds to the standard classes belong to subclasses
too: the package's own features (Controller, options, TLS/AUTH state,
deferred replies) keep working whatever a subclass does with them.

(tests/compat/ checks that such subclasses behave as on the standard
library; these tests check the package's features around them.)
"""

from __future__ import annotations

import concurrent.futures
import smtplib
from typing import Any, List

from smtpd_compat import Controller, smtpd

from conftest import GREETING, RawClient, running_server


class OwnNames(smtpd.SMTPServer):
    """Uses every server name the package adds, with other meanings."""

    def __init__(self, localaddr: Any, remoteaddr: Any = None, **kwargs: Any) -> None:
        super().__init__(localaddr, remoteaddr, **kwargs)
        self.port = "their port"
        self.address = "their address"
        self.max_errors = 0  # not a budget, in this class
        self.tls_context = object()  # their own TLS code's, not ours
        self.calls: List[str] = []
        self.messages: List[Any] = []

    def serve_forever(self) -> None:
        self.calls.append("serve_forever")

    def shutdown(self) -> None:
        self.calls.append("shutdown")

    def server_close(self) -> None:
        self.calls.append("server_close")

    def process_message(self, peer: Any, mailfrom: str, rcpttos: Any, data: bytes, **kwargs: Any) -> None:
        self.messages.append((mailfrom, data))


def test_controller_serves_a_class_that_redefines_the_serving_names() -> None:
    with Controller(OwnNames) as controller:
        host, port = controller.address
        assert isinstance(port, int) and port > 0
        with smtplib.SMTP(host, port, timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: x\r\n\r\nbody\r\n")
        server = controller.server
    assert server.messages == [("a@example.com", b"Subject: x\n\nbody")]
    assert server.calls == []  # none of their methods was mistaken for ours
    assert (server.port, server.address) == ("their port", "their address")
    assert server._fileno is None  # stopped and closed all the same


def test_option_names_assigned_by_a_subclass_do_not_configure_the_server() -> None:
    with running_server(OwnNames) as st:
        with RawClient(st.address) as client:
            assert client.read_reply() == GREETING
            ehlo = client.command(b"EHLO me")
            assert b"STARTTLS" not in ehlo  # their tls_context is not ours
            # Their max_errors = 0 is not a budget: the default of 20 holds.
            for _ in range(5):
                assert client.command(b"BOGUS").startswith(b"500 ")
            assert client.command(b"NOOP") == b"250 OK\r\n"


def test_keyword_options_are_readable_under_their_names() -> None:
    with running_server(smtpd.SMTPServer, max_errors=3, command_timeout=60.0) as st:
        assert st.server.max_errors == 3
        assert st.server.command_timeout == 60.0
        assert st.server.data_timeout == 180.0  # a default


class TheirStateNames(smtpd.SMTPChannel):
    """A channel that did TLS and AUTH its own way, with these names."""

    def smtp_XSTATE(self, arg: Any) -> None:
        self.tls_active = True
        self.auth_login = "mallory"
        self.push("250 state set")

    def pause_reading(self) -> None:  # another meaning, another signature
        raise AssertionError("the package must not call this")

    def resume_reading(self) -> None:
        raise AssertionError("the package must not call this")


class DeferringServer(smtpd.SMTPServer):
    channel_class = TheirStateNames

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = concurrent.futures.ThreadPoolExecutor(1)
        self.seen: List[Any] = []

    def process_message(self, peer: Any, mailfrom: str, rcpttos: Any, data: bytes, **kwargs: Any) -> Any:
        self.seen.append(kwargs.get("auth_login", "not passed"))
        return self.pool.submit(lambda: None)  # answered later: input pauses

    def close(self) -> None:
        super().close()
        self.pool.shutdown(wait=False)


def test_channel_state_names_and_pause_methods_of_a_subclass() -> None:
    with running_server(DeferringServer) as st:
        with RawClient(st.address) as client:
            client.read_reply()
            assert client.command(b"HELO me").startswith(b"250 ")
            assert client.command(b"XSTATE") == b"250 state set\r\n"
            assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
            assert client.command(b"DATA").startswith(b"354 ")
            # A deferred reply pauses the session's input, through the
            # package's own methods; the pipelined NOOP waits for it.
            client.send(b"body\r\n.\r\nNOOP\r\n")
            assert client.read_reply() == b"250 OK\r\n"
            assert client.read_reply() == b"250 OK\r\n"
    # AUTH is not configured: no auth_login is passed, whatever they set.
    assert st.server.seen == ["not passed"]


class LegacyAuthenticate(smtpd.SMTPServer):
    def authenticate(self, username: str, password: str) -> bool:
        return True


def test_an_authenticate_of_another_shape_does_not_turn_auth_on() -> None:
    # With a matching override and no TLS, creating the server would be
    # refused ("AUTH is only offered over TLS"); this one is not ours.
    with running_server(LegacyAuthenticate) as st:
        with RawClient(st.address) as client:
            client.read_reply()
            assert b"AUTH" not in client.command(b"EHLO me")
            assert client.command(b"AUTH PLAIN AGFsaWNlAHB3") == b'500 Error: command "AUTH" not recognized\r\n'
