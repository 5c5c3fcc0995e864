"""One pass of an EvoFormer block as a zero-argument callable: what the EvoFormer benchmark and
the trials time and measure.

``fwd``: the block's forward under ``torch.no_grad`` (inference). ``fwd+bwd``: the forward, then
the backward of the sum of both outputs (in float32) into the parameter gradients, which are
cleared again so that every call does the same work."""

from __future__ import annotations

from typing import Callable

import torch

from models.evoformer import EvoformerBlock

__all__ = ["PASS_MODES", "block_pass"]

PASS_MODES: tuple[str, ...] = ("fwd", "fwd+bwd")


def block_pass(block: EvoformerBlock, m: torch.Tensor, z: torch.Tensor, mode: str) -> Callable[[], None]:
    """A callable running one ``mode`` pass of ``block`` on the MSA ``m`` [N_seq, L, c_m] and the
    pair ``z`` [L, L, c_z] (module docstring); ``mode`` not in `PASS_MODES` is a ValueError."""
    if mode not in PASS_MODES:
        raise ValueError(f"mode must be 'fwd' or 'fwd+bwd', got {mode!r}")
    if mode == "fwd":
        def fwd() -> None:
            with torch.no_grad():
                block(m, z)
        return fwd

    def fwd_bwd() -> None:
        om, oz = block(m, z)
        (om.float().sum() + oz.float().sum()).backward()
        for p in block.parameters():
            p.grad = None
    return fwd_bwd
