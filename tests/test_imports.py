"""The project's import graph is acyclic, and the error module imports nothing from the project.

The graph is built with ``ast`` from the source (no module is imported, so the test is fast and
cannot be fooled by import order). It counts **every** import of an ``ssm_train`` module, at
module level and inside functions alike: a function-level ("lazy") import that closes a cycle is
still a cycle — the two modules still cannot be understood or tested apart, and which one
"works" depends on which is imported first. Today's cycle (``config -> data.registry ->
data.synthetic -> config``) was held together by exactly such lazy imports, so a graph of
module-level imports alone would not see it. Only imports under ``if TYPE_CHECKING:`` are left
out: they never run.

Edges: ``import a.b`` and ``from a.b import name`` depend on ``a.b``, or on ``a.b.name`` when that
is a module (``from ssm_train.nn import cpp_build`` depends on ``cpp_build``, not on the package's
``__init__``). A module's import of its own parent packages, implicit or written out (``from
ssm_train import sweeps`` inside ``sweeps/cli.py``), is not an edge: Python always runs a
package's ``__init__`` before its children, so the child depends on it already; a name taken from
a half-initialised parent fails at import time, which every test sees.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.paths import ROOT

PACKAGE = ROOT / "ssm_train"


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _runtime_imports(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in ``node`` that can run: anywhere but under ``if TYPE_CHECKING:``."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        for child in node.orelse:
            yield from _runtime_imports(child)
    else:
        for child in ast.iter_child_nodes(node):
            yield from _runtime_imports(child)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module of ``from <node.module> import ...`` written inside ``module``."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_ancestor_or_self(target: str, module: str) -> bool:
    return module == target or module.startswith(target + ".")


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``module`` imports (see the module docstring for what counts)."""
    out = set()
    for node in _runtime_imports(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = _absolute(node, module, path.name == "__init__.py")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        out.update(t for t in targets if t in modules and not _is_ancestor_or_self(t, module))
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(package)
    return {m: imported_modules(m, p, modules) for m, p in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle (lazy imports count): " + " -> ".join(cycle)


def test_the_error_module_imports_nothing_from_the_project() -> None:
    assert import_graph()["ssm_train.errors"] == set()


def test_find_cycle_sees_a_cycle_closed_by_a_lazy_import(tmp_path: Path) -> None:
    """The checker itself: a function-level import closing a loop is reported; TYPE_CHECKING is not."""
    pkg = tmp_path / "ssm_train"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def check():\n    from ssm_train.data.registry import kinds\n")
    (pkg / "data" / "registry.py").write_text("from . import synthetic\n")
    (pkg / "data" / "synthetic.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ssm_train import config\n"
        "def f():\n    from ssm_train.config import ConfigError\n")
    assert find_cycle(import_graph(pkg)) == [
        "ssm_train.config", "ssm_train.data.registry", "ssm_train.data.synthetic", "ssm_train.config"]
    (pkg / "data" / "synthetic.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ssm_train import config\n")
    assert find_cycle(import_graph(pkg)) is None


@pytest.mark.parametrize("module, must_not_load", [
    ("ssm_train.errors", "ssm_train."),  # nothing else of the project
    ("ssm_train.config", "lightning"),  # the config loads fast: data kinds are imported when validated
    ("ssm_train.data.registry", "lightning"),  # looking a kind up needs no data module
])
def test_a_light_module_imports_alone_in_a_fresh_interpreter(module: str, must_not_load: str) -> None:
    """Imported first and alone (no other module warming sys.modules), and without pulling in the
    heavy parts: this is what lets ``errors`` and ``registry`` sit below everything else."""
    code = (f"import sys, {module}\n"
            f"print('\\n'.join(m for m in sys.modules if m.startswith({must_not_load!r}) and m != {module!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = [m for m in out.stdout.split() if m != "ssm_train"]  # a module's parent package always loads
    assert not loaded, f"importing {module} loaded {len(loaded)} modules, e.g. {loaded[:5]}"
