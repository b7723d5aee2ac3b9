"""Run an SMTP server in a background thread: for tests and applications.

::

    from smtpd_compat import Controller, RecordingServer

    with Controller(RecordingServer) as controller:
        with smtplib.SMTP(*controller.address) as client:
            client.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
        message, = controller.server.wait_for(1, timeout=5)

The server is created (bound and listening) in :meth:`Controller.start`
before its thread starts, so the port is known and connections are accepted
as soon as ``start()`` returns: no trigger connection, no polling, and
binding port 0 works.  Each controller's server gets a socket map of its
own, so servers never see each other's sessions.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, Tuple, TypeVar

from . import _serving, asyncore
from ._serving import log

if TYPE_CHECKING:  # smtpd imports this package's modules, not this one
    from .smtpd import SMTPServer

__all__ = ["Controller"]

#: The server class a controller runs: ``Controller(RecordingServer).server``
#: is a ``RecordingServer`` to a type checker.
S = TypeVar("S", bound="SMTPServer")


class Controller(Generic[S]):
    """Start a server in a thread; stop it, close every session and join.

    *server_class* is called as ``server_class(addr, remoteaddr,
    map=<a new dict>, **server_kwargs)``; pass ``remoteaddr=`` for classes
    that relay (PureProxy) and any other keyword the class accepts
    (``data_size_limit``, ``enable_SMTPUTF8``, ``shutdown_timeout``, ...).

    Methods for the caller: :meth:`start`, :meth:`stop`, ``with``.
    Attributes: ``server`` (the running server), ``address``/``port`` (the
    bound address, a ``(host, port)`` pair also for IPv6), ``thread``.
    """

    def __init__(
        self,
        server_class: Callable[..., S],
        addr: Tuple[str, int] = ("127.0.0.1", 0),
        *,
        remoteaddr: Any = None,
        poll_interval: float = 0.5,
        **server_kwargs: Any,
    ) -> None:
        if server_kwargs.pop("workers", None) not in (None, 1):
            raise ValueError("Controller serves in a thread of this process: workers>1 needs "
                             "server.serve_forever(workers=N) on the main thread of a process of its own")
        self.server_class = server_class
        self.addr = addr
        self.remoteaddr = remoteaddr
        self.poll_interval = poll_interval
        self.server_kwargs = server_kwargs
        self._server: Optional[S] = None
        self.thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None
        self._own_map = True

    # -- the caller's API ------------------------------------------------------
    def start(self) -> "Controller[S]":
        """Create the server and serve it in a daemon thread.

        Returns once the server listens (it was bound and put in listening
        state before the thread started); binding errors are raised here.
        """
        if self.thread is not None:
            raise RuntimeError("this controller is already started")
        kwargs = dict(self.server_kwargs)
        self._own_map = "map" not in kwargs
        kwargs.setdefault("map", {})
        server = self.server_class(self.addr, self.remoteaddr, **kwargs)
        self._server = server
        self._error = None
        thread = threading.Thread(
            target=self._run,
            name="smtpd_compat-%s-%s" % (type(server).__name__, _serving.bound_address(server)[1]),
            daemon=True,
        )
        self.thread = thread
        try:
            thread.start()
        except BaseException:
            self.thread = None
            _serving.server_close(server)
            raise
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        """Shut the server down gracefully, join the thread, close everything.

        Sessions receiving a message may finish it for *timeout* seconds
        (default: the server's ``shutdown_timeout``); every other session is
        answered ``421`` and closed, after a second in which a client that
        was just answered may still ``QUIT`` normally.  An exception that ended the server's
        thread is re-raised here.  Calling ``stop()`` twice is harmless.
        """
        thread = self.thread
        if thread is None:
            return
        server = self.server
        try:
            _serving.shutdown(server, timeout)
            thread.join()
        finally:
            self.thread = None
            _serving.server_close(server)
            if self._own_map:
                # Anything else the server put in its map (a relay's client
                # connection, a custom channel class without smtp_server)
                # goes too: nothing may outlive the controller.
                asyncore.close_all(map=server._map, ignore_all=True)
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def server(self) -> S:
        """The server this controller made; it stays readable after :meth:`stop`."""
        if self._server is None:
            raise RuntimeError("the controller has not been started")
        return self._server

    @property
    def address(self) -> Tuple[str, int]:
        """``(host, port)`` the server is bound to."""
        return _serving.bound_address(self.server)

    @property
    def port(self) -> int:
        """The port the server is bound to."""
        return int(self.address[1])

    def __enter__(self) -> "Controller[S]":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.thread is not None else "stopped"
        where = ""
        if self._server is not None:
            try:
                where = " %s:%s" % self.address
            except (OSError, TypeError):
                pass
        return "<Controller %s %s%s>" % (getattr(self.server_class, "__name__", self.server_class), state, where)

    # -- the thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            # The package's own serving loop, not server.serve_forever(): a
            # subclass written for smtpd may have a method of that name.
            _serving.serve_forever(self.server, self.poll_interval)
        except BaseException as exc:  # reported by stop()
            log.exception("the server thread of %r stopped on an exception", self)
            self._error = exc
