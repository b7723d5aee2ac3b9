"""The server's TLS and AUTH settings: STARTTLS (RFC 3207), implicit TLS
(RFC 8314) and AUTH (RFC 4954), and PureProxy's secured upstream session.

Everything is opt-in through keyword-only ``SMTPServer`` options (the
``DEFAULTS`` table below); with none of them a session behaves, and its
EHLO reply reads, exactly as CPython's smtpd.

Where the pieces live: the TLS transport and its handshake are in
``_transport`` (driven by ``async_chat``); the STARTTLS and AUTH commands
and the SASL exchange are the session's (``_session``, ``_sasl``).  This
module holds what the server decides: :func:`check_options`,
:func:`auth_enabled`, :func:`wrap_accepted` (SMTPS), what
``SMTPServer.authenticate()`` does by default and when an override of it
counts, and :func:`check_credentials`, which asks it; and the client side of
PureProxy's upstream connection (:func:`relay_client`,
:func:`secure_relay_session`, used by ``_relay.connect``).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import smtplib
import ssl
from typing import Any, Dict, Optional

from . import _options, _transport
from ._auth import MECHANISMS, Credentials, PasswordFile, check_in_worker

log = logging.getLogger("smtpd_compat")

# The keyword options of SMTPServer that this module applies, with their
# defaults (all declared in _options.Options).
DEFAULTS: Dict[str, Any] = _options.defaults(_options.TLS)


RELAY_TLS_MODES = ("starttls", "smtps")




# -- server side ---------------------------------------------------------------------
def check_options(options: Any, server: Any) -> None:
    """Reject inconsistent TLS/AUTH *options* when *server* is created."""
    _check_tls(options)
    _check_auth(options, server)
    _check_relay(options)


def _check_tls(options: Any) -> None:
    for name in ("tls_context", "implicit_tls_context"):
        value = getattr(options, name)
        if value is not None and not isinstance(value, ssl.SSLContext):
            raise TypeError("%s must be an ssl.SSLContext, not %s" % (name, type(value).__name__))
    if options.require_starttls and options.tls_context is None and options.implicit_tls_context is None:
        raise ValueError("require_starttls needs tls_context (the certificate to offer STARTTLS with)")


def _check_auth(options: Any, server: Any) -> None:
    mechanisms = tuple(m.upper() for m in options.auth_mechanisms)
    unknown = [m for m in mechanisms if m not in MECHANISMS]
    if unknown:
        raise ValueError("unsupported auth_mechanisms %s (supported: %s)" % (", ".join(unknown), ", ".join(MECHANISMS)))
    options.auth_mechanisms = mechanisms
    if options.authenticator is not None and not callable(options.authenticator):
        raise TypeError("authenticator must be callable(server, channel, mechanism, login, password)")
    if not auth_enabled(server):
        if options.auth_required:
            raise ValueError("auth_required needs an authenticator (or an authenticate() override)")
        return
    if not mechanisms:
        raise ValueError("auth_mechanisms is empty: no way to authenticate")
    if options.auth_require_tls and options.tls_context is None and options.implicit_tls_context is None:
        raise ValueError(
            "AUTH is only offered over TLS: give tls_context or implicit_tls_context, "
            "or auth_require_tls=False to accept passwords in clear"
        )


def _check_relay(options: Any) -> None:
    if options.relay_tls not in (None,) + RELAY_TLS_MODES:
        raise ValueError("relay_tls must be None, 'starttls' or 'smtps', not %r" % (options.relay_tls,))
    if options.relay_tls_context is not None and not isinstance(options.relay_tls_context, ssl.SSLContext):
        raise TypeError("relay_tls_context must be an ssl.SSLContext")
    auth = options.relay_auth
    if auth is None:
        return
    if not (isinstance(auth, (tuple, list)) and len(auth) == 2 and all(isinstance(x, str) and x for x in auth)):
        raise TypeError("relay_auth must be a (login, password) pair of non-empty strings")
    if options.relay_tls is None:
        raise ValueError("relay_auth would send the password in clear: set relay_tls to 'starttls' or 'smtps'")


def auth_enabled(server: Any) -> bool:
    """Whether *server* offers AUTH: it has an ``authenticator``, or its
    class overrides ``SMTPServer.authenticate()`` (noted once per class)."""
    if _options.of(server).authenticator is not None:
        return True
    return "authenticate" in getattr(server, "_overridden_hooks", ())


def is_authenticate_override(method: Any) -> bool:
    """Whether *method*, a subclass's ``authenticate``, has this package's
    meaning: it takes ``(channel, mechanism, login, password)``.

    A server written for the standard library may have a method of that
    name for its own AUTH code, with another signature: it must not turn
    this package's AUTH on.
    """
    try:
        inspect.signature(method).bind(None, None, None, None, None)
    except TypeError:
        return False
    except ValueError:  # no signature to inspect (a builtin): assume ours
        return True
    return True


def authenticate_with_option(server: Any, channel: Any, mechanism: str, login: str, password: str) -> bool:
    """``SMTPServer.authenticate()``'s default: ask the ``authenticator`` option."""
    authenticator = _options.of(server).authenticator
    if authenticator is None:
        return False
    return bool(authenticator(server, channel, mechanism, login, password))


