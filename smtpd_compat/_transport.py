"""Transports: the only code that reads or writes a connected socket.

A transport moves bytes for one connection.  :class:`PlainTransport` is the
socket itself; :class:`TLSTransport` wraps another transport's socket in TLS
(trio's stream-wrapping-a-stream: composition, not a mixin), with the TLS
state machine inside it: the handshake, and the conditions under which a
read must first write or a write must first read.

Both offer the same surface to ``async_chat``:

``recv(size)``
    bytes; ``b""`` at the end of the stream; raises ``BlockingIOError``
    when there is nothing to read now, ``OSError`` when the connection
    failed.
``send(data)`` / ``sendmsg(chunks)``
    the number of bytes taken (0 when the socket is full); ``OSError`` when
    the connection failed.
``readable(wanted)`` / ``writable(wanted)``
    whether the socket must be watched for reading/writing, given whether
    the channel wants to read/has output: TLS may need the other direction
    first.
``pending()``
    bytes already decrypted and held above the socket (a selector cannot
    see them).

A plain transport's ``recv``, ``send`` and ``sendmsg`` are the socket's own
bound methods, so a plain read costs no Python call of its own.
"""

from __future__ import annotations

import logging
import socket
import ssl
from errno import EAGAIN
from typing import Any, Callable, List, Optional

log = logging.getLogger("smtpd_compat")

__all__ = [
    "HANDSHAKE_DONE", "HANDSHAKE_READ", "HANDSHAKE_WRITE", "PlainTransport", "ProxiedSocket", "TLSTransport", "can_start_tls",
    "keep_peer", "peek", "send_each", "take",
]

# What TLSTransport.handshake() returns.
HANDSHAKE_DONE = "done"
HANDSHAKE_READ = "read"  # waiting for the client: watch for reading
HANDSHAKE_WRITE = "write"  # the socket is full: watch for writing


class PlainTransport:
    """A connected socket, as it is."""

    tls = False
    handshaking = False
    read_needs_write = False
    write_needs_read = False
    # STARTTLS: the context to wrap the socket with once its reply is sent
    # (see _tls_phases.start and wrap).
    upgrade: Optional[ssl.SSLContext] = None

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        # The class's values, as instance attributes: Python 3.11 only
        # specialises loads of instance attributes, and async_chat reads
        # these on every read and write.
        self.tls = self.handshaking = self.read_needs_write = self.write_needs_read = False
        # The socket's own methods (bound C functions for a real socket).
        self.recv: Callable[[int], bytes] = sock.recv
        self.send: Callable[[Any], int] = sock.send
        self.sendmsg: Callable[[List[Any]], int]
        if type(sock) is socket.socket or type(sock) is ProxiedSocket:
            self.sendmsg = sock.sendmsg
        elif isinstance(sock, ssl.SSLSocket):
            # A socket some code wrapped in TLS itself: one record for the
            # replies of one read (SSLSocket has no sendmsg()).
            self.sendmsg = self._send_joined
        else:
            # Socket-like objects (test doubles) get one send() per chunk,
            # as asynchat did.
            self.sendmsg = lambda chunks: send_each(self.send, chunks)

    def _send_joined(self, chunks: List[Any]) -> int:
        return self.send(b"".join(chunks))

    @staticmethod
    def readable(wanted: bool) -> bool:
        return wanted

    @staticmethod
    def writable(wanted: bool) -> bool:
        return wanted

    @staticmethod
    def pending() -> int:
        return 0


def send_each(send: Callable[[Any], int], chunks: List[Any]) -> int:
    """Write *chunks* with one ``send(chunk)`` each, stopping at the first
    the socket does not take whole; the number of bytes taken."""
    total = 0
    for chunk in chunks:
        sent = send(chunk)
        total += sent
        if sent < len(chunk):
            break
    return total


def can_start_tls(sock: Any) -> bool:
    """Whether *sock* is a plain socket that TLS can be started on (not a
    test double, not TLS already)."""
    return isinstance(sock, socket.socket) and not isinstance(sock, ssl.SSLSocket)


