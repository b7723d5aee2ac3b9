"""SMTP AUTH (RFC 4954): SASL mechanisms as a registry of classes, and the
rules of the AUTH command over a session; no I/O.

A mechanism is a small class: it is created for one ``AUTH`` command with
the optional initial response, :meth:`Mechanism.start` gives the first
step, :meth:`Mechanism.respond` takes each line the client sends back.  A
step is either a challenge (``str``: the session answers ``334 <challenge>``
and waits for the next line) or the :class:`Credentials` the client
presented, which the server's authenticator then checks.  A cancelled
exchange or a response that is not valid base64 raises
:class:`~smtpd_compat._grammar.ReplyError` carrying the ``501`` reply.

Adding a mechanism touches this module only: subclass :class:`Mechanism`,
decorate it with :func:`register`, and give its :class:`Credentials` a way
to be checked against a stored secret (:meth:`Credentials.check`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, Type, Union

from . import _replies as R
from ._grammar import ReplyError
from ._state import Credentials, Event, State

log = logging.getLogger("smtpd_compat")

__all__ = [
    "CANCEL",
    "MECHANISMS",
    "Credentials",
    "Login",
    "Mechanism",
    "Plain",
    "Step",
    "decode_base64",
    "mechanism_for",
    "parse_plain",
    "register",
]

# RFC 4954 section 4: "*" alone cancels the exchange.
CANCEL = "*"
# RFC 4954 section 4: "=" alone is an empty initial response (an empty
# argument would be no initial response at all).
EMPTY_INITIAL_RESPONSE = "="


Step = Union[str, Credentials]

# Canonical base64: whole quanta, padding only at the end.  Checked before
# decoding because binascii's leniency differs between Python versions
# (3.9 and 3.10 decode a lone "=" as empty).
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def decode_base64(text: str) -> bytes:
    """Decode one SASL response line; ``501`` if it is not strict base64."""
    if not _BASE64.fullmatch(text):
        raise ReplyError(R.AUTH_BAD_BASE64)
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ReplyError(R.AUTH_BAD_BASE64) from None


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReplyError(R.AUTH_BAD_MESSAGE) from None


def parse_plain(message: bytes) -> Credentials:
    """Split a PLAIN message ``authzid NUL authcid NUL passwd`` (RFC 4616)."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        raise ReplyError(R.AUTH_BAD_MESSAGE)
    authzid, login, password = (_text(part) for part in parts)
    return Credentials("PLAIN", login, password, authzid)


class Mechanism:
    """The server side of one exchange of a SASL mechanism.

    Subclasses set :attr:`name` and implement :meth:`first` (the step for
    the initial response, or the first challenge when there is none) and
    :meth:`step` (the step for one decoded response).  Either returns a
    challenge ``str`` (sent base64-encoded by :meth:`challenge`) or the
    :class:`Credentials`.
    """

    name: ClassVar[str] = ""

    def __init__(self, initial_response: Optional[str] = None) -> None:
        self._initial = initial_response
        self.done = False

    def start(self) -> Step:
        """The first step: a challenge, or the credentials when the initial
        response already holds all of them."""
        initial = self._initial
        if initial is None:
            return self.first(None)
        if initial == EMPTY_INITIAL_RESPONSE:
            initial = ""
        return self._consume(initial, self.first)

    def respond(self, line: str) -> Step:
        """Take the client's answer (one line, as received) to the last challenge."""
        if self.done:
            raise RuntimeError("the exchange is over")
        if line == CANCEL:
            self.done = True
            raise ReplyError(R.AUTH_CANCELLED)
        return self._consume(line, self.step)

    def _consume(self, text: str, handler: Callable[[bytes], Step]) -> Step:
        try:
            result = handler(decode_base64(text))
        except ReplyError:
            self.done = True
            raise
        if isinstance(result, Credentials):
            self.done = True
        return result

    # -- for subclasses -----------------------------------------------------------------
    def first(self, data: Optional[bytes]) -> Step:
        raise NotImplementedError

    def step(self, data: bytes) -> Step:
        raise NotImplementedError

    @staticmethod
    def challenge(text: bytes) -> str:
        """A challenge as sent after ``334 ``: base64 of *text*."""
        return base64.b64encode(text).decode("ascii")


MECHANISMS: Dict[str, Type[Mechanism]] = {}


def register(cls: Type[Mechanism]) -> Type[Mechanism]:
    """Class decorator: make *cls* available under its ``name``."""
    MECHANISMS[cls.name] = cls
    return cls


def mechanism_for(name: str, initial_response: Optional[str] = None) -> Mechanism:
    """A new exchange of the mechanism *name*; ``504`` if there is none."""
    cls = MECHANISMS.get(name.upper())
    if cls is None:
        raise ReplyError(R.AUTH_UNKNOWN_MECHANISM)
    return cls(initial_response)


@register
class Plain(Mechanism):
    """PLAIN (RFC 4616): one message, ``authzid NUL login NUL password``."""

    name = "PLAIN"

    def first(self, data: Optional[bytes]) -> Step:
        if data is None:
            return ""  # an empty challenge: "send the message"
        return parse_plain(data)

    def step(self, data: bytes) -> Step:
        return parse_plain(data)


