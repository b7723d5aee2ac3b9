"""Every reply text the server sends, in one place, and one way to build
a multi-line reply (:func:`reply_lines`, :func:`format_reply`).

The texts of CPython 3.11's smtpd are part of the compatibility contract and
are reproduced exactly; replies that smtpd never sent (for the defects fixed
here and the extensions added) follow RFC 5321's wording.
"""

from typing import List, Sequence


def reply_lines(code: int, texts: Sequence[str]) -> List[str]:
    """The lines of one reply (RFC 5321 4.2.1): ``code-text`` for each text
    but the last, ``code text`` for the last (``code`` alone for an empty
    last text)."""
    last = len(texts) - 1
    return [
        ("%d-%s" % (code, text)) if i < last else (("%d %s" % (code, text)) if text else "%d" % code)
        for i, text in enumerate(texts)
    ]


def format_reply(code: int, texts: Sequence[str]) -> str:
    """A whole reply, its lines joined by CRLF (without the final CRLF, as
    ``push()`` takes it)."""
    return "\r\n".join(reply_lines(code, texts))


# Greeting: "220 <fqdn> <version>", the version being smtpd's (smtpd.__version__).
GREETING = "220 %s %s"
SMTPD_VERSION = "Python SMTP proxy version 0.3"

OK = "250 OK"
HELO_OK = "250 %s"
# EHLO's reply: "250-<fqdn>", one line per keyword, "250 HELP" last
# (see reply_lines).
EHLO_SIZE = "SIZE %s"
EHLO_8BITMIME = "8BITMIME"
EHLO_SMTPUTF8 = "SMTPUTF8"
EHLO_HELP = "HELP"
BYE = "221 Bye"
START_DATA = "354 End data with <CR><LF>.<CR><LF>"
VRFY_CANNOT = "252 Cannot VRFY user, but will accept message and attempt delivery"

HELP_ALL = "250 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
HELP_UNKNOWN = "501 Supported commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY"
# Reply to "HELP <command>"; MAIL and RCPT gain PARAMS_SUFFIX after EHLO.
HELP_SYNTAX = {
    "EHLO": "250 Syntax: EHLO hostname",
    "HELO": "250 Syntax: HELO hostname",
    "MAIL": "250 Syntax: MAIL FROM: <address>",
    "RCPT": "250 Syntax: RCPT TO: <address>",
    "DATA": "250 Syntax: DATA",
    "RSET": "250 Syntax: RSET",
    "NOOP": "250 Syntax: NOOP",
    "QUIT": "250 Syntax: QUIT",
    "VRFY": "250 Syntax: VRFY <address>",
}
PARAMS_SUFFIX = " [SP <mail-parameters>]"

BAD_SYNTAX = "500 Error: bad syntax"
BAD_ENCODING = "500 Error: bad syntax, command is not valid UTF-8"
LINE_TOO_LONG = "500 Error: line too long"
UNKNOWN_COMMAND = '500 Error: command "%s" not recognized'

SYNTAX_HELO = "501 Syntax: HELO hostname"
SYNTAX_EHLO = "501 Syntax: EHLO hostname"
SYNTAX_NOOP = "501 Syntax: NOOP"
SYNTAX_RSET = "501 Syntax: RSET"
SYNTAX_DATA = "501 Syntax: DATA"
SYNTAX_VRFY = "501 Syntax: VRFY <address>"
SYNTAX_MAIL = "501 Syntax: MAIL FROM: <address>"
SYNTAX_RCPT = "501 Syntax: RCPT TO: <address>"
BAD_BODY = "501 Error: BODY can only be one of 7BIT, 8BITMIME"
SMTPUTF8_NO_ARGS = "501 Error: SMTPUTF8 takes no arguments"
VRFY_FAILED = "502 Could not VRFY %s"
EXPN_UNSUPPORTED = "502 EXPN not implemented"

DUPLICATE_HELO = "503 Duplicate HELO/EHLO"
NEED_HELO = "503 Error: send HELO first"
NEED_MAIL = "503 Error: need MAIL command"
NEED_RCPT = "503 Error: need RCPT command"
NESTED_MAIL = "503 Error: nested MAIL command"

