"""One EvoFormer block of AlphaFold2 (supplement Algorithm 6) and a stack of them, in plain PyTorch.

Module and parameter names and shapes follow OpenFold's ``EvoformerBlock`` exactly (see
``openfold_evoformer_block_keys.txt`` next to this file), so an OpenFold checkpoint loads with
``load_state_dict(strict=True)`` (or ``load_openfold_state_dict`` for prefixed or older names).
The arithmetic follows OpenFold too (e.g. the outer product mean divides after ``linear_out``).

Inference/benchmark module: dropout (row-wise 0.15 on MSA row attention and the triangle updates,
column-wise 0.25 on triangle attention around the ending node in AF2) is omitted, as are
OpenFold's chunking and in-place tricks.

Activation checkpointing (training; off by default, no parameters, so checkpoints load unchanged):
``EvoformerStack(blocks_per_ckpt=k)`` runs each group of k blocks under
``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, as OpenFold's ``checkpoint_blocks``
does (`checkpoint_blocks`): only the group's inputs are kept, its activations are recomputed in the
backward pass. ``EvoformerBlock(checkpoint_modules=True)`` checkpoints each of the block's nine
residual updates instead (finer: the peak of one block's backward is one update's activations). Both
apply only in training mode with gradients enabled (OpenFold: ``blocks_per_ckpt if self.training``).
The recompute is exact: no dropout here, and a guided pattern reads its pair signal detached and
selects deterministically, so the recomputed layout is the first one.

Shapes: m (MSA representation) [*, N_seq, N_res, c_m]; z (pair representation)
[*, N_res, N_res, c_z]; optional masks msa_mask [*, N_seq, N_res], pair_mask [*, N_res, N_res]
(1 = keep). The attention of the MSA row, MSA column and both triangle attention modules is chosen
by an ``EvoformerAttention`` (see ``attention.py``), given at construction or via
``set_attention``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import AttentionChoice, EvoformerAttention, attend

__all__ = [
    "GatedAttention",
    "pair_bias",
    "MSAAttention",
    "MSARowAttentionWithPairBias",
    "MSAColumnAttention",
    "Transition",
    "MSATransition",
    "PairTransition",
    "OuterProductMean",
    "TriangleMultiplicativeUpdate",
    "TriangleMultiplicationOutgoing",
    "TriangleMultiplicationIncoming",
    "TriangleAttention",
    "TriangleAttentionStartingNode",
    "TriangleAttentionEndingNode",
    "PairStack",
    "EvoformerBlock",
    "EvoformerStack",
    "checkpoint_blocks",
]


def _checkpointing(module: nn.Module, enabled: Any) -> bool:
    """Whether ``module`` checkpoints now: asked for, in training mode, with gradients enabled."""
    return bool(enabled) and module.training and torch.is_grad_enabled()


def _update(ckpt: bool, fn: Any, *args: Any) -> Any:
    """``fn(*args)``, under non-reentrant activation checkpointing when ``ckpt``."""
    return checkpoint(fn, *args, use_reentrant=False) if ckpt else fn(*args)


def _mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[*, I, J] key mask -> additive bias [*, I, 1, 1, J] (OpenFold: inf * (mask - 1), inf = 1e9)."""
    big = 1e9 if dtype != torch.float16 else 6e4
    return ((mask.to(dtype) - 1.0) * big)[..., :, None, None, :]


