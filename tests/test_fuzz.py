"""Any input gets replies or a clean close, never an exception.

Random sequences of SMTP-like pieces (commands, parameters, dots, bare CR
and LF, non-UTF-8 bytes, over-long lines) are sent to a real server over
loopback.  Invariants, whatever the input:

* every reply line is ``NNN`` + space or dash + text + CRLF;
* after the input, ``<CRLF>.<CRLF>QUIT<CRLF>`` ends the session with
  ``221 Bye`` and the server closes the connection;
* nothing reaches ``handle_error()`` or is logged at ERROR level, and the
  server loop stays up.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Dict, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RawClient, RecordingSMTPServer, ServerThread

CONFIGS = {
    "default": {},
    "smtputf8": {"enable_SMTPUTF8": True, "data_size_limit": 200},
    "decode": {"decode_data": True, "data_size_limit": 0},
}


class ErrorCollector(logging.Handler):
    """Keeps ERROR records of the library's logger, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: List[logging.LogRecord] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock_:
            self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[ErrorCollector]:
    handler = ErrorCollector()
    logger = logging.getLogger("smtpd_compat")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def fuzz_servers(errors: ErrorCollector) -> Iterator[Dict[str, ServerThread]]:
    servers = {name: ServerThread(RecordingSMTPServer, **kwargs) for name, kwargs in CONFIGS.items()}
    yield servers
    for st_ in servers.values():
        st_.stop()


EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""])
WORDS = st.sampled_from([
    b"HELO x", b"EHLO x", b"helo", b"EHLO", b"MAIL FROM:<a@b>", b"MAIL FROM:<>", b"MAIL FROM:", b"mail from:<a@b> SIZE=10",
    b"MAIL FROM:<a@b> SIZE=99999999", b"MAIL FROM:<a@b> BODY=8BITMIME", b"MAIL FROM:<a@b> BODY=x",
    b"MAIL FROM:<a@b> SMTPUTF8", b"MAIL FROM:<a@b> SMTPUTF8=x", b"MAIL FROM:<j\xc3\xb6@b> SMTPUTF8",
    b"MAIL FROM:<@>", b"MAIL FROM:<a@b", b"RCPT TO:<c@d>", b"RCPT TO:<c@d> X=1", b"RCPT TO:", b"RCPT",
    b"DATA", b"DATA x", b"RSET", b"NOOP", b"NOOP x", b"HELP", b"HELP MAIL", b"HELP x", b"VRFY", b"VRFY <a@b>",
    b'VRFY "', b"EXPN x", b"AUTH PLAIN", b"STARTTLS", b".", b"..", b"...x", b"", b" ", b"\x00", b"\xff\xfe",
    b"N\xc3\x96\xc3\x96P", b"x" * 600, b"MAIL FROM:<" + b"a" * 520 + b"@b>", b"\xc3" + b"\xa9" * 3,
])
PIECES = st.one_of(WORDS, st.binary(max_size=12), st.text(max_size=8).map(lambda t: t.encode("utf-8")))
LINES = st.lists(st.tuples(PIECES, EOL).map(b"".join), max_size=25).map(b"".join)

REPLY_LINE = re.compile(rb"^[2-5]\d\d[ -][^\r\n]*\r\n")


def check_replies(data: bytes) -> List[bytes]:
    lines = []
    rest = data
    while rest:
        m = REPLY_LINE.match(rest)
        assert m, "malformed reply at %r" % rest[:80]
        lines.append(m.group(0))
        rest = rest[m.end():]
    return lines


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.sampled_from(sorted(CONFIGS)), payload=LINES, pieces=st.integers(min_value=1, max_value=4))
def test_any_input_gets_replies_and_a_clean_close(
    fuzz_servers: Dict[str, ServerThread], errors: ErrorCollector, config: str, payload: bytes, pieces: int
) -> None:
    st_ = fuzz_servers[config]
    data = payload + b"\r\n.\r\nQUIT\r\n"
    with RawClient(st_.address) as client:
        step = max(1, len(data) // pieces)
        for i in range(0, len(data), step):
            client.send(data[i : i + step])
        output = client.read_until_closed()
    lines = check_replies(output)
    assert lines[0].startswith(b"220 ")
    assert lines[-1] == b"221 Bye\r\n"
    assert not errors.records, [r.getMessage() for r in errors.records]
    assert st_.error is None
