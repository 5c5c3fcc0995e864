"""Workloads: one record class per kind (what the file gives; what a trial does with it is
`autotune.workloads`). `WORKLOAD_TYPES` maps each kind to its record class, the parser's and the
stored form's dispatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from kernels.workloads import ATTENTION_KINDS, HEAD_DIM, MSA_HEADS, PAIR_HEADS, attention_batch

from .schema import DTYPE_BYTES, field_names

if TYPE_CHECKING:
    from .checks import IntWithinLimit, SpaceChecker


STORED_WORKLOAD_KEYS = ("name", "kind", "heads", "head_dim", "bias", "tokens", "max_batch", "msa_depth", "c_m", "c_z",
                        "pair_heads", "c_hidden_opm", "c_hidden_mul", "max_len")


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One ``workloads`` entry: a measured shape. ``heads`` / ``head_dim`` are the attention's
    (an EvoFormer block's: its MSA attention's). Subclasses, one per family of kinds
    (`WORKLOAD_TYPES`), add their keys, their batch rule and their input size."""

    name: str
    kind: str
    heads: int
    head_dim: int
    bias: bool = True

    #: the YAML keys an entry of this class may have
    KEYS: ClassVar[frozenset[str]] = frozenset()

    def applies(self, seq_len: int) -> bool:
        """Whether this workload is measured at bucket ``seq_len``."""
        return True

    def batch(self, seq_len: int) -> int:
        raise NotImplementedError

    def input_gib(self, seq_len: int, dtype: str) -> float:
        raise NotImplementedError

    def gate_gib(self, seq_len: int, batch: int, dtype: str) -> float:
        """GiB the correctness gate takes at ``seq_len`` residues and ``batch`` rows."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The stored form (`STORED_WORKLOAD_KEYS`, the same for every kind)."""
        return {k: getattr(self, k, None) for k in STORED_WORKLOAD_KEYS}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Workload":
        """A stored workload (`to_dict`) back to the record of its kind."""
        cls = WORKLOAD_TYPES[d["kind"]]
        names = field_names(cls)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True, kw_only=True)
class AttentionWorkload(Workload):
    """``msa_row`` (batch = tokens // L, at least 1) or ``triangle`` (batch = L) attention with
    an optional pair bias [1, H, L, L]; ``max_batch`` caps the batch (the kinds and their batch rule:
    `kernels.workloads`)."""

    tokens: Optional[int] = None  # msa_row: batch = tokens // L
    max_batch: Optional[int] = None

    KEYS: ClassVar[frozenset[str]] = frozenset({"name", "kind", "heads", "head_dim", "bias", "tokens", "max_batch"})

    def batch(self, seq_len: int) -> int:
        """The kind's batch rule (`kernels.workloads.attention_batch`, shared with ``kernels.bench``)."""
        return attention_batch(self.kind, seq_len, self.tokens, self.max_batch)

    def input_gib(self, seq_len: int, dtype: str) -> float:
        """q, k, v, out [B, H, L, D] and the pair bias [1, H, L, L]."""
        L = seq_len
        return (4.0 * self.batch(L) * self.heads * L * self.head_dim + (self.heads * L * L if self.bias else 0)) \
            * DTYPE_BYTES[dtype] / 2**30

    def gate_gib(self, seq_len: int, batch: int, dtype: str) -> float:
        """q, k, v, out [batch, H, L, D] and the bias, plus the dense reference's float32 scores
        [batch, H, L, L] (the gate compares against materialised attention)."""
        L = seq_len
        return ((4.0 * batch * self.heads * L * self.head_dim + (self.heads * L * L if self.bias else 0))
                * DTYPE_BYTES[dtype] + 4.0 * batch * self.heads * L * L) / 2**30

    @classmethod
    def parse(cls, check: SpaceChecker, w: dict[str, Any], key: str, kind: str, int_within_limit: IntWithinLimit,
              buckets: list[int]) -> "AttentionWorkload":
        for k in w:
            if k not in cls.KEYS:
                check.fail(f"{key}.{k}", f"only for kind evoformer (allowed for {kind}: {', '.join(sorted(cls.KEYS))})")
        for r in ("heads", "head_dim"):
            if r not in w:
                check.fail(f"{key}.{r}", "required key is missing")
        return cls(
            name=w["name"],
            kind=kind,
            heads=int_within_limit(w["heads"], f"{key}.heads", "max_heads"),
            head_dim=int_within_limit(w["head_dim"], f"{key}.head_dim", "max_head_dim"),
            bias=check.boolean(w.get("bias", True), f"{key}.bias"),
            tokens=None if w.get("tokens") is None else int_within_limit(w["tokens"], f"{key}.tokens", "max_tokens"),
            max_batch=None if w.get("max_batch") is None else int_within_limit(w["max_batch"], f"{key}.max_batch", "max_batch"),
        )


