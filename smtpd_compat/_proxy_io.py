"""Serving behind a proxy that speaks the PROXY protocol (``proxy_protocol``).

With the option on, an accepted connection is not a session yet: a
:class:`HeaderReader` waits (on the server's loop, bounded by
``proxy_timeout``) for the header the proxy sends first, parsed by
``_proxy_protocol``.  Only then is the server's ``handle_accepted(conn,
addr)`` called, with the client's address as *addr* and, when the header
named one, a socket whose ``getpeername()`` answers it
(``_transport.ProxiedSocket``): so the channel's ``peer``, ``X-Peer``, the
logs and the ``Received:`` header show the client, and the greeting (or,
for SMTPS, the TLS handshake) comes after the header, as the protocol
requires.  The reader takes exactly the header's bytes off the socket
(it peeks first), so whatever the client sent after it is read by the
session as usual.

The rules (docs/proxy-protocol.md):

- a connection from outside ``proxy_trusted`` is closed at once, unread
  and unanswered: only a proxy may say who the client is;
- a header that is not valid, or not complete within ``proxy_timeout``
  seconds, closes the connection, unanswered;
- ``LOCAL`` (v2), ``UNKNOWN`` (v1) and addresses that are not IP ones
  (v2's ``UNIX``, ``UNSPEC``) leave the connection's own address as the peer.

Nothing here runs when the option is off: the server's ``handle_accepted``
is replaced on the instance only then (:func:`install`).
"""

from __future__ import annotations

import ipaddress
import logging
import numbers
from typing import Any, Iterable, Set, Tuple, Union

from . import _admission, _logging, _reactor, _transport, asyncore
from ._proxy_protocol import Header, ProxyProtocolError, parse, wanted

__all__ = ["HeaderReader", "check_options", "close_pending", "install", "trusted_networks"]

log = logging.getLogger("smtpd_compat")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

# The server's attribute holding its readers still waiting for a header.
_PENDING = "_compat_proxy_pending"


def trusted_networks(value: Any) -> Tuple[Network, ...]:
    """*value* (``proxy_trusted``: networks or addresses, as strings or
    ``ipaddress`` objects) as networks; ValueError/TypeError for a bad one."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError("proxy_trusted must be a list of networks such as ['10.0.0.0/8'], not %r" % (value,))
    networks = []
    for item in value:
        if not isinstance(item, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise TypeError("proxy_trusted: %r is not a network" % (item,))
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError as err:
            raise ValueError("proxy_trusted: %s" % err) from None
    return tuple(networks)


def check_options(options: Any) -> None:
    """Reject bad PROXY protocol options when the server is created."""
    if not isinstance(options.proxy_protocol, bool):
        raise TypeError("proxy_protocol must be True or False, not %r" % (options.proxy_protocol,))
    trusted_networks(options.proxy_trusted)
    timeout = options.proxy_timeout
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not float(timeout) > 0:
        raise ValueError("proxy_timeout must be a positive number of seconds, not %r" % (timeout,))


def install(server: Any, options: Any) -> None:
    """Make *server* (created with ``proxy_protocol``) read a header from
    each connection before its ``handle_accepted`` runs."""
    networks = trusted_networks(options.proxy_trusted)
    timeout = float(options.proxy_timeout)

    def handle_accepted(conn: Any, addr: Any) -> None:
        if not _is_trusted(addr, networks):
            log.warning("closing a connection from %s: not a trusted proxy (proxy_trusted)", _logging.format_address(addr))
            conn.close()
            return
        HeaderReader(server, conn, addr, timeout)

    server.__dict__["handle_accepted"] = handle_accepted


def _is_trusted(addr: Any, networks: Tuple[Network, ...]) -> bool:
    host = addr[0] if isinstance(addr, tuple) and addr else None
    if not isinstance(host, str):
        return False  # not an IP connection
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's IPv4 peer
    return any(ip in network for network in networks)


def close_pending(server: Any) -> None:
    """Close the connections of *server* still waiting for their header
    (the server is closing: they never became sessions)."""
    for reader in list(getattr(server, "__dict__", {}).get(_PENDING, ())):
        reader.close()


def _pending(server: Any) -> Set["HeaderReader"]:
    found: Set[HeaderReader] = server.__dict__.setdefault(_PENDING, set())
    return found


class HeaderReader(asyncore.dispatcher):
    """One accepted connection until its PROXY header is read."""

    def __init__(self, server: Any, conn: Any, addr: Any, timeout: float) -> None:
        self.server = server
        self.conn = conn
        self.buffer = b""
        asyncore.dispatcher.__init__(self, conn, server._map)
        self.addr = addr
        _pending(server).add(self)
        reactor = _reactor.reactor_for(self._map)
        assert reactor is not None  # created when asked
        self.timer: Any = reactor.call_later(timeout, self._expired)

    def writable(self) -> bool:
        return False

    def handle_read(self) -> None:
        sock = self.conn
        try:
            data = _transport.peek(sock, wanted(self.buffer))
            if not data:
                self._refuse("the proxy closed the connection before its header was complete")
                return
            header = parse(self.buffer + data)
            if header is None:
                _transport.take(sock, len(data))  # all of it is header
                self.buffer += data
                return
            _transport.take(sock, header.length - len(self.buffer))
        except BlockingIOError:
            return
        except ProxyProtocolError as err:
            self._refuse("invalid PROXY protocol header: %s" % err)
            return
        except OSError as err:
            self._refuse("reading its PROXY protocol header failed: %s" % err)
            return
        self._accept(header)

    def _accept(self, header: Header) -> None:
        """Hand the connection to the server, as if just accepted from the client."""
        self._forget()
        self.del_channel()
        self.socket = None  # it stays open: the session takes it
        server = self.server
        conn, addr = self.conn, self.addr
        if header.command == "PROXY" and header.source is not None:
            host, port = header.source
            addr = (host, port) if ":" not in host else (host, port, 0, 0)
            conn = _transport.ProxiedSocket.adopt(conn, addr)
        log.debug("PROXY protocol v%d header from %s: client %s", header.version,
                  _logging.format_address(self.addr), _logging.format_address(addr))
        gate = _admission.gate_of(server)  # per-address limits, accept_connection(): by the client's address
        if gate is not None:
            gate(conn, addr)
        else:
            type(server).handle_accepted(server, conn, addr)

    def _expired(self) -> None:
        self.timer = None
        if self._fileno is not None:
            self._refuse("no complete PROXY protocol header within proxy_timeout")

    def _refuse(self, why: str) -> None:
        log.warning("closing a connection from %s: %s", _logging.format_address(self.addr), why)
        self.close()

    def _forget(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        _pending(self.server).discard(self)

    def handle_close(self) -> None:
        self.close()

    def close(self) -> None:
        self._forget()
        asyncore.dispatcher.close(self)