class TLSTransport:
    """TLS over a connected socket, server side.

    Made from a plain socket with :meth:`start` (STARTTLS: the socket is
    wrapped, the handshake not done), or from an ``ssl.SSLSocket`` made by
    ``SSLContext.wrap_socket(..., do_handshake_on_connect=False)`` with
    :meth:`adopt` (implicit TLS, RFC 8314).  Until :meth:`handshake` returns
    :data:`HANDSHAKE_DONE`, nothing else may be called.
    """

    tls = True

    def __init__(self, sock: ssl.SSLSocket, handshaking: bool) -> None:
        self.sock = sock
        self.handshaking = handshaking
        self.want = HANDSHAKE_READ if handshaking else None  # the client speaks first
        # A read that must wait until the socket takes a write, and a write
        # that must wait until the socket has input (TLS renegotiation and
        # key updates can ask for either).
        self.read_needs_write = False
        self.write_needs_read = False

    @classmethod
    def start(cls, sock: Any, context: ssl.SSLContext) -> "TLSTransport":
        """Wrap *sock* (STARTTLS); raises OSError/ValueError if it cannot be."""
        return cls(keep_peer(sock, context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)), True)

    @classmethod
    def adopt(cls, sock: ssl.SSLSocket) -> "TLSTransport":
        """An SSLSocket whose handshake may not have run yet."""
        return cls(sock, sock.version() is None)

    # -- the handshake -------------------------------------------------------------------
    def handshake(self) -> str:
        """Take the handshake one step further; raises OSError or ValueError
        when it fails (a client not speaking TLS, no common version)."""
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.want = HANDSHAKE_READ
        except ssl.SSLWantWriteError:
            self.want = HANDSHAKE_WRITE
        else:
            self.handshaking = False
            self.want = None
            return HANDSHAKE_DONE
        return self.want

    # -- interest -------------------------------------------------------------------------
    def readable(self, wanted: bool) -> bool:
        if self.handshaking:
            return self.want == HANDSHAKE_READ
        if self.write_needs_read:
            return True
        if self.read_needs_write:
            return False  # the socket may be readable, but TLS must write first
        return wanted

    def writable(self, wanted: bool) -> bool:
        if self.handshaking:
            return self.want == HANDSHAKE_WRITE
        if self.read_needs_write:
            return True
        if self.write_needs_read:
            return False  # the socket may be writable, but TLS must read first
        return wanted

    # -- bytes ------------------------------------------------------------------------------
    def recv(self, size: int) -> bytes:
        sock = self.sock
        chunks: List[bytes] = []
        total = 0
        # One SSL read returns at most one TLS record (16 KiB): read until
        # the buffer size or until TLS has nothing more.
        while total < size:
            try:
                data = sock.recv(size - total)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                self.read_needs_write = True
                break
            except ValueError as err:  # a closed or unusable SSL object
                raise OSError(str(err)) from None
            if not data:
                if chunks:
                    break  # deliver what came before the end; it is seen again next time
                return b""
            chunks.append(data)
            total += len(data)
        if not chunks:
            raise BlockingIOError(EAGAIN, "no application data yet")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def send(self, data: Any) -> int:
        try:
            return self.sock.send(data)
        except ssl.SSLWantWriteError:
            return 0
        except ssl.SSLWantReadError:
            self.write_needs_read = True
            return 0
        except ValueError as err:
            raise OSError(str(err)) from None

    def sendmsg(self, chunks: List[Any]) -> int:
        # One TLS record for the replies of one read, not one per reply.
        return self.send(b"".join(chunks))

    def pending(self) -> int:
        try:
            return self.sock.pending()
        except (OSError, ValueError):
            return 0

    def close_notify(self) -> None:
        """Send our close_notify (best effort, never waiting for the
        client's): clients tell a clean end from a truncation by it."""
        try:
            self.sock.unwrap()
        except (OSError, ValueError):
            pass


# -- a connection behind a proxy (PROXY protocol, see _proxy_io) ----------------------
class ProxiedSocket(socket.socket):
    """An accepted connection whose PROXY protocol header named the real
    client: ``getpeername()`` answers that client's address, so that the
    channel's ``peer`` (and anything else that asks the socket) is the
    client's, not the proxy's.  Everything else is the socket's own."""

    __slots__ = ("proxied_peer",)
    proxied_peer: Any

    @classmethod
    def adopt(cls, sock: socket.socket, peer: Any) -> "ProxiedSocket":
        """*sock*'s connection as a ProxiedSocket (*sock* is detached)."""
        proxied = cls(sock.family, sock.type, sock.proto, sock.detach())
        proxied.proxied_peer = peer
        return proxied

    def getpeername(self) -> Any:
        try:
            return self.proxied_peer
        except AttributeError:  # a dup() of one
            return super().getpeername()


def keep_peer(plain: Any, tls: ssl.SSLSocket) -> ssl.SSLSocket:
    """*tls*, the TLS socket made from *plain*, answering ``getpeername()``
    as *plain* did when that is a :class:`ProxiedSocket`."""
    if type(plain) is ProxiedSocket:
        peer = plain.getpeername()
        setattr(tls, "getpeername", lambda: peer)  # noqa: B010 (an instance attribute over the method)
    return tls


def peek(sock: Any, size: int) -> bytes:
    """Up to *size* bytes waiting on *sock*, left there (``MSG_PEEK``)."""
    data: bytes = sock.recv(size, socket.MSG_PEEK)
    return data


def take(sock: Any, size: int) -> None:
    """Consume *size* bytes that :func:`peek` has seen on *sock*."""
    while size > 0:
        data = sock.recv(size)
        if not data:
            raise ConnectionResetError("the connection closed")
        size -= len(data)
