"""What the mail catcher's chaos and release flags mean (``-c
CatcherServer``; docs/catcher-ops.md): ``--chaos RULE`` (repeatable),
``--chaos-seed N``, ``--release-to HOST:PORT``.

The flags themselves are parsed by ``_cli_args`` (each ``--chaos`` is
checked there); :func:`ops_options`, called by ``_cli.make_server``, turns
them into the class's keyword options.  Release reuses PureProxy's
``--relay-tls``/``--relay-cafile``/``--relay-auth-file``
(``_cli.relay_options``): :func:`relay_flags_allowed` says when they apply
to a class that is not PureProxy.
"""

from __future__ import annotations

import argparse
import random
from typing import Any, Dict

from ._catcher_chaos import ChaosHooks
from ._catcher_release import Releasing
from ._cli_args import UsageError, split_hostport

__all__ = ["ops_options", "relay_flags_allowed"]

FLAGS = (("--chaos", "chaos"), ("--chaos-seed", "chaos_seed"), ("--release-to", "release_to"))


def _is_catcher(cls: Any) -> bool:
    # By the mixins that take these options (CatcherServer's).
    return isinstance(cls, type) and issubclass(cls, ChaosHooks) and issubclass(cls, Releasing)


def relay_flags_allowed(ns: argparse.Namespace, cls: Any) -> bool:
    """Whether ``--relay-*`` apply to *cls* other than PureProxy: a catcher
    with ``--release-to``."""
    return bool(getattr(ns, "release_to", None)) and _is_catcher(cls)


def ops_options(ns: argparse.Namespace, cls: Any) -> Dict[str, Any]:
    """CatcherServer's ``chaos``, ``chaos_random`` and ``release_to`` from
    the flags; UsageError for one given to another class or a bad address."""
    if not _is_catcher(cls):
        for flag, name in FLAGS:
            if getattr(ns, name, None) is not None:
                raise UsageError("%s applies to -c CatcherServer, not to %s" % (flag, getattr(cls, "__name__", cls)))
        return {}
    options: Dict[str, Any] = {}
    if ns.chaos:
        options["chaos"] = list(ns.chaos)
    if ns.chaos_seed is not None:
        options["chaos_random"] = random.Random(ns.chaos_seed)
    if ns.release_to:
        host, port = split_hostport(ns.release_to, "--release-to")
        if port == 0:
            raise UsageError("bad --release-to port in %r: must be 1-65535" % ns.release_to)
        options["release_to"] = (host, port)
    return options
