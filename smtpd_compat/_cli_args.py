"""The command line's vocabulary: the argument parser of the server command,
its help texts, the converters that check each flag's value, and
:func:`split_hostport`.

Parsing only: what the flags mean to a server is decided in ``_cli``, the
``hash-password`` command lives in ``_cli_hash_password``.  This module
imports nothing that serves (``smtpd``, ``servers``), so that
``smtpd.parseargs()`` parses with it too, without an import cycle.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Callable, List, NoReturn, Optional, Tuple

from ._catcher_chaos import FLAG_SYNTAX, parse_rule
from ._limits import DEFAULTS, count_in_range, timeout_in_range

PROG = "smtpd_compat"
DEFAULT_CLASS = "PureProxy"  # smtpd's; announced at start-up when not chosen with -c
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
WORKERS_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(worker)s]: %(message)s"  # --workers N
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
HASH_PASSWORD = "hash-password"


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def print_error(message: Any, status: int = 2) -> int:
    """Report *message* as the one line on stderr; return *status*."""
    print("%s: error: %s" % (PROG, message), file=sys.stderr)
    return status


def command_name() -> str:
    """How the user ran us: the console script or ``python -m``."""
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "smtpd-compat" if script.startswith("smtpd-compat") else "python -m smtpd_compat"


DESCRIPTION = """\
Run an SMTP server: CPython's `python -m smtpd` (removed in Python 3.12),
with the same options and defaults, plus TLS, AUTH, limits and mailboxes."""

EPILOG = """\
examples:
  %(cmd)s -n -c DebuggingServer localhost:8025
      print every message sent to port 8025 (add --readable to decode them)
  %(cmd)s -n -c MailboxServer --maildir ./mail :8025
      a local mail catcher: every message into the Maildir ./mail
  %(cmd)s -n -c PureProxy 127.0.0.1:2525 mail.internal:25
      relay every message to mail.internal
  %(cmd)s -n -c mypackage.handlers.Archiver -v 0.0.0.0:25
      your own smtpd.SMTPServer subclass, logging each session and message
  %(cmd)s -n -c DebuggingServer --tls-cert cert.pem --tls-key key.pem \\
      --auth-file users --auth-required localhost:8587
      STARTTLS, and AUTH against the user:password lines of ./users

other commands:
  %(cmd)s hash-password USER
      ask for a password and print a USER:hash line for --auth-file

Without -c the class is PureProxy, as in smtpd: it relays to
remotehost:remoteport (localhost:25 unless given).  SIGTERM stops
gracefully, Ctrl-C at once; both exit with status 0.  Errors: one line on
stderr, exit status 2.  Documentation: docs/cli.md."""

CLASSES = """\
CLASS is one of
  DebuggingServer  print every message on stdout, as smtpd did
  PureProxy        relay every message to remotehost:remoteport (default)
  RecordingServer  keep every message in memory (a sink that never fails)
  MailboxServer    deliver every message to a Maildir or an mbox file
  CatcherServer    keep every message and show it on a web page and an HTTP API
or a dotted path to a class of your own: package.module.Class"""



def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the server command."""
    command = command_name()
    p = Parser(prog=command, add_help=False, description=DESCRIPTION,
               usage="%(prog)s [options] [localhost:localport [remotehost:remoteport]]\n"
                     "       %(prog)s hash-password [USER]",
               epilog=EPILOG % {"cmd": command}, formatter_class=argparse.RawDescriptionHelpFormatter)
    # One function per group, in the order the help shows them.
    _add_smtpd_flags(p)
    _add_class_flags(p)
    _add_mailbox_flags(p)
    _add_catcher_flags(p)
    _add_catcher_ops_flags(p)
    _add_relay_flags(p)
    _add_security_flags(p, command)
    _add_extension_flags(p)
    _add_limit_flags(p)
    _add_output_flags(p)
    _add_proxy_flags(p)
    _add_lmtp_flags(p)
    _add_spool_flags(p)
    _add_process_flags(p)
    _add_admission_flags(p)
    return p


