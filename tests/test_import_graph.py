"""The import graph of the project: no cycle, and docs/architecture.md's one-way dependencies.

Dependencies run ``cli -> fedsim -> {secagg, accounting}``: ``secagg`` and ``accounting``
import neither ``fedsim``, ``cli`` nor each other, and ``fedsim`` imports ``cli`` only in
``fedsim/__main__.py`` (the ``python -m fedsim`` entry point).

Static, with ``ast``: every ``import`` and ``from ... import`` statement of every module
under fedsim/, secagg/, accounting/ and cli/, wherever it stands (inside functions,
``try`` or ``if`` blocks too). A package's ``__init__`` is a module of the graph. An
import's edge goes to the project module it executes:

- ``import a.b.c`` -> ``a.b.c``; ``from a.b import z`` -> ``a.b.z`` when that is a module
  (``from package import submodule``), else ``a.b``; relative imports resolve against the
  importer's package;
- and to every package above that target which the importer is not inside: importing
  ``a.b.c`` from outside ``a.b`` runs ``a/b/__init__.py`` first (within ``a.b`` that
  ``__init__`` is already running, so no edge).

Imports done by name at run time (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO_ROOT

PACKAGES = ("fedsim", "secagg", "accounting", "cli")


@dataclass(frozen=True)
class Import:
    """One edge: ``importer`` runs ``target``; ``written`` is the imported name, made absolute."""

    importer: str
    target: str
    written: str
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py under the packages (``__init__``: the package)."""
    modules = {}
    for package in packages:
        assert (root / package / "__init__.py").is_file(), f"{package}/ is not a package under {root}"
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _longest_module_prefix(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def module_imports(module: str, path: Path, modules: dict[str, Path], root: Path) -> list[Import]:
    """The project modules ``module`` imports (with the packages above them it enters)."""
    is_package = path.name == "__init__.py"
    own_package = module if is_package else module.rpartition(".")[0]
    shown = path.relative_to(root)
    found: list[tuple[str, str, int]] = []  # (target, written, line)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _longest_module_prefix(alias.name, modules)
                if target is not None:
                    found.append((target, alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = own_package.split(".") if own_package else []
                up = node.level - 1
                assert up < len(base_parts), f"{shown}:{node.lineno}: relative import beyond the top package"
                base = ".".join(base_parts[: len(base_parts) - up] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in modules else _longest_module_prefix(base, modules)
                if target is not None:
                    found.append((target, target if target == submodule else base, node.lineno))
    edges = []
    for target, written, line in found:
        parts = target.split(".")
        entered = [".".join(parts[:end]) for end in range(1, len(parts))]
        for runs in [target, *entered]:
            inside = module == runs or module.startswith(runs + ".")
            if runs in modules and not inside:
                edges.append(Import(module, runs, written, shown, line))
    return edges


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, dict[str, Import]]:
    """importer -> {target: the first import statement that makes the edge}."""
    modules = project_modules(root, packages)
    graph: dict[str, dict[str, Import]] = {module: {} for module in modules}
    for module, path in modules.items():
        for edge in module_imports(module, path, modules, root):
            graph[module].setdefault(edge.target, edge)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm; the components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def shortest_cycle(graph: dict[str, dict[str, Import]], component: list[str]) -> list[Import]:
    """A shortest cycle through the first module of ``component``, as its edges."""
    start, members = component[0], set(component)
    came_by: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w, edge in sorted(graph[v].items()):
            if w == start:
                cycle = [edge]
                while cycle[0].importer != start:
                    cycle.insert(0, came_by[cycle[0].importer])
                return cycle
            if w in members and w not in came_by:
                came_by[w] = edge
                queue.append(w)
    raise AssertionError(f"{component} is not strongly connected")


def describe_cycles(graph: dict[str, dict[str, Import]]) -> list[str]:
    lines = []
    for component in strongly_connected_components(graph):
        cycle = shortest_cycle(graph, component)
        steps = " -> ".join(f"{edge.target} ({edge.where()})" for edge in cycle)
        more = f"; one cycle among {component}" if len(component) > len(cycle) else ""
        lines.append(f"{cycle[0].importer} -> {steps}{more}")
    return lines


def forbidden_imports(
    graph: dict[str, dict[str, Import]],
    importers: tuple[str, ...],
    forbidden: tuple[str, ...],
    allowed: tuple[str, ...] = (),
) -> list[str]:
    """Imports by modules of the ``importers`` packages of modules of the ``forbidden`` ones."""

    def within(module: str, packages: tuple[str, ...]) -> bool:
        return any(module == p or module.startswith(p + ".") for p in packages)

    return sorted({
        f"{edge.importer} imports {edge.written} ({edge.where()})"
        for importer, edges in graph.items()
        if within(importer, importers) and importer not in allowed
        for edge in edges.values()
        if within(edge.target, forbidden) or within(edge.written, forbidden)
    })


# --- the walker itself, on a tree whose edges are known ----------------------------------------


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_walker_finds_every_kind_of_import_and_the_cycle_they_make(tmp_path: Path) -> None:
    _write_tree(tmp_path, {
        "pkg/__init__.py": "from .a import thing\n",
        "pkg/a.py": "import os\n\nthing = 1\n\ndef later():\n    from pkg import b  # a submodule, inside a function\n",
        "pkg/b.py": "try:\n    import pkg.c.d\nexcept ImportError:\n    pass\n",
        "pkg/c/__init__.py": "",
        "pkg/c/d.py": "from .. import a\nfrom ..a import thing\n",
        "pkg/e.py": "from pkg.c import d as _d\nfrom pkg import thing\nimport pkg.missing\n",
        "app/__init__.py": "from pkg import e\n",
        "app/main.py": "import app\nfrom app import main\n",
        "lib/__init__.py": "from app.main import x\n",
    })
    graph = import_graph(tmp_path, ("pkg", "app", "lib"))
    edges = {(importer, target) for importer, targets in graph.items() for target in targets}
    assert edges == {
        ("pkg", "pkg.a"),
        ("pkg.a", "pkg.b"),
        ("pkg.b", "pkg.c.d"), ("pkg.b", "pkg.c"),  # entering pkg.c runs its __init__
        ("pkg.c.d", "pkg.a"),  # relative, two levels up
        ("pkg.e", "pkg.c.d"), ("pkg.e", "pkg.c"),  # `from pkg import thing`: pkg is running already
        ("app", "pkg.e"), ("app", "pkg"),
        ("lib", "app.main"), ("lib", "app"),
    }  # app.main importing app (its own package) and itself makes no edge
    assert graph["pkg.b"]["pkg.c.d"].line == 2 and graph["pkg.c.d"]["pkg.a"].written == "pkg.a"
    assert strongly_connected_components(graph) == [["pkg.a", "pkg.b", "pkg.c.d"]]
    (cycle,) = describe_cycles(graph)
    assert cycle == (
        "pkg.a -> pkg.b (pkg/a.py:6) -> pkg.c.d (pkg/b.py:2) -> pkg.a (pkg/c/d.py:1)"
    )
    assert forbidden_imports(graph, ("lib",), ("app",)) == ["lib imports app.main (lib/__init__.py:1)"]
    assert forbidden_imports(graph, ("pkg",), ("app", "lib")) == []
    assert forbidden_imports(graph, ("app",), ("pkg",)) == ["app imports pkg.e (app/__init__.py:1)"]
    assert forbidden_imports(graph, ("app",), ("pkg",), allowed=("app",)) == []


# --- the project -------------------------------------------------------------------------------


def test_project_modules_import_no_cycle() -> None:
    graph = import_graph(REPO_ROOT, PACKAGES)
    assert sum(map(len, graph.values())) > len(PACKAGES)  # the walker saw the project's imports
    cycles = describe_cycles(graph)
    assert not cycles, "import cycles among project modules:\n" + "\n".join(cycles)


def test_secagg_and_accounting_import_neither_fedsim_cli_nor_each_other() -> None:
    graph = import_graph(REPO_ROOT, PACKAGES)
    wrong = forbidden_imports(graph, ("secagg",), ("fedsim", "cli", "accounting"))
    wrong += forbidden_imports(graph, ("accounting",), ("fedsim", "cli", "secagg"))
    assert not wrong, "imports against the cli -> fedsim -> {secagg, accounting} direction:\n" + "\n".join(wrong)


def test_fedsim_imports_cli_only_in_its_main() -> None:
    graph = import_graph(REPO_ROOT, PACKAGES)
    wrong = forbidden_imports(graph, ("fedsim",), ("cli",), allowed=("fedsim.__main__",))
    assert not wrong, "fedsim imports cli outside fedsim/__main__.py:\n" + "\n".join(wrong)
