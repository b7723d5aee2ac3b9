"""``python -m smtpd_compat``: smtpd's command line, on this package.

The options and defaults are smtpd's (``-n -V -c -s -u -d -h``, local
address ``localhost:8025``, remote address ``localhost:25``).  Errors are
reported as one line on stderr with a non-zero exit status, never a
traceback; Ctrl-C and SIGTERM end the server with status 0, also while it is
still being built.  A feature the platform lacks (switching to ``nobody``
where there is no ``pwd``) is such an error; where there is no SIGTERM the
server runs without handling it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from typing import Any, Callable, Dict, List, NoReturn, Optional, Tuple

from ._platform import NotAvailable, require

PROG = "smtpd_compat"


class UsageError(Exception):
    """A bad command line: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; later features add their options here."""
    from ._limits import DEFAULTS

    p = _Parser(prog="python -m smtpd_compat", add_help=False)
    p.add_argument("-n", "--nosetuid", dest="setuid", action="store_false", default=True,
                   help="do not switch to the user 'nobody' (needed unless run as root)")
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    p.add_argument("-c", "--class", dest="classname", default="PureProxy", metavar="CLASS",
                   help="server class: DebuggingServer, PureProxy (default) or a dotted path")
    p.add_argument("-s", "--size", dest="size_limit", metavar="LIMIT", type=_size,
                   help="largest message accepted, in bytes (default 33554432)")
    p.add_argument("-u", "--smtputf8", dest="enable_SMTPUTF8", action="store_true",
                   help="enable the SMTPUTF8 extension")
    p.add_argument("-d", "--debug", action="store_true", help="print protocol debugging to stderr")
    p.add_argument("--maildir", metavar="DIR",
                   help="with -c MailboxServer: deliver to this Maildir (created when missing or empty)")
    p.add_argument("--mbox", metavar="FILE",
                   help="with -c MailboxServer: deliver to this mbox file (created when missing)")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: offer STARTTLS with it")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key (when not in --tls-cert)")
    p.add_argument("--smtps", action="store_true", help="implicit TLS (SMTPS) instead of STARTTLS")
    p.add_argument("--require-starttls", action="store_true", help="refuse MAIL until STARTTLS")
    p.add_argument("--auth-file", metavar="FILE",
                   help="offer AUTH (over TLS) for the user:password lines of FILE (mode 600)")
    p.add_argument("--auth-required", action="store_true", help="refuse MAIL until AUTH")
    p.add_argument("--relay-tls", choices=("starttls", "smtps"),
                   help="PureProxy: reach the remote server over STARTTLS or SMTPS")
    p.add_argument("--relay-cafile", metavar="FILE",
                   help="PureProxy: CA certificates to verify the remote server (default: the system's)")
    p.add_argument("--relay-auth-file", metavar="FILE",
                   help="PureProxy: one user:password line (mode 600) to authenticate upstream")
    # Session limits (docs/hardening.md).  Left out of the namespace unless
    # given (SUPPRESS), so that only the flags given reach the server class.
    p.add_argument("--command-timeout", type=_seconds, metavar="SECONDS", default=argparse.SUPPRESS,
                   help="close a session idle this long while a command is awaited, "
                        "or 'none' (default %s)" % _show(DEFAULTS["command_timeout"]))
    p.add_argument("--data-timeout", type=_seconds, metavar="SECONDS", default=argparse.SUPPRESS,
                   help="the same while a message is received, or 'none' (default %s)"
                        % _show(DEFAULTS["data_timeout"]))
    p.add_argument("--max-connections", type=_count, metavar="N", default=argparse.SUPPRESS,
                   help="sessions at once; a connection beyond them is answered 421, "
                        "or 'none' (default %s)"
                        % _show(DEFAULTS["max_connections"]))
    p.add_argument("--max-errors", type=_count, metavar="N", default=argparse.SUPPRESS,
                   help="erroneous commands a session may send; the next is answered 421 "
                        "and the session closed, or 'none' (default %s)"
                        % _show(DEFAULTS["max_errors"]))
    p.add_argument("--max-output", type=_count, metavar="BYTES", default=argparse.SUPPRESS,
                   help="stop reading a client with more than BYTES of unread replies, "
                        "or 'none' (default %s)" % _show(DEFAULTS["max_output"]))
    p.add_argument("--max-recipients", type=_count, metavar="N", default=argparse.SUPPRESS,
                   help="recipients one message may have; a RCPT beyond them is answered 452, "
                        "or 'none' (default %s)" % _show(DEFAULTS["max_recipients"]))
    p.add_argument("--reply-timeout", type=_seconds, metavar="SECONDS", default=argparse.SUPPRESS,
                   help="answer 451 if process_message's deferred reply takes longer, "
                        "or 'none' (default %s)" % _show(DEFAULTS["reply_timeout"]))
    p.add_argument("-h", "--help", action="store_true", help="print this help and exit")
    p.add_argument("localspec", nargs="?", default="localhost:8025", metavar="localhost:localport")
    p.add_argument("remotespec", nargs="?", default="localhost:25", metavar="remotehost:remoteport")
    return p


def _size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("invalid size: %r" % text) from None
    if value < 0:
        raise argparse.ArgumentTypeError("invalid size: %r" % text)
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
    from ._limits import timeout_in_range

    return _limit(text, float, timeout_in_range, "number of seconds", "a positive number")


def _count(text: str) -> Optional[int]:
    """A limit: a non-negative integer, or ``none``."""
    from ._limits import count_in_range

    return _limit(text, int, count_in_range, "number", "a non-negative integer")


def _show(default: Any) -> str:
    return "none" if default is None else str(default)


def limit_options(ns: argparse.Namespace) -> Dict[str, Any]:
    """The session-limit options given on the command line (only those, so
    a class without ``**options`` is built as before when none is given)."""
    from ._limits import DEFAULTS

    return {name: getattr(ns, name) for name in DEFAULTS if hasattr(ns, name)}


def split_hostport(spec: str, what: str) -> Tuple[str, int]:
    """Split ``host:port`` (``[::1]:25`` for IPv6) into ``(host, port)``."""
    host, sep, port = spec.rpartition(":")
    if not sep:
        raise UsageError("bad %s address %r: expected host:port" % (what, spec))
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port)
    except ValueError:
        raise UsageError("bad %s port in %r" % (what, spec)) from None
    if not 0 <= number <= 65535:
        raise UsageError("bad %s port in %r: must be 0-65535" % (what, spec))
    return host, number


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    ns = build_parser().parse_args(argv)
    ns.localhost, ns.localport = split_hostport(ns.localspec, "local")
    ns.remotehost, ns.remoteport = split_hostport(ns.remotespec, "remote")
    return ns


def parse_smtpd_options(argv: List[str]) -> Any:
    """smtpd.parseargs(): an ``smtpd.Options`` filled from *argv*."""
    from . import smtpd

    try:
        ns = parse_args(argv)
    except UsageError as err:
        smtpd.usage(1, err)
        raise  # not reached: usage() exits
    if ns.help:
        smtpd.usage(0)
    if ns.version:
        print(smtpd.__version__)
        sys.exit(0)
    if ns.debug:
        smtpd.DEBUGSTREAM = sys.stderr
    options = smtpd.Options()
    for name in ("setuid", "classname", "size_limit", "enable_SMTPUTF8",
                 "localhost", "localport", "remotehost", "remoteport"):
        setattr(options, name, getattr(ns, name))
    return options


def resolve_class(name: str) -> Any:
    """A server class by name: one of this package's, or ``module.Class``."""
    if "." in name:
        module_name, _, attr = name.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UsageError("cannot import %s for --class %s: %s" % (module_name, name, err)) from None
        try:
            return getattr(module, attr)
        except AttributeError:
            raise UsageError("module %s has no class %s" % (module_name, attr)) from None
    import smtpd_compat
    from . import smtpd

    for namespace in (smtpd_compat, smtpd):
        cls = getattr(namespace, name, None)
        if isinstance(cls, type):
            return cls
    raise UsageError("unknown server class %r (use DebuggingServer, PureProxy or a dotted path)" % name)


