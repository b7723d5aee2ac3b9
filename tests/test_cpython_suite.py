"""The acceptance test: CPython 3.11's own Lib/test/test_smtpd.py, run
against this package.

The file is read from a Python 3.11 installation (never copied into the
repository), only its two import lines are rewritten to import
``smtpd_compat``'s modules, and it runs in a subprocess with that
interpreter.  Every one of its tests must run and pass, IPv6 included.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from conftest import REPO_ROOT, has_ipv6

IMPORT_LINES = {
    "smtpd = warnings_helper.import_deprecated('smtpd')": "from smtpd_compat import smtpd",
    "asyncore = warnings_helper.import_deprecated('asyncore')": "from smtpd_compat import asyncore",
}


def find_python311() -> Optional[str]:
    """The running interpreter if it is 3.11, else pyenv's, else python3.11 on PATH."""
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    for candidate in sorted(glob.glob("/root/.pyenv/versions/3.11*/bin/python"), reverse=True):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("python3.11")


def find_test_file(python: str) -> Optional[Path]:
    """Where *python*'s standard library keeps test/test_smtpd.py, if it does."""
    result = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
    )
    if result.returncode != 0:
        return None
    path = Path(result.stdout.strip()) / "test" / "test_smtpd.py"
    return path if path.is_file() else None


PYTHON = find_python311()
SOURCE = find_test_file(PYTHON) if PYTHON else None


def rewrite(text: str) -> str:
    """Replace exactly the two import lines; fail if either is not there once."""
    lines = text.splitlines(keepends=True)
    for old, new in IMPORT_LINES.items():
        hits = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == old]
        assert len(hits) == 1, "expected the line %r once in test_smtpd.py" % old
        lines[hits[0]] = new + "\n"
    return "".join(lines)


@pytest.mark.skipif(PYTHON is None, reason="no Python 3.11 interpreter found")
@pytest.mark.skipif(SOURCE is None, reason="this Python 3.11 does not ship test/test_smtpd.py")
def test_cpython_311_test_smtpd_passes(tmp_path: Path) -> None:
    assert PYTHON is not None and SOURCE is not None
    original = SOURCE.read_text(encoding="utf-8")
    rewritten = rewrite(original)
    # Only those two lines differ.
    changed = [(a, b) for a, b in zip(original.splitlines(), rewritten.splitlines()) if a != b]
    assert len(changed) == 2 and len(original.splitlines()) == len(rewritten.splitlines())
    (tmp_path / "test_cpy_smtpd.py").write_text(rewritten, encoding="utf-8")

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.pop("PYTHONWARNINGS", None)
    # The modules under test are this checkout's.
    where = subprocess.run(
        [PYTHON, "-c", "import smtpd_compat.smtpd as m; print(m.__file__)"],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve() == (REPO_ROOT / "smtpd_compat" / "smtpd.py").resolve()

    result = subprocess.run(
        [PYTHON, "-m", "unittest", "-v", "test_cpy_smtpd"],
        cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300,
    )
    output = result.stdout + result.stderr
    tail = "\n".join(output.splitlines()[-30:])
    ran = re.search(r"^Ran (\d+) tests? in ", output, re.MULTILINE)
    assert ran, tail
    assert int(ran.group(1)) >= 150, tail
    status = re.search(r"^(OK|FAILED)\b(.*)$", output, re.MULTILINE)
    assert status and status.group(1) == "OK", tail
    assert result.returncode == 0, tail
    skipped = re.search(r"skipped=(\d+)", status.group(2))
    if has_ipv6():
        # The IPv6 tests must run, not be skipped.
        assert skipped is None, tail
        ipv6_ok = re.findall(r"^test_\w+ \(test_cpy_smtpd\.(?:SMTPDChannelIPv6Test|TestFamilyDetection)\b.*\.\.\. ok$",
                             output, re.MULTILINE)
        assert len(ipv6_ok) >= 40, "the IPv6 test cases did not run:\n" + tail
