"""SMTP transcripts: exact client bytes in, exact server reply bytes out.

Each transcript is a list of steps ``(client bytes, expected reply bytes)``
played over a real loopback connection to a server running in a thread.
A ``QUIT`` step is added when the transcript does not end with one, so the
whole server output up to the close is compared byte for byte.  Each
transcript runs four ways:

* ``whole``: all client bytes in one ``send()`` (pipelined);
* ``bytewise``: one byte per ``send()``, each read by the server on its own;
* ``lockstep``: each step sent after the reply to the previous one was read,
  as an interactive client does;
* ``trailing``: like ``whole``, with commands after ``QUIT`` in the same
  send, which the server must ignore.

The expected replies are CPython 3.11 smtpd's.  Transcripts marked
``cpython=False`` show a deliberate difference (see docs/differences.md).
Where the interpreter still ships smtpd (3.9-3.11), every other transcript is
also played against CPython's own smtpd and asyncore, so the table itself is
checked against the original.

The second half runs ``smtplib`` end to end against the server.
"""

from __future__ import annotations

import smtplib
import socket
import threading
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FQDN, GREETING, TIMEOUT, RawClient, RecordingSMTPServer, ServerThread, has_ipv6, stdlib_modules

F = FQDN.encode("ascii")

# -- server configurations -------------------------------------------------------------
CONFIGS: Dict[str, Dict[str, Any]] = {
    "default": {},
    "smtputf8": {"enable_SMTPUTF8": True},
    "decode": {"decode_data": True},
    "small": {"data_size_limit": 100},
    "nolimit": {"data_size_limit": 0},
}


class Transcript(NamedTuple):
    name: str
    steps: List[Tuple[bytes, bytes]]
    config: str = "default"
    # (mailfrom, rcpttos, data) of each message process_message receives.
    messages: Tuple[Tuple[str, List[str], Any], ...] = ()
    # False when the reply bytes deliberately differ from CPython 3.11's.
    cpython: bool = True


def step(client: Any, *replies: Any) -> Tuple[bytes, bytes]:
    """One step: client text (CRLF added to each line of a list) and the
    expected reply lines (CRLF added to each)."""

    def b(x: Any) -> bytes:
        return x if isinstance(x, bytes) else x.encode("utf-8")

    if isinstance(client, list):
        data = b"".join(b(line) + b"\r\n" for line in client)
    else:
        data = b(client) + b"\r\n"
    reply = b"".join(b(r).replace(b"{fqdn}", F) + b"\r\n" for r in replies)
    return data, reply


EHLO = step("EHLO client.example", "250-{fqdn}", "250-SIZE 33554432", "250-8BITMIME", "250 HELP")
HELO = step("HELO client.example", "250 {fqdn}")
MAIL = step("MAIL FROM:<sender@example.org>", "250 OK")
RCPT = step("RCPT TO:<rcpt@example.org>", "250 OK")
DATA = step("DATA", "354 End data with <CR><LF>.<CR><LF>")
QUIT = step("QUIT", "221 Bye")
OK = "250 OK"
SYNTAX_MAIL = "501 Syntax: MAIL FROM: <address>"
SYNTAX_MAIL_E = "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
SYNTAX_RCPT = "501 Syntax: RCPT TO: <address>"
SYNTAX_RCPT_E = "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]"
SUPPORTED = "Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
SENDER, RCPTS = "sender@example.org", ["rcpt@example.org"]

