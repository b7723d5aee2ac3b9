"""The catcher's Maildir storage: messages, envelopes and read flags
survive a restart; a MailboxServer Maildir loads; the bound deletes files."""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

import pytest
from catcher_helpers import catcher, multipart, simple

from smtpd_compat import CatcherServer, Controller, MailboxServer
from smtpd_compat.servers import MailboxPathError


def _files(path: Path, sub: str) -> list:  # type: ignore[type-arg]
    return sorted(os.listdir(str(path / sub)))


def test_messages_survive_a_restart(tmp_path: Path) -> None:
    box = tmp_path / "mail"
    raw = multipart()
    with catcher(maildir=str(box)) as c:
        c.send(raw, sender="bounce@example.org", rcpts=["x@example.org", "y@example.org"])
        c.send(simple("second"))
        first, second = c.ids()[1], c.ids()[0]
        c.web.json("/api/v1/message/" + second)  # read
        before = c.web.json("/api/v1/message/" + first)
        assert c.web.json("/api/v1/info")["Storage"] == "maildir"
        assert c.web.json("/api/v1/messages")["max_messages"] is None  # no bound by default
        assert len(_files(box, "new")) == 0 and len(_files(box, "cur")) == 2
        c.web.write("PUT", "/api/v1/messages", {"IDs": [first], "Read": False})
    assert sorted(name.rpartition(":")[2] for name in _files(box, "cur")) == ["2,", "2,S"]
    with catcher(maildir=str(box)) as c:
        listing = c.web.json("/api/v1/messages")
        assert [(m["ID"], m["Read"]) for m in listing["messages"]] == [(second, True), (first, False)]
        after = c.web.json("/api/v1/message/" + first)
        for name in ("Subject", "From", "To", "Text", "HTML", "Attachments", "Created", "Size"):
            assert after[name] == before[name], name
        for name in ("MailFrom", "RcptTos", "Peer", "MailOptions", "Received"):
            assert after["Envelope"][name] == before["Envelope"][name], name
        assert after["Envelope"]["RcptTos"] == ["x@example.org", "y@example.org"]
        status, _, body = c.web.request("GET", "/api/v1/message/%s/raw" % first)
        assert body.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")  # the envelope line is not shown
        c.web.write("DELETE", "/api/v1/messages", {"IDs": [first]})
        assert len(_files(box, "cur")) == 1
    with catcher(maildir=str(box)) as c:
        assert c.ids() == [second]


def test_a_mailbox_server_maildir_loads_with_its_envelope(tmp_path: Path) -> None:
    box = tmp_path / "mail"
    with Controller(MailboxServer, maildir=str(box)) as controller:
        with smtplib.SMTP(*controller.address, timeout=10) as client:
            client.sendmail("old@example.org", ["a@example.org", "b@example.org"], simple("from before"))
    with catcher(maildir=str(box)) as c:
        (summary,) = c.web.json("/api/v1/messages")["messages"]
        assert summary["Subject"] == "from before"
        envelope = c.web.json("/api/v1/message/" + summary["ID"])["Envelope"]
        assert envelope["MailFrom"] == "old@example.org" and envelope["RcptTos"] == ["a@example.org", "b@example.org"]


def test_the_bound_deletes_the_oldest_files(tmp_path: Path) -> None:
    box = tmp_path / "mail"
    with catcher(maildir=str(box), max_messages=2) as c:
        for number in range(3):
            c.send(simple("m%d" % number))
        assert [m["Subject"] for m in c.web.json("/api/v1/messages")["messages"]] == ["m2", "m1"]
        assert len(_files(box, "new")) == 2 and c.web.json("/api/v1/info")["Dropped"] == 1


def test_a_bad_maildir_is_refused_before_listening(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(MailboxPathError, match="not a directory"):
        CatcherServer(("127.0.0.1", 0), None, map={}, maildir=str(not_a_dir))


def test_a_file_of_another_writer_with_any_name(tmp_path: Path) -> None:
    from urllib.parse import quote

    box = tmp_path / "mail"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    (box / "cur" / "1764676800.odd name%\u00e9.host,U=7:2,S").write_bytes(simple("foreign"))
    with catcher(maildir=str(box)) as c:
        (summary,) = c.web.json("/api/v1/messages")["messages"]
        assert summary["ID"] == "1764676800.odd name%\u00e9.host,U=7" and summary["Read"] is True
        assert c.web.json("/api/v1/message/" + quote(summary["ID"], safe=""))["Subject"] == "foreign"
        assert c.web.request("GET", "/view/%s.html" % quote(summary["ID"], safe=""))[0] == 200
