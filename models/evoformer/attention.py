"""How each EvoFormer attention module computes ``softmax(q k^T / sqrt(d) + bias) v``.

The choice is data, given to a block or stack once (at construction or with ``set_attention``),
never a flag threaded through ``forward``:

* ``AttentionChoice(kind, tuned=None, backend="auto", kernel_config=None)`` for one module:

  - ``"naive"``: the materialised ``softmax(q k^T / sqrt(d) + bias) v``, exactly as OpenFold's
    default ``Attention`` computes it (`openfold_attention`) (q scaled first, biases added one after the other, softmax in
    the input dtype). O(L^2) memory per head.
  - ``"sdpa"``: dense ``torch.nn.functional.scaled_dot_product_attention`` with the summed bias as
    a float ``attn_mask``. The bias is always made contiguous: a pair bias that comes out of a
    ``permute`` has a non-unit last stride and SDPA would silently drop to its unfused path.
  - ``"sparse"``: a block-sparse pattern: ``tuned.config_for(L)`` (a ``kernels.tuned.TunedPatterns``
    or any object with that method) or a fixed ``PatternConfig`` gives the pattern for the current
    length, ``build_layout`` turns it into a layout (cached per (config, L): `cached_layout`), and
    ``kernels.sparse_attention(..., backend=backend, config=kernel_config)`` computes it. If
    ``config_for(L)`` returns None (no sparse pattern pays off at that length: a ``TunedPatterns``
    bucket the study found infeasible, or a length beyond every measured bucket) the module runs
    dense SDPA. A ``TunedPatterns`` is also given the call's device, dtype, heads and head dim to
    check against the machine and shapes it was tuned for (`kernels.tuned`).
  - ``"identity"``: benchmark only. Returns ``v`` (identity cost), so that timing a block with it
    measures everything except the attention core itself.

  A **guided** pattern (``patterns.GuidedConfig``, fixed or returned by ``config_for(L)``) picks its
  key blocks on every forward from a pair signal (`patterns.guided`): by default the module's own
  pair bias after its projection ([*, 1, H, L, L]: one layout per head), or a pair signal given to
  the block or stack from outside (``pair_signal``: a recycled distance map or contact
  probabilities, [L, L], one layout for all heads). The selection is not differentiated (the
  signal is read detached); gradients flow through the attention and the bias as before. The
  signal must not vary over leading batch dimensions (one protein per call).

  ``naive`` and ``sdpa`` also accept a pattern in ``tuned``: the dense computation is then masked to
  the pattern's token mask (-inf outside it). That is the dense-cost oracle of what a sparse pattern
  computes (what the accuracy evaluation and the tests compare the sparse kernels against); without
  ``tuned`` they are full attention.

* ``EvoformerAttention(msa_row, tri_start, tri_end, msa_col=sdpa)``: one choice per module.

``attend(choice, q, k, v, biases, guide=None, gate=None)`` is the single dispatch point: q, k, v are
[*, H, L, D] with any leading batch dims, ``biases`` a list of tensors broadcastable to
[*, H, L, L], ``guide`` the pair signal a guided pattern chooses its blocks from, ``gate`` the gate
logits of a gated module (the result is then sigmoid(gate) * attention).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F

from patterns import BlockLayout, GuidedConfig, PatternConfig, build_layout
from kernels.compile_marks import assume_constant_result
from kernels.inputs import gate_output
import kernels.dispatch  # noqa: F401  (hands patterns.guided the fused CUDA build of guided layouts)
from kernels.tuned import TunedPatterns

__all__ = [
    "KINDS",
    "AttentionChoice",
    "EvoformerAttention",
    "attend",
    "openfold_attention",
    "sdpa_attention",
    "cached_layout",
    "guide_signal",
]

KINDS: tuple[str, ...] = ("naive", "sdpa", "sparse", "identity")


def _is_tuned(obj: Any) -> bool:
    return callable(getattr(obj, "config_for", None))


@dataclass
class AttentionChoice:
    """How one attention module computes attention (see the module docstring).

    Attributes:
        kind: "naive" | "sdpa" | "sparse" | "identity".
        tuned: a ``TunedPatterns`` (anything with ``config_for(seq_len) -> PatternConfig | None``) or
            a fixed ``PatternConfig``. Required for "sparse"; for "naive"/"sdpa" it masks the dense
            computation to the pattern (an oracle), None means full attention.
        backend: the ``kernels.sparse_attention`` backend of "sparse" ("auto": triton on CUDA,
            cpu otherwise; "reference", "dense", "flex", "triton", "cpu").
        kernel_config: optional ``kernels.KernelConfig`` for the Triton backend; if None and
            ``tuned`` has ``kernel_config_for(seq_len)`` (TunedPatterns does), that one is used.
    """

    kind: str = "sdpa"
    tuned: Any = None
    backend: str = "auto"
    kernel_config: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"AttentionChoice.kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.tuned is not None and not isinstance(self.tuned, (PatternConfig, GuidedConfig)) and not _is_tuned(self.tuned):
            raise TypeError(
                "AttentionChoice.tuned must be a PatternConfig, a GuidedConfig or have a config_for(seq_len) method, "
                f"got {type(self.tuned).__name__}"
            )
        if self.kind == "sparse" and self.tuned is None:
            raise ValueError("AttentionChoice(kind='sparse') needs tuned= (a TunedPatterns or a PatternConfig)")
        from kernels import BACKENDS

        if self.backend not in BACKENDS:
            raise ValueError(f"AttentionChoice.backend must be one of {list(BACKENDS)}, got {self.backend!r}")

    @classmethod
    def coerce(cls, value: Any) -> "AttentionChoice":
        """An AttentionChoice from a choice, a kind name, a PatternConfig or a TunedPatterns (the last
        two mean "sparse" with the auto backend)."""
        if isinstance(value, AttentionChoice):
            return value
        if isinstance(value, str):
            return cls(kind=value)
        if isinstance(value, (PatternConfig, GuidedConfig)) or _is_tuned(value):
            return cls(kind="sparse", tuned=value)
        raise TypeError(f"cannot make an AttentionChoice from {type(value).__name__}: {value!r}")

    def pattern_for(self, seq_len: int, where: Optional[dict] = None) -> Optional[PatternConfig | GuidedConfig]:
        """The PatternConfig or GuidedConfig used at ``seq_len`` (None: full attention). ``where``
        (device, dtype, heads, head_dim of the call) is checked by a ``TunedPatterns``."""
        if self.tuned is None:
            return None
        if isinstance(self.tuned, (PatternConfig, GuidedConfig)):
            return self.tuned
        if where and isinstance(self.tuned, TunedPatterns):
            cfg = self.tuned.config_for(seq_len, **where)
        else:
            cfg = self.tuned.config_for(seq_len)
        if cfg is not None and not isinstance(cfg, (PatternConfig, GuidedConfig)):
            raise TypeError(
                f"tuned.config_for({seq_len}) returned {type(cfg).__name__}, expected PatternConfig, GuidedConfig or None"
            )
        return cfg

    def layout_for(self, seq_len: int, guide: Optional[torch.Tensor] = None,
                   where: Optional[dict] = None) -> Optional[BlockLayout]:
        """The block layout used at ``seq_len`` (cached for a static pattern; chosen from ``guide``
        for a guided one), or None for full attention."""
        cfg = self.pattern_for(seq_len, where)
        if cfg is None:
            return None
        if isinstance(cfg, GuidedConfig):
            return build_layout(cfg, seq_len, signal=guide_signal(guide, seq_len))
        return cached_layout(cfg, seq_len)

    def kernel_config_for(self, seq_len: int) -> Any:
        """The KernelConfig for ``seq_len``: the explicit one, else the tuned one, else None."""
        if self.kernel_config is not None:
            return self.kernel_config
        get = getattr(self.tuned, "kernel_config_for", None)
        return get(seq_len) if callable(get) else None

    def describe(self) -> str:
        if self.kind != "sparse":
            return self.kind if self.tuned is None else f"{self.kind}+mask"
        return f"sparse[{self.backend}]"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, biases: Sequence[torch.Tensor] = (),
                 guide: Optional[torch.Tensor] = None) -> torch.Tensor:
        return attend(self, q, k, v, biases, guide)


def _sdpa_default() -> AttentionChoice:
    return AttentionChoice("sdpa")


@dataclass
class EvoformerAttention:
    """The attention choice of each attention module of an EvoFormer block.

    msa_row: MSA row attention with pair bias (Alg. 7); tri_start / tri_end: triangle attention
    around the starting / ending node (Alg. 13 / 14); msa_col: MSA column attention (Alg. 8, no
    bias, attends over the MSA depth; dense SDPA by default). Each field accepts anything
    ``AttentionChoice.coerce`` does.
    """

    msa_row: AttentionChoice = field(default_factory=_sdpa_default)
    tri_start: AttentionChoice = field(default_factory=_sdpa_default)
    tri_end: AttentionChoice = field(default_factory=_sdpa_default)
    msa_col: AttentionChoice = field(default_factory=_sdpa_default)

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, AttentionChoice.coerce(getattr(self, f.name)))

    @classmethod
    def uniform(cls, choice: Any, *, include_msa_col: Optional[bool] = None) -> "EvoformerAttention":
        """The same choice for MSA row and both triangle attentions. Column attention gets it too
        for a dense kind ("naive"/"sdpa"/"identity") and stays SDPA for "sparse" (the MSA depth
        axis has no locality), unless ``include_msa_col`` says otherwise."""
        c = AttentionChoice.coerce(choice)
        if include_msa_col is None:
            include_msa_col = c.kind != "sparse"
        return cls(c, c, c, c if include_msa_col else AttentionChoice("sdpa"))

    @classmethod
    def sparse(cls, tuned: Any, backend: str = "auto", kernel_config: Any = None,
               mode: Optional[str] = None) -> "EvoformerAttention":
        """Sparse MSA row and triangle attention with one tuned pattern set; dense SDPA columns.
        ``mode``: "fwd" (inference) or "fwd+bwd" (training); a ``TunedPatterns`` checks it, the
        backend (when not "auto") and its kernels against what it was tuned for (warning, or an
        error when strict)."""
        if isinstance(tuned, TunedPatterns):
            tuned.check(mode=mode, backend=None if backend == "auto" else backend)
        return cls.uniform(AttentionChoice("sparse", tuned, backend, kernel_config))

    @classmethod
    def coerce(cls, value: Any) -> "EvoformerAttention":
        if value is None:
            return cls()
        if isinstance(value, EvoformerAttention):
            return value
        return cls.uniform(value)

    def replace(self, **choices: Any) -> "EvoformerAttention":
        """A copy with some modules' choices replaced (None values are ignored)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in choices.items():
            if name not in current:
                raise ValueError(f"unknown attention module {name!r}; known: {sorted(current)}")
            if value is not None:
                current[name] = value
        return EvoformerAttention(**current)

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name).describe()}" for f in fields(self))


