"""The mail catcher's release: a captured message sent on to a real
upstream server (``--release-to HOST:PORT``; docs/catcher-ops.md).

There is no SMTP client here: :meth:`Releaser.release` hands the stored
bytes to PureProxy's relay (``_relay.deliver``), so a release reaches its
upstream server exactly as PureProxy would, with the same options
(``relay_tls``, ``relay_tls_context``, ``relay_auth``, ``relay_timeout``)
and the same all-or-nothing answer.  The relay asks a server object for its
remote address and options; :class:`_Upstream` is that object for a
release, built from the catcher's own options and the ``--release-to``
address, so the catcher's ``remoteaddr`` is never looked at.

The message goes as it was received (the bytes the store keeps, line ends
made CRLF and dot-stuffed on the wire by the relay, nothing added), from the
envelope's original sender, to the original recipients or to those the
request names.  ``SMTPUTF8`` and ``REQUIRETLS`` the client asked for on
MAIL are asked of the upstream server as PureProxy asks them.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _options, _relay
from ._logging import format_address

__all__ = ["Releaser", "Releasing", "install", "parse_address", "recipients_of", "releaser_of"]

log = logging.getLogger("smtpd_compat")

# The server's attribute holding its Releaser.
ATTRIBUTE = "_catcher_release"


def parse_address(value: Union[str, Tuple[str, int], List[Any]]) -> Tuple[str, int]:
    """``"HOST:PORT"`` (``[::1]:25`` for IPv6) or ``(host, port)`` as
    ``(host, port)``; ValueError otherwise."""
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit():
            raise ValueError("release_to must be HOST:PORT (such as smtp.example.com:587 or [::1]:25), not %r" % value)
        value = (host, int(port))
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not isinstance(value[0], str) or not value[0] \
            or isinstance(value[1], bool) or not isinstance(value[1], int) or not 0 < value[1] <= 65535:
        raise ValueError("release_to must be HOST:PORT or (host, port) with a port from 1 to 65535, not %r" % (value,))
    return value[0], value[1]


class _Upstream:
    """What ``_relay`` reads of a server, for one release target: the
    catcher's options (TLS/AUTH towards the upstream server, timeouts) and
    the release address as the remote address."""

    def __init__(self, options: Any, address: Tuple[str, int], timeout: float) -> None:
        self.__dict__[_options.ATTRIBUTE] = options
        self._remoteaddr = address
        self.relay_timeout = timeout


class Releaser:
    """Sends captured messages to one upstream server."""

    def __init__(self, options: Any, address: Tuple[str, int], timeout: float = _relay.DEFAULT_TIMEOUT) -> None:
        self.address = address
        self._upstream = _Upstream(options, address, timeout)

    def release(self, raw: bytes, mailfrom: str, rcpttos: Sequence[str], mail_options: Sequence[str] = ()) -> Optional[str]:
        """Relay *raw* from *mailfrom* to *rcpttos*; None once the upstream
        server accepted it for every recipient, else the reply that says
        why not (the upstream server's own, or ``451`` when it could not be
        reached).  Blocks: call it from an HTTP thread, never the loop's."""
        recipients = list(rcpttos)
        needs = _relay.needs_of(mailfrom, recipients, [option.upper() for option in mail_options])
        with _relay.needing(needs):
            refused = _relay.deliver(self._upstream, mailfrom, recipients, raw)
        reply = _relay.reply_for(refused, recipients)
        if reply is None:
            log.info("released a message from <%s> to %s at %s", mailfrom, ", ".join(recipients), format_address(self.address))
        else:
            log.warning("release to %s refused: %s", format_address(self.address), reply.replace("\r\n", " / "))
        return reply


def install(server: Any, release_to: Any) -> Optional[Releaser]:
    """Give *server* its :class:`Releaser` for *release_to* (None: release
    is off); ValueError for a bad address."""
    if release_to is None:
        server.__dict__.pop(ATTRIBUTE, None)
        return None
    timeout = getattr(server, "relay_timeout", _relay.DEFAULT_TIMEOUT)
    releaser = Releaser(_options.of(server), parse_address(release_to), timeout)
    server.__dict__[ATTRIBUTE] = releaser
    return releaser


class Releasing:
    """Release as a mixin for the catcher's server class (before
    ``SMTPServer`` in its bases): the keyword option ``release_to``
    (``"HOST:PORT"`` or ``(host, port)``, checked before the socket is
    bound) and the attribute of the same name (``(host, port)`` or None).
    TLS and AUTH towards that server are the relay's options
    (``relay_tls``, ``relay_tls_context``, ``relay_auth``), which every
    ``SMTPServer`` takes."""

    release_to: Optional[Tuple[str, int]] = None

    def __init__(self, *args: Any, release_to: Any = None, **kwargs: Any) -> None:
        address = parse_address(release_to) if release_to is not None else None
        super().__init__(*args, **kwargs)
        self.release_to = address
        install(self, address)


def releaser_of(server: Any) -> Optional[Releaser]:
    """*server*'s Releaser, or None when release is off."""
    found: Optional[Releaser] = getattr(server, "__dict__", {}).get(ATTRIBUTE)
    return found


def recipients_of(body: Any, envelope: Dict[str, Any]) -> List[str]:
    """The recipients of a release request: the body's ``To`` (a non-empty
    list of addresses), or, without it, the envelope's; ValueError for a bad
    one."""
    if body is not None and (not isinstance(body, dict) or set(body) - {"To"}):
        raise ValueError("the body must be {\"To\": [address, ...]} (or empty for the original recipients)")
    given = None if body is None else body.get("To")
    if given is None:
        recipients = envelope.get("RcptTos") or []
        if not recipients:
            raise ValueError("the message has no recipients: give To")
        return [str(rcpt) for rcpt in recipients]
    if not isinstance(given, list) or not given or len(given) > 100:
        raise ValueError("To must be a list of 1 to 100 addresses")
    return [_checked(address) for address in given]


def _checked(address: Any) -> str:
    """*address* of a request's ``To``, stripped; ValueError when it is no
    mailbox as RCPT takes it (``local@domain``, no brackets, spaces or
    control characters: they could end the upstream command early)."""
    text = address.strip() if isinstance(address, str) else ""
    local, at, domain = text.rpartition("@")
    if not (at and local and domain) or any(ch <= " " or ch == "\x7f" or ch in "<>" for ch in text):
        raise ValueError("not an address: %r" % (address,))
    return text