def _become_nobody() -> None:
    require("setuid", hint="run with -n")
    import pwd

    nobody = pwd.getpwnam("nobody")[2]
    try:
        os.setuid(nobody)
    except PermissionError:
        raise UsageError('Cannot setuid "nobody"; try running with -n option.') from None


class _Stop(BaseException):
    """Raised by the SIGTERM handler to leave a loop that cannot shut down
    gracefully, or the building of the server.  Not an Exception, like
    KeyboardInterrupt: a server class's ``except Exception`` must not
    swallow it."""


class _StopOnce:
    """A SIGTERM handler that raises _Stop the first time only: a second
    SIGTERM, arriving while the first one is being handled (closing the
    server), must not raise again from inside that clean-up."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.raised:
            self.raised = True
            raise _Stop()


def _on_sigterm(handler: Any) -> Callable[[], None]:
    """Install *handler* for SIGTERM; return what puts the previous one back.

    Nothing is installed where there is no SIGTERM to handle: the server
    then stops on Ctrl-C only.
    """
    if not hasattr(signal, "SIGTERM"):
        return _nothing
    previous = signal.signal(signal.SIGTERM, handler)
    if previous is None:  # set outside Python, which signal() cannot put back
        previous = signal.SIG_DFL

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


def _nothing() -> None:
    pass


def make_server(ns: argparse.Namespace) -> Any:
    """Build the server the options ask for; UsageError on failure."""
    from . import _tls, smtpd
    from .servers import MailboxPathError

    cls = resolve_class(ns.classname)
    size = smtpd.DATA_SIZE_DEFAULT if ns.size_limit is None else ns.size_limit
    # Mailbox, security and limit options only reach the class when given,
    # so that other classes are constructed exactly as before.
    mailbox_options = {name: getattr(ns, name) for name in ("maildir", "mbox")
                       if getattr(ns, name, None) is not None}
    try:
        security_options = _tls.options_from_args(ns)
    except ValueError as err:
        raise UsageError(str(err)) from None
    try:
        return cls((ns.localhost, ns.localport), (ns.remotehost, ns.remoteport),
                   size, enable_SMTPUTF8=ns.enable_SMTPUTF8, **mailbox_options, **security_options,
                   **limit_options(ns))
    except MailboxPathError as err:
        # Named as on the command line; checked before the socket is bound.
        raise UsageError("--%s %s: %s" % (err.option, err.path, err.reason)) from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError("cannot listen on %s: %s" % (ns.localspec, reason)) from None
    except (TypeError, ValueError) as err:
        raise UsageError("cannot start %s: %s" % (ns.classname, err)) from None


def run(server: Any) -> None:
    """Serve until Ctrl-C (immediate stop) or SIGTERM (graceful shutdown:
    messages being received are finished, other sessions get 421)."""
    from . import _serving, asyncore
    from .smtpd import SMTPServer

    # The package's own serving loop for its servers (not a serve_forever()
    # method, which a class written for smtpd may define for itself).
    graceful = isinstance(server, SMTPServer)

    handler = _serving.sigterm_handler(server) if graceful else _StopOnce()
    restore = _on_sigterm(handler)
    try:
        if graceful:
            _serving.serve_forever(server)
        else:
            asyncore.loop(map=server._map)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        restore()
        asyncore.close_all(map=server._map, ignore_all=True)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m smtpd_compat``; returns the exit status."""
    from . import smtpd

    try:
        ns = parse_args(argv)
    except UsageError as err:
        print("%s: error: %s" % (PROG, err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    if ns.help:
        # smtpd's usage text, then every option this command takes
        # (TLS, AUTH, mailbox and limit options are not in smtpd's text).
        print(smtpd.__doc__ % {"program": "python -m smtpd_compat", "__version__": smtpd.__version__})
        print(build_parser().format_help())
        return 0
    if ns.version:
        print(smtpd.__version__)
        return 0
    if ns.debug:
        smtpd.DEBUGSTREAM = sys.stderr
    # SIGTERM ends the program cleanly from here on: while the server is
    # built (a class may take its time: load data, connect somewhere) this
    # handler interrupts it; run() then installs the graceful one.
    restore = _on_sigterm(_StopOnce())
    server = None
    try:
        try:
            server = make_server(ns)
            if ns.setuid:
                _become_nobody()
        except (UsageError, NotAvailable) as err:
            if server is not None:
                server.close()
            print("%s: error: %s" % (PROG, err), file=sys.stderr)
            return 2
        run(server)
    except (KeyboardInterrupt, _Stop):
        if server is not None:
            server.close()  # stopped before run() (which closes all it served)
    finally:
        restore()
    return 0
