"""The opt-in extensions together: every combination of the options that
give a session a class of its own (``_extensions.session_class``: LMTP,
CHUNKING, the spool of big messages, ENHANCEDSTATUSCODES, DSN) and of
PIPELINING announces each chosen
keyword and runs a whole transaction with each extension's parameters and
commands, on a real loopback socket."""

from __future__ import annotations

import itertools
from typing import Any, Dict

import pytest

from smtpd_compat import _chunking, _extensions, _lmtp, _session
from smtpd_compat._state import Features

from conftest import GREETING, RawClient

OPTIONS = ("lmtp", "chunking", "enhanced_status_codes", "dsn", "pipelining")
KEYWORDS = {"chunking": b"CHUNKING", "enhanced_status_codes": b"ENHANCEDSTATUSCODES", "dsn": b"DSN", "pipelining": b"PIPELINING"}
# spool_threshold=0: every message goes through the spool (None: smtpd's way).
COMBINATIONS = [
    dict(zip(OPTIONS, values), spool_threshold=spool)
    for values in itertools.product((False, True), repeat=len(OPTIONS))
    for spool in (None, 0)
]


def _name(options: Dict[str, Any]) -> str:
    return "+".join(name for name, on in options.items() if on is not None and on is not False) or "none"


@pytest.mark.parametrize("options", COMBINATIONS, ids=_name)
def test_a_transaction_with_every_combination(server_factory: Any, options: Dict[str, Any]) -> None:
    st = server_factory(**options)
    lmtp = options["lmtp"]
    # RFC 2033 section 5: an LMTP server has these two whatever was asked.
    offered = dict(options, pipelining=options["pipelining"] or lmtp, enhanced_status_codes=options["enhanced_status_codes"] or lmtp)
    enhanced = offered["enhanced_status_codes"]
    recipients = 2 if lmtp else 1  # LMTP answers the message once per recipient
    with RawClient(st.address) as client:
        assert client.read_reply() == GREETING
        ehlo = client.command(b"LHLO client.example" if lmtp else b"EHLO client.example")
        for name, keyword in KEYWORDS.items():
            assert (b"250-" + keyword + b"\r\n" in ehlo or b"250 " + keyword + b"\r\n" in ehlo) is offered[name], name
        mail = b"MAIL FROM:<a@example.com>" + (b" RET=HDRS ENVID=id+2B1" if options["dsn"] else b"")
        rcpt = b"RCPT TO:<b@example.com>" + (b" NOTIFY=SUCCESS ORCPT=rfc822;b@example.com" if options["dsn"] else b"")
        assert client.command(mail) == (b"250 2.1.0 OK\r\n" if enhanced else b"250 OK\r\n")
        for _ in range(recipients):
            assert client.command(rcpt) == (b"250 2.1.5 OK\r\n" if enhanced else b"250 OK\r\n")
        if options["chunking"]:
            body = b"Subject: hi\r\n\r\nbinary \x00 body\r\n"
            client.send(b"BDAT %d LAST\r\n" % len(body) + body)
            expected = body
        else:
            assert client.command(b"DATA").startswith(b"354 ")
            client.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
            expected = b"Subject: hi\n\nbody"
        for _ in range(recipients):
            assert client.read_reply() == (b"250 2.0.0 OK\r\n" if enhanced else b"250 OK\r\n")
    (message,) = st.server.wait_for(1)
    assert message.data == expected
    if options["dsn"]:
        dsn = message.kwargs["dsn"]
        assert (dsn.ret, dsn.envid) == ("HDRS", "id+1")
        assert [recipient.notify for recipient in dsn.recipients] == [("SUCCESS",)] * recipients
    else:
        assert "dsn" not in message.kwargs


def test_one_class_per_combination() -> None:
    """A combination's class is made once, and has each option's class
    among its bases; a single option's is that option's own class."""
    chosen = Features(chunking=True, enhanced_status_codes=True, dsn=True)
    cls = _extensions.session_class(chosen)
    assert cls is _extensions.session_class(Features(chunking=True, enhanced_status_codes=True, dsn=True))
    assert issubclass(cls, _extensions.EnhancedSession) and issubclass(cls, _extensions.DSNSession)
    assert _extensions.session_class(Features(dsn=True)) is _extensions.DSNSession
    assert _extensions.session_class(Features()) is _session.Session
    lmtp = _extensions.session_class(Features(lmtp=True, chunking=True, enhanced_status_codes=True))
    assert lmtp.__mro__[1:3] == (_lmtp.LMTPSession, _chunking.ChunkingSession)
