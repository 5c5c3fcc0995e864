"""One pass of an EvoFormer block as a zero-argument callable: what the EvoFormer benchmark and
the trials time and measure.

``fwd``: the block's forward under ``torch.no_grad`` (inference). ``fwd+bwd``: the forward, then
the backward of the sum of both outputs (in float32) into the parameter gradients, which are
cleared again so that every call does the same work.

Activation checkpointing of ``fwd+bwd`` (`CHECKPOINTS`): ``none``; ``block``: the whole block under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, i.e. one block of a stack with
``blocks_per_ckpt=1`` as OpenFold trains it (its activations are recomputed in the backward pass,
its peak is the block's own); ``modules``: each residual update of the block checkpointed
(``EvoformerBlock.checkpoint_modules``; the peak is one update's). ``fwd`` keeps no activations:
checkpointing does not apply to it."""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from models.evoformer import EvoformerBlock

__all__ = ["PASS_MODES", "CHECKPOINTS", "block_pass"]

PASS_MODES: tuple[str, ...] = ("fwd", "fwd+bwd")
CHECKPOINTS: tuple[str, ...] = ("none", "block", "modules")


def block_pass(block: EvoformerBlock, m: torch.Tensor, z: torch.Tensor, mode: str,
               checkpoint: str = "none") -> Callable[[], None]:
    """A callable running one ``mode`` pass of ``block`` on the MSA ``m`` [N_seq, L, c_m] and the
    pair ``z`` [L, L, c_z], ``fwd+bwd`` with the ``checkpoint`` of `CHECKPOINTS` (module docstring);
    ``mode`` not in `PASS_MODES` or ``checkpoint`` not in `CHECKPOINTS` is a ValueError."""
    if mode not in PASS_MODES:
        raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    if mode == "fwd":
        def fwd() -> None:
            with torch.no_grad():
                block(m, z)
        return fwd

    def fwd_bwd() -> None:
        before = block.checkpoint_modules
        block.checkpoint_modules = checkpoint == "modules"
        try:
            om, oz = torch_checkpoint(block, m, z, use_reentrant=False) if checkpoint == "block" else block(m, z)
            (om.float().sum() + oz.float().sum()).backward()
        finally:
            block.checkpoint_modules = before
        for p in block.parameters():
            p.grad = None
    return fwd_bwd
