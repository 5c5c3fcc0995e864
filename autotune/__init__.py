"""Autotuner for block-sparse attention patterns in protein structure models.

`autotune` is the top layer: trials, workloads, executors, the search driver, accuracy, the
EvoFormer model and the command-line tools. It builds on `results` (database, export writer,
report), `search_spaces` (the space schema), `kernels` and `patterns` (README, repository layout).

Modules that moved down a layer keep their old import path for compatibility (`MOVED`): importing
``autotune.db`` gives the very module object ``results.db`` (same classes, same globals, so a
monkeypatch on either name reaches both). No file is left at an old path, so that work written
against the old file follows the move. New code imports the new place.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old module -> its new place (kept for compatibility)
MOVED = {
    "autotune.space": "search_spaces.space",
    "autotune.db": "results.db",
    "autotune.storage": "results.storage",
    "autotune.bench_tables": "results.bench_tables",
    "autotune.aggregate": "results.aggregate",
    "autotune.verdict": "results.verdict",
    "autotune.measure": "kernels.measure",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module name of `MOVED` to the module at its new place (imported lazily, on
    first use: importing `autotune` imports none of them)."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib protocol
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):  # noqa: ANN001
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the alias's; restored below
        return module

    def exec_module(self, module) -> None:  # noqa: ANN001
        alias = module.__spec__
        module.__spec__ = alias.loader_state
        sys.modules[alias.name] = module


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    # first: it answers only the names of MOVED, which no other finder may resolve to an old copy
    # (an install of an older checkout still has files at the old paths)
    sys.meta_path.insert(0, _MovedModules())
