"""Server subclasses that use names smtpd_compat adds to SMTPServer for
their own purposes: the standard library has no ``port``, ``address``,
``shutdown`` or ``serve_forever`` there, so such code worked, and must
keep working unchanged."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest

from harness import HAS_STDLIB, Events, Impl, Loop, address_of, impl  # noqa: F401  (impl: the fixture)


def port_server_class(impl: Impl, events: Events) -> Any:
    class PortServer(impl.smtpd.SMTPServer):
        """Remembers where it listens in attributes of its own, and has a
        shutdown()/serve_forever() that mean something else."""

        def __init__(self, localaddr: Any, map: Any) -> None:
            impl.smtpd.SMTPServer.__init__(self, localaddr, None, map=map)
            self.port = localaddr[1]
            self.address = "%s:%d" % localaddr
            self.server_close = "no"

        def shutdown(self) -> None:
            events.add("their shutdown")

        def serve_forever(self) -> None:
            events.add("their serve_forever")

        def process_message(self, peer: Any, mailfrom: str, rcpttos: Any, data: Any, **kwargs: Any) -> None:
            events.add((mailfrom, list(rcpttos), data))

    return PortServer


def test_assigned_port_and_address_stay_and_it_serves(impl: Impl) -> None:
    events = Events()
    server_map: dict = {}
    server = port_server_class(impl, events)(("127.0.0.1", 0), server_map)
    assert server.port == 0 and server.address == "127.0.0.1:0" and server.server_close == "no"
    loop = Loop(impl, server_map)
    try:
        with smtplib.SMTP(*address_of(server), timeout=10) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nbody\r\n")
        server.shutdown()
        server.serve_forever()
        assert events.wait_for(lambda e: len(e) >= 3) == [
            ("a@example.com", ["b@example.com"], b"Subject: hi\n\nbody"),
            "their shutdown",
            "their serve_forever",
        ]
        # Still what the subclass assigned, after serving.
        assert (server.port, server.address) == (0, "127.0.0.1:0")
    finally:
        loop.stop()


def class_attribute_server(impl: Impl) -> Any:
    class Configured(impl.smtpd.SMTPServer):
        # Settings kept as class attributes, read by the subclass itself.
        port = 2525
        address = ("mail.example.com", 2525)
        max_connections = "their own meaning"

        def process_message(self, *args: Any, **kwargs: Any) -> None:
            return None

    return Configured


def test_class_attributes_with_our_names_are_left_alone(impl: Impl) -> None:
    server_map: dict = {}
    server = class_attribute_server(impl)(("127.0.0.1", 0), None, map=server_map)
    try:
        assert server.port == 2525
        assert server.address == ("mail.example.com", 2525)
        assert server.max_connections == "their own meaning"
    finally:
        server.close()


def legacy_auth_server(impl: Impl) -> Any:
    class LegacyAuth(impl.smtpd.SMTPServer):
        """An smtpd-era server that did its own AUTH: its authenticate()
        has its own signature and nothing to do with smtpd_compat's hook."""

        def authenticate(self, username: str, password: str) -> bool:
            return (username, password) == ("u", "p")

        def process_message(self, *args: Any, **kwargs: Any) -> None:
            return None

    return LegacyAuth


def test_an_authenticate_method_of_another_shape_is_not_our_hook(impl: Impl) -> None:
    server_map: dict = {}
    server = legacy_auth_server(impl)(("127.0.0.1", 0), None, map=server_map)
    loop = Loop(impl, server_map)
    try:
        with smtplib.SMTP(*address_of(server), timeout=10) as client:
            code, text = client.ehlo()
        assert code == 250 and b"AUTH" not in text
        assert server.authenticate("u", "p")
    finally:
        loop.stop()


@pytest.mark.skipif(not HAS_STDLIB, reason="compares nothing without the stdlib; the smtpd_compat runs suffice")
def test_the_corpus_runs_both_implementations(impl: Impl) -> None:
    assert impl.smtpd.SMTPServer.__module__ in ("smtpd", "smtpd_compat.smtpd")
