"""The catcher's release (smtpd_compat._catcher_release): a stored message
relayed with PureProxy's relay to an upstream RecordingServer on loopback,
with the original or other recipients, refused upstream, over STARTTLS with
AUTH (the relay's own options)."""

from __future__ import annotations

import smtplib
import ssl
from typing import Any

import pytest
from catcher_helpers import api

from smtpd_compat import CatcherServer, Controller, RecordingServer, _options
from smtpd_compat import _catcher_release as release

from tls_helpers import PASSWORD, USER, client_context, server_context, tls_files  # noqa: F401  (fixtures)

RAW = (b"From: App <app@example.com>\r\nTo: user@example.com\r\nSubject: release me\r\n\r\n"
       b"line one\r\n.a line that starts with a dot\r\n\r\nlast line\r\n")


def releaser_to(upstream: "Controller[Any]", **options: Any) -> release.Releaser:
    return release.Releaser(_options.make(options), upstream.address, timeout=10)


@pytest.fixture
def upstream() -> Any:
    with Controller(RecordingServer) as controller:
        yield controller


def test_bytes_arrive_with_the_original_envelope(upstream: Any) -> None:
    assert releaser_to(upstream).release(RAW, "app@example.com", ["user@example.com"]) is None
    [message] = upstream.server.wait_for(1)
    assert message.mailfrom == "app@example.com"
    assert message.rcpttos == ["user@example.com"]
    # process_message() joins lines with \n: the message is the same, line for line, dot included.
    assert message.data == RAW.replace(b"\r\n", b"\n")


def test_recipients_override(upstream: Any) -> None:
    assert releaser_to(upstream).release(RAW, "app@example.com", ["qa@example.net", "dev@example.net"]) is None
    assert upstream.server.wait_for(1)[0].rcpttos == ["qa@example.net", "dev@example.net"]


def test_upstream_refusal_is_its_reply(upstream: Any) -> None:
    upstream.server.reply = "554 5.7.1 Not today"
    assert releaser_to(upstream).release(RAW, "app@example.com", ["user@example.com"]) == "554 5.7.1 Not today"
    assert upstream.server.messages == []


def test_unreachable_upstream_is_451() -> None:
    with Controller(RecordingServer) as gone:
        address = gone.address
    reply = release.Releaser(_options.make({}), address, timeout=5).release(RAW, "a@example.com", ["b@example.com"])
    assert reply is not None and reply.startswith("451 ")


def test_smtputf8_asked_for_non_ascii_recipients() -> None:
    with Controller(RecordingServer, enable_SMTPUTF8=True) as upstream:
        assert releaser_to(upstream).release(RAW, "app@example.com", ["jörg@example.de"]) is None
        [message] = upstream.server.wait_for(1)
        assert message.rcpttos == ["jörg@example.de"] and "SMTPUTF8" in message.mail_options


