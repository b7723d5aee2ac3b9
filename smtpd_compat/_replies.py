"""Every reply text the server sends, in one place, and one way to build
a multi-line reply (:func:`reply_lines`, :func:`format_reply`).

The texts of CPython 3.11's smtpd are part of the compatibility contract and
are reproduced exactly; replies that smtpd never sent (for the defects fixed
here and the extensions added) follow RFC 5321's wording.
"""

from typing import Dict, List, Optional, Sequence, Tuple


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

# PIPELINING (RFC 2920) and ENHANCEDSTATUSCODES (RFC 2034): EHLO keywords of
# the options of those names (see _extensions).
EHLO_PIPELINING = "PIPELINING"
EHLO_ENHANCEDSTATUSCODES = "ENHANCEDSTATUSCODES"

# SMTPUTF8 (RFC 6531 section 3.5, with enable_SMTPUTF8) and REQUIRETLS (RFC
# 8689, the option requiretls): the replies refusing what they forbid carry
# their enhanced status code in the text, with enhanced_status_codes or
# without (as TOO_MANY_RECIPIENTS does), so that a client reads the RFC's
# reason either way.  See docs/extensions.md.
NON_ASCII_SENDER = "553 5.6.7 Non-ASCII addresses not permitted for that sender without SMTPUTF8"
NON_ASCII_RECIPIENT = "553 5.6.7 Non-ASCII addresses not permitted for that recipient without SMTPUTF8"
EHLO_REQUIRETLS = "REQUIRETLS"
REQUIRETLS_NO_ARGS = "501 Error: REQUIRETLS takes no arguments"
# PureProxy (see _relay): the upstream server lacks what the message needs;
# nothing was relayed.
RELAY_NO_SMTPUTF8 = "553 5.6.7 Non-ASCII addresses not permitted for that recipient: upstream server does not support SMTPUTF8"
RELAY_NO_REQUIRETLS = "550 5.7.30 REQUIRETLS support required"
# spool_threshold (see _spool): the spool could not be written (a full disk);
# RFC 5321's 452, so the client keeps the message and retries.
SPOOL_FAILED = "452 Error: insufficient system storage"
# The replies above that carry their enhanced status code already.
CODED = frozenset(
    (TOO_MANY_RECIPIENTS, NON_ASCII_SENDER, NON_ASCII_RECIPIENT, RELAY_NO_SMTPUTF8, RELAY_NO_REQUIRETLS)
)

# DSN (RFC 3461, the option dsn; see _dsn): MAIL's RET and ENVID, RCPT's
# NOTIFY and ORCPT refused with what is wrong with them.
EHLO_DSN = "DSN"
DSN_DUPLICATE = "501 Error: %s parameter given more than once"
DSN_BAD_RET = "501 Error: RET can only be one of FULL, HDRS"
DSN_BAD_ENVID = "501 Error: ENVID must be xtext of printable US-ASCII, at most 100 characters"
DSN_BAD_NOTIFY = "501 Error: NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY"
DSN_BAD_ORCPT = "501 Error: ORCPT must be addr-type;xtext, at most 500 characters"
# LMTP (RFC 2033; see _lmtp): LHLO replaces HELO and EHLO, which an LMTP
# server answers 500; HELP names LHLO.
SYNTAX_LHLO = "501 Syntax: LHLO hostname"
LMTP_SEND_LHLO = "500 Error: this is an LMTP server: send LHLO"
LMTP_HELP_ALL = "250 Supported commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY"
LMTP_HELP_LHLO = "250 Syntax: LHLO hostname"
LMTP_HELP_UNKNOWN = "501 Supported commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY"

