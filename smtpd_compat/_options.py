"""Every keyword option of ``SMTPServer``: its name, type and default, in one
place, and the one object that holds a server's values.

``SMTPServer(..., **options)`` keeps what it is given in an :class:`Options`
(``server._compat_options``); the code that uses the values reads them there
through :func:`of`.  The standard library's ``SMTPServer`` had none of these
names, so a subclass written for it may use any of them (``self.max_connections
= ...``, a method called ``authenticator``...) for its own purposes: that must
neither change how the server behaves nor fail.  Each option is also readable
as an attribute of the same name on the server (``_views.option_view``, a
non-data descriptor), which a subclass attribute or an instance assignment
simply replaces.  Options are given when the server is created; assigning the
attribute later rebinds the name on that object only.

:class:`ServerOptions` says the same names and types to a type checker, for
``SMTPServer(**options)`` (a test keeps the two in step).  The value checks
live with the features (``_limits.check_options``, ``_tls.check_options``,
``_extensions.check_options``).
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, TypedDict, Union, cast

from ._sasl import DEFAULT_MECHANISMS

__all__ = [
    "EXTENSIONS", "LIMITS", "LOCAL", "Options", "PROXY", "SERVING", "SPOOL", "ServerOptions", "TLS", "TRACE", "defaults", "names", "of",
    "ADMISSION",
]

# The attribute of the server that holds its Options.
ATTRIBUTE = "_compat_options"


@dataclasses.dataclass
class Options:
    """One server's option values (see docs/hardening.md and docs/security.md)."""

    # -- limits (_limits, _guard) --------------------------------------------------------
    # RFC 5321 4.5.3.2.7: "at least 5 minutes" awaiting the next command.
    command_timeout: Optional[float] = 300.0
    # RFC 5321 4.5.3.2.5: 3 minutes between data blocks.
    data_timeout: Optional[float] = 180.0
    max_connections: Optional[int] = None
    # Postfix's smtpd_hard_error_limit default: no real client comes near
    # 20 rejected commands, while a client speaking another protocol to the
    # port (an HTTP request from a browser, a scanner) is cut off quickly.
    max_errors: Optional[int] = 20
    # Postfix's smtpd_recipient_limit.  RFC 5321 4.5.3.1.8 requires at
    # least 100; without a limit a session could grow by some 70 bytes per
    # RCPT for as long as it likes (70 MB for a million).
    max_recipients: Optional[int] = 1000
    # Replies are tens of bytes: 128 KiB is thousands of pipelined replies
    # that the client has not read, on top of the kernel's socket buffers.
    max_output: Optional[int] = 131072
    # RFC 5321 4.5.3.2.6: a client waits 10 minutes for the reply to the end
    # of its message; a process_message() Future still pending then is
    # answered 451, so that one that never completes does not hold the
    # session (and a max_connections slot) for ever.
    reply_timeout: Optional[float] = 600.0

    # -- TLS and AUTH (_tls) ---------------------------------------------------------------
    # An ssl.SSLContext (server side): offer STARTTLS with it.
    tls_context: Optional[ssl.SSLContext] = None
    # Refuse MAIL with 530 until the session has switched to TLS.
    require_starttls: bool = False
    # An ssl.SSLContext: every accepted connection speaks TLS from its first
    # byte (SMTPS, RFC 8314); the greeting follows the handshake.
    implicit_tls_context: Optional[ssl.SSLContext] = None
    # Seconds a client may take to complete a TLS handshake (None: no bound).
    tls_handshake_timeout: Optional[float] = 30.0
    # callable(server, channel, mechanism, login, password) -> bool; AUTH is
    # offered when this is set or the server class overrides authenticate().
    authenticator: Optional[Callable[..., Any]] = None
    # Offer and accept AUTH only over TLS (passwords are sent in clear).
    auth_require_tls: bool = True
    # Refuse MAIL with 530 until the client has authenticated.
    auth_required: bool = False
    # SASL mechanisms offered, in EHLO order.
    auth_mechanisms: Tuple[str, ...] = DEFAULT_MECHANISMS
    # Wrong passwords allowed per session; the next is answered 421 and the
    # connection closed (None or 0: no limit).
    max_auth_failures: Optional[int] = 3
    # PureProxy's connection to its upstream server (see _relay): None, or
    # "starttls" / "smtps" to relay over TLS ...
    relay_tls: Optional[str] = None
    # ... verified with this client ssl.SSLContext (None: the system's CAs
    # and the upstream host name, ssl.create_default_context()) ...
    relay_tls_context: Optional[ssl.SSLContext] = None
    # ... and (login, password) to authenticate with there, over TLS only.
    relay_auth: Optional[Tuple[str, str]] = None

    # -- serving (_serving) ----------------------------------------------------------------
    # Seconds a graceful shutdown waits for messages being received (DATA)
    # to complete before those sessions are cut off with a 421.
    shutdown_timeout: Optional[float] = 30.0

    # -- ESMTP extensions (_extensions; docs/extensions.md) ----------------------------
    # Announce PIPELINING (RFC 2920) in the EHLO reply.  Pipelined commands
    # are answered in order whether or not it is announced.
    pipelining: bool = False
    # Announce ENHANCEDSTATUSCODES (RFC 2034) and give each of the server's
    # own replies its RFC 3463 code ("250 2.1.0 OK").
    enhanced_status_codes: bool = False
    # Announce REQUIRETLS (RFC 8689) over TLS and accept MAIL's REQUIRETLS
    # parameter there; needs tls_context or implicit_tls_context.
    requiretls: bool = False

    # -- trace fields (_received; docs/extensions.md) ----------------------------------
    # Put a Received: header (RFC 5321 4.4) in front of each message handed
    # to process_message().
    add_received_header: bool = False

    # -- PROXY protocol (_proxy_io; docs/proxy-protocol.md) ----------------------------
    # Each connection starts with a PROXY protocol header (HAProxy's v1 or
    # v2) naming the real client, which becomes the session's peer.
    proxy_protocol: bool = False
    # The networks the proxies connect from; a connection from anywhere
    # else is closed unanswered (with proxy_protocol only).
    proxy_trusted: Sequence[Union[str, IPv4Network, IPv6Network]] = ("127.0.0.0/8", "::1/128")
    # Seconds a proxy may take to send the whole header.
    proxy_timeout: float = 5.0
    # -- CHUNKING (_chunking; docs/extensions.md) --------------------------------------
    # Announce CHUNKING and BINARYMIME (RFC 3030) and take BDAT; MAIL's
    # BODY=BINARYMIME is accepted (for a message sent with BDAT only).
    chunking: bool = False
    # -- DSN (_dsn; docs/extensions.md) ---------------------------------------------------
    # Announce DSN (RFC 3461) and accept MAIL's RET and ENVID, RCPT's NOTIFY
    # and ORCPT; process_message() gets them as its dsn argument.
    dsn: bool = False

    # -- LMTP and Unix sockets (_lmtp, _unix; docs/lmtp.md) ----------------------------
    # Speak LMTP (RFC 2033) instead of SMTP: LHLO, one reply per recipient
    # after the message; PIPELINING and ENHANCEDSTATUSCODES always on.
    lmtp: bool = False
    # Listen on this Unix socket path instead of localaddr (kept as a str).
    unix_socket: Union[str, os.PathLike[str], None] = None
    # The Unix socket's permissions (only its owner may connect by default).
    unix_mode: int = 0o600
    # -- big messages (_spool; docs/big-messages.md) -----------------------------------
    # Keep at most this many bytes of a message in memory, the rest in a
    # temporary file (None: all in memory, as smtpd).
    spool_threshold: Optional[int] = None
    # Where those temporary files go (None: tempfile.gettempdir()).
    spool_dir: Optional[str] = None
    # -- admission control (_admission; docs/admission.md) --------------------------
    # Sessions open at once from one client address (in all workers);
    # one more is answered 421 4.7.0 before the greeting and closed.
    max_connections_per_ip: Optional[int] = None
    # "N/SECONDS": a token bucket per client address, N connections at once,
    # refilled at N per SECONDS; beyond it, 421 4.7.0.
    connection_rate_per_ip: Optional[str] = None
    # "K/SECONDS": failed AUTH exchanges per client address, across sessions
    # and workers; with none left, AUTH is answered 454 4.7.0.
    auth_failures_per_ip: Optional[str] = None


