"""asynchat's public API: terminator framing and buffered output.

Drop-in for the ``asynchat`` module removed from Python 3.12.  Subclass
:class:`async_chat`, call ``set_terminator()``, and implement
``collect_incoming_data()`` and ``found_terminator()``.

Differences from the original (listed with their reasons in
docs/differences.md):

* input is kept in one ``bytearray`` consumed front to back, instead of a
  ``bytes`` object re-built for every terminator found; ``ac_in_buffer`` is
  a property over it;
* ``push()`` made while input is being processed is sent once the whole
  read has been handled, so replies to pipelined commands leave in one
  system call (``sendmsg``) instead of one ``send()`` per reply.  A
  subclass sees the difference only in timing: whatever ends the
  processing early (``close()``, an exception, ``asyncore.ExitNow``) sends
  the queued output first, in order, as asynchat's immediate sends had;
* once ``close_when_done()`` has been called, input that arrives after it is
  ignored (nothing after SMTP ``QUIT`` is processed);
* ``pause_reading()``/``resume_reading()`` suspend input processing (a
  channel waiting for a slow reply, or whose client does not read what it is
  sent), and ``ac_max_output`` bounds the output queued for a client.
"""

from __future__ import annotations

import socket as _real_socket
from collections import deque
from typing import Any, Deque, List, Optional, Set, Tuple, Union

from . import asyncore
from ._framing import Framer, find_prefix_at_end

__all__ = ["async_chat", "find_prefix_at_end", "simple_producer"]
# CPython's asynchat had no __all__: "from asynchat import *" also gave
# the asyncore module and deque, which code written against it may use.
__all__ += ["asyncore", "deque"]

Terminator = Union[bytes, int, None]

# sendmsg() takes at most IOV_MAX buffers; stay well below it.
_MAX_IOV = 64
_RealSocket = _real_socket.socket
# send() implementations that are dispatcher.send on a plain socket (the TLS
# channel's send only differs once its socket is an SSLSocket): a class using
# one of these may have its chunks gathered into one sendmsg().
_PLAIN_SENDS = {asyncore.dispatcher.send}
# The same for recv(): a class using one of these on a plain socket may have
# handle_read() call the socket directly, with dispatcher.recv's handling.
_PLAIN_RECVS = {asyncore.dispatcher.recv}


