"""Real SMTP clients against the core server: curl, msmtp and Postfix's
smtp-source (each test is skipped when its program is not installed)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any, List

import pytest

from conftest import TIMEOUT, ServerThread

MESSAGE = (
    b"From: a@example.org\r\n"
    b"To: b@example.org\r\n"
    b"Subject: from a real client\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line starting with a dot\r\n"
    b"..two dots\r\n"
    b"\r\n"
    b"last line\r\n"
)
# What process_message gets: LF line ends, dot-stuffing undone, the final
# CRLF belonging to the end of data.
EXPECTED = MESSAGE[:-2].replace(b"\r\n", b"\n")


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip("%s is not installed" % program)
    return path


def run(args: List[str], stdin: bytes = b"") -> subprocess.CompletedProcess:
    result = subprocess.run(args, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode("utf-8", "replace")
    return result


def test_curl(smtp_server: ServerThread) -> None:
    curl = need("curl")
    host, port = smtp_server.address
    run([curl, "-sS", "--max-time", str(int(TIMEOUT)), "smtp://%s:%d/client.example" % (host, port),
         "--mail-from", "a@example.org", "--mail-rcpt", "b@example.org", "--mail-rcpt", "c@example.org",
         "-T", "-"], MESSAGE)
    (msg,) = smtp_server.server.wait_for(1)
    assert msg.mailfrom == "a@example.org"
    assert msg.rcpttos == ["b@example.org", "c@example.org"]
    assert msg.data == EXPECTED


def test_msmtp(smtp_server: ServerThread, tmp_path: Any) -> None:
    msmtp = need("msmtp")
    host, port = smtp_server.address
    run([msmtp, "-C", "/dev/null", "--host=%s" % host, "--port=%d" % port, "--auth=off", "--tls=off",
         "--from=a@example.org", "--domain=client.example", "b@example.org"], MESSAGE)
    (msg,) = smtp_server.server.wait_for(1)
    assert msg.mailfrom == "a@example.org"
    assert msg.rcpttos == ["b@example.org"]
    # msmtp may add headers it finds missing (Date:); the rest is ours.
    added, _, rest = msg.data.partition(b"From: a@example.org\n")
    assert b"From: a@example.org\n" + rest == EXPECTED
    assert all(line[:1].isalpha() and b":" in line for line in added.splitlines())


@pytest.mark.parametrize("reuse", [False, True], ids=["session-per-message", "messages-per-session"])
def test_smtp_source_parallel_sessions(server_factory: Any, reuse: bool) -> None:
    """Postfix's load generator: 40 messages with 3 recipients each over 4
    parallel sessions, all delivered."""
    smtp_source = need("smtp-source")
    st = server_factory()
    host, port = st.address
    args = [smtp_source, "-s", "4", "-m", "40", "-r", "3", "-l", "3000", "-M", "client.example",
            "-f", "sender@example.org", "-t", "rcpt@example.org"]
    if reuse:
        args.append("-d")
    run(args + ["%s:%d" % (host, port)])
    msgs = st.server.wait_for(40)
    assert len(msgs) == 40
    for m in msgs:
        assert m.mailfrom == "sender@example.org"
        assert len(m.rcpttos) == 3 and all(r.endswith("rcpt@example.org") for r in m.rcpttos)
        assert len(m.data) >= 3000