def wrap_accepted(server: Any, conn: Any) -> Optional[Any]:
    """The socket a new channel should use: *conn* itself, or for SMTPS an
    ``SSLSocket`` whose handshake the channel will drive.  None if it could
    not be wrapped (the connection is then closed)."""
    context = _options.of(server).implicit_tls_context
    if context is None:
        return conn
    try:
        conn.setblocking(False)
        tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return _transport.keep_peer(conn, tls)  # behind a PROXY header: the client's address
    except (OSError, ValueError) as err:
        log.warning("cannot start TLS on an accepted connection: %s", err)
        conn.close()
        return None


# -- PureProxy's upstream connection -----------------------------------------------------
def _relay_context(server: Any) -> ssl.SSLContext:
    context = _options.of(server).relay_tls_context
    return context if context is not None else ssl.create_default_context()


def relay_client(server: Any, **kwargs: Any) -> smtplib.SMTP:
    """An unconnected ``smtplib`` client for *server*'s upstream: ``SMTP_SSL``
    when ``relay_tls="smtps"``, ``SMTP`` otherwise (*kwargs* go to it)."""
    if _options.of(server).relay_tls == "smtps":
        conn: smtplib.SMTP = smtplib.SMTP_SSL(context=_relay_context(server), **kwargs)
    else:
        conn = smtplib.SMTP(**kwargs)
    # smtplib checks the certificate against (and sends as SNI) the host
    # given to its constructor, which would also connect; the relay connects
    # later, so name the host now.
    conn._host = server._remoteaddr[0]  # type: ignore[attr-defined]
    return conn


class RelaySecurityError(smtplib.SMTPException):
    """The upstream session could not be secured or authenticated as
    configured.  It carries no SMTP code on purpose: the relay answers its
    client with a temporary failure (the fix is on our side, the client
    should keep the message and retry)."""


def secure_relay_session(server: Any, conn: smtplib.SMTP) -> None:
    """After the upstream EHLO: STARTTLS (and EHLO again), then AUTH, as
    *server*'s ``relay_tls`` and ``relay_auth`` ask.  Raises
    RelaySecurityError (or OSError) when that is impossible; never sends a
    password over an unencrypted connection."""
    mode = _options.of(server).relay_tls
    if mode == "starttls":
        if not conn.has_extn("starttls"):
            raise RelaySecurityError("the upstream server does not offer STARTTLS")
        try:
            code, text = conn.starttls(context=_relay_context(server))
        except smtplib.SMTPResponseException as err:
            raise RelaySecurityError("upstream STARTTLS refused: %d %s" % (err.smtp_code, _reply_text(err.smtp_error))) from None
        conn.ehlo()
    auth = _options.of(server).relay_auth
    if auth is None:
        return
    if mode is None or not isinstance(conn.sock, ssl.SSLSocket):
        raise RelaySecurityError("refusing to send the upstream password without TLS")
    login, password = auth
    try:
        conn.login(login, password)
    except smtplib.SMTPNotSupportedError:
        raise RelaySecurityError("the upstream server does not offer AUTH") from None
    except smtplib.SMTPException as err:
        # The password is in neither the message nor the traceback.
        failed = getattr(err, "smtp_code", None)
        reply = _reply_text(getattr(err, "smtp_error", "")) if failed else str(err)
        raise RelaySecurityError("upstream AUTH as %r failed: %s %s" % (login, failed or "", reply)) from None


def _reply_text(text: Any) -> str:
    if isinstance(text, (bytes, bytearray)):
        return bytes(text).decode("ascii", "replace")
    return str(text)


# -- AUTH: deciding on the credentials a session received --------------------------------
def check_credentials(channel: Any, credentials: Credentials) -> None:
    """Ask *channel*'s server whether *credentials* are right and give the
    session the verdict (at once, or from a worker thread for hashed
    passwords, during which the session reads no input)."""
    session = channel._session
    server = channel.smtp_server
    passwords = _options.of(server).authenticator
    reactor = channel._reactor()
    overridden = "authenticate" in getattr(server, "_overridden_hooks", ())
    if isinstance(passwords, PasswordFile) and passwords.hashed and reactor is not None and not overridden:
        # What the default authenticate() does, in a worker thread
        # (check_in_worker); the session reads nothing meanwhile.
        future = check_in_worker(passwords, credentials.login, credentials.password)
        channel._ac_pause("auth")

        def checked(done: "concurrent.futures.Future[bool]") -> None:
            if channel._fileno is not None:
                try:
                    ok = done.result()
                except Exception:
                    _failed_to_check(channel, credentials.login)
                else:
                    session.auth_verdict(credentials, ok)
            channel._ac_resume("auth")  # after the verdict: pipelined input follows it

        future.add_done_callback(lambda done: reactor.call_soon_threadsafe(lambda: checked(done)))
        return
    try:
        if overridden:
            ok = server.authenticate(channel, credentials.mechanism, credentials.login, credentials.password)
        else:
            ok = authenticate_with_option(server, channel, credentials.mechanism, credentials.login, credentials.password)
    except Exception:
        _failed_to_check(channel, credentials.login)
        return
    session.auth_verdict(credentials, ok)


def _failed_to_check(channel: Any, login: str) -> None:
    # The traceback is logged; the password is not (it is neither in the
    # message nor in a Credentials repr).
    log.exception("authenticate() failed for login %r from %r", login, getattr(channel, "peer", None))
    channel._session.auth_failed_to_check()