TRANSCRIPTS = [
    # -- greetings --------------------------------------------------------------------
    Transcript("helo", [HELO]),
    Transcript("helo-lowercase", [step("helo client.example", "250 {fqdn}")]),
    Transcript("helo-no-arg", [step("HELO", "501 Syntax: HELO hostname"), step("HELO ", "501 Syntax: HELO hostname")]),
    Transcript("helo-twice", [HELO, step("HELO other", "503 Duplicate HELO/EHLO"), step("EHLO other", "503 Duplicate HELO/EHLO")]),
    Transcript("ehlo", [EHLO]),
    Transcript("ehlo-lowercase", [step("ehlo x", "250-{fqdn}", "250-SIZE 33554432", "250-8BITMIME", "250 HELP")]),
    Transcript("ehlo-no-arg", [step("EHLO", "501 Syntax: EHLO hostname")]),
    Transcript("ehlo-twice", [EHLO, step("EHLO x", "503 Duplicate HELO/EHLO"), step("HELO x", "503 Duplicate HELO/EHLO")]),
    Transcript(
        "ehlo-smtputf8",
        [step("EHLO x", "250-{fqdn}", "250-SIZE 33554432", "250-8BITMIME", "250-SMTPUTF8", "250 HELP")],
        config="smtputf8",
    ),
    Transcript("ehlo-decode-data", [step("EHLO x", "250-{fqdn}", "250-SIZE 33554432", "250 HELP")], config="decode"),
    Transcript("ehlo-small-limit", [step("EHLO x", "250-{fqdn}", "250-SIZE 100", "250-8BITMIME", "250 HELP")], config="small"),
    Transcript("ehlo-no-limit", [step("EHLO x", "250-{fqdn}", "250-8BITMIME", "250 HELP")], config="nolimit"),
    # -- simple commands ----------------------------------------------------------------
    Transcript("noop", [step("NOOP", OK), step("noop", OK), step("NOOP ", OK), step("NOOP x", "501 Syntax: NOOP")]),
    Transcript("rset", [step("RSET", OK), step("RSET x", "501 Syntax: RSET"), step("RSET ", OK)]),
    Transcript(
        "rset-ends-transaction",
        [EHLO, MAIL, RCPT, step("RSET", OK), step("RCPT TO:<a@b>", "503 Error: need MAIL command"),
         step("DATA", "503 Error: need RCPT command"), MAIL],
    ),
    Transcript(
        "help",
        [
            step("HELP", "250 " + SUPPORTED),
            step("HELP nosuch", "501 " + SUPPORTED),
            step("HELP MAIL", "250 Syntax: MAIL FROM: <address>"),
            step("HELP rcpt", "250 Syntax: RCPT TO: <address>"),
            step("HELP EHLO", "250 Syntax: EHLO hostname"),
            step("HELP HELO", "250 Syntax: HELO hostname"),
            step("HELP DATA", "250 Syntax: DATA"),
            step("HELP RSET", "250 Syntax: RSET"),
            step("HELP NOOP", "250 Syntax: NOOP"),
            step("HELP QUIT", "250 Syntax: QUIT"),
            step("HELP VRFY", "250 Syntax: VRFY <address>"),
            step("HELP EXPN", "501 " + SUPPORTED),
            EHLO,
            step("HELP MAIL", "250 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"),
            step("HELP RCPT", "250 Syntax: RCPT TO: <address> [SP <mail-parameters>]"),
        ],
    ),
    Transcript(
        "vrfy",
        [
            step("VRFY", "501 Syntax: VRFY <address>"),
            step("VRFY <user@example.org>", "252 Cannot VRFY user, but will accept message and attempt delivery"),
            step("VRFY user", "252 Cannot VRFY user, but will accept message and attempt delivery"),
            step("vrfy <>", "252 Cannot VRFY user, but will accept message and attempt delivery"),
        ],
    ),
    # smtpd's address parser raised on these and dropped the connection.
    Transcript("vrfy-malformed", [step('VRFY "', '502 Could not VRFY "'), step("VRFY <@>", "502 Could not VRFY <@>")], cpython=False),
    Transcript("expn", [step("EXPN", "502 EXPN not implemented"), step("EXPN list@example.org", "502 EXPN not implemented")]),
    Transcript(
        "unknown-and-empty",
        [
            step("FOO", '500 Error: command "FOO" not recognized'),
            step("foo bar", '500 Error: command "FOO" not recognized'),
            step("", "500 Error: bad syntax"),
            step("STARTTLS", '500 Error: command "STARTTLS" not recognized'),
            step("NOOP", OK),
        ],
    ),
    Transcript("quit-with-arg", [step("QUIT now", "221 Bye")]),
    # -- ordering errors --------------------------------------------------------------------
    Transcript(
        "need-helo",
        [
            step("MAIL FROM:<a@b>", "503 Error: send HELO first"),
            step("RCPT TO:<a@b>", "503 Error: send HELO first"),
            step("DATA", "503 Error: send HELO first"),
        ],
    ),
    Transcript(
        "need-mail-need-rcpt",
        [HELO, step("RCPT TO:<a@b>", "503 Error: need MAIL command"), step("DATA", "503 Error: need RCPT command"),
         MAIL, step("DATA", "503 Error: need RCPT command")],
    ),
    Transcript("nested-mail", [EHLO, MAIL, step("MAIL FROM:<other@example.org>", "503 Error: nested MAIL command")]),
    # -- MAIL FROM ----------------------------------------------------------------------------
    Transcript(
        "mail-syntax-helo",
        [
            HELO,
            step("MAIL", SYNTAX_MAIL),
            step("MAIL FROM:", SYNTAX_MAIL),
            step("MAIL <a@b>", SYNTAX_MAIL),
            step("MAIL TO:<a@b>", SYNTAX_MAIL),
            step("MAIL FROM:<a@b> SIZE=10", SYNTAX_MAIL),  # no parameters without EHLO
            step("mail from: <a@b>", OK),
        ],
    ),
    Transcript(
        "mail-syntax-ehlo",
        [EHLO, step("MAIL", SYNTAX_MAIL_E), step("MAIL FROM:", SYNTAX_MAIL_E), step("MAIL FROM:<a@b> SIZE=", SYNTAX_MAIL_E),
         step("MAIL FROM:<a@b> =1", SYNTAX_MAIL_E), step("MAIL FROM:<a@b> SIZE=ten", SYNTAX_MAIL_E)],
    ),
    Transcript(
        "mail-null-sender",
        [EHLO, step("MAIL FROM:<>", OK), RCPT, DATA, step(["bounce", "."], OK)],
        messages=(("<>", RCPTS, b"bounce"),),
    ),
    Transcript("mail-plain-address", [HELO, step("MAIL FROM:sender@example.org", OK)]),
    Transcript(
        "mail-size",
        [EHLO, step("MAIL FROM:<a@b> SIZE=33554433", "552 Error: message size exceeds fixed maximum message size"),
         step("MAIL FROM:<a@b> size=33554432", OK)],
    ),
    Transcript(
        "mail-size-small",
        [step("EHLO x", "250-{fqdn}", "250-SIZE 100", "250-8BITMIME", "250 HELP"),
         step("MAIL FROM:<a@b> SIZE=101", "552 Error: message size exceeds fixed maximum message size"),
         step("MAIL FROM:<a@b> SIZE=100", OK)],
        config="small",
    ),
    Transcript("mail-size-no-limit", [step("EHLO x", "250-{fqdn}", "250-8BITMIME", "250 HELP"),
                                      step("MAIL FROM:<a@b> SIZE=99999999999", OK)], config="nolimit"),
    Transcript(
        "mail-body",
        [EHLO, step("MAIL FROM:<a@b> BODY=BINARYMIME", "501 Error: BODY can only be one of 7BIT, 8BITMIME"),
         step("MAIL FROM:<a@b> BODY=7BIT", OK), step("RSET", OK), step("MAIL FROM:<a@b> body=8bitmime", OK)],
    ),
    Transcript(
        "mail-unknown-params",
        [EHLO, step("MAIL FROM:<a@b> FOO=bar", "555 MAIL FROM parameters not recognized or not implemented"),
         step("MAIL FROM:<a@b> SMTPUTF8", "555 MAIL FROM parameters not recognized or not implemented"),
         step("MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME", OK)],
    ),
    Transcript(
        "mail-smtputf8",
        [step("EHLO x", "250-{fqdn}", "250-SIZE 33554432", "250-8BITMIME", "250-SMTPUTF8", "250 HELP"),
         step("MAIL FROM:<a@b> SMTPUTF8=yes", "501 Error: SMTPUTF8 takes no arguments"),
         step("MAIL FROM:<josé@exämple.org> SMTPUTF8 BODY=8BITMIME", OK),
         step("RCPT TO:<用户@例子.广告>", OK),
         # With SMTPUTF8 required, replies may carry UTF-8 (smtpd did this too).
         step("NÖÖP", '500 Error: command "NÖÖP" not recognized'),
         step("DATA", "354 End data with <CR><LF>.<CR><LF>"),
         step(["Subject: ☃", "", "ünïcode", "."], OK)],
        config="smtputf8",
        messages=(("josé@exämple.org", ["用户@例子.广告"], "Subject: ☃\n\nünïcode".encode()),),
    ),
    Transcript(
        "mail-body-decode-data",
        [step("EHLO x", "250-{fqdn}", "250-SIZE 33554432", "250 HELP"),
         step("MAIL FROM:<a@b> BODY=8BITMIME", "555 MAIL FROM parameters not recognized or not implemented")],
        config="decode",
    ),
    # smtpd accepted '<a@b' (no '>') and dropped the connection on '<@>'.
    Transcript(
        "mail-malformed-address",
        [EHLO, step("MAIL FROM:<a@b", SYNTAX_MAIL_E), step("MAIL FROM:<@>", SYNTAX_MAIL_E),
         step("MAIL FROM:<a@.b>", SYNTAX_MAIL_E), MAIL],
        cpython=False,
    ),
    # -- RCPT TO -------------------------------------------------------------------------------
    Transcript(
        "rcpt-syntax",
        [HELO, MAIL, step("RCPT", SYNTAX_RCPT), step("RCPT TO:", SYNTAX_RCPT), step("RCPT <a@b>", SYNTAX_RCPT),
         step("RCPT TO:<a@b> NOTIFY=NEVER", SYNTAX_RCPT), step("rcpt to: <a@b>", OK)],
    ),
    Transcript(
        "rcpt-params-ehlo",
        [EHLO, MAIL, step("RCPT TO:<a@b> NOTIFY=NEVER", "555 RCPT TO parameters not recognized or not implemented"),
         step("RCPT TO:<a@b> =x", SYNTAX_RCPT_E), step("RCPT TO:<a@b>", OK)],
    ),
    Transcript(
        "rcpt-several",
        [EHLO, MAIL, step("RCPT TO:<one@example.org>", OK), step("RCPT TO:<two@example.org>", OK),
         step("RCPT TO:<one@example.org>", OK), DATA, step(["body", "."], OK)],
        messages=((SENDER, ["one@example.org", "two@example.org", "one@example.org"], b"body"),),
    ),
    # -- DATA -----------------------------------------------------------------------------------
    Transcript(
        "data",
        [EHLO, MAIL, RCPT, DATA, step(["Subject: test", "", "Hello.", "."], OK)],
        messages=((SENDER, RCPTS, b"Subject: test\n\nHello."),),
    ),
    Transcript("data-with-arg", [EHLO, MAIL, RCPT, step("DATA now", "501 Syntax: DATA"), DATA, step("x\r\n.", OK)],
               messages=((SENDER, RCPTS, b"x"),)),
    Transcript(
        "data-dot-stuffing",
        [EHLO, MAIL, RCPT, DATA, step(["..", "..leading", "...two", "middle.dot", ".", ], OK)],
        messages=((SENDER, RCPTS, b".\n.leading\n..two\nmiddle.dot"),),
    ),
    Transcript(
        "data-commands-are-text",
        [EHLO, MAIL, RCPT, DATA, step(["QUIT", "RSET", "MAIL FROM:<x@y>", ". not the end", "."], OK), step("NOOP", OK)],
        messages=((SENDER, RCPTS, b"QUIT\nRSET\nMAIL FROM:<x@y>\n not the end"),),
    ),
    Transcript(
        "data-8bit-and-bare-newlines",
        [EHLO, step("MAIL FROM:<sender@example.org> BODY=8BITMIME", OK), RCPT, DATA,
         step(b"caf\xc3\xa9 \xff\xfe\nbare lf\rbare cr\r\n.", OK)],
        messages=((SENDER, RCPTS, b"caf\xc3\xa9 \xff\xfe\nbare lf\rbare cr"),),
    ),
    Transcript(
        "data-trailing-empty-line",
        [EHLO, MAIL, RCPT, DATA, step(["a", "", "."], OK)],
        messages=((SENDER, RCPTS, b"a\n"),),
    ),
    # smtpd never saw the end of an empty message: "." right after DATA.
    Transcript(
        "data-empty-message",
        [EHLO, MAIL, RCPT, DATA, step(".", OK), MAIL],
        messages=((SENDER, RCPTS, b""),),
        cpython=False,
    ),
    Transcript(
        "two-transactions",
        [EHLO, MAIL, RCPT, DATA, step(["one", "."], OK), step("MAIL FROM:<b@example.org>", OK),
         step("RCPT TO:<c@example.org>", OK), DATA, step(["two", "."], OK)],
        messages=((SENDER, RCPTS, b"one"), ("b@example.org", ["c@example.org"], b"two")),
    ),
    Transcript(
        "data-decode",
        [step("EHLO x", "250-{fqdn}", "250-SIZE 33554432", "250 HELP"), MAIL, RCPT, DATA,
         step(["Subject: ünï", "", "..dot", "."], OK)],
        config="decode",
        messages=((SENDER, RCPTS, "Subject: ünï\n\n.dot"),),
    ),
    # smtpd crashed on a message that is not UTF-8 with decode_data=True.
    Transcript(
        "data-decode-not-utf8",
        [HELO, MAIL, RCPT, DATA, step(b"\xff\r\n.", "554 Error: message is not valid UTF-8"), MAIL],
        config="decode",
        cpython=False,
    ),
    # smtpd stayed in DATA state after 552 and swallowed what followed.
    Transcript(
        "data-too-much",
        [step("EHLO x", "250-{fqdn}", "250-SIZE 100", "250-8BITMIME", "250 HELP"), MAIL, RCPT, DATA,
         step(["x" * 60, "y" * 60, "."], "552 Error: Too much mail data"),
         MAIL, RCPT, DATA, step(["small", "."], OK)],
        config="small",
        messages=((SENDER, RCPTS, b"small"),),
        cpython=False,
    ),
    Transcript(
        "data-exactly-at-limit",
        [HELO, MAIL, RCPT, DATA, step("z" * 98 + "\r\n.", OK)],
        config="small",
        messages=((SENDER, RCPTS, b"z" * 98),),
    ),
    # -- command line limits ----------------------------------------------------------------
    Transcript(
        "line-too-long",
        [step("NOOP " + "x" * 600, "500 Error: line too long"), step("NOOP", OK)],
    ),
    # Over-long lines are cut while they are read: where the cut falls must
    # not change the reply (here it can split a two-byte character).
    Transcript(
        "line-too-long-utf8",
        [step("NOOP x" + "é" * 300, "500 Error: line too long"), step("NOOP", OK)],
    ),
    Transcript(
        "mail-limit-grows-after-ehlo",
        [HELO, step("MAIL FROM:<%s@example.org>" % ("a" * 500), "500 Error: line too long"), step("RSET", OK)],
    ),
    Transcript(
        "mail-limit-after-ehlo",
        [EHLO, step("MAIL FROM:<%s@example.org>" % ("a" * 500), OK)],
    ),
    # -- encodings -----------------------------------------------------------------------------
    # smtpd dropped the connection (UnicodeDecodeError) on a non-UTF-8 line.
    Transcript(
        "command-not-utf8",
        [step(b"NOOP \xff\xfe", "500 Error: bad syntax, command is not valid UTF-8"), step("NOOP", OK), EHLO],
        cpython=False,
    ),
    # smtpd failed to encode the echoed verb (UnicodeEncodeError) without SMTPUTF8.
    # smtpd echoed a bare CR or LF of the command into its reply, breaking
    # the reply into lines the client chose.
    Transcript(
        "echoed-text-keeps-reply-framing",
        [step(b"FOO\nBAR", '500 Error: command "FOO\\x0aBAR" not recognized'),
         step(b"X\r250 OK", '500 Error: command "X\\x0d250" not recognized'),
         step(b"VRFY <a\rb>", "502 Could not VRFY <a\\x0db>"),
         step(b"FOO\tBAR", '500 Error: command "FOO\\x09BAR" not recognized'),
         step("NOOP", OK)],
        cpython=False,
    ),
    Transcript("unknown-verb-not-ascii", [step("NÖÖP", '500 Error: command "N\\xd6\\xd6P" not recognized'), step("NOOP", OK)], cpython=False),
]

