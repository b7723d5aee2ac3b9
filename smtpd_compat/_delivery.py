"""Handing a received message to ``process_message()`` and answering it.

``SMTPChannel`` calls :func:`deliver` once a message is complete.  The
server's ``process_message()`` is called with the keyword arguments its
signature accepts (:func:`call_with_accepted_options`); what it returns is
the reply.  A ``concurrent.futures.Future`` is awaited without blocking the
loop (:func:`await_reply`): the session reads no input meanwhile, the idle
timer does not run, and ``reply_timeout`` bounds the wait.  An exception is
answered ``451`` and logged, so the client keeps the message and retries.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import io
import logging
import time
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

from . import _extensions, _logging, _received
from . import _replies as R

log = logging.getLogger("smtpd_compat")

_Future = concurrent.futures.Future

# (peer, mailfrom, rcpttos, size): what the log says of a message.
Envelope = Tuple[Any, str, List[str], int]


@functools.lru_cache(maxsize=256)
def _accepted_options(func: Callable[..., Any]) -> Optional[FrozenSet[str]]:
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


def call_with_accepted_options(func: Callable[..., Any], args: Tuple[Any, ...], options: Dict[str, Any]) -> Any:
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


def deliver(channel: Any, pieces: List[bytes], tracing: bool) -> None:
    """The message of *channel*'s session is complete (*pieces*: the raw
    bytes received): hand it to process_message and answer.  *tracing*:
    smtpd's debug output is on."""
    session = channel._session
    if session.features.spool_threshold is not None:
        deliver_spooled(channel, pieces, tracing)
        return
    if tracing:
        raw = b"".join(pieces)
        channel._session_trace("Data:", repr(raw.decode("utf-8", "surrogateescape") if channel._decode_data else raw))
    data = session.end_of_data(pieces)
    if data is None:
        return  # refused (too large, not UTF-8): answered
    if session.features.received_header:
        data = _received.prepend(channel, session, data, time.time())
    args = (channel.peer, session.mailfrom, session.rcpttos, data)
    # For the log line; taken now, as _set_post_data_state() resets them.
    envelope: Envelope = (channel.peer, session.mailfrom, session.rcpttos, len(data))
    _hand_over(channel, channel.smtp_server.process_message, args, envelope)


def _hand_over(channel: Any, func: Callable[..., Any], args: Tuple[Any, ...], envelope: Envelope,
               done: Optional[Callable[[], None]] = None) -> None:
    """Call *func* (process_message or process_message_stream) and answer
    with what it returns, now or when its Future is done.  *done* is called
    once it has returned or its Future is done (the spool's close)."""
    session = channel._session
    try:
        status = call_with_accepted_options(func, args, session.message_options())
    except NotImplementedError:
        # The server class did not implement process_message: a
        # programming error that must stay loud, as in smtpd.
        channel._set_post_data_state()
        session.replied(_failed(channel))
        if done is not None:
            done()
        raise
    except Exception:
        log.exception("process_message() failed for a message from %r", channel.peer)
        status = _failed(channel)
    channel._set_post_data_state()
    if isinstance(status, _Future):
        if done is not None:
            status.add_done_callback(lambda _: done())
        await_reply(channel, status, envelope)
        return
    if done is not None:
        done()
    session.replied(status)
    _logging.log_delivery(*envelope, status)


def deliver_spooled(channel: Any, pieces: List[bytes], tracing: bool) -> None:
    """deliver() for a server with ``spool_threshold`` (see _spool): the
    message is in the session's spool.  A server with a
    ``process_message_stream()`` method gets it as a binary file (a text
    file with decode_data), anyone else's ``process_message()`` the data it
    always got."""
    session = channel._session
    spool = session.end_of_spool(pieces)
    if spool is None:
        return  # refused, and answered: too large, not UTF-8, disk full
    follower, session.follower = session.follower, None
    if follower is None:
        deliver_spool(channel, spool, tracing)
        return
    # Relayed while it arrived (_cut_through): the reply is the relay's.
    if tracing:
        channel._session_trace("Data:", "<%d bytes, spooled, relayed as they came>" % spool.size)
    envelope: Envelope = (channel.peer, session.mailfrom, session.rcpttos, follower.size_with_header(spool))
    _hand_over(channel, _verdict, (follower.finish(spool),), envelope)  # (finish: a Future; closes the spool)


def _verdict(future: Any, **options: Any) -> Any:
    """The "process_message()" of a message relayed while it arrived: the
    Future of the relay's reply."""
    return future


_STREAMS: Dict[type, bool] = {}


def _streams(cls: type) -> bool:
    """Whether a server of class *cls* gets process_message_stream(): it
    has one, defined in the same class as its process_message or below it
    (a subclass overriding only process_message, say of PureProxy, gets
    process_message called).  Decided once per class."""
    known = _STREAMS.get(cls)
    if known is None:
        mro = cls.__mro__

        def defined_in(name: str) -> int:
            return next((depth for depth, klass in enumerate(mro) if name in vars(klass)), len(mro))

        known = _STREAMS[cls] = defined_in("process_message_stream") <= defined_in("process_message")
    return known


