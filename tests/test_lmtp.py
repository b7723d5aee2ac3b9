"""LMTP (RFC 2033: the option ``lmtp``, LMTPServer) and listening on a Unix
socket (``unix_socket``, ``unix_mode``), on real sockets: raw transcripts,
smtplib.LMTP, swaks, and Postfix's smtp-source -L against the command line.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import shutil
import smtplib
import socket
import stat
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from smtpd_compat import LMTPServer, RecordingServer, _reactor, asyncore, smtpd

from conftest import TIMEOUT, RawClient, running_server

unix_only = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LHLO_REPLY = (b"250-%s\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-PIPELINING\r\n"
              b"250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n")


class Verdicts(LMTPServer):
    """One reply per recipient, chosen by the recipient's local part."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: List[Tuple[Any, str, List[str], bytes]] = []

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kwargs: Any) -> Any:
        self.messages.append((peer, mailfrom, list(rcpttos), data))
        return [_verdict(rcpt) for rcpt in rcpttos]


def _verdict(rcpt: str) -> Optional[str]:
    local = rcpt.split("@")[0]
    if local.startswith("full"):
        return "452 4.2.2 Mailbox full"
    if local.startswith("nobody"):
        return "550 5.1.1 No such user"
    return None


class Fixed(LMTPServer):
    """process_message returns whatever the test put in ``answer``."""

    answer: Any = None

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kwargs: Any) -> Any:
        answer = self.answer
        if isinstance(answer, BaseException):
            raise answer
        return answer() if callable(answer) else answer


def fqdn_of(client: RawClient) -> bytes:
    greeting = client.read_reply()
    assert greeting.startswith(b"220 ")
    return greeting.split()[1]


# -- the protocol, over TCP ------------------------------------------------------------------
LMTP_COMMANDS = b"501 5.5.4 Supported commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY\r\n"


def test_help_on_an_unknown_topic_lists_lmtps_commands() -> None:
    with running_server(Verdicts) as st, RawClient(st.address) as client:
        fqdn_of(client)
        for topic in (b"FOO", b"EHLO", b"helo", b"BDAT"):
            assert client.command(b"HELP " + topic) == LMTP_COMMANDS
        assert client.command(b"HELP MAIL") == b"250 2.0.0 Syntax: MAIL FROM: <address>\r\n"
    with running_server(RecordingServer) as st, RawClient(st.address) as client:  # SMTP: smtpd's lists
        fqdn_of(client)
        assert client.command(b"HELP FOO") == b"501 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY\r\n"
        assert client.command(b"LHLO client.example") == b'500 Error: command "LHLO" not recognized\r\n'


class GreetingChannel(smtpd.SMTPChannel):
    """A channel subclass with its own LHLO: refuses one name, records the others."""

    greeted: List[Optional[str]] = []

    def smtp_LHLO(self, arg: Optional[str]) -> None:
        if arg == "bad.example":
            self.push("550 5.7.1 Not you")
            return
        self.greeted.append(arg)
        super().smtp_LHLO(arg)


class GreetingServer(Verdicts):
    channel_class = GreetingChannel


def test_lhlo_calls_the_channels_smtp_lhlo_hook() -> None:
    GreetingChannel.greeted = []
    with running_server(GreetingServer) as st, RawClient(st.address) as client:
        fqdn = fqdn_of(client)
        assert client.command(b"LHLO bad.example") == b"550 5.7.1 Not you\r\n"
        assert client.command(b"LHLO client.example") == LHLO_REPLY % fqdn
        assert client.command(b"EHLO client.example") == b"500 5.5.1 Error: this is an LMTP server: send LHLO\r\n"
    assert GreetingChannel.greeted == ["client.example"]


