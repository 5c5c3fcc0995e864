"""Public names of a package loaded on first use (PEP 562 module ``__getattr__``).

`patterns` and `kernels` keep their package faces light (``import patterns.errors`` or
``import kernels.baselines`` loads no torch): each lists its public names with the submodule that
defines them, and `lazy_exports` makes the module-level ``__getattr__`` / ``__dir__`` that import
that submodule on the first access and keep the value in the package's namespace.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, namespace: dict[str, Any],
                 names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(``__getattr__``, ``__dir__``) for ``package`` whose globals are ``namespace``: ``names`` maps
    a public name to the submodule (relative to the package) that defines it."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