def test_over_starttls_with_auth(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    def check(server: Any, channel: Any, mechanism: str, login: str, password: str) -> bool:
        return (login, password) == (USER, PASSWORD)

    with Controller(RecordingServer, tls_context=server_context, require_starttls=True, authenticator=check,
                    auth_required=True) as upstream:
        releaser = releaser_to(upstream, relay_tls="starttls", relay_tls_context=client_context,
                               relay_auth=(USER, PASSWORD))
        assert releaser.release(RAW, "app@example.com", ["user@example.com"]) is None
        assert upstream.server.wait_for(1)[0].data == RAW.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("value, expected", [
    ("smtp.example.com:587", ("smtp.example.com", 587)),
    ("[::1]:25", ("::1", 25)),
    (("127.0.0.1", 2525), ("127.0.0.1", 2525)),
])
def test_parse_address(value: Any, expected: Any) -> None:
    assert release.parse_address(value) == expected


@pytest.mark.parametrize("value", ["smtp.example.com", ":25", "host:port", "host:0", "host:70000", ("h", "25"), 25])
def test_parse_address_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        release.parse_address(value)


def test_recipients_of() -> None:
    envelope = {"RcptTos": ["a@example.com"]}
    assert release.recipients_of(None, envelope) == ["a@example.com"]
    assert release.recipients_of({}, envelope) == ["a@example.com"]
    assert release.recipients_of({"To": None}, envelope) == ["a@example.com"]
    assert release.recipients_of({"To": [" b@example.com"]}, envelope) == ["b@example.com"]
    for body in ({"To": []}, {"To": "b@example.com"}, {"To": ["b@example.com>\r\nRSET"]}, {"To": ["<b@x>"]},
                 {"To": ["nobody"]}, {"Cc": ["b@x"]}, [1]):
        with pytest.raises(ValueError):
            release.recipients_of(body, envelope)


# -- CatcherServer: POST /api/v1/message/{ID}/release -----------------------------------------


def captured(controller: Any, rcpttos: Any = ("user@example.com",)) -> str:
    """Send RAW to the catcher over SMTP; its ID."""
    with smtplib.SMTP(*controller.address, timeout=10) as client:
        client.sendmail("app@example.com", list(rcpttos), RAW)
    status, listing = api(controller.server, "GET", "/api/v1/messages")
    assert status == 200 and listing["count"] >= 1
    ident: str = listing["messages"][0]["ID"]
    return ident


def test_api_release_to_the_original_recipients(upstream: Any) -> None:
    with Controller(CatcherServer, web=("127.0.0.1", 0), release_to=upstream.address) as catcher:
        assert api(catcher.server, "GET", "/api/v1/info")[1]["Release"] is True
        ident = captured(catcher, ["user@example.com", "other@example.com"])
        assert api(catcher.server, "POST", "/api/v1/message/%s/release" % ident) == (200, "ok")
        [message] = upstream.server.wait_for(1)
        assert message.mailfrom == "app@example.com"
        assert message.rcpttos == ["user@example.com", "other@example.com"]
        # What the catcher kept (process_message()'s data: smtpd's, without the last line end), nothing added.
        assert message.data.decode() == api(catcher.server, "GET", "/api/v1/message/%s/raw" % ident)[1]
        assert message.data == RAW.replace(b"\r\n", b"\n")[:-1]


def test_api_release_to_other_recipients(upstream: Any) -> None:
    with Controller(CatcherServer, web=("127.0.0.1", 0), release_to="%s:%d" % upstream.address) as catcher:
        captured(catcher)
        # Mailpit's alias for the newest message works here too.
        assert api(catcher.server, "POST", "/api/v1/message/latest/release", {"To": ["qa@example.net"]}) == (200, "ok")
        assert upstream.server.wait_for(1)[0].rcpttos == ["qa@example.net"]


def test_api_release_refused_upstream_is_502(upstream: Any) -> None:
    upstream.server.reply = "554 5.7.1 Relaying denied"
    with Controller(CatcherServer, web=("127.0.0.1", 0), release_to=upstream.address) as catcher:
        ident = captured(catcher)
        assert api(catcher.server, "POST", "/api/v1/message/%s/release" % ident, {"To": ["x@example.net"]}) == (
            502, {"Error": "554 5.7.1 Relaying denied"})


def test_api_release_errors(upstream: Any) -> None:
    with Controller(CatcherServer, web=("127.0.0.1", 0)) as catcher:
        ident = captured(catcher)
        status, answer = api(catcher.server, "POST", "/api/v1/message/%s/release" % ident)
        assert status == 409 and "--release-to" in answer["Error"]
        assert api(catcher.server, "GET", "/api/v1/info")[1]["Release"] is False
    with Controller(CatcherServer, web=("127.0.0.1", 0), release_to=upstream.address) as catcher:
        ident = captured(catcher)
        assert api(catcher.server, "POST", "/api/v1/message/nosuchid/release")[0] == 404
        status, answer = api(catcher.server, "POST", "/api/v1/message/%s/release" % ident, {"To": "x@example.net"})
        assert status == 400 and "list" in answer["Error"]
        status, answer = api(catcher.server, "POST", "/api/v1/message/%s/release" % ident, {"To": ["a@b>\r\nRSET"]})
        assert status == 400
    assert upstream.server.messages == []


def test_command_line_release(upstream: Any, tmp_path: Any) -> None:
    from smtpd_compat._cli import make_server
    from smtpd_compat._cli_args import UsageError, parse_args

    base = ["-n", "-c", "CatcherServer", "--web", "127.0.0.1:0"]
    server = make_server(parse_args(base + ["--release-to", "%s:%d" % upstream.address, "127.0.0.1:0"]))
    try:
        assert server.release_to == upstream.address
    finally:
        server.close()
    login = tmp_path / "login"
    login.write_text("user:secret\n")
    login.chmod(0o600)
    server = make_server(parse_args(base + ["--release-to", "mail.example:587", "--relay-tls", "starttls",
                                            "--relay-auth-file", str(login), "127.0.0.1:0"]))
    try:
        assert server.release_to == ("mail.example", 587)
        assert server.relay_tls == "starttls" and server.relay_auth == ("user", "secret")
    finally:
        server.close()
    with pytest.raises(UsageError, match="--relay-tls applies to -c PureProxy"):
        make_server(parse_args(base + ["--relay-tls", "starttls", "127.0.0.1:0"]))
    with pytest.raises(UsageError, match="--release-to applies to -c CatcherServer"):
        make_server(parse_args(["-n", "-c", "RecordingServer", "--release-to", "a:25", "127.0.0.1:0"]))
    with pytest.raises(UsageError, match="--release-to"):
        make_server(parse_args(base + ["--release-to", "nohost", "127.0.0.1:0"]))
