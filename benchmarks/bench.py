#!/usr/bin/env python3
"""Side-by-side SMTP server benchmark: smtpd_compat against its peers.

Servers (each used only where it is available on the machine):

  compat    this project, ``python -m smtpd_compat`` with a discarding sink
  cpython   the stdlib ``smtpd`` of a CPython <= 3.11 interpreter
  aiosmtpd  aiosmtpd in a cached virtualenv (benchmarks/.venv-aiosmtpd)
  smtp-sink Postfix's C test server
  floor     benchmarks/floor_sink.py, a minimal Python epoll sink: the
            reference floor for a Python server (only when named)

Loads:

  one          1 session, 1 KB messages, one connection
  persistent20 20 sessions, 1 KB messages, persistent connections
  newconn20    20 sessions, 1 KB messages, a new connection per message
  big          4 sessions, 1 MB messages, persistent connections
  mem32        one 32 MiB message: server peak RSS above idle / message size
  hold         N connections held open at once: server RSS per connection,
               then each sends one message over its own connection

Every run starts a fresh server on a free 127.0.0.1 port and kills it
afterwards.  The load generator is Postfix ``smtp-source`` when installed,
else a selectors-based generator built into this script (``--loadgen``).
``mem32`` and ``hold`` always use the built-in generator.

The code is the package benchmarks/smtpbench/; this file is its entry point.
Standard library only; Python 3.9+.  See benchmarks/README.md.
"""

import os
import sys

# The package sits next to this file; it is not installed anywhere.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from smtpbench.cli import main  # noqa: E402  (after the path is set)

if __name__ == "__main__":
    sys.exit(main())
