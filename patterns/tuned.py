"""Kept for compatibility only: the tuned-file reader moved to `kernels.tuned` (``from kernels import
load_tuned``). Still imported as ``patterns.tuned`` by autotune/export.py, autotune/accuracy/__main__.py,
autotune/evoformer/bench.py and tests/test_accuracy.py; remove this module (it imports a higher layer)
once they import ``kernels.tuned``."""

from kernels.tuned import *  # noqa: F401,F403
from kernels.tuned import __all__  # noqa: F401
