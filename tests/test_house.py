"""The package's shape (issue 11, item 6): no import cycles, no oversized module, and the
third-party modules ``builder`` imports are the ones ``pyproject.toml`` declares.

Imports inside functions count (a lazy import still ties two modules together); imports
under ``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "builder"
#: "No module over ~600 lines": the few lines of slack keep a docstring edit from failing CI.
MAX_LINES = 650


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(path: Path) -> list[str]:
    """Every module name imported by ``path`` at run time (absolute names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(sub) for sub in ast.walk(node))
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _import_graph() -> nx.DiGraph:
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = nx.DiGraph()
    for name, path in modules.items():
        for target in _imports(path):
            module = owner(target) if target.startswith("builder.") else None
            # A package's __init__ re-exports its modules; importing a parent package is
            # not an edge back (it is loaded before any of its modules anyway).
            if module and module != name and not name.startswith(module + "."):
                graph.add_edge(name, module)
    return graph


def test_the_package_has_no_import_cycles() -> None:
    graph = _import_graph()
    assert graph.number_of_edges() > 100  # the walk really saw the package's imports
    cycles = sorted(" -> ".join([*c, c[0]]) for c in nx.simple_cycles(graph))
    assert cycles == []


def test_the_cycle_check_sees_a_lazy_import(tmp_path: Path) -> None:
    """The check counts an import inside a function and ignores one under TYPE_CHECKING."""
    path = tmp_path / "m.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from builder.a import X\n"
        "def f():\n    from builder.b import Y\n",
        encoding="utf-8",
    )
    names = _imports(path)
    assert "builder.b.Y" in names and "builder.a.X" not in names


def test_no_module_is_oversized() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
        for p in PACKAGE.rglob("*.py")
    }
    assert len(sizes) > 50
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"])
    for name in ("embedded", "ray"):  # runtime extras (the dev extra is for tests only)
        specs.extend(project["optional-dependencies"][name])
    return {_canonical(re.split(r"[\[<>=!~;\s]", spec, maxsplit=1)[0]) for spec in specs}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_imported_third_party_modules_are_declared_dependencies() -> None:
    stdlib = sys.stdlib_module_names
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared: dict[str, list[str]] = {}
    for path in _modules().values():
        for name in _imports(path):
            top = name.split(".")[0]
            if top in stdlib or top in {"builder", "__future__"}:
                continue
            dists = {_canonical(d) for d in distributions.get(top, [])}
            assert dists, f"{path}: imports {top!r}, which no installed distribution provides"
            if not dists & declared:
                undeclared.setdefault(top, []).append(str(path.relative_to(ROOT)))
    assert undeclared == {}
