"""What the mail catcher's flags mean (``-c CatcherServer``; docs/catcher.md).

The flags themselves (``--web``, ``--max-messages``, ``--web-allow-remote``,
``--web-auth-file``) are parsed by ``_cli_args``; this module turns them into
:class:`~smtpd_compat.catcher.CatcherServer`'s keyword options, refuses them
for other classes, and says on the start-up line where the page is.
Without ``--web``, ``-c CatcherServer`` serves its page on
``127.0.0.1:8026`` (:data:`~smtpd_compat.catcher.DEFAULT_WEB`): a catcher
whose page is nowhere would only be a RecordingServer.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict

from ._auth import AuthFileError, PasswordFile
from ._catcher_http import WebBindError, is_loopback
from ._cli_args import UsageError, split_hostport
from ._logging import format_address
from .catcher import DEFAULT_WEB, CatcherServer

__all__ = ["CatcherServer", "WebBindError", "catcher_options", "destination", "web_error"]

FLAGS = (("--web", "web"), ("--max-messages", "max_messages"), ("--web-allow-remote", "web_allow_remote"),
         ("--web-auth-file", "web_auth_file"))


def catcher_options(ns: argparse.Namespace, cls: Any) -> Dict[str, Any]:
    """CatcherServer's keyword options from the flags; UsageError for a
    catcher flag given to another class, a bad address or password file."""
    if not (isinstance(cls, type) and issubclass(cls, CatcherServer)):
        for flag, name in FLAGS:
            if getattr(ns, name, None) not in (None, False):
                raise UsageError("%s applies to -c CatcherServer, not to %s" % (flag, getattr(cls, "__name__", cls)))
        return {}
    web = split_hostport(ns.web, "--web") if ns.web else DEFAULT_WEB
    if not ns.web_allow_remote and not is_loopback(web[0]):
        raise UsageError("--web %s is not a loopback address: add --web-allow-remote (and --web-auth-file)" % ns.web)
    options: Dict[str, Any] = {"web": web}
    if ns.max_messages is not None:
        options["max_messages"] = ns.max_messages
    if ns.web_allow_remote:
        options["web_allow_remote"] = True
    # The page's users: --web-auth-file's, else --auth-file's (the users of
    # SMTP AUTH, which needs TLS; --web-auth-file guards the page alone).
    flag, path = ("--web-auth-file", ns.web_auth_file) if ns.web_auth_file else ("--auth-file", ns.auth_file)
    if path:
        try:
            options["web_auth"] = PasswordFile.load(path)
        except AuthFileError as err:
            raise UsageError("%s: %s" % (flag, err)) from None
    return options


def destination(server: Any) -> str:
    """The start-up line's end for a catcher: where its page is."""
    where = "the Maildir %s" % server.maildir if server.maildir is not None else "memory"
    return ", keeping every message in %s; web page and API on %s" % (where, server.web_url)


def web_error(err: OSError, ns: argparse.Namespace) -> UsageError:
    """A bind error of the web server, named with its flag."""
    return UsageError("cannot serve --web %s: %s" % (ns.web or format_address(DEFAULT_WEB), err.strerror or err))
