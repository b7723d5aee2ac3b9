"""The pytest plugin's catcher: ``@pytest.mark.smtpd_server(catcher=True)``."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import json
import smtplib
import urllib.request

import pytest
from smtpd_compat import CatcherServer


@pytest.mark.smtpd_server(catcher=True)
def test_catcher(smtpd_server):
    assert isinstance(smtpd_server, CatcherServer)
    with smtplib.SMTP(*smtpd_server.address, timeout=10) as client:
        client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
    with urllib.request.urlopen(smtpd_server.web_url + "/api/v1/messages", timeout=10) as response:
        listing = json.loads(response.read())
    assert [m["Subject"] for m in listing["messages"]] == ["hi"]


@pytest.mark.smtpd_server(catcher=True, max_messages=5)
def test_catcher_options(smtpd_server):
    assert smtpd_server.store.max_messages == 5


@pytest.mark.smtpd_server(server_class=CatcherServer, web=None)
def test_catcher_without_web(smtpd_server):
    assert smtpd_server.web_address is None
'''


def test_catcher_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest("--strict-markers", "-p", "no:cacheprovider", "-p", "smtpd_compat.pytest_plugin")
    result.assert_outcomes(passed=3)