_names = [t.name for t in TRANSCRIPTS]
assert len(_names) == len(set(_names)), "duplicate transcript names"

MODES = ["whole", "bytewise", "lockstep", "trailing"]
TRAILING = b"NOOP\r\nMAIL FROM:<after@quit>\r\nthis is ignored\r\n"


def full_steps(t: Transcript) -> List[Tuple[bytes, bytes]]:
    steps = list(t.steps)
    if not steps or not steps[-1][0].upper().startswith(b"QUIT"):
        steps.append(QUIT)
    return steps


class CountingChannel(RecordingSMTPServer.channel_class):  # type: ignore[misc,valid-type]
    """Counts the bytes the server has read, so a byte-by-byte client can
    wait for each byte to be read on its own (otherwise the kernel and the
    GIL coalesce the sends into one read)."""

    def recv(self, buffer_size: int) -> bytes:
        data = super().recv(buffer_size)
        server = self.smtp_server
        with server.received_cond:
            server.received += len(data)
            server.received_cond.notify_all()
        return data


class CountingServer(RecordingSMTPServer):
    channel_class = CountingChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.received = 0
        self.received_cond = threading.Condition()
        super().__init__(*args, **kwargs)

    def wait_received(self, total: int) -> None:
        with self.received_cond:
            ok = self.received_cond.wait_for(lambda: self.received >= total, TIMEOUT)
        assert ok, "the server read %d bytes, not %d" % (self.received, total)


