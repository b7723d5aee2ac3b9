"""``python -m smtpd_compat``: smtpd's command line, on this package.

The options and defaults are smtpd's (``-n -V -c -s -u -d -h``, local
address ``localhost:8025``, remote address ``localhost:25``); the rest
(mailbox, relay, TLS/AUTH, limits, logging) is this package's.  The parser
and its help are ``_cli_args``'s and the ``hash-password`` command is
``_cli_hash_password``'s; this module owns what the flags mean: every flag
is translated into a server option here, in one place, and the program's
life (the server built, ``nobody``, the start-up line, logging, signals,
the loop) is run from here.  Errors are reported as one line on stderr
with exit status 2, never a traceback, and name the flag and the file at
fault; Ctrl-C and SIGTERM end the server with status 0, also while it is
still being built.  A feature the platform lacks (switching to ``nobody``
where there is no ``pwd``) is such an error; where there is no SIGTERM the
server runs without handling it.

Once the server listens, one line on stderr says what runs where (``-q``
leaves it out); ``-v``/``-vv``/``--log-level`` show the ``smtpd_compat``
log.  ``python -m smtpd_compat hash-password USER`` prints an
``--auth-file`` line.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import signal
import ssl
import sys
from typing import Any, Callable, Dict, List, NoReturn, Optional

import smtpd_compat

from . import _cli_catcher, _cli_catcher_ops, _options, _proxy_io, _serving, _workers, asyncore, smtpd
from ._auth import AuthFileError, PasswordFile, load_credentials
from ._cli_args import HASH_PASSWORD, LOG_FORMAT, PROG, WORKERS_LOG_FORMAT, UsageError, build_parser, parse_args, print_error
from ._cli_hash_password import hash_password_main
from ._cli_startup import package_version, startup_line
from ._limits import DEFAULTS
from ._platform import NotAvailable, require
from .lmtp import LMTPServer
from .servers import MailboxPathError, MailboxServer, ReadableDebuggingServer
from .smtpd import DATA_SIZE_DEFAULT, DebuggingServer, PureProxy, SMTPServer


# -- from flags to a server ----------------------------------------------------------------
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
    for namespace in (smtpd_compat, smtpd):
        cls = getattr(namespace, name, None)
        if isinstance(cls, type):
            return cls
    raise UsageError("unknown server class %r (use DebuggingServer, PureProxy, RecordingServer, "
                     "MailboxServer, CatcherServer or a dotted path package.module.Class)" % name)


# -- which flags apply to which class -----------------------------------------------
def _takes_keyword(cls: Any, name: str) -> bool:
    """Whether *cls*'s constructor names the keyword *name* (MailboxServer's
    maildir=, or a class of one's own that takes it)."""
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def _is_subclass(cls: Any, base: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, base)


def check_applicable(ns: argparse.Namespace, cls: Any) -> None:
    """A flag meant for another class is an error, not silently ignored."""
    name = getattr(cls, "__name__", ns.classname)
    for option in ("maildir", "mbox"):
        if getattr(ns, option) is not None and not _takes_keyword(cls, option):
            raise UsageError("--%s applies to -c MailboxServer, not to %s" % (option, name))
    if _is_subclass(cls, MailboxServer) and (ns.maildir is None) == (ns.mbox is None):
        # Said here with the flags' names; the class names its keywords.
        raise UsageError("-c %s needs %s" % (name, "--maildir DIR or --mbox FILE" if ns.maildir is None
                                              else "--maildir or --mbox, not both"))
    for flag, given in (("--relay-tls", ns.relay_tls), ("--relay-cafile", ns.relay_cafile),
                        ("--relay-auth-file", ns.relay_auth_file)):
        if given and not _is_subclass(cls, PureProxy) and not _cli_catcher_ops.relay_flags_allowed(ns, cls):
            raise UsageError("%s applies to -c PureProxy (the class that relays), not to %s" % (flag, name))
    if ns.readable and not (cls is DebuggingServer or _is_subclass(cls, ReadableDebuggingServer)):
        raise UsageError("--readable applies to -c DebuggingServer, not to %s" % name)


# -- TLS, AUTH and relay flags ----------------------------------------------------------
class _EncryptedKey(Exception):
    """Raised by the password callback: the key needs a passphrase."""


