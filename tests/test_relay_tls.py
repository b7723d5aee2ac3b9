"""PureProxy relaying to its upstream server over STARTTLS or SMTPS, with AUTH.

The upstream server is this package's own server (TLS and AUTH required) in
a loop thread; the proxy is configured from Python and from the command
line.  Failures to secure the upstream session are temporary (451) for the
client, and the upstream password never reaches the log.
"""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
from typing import Any

import pytest

from smtpd_compat import smtpd

from conftest import TIMEOUT
from tls_helpers import (  # noqa: F401  (fixtures)
    PASSWORD,
    USER,
    cli_server,
    client_context,
    server_context,
    tls_files,
)

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: relayed\r\n\r\nline one\r\n.dot line\r\n"


def _proxy_to(upstream: Any) -> type:
    class Proxy(smtpd.PureProxy):
        def __init__(self, localaddr: Any, remoteaddr: Any, **kwargs: Any) -> None:
            super().__init__(localaddr, upstream.address, **kwargs)

    return Proxy


def _upstream_check(server: Any, channel: Any, mechanism: str, login: str, password: str) -> bool:
    return (login, password) == (USER, PASSWORD)


@pytest.mark.parametrize("mode", ["starttls", "smtps"])
def test_pureproxy_relays_over_tls_with_auth(mode: str, server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    tls = {"tls_context": server_context} if mode == "starttls" else {"implicit_tls_context": server_context}
    upstream = server_factory(authenticator=_upstream_check, auth_required=True, require_starttls=(mode == "starttls"), **tls)
    proxy = server_factory(_proxy_to(upstream), relay_tls=mode, relay_tls_context=client_context, relay_auth=(USER, PASSWORD))
    with smtplib.SMTP(*proxy.address, timeout=TIMEOUT) as client:
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    [message] = upstream.server.wait_for(1)
    assert message.kwargs["auth_login"] == USER
    assert message.rcpttos == ["b@example.com"]
    assert message.data.startswith(b"From: a@example.com\n") and b"X-Peer: 127.0.0.1\n" in message.data


@pytest.mark.parametrize(
    "upstream_options, proxy_options",
    [
        # wrong upstream password
        ({"tls": True, "authenticator": _upstream_check}, {"relay_tls": "starttls", "relay_auth": (USER, "wrong-pass-3141")}),
        # the upstream server does not offer STARTTLS
        ({}, {"relay_tls": "starttls"}),
        # the upstream server does not offer AUTH
        ({"tls": True}, {"relay_tls": "starttls", "relay_auth": (USER, PASSWORD)}),
        # its certificate is not trusted (system CAs only)
        ({"tls": True}, {"relay_tls": "starttls", "relay_tls_context": None}),
    ],
    ids=["wrong-password", "no-starttls", "no-auth", "untrusted-certificate"],
)
def test_pureproxy_upstream_security_failures_are_temporary(upstream_options: dict, proxy_options: dict, server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext, caplog: Any) -> None:
    upstream_options = dict(upstream_options)
    if upstream_options.pop("tls", False):
        upstream_options["tls_context"] = server_context
    upstream = server_factory(**upstream_options)
    proxy_options = dict({"relay_tls_context": client_context}, **proxy_options)
    proxy = server_factory(_proxy_to(upstream), **proxy_options)
    with caplog.at_level(logging.WARNING, logger="smtpd_compat"):
        with smtplib.SMTP(*proxy.address, timeout=TIMEOUT) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    # The client keeps the message and retries later; nothing was relayed.
    assert info.value.smtp_code == 451
    assert upstream.call(lambda: upstream.server.messages) == []
    assert "relay to" in caplog.text
    assert PASSWORD not in caplog.text and "wrong-pass-3141" not in caplog.text


def test_pureproxy_relay_option_errors() -> None:
    with pytest.raises(ValueError, match="in clear"):
        smtpd.PureProxy(("127.0.0.1", 0), ("127.0.0.1", 25), relay_auth=(USER, PASSWORD), map={})
    with pytest.raises(ValueError, match="relay_tls"):
        smtpd.PureProxy(("127.0.0.1", 0), ("127.0.0.1", 25), relay_tls="tls", map={})


def test_cli_pureproxy_relays_over_starttls_with_auth(cli_server: Any, server_factory: Any, server_context: ssl.SSLContext, tls_files: Any, tmp_path: Any) -> None:
    upstream = server_factory(tls_context=server_context, authenticator=_upstream_check, auth_required=True)
    credentials = tmp_path / "upstream-credentials"
    credentials.write_text("%s:%s\n" % (USER, PASSWORD), encoding="utf-8")
    os.chmod(credentials, 0o600)
    proxy = cli_server(
        "-d", "--relay-tls", "starttls", "--relay-cafile", tls_files.cert, "--relay-auth-file", str(credentials),
        cls="tls_helpers.AnnouncingProxy", remote="127.0.0.1:%d" % upstream.port,
    )
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=TIMEOUT) as client:
        assert client.sendmail("a@example.com", ["b@example.com"], MESSAGE) == {}
    [message] = upstream.server.wait_for(1)
    assert message.kwargs["auth_login"] == USER
    assert PASSWORD not in proxy.stop()
