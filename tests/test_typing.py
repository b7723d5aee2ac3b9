"""What a user's type checker sees: ``mypy --strict`` over small user scripts.

The package ships ``py.typed``; these scripts use it the way the docs do and
pin what ``mypy --strict`` says of them: a correct script is clean, the
option names and the server class of a :class:`Controller` are known to the
checker, and a misspelt option is an error.  Skipped where mypy is not
installed; ``.ci/run`` runs this module in the environment of its type check.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")

REPO_ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
import smtplib

from smtpd_compat import Controller, RecordingServer, smtpd


class Catcher(smtpd.SMTPServer):
    def process_message(self, peer, mailfrom, rcpttos, data, **kwargs):  # type: ignore[no-untyped-def]
        return None

    def accept_rcpt(self, channel: smtpd.SMTPChannel, address: str, params: list[str]) -> str | None:
        return None if address.endswith("@example.com") else "550 5.1.1 not here"


def send() -> int:
    with Controller(RecordingServer, data_size_limit=1024) as controller:
        host, port = controller.address
        with smtplib.SMTP(host, port) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"hi\\r\\n")
        reveal_type(controller.server)
        return len(controller.server.wait_for(1, timeout=5))


server = Catcher(("127.0.0.1", 0), None, max_errors=3, command_timeout=30.0, decode_data=True)
reveal_type(server.address)
reveal_type(server.port)
server.close()
"""

BAD = """\
from smtpd_compat import Controller, RecordingServer, smtpd

smtpd.SMTPServer(("127.0.0.1", 0), None, max_erors=3)
smtpd.SMTPServer(("127.0.0.1", 0), None, command_timeout="30")
controller = Controller(RecordingServer)
controller.server.no_such_attribute
"""


def run_mypy(tmp_path: Path, **scripts: str) -> list[str]:
    for name, text in scripts.items():
        (tmp_path / ("%s.py" % name)).write_text("from __future__ import annotations\n" + textwrap.dedent(text))
    command = [
        sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--hide-error-context",
        "--cache-dir", str(tmp_path / "cache"),
    ] + [str(tmp_path / ("%s.py" % name)) for name in scripts]
    # From the checkout, so mypy reads this package's sources and py.typed.
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert not done.stderr.strip(), done.stderr
    return [line.replace(str(tmp_path) + "/", "") for line in done.stdout.splitlines()]


def test_user_scripts_under_mypy_strict(tmp_path: Path) -> None:
    lines = run_mypy(tmp_path, good=GOOD, bad=BAD)
    good = [line for line in lines if line.startswith("good.py")]
    bad = [line for line in lines if line.startswith("bad.py")]

    # The correct script: no error, and the types a user relies on.
    assert not [line for line in good if ": error:" in line], good
    notes = [line.split("Revealed type is ", 1)[1] for line in good if "Revealed type is" in line]
    assert notes == [
        '"smtpd_compat.servers.RecordingServer"',
        '"tuple[builtins.str, builtins.int]"',
        '"builtins.int"',
    ] or notes == [
        '"smtpd_compat.servers.RecordingServer"',
        '"tuple[str, int]"',
        '"int"',
    ], notes

    # The wrong one: each mistake is reported on its own line.
    errors = {int(line.split(":")[1]): line for line in bad if ": error:" in line}
    assert sorted(errors) == [4, 5, 7], bad
    assert "max_erors" in errors[4] and "max_errors" in errors[4]
    assert "command_timeout" in errors[5]
    assert "no_such_attribute" in errors[7] and "RecordingServer" in errors[7]
