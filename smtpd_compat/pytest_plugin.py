"""pytest plugin: a running SMTP server for each test that asks for one.

Active wherever smtpd_compat is installed next to pytest (through the
``pytest11`` entry point), or with ``-p smtpd_compat.pytest_plugin``.
Nothing else in the package imports this module, so pytest is never a
run-time dependency.

Fixtures:

``smtpd_server``
    a :class:`~smtpd_compat.servers.RecordingServer` served by a
    :class:`~smtpd_compat.controller.Controller` on ``127.0.0.1`` and a free
    port; stopped (every session closed, thread joined) after the test::

        def test_signup_sends_mail(smtpd_server):
            app.send_welcome(host=smtpd_server.address[0], port=smtpd_server.port)
            (message,) = smtpd_server.wait_for(1, timeout=5)
            assert message.message["Subject"] == "Welcome"

``smtpd_controller``
    the :class:`~smtpd_compat.controller.Controller` behind it.

The ``smtpd_server`` marker passes options to the server:
``@pytest.mark.smtpd_server(data_size_limit=1000, enable_SMTPUTF8=True)``;
``server_class=`` picks another class and ``addr=("::1", 0)`` another
address.

The mail catcher (docs/catcher.md): ``@pytest.mark.smtpd_server(catcher=True)``
makes the server a :class:`~smtpd_compat.catcher.CatcherServer` with its web
server on ``127.0.0.1`` and a free port (``web=("::1", 0)`` chooses another;
any CatcherServer keyword may be given), so a test can query its HTTP API
at ``smtpd_server.web_url``::

    @pytest.mark.smtpd_server(catcher=True)
    def test_api(smtpd_server):
        ...
        urllib.request.urlopen(smtpd_server.web_url + "/api/v1/messages")
"""

from __future__ import annotations

from typing import Any, Dict, Iterator

import pytest

from .controller import Controller
from .servers import RecordingServer

# A test's server should not keep the suite waiting for a client that
# stalls in DATA: a short default bound for the graceful stop.
_SHUTDOWN_TIMEOUT = 5.0


def pytest_configure(config: Any) -> None:
    config.addinivalue_line(
        "markers",
        "smtpd_server(**options): options for the smtpd_server fixture's server "
        "(SMTPServer keywords, plus server_class=, addr= and catcher=True for a CatcherServer)",
    )


def _options(request: Any) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    # The closest marker wins: a test's marker overrides its class's or module's.
    for marker in reversed(list(request.node.iter_markers("smtpd_server"))):
        if marker.args:
            raise TypeError("the smtpd_server marker takes keyword arguments only")
        options.update(marker.kwargs)
    return options


@pytest.fixture
def smtpd_controller(request: Any) -> "Iterator[Controller[Any]]":
    """A started :class:`Controller` running a RecordingServer (or the
    marker's ``server_class``); stopped after the test."""
    options = _options(request)
    if options.pop("catcher", False):
        from .catcher import CatcherServer

        options.setdefault("server_class", CatcherServer)
        options.setdefault("web", ("127.0.0.1", 0))
    server_class = options.pop("server_class", RecordingServer)
    addr = options.pop("addr", ("127.0.0.1", 0))
    options.setdefault("shutdown_timeout", _SHUTDOWN_TIMEOUT)
    controller = Controller(server_class, addr, **options)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def smtpd_server(smtpd_controller: "Controller[Any]") -> Any:
    """The running server: ``address``, ``port``, ``messages``, ``wait_for()``."""
    return smtpd_controller.server