class async_chat(asyncore.dispatcher):
    """An asynchronous, terminator-framed, buffered chat channel."""

    # Sizes of the read and of each send.
    ac_in_buffer_size = 65536
    ac_out_buffer_size = 65536

    # Encoding of str terminators when use_encoding is set (legacy option).
    use_encoding = 0
    encoding = "latin-1"

    # Stop processing input while more than this many bytes of pushed output
    # wait to be sent (a client that never reads its replies); None: no bound.
    ac_max_output: Optional[int] = None

    # Set while _ac_send_held() runs: a close() from inside it (a send
    # error calls handle_close()) must not start it again.
    _ac_flushing = False

    # The input delimiter (see set_terminator()).  A class default, not set
    # in __init__: code may call set_terminator() before async_chat.__init__,
    # or run __init__ twice (TLS wrappers do), and asynchat kept it then.
    terminator: Terminator = None

    def __init__(self, sock: Optional[Any] = None, map: Optional[dict] = None) -> None:
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
        asyncore.dispatcher.__init__(self, sock, map)

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
        framer = self.__dict__.get("_ac_framer")
        if framer is not None:  # None: called before async_chat.__init__
            framer.prefix_seen = b""

    def get_terminator(self) -> Terminator:
        return self.terminator

    # -- input --------------------------------------------------------------------
    def handle_read(self) -> None:
        sock = self.socket
        if type(sock) is _RealSocket and type(self).recv in _PLAIN_RECVS:
            # dispatcher.recv inlined: this runs once per command.
            try:
                data = sock.recv(self.ac_in_buffer_size)
            except OSError as why:
                self._ac_recv_failed(why)
                return
            if data:
                self._ac_feed(data)
            else:
                self.handle_close()  # end of stream
            return
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
            self._ac_feed(data)

    def _ac_recv_failed(self, why: OSError) -> None:
        """A plain socket's recv() raised *why* (dispatcher.recv's handling)."""
        if isinstance(why, BlockingIOError):
            return  # a spurious wake-up: nothing to read after all
        if why.errno in asyncore._DISCONNECTED:
            self.handle_close()
        else:
            self.handle_error()

    def _ac_feed(self, data: bytes) -> None:
        """Frame *data* (plus what is buffered) and flush the replies once."""
        # Each pass consumes input or ends: framing stops early only when the
        # output is over ac_max_output, and then either the send brings it
        # back under the bound or reading is paused.
        while True:
            self._ac_batching = True
            try:
                over_output = self._ac_frame(data)
            except BaseException:
                # A handler raised (asyncore.ExitNow included): what it
                # pushed before would have been sent at once by asynchat.
                self._ac_batching = False
                self._ac_send_held()
                raise
            self._ac_batching = False
            data = b""
            if self.producer_fifo:
                self.initiate_send()
            if not over_output or self._fileno is None:
                return
            if self._ac_out_queued > (self.ac_max_output or 0):
                self._ac_pause("output")
                return

    def _ac_frame(self, data: bytes) -> bool:
        """Hand the input to collect_incoming_data()/found_terminator(), one
        framing step at a time under the terminator set at that moment;
        True if it stopped because output is over the bound."""
        framer = self._ac_framer
        framer.feed(data)
        max_output = self.ac_max_output
        # Looked up once per read, not once per line.
        collect = self.collect_incoming_data
        found = self.found_terminator
        try:
            while True:
                if self._ac_input_closed or self._fileno is None:
                    framer.clear()
                    break
                if self._ac_paused:
                    break  # keep the rest for _ac_resume()
                if max_output is not None and self._ac_out_queued > max_output:
                    return True
                term = self.terminator
                step = framer.next(term)
                if step is None:
                    break
                piece, done = step
                if piece:
                    collect(piece)
                if term.__class__ is int and term:
                    # A byte count: asynchat counted it down in place.
                    self.terminator = 0 if done else term - len(piece)  # type: ignore[operator]
                if done:
                    found()
        finally:
            framer.compact()
        return False

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
            # The client may have nothing more to send (it pipelined
            # everything already), so no read event would come: process
            # the buffer from the loop, not from inside our caller.
            reactor = self._reactor()
            if reactor is not None:
                reactor.call_soon_threadsafe(self._ac_resume_input)
            else:
                self._ac_resume_input()

    def _ac_resume_input(self) -> None:
        if self._ac_batching:
            # Resumed from a callback of the framing pass under way (no loop
            # to defer to): that pass goes on by itself; framing again here
            # would re-read the line being handled.
            return
        if not self._ac_paused and self._fileno is not None and len(self._ac_framer):
            self._ac_feed(b"")

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
        return not self._ac_paused

    def writable(self) -> bool:
        return bool(self.producer_fifo) or (not self.connected)

    def close_when_done(self) -> None:
        """Close once everything queued has been sent; ignore further input."""
        self._ac_input_closed = True
        self.producer_fifo.append(None)
        self._ac_interest()

    def handle_write(self) -> None:
        self.initiate_send()

    def handle_close(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; replies already pushed are sent first.

        asynchat's push() sent at once, so a reply pushed just before a
        close was on the wire; here replies to one read are gathered, so
        they are sent now, as far as the socket takes them without waiting.
        """
        self._ac_send_held()
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
        fifo = self.producer_fifo
        chunks: List[Any] = []
        size = 0
        limit = self.ac_out_buffer_size
        while fifo and len(chunks) < _MAX_IOV and size < limit:
            first = fifo[0]
            if first is None:
                break
            if first.__class__ is bytes or isinstance(first, (bytearray, memoryview)):
                n = len(first)
                if n:
                    chunks.append(first)
                    size += n
                    self._ac_out_queued -= n
                fifo.popleft()
                continue
            if chunks:
                break
            data = first.more()
            if data:
                if isinstance(data, str) and self.use_encoding:
                    data = bytes(data, self.encoding)
                chunks.append(data)
                size += len(data)
                break
            fifo.popleft()
        return chunks, size

    def _ac_send(self, chunks: List[Any]) -> int:
        sock = self.socket
        if type(sock) is _RealSocket and type(self).send in _PLAIN_SENDS:
            # dispatcher.send inlined for one chunk (one reply: the usual
            # case), sendmsg() for several.
            try:
                if len(chunks) == 1:
                    return sock.send(chunks[0])
                return sock.sendmsg(chunks)
            except OSError as why:
                if why.errno == asyncore.EWOULDBLOCK:
                    return 0
                if why.errno in asyncore._DISCONNECTED:
                    self.handle_close()
                    return 0
                raise
        if len(chunks) == 1:
            return self.send(chunks[0])
        if hasattr(sock, "do_handshake"):
            return self.send(b"".join(chunks))  # TLS: one record, not many
        # Socket-like objects (test doubles) get one send() per chunk, as
        # asynchat did.
        total = 0
        for chunk in chunks:
            sent = self.send(chunk)
            total += sent
            if sent < len(chunk):
                break
        return total

    def initiate_send(self) -> None:
        fifo = self.producer_fifo
        while fifo and self.connected:
            first = fifo[0]
            if first is None:
                fifo.popleft()
                self.handle_close()
                return
            if len(fifo) == 1 and first.__class__ is bytes and type(self.socket) is _RealSocket and type(self).send in _PLAIN_SENDS:
                # One reply queued, the usual case: what _ac_gather() and
                # _ac_send() would do for it, without their loop and calls.
                fifo.popleft()
                size = len(first)
                self._ac_out_queued -= size
                try:
                    sent = self.socket.send(first)
                except OSError as why:
                    if why.errno == asyncore.EWOULDBLOCK:
                        sent = 0
                    elif why.errno in asyncore._DISCONNECTED:
                        self.handle_close()
                        sent = 0
                    else:
                        self.handle_error()
                        return
                if sent < size:
                    fifo.appendleft(memoryview(first)[sent:] if sent else first)
                    self._ac_out_queued += size - sent
                    break
                continue
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
            # The socket took less than offered: the first `sent` bytes
            # left, from the front.  Put the rest back, in order, and wait
            # until the socket is writable again.
            unsent = []
            for chunk in chunks:
                if sent >= len(chunk):
                    sent -= len(chunk)
                    continue
                unsent.append(memoryview(chunk)[sent:] if sent else chunk)
                sent = 0
            for chunk in reversed(unsent):
                fifo.appendleft(chunk)
                self._ac_out_queued += len(chunk)
            break
        self._ac_interest()
        if "output" in self._ac_paused and self._ac_out_queued <= (self.ac_max_output or 0):
            self._ac_resume("output")

    def discard_buffers(self) -> None:
        """Drop unprocessed input and unsent output."""
        self._ac_framer.clear()
        del self.incoming[:]
        self.producer_fifo.clear()
        self._ac_out_queued = 0
        self._ac_interest()


asyncore._TRACKED_READABLE.add(async_chat.readable)
asyncore._TRACKED_WRITABLE.add(async_chat.writable)


class simple_producer:
    """Serve *data* in pieces of *buffer_size* bytes through ``more()``."""

    def __init__(self, data: bytes, buffer_size: int = 512) -> None:
        self.data = data
        self.buffer_size = buffer_size

    def more(self) -> bytes:
        if len(self.data) > self.buffer_size:
            result = self.data[: self.buffer_size]
            self.data = self.data[self.buffer_size :]
            return result
        result = self.data
        self.data = b""
        return result
