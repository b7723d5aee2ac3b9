"""An RFC 5321 SMTP server with the RFC 1870 SIZE, RFC 6152 8BITMIME and
RFC 6531 SMTPUTF8 extensions: a drop-in for CPython 3.11's ``smtpd``.

Usage: %(program)s [options] [localhost:localport [remotehost:remoteport]]

Options:

    --nosetuid
    -n
        Do not try to switch to the user `nobody'.  Without this option the
        program calls setuid(nobody), which only root may do.

    --version
    -V
        Print the version number and exit.

    --class classname
    -c classname
        The server class to run: DebuggingServer, PureProxy (the default),
        another name defined in this module, or a dotted path such as
        mypackage.mymodule.MyServer.

    --size limit
    -s limit
        Largest message accepted, in bytes, announced through the RFC 1870
        SIZE extension.  Default: 33554432.

    --smtputf8
    -u
        Announce and accept the RFC 6531 SMTPUTF8 extension.

    --debug
    -d
        Print protocol debugging output to stderr.

    --help
    -h
        Print this message and exit.

Version: %(__version__)s

The local address defaults to localhost:8025 and the remote address (used by
PureProxy) to localhost:25.
"""

from __future__ import annotations

import collections  # noqa: F401  (CPython's smtpd namespace had it)
import errno  # noqa: F401  (so did this)
import logging
import os
import socket
import sys
import time
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union
from warnings import warn  # noqa: F401  (CPython's smtpd namespace had it)

from . import (
    _admission,
    _chunked_mail,
    _chunking,
    _cut_through,
    _extensions,
    _globals,
    _grammar,
    _limits,
    _listener,
    _lmtp,
    _logging,
    _options,
    _proxy_io,
    _relay,
    _serving,
    _spool,
    _tls,
    _unix,
    _views,
    asynchat,  # noqa: F401  (CPython's smtpd namespace had it)
    asyncore,
)
from . import _replies as R

# smtpd's names for what lives below it (explicit re-exports).
from ._channel import DATA_SIZE_DEFAULT as DATA_SIZE_DEFAULT
from ._channel import NEWLINE as NEWLINE
from ._channel import SMTPChannel as SMTPChannel
from ._globals import Devnull as Devnull

if _TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy"]

program = sys.argv[0]
__version__ = R.SMTPD_VERSION

log = logging.getLogger("smtpd_compat")

# Assigned by callers (smtpd.DEBUGSTREAM = io.StringIO(), smtpd.socket =
# mock_socket): this module's object forwards both to _globals, where the
# session code reads them.
DEBUGSTREAM: Any = _globals.DEBUGSTREAM
sys.modules[__name__].__class__ = _globals.ForwardingModule

COMMASPACE = ", "
# Listening backlog: CPython used listen(5), which overflows as soon as a
# handful of clients connect at once; the kernel caps this at somaxconn.
_LISTEN_BACKLOG = 4096


def usage(code: int, msg: Any = "") -> None:
    print(__doc__ % globals(), file=sys.stderr)
    if msg:
        print(msg, file=sys.stderr)
    sys.exit(code)


_debug = _globals.debug
_getfqdn = _globals.fqdn


