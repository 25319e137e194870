"""The package's import graph, read from the source: every import, function-level ones included.

lint-imports checks the layer contracts on the graph grimp builds; this test walks the
modules itself so that an import hidden in a function cannot close a cycle, and so the
two front-end-only dependencies stay where they belong: argparse in the CLI package,
napari / Qt / magicgui in the napari plugin package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "napari_duet"
CLI = f"{ROOT}.cli"
PLUGIN = f"{ROOT}._napari"
GUI_PACKAGES = ("napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package)."""
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts.pop()
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, int]]:
    """Every (absolute module name, line) ``name`` imports, wherever the import statement is."""
    path, is_pkg = MODULES[name]
    package = name if is_pkg else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                # "from pkg import mod" imports the module pkg.mod, not only pkg.
                found.append((sub if sub in MODULES else module, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    return {name: {m for m, _ in _imports(name) if m in MODULES and m != name}
            for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_function_level_and_relative_imports():
    """The graph is only as good as the walk: it must resolve both kinds the package uses."""
    graph = _graph()
    assert len(MODULES) > 100
    # cli/__init__.py: "from ..core.errors import ..." at module level (relative, two dots).
    assert f"{ROOT}.core.errors" in graph[CLI]
    # core/n2f/_denoise.py: "from ..devices import resolve_device" inside noise2fast().
    assert f"{ROOT}.core.devices" in graph[f"{ROOT}.core.n2f._denoise"]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _offenders(allowed_prefix: str, top_levels: tuple[str, ...]) -> list[str]:
    bad = []
    for name in MODULES:
        if name == allowed_prefix or name.startswith(allowed_prefix + "."):
            continue
        for module, line in _imports(name):
            if module.split(".")[0] in top_levels:
                bad.append(f"{name}:{line} imports {module}")
    return bad


def test_argparse_only_in_the_cli_package():
    assert _offenders(CLI, ("argparse",)) == []


@pytest.mark.parametrize("package", GUI_PACKAGES)
def test_gui_libraries_only_in_the_plugin_package(package):
    assert _offenders(PLUGIN, (package,)) == []
