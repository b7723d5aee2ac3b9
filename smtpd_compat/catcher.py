"""``CatcherServer``: a mail catcher with a web page and an HTTP API.

::

    python -m smtpd_compat -n -c CatcherServer --web 127.0.0.1:8026 localhost:8025

or from Python::

    server = CatcherServer(("127.0.0.1", 0), None, web=("127.0.0.1", 0))
    print(server.web_url)            # http://127.0.0.1:40123
    serve_forever(server)            # or Controller(CatcherServer, web=...)

Every message is accepted as smtpd accepts it (the replies are smtpd's),
kept (:mod:`smtpd_compat._catcher_store`: in memory under
``max_messages``, or in a Maildir) and shown by a web server in a thread of
the same process (:mod:`smtpd_compat._catcher_http`, which says why
threads), whose routes are :mod:`smtpd_compat._catcher_api` (the JSON API)
and :mod:`smtpd_compat._catcher_pages` (the page, the message views, the
event stream).  docs/catcher.md is the user's guide.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Any, Dict, List, Optional, Tuple, Union

from . import _catcher_api, _catcher_chaos, _catcher_ops_api, _catcher_pages, _catcher_release, _logging, _received, _serving  # noqa: F401,E501 - the routes register on import
from ._catcher_http import Auth, WebServer, is_loopback, log
from ._catcher_store import Entry, Store
from .servers import MailboxPathError, _maildir_problem
from .smtpd import SMTPServer

__all__ = ["CatcherServer", "DEFAULT_MAX_MESSAGES", "DEFAULT_WEB"]

#: The bound of a memory store when none is given (a Maildir has none).
DEFAULT_MAX_MESSAGES = 1000
#: Where ``-c CatcherServer`` serves its page when ``--web`` is not given.
DEFAULT_WEB = ("127.0.0.1", 8026)


class CatcherServer(_catcher_chaos.ChaosHooks, _catcher_release.Releasing, SMTPServer):
    """Accept every message, keep it, and show it on a web page and an HTTP API.

    Keyword arguments beyond :class:`~smtpd_compat.smtpd.SMTPServer`'s:

    *web*
        ``(host, port)`` of the web page and API (port 0: any free port;
        ``("::1", 8026)`` for IPv6), or None for none (the messages are
        then only in :attr:`store`).  A host that is not a loopback
        address is refused unless *web_allow_remote* is true.
    *max_messages*
        the most messages kept; the oldest is dropped (and counted) when
        one more arrives.  Default: 1000 in memory, no bound in a Maildir;
        0 means no bound.
    *maildir*
        keep the messages in this Maildir (created when missing or empty)
        instead of memory: they survive a restart, envelope included.
    *web_allow_remote*
        allow *web* on a non-loopback address (and any ``Host`` header).
    *web_auth*
        a :class:`~smtpd_compat.PasswordFile` (or anything with
        ``check(user, password)``): every request then needs HTTP basic
        authentication.
    *chaos*, *chaos_random*, *release_to*
        failures on purpose and where a message is released to: see
        docs/catcher-ops.md (``_catcher_chaos``, ``_catcher_release``).

    Attributes for the caller: :attr:`store` (the messages),
    :attr:`web_address`, :attr:`web_url`.  Closing the server
    (``close()``, ``server_close()``, a Controller's ``stop()``) stops the
    web server too.
    """

    _one_process_only = "it keeps its messages and serves its page in this process"
    version = "smtpd_compat"

    def __init__(
        self,
        localaddr: Any,
        remoteaddr: Any = None,
        *args: Any,
        web: Optional[Tuple[str, int]] = None,
        max_messages: Optional[int] = None,
        maildir: Optional[Union[str, "os.PathLike[str]"]] = None,
        web_allow_remote: bool = False,
        web_auth: Any = None,
        **kwargs: Any,
    ) -> None:
        from . import __version__

        self.version = __version__
        self.maildir: Optional[str] = os.fspath(maildir) if maildir is not None else None
        if self.maildir is not None:
            problem = _maildir_problem(self.maildir)
            if problem is not None:
                raise MailboxPathError("maildir", self.maildir, problem)
        if max_messages is None:
            max_messages = 0 if self.maildir is not None else DEFAULT_MAX_MESSAGES
        if max_messages < 0:
            raise ValueError("max_messages must be 0 (no bound) or more, not %r" % max_messages)
        self.store = Store(max_messages, self.maildir)
        self._web: Optional[WebServer] = None
        self._storer: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._storer_lock = threading.Lock()
        self._closed = False
        super().__init__(localaddr, remoteaddr, *args, **kwargs)
        if web is not None:
            try:
                self._web = WebServer(tuple(web), self, web_allow_remote,  # type: ignore[arg-type]
                                      Auth(web_auth) if web_auth is not None else None)
            except BaseException:
                self.store.close()
                SMTPServer.close(self)
                raise
            self._web.start()
            if web_auth is None and not is_loopback(str(web[0])):
                log.warning("the catcher's page on %s is open to anyone who can reach it: "
                            "give it a password (web_auth=, --web-auth-file or --auth-file)", self.web_url)

    # -- for the caller ----------------------------------------------------------------
    @property
    def web_address(self) -> Optional[Tuple[str, int]]:
        """``(host, port)`` the web server is bound to, None without one."""
        return self._web.address if self._web is not None else None

    @property
    def web_url(self) -> Optional[str]:
        """``http://host:port`` of the page (IPv6 hosts in brackets)."""
        address = self.web_address
        return None if address is None else "http://" + _logging.format_address(address)

    def smtp_address_text(self) -> str:
        """The SMTP address, as ``host:port``."""
        try:
            return _logging.format_address(_serving.bound_address(self))
        except OSError:
            return ""

    def close(self) -> None:
        """Close the SMTP listening socket, and stop the web server (its
        waiting requests and event streams end)."""
        super().close()
        self.store.close()
        with self._storer_lock:
            storer, self._storer, self._closed = self._storer, None, True
        if storer is not None:
            storer.shutdown(wait=False)  # a message being stored is finished, and answered
        web, self._web = self._web, None
        if web is not None:
            web.stop()

    # -- the SMTP side ------------------------------------------------------------------
    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Any:
        """Keep the message; smtpd's ``250 OK`` once it is kept.  A store
        that fails (a full disk) makes the server answer ``451``, so the
        client retries.

        Parsing and storing happen in a thread of their own, one message
        after the other, and the reply waits for them (a Future, see
        docs/hardening.md): a big message being indexed does not stall the
        other sessions on the loop.  Once the server is closed (a graceful
        shutdown closes it first, then lets messages being received end)
        the message is stored at once."""
        refusal = _catcher_chaos.data_refusal(self, rcpttos)  # a chaos rule of the data stage
        if refusal is not None:
            return refusal
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
        envelope = self.envelope_of(peer, mailfrom, rcpttos, kwargs)  # here: it looks at the session
        storer = self._storing()
        if storer is None:
            self._keep(raw, envelope)
            return None
        return storer.submit(self._keep, raw, envelope)

    def _keep(self, raw: bytes, envelope: Dict[str, Any]) -> None:
        self.capture(raw, envelope)

    def _storing(self) -> Optional[concurrent.futures.ThreadPoolExecutor]:
        with self._storer_lock:
            if self._closed:
                return None
            if self._storer is None:
                self._storer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="smtpd_compat-catcher-store")
            return self._storer

    def capture(self, raw: bytes, envelope: Dict[str, Any]) -> Entry:
        """Store *raw* with *envelope* (see :meth:`envelope_of`); for
        subclasses, and for tests that fill the catcher without SMTP."""
        return self.store.add(raw, envelope)

    def envelope_of(self, peer: Any, mailfrom: str, rcpttos: List[str], kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """What the API's ``Envelope`` shows of the message being received."""
        return {
            "MailFrom": mailfrom,
            "RcptTos": list(rcpttos),
            "Peer": _logging.format_address(peer),
            "TLS": self._tls_of(peer),
            "Auth": kwargs.get("auth_login"),
            "MailOptions": [str(o) for o in kwargs.get("mail_options") or ()],
            "RcptOptions": [str(o) for o in kwargs.get("rcpt_options") or ()],
        }

    def _tls_of(self, peer: Any) -> Optional[Dict[str, str]]:
        """The TLS facts of the session delivering now (process_message runs
        on the loop's thread, inside that session's delivery)."""
        for channel in _serving._channels(self):
            session = getattr(channel, "_session", None)
            if getattr(channel, "peer", None) == peer and getattr(session, "tls_active", False):
                facts = _received._tls_facts(channel)
                if facts is not None:
                    return {"Version": facts[0], "Cipher": facts[1]}
        return None
