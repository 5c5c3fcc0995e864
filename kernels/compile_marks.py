"""Marks that `torch.compile` reads, set without importing ``torch._dynamo`` at import time.

``torch.compiler.assume_constant_result(fn)`` imports ``torch._dynamo`` (about a second, and it
imports triton and tqdm where they are installed) just to set one attribute on ``fn``. Deployment
imports ``kernels`` without ever compiling, so the backends mark their functions here instead;
``tests/test_cpu_compile.py`` checks that the marker is still the one torch sets.
"""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

_MARKER = "_dynamo_marked_constant"  # what torch._dynamo.decorators.assume_constant_result sets


def assume_constant_result(fn: F) -> F:
    """``fn``'s result is read by torch.compile as a constant (guarded on its arguments), as with
    ``torch.compiler.assume_constant_result``."""
    setattr(fn, _MARKER, True)
    return fn
