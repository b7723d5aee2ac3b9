"""RecordingServer and MailboxServer, end to end with smtplib, swaks and the CLI."""

from __future__ import annotations

import email.message
import mailbox
import os
import shutil
import smtplib
import subprocess
import threading
from pathlib import Path
from typing import Any, List

import pytest
from test_serving import cli_server  # noqa: F401  (the fixture, shared)

from smtpd_compat import Controller, MailboxServer, RecordingServer, _cli, servers

from conftest import TIMEOUT

# Bodies chosen to catch every kind of mangling: dot-stuffing, blank lines,
# trailing spaces, 8-bit text, long lines, a lone CR, a missing final EOL.
BODIES = [
    b"plain text\r\n",
    b".starts with a dot\r\n..two dots\r\n.\r\nx\r\n",
    b"\r\n\r\nblank lines first and last\r\n\r\n",
    b"trailing spaces   \r\n\ttab\r\n",
    "8-bit: caf\u00e9 \u2603 \u00fcber\r\n".encode("utf-8"),
    b"long " + b"x" * 5000 + b"\r\n",
    b"no final line ending",
]


def sent_to_stored(body: bytes) -> bytes:
    """What smtpd hands to process_message for *body*: CRLF -> LF, the
    final line ending belongs to the end-of-data marker."""
    text = body.replace(b"\r\n", b"\n")
    return text[:-1] if text.endswith(b"\n") else text


def send(address: Any, mailfrom: str, rcpttos: List[str], message: bytes, **kwargs: Any) -> None:
    with smtplib.SMTP(*address, timeout=TIMEOUT) as client:
        assert client.sendmail(mailfrom, rcpttos, message, **kwargs) == {}


# -- RecordingServer --------------------------------------------------------------------
def test_recording_server_keeps_envelope_message_and_bytes() -> None:
    raw = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\nbody\r\n"
    with Controller(RecordingServer) as controller:
        send(controller.address, "a@example.com", ["b@example.com", "c@example.com"], raw,
             mail_options=["BODY=8BITMIME"])
        (record,) = controller.server.wait_for(1, TIMEOUT)
    assert record.mailfrom == "a@example.com"
    assert record.rcpttos == ["b@example.com", "c@example.com"]
    assert record.peer[0] == "127.0.0.1"
    assert record.data == sent_to_stored(raw)
    assert "BODY=8BITMIME" in record.mail_options
    assert isinstance(record.message, email.message.EmailMessage)
    assert record.message["Subject"] == "caf\u00e9"  # policy.default decodes headers
    assert record.message.get_content() == "body"


def test_recording_server_decode_data_still_stores_bytes() -> None:
    with Controller(RecordingServer, decode_data=True) as controller:
        send(controller.address, "a@example.com", ["b@example.com"], "Subject: s\r\n\r\nt\u00e9xt\r\n".encode("utf-8"))
        (record,) = controller.server.wait_for(1, TIMEOUT)
    assert record.data == "Subject: s\n\nt\u00e9xt".encode("utf-8")
    assert record.message["Subject"] == "s"
    assert record.message.get_payload(decode=True) == "t\u00e9xt".encode("utf-8")


def test_wait_for_times_out_with_timeouterror() -> None:
    with Controller(RecordingServer) as controller:
        with pytest.raises(TimeoutError):
            controller.server.wait_for(1, timeout=0.05)


def test_wait_for_wakes_when_the_message_arrives() -> None:
    with Controller(RecordingServer) as controller:
        result: List[Any] = []
        waiter = threading.Thread(target=lambda: result.append(controller.server.wait_for(2, TIMEOUT)))
        waiter.start()
        for n in range(2):
            send(controller.address, "a@example.com", ["b@example.com"], b"Subject: %d\r\n\r\nx\r\n" % n)
        waiter.join(TIMEOUT)
        assert not waiter.is_alive()
        assert [m.message["Subject"] for m in result[0]] == ["0", "1"]


def test_reply_refuses_and_does_not_record() -> None:
    with Controller(RecordingServer) as controller:
        controller.server.reply = "550 No thanks"
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: no\r\n\r\nx\r\n")
            assert info.value.smtp_code == 550
        controller.server.reply = None
        send(controller.address, "a@example.com", ["b@example.com"], b"Subject: yes\r\n\r\nx\r\n")
        (record,) = controller.server.wait_for(1, TIMEOUT)
    assert record.message["Subject"] == "yes"


