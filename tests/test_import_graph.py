"""The package's import graph has no cycles, function-local imports included.

Every module under ``src/midashenglm`` is parsed with :mod:`ast`; each import statement
anywhere in it (module level, inside functions and methods, inside ``try``) becomes an
edge to the intra-package modules it runs:

* ``import midashenglm.a.b`` and ``from midashenglm.a.b import name``: ``midashenglm.a.b``;
* ``from pkg import name`` where ``pkg`` is a package: ``pkg/__init__``, plus
  ``pkg.name`` when ``name`` is a submodule, plus the module that ``pkg``'s lazy
  ``_EXPORTS = {"name": "module"}`` table loads for ``name``;
* ``importlib.import_module("midashenglm.x")`` with a literal name: ``midashenglm.x``;
* relative imports, resolved against the importing module.

Imports under ``if TYPE_CHECKING:`` never run and are left out. Parent packages that
Python initialises on the way (``midashenglm/__init__`` for every submodule) are not
edges: they hold no eager imports of their children except where they say so, and
such imports are edges of their own.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "midashenglm"


@dataclass
class Graph:
    modules: dict[str, Path]  # module name -> file
    packages: set[str]  # module names that are packages (an __init__.py)
    edges: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # a -> b -> lines

    def add(self, source: str, target: str, line: int) -> None:
        if target != source and target in self.modules:
            self.edges.setdefault(source, {}).setdefault(target, []).append(line)

    def targets(self, source: str) -> set[str]:
        return set(self.edges.get(source, {}))


def _module_names(root: Path) -> tuple[dict[str, Path], set[str]]:
    modules, packages = {}, set()
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
            packages.add(".".join(parts))
        modules[".".join(parts)] = path
    return modules, packages


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterable[ast.AST]:
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks (their ``else`` runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _lazy_exports(tree: ast.Module) -> dict[str, str]:
    """A package's ``_EXPORTS = {"name": "module", ...}`` table, if it has one."""
    for node in tree.body:
        value = None
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets):
            value = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "_EXPORTS":
            value = node.value
        if isinstance(value, ast.Dict):
            return {
                k.value: v.value
                for k, v in zip(value.keys, value.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
                and isinstance(k.value, str) and isinstance(v.value, str)
            }
    return {}


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def build_graph(root: Path = SRC) -> Graph:
    modules, packages = _module_names(root)
    graph = Graph(modules, packages)
    trees = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in modules.items()}
    exports = {name: _lazy_exports(trees[name]) for name in packages}
    for source, tree in trees.items():
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    graph.add(source, alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = _resolve_relative(source, source in packages, node.level, node.module)
                graph.add(source, base, node.lineno)
                if base in packages:
                    for alias in node.names:
                        graph.add(source, f"{base}.{alias.name}", node.lineno)
                        lazy = exports[base].get(alias.name)
                        if lazy:
                            graph.add(source, lazy, node.lineno)
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if called == "import_module" and node.args and isinstance(node.args[0], ast.Constant) \
                        and isinstance(node.args[0].value, str):
                    graph.add(source, node.args[0].value, node.lineno)
    return graph


def strongly_connected(edges: dict[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of a directed graph (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    nodes = set(edges) | {t for targets in edges.values() for t in targets}

    def connect(node: str) -> None:  # Tarjan, iterative: no recursion limit on deep graphs
        work = [(node, iter(sorted(edges.get(node, ()))))]
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        while work:
            current, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[current] = min(low[current], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[current])
            if low[current] == index[current]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == current:
                        break
                components.append(component)

    for node in sorted(nodes):
        if node not in index:
            connect(node)
    return components


def find_cycles(edges: dict[str, Iterable[str]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected component that has one."""
    cycles = []
    for component in strongly_connected(edges):
        members = set(component)
        if len(members) == 1 and next(iter(members)) not in set(edges.get(next(iter(members)), ())):
            continue
        start = min(members)
        # Shortest way back to ``start`` inside the component (breadth first).
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            following = []
            for node in frontier:
                for child in sorted(edges.get(node, ())):
                    if child not in members:
                        continue
                    if child == start:
                        found = node
                        break
                    if child not in previous:
                        previous[child] = node
                        following.append(child)
                if found is not None:
                    break
            frontier = following
        path = [start]
        node = found
        while node != start:
            path.append(node)
            node = previous[node]
        cycles.append([start, *reversed(path[1:]), start])
    return cycles


def _describe(graph: Graph, cycle: list[str]) -> str:
    lines = []
    for a, b in itertools.pairwise(cycle):
        where = ", ".join(str(n) for n in graph.edges[a][b])
        lines.append(f"  {a} -> {b}   ({graph.modules[a].relative_to(SRC)}:{where})")
    members = next(c for c in strongly_connected(graph.edges) if cycle[0] in c)
    tangled = f"\n  (modules in this tangle: {', '.join(sorted(members))})" if len(members) > len(cycle) - 1 else ""
    return " -> ".join(cycle) + "\n" + "\n".join(lines) + tangled


# --------------------------------------------------------------------------------- tests
def test_the_package_has_no_import_cycles():
    graph = build_graph()
    cycles = find_cycles({a: set(b) for a, b in graph.edges.items()})
    report = "\n\n".join(_describe(graph, c) for c in cycles)
    if report:
        print(f"import cycles in {PACKAGE}:\n{report}")
    assert not cycles, f"{len(cycles)} import cycle(s):\n{report}"


def test_the_parser_sees_every_kind_of_import():
    """Known edges of this package, each of a different kind, so an empty graph cannot pass."""
    graph = build_graph()
    assert len(graph.modules) > 20
    # module level, ``from a.b import name``
    assert "midashenglm.modeling.geometry" in graph.targets("midashenglm.modeling.model")
    assert "midashenglm.modeling.weights" in graph.targets("midashenglm.modeling.model")
    # function-local (inside a method)
    assert "midashenglm.modeling.weights" in graph.targets("midashenglm.processing")
    # ``from pkg import name`` where name is a submodule, and ``import a.b`` are covered by
    # test_cycles_are_found_through_local_relative_and_lazy_imports on a package of its own.


def test_layers_only_import_downwards():
    """modeling/ is the bottom layer: it imports nothing of the package outside itself, and
    neither the processor nor the model imports the loaders above them."""
    graph = build_graph()
    for module in graph.modules:
        if module.startswith("midashenglm.modeling."):
            outside = {t for t in graph.targets(module) if not t.startswith("midashenglm.modeling")}
            assert not outside, f"{module} imports {outside} from above modeling/"
    weights = graph.targets("midashenglm.modeling.weights")
    assert weights <= {"midashenglm.modeling.config"}, weights
    assert not graph.targets("midashenglm.modeling.geometry")
    for module in ("midashenglm.processing", "midashenglm.modeling.model"):
        assert not graph.targets(module) & {"midashenglm.checkpoint", "midashenglm.commands", "midashenglm.cli"}
    # The command line sits on top: it loads the areas' command modules, none imports it back
    # (``python -m midashenglm``, i.e. ``__main__``, is only its entry point).
    assert not [m for m in graph.modules
                if "midashenglm.cli" in graph.targets(m) and m != "midashenglm.__main__"]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cycles_are_found_through_local_relative_and_lazy_imports(tmp_path):
    _write(tmp_path, {
        "__init__.py": "_EXPORTS = {'Thing': 'midashenglm.c'}\n",
        "a.py": "def f():\n    from midashenglm import b\n",
        "b.py": "from . import c\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import midashenglm.a\n",
        "d.py": "from midashenglm import Thing\n",
        "e.py": "import importlib\nimportlib.import_module('midashenglm.d')\n",
        "sub/__init__.py": "",
        "sub/x.py": "from ..e import y\n",
    })
    graph = build_graph(tmp_path)
    assert graph.targets("midashenglm.a") == {"midashenglm", "midashenglm.b"}
    assert graph.targets("midashenglm.b") == {"midashenglm", "midashenglm.c"}
    assert graph.targets("midashenglm.c") == set()  # TYPE_CHECKING only
    assert graph.targets("midashenglm.d") == {"midashenglm", "midashenglm.c"}
    assert graph.targets("midashenglm.sub.x") == {"midashenglm.e"}
    assert find_cycles({a: set(b) for a, b in graph.edges.items()}) == []

    _write(tmp_path, {"c.py": "def g():\n    import midashenglm.a\n"})
    graph = build_graph(tmp_path)
    assert find_cycles({a: set(b) for a, b in graph.edges.items()}) == [
        ["midashenglm.a", "midashenglm.b", "midashenglm.c", "midashenglm.a"]
    ]


@pytest.mark.parametrize(("edges", "expected"), [
    ({"a": {"b"}, "b": {"c"}}, []),
    ({"a": {"a"}}, [["a", "a"]]),
    ({"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}}, [["c", "d", "c"], ["a", "b", "a"]]),
])
def test_find_cycles(edges, expected):
    assert sorted(find_cycles(edges)) == sorted(expected)