def _add_smtpd_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("smtpd's options")
    g.add_argument("localspec", nargs="?", default="localhost:8025", metavar="localhost:localport",
                   help="where to listen (default localhost:8025); also :PORT, [::1]:PORT")
    g.add_argument("remotespec", nargs="?", default="localhost:25", metavar="remotehost:remoteport",
                   help="where PureProxy relays (default localhost:25)")
    g.add_argument("-n", "--nosetuid", dest="setuid", action="store_false", default=True,
                   help="do not switch to the user 'nobody' (needed unless run as root)")
    g.add_argument("-s", "--size", dest="size_limit", metavar="LIMIT", type=_size,
                   help="largest message accepted, in bytes (default 33554432)")
    g.add_argument("-u", "--smtputf8", dest="enable_SMTPUTF8", action="store_true",
                   help="enable the SMTPUTF8 extension")
    g.add_argument("-d", "--debug", action="store_true",
                   help="print smtpd's protocol debugging output (DEBUGSTREAM) on stderr")
    g.add_argument("-V", dest="smtpd_version", action="store_true",
                   help="print smtpd's version (Python SMTP proxy version 0.3) and exit; "
                        "--version prints smtpd_compat's")
    g.add_argument("-h", "--help", action="store_true", help="print this help and exit")


def _add_class_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server classes", CLASSES)
    g.add_argument("-c", "--class", dest="classname", default=None, metavar="CLASS",
                   help="the server class (default %s)" % DEFAULT_CLASS)
    g.add_argument("--readable", action="store_true",
                   help="DebuggingServer: print messages decoded (headers, text parts) "
                        "instead of as smtpd's bytes reprs")


def _add_mailbox_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("mailbox (-c MailboxServer)")
    g.add_argument("--maildir", metavar="DIR",
                   help="deliver to this Maildir (created when missing or empty); "
                        "-c CatcherServer keeps its messages there")
    g.add_argument("--mbox", metavar="FILE", help="deliver to this mbox file (created when missing)")


def _add_catcher_flags(p: argparse.ArgumentParser) -> None:
    # What they mean is _cli_catcher's (docs/catcher.md).
    g = p.add_argument_group("mail catcher (-c CatcherServer; docs/catcher.md)")
    g.add_argument("--web", metavar="HOST:PORT",
                   help="serve the web page and HTTP API here (default 127.0.0.1:8026; [::1]:8026 for IPv6)")
    g.add_argument("--max-messages", metavar="N", type=_max_messages,
                   help="keep at most N messages, dropping the oldest (default 1000 in memory, "
                        "no bound with --maildir; 0: no bound)")
    g.add_argument("--web-allow-remote", action="store_true",
                   help="allow --web on an address other than loopback (use --web-auth-file with it)")
    g.add_argument("--web-auth-file", metavar="FILE",
                   help="require HTTP basic authentication for the page and API, against the "
                        "user:password lines of FILE (--auth-file's format; without it, --auth-file's users)")


def _add_catcher_ops_flags(p: argparse.ArgumentParser) -> None:
    # What they mean is _cli_catcher_ops's (docs/catcher-ops.md).
    g = p.add_argument_group("mail catcher: chaos and release (-c CatcherServer; docs/catcher-ops.md)")
    g.add_argument("--chaos", metavar="RULE", action="append", type=_chaos_rule,
                   help="fail on purpose: %s, e.g. rcpt:550:50 or 'data:451:100:*@flaky.example'; "
                        "STAGE is connect, mail, rcpt or data; repeatable" % FLAG_SYNTAX)
    g.add_argument("--chaos-seed", metavar="N", type=int,
                   help="seed the chaos rules' draws, so that a run repeats")
    g.add_argument("--release-to", metavar="HOST:PORT",
                   help="where POST /api/v1/message/ID/release sends a message (through PureProxy's relay, "
                        "with --relay-tls, --relay-cafile and --relay-auth-file)")


