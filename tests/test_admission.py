"""Admission control (smtpd_compat/_admission.py, docs/admission.md):
per-address connection limits and rate, AUTH failures counted across
connections, the ``accept_connection()`` hook; one process here (real
sockets on loopback), the workers in tests/test_admission_workers.py."""

from __future__ import annotations

import base64
import smtplib
import socket
import time
from typing import Any, List, Optional, Tuple

import pytest

from smtpd_compat import Controller, RecordingServer, _admission, _options, smtpd

from conftest import GREETING, TIMEOUT, RawClient, running_server

REFUSED = b"421 4.7.0 Too many connections from your address, try again later\r\n"
RATE_REFUSED = b"421 4.7.0 Too many connections from your address in too short a time, try again later\r\n"
AUTH_THROTTLED = (454, b"4.7.0 Too many failed authentications from your address, try again later")


def can_bind(host: str) -> bool:
    try:
        with socket.socket() as sock:
            sock.bind((host, 0))
        return True
    except OSError:
        return False


needs_127_0_0_2 = pytest.mark.skipif(not can_bind("127.0.0.2"), reason="127.0.0.2 is not a local address here")


def connect(address: Tuple[str, int], source: str = "127.0.0.1") -> RawClient:
    client = RawClient.__new__(RawClient)
    client.sock = socket.create_connection(address[:2], timeout=TIMEOUT, source_address=(source, 0))
    client.timeout = TIMEOUT
    client.buffer = b""
    return client


def refused_with(client: RawClient) -> bytes:
    """The whole of what a refused connection gets: one line, then the end."""
    data = client.read_until_closed()
    client.sock.close()
    return bytes(data)


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "never happened: " + what
        time.sleep(0.02)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(clock: FakeClock, **options: Any) -> _admission.Table:
    return _admission.Table(_options.make(options), clock=clock)


# -- the table, with a fake clock ----------------------------------------------------------------
def test_the_rate_bucket_lets_a_burst_through_then_refills_at_its_rate() -> None:
    clock = FakeClock()
    t = table(clock, connection_rate_per_ip="3/60")
    assert [t.admit("192.0.2.1") for _ in range(3)] == [None] * 3
    assert t.admit("192.0.2.1") == _admission.R.TOO_MANY_CONNECTIONS_RATE
    assert t.admit("192.0.2.2") is None  # another address has its own bucket
    clock.now += 19.0  # not quite one token (3 per 60 s: one per 20 s)
    assert t.admit("192.0.2.1") is not None
    clock.now += 1.5
    assert t.admit("192.0.2.1") is None
    assert t.admit("192.0.2.1") is not None
    clock.now += 600.0  # never more than the burst
    assert [t.admit("192.0.2.1") for _ in range(4)] == [None, None, None, _admission.R.TOO_MANY_CONNECTIONS_RATE]


def test_the_open_count_goes_up_and_down() -> None:
    t = table(FakeClock(), max_connections_per_ip=2)
    assert t.admit("192.0.2.1") is None and t.admit("192.0.2.1") is None
    assert t.admit("192.0.2.1") == _admission.R.TOO_MANY_CONNECTIONS_PER_IP
    assert t.open_count("192.0.2.1") == 2
    t.release("192.0.2.1")
    assert t.open_count("192.0.2.1") == 1
    assert t.admit("192.0.2.1") is None


def test_auth_failures_block_after_k_and_unblock_as_the_window_passes() -> None:
    clock = FakeClock()
    t = table(clock, auth_failures_per_ip="2/100")
    peer = ("192.0.2.9", 4000)
    assert not t.auth_blocked(peer)
    t.auth_failed(peer)
    assert not t.auth_blocked(peer)
    t.auth_failed(peer)
    assert t.auth_blocked(peer) and t.auth_blocked(("192.0.2.9", 4001))  # by address, not port
    assert not t.auth_blocked(("192.0.2.10", 4000))
    t.auth_failed(peer)  # more failures do not push the block further than a full bucket
    clock.now += 49.0
    assert t.auth_blocked(peer)
    clock.now += 2.0  # one failure forgotten (2 per 100 s)
    assert not t.auth_blocked(peer)
    assert not t.auth_blocked(("::ffff:192.0.2.99", 1, 0, 0)) and _admission.client_key(("::ffff:192.0.2.9", 1)) == "192.0.2.9"
    assert _admission.client_key("/run/smtp.sock") is None


