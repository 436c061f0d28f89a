"""The architecture the import-linter contracts cannot say: no import cycle, no import hidden in a function.

import-linter (``lint-imports``, run by ``make test``) checks the layers; these two tests check what a
layer contract lets through: a cycle inside one layer, and an import placed inside a function so that a
cycle does not show at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("durable", "durable_django")


def _cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if not child.startswith(package):
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    graph = grimp.build_graph(package, include_external_packages=False)
    cycles = _cycles(graph, package)
    assert not cycles, f"import cycles in {package}: {cycles}"


def _first_party_imports_in_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith(".") or name.split(".")[0] in PACKAGES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_no_first_party_import_inside_a_function() -> None:
    hidden = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts or path.name in ("apps.py", "pytest_plugin.py"):
                # AppConfig.ready() is where Django wants the wiring imports; pytest loads its plugins before
                # Django is configured, so the fixture imports the app when it runs.
                continue
            hidden += _first_party_imports_in_functions(path)
    assert not hidden, "imports placed inside functions (move them to the top, or move the code):\n" + "\n".join(hidden)