class SMTPServer(asyncore.dispatcher):
    """Listen on *localaddr* and start a ``channel_class`` per connection.

    Subclasses override :meth:`process_message` to do something with each
    message.  *remoteaddr* is kept for subclasses that relay (PureProxy).
    """

    channel_class = SMTPChannel

    # The hooks of SMTPServer that a subclass overrides, noted once per
    # class: a session asks accept_mail()/accept_rcpt() only when overridden,
    # and an authenticate() override turns AUTH on.
    _overridden_hooks: FrozenSet[str] = frozenset()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hooks = {name for name in ("accept_mail", "accept_rcpt") if getattr(cls, name) is not getattr(SMTPServer, name)}
        if cls.authenticate is not SMTPServer.authenticate and _tls.is_authenticate_override(cls.authenticate):
            hooks.add("authenticate")  # AUTH is then offered
        if cls.accept_connection is not SMTPServer.accept_connection and _admission.is_hook(cls.accept_connection):
            hooks.add("accept_connection")  # asked before each greeting
        cls._overridden_hooks = frozenset(hooks)

    def __init__(
        self,
        localaddr: Tuple[Any, int],
        remoteaddr: Any,
        data_size_limit: int = DATA_SIZE_DEFAULT,
        map: Optional[Dict[int, Any]] = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        **options: Unpack[_options.ServerOptions],
    ) -> None:
        self._apply_options(dict(options))
        self._localaddr = localaddr
        self._remoteaddr = remoteaddr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot be set to True at the same time")
        _extensions.check_requiretls(_options.of(self), decode_data)
        _chunking.check_options(_options.of(self), decode_data)
        asyncore.dispatcher.__init__(self, map=map)
        try:
            if _unix.path_of(self) is not None:
                _unix.create(self)  # unix_socket: localaddr is not used
            else:
                gai_results = socket.getaddrinfo(*localaddr, type=socket.SOCK_STREAM)
                self.create_socket(gai_results[0][0], gai_results[0][1])
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.close()
            raise
        else:
            _debug(
                "%s started at %s\n\tLocal addr: %s\n\tRemote addr:%s"
                % (self.__class__.__name__, time.ctime(time.time()), localaddr, remoteaddr)
            )

    def _apply_options(self, options: Dict[str, Any]) -> None:
        """Keep the keyword-only options of the feature modules (_limits,
        _tls, _serving declare them with their defaults) in the server's
        private _options.Options; an unknown keyword is a TypeError, as for
        any function."""
        try:
            values = _options.make(options)
        except TypeError as err:
            raise TypeError("%s() got %s" % (type(self).__name__, err)) from None
        self.__dict__[_options.ATTRIBUTE] = values
        _limits.check_options(values)
        _tls.check_options(values, self)
        _extensions.check_options(values, _options.EXTENSIONS)
        _extensions.check_options(values, _options.TRACE)  # (bools too)
        _proxy_io.check_options(values)
        if values.proxy_protocol:
            _proxy_io.install(self, values)  # each connection's PROXY header is read before handle_accepted()
        _lmtp.check_options(values)
        _unix.check_options(values)
        _spool.check_options(values)
        _admission.check_options(values)
        if _admission.wanted(values, self):
            _admission.install(self, values)  # per-address limits, accept_connection()

    # What this package adds to smtpd's SMTPServer are names a subclass
    # written for smtpd may use for its own purposes (self.port = ...).
    # They are views a subclass or an instance may replace, and methods
    # that only delegate; the package itself calls _serving and reads
    # _options, so it works whatever a subclass does with these names.
    address = _views.View(
        _serving.bound_address,
        """``(host, port)`` the server is bound to: the real port when bound
        to port 0, also for IPv6 (no flow info/scope id), and still known
        after the server was closed.""",
    )
    port = _views.View(lambda self: _serving.bound_address(self)[1], "The port the server is bound to.")

    # -- the listening socket (socketserver's hooks) -----------------------
    # asyncore capped listen()'s backlog at 5 on Windows; a server asks for more.
    _cap_backlog_on_windows = False

    def server_bind(self) -> None:
        """Bind the listening socket to *localaddr*; called once by
        ``__init__``.  Override it to set socket options before the bind
        (call this one).

        As smtpd, it calls ``set_reuse_addr()`` then ``bind()``; on
        Windows, where ``SO_REUSEADDR`` would let a second server bind the
        same port, it makes the port exclusive instead (``SO_EXCLUSIVEADDRUSE``).
        """
        unix_path = _unix.path_of(self)
        if unix_path is not None:
            _unix.bind(self, unix_path)  # the unix_socket option (a stale socket file replaced)
            return
        if os.name == "nt":
            _listener.exclusive_address(self.socket)
        else:
            self.set_reuse_addr()
        self.bind(self._localaddr)

    def server_activate(self) -> None:
        """Start listening; called once by ``__init__`` after
        :meth:`server_bind`.  The backlog is 4096 (the system may lower it);
        smtpd's 5 made clients that connect at once wait for retransmits."""
        self.listen(_LISTEN_BACKLOG)

    # -- serving API (socketserver style); implemented in _serving ----------
    def serve_forever(self, poll_interval: float = 0.5, *, workers: Union[int, str, None] = None) -> None:
        """Serve this server's socket map until :meth:`shutdown` completes.

        Another thread's ``shutdown()`` wakes the loop at once (through the
        loop's wake-up socket); *poll_interval* only bounds one wait.  A
        server that was shut down stays closed: a later call returns at once.

        *workers* (a number, or ``"auto"`` for one per CPU) above 1 forks
        that many processes sharing the listening socket, supervised by
        this one until SIGTERM or SIGINT (docs/workers.md); call it on the
        main thread, before starting any thread.
        """
        if workers is None or workers == 1:
            _serving.serve_forever(self, poll_interval)
            return
        from . import _workers

        _workers.serve_forever(self, poll_interval, workers)

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Shut down gracefully and wait until ``serve_forever()`` returns.

        Thread-safe.  New connections are refused; sessions receiving a
        message may finish it (for at most *timeout* seconds, by default
        the ``shutdown_timeout`` option), every other session is answered
        ``421`` and closed.  Called from the loop's own thread, or when no
        ``serve_forever()`` runs, it starts the shutdown without waiting.
        """
        _serving.shutdown(self, timeout)

    def server_close(self) -> None:
        """Close the listening socket and every session of this server now."""
        _serving.server_close(self)

    def close(self) -> None:
        """Close the listening socket (asyncore's ``close()``); a Unix
        socket's file is removed (``unix_socket``)."""
        asyncore.dispatcher.close(self)
        _unix.unlink(self)

    def __enter__(self) -> "SMTPServer":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _serving.server_close(self)

    def handle_accept(self) -> None:
        # Take a burst of waiting connections per wake-up, not just one.
        for _ in range(64):
            pair = self.accept()
            if pair is None:
                return
            # max_connections is applied here rather than in handle_accepted(),
            # so that subclasses overriding that one (often without calling
            # it: it only builds the channel) stay bounded too.
            if not _serving.refuse_connection(self, *pair, lambda: _server_reply(self, R.TOO_MANY_CONNECTIONS % _getfqdn())):
                self.handle_accepted(*pair)
            if not self.accepting:
                return

    def handle_accepted(self, conn: Any, addr: Any) -> None:
        _debug("Incoming connection from %s" % repr(addr))
        _logging.log_connection(self, addr)
        conn = _tls.wrap_accepted(self, conn)  # SMTPS: TLS before the greeting
        if conn is None:
            return
        self.channel_class(
            self,
            conn,
            addr,
            self.data_size_limit,
            self._map,
            self.enable_SMTPUTF8,
            self._decode_data,
        )

    def authenticate(self, channel: SMTPChannel, mechanism: str, login: str, password: str) -> bool:
        """Return whether *login*/*password* may use this server.

        *channel* is the ``SMTPChannel`` of the session (``channel.peer``,
        ``channel.tls_active``); *mechanism* is ``"PLAIN"`` or ``"LOGIN"``.
        The default asks the ``authenticator`` option; a subclass may
        override this method instead (AUTH is then offered).  An exception
        is answered ``454`` (temporary failure) and logged.
        """
        return _tls.authenticate_with_option(self, channel, mechanism, login, password)

    def accept_connection(self, peer: Any) -> Optional[str]:
        """Decide on a new connection before it is greeted; override this to
        refuse some.

        *peer* is the client's address (``(host, port)``; the one a PROXY
        protocol header named, with ``proxy_protocol``).  Return None to
        greet it, or the complete reply line refusing it, such as
        ``"554 5.7.1 Go away"``: sent in place of the ``220`` greeting,
        then the connection is closed.  Asked after the per-address limits
        (``max_connections_per_ip``...) have let the connection in.  Not
        called unless a subclass overrides it with this signature.
        """
        return None

    def accept_mail(self, channel: SMTPChannel, address: str, params: List[str]) -> Optional[str]:
        """Decide on the sender of a new transaction; override this to refuse
        some.

        Called once ``MAIL FROM:<address>`` has passed every check of its
        own (syntax, sequence, parameters), with the session's channel
        (``channel.peer``, ``channel.auth_login``...), the *address* as
        ``process_message`` will get it and the upper-cased *params*.
        Return None to accept it (``250 OK``), or the complete reply line
        refusing it, such as ``"550 5.7.1 Sender rejected"``.  Not called
        unless a subclass overrides it, so the default costs nothing.
        """
        return None

    def accept_rcpt(self, channel: SMTPChannel, address: str, params: List[str]) -> Optional[str]:
        """Decide on one recipient; override this to refuse some.

        Called for each ``RCPT TO:<address>`` that has passed every check
        of its own; ``channel.mailfrom`` and ``channel.rcpttos`` (the
        recipients accepted so far) describe the transaction.  Return None
        to accept it (``250 OK``), or the complete reply line refusing it,
        such as ``"550 5.1.1 No such user here"``: the transaction goes on
        with the other recipients.  Not called unless a subclass overrides
        it.
        """
        return None

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Optional[str]:  # noqa: E501
        """Handle one message; override this.

        *peer* is the client's address, *mailfrom* the envelope sender and
        *rcpttos* the list of envelope recipients.  *data* is the message
        with dot-stuffing removed and lines joined by ``\\n``: ``bytes``, or
        ``str`` when the server was created with ``decode_data=True``.

        Unless ``decode_data`` is true, *kwargs* holds ``mail_options`` and
        ``rcpt_options``: the upper-cased parameters of MAIL and of the last
        RCPT, e.g. ``['BODY=8BITMIME', 'SMTPUTF8']``.  An override that does
        not declare ``**kwargs`` is called without them.

        Return None for ``250 OK``, or a full reply line such as
        ``"550 No such user"``.  An exception is answered with a ``451`` and
        logged; the session continues.

        Work that takes time (delivering elsewhere) may run in another
        thread: return a ``concurrent.futures.Future`` whose result is that
        return value.  The session stops reading the client's input and
        answers once the future is done, and the loop keeps serving every
        other session meanwhile.  An exception set on the future is answered
        ``451`` and logged.
        """
        raise NotImplementedError


for _name in _options.names():
    setattr(SMTPServer, _name, _views.option_view(_name))
del _name


class DebuggingServer(SMTPServer):
    """Print each message to stdout instead of delivering it."""

    def _print_message_content(self, peer: Any, data: Union[bytes, str]) -> None:
        inheaders = True
        for line in data.splitlines():
            if inheaders and not line:
                peerheader: str = "X-Peer: " + peer[0]
                if not isinstance(data, str):
                    # Bytes data: print the header as its bytes repr too.
                    peerheader = repr(peerheader.encode("utf-8"))
                print(peerheader)
                inheaders = False
            if not isinstance(data, str):
                line = repr(line)
            print(line)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Optional[str]:
        print("---------- MESSAGE FOLLOWS ----------")
        if kwargs:
            if kwargs.get("mail_options"):
                print("mail options: %s" % kwargs["mail_options"])
            if kwargs.get("rcpt_options"):
                print("rcpt options: %s\n" % kwargs["rcpt_options"])
        self._print_message_content(peer, data)
        print("------------ END MESSAGE ------------")
        try:
            sys.stdout.flush()
        except (AttributeError, OSError, ValueError):
            pass
        return None


def _server_reply(server: Any, text: str) -> str:
    """*text*, a reply of *server*'s own made before or outside a session,
    with its enhanced status code when the server gives them."""
    return R.enhanced(text) if _options.of(server).enhanced_status_codes else text


class PureProxy(SMTPServer):
    """Relay every message to the SMTP server at *remoteaddr*.

    The client is answered with the upstream server's verdict: ``250`` once
    the upstream server has accepted the message for every recipient, its
    refusal otherwise (naming each refused recipient when only some were
    refused; the message is then relayed to none), ``451`` when it cannot
    be reached.  The message arrives upstream as the client sent it, plus
    an ``X-Peer`` header, with every line end (bare CR and LF included) a
    CRLF.

    The upstream conversation runs in a worker thread (``process_message``
    returns a ``concurrent.futures.Future``), so other sessions are served
    meanwhile.  Subclasses may override ``_deliver()``, which runs in that
    thread.  ``relay_timeout`` (seconds per upstream operation, each 64 KiB
    block of a message being one) and ``relay_workers`` (conversations at
    once) may be set on a subclass or an instance.

    What a message asks of the upstream session is passed on or the message
    refused, never dropped: ``SMTPUTF8`` (given by the client, or a
    non-ASCII address; else ``553 5.6.7``) and ``REQUIRETLS`` (only over a
    TLS session whose server announces it; else ``550 5.7.30``).  See
    docs/extensions.md.

    With ``chunking``, a message received with ``BDAT`` is relayed with
    ``BDAT`` to an upstream server announcing ``CHUNKING`` (unchanged, with
    ``BODY=BINARYMIME`` when given), else with ``DATA`` as a ``DATA``
    client's would be; a ``BINARYMIME`` message that cannot be relayed so is
    refused ``554 5.6.3``.
    """

    relay_timeout: float = _relay.DEFAULT_TIMEOUT
    relay_workers: int = _relay.DEFAULT_WORKERS

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Any:
        if kwargs.get("chunked") and isinstance(data, bytes):
            data = _chunked_mail.add_peer_header(data, peer[0])  # octets as sent by BDAT, CRLF-ended
        elif isinstance(data, str):
            data = _grammar.add_peer_header(data, peer[0])
        else:
            data = _grammar.add_peer_header(data, peer[0])
        needs = _relay.needs_of(mailfrom, rcpttos, kwargs.get("mail_options") or (), kwargs.get("dsn"), kwargs.get("chunked", False))
        return _relay.executor(self).submit(self._relay, mailfrom, list(rcpttos), data, needs)

    def process_message_stream(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Any, **kwargs: Any) -> Any:
        """With ``spool_threshold``: relay the message from its spool file,
        block by block (see docs/big-messages.md); the upstream server gets
        what process_message() would send it."""
        chunked = kwargs.get("chunked", False)
        payload: Any = (_chunked_mail.Octets if chunked else _relay.StreamPayload)(getattr(data, "buffer", data), peer[0])
        needs = _relay.needs_of(mailfrom, rcpttos, kwargs.get("mail_options") or (), kwargs.get("dsn"), chunked)
        return _relay.executor(self).submit(self._relay, mailfrom, list(rcpttos), payload, needs)

    def _relay(self, mailfrom: str, rcpttos: List[str], data: Any, needs: _relay.Needs = _relay.NO_NEEDS) -> Optional[str]:
        """Deliver one message (worker thread); return the client's reply."""
        with _relay.needing(needs):
            refused = self._deliver(mailfrom, rcpttos, data)
        if refused:
            _debug("we got some refusals:", refused)
        reply = _relay.reply_for(refused, rcpttos)
        # Only the 451 is ours: the upstream server's refusals are quoted as it sent them.
        return _server_reply(self, reply) if reply == R.RELAY_UNAVAILABLE else reply

    def _follow_spool(self, channel: Any, session: Any, spool: Any) -> Any:
        # spool_threshold: a big message is relayed while it arrives (_cut_through).
        return _cut_through.follow(self, channel, session, spool, PureProxy)

    def _deliver(self, mailfrom: str, rcpttos: List[str], data: Any) -> Dict[str, Tuple[int, Any]]:
        """Send one message upstream; return the refused recipients as
        ``{address: (code, reply text)}`` (code -1: the upstream server
        could not be reached), as smtpd's PureProxy did.  ``{}`` means it
        was accepted for every recipient.  *data* is bytes or str, or a
        ``_relay.StreamPayload`` for a spooled message (process_message_stream)."""
        return _relay.deliver(self, mailfrom, rcpttos, data)

    def close(self) -> None:
        super().close()
        _relay.shutdown_executor(self)


class Options:
    """The command line options, as ``parseargs()`` returns them."""

    setuid = True
    classname = "PureProxy"
    size_limit: Optional[int] = None
    enable_SMTPUTF8 = False


def parseargs(argv: Optional[List[str]] = None) -> Options:
    """Parse smtpd's command line (``sys.argv[1:]`` by default).

    Prints usage and exits on an error or ``-h``, as smtpd did; ``-V`` and
    ``--version`` print smtpd's version and exit; ``-d`` sends the
    debugging output to stderr.  The flags are those of ``python -m
    smtpd_compat``, whose extra flags are accepted and left out here.
    """
    # The command line's parser (no cycle: _cli_args imports nothing that
    # imports smtpd).  Imported here, so that serving never loads argparse.
    from . import _cli_args

    try:
        ns = _cli_args.parse_args(sys.argv[1:] if argv is None else argv)
    except _cli_args.UsageError as err:
        usage(1, err)
        raise  # not reached: usage() exits
    if ns.help:
        usage(0)
    if ns.smtpd_version or ns.version:
        print(__version__)
        sys.exit(0)
    if ns.debug:
        # Set as callers set it, on the module object: a global statement
        # would write the module's dict past whatever the module object does
        # with such an assignment.
        this: Any = sys.modules[__name__]
        this.DEBUGSTREAM = sys.stderr
    options = Options()
    for name in ("setuid", "classname", "size_limit", "enable_SMTPUTF8",
                 "localhost", "localport", "remotehost", "remoteport"):
        setattr(options, name, getattr(ns, name))
    return options


if __name__ == "__main__":
    from smtpd_compat._cli import main

    sys.exit(main())