def send_one_byte_per_read(client: RawClient, server: Any, data: bytes) -> None:
    start = server.received
    for i in range(len(data)):
        client.send(data[i : i + 1])
        server.wait_received(start + i + 1)


def play(address: Tuple[str, int], t: Transcript, mode: str, server: Any = None) -> None:
    """Play *t* against the server at *address* in *mode*; assert the output.

    In ``bytewise`` mode, *server* (a CountingServer) is used to wait until
    each byte has been read before sending the next.
    """
    steps = full_steps(t)
    expected = GREETING + b"".join(reply for _, reply in steps)
    with RawClient(address) as client:
        if mode == "lockstep":
            assert client.read_exactly(len(GREETING)) == GREETING
            for data, reply in steps:
                client.send(data)
                assert client.read_exactly(len(reply)) == reply, "after sending %r" % data
            assert client.read_until_closed() == b""
            return
        data = b"".join(d for d, _ in steps)
        if mode == "whole":
            client.send(data)
        elif mode == "trailing":
            client.send(data + TRAILING)
        elif mode == "bytewise":
            send_one_byte_per_read(client, server, data)
        else:
            raise AssertionError(mode)
        assert client.read_until_closed() == expected


@pytest.fixture(scope="module")
def servers() -> Iterator[Dict[str, ServerThread]]:
    """One running RecordingSMTPServer per configuration, for the module."""
    started: Dict[str, ServerThread] = {}
    for name, kwargs in CONFIGS.items():
        started[name] = ServerThread(CountingServer, **kwargs)
    yield started
    for thread in started.values():
        thread.stop()