# ---- layouts and masks, cached --------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def cached_layout(cfg: PatternConfig, seq_len: int) -> BlockLayout:
    """``build_layout(cfg, seq_len)``, cached per (config, length). Returning the same layout object
    also lets the kernels reuse their per-layout plans."""
    return build_layout(cfg, seq_len)


@functools.lru_cache(maxsize=32)
def _additive_mask(cfg: PatternConfig, seq_len: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    allowed = cached_layout(cfg, seq_len).token_mask().to(device)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, float("-inf"))


def guide_signal(guide: Optional[torch.Tensor], seq_len: int) -> torch.Tensor:
    """The guide of a guided pattern as a `build_layout` signal: [L, L] (a pair signal from outside)
    or [1, H, L, L] (a module's pair bias, [*, 1, H, L, L] with size-1 leading dims)."""
    if guide is None:
        raise ValueError("a guided attention pattern needs a pair signal: the module's pair bias or pair_signal=")
    if guide.dim() > 4:
        if any(s != 1 for s in guide.shape[:-3]):
            raise ValueError(
                f"guided attention chooses one layout per call; the pair signal of shape {list(guide.shape)} "
                "varies over leading batch dims (run one protein per call)"
            )
        guide = guide.reshape(1, *guide.shape[-3:])
    return guide.detach()


