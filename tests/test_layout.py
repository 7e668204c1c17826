"""The layout shows the architecture: layers import downward only, without cycles, and every
private llama-cpp-python use lives in ``fints_edge/llama/`` (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of ``modules`` that ``path`` imports anywhere (functions included), except in an
    ``if TYPE_CHECKING:`` block; ``from pkg import mod`` counts as importing ``pkg.mod``."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return found & modules


def _graph(package: str) -> dict[str, set[str]]:
    files = sorted((ROOT / package).rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _imports(f, modules) - {_module_name(f)} for f in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.mark.parametrize("package", ["fints_edge", "bench"])
def test_no_import_cycle(package):
    assert _cycles(_graph(package)) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runtime_never_imports_the_layers_above_it():
    above = re.compile(r"^\s*(from|import)\s+(export|evals|bench|torch|transformers)\b", re.M)
    hits = [
        str(f.relative_to(ROOT))
        for f in (ROOT / "fints_edge").rglob("*.py")
        if above.search(f.read_text())
    ]
    assert hits == []


def test_private_llama_cpp_python_use_lives_in_one_subpackage():
    private = re.compile(r"\._ctx\b|\._batch\b|\._sampler\b|from_address")
    hits = {
        str(f.relative_to(ROOT).parent)
        for f in (ROOT / "fints_edge").rglob("*.py")
        if private.search(f.read_text())
    }
    assert hits == {"fints_edge/llama"}


def test_the_server_is_a_subpackage():
    assert not list((ROOT / "fints_edge").glob("_serve_*.py"))
    assert (ROOT / "fints_edge" / "serve" / "__main__.py").is_file()


def test_only_the_runtime_is_installed():
    """export/, evals/ and bench/ are the repository's layers, not site-packages names; the
    wheel (and so the phone bundle) carries fints_edge alone."""
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert conf["packages"]["find"]["include"] == ["fints_edge*"]
    assert set(conf["package-data"]) == {"fints_edge"}