@dataclass(frozen=True, kw_only=True)
class EvoformerWorkload(Workload):
    """``evoformer``: one whole EvoformerBlock (AF2 Alg. 6) with AlphaFold2's dims by default;
    its batch is the MSA depth N_seq, its attentions always have their pair bias, and buckets above
    ``max_len`` are not measured."""

    heads: int = MSA_HEADS  # MSA attention heads
    head_dim: int = HEAD_DIM  # MSA and triangle attention head dim
    msa_depth: int  # N_seq
    c_m: int = 256
    c_z: int = 128
    pair_heads: int = PAIR_HEADS  # triangle attention heads
    c_hidden_opm: int = 32
    c_hidden_mul: int = 128
    max_len: Optional[int] = None

    KEYS: ClassVar[frozenset[str]] = frozenset({"name", "kind", "msa_depth", "c_m", "c_z", "heads", "pair_heads",
                                                "head_dim", "c_hidden_opm", "c_hidden_mul", "max_len"})
    DIMS: ClassVar[tuple[str, ...]] = ("c_m", "c_z", "heads", "pair_heads", "head_dim", "c_hidden_opm", "c_hidden_mul")

    def applies(self, seq_len: int) -> bool:
        return self.max_len is None or seq_len <= self.max_len

    def batch(self, seq_len: int) -> int:
        return self.msa_depth

    def input_gib(self, seq_len: int, dtype: str) -> float:
        """The MSA [N_seq, L, c_m] and pair [L, L, c_z] activations, counted four times (input,
        output, gradient-free intermediates)."""
        L = seq_len
        return 4.0 * (self.msa_depth * L * self.c_m + L * L * self.c_z) * DTYPE_BYTES[dtype] / 2**30

    def gate_gib(self, seq_len: int, batch: int, dtype: str) -> float:
        """The activations at ``batch`` MSA rows (`input_gib`), plus the float32 scores of the
        naive oracle: MSA row attention [batch, H, L, L] and triangle attention [L, H_pair, L, L]."""
        L = seq_len
        return (4.0 * (batch * L * self.c_m + L * L * self.c_z) * DTYPE_BYTES[dtype]
                + 4.0 * (batch * self.heads * L * L + self.pair_heads * L * L * L)) / 2**30

    def block_kwargs(self) -> dict[str, int]:
        """``EvoformerBlock`` constructor arguments."""
        return dict(c_m=self.c_m, c_z=self.c_z, c_hidden_msa_att=self.head_dim, no_heads_msa=self.heads,
                    c_hidden_pair_att=self.head_dim, no_heads_pair=self.pair_heads,
                    c_hidden_opm=self.c_hidden_opm, c_hidden_mul=self.c_hidden_mul)

    @classmethod
    def parse(cls, check: SpaceChecker, w: dict[str, Any], key: str, kind: str, int_within_limit: IntWithinLimit,
              buckets: list[int]) -> "EvoformerWorkload":
        for k in w:
            if k not in cls.KEYS:
                check.fail(f"{key}.{k}", f"not a key of kind evoformer (allowed: {', '.join(sorted(cls.KEYS))})")
        if "msa_depth" not in w:
            check.fail(f"{key}.msa_depth", "required key is missing (kind evoformer)")
        lim_of = {"heads": "max_heads", "pair_heads": "max_heads", "head_dim": "max_head_dim"}
        dims = {k: int_within_limit(w.get(k, cls.__dataclass_fields__[k].default), f"{key}.{k}", lim_of.get(k, "max_channels"))
                for k in cls.DIMS}
        max_len = None if w.get("max_len") is None else check.integer(w["max_len"], f"{key}.max_len", low=1)
        if max_len is not None and not any(b <= max_len for b in buckets):
            check.fail(f"{key}.max_len", f"{max_len} is below every bucket ({', '.join(map(str, buckets))}): "
                                     "the workload would never be measured")
        return cls(name=w["name"], kind=kind, msa_depth=int_within_limit(w["msa_depth"], f"{key}.msa_depth", "max_batch"),
                   max_len=max_len, **dims)


#: workload kind -> its record class (the parser's and the stored form's dispatch)
WORKLOAD_TYPES: dict[str, type[Workload]] = {**{k: AttentionWorkload for k in ATTENTION_KINDS},
                                             "evoformer": EvoformerWorkload}
WORKLOAD_KINDS = tuple(WORKLOAD_TYPES)


def input_gib(w: "Workload", seq_len: int, dtype: str) -> float:
    """GiB of one (workload, bucket)'s inputs and output (`Workload.input_gib` of its kind)."""
    return w.input_gib(seq_len, dtype)