def test_a_worker_column_is_zeroed_when_its_worker_ends() -> None:
    t = table(FakeClock(), max_connections_per_ip=3)
    t.allocate(2)
    t.column = 1
    assert t.admit("192.0.2.1") is None and t.admit("192.0.2.1") is None
    t.column = 0
    assert t.admit("192.0.2.1") is None
    assert t.admit("192.0.2.1") is not None
    t.zero_column(1)
    assert t.open_count("192.0.2.1") == 1


@pytest.mark.parametrize("options, error", [
    ({"max_connections_per_ip": 0}, ValueError),
    ({"max_connections_per_ip": True}, ValueError),
    ({"max_connections_per_ip": "3"}, ValueError),
    ({"connection_rate_per_ip": "10"}, ValueError),
    ({"connection_rate_per_ip": "0/60"}, ValueError),
    ({"connection_rate_per_ip": "10/0"}, ValueError),
    ({"connection_rate_per_ip": "10/inf"}, ValueError),
    ({"connection_rate_per_ip": 10}, TypeError),
    ({"auth_failures_per_ip": "x/60"}, ValueError),
])
def test_bad_options_are_refused_when_the_server_is_made(options: Any, error: Any) -> None:
    with pytest.raises(error, match=next(iter(options))):
        RecordingServer(("127.0.0.1", 0), **options)


def test_good_options_are_readable_and_the_default_path_is_untouched() -> None:
    server = RecordingServer(("127.0.0.1", 0), connection_rate_per_ip="10/60", auth_failures_per_ip=(5, 300))
    try:
        assert server.connection_rate_per_ip == "10/60"
        assert "handle_accepted" in server.__dict__  # the gate, on the instance
    finally:
        server.close()
    plain = RecordingServer(("127.0.0.1", 0))
    try:
        # No option, no hook: nothing is put on the connection's path.
        assert "handle_accepted" not in plain.__dict__ and _admission.table_of(plain) is None
        assert type(smtpd.SMTPServer._overridden_hooks) is frozenset
    finally:
        plain.close()


# -- one process, real sockets ----------------------------------------------------------------
@needs_127_0_0_2
def test_one_connection_too_many_from_an_address_is_refused_before_the_greeting() -> None:
    with Controller(RecordingServer, max_connections_per_ip=2) as controller:
        server = controller.server
        first, second = connect(controller.address), connect(controller.address)
        assert first.read_reply() == GREETING and second.read_reply() == GREETING
        assert refused_with(connect(controller.address)) == REFUSED
        other = connect(controller.address, "127.0.0.2")  # another address: its own count
        assert other.read_reply() == GREETING
        assert other.command(b"QUIT") == b"221 Bye\r\n"
        # The count goes down as sessions end (QUIT, or the client just going).
        assert first.command(b"QUIT") == b"221 Bye\r\n"
        first.sock.close()
        second.sock.close()
        wait_until(lambda: _admission.table_of(server).open_count("127.0.0.1") == 0, "sessions uncounted")  # type: ignore[union-attr]
        clients = [connect(controller.address) for _ in range(2)]
        assert [c.read_reply() for c in clients] == [GREETING, GREETING]
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT, source_address=("127.0.0.2", 0)) as smtp:
            assert smtp.noop()[0] == 250
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(*controller.address, timeout=TIMEOUT)
        assert refused.value.smtp_code == 421
        for c in clients:
            c.sock.close()