class GatedAttention(nn.Module):
    """Multi-head attention with per-head sigmoid gating (OpenFold ``Attention``; the core of
    Algorithms 7, 8, 13 and 14): q, k, v without bias, output and gate projections with bias.

    The parameters are OpenFold's (``linear_q``, ``linear_k``, ``linear_v``, ``linear_g``,
    ``linear_o``), so checkpoints load unchanged; the forward computes the four input projections
    as one GEMM against their concatenated weights (`fused_projection`, built from the parameters
    on every call, so it always matches them and gradients reach each one), and hands q, k, v to the
    attention as strided views of that one result (no copies)."""

    def __init__(self, c_in: int, c_hidden: int, no_heads: int):
        super().__init__()
        self.c_hidden, self.no_heads = c_hidden, no_heads
        hc = c_hidden * no_heads
        self.linear_q = nn.Linear(c_in, hc, bias=False)
        self.linear_k = nn.Linear(c_in, hc, bias=False)
        self.linear_v = nn.Linear(c_in, hc, bias=False)
        self.linear_o = nn.Linear(hc, c_in)
        self.linear_g = nn.Linear(c_in, hc)

    def fused_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [4*H*C, c_in], bias [4*H*C]) of q, k, v and the gate, in that order (q, k and v
        have no bias: zeros there)."""
        w = torch.cat([self.linear_q.weight, self.linear_k.weight, self.linear_v.weight, self.linear_g.weight], 0)
        gb = self.linear_g.bias
        b = torch.cat([gb.new_zeros(3 * gb.shape[0]), gb])
        return w, b

    def forward(self, x: torch.Tensor, biases: list[torch.Tensor], choice: AttentionChoice,
                guide: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [*, Q, c_in] (attention over Q); biases broadcastable to [*, H, Q, Q]; ``guide``: the
        pair signal a guided pattern chooses its blocks from."""
        lead = x.shape[:-1]
        H, C = self.no_heads, self.c_hidden
        qkvg = F.linear(x, *self.fused_projection()).view(*lead, 4, H, C)  # one GEMM
        q, k, v, g = (qkvg.select(-3, i).transpose(-2, -3) for i in range(4))  # [*, H, Q, C] views
        # gated: sigmoid(g) * attention, in the Triton kernel's epilogue at eager inference, else a
        # product in [*, Q, H, C] order (models.evoformer.attention.attend)
        o = attend(choice, q, k, v, biases, guide, gate=g).transpose(-2, -3)  # [*, Q, H, C]
        return self.linear_o(o.reshape(*lead, H * C))


