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

import collections
import concurrent.futures
import errno
import functools
import inspect
import logging
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from warnings import warn

from . import _auth, _limits, _options, _grammar, _reactor, _relay, _serving, _tls, asynchat, asyncore
from . import _replies as R

__all__ = ["SMTPChannel", "SMTPServer", "DebuggingServer", "PureProxy"]

program = sys.argv[0]
__version__ = "Python SMTP proxy version 0.3"

log = logging.getLogger("smtpd_compat")


class Devnull:
    """A stream that discards what is written to it (the default DEBUGSTREAM)."""

    def write(self, msg: str) -> None:
        pass

    def flush(self) -> None:
        pass


DEBUGSTREAM: Any = Devnull()
NEWLINE = "\n"
COMMASPACE = ", "
DATA_SIZE_DEFAULT = 33554432
# Listening backlog: CPython used listen(5), which overflows as soon as a
# handful of clients connect at once; the kernel caps this at somaxconn.
_LISTEN_BACKLOG = 4096


def usage(code: int, msg: Any = "") -> None:
    print(__doc__ % globals(), file=sys.stderr)
    if msg:
        print(msg, file=sys.stderr)
    sys.exit(code)


def _debug(*args: Any) -> None:
    stream = DEBUGSTREAM
    if not isinstance(stream, Devnull):
        print(*args, file=stream)


# socket.getfqdn() may do a DNS round trip; smtpd called it for every
# connection.  It is asked once per socket module (tests swap the module).
_fqdn_memo: Tuple[Any, str] = (None, "")


def _getfqdn() -> str:
    global _fqdn_memo
    module, name = _fqdn_memo
    if module is not socket:
        name = socket.getfqdn()
        _fqdn_memo = (socket, name)
    return name


