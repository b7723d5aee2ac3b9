"""The pure SASL parts of AUTH (_auth): base64, PLAIN, LOGIN, redaction, password files.

No sockets: every case feeds text to the functions and checks the result or
the ReplyError (with its SMTP reply) they raise.
"""

from __future__ import annotations

import base64
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpd_compat import _auth, _logging
from smtpd_compat import _replies as R
from smtpd_compat._auth import AuthExchange, AuthFileError, Credentials, PasswordFile
from smtpd_compat._grammar import ReplyError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# -- base64 ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("", b""),
        ("dXNlcg==", b"user"),
        ("AHVzZXIAcGFzcw==", b"\0user\0pass"),
    ],
)
def test_decode_base64_valid(text: str, expected: bytes) -> None:
    assert _auth.decode_base64(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "dXNlcg",  # padding missing
        "dXN lcg==",  # a space inside
        "dXNlcg==!",  # not in the alphabet
        "***",
        "d\u00e9",  # not ASCII
        "=",  # "=" is only meaningful as an initial response
    ],
)
def test_decode_base64_malformed_is_501(text: str) -> None:
    with pytest.raises(ReplyError) as info:
        _auth.decode_base64(text)
    assert info.value.reply == R.AUTH_BAD_BASE64
    assert info.value.reply.startswith("501 ")


# -- PLAIN --------------------------------------------------------------------------
def test_parse_plain() -> None:
    assert _auth.parse_plain(b"\0user\0secret") == Credentials("PLAIN", "user", "secret", "")
    assert _auth.parse_plain(b"admin\0user\0p\xc3\xa4ss") == Credentials("PLAIN", "user", "p\u00e4ss", "admin")


@pytest.mark.parametrize(
    "message",
    [b"", b"user", b"\0user", b"\0\0pass", b"\0user\0", b"a\0b\0c\0d", b"\0us\xffer\0pass"],
)
def test_parse_plain_malformed(message: bytes) -> None:
    with pytest.raises(ReplyError) as info:
        _auth.parse_plain(message)
    assert info.value.reply == R.AUTH_BAD_MESSAGE


def test_plain_with_initial_response() -> None:
    exchange = AuthExchange("plain", b64(b"\0user\0secret"))
    assert exchange.start() == Credentials("PLAIN", "user", "secret")
    assert exchange.done


def test_plain_with_challenge() -> None:
    exchange = AuthExchange("PLAIN")
    assert exchange.start() == ""  # "334 " with an empty challenge
    assert exchange.respond(b64(b"\0user\0secret")) == Credentials("PLAIN", "user", "secret")


def test_plain_empty_initial_response_is_malformed() -> None:
    # "=" is an empty initial response (RFC 4954); empty is not a valid PLAIN message.
    exchange = AuthExchange("PLAIN", "=")
    with pytest.raises(ReplyError) as info:
        exchange.start()
    assert info.value.reply == R.AUTH_BAD_MESSAGE


# -- LOGIN ----------------------------------------------------------------------------
def test_login_exchange() -> None:
    exchange = AuthExchange("LOGIN")
    assert base64.b64decode(exchange.start()) == b"Username:"
    assert base64.b64decode(exchange.respond(b64(b"user"))) == b"Password:"
    assert exchange.respond(b64(b"secret")) == Credentials("LOGIN", "user", "secret")
    assert exchange.done


def test_login_with_initial_response_skips_the_user_prompt() -> None:
    exchange = AuthExchange("LOGIN", b64(b"user"))
    assert base64.b64decode(exchange.start()) == b"Password:"
    assert exchange.respond(b64(b"secret")) == Credentials("LOGIN", "user", "secret")


def test_login_empty_password_is_passed_on() -> None:
    # An empty password is for the authenticator to refuse, not a syntax error.
    exchange = AuthExchange("LOGIN")
    exchange.start()
    exchange.respond(b64(b"user"))
    assert exchange.respond("") == Credentials("LOGIN", "user", "")