class ServerOptions(TypedDict, total=False):
    """The keyword options of ``SMTPServer``, for a type checker
    (``**options: Unpack[ServerOptions]``): the fields of :class:`Options`."""

    command_timeout: Optional[float]
    data_timeout: Optional[float]
    max_connections: Optional[int]
    max_errors: Optional[int]
    max_recipients: Optional[int]
    max_output: Optional[int]
    reply_timeout: Optional[float]
    tls_context: Optional[ssl.SSLContext]
    require_starttls: bool
    implicit_tls_context: Optional[ssl.SSLContext]
    tls_handshake_timeout: Optional[float]
    authenticator: Optional[Callable[..., Any]]
    auth_require_tls: bool
    auth_required: bool
    auth_mechanisms: Tuple[str, ...]
    max_auth_failures: Optional[int]
    relay_tls: Optional[str]
    relay_tls_context: Optional[ssl.SSLContext]
    relay_auth: Optional[Tuple[str, str]]
    shutdown_timeout: Optional[float]
    pipelining: bool
    enhanced_status_codes: bool
    requiretls: bool
    add_received_header: bool
    proxy_protocol: bool
    proxy_trusted: Sequence[Union[str, IPv4Network, IPv6Network]]
    proxy_timeout: float
    chunking: bool
    dsn: bool
    lmtp: bool
    unix_socket: Union[str, os.PathLike[str], None]
    unix_mode: int
    spool_threshold: Optional[int]
    spool_dir: Optional[str]
    max_connections_per_ip: Optional[int]
    connection_rate_per_ip: Optional[str]
    auth_failures_per_ip: Optional[str]


