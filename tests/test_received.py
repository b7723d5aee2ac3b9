"""The Received: header of ``add_received_header=True`` (RFC 5321 4.4).

The pure builder (``_received.build``) first: each ``with`` value, the TLS
comment, one recipient or several, folding, the date; then on loopback
sockets with smtplib: what process_message gets (bytes and str, SMTPUTF8, a
deferred reply), MailboxServer's Maildir, PureProxy's upstream, STARTTLS and
AUTH, the command line flag, and the defaults left alone.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import email
import email.policy
import email.utils
import smtplib
import ssl
import time
from pathlib import Path
from typing import Any, Iterator, List, Optional

import pytest
from test_auth import check
from test_cli import served, start  # noqa: F401  (served: a fixture)
from test_servers import read_maildir, split_headers

from smtpd_compat import Controller, MailboxServer, RecordingServer, __version__, _globals, smtpd
from smtpd_compat import _received as R

from conftest import TIMEOUT, RecordingSMTPServer
from tls_helpers import PASSWORD, USER, client_context, server_context, tls_files  # noqa: F401  (fixtures)

UTC = datetime.timezone.utc
MESSAGE = b"Subject: hi\r\nFrom: a@example.com\r\n\r\nbody\r\n"


def build(**kwargs: Any) -> str:
    facts = dict(helo="client.example", peer="[127.0.0.1]", by="mx.example.org", version="1.2.3",
                 with_="ESMTP", recipients=["bob@example.com"], now=0.0, tz=UTC)
    facts.update(kwargs)
    return R.build(**facts)  # type: ignore[arg-type]


def unfolded(header: str) -> str:
    assert header.endswith("\n") and "\r" not in header
    return header[:-1].replace("\n\t", " ")


# -- the pure builder ------------------------------------------------------------------
@pytest.mark.parametrize("extended, tls, auth, utf8, expected", [
    (False, False, False, False, "SMTP"),
    (True, False, False, False, "ESMTP"),
    (True, True, False, False, "ESMTPS"),
    (True, False, True, False, "ESMTPA"),
    (True, True, True, False, "ESMTPSA"),
    (False, True, True, False, "ESMTPSA"),  # TLS and AUTH are ESMTP's, even after HELO
    (True, False, False, True, "UTF8SMTP"),
    (True, True, False, True, "UTF8SMTPS"),
    (True, False, True, True, "UTF8SMTPA"),
    (True, True, True, True, "UTF8SMTPSA"),
])
def test_protocol(extended: bool, tls: bool, auth: bool, utf8: bool, expected: str) -> None:
    assert R.protocol(extended, tls, auth, utf8) == expected
    assert " with %s;" % expected in unfolded(build(with_=expected, recipients=[]))


def test_a_plain_header() -> None:
    header = build()
    assert header == ("Received: from client.example ([127.0.0.1])\n"
                      "\tby mx.example.org (smtpd_compat 1.2.3) with ESMTP for <bob@example.com>;\n"
                      "\tThu, 01 Jan 1970 00:00:00 +0000\n")


def test_tls_comment_comes_after_from() -> None:
    text = unfolded(build(tls=("TLSv1.3", "TLS_AES_256_GCM_SHA384"), with_="ESMTPS"))
    assert text.startswith("Received: from client.example ([127.0.0.1]) "
                           "(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384) by mx.example.org ")
    assert "using" not in unfolded(build())


def test_for_only_with_one_recipient() -> None:
    assert " for <bob@example.com>;" in unfolded(build(recipients=["bob@example.com"]))
    for recipients in ([], ["a@example.com", "b@example.com"]):
        text = unfolded(build(recipients=recipients))
        assert " for " not in text and "example.com" not in text.replace("mx.example.org", "")
        assert " with ESMTP; Thu, 01 Jan 1970" in text


@pytest.fixture
def kolkata(monkeypatch: Any) -> Iterator[None]:
    """The local time zone is UTC+05:30 (where time.tzset() exists)."""
    if not hasattr(time, "tzset"):
        pytest.skip("no time.tzset()")
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_date_parses_and_is_local_time_by_default(kolkata: None) -> None:
    header = build(now=1e9, tz=None)
    date = unfolded(header).rsplit(";", 1)[1].strip()
    parsed = email.utils.parsedate_to_datetime(date)
    assert parsed.timestamp() == 1e9
    assert date.endswith(" +0530")
    fixed = email.utils.parsedate_to_datetime(unfolded(build(now=1e9, tz=datetime.timezone(datetime.timedelta(hours=2)))).rsplit(";", 1)[1])
    assert fixed.utcoffset() == datetime.timedelta(hours=2) and fixed.timestamp() == 1e9


@pytest.mark.parametrize("kwargs", [
    {},
    {"tls": ("TLSv1.3", "TLS_AES_256_GCM_SHA384"), "with_": "ESMTPSA"},
    {"by": "a-very-long-host-name.with.many.labels.example.internal.corp.example.net"},
    {"helo": "a-very-long-client-name.with.many.labels.example.internal.corp", "peer": "[IPv6:2001:db8::1]"},
    {"helo": "not a domain " * 12},
])
def test_folded_under_78(kwargs: Any) -> None:
    header = build(**kwargs)
    lines = header[:-1].split("\n")
    assert all(len(line) <= R.MAX_LINE for line in lines), lines
    assert all(line.startswith("\t") and line.strip() for line in lines[1:])
    parsed = email.message_from_string(header + "\n", policy=email.policy.default)
    assert parsed["Received"] is not None
    # The clauses survive folding: nothing but whitespace changed.
    assert unfolded(header).split() == unfolded(header.replace("\n\t", " ")).split()


def test_a_word_longer_than_a_line_stays_whole() -> None:
    address = "x" * 90 + "@example.com"
    lines = build(recipients=[address])[:-1].split("\n")
    assert "\tfor <%s>;" % address in lines


@pytest.mark.parametrize("helo, shown", [
    ("", "from [127.0.0.1] by"),
    ("bad name (x) \\y", "from [127.0.0.1] (helo=bad name \\(x\\) \\\\y) by"),
    ("x\nBcc: evil@example.com", "from [127.0.0.1] (helo=x?Bcc: evil@example.com) by"),
    ("h\u00f6st.example", "from [127.0.0.1] (helo=h?st.example) by"),
    ("[192.0.2.7]", "from [192.0.2.7] ([127.0.0.1]) by"),
    ("my_host", "from [127.0.0.1] (helo=my_host) by"),
])
def test_helo_that_is_not_a_domain_goes_in_a_comment(helo: str, shown: str) -> None:
    header = build(helo=helo)
    assert shown in unfolded(header)
    assert header.isascii() and header.count("\n") == header.count("\n\t") + 1


def test_utf8_names_with_smtputf8() -> None:
    header = build(helo="h\u00f6st.example", recipients=["\u00e5sa@example.com"], utf8=True, with_="UTF8SMTP")
    assert unfolded(header).startswith("Received: from h\u00f6st.example ([127.0.0.1]) by")
    assert " for <\u00e5sa@example.com>;" in unfolded(header)
    # C1 controls (NEL) are not letters, and are never shown.
    header = build(helo="a\u0085b.example", recipients=["x\u0085y@example.com"], utf8=True, with_="UTF8SMTP")
    assert "(helo=a?b.example)" in header and " for " not in header and "\u0085" not in header
    # Without SMTPUTF8 the header stays ASCII: the address is left out.
    assert " for " not in build(recipients=["\u00e5sa@example.com"])


@pytest.mark.parametrize("peer, literal", [
    (("127.0.0.1", 25), "[127.0.0.1]"),
    (("::1", 25, 0, 0), "[IPv6:::1]"),
    (("::ffff:192.0.2.1", 25, 0, 0), "[192.0.2.1]"),
    (("fe80::1%eth0", 25, 0, 2), "[IPv6:fe80::1]"),
    ("/run/smtp.sock", None),
    ((), None),
    (None, None),
])
def test_address_literal(peer: Any, literal: Optional[str]) -> None:
    assert R.address_literal(peer) == literal


# -- on the wire -------------------------------------------------------------------------
def received(data: Any) -> List[str]:
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [str(value) for value in message.get_all("Received", [])]


def test_defaults_leave_the_message_alone(server_factory: Any) -> None:
    st = server_factory()
    assert st.server.add_received_header is False
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    [message] = st.server.wait_for(1)
    assert message.data == MESSAGE.replace(b"\r\n", b"\n")[:-1]


@pytest.mark.parametrize("decode_data", [False, True])
def test_process_message_gets_the_header_first(server_factory: Any, decode_data: bool) -> None:
    st = server_factory(add_received_header=True, decode_data=decode_data)
    assert st.server.add_received_header is True
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        assert client.helo("old.example")[0] == 250
        client.sendmail("a@example.com", ["c@example.com", "d@example.com"], MESSAGE)
    first, second = st.server.wait_for(2)
    for message in (first, second):
        assert isinstance(message.data, str if decode_data else bytes)
    data = first.data if decode_data else first.data.decode("ascii")
    header, rest = data.split(";", 1)
    assert header.replace("\n\t", " ") == (
        "Received: from client.example ([127.0.0.1]) by %s (smtpd_compat %s) with ESMTP for <b@example.com>"
        % (_globals.fqdn(), __version__))
    date, body = rest.split("\n", 1)
    assert email.utils.parsedate_to_datetime(date.strip()).tzinfo is not None
    assert body == MESSAGE.decode().replace("\r\n", "\n")[:-1]  # the message follows, as smtpd gives it
    [value] = received(second.data)
    assert value.startswith("from old.example ([127.0.0.1])") and " with SMTP;" in value.replace("\n\t", " ")
    assert " for " not in value


def test_smtputf8_transaction(server_factory: Any) -> None:
    st = server_factory(add_received_header=True, enable_SMTPUTF8=True)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        client.sendmail("j\u00f6rg@example.com", ["\u00e5sa@example.com"], MESSAGE, mail_options=["SMTPUTF8"])
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    utf8, ascii_ = st.server.wait_for(2)
    text = utf8.data.decode("utf-8")
    assert " with UTF8SMTP for <\u00e5sa@example.com>;" in text.split("\n\n")[0].replace("\n\t", " ")
    assert b" with ESMTP for <b@example.com>;" in ascii_.data.replace(b"\n\t", b" ")


class _Deferring(RecordingSMTPServer):
    def process_message(self, *args: Any, **kwargs: Any) -> Any:
        super().process_message(*args, **kwargs)
        future: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        future.set_result("250 Queued")
        return future


def test_deferred_reply(server_factory: Any) -> None:
    st = server_factory(_Deferring, add_received_header=True)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        client.sendmail("a@example.com", ["c@example.com"], MESSAGE)
    first, second = st.server.wait_for(2)
    assert " for <b@example.com>;" in received(first.data)[0].replace("\n\t", " ")
    assert " for <c@example.com>;" in received(second.data)[0].replace("\n\t", " ")


def test_starttls_and_auth(server_factory: Any, server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    st = server_factory(tls_context=server_context, authenticator=check, add_received_header=True)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.starttls(context=client_context)
        client.ehlo("client.example")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        client.login(USER, PASSWORD)
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
        version, cipher = client.sock.version(), client.sock.cipher()[0]  # type: ignore[union-attr]
    tls_only, both = (received(m.data)[0].replace("\n\t", " ") for m in st.server.wait_for(2))
    comment = "from client.example ([127.0.0.1]) (using %s with cipher %s) by " % (version, cipher)
    assert tls_only.startswith(comment) and " with ESMTPS for <b@example.com>;" in tls_only
    assert both.startswith(comment) and " with ESMTPSA for <b@example.com>;" in both


def test_maildir(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    with Controller(MailboxServer, maildir=maildir, add_received_header=True) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            client.ehlo("client.example")
            client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    [stored] = read_maildir(maildir)
    headers, body = split_headers(stored)
    # MailboxServer's own delivery headers, then the message as handed to
    # process_message: the Received header first.
    assert [h.split(b":")[0] for h in headers[:4]] == [b"Return-Path", b"X-Peer", b"X-RcptTo", b"Received"]
    message = email.message_from_bytes(stored, policy=email.policy.default)
    assert [str(v).startswith("from client.example ([127.0.0.1])") for v in message.get_all("Received")] == [True]
    assert body == b"body"


def test_pure_proxy_relays_one_header(server_factory: Any) -> None:
    upstream = server_factory(RecordingServer)
    proxy = server_factory(lambda local, _remote, **kw: smtpd.PureProxy(local, upstream.address, **kw), add_received_header=True)
    with smtplib.SMTP(*proxy.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    [record] = upstream.server.wait_for(1)
    values = record.message.get_all("Received")
    assert len(values) == 1 and str(values[0]).startswith("from client.example ([127.0.0.1])")
    assert record.data.startswith(b"Received: from client.example ([127.0.0.1])")


def test_option_is_a_bool() -> None:
    with pytest.raises(TypeError, match="add_received_header"):
        smtpd.SMTPServer(("127.0.0.1", 0), None, map={}, add_received_header=1)


def test_command_line_flag(tmp_path: Path, served: Any) -> None:  # noqa: F811
    maildir = tmp_path / "mail"
    server = start("-c", "MailboxServer", "--maildir", str(maildir), "--add-received-header")
    served.append(server)
    with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
        client.ehlo("client.example")
        client.sendmail("a@example.com", ["b@example.com"], MESSAGE)
    server.stop()
    [stored] = read_maildir(maildir)
    message = email.message_from_bytes(stored, policy=email.policy.default)
    assert str(message["Received"]).startswith("from client.example ([127.0.0.1])")
