"""PureProxy's relay: an SMTP client that passes each message on.

``PureProxy.process_message`` hands each message to a worker thread
(:func:`executor`) which runs :func:`deliver` and turns what the upstream
server said into the reply to the client's end of data (:func:`reply_for`).
The loop thread never waits for the upstream server.

What arrives upstream is the client's message plus the ``X-Peer`` header,
with every line end a CRLF: the ``\\n`` that separate lines in
``process_message``'s *data* and any bare CR go out as CRLF (see
:func:`wire_data`), lines starting with ``.`` are dot-stuffed, and nothing
else is touched.  A message the client sent with BDAT (``Needs.chunked``)
is its octets instead, relayed with BDAT where the upstream server
announces CHUNKING, else in the DATA form a DATA client would have given
it; a BINARYMIME one goes with BDAT or not at all (see _chunked_mail).

The upstream ``MAIL`` carries ``SMTPUTF8`` and ``REQUIRETLS`` when the
message needs them (:class:`Needs`); an upstream session that cannot carry
them is sent nothing, and the client gets the RFC's refusal.  The DSN
parameters (RFC 3461) go on the upstream ``MAIL`` and each ``RCPT`` when
the upstream server announces ``DSN``, and are left out otherwise.

A message is relayed to all of its recipients or to none of them.  The
client's RCPT commands were answered ``250`` before the upstream server
was asked anything, and the one reply left, the one to the end of data,
speaks for every recipient: if the upstream server refuses some
recipients, the transaction is abandoned upstream (``RSET``) and the
client is answered with a reply naming each refused recipient and what the
upstream server said about it.  The code of that reply is permanent
(``5xx``) if one refusal is permanent (retrying can never succeed), and
temporary otherwise.  So ``250`` always means "accepted upstream for every
recipient", anything else "accepted for none": no recipient is dropped
silently, and a retry never duplicates a delivery.

:func:`connect` is the one place that opens the upstream session; TLS and
authentication towards the upstream server belong there.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import smtplib
import socket
import ssl
import threading
import time
from typing import Any, BinaryIO, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from . import _chunked_mail, _globals, _options, _spool, _tls
from . import _replies as R

log = logging.getLogger("smtpd_compat")

# Seconds allowed for each upstream operation (connect, each command, each
# block of the message, the final reply).  A client waits up to 10 minutes
# for the reply to its end of data (RFC 5321 4.5.3.2.6), so one slow step
# still leaves it time.
DEFAULT_TIMEOUT = 60.0
# Bytes of the message handed to the socket at once, each within
# relay_timeout: a slow but steady upstream link needs to carry one block
# per relay_timeout (about 1 KiB/s with the defaults), not the whole message
# (sendall() applies a socket's timeout to everything it sends).
_BLOCK = 65536
# Upstream conversations at once per server; more messages wait their turn.
DEFAULT_WORKERS = 8
# Longest upstream reply text quoted back to the client.
_MAX_TEXT = 200

Refusals = Dict[str, Tuple[int, Any]]


class Needs(NamedTuple):
    """What a message asks of the upstream session: SMTPUTF8 (RFC 6531:
    the client gave it on MAIL, or an address is not ASCII) and REQUIRETLS
    (RFC 8689: the client gave it on MAIL).  Either one the upstream server
    does not offer refuses the message; none is dropped on the way."""

    smtputf8: bool = False
    requiretls: bool = False
    # The message's DSN parameters (RFC 3461; a _dsn.DSN, given to
    # process_message() as dsn), relayed to an upstream server that
    # announces DSN and dropped for one that does not: DSN, unlike the
    # others, is no reason to refuse a message.
    dsn: Any = None
    # The message came by BDAT (RFC 3030; process_message()'s chunked): it
    # is CRLF-ended octets, relayed with BDAT where the upstream server
    # announces CHUNKING (see _chunked_mail); binarymime: MAIL had
    # BODY=BINARYMIME, so it is relayed with BDAT or refused.
    chunked: bool = False
    binarymime: bool = False


NO_NEEDS = Needs()
# The Needs of the message the current worker thread relays: set around
# PureProxy._deliver() (whose signature is smtpd's, so a subclass's
# override calling super()._deliver() passes them on unknowingly).
_current = threading.local()


def needs_of(mailfrom: str, rcpttos: Sequence[str], mail_options: Sequence[str], dsn: Any = None,
             chunked: bool = False) -> Needs:
    """The Needs of a message from its envelope, MAIL's parameters, its
    DSN parameters (process_message()'s dsn) and whether it came by BDAT
    (process_message()'s chunked)."""
    ascii_only = mailfrom.isascii() and all(rcpt.isascii() for rcpt in rcpttos)
    return Needs(smtputf8="SMTPUTF8" in mail_options or not ascii_only, requiretls="REQUIRETLS" in mail_options, dsn=dsn,
                 chunked=bool(chunked), binarymime=bool(chunked) and _chunked_mail.is_binary(mail_options))


@contextlib.contextmanager
def needing(needs: Needs) -> Iterator[None]:
    """Relay the messages of this block (in this thread) with *needs*."""
    _current.needs = needs
    try:
        yield
    finally:
        _current.needs = NO_NEEDS

_executor_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _executor_lock
    _executor_lock = threading.Lock()  # perhaps held by a parent's thread


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the worker threads --------------------------------------------------------
def executor(server: Any) -> concurrent.futures.ThreadPoolExecutor:
    """The thread pool that runs *server*'s upstream conversations, created
    on first use (a fresh one after :func:`shutdown_executor`)."""
    with _executor_lock:
        pool: Optional[concurrent.futures.ThreadPoolExecutor]
        pool, pid = server.__dict__.get("_relay_executor", (None, 0))
        if pool is None or pid != os.getpid():
            # None yet, or made before a fork(): its threads are the parent's.
            pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=getattr(server, "relay_workers", DEFAULT_WORKERS),
                thread_name_prefix="smtpd-relay",
            )
            server.__dict__["_relay_executor"] = (pool, os.getpid())
        return pool


def shutdown_executor(server: Any) -> None:
    """Let *server*'s workers end once their current message is relayed."""
    with _executor_lock:
        pool, pid = server.__dict__.pop("_relay_executor", (None, 0))
    if pool is not None and pid == os.getpid():
        # Conversations already running finish (their mail is relayed and
        # the client, if still there, answered); queued ones never started
        # and their clients, unanswered, keep their messages.
        pool.shutdown(wait=False)


# -- the message on the wire ---------------------------------------------------------
def wire_data(data: Union[bytes, str]) -> bytes:
    """The DATA payload for *data* as ``process_message`` receives it:
    CRLF line ends, dot-stuffed, ending with ``<CRLF>.<CRLF>``.

    Each ``\\n`` of *data* stands for a CRLF (or a bare LF) the client sent
    and goes out as CRLF.  A bare CR goes out as CRLF too, and a CR right
    before a line end merges with it, as ``smtplib.sendmail`` does for
    ``str`` messages (the only ones CPython's PureProxy could relay): RFC
    5321 2.3.8 forbids sending either alone, and upstream servers that take
    one for a line end would otherwise see the message end at
    ``<CR>.<CR>`` (SMTP smuggling).  With every line end
    a CRLF and every line starting with a dot stuffed, no sequence in the
    message can end it early at any upstream server.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    text = data
    if b"\r" in text:
        text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    text = text.replace(b"\n", b"\r\n")
    if text.startswith(b"."):
        text = b"." + text
    text = text.replace(b"\r\n.", b"\r\n..")
    return text + b"\r\n.\r\n"


class StreamPayload:
    """The DATA payload of a message relayed from a file (a spool's reader,
    see _spool): what :func:`wire_data` gives for the file's content with
    the ``X-Peer`` header added as ``_grammar.add_peer_header()`` adds it,
    made block by block, so the message is never in memory whole.

    ``len()`` and ``isascii()`` (for MAIL's ``SIZE=`` and ``BODY=``) read
    the file through once more; :meth:`blocks` gives the payload.
    """

    def __init__(self, file: BinaryIO, peer_host: str) -> None:
        self.file = file
        self.header = ("X-Peer: %s" % peer_host).encode("ascii", "backslashreplace")
        self._measured: Optional[Tuple[int, bool]] = None

    def blocks(self) -> Iterator[bytes]:
        return _spool.Stuffer().wire(self._text())

    def _measure(self) -> Tuple[int, bool]:
        if self._measured is None:
            ascii_only = [True]

            def text() -> Iterator[bytes]:
                for block in self._text():
                    ascii_only[0] = ascii_only[0] and block.isascii()
                    yield block

            size = _spool.Stuffer().size(text())
            self._measured = size, ascii_only[0]
        return self._measured

    def __len__(self) -> int:
        return self._measure()[0]

    def size_param(self) -> Optional[int]:
        """MAIL's ``SIZE=`` value (None: none given)."""
        return len(self)

    def deadline(self, default: Optional[float]) -> Optional[float]:
        """When the transfer must be over: *default*, counted from the
        start of the relay (see _cut_through for a message still arriving)."""
        return default

    def isascii(self) -> bool:
        return self._measure()[1]

    def _text(self) -> Iterator[bytes]:
        """The file's content with the header line in it (with_peer_header)."""
        self.file.seek(0)  # (when the first block is asked for: _measure() reads it too)
        yield from with_peer_header(_chunked_mail.blocks_of(self.file), self.header)


def with_peer_header(pieces: Iterator[bytes], header: bytes) -> Iterator[bytes]:
    """*pieces* of a message's text (LF line ends) with the ``X-Peer``
    *header* line put where ``_grammar.add_peer_header()`` puts it in the
    whole text: before the first empty line, else at the end.  Never reads
    past the piece at hand, so it serves a file read once (StreamPayload)
    and a spool still growing (_cut_through) alike."""
    line = header + b"\n"
    last: Optional[bytes] = None  # the text's last byte so far (None: no text yet)
    for piece in pieces:
        if not piece:
            continue
        if piece[:1] == b"\n" and last in (None, b"\n"):
            at = 0  # the text starts with an empty line, or one ends here
        else:
            at = piece.find(b"\n\n") + 1  # after the first of the two LFs
            if not at:
                last = piece[-1:]
                yield piece
                continue
        yield piece[:at]
        yield line
        yield piece[at:]
        yield from pieces
        return
    yield line if last in (None, b"\n") else b"\n" + header


class _DataFormPayload(StreamPayload):
    """The DATA payload of a spooled text message received with BDAT
    (a _chunked_mail.Octets): its data_form, block by block, as
    StreamPayload makes DATA's from a file."""

    def __init__(self, octets: _chunked_mail.Octets) -> None:
        super().__init__(octets.file, "")
        self.octets = octets

    def _text(self) -> Iterator[bytes]:
        return _chunked_mail.data_form_blocks(self.octets.blocks())


def _as_data(payload: Any) -> Any:
    """The DATA payload of a text message received with BDAT, relayed to
    an upstream server without CHUNKING: what a DATA client sending the
    same lines would have made it (see _chunked_mail)."""
    if isinstance(payload, _chunked_mail.Octets):
        return _DataFormPayload(payload)
    return wire_data(_chunked_mail.data_form(bytes(payload)))


def _path(address: str) -> str:
    return address if address == "<>" else "<%s>" % address


# -- the upstream session --------------------------------------------------------------
def _local_hostname() -> str:
    return _globals.fqdn()  # memoised; smtplib would ask DNS each time


def connect(server: Any) -> smtplib.SMTP:
    """Open the upstream session for *server*: connect to its remote address
    (``server._remoteaddr``), read the greeting and say EHLO (HELO if EHLO
    is refused).

    This is the one place that decides how the relay reaches its upstream
    server; STARTTLS, implicit TLS and AUTH towards it go here.  Raises
    ``OSError`` or ``smtplib.SMTPException`` (with ``smtp_code`` when the
    upstream server refused us).
    """
    host, port = server._remoteaddr[0], server._remoteaddr[1]
    conn = _tls.relay_client(  # SMTP, or SMTP_SSL for relay_tls="smtps"
        server,
        local_hostname=_local_hostname(),
        timeout=getattr(server, "relay_timeout", DEFAULT_TIMEOUT),
    )
    # Addresses are relayed as the client sent them; the channel's parser
    # has already excluded CR, LF and other control characters.
    conn.command_encoding = "utf-8"
    try:
        code, text = conn.connect(host, port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, text)
        conn.ehlo_or_helo_if_needed()
        _tls.secure_relay_session(server, conn)  # relay_tls="starttls", relay_auth
    except BaseException:
        conn.close()
        raise
    return conn


def _all(rcpttos: Sequence[str], code: int, text: Any) -> Refusals:
    return {rcpt: (code, text) for rcpt in rcpttos}


def deliver(server: Any, mailfrom: str, rcpttos: List[str], data: Union[bytes, str, StreamPayload]) -> Refusals:
    """Relay one message upstream; return the refused recipients.

    The result follows smtpd's ``PureProxy._deliver``: ``{}`` when every
    recipient was accepted, else ``{recipient: (code, reply text)}``, with
    code ``-1`` where the upstream server could not be reached or the
    connection failed (then the text is for the log only).  Refusals at
    MAIL or DATA apply to every recipient.  Runs in a worker thread.

    Each operation is bounded by ``relay_timeout``, and the message's
    transfer by the server's ``reply_timeout`` as well, counted from here:
    by then the client has been answered ``451`` and will send the message
    again, so relaying it on could only deliver it twice.
    """
    reply_timeout = _options.of(server).reply_timeout
    deadline = None if reply_timeout is None else time.monotonic() + reply_timeout
    # A message received with BDAT goes to _transaction as its octets (see
    # _chunked_mail), unless a subclass's _deliver() made it something else.
    octets = getattr(_current, "needs", NO_NEEDS).chunked and isinstance(data, (bytes, _chunked_mail.Octets))
    payload: Any = data if octets or isinstance(data, StreamPayload) else wire_data(data)
    try:
        conn = connect(server)
    except smtplib.SMTPResponseException as err:
        return _all(rcpttos, err.smtp_code, err.smtp_error)
    except (OSError, smtplib.SMTPException) as err:
        log.warning("relay to %r failed: %s", server._remoteaddr, err)
        return _all(rcpttos, -1, "upstream unreachable: %s" % err)
    finished = False
    try:
        refused = _transaction(conn, mailfrom, rcpttos, payload, deadline, octets)
        finished = True
        return refused
    except (OSError, smtplib.SMTPException, ValueError, UnicodeError) as err:
        # Also when the connection broke after the data was sent: the
        # upstream server may have the message, but without its reply the
        # client must keep it (a possible duplicate beats a loss).
        log.warning("relay to %r failed: %s", server._remoteaddr, err)
        return _all(rcpttos, -1, "upstream conversation failed: %s" % err)
    finally:
        _close(conn, polite=finished)


def _transaction(
    conn: smtplib.SMTP, mailfrom: str, rcpttos: List[str], payload: Any, deadline: Optional[float], octets: bool = False
) -> Refusals:
    needs: Needs = getattr(_current, "needs", NO_NEEDS)
    refusal = _unmet(conn, needs) if needs is not NO_NEEDS else None
    if refusal is not None:
        # Nothing sent: no downgrade to a session that lacks what the
        # message asks for (RFC 6531 section 3.2, RFC 8689 section 4.2.1).
        return _all(rcpttos, int(refusal[:3]), refusal[4:])
    bdat = octets and conn.has_extn("chunking")
    if octets and not bdat:
        payload = _as_data(payload)  # a text message (_unmet refused a binary one)
    params = _mail_params(conn, needs, payload, bdat)
    dsn_mail, dsn_rcpt = _dsn_params(conn, needs.dsn, rcpttos)
    code, text = conn.docmd("MAIL", "FROM:%s%s%s" % (_path(mailfrom), params, dsn_mail))
    if code != 250:
        _abandon(conn)
        return _all(rcpttos, code, text)
    refused: Refusals = {}
    for rcpt, rcpt_params in zip(rcpttos, dsn_rcpt):
        code, text = conn.docmd("RCPT", "TO:%s%s" % (_path(rcpt), rcpt_params))
        if code not in (250, 251):
            refused[rcpt] = (code, text)
    if refused:
        # All or nothing (see the module docstring): relay to nobody.
        _abandon(conn)
        return refused
    if not bdat:
        code, text = conn.docmd("DATA")
        if code != 354:
            _abandon(conn)
            return _all(rcpttos, code, text)
    code, text = _send_message(conn, payload, deadline, bdat)
    if not 200 <= code < 300:
        return _all(rcpttos, code, text)
    return {}


def _mail_params(conn: smtplib.SMTP, needs: Needs, payload: Any, bdat: bool) -> str:
    """The upstream MAIL's parameters but DSN's, for *payload* sent with
    BDAT (*bdat*) or DATA."""
    params = ""
    if needs.smtputf8:
        params += " SMTPUTF8"
    if needs.requiretls:
        params += " REQUIRETLS"
    if conn.has_extn("size"):
        size = payload.size_param() if isinstance(payload, StreamPayload) else len(payload)
        params += "" if size is None else " SIZE=%d" % size
    if bdat and needs.binarymime:
        params += " BODY=BINARYMIME"
    elif not payload.isascii() and conn.has_extn("8bitmime"):
        params += " BODY=8BITMIME"
    return params


def _dsn_params(conn: smtplib.SMTP, dsn: Any, rcpttos: Sequence[str]) -> Tuple[str, List[str]]:
    """The DSN parameters (RFC 3461) for the upstream MAIL, and for the RCPT
    of each of *rcpttos*, as the client wrote them: none when the upstream
    server does not announce DSN (section 4.1 would then have a queueing
    MTA send "relayed" notices; we send none, see docs/extensions.md).
    Recipients are matched by address, in order, so that a subclass's
    ``_deliver()`` may pass fewer or other recipients."""
    if dsn is None or not conn.has_extn("dsn"):
        return "", [""] * len(rcpttos)
    waiting: Dict[str, List[Tuple[str, ...]]] = {}
    for recipient in dsn.recipients:
        waiting.setdefault(recipient.address, []).append(recipient.params)
    rcpt_params = []
    for rcpt in rcpttos:
        given = waiting.get(rcpt)
        rcpt_params.append("".join(" " + param for param in given.pop(0)) if given else "")
    return "".join(" " + param for param in dsn.params), rcpt_params


def _unmet(conn: smtplib.SMTP, needs: Needs) -> Optional[str]:
    """The refusal for a message with *needs* that the upstream session
    *conn* cannot carry, or None.  REQUIRETLS needs a TLS session whose
    EHLO reply (the one after STARTTLS) announced REQUIRETLS."""
    if needs.requiretls and not (isinstance(conn.sock, ssl.SSLSocket) and conn.has_extn("requiretls")):
        return R.RELAY_NO_REQUIRETLS
    if needs.smtputf8 and not conn.has_extn("smtputf8"):
        return R.RELAY_NO_SMTPUTF8
    if needs.binarymime and not (conn.has_extn("chunking") and conn.has_extn("binarymime")):
        return R.RELAY_NO_BINARYMIME  # RFC 3030 section 3: no DATA, and no conversion here
    return None


def _send_message(conn: smtplib.SMTP, payload: Any, deadline: Optional[float], bdat: bool = False) -> Tuple[int, bytes]:
    """Send the DATA payload block by block (with *bdat*: the octets of a
    message received with BDAT, in BDAT chunks); return the reply to it.

    Each block, and the wait for the reply, gets the connection's timeout
    (``relay_timeout``) afresh, cut short by *deadline*.  Raises ``OSError``
    (``socket.timeout``) when either runs out.
    """
    sock = conn.sock
    if sock is None:  # smtplib closed it on an error
        raise smtplib.SMTPServerDisconnected("Server not connected")
    timeout = sock.gettimeout()
    if bdat:
        blocks: Any = _chunked_mail.bdat_wire(payload, len(payload))
    elif isinstance(payload, StreamPayload):
        blocks = payload.blocks()
    else:
        view = memoryview(payload)
        blocks = (view[start : start + _BLOCK] for start in range(0, len(view), _BLOCK))
    until = payload.deadline if isinstance(payload, StreamPayload) else (lambda given: given)
    try:
        for block in blocks:
            _bound(sock, timeout, until(deadline))
            if block is None:  # a BDAT chunk is sent: its reply before the next one
                code, text = conn.getreply()
                if code != 250:
                    return code, text
                continue
            sock.sendall(block)
        _bound(sock, timeout, until(deadline))
        return conn.getreply()
    finally:
        if conn.sock is not None:
            conn.sock.settimeout(timeout)  # for QUIT


def _bound(sock: socket.socket, timeout: Optional[float], deadline: Optional[float]) -> None:
    """Give the next socket operation *timeout*, or what is left until
    *deadline* if that is less."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("reply_timeout passed before the message was relayed")
        if timeout is None or left < timeout:
            timeout = left
    sock.settimeout(timeout)


def _abandon(conn: smtplib.SMTP) -> None:
    conn.docmd("RSET")


def _close(conn: smtplib.SMTP, polite: bool) -> None:
    try:
        if polite:
            conn.quit()
            return
    except (OSError, smtplib.SMTPException):
        pass
    # After a failure the upstream server may not answer QUIT at all: do not
    # keep the client waiting for that.
    conn.close()


# -- the reply to the client -------------------------------------------------------------
def _text(reply: Any) -> str:
    """Upstream reply text, safe to quote in one reply line."""
    if isinstance(reply, (bytes, bytearray)):
        reply = bytes(reply).decode("ascii", "replace")
    text = "".join(ch if " " <= ch < "\x7f" else " " for ch in str(reply))
    text = " ".join(text.split())
    if len(text) > _MAX_TEXT:
        text = text[: _MAX_TEXT - 3] + "..."
    return text


def _code(code: Any) -> Optional[int]:
    """A refusal code usable in our reply, or None (no upstream reply)."""
    if not isinstance(code, int) or not 400 <= code < 600:
        return None
    if code == 421:
        # The upstream server closing its session is a temporary failure
        # for us; our own 421 would mean we close the client's session.
        return 451
    return code


def reply_for(refused: Optional[Refusals], rcpttos: Sequence[str]) -> Optional[str]:
    """The reply to the end of data for what :func:`deliver` returned.

    None (``250 OK``) when nothing was refused.  The upstream server's own
    reply when it refused every recipient alike (at MAIL, DATA, or each
    RCPT the same way); ``451`` when it could not be reached; otherwise a
    multi-line reply naming each refused recipient (see the module
    docstring for the choice of code).
    """
    if not refused:
        return None
    entries = [(rcpt, _code(code), _text(text)) for rcpt, (code, text) in refused.items()]
    known = [(code, text) for _, code, text in entries if code is not None]
    if not known:
        return R.RELAY_UNAVAILABLE
    recipients = set(rcpttos)
    if len(known) == len(entries) and len(set(known)) == 1 and recipients <= set(refused):
        code, text = known[0]
        return R.format_reply(code, [text])
    return _each_refusal(entries, known, len(recipients))


def _each_refusal(entries: List[Tuple[str, Optional[int], str]], known: List[Tuple[int, str]], recipients: int) -> str:
    """The multi-line reply naming each refused recipient (*entries*:
    address, usable code or None, text).  Its code is the first permanent
    one among the *known* replies, else the first (then temporary) one."""
    permanent = [code for code, _ in known if code >= 500]
    code = permanent[0] if permanent else known[0][0]
    texts = []
    for rcpt, rcode, text in entries:
        said = R.RELAY_UNREACHABLE_DETAIL if rcode is None else ("%d %s" % (rcode, text)).rstrip()
        texts.append(R.RELAY_REFUSED_RCPT % (rcpt, said))
    texts.append(R.RELAY_NOT_RELAYED % (len(entries), recipients))
    return R.format_reply(code, texts)