# -- cancel, malformed, unknown -----------------------------------------------------------
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_cancel_is_501_and_ends_the_exchange(mechanism: str) -> None:
    exchange = AuthExchange(mechanism)
    exchange.start()
    with pytest.raises(ReplyError) as info:
        exchange.respond("*")
    assert info.value.reply == R.AUTH_CANCELLED
    assert exchange.done
    with pytest.raises(RuntimeError):
        exchange.respond(b64(b"late"))


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_malformed_response_is_501(mechanism: str) -> None:
    exchange = AuthExchange(mechanism)
    exchange.start()
    with pytest.raises(ReplyError) as info:
        exchange.respond("not base64!")
    assert info.value.reply == R.AUTH_BAD_BASE64
    assert exchange.done


def test_unknown_mechanism_is_504() -> None:
    with pytest.raises(ReplyError) as info:
        AuthExchange("CRAM-MD5")
    assert info.value.reply == R.AUTH_UNKNOWN_MECHANISM


@given(st.text(max_size=40))
def test_any_response_gives_a_step_or_a_reply(line: str) -> None:
    # Invariant: whatever the client sends, the exchange answers with a
    # challenge, credentials or a ReplyError -- never another exception.
    for mechanism in _auth.MECHANISMS:
        exchange = AuthExchange(mechanism)
        exchange.start()
        try:
            result = exchange.respond(line)
        except ReplyError as err:
            assert err.reply[:3] == "501"
        else:
            assert isinstance(result, (str, Credentials))


def test_credentials_repr_hides_the_password() -> None:
    text = repr(Credentials("PLAIN", "user", "hunter2"))
    assert "hunter2" not in text and "user" in text


# -- redaction -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, shown",
    [
        (b"AUTH PLAIN AHVzZXIAcGFzcw==", b"AUTH PLAIN ***"),
        (b"auth login dXNlcg==", b"AUTH login ***"),
        (b"AUTH PLAIN", b"AUTH PLAIN"),
        (b"AUTH", b"AUTH"),
        (b"MAIL FROM:<a@b>", b"MAIL FROM:<a@b>"),
        (b"AUTHX secret", b"AUTHX secret"),
    ],
)
def test_redact_command(line: bytes, shown: bytes) -> None:
    assert _logging.redact_debug_line(line) == shown


# -- password files ------------------------------------------------------------------------
def write_file(path, text: str, mode: int = 0o600) -> str:
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return str(path)


def test_password_file_clear_and_hashed(tmp_path) -> None:
    hashed = _auth.hash_password("s3cret", iterations=1000)
    name = write_file(tmp_path / "users", "# comment\n\nalice:wonder:land\nbob:%s\n" % hashed)
    users = PasswordFile.load(name)
    assert len(users) == 2
    assert users.check("alice", "wonder:land")  # split at the first colon only
    assert not users.check("alice", "wonder")
    assert users.check("bob", "s3cret")
    assert not users.check("bob", "S3cret")
    assert not users.check("carol", "s3cret")
    assert users(None, None, "PLAIN", "bob", "s3cret") is True


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602])
def test_password_file_readable_by_others_is_refused(tmp_path, mode: int) -> None:
    name = write_file(tmp_path / "users", "alice:secret\n", mode)
    with pytest.raises(AuthFileError) as info:
        PasswordFile.load(name)
    message = str(info.value)
    assert "chmod 600" in message and "%03o" % stat.S_IMODE(mode) in message
    assert "secret" not in message


def test_password_file_bad_line_does_not_echo_it(tmp_path) -> None:
    name = write_file(tmp_path / "users", "alice:ok\nthis-line-has-no-colon-secret\n")
    with pytest.raises(AuthFileError) as info:
        PasswordFile.load(name)
    assert "line 2" in str(info.value)
    assert "secret" not in str(info.value)


def test_password_file_missing(tmp_path) -> None:
    with pytest.raises(AuthFileError):
        PasswordFile.load(str(tmp_path / "nope"))


def test_hashed_tells_whether_a_check_costs_pbkdf2() -> None:
    assert PasswordFile({"u": _auth.hash_password("x", iterations=1000)}).hashed
    assert PasswordFile({"u": "x", "v": _auth.hash_password("y", iterations=1000)}).hashed
    assert not PasswordFile({"u": "x"}).hashed
    assert not PasswordFile({}).hashed


def test_hash_password_round_trip() -> None:
    stored = _auth.hash_password("x", iterations=1000, salt=b"0123456789abcdef")
    assert stored.startswith("pbkdf2_sha256$1000$")
    assert PasswordFile({"u": stored}).check("u", "x")
    assert not PasswordFile({"u": stored}).check("u", "y")
