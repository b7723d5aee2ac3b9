"""The shape of the package, kept small enough to live in.

Module and function sizes and the import graph are read from the sources
with ``ast``; cyclomatic complexity is radon's (``radon cc``), checked where
radon is installed (``.ci/run`` runs this module in its lint environment,
which has it).  The bounds are docs/architecture.md's: no module over 600
lines, no function over 60 lines or of complexity over 15, no import
cycle between the package's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "smtpd_compat"
MODULES = sorted(PACKAGE.glob("*.py"))

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 60
MAX_COMPLEXITY = 15


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def functions(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.walk(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child


def test_there_is_a_package_to_look_at() -> None:
    assert len(MODULES) > 20


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_modules_are_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, "%s has %d lines" % (path.name, lines)


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_modules_say_what_they_own(path: Path) -> None:
    docstring = ast.get_docstring(tree(path))
    assert docstring and len(docstring) > 40, "%s opens without a docstring" % path.name


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.name)
def test_functions_are_short(path: Path) -> None:
    long = [
        "%s (%d lines)" % (node.name, node.end_lineno - node.lineno + 1)
        for node in functions(tree(path))
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "%s: %s" % (path.name, ", ".join(long))


def test_functions_are_simple() -> None:
    radon = pytest.importorskip("radon.complexity")
    complex_ = []
    for path in MODULES:
        for block in radon.cc_visit(path.read_text(encoding="utf-8")):
            for item in [block] + list(getattr(block, "methods", [])) + list(getattr(block, "closures", [])):
                if item.complexity > MAX_COMPLEXITY:
                    complex_.append("%s:%s %s (%d)" % (path.name, item.lineno, item.name, item.complexity))
    assert not complex_, complex_


def _is_main_block(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":``: runs only when the file is run as a
    script, never when the module is imported."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Compare) and getattr(test.left, "id", "") == "__name__"


def imports() -> Dict[str, Set[str]]:
    """module -> the package's modules it imports, anywhere in its body
    (functions and TYPE_CHECKING blocks included)."""
    names = {path.stem for path in MODULES}
    graph: Dict[str, Set[str]] = {}
    for path in MODULES:
        module = tree(path)
        body = ast.Module(body=[node for node in module.body if not _is_main_block(node)], type_ignores=[])
        edges = graph[path.stem] = set()
        for node in ast.walk(body):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 1:
                targets = [node.module.split(".")[0]] if node.module else [alias.name for alias in node.names]
            elif node.level == 0 and node.module and node.module.split(".")[0] == "smtpd_compat":
                parts = node.module.split(".")
                targets = parts[1:2] or [alias.name for alias in node.names]
            else:
                continue
            edges.update(target for target in targets if target in names and target != path.stem)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = imports()
    assert graph["smtpd"] and graph["_channel"], "the import graph was not read"
    assert cycles(graph) == []