# The options of each feature, by name (their defaults are Options').
LIMITS = ("command_timeout", "data_timeout", "max_connections", "max_errors", "max_recipients", "max_output", "reply_timeout")
TLS = (
    "tls_context", "require_starttls", "implicit_tls_context", "tls_handshake_timeout", "authenticator", "auth_require_tls",
    "auth_required", "auth_mechanisms", "max_auth_failures", "relay_tls", "relay_tls_context", "relay_auth",
)
SERVING = ("shutdown_timeout",)
EXTENSIONS: Tuple[str, ...] = ("pipelining", "enhanced_status_codes", "requiretls", "dsn")
TRACE = ("add_received_header",)
PROXY = ("proxy_protocol", "proxy_trusted", "proxy_timeout")
EXTENSIONS += ("chunking",)  # RFC 3030 (_chunking)
LOCAL = ("lmtp", "unix_socket", "unix_mode")
SPOOL = ("spool_threshold", "spool_dir")
ADMISSION = ("max_connections_per_ip", "connection_rate_per_ip", "auth_failures_per_ip")

_DEFAULTS = Options()


def names() -> Iterator[str]:
    """Every option name, in declaration order."""
    return (field.name for field in dataclasses.fields(Options))


def defaults(group: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """The default of every option of *group* (of every option when empty)."""
    return {name: getattr(_DEFAULTS, name) for name in (group or tuple(names()))}


def make(given: Dict[str, Any]) -> Options:
    """The Options for *given* keyword arguments; TypeError for a name that
    is not an option."""
    unknown = sorted(set(given) - set(names()))
    if unknown:
        raise TypeError("unexpected keyword argument(s): %s" % ", ".join(unknown))
    return Options(**given)


def of(server: Any) -> Options:
    """The options of *server*; the defaults for an object that has none (a
    stand-in server in a test, or a server whose ``__init__`` has not run)."""
    try:
        return cast(Options, server.__dict__[ATTRIBUTE])
    except (KeyError, AttributeError):
        return _DEFAULTS
