"""Kept for compatibility: the measurement layer moved to `kernels.measure` (timer, peak-memory
probe, OOM detector, tolerance table). This module re-exports it for code that still imports
``autotune.measure``; new code imports `kernels.measure`."""

from kernels.measure import *  # noqa: F401,F403
from kernels.measure import __all__  # noqa: F401
