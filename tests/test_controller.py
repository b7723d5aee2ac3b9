"""Controller: a server in a background thread, started and stopped deterministically."""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import threading
import time
from typing import Any, Dict, List

import pytest

from smtpd_compat import Controller, RecordingServer, SMTPServer, _reactor, asyncore

from conftest import TIMEOUT, RawClient


def open_fds() -> List[str]:
    return sorted(os.listdir("/proc/self/fd"))


def test_send_with_smtplib() -> None:
    with Controller(RecordingServer) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            refused = client.sendmail(
                "alice@example.com",
                ["bob@example.com", "carol@example.com"],
                b"From: alice@example.com\r\nSubject: Hello\r\n\r\nHi Bob.\r\n",
            )
        assert refused == {}
        (message,) = controller.server.wait_for(1, TIMEOUT)
    assert message.mailfrom == "alice@example.com"
    assert message.rcpttos == ["bob@example.com", "carol@example.com"]
    assert message.message["Subject"] == "Hello"
    assert message.message.get_content() == "Hi Bob."
    assert message.data == b"From: alice@example.com\nSubject: Hello\n\nHi Bob."


def test_start_returns_only_when_accepting() -> None:
    controller = Controller(RecordingServer)
    controller.start()
    try:
        # No retry loop: the very first connection must be served.
        with RawClient(controller.address) as client:
            assert client.read_reply().startswith(b"220 ")
            assert client.command(b"NOOP") == b"250 OK\r\n"
    finally:
        controller.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_200_start_stop_cycles_leak_nothing() -> None:
    # One cycle first, so that one-time set-up (imports, the FQDN memo,
    # logging) is not counted as a leak.
    with Controller(RecordingServer) as controller:
        RawClient(controller.address).close()
    fds_before = open_fds()
    threads_before = threading.active_count()
    started = time.monotonic()
    for _ in range(200):
        with Controller(RecordingServer) as controller:
            # A live session at stop time: stop() must close it too.
            client = RawClient(controller.address)
            assert client.read_reply().startswith(b"220 ")
        assert client.read_until_closed().startswith(b"421 ")
        client.close()
        assert controller.server._map == {}
        assert controller.thread is None
    elapsed = time.monotonic() - started
    assert open_fds() == fds_before
    assert threading.active_count() == threads_before
    assert not _reactor._reactors.get(id(controller.server._map))
    # Each stop is woken, not polled (poll_interval is 0.5 s).
    assert elapsed < 60


def test_stop_right_after_start() -> None:
    # stop() may run before the thread has entered serve_forever(): the
    # request must not be lost and nothing may be left open.
    fds_before = open_fds() if os.path.isdir("/proc/self/fd") else None
    for _ in range(50):
        controller = Controller(RecordingServer).start()
        controller.stop()
        assert controller.server._map == {}
    if fds_before is not None:
        assert open_fds() == fds_before


def test_stop_is_idempotent_and_start_twice_is_an_error() -> None:
    controller = Controller(RecordingServer)
    controller.stop()  # never started: harmless
    controller.start()
    with pytest.raises(RuntimeError):
        controller.start()
    controller.stop()
    controller.stop()


def test_address_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        _ = Controller(RecordingServer).address


def test_server_kwargs_reach_the_server() -> None:
    with Controller(RecordingServer, data_size_limit=100, enable_SMTPUTF8=True) as controller:
        assert controller.server.data_size_limit == 100
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            code, text = client.ehlo()
            assert b"SIZE 100" in text and b"SMTPUTF8" in text
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.sendmail("a@example.com", ["b@example.com"], b"x" * 200)


def test_a_fresh_map_unless_one_is_given() -> None:
    map: Dict[int, Any] = {}
    with Controller(RecordingServer, map=map) as controller:
        assert controller.server._map is map
    with Controller(RecordingServer) as controller:
        assert controller.server._map is not asyncore.socket_map


def test_bind_error_is_raised_by_start() -> None:
    with Controller(RecordingServer) as first:
        clash = Controller(RecordingServer, first.address)
        with pytest.raises(OSError):
            clash.start()
        assert clash.thread is None


def test_error_in_the_server_thread_is_raised_by_stop() -> None:
    controller = Controller(RecordingServer).start()

    def boom() -> None:
        raise asyncore.ExitNow("stop the loop")

    _reactor.reactor_for(controller.server._map).call_soon_threadsafe(boom)
    assert controller.thread is not None
    controller.thread.join(TIMEOUT)
    assert not controller.thread.is_alive()
    with pytest.raises(asyncore.ExitNow):
        controller.stop()
    assert controller.server._map == {}


def test_any_smtpserver_subclass_works() -> None:
    received: List[bytes] = []
    done = threading.Event()

    class Mine(SMTPServer):
        def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kwargs: Any) -> None:
            received.append(data)
            done.set()

    with Controller(Mine) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: s\r\n\r\nbody\r\n")
        assert done.wait(TIMEOUT)
    assert received == [b"Subject: s\n\nbody"]


def test_repr() -> None:
    controller = Controller(RecordingServer)
    assert "stopped" in repr(controller)
    with controller:
        assert "running" in repr(controller) and str(controller.port) in repr(controller)


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_end_to_end() -> None:
    with Controller(RecordingServer) as controller:
        host, port = controller.address
        result = subprocess.run(
            [
                "swaks", "--server", host, "--port", str(port),
                "--from", "swaks@example.com", "--to", "rcpt@example.com",
                "--header", "Subject: from swaks",
                "--body", "Hello from swaks.\n.leading dot\n",
            ],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        (message,) = controller.server.wait_for(1, TIMEOUT)
    assert message.mailfrom == "swaks@example.com"
    assert message.rcpttos == ["rcpt@example.com"]
    assert message.message["Subject"] == "from swaks"
    body = message.message.get_content()
    assert "Hello from swaks." in body and "\n.leading dot" in body


def test_stop_closes_dispatchers_that_are_not_sessions() -> None:
    # A dispatcher in the server's map that shutdown() does not know about
    # (no smtp_server attribute): stop() closes it with the map.
    ours, theirs = socket.socketpair()
    added = threading.Event()
    box: Dict[str, Any] = {}
    try:
        with Controller(RecordingServer) as controller:

            def add() -> None:  # on the loop thread: the map is not thread-safe
                box["stray"] = asyncore.dispatcher(ours, map=controller.server._map)
                added.set()

            _reactor.reactor_for(controller.server._map).call_soon_threadsafe(add)
            assert added.wait(TIMEOUT)
        assert controller.server._map == {}
        assert box["stray"].socket.fileno() == -1
    finally:
        ours.close()
        theirs.close()
