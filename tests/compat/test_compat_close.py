"""Handlers that push a reply and then end the session or the loop.

In the standard library ``push()`` sends at once, so the reply is on the
wire before whatever follows: ``close()``, ``handle_close()``,
``close_all()``, an exception (handled by ``handle_error()``) or
``asyncore.ExitNow`` leaving the loop.  Every case is played twice: the
command alone in its read, and pipelined behind another command in the
same read (smtpd_compat takes different internal paths for the two).
"""

from __future__ import annotations

from typing import Any

import pytest

from harness import Client, Impl, Loop, address_of, greeting, impl  # noqa: F401  (impl: the fixture)


def closing_server(impl: Impl) -> Any:
    asyncore = impl.asyncore

    class Closing(impl.smtpd.SMTPChannel):
        def smtp_EXIT(self, arg: Any) -> None:
            self.push("250 Ok")
            self.close()

        def smtp_HANGUP(self, arg: Any) -> None:
            self.push("250 Ok")
            self.handle_close()

        def smtp_BOOM(self, arg: Any) -> None:
            self.push("250 Ok")
            raise ValueError("a bug in a handler")

        def smtp_KILL(self, arg: Any) -> None:
            self.push("250 Ok")
            asyncore.close_all(self._map)

        def smtp_QUIT(self, arg: Any) -> None:
            self.push("221 Bye")
            self.close_when_done()
            raise asyncore.ExitNow()

    class Server(impl.smtpd.SMTPServer):
        channel_class = Closing

        def process_message(self, *args: Any, **kwargs: Any) -> None:
            return None

    return Server


def quiet_handle_error(impl: Impl, monkeypatch: Any) -> None:
    # The stdlib prints the traceback of handle_error() on stdout through
    # log_info(); keep the test output readable.
    monkeypatch.setattr(impl.smtpd.SMTPChannel, "log_info", lambda self, message, type="info": None, raising=False)


@pytest.mark.parametrize("pipelined", [False, True], ids=["alone", "pipelined"])
@pytest.mark.parametrize("verb", ["EXIT", "HANGUP", "BOOM", "KILL"])
def test_the_reply_before_a_close_reaches_the_client(impl: Impl, verb: str, pipelined: bool, monkeypatch: Any) -> None:
    quiet_handle_error(impl, monkeypatch)
    server_map: dict = {}
    server = closing_server(impl)(("127.0.0.1", 0), None, map=server_map)
    loop = Loop(impl, server_map)
    try:
        with Client(address_of(server)) as client:
            assert client.reply() == greeting(impl)
            assert client.command(b"HELO there") == b"250 " + greeting(impl).split()[1] + b"\r\n"
            client.send((b"NOOP\r\n" if pipelined else b"") + verb.encode("ascii") + b"\r\n")
            expected = (b"250 OK\r\n" if pipelined else b"") + b"250 Ok\r\n"
            assert client.rest_until_closed() == expected
        if verb == "KILL":
            loop.join()  # close_all() emptied the map: the loop ends by itself
            assert loop.exit is None
    finally:
        loop.stop()


@pytest.mark.parametrize("pipelined", [False, True], ids=["alone", "pipelined"])
def test_the_reply_before_exitnow_reaches_the_client(impl: Impl, pipelined: bool) -> None:
    server_map: dict = {}
    server = closing_server(impl)(("127.0.0.1", 0), None, map=server_map)
    loop = Loop(impl, server_map)
    try:
        with Client(address_of(server)) as client:
            client.reply()
            client.command(b"HELO there")
            client.send((b"NOOP\r\n" if pipelined else b"") + b"QUIT\r\n")
            if pipelined:
                assert client.reply() == b"250 OK\r\n"
            assert client.reply() == b"221 Bye\r\n"
            loop.join()
            assert isinstance(loop.exit, impl.asyncore.ExitNow)
    finally:
        loop.stop()


def unimplemented_server(impl: Impl) -> Any:
    class Unimplemented(impl.smtpd.SMTPServer):
        pass  # process_message() not overridden: the base raises NotImplementedError

    return Unimplemented


def test_an_unimplemented_process_message_is_answered_then_the_session_ends(impl: Impl, monkeypatch: Any) -> None:
    quiet_handle_error(impl, monkeypatch)
    server_map: dict = {}
    server = unimplemented_server(impl)(("127.0.0.1", 0), None, map=server_map)
    loop = Loop(impl, server_map)
    try:
        with Client(address_of(server)) as client:
            client.reply()
            client.command(b"HELO there")
            client.command(b"MAIL FROM:<a@example.com>")
            client.command(b"RCPT TO:<b@example.com>")
            client.command(b"DATA")
            client.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
            rest = client.rest_until_closed()
        if impl.name == "stdlib":
            assert rest == b""  # smtpd dropped the session without a word
        else:
            # The sender is told, so it keeps the message; then, as in
            # smtpd, the exception ends the session.
            assert rest == b"451 Requested action aborted: local error in processing\r\n"
    finally:
        loop.stop()