def test_transcript_over_tcp() -> None:
    with running_server(Verdicts) as st, RawClient(st.address) as client:
        fqdn = fqdn_of(client)
        assert client.command(b"EHLO client.example") == b"500 5.5.1 Error: this is an LMTP server: send LHLO\r\n"
        assert client.command(b"HELO client.example") == b"500 5.5.1 Error: this is an LMTP server: send LHLO\r\n"
        assert client.command(b"MAIL FROM:<a@example.com>") == b"503 5.5.1 Error: send HELO first\r\n"
        assert client.command(b"LHLO") == b"501 Syntax: LHLO hostname\r\n"
        assert client.command(b"LHLO client.example") == LHLO_REPLY % fqdn
        assert client.command(b"LHLO again.example") == b"503 Duplicate HELO/EHLO\r\n"
        assert client.command(b"HELP") == b"250 2.0.0 Supported commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY\r\n"
        assert client.command(b"HELP LHLO") == b"250 2.0.0 Syntax: LHLO hostname\r\n"
        assert client.command(b"MAIL FROM:<a@example.com>") == b"250 2.1.0 OK\r\n"
        for rcpt in (b"ok1", b"full", b"nobody", b"ok2"):
            assert client.command(b"RCPT TO:<%s@example.com>" % rcpt) == b"250 2.1.5 OK\r\n"
        assert client.command(b"DATA") == b"354 End data with <CR><LF>.<CR><LF>\r\n"
        client.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n")
        # One reply per recipient, in RCPT order (RFC 2033 section 4.2).
        assert [client.read_reply() for _ in range(4)] == [
            b"250 2.0.0 OK\r\n", b"452 4.2.2 Mailbox full\r\n", b"550 5.1.1 No such user\r\n", b"250 2.0.0 OK\r\n",
        ]
        assert client.command(b"RSET") == b"250 2.0.0 OK\r\n"
        assert client.command(b"QUIT") == b"221 2.0.0 Bye\r\n"
        assert client.read_until_closed() == b""
        assert [m[2] for m in st.server.messages] == [["ok1@example.com", "full@example.com", "nobody@example.com", "ok2@example.com"]]
        assert st.server.messages[0][3] == b"Subject: hi\n\nbody"


class RefusesSome(Verdicts):
    def accept_rcpt(self, channel: Any, address: str, params: List[str]) -> Optional[str]:
        return "550 5.1.1 Unknown here" if address.startswith("unknown") else None


def test_only_accepted_recipients_are_answered_after_the_data() -> None:
    # Refused RCPTs get no reply after the message; a duplicate gets its own.
    with running_server(RefusesSome) as st, RawClient(st.address) as client:
        client.read_reply()
        client.send(b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<unknown@x>\r\nRCPT TO:<full@x>\r\n"
                    b"RCPT TO:<ok@x>\r\nRCPT TO:<ok@x>\r\nDATA\r\n")
        replies = [client.read_reply() for _ in range(7)]
        assert replies[2] == b"550 5.1.1 Unknown here\r\n"
        assert replies[6].startswith(b"354 ")
        client.send(b"x\r\n.\r\n")
        assert [client.read_reply() for _ in range(3)] == [b"452 4.2.2 Mailbox full\r\n", b"250 2.0.0 OK\r\n", b"250 2.0.0 OK\r\n"]
        assert client.command(b"NOOP") == b"250 2.0.0 OK\r\n"