def _pattern_mask(choice: AttentionChoice, q: torch.Tensor, guide: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    cfg = choice.pattern_for(q.shape[-2])
    if cfg is None:
        return None
    if isinstance(cfg, GuidedConfig):  # the dense oracle of a guided layout: chosen per call
        allowed = choice.layout_for(q.shape[-2], guide).token_mask().to(q.device)
        return torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
    if cached_layout(cfg, q.shape[-2]).is_full:
        return None
    return _additive_mask(cfg, q.shape[-2], str(q.device), q.dtype)


# ---- the computations -------------------------------------------------------------------------------


def openfold_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, biases: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """OpenFold's default attention: ``softmax(q / sqrt(d) @ k^T + sum(biases)) @ v``, materialised."""
    q = q * (1.0 / math.sqrt(q.shape[-1]))
    a = torch.matmul(q, k.transpose(-1, -2))
    for b in biases:
        a = a + b
    a = torch.softmax(a, dim=-1)
    return torch.matmul(a, v)


def _sum_biases(biases: Sequence[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    total = None
    for b in biases:
        b = b.to(dtype)
        total = b if total is None else total + b
    return total


def _flatten(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]):
    """[*, H, L, D] -> [B, H, L, D]; bias -> a contiguous 4-d tensor broadcastable to [B, H, L, L],
    kept unexpanded over the batch when it does not vary along it."""
    H, L, D = q.shape[-3:]
    q4, k4, v4 = (t.reshape(-1, H, L, D) for t in (q, k, v))
    if bias is not None:
        while bias.dim() < q.dim():
            bias = bias.unsqueeze(0)
        if bias.dim() > q.dim():
            raise ValueError(f"bias of shape {list(bias.shape)} has more dims than q {list(q.shape)}")
        lead = bias.shape[:-3]
        if all(s == 1 for s in lead):
            bias = bias.reshape(1, *bias.shape[-3:])
        else:
            bias = bias.expand(*q.shape[:-3], *bias.shape[-3:]).reshape(-1, *bias.shape[-3:])
        bias = bias.contiguous()
    return q4, k4, v4, bias


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, biases: Sequence[torch.Tensor] = (), mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Dense SDPA with the summed biases (and an optional additive mask) as a contiguous float mask."""
    bias = _sum_biases(list(biases) + ([mask] if mask is not None else []), q.dtype)
    lead = q.shape[:-3]
    q4, k4, v4, b4 = _flatten(q, k, v, bias)
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=b4, scale=1.0 / math.sqrt(q.shape[-1]))
    return out.reshape(*lead, *out.shape[-3:])


def attend(choice: AttentionChoice, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, biases: Sequence[torch.Tensor] = (),
           guide: Optional[torch.Tensor] = None, gate: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + sum(biases)) v, computed the way ``choice`` says; times
    sigmoid(gate) when a gate is given (the gated attention of AlphaFold2's Algorithms 7, 8, 13, 14).

    q, k, v: [*, H, L, D]; each bias broadcastable to [*, H, L, L]; gate: None or the gate logits,
    [*, H, L, D]. Returns [*, H, L, D]. ``guide``: the pair signal of a guided pattern (ignored by
    static patterns and dense kinds). A sparse choice hands the gate to the kernel
    (`kernels.sparse_attention`), which applies it in its epilogue where it can (the Triton forward,
    eager inference); the other kinds multiply after (`kernels.inputs.gate_output`).
    """
    kind = choice.kind
    if kind == "identity":
        return gate_output(v, gate)
    if kind == "naive":
        mask = _pattern_mask(choice, q, guide)
        return gate_output(openfold_attention(q, k, v, list(biases) + ([mask] if mask is not None else [])), gate)
    if kind == "sdpa":
        return gate_output(sdpa_attention(q, k, v, biases, _pattern_mask(choice, q, guide)), gate)
    # sparse
    L = q.shape[-2]
    plan = _sparse_plan(choice, L, q.device, q.dtype, q.shape[-3], q.shape[-1])
    if plan is None:  # no pattern pays off at this length (infeasible or unmeasured bucket): dense
        return gate_output(sdpa_attention(q, k, v, biases), gate)
    layout, kernel_config = plan
    if isinstance(layout, GuidedConfig):  # chosen per call from the pair signal, inside the graph
        layout = build_layout(layout, L, signal=guide_signal(guide, L))
    from kernels import sparse_attention

    lead = q.shape[:-3]
    # q, k, v go as the views the projections made (no copies): a backend that needs another
    # memory layout makes it itself
    q4, k4, v4, b4 = _flatten(q, k, v, _sum_biases(biases, q.dtype))
    g4 = None if gate is None else gate.reshape(q4.shape)  # a view, as q's
    out = sparse_attention(q4, k4, v4, layout, b4, scale=1.0 / math.sqrt(q.shape[-1]), backend=choice.backend,
                           config=kernel_config, gate=g4)
    return out.reshape(*lead, *out.shape[-3:])


def _sparse_plan(choice: AttentionChoice, seq_len: int, device: torch.device, dtype: torch.dtype, heads: int,
                 head_dim: int) -> Optional[tuple[BlockLayout | GuidedConfig, Any]]:
    """(the static layout, or the GuidedConfig to build one from the pair signal; the kernel config)
    of a sparse ``choice`` at this call's shape, or None for dense (`_resolve_plan`).

    Under ``torch.compile`` `_resolve_plan` runs once while tracing (host-side lookups, read as a
    constant) and stores the plan as an attribute of the choice named after the shape; the plan is
    then read like any module attribute (a container read earlier in the trace would be stale), so
    the graph holds neither the layout's construction nor data-dependent Python, and the compiled
    code is guarded on the choice and its plan."""
    name = _resolve_plan(choice, seq_len, str(device), str(dtype).replace("torch.", ""), heads, head_dim)
    return getattr(choice, name)


@assume_constant_result
def _resolve_plan(choice: AttentionChoice, seq_len: int, device: str, dtype: str, heads: int, head_dim: int) -> str:
    """The name of the attribute of ``choice`` holding its plan at this shape (see `_sparse_plan`),
    filled on first use: the pattern for the length (a ``TunedPatterns`` also checks device, dtype,
    heads and head dim against what it was tuned for), its cached layout (static patterns) and the
    kernel config."""
    name = "_plan_" + "_".join(str(x) for x in (seq_len, device, dtype, heads, head_dim)).replace(":", "")
    if name not in choice.__dict__:
        where = None
        if isinstance(choice.tuned, TunedPatterns):
            where = dict(device=torch.device(device), dtype=getattr(torch, dtype), heads=heads, head_dim=head_dim)
        cfg = choice.pattern_for(seq_len, where)
        layout = cfg if cfg is None or isinstance(cfg, GuidedConfig) else cached_layout(cfg, seq_len)
        object.__setattr__(choice, name, None if cfg is None else (layout, choice.kernel_config_for(seq_len)))
    return name