def _ask_no_passphrase() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal, or fail with
    # a cryptic error where there is none.
    raise _EncryptedKey()


def _read_pem(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise UsageError("%s %s: %s" % (flag, path, err.strerror or err)) from None


def server_tls_context(cert: str, key: Optional[str]) -> ssl.SSLContext:
    """The server context for ``--tls-cert``/``--tls-key``.

    Each failure names the flag and the file at fault: OpenSSL reports an
    unreadable key as a problem with the certificate, and a missing key as
    ``PEM lib``.
    """
    cert_pem = _read_pem(cert, "--tls-cert")
    key_pem = _read_pem(key, "--tls-key") if key else cert_pem
    if b"CERTIFICATE-----" not in cert_pem:
        raise UsageError("--tls-cert %s: no PEM certificate in it (-----BEGIN CERTIFICATE-----)" % cert)
    if b"PRIVATE KEY-----" not in key_pem:
        if key:
            raise UsageError("--tls-key %s: no PEM private key in it (-----BEGIN PRIVATE KEY-----)" % key)
        raise UsageError("--tls-cert %s holds no private key: give it with --tls-key FILE" % cert)
    key_flag = "--tls-key %s" % key if key else "the private key in --tls-cert %s" % cert
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key, password=_ask_no_passphrase)
    except _EncryptedKey:
        raise UsageError("%s is encrypted: give the key without a passphrase "
                         "(openssl pkey -in KEY -out KEY.plain)" % key_flag) from None
    except ssl.SSLError as err:
        if getattr(err, "reason", None) == "KEY_VALUES_MISMATCH":
            raise UsageError("%s does not belong to the certificate in --tls-cert %s" % (key_flag, cert)) from None
        raise UsageError("cannot load --tls-cert %s%s: %s" % (cert, " --tls-key %s" % key if key else "", err)) from None
    except OSError as err:  # changed between the reads above and OpenSSL's
        raise UsageError("cannot load --tls-cert %s: %s" % (cert, err.strerror or err)) from None
    return context


def security_options(ns: argparse.Namespace) -> Dict[str, Any]:
    """The server options the TLS/AUTH flags ask for (only those given, so
    other classes are built exactly as before).  UsageError naming the flag
    for a certificate that does not load, an auth file readable by others,
    a flag missing its companion."""
    options = _tls_options(ns)
    options.update(_auth_options(ns))
    return options


def _tls_options(ns: argparse.Namespace) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    cert, key = ns.tls_cert, ns.tls_key
    if key and not cert:
        raise UsageError("--tls-key needs --tls-cert")
    if cert:
        context = server_tls_context(cert, key)
        options["implicit_tls_context" if ns.smtps else "tls_context"] = context
    elif ns.smtps or ns.require_starttls:
        raise UsageError("%s needs --tls-cert" % ("--smtps" if ns.smtps else "--require-starttls"))
    if ns.require_starttls and not ns.smtps:
        options["require_starttls"] = True
    return options


def _auth_options(ns: argparse.Namespace) -> Dict[str, Any]:
    options: Dict[str, Any] = {}
    if ns.auth_file:
        if not ns.tls_cert:
            raise UsageError("--auth-file needs --tls-cert: passwords are only accepted over TLS")
        try:
            options["authenticator"] = PasswordFile.load(ns.auth_file)
        except AuthFileError as err:
            raise UsageError("--auth-file: %s" % err) from None
    if ns.auth_required:
        if not ns.auth_file:
            raise UsageError("--auth-required needs --auth-file")
        options["auth_required"] = True
    return options


def relay_options(ns: argparse.Namespace) -> Dict[str, Any]:
    """The PureProxy options of the ``--relay-*`` flags (only those given)."""
    options: Dict[str, Any] = {}
    mode, cafile, auth_file = ns.relay_tls, ns.relay_cafile, ns.relay_auth_file
    if (cafile or auth_file) and not mode:
        raise UsageError("%s needs --relay-tls" % ("--relay-cafile" if cafile else "--relay-auth-file"))
    if mode:
        options["relay_tls"] = mode
    if cafile:
        try:
            options["relay_tls_context"] = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as err:
            raise UsageError("--relay-cafile %s: %s" % (cafile, getattr(err, "strerror", None) or err)) from None
    if auth_file:
        try:
            options["relay_auth"] = load_credentials(auth_file)
        except AuthFileError as err:
            raise UsageError("--relay-auth-file: %s" % err) from None
    return options