def test_enhanced_codes_or_not_the_refusal_is_the_same_and_logged(caplog: Any) -> None:
    with Controller(RecordingServer, max_connections_per_ip=1, enhanced_status_codes=True) as controller:
        held = connect(controller.address)
        assert held.read_reply() == GREETING
        with caplog.at_level("WARNING", logger="smtpd_compat"):
            assert refused_with(connect(controller.address)) == REFUSED
        held.sock.close()
    assert any("refusing a connection from 127.0.0.1:" in r.getMessage() for r in caplog.records)


def test_the_rate_limit_refuses_after_the_burst_and_lets_in_again_later() -> None:
    # Real time, with generous bounds: 2 at once, then one every 2 s.
    with Controller(RecordingServer, connection_rate_per_ip="2/4") as controller:
        started = time.monotonic()
        for _ in range(2):
            with connect(controller.address) as client:
                assert client.read_reply() == GREETING
        with connect(controller.address) as client:
            first = client.read_reply()
        if time.monotonic() - started < 1.5:  # (a very slow machine may have earned a token back)
            assert first == RATE_REFUSED
        time.sleep(2.2)
        with connect(controller.address) as client:
            assert client.read_reply() == GREETING


def test_a_refused_connection_is_not_counted_as_open() -> None:
    with Controller(RecordingServer, max_connections_per_ip=1, connection_rate_per_ip="100/1") as controller:
        held = connect(controller.address)
        assert held.read_reply() == GREETING
        for _ in range(3):
            assert refused_with(connect(controller.address)) == REFUSED
        assert _admission.table_of(controller.server).open_count("127.0.0.1") == 1  # type: ignore[union-attr]
        held.sock.close()


# -- AUTH failures across connections ---------------------------------------------------------------
def check(server: Any, channel: Any, mechanism: str, login: str, password: str) -> bool:
    return (login, password) == ("alice", "right")


def login(address: Tuple[str, int], password: str, source: str = "127.0.0.1") -> Tuple[int, bytes]:
    with smtplib.SMTP(*address, timeout=TIMEOUT, source_address=(source, 0)) as smtp:
        smtp.ehlo()
        token = base64.b64encode(b"\0alice\0" + password.encode()).decode()
        return smtp.docmd("AUTH", "PLAIN " + token)


@needs_127_0_0_2
def test_auth_failures_are_counted_across_reconnects() -> None:
    with Controller(RecordingServer, authenticator=check, auth_require_tls=False, auth_failures_per_ip="2/600",
                    max_auth_failures=5) as controller:
        address = controller.address
        assert login(address, "wrong")[0] == 535
        assert login(address, "wrong")[0] == 535
        # A new connection: the address has no failures left; the password is not even looked at.
        assert login(address, "right") == AUTH_THROTTLED
        assert login(address, "wrong") == AUTH_THROTTLED
        assert login(address, "right", "127.0.0.2") == (235, b"Authentication successful")


def test_auth_throttling_within_one_session_and_with_enhanced_codes() -> None:
    with Controller(RecordingServer, authenticator=check, auth_require_tls=False, auth_failures_per_ip="1/600",
                    enhanced_status_codes=True) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as smtp:
            smtp.ehlo()
            assert smtp.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0bad").decode())[0] == 535
            assert smtp.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0right").decode()) == AUTH_THROTTLED
            assert smtp.docmd("AUTH", "BOGUS") == (504, b"5.5.4 Unrecognized authentication type")  # checked first
            assert smtp.noop() == (250, b"2.0.0 OK")  # the session goes on


def test_without_the_option_auth_is_as_before() -> None:
    with Controller(RecordingServer, authenticator=check, auth_require_tls=False, max_auth_failures=0) as controller:
        for _ in range(4):
            assert login(controller.address, "wrong")[0] == 535
        assert login(controller.address, "right")[0] == 235


