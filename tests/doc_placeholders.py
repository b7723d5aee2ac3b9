"""Stand-ins for the reader's own code in the documentation's examples.

test_doc_examples.py runs every ``python`` block of README.md and docs/.
A block that calls something the reader writes (``store()``,
``send_welcome_mail()``, ``MyServer``) says so in the marker line above it,
``<!-- example: needs: store -->``, and gets the stand-in of that name from
here.  ``serves`` (for blocks that listen on fixed ports and run a loop
forever) and ``certificate`` (for blocks that load a certificate from
/etc/ssl) change the environment instead; see :func:`serve_briefly` and
:func:`any_certificate`.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import sys
import threading
import time
import warnings
from email.message import EmailMessage
from typing import Any, Dict, List

from smtpd_compat import smtpd

# Modules an example imports as if they were the reader's: written next to
# the example before it runs.
MODULES: Dict[str, str] = {
    # A third-party library written for Python <= 3.11.
    "legacy_library": "import asyncore\nimport smtpd\n\nassert hasattr(smtpd, 'SMTPServer')\n",
}


def store(mailfrom: str, rcpttos: List[str], data: bytes) -> None:
    """Where the reader's server would keep a message."""


class MyServer(smtpd.SMTPServer):
    """The reader's server class."""

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: bytes, **kwargs: Any) -> None:
        store(mailfrom, rcpttos, data)


class ArchivingServer(smtpd.SMTPServer):
    """A server class of the reader's with an option of its own."""

    def __init__(self, *args: Any, archive_dir: Any = None, **kwargs: Any) -> None:
        self.archive_dir = archive_dir
        super().__init__(*args, **kwargs)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: bytes, **kwargs: Any) -> None:
        pass


class _Directory:
    def check(self, login: str, password: str) -> bool:
        return False


directory = _Directory()  # the reader's user directory


def send_welcome_mail(to: str, smtp_host: str, smtp_port: int) -> None:
    """The reader's code under test: sends a welcome mail."""
    message = EmailMessage()
    message["From"] = "app@example.com"
    message["To"] = to
    message["Subject"] = "Welcome"
    message.set_content("Hello Bob, and welcome.\n")
    with smtplib.SMTP(smtp_host, smtp_port, timeout=10) as client:
        client.send_message(message)


def send_the_mail(host: str = "127.0.0.1", port: int = 25) -> None:
    send_welcome_mail("bob@example.com", smtp_host=host, smtp_port=port)


def start_the_job(smtp_port: int) -> threading.Thread:
    """A background job that sends three messages."""

    def job() -> None:
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            for rcpt in ("a@x", "b@x", "c@x"):
                client.sendmail("report@example.com", [rcpt], b"Subject: report\r\n\r\nnightly\r\n")

    thread = threading.Thread(target=job)
    thread.start()
    return thread


# -- environments ------------------------------------------------------------------
def serve_briefly() -> None:
    """For blocks that listen on fixed ports and serve forever.

    Every dispatcher binds to 127.0.0.1 on a port the kernel chooses (the
    examples' 8025, 587 or 0.0.0.0:25 may be taken, or need privileges),
    and ``asyncore.loop()`` serves until a client has connected to each
    listening server and said NOOP, then closes everything and returns.
    Also applied to the standard library's asyncore where it exists.
    """
    from smtpd_compat import asyncore as ours

    modules = [ours]
    if sys.version_info < (3, 12):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import asyncore as stdlib_asyncore
        modules.append(stdlib_asyncore)
    for module in modules:
        _patch(module)


def _patch(module: Any) -> None:
    real_bind = module.dispatcher.bind
    real_loop = module.loop

    def bind(self: Any, addr: Any) -> Any:
        return real_bind(self, ("127.0.0.1", 0) if isinstance(addr, tuple) else addr)

    def loop(timeout: float = 30.0, use_poll: bool = False, map: Any = None, count: Any = None) -> None:
        socket_map = module.socket_map if map is None else map
        listening = [d for d in list(socket_map.values()) if getattr(d, "accepting", False)]
        failures: List[BaseException] = []
        done = threading.Event()

        def client() -> None:
            try:
                for server in listening:
                    with smtplib.SMTP(*server.socket.getsockname()[:2], timeout=10) as c:
                        assert c.noop()[0] == 250
            except BaseException as err:  # noqa: BLE001 - reported below
                failures.append(err)
            finally:
                done.set()

        threading.Thread(target=client, daemon=True).start()
        deadline = time.monotonic() + 30
        while not done.is_set() and socket_map and time.monotonic() < deadline:
            real_loop(timeout=0.05, use_poll=use_poll, map=socket_map, count=1)
        closed_by_the_example = not any(d in socket_map.values() for d in listening)
        module.close_all(map=socket_map)
        if failures and not closed_by_the_example:
            raise failures[0]
        if not done.is_set() and not closed_by_the_example:
            raise AssertionError("the example's server did not answer")

    module.dispatcher.bind = bind
    module.loop = loop


def any_certificate() -> None:
    """For blocks that load /etc/ssl/...: every ``load_cert_chain()`` loads
    the test certificate named by $DOC_EXAMPLE_CERT and $DOC_EXAMPLE_KEY."""
    cert, key = os.environ["DOC_EXAMPLE_CERT"], os.environ["DOC_EXAMPLE_KEY"]
    real = ssl.SSLContext.load_cert_chain

    def load_cert_chain(self: ssl.SSLContext, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        real(self, cert, key)

    ssl.SSLContext.load_cert_chain = load_cert_chain  # type: ignore[method-assign]