def check_messages(received: List[Any], t: Transcript) -> None:
    got = [(m.mailfrom, m.rcpttos, m.data) for m in received]
    assert got == [(f, r, d) for f, r, d in t.messages]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("t", TRANSCRIPTS, ids=_names)
def test_transcript(servers: Dict[str, ServerThread], t: Transcript, mode: str) -> None:
    st = servers[t.config]
    before = len(st.server.messages)
    play(st.address, t, mode, st.server)
    check_messages(st.server.messages[before:], t)


# -- the same table against CPython's own smtpd --------------------------------------------
class CPythonServer:
    """CPython's smtpd.SMTPServer recording messages, on CPython's asyncore
    in a thread (stopped by a flag checked between bounded iterations)."""

    def __init__(self, modules: Tuple[Any, Any], **kwargs: Any) -> None:
        stdlib_smtpd, self.asyncore = modules
        self.map: Dict[int, Any] = {}
        self.messages: List[Tuple[str, List[str], Any]] = []

        outer = self

        class Recording(stdlib_smtpd.SMTPServer):  # type: ignore[misc,name-defined]
            def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kw: Any) -> None:
                outer.messages.append((mailfrom, list(rcpttos), data))

        self.server = Recording(("127.0.0.1", 0), None, map=self.map, **kwargs)
        self.address = self.server.socket.getsockname()[:2]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.asyncore.loop(timeout=0.01, map=self.map, count=1)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(TIMEOUT)
        self.asyncore.close_all(map=self.map)