def test_data_without_an_accepted_recipient_is_503() -> None:
    with running_server(RefusesSome) as st, RawClient(st.address) as client:
        client.read_reply()
        client.send(b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<unknown@x>\r\nDATA\r\n")
        assert [client.read_reply() for _ in range(4)][2:] == [b"550 5.1.1 Unknown here\r\n",
                                                               b"503 5.5.1 Error: need RCPT command\r\n"]


@pytest.mark.parametrize(
    "answer, expected",
    [
        (None, [b"250 2.0.0 OK\r\n"] * 3),  # an smtpd-era process_message
        ("250 Queued", [b"250 Queued\r\n"] * 3),
        (b"451 4.3.0 Try later", [b"451 4.3.0 Try later\r\n"] * 3),
        (("250 2.0.0 one", None, "550 5.2.1 disabled"), [b"250 2.0.0 one\r\n", b"250 2.0.0 OK\r\n", b"550 5.2.1 disabled\r\n"]),
        ([None, None], [b"451 4.3.0 Requested action aborted: local error in processing\r\n"] * 3),  # 2 for 3
        (RuntimeError("boom"), [b"451 4.3.0 Requested action aborted: local error in processing\r\n"] * 3),
    ],
)
def test_process_message_answers(answer: Any, expected: List[bytes]) -> None:
    with running_server(Fixed) as st, RawClient(st.address) as client:
        st.server.answer = answer
        client.read_reply()
        # Pipelined: the whole transaction and the message in one write, then NOOP.
        client.send(b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nRCPT TO:<d@x>\r\nDATA\r\n"
                    b"hello\r\n.\r\nNOOP\r\n")
        replies = [client.read_reply() for _ in range(6)]
        assert replies[5].startswith(b"354 ")
        assert [client.read_reply() for _ in range(3)] == expected
        assert client.read_reply() == b"250 2.0.0 OK\r\n"  # the NOOP after it


def test_a_future_may_give_the_replies() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with running_server(Fixed) as st, RawClient(st.address) as client:
            st.server.answer = lambda: pool.submit(lambda: [None, "452 4.2.2 Mailbox full"])
            client.read_reply()
            client.send(b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
            [client.read_reply() for _ in range(5)]
            assert [client.read_reply() for _ in range(3)] == [b"250 2.0.0 OK\r\n", b"452 4.2.2 Mailbox full\r\n",
                                                               b"221 2.0.0 Bye\r\n"]
    finally:
        pool.shutdown()


def test_a_message_refused_whole_is_refused_for_each_recipient() -> None:
    with running_server(Fixed, data_size_limit=10) as st, RawClient(st.address) as client:
        client.read_reply()
        client.send(b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\n" + b"x" * 50 + b"\r\n.\r\n")
        [client.read_reply() for _ in range(5)]
        assert [client.read_reply() for _ in range(2)] == [b"552 5.3.4 Error: Too much mail data\r\n"] * 2
        assert client.command(b"RSET") == b"250 2.0.0 OK\r\n"


def test_lmtp_is_an_option_of_any_server() -> None:
    # RecordingServer (not an LMTPServer) with lmtp=True; the options read back.
    with running_server(RecordingServer, lmtp=True) as st, RawClient(st.address) as client:
        assert (st.server.lmtp, st.server.pipelining, st.server.enhanced_status_codes) == (True, True, True)
        fqdn = fqdn_of(client)
        assert client.command(b"LHLO c") == LHLO_REPLY % fqdn
        client.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\nhi\r\n.\r\n")
        assert [client.read_reply() for _ in range(6)][3:] == [b"354 End data with <CR><LF>.<CR><LF>\r\n",
                                                               b"250 2.0.0 OK\r\n", b"250 2.0.0 OK\r\n"]
        assert st.server.messages[0].rcpttos == ["b@x", "c@x"]


def test_the_default_server_does_not_speak_lmtp() -> None:
    with running_server(RecordingServer) as st, RawClient(st.address) as client:
        client.read_reply()
        assert client.command(b"LHLO c") == b'500 Error: command "LHLO" not recognized\r\n'
        reply = client.command(b"EHLO c")
        assert b"PIPELINING" not in reply and b"ENHANCEDSTATUSCODES" not in reply
        client.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n")
        assert [client.read_reply() for _ in range(6)][3:] == [b"354 End data with <CR><LF>.<CR><LF>\r\n",
                                                               b"250 OK\r\n", b"250 OK\r\n"]  # one for the message, NOOP's


@pytest.mark.parametrize(
    "options, error",
    [
        ({"lmtp": 1}, TypeError),
        ({"unix_mode": "660"}, TypeError),
        ({"unix_mode": 0o1777}, ValueError),
        ({"unix_socket": 42}, TypeError),
        ({"unix_socket": ""}, ValueError),
    ],
)
def test_bad_options(options: Dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        smtpd.SMTPServer(("127.0.0.1", 0), None, **options)


# -- Unix sockets ------------------------------------------------------------------------
class UnixServer:
    """``cls(None, None, unix_socket=path, **kwargs)`` served in a thread."""

    def __init__(self, cls: Any, path: str, **kwargs: Any) -> None:
        self.map: Dict[int, Any] = {}
        self.path = path
        self.server = cls(None, None, map=self.map, unix_socket=path, **kwargs)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            asyncore.loop(timeout=0.05, map=self.map)
        except asyncore.ExitNow:
            pass

    def connect(self) -> "UnixClient":
        return UnixClient(self.path)

    def stop(self) -> None:
        def leave() -> None:
            raise asyncore.ExitNow()

        _reactor.reactor_for(self.map).call_soon_threadsafe(leave)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        self.server.server_close()
        asyncore.close_all(map=self.map, ignore_all=True)


class UnixClient(RawClient):
    def __init__(self, path: str) -> None:  # noqa: D107 - RawClient over AF_UNIX
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.timeout = TIMEOUT
        self.buffer = b""


@pytest.fixture
def sock_path(tmp_path: Any) -> Iterator[str]:
    # Short: a Unix socket path is limited to about 100 bytes.
    directory = tmp_path if len(str(tmp_path)) < 80 else None
    if directory is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="lmtp") as name:
            yield os.path.join(name, "s")
        return
    yield str(directory / "lmtp.sock")


@unix_only
def test_lmtp_over_a_unix_socket_pipelined(sock_path: str) -> None:
    us = UnixServer(Verdicts, sock_path)
    try:
        mode = os.stat(sock_path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600  # the default unix_mode
        with us.connect() as client:
            fqdn = fqdn_of(client)
            client.send(b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<ok@x>\r\nRCPT TO:<nobody@x>\r\nRCPT TO:<full@x>\r\n"
                        b"DATA\r\nSubject: s\r\n\r\n..dot\r\n.\r\nRSET\r\nQUIT\r\n")
            assert client.read_reply() == LHLO_REPLY % fqdn
            assert [client.read_reply() for _ in range(5)][4].startswith(b"354 ")
            assert [client.read_reply() for _ in range(5)] == [
                b"250 2.0.0 OK\r\n", b"550 5.1.1 No such user\r\n", b"452 4.2.2 Mailbox full\r\n",
                b"250 2.0.0 OK\r\n", b"221 2.0.0 Bye\r\n",
            ]
            assert client.read_until_closed() == b""
        peer, _mailfrom, _rcpttos, data = us.server.messages[0]
        assert peer == ("unix:" + sock_path, 0)
        assert data == b"Subject: s\n\n.dot"
    finally:
        us.stop()
    assert not os.path.exists(sock_path)  # removed at server_close()


@unix_only
def test_smtplib_lmtp_client_over_a_unix_socket(sock_path: str) -> None:
    us = UnixServer(Verdicts, sock_path, unix_mode=0o660)
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
        client = smtplib.LMTP(sock_path, timeout=TIMEOUT)  # a path: smtplib connects to the Unix socket
        try:
            assert client.ehlo_or_helo_if_needed() is None
            assert client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
            assert client.sendmail("a@example.com", ["ok@example.com"], b"Subject: x\r\n\r\nhi\r\n") == {}
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail("a@example.com", ["full@example.com"], b"Subject: x\r\n\r\nhi\r\n")
            assert info.value.smtp_code == 452
        finally:
            client.quit()
    finally:
        us.stop()


@unix_only
def test_plain_smtp_over_a_unix_socket_with_swaks(sock_path: str) -> None:
    if shutil.which("swaks") is None:
        pytest.skip("swaks is not installed")
    us = UnixServer(RecordingServer, sock_path)
    try:
        result = subprocess.run(["swaks", "--socket", sock_path, "--to", "b@example.com", "--from", "a@example.com",
                                 "--body", "hello over unix", "--timeout", "10"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
        assert result.returncode == 0, result.stdout
        assert "<-  250-PIPELINING" not in result.stdout  # SMTP, smtpd's EHLO reply
        message = us.server.messages[0]
        assert message.rcpttos == ["b@example.com"] and b"hello over unix" in message.data
        assert message.peer == ("unix:" + sock_path, 0)
    finally:
        us.stop()


@unix_only
def test_swaks_lmtp_over_a_unix_socket(sock_path: str) -> None:
    if shutil.which("swaks") is None:
        pytest.skip("swaks is not installed")
    us = UnixServer(Verdicts, sock_path)
    try:
        result = subprocess.run(["swaks", "--socket", sock_path, "--protocol", "LMTP", "--to", "ok@x,nobody@x",
                                 "--from", "a@x", "--timeout", "10"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
        assert " -> LHLO " in result.stdout, result.stdout
        assert "<-  250 2.0.0 OK" in result.stdout and "<** 550 5.1.1 No such user" in result.stdout, result.stdout
    finally:
        us.stop()


@unix_only
def test_the_path_may_be_a_path_object(sock_path: str) -> None:
    import pathlib

    server = Verdicts(None, unix_socket=pathlib.Path(sock_path), map={})
    try:
        assert server.unix_socket == sock_path and stat.S_ISSOCK(os.stat(sock_path).st_mode)
    finally:
        server.close()
    assert not os.path.exists(sock_path)


@unix_only
def test_a_stale_socket_file_is_replaced(sock_path: str) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens: as after a crash
    us = UnixServer(Verdicts, sock_path)
    try:
        with us.connect() as client:
            assert client.read_reply().startswith(b"220 ")
    finally:
        us.stop()


@unix_only
def test_a_live_socket_or_another_file_is_not_removed(sock_path: str) -> None:
    us = UnixServer(Verdicts, sock_path)
    try:
        with pytest.raises(OSError) as info:
            Verdicts(None, unix_socket=sock_path, map={})
        assert info.value.errno == errno.EADDRINUSE
        with us.connect() as client:  # still served
            assert client.read_reply().startswith(b"220 ")
    finally:
        us.stop()
    with open(sock_path, "w") as f:
        f.write("not a socket")
    with pytest.raises(OSError) as info:
        Verdicts(None, unix_socket=sock_path, map={})
    assert info.value.errno == errno.EEXIST
    with open(sock_path) as f:
        assert f.read() == "not a socket"


@unix_only
def test_close_leaves_a_newer_servers_socket_alone(sock_path: str) -> None:
    first = Verdicts(None, unix_socket=sock_path, map={})
    os.unlink(sock_path)  # someone removed it, and another server took the path
    second = Verdicts(None, unix_socket=sock_path, map={})
    try:
        first.close()
        assert os.path.exists(sock_path)
    finally:
        second.close()
    assert not os.path.exists(sock_path)


def test_no_unix_sockets_is_a_clear_error(monkeypatch: Any, tmp_path: Any) -> None:
    from smtpd_compat import _platform

    monkeypatch.delattr("socket.AF_UNIX", raising=False)
    with pytest.raises(_platform.NotAvailable, match="listening on a Unix socket is not available"):
        smtpd.SMTPServer(None, None, unix_socket=str(tmp_path / "s"), map={})


# -- the command line, with Postfix's smtp-source as the client --------------------------
SMTP_SOURCE = shutil.which("smtp-source") or ("/usr/sbin/smtp-source" if os.path.exists("/usr/sbin/smtp-source") else None)
needs_smtp_source = pytest.mark.skipif(SMTP_SOURCE is None, reason="Postfix's smtp-source is not installed")


def _cli_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _start_cli(args: List[str], ready: Any) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "smtpd_compat", "-n", *args], cwd=REPO_ROOT, env=_cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ready()
            return proc
        except OSError:
            try:
                proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                pass
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError("the server never listened: %s" % err)


def _stop_cli(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the server did not stop") from None
    assert proc.returncode == 0, err
    return str(err)


def _delivered(maildir: str, count: int) -> List[bytes]:
    new = os.path.join(maildir, "new")
    names = sorted(os.listdir(new))
    assert len(names) == count
    messages = []
    for name in names:
        with open(os.path.join(new, name), "rb") as f:
            messages.append(f.read())
    return messages


def _connect_unix(path: str) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    finally:
        s.close()


@needs_smtp_source
@unix_only
def test_smtp_source_lmtp_to_mailbox_server_on_a_unix_socket(tmp_path: Any, sock_path: str) -> None:
    maildir = str(tmp_path / "mail")
    proc = _start_cli(["-c", "MailboxServer", "--lmtp", "--unix", sock_path, "--unix-mode", "660",
                       "--maildir", maildir], lambda: _connect_unix(sock_path))
    try:
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660
        # 3 sessions of 2 messages to 3 recipients, in LMTP (-L).
        result = subprocess.run([SMTP_SOURCE, "-L", "-s", "3", "-m", "6", "-r", "3", "-t", "rcpt@example.com",
                                 "-f", "sender@example.com", "unix:" + sock_path],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
        assert result.returncode == 0, result.stdout
    finally:
        err = _stop_cli(proc)
    assert "listening on " + sock_path in err and "LMTP" in err
    messages = _delivered(maildir, 6)
    assert all(m.startswith(b"Return-Path: <sender@example.com>\n") for m in messages)
    assert all(b"X-Peer: unix:" + sock_path.encode() in m for m in messages)
    assert not os.path.exists(sock_path)


@needs_smtp_source
def test_smtp_source_lmtp_to_mailbox_server_over_tcp(tmp_path: Any) -> None:
    maildir = str(tmp_path / "mail")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = _start_cli(["-c", "MailboxServer", "--lmtp", "--maildir", maildir, "127.0.0.1:%d" % port],
                      lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close())
    try:
        result = subprocess.run([SMTP_SOURCE, "-L", "-m", "4", "-r", "2", "-t", "rcpt@example.com",
                                 "-f", "sender@example.com", "127.0.0.1:%d" % port],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
        assert result.returncode == 0, result.stdout
    finally:
        _stop_cli(proc)
    _delivered(maildir, 4)


def _cli_error(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "smtpd_compat", "-n", *args], cwd=REPO_ROOT, env=_cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["-c", "DebuggingServer", "--unix-mode", "660"], "--unix-mode needs --unix"),
        (["-c", "DebuggingServer", "--unix", "/tmp/x.sock", "--unix-mode", "999"], "invalid mode"),
    ],
)
def test_cli_errors(args: List[str], words: str) -> None:
    assert words in _cli_error(*args)


@pytest.mark.parametrize("delivery", ["print", "maildir"])
def test_cli_class_lmtpserver_is_lmtp_with_the_default_delivery(tmp_path: Any, delivery: str) -> None:
    """-c LMTPServer: --lmtp with DebuggingServer's printing, or with
    MailboxServer's store when --maildir is given."""
    maildir = str(tmp_path / "mail")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    args = ["-c", "LMTPServer"] + (["--maildir", maildir] if delivery == "maildir" else []) + ["127.0.0.1:%d" % port]
    proc = _start_cli(args, lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close())
    try:
        with smtplib.LMTP("127.0.0.1", port, timeout=TIMEOUT) as client:
            # smtplib reads one reply after the data; LMTP sends one per recipient.
            assert client.ehlo()[0] == 250 and client.has_extn("enhancedstatuscodes")  # (LMTP: sends LHLO)
            assert client.mail("a@example.com")[0] == 250
            assert client.rcpt("b@example.com")[0] == 250 and client.rcpt("c@example.com")[0] == 250
            assert client.data(b"Subject: lmtp\r\n\r\nhi\r\n") == (250, b"2.0.0 OK")
            assert client.getreply() == (250, b"2.0.0 OK")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and "(LMTP" in err, err
    if delivery == "maildir":
        assert b"X-RcptTo: b@example.com, c@example.com" in _delivered(maildir, 1)[0]
    else:
        assert "b'Subject: lmtp'" in out and out.count("MESSAGE FOLLOWS") == 1, out


@unix_only
def test_cli_refuses_to_remove_a_file_that_is_not_a_socket(tmp_path: Any) -> None:
    path = tmp_path / "f"
    path.write_text("keep me")
    assert "not a socket" in _cli_error("-c", "DebuggingServer", "--unix", str(path))
    assert path.read_text() == "keep me"


def test_help_lists_the_flags() -> None:
    result = subprocess.run([sys.executable, "-m", "smtpd_compat", "-h"], cwd=REPO_ROOT, env=_cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    for flag in ("--lmtp", "--unix PATH", "--unix-mode MODE"):
        assert flag in result.stdout


@unix_only
def test_the_log_names_a_unix_client_and_each_recipients_reply(sock_path: str, caplog: Any) -> None:
    caplog.set_level("INFO", logger="smtpd_compat")
    us = UnixServer(Verdicts, sock_path)
    try:
        with us.connect() as client:
            client.read_reply()
            client.send(b"LHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<ok@x>\r\nRCPT TO:<full@x>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
            client.read_until_closed()
    finally:
        us.stop()
    text = caplog.text
    assert "Verdicts: connection from a Unix socket" in text
    assert "unix:%s: message from a@x to ok@x, full@x, 2 bytes: 250 OK; 452 4.2.2 Mailbox full" % sock_path in text


class EarlyChannel(smtpd.SMTPChannel):
    """Sets smtpd's attributes before SMTPChannel.__init__ (its session is then made early)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.received_lines = []
        super().__init__(*args, **kwargs)


class EarlyVerdicts(Verdicts):
    channel_class = EarlyChannel


def test_a_session_made_before_the_channel_knew_speaks_lmtp() -> None:
    with running_server(EarlyVerdicts) as st, RawClient(st.address) as client:
        fqdn = fqdn_of(client)
        assert client.command(b"LHLO c") == LHLO_REPLY % fqdn
        client.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<ok@x>\r\nRCPT TO:<nobody@x>\r\nDATA\r\nhi\r\n.\r\n")
        assert [client.read_reply() for _ in range(6)][3:] == [b"354 End data with <CR><LF>.<CR><LF>\r\n",
                                                               b"250 2.0.0 OK\r\n", b"550 5.1.1 No such user\r\n"]


def test_lmtp_with_decode_data() -> None:
    # str messages; no 8BITMIME in the LHLO reply (as in EHLO's).
    with running_server(Verdicts, decode_data=True) as st, RawClient(st.address) as client:
        client.read_reply()
        reply = client.command(b"LHLO c")
        assert b"8BITMIME" not in reply and b"250-PIPELINING\r\n" in reply
        client.send(b"MAIL FROM:<a@x>\r\nRCPT TO:<full@x>\r\nDATA\r\nh\xc3\xa9\r\n.\r\n")
        assert [client.read_reply() for _ in range(4)][3] == b"452 4.2.2 Mailbox full\r\n"
        assert st.server.messages[0][3] == "h\u00e9"
