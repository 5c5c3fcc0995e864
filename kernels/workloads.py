"""The attention workloads' shapes: AlphaFold2's EvoFormer attention dimensions and the batch rule of
each attention kind, one registry for the kernel benchmark (``kernels.bench``) and the search
spaces' workload records (``search_spaces.workloads``, which the trials time).

Kinds (Jumper et al. 2021, Supplementary Algorithms 7 and 13):

* ``msa_row``: MSA row-wise attention with pair bias: one attention of L residues per MSA row; the
  batch is the number of rows, ``tokens // L`` (at least 1; no ``tokens``: one row), so that the
  work stays near ``tokens`` residues in all at every length;
* ``triangle``: triangle attention around the starting node: one attention of L per residue of the
  pair representation, so the batch is L.

``max_batch`` caps either. The pair bias is [1, heads, L, L], shared over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: AlphaFold2's attention dimensions: MSA row attention heads, triangle attention heads, head dim
MSA_HEADS = 8
PAIR_HEADS = 4
HEAD_DIM = 32

ATTENTION_KINDS: tuple[str, ...] = ("msa_row", "triangle")


def attention_batch(kind: str, seq_len: int, tokens: Optional[int] = None, max_batch: Optional[int] = None) -> int:
    """The batch of an attention workload of ``kind`` at ``seq_len`` residues (module docstring)."""
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"unknown attention kind {kind!r} (known: {', '.join(ATTENTION_KINDS)})")
    b = max(1, (seq_len if tokens is None else tokens) // seq_len) if kind == "msa_row" else seq_len
    if max_batch is not None:
        b = min(b, max_batch)
    return max(1, b)


@dataclass(frozen=True)
class AttentionShape:
    """A named attention workload: its kind, heads and head dim, and per device type (``cuda``,
    ``cpu``) the ``(tokens, max_batch)`` of its batch rule (`attention_batch`)."""

    name: str
    kind: str
    heads: int
    head_dim: int
    batch_rule: dict[str, tuple[Optional[int], Optional[int]]]

    def batch(self, seq_len: int, device_type: str) -> int:
        tokens, max_batch = self.batch_rule[device_type]
        return attention_batch(self.kind, seq_len, tokens, max_batch)


#: the kernel benchmark's workloads (``python -m kernels.bench --workloads``): on a GPU, MSA row
#: attention over 32768 tokens and triangle attention with all L rows; on a CPU one MSA row and 8
#: triangle rows, so that a case fits a few seconds
BENCH_WORKLOADS: dict[str, AttentionShape] = {
    "row": AttentionShape("row", "msa_row", MSA_HEADS, HEAD_DIM, {"cuda": (32768, None), "cpu": (None, 1)}),
    "tri": AttentionShape("tri", "triangle", PAIR_HEADS, HEAD_DIM, {"cuda": (None, None), "cpu": (None, 8)}),
}