def server_options(ns: argparse.Namespace) -> Dict[str, Any]:
    """Every keyword option the flags ask for, beyond smtpd's arguments.

    Mailbox, security, relay and limit options only reach the class when
    given, so that other classes are constructed exactly as before.
    """
    options = {name: getattr(ns, name) for name in ("maildir", "mbox") if getattr(ns, name) is not None}
    options.update(security_options(ns))
    options.update(relay_options(ns))
    options.update(limit_options(ns))
    options.update(extension_options(ns))
    options.update({name: True for name in _options.TRACE if getattr(ns, name)})
    options.update(proxy_options(ns))
    options.update(local_options(ns))
    options.update(spool_options(ns))
    options.update({name: getattr(ns, name) for name in _options.ADMISSION if getattr(ns, name, None) is not None})
    return options


def local_options(ns: argparse.Namespace) -> Dict[str, Any]:
    """The LMTP and Unix socket options of ``--lmtp``, ``--unix`` and
    ``--unix-mode`` (only those given)."""
    if ns.unix_mode is not None and ns.unix is None:
        raise UsageError("--unix-mode needs --unix")
    options: Dict[str, Any] = {"lmtp": True} if ns.lmtp else {}
    if ns.unix is not None:
        options["unix_socket"] = ns.unix
    if ns.unix_mode is not None:
        options["unix_mode"] = ns.unix_mode
    return options


def proxy_options(ns: argparse.Namespace) -> Dict[str, Any]:
    """The PROXY protocol options of the ``--proxy-*`` flags (only those given)."""
    given = {name: getattr(ns, name) for name in ("proxy_trusted", "proxy_timeout") if hasattr(ns, name)}
    if not ns.proxy_protocol:
        if given:
            raise UsageError("--%s needs --proxy-protocol" % sorted(given)[0].replace("_", "-"))
        return {}
    try:
        _proxy_io.trusted_networks(given.get("proxy_trusted", ()))
    except (TypeError, ValueError) as err:
        raise UsageError("--proxy-trusted: %s" % str(err).replace("proxy_trusted: ", "")) from None
    return dict(given, proxy_protocol=True)


def spool_options(ns: argparse.Namespace) -> Dict[str, Any]:
    """spool_threshold and spool_dir, when given."""
    if ns.spool_dir is not None and ns.spool_threshold is None:
        raise UsageError("--spool-dir needs --spool-threshold")
    return {name: getattr(ns, name) for name in _options.SPOOL if getattr(ns, name) is not None}


def extension_options(ns: argparse.Namespace) -> Dict[str, Any]:
    """The ESMTP extension options the flags turn on (only those, as for
    the limits)."""
    if ns.requiretls and not ns.tls_cert:
        raise UsageError("--requiretls needs --tls-cert")  # RFC 8689: announced over TLS only
    return {name: True for name in _options.EXTENSIONS if getattr(ns, name)}


def limit_options(ns: argparse.Namespace) -> Dict[str, Any]:
    """The session-limit options given on the command line (only those, so
    a class without ``**options`` is built as before when none is given)."""
    return {name: getattr(ns, name) for name in DEFAULTS if hasattr(ns, name)}


def _become_nobody() -> None:
    require("setuid", hint="run with -n")
    import pwd  # here: require() has just said there is one (not on Windows)

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
    cls = resolve_class(ns.classname)
    if cls is LMTPServer:
        # LMTPServer itself delivers nowhere: on the command line it is
        # --lmtp with the delivery the other flags ask for (docs/cli.md).
        ns.lmtp = True
        cls = MailboxServer if ns.maildir is not None or ns.mbox is not None else DebuggingServer
    check_applicable(ns, cls)
    if ns.readable and cls is DebuggingServer:
        cls = ReadableDebuggingServer
    size = DATA_SIZE_DEFAULT if ns.size_limit is None else ns.size_limit
    options = server_options(ns)
    options.update(_cli_catcher.catcher_options(ns, cls))
    options.update(_cli_catcher_ops.ops_options(ns, cls))  # --chaos, --release-to
    try:
        return cls((ns.localhost, ns.localport), (ns.remotehost, ns.remoteport),
                   size, enable_SMTPUTF8=ns.enable_SMTPUTF8, **options)
    except MailboxPathError as err:
        # Named as on the command line; checked before the socket is bound.
        raise UsageError("--%s %s: %s" % (err.option, err.path, err.reason)) from None
    except _cli_catcher.WebBindError as err:
        raise _cli_catcher.web_error(err, ns) from None
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError("cannot listen on %s: %s" % (ns.unix or ns.localspec, reason)) from None
    except (TypeError, ValueError) as err:
        raise UsageError("cannot start %s: %s" % (ns.classname, err)) from None


