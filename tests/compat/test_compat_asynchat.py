"""asynchat/asyncore code outside smtpd: line servers built on async_chat
and dispatcher, driven by every loop entry point the standard library had."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from harness import Client, Events, Impl, Loop, address_of, impl  # noqa: F401  (impl: the fixture)


def line_server(impl: Impl, chat_factory: Callable[[Any, Any, Any], Any]) -> Any:
    class LineServer(impl.asyncore.dispatcher):
        def __init__(self, map: Any) -> None:
            impl.asyncore.dispatcher.__init__(self, map=map)
            self.create_socket()
            self.set_reuse_addr()
            self.bind(("127.0.0.1", 0))
            self.listen(5)

        def handle_accepted(self, sock: Any, addr: Any) -> None:
            chat_factory(impl, sock, self._map)

    return LineServer


def early_terminator(impl: Impl, sock: Any, map: Any) -> Any:
    class Early(impl.asynchat.async_chat):
        """Sets its terminator before async_chat.__init__ runs."""

        def __init__(self, sock: Any, map: Any) -> None:
            self.set_terminator(b"\n")
            self.pieces: list = []
            impl.asynchat.async_chat.__init__(self, sock, map=map)

        def collect_incoming_data(self, data: bytes) -> None:
            self.pieces.append(data)

        def found_terminator(self) -> None:
            line = b"".join(self.pieces)
            self.pieces = []
            self.push(b"echo " + line + b"\n")
            if line == b"bye":
                self.close_when_done()

    return Early(sock, map)


def initialised_twice(impl: Impl, sock: Any, map: Any) -> Any:
    base = type(early_terminator(impl, sock, map))
    # The first object registered the socket; this one takes its place in
    # the map, as a wrapper that re-runs __init__ would.

    class Twice(base):  # type: ignore[misc, valid-type]
        def __init__(self, sock: Any, map: Any) -> None:
            impl.asynchat.async_chat.__init__(self, sock, map=map)
            self.set_terminator(b"\n")
            self.pieces = []
            impl.asynchat.async_chat.__init__(self, sock, map=map)

    return Twice(sock, map)


@pytest.mark.parametrize("how", ["loop", "loop_poll", "poll", "poll2"])
@pytest.mark.parametrize("factory", [early_terminator, initialised_twice], ids=["early", "twice"])
def test_the_terminator_survives_init(impl: Impl, factory: Any, how: str) -> None:
    server_map: dict = {}
    server = line_server(impl, factory)(server_map)
    loop = Loop(impl, server_map, how=how)
    try:
        with Client(address_of(server)) as client:
            client.send(b"hello\n")
            assert client.line() == b"echo hello\n"
            client.send(b"one\ntwo\nbye\n")
            assert client.rest_until_closed() == b"echo one\necho two\necho bye\n"
    finally:
        loop.stop()


def counting_chat(impl: Impl, sock: Any, map: Any) -> Any:
    class Counting(impl.asynchat.async_chat):
        """Switches between a line terminator and a byte count, and sends
        through a producer."""

        def __init__(self, sock: Any, map: Any) -> None:
            impl.asynchat.async_chat.__init__(self, sock, map=map)
            self.set_terminator(b"\r\n")
            self.pieces: list = []

        def collect_incoming_data(self, data: bytes) -> None:
            self.pieces.append(data)

        def found_terminator(self) -> None:
            data = b"".join(self.pieces)
            self.pieces = []
            if isinstance(self.get_terminator(), int):
                self.push_with_producer(impl.asynchat.simple_producer(b"got " + data + b"\r\n", buffer_size=3))
                self.set_terminator(b"\r\n")
            else:
                self.set_terminator(int(data))

    return Counting(sock, map)


def test_byte_counts_and_producers(impl: Impl) -> None:
    server_map: dict = {}
    server = line_server(impl, counting_chat)(server_map)
    loop = Loop(impl, server_map)
    try:
        with Client(address_of(server)) as client:
            client.send(b"5\r\nab\r\nc7\r\n1234567")
            expected = b"got ab\r\nc\r\ngot 1234567\r\n"
            assert client.exactly(len(expected)) == expected
    finally:
        loop.stop()


def echo_dispatcher(impl: Impl, sock: Any, map: Any) -> Any:
    class Echo(impl.asyncore.dispatcher_with_send):
        def handle_read(self) -> None:
            data = self.recv(8192)
            if data:
                self.send(data.upper())

    return Echo(sock, map)


@pytest.mark.parametrize("how", ["loop", "loop_poll", "poll", "poll2"])
def test_dispatcher_with_send_under_every_loop(impl: Impl, how: str) -> None:
    server_map: dict = {}
    server = line_server(impl, echo_dispatcher)(server_map)
    loop = Loop(impl, server_map, how=how)
    try:
        with Client(address_of(server)) as client:
            client.send(b"abc\n")
            assert client.line() == b"ABC\n"
    finally:
        loop.stop()


def failing_dispatcher(impl: Impl, events: Events) -> Any:
    def build(impl: Impl, sock: Any, map: Any) -> Any:
        class Failing(impl.asyncore.dispatcher):
            """Routes asyncore's reports into its own log through log_info()."""

            def writable(self) -> bool:
                return False

            def handle_read(self) -> None:
                self.recv(100)
                raise ValueError("a bug")

            def log_info(self, message: str, type: str = "info") -> None:
                events.add((type, message.split(" (")[0].split(" <")[0], "ValueError'>:a bug" in message))

        return Failing(sock, map)

    return build


def test_handle_error_reports_through_log_info(impl: Impl) -> None:
    events = Events()
    server_map: dict = {}
    server = line_server(impl, failing_dispatcher(impl, events))(server_map)
    loop = Loop(impl, server_map)
    try:
        with Client(address_of(server)) as client:
            client.send(b"x")
            assert client.rest_until_closed() == b""
        assert events.wait_for(lambda e: len(e) >= 1)[:1] == [("error", "uncaptured python exception, closing channel", True)]
    finally:
        loop.stop()
