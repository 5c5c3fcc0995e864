"""Test set-up shared by the whole suite.

Without a GPU, Triton kernels run under Triton's interpreter: TRITON_INTERPRET must be set before
triton is first imported, so it is set here, at collection time.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Triton is an optional dependency (the `triton` and `test` extras): without it, the Triton kernel's
# own tests are not collected; everything else runs.
import importlib.util  # noqa: E402

collect_ignore = [] if importlib.util.find_spec("triton") else ["test_triton_kernel.py", "test_triton_opcheck.py"]
