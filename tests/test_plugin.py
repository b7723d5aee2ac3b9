"""The pytest plugin: fixtures smtpd_server/smtpd_controller and the marker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def plugin_installed() -> bool:
    """Whether pytest loads the plugin by itself (the package is installed)."""
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])  # type: ignore[attr-defined]
    return any(ep.value == "smtpd_compat.pytest_plugin" for ep in group)


# Works whether or not the package is installed: the entry point has the
# module's name, so pytest does not register the plugin a second time.
PLUGIN = ["-p", "smtpd_compat.pytest_plugin"]


INNER_TESTS = '''
import smtplib
import pytest

def test_fixture_yields_a_running_recording_server(smtpd_server):
    with smtplib.SMTP(*smtpd_server.address, timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
    (message,) = smtpd_server.wait_for(1, timeout=10)
    assert message.message["Subject"] == "hi"
    assert message.rcpttos == ["b@example.com"]

@pytest.mark.smtpd_server(data_size_limit=10)
def test_marker_options(smtpd_server):
    assert smtpd_server.data_size_limit == 10
    with smtplib.SMTP(*smtpd_server.address, timeout=10) as client:
        with pytest.raises(smtplib.SMTPSenderRefused):
            client.sendmail("a@example.com", ["b@example.com"], b"x" * 100)

def test_controller_fixture(smtpd_controller, smtpd_server):
    assert smtpd_controller.server is smtpd_server
    assert smtpd_controller.thread.is_alive()

PORTS = []

@pytest.mark.parametrize("n", range(3))
def test_each_test_gets_a_fresh_server(smtpd_server, n):
    assert smtpd_server.messages == []
    assert smtpd_server.port not in PORTS or len(set(PORTS)) == len(PORTS)
    PORTS.append(smtpd_server.port)
'''


def test_fixtures_and_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider", *PLUGIN)
    result.assert_outcomes(passed=6)


@pytest.mark.skipif(not plugin_installed(), reason="smtpd_compat is not installed (pip install -e .)")
def test_installed_package_loads_the_plugin_by_itself(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_marker_is_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers", *PLUGIN)
    result.stdout.fnmatch_lines(["*smtpd_server(**options)*"])


def test_the_package_never_imports_pytest() -> None:
    code = (
        "import sys\n"
        "sys.modules['pytest'] = None  # any import of pytest now fails\n"
        "import smtpd_compat\n"
        "from smtpd_compat import Controller, RecordingServer, MailboxServer\n"
        "assert 'smtpd_compat.pytest_plugin' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_entry_point_is_declared() -> None:
    text = (REPO_ROOT / "pyproject.toml").read_text()
    section = re.search(r"^\[project\.entry-points\.pytest11\]\n(.*?)(?:^\[|\Z)", text, re.M | re.S)
    assert section is not None
    assert re.search(r'^"smtpd_compat\.pytest_plugin"\s*=\s*"smtpd_compat\.pytest_plugin"\s*$', section.group(1), re.M)