# -- what the console shows --------------------------------------------------------------
def _log_level_of(ns: argparse.Namespace) -> int:
    if ns.log_level:
        return int(getattr(logging, ns.log_level))
    if ns.quiet:
        return logging.ERROR
    if ns.verbose >= 2:
        return logging.DEBUG
    if ns.verbose == 1:
        return logging.INFO
    return logging.WARNING


def configure_logging(ns: argparse.Namespace) -> Callable[[], None]:
    """Send log records (the package's and the server class's) and Python
    warnings to stderr, with time and level; return what undoes it.

    Only the command line does this: importing the package configures
    nothing.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    log_format = ns.log_format
    if _workers.count(ns.workers) > 1:
        # Every record says which process wrote it (%(worker)s).
        _workers.tag_log_records("main pid %d" % os.getpid())
        if log_format == LOG_FORMAT:
            log_format = WORKERS_LOG_FORMAT
    handler.setFormatter(logging.Formatter(log_format))
    previous = root.level
    root.addHandler(handler)
    root.setLevel(_log_level_of(ns))
    logging.captureWarnings(True)

    def restore() -> None:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(previous)

    return restore


def run(server: Any, workers: _workers.Count = None) -> None:
    """Serve until Ctrl-C (immediate stop) or SIGTERM (graceful shutdown:
    messages being received are finished, other sessions get 421); in
    *workers* processes, both stop gracefully (_workers)."""
    if _workers.count(workers) > 1:
        try:
            _workers.serve_forever(server, 0.5, workers)
        finally:
            asyncore.close_all(map=server._map, ignore_all=True)
        return
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
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == [HASH_PASSWORD]:
        return hash_password_main(args[1:])
    try:
        ns = parse_args(args)
    except UsageError as err:
        return print_error(err)
    except KeyboardInterrupt:
        return 0
    text = _information(ns)
    if text is not None:
        print(text, end="")
        return 0
    if ns.debug:
        smtpd.DEBUGSTREAM = sys.stderr
    restore_logging = configure_logging(ns)
    try:
        return _serve(ns)
    finally:
        restore_logging()


def _information(ns: argparse.Namespace) -> Optional[str]:
    """What ``-h``, ``--version`` or ``-V`` print instead of serving."""
    if ns.help:
        return build_parser().format_help()
    if ns.version:
        return "%s %s\n" % (PROG, package_version())
    if ns.smtpd_version:
        return "%s\n" % smtpd.__version__
    return None


def _serve(ns: argparse.Namespace) -> int:
    """Build the server, announce it and run it; returns the exit status."""
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
            _check_workers(server, ns)
        except (UsageError, NotAvailable) as err:
            if server is not None:
                server.close()
            return print_error(err)
        if not ns.quiet:
            print(startup_line(server, ns), file=sys.stderr, flush=True)
        run(server, ns.workers)
        logging.getLogger("smtpd_compat").info("%s stopped", type(server).__name__)
    except _workers.WorkerFailed as err:
        return print_error(err, status=1)
    except (KeyboardInterrupt, _Stop):
        if server is not None:
            server.close()  # stopped before run() (which closes all it served)
    finally:
        restore()
    return 0


def _check_workers(server: Any, ns: argparse.Namespace) -> None:
    """``--workers`` above 1 with a class that cannot have them is a usage
    error, said before anything forks."""
    number = _workers.count(ns.workers)
    if number <= 1:
        return
    if not isinstance(server, SMTPServer):
        raise UsageError("--workers applies to SMTPServer subclasses, not to %s" % type(server).__name__)
    try:
        _workers.check(server, number)
    except (ValueError, RuntimeError) as err:
        raise UsageError("--workers %s: %s" % (ns.workers, err)) from None
