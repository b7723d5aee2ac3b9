"""The session in memory: ``_session.Session`` with a recording host.

No socket, loop or clock: bytes go through a ``Framer`` to the session, the
way ``SMTPChannel`` passes them, and the host records what the session
asks of it.  The same input is given whole, byte by byte and followed by
more input, and a hypothesis state machine drives sessions over every
phase with commands in any order, split anywhere, against a model of
smtpd's rules.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from smtpd_compat import _grammar
from smtpd_compat._channel import SMTPChannel
from smtpd_compat._framing import Framer
from smtpd_compat._session import TRANSITIONS, Features, Host, Session, State

# The verbs a Session implements, as SMTPChannel dispatches them.
VERBS = ("HELO", "EHLO", "NOOP", "QUIT", "HELP", "VRFY", "MAIL", "RCPT", "RSET", "DATA", "EXPN", "STARTTLS", "AUTH")


class Recorder(Host):
    """A host that keeps what the session sends and delivers, and feeds it
    bytes through a framer as SMTPChannel does."""

    fqdn = "mx.example"

    def __init__(self, features: Optional[Features] = None) -> None:
        self.replies: List[str] = []
        self.messages: List[Tuple[Optional[str], List[str], Union[bytes, str]]] = []
        self.terminator: Any = b"\r\n"
        self.closed = False
        self.framer = Framer()
        self.session = Session(self, features)
        self.states = [self.session.state]

    # -- smtpd's hooks --------------------------------------------------------------
    def push(self, msg: str) -> None:
        self.replies.append(msg)

    def close_when_done(self) -> None:
        self.closed = True

    def set_terminator(self, term: Any) -> None:
        self.terminator = term

    def _set_rset_state(self) -> None:
        self.session.rset_state()

    def _set_post_data_state(self) -> None:
        self.session.post_data_state()

    # smtpd's parsing helpers, SMTPChannel's own (they read nothing of the channel).
    _getaddr = SMTPChannel._getaddr
    _getparams = SMTPChannel._getparams
    _strip_command_keyword = SMTPChannel._strip_command_keyword

    def _session_data_started(self) -> None:
        self.framer.prefix_seen = _grammar.DATA_START

    # -- input, as SMTPChannel hands it over -------------------------------------------
    def feed(self, data: bytes) -> None:
        if self.closed:
            return  # nothing after QUIT is read
        framer = self.framer
        framer.feed(data)
        while not self.closed:
            step = framer.next(self.terminator)
            if step is None:
                return
            piece, done = step
            if piece:
                self.session.collect(piece)
            if done:
                self.end_of_record()
            self.states.append(self.session.state)

    def end_of_record(self) -> None:
        session = self.session
        pieces = session.raw_lines()
        size, session.num_bytes = session.num_bytes, 0
        if session.state is State.COMMAND:
            command = session.command_line(b"".join(pieces), size)
            if command is None:
                return
            verb, arg = command
            if verb in VERBS:
                getattr(session, verb.lower())(arg)
            else:
                session.unknown(verb)
        elif session.state is State.DATA:
            session.num_bytes = size
            data = session.end_of_data(pieces)
            if data is not None:
                self.messages.append((session.mailfrom, list(session.rcpttos), data))
                self._set_post_data_state()
                session.replied(None)


def run(chunks: List[bytes]) -> Recorder:
    host = Recorder()
    for chunk in chunks:
        host.feed(chunk)
    return host


TRANSCRIPT = (
    b"EHLO client.example\r\n"
    b"MAIL FROM:<a@example.com> BODY=8BITMIME\r\n"
    b"RCPT TO:<b@example.com>\r\n"
    b"RCPT TO:<c@example.com>\r\n"
    b"DATA\r\n"
    b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n"
    b"NOOP\r\n"
    b"QUIT\r\n"
)
REPLIES = [
    "250-mx.example", "250-SIZE 33554432", "250-8BITMIME", "250 HELP",
    "250 OK", "250 OK", "250 OK",
    "354 End data with <CR><LF>.<CR><LF>",
    "250 OK",
    "250 OK",
    "221 Bye",
]
MESSAGE = ("a@example.com", ["b@example.com", "c@example.com"], b"Subject: hi\n\n.dot\nbody")


def test_a_session_given_whole() -> None:
    host = run([TRANSCRIPT])
    assert host.replies == REPLIES
    assert host.messages == [MESSAGE]
    assert host.closed and host.session.state is State.CLOSING


def test_a_session_given_byte_by_byte() -> None:
    host = run([TRANSCRIPT[i : i + 1] for i in range(len(TRANSCRIPT))])
    assert host.replies == REPLIES
    assert host.messages == [MESSAGE]


def test_a_session_followed_by_more_input() -> None:
    # Input after QUIT is never read; input before it only adds its replies.
    host = run([TRANSCRIPT + b"MAIL FROM:<x@example.com>\r\n"])
    assert host.replies == REPLIES
    before_quit = TRANSCRIPT[: -len(b"QUIT\r\n")]
    host = run([before_quit + b"RSET\r\nQUIT\r\n"])
    assert host.replies == REPLIES[:-1] + ["250 OK", "221 Bye"]


@pytest.mark.parametrize("cut", range(1, len(TRANSCRIPT)))
def test_a_session_cut_in_two_anywhere(cut: int) -> None:
    host = run([TRANSCRIPT[:cut], TRANSCRIPT[cut:]])
    assert host.replies == REPLIES
    assert host.messages == [MESSAGE]


def test_an_empty_message_right_after_data() -> None:
    host = run([b"HELO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n.\r\nQUIT\r\n"])
    assert host.replies[-2:] == ["250 OK", "221 Bye"]
    assert host.messages == [("a@x", ["b@x"], b"")]


def test_every_change_of_phase_is_in_the_table() -> None:
    host = run([TRANSCRIPT])
    for before, after in zip(host.states, host.states[1:]):
        if before is not after:
            assert after in {TRANSITIONS[key] for key in TRANSITIONS if key[0] is before}, (before, after)


# -- the state machine -------------------------------------------------------------------------
ADDRESSES = st.sampled_from(["a@example.com", "b@example.org", "postmaster@x.example"])
# Where a line is cut between reads: offsets into it, any number of them.
CUTS = st.lists(st.integers(min_value=0, max_value=80), max_size=4)


def split(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])] or [data]


class SessionMachine(RuleBasedStateMachine):
    """Commands in any order, split anywhere, against smtpd's rules: each
    command line gets one reply (EHLO and HELP: one multi-line reply), with
    the code the model expects; the phase follows the model."""

    def __init__(self) -> None:
        super().__init__()
        self.host = Recorder()
        # The model.
        self.greeted = False
        self.sender: Optional[str] = None
        self.recipients: List[str] = []
        self.in_data = False
        self.delivered: List[Tuple[Optional[str], List[str], Union[bytes, str]]] = []

    def send(self, line: bytes, cuts: List[int]) -> List[str]:
        before = len(self.host.replies)
        for chunk in split(line, cuts):
            self.host.feed(chunk)
        return self.host.replies[before:]

    def one_reply(self, replies: List[str], code: str) -> None:
        assert replies, "no reply"
        assert all(reply[:3] == code for reply in replies), (code, replies)
        assert all(reply[3] == "-" for reply in replies[:-1]) and replies[-1][3:4] in (" ", ""), replies

    # -- commands -------------------------------------------------------------------------
    @precondition(lambda self: not self.in_data)
    @rule(verb=st.sampled_from(["HELO", "EHLO"]), cuts=CUTS)
    def greet(self, verb: str, cuts: List[int]) -> None:
        replies = self.send(b"%s client.example\r\n" % verb.encode(), cuts)
        if self.greeted:
            self.one_reply(replies, "503")
        else:
            self.one_reply(replies, "250")
            assert len(replies) == (4 if verb == "EHLO" else 1)
            self.greeted, self.sender, self.recipients = True, None, []

    @precondition(lambda self: not self.in_data)
    @rule(address=ADDRESSES, cuts=CUTS)
    def mail(self, address: str, cuts: List[int]) -> None:
        replies = self.send(b"MAIL FROM:<%s>\r\n" % address.encode(), cuts)
        if not self.greeted or self.sender is not None:
            self.one_reply(replies, "503")
        else:
            self.one_reply(replies, "250")
            self.sender = address

    @precondition(lambda self: not self.in_data)
    @rule(address=ADDRESSES, cuts=CUTS)
    def rcpt(self, address: str, cuts: List[int]) -> None:
        replies = self.send(b"RCPT TO:<%s>\r\n" % address.encode(), cuts)
        if not self.greeted or self.sender is None:
            self.one_reply(replies, "503")
        else:
            self.one_reply(replies, "250")
            self.recipients.append(address)

    @precondition(lambda self: not self.in_data)
    @rule(cuts=CUTS)
    def data(self, cuts: List[int]) -> None:
        replies = self.send(b"DATA\r\n", cuts)
        if not self.greeted or not self.recipients:
            self.one_reply(replies, "503")
        else:
            self.one_reply(replies, "354")
            self.in_data = True

    @precondition(lambda self: self.in_data)
    @rule(body=st.lists(st.sampled_from([b"", b"text", b".", b"..", b".x", b"From me"]), max_size=5), cuts=CUTS)
    def message(self, body: List[bytes], cuts: List[int]) -> None:
        text = b"".join(line + b"\r\n" for line in body)
        stuffed = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in body)
        replies = self.send(stuffed + b".\r\n", cuts)
        self.one_reply(replies, "250")
        assert self.host.messages[-1] == (self.sender, self.recipients, text[:-2].replace(b"\r\n", b"\n") if text else b"")
        self.in_data, self.sender, self.recipients = False, None, []

    @precondition(lambda self: not self.in_data)
    @rule(cuts=CUTS)
    def rset(self, cuts: List[int]) -> None:
        self.one_reply(self.send(b"RSET\r\n", cuts), "250")
        self.sender, self.recipients = None, []

    @precondition(lambda self: not self.in_data)
    @rule(line=st.sampled_from([b"NOOP", b"HELP", b"VRFY x", b"EXPN x", b"XYZZY", b"", b"MAIL", b"RCPT TO:"]), cuts=CUTS)
    def other(self, line: bytes, cuts: List[int]) -> None:
        expected = {
            b"NOOP": "250", b"HELP": "250", b"VRFY x": "252", b"EXPN x": "502",
            b"XYZZY": "500", b"": "500", b"MAIL": "501", b"RCPT TO:": "501",
        }[line]
        if line in (b"MAIL", b"RCPT TO:") and not self.greeted:
            expected = "503"
        if line == b"RCPT TO:" and self.greeted and self.sender is None:
            expected = "503"
        self.one_reply(self.send(line + b"\r\n", cuts), expected)

    # -- what always holds ---------------------------------------------------------------
    @invariant()
    def the_phase_follows_the_model(self) -> None:
        session = self.host.session
        assert session.state is (State.DATA if self.in_data else State.COMMAND)
        assert session.smtp_state == (1 if self.in_data else 0)
        assert (session.mailfrom, session.rcpttos) == (self.sender, self.recipients) or self.in_data

    @invariant()
    def no_input_is_left_over(self) -> None:
        assert not self.host.session.received_lines
        assert len(self.host.framer) == 0


SessionMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
TestSessionMachine = SessionMachine.TestCase