@pytest.fixture(scope="module")
def cpython_servers() -> Iterator[Dict[str, CPythonServer]]:
    modules = stdlib_modules("smtpd", "asyncore")
    if modules is None:
        pytest.skip("this interpreter does not ship CPython's smtpd (3.12+)")
    started = {name: CPythonServer(modules, **kwargs) for name, kwargs in CONFIGS.items()}
    yield started
    for s in started.values():
        s.stop()


@pytest.mark.parametrize("t", [t for t in TRANSCRIPTS if t.cpython], ids=[t.name for t in TRANSCRIPTS if t.cpython])
def test_transcript_matches_cpython_smtpd(cpython_servers: Dict[str, CPythonServer], t: Transcript) -> None:
    """The expected bytes of the table are what CPython's smtpd sends."""
    server = cpython_servers[t.config]
    before = len(server.messages)
    play(server.address, t, "whole")
    assert server.messages[before:] == list(t.messages)


# -- smtplib end to end ---------------------------------------------------------------------
def test_smtplib_8bit_bytes_and_options(smtp_server: ServerThread) -> None:
    body = b"From: a@example.org\r\nSubject: 8bit\r\n\r\ncaf\xc3\xa9 \xff\r\n.leading dot\r\n"
    with smtplib.SMTP(*smtp_server.address, timeout=TIMEOUT) as client:
        refused = client.sendmail("a@example.org", ["b@example.org"], body, mail_options=["BODY=8BITMIME"])
    assert refused == {}
    (msg,) = smtp_server.server.wait_for(1)
    # The final CRLF of the body is the start of <CRLF>.<CRLF>.
    assert msg.data == b"From: a@example.org\nSubject: 8bit\n\ncaf\xc3\xa9 \xff\n.leading dot"
    assert msg.mailfrom == "a@example.org"
    assert msg.rcpttos == ["b@example.org"]
    # smtplib adds SIZE because the server announces it.
    assert msg.kwargs == {"mail_options": ["SIZE=%d" % len(body), "BODY=8BITMIME"], "rcpt_options": []}
    assert msg.peer[0] == "127.0.0.1"


def test_smtplib_several_recipients_and_rcpt_options(server_factory: Any) -> None:
    class RcptParams(RecordingSMTPServer):
        channel_class = type(
            "Channel",
            (RecordingSMTPServer.channel_class,),
            # Accept any RCPT parameter so rcpt_options can be observed.
            {"_getparams": lambda self, params: {}},
        )

    st = server_factory(RcptParams)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.sendmail("a@b.example", ["one@x.example", "two@x.example"], b"hi", rcpt_options=["NOTIFY=NEVER"])
    (msg,) = st.server.wait_for(1)
    assert msg.rcpttos == ["one@x.example", "two@x.example"]
    assert msg.kwargs["rcpt_options"] == ["NOTIFY=NEVER"]
    assert msg.data == b"hi"


def test_smtplib_several_messages_one_session(smtp_server: ServerThread) -> None:
    with smtplib.SMTP(*smtp_server.address, timeout=TIMEOUT) as client:
        for i in range(5):
            client.sendmail("a@b", ["c%d@d" % i, "e@f"], b"message %d" % i)
    msgs = smtp_server.server.wait_for(5)
    assert [m.data for m in msgs] == [b"message %d" % i for i in range(5)]
    assert [m.rcpttos for m in msgs] == [["c%d@d" % i, "e@f"] for i in range(5)]