def test_clear_and_messages_is_a_copy() -> None:
    with Controller(RecordingServer) as controller:
        send(controller.address, "a@example.com", ["b@example.com"], b"Subject: 1\r\n\r\nx\r\n")
        snapshot = controller.server.wait_for(1, TIMEOUT)
        snapshot.clear()
        assert len(controller.server.messages) == 1
        controller.server.clear()
        assert controller.server.messages == []


# -- MailboxServer: Maildir -----------------------------------------------------------------
def read_maildir(path: Path) -> List[bytes]:
    box = mailbox.Maildir(str(path), factory=None, create=False)
    return [box.get_bytes(key) for key in box.keys()]


def split_headers(stored: bytes) -> Any:
    head, _, body = stored.partition(b"\n\n")
    return head.split(b"\n"), body


def test_maildir_delivery_is_byte_exact(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    with Controller(MailboxServer, maildir=maildir) as controller:
        for n, body in enumerate(BODIES):
            message = b"Subject: body %d\r\nX-Seq: %d\r\n\r\n" % (n, n) + body
            send(controller.address, "sender@example.com", ["r1@example.com", "r2@example.com"], message)
        host = controller.address[0]
    assert os.listdir(maildir / "tmp") == []  # every delivery moved out of tmp/
    assert len(os.listdir(maildir / "new")) == len(BODIES)
    stored = {}
    for data in read_maildir(maildir):
        headers, body = split_headers(data)
        # The trace headers come first, in this order.
        assert headers[:3] == [
            b"Return-Path: <sender@example.com>",
            b"X-Peer: " + host.encode(),
            b"X-RcptTo: r1@example.com, r2@example.com",
        ]
        seq = int(next(h for h in headers if h.startswith(b"X-Seq: "))[7:])
        stored[seq] = body
    for n, body in enumerate(BODIES):
        assert stored[n] == sent_to_stored(body), n


def test_maildir_null_sender_and_smtputf8(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    with Controller(MailboxServer, maildir=maildir, enable_SMTPUTF8=True) as controller:
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            client.sendmail("<>", ["b@example.com"], b"Subject: bounce\r\n\r\nx\r\n")
            client.sendmail("j\u00f6rg@example.com", ["\u00e5sa@example.com"],
                            "Subject: utf8\r\n\r\ny\r\n".encode("utf-8"), mail_options=["SMTPUTF8"])
    messages = read_maildir(maildir)
    assert len(messages) == 2
    heads = sorted(split_headers(m)[0][:3] for m in messages)
    assert [b"Return-Path: <>", b"X-Peer: 127.0.0.1", b"X-RcptTo: b@example.com"] in heads
    assert ["Return-Path: <j\u00f6rg@example.com>".encode("utf-8"), b"X-Peer: 127.0.0.1",
            "X-RcptTo: \u00e5sa@example.com".encode("utf-8")] in heads


def test_delivery_failure_is_a_451(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    with Controller(MailboxServer, maildir=maildir) as controller:
        shutil.rmtree(maildir)  # the mailbox disappears under the server
        with smtplib.SMTP(*controller.address, timeout=TIMEOUT) as client:
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.sendmail("a@example.com", ["b@example.com"], b"Subject: lost\r\n\r\nx\r\n")
            assert info.value.smtp_code == 451


def test_needs_exactly_one_mailbox(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        MailboxServer(("127.0.0.1", 0), map={})
    with pytest.raises(ValueError):
        MailboxServer(("127.0.0.1", 0), map={}, maildir=tmp_path / "m", mbox=tmp_path / "f")


def deliver_one(server: MailboxServer) -> Any:
    try:
        return server.process_message(("127.0.0.1", 1), "s@example.com", ["r@example.com"], b"Subject: one\n\nx")
    finally:
        server.close()


def test_an_existing_empty_directory_becomes_a_maildir(tmp_path: Path) -> None:
    # Before, it was taken as it was, and every message got 451
    # (FileNotFoundError: no tmp/).
    maildir = tmp_path / "empty"
    maildir.mkdir()
    assert deliver_one(MailboxServer(("127.0.0.1", 0), map={}, maildir=maildir)) is None
    assert sorted(os.listdir(maildir)) == ["cur", "new", "tmp"]
    assert len(read_maildir(maildir)) == 1


def test_an_existing_maildir_with_other_files_is_used(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    mailbox.Maildir(str(maildir), create=True)
    (maildir / "dovecot-uidlist").write_text("3 V1 N1\n")
    assert deliver_one(MailboxServer(("127.0.0.1", 0), map={}, maildir=maildir)) is None
    assert len(read_maildir(maildir)) == 1


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "passwd"
    path.write_text("root:x:0:0:root:/root:/bin/sh\n")
    return path


def a_full_directory(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    path.mkdir()
    (path / "notes.txt").write_text("mine\n")
    (path / "new").mkdir()  # one of the three is not enough
    return path


@pytest.mark.parametrize(
    "make, reason",
    [
        (a_file, "exists and is not a directory"),
        (a_full_directory, "not a Maildir (no tmp/, cur/) and not empty"),
        (lambda tmp_path: tmp_path / "missing" / "mail", "cannot create the directory: No such file or directory"),
    ],
    ids=["file", "full-directory", "no-parent"],
)
def test_a_path_that_is_not_a_maildir_is_refused_at_start_up(tmp_path: Path, make: Any, reason: str) -> None:
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError) as info:
        MailboxServer(("127.0.0.1", 0), map={}, maildir=path)
    assert isinstance(info.value, servers.MailboxPathError)
    assert str(info.value) == "maildir=%r: %s" % (str(path), reason)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing created in someone else's directory


@pytest.mark.parametrize(
    "make, reason",
    [
        (a_file, 'not empty and not an mbox file (it does not begin with "From ")'),
        (lambda tmp_path: tmp_path, "exists and is a directory"),
        (lambda tmp_path: tmp_path / "missing" / "mbox", "cannot open it for appending: No such file or directory"),
    ],
    ids=["not-an-mbox", "directory", "no-parent"],
)
def test_a_path_that_is_not_an_mbox_is_refused_at_start_up(tmp_path: Path, make: Any, reason: str) -> None:
    path = make(tmp_path)
    content = path.read_bytes() if path.is_file() else None
    with pytest.raises(servers.MailboxPathError) as info:
        MailboxServer(("127.0.0.1", 0), map={}, mbox=path)
    assert str(info.value) == "mbox=%r: %s" % (str(path), reason)
    if content is not None:
        assert path.read_bytes() == content


def test_an_empty_or_missing_mbox_is_fine(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    for name in ("empty", "missing"):
        assert deliver_one(MailboxServer(("127.0.0.1", 0), map={}, mbox=tmp_path / name)) is None


# -- MailboxServer: mbox ----------------------------------------------------------------------
def test_mbox_delivery(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    bodies = [b"first\r\n", b"second\r\nFrom the start of a line\r\n"]
    with Controller(MailboxServer, mbox=path) as controller:
        for n, body in enumerate(bodies):
            send(controller.address, "s@example.com", ["r@example.com"], b"Subject: %d\r\n\r\n" % n + body)
    box = mailbox.mbox(str(path), create=False)
    try:
        messages = [box.get_bytes(key) for key in box.keys()]
        froms = [box.get_message(key).get_from() for key in box.keys()]
    finally:
        box.close()
    assert len(messages) == 2
    assert all(f.startswith("s@example.com ") for f in froms)
    for n, (stored, body) in enumerate(zip(messages, bodies)):
        headers, stored_body = split_headers(stored)
        assert headers[:3] == [b"Return-Path: <s@example.com>", b"X-Peer: 127.0.0.1", b"X-RcptTo: r@example.com"]
        expected = sent_to_stored(body).replace(b"\nFrom ", b"\n>From ")  # mbox quoting
        assert stored_body.rstrip(b"\n") == expected.rstrip(b"\n"), n
    assert not (tmp_path / "mbox.lock").exists()  # the dot-lock was released


@pytest.mark.parametrize(
    "message",
    [b"", b"Subject: x\n\nbody", b"Subject: x\n\nbody\n", b"From the first line\nFrom again\n>From\nend\n", b"\n\n"],
)
def test_mbox_entry_is_what_mailbox_writes(tmp_path: Path, message: bytes) -> None:
    from_line = b"From s@example.com Sat Nov 28 23:59:00 2026"
    reference = tmp_path / "reference"
    box = mailbox.mbox(str(reference), create=True)
    try:
        for _ in range(2):
            box.add(from_line + b"\n" + message)
        box.flush()
    finally:
        box.close()
    assert reference.read_bytes() == servers.mbox_entry(from_line, message) * 2


def test_mbox_delivery_does_not_read_the_mailbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # mailbox.mbox.add() indexes the whole file before appending: each
    # delivery would cost more than the one before.
    path = tmp_path / "mbox"
    path.write_bytes(servers.mbox_entry(b"From old@example.com Sat Nov 28 23:59:00 2026", b"Subject: old\n\nx\n"))

    def no_index(self: Any) -> None:
        raise AssertionError("the mailbox was indexed")

    monkeypatch.setattr(mailbox.mbox, "_generate_toc", no_index)
    server = MailboxServer(("127.0.0.1", 0), map={}, mbox=path)
    try:
        assert server.process_message(("127.0.0.1", 1), "s@example.com", ["r@example.com"], b"Subject: new\n\ny") is None
    finally:
        server.close()
    monkeypatch.undo()
    box = mailbox.mbox(str(path), create=False)
    try:
        subjects = [box.get_message(key)["Subject"] for key in box.keys()]
    finally:
        box.close()
    assert subjects == ["old", "new"]


# -- from the command line ------------------------------------------------------------------------
def test_cli_mail_catcher_with_maildir(tmp_path: Path, cli_server: Any) -> None:
    maildir = tmp_path / "caught"
    server = cli_server("-c", "MailboxServer", "--maildir", str(maildir))
    send(server.address, "a@example.com", ["b@example.com"], b"Subject: caught\r\n\r\n.dot\r\nend\r\n")
    assert server.terminate_and_wait() == 0
    (stored,) = read_maildir(maildir)
    headers, body = split_headers(stored)
    assert b"Subject: caught" in headers
    assert body == b".dot\nend"


def test_cli_mail_catcher_with_mbox(tmp_path: Path, cli_server: Any) -> None:
    path = tmp_path / "caught.mbox"
    server = cli_server("-c", "MailboxServer", "--mbox", str(path))
    send(server.address, "a@example.com", ["b@example.com"], b"Subject: caught\r\n\r\nbody\r\n")
    assert server.terminate_and_wait() == 0
    box = mailbox.mbox(str(path), create=False)
    try:
        (message,) = list(box)
    finally:
        box.close()
    assert message["Subject"] == "caught" and message["X-RcptTo"] == "b@example.com"


@pytest.mark.parametrize(
    "argv, expected",
    [
        # Names the flags (deliberately changed from the class's "needs
        # exactly one of maildir= or mbox=", which names the keywords).
        (["-n", "-c", "MailboxServer", "127.0.0.1:0"], "needs --maildir DIR or --mbox FILE"),
        (["-n", "-c", "DebuggingServer", "--maildir", "x", "127.0.0.1:0"], "maildir"),
    ],
)
def test_cli_mailbox_option_errors(argv: List[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("smtpd_compat: error: ") and expected in err


@pytest.mark.parametrize(
    "option, make, reason",
    [
        ("--maildir", lambda tmp_path: tmp_path / "missing" / "mail", "cannot create the directory"),
        ("--maildir", a_file, "exists and is not a directory"),
        ("--maildir", a_full_directory, "not a Maildir"),
        ("--mbox", lambda tmp_path: tmp_path, "exists and is a directory"),
    ],
)
def test_cli_names_the_mailbox_option_and_path(tmp_path: Path, option: str, make: Any, reason: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Before: "cannot listen on 127.0.0.1:0: No such file or directory",
    # or a server that started and answered 451 to every message.
    path = make(tmp_path)
    argv = ["-n", "-c", "MailboxServer", option, str(path), "127.0.0.1:0"]
    try:
        server = _cli.make_server(_cli.parse_args(argv))
    except _cli.UsageError as err:
        assert str(err).startswith("%s %s: %s" % (option, path, reason))
    else:
        server.close()
        pytest.fail("the server started")
    # main() reports it as one line, status 2 (it would serve otherwise).
    assert _cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("smtpd_compat: error: %s %s: %s" % (option, path, reason))
    assert len(err.splitlines()) == 1 and "listen" not in err


def test_servers_resolvable_by_class_name() -> None:
    assert _cli.resolve_class("MailboxServer") is MailboxServer
    assert _cli.resolve_class("RecordingServer") is RecordingServer


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_to_maildir(tmp_path: Path) -> None:
    maildir = tmp_path / "mail"
    with Controller(MailboxServer, maildir=maildir) as controller:
        host, port = controller.address
        result = subprocess.run(
            ["swaks", "--server", host, "--port", str(port), "--from", "swaks@example.com",
             "--to", "one@example.com,two@example.com", "--header", "Subject: swaks maildir",
             "--body", "line one\n.line two\n"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    (stored,) = read_maildir(maildir)
    headers, body = split_headers(stored)
    assert headers[0] == b"Return-Path: <swaks@example.com>"
    assert headers[2] == b"X-RcptTo: one@example.com, two@example.com"
    assert b"Subject: swaks maildir" in headers
    assert b"line one\n.line two" in body