def _chaos_rule(text: str) -> str:
    try:
        parse_rule(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _max_messages(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("invalid number: %r (a whole number, 0 for no bound)" % text)
    return value


def _add_relay_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("relay (-c PureProxy)")
    g.add_argument("--relay-tls", choices=("starttls", "smtps"),
                   help="reach the remote server over STARTTLS or SMTPS (certificate verified)")
    g.add_argument("--relay-cafile", metavar="FILE",
                   help="CA certificates to verify the remote server with (default: the system's)")
    g.add_argument("--relay-auth-file", metavar="FILE",
                   help="one user:password line (mode 600) to authenticate upstream with")


def _add_security_flags(p: argparse.ArgumentParser, command: str) -> None:
    g = p.add_argument_group("TLS and AUTH (docs/security.md)")
    g.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: offer STARTTLS with it")
    g.add_argument("--tls-key", metavar="FILE", help="PEM private key (when not in --tls-cert)")
    g.add_argument("--smtps", action="store_true", help="implicit TLS (SMTPS) instead of STARTTLS")
    g.add_argument("--require-starttls", action="store_true", help="refuse MAIL until STARTTLS")
    g.add_argument("--auth-file", metavar="FILE",
                   help="offer AUTH (over TLS) to the user:password lines of FILE (mode 600; "
                        "make hashed lines with: %s hash-password USER)" % command)
    g.add_argument("--auth-required", action="store_true", help="refuse MAIL until AUTH")


def _add_extension_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ESMTP extensions (docs/extensions.md; off by default, as in smtpd)")
    g.add_argument("--pipelining", action="store_true",
                   help="announce PIPELINING (RFC 2920) in the EHLO reply")
    g.add_argument("--enhanced-status-codes", action="store_true",
                   help="announce ENHANCEDSTATUSCODES (RFC 2034) and give the server's replies "
                        "their RFC 3463 code (250 2.1.0 OK)")
    g.add_argument("--requiretls", action="store_true",
                   help="announce REQUIRETLS (RFC 8689) over TLS (needs --tls-cert); PureProxy then "
                        "relays such messages only over TLS to a server announcing it")
    g.add_argument("--add-received-header", action="store_true",
                   help="put a Received: header (RFC 5321 4.4) at the top of each message")
    g.add_argument("--chunking", action="store_true",
                   help="announce CHUNKING and BINARYMIME (RFC 3030) and take BDAT")
    g.add_argument("--dsn", action="store_true",
                   help="announce DSN (RFC 3461) and accept RET, ENVID, NOTIFY and ORCPT; PureProxy "
                        "relays them to a server announcing DSN")


def _add_proxy_flags(p: argparse.ArgumentParser) -> None:
    # Behind HAProxy and the like (docs/proxy-protocol.md); the values are
    # checked with the option (_proxy_io), and need --proxy-protocol.
    g = p.add_argument_group("behind a proxy (docs/proxy-protocol.md)")
    g.add_argument("--proxy-protocol", action="store_true",
                   help="read a PROXY protocol header (HAProxy's v1 or v2) at the start of each connection: "
                        "the client it names is the session's peer")
    g.add_argument("--proxy-trusted", metavar="CIDR,...", type=_networks, default=argparse.SUPPRESS,
                   help="the networks the proxies connect from; any other connection is closed "
                        "(default 127.0.0.0/8,::1)")
    g.add_argument("--proxy-timeout", metavar="SECONDS", type=_proxy_seconds, default=argparse.SUPPRESS,
                   help="close a connection whose header is not complete within SECONDS (default 5)")


def _networks(text: str) -> Tuple[str, ...]:
    networks = tuple(item.strip() for item in text.split(",") if item.strip())
    if not networks:
        raise argparse.ArgumentTypeError("expected networks such as 10.0.0.0/8,::1, not %r" % text)
    return networks


def _proxy_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError("invalid number of seconds: %r (a positive number)" % text)
    return value


def _add_spool_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("big messages (docs/big-messages.md)")
    g.add_argument("--spool-threshold", metavar="BYTES", type=_size,
                   help="keep at most BYTES of a message in memory, the rest in a temporary file "
                        "(MailboxServer and PureProxy then never hold the message whole)")
    g.add_argument("--spool-dir", metavar="DIR", help="where those temporary files go (default: the system's)")


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    # Session limits (docs/hardening.md).  Left out of the namespace unless
    # given (SUPPRESS), so that only the flags given reach the server class.
    g = p.add_argument_group("limits (docs/hardening.md; 'none' for no limit)")
    for name, kind, metavar, text in LIMIT_FLAGS:
        g.add_argument("--" + name.replace("_", "-"), type=kind, metavar=metavar, default=argparse.SUPPRESS,
                       help="%s (default %s)" % (text, _show(DEFAULTS[name])))


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output and logging")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no start-up line; log errors only")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="log each session and message (-v: INFO), and every command and reply (-vv: DEBUG)")
    g.add_argument("--log-level", type=_log_level, metavar="LEVEL",
                   help="log at this level: %s (overrides -v and -q; default WARNING)" % ", ".join(LOG_LEVELS))
    g.add_argument("--log-format", type=_log_format, metavar="FORMAT", default=LOG_FORMAT,
                   help="a logging format string (default %r)" % LOG_FORMAT.replace("%", "%%"))
    g.add_argument("--version", action="store_true",
                   help="print smtpd_compat's version and exit")


