"""Accuracy metrics of one layout on one chain, and the structure-derived attention probe.

The probe stands in for a trained EvoFormer row-attention layer on the chain:

* pair bias (the role of AlphaFold2's projected pair representation), one per head h:
  ``bias[h, i, j] = log sigmoid((8 A - d_ij) / tau_h)`` with tau = (1, 2, 4, 8) A for the four
  heads: ~0 for pairs in contact, falling off linearly with the distance beyond 8 A, from sharply
  contact-focused (tau = 1 A) to broad (tau = 8 A). d_ij is the C-beta distance of `structures`.
* q, k, v: standard normal, [1, 4 heads, L, 32], from a torch.Generator seeded with
  ``PROBE_SEED`` (the same seed for every chain, so a chain's probe depends only on its length
  and structure); scale 1/sqrt(32). float32 on CPU.

Per chain and layout (the layout built at the chain's own length L):

* contact counts per range: kept = contacts (i, j) with ``layout.token_mask()[i, j]``, total;
* attention mass: sum over heads and query rows of the dense softmax probability that falls on
  pairs the layout computes (the dense row sums to 1, so the maximum is H * L);
* output error: ||O_sparse - O_dense||^2 and ||O_dense||^2 (squared Frobenius norms), with both
  outputs from `kernels.reference_attention` (sparse: masked to the layout, dense: layout None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

import torch

from kernels import reference_attention
from patterns import BlockLayout, PatternConfig, build_layout

from .contacts import CONTACT_CUTOFF, RANGES, contact_pairs
from .structures import Chain

__all__ = [
    "PROBE_HEADS", "PROBE_DIM", "PROBE_TAUS", "PROBE_SEED", "ChainStats", "pair_bias", "chain_stats", "layout_stats",
    "layout_and_token_mask", "aggregate",
]

PROBE_TAUS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
PROBE_HEADS: int = len(PROBE_TAUS)
PROBE_DIM: int = 32
PROBE_SEED: int = 0
_DTYPE = torch.float32


@dataclass(frozen=True)
class ChainStats:
    """Raw (summable) figures of one layout on one chain."""

    length: int
    kept: tuple[int, ...]  # kept contacts per range, in RANGES order
    total: tuple[int, ...]  # contacts per range
    mass_kept: float  # dense probability mass on computed pairs, summed over heads and rows
    mass_total: float  # H * L
    err_sq: float  # ||O_sparse - O_dense||^2
    ref_sq: float  # ||O_dense||^2
    density: float  # fraction of the L x L pairs computed


def pair_bias(chain: Chain) -> torch.Tensor:
    """float32 [1, H, L, L]: the structure-derived pair bias (see module docstring)."""
    d = torch.from_numpy(chain.distances()).to(_DTYPE)
    taus = torch.tensor(PROBE_TAUS, dtype=_DTYPE).view(-1, 1, 1)
    return torch.nn.functional.logsigmoid((CONTACT_CUTOFF - d.unsqueeze(0)) / taus).unsqueeze(0)


def _probe(chain: Chain):
    """(q, k, v, bias, dense output, head-summed dense probabilities [L, L]) cached per chain."""
    if "probe" not in chain._cache:
        L = chain.length
        g = torch.Generator().manual_seed(PROBE_SEED)
        q, k, v = (torch.randn(1, PROBE_HEADS, L, PROBE_DIM, generator=g, dtype=_DTYPE) for _ in range(3))
        bias = pair_bias(chain)
        scale = 1.0 / math.sqrt(PROBE_DIM)
        with torch.no_grad():
            probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale + bias, dim=-1)
            dense = reference_attention(q, k, v, None, bias, scale)
        chain._cache["probe"] = (q, k, v, bias, dense, probs[0].sum(0).contiguous(), float((dense * dense).sum()))
    return chain._cache["probe"]


@lru_cache(maxsize=1024)
def layout_and_token_mask(config: PatternConfig, seq_len: int) -> tuple[BlockLayout, torch.Tensor]:
    """(layout, token_mask) of ``config`` at ``seq_len``, cached."""
    layout = build_layout(config, seq_len)
    tm = layout.token_mask()
    if tm.dim() == 3:  # per-head layout: a pair counts as computed if any head computes it
        tm = tm.any(0)
    return layout, tm


def chain_stats(config: PatternConfig, chain: Chain) -> ChainStats:
    """The figures of ``config``'s layout, built at the chain's own length, on ``chain``."""
    layout, tm = layout_and_token_mask(config, chain.length)
    return layout_stats(layout, chain, tm)


def layout_stats(layout: BlockLayout, chain: Chain, token_mask: torch.Tensor | None = None) -> ChainStats:
    """The figures of any layout at the chain's length (a guided layout chosen for this chain, a
    random mask, ...) on ``chain``; ``token_mask``: the layout's [L, L] pairs if already known
    (a per-head layout counts a pair as computed if any head computes it)."""
    L = chain.length
    if layout.seq_len != L:
        raise ValueError(f"layout is for L={layout.seq_len}, chain {chain.name} has L={L}")
    tm = token_mask
    if tm is None:
        tm = layout.token_mask().cpu()
        if tm.dim() == 3:
            tm = tm.any(0)
    pairs = contact_pairs(chain)
    tm_np = tm.numpy()
    kept, total = [], []
    for name in RANGES:
        i, j = pairs[name]
        total.append(int(len(i)))
        kept.append(int(tm_np[i, j].sum()) if len(i) else 0)
    q, k, v, bias, dense, psum, ref_sq = _probe(chain)
    mass_total = float(PROBE_HEADS * L)
    if layout.is_full:
        mass_kept, err_sq = mass_total, 0.0
    else:
        mass_kept = float(psum[tm].sum())
        with torch.no_grad():
            sparse = reference_attention(q, k, v, layout, bias, 1.0 / math.sqrt(PROBE_DIM))
        err_sq = float(((sparse - dense) ** 2).sum())
    return ChainStats(L, tuple(kept), tuple(total), min(mass_kept, mass_total), mass_total, err_sq, ref_sq, layout.density)


def aggregate(stats: Sequence[ChainStats]) -> dict[str, Optional[float]]:
    """Pool per-chain figures into the metrics of `autotune.accuracy.ACCURACY_METRICS` (see that
    package's docstring); a range with no contact in the chains is None (no data), never a perfect
    score."""
    out: dict[str, Optional[float]] = {}
    for r, name in enumerate(RANGES):
        tot = sum(s.total[r] for s in stats)
        out[f"contact_recall_{name}"] = (sum(s.kept[r] for s in stats) / tot) if tot else None
    out["attention_mass_recall"] = sum(s.mass_kept for s in stats) / sum(s.mass_total for s in stats)
    ref = sum(s.ref_sq for s in stats)
    out["output_rel_error"] = math.sqrt(sum(s.err_sq for s in stats) / ref) if ref > 0 else 0.0
    return out