# -- accept_connection() ----------------------------------------------------------------------
class Bouncer(RecordingServer):
    seen: List[Any] = []

    def accept_connection(self, peer: Any) -> Optional[str]:
        self.seen.append(peer)
        return "554 5.7.1 Go away" if peer[0] in ("192.0.2.66", "127.0.0.1") and self.refuse else None

    refuse = True


class OtherMeaning(RecordingServer):
    def accept_connection(self) -> str:  # their own method, another shape
        raise AssertionError("not ours to call")


def test_the_hook_refuses_before_the_greeting() -> None:
    Bouncer.seen = []
    with Controller(Bouncer) as controller:
        assert refused_with(connect(controller.address)) == b"554 5.7.1 Go away\r\n"
        assert Bouncer.seen and Bouncer.seen[0][0] == "127.0.0.1"
        controller.server.refuse = False
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as smtp:
            assert smtp.noop()[0] == 250


def test_the_hook_of_another_shape_is_left_alone() -> None:
    assert "accept_connection" in Bouncer._overridden_hooks
    assert "accept_connection" not in OtherMeaning._overridden_hooks
    with Controller(OtherMeaning) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as smtp:
            assert smtp.noop()[0] == 250
        assert "handle_accepted" not in controller.server.__dict__


def proxied(address: Tuple[str, int], client_ip: str) -> RawClient:
    client = connect(address)
    client.send(b"PROXY TCP4 %s 127.0.0.1 40000 25\r\n" % client_ip.encode())
    return client


def test_the_hook_and_the_limits_see_the_address_behind_a_proxy() -> None:
    Bouncer.seen = []
    with Controller(Bouncer, proxy_protocol=True, max_connections_per_ip=1, enhanced_status_codes=True) as controller:
        controller.server.refuse = True
        assert refused_with(proxied(controller.address, "192.0.2.66")) == b"554 5.7.1 Go away\r\n"
        assert Bouncer.seen[-1] == ("192.0.2.66", 40000)
        first = proxied(controller.address, "192.0.2.7")
        assert first.read_reply() == GREETING
        # The proxy's own address (127.0.0.1) is not what is counted: the client's is.
        assert refused_with(proxied(controller.address, "192.0.2.7")) == REFUSED
        second = proxied(controller.address, "192.0.2.8")
        assert second.read_reply() == GREETING
        assert Bouncer.seen[-1] == ("192.0.2.8", 40000)
        first.sock.close()
        second.sock.close()


def test_a_hook_that_raises_drops_the_connection_and_the_server_goes_on() -> None:
    class Broken(RecordingServer):
        def accept_connection(self, peer: Any) -> Optional[str]:
            raise RuntimeError("boom")

    with running_server(Broken, max_connections_per_ip=1) as st:
        client = connect(st.address)
        assert refused_with(client) == b""
        assert _admission.table_of(st.server).open_count("127.0.0.1") == 0  # type: ignore[union-attr]


# -- the command line ----------------------------------------------------------------------------
def test_the_flags_become_the_options() -> None:
    from smtpd_compat import _cli, _cli_args

    ns = _cli_args.parse_args(["--max-connections-per-ip", "3", "--connection-rate-per-ip", "30/60",
                               "--auth-failures-per-ip", "5/300"])
    assert _cli.server_options(ns) == {"max_connections_per_ip": 3, "connection_rate_per_ip": "30/60",
                                       "auth_failures_per_ip": "5/300"}
    assert _cli.server_options(_cli_args.parse_args([])) == {}  # none given: the class is built as before


@pytest.mark.parametrize("flag, value", [
    ("--max-connections-per-ip", "0"), ("--max-connections-per-ip", "x"),
    ("--connection-rate-per-ip", "30"), ("--auth-failures-per-ip", "5/0"),
])
def test_bad_flag_values_are_usage_errors(flag: str, value: str) -> None:
    from test_cli import run_cli

    done = run_cli("-n", flag, value)
    assert done.returncode == 2
    assert "argument %s: invalid" % flag in done.stderr