def _add_lmtp_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("LMTP and Unix sockets (docs/lmtp.md)")
    g.add_argument("--lmtp", action="store_true",
                   help="speak LMTP (RFC 2033) instead of SMTP: LHLO, one reply per recipient; "
                        "with any class (-c MailboxServer --lmtp: a local delivery agent)")
    g.add_argument("--unix", metavar="PATH",
                   help="listen on this Unix socket instead of localhost:localport "
                        "(a stale socket file there is replaced; removed on exit)")
    g.add_argument("--unix-mode", type=_mode, metavar="MODE",
                   help="the Unix socket's permissions, in octal (default 600: its owner only; "
                        "660 for a group such as postfix)")


# -- the flags' values -------------------------------------------------------------------
def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid size: %r" % text) from None
    if value < 0:
        raise argparse.ArgumentTypeError("invalid size: %r" % text)
    return value


def _mode(text: str) -> int:
    """A permission mode in octal (``660``, ``0o660``)."""
    try:
        value = int(text[2:] if text.lower().startswith("0o") else text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError("invalid mode: %r (octal, such as 660)" % text)
    return value


def _is_none(text: str) -> bool:
    # As the Python options take None: the word, in any case.
    return text.strip().lower() == "none"


def _limit(text: str, convert: Callable[[str], Any], in_range: Callable[[Any], bool], what: str, expected: str) -> Any:
    # A session-limit flag's value: *convert*ed and in the range _limits
    # applies to the option, or the word "none".
    if _is_none(text):
        return None
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not in_range(value):
        raise argparse.ArgumentTypeError("invalid %s: %r (%s or 'none')" % (what, text, expected))
    return value


def _seconds(text: str) -> Optional[float]:
    """A timeout: a positive number of seconds, or ``none``."""
    value: Optional[float] = _limit(text, float, timeout_in_range, "number of seconds", "a positive number")
    return value


def _count(text: str) -> Optional[int]:
    """A limit: a non-negative integer, or ``none``."""
    value: Optional[int] = _limit(text, int, count_in_range, "number", "a non-negative integer")
    return value


def _show(default: Any) -> str:
    return "none" if default is None else str(default)


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError("invalid log level: %r (one of %s)" % (text, ", ".join(LOG_LEVELS)))
    return level


def _log_format(text: str) -> str:
    try:
        logging.Formatter(text, validate=True)
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError("invalid log format %r: %s" % (text, err)) from None
    return text


def _add_process_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("processes (docs/workers.md)")
    g.add_argument("--workers", type=_workers, metavar="N", default=None,
                   help="serve in N processes sharing the port ('auto': one per CPU; default 1, no fork)")


def _workers(text: str) -> Any:
    if text == "auto":
        return text
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= 1024:
        raise argparse.ArgumentTypeError("invalid worker count %r: expected a number from 1 to 1024 or 'auto'" % text)
    return number


# The session-limit flags: the option each sets, its value, and what it does.
LIMIT_FLAGS = (
    ("command_timeout", _seconds, "SECONDS", "close a session idle this long while a command is awaited"),
    ("data_timeout", _seconds, "SECONDS", "the same while a message is received"),
    ("max_connections", _count, "N", "sessions at once; a connection beyond them is answered 421"),
    ("max_errors", _count, "N", "erroneous commands a session may send; the next is answered 421 "
                                "and the session closed"),
    ("max_output", _count, "BYTES", "stop reading a client with more than BYTES of unread replies"),
    ("max_recipients", _count, "N", "recipients one message may have; a RCPT beyond them is answered 452"),
    ("reply_timeout", _seconds, "SECONDS", "answer 451 if process_message's deferred reply takes longer"),
)


# -- addresses and the whole command line ------------------------------------------------
def split_hostport(spec: str, what: str) -> Tuple[str, int]:
    """Split ``host:port`` (``[::1]:25`` for IPv6; ``:25`` for localhost)
    into ``(host, port)``."""
    host, sep, port = spec.rpartition(":")
    if not sep:
        raise UsageError("bad %s address %r: expected host:port" % (what, spec))
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = "localhost"  # ":8025", as aiosmtpd takes it
    try:
        number = int(port)
    except ValueError:
        raise UsageError("bad %s port in %r" % (what, spec)) from None
    if not 0 <= number <= 65535:
        raise UsageError("bad %s port in %r: must be 0-65535" % (what, spec))
    return host, number


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The server command's flags, with the addresses split
    (``localhost``, ``localport``, ``remotehost``, ``remoteport``) and
    ``default_class`` true when no ``-c`` was given; UsageError on a bad one."""
    ns = build_parser().parse_args(argv)
    ns.default_class = ns.classname is None
    if ns.default_class:
        ns.classname = DEFAULT_CLASS
    ns.localhost, ns.localport = split_hostport(ns.localspec, "local")
    ns.remotehost, ns.remoteport = split_hostport(ns.remotespec, "remote")
    return ns


def _add_admission_flags(p: argparse.ArgumentParser) -> None:
    # Per client address, counted across --workers (docs/admission.md); only
    # given flags reach the server class.
    g = p.add_argument_group("admission control, per client address (docs/admission.md)")
    g.add_argument("--max-connections-per-ip", metavar="N", type=_per_ip_count, default=None,
                   help="sessions open at once from one address; one more is answered 421 4.7.0 and closed")
    g.add_argument("--connection-rate-per-ip", metavar="N/SECONDS", type=_rate("connection-rate-per-ip"), default=None,
                   help="connections from one address: N at once, then N per SECONDS (token bucket); "
                        "beyond that, 421 4.7.0")
    g.add_argument("--auth-failures-per-ip", metavar="K/SECONDS", type=_rate("auth-failures-per-ip"), default=None,
                   help="failed AUTH exchanges from one address, K then K per SECONDS; "
                        "beyond that, AUTH is answered 454 4.7.0")


def _per_ip_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("invalid number: %r (a whole number from 1)" % text)
    return value


def _rate(flag: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        from ._admission import parse_rate  # (imports nothing that serves)

        try:
            parse_rate(text, flag)
        except ValueError:
            raise argparse.ArgumentTypeError("invalid rate: %r (N/SECONDS, such as 10/60)" % text) from None
        return text

    return check
