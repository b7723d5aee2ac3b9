"""asynchat's public API: terminator framing and buffered output.

Drop-in for the ``asynchat`` module removed from Python 3.12.  Subclass
:class:`async_chat`, call ``set_terminator()``, and implement
``collect_incoming_data()`` and ``found_terminator()``.

A channel is composed of a transport (``_transport``: the socket, or TLS
over it, driven by ``_tls_phases``), which alone reads and writes, a framer
(``_framing``), which splits the input by the terminator, and its output
queue (``producer_fifo``, see ``_output``).  One read takes one path: the
read event reads through the transport, the framer hands the pieces to
``collect_incoming_data()``/``found_terminator()``, and the replies pushed
meanwhile leave together, in one system call, once the loop iteration has
handled its events.  A subclass that overrides ``handle_read()``,
``recv()`` or ``send()`` is called as asynchat called it (detected once per
class).  What a subclass can tell apart from asynchat (input in one
buffer, batched replies, ``pause_reading()``, ``ac_max_output``) is listed
with its reasons in docs/differences.md.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Set, Tuple, Union

from . import _output, _reactor, _tls_phases, asyncore
from ._framing import Framer, find_prefix_at_end
from ._output import simple_producer
from ._transport import PlainTransport, TLSTransport, send_each

__all__ = ["async_chat", "find_prefix_at_end", "simple_producer"]
# CPython's asynchat had no __all__: "from asynchat import *" also gave
# the asyncore module and deque, which code written against it may use.
__all__ += ["asyncore", "deque"]

log = logging.getLogger("smtpd_compat")

Terminator = Union[bytes, int, None]

_monotonic = time.monotonic
_reactor_of = _reactor.reactor_of
_DISCONNECTED = asyncore._DISCONNECTED

# The paths a class's methods allow (async_chat._ac_paths, see
# __init_subclass__): reads and writes through the transport, whole records.
_OWN_READS = 1
_OWN_SENDS = 2
_RECORDS = 4


class async_chat(asyncore.dispatcher):
    """An asynchronous, terminator-framed, buffered chat channel."""

    ac_in_buffer_size = 65536  # (sizes of the read and of each send)
    ac_out_buffer_size = 65536

    # Encoding of str terminators when use_encoding is set (legacy option).
    use_encoding = 0
    encoding = "latin-1"

    # Stop processing input while more than this many bytes of pushed output
    # wait to be sent (a client that never reads its replies); None: no bound.
    ac_max_output: Optional[int] = None

    # The input delimiter (see set_terminator()).  A class default, not set
    # in __init__: code may call set_terminator() before async_chat.__init__,
    # or run __init__ twice (TLS wrappers do), and asynchat kept it then.
    terminator: Terminator = None

    # The transport over the socket (see socket below); None until one is set.
    _ac_transport: Any = None
    # Set while _ac_send_held() runs: a close() from inside it (a send
    # error calls handle_close()) must not start it again.
    _ac_flushing = False

    # Per class: _OWN_READS | _OWN_SENDS | _RECORDS bits (see __init_subclass__).
    _ac_paths = _OWN_READS | _OWN_SENDS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # The read event reads through the transport while handle_read() and
        # recv() are asynchat's; output is written through it while send() is.
        paths = _OWN_READS if cls.handle_read is async_chat.handle_read and cls.recv is async_chat.recv else 0
        paths |= _OWN_SENDS if cls.send is async_chat.send else 0
        # Whole records go to _ac_record only while the class defining it
        # keeps the hooks it stands for (else they are called per record).
        owner = next((c for c in cls.__mro__ if "_ac_record" in c.__dict__), async_chat)
        if owner is not async_chat and all(
            getattr(cls, name) is getattr(owner, name) for name in ("collect_incoming_data", "found_terminator")
        ):
            paths |= _RECORDS
        cls._ac_paths = paths

    def __init__(self, sock: Optional[Any] = None, map: Optional[Dict[int, Any]] = None) -> None:
        # The input read and not handed out yet (see _framing).
        self._ac_framer = Framer()
        self.incoming: List[bytes] = []
        self.producer_fifo: Deque[Any] = deque()
        self._ac_batching = False
        self._ac_input_closed = False
        self._ac_want_write = False
        # Why input processing is suspended (see pause_reading()).
        self._ac_paused: Set[str] = set()
        # Bytes of the bytes-like entries of producer_fifo (producers are not
        # counted): what ac_max_output bounds.
        self._ac_out_queued = 0
        # Instance attributes, no class defaults: Python 3.11 specialises
        # only loads of instance attributes that no class attribute shadows.
        self._ac_paths = type(self)._ac_paths
        # Output waits for the reactor's after-events pass (see _ac_consume).
        self._ac_flush_due = False
        # When input was last read (monotonic seconds): idle timeouts read it.
        self._ac_last_read = 0.0
        # Bytes a read asks for beyond ac_in_buffer_size (a big message, _spool).
        self._ac_read_size = 0
        asyncore.dispatcher.__init__(self, sock, map)

    # -- the socket and its transport ----------------------------------------------
    @property
    def socket(self) -> Any:
        try:
            return self._ac_socket
        except AttributeError:  # before dispatcher.__init__
            return None

    @socket.setter
    def socket(self, sock: Any) -> None:
        # Whatever sets the socket (set_socket(), or code assigning it)
        # also sets the transport that reads and writes it.
        self._ac_socket = sock
        transport = self._ac_transport
        if transport is not None and transport.sock is sock:
            return  # the transport's own socket (TLS started here)
        if sock is None:
            self._ac_transport = None
        elif isinstance(sock, ssl.SSLSocket) and sock.server_side and sock.version() is None:
            # Implicit TLS: the handshake is driven by the loop.
            self._ac_transport = TLSTransport.adopt(sock)
            self._ac_tls_starting()
        else:
            self._ac_transport = PlainTransport(sock)

    # -- compatibility view of the input buffer ---------------------------------
    @property
    def ac_in_buffer(self) -> bytes:
        """The input not yet handed to collect_incoming_data()."""
        return self._ac_framer.pending()

    @ac_in_buffer.setter
    def ac_in_buffer(self, value: bytes) -> None:
        self._ac_framer.replace(value)

    # -- subclass API -------------------------------------------------------------
    def collect_incoming_data(self, data: bytes) -> None:
        raise NotImplementedError("must be implemented in subclass")

    def _collect_incoming_data(self, data: bytes) -> None:
        self.incoming.append(data)

    def _get_data(self) -> bytes:
        data = b"".join(self.incoming)
        del self.incoming[:]
        return data

    def found_terminator(self) -> None:
        raise NotImplementedError("must be implemented in subclass")

    def set_terminator(self, term: Terminator) -> None:
        """Set the input delimiter: bytes, a byte count (int), or None."""
        if term.__class__ is not bytes:  # bytes: SMTPChannel's, twice a message
            if isinstance(term, str) and self.use_encoding:
                term = bytes(term, self.encoding)
            elif isinstance(term, int) and term < 0:
                raise ValueError("the number of received bytes must be positive")
        self.terminator = term
        try:
            self._ac_framer.prefix_seen = b""
        except AttributeError:  # called before async_chat.__init__
            pass

    def get_terminator(self) -> Terminator:
        return self.terminator

    # -- input --------------------------------------------------------------------
    def handle_read_event(self) -> None:
        transport = self._ac_transport
        if transport is not None and transport.tls and not _tls_phases.before_read(self, transport):
            return
        if not (self._ac_paths & _OWN_READS and self.connected):
            asyncore.dispatcher.handle_read_event(self)  # asyncore's rules and hooks
            return
        # handle_read(), without the calls in between: the read path.
        recv = transport.recv  # an instance attribute: read, then called (specialised)
        try:
            data = recv(max(self.ac_in_buffer_size, self._ac_read_size))
        except BlockingIOError:
            if transport.read_needs_write:
                self._interest_changed()  # a TLS read must write first
            return
        except OSError as why:
            self._ac_failed(why)
            return
        if data:
            self._ac_last_read = _monotonic()
            self._ac_consume(data)
            if transport.tls and transport.pending():
                self._ac_read_again()
        else:
            self.handle_close()  # end of stream

    def handle_read(self) -> None:
        try:
            data = self.recv(self.ac_in_buffer_size)
        except BlockingIOError:
            return
        except OSError:
            self.handle_error()
            return
        if isinstance(data, str) and self.use_encoding:
            data = bytes(data, self.encoding)
        if data:
            self._ac_last_read = _monotonic()
            self._ac_consume(data)

    def recv(self, buffer_size: int) -> bytes:
        transport = self._ac_transport
        if transport is None or not transport.tls:
            return asyncore.dispatcher.recv(self, buffer_size)
        return _tls_phases.recv(self, transport, buffer_size)

    def send(self, data: bytes) -> int:
        transport = self._ac_transport
        if transport is None or not transport.tls:
            return asyncore.dispatcher.send(self, data)
        return _tls_phases.send(self, transport, data)

    def _ac_failed(self, why: OSError) -> None:
        """The transport's recv() or send() raised *why* (asyncore's rules:
        a connection the client dropped is closed, anything else is an
        error; over TLS both are the client's doing)."""
        if self._ac_transport.tls:
            _tls_phases.failed(self, why)
        elif why.errno in _DISCONNECTED:
            self.handle_close()
        else:
            self.handle_error()

    def _ac_consume(self, data: bytes) -> None:
        """Frame *data* (plus what is buffered) and get the replies out.

        The input is handed to collect_incoming_data()/found_terminator()
        one framing step at a time, under the terminator set at that
        moment.  A class that passes whole records through _ac_record (see
        __init_subclass__) gets a record that arrived in one piece there,
        in one call instead of the two hooks'.
        """
        framer = self._ac_framer
        records = self._ac_paths & _RECORDS
        self._ac_batching = True
        try:
            piece = framer.whole(data, self.terminator) if records else None
            if piece is not None:
                self._ac_record(piece)  # the usual read: one line, or one small message
            else:
                framer.feed(data)
                self._ac_steps(framer, self._ac_record if records else None)
        except BaseException:
            # A handler raised (asyncore.ExitNow included): what it pushed
            # before would have been sent at once by asynchat.
            self._ac_batching = False
            self._ac_send_held()
            raise
        self._ac_batching = False
        if self.producer_fifo and not self._ac_flush_due:
            reactor = _reactor_of(id(self._map))
            if reactor is None or not reactor.dispatching:
                # Not inside a loop iteration (a test driving the channel by
                # hand, resumed input): nothing to wait for.
                self.initiate_send()
            else:
                # Sent once the iteration has handled all its socket events:
                # a client serving many sessions is woken once, not per reply.
                self._ac_flush_due = True
                reactor.after_events.append(self.initiate_send)

    def _ac_steps(self, framer: Framer, record: Any) -> None:
        """Hand out what the framer holds, step by step, until it needs more
        input or the channel stops taking it (closed, paused)."""
        max_output = self.ac_max_output
        collect = self.collect_incoming_data  # (looked up once per read)
        found = self.found_terminator
        while self._ac_taking(max_output):
            term = self.terminator
            step = framer.next(term)
            if step is None:
                break
            piece, done = step
            if done and record is not None:
                record(piece)
                continue
            if piece:
                collect(piece)
            if term.__class__ is int and term:
                # A byte count: asynchat counted it down in place.
                self.terminator = 0 if done else term - len(piece)
            if done:
                found()
        if self._ac_input_closed or self._fileno is None:
            framer.clear()  # nothing after QUIT (or a close) is read

    def _ac_taking(self, max_output: Optional[int]) -> bool:
        """Whether the channel takes its next piece of input now: open, not
        paused, and its client reading its replies (ac_max_output)."""
        if self._ac_input_closed or self._fileno is None or self._ac_paused:
            return False
        if max_output is None or self._ac_out_queued <= max_output:
            return True
        # A client that does not read its replies: send what it takes, and
        # go on only if that brought the output back under the bound.
        self._ac_batching = False
        self.initiate_send()
        self._ac_batching = True
        if self._ac_out_queued > max_output:
            self._ac_pause("output")
            return False
        return not (self._ac_input_closed or self._fileno is None or self._ac_paused)

    def _ac_record(self, piece: bytes) -> None:
        """A record that arrived whole, for a class with the _RECORDS path
        (see __init_subclass__), which may take it in one call."""
        self.collect_incoming_data(piece)
        self.found_terminator()

    def pause_reading(self, reason: str = "") -> None:
        """Stop reading and processing input until ``resume_reading(reason)``.

        Several reasons may hold at once (waiting for a reply, output not
        being read); input resumes when the last one is lifted.  Input
        already received stays buffered.
        """
        self._ac_pause(reason)

    def resume_reading(self, reason: str = "") -> None:
        """Lift the pause *reason*; input buffered meanwhile is then processed."""
        self._ac_resume(reason)

    # What the package itself calls: a subclass may have methods of its own
    # named pause_reading/resume_reading (asynchat had neither).
    def _ac_pause(self, reason: str) -> None:
        if not self._ac_paused:
            self._ac_paused.add(reason)
            self._interest_changed()
        else:
            self._ac_paused.add(reason)

    def _ac_resume(self, reason: str) -> None:
        paused = self._ac_paused
        if reason not in paused:
            return
        paused.discard(reason)
        if paused:
            return
        self._interest_changed()
        if len(self._ac_framer):
            # No read event may come (the client pipelined everything):
            # process the buffer from the loop, not inside our caller.
            reactor = self._reactor()
            if reactor is not None:
                reactor.call_soon_threadsafe(self._ac_resume_input)
            else:
                self._ac_resume_input()
        elif self._ac_transport is not None and self._ac_transport.pending():
            self._ac_read_again()  # input decrypted before the pause

    def _ac_resume_input(self) -> None:
        if self._ac_batching:
            # Resumed from a callback of the framing pass under way (no loop
            # to defer to): that pass goes on by itself; framing again here
            # would re-read the line being handled.
            return
        if not self._ac_paused and self._fileno is not None and len(self._ac_framer):
            self._ac_consume(b"")

    def _ac_read_again(self) -> None:
        """Input is held above the socket (TLS): read again without waiting
        for the socket to be readable."""
        reactor = self._reactor()
        if reactor is not None and self._fileno is not None:
            reactor.read_again(self._fileno)

    # -- output -------------------------------------------------------------------
    def push(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Queue *data* for sending and start sending it."""
        if data.__class__ is not bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("data argument must be byte-ish (%r)" % type(data))
        self.producer_fifo.append(data)
        self._ac_out_queued += len(data)
        if not self._ac_batching:
            self.initiate_send()

    def push_with_producer(self, producer: Any) -> None:
        """Queue an object whose ``more()`` returns data until it returns b''."""
        self.producer_fifo.append(producer)
        if not self._ac_batching:
            self.initiate_send()

    def readable(self) -> bool:
        wanted = not self._ac_paused  # STARTTLS pauses input too (_tls_phases.PAUSED)
        transport = self._ac_transport
        return wanted if transport is None else transport.readable(wanted)

    def writable(self) -> bool:
        wanted = bool(self.producer_fifo) or (not self.connected)
        transport = self._ac_transport
        return wanted if transport is None else transport.writable(wanted)

    def close_when_done(self) -> None:
        """Close once everything queued has been sent; ignore further input."""
        self._ac_input_closed = True
        self.producer_fifo.append(None)
        self._ac_interest()

    def handle_write_event(self) -> None:
        transport = self._ac_transport
        if transport is not None and transport.tls and not _tls_phases.before_write(self, transport):
            return
        asyncore.dispatcher.handle_write_event(self)

    def handle_write(self) -> None:
        self.initiate_send()

    def handle_close(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; replies already pushed are sent first.

        asynchat's push() sent at once, so a reply pushed just before a close
        was on the wire; here they are sent now, as far as the socket takes
        them without waiting."""
        self._ac_send_held()
        transport = self._ac_transport
        if transport is not None and transport.tls and not transport.handshaking and self._fileno is not None:
            transport.close_notify()
        asyncore.dispatcher.close(self)

    def _ac_send_held(self) -> None:
        """Send the queued output that the socket takes now, without
        waiting and without acting on close_when_done() (used when the
        normal send will not come: a close, an exception)."""
        fifo = self.producer_fifo
        if not fifo or self._fileno is None or self._ac_flushing:
            return
        self._ac_flushing = True  # a send error may call handle_close()
        try:
            while fifo and fifo[0] is not None and self._fileno is not None:
                chunks, size = self._ac_gather()
                if chunks and self._ac_send(chunks) < size:
                    break  # the rest would wait for the client: drop it
        except Exception:
            pass  # the connection is being abandoned anyway
        finally:
            self._ac_flushing = False

    def _ac_interest(self) -> None:
        want = bool(self.producer_fifo)
        if want != self._ac_want_write:
            self._ac_want_write = want
            self._interest_changed()

    def _ac_gather(self) -> Tuple[List[Any], int]:
        """Take the bytes at the head of the queue, running producers;
        return them and their total size."""
        chunks, size, counted = _output.take(
            self.producer_fifo, self.ac_out_buffer_size, self.encoding if self.use_encoding else None
        )
        self._ac_out_queued -= counted
        return chunks, size

    def _ac_send(self, chunks: List[Any]) -> int:
        """Write *chunks* (in order); the number of bytes taken.  Where the
        transport write fails for good, handle_close() is called (and 0
        returned), as asyncore's send() did."""
        if not self._ac_paths & _OWN_SENDS:
            return send_each(self.send, chunks)  # send() is overridden: as asynchat called it
        transport = self._ac_transport
        try:
            return transport.send(chunks[0]) if len(chunks) == 1 else transport.sendmsg(chunks)  # type: ignore[no-any-return]
        except BlockingIOError:
            return 0
        except OSError as why:
            if transport.tls or why.errno in _DISCONNECTED:
                self._ac_failed(why)
                return 0
            raise

    def initiate_send(self) -> None:
        self._ac_flush_due = False  # when called from the after-events pass
        fifo = self.producer_fifo
        transport = self._ac_transport
        if not (
            transport.__class__ is PlainTransport
            and len(fifo) == 1
            and fifo[0].__class__ is bytes
            and self._ac_paths & _OWN_SENDS
            and self.connected
        ):
            self._ac_send_all(fifo, transport)
            return
        # One reply queued on a plain socket, the usual case: written
        # without the queue walk of _ac_send_queue(), same outcome.
        first = fifo[0]
        send = transport.send  # as recv in handle_read_event()
        try:
            sent = send(first)
        except BlockingIOError:
            sent = 0
        except OSError as why:
            self._ac_failed(why)
            return
        if sent == len(first):
            fifo.popleft()
        else:  # the socket is full: the rest waits for it
            fifo[0] = memoryview(first)[sent:]
        self._ac_out_queued -= sent
        if fifo or self._ac_want_write or self._ac_paused:
            self._ac_sent()

    def _ac_send_all(self, fifo: Deque[Any], transport: Any) -> None:
        """initiate_send() for any queue and transport."""
        if transport is not None and (transport.handshaking or transport.write_needs_read):
            return  # replies wait for TLS (the SMTPS greeting; a read first)
        if fifo:
            self._ac_send_queue(fifo)
        self._ac_sent()

    def _ac_sent(self) -> None:
        """What a write changed: the write interest, the output pause, and
        STARTTLS once its reply is out."""
        fifo = self.producer_fifo
        if self._ac_want_write != bool(fifo):
            self._ac_interest()
        if "output" in self._ac_paused and self._ac_out_queued <= (self.ac_max_output or 0):
            self._ac_resume("output")
        if not fifo and _tls_phases.PAUSED in self._ac_paused and self._fileno is not None:
            _tls_phases.wrap(self)

    def _ac_send_queue(self, fifo: Deque[Any]) -> None:
        """Write the queue until it is empty, the socket is full, or a
        close_when_done() mark is reached."""
        while fifo and self.connected:
            first = fifo[0]
            if first is None:
                fifo.popleft()
                self.handle_close()
                return
            chunks, size = self._ac_gather()
            if not chunks:
                continue  # a producer ran dry; look at what follows it
            try:
                sent = self._ac_send(chunks)
            except OSError:
                self.handle_error()
                return
            if sent >= size:
                continue
            # The socket took less than offered: the rest waits for it.
            self._ac_out_queued += _output.put_back(fifo, chunks, sent)
            return

    def discard_buffers(self) -> None:
        """Drop unprocessed input and unsent output."""
        self._ac_framer.clear()
        del self.incoming[:]
        self.producer_fifo.clear()
        self._ac_out_queued = 0
        self._ac_interest()

    # -- TLS (the transport's phases, as seen from the loop: see _tls_phases) -----------
    def _ac_start_tls(self, context: ssl.SSLContext) -> None:
        """Switch to TLS once what is queued (the reply to STARTTLS) is sent."""
        _tls_phases.start(self, context)

    def _ac_tls_pending(self) -> bool:
        """Whether TLS is being started (its handshake not done)."""
        transport = self._ac_transport
        return _tls_phases.PAUSED in self._ac_paused or (transport is not None and transport.handshaking)

    def _ac_tls_starting(self) -> None:  # hooks for subclasses that start TLS (SMTPChannel)
        """A TLS handshake is about to be awaited (STARTTLS or implicit TLS)."""

    def _ac_tls_ready(self) -> None:
        """The TLS handshake completed."""


asyncore._TRACKED_READABLE.add(async_chat.readable)
asyncore._TRACKED_WRITABLE.add(async_chat.writable)
