"""The yardsticks: CPython 3.11's own Lib/test/test_smtpd.py,
test_asyncore.py and test_asynchat.py, run against this package.

Each file is read from a Python 3.11 installation (never copied into the
repository), only its import lines are rewritten to import ``smtpd_compat``'s
modules, and it runs in a subprocess with that interpreter, under its own
file name (test_asyncore checks the file name in a traceback).  Every test
must pass, except the few listed in ``KNOWN_FAILURES`` with the documented
difference behind each (docs/differences.md); a known failure that starts
passing fails this test too, so that the list (and the documentation) is
kept true.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Set, Tuple

import pytest

from conftest import REPO_ROOT, has_ipv6

IMPORT_LINES = {
    "smtpd = warnings_helper.import_deprecated('smtpd')": "from smtpd_compat import smtpd",
    "asyncore = warnings_helper.import_deprecated('asyncore')": "from smtpd_compat import asyncore",
    "asynchat = warnings_helper.import_deprecated('asynchat')": "from smtpd_compat import asynchat",
}

# The import lines each file has (all of them must be found, once each).
FILES = {
    "test_smtpd.py": ("smtpd", "asyncore"),
    "test_asyncore.py": ("asyncore",),
    "test_asynchat.py": ("asynchat", "asyncore"),
}

# Tests that fail because of a deliberate difference, and that difference.
KNOWN_FAILURES: Dict[str, Dict[str, str]] = {
    "test_smtpd.py": {},
    "test_asyncore.py": {
        "DispatcherTests.test_log_info": "log_info() logs through the logging module instead of printing on stdout",
        "DispatcherTests.test_unhandled": "the 'unhandled ... event' warnings go through log_info(), which logs",
        "DispatcherTests.test_repr": "repr() names the class's real module, smtpd_compat.asyncore",
    },
    "test_asynchat.py": {},
}


def find_python311() -> Optional[str]:
    """The running interpreter if it is 3.11, else pyenv's, else python3.11 on PATH."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    for candidate in sorted(glob.glob("/root/.pyenv/versions/3.11*/bin/python"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("python3.11")


def find_test_dir(python: str) -> Optional[Path]:
    """Where *python*'s standard library keeps its test package, if it does."""
    result = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
    )
    if result.returncode != 0:
        return None
    path = Path(result.stdout.strip()) / "test"
    return path if (path / "test_smtpd.py").is_file() else None


PYTHON = find_python311()
TEST_DIR = find_test_dir(PYTHON) if PYTHON else None


def rewrite(text: str, modules: tuple) -> str:
    """Replace exactly the import lines of *modules*; fail unless each is
    there once."""
    lines = text.splitlines(keepends=True)
    for old, new in IMPORT_LINES.items():
        if new.rsplit(" ", 1)[1] not in modules:
            continue
        hits = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == old]
        assert len(hits) == 1, "expected the line %r once" % old
        lines[hits[0]] = new + "\n"
    return "".join(lines)


# Runs one test module and records each test's outcome in outcomes.json
# (the -v text output interleaves with what tests print).
DRIVER = """
import json, sys, unittest
outcomes = {}

class Result(unittest.TextTestResult):
    def _note(self, test, outcome):
        outcomes[test.id().split(".", 1)[1]] = outcome

    def addSuccess(self, test):
        super().addSuccess(test); self._note(test, "ok")

    def addFailure(self, test, err):
        super().addFailure(test, err); self._note(test, "FAIL")

    def addError(self, test, err):
        super().addError(test, err); self._note(test, "ERROR")

    def addSkip(self, test, reason):
        super().addSkip(test, reason); self._note(test, "skipped")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err); self._note(test, "expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test); self._note(test, "unexpected success")

suite = unittest.defaultTestLoader.loadTestsFromName(sys.argv[1])
result = unittest.TextTestRunner(resultclass=Result, verbosity=1).run(suite)
with open("outcomes.json", "w") as f:
    json.dump({"ran": result.testsRun, "outcomes": outcomes}, f)
"""


def run_yardstick(name: str, directory: Path) -> Tuple[Dict[str, Any], str]:
    """Run the rewritten *name* in *directory*: (what outcomes.json holds,
    the runner's output)."""
    assert PYTHON is not None and TEST_DIR is not None
    original = (TEST_DIR / name).read_text(encoding="utf-8")
    rewritten = rewrite(original, FILES[name])
    changed = [(a, b) for a, b in zip(original.splitlines(), rewritten.splitlines()) if a != b]
    assert len(changed) == len(FILES[name]) and len(original.splitlines()) == len(rewritten.splitlines())
    (directory / name).write_text(rewritten, encoding="utf-8")
    (directory / "yardstick_driver.py").write_text(DRIVER, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("PYTHONWARNINGS", None)
    # The modules under test are this checkout's.
    where = subprocess.run(
        [PYTHON, "-c", "import smtpd_compat.smtpd as m; print(m.__file__)"],
        cwd=str(directory), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve() == (REPO_ROOT / "smtpd_compat" / "smtpd.py").resolve()
    result = subprocess.run(
        [PYTHON, "yardstick_driver.py", name[:-3]],
        cwd=str(directory), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300,
    )
    output = result.stdout + result.stderr
    report = directory / "outcomes.json"
    assert report.is_file(), "\n".join(output.splitlines()[-40:])
    return json.loads(report.read_text(encoding="utf-8")), output


needs_311 = [
    pytest.mark.skipif(PYTHON is None, reason="no Python 3.11 interpreter found"),
    pytest.mark.skipif(TEST_DIR is None, reason="this Python 3.11 does not ship its test package"),
]


@pytest.mark.parametrize("name", sorted(FILES))
@needs_311[0]
@needs_311[1]
def test_cpython_311_yardstick(name: str, tmp_path: Path) -> None:
    report, output = run_yardstick(name, tmp_path)
    tail = "\n".join(output.splitlines()[-40:])
    seen: Dict[str, str] = report["outcomes"]
    assert len(seen) == report["ran"], "not every test reported an outcome:\n" + tail
    failed: Set[str] = {test for test, outcome in seen.items() if outcome in ("FAIL", "ERROR", "unexpected success")}
    assert failed == set(KNOWN_FAILURES[name]), tail
    if name == "test_smtpd.py":
        assert report["ran"] >= 150, tail
        if has_ipv6():
            # The IPv6 tests must run, not be skipped.
            assert not [t for t, o in seen.items() if o == "skipped"], tail
            ipv6_ok = [t for t, o in seen.items() if o == "ok" and t.startswith(("SMTPDChannelIPv6Test.", "TestFamilyDetection."))]
            assert len(ipv6_ok) >= 40, "the IPv6 test cases did not run:\n" + tail
    if name == "test_asyncore.py":
        # The loop entry points (select and poll variants) all run.
        for variant in ("TestAPI_UseIPv4Select.", "TestAPI_UseIPv4Poll.", "TestAPI_UseUnixSocketsPoll."):
            assert [t for t, o in seen.items() if t.startswith(variant) and o == "ok"], tail
