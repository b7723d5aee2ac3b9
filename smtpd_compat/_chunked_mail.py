"""A message received with ``BDAT`` (RFC 3030) on its way on: PureProxy
relaying it, MailboxServer storing it.  docs/extensions.md ("Relaying and
storing a BDAT message") says what is honoured.

``process_message()`` learns that a message came by ``BDAT`` from its
``chunked`` argument (True; False for a ``DATA`` message), given on a
server with the option ``chunking`` only, to a ``process_message`` that
accepts it (``_delivery.call_with_accepted_options``); whether it is
binary from ``mail_options`` (``BODY=BINARYMIME``).  Such a message is its
octets as sent, CRLF line ends included, where a ``DATA`` message is
smtpd's form: unstuffed, lines separated by ``\\n``, no line end at the end.

* A text message (7BIT, 8BITMIME) has a ``DATA`` form, and it is the one a
  ``DATA`` client sending the same lines would have produced
  (:func:`data_form`): what MailboxServer stores, and what PureProxy relays
  to an upstream server without ``CHUNKING``.
* A BINARYMIME message has none: its octets are never changed.  PureProxy
  relays it with ``BDAT`` or not at all (``554 5.6.3``: RFC 3030 section 3
  forbids sending it with ``DATA``, and converting it is not ours to do).

The relay keeps the message's ``X-Peer`` header line as for a ``DATA``
message, CRLF-ended here (:func:`add_peer_header`); sent with ``BDAT`` the
octets go out in chunks of :data:`CHUNK` (:func:`bdat_wire`), from memory
or, for a spooled message, from the spool file (:class:`Octets`): never
held whole.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Iterable, Iterator, Optional, Sequence, Union

__all__ = [
    "CHUNK", "Octets", "add_peer_header", "bdat_wire", "blocks_of", "data_form", "data_form_blocks", "find_in_file", "is_binary",
]

CRLF = b"\r\n"
# Octets per upstream BDAT chunk (the last one may be shorter).
CHUNK = 1 << 20
# Bytes handed to the socket at once (each within relay_timeout: _relay).
_PIECE = 65536


def is_binary(mail_options: Optional[Sequence[str]]) -> bool:
    """Whether MAIL had ``BODY=BINARYMIME`` (smtpd's mail_options are
    upper case)."""
    return "BODY=BINARYMIME" in (mail_options or ())


def data_form(data: bytes) -> bytes:
    """The octets of a text message sent with BDAT as ``process_message``
    would get them from ``DATA``: each CRLF a ``\\n``, the last one
    dropped.  Bare CR and LF stay as they are (DATA keeps them too)."""
    if data.endswith(CRLF):
        data = data[:-2]
    return data.replace(CRLF, b"\n")


def data_form_blocks(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """:func:`data_form` of the octets given in *blocks*, block by block
    (a CRLF cut between two blocks is still one line end)."""
    held = b""
    for block in blocks:
        text = held + block
        if len(text) <= 2:
            held = text
            continue
        cut = len(text) - 2  # the last two octets may be the message's last CRLF
        if text[cut - 1 : cut + 1] == CRLF:
            cut -= 1
        held = text[cut:]
        yield text[:cut].replace(CRLF, b"\n")
    yield data_form(held)


def _header(peer_host: str) -> bytes:
    return ("X-Peer: %s\r\n" % peer_host).encode("ascii", "backslashreplace")


def add_peer_header(data: bytes, peer_host: str) -> bytes:
    """``_grammar.add_peer_header`` for CRLF-ended octets: ``X-Peer: <host>``
    before the first empty line (the end of the headers), else after the
    last line; so that :func:`data_form` of the result is what
    ``_grammar.add_peer_header`` gives for the ``data_form`` of *data*."""
    header = _header(peer_host)
    if not data:
        return header + CRLF
    if data.startswith(CRLF):
        return header + data
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[: end + 2] + header + data[end + 2 :]
    return data + header if data.endswith(CRLF) else data + CRLF + header


class Octets:
    """A spooled message received with BDAT, to relay: *file* (a spool's
    reader) with the ``X-Peer`` header put in as :func:`add_peer_header`
    puts it, read block by block whenever :meth:`blocks` is called."""

    def __init__(self, file: BinaryIO, peer_host: str) -> None:
        self.file = file
        self.header = _header(peer_host)
        self._size: Optional[int] = None
        self._ascii: Optional[bool] = None

    def blocks(self) -> Iterator[bytes]:
        """The octets to relay, header included."""
        file = self.file
        file.seek(0)
        first = file.read(2)
        if not first:
            yield self.header + CRLF
            return
        if first == CRLF:
            yield self.header + first
            yield from blocks_of(file)
            return
        end = self._find_blank_line()
        file.seek(0)
        if end >= 0:
            yield from blocks_of(file, end + 2)
            yield self.header
            yield from blocks_of(file)
            return
        last = b""
        for block in blocks_of(file):
            last = (last + block)[-2:]
            yield block
        yield self.header if last == CRLF else CRLF + self.header

    def _find_blank_line(self) -> int:
        """Where the first CRLF CRLF starts in the file, or -1."""
        return find_in_file(self.file, b"\r\n\r\n")

    def __len__(self) -> int:
        if self._size is None:
            self._size = sum(len(block) for block in self.blocks())
        return self._size

    def isascii(self) -> bool:
        if self._ascii is None:
            self._ascii = all(block.isascii() for block in self.blocks())
        return self._ascii


def blocks_of(file: BinaryIO, size: int = -1) -> Iterator[bytes]:
    """The rest of *file* (or its next *size* bytes), block by block."""
    while size:
        block = file.read(_PIECE if size < 0 else min(size, _PIECE))
        if not block:
            return
        size -= len(block)
        yield block


def find_in_file(file: BinaryIO, needle: bytes) -> int:
    """Where *needle* first starts in *file* (read from its start, block by
    block, never whole), or -1."""
    file.seek(0)
    offset, carry = 0, b""
    for block in blocks_of(file):
        text = carry + block
        index = text.find(needle)
        if index >= 0:
            return offset - len(carry) + index
        offset += len(block)
        carry = text[1 - len(needle):] if len(needle) > 1 else b""
    return -1


def _pieces(payload: Union[bytes, Octets]) -> Iterator[bytes]:
    if isinstance(payload, Octets):
        return payload.blocks()
    view = memoryview(payload)
    return (bytes(view[start : start + _PIECE]) for start in range(0, len(view), _PIECE))


def bdat_wire(payload: Union[bytes, Octets], size: int) -> Iterator[Optional[bytes]]:
    """What the relay sends for *payload* (of *size* octets) with BDAT:
    ``BDAT <n>`` commands and their octets, in pieces of at most 64 KiB,
    each chunk of :data:`CHUNK` octets but the last (``BDAT <n> LAST``).
    A None between them: read the reply to the chunk just sent (it must be
    250 to go on); the reply to the last one is the caller's to read."""
    sent = 0
    buffer = bytearray()
    pieces: Iterator[Any] = _pieces(payload)
    exhausted = False
    while True:
        if len(buffer) < CHUNK and not exhausted:
            exhausted = True
            for piece in pieces:
                buffer += piece
                if len(buffer) >= CHUNK:
                    exhausted = False
                    break
        chunk = bytes(buffer[:CHUNK])
        del buffer[:CHUNK]
        sent += len(chunk)
        last = not buffer and (exhausted or sent >= size)
        yield b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"")
        for start in range(0, len(chunk), _PIECE):
            yield chunk[start : start + _PIECE]
        if last:
            return
        yield None
