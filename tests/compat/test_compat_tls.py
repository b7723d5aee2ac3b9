"""TLS the way smtpd-era code added it: the server wraps each accepted
connection in ``handle_accepted()`` (a blocking handshake) and gives the
channel an ``ssl.SSLSocket``."""

from __future__ import annotations

import ssl
from typing import Any

from harness import Client, Events, Impl, Loop, address_of, fqdn, greeting, impl  # noqa: F401  (impl: the fixture)
from tls_helpers import client_context, server_context, tls_files  # noqa: F401  (fixtures)


def wrapping_server(impl: Impl, context: ssl.SSLContext, events: Events) -> Any:
    class Wrapping(impl.smtpd.SMTPServer):
        def handle_accepted(self, conn: Any, addr: Any) -> None:
            conn.setblocking(True)
            conn = context.wrap_socket(conn, server_side=True)
            self.channel_class(self, conn, addr, self.data_size_limit, self._map)

        def process_message(self, peer: Any, mailfrom: str, rcpttos: Any, data: Any, **kwargs: Any) -> None:
            events.add((mailfrom, list(rcpttos), data))

    return Wrapping


def test_a_channel_over_an_sslsocket_from_handle_accepted(impl: Impl, server_context: Any, client_context: Any) -> None:
    events = Events()
    server_map: dict = {}
    server = wrapping_server(impl, server_context, events)(("127.0.0.1", 0), None, map=server_map)
    loop = Loop(impl, server_map)
    try:
        with Client(address_of(server), ssl_context=client_context) as client:
            assert client.reply() == greeting(impl)
            assert client.command(b"HELO there") == ("250 %s\r\n" % fqdn()).encode("ascii")
            assert client.command(b"MAIL FROM:<a@example.com>") == b"250 OK\r\n"
            assert client.command(b"RCPT TO:<b@example.com>") == b"250 OK\r\n"
            assert client.command(b"DATA") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
            assert client.command(b"Subject: hi\r\n\r\nover TLS\r\n.") == b"250 OK\r\n"
            assert client.command(b"QUIT") == b"221 Bye\r\n"
        assert events.wait_for(lambda e: len(e) >= 1) == [("a@example.com", ["b@example.com"], b"Subject: hi\n\nover TLS")]
    finally:
        loop.stop()