def test_smtplib_smtputf8(server_factory: Any) -> None:
    st = server_factory(enable_SMTPUTF8=True)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.ehlo()
        assert client.has_extn("smtputf8")
        client.sendmail("josé@exämple.org", ["ü@例子.广告"], "Subject: ☃\r\n\r\nünïcode\r\n".encode(),
                        mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    (msg,) = st.server.wait_for(1)
    assert msg.mailfrom == "josé@exämple.org"
    assert msg.rcpttos == ["ü@例子.广告"]
    assert "SMTPUTF8" in msg.kwargs["mail_options"]
    assert msg.data == "Subject: ☃\n\nünïcode".encode()


def test_smtplib_decode_data(server_factory: Any) -> None:
    st = server_factory(decode_data=True)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.sendmail("a@b", ["c@d"], "Subject: ünï\r\n\r\nbody\r\n".encode())
    (msg,) = st.server.wait_for(1)
    assert msg.data == "Subject: ünï\n\nbody"
    assert msg.kwargs == {}  # smtpd passed no options with decode_data=True


class LegacyServer(RecordingSMTPServer):
    """process_message written without **kwargs, as much code still is."""

    def process_message(self, peer, mailfrom, rcpttos, data):  # type: ignore[override]
        return RecordingSMTPServer.process_message(self, peer, mailfrom, rcpttos, data)


def test_legacy_four_argument_process_message(server_factory: Any) -> None:
    st = server_factory(LegacyServer)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.sendmail("a@b", ["c@d"], b"legacy", mail_options=["BODY=8BITMIME"])
    (msg,) = st.server.wait_for(1)
    assert msg.data == b"legacy"
    assert msg.kwargs == {}


def test_process_message_error_gets_451_and_session_continues(server_factory: Any, caplog: Any) -> None:
    class Flaky(RecordingSMTPServer):
        def process_message(self, *args: Any, **kwargs: Any) -> Optional[str]:
            result = super().process_message(*args, **kwargs)
            if len(self.messages) == 1:
                raise RuntimeError("delivery backend down")
            return result

    st = server_factory(Flaky)
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@b", ["c@d"], b"first")
        assert info.value.smtp_code == 451
        assert info.value.smtp_error == b"Requested action aborted: local error in processing"
        # The same session goes on.
        assert client.sendmail("a@b", ["c@d"], b"second") == {}
        assert client.noop()[0] == 250
    # And the server takes new connections.
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        client.sendmail("a@b", ["c@d"], b"third")
    assert [m.data for m in st.server.wait_for(3)] == [b"first", b"second", b"third"]
    assert any("delivery backend down" in r.getMessage() or (r.exc_info and "delivery backend down" in str(r.exc_info[1]))
               for r in caplog.records)


@pytest.mark.parametrize("reply", ["550 No such user here", "250 Queued as 12345", "452-Two\r\n452 lines"])
def test_custom_status_string_is_sent(server_factory: Any, raw_client: Any, reply: str) -> None:
    st = server_factory()
    st.server.reply = reply
    client = raw_client(st.address)
    assert client.read_reply() == GREETING
    for line in (b"HELO x", b"MAIL FROM:<a@b>", b"RCPT TO:<c@d>", b"DATA"):
        client.command(line)
    client.send(b"body\r\n.\r\n")
    assert client.read_reply() == reply.encode() + b"\r\n"
    assert client.command(b"NOOP") == b"250 OK\r\n"


def test_custom_status_seen_by_smtplib(server_factory: Any) -> None:
    st = server_factory()
    st.server.reply = "554 Rejected as spam"
    with smtplib.SMTP(*st.address, timeout=TIMEOUT) as client:
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.sendmail("a@b", ["c@d"], b"spam")
    assert (info.value.smtp_code, info.value.smtp_error) == (554, b"Rejected as spam")


@pytest.mark.skipif(not has_ipv6(), reason="::1 is not available")
def test_smtplib_over_ipv6(server_factory: Any) -> None:
    st = server_factory(host="::1")
    assert st.server.socket.family == socket.AF_INET6
    with smtplib.SMTP("::1", st.port, timeout=TIMEOUT) as client:
        client.sendmail("a@b", ["c@d"], b"over v6")
    (msg,) = st.server.wait_for(1)
    assert msg.data == b"over v6"
    assert msg.peer[0] == "::1"


def test_many_pipelined_commands_in_one_read(smtp_server: ServerThread) -> None:
    """A thousand commands in one send are each answered, in order."""
    with RawClient(smtp_server.address) as client:
        client.send(b"NOOP\r\n" * 1000 + b"QUIT\r\n")
        assert client.read_until_closed() == GREETING + b"250 OK\r\n" * 1000 + b"221 Bye\r\n"


def test_large_message(smtp_server: ServerThread) -> None:
    body = (b"x" * 998 + b"\r\n") * 5000  # about 5 MB
    with smtplib.SMTP(*smtp_server.address, timeout=TIMEOUT) as client:
        client.sendmail("a@b", ["c@d"], body)
    (msg,) = smtp_server.server.wait_for(1)
    assert msg.data == body[:-2].replace(b"\r\n", b"\n")


# -- differential: random sessions, byte for byte against CPython's smtpd --------------------------
# Commands CPython 3.11's smtpd handles without crashing and where no
# deliberate difference applies (so: valid UTF-8, parsable addresses, no
# empty message, no over-limit DATA, no control characters echoed back).
_CPYTHON_SAFE = [
    b"HELO client.example", b"EHLO client.example", b"HELO", b"EHLO", b"helo x", b"NOOP", b"NOOP x", b"noop ",
    b"RSET", b"RSET x", b"HELP", b"HELP MAIL", b"HELP rcpt", b"HELP data", b"HELP bogus", b"VRFY", b"VRFY <a@b>",
    b"VRFY user", b"EXPN", b"EXPN list", b"FOO", b"foo bar", b"", b"MAIL", b"MAIL FROM:", b"MAIL FROM:<a@b>",
    b"mail from: <a@b>", b"MAIL FROM:<>", b"MAIL FROM:a@b", b"MAIL TO:<a@b>", b"MAIL FROM:<a@b> SIZE=100",
    b"MAIL FROM:<a@b> SIZE=99999999", b"MAIL FROM:<a@b> SIZE=x", b"MAIL FROM:<a@b> SIZE=",
    b"MAIL FROM:<a@b> BODY=8BITMIME", b"MAIL FROM:<a@b> BODY=7BIT", b"MAIL FROM:<a@b> BODY=BAD",
    b"MAIL FROM:<a@b> SMTPUTF8", b"MAIL FROM:<a@b> X=1", b"MAIL FROM:<\"q b\"@c>", b"RCPT", b"RCPT TO:",
    b"RCPT TO:<c@d>", b"rcpt to: <e@f>", b"RCPT TO:<c@d> X=1", b"RCPT TO:<c@d> =", b"RCPT FROM:<c@d>",
    b"DATA x", b"DATA\r\nSubject: s\r\n\r\nbody\r\n..dot\r\n.", b"DATA\r\nline one\r\nline two\r\n.",
    b"NOOP " + b"x" * 600, b"MAIL FROM:<" + b"a" * 505 + b"@b>",
]


@pytest.fixture(scope="module")
def unlimited_servers() -> Iterator[Dict[str, ServerThread]]:
    """Servers without the error budget (max_errors=None restores smtpd's
    behaviour: any number of erroneous commands; see docs/differences.md)."""
    started = {name: ServerThread(RecordingSMTPServer, max_errors=None, **CONFIGS[name]) for name in ("default", "smtputf8")}
    yield started
    for st_ in started.values():
        st_.stop()


@pytest.mark.skipif(stdlib_modules("smtpd", "asyncore") is None, reason="this interpreter does not ship CPython's smtpd (3.12+)")
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(commands=st.lists(st.sampled_from(_CPYTHON_SAFE), max_size=30), config=st.sampled_from(["default", "smtputf8"]))
def test_random_sessions_equal_cpython_smtpd(
    unlimited_servers: Dict[str, ServerThread], cpython_servers: Dict[str, "CPythonServer"], commands: List[bytes],
    config: str,
) -> None:
    data = b"".join(c + b"\r\n" for c in commands) + b"QUIT\r\n"
    outputs = []
    for address in (unlimited_servers[config].address, cpython_servers[config].address):
        with RawClient(address) as client:
            client.send(data)
            outputs.append(client.read_until_closed())
    assert outputs[0] == outputs[1]


def test_classic_usage_on_the_global_socket_map() -> None:
    """The pattern of most scripts being migrated: a server on the default
    map, served by a bare ``asyncore.loop()``, ended by ``close_all()``."""
    from smtpd_compat import _reactor
    from smtpd_compat import asyncore as compat_asyncore

    assert compat_asyncore.socket_map == {}, "another test left dispatchers on the global map"
    server = RecordingSMTPServer(("127.0.0.1", 0), None)
    assert compat_asyncore.socket_map[server._fileno] is server
    errors: List[BaseException] = []

    def serve() -> None:
        try:
            compat_asyncore.loop(timeout=1)  # returns once the map is empty
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with smtplib.SMTP(*server.address, timeout=TIMEOUT) as client:
            client.sendmail("a@b", ["c@d"], b"classic")
        (msg,) = server.wait_for(1)
        assert msg.data == b"classic"
    finally:
        _reactor.reactor_for(compat_asyncore.socket_map).call_soon_threadsafe(compat_asyncore.close_all)
        thread.join(TIMEOUT)
    assert not thread.is_alive() and not errors
    assert compat_asyncore.socket_map == {}
    assert _reactor.reactor_for(compat_asyncore.socket_map, create=False) is None