@functools.lru_cache(maxsize=256)
def _accepted_options(func: Callable[..., Any]) -> Optional[frozenset]:
    """Which keyword options *func* takes: None means any (it has **kwargs)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    names = set()
    for param in params:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if param.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            names.add(param.name)
    return frozenset(names)


def _call_with_accepted_options(func: Callable[..., Any], args: tuple, options: Dict[str, Any]) -> Any:
    """Call ``func(*args, **options)`` passing only the options it accepts.

    Subclasses written as ``process_message(self, peer, mailfrom, rcpttos,
    data)`` (no ``**kwargs``) keep working when the server has options to
    pass (smtpd raised TypeError for them).
    """
    if options:
        target = getattr(func, "__func__", func)
        try:
            accepted = _accepted_options(target)
        except TypeError:  # unhashable callable
            accepted = None
        if accepted is not None:
            options = {k: v for k, v in options.items() if k in accepted}
    return func(*args, **options)


# Logger.isEnabledFor() is a Python call, asked on every read.  Its answers
# are kept in the logger's _cache dict, which logging empties whenever a
# level changes; a False found there is the same answer without the call.
_LOG_CACHE_GET = getattr(log, "_cache", {}).get


_Future = concurrent.futures.Future
_monotonic = time.monotonic

# Read by the fast lane on every read: module globals, not module attributes.
_RealSocket = asynchat._RealSocket
_PLAIN_TRANSPORT = _tls._PLAIN

# SMTPChannel._ac_batching while the fast lane runs a command (truthy, so
# replies are collected as usual): push() knows that debug logging was found
# off for this read and does not ask again.
_QUIET_BATCH: Any = 2

# The fixed replies that SessionGuard.over_budget() does not count, as bytes.
_QUEUED_AS_IS = {text: data for text, data in R.WIRE.items() if not text.startswith(_limits.ERROR_CODES)}

# _CommandSizeLimits.largest of an empty dict (a HELO session): the channel's
# command_size_limit applies.
_NO_LIMITS: Any = object()


class _CommandSizeLimits(collections.defaultdict):
    """A channel's ``command_size_limits``: a defaultdict that remembers its
    largest value, which ``max_command_size_limit`` is asked for on every
    command line.  Every method that changes the dict forgets it."""

    largest: Optional[int] = None

    def __setitem__(self, key: Any, value: Any) -> None:
        self.largest = None
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.largest = None
        super().__delitem__(key)

    def __ior__(self, other: Any) -> Any:
        self.largest = None
        return super().__ior__(other)

    def _forgetting(name: str) -> Any:  # noqa: N805  (builds methods below)
        method = getattr(collections.defaultdict, name)

        def forget(self: "_CommandSizeLimits", *args: Any, **kwargs: Any) -> Any:
            self.largest = None
            return method(self, *args, **kwargs)

        forget.__name__ = name
        return forget

    clear = _forgetting("clear")
    pop = _forgetting("pop")
    popitem = _forgetting("popitem")
    setdefault = _forgetting("setdefault")
    update = _forgetting("update")
    del _forgetting


class SMTPChannel(_tls.SecureChannelMixin, asynchat.async_chat):
    """One SMTP session with a client.

    Attributes (as in smtpd): ``smtp_server``, ``conn``, ``addr``,
    ``received_lines``, ``smtp_state`` (``COMMAND`` or ``DATA``),
    ``seen_greeting``, ``mailfrom``, ``rcpttos``, ``received_data``, ``fqdn``,
    ``peer``.  A command ``VERB`` is handled by the method ``smtp_VERB(arg)``;
    subclasses add or override commands by defining such methods and reply
    with ``self.push(text)``.
    """

    COMMAND = 0
    DATA = 1

    # Idle timeouts, error budget, session count (see _limits); None until
    # the channel is set up.
    _guard: Optional[_limits.SessionGuard] = None

    command_size_limit = 512
    # Kept for compatibility; each channel has its own copy (smtpd shared
    # this dict, so one session's EHLO raised the limit for all of them).
    command_size_limits: Dict[str, int] = collections.defaultdict(lambda x=command_size_limit: x)

    @property
    def max_command_size_limit(self) -> int:
        limits = self.command_size_limits
        cached = limits.__class__ is _CommandSizeLimits
        if cached:
            largest = limits.largest
            if largest is not None:
                return self.command_size_limit if largest is _NO_LIMITS else largest
        largest = max(limits.values(), default=_NO_LIMITS)
        if cached:
            limits.largest = largest
        return self.command_size_limit if largest is _NO_LIMITS else largest

    def __init__(
        self,
        server: "SMTPServer",
        conn: Any,
        addr: Any,
        data_size_limit: int = DATA_SIZE_DEFAULT,
        map: Optional[dict] = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
    ) -> None:
        # The mixin's class defaults, made instance attributes before the
        # socket is set (SMTPS changes them there): they are read on every
        # read and reply, and Python 3.11 specialises only instance loads.
        self._tls_phase = _PLAIN_TRANSPORT
        self._sasl = None
        asynchat.async_chat.__init__(self, conn, map=map)
        self.smtp_server = server
        self.conn = conn
        self.addr = addr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot be set to True at the same time")
        if decode_data:
            self._emptystring: Union[str, bytes] = ""
            self._linesep: Union[str, bytes] = "\r\n"
            self._dotsep: Union[str, int] = "."
            self._newline: Union[str, bytes] = NEWLINE
        else:
            self._emptystring = b""
            self._linesep = b"\r\n"
            self._dotsep = ord(b".")
            self._newline = b"\n"
        limit = self.command_size_limit
        self.command_size_limits = _CommandSizeLimits(lambda: limit)
        self.mail_options: List[str] = []
        self.rcpt_options: List[str] = []
        self._set_rset_state()
        self.seen_greeting = ""
        self.extended_smtp = False
        self.fqdn = _getfqdn()
        try:
            self.peer = conn.getpeername()
        except OSError as err:
            # The client may already be gone.
            self.close()
            if err.errno != errno.ENOTCONN:
                raise
            return
        _debug("Peer:", repr(self.peer))
        self._guard = _limits.SessionGuard(self, server)
        self._fast_lane = self._fast_lane_allowed()
        self.push(R.GREETING % (self.fqdn, __version__))

    # -- state -------------------------------------------------------------------
    def _set_post_data_state(self) -> None:
        """Reset the transaction (envelope and framing) after DATA."""
        self.smtp_state = self.COMMAND
        self.mailfrom = None
        self.rcpttos = []
        self.require_SMTPUTF8 = False
        self.num_bytes = 0
        self.set_terminator(b"\r\n")

    def _set_rset_state(self) -> None:
        """Reset everything but the greeting."""
        self._set_post_data_state()
        self.received_data = ""
        self.received_lines = []

    # -- output --------------------------------------------------------------------
    def push(self, msg: str) -> None:  # type: ignore[override]
        """Send the reply line *msg* (a str without line ending)."""
        if self._ac_batching is _QUIET_BATCH:
            # In the fast lane, where debug logging is off, a fixed reply
            # that the error budget does not count just joins the queue.
            data = _QUEUED_AS_IS.get(msg)
            if data is not None:
                self.producer_fifo.append(data)
                self._ac_out_queued += len(data)
                return
        elif log.isEnabledFor(logging.DEBUG):
            _serving.log_reply(self, msg)
        guard = self._guard
        over_budget = guard is not None and msg.startswith(_limits.ERROR_CODES) and guard.over_budget(msg)
        if over_budget:
            msg = R.TOO_MANY_ERRORS % self.fqdn
        data = R.WIRE.get(msg)
        if data is None:
            line = msg + "\r\n"
            try:
                data = line.encode("utf-8" if self.require_SMTPUTF8 else "ascii")
            except UnicodeEncodeError:
                # An echoed argument may hold non-ASCII text; never fail a reply.
                data = line.encode("ascii", "backslashreplace")
        if self._ac_batching:
            # What async_chat.push() does while input is being processed.
            self.producer_fifo.append(data)
            self._ac_out_queued += len(data)
        else:
            asynchat.async_chat.push(self, data)
        if over_budget:
            self.close_when_done()

    def close(self) -> None:
        # Replies pushed before the close go out first (see async_chat.close).
        self._ac_send_held()
        if self._guard is not None:
            self._guard.close()
            # The guard points back at the channel: break the cycle so that a
            # closed session (and the last message it holds) is freed at once,
            # not whenever the cyclic collector next runs.
            self._guard = None
        wait = self._reply_wait
        if wait is not None and wait[1] is not None:
            # The reply_timeout timer would keep the closed session alive.
            wait[1].cancel()
        if self._fileno is not None:
            _serving.log_closed(self)
        super().close()  # through _tls.SecureChannelMixin: TLS close_notify

    def handle_read(self) -> None:
        super().handle_read()
        if self._guard is not None:
            self._guard.touch()

    # -- the fast lane -------------------------------------------------------------
    # Most reads hold exactly one command line, or a whole small message,
    # and arrive while nothing else is going on.  For those the fast lane
    # does in one method what the read event otherwise does through eight
    # calls (TLS mixin, dispatcher, handle_read twice, async_chat framing,
    # collect_incoming_data, found_terminator): same calls into
    # _command_line()/_end_of_data(), same state afterwards, same bytes
    # out.  Any other read takes the general path, which stays the
    # reference (tests/test_fast_lane.py plays both).
    _fast_lane = False  # set per channel by _fast_lane_allowed()
    # (Future, its reply_timeout timer) while process_message's reply is awaited.
    _reply_wait: Optional[Tuple[Any, Any]] = None

    def _fast_lane_allowed(self) -> bool:
        """True if this channel's class keeps every method the fast lane
        stands in for (subclasses that override one get the general path)."""
        cls = type(self)
        return all(getattr(cls, name) is getattr(SMTPChannel, name) for name in _FAST_LANE_METHODS)

    def handle_read_event(self) -> None:
        sock = self.socket
        if not (
            self._fast_lane
            and sock.__class__ is _RealSocket
            and self._tls_phase is _PLAIN_TRANSPORT
            and self.connected
            and not self._ac_framer._buf
            and not self.producer_fifo
            and not self._ac_paused
            and not self._ac_input_closed
            and self._sasl is None
            and DEBUGSTREAM.__class__ is Devnull
            and (_LOG_CACHE_GET(logging.DEBUG) is False or not log.isEnabledFor(logging.DEBUG))
            and ((serving := getattr(self.smtp_server, "_serving_state", None)) is None or not serving.closing)
        ):
            super().handle_read_event()
            return
        try:
            data = sock.recv(self.ac_in_buffer_size)
        except OSError as why:
            self._ac_recv_failed(why)
            return
        if not data:
            self.handle_close()  # end of stream
            return
        size = len(data)
        command = self.smtp_state == self.COMMAND
        if command:
            # One whole command line, nothing after it.
            simple = (
                data.find(b"\r\n") == size - 2 >= 0
                and self.terminator == b"\r\n"
                and not self._ac_framer.prefix_seen
                and not self.received_lines
                and not self.num_bytes
            )
        else:
            # A whole message and its end, nothing after it; not the empty
            # message (a "." line at once), whose end began with DATA's CRLF.
            # Cheap tests first: the reads of a large message are neither
            # whole nor the end, and must not be searched twice.
            simple = (
                self.smtp_state == self.DATA
                and not self.received_lines
                and data.endswith(_grammar.END_OF_DATA)
                and size > 5
                and not self.num_bytes
                and self.terminator == _grammar.END_OF_DATA
                and data[:3] != b".\r\n"
                and data.find(_grammar.END_OF_DATA) == size - 5
            )
        if not simple:
            self._ac_feed(data)
        else:
            self._ac_batching = _QUIET_BATCH
            try:
                if command:
                    self._command_line(data[:-2], size - 2)
                else:
                    self._ac_framer.prefix_seen = b""
                    size -= 5
                    if size and self.data_size_limit:
                        self.num_bytes = size
                    self._end_of_data([data[:size]] if size else [])
                    _serving.after_data(self)
            except BaseException:
                # What the handler pushed before raising (asyncore.ExitNow
                # included) would have been on the wire in smtpd.
                self._ac_batching = False
                self._ac_send_held()
                raise
            self._ac_batching = False
            if self.producer_fifo:
                reactor = _reactor.reactor_of(id(self._map))
                if reactor is not None:
                    reactor.after_events.append(self._flush_reply)
                else:
                    self.initiate_send()  # no loop: a test driving the channel by hand
        guard = self._guard
        if guard is not None:
            guard.last = _monotonic()  # guard.touch(), inlined (per read)
            if guard.timer is None:
                guard._arm()

    def _flush_reply(self) -> None:
        """Send what the fast lane queued.  One plain reply is sent here;
        several, a close, STARTTLS, a partial send or an error go through
        initiate_send()."""
        fifo = self.producer_fifo
        if len(fifo) == 1 and self._fileno is not None and self._tls_phase is _PLAIN_TRANSPORT:
            reply = fifo[0]
            if reply.__class__ is bytes:
                try:
                    sent = self.socket.send(reply)
                except OSError:
                    sent = 0  # initiate_send() meets the error again and handles it
                if sent == len(reply):
                    fifo.popleft()
                    self._ac_out_queued -= sent
                    return
                if sent:
                    fifo[0] = memoryview(reply)[sent:]
                    self._ac_out_queued -= sent
        if fifo and self._fileno is not None:
            try:
                self.initiate_send()
            except asyncore._reraised_exceptions:
                raise
            except Exception:
                self.handle_error()

    # -- input -----------------------------------------------------------------------
    def collect_incoming_data(self, data: bytes) -> None:
        state = self.smtp_state
        if state == self.COMMAND:
            limit = self.max_command_size_limit
        elif state == self.DATA:
            limit = self.data_size_limit
        else:
            limit = None
        if limit:
            if self.num_bytes > limit:
                return  # over the limit: keep counting nothing, store nothing
            self.num_bytes += len(data)
        if self._decode_data:
            # smtpd kept str pieces here, and subclasses join them; it
            # decoded each piece strictly, so a character split between two
            # reads (or a stray byte) crashed the session.  Undecodable
            # bytes become lone surrogates, which _raw() turns back into
            # the very bytes received.
            self.received_lines.append(str(data, "utf-8", "surrogateescape"))  # type: ignore[arg-type]
        else:
            self.received_lines.append(data)

    def _raw_lines(self) -> List[bytes]:
        """Take received_lines, as the bytes received."""
        pieces, self.received_lines = self.received_lines, []
        if self._decode_data:
            return [piece.encode("utf-8", "surrogateescape") if isinstance(piece, str) else piece for piece in pieces]
        return pieces

    def found_terminator(self) -> None:
        if self.smtp_state == self.COMMAND:
            pieces = self._raw_lines()
            line = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            if self._sasl is not None:
                # The answer to an AUTH challenge: not a command, never shown.
                size, self.num_bytes = self.num_bytes, 0
                self._auth_response(line, size)
                return
            if not isinstance(DEBUGSTREAM, Devnull):  # debug output on
                shown = _auth.redact_command(line)
                _debug("Data:", repr(shown.decode("utf-8", "surrogateescape") if self._decode_data else shown))
            if log.isEnabledFor(logging.DEBUG):
                _serving.log_command(self, _auth.redact_command(line))
            size, self.num_bytes = self.num_bytes, 0
            if _serving.refuse_command(self, line):
                return  # the server is shutting down: answered 421
            self._command_line(line, size)
        elif self.smtp_state == self.DATA:
            self._end_of_data(self._raw_lines())
            _serving.after_data(self)  # a graceful shutdown ends the session here
        else:
            self.received_lines = []
            self.push(R.INTERNAL_CONFUSION)
            self.num_bytes = 0

    def _command_line(self, line: bytes, size: int) -> None:
        if not line:
            self.push(R.BAD_SYNTAX)
            return
        largest = self.max_command_size_limit
        if not largest:
            size = 0  # no limit: collect_incoming_data() counts nothing
        elif size > largest:
            # Too long for any command, and cut short while it was read:
            # where the cut fell (perhaps inside a UTF-8 character) must not
            # change the reply.
            self.push(R.LINE_TOO_LONG)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.push(R.BAD_ENCODING)
            return
        command, arg = _grammar.split_command(text)
        if self.extended_smtp:
            limits = self.command_size_limits
            if command in limits:
                max_size = limits[command]
            else:
                factory = getattr(limits, "default_factory", None)
                max_size = factory() if factory else self.command_size_limit
        else:
            max_size = self.command_size_limit
        if size > max_size:
            self.push(R.LINE_TOO_LONG)
            return
        method = getattr(self, "smtp_" + command, None)
        if not method:
            self.push(R.UNKNOWN_COMMAND % _grammar.reply_safe(command))
            return
        method(arg)

    def _end_of_data(self, message: List[bytes]) -> None:
        """The message (the raw pieces received, *message*) is complete."""
        if not isinstance(DEBUGSTREAM, Devnull):  # debug output on (per message)
            raw = b"".join(message)
            _debug("Data:", repr(raw.decode("utf-8", "surrogateescape") if self._decode_data else raw))
        if self.data_size_limit and self.num_bytes > self.data_size_limit:
            # The transaction is over: smtpd stayed in DATA state here and
            # swallowed the next commands as message text.
            self._set_post_data_state()
            self.push(R.TOO_MUCH_DATA)
            return
        data: Union[bytes, str] = _grammar.unstuff_chunks(message)
        if self._decode_data:
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                # smtpd crashed the session here; refuse the message instead.
                self._set_post_data_state()
                self.push(R.DATA_NOT_UTF8)
                return
        self.received_data = data
        args = (self.peer, self.mailfrom, self.rcpttos, data)
        kwargs: Dict[str, Any] = {}
        if not self._decode_data:
            kwargs = {"mail_options": self.mail_options, "rcpt_options": self.rcpt_options}
        kwargs.update(self._extra_message_options())
        try:
            status = _call_with_accepted_options(self.smtp_server.process_message, args, kwargs)
        except NotImplementedError:
            # The server class did not implement process_message: a
            # programming error that must stay loud, as in smtpd.
            self._set_post_data_state()
            self.push(R.PROCESSING_FAILED)
            raise
        except Exception:
            log.exception("process_message() failed for a message from %r", self.peer)
            status = R.PROCESSING_FAILED
        self._set_post_data_state()
        if isinstance(status, _Future):
            self._await_reply(status)
        else:
            self._push_status(status)

    def _push_status(self, status: Any) -> None:
        """Answer the end of data with what process_message returned."""
        if not status:
            self.push(R.OK)
        else:
            if isinstance(status, bytes):
                status = status.decode("utf-8", "replace")
            self.push(status)

    def _await_reply(self, future: "concurrent.futures.Future[Any]") -> None:
        """process_message returned a Future: reply with its result once it
        is done, without blocking the loop.

        Input is not processed meanwhile (commands the client pipelined stay
        buffered), and the idle timeout does not run: the client is waiting
        for us.  The result is handed to the loop's thread through the
        reactor, whatever thread completes the future.
        """
        reactor = self._reactor()
        if reactor is None:
            # No loop runs this channel (a test driving handle_read() by
            # hand): nothing else could run meanwhile, so wait here.
            self._reply_ready(future)
            return
        self._ac_pause("reply")
        timeout = self._guard.reply_timeout if self._guard is not None else None
        overdue = None if timeout is None else reactor.call_later(timeout, lambda: self._reply_overdue(future, timeout))
        self._reply_wait = (future, overdue)
        future.add_done_callback(lambda done: reactor.call_soon_threadsafe(lambda: self._reply_arrived(done)))

    def _reply_arrived(self, future: "concurrent.futures.Future[Any]") -> None:
        wait = self._reply_wait
        if wait is None or wait[0] is not future:
            # Answered 451 at reply_timeout; the client has sent it again
            # or given up.
            log.warning("process_message() for a message from %r finished after reply_timeout; result dropped",
                        getattr(self, "peer", None))
            return
        self._reply_wait = None
        if wait[1] is not None:
            wait[1].cancel()
        self._reply_ready(future)

    def _reply_overdue(self, future: "concurrent.futures.Future[Any]", timeout: float) -> None:
        wait = self._reply_wait
        if wait is None or wait[0] is not future:
            return
        self._reply_wait = None
        future.cancel()  # a no-op if it is already running
        if self._fileno is None:
            return  # the session ended meanwhile
        log.error("process_message() has not answered a message from %r in %gs (reply_timeout): replying 451",
                  getattr(self, "peer", None), timeout)
        self._end_reply_wait(R.PROCESSING_FAILED)

    def _reply_ready(self, future: "concurrent.futures.Future[Any]") -> None:
        if self._fileno is None:
            # The session ended while the message was being processed; the
            # client got no reply, so it still holds the message.
            log.info("session from %r closed before its message was answered", self.peer)
            return
        try:
            status = future.result()
        except Exception:
            log.exception("process_message() failed for a message from %r", self.peer)
            status = R.PROCESSING_FAILED
        self._end_reply_wait(status)

    def _end_reply_wait(self, status: Any) -> None:
        """Answer the awaited message with *status* and read input again."""
        self._push_status(status)
        self._ac_resume("reply")
        if self._guard is not None:
            self._guard.touch()

    # -- helpers kept from smtpd for subclasses ----------------------------------
    def _strip_command_keyword(self, keyword: str, arg: str) -> str:
        return _grammar.strip_keyword(keyword, arg)

    def _getaddr(self, arg: Optional[str]) -> Tuple[str, str]:
        if not arg:
            return "", ""
        try:
            return _grammar.parse_path(arg)
        except _grammar.AddressError:
            return "", ""

    def _getparams(self, params: List[str]) -> Optional[Dict[str, Union[str, bool]]]:
        return _grammar.parse_params(params)

    # -- extension points for the optional features (TLS, AUTH, limits) -----
    def _extra_ehlo_keywords(self) -> List[str]:
        """EHLO keywords announced before ``HELP`` (none by default, so the
        reply stays smtpd's byte for byte)."""
        return self._security_ehlo_keywords()

    def _refuse_mail(self) -> Optional[str]:
        """A reply refusing MAIL in the current session state, or None."""
        return self._security_refuse_mail()

    def _extra_message_options(self) -> Dict[str, Any]:
        """Keyword arguments for process_message beyond smtpd's own; each is
        passed only to overrides that accept it."""
        return self._security_message_options()

    def _path_argument(self, keyword: str, arg: Optional[str], syntaxerr: str) -> Optional[Tuple[str, str]]:
        """Parse ``FROM:<path> params`` / ``TO:<path> params`` as MAIL and RCPT
        share it: ``(address, params)``, or None after replying *syntaxerr*."""
        if arg is None:
            self.push(syntaxerr)
            return None
        address, params = self._getaddr(self._strip_command_keyword(keyword, arg))
        if not address or (params and not self.extended_smtp):
            self.push(syntaxerr)
            return None
        return address, params

    def _syntax_error(self, reply: str) -> str:
        return reply + R.PARAMS_SUFFIX if self.extended_smtp else reply

    # -- SMTP and ESMTP commands ---------------------------------------------------
    def smtp_HELO(self, arg: Optional[str]) -> None:
        if not arg:
            self.push(R.SYNTAX_HELO)
            return
        # A second greeting is refused (smtpd's choice, bpo-21783).
        if self.seen_greeting:
            self.push(R.DUPLICATE_HELO)
            return
        self._set_rset_state()
        self.seen_greeting = arg
        self.push(R.HELO_OK % self.fqdn)

    def smtp_EHLO(self, arg: Optional[str]) -> None:
        if not arg:
            self.push(R.SYNTAX_EHLO)
            return
        if self.seen_greeting:
            self.push(R.DUPLICATE_HELO)
            return
        self._set_rset_state()
        self.seen_greeting = arg
        self.extended_smtp = True
        self.push(R.EHLO_FIRST % self.fqdn)
        if self.data_size_limit:
            self.push(R.EHLO_SIZE % self.data_size_limit)
            self.command_size_limits["MAIL"] += 26
        if not self._decode_data:
            self.push(R.EHLO_8BITMIME)
        if self.enable_SMTPUTF8:
            self.push(R.EHLO_SMTPUTF8)
            self.command_size_limits["MAIL"] += 10
        for keyword in self._extra_ehlo_keywords():
            self.push("250-" + keyword)
        self.push(R.EHLO_LAST)

    def smtp_NOOP(self, arg: Optional[str]) -> None:
        if arg:
            self.push(R.SYNTAX_NOOP)
        else:
            self.push(R.OK)

    def smtp_QUIT(self, arg: Optional[str]) -> None:
        # The argument is ignored.
        self.push(R.BYE)
        self.close_when_done()

    def smtp_HELP(self, arg: Optional[str]) -> None:
        if not arg:
            self.push(R.HELP_ALL)
            return
        topic = arg.upper()
        reply = R.HELP_SYNTAX.get(topic)
        if reply is None:
            self.push(R.HELP_UNKNOWN)
        elif topic in ("MAIL", "RCPT"):
            self.push(self._syntax_error(reply))
        else:
            self.push(reply)

    def smtp_VRFY(self, arg: Optional[str]) -> None:
        if not arg:
            self.push(R.SYNTAX_VRFY)
            return
        address, _ = self._getaddr(arg)
        if address:
            self.push(R.VRFY_CANNOT)
        else:
            self.push(R.VRFY_FAILED % _grammar.reply_safe(arg))

    def smtp_MAIL(self, arg: Optional[str]) -> None:
        if not self.seen_greeting:
            self.push(R.NEED_HELO)
            return
        refusal = self._refuse_mail()
        if refusal:
            self.push(refusal)
            return
        if not isinstance(DEBUGSTREAM, Devnull):  # debug output on (per MAIL)
            _debug("===> MAIL", arg)
        syntaxerr = self._syntax_error(R.SYNTAX_MAIL)
        path = self._path_argument("FROM:", arg, syntaxerr)
        if path is None:
            return
        address, params = path
        if self.mailfrom:
            self.push(R.NESTED_MAIL)
            return
        self.mail_options = params.upper().split()
        parsed = self._getparams(self.mail_options)
        if parsed is None:
            self.push(syntaxerr)
            return
        if parsed:  # most MAIL commands have no parameters: nothing to check
            try:
                require_smtputf8 = _grammar.check_mail_params(
                    parsed,
                    syntaxerr,
                    decode_data=self._decode_data,
                    enable_smtputf8=self.enable_SMTPUTF8,
                    data_size_limit=self.data_size_limit,
                )
            except _grammar.ReplyError as err:
                self.push(err.reply)
                return
            if require_smtputf8:
                self.require_SMTPUTF8 = True
            if parsed:
                self.push(R.MAIL_PARAMS_UNKNOWN)
                return
        self.mailfrom = address
        if not isinstance(DEBUGSTREAM, Devnull):
            _debug("sender:", self.mailfrom)
        self.push(R.OK)

    def smtp_RCPT(self, arg: Optional[str]) -> None:
        if not self.seen_greeting:
            self.push(R.NEED_HELO)
            return
        if not isinstance(DEBUGSTREAM, Devnull):
            _debug("===> RCPT", arg)
        if not self.mailfrom:
            self.push(R.NEED_MAIL)
            return
        syntaxerr = self._syntax_error(R.SYNTAX_RCPT)
        path = self._path_argument("TO:", arg, syntaxerr)
        if path is None:
            return
        address, params = path
        guard = self._guard
        if guard is not None and guard.recipients_full(len(self.rcpttos)):
            # max_recipients: the client sends to the rest in another
            # transaction.  Not an error (the budget does not count it).
            self.push(R.TOO_MANY_RECIPIENTS)
            return
        self.rcpt_options = params.upper().split()
        parsed = self._getparams(self.rcpt_options)
        if parsed is None:
            self.push(syntaxerr)
            return
        # No RCPT parameter is known to this server.
        if parsed:
            self.push(R.RCPT_PARAMS_UNKNOWN)
            return
        self.rcpttos.append(address)
        if not isinstance(DEBUGSTREAM, Devnull):
            _debug("recips:", self.rcpttos)
        self.push(R.OK)

    def smtp_RSET(self, arg: Optional[str]) -> None:
        if arg:
            self.push(R.SYNTAX_RSET)
            return
        self._set_rset_state()
        self.push(R.OK)

    def smtp_DATA(self, arg: Optional[str]) -> None:
        if not self.seen_greeting:
            self.push(R.NEED_HELO)
            return
        if not self.rcpttos:
            self.push(R.NEED_RCPT)
            return
        if arg:
            self.push(R.SYNTAX_DATA)
            return
        self.smtp_state = self.DATA
        self.set_terminator(_grammar.END_OF_DATA)
        # The CRLF that ended this command line counts towards the end of
        # data, so a message may be empty ("DATA", then "." at once).
        self._ac_framer.prefix_seen = _grammar.DATA_START
        # The message collects in received_lines, as in smtpd, piece by
        # piece; the pieces are joined once, at the end (unstuff_chunks).
        self.push(R.START_DATA)

    def smtp_EXPN(self, arg: Optional[str]) -> None:
        self.push(R.EXPN_UNSUPPORTED)


# What SMTPChannel.handle_read_event's fast lane does instead of calling.
_FAST_LANE_METHODS = (
    "handle_read_event",
    "handle_read",
    "recv",
    "collect_incoming_data",
    "found_terminator",
    "initiate_send",
    "send",
    "_ac_feed",
)


def _deprecated_alias(old: str, new: str) -> property:
    def getter(self: SMTPChannel) -> Any:
        warn(
            "Access to __%s attribute on SMTPChannel is deprecated, use '%s' instead" % (old, new),
            DeprecationWarning,
            2,
        )
        return getattr(self, new)

    def setter(self: SMTPChannel, value: Any) -> None:
        warn(
            "Setting __%s attribute on SMTPChannel is deprecated, set '%s' instead" % (old, new),
            DeprecationWarning,
            2,
        )
        setattr(self, new, value)

    return property(getter, setter)


for _old, _new in (
    ("server", "smtp_server"),
    ("line", "received_lines"),
    ("state", "smtp_state"),
    ("greeting", "seen_greeting"),
    ("mailfrom", "mailfrom"),
    ("rcpttos", "rcpttos"),
    ("data", "received_data"),
    ("fqdn", "fqdn"),
    ("peer", "peer"),
    ("conn", "conn"),
    ("addr", "addr"),
):
    setattr(SMTPChannel, "_SMTPChannel__" + _old, _deprecated_alias(_old, _new))
del _old, _new




class SMTPServer(_tls.SecureServerMixin, asyncore.dispatcher):
    """Listen on *localaddr* and start a ``channel_class`` per connection.

    Subclasses override :meth:`process_message` to do something with each
    message.  *remoteaddr* is kept for subclasses that relay (PureProxy).
    """

    channel_class = SMTPChannel

    def __init__(
        self,
        localaddr: Tuple[Any, int],
        remoteaddr: Any,
        data_size_limit: int = DATA_SIZE_DEFAULT,
        map: Optional[dict] = None,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        **options: Any,
    ) -> None:
        self._apply_options(options)
        self._localaddr = localaddr
        self._remoteaddr = remoteaddr
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        if enable_SMTPUTF8 and decode_data:
            raise ValueError("decode_data and enable_SMTPUTF8 cannot be set to True at the same time")
        asyncore.dispatcher.__init__(self, map=map)
        try:
            gai_results = socket.getaddrinfo(*localaddr, type=socket.SOCK_STREAM)
            self.create_socket(gai_results[0][0], gai_results[0][1])
            self.set_reuse_addr()
            self.bind(localaddr)
            self.listen(_LISTEN_BACKLOG)
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
            values = _options.Options(options)
        except TypeError as err:
            raise TypeError("%s() got %s" % (type(self).__name__, err)) from None
        self.__dict__[_options.ATTRIBUTE] = values
        _limits.check_options(values)
        _tls.check_options(values, self)

    # What this package adds to smtpd's SMTPServer are names a subclass
    # written for smtpd may use for its own purposes (self.port = ...).
    # They are views a subclass or an instance may replace, and methods
    # that only delegate; the package itself calls _serving and reads
    # _options, so it works whatever a subclass does with these names.
    address = _options.View(
        _serving.bound_address,
        """``(host, port)`` the server is bound to: the real port when bound
        to port 0, also for IPv6 (no flow info/scope id), and still known
        after the server was closed.""",
    )
    port = _options.View(lambda self: _serving.bound_address(self)[1], "The port the server is bound to.")

    # -- serving API (socketserver style); implemented in _serving ----------
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve this server's socket map until :meth:`shutdown` completes.

        Another thread's ``shutdown()`` wakes the loop at once (through the
        loop's wake-up socket); *poll_interval* only bounds one wait.  A
        server that was shut down stays closed: a later call returns at once.
        """
        _serving.serve_forever(self, poll_interval)

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
            if not _limits.refuse_connection(self, *pair, lambda: R.TOO_MANY_CONNECTIONS % _getfqdn()):
                self.handle_accepted(*pair)
            if not self.accepting:
                return

    def handle_accepted(self, conn: Any, addr: Any) -> None:
        _debug("Incoming connection from %s" % repr(addr))
        _serving.log_connection(self, addr)
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
    setattr(SMTPServer, _name, _options.option_view(_name))
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
    """

    relay_timeout: float = _relay.DEFAULT_TIMEOUT
    relay_workers: int = _relay.DEFAULT_WORKERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("enable_SMTPUTF8"):
            raise ValueError("PureProxy does not support SMTPUTF8.")
        super().__init__(*args, **kwargs)

    def process_message(self, peer: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str], **kwargs: Any) -> Any:
        data = _grammar.add_peer_header(data, peer[0])
        return _relay.executor(self).submit(self._relay, mailfrom, list(rcpttos), data)

    def _relay(self, mailfrom: str, rcpttos: List[str], data: Union[bytes, str]) -> Optional[str]:
        """Deliver one message (worker thread); return the client's reply."""
        refused = self._deliver(mailfrom, rcpttos, data)
        if refused:
            _debug("we got some refusals:", refused)
        return _relay.reply_for(refused, rcpttos)

    def _deliver(self, mailfrom: str, rcpttos: List[str], data: Union[bytes, str]) -> Dict[str, Tuple[int, Any]]:
        """Send one message upstream; return the refused recipients as
        ``{address: (code, reply text)}`` (code -1: the upstream server
        could not be reached), as smtpd's PureProxy did.  ``{}`` means it
        was accepted for every recipient."""
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

    Prints usage and exits on an error, as smtpd did.
    """
    from . import _cli

    return _cli.parse_smtpd_options(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    from smtpd_compat._cli import main

    sys.exit(main())
