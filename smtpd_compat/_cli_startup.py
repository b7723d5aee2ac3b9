"""The line ``python -m smtpd_compat`` writes on stderr once the server
listens: the version, the class, the address really bound, the features
turned on by flags, and where messages go (``_cli`` decides when to write
it; ``-q`` leaves it out)."""

from __future__ import annotations

import argparse
from typing import Any, List

import smtpd_compat

from . import _cli_catcher, _logging, _serving, _workers
from ._cli_args import PROG
from .servers import MailboxServer, ReadableDebuggingServer, RecordingServer
from .smtpd import DebuggingServer, PureProxy


def package_version() -> str:
    """This package's version.  Written once, in ``smtpd_compat/__init__.py``;
    pyproject.toml reads it from there (a dynamic version), so an installed
    copy's metadata (``importlib.metadata``) says the same."""
    return smtpd_compat.__version__


def startup_line(server: Any, ns: argparse.Namespace) -> str:
    """One line: the version, the class, the address really bound (port 0
    resolved), and where messages go."""
    try:
        bound = _serving.bound_address(server)
    except OSError:
        bound = (ns.localhost, ns.localport)
    address = _logging.format_address(bound)
    line = "%s %s: %s listening on %s" % (PROG, package_version(), type(server).__name__, address)
    features = _security_features(ns) + _extension_features(ns) + (["PROXY protocol"] if ns.proxy_protocol else []) + _worker_features(ns)
    features += _limit_features(ns)
    if ns.lmtp:
        features.insert(0, "LMTP")
    if features:
        line += " (%s)" % ", ".join(features)
    return line + _destination(server, ns)


def _security_features(ns: argparse.Namespace) -> List[str]:
    features = []
    if ns.tls_cert:
        features.append("SMTPS" if ns.smtps else "STARTTLS required" if ns.require_starttls else "STARTTLS")
    if ns.auth_file:
        features.append("AUTH required" if ns.auth_required else "AUTH")
    return features


def _extension_features(ns: argparse.Namespace) -> List[str]:
    """The opt-in extensions turned on, by their EHLO keywords (the Received
    header has none)."""
    chosen = [("PIPELINING", ns.pipelining), ("ENHANCEDSTATUSCODES", ns.enhanced_status_codes),
              ("REQUIRETLS", ns.requiretls), ("Received header", ns.add_received_header),
              ("DSN", ns.dsn)]
    chosen.append(("CHUNKING", ns.chunking))
    return [name for name, on in chosen if on]


def _limit_features(ns: argparse.Namespace) -> List[str]:
    """The spool (--spool-threshold, --spool-dir) and the limits per client address."""
    features = []
    if ns.spool_threshold is not None:
        features.append("spool above %d bytes%s" % (ns.spool_threshold, " in %s" % ns.spool_dir if ns.spool_dir else ""))
    for text, value in (("at most %s connections per address", ns.max_connections_per_ip),
                        ("%s connections per %s s per address", ns.connection_rate_per_ip),
                        ("%s AUTH failures per %s s per address", ns.auth_failures_per_ip)):
        if value is not None:
            features.append(text % tuple(str(value).split("/")))
    return features


def _worker_features(ns: argparse.Namespace) -> List[str]:
    number = _workers.count(ns.workers)
    return ["%d worker processes" % number] if number > 1 else []


def _destination(server: Any, ns: argparse.Namespace) -> str:
    """Where the server's messages go, as the end of the start-up line
    (nothing for a class of one's own).  Subclasses before their bases."""
    if isinstance(server, _cli_catcher.CatcherServer):
        return _cli_catcher.destination(server)
    if isinstance(server, PureProxy):
        return _relaying(ns)
    if isinstance(server, ReadableDebuggingServer):
        return ", printing every message on stdout, decoded"
    if isinstance(server, DebuggingServer):
        return ", printing every message on stdout"
    if isinstance(server, MailboxServer):
        if ns.maildir is not None:
            return ", delivering to the Maildir %s" % ns.maildir
        if ns.mbox is not None:
            return ", delivering to the mbox %s" % ns.mbox
        return ""
    if isinstance(server, RecordingServer):
        return ", keeping every message in memory"
    return ""


def _relaying(ns: argparse.Namespace) -> str:
    text = ", relaying every message to %s" % _logging.format_address((ns.remotehost, ns.remoteport))
    if ns.relay_tls:
        text += " over %s" % ("STARTTLS" if ns.relay_tls == "starttls" else "SMTPS")
    if ns.default_class:
        text += " (smtpd's default class; -c DebuggingServer prints messages instead)"
    return text