# The enhanced status code (RFC 3463) of each reply of the server's own,
# sent after the basic code (``250 2.1.0 OK``) when the option
# enhanced_status_codes is on.  Left out: the greeting and the replies to
# HELO and EHLO (RFC 2034 section 3), the 3xx replies (354, AUTH's 334
# challenges: RFC 3463 has no class 3), TOO_MANY_RECIPIENTS (it has one
# already), and the relay's texts, which quote the upstream server.
STATUS_CODES: Dict[str, str] = {
    OK: "2.0.0",
    BYE: "2.0.0",
    VRFY_CANNOT: "2.0.0",
    HELP_ALL: "2.0.0",
    HELP_UNKNOWN: "5.5.4",
    BAD_SYNTAX: "5.5.2",
    BAD_ENCODING: "5.5.2",
    LINE_TOO_LONG: "5.5.2",
    UNKNOWN_COMMAND: "5.5.2",
    SYNTAX_NOOP: "5.5.4",
    SYNTAX_RSET: "5.5.4",
    SYNTAX_DATA: "5.5.4",
    SYNTAX_VRFY: "5.5.4",
    SYNTAX_MAIL: "5.5.4",
    SYNTAX_MAIL + PARAMS_SUFFIX: "5.5.4",
    SYNTAX_RCPT: "5.5.4",
    SYNTAX_RCPT + PARAMS_SUFFIX: "5.5.4",
    BAD_BODY: "5.5.4",
    SMTPUTF8_NO_ARGS: "5.5.4",
    REQUIRETLS_NO_ARGS: "5.5.4",
    VRFY_FAILED: "5.5.4",
    EXPN_UNSUPPORTED: "5.5.1",
    NEED_HELO: "5.5.1",
    NEED_MAIL: "5.5.1",
    NEED_RCPT: "5.5.1",
    NESTED_MAIL: "5.5.1",
    INTERNAL_CONFUSION: "4.3.0",
    PROCESSING_FAILED: "4.3.0",
    SIZE_EXCEEDED: "5.3.4",
    TOO_MUCH_DATA: "5.3.4",
    DATA_NOT_UTF8: "5.6.0",
    MAIL_PARAMS_UNKNOWN: "5.5.4",
    RCPT_PARAMS_UNKNOWN: "5.5.4",
    # STARTTLS and AUTH: RFC 3207's replies with Postfix's codes, RFC 4954's own.
    READY_TLS: "2.0.0",
    SYNTAX_STARTTLS: "5.5.4",
    TLS_ALREADY_ACTIVE: "5.5.1",
    TLS_NOT_AVAILABLE: "4.7.0",
    STARTTLS_REQUIRED: "5.7.0",
    NEED_EHLO: "5.5.1",
    SYNTAX_AUTH: "5.5.4",
    AUTH_OK: "2.7.0",
    AUTH_ALREADY: "5.5.1",
    AUTH_IN_TRANSACTION: "5.5.1",
    AUTH_UNKNOWN_MECHANISM: "5.5.4",
    AUTH_CANCELLED: "5.7.0",
    AUTH_BAD_BASE64: "5.5.2",
    AUTH_BAD_MESSAGE: "5.5.2",
    AUTH_FAILED: "5.7.8",
    AUTH_TEMP_FAILURE: "4.7.0",
    AUTH_ENCRYPTION_REQUIRED: "5.7.11",
    AUTH_REQUIRED: "5.7.0",
    TOO_MANY_AUTH_FAILURES: "4.7.0",
    # Session limits, shutdown, the relay.
    TOO_MANY_ERRORS: "4.7.0",
    TOO_MANY_CONNECTIONS: "4.3.2",
    IDLE_TIMEOUT: "4.4.2",
    SHUTTING_DOWN: "4.3.2",
    RELAY_UNAVAILABLE: "4.4.1",
}
STATUS_CODES.update((text, "2.0.0") for text in HELP_SYNTAX.values())
STATUS_CODES.update((HELP_SYNTAX[verb] + PARAMS_SUFFIX, "2.0.0") for verb in ("MAIL", "RCPT"))

