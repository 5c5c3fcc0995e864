"""No import cycle between the project's modules, inside a package as well as between packages.

The layering (`test_layering`) already keeps packages apart; this test looks at modules. The graph
has one node per module (a package is its ``__init__``) and one edge per import, read by the
layering test's reader: module-level and lazy imports, ``TYPE_CHECKING`` ones, relative ones and
``importlib.import_module`` with a constant name all count. An edge goes to the module whose code
the importer uses:

- ``import a.b.c`` and ``from a.b.c import name`` go to ``a.b.c``;
- ``from a.b import c`` where ``c`` is a submodule goes to ``a.b.c`` (the name is the submodule);
- ``from a.b import name`` where ``name`` is not a submodule goes to ``a.b``, the package's face:
  its ``__init__``, with its own imports. A submodule that takes a name from its own package's face
  while that face imports the submodule (to re-export it) is a cycle, even though Python resolves
  it by the order of the face's imports: the submodule has to import the module that defines the
  name instead.

Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``; those implied edges are left out,
or every re-exporting package would be a cycle with each of its submodules by construction.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import test_layering as layering
from test_layering import modules, statements

Graph = dict[str, dict[str, tuple[Path, int]]]  # module -> imported module -> (file, line) of one import


def graph() -> Graph:
    """The import graph of the project's modules (the module docstring's rules)."""
    found = modules()
    nodes = {name for name, _ in found}
    edges: Graph = {name: {} for name in nodes}

    def resolve(target: str) -> str | None:  # the module a dotted name lives in (`kernels.foo` -> kernels)
        while target and target not in nodes:
            target = target.rpartition(".")[0]
        return target or None

    for name, path in found:
        for line, target, names in statements(name, path):
            if not layering.project(target):
                continue
            heads = [f"{target}.{n}" if f"{target}.{n}" in nodes else resolve(target) for n in names] \
                or [resolve(target)]
            for head in heads:
                if head is not None and head != name:
                    edges[name].setdefault(head, (path, line))
    return edges


def components(edges: Graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative):
    each is one or more import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def shortest_cycle(edges: Graph, comp: list[str]) -> list[str]:
    """One shortest cycle through the component's first module (breadth-first search)."""
    start, inside = comp[0], set(comp)
    came: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(edges[node]):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came[path[-1]])
                    return [start] + path[::-1][1:] + [start]
                if child in inside and child not in came:
                    came[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"no cycle in {comp}")


def describe(edges: Graph) -> list[str]:
    """One line per cycle component: a shortest cycle, each import with its file and line."""
    lines = []
    for comp in components(edges):
        cycle = shortest_cycle(edges, comp)
        hops = []
        for a, b in zip(cycle, cycle[1:]):
            path, line = edges[a][b]
            hops.append(f"{a} -> {b} ({path.relative_to(layering.ROOT)}:{line})")
        lines.append(f"{len(comp)} modules {comp}: " + "; ".join(hops))
    return lines


def test_no_import_cycle_between_modules():
    assert describe(graph()) == []


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize("files, cycles", [
    # two sibling modules importing each other, one of them lazily
    ({"patterns/__init__.py": "", "patterns/a.py": "from .b import x\n",
      "patterns/b.py": "def f():\n    from patterns.a import y\n"}, [["patterns.a", "patterns.b"]]),
    # a submodule taking a sibling's name through its package's face, which imports the submodule
    ({"kernels/__init__.py": "from .a import check\nfrom .b import run\n", "kernels/a.py": "def check(): ...\n",
      "kernels/b.py": "from kernels import check\n"}, [["kernels", "kernels.b"]]),
    # the same name taken from the module that defines it: no cycle
    ({"kernels/__init__.py": "from .a import check\nfrom .b import run\n", "kernels/a.py": "def check(): ...\n",
      "kernels/b.py": "from kernels.a import check\n"}, []),
    # `from package import submodule` is an import of the submodule, not of the face
    ({"results/__init__.py": "from .db import Database\n", "results/db.py": "",
      "results/verdict.py": "from results import db\n", "results/report.py": "from . import verdict\n"}, []),
    # a package's face and a submodule importing the face for a name the face defines itself
    ({"results/__init__.py": "from .db import Database\nLIMIT = 3\n", "results/db.py": "from results import LIMIT\n"},
     [["results", "results.db"]]),
    # a cycle between packages is one too (the layering test forbids it as well)
    ({"patterns/__init__.py": "", "patterns/a.py": "import kernels.b\n", "kernels/__init__.py": "",
      "kernels/b.py": "from patterns.a import x\n"}, [["kernels.b", "patterns.a"]]),
])
def test_the_cycle_rule(tmp_path, monkeypatch, files, cycles):
    """What counts as a cycle (the module docstring), on small fake packages."""
    write(tmp_path, files)
    monkeypatch.setattr(sys.modules["test_layering"], "ROOT", tmp_path)
    edges = graph()
    assert components(edges) == cycles
    for comp, line in zip(cycles, describe(edges)):
        assert all(m in line for m in comp) and ".py:" in line