@register
class Login(Mechanism):
    """LOGIN (draft-murchison-sasl-login): the user name, then the password,
    each asked for with the prompts every client expects."""

    name = "LOGIN"
    USERNAME = Mechanism.challenge(b"Username:")
    PASSWORD = Mechanism.challenge(b"Password:")

    def __init__(self, initial_response: Optional[str] = None) -> None:
        super().__init__(initial_response)
        self._login: Optional[str] = None

    def first(self, data: Optional[bytes]) -> Step:
        if data is None:
            return self.USERNAME
        return self.step(data)

    def step(self, data: bytes) -> Step:
        if self._login is None:
            self._login = _text(data)
            return self.PASSWORD
        return Credentials("LOGIN", self._login, _text(data))


# The mechanisms offered unless the server's auth_mechanisms option says
# otherwise, in the order EHLO announces them.
DEFAULT_MECHANISMS: Tuple[str, ...] = ("PLAIN", "LOGIN")


# -- the AUTH command of a session ------------------------------------------------------
# The rules of RFC 4954 over a session (``_session.Session``): its state stays
# in the session (``auth_login``, ``auth_failures``, ``sasl``: the exchange
# waiting for the client's next line, ``state``: AUTH while it does); what is
# decided goes out through the session's host.


def command(session: Any, arg: Optional[str]) -> None:
    """``AUTH mechanism [initial-response]``."""
    host = session.host
    features = session.features
    if not features.auth:
        # Not configured: the reply smtpd gave to any unknown command.
        host.push(R.UNKNOWN_COMMAND % "AUTH")
        return
    if not session.extended_smtp:
        host.push(R.NEED_EHLO)
        return
    if session.auth_login is not None:
        host.push(R.AUTH_ALREADY)
        return
    if session.mailfrom:
        host.push(R.AUTH_IN_TRANSACTION)
        return
    words = arg.split() if arg else []
    if not 1 <= len(words) <= 2:
        host.push(R.SYNTAX_AUTH)
        return
    mechanism = words[0].upper()
    if mechanism not in features.auth_mechanisms:
        host.push(R.AUTH_UNKNOWN_MECHANISM)
        return
    if not session.tls_active and features.auth_require_tls:
        host.push(R.AUTH_ENCRYPTION_REQUIRED)
        return
    throttle = features.auth_throttle  # auth_failures_per_ip (_admission)
    if throttle is not None and throttle.auth_blocked(getattr(host, "peer", None)):
        host.push(R.AUTH_THROTTLED)
        return
    try:
        exchange = mechanism_for(mechanism, words[1] if len(words) == 2 else None)
    except ReplyError as err:
        host.push(err.reply)
        return
    _step(session, exchange, exchange.start)


def response(session: Any, line: bytes, size: int) -> None:
    """A line answering the challenge of the exchange under way."""
    exchange = session.sasl
    assert exchange is not None
    if size > session.max_command_size_limit:
        _over(session)
        session.host.push(R.LINE_TOO_LONG)
        return
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        _over(session)
        session.host.push(R.AUTH_BAD_BASE64)
        return
    _step(session, exchange, lambda: exchange.respond(text))


def _over(session: Any) -> None:
    session.sasl = None
    if session.state in (State.AUTH, State.COMMAND):
        session._move(Event.AUTH_DONE)


def _step(session: Any, exchange: Mechanism, step: Callable[[], Step]) -> None:
    try:
        result = step()
    except ReplyError as err:
        _over(session)
        session.host.push(err.reply)
        return
    if isinstance(result, Credentials):
        session.sasl = None
        # Acting as another identity (PLAIN's authzid) is not supported.
        if result.authzid and result.authzid != result.login:
            verdict(session, result, False)
        else:
            session.host._session_check(result)
        return
    session.sasl = exchange
    session._move(Event.AUTH)
    session.host.push(R.AUTH_CHALLENGE % result)


def verdict(session: Any, credentials: Credentials, ok: bool) -> None:
    """The authenticator's decision on *credentials*."""
    if session.state in (State.AUTH, State.COMMAND):
        session._move(Event.AUTH_DONE)
    host = session.host
    if ok:
        session.auth_login = credentials.login
        log.info("%r authenticated as %r (%s)", getattr(host, "peer", None), credentials.login, credentials.mechanism)
        host.push(R.AUTH_OK)
        return
    session.auth_failures += 1
    if session.features.auth_throttle is not None:
        session.features.auth_throttle.auth_failed(getattr(host, "peer", None))
    log.info("authentication failed for login %r from %r", credentials.login, getattr(host, "peer", None))
    limit = session.features.max_auth_failures
    if limit and session.auth_failures >= limit:
        host.push(R.TOO_MANY_AUTH_FAILURES % host.fqdn)
        host.close_when_done()
        session._move(Event.CLOSE)
        return
    host.push(R.AUTH_FAILED)


def failed_to_check(session: Any) -> None:
    """The authenticator raised: a temporary failure (454)."""
    if session.state in (State.AUTH, State.COMMAND):
        session._move(Event.AUTH_DONE)
    session.host.push(R.AUTH_TEMP_FAILURE)