# CHUNKING and BINARYMIME (RFC 3030, the option chunking; see _chunking):
# their EHLO keywords, the reply to each chunk but the last (the last one is
# answered as DATA's message is), and the refusals.  RFC 3030 section 2 and
# 3 ask for 503 when DATA is mixed with BDAT or BINARYMIME.
EHLO_CHUNKING = "CHUNKING"
EHLO_BINARYMIME = "BINARYMIME"
CHUNK_RECEIVED = "250 %s octets received"
SYNTAX_BDAT = "501 Syntax: BDAT chunk-size [LAST]"
BAD_BODY_CHUNKING = "501 Error: BODY can only be one of 7BIT, 8BITMIME, BINARYMIME"
DATA_AFTER_BDAT = "503 Error: DATA not allowed after BDAT in a transaction"
BINARYMIME_NEEDS_BDAT = "503 Error: BODY=BINARYMIME requires BDAT, not DATA"
STATUS_CODES.update({
    CHUNK_RECEIVED: "2.0.0",
    SYNTAX_BDAT: "5.5.4",
    BAD_BODY_CHUNKING: "5.5.4",
    DATA_AFTER_BDAT: "5.5.1",
    BINARYMIME_NEEDS_BDAT: "5.5.1",
})
# PureProxy (see _chunked_mail): a BINARYMIME message for an upstream server
# that does not announce CHUNKING and BINARYMIME cannot be relayed without
# converting it (RFC 3030 section 3), which the relay does not do; RFC
# 3463's 5.6.3, "conversion required but prohibited", carried already.
RELAY_NO_BINARYMIME = "554 5.6.3 Conversion required but not supported: upstream server does not accept BINARYMIME"
CODED = CODED | {RELAY_NO_BINARYMIME}
STATUS_CODES.update((text, "5.5.4") for text in (DSN_DUPLICATE, DSN_BAD_RET, DSN_BAD_ENVID, DSN_BAD_NOTIFY, DSN_BAD_ORCPT))
# LMTP's (SYNTAX_LHLO has none, as SYNTAX_EHLO: RFC 2034 section 3).
STATUS_CODES.update({LMTP_SEND_LHLO: "5.5.1", LMTP_HELP_ALL: "2.0.0", LMTP_HELP_LHLO: "2.0.0", LMTP_HELP_UNKNOWN: "5.5.4"})
STATUS_CODES[SPOOL_FAILED] = "4.3.1"  # mail system full
# Admission control (see _admission; docs/admission.md): a connection refused
# by a per-address limit, in place of the greeting, and AUTH refused while an
# address has used up its failures.  They carry their RFC 3463 code (X.7.0:
# a security or policy status) with enhanced_status_codes or without, as the
# feature is new and its clients read the reason either way; AUTH's is RFC
# 4954 section 6's "454 4.7.0" (temporary: the client may try again later).
TOO_MANY_CONNECTIONS_PER_IP = "421 4.7.0 Too many connections from your address, try again later"
TOO_MANY_CONNECTIONS_RATE = "421 4.7.0 Too many connections from your address in too short a time, try again later"
AUTH_THROTTLED = "454 4.7.0 Too many failed authentications from your address, try again later"
CODED = CODED | frozenset((TOO_MANY_CONNECTIONS_PER_IP, TOO_MANY_CONNECTIONS_RATE, AUTH_THROTTLED))
# The mail catcher's chaos rules (_catcher_chaos; docs/catcher-ops.md): the
# text of each code a rule may answer when the rule gives none, with its RFC
# 3463 code (sent only with enhanced_status_codes).  RFC 5321 4.2.2's
# wording where it has the code; a code not here gets CHAOS_DEFAULT.
CHAOS_TEXTS: Dict[int, Tuple[str, str]] = {
    421: ("4.3.2", "Service not available, closing transmission channel"),
    450: ("4.2.0", "Requested mail action not taken: mailbox unavailable"),
    451: ("4.3.0", "Requested action aborted: local error in processing"),
    452: ("4.3.1", "Requested action not taken: insufficient system storage"),
    454: ("4.7.0", "Temporary authentication failure"),
    550: ("5.1.1", "Requested action not taken: mailbox unavailable"),
    551: ("5.1.6", "User not local"),
    552: ("5.3.4", "Requested mail action aborted: exceeded storage allocation"),
    553: ("5.1.3", "Requested action not taken: mailbox name not allowed"),
    554: ("5.0.0", "Transaction failed"),
}
CHAOS_DEFAULT = "Failure injected by a chaos rule"
# Where one text answers several commands, the code by command (the verb of
# the session's last command line) when it is not STATUS_CODES' one.
STATUS_CODES_BY_COMMAND: Dict[Tuple[str, str], str] = {
    ("MAIL", OK): "2.1.0",  # X.1.0: about the sender
    ("RCPT", OK): "2.1.5",  # X.1.5: destination address valid
    ("AUTH", LINE_TOO_LONG): "5.5.6",  # RFC 4954 section 4
}


def with_status_code(text: str, code: str) -> str:
    """The reply *text* with the enhanced status *code* after the basic
    code of each of its lines (RFC 2034 section 3)."""
    return "\r\n".join(line[:4] + code + " " + line[4:] for line in text.split("\r\n"))


# What enhanced() reads: the texts above with their code, made once.
ENHANCED: Dict[str, str] = {text: with_status_code(text, code) for text, code in STATUS_CODES.items()}
ENHANCED_BY_COMMAND: Dict[Tuple[str, str], str] = {
    key: with_status_code(key[1], code) for key, code in STATUS_CODES_BY_COMMAND.items()
}
# The texts with a %s, as (before it, after it, code), by their first four
# characters (``"421 "``): their formatted replies.
_FORMATTED: Dict[str, List[Tuple[str, str, str]]] = {}
for _text, _code in STATUS_CODES.items():
    if "%s" in _text:
        _before, _, _after = _text.partition("%s")
        _FORMATTED.setdefault(_text[:4], []).append((_before, _after, _code))
del _text, _code, _before, _after


def enhanced(text: str, command: Optional[str] = None) -> str:
    """*text* as sent with ENHANCEDSTATUSCODES, when it is a reply of
    STATUS_CODES (fixed, or formatted from one with ``%s``) answering
    *command*; any other text unchanged."""
    found = ENHANCED_BY_COMMAND.get((command, text)) if command else None
    if found is None:
        found = ENHANCED.get(text)
    if found is not None:
        return found
    for before, after, code in _FORMATTED.get(text[:4], ()):
        if text.startswith(before) and text.endswith(after) and len(text) >= len(before) + len(after):
            return with_status_code(text, code)
    return text


# The fixed replies (no %-placeholder) as sent on the wire: push() looks a
# reply up here before encoding it.  They are ASCII, so the bytes are the
# same whether the session uses SMTPUTF8 or not.  Their enhanced forms are
# left out on purpose: more keys would change how this dict is probed for
# every reply of the default path; with enhanced_status_codes on, push()
# encodes the reply instead.
WIRE = {
    text: (text + "\r\n").encode("ascii")
    for text in list(globals().values())
    if isinstance(text, str) and text[:3].isdigit() and "%" not in text
}
