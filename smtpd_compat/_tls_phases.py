"""TLS as the event loop sees it: starting it, the handshake, and the steps
a TLS channel takes before a read or a write.

``_transport.TLSTransport`` holds the TLS state of one connection and moves
its bytes; this module drives it from an ``async_chat``'s events: it tells
the channel when to watch which direction (``_interest_changed()``), when the
handshake is done (``_ac_tls_ready()``), and when the connection is over
(``handle_close()``).  A failed handshake or TLS session is the client's
doing, so it is logged at INFO without a traceback.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from ._transport import HANDSHAKE_DONE, TLSTransport

__all__ = ["before_read", "before_write", "failed", "handshake", "recv", "send", "start", "wrap"]

log = logging.getLogger("smtpd_compat")

# The reason in async_chat._ac_paused while STARTTLS's reply waits to be sent
# (start() to wrap()): no input is read then.
PAUSED = "starttls"


def start(chat: Any, context: ssl.SSLContext) -> None:
    """STARTTLS: switch *chat* to TLS once what is queued (the reply to
    STARTTLS) is sent (see :func:`wrap`).

    Input is not read meanwhile: the next bytes are the client's handshake,
    and what it pipelined in clear must never be read as if it came over TLS.
    """
    chat._ac_transport.upgrade = context
    chat._ac_input_closed = True
    chat._ac_paused.add(PAUSED)  # until wrap(): no read interest
    chat._interest_changed()
    chat._ac_tls_starting()


def wrap(chat: Any) -> None:
    """The reply to STARTTLS is out: wrap the socket; the handshake follows."""
    chat._ac_paused.discard(PAUSED)
    context, chat._ac_transport.upgrade = chat._ac_transport.upgrade, None
    try:
        transport = TLSTransport.start(chat.socket, context)
    except (OSError, ValueError) as err:
        log.warning("STARTTLS with %r failed: %s", getattr(chat, "addr", None), err)
        chat.handle_close()
        return
    chat._ac_transport = transport
    chat.socket = transport.sock  # same descriptor: the map entry stays valid
    chat._ac_framer.clear()
    chat._interest_changed()


def before_read(chat: Any, transport: TLSTransport) -> bool:
    """The TLS steps of a read event; True when the channel may read."""
    if transport.handshaking:
        handshake(chat, transport)
        return False
    if transport.write_needs_read:
        # The socket had input that a pending write waited for.
        transport.write_needs_read = False
        chat._interest_changed()
        chat.initiate_send()
        if chat._fileno is None:
            return False
    return not chat._ac_paused


def before_write(chat: Any, transport: TLSTransport) -> bool:
    """The TLS steps of a write event; True when the channel may write."""
    if transport.handshaking:
        handshake(chat, transport)
        return False
    if transport.read_needs_write:
        # The socket took the write that a pending read waited for.
        transport.read_needs_write = False
        chat._interest_changed()
        chat.handle_read()
        if chat._fileno is None:
            return False
    return True


def handshake(chat: Any, transport: TLSTransport) -> None:
    """Take the handshake one step; once done, send what waited for it."""
    try:
        state = transport.handshake()
    except (OSError, ValueError) as err:
        # A client that is not speaking TLS, or disagrees on versions or
        # ciphers, or went away; not the server's error.
        log.info("TLS handshake with %r failed: %s", getattr(chat, "addr", None), err)
        chat.handle_close()
        return
    chat._interest_changed()
    if state == HANDSHAKE_DONE:
        chat._ac_tls_ready()
        chat._ac_input_closed = None in chat.producer_fifo
        chat._interest_changed()
        # What was queued meanwhile (the SMTPS greeting) goes out now.
        chat.initiate_send()
        # The client's first command may already sit in the TLS buffers.
        chat._ac_read_again()


def recv(chat: Any, transport: TLSTransport, size: int) -> bytes:
    """``async_chat.recv()`` over TLS, by asyncore's rules: ``b""`` and
    ``handle_close()`` at the end of the stream or when the connection
    failed; BlockingIOError when no application data came yet."""
    try:
        data = transport.recv(size)
    except BlockingIOError:
        raise
    except OSError as why:
        failed(chat, why)
        return b""
    if not data:
        chat.handle_close()
    elif transport.pending():
        chat._ac_read_again()  # more is decrypted than was asked for
    return data


def send(chat: Any, transport: TLSTransport, data: Any) -> int:
    """``async_chat.send()`` over TLS: 0 and ``handle_close()`` when the
    connection failed."""
    try:
        return transport.send(data)
    except OSError as why:
        failed(chat, why)
        return 0


def failed(chat: Any, why: OSError) -> None:
    """A TLS read or write failed: the client broke the TLS session or went
    away, not the server's error, so no traceback."""
    log.info("TLS connection with %r failed: %s", getattr(chat, "addr", None), why)
    chat.handle_close()
