"""Behaviour pins for the optimised hot paths (docs/performance.md).

Each optimisation replaced a simple formulation with a faster one; these
tests check the fast version against the simple one, or against the
behaviour CPython's smtpd/asynchat had, over many inputs.  No timing here:
speed is measured by benchmarks/bench.py, not by tests.
"""

from __future__ import annotations

from smtpd_compat import _protocol


def _slow_run(text: str, i: int) -> int:
    # The character loop _protocol._run used before it became a regex.
    while i < len(text) and not _protocol._bad(text[i]):
        i += 1
    return i


def test_address_run_regex_matches_character_rule() -> None:
    # Every code point of the BMP's first part plus the extremes, alone,
    # inside other text and repeated, from two start positions.
    code_points = list(range(0x3000)) + [0xD7FF, 0xE000, 0xFFFD, 0x10FFFF]
    for cp in code_points:
        ch = chr(cp)
        for text in (ch, "ab" + ch + "cd", ch * 3):
            for start in (0, 1):
                assert _protocol._run(text, start) == _slow_run(text, start), (hex(cp), text, start)


def test_address_run_stops_at_every_delimiter() -> None:
    for delim in ' \t\r\n<>()[],;:@"\\\x00\x1f\x7f':
        assert _protocol._run("abc" + delim + "def", 0) == 3
    assert _protocol._run("", 0) == 0
    assert _protocol._run("abc", 3) == 3
