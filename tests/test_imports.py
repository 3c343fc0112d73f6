"""The package's import graph: each module of ``autolayer/`` imports only modules below it in
the flow (see the style guide), so no modules import each other, directly or around a circle;
and ``import autolayer`` / ``autolayer --help`` stay free of the heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import autolayer

PACKAGE = Path(autolayer.__file__).parent


def _module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root`` by dotted name (a package by its own)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(node: ast.Import | ast.ImportFrom, name: str, path: Path) -> list[str]:
    """The dotted names one import statement may load, in ``name`` (the file at ``path``):
    ``from a import b`` may load the module ``a.b`` as well as ``a``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from the package holding this module
        package = name.split(".")
        if path.name != "__init__.py":
            package.pop()
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Which modules of the package each module imports: at module level, inside functions
    and under ``TYPE_CHECKING`` alike (a circle of deferred imports is still a circle)."""
    modules = _module_names(root, package)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _imported(node, name, path)
            if target in modules and target != name
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph as a path back to its start (``[a, b, a]``), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        if node in done:
            return None
        for target in sorted(graph[node]):
            cycle = visit(target, [*path, node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def test_no_module_of_the_package_is_in_an_import_circle():
    cycle = find_cycle(import_graph(PACKAGE, "autolayer"))
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_a_circle_through_a_deferred_import_is_found(tmp_path):
    """The check sees imports inside functions and under TYPE_CHECKING, and relative ones."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import X\n"
    )
    (pkg / "sub" / "c.py").write_text("from .. import a\n")
    assert find_cycle(import_graph(pkg, "pkg")) == ["pkg.a", "pkg.sub.b", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("import json\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None


def test_import_and_help_load_no_heavy_library():
    """``import autolayer`` and ``autolayer --help`` stay fast: torch, transformers and
    optuna load only when a command needs them."""
    code = (
        "import sys\n"
        "from autolayer import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'optuna') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
