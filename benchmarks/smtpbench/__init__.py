"""The side-by-side SMTP benchmark behind benchmarks/bench.py.

Modules, in the order data flows through a run:

  common    constants, logging, the run Context, small file/port helpers
  procfs    /proc readers (RSS, CPU, listen overflows) and RLIMIT_NOFILE
  loads     the loads and the message every generator sends
  servers   the servers under test: how each is found and its command line
  launch    starting a server, waiting for its greeting, stopping it
  loadgen   the built-in generator and the smtp-source driver
  measure   one load against one server -> RunResult; Cell = repeats
  report    markdown tables and the JSON dump
  cli       argument parsing and the run matrix

Standard library only; Python 3.9+.  See benchmarks/README.md.
"""
