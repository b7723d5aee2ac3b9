"""_replies: the reply texts and the one builder of multi-line replies."""

from __future__ import annotations

from smtpd_compat import _replies as R


def test_reply_lines() -> None:
    assert R.reply_lines(250, ["mail.example", "SIZE 100", "HELP"]) == ["250-mail.example", "250-SIZE 100", "250 HELP"]
    assert R.reply_lines(250, ["OK"]) == ["250 OK"]
    assert R.reply_lines(421, [""]) == ["421"]


def test_format_reply_joins_with_crlf() -> None:
    assert R.format_reply(550, ["<a@x>: no", "not relayed"]) == "550-<a@x>: no\r\n550 not relayed"


def test_every_fixed_reply_is_on_the_wire_table() -> None:
    # push() sends these without encoding them again.
    for text in (R.OK, R.BYE, R.START_DATA, R.HELP_ALL, R.TOO_MANY_RECIPIENTS):
        assert R.WIRE[text] == text.encode("ascii") + b"\r\n"
    assert all(not text.startswith(("%", "<")) for text in R.WIRE)
