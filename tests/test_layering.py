"""The layering of the project's packages, checked on every module's source.

Layers, bottom to top: ``patterns`` (rules, layouts) < ``kernels`` (backends, their registry, the
measurement layer) < ``models`` (the deployable EvoFormer) < ``search_spaces`` (the search-space
schema) < ``results`` (database, export writer, report) < ``autotune`` (trials, workloads,
executors, driver, accuracy, benchmarks, command lines). A module may import its own package and the packages below it, nothing above:
no cycle between packages, lazy imports included. Every import counts - at module level, inside
functions, under ``if TYPE_CHECKING:`` - relative ones resolved against the module's package, and
``importlib.import_module("...")`` / ``__import__("...")`` with a constant name. The layering alone
keeps the deployable model (``models``) free of the search side: it can import only ``patterns``,
``kernels`` and itself, so a deployment runs it without the tuner (``tests/test_deploy_imports.py``
checks the extras).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("patterns", "kernels", "models", "search_spaces", "results", "autotune")
RANK = {p: i for i, p in enumerate(LAYERS)}

# Imports against the layering that other work removes; delete an entry (and, when empty, this
# allow-list) once that work is merged - the test then holds without exceptions.
KNOWN: set[tuple[str, str]] = set()  # no known exception: every module keeps to its layer


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> list[tuple[str, Path]]:
    out = []
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                out.append((module_name(path), path))
    return out


def statements(name: str, path: Path) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, absolute module name, names taken from it) of every import in the module ``name`` at
    ``path``: ``import x`` and ``importlib.import_module("x")`` take no name, ``from x import a, b``
    takes ``("a", "b")``."""
    return [(line, target, names) for line, target, names, _ in _read(name, path)]


def imports(name: str, path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the module ``name`` at ``path``."""
    out: list[tuple[int, str]] = []
    for line, target, names, bare in _read(name, path):
        if bare:  # `from . import x`: x may be a module
            out += [(line, f"{target}.{a}") for a in names if a != "*"]
        out.append((line, target))
    return out


def _read(name: str, path: Path) -> list[tuple[int, str, tuple[str, ...], bool]]:
    """`statements`, each with whether it is a ``from . import x`` (no module named)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[int, str, tuple[str, ...], bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, (), False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                if len(base) < 1 or node.level - 1 > len(package.split(".")) - 1:
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target, tuple(a.name for a in node.names), node.module is None))
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if fname in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str) and not node.args[0].value.startswith("."):
                out.append((node.lineno, node.args[0].value, (), False))
    return out


def project(target: str) -> bool:
    return target.partition(".")[0] in RANK


def violations() -> list[str]:
    bad = []
    for name, path in modules():
        own = name.partition(".")[0]
        for line, target in imports(name, path):
            if not project(target):
                continue
            top = target.partition(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}: {name} imports {target}"
            if RANK[top] > RANK[own] and not any(name == m and (target == t or target.startswith(t + "."))
                                                 for m, t in KNOWN):
                bad.append(f"{where} (layer {top} is above {own})")
    return bad


def test_every_module_imports_only_its_own_layer_and_those_below():
    assert violations() == []


def test_the_known_exceptions_still_exist():
    """An allow-list entry whose import is gone must be deleted (the allow-list only shrinks)."""
    seen = {(name, t) for name, path in modules() for _, target in imports(name, path)
            for m, t in KNOWN if name == m and (target == t or target.startswith(t + "."))}
    assert seen == KNOWN, f"remove from KNOWN: {sorted(KNOWN - seen)}"


def exists(target: str) -> bool:
    path = ROOT.joinpath(*target.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_imported_project_module_exists():
    """An import of a project module names a file of this checkout (or an attribute of one): a stale
    path would otherwise load an installed older copy."""
    bad = []
    for name, path in modules():
        for line, target in imports(name, path):
            if not project(target) or exists(target):
                continue
            parent = target.rpartition(".")[0]  # `from pkg import attribute`
            if parent and exists(parent):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert bad == []


@pytest.mark.parametrize("source, expected", [
    ("from ..kernels import x", None),  # beyond the top-level package
    ("from . import db\nfrom .verdict import decide", ["results.report.db", "results.report",
                                                       "results.report.verdict"]),
    ("def f():\n    from autotune.trial import TrialRunner", ["autotune.trial"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import autotune.search", ["typing", "autotune.search"]),
    ("import importlib\nimportlib.import_module('autotune.db')", ["importlib", "autotune.db"]),
])
def test_the_import_reader(tmp_path, source, expected):
    """The reader sees lazy, TYPE_CHECKING and importlib imports, and resolves relative ones."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    if expected is None:
        with pytest.raises(AssertionError, match="beyond"):
            imports("results.mod", path)
        return
    got = [t for _, t in imports("results.report.build", path)]
    assert got == expected


def test_a_violation_is_reported(tmp_path, monkeypatch):
    """The check fails on an upward import: a results module importing the search."""
    fake = tmp_path / "results"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("def f():\n    from autotune.trial import TrialRunner\n")
    (tmp_path / "models" / "evoformer").mkdir(parents=True)
    (tmp_path / "models" / "__init__.py").write_text("")
    (tmp_path / "models" / "evoformer" / "model.py").write_text("from autotune.search import Search\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = violations()
    assert any("results.bad imports autotune.trial" in v for v in found), found
    assert any("models.evoformer.model imports autotune.search" in v for v in found), found
