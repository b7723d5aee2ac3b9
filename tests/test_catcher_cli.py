"""``python -m smtpd_compat -n -c CatcherServer --web HOST:PORT HOST:PORT``
end to end in a subprocess: smtplib sends, urllib reads the API; the
catcher's flags and their errors."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_cli import free_port, one_error_line, run_cli
from test_cli_usability import Announced, announced  # noqa: F401  (fixture)

from conftest import has_ipv6
from tls_helpers import TLSFiles, tls_files  # noqa: F401  (fixture)

WEB = re.compile(r"web page and API on (http://\S+)$")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode("utf-8"))


def test_end_to_end(announced: Any) -> None:
    smtp_port, web_port = free_port(), free_port()
    server: Announced = announced("-c", "CatcherServer", "--web", "127.0.0.1:%d" % web_port, "127.0.0.1:%d" % smtp_port)
    assert server.port == smtp_port
    assert server.first_line.endswith(", keeping every message in memory; web page and API on http://127.0.0.1:%d" % web_port)
    server.send(b"Subject: over the CLI\r\n\r\nhello\r\n")
    listing = _get("http://127.0.0.1:%d/api/v1/messages" % web_port)
    assert [m["Subject"] for m in listing["messages"]] == ["over the CLI"]
    status, _, _ = server.stop(signal.SIGTERM)
    assert status == 0


def test_default_web_address_and_max_messages(announced: Any, tmp_path: Path) -> None:
    server: Announced = announced("-c", "CatcherServer", "--web", "127.0.0.1:0", "--max-messages", "1",
                                  "--maildir", str(tmp_path / "box"), "127.0.0.1:0")
    url = WEB.search(server.first_line).group(1)
    assert "keeping every message in the Maildir %s" % (tmp_path / "box") in server.first_line
    server.send(b"Subject: one\r\n\r\n1\r\n")
    server.send(b"Subject: two\r\n\r\n2\r\n")
    info = _get(url + "/api/v1/info")
    assert (info["Messages"], info["Dropped"], info["MaxMessages"], info["Storage"]) == (1, 1, 1, "maildir")
    server.stop()


def test_help_names_the_catcher_flags() -> None:
    out = run_cli("--help").stdout
    for flag in ("--web HOST:PORT", "--max-messages N", "--web-allow-remote", "--web-auth-file FILE", "CatcherServer"):
        assert flag in out


def test_flag_errors(tmp_path: Path) -> None:
    assert one_error_line(run_cli("-n", "-c", "DebuggingServer", "--web", "127.0.0.1:0", ":0")) == \
        "smtpd_compat: error: --web applies to -c CatcherServer, not to DebuggingServer"
    assert "--max-messages applies to -c CatcherServer" in one_error_line(run_cli("-n", "-c", "RecordingServer", "--max-messages", "3", ":0"))
    assert "not a loopback address: add --web-allow-remote" in one_error_line(
        run_cli("-n", "-c", "CatcherServer", "--web", "0.0.0.0:0", ":0"))
    assert "invalid number" in one_error_line(run_cli("-n", "-c", "CatcherServer", "--max-messages", "-1", ":0"))
    loose = tmp_path / "users"
    loose.write_text("ann:pw\n")
    os.chmod(str(loose), 0o644)
    assert "--web-auth-file: auth file" in one_error_line(
        run_cli("-n", "-c", "CatcherServer", "--web", "127.0.0.1:0", "--web-auth-file", str(loose), ":0"))


def test_web_port_in_use(announced: Any) -> None:
    first: Announced = announced("-c", "CatcherServer", "--web", "127.0.0.1:0", "127.0.0.1:0")
    taken = WEB.search(first.first_line).group(1).rpartition(":")[2]
    line = one_error_line(run_cli("-n", "-c", "CatcherServer", "--web", "127.0.0.1:%s" % taken, "127.0.0.1:0"))
    assert line.startswith("smtpd_compat: error: cannot serve --web 127.0.0.1:%s: " % taken)


def test_web_auth_file(announced: Any, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("ann:s3cret\n")
    os.chmod(str(users), stat.S_IRUSR | stat.S_IWUSR)
    server: Announced = announced("-c", "CatcherServer", "--web", "127.0.0.1:0", "--web-auth-file", str(users), "127.0.0.1:0")
    url = WEB.search(server.first_line).group(1)
    try:
        urllib.request.urlopen(url + "/api/v1/info", timeout=10)
        raise AssertionError("no authentication asked")
    except urllib.error.HTTPError as err:
        assert err.code == 401
    request = urllib.request.Request(url + "/api/v1/info", headers={"Authorization": "Basic YW5uOnMzY3JldA=="})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_the_smtp_auth_file_guards_the_page_too(announced: Any, tmp_path: Path, tls_files: TLSFiles) -> None:
    users = tmp_path / "users"
    users.write_text("ann:s3cret\n")
    os.chmod(str(users), stat.S_IRUSR | stat.S_IWUSR)
    server: Announced = announced("-c", "CatcherServer", "--web", "127.0.0.1:0", "--tls-cert", tls_files.cert,
                                  "--tls-key", tls_files.key, "--auth-file", str(users), "127.0.0.1:0")
    url = WEB.search(server.first_line).group(1)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url + "/api/v1/messages", timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(url + "/api/v1/messages", headers={"Authorization": "Basic YW5uOnMzY3JldA=="})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.mark.skipif(not has_ipv6(), reason="no ::1 on this machine")
def test_web_on_ipv6(announced: Any) -> None:
    server: Announced = announced("-c", "CatcherServer", "--web", "[::1]:0", "127.0.0.1:0")
    url = WEB.search(server.first_line).group(1)
    assert url.startswith("http://[::1]:")
    server.send(b"Subject: v6 page\r\n\r\nhello\r\n")
    assert [m["Subject"] for m in _get(url + "/api/v1/messages")["messages"]] == ["v6 page"]
