"""Every ``python`` block of README.md and docs/*.md runs, so that no
example can rot.

Each block runs in a fresh interpreter, in an empty directory, with the
checkout first on the path.  A block runs exactly as written unless the
line right above its fence is a marker::

    <!-- example: WORD; WORD; needs: NAME, NAME -->

``pytest``
    the block is a test module: run it with pytest and the
    ``smtpd_server`` plugin; its tests must pass.
``serves``
    the block listens on fixed ports and serves forever: every server
    binds to 127.0.0.1 port 0, and the loop returns once each server has
    answered a client (``doc_placeholders.serve_briefly``).
``stdlib-smtpd``
    the block is the "before" of a migration: it runs only where the
    standard library still has smtpd (Python 3.11 and earlier).
``needs: NAME, ...``
    stand-ins for the reader's own code, from ``doc_placeholders``
    (``certificate`` makes ``load_cert_chain()`` load a test certificate).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple

import pytest

import doc_placeholders
from conftest import REPO_ROOT
from tls_helpers import TLSFiles, tls_files  # noqa: F401  (fixture)

TESTS_DIR = Path(__file__).resolve().parent
MARKER = re.compile(r"^<!-- example: (.*) -->$")
KINDS = {"pytest", "serves", "stdlib-smtpd"}


class Example(NamedTuple):
    path: str  # relative to the repository
    line: int  # of the opening fence
    code: str
    kinds: frozenset
    needs: tuple


def parse_marker(text: str) -> Dict[str, Any]:
    kinds, needs = set(), []
    for word in (w.strip() for w in text.split(";")):
        if word.startswith("needs:"):
            needs.extend(n.strip() for n in word[len("needs:"):].split(","))
        elif word in KINDS:
            kinds.add(word)
        else:
            raise ValueError("unknown example marker word %r" % word)
    return {"kinds": frozenset(kinds), "needs": tuple(needs)}


def examples() -> List[Example]:
    found = []
    for path in [REPO_ROOT / "README.md"] + sorted((REPO_ROOT / "docs").glob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if line.strip() != "```python":
                continue
            end = next(i for i in range(number + 1, len(lines)) if lines[i].strip() == "```")
            marker = MARKER.match(lines[number - 1].strip()) if number else None
            options = parse_marker(marker.group(1)) if marker else {"kinds": frozenset(), "needs": ()}
            found.append(Example(str(path.relative_to(REPO_ROOT)), number + 1, "\n".join(lines[number + 1:end]) + "\n",
                                 **options))
    return found


EXAMPLES = examples()


def test_the_documentation_has_examples() -> None:
    assert len(EXAMPLES) >= 25
    for example in EXAMPLES:
        for name in example.needs:
            assert name == "certificate" or hasattr(doc_placeholders, name) or name in doc_placeholders.MODULES, name


def prelude(example: Example) -> str:
    lines = ["import doc_placeholders"]
    for name in example.needs:
        if name == "certificate":
            lines.append("doc_placeholders.any_certificate()")
        elif name not in doc_placeholders.MODULES:
            lines.append("from doc_placeholders import %s" % name)
    if "serves" in example.kinds:
        lines.append("doc_placeholders.serve_briefly()")
    # One line, so that the example's own line numbers are off by one only.
    return "; ".join(lines) + "\n"


@pytest.mark.parametrize("example", EXAMPLES, ids=["%s:%d" % (e.path, e.line) for e in EXAMPLES])
def test_example_runs(example: Example, tmp_path: Path, request: Any) -> None:
    if "stdlib-smtpd" in example.kinds and sys.version_info >= (3, 12):
        pytest.skip("the standard library has no smtpd on Python 3.12 and later")
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), environment.get("PYTHONPATH", "")])
    environment.pop("PYTHONWARNINGS", None)
    if "certificate" in example.needs:
        files: TLSFiles = request.getfixturevalue("tls_files")
        environment["DOC_EXAMPLE_CERT"], environment["DOC_EXAMPLE_KEY"] = files.cert, files.key
    for name in example.needs:
        if name in doc_placeholders.MODULES:
            (tmp_path / (name + ".py")).write_text(doc_placeholders.MODULES[name], encoding="utf-8")
    source = prelude(example) + example.code
    if "pytest" in example.kinds:
        script = tmp_path / "test_example.py"
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "smtpd_compat.pytest_plugin",
                str(script)]
    else:
        script = tmp_path / "example.py"
        argv = [sys.executable, str(script)]
    script.write_text(source, encoding="utf-8")
    result = subprocess.run(argv, cwd=str(tmp_path), env=environment, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    assert result.returncode == 0, "%s:%d failed:\n%s\n--- output ---\n%s" % (
        example.path, example.line, source, result.stdout)
    if "pytest" in example.kinds:
        assert re.search(r"\b\d+ passed\b", result.stdout) and "failed" not in result.stdout, result.stdout
