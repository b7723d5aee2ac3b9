"""``python -m smtpd_compat hash-password [USER]``: ask for a password and
print a line for ``--auth-file`` (``USER:pbkdf2_sha256$...``).

The command's own parser, how the password is read (twice without echo on a
terminal, else the first line of stdin) and its exit statuses: 1 for a
password missing, empty or typed differently twice, 2 for a bad command
line, 130 for Ctrl-C.  The hash itself is ``_auth``'s.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import List, Optional

from ._auth import HASH_ITERATIONS, hash_password
from ._cli_args import HASH_PASSWORD, Parser, UsageError, command_name, print_error


def _user_name(text: str) -> str:
    if not text.strip() or ":" in text or any(c in text for c in "\r\n"):
        raise argparse.ArgumentTypeError("invalid user name %r: not empty, no ':' and no line break" % text)
    return text.strip()


def _iterations(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("invalid number of iterations: %r" % text)
    return value


def hash_password_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hash-password``."""
    p = Parser(
        prog="%s %s" % (command_name(), HASH_PASSWORD), add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Ask for a password and print a line for --auth-file: USER:pbkdf2_sha256$...\n"
                    "On a terminal the password is asked twice, without echo; otherwise\n"
                    "it is the first line of standard input.",
        epilog="example:\n  %(prog)s alice >> users && chmod 600 users",
    )
    p.add_argument("user", nargs="?", type=_user_name, metavar="USER",
                   help="the login; without it only the hash is printed")
    p.add_argument("--iterations", type=_iterations, default=HASH_ITERATIONS, metavar="N",
                   help="PBKDF2-SHA256 rounds (default %d, OWASP's recommendation; "
                        "each login attempt costs that many)" % HASH_ITERATIONS)
    p.add_argument("-h", "--help", action="store_true", help="print this help and exit")
    return p


def _read_password(user: Optional[str]) -> str:
    """The password: asked twice without echo on a terminal, else the
    first line of stdin.  UsageError-free: ValueError with the reason."""
    if sys.stdin is not None and sys.stdin.isatty():
        prompt = "password for %s: " % user if user else "password: "
        first = getpass.getpass(prompt)
        if first != getpass.getpass("again: "):
            raise ValueError("the passwords differ")
        return first
    line = sys.stdin.readline() if sys.stdin is not None else ""
    if not line:
        raise EOFError()
    return line.rstrip("\r\n")


def hash_password_main(argv: List[str]) -> int:
    """``python -m smtpd_compat hash-password [USER]``; returns the exit status."""
    parser = hash_password_parser()
    try:
        ns = parser.parse_args(argv)
    except UsageError as err:
        return print_error(err)
    if ns.help:
        print(parser.format_help(), end="")
        return 0
    try:
        password = _read_password(ns.user)
    except EOFError:
        if sys.stdin is not None and sys.stdin.isatty():
            print(file=sys.stderr)  # the prompt's line was not ended
        return print_error("no password given (end of input)", 1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except ValueError as err:
        return print_error(err, 1)
    if not password:
        return print_error("empty password", 1)
    hashed = hash_password(password, ns.iterations)
    print("%s:%s" % (ns.user, hashed) if ns.user else hashed)
    return 0