def pair_bias(z: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(z)`` moved to the attention's bias layout: z [*, I, J, c] -> [*, 1, H, I, J], written
    by one GEMM (weight [H, c] times z^T) straight into that layout: contiguous, no separate copy
    (a permuted bias would also push SDPA onto its unfused path)."""
    I, J, c = z.shape[-3:]
    b = torch.matmul(linear.weight, z.reshape(*z.shape[:-3], I * J, c).transpose(-1, -2))  # [*, H, I*J]
    return b.view(*b.shape[:-1], I, J).unsqueeze(-4)


class MSAAttention(nn.Module):
    """Gated self-attention along the last residue axis of [*, S, L, c_m], optionally with a pair
    bias from z (Algorithm 7 with ``pair_bias``; the inner part of Algorithm 8 without)."""

    def __init__(self, c_m: int, c_hidden: int, no_heads: int, pair_bias: bool = False, c_z: Optional[int] = None,
                 attention: Any = "sdpa"):
        super().__init__()
        self.pair_bias = pair_bias
        self.layer_norm_m = nn.LayerNorm(c_m)
        if pair_bias:
            if c_z is None:
                raise ValueError("MSAAttention(pair_bias=True) needs c_z")
            self.layer_norm_z = nn.LayerNorm(c_z)
            self.linear_z = nn.Linear(c_z, no_heads, bias=False)
        self.mha = GatedAttention(c_m, c_hidden, no_heads)
        self.attention = AttentionChoice.coerce(attention)

    def forward(self, m: torch.Tensor, z: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                pair_signal: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``pair_signal`` [L, L]: guides a guided pattern instead of the pair bias."""
        m = self.layer_norm_m(m)
        biases = []
        guide = pair_signal
        if mask is not None:
            biases.append(_mask_bias(mask, m.dtype))  # [*, S, 1, 1, L]
        if self.pair_bias:
            if z is None:
                raise ValueError("MSA row attention with pair bias needs z")
            biases.append(pair_bias(self.layer_norm_z(z), self.linear_z))  # [*, 1, H, L, L]
            if guide is None:  # a guided pattern chooses its blocks from the pair bias, per head
                guide = biases[-1]
        return self.mha(m, biases, self.attention, guide)


class MSARowAttentionWithPairBias(MSAAttention):
    """Algorithm 7: MSA row-wise gated self-attention with pair bias (8 heads x 32 in AF2)."""

    def __init__(self, c_m: int, c_z: int, c_hidden: int = 32, no_heads: int = 8, attention: Any = "sdpa"):
        super().__init__(c_m, c_hidden, no_heads, pair_bias=True, c_z=c_z, attention=attention)


class MSAColumnAttention(nn.Module):
    """Algorithm 8: MSA column-wise gated self-attention (attends over the MSA depth, no bias)."""

    def __init__(self, c_m: int, c_hidden: int = 32, no_heads: int = 8, attention: Any = "sdpa"):
        super().__init__()
        self._msa_att = MSAAttention(c_m, c_hidden, no_heads, pair_bias=False, attention=attention)

    @property
    def attention(self) -> AttentionChoice:
        return self._msa_att.attention

    @attention.setter
    def attention(self, value: Any) -> None:
        self._msa_att.attention = AttentionChoice.coerce(value)

    def forward(self, m: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        m = m.transpose(-2, -3)
        if mask is not None:
            mask = mask.transpose(-1, -2)
        return self._msa_att(m, mask=mask).transpose(-2, -3)


class Transition(nn.Module):
    """LayerNorm -> Linear(c, n*c) -> ReLU -> Linear(n*c, c) (Algorithms 9 and 15)."""

    def __init__(self, c: int, n: int = 4):
        super().__init__()
        self.layer_norm = nn.LayerNorm(c)
        self.linear_1 = nn.Linear(c, n * c)
        self.linear_2 = nn.Linear(n * c, c)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.linear_2(torch.relu(self.linear_1(self.layer_norm(x))))
        return x if mask is None else x * mask.unsqueeze(-1).to(x.dtype)


class MSATransition(Transition):
    """Algorithm 9: transition layer in the MSA stack (x4 in AF2)."""


class PairTransition(Transition):
    """Algorithm 15: transition layer in the pair stack (x4 in AF2)."""


class OuterProductMean(nn.Module):
    """Algorithm 10: outer product mean (hidden 32 in AF2). As in OpenFold, the mean is taken after
    ``linear_out`` (bias included) by dividing by (number of unmasked sequences + 1e-3)."""

    def __init__(self, c_m: int, c_z: int, c_hidden: int = 32, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.layer_norm = nn.LayerNorm(c_m)
        self.linear_1 = nn.Linear(c_m, c_hidden)
        self.linear_2 = nn.Linear(c_m, c_hidden)
        self.linear_out = nn.Linear(c_hidden * c_hidden, c_z)

    def forward(self, m: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if mask is None:
            mask = m.new_ones(m.shape[:-1])
        mask = mask.to(m.dtype).unsqueeze(-1)  # [*, S, L, 1]
        ln = self.layer_norm(m)
        a = (self.linear_1(ln) * mask).transpose(-2, -3)  # [*, L, S, C]
        b = (self.linear_2(ln) * mask).transpose(-2, -3)
        outer = torch.einsum("...bac,...dae->...bdce", a, b)  # [*, L, L, C, C]
        outer = self.linear_out(outer.reshape(*outer.shape[:-2], -1))
        norm = torch.einsum("...abc,...adc->...bdc", mask, mask)  # [*, L, L, 1]
        return outer / (norm + self.eps)


class TriangleMultiplicativeUpdate(nn.Module):
    """Algorithms 11 (outgoing edges) and 12 (incoming edges), hidden 128 in AF2."""

    def __init__(self, c_z: int, c_hidden: int = 128, outgoing: bool = True):
        super().__init__()
        self.outgoing = outgoing
        self.linear_g = nn.Linear(c_z, c_z)
        self.linear_z = nn.Linear(c_hidden, c_z)
        self.layer_norm_in = nn.LayerNorm(c_z)
        self.layer_norm_out = nn.LayerNorm(c_hidden)
        self.linear_a_p = nn.Linear(c_z, c_hidden)
        self.linear_a_g = nn.Linear(c_z, c_hidden)
        self.linear_b_p = nn.Linear(c_z, c_hidden)
        self.linear_b_g = nn.Linear(c_z, c_hidden)

    def forward(self, z: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        z = self.layer_norm_in(z)
        a = torch.sigmoid(self.linear_a_g(z)) * self.linear_a_p(z)
        b = torch.sigmoid(self.linear_b_g(z)) * self.linear_b_p(z)
        if mask is not None:
            mask = mask.unsqueeze(-1).to(z.dtype)
            a, b = a * mask, b * mask
        a, b = a.movedim(-1, -3), b.movedim(-1, -3)  # [*, C, L, L]
        if self.outgoing:  # x_ij = sum_k a_ik * b_jk
            x = torch.matmul(a, b.transpose(-1, -2))
        else:  # x_ij = sum_k a_ki * b_kj
            x = torch.matmul(a.transpose(-1, -2), b)
        x = self.linear_z(self.layer_norm_out(x.movedim(-3, -1)))
        return x * torch.sigmoid(self.linear_g(z))


class TriangleMultiplicationOutgoing(TriangleMultiplicativeUpdate):
    """Algorithm 11: triangular multiplicative update using outgoing edges."""

    def __init__(self, c_z: int, c_hidden: int = 128):
        super().__init__(c_z, c_hidden, outgoing=True)


class TriangleMultiplicationIncoming(TriangleMultiplicativeUpdate):
    """Algorithm 12: triangular multiplicative update using incoming edges."""

    def __init__(self, c_z: int, c_hidden: int = 128):
        super().__init__(c_z, c_hidden, outgoing=False)


class TriangleAttention(nn.Module):
    """Algorithms 13 (around the starting node) and 14 (around the ending node), 4 heads x 32 in AF2.

    Starting node: row i of z attends along j with bias b_jk from the same (normalised) z. Ending
    node: computed as the starting-node algorithm on z transposed, which is Algorithm 14
    (o_ij = sum_k softmax_k(q_ij . k_kj + b_ki) v_kj).
    """

    def __init__(self, c_z: int, c_hidden: int = 32, no_heads: int = 4, starting: bool = True, attention: Any = "sdpa"):
        super().__init__()
        self.starting = starting
        self.layer_norm = nn.LayerNorm(c_z)
        self.linear = nn.Linear(c_z, no_heads, bias=False)
        self.mha = GatedAttention(c_z, c_hidden, no_heads)
        self.attention = AttentionChoice.coerce(attention)

    def forward(self, z: torch.Tensor, mask: Optional[torch.Tensor] = None,
                pair_signal: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``pair_signal`` [L, L] (pairs (i, j) of z): guides a guided pattern instead of the
        module's own triangle bias (transposed with z for the ending node)."""
        if not self.starting:
            z = z.transpose(-2, -3)
            if mask is not None:
                mask = mask.transpose(-1, -2)
            if pair_signal is not None:
                pair_signal = pair_signal.transpose(-1, -2)
        z = self.layer_norm(z)
        biases = []
        if mask is not None:
            biases.append(_mask_bias(mask, z.dtype))  # [*, I, 1, 1, J]
        biases.append(pair_bias(z, self.linear))  # [*, 1, H, I, J]
        guide = biases[-1] if pair_signal is None else pair_signal
        out = self.mha(z, biases, self.attention, guide)
        return out if self.starting else out.transpose(-2, -3)


class TriangleAttentionStartingNode(TriangleAttention):
    """Algorithm 13: triangular gated self-attention around the starting node."""

    def __init__(self, c_z: int, c_hidden: int = 32, no_heads: int = 4, attention: Any = "sdpa"):
        super().__init__(c_z, c_hidden, no_heads, starting=True, attention=attention)


class TriangleAttentionEndingNode(TriangleAttention):
    """Algorithm 14: triangular gated self-attention around the ending node."""

    def __init__(self, c_z: int, c_hidden: int = 32, no_heads: int = 4, attention: Any = "sdpa"):
        super().__init__(c_z, c_hidden, no_heads, starting=False, attention=attention)


class PairStack(nn.Module):
    """The pair part of Algorithm 6 (lines 6-10): triangle multiplications out and in, triangle
    attention start and end, pair transition, each added to z."""

    def __init__(self, c_z: int, c_hidden_mul: int = 128, c_hidden_pair_att: int = 32, no_heads_pair: int = 4,
                 transition_n: int = 4):
        super().__init__()
        self.tri_mul_out = TriangleMultiplicationOutgoing(c_z, c_hidden_mul)
        self.tri_mul_in = TriangleMultiplicationIncoming(c_z, c_hidden_mul)
        self.tri_att_start = TriangleAttentionStartingNode(c_z, c_hidden_pair_att, no_heads_pair)
        self.tri_att_end = TriangleAttentionEndingNode(c_z, c_hidden_pair_att, no_heads_pair)
        self.pair_transition = PairTransition(c_z, transition_n)
        self.checkpoint_modules = False  # set by EvoformerBlock (see the module docstring)

    def forward(self, z: torch.Tensor, mask: Optional[torch.Tensor] = None,
                pair_signal: Optional[torch.Tensor] = None) -> torch.Tensor:
        ck = _checkpointing(self, self.checkpoint_modules)
        z = z + _update(ck, self.tri_mul_out, z, mask)
        z = z + _update(ck, self.tri_mul_in, z, mask)
        z = z + _update(ck, self.tri_att_start, z, mask, pair_signal)
        z = z + _update(ck, self.tri_att_end, z, mask, pair_signal)
        return z + _update(ck, self.pair_transition, z, mask)


class EvoformerBlock(nn.Module):
    """Algorithm 6: one EvoFormer block (AlphaFold2 dims by default).

    m += MSARowAttentionWithPairBias(m, z)   (Alg. 7)
    m += MSAColumnAttention(m)               (Alg. 8)
    m += MSATransition(m)                    (Alg. 9)
    z += OuterProductMean(m)                 (Alg. 10)
    z += TriangleMultiplicationOutgoing(z)   (Alg. 11)
    z += TriangleMultiplicationIncoming(z)   (Alg. 12)
    z += TriangleAttentionStartingNode(z)    (Alg. 13)
    z += TriangleAttentionEndingNode(z)      (Alg. 14)
    z += PairTransition(z)                   (Alg. 15)

    Dropout is omitted (inference/benchmark). ``attention`` (an ``EvoformerAttention``, or anything
    ``EvoformerAttention.coerce`` accepts: "naive", "sdpa", an AttentionChoice, a PatternConfig, a
    TunedPatterns) chooses how the four attention modules compute attention; default: dense SDPA.
    ``checkpoint_modules``: checkpoint each residual update in training (module docstring).
    """

    def __init__(
        self,
        c_m: int = 256,
        c_z: int = 128,
        c_hidden_msa_att: int = 32,
        no_heads_msa: int = 8,
        c_hidden_pair_att: int = 32,
        no_heads_pair: int = 4,
        c_hidden_opm: int = 32,
        c_hidden_mul: int = 128,
        transition_n: int = 4,
        attention: Any = None,
        checkpoint_modules: bool = False,
    ):
        super().__init__()
        # registration order as in OpenFold (MSABlock first, then EvoformerBlock's column attention)
        self.msa_att_row = MSARowAttentionWithPairBias(c_m, c_z, c_hidden_msa_att, no_heads_msa)
        self.msa_transition = MSATransition(c_m, transition_n)
        self.outer_product_mean = OuterProductMean(c_m, c_z, c_hidden_opm)
        self.pair_stack = PairStack(c_z, c_hidden_mul, c_hidden_pair_att, no_heads_pair, transition_n)
        self.msa_att_col = MSAColumnAttention(c_m, c_hidden_msa_att, no_heads_msa)
        self.set_attention(attention)
        self.checkpoint_modules = checkpoint_modules

    @property
    def checkpoint_modules(self) -> bool:
        """Whether each residual update runs under activation checkpointing in training."""
        return self.pair_stack.checkpoint_modules

    @checkpoint_modules.setter
    def checkpoint_modules(self, value: bool) -> None:
        self.pair_stack.checkpoint_modules = bool(value)

    @property
    def attention(self) -> EvoformerAttention:
        """The current per-module attention choice."""
        return EvoformerAttention(
            msa_row=self.msa_att_row.attention,
            tri_start=self.pair_stack.tri_att_start.attention,
            tri_end=self.pair_stack.tri_att_end.attention,
            msa_col=self.msa_att_col.attention,
        )

    def set_attention(self, attention: Any = None, *, msa_row: Any = None, tri_start: Any = None,
                      tri_end: Any = None, msa_col: Any = None) -> "EvoformerBlock":
        """Set how the attention modules compute attention. ``attention`` is the whole choice (None:
        all dense SDPA); the keywords then override single modules."""
        att = EvoformerAttention.coerce(attention).replace(
            msa_row=msa_row, tri_start=tri_start, tri_end=tri_end, msa_col=msa_col
        )
        self.msa_att_row.attention = att.msa_row
        self.pair_stack.tri_att_start.attention = att.tri_start
        self.pair_stack.tri_att_end.attention = att.tri_end
        self.msa_att_col.attention = att.msa_col
        return self

    def forward(self, m: torch.Tensor, z: torch.Tensor, msa_mask: Optional[torch.Tensor] = None,
                pair_mask: Optional[torch.Tensor] = None, pair_signal: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``pair_signal`` [L, L] (optional; a recycled distance map or contact probabilities, read
        as logits): guides every guided attention of the block instead of their own pair biases."""
        ck = _checkpointing(self, self.checkpoint_modules)
        m = m + _update(ck, self.msa_att_row, m, z, msa_mask, pair_signal)
        m = m + _update(ck, self.msa_att_col, m, msa_mask)
        m = m + _update(ck, self.msa_transition, m, msa_mask)
        z = z + _update(ck, self.outer_product_mean, m, msa_mask)
        z = self.pair_stack(z, pair_mask, pair_signal)
        return m, z


class EvoformerStack(nn.Module):
    """N EvoFormer blocks (48 in AF2), parameters named ``blocks.<i>.*``. Only the blocks: OpenFold's
    EvoformerStack also holds the final single-representation ``linear``, which is not part of this
    benchmark model. ``blocks_per_ckpt``: checkpoint every group of that many blocks in training
    (`checkpoint_blocks`; None: no checkpointing), as OpenFold's argument of that name."""

    def __init__(self, no_blocks: int = 48, attention: Any = None, blocks_per_ckpt: Optional[int] = None,
                 **block_kwargs: Any):
        super().__init__()
        self.blocks = nn.ModuleList(EvoformerBlock(**block_kwargs) for _ in range(no_blocks))
        self.set_attention(attention)
        if blocks_per_ckpt is not None and not 1 <= blocks_per_ckpt <= max(no_blocks, 1):
            raise ValueError(f"blocks_per_ckpt must be between 1 and the number of blocks ({no_blocks}), "
                             f"got {blocks_per_ckpt}")
        self.blocks_per_ckpt = blocks_per_ckpt

    @property
    def attention(self) -> EvoformerAttention:
        return self.blocks[0].attention

    def set_attention(self, attention: Any = None, **per_module: Any) -> "EvoformerStack":
        """Set the attention choice of every block (see ``EvoformerBlock.set_attention``)."""
        for block in self.blocks:
            block.set_attention(attention, **per_module)
        return self

    def forward(self, m: torch.Tensor, z: torch.Tensor, msa_mask: Optional[torch.Tensor] = None,
                pair_mask: Optional[torch.Tensor] = None, pair_signal: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``pair_signal``: as in `EvoformerBlock.forward`, for every block."""
        per = self.blocks_per_ckpt if _checkpointing(self, self.blocks_per_ckpt) else None
        return checkpoint_blocks(list(self.blocks), (m, z), (msa_mask, pair_mask, pair_signal), per)


def checkpoint_blocks(blocks: list[nn.Module], state: tuple[torch.Tensor, torch.Tensor], extra: tuple,
                      blocks_per_ckpt: Optional[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``blocks`` in order on ``state`` = (m, z) (each ``block(m, z, *extra) -> (m, z)``), every
    consecutive group of ``blocks_per_ckpt`` under ``torch.utils.checkpoint.checkpoint(...,
    use_reentrant=False)`` (None: plainly). OpenFold's ``checkpoint_blocks`` (openfold/utils/
    checkpointing.py): the group keeps its inputs only and recomputes its activations in backward."""
    m, z = state
    if blocks_per_ckpt is None:
        for block in blocks:
            m, z = block(m, z, *extra)
        return m, z

    def run_group(group: list[nn.Module]) -> Any:
        def run(m: torch.Tensor, z: torch.Tensor, *extra: Any) -> tuple[torch.Tensor, torch.Tensor]:
            for block in group:
                m, z = block(m, z, *extra)
            return m, z
        return run

    for start in range(0, len(blocks), blocks_per_ckpt):
        m, z = checkpoint(run_group(blocks[start:start + blocks_per_ckpt]), m, z, *extra, use_reentrant=False)
    return m, z