INTERNAL_CONFUSION = "451 Internal confusion"
# process_message() raised: the sender keeps the message and retries later.
PROCESSING_FAILED = "451 Requested action aborted: local error in processing"

SIZE_EXCEEDED = "552 Error: message size exceeds fixed maximum message size"
TOO_MUCH_DATA = "552 Error: Too much mail data"
# decode_data=True and the message is not UTF-8 (smtpd crashed instead).
DATA_NOT_UTF8 = "554 Error: message is not valid UTF-8"
MAIL_PARAMS_UNKNOWN = "555 MAIL FROM parameters not recognized or not implemented"
RCPT_PARAMS_UNKNOWN = "555 RCPT TO parameters not recognized or not implemented"

# STARTTLS (RFC 3207), SMTPS and AUTH (RFC 4954); see _tls and _auth.  EHLO
# keywords are sent as "250-" + keyword.
EHLO_STARTTLS = "STARTTLS"
EHLO_AUTH = "AUTH %s"
READY_TLS = "220 Ready to start TLS"
SYNTAX_STARTTLS = "501 Syntax: STARTTLS"
TLS_ALREADY_ACTIVE = "503 Error: TLS already active"
TLS_NOT_AVAILABLE = "454 TLS not available due to temporary reason"
STARTTLS_REQUIRED = "530 Must issue a STARTTLS command first"
NEED_EHLO = "503 Error: send EHLO first"
SYNTAX_AUTH = "501 Syntax: AUTH mechanism [initial-response]"
AUTH_CHALLENGE = "334 %s"
AUTH_OK = "235 Authentication successful"
AUTH_ALREADY = "503 Error: already authenticated"
AUTH_IN_TRANSACTION = "503 Error: AUTH not permitted during a mail transaction"
AUTH_UNKNOWN_MECHANISM = "504 Unrecognized authentication type"
AUTH_CANCELLED = "501 Authentication cancelled"
AUTH_BAD_BASE64 = "501 Cannot decode response"
AUTH_BAD_MESSAGE = "501 Malformed authentication response"
AUTH_FAILED = "535 Authentication credentials invalid"
AUTH_TEMP_FAILURE = "454 Temporary authentication failure"
AUTH_ENCRYPTION_REQUIRED = "538 Encryption required for requested authentication mechanism"
AUTH_REQUIRED = "530 Authentication required"
TOO_MANY_AUTH_FAILURES = "421 %s Error: too many failed authentication attempts, closing connection"

# Session limits (hardening).
TOO_MANY_ERRORS = "421 %s Error: too many errors, closing connection"
TOO_MANY_CONNECTIONS = "421 %s Error: too many connections, try again later"
IDLE_TIMEOUT = "421 %s Error: timeout exceeded, closing connection"
# max_recipients reached: RFC 5321 4.5.3.1.10's reply, with the enhanced
# status code Postfix sends (RFC 3463 X.5.3: too many recipients).
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
SHUTTING_DOWN = "421 %s Service shutting down, closing connection"

# PureProxy relay (see _relay): the upstream server could not be reached or
# the conversation broke; the client keeps the message and retries.
RELAY_UNAVAILABLE = "451 Requested action aborted: upstream server unavailable"
# Some recipients refused upstream: one line each (code, recipient, what the
# upstream server said), then a last line; nothing was relayed to anyone.
RELAY_REFUSED_RCPT = "<%s>: upstream replied: %s"
RELAY_UNREACHABLE_DETAIL = "no usable reply"
RELAY_NOT_RELAYED = "Message not relayed: upstream refused %d of %d recipients, relayed to none"


# The fixed replies (no %-placeholder) as sent on the wire: push() looks a
# reply up here before encoding it.  They are ASCII, so the bytes are the
# same whether the session uses SMTPUTF8 or not.
WIRE = {
    text: (text + "\r\n").encode("ascii")
    for text in list(globals().values())
    if isinstance(text, str) and text[:3].isdigit() and "%" not in text
}
