"""The pure framer (smtpd_compat._framing): byte tables fed three ways
(whole, one byte at a time, with trailing data), and a property: any split
of the same input into reads gives the same records."""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smtpd_compat._framing import Framer, find_prefix_at_end


class Consumer:
    """Drives a Framer as a line protocol with two ways to switch terminator:
    the line ``DATA`` switches to ``<CRLF>.<CRLF>`` (with the CRLF that
    ended it counted as seen, as SMTP does), ``COUNT n`` to a count of n
    bytes; a record ends each with CRLF again."""

    def __init__(self) -> None:
        self.framer = Framer()
        self.term: object = b"\r\n"
        self.pieces: List[bytes] = []
        self.records: List[Tuple[str, bytes]] = []

    def feed(self, data: bytes) -> None:
        framer = self.framer
        framer.feed(data)
        while True:
            step = framer.next(self.term)  # type: ignore[arg-type]
            if step is None:
                break
            piece, found = step
            if piece:
                self.pieces.append(piece)
            if isinstance(self.term, int) and self.term:
                self.term = self.term - len(piece)
            if found:
                self.end_of_record()
        framer.compact()

    def end_of_record(self) -> None:
        data = b"".join(self.pieces)
        self.pieces = []
        if self.term == b"\r\n":
            self.records.append(("line", data))
            if data == b"DATA":
                self.term = b"\r\n.\r\n"
                self.framer.prefix_seen = b"\r\n"
            elif data.startswith(b"COUNT ") and data[6:].isdigit():
                self.term = int(data[6:])
        else:
            self.records.append(("data" if isinstance(self.term, bytes) else "count", data))
            self.term = b"\r\n"
            self.framer.prefix_seen = b""

    def result(self) -> Tuple[List[Tuple[str, bytes]], bytes]:
        """The records, and the data handed out after the last one."""
        return self.records, b"".join(self.pieces)


def run(chunks: List[bytes]) -> Tuple[List[Tuple[str, bytes]], bytes, bytes]:
    consumer = Consumer()
    for chunk in chunks:
        consumer.feed(chunk)
    records, partial = consumer.result()
    return records, partial, consumer.framer.pending()


CASES = [
    # (input, records, data handed out unterminated, input kept)
    (b"HELO x\r\n", [("line", b"HELO x")], b"", b""),
    (b"A\r\nB\r\n", [("line", b"A"), ("line", b"B")], b"", b""),
    (b"\r\n", [("line", b"")], b"", b""),
    (b"abc", [], b"abc", b""),
    (b"abc\r", [], b"abc", b"\r"),
    (b"DATA\r\nhello\r\n.\r\nNOOP\r\n", [("line", b"DATA"), ("data", b"hello"), ("line", b"NOOP")], b"", b""),
    # The empty message: "." right after DATA's own CRLF.
    (b"DATA\r\n.\r\nNOOP\r\n", [("line", b"DATA"), ("data", b""), ("line", b"NOOP")], b"", b""),
    # An empty line, then the end: the end is found at once.
    (b"DATA\r\n\r\n.\r\n", [("line", b"DATA"), ("data", b"")], b"", b""),
    (b"DATA\r\n..x\r\n.\r\n", [("line", b"DATA"), ("data", b"..x")], b"", b""),
    (b"DATA\r\nab\r\n.", [("line", b"DATA")], b"ab", b"\r\n."),
    (b"DATA\r\n.\r", [("line", b"DATA")], b"", b".\r"),
    (b"COUNT 3\r\nabcdef\r\n", [("line", b"COUNT 3"), ("count", b"abc"), ("line", b"def")], b"", b""),
    (b"COUNT 0\r\nx\r\n", [("line", b"COUNT 0")], b"x\r\n", b""),
]


@pytest.mark.parametrize("data, records, partial, kept", CASES)
def test_whole(data: bytes, records: list, partial: bytes, kept: bytes) -> None:
    got_records, got_partial, got_kept = run([data])
    assert got_records == records
    assert got_partial == partial and got_kept == kept


@pytest.mark.parametrize("data, records, partial, kept", CASES)
def test_byte_by_byte(data: bytes, records: list, partial: bytes, kept: bytes) -> None:
    got_records, got_partial, got_kept = run([data[i : i + 1] for i in range(len(data))])
    assert got_records == records
    assert got_partial + got_kept == partial + kept


# Trailing data only extends the cases that end between records.
COMPLETE_CASES = [case for case in CASES if not (case[2] or case[3])]


@pytest.mark.parametrize("data, records, partial, kept", COMPLETE_CASES)
def test_with_trailing_data(data: bytes, records: list, partial: bytes, kept: bytes) -> None:
    # What follows the case must not change it, only add to it.
    got_records, _, _ = run([data + b"TRAIL"])
    assert got_records[: len(records)] == records


def test_a_count_of_zero_hands_out_everything_as_data() -> None:
    # asynchat's rule: a terminator of 0 (or None) means no terminator.
    framer = Framer()
    framer.feed(b"abc")
    assert framer.next(0) == (b"abc", False)
    assert framer.next(0) is None


def test_a_large_message_is_handed_out_as_it_arrives() -> None:
    framer = Framer()
    body = b"x" * 100_000
    framer.feed(body[:70_000])
    assert framer.next(b"\r\n.\r\n") == (body[:70_000], False)
    framer.feed(body[70_000:] + b"\r\n.\r\n")
    assert framer.next(b"\r\n.\r\n") == (body[70_000:], True)
    assert framer.next(b"\r\n") is None


def test_large_input_with_a_dot_far_from_the_end() -> None:
    framer = Framer()
    data = b"a.b" + b"x" * 10_000 + b"\r\n.\r\n" + b"tail"
    framer.feed(data)
    assert framer.next(b"\r\n.\r\n") == (data[: data.index(b"\r\n.\r\n")], True)
    assert framer.next(b"\r\n.\r\n") == (b"tail", False)


def test_replace_and_pending() -> None:
    framer = Framer()
    framer.feed(b"one\r\ntwo\r\n")
    assert framer.next(b"\r\n") == (b"one", True)
    assert framer.pending() == b"two\r\n" and len(framer) == 5
    framer.replace(b"three\r\n")
    assert framer.next(b"\r\n") == (b"three", True)
    assert framer.next(b"\r\n") is None


def test_find_prefix_at_end() -> None:
    assert find_prefix_at_end(b"qwerty\r", b"\r\n") == 1
    assert find_prefix_at_end(b"qwertydkjf", b"\r\n") == 0
    assert find_prefix_at_end(b"abc\r\n.", b"\r\n.\r\n") == 3


ALPHABET = [b"\r", b"\n", b".", b"a", b"DATA", b"COUNT 2", b"\r\n", b"\r\n.\r\n"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(ALPHABET), max_size=40), st.lists(st.integers(min_value=1, max_value=7), max_size=40))
def test_any_split_gives_the_same_records(parts: List[bytes], sizes: List[int]) -> None:
    data = b"".join(parts)
    whole = run([data])
    chunks: List[bytes] = []
    rest: Optional[bytes] = data
    for size in sizes:
        if not rest:
            break
        chunks.append(rest[:size])
        rest = rest[size:]
    if rest:
        chunks.append(rest)
    split = run(chunks)
    assert split[0] == whole[0]
    assert split[1] + split[2] == whole[1] + whole[2]