def deliver_spool(channel: Any, spool: Any, tracing: bool) -> None:
    """Hand the complete message in *spool* (a ``_spool.Spool``, the
    caller's no more: it is closed once the message is handed over) to the
    server and answer; the session has accepted the message (``AWAIT_REPLY``).
    What ``BDAT ... LAST`` can call with the spool its chunks went to."""
    session = channel._session
    decode = channel._decode_data
    if tracing:
        channel._session_trace("Data:", "<%d bytes, spooled>" % spool.size)
    header: Any = "" if decode else b""
    if session.features.received_header:
        header = _received.prepend(channel, session, header, time.time())
    head = header.encode("utf-8") if decode else header
    server = channel.smtp_server
    stream = getattr(server, "process_message_stream", None) if _streams(type(server)) else None
    envelope: Envelope = (channel.peer, session.mailfrom, session.rcpttos, len(head) + spool.size)
    if stream is None:
        try:
            data: Any = head + spool.getvalue()
        finally:
            spool.close()
        if decode:
            data = data.decode("utf-8")
        session.received_data = data
        _hand_over(channel, server.process_message, (channel.peer, session.mailfrom, session.rcpttos, data), envelope)
        return
    message: Any = spool.reader(head)
    if decode:
        message = io.TextIOWrapper(message, encoding="utf-8", newline="")
    _hand_over(channel, stream, (channel.peer, session.mailfrom, session.rcpttos, message), envelope, spool.close)


def await_reply(channel: Any, future: "concurrent.futures.Future[Any]", envelope: Optional[Envelope] = None) -> None:
    """process_message returned a Future: reply with its result once it is
    done, without blocking the loop.

    Input is not processed meanwhile (commands the client pipelined stay
    buffered), and the idle timeout does not run: the client is waiting for
    us.  The result is handed to the loop's thread through the reactor,
    whatever thread completes the future.
    """
    reactor = channel._reactor()
    if reactor is None:
        # No loop runs this channel (a test driving handle_read() by hand):
        # nothing else could run meanwhile, so wait here.
        _ready(channel, future, envelope)
        return
    channel._ac_pause("reply")
    guard = channel._guard
    timeout = guard.reply_timeout if guard is not None else None
    overdue = None if timeout is None else reactor.call_later(timeout, lambda: _overdue(channel, future, timeout, envelope))
    channel._reply_wait = (future, overdue)
    future.add_done_callback(lambda done: reactor.call_soon_threadsafe(lambda: _arrived(channel, done, envelope)))


def _arrived(channel: Any, future: "concurrent.futures.Future[Any]", envelope: Optional[Envelope]) -> None:
    wait = channel._reply_wait
    if wait is None or wait[0] is not future:
        # Answered 451 at reply_timeout; the client has sent it again or
        # given up.
        log.warning("process_message() for a message from %r finished after reply_timeout; result dropped",
                    getattr(channel, "peer", None))
        return
    channel._reply_wait = None
    if wait[1] is not None:
        wait[1].cancel()
    _ready(channel, future, envelope)


def _overdue(channel: Any, future: "concurrent.futures.Future[Any]", timeout: float, envelope: Optional[Envelope]) -> None:
    wait = channel._reply_wait
    if wait is None or wait[0] is not future:
        return
    channel._reply_wait = None
    future.cancel()  # a no-op if it is already running
    if channel._fileno is None:
        return  # the session ended meanwhile
    log.error("process_message() has not answered a message from %r in %gs (reply_timeout): replying 451",
              getattr(channel, "peer", None), timeout)
    _answer(channel, _failed(channel), envelope)


def _ready(channel: Any, future: "concurrent.futures.Future[Any]", envelope: Optional[Envelope]) -> None:
    if channel._fileno is None:
        # The session ended while the message was being processed; the
        # client got no reply, so it still holds the message.
        log.info("session from %r closed before its message was answered", channel.peer)
        return
    try:
        status = future.result()
    except Exception:
        log.exception("process_message() failed for a message from %r", channel.peer)
        status = _failed(channel)
    _answer(channel, status, envelope)


def _failed(channel: Any) -> str:
    """The reply to a message process_message() failed to take (451)."""
    return _extensions.own_reply(channel._session, R.PROCESSING_FAILED)


def _answer(channel: Any, status: Any, envelope: Optional[Envelope]) -> None:
    """Answer the awaited message with *status* and read input again."""
    channel._session.replied(status)
    if envelope is not None:
        _logging.log_delivery(*envelope, status)
    channel._ac_resume("reply")
    if channel._guard is not None:
        channel._guard.touch()


def cancel_wait(channel: Any) -> None:
    """The session is closing: its reply_timeout timer would keep it alive."""
    wait = channel._reply_wait
    if wait is not None and wait[1] is not None:
        wait[1].cancel()
