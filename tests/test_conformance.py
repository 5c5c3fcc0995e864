"""One conformance suite for every attention backend: each engine against the float64 reference.

For every engine (a backend of ``kernels.sparse_attention`` at one dtype and device; the cpu
backend has three: its fused C kernel, its SDPA-bucket engine and, on a full layout, SDPA) and
every case below, on fresh random inputs:

* the forward, with autograd and under ``torch.no_grad``, equals ``reference_attention`` computed
  in float64 on the same (rounded) inputs;
* the gradients of q, k, v and the bias (where the engine has a backward) equal the reference's,
  the bias gradient summed over its broadcast dimensions and exactly zero at pairs the layout does
  not compute;
* a query row with no computed key gives exactly zero (output and dq), and a key that no row
  computes gets exactly zero dk and dv.

The cases cover whole and ragged L (L % block_size != 0, down to L = 1), every bias shape
([1, H, L, L], [B, H, L, L], none, and the other broadcast forms), per-head layouts, layouts with
empty rows and an empty layout, guided layouts (``patterns.GuidedConfig`` built from the bias or a
shared score map), non-contiguous inputs, a custom scale, a bias without gradient and a bias that
is the only input with one.
The reference itself is held to the attention formula written pair by pair (``_formula``: the
softmax over each row's computed keys from exp and sums, written independently of the reference).

Every name in ``kernels.BACKENDS`` has an engine here (``test_every_backend_has_an_engine`` fails
when a backend is added without one). Engines that need CUDA are collected and skipped without it;
on a CUDA machine the Triton engine runs natively on every case. Under the Triton interpreter (a
CPU machine) one small Triton case is in the quick suite and the others are marked slow, as is
FlexAttention on a CPU (compiled per shape, a few cases).

Seeds: every case draws its inputs from its own seed, derived from one per-run seed and the case's
id, so cases differ from each other and from run to run. The per-run seed is in every failure
message; ``CONFORMANCE_SEED=<seed> python -m pytest tests/test_conformance.py`` reruns with it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import secrets
import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch

import kernels
from kernels import cpu_fused, reference_attention, sparse_attention
from patterns import BlockLayout, GuidedConfig, PatternConfig, build_layout

F32, F64 = torch.float32, torch.float64
RUN_SEED = int(os.environ.get("CONFORMANCE_SEED") or secrets.randbelow(2**31))
HAS_CUDA = torch.cuda.is_available()
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ---- engines ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Engine:
    """One way of computing attention: ``sparse_attention(..., backend=backend)`` on ``dtype``
    inputs of head dim ``head_dim`` on ``device``.

    grads: the engine has a backward here. oracle: ``"reference"`` (float64 ``reference_attention``)
    or ``"formula"`` (the attention formula pair by pair; used for the reference itself).
    cases: the case ids this engine runs (None: all). quick: the case ids that run in the quick
    suite (None: all of them); the others are marked slow. skip: a reason to skip on this machine,
    or "" to run."""

    name: str
    backend: str
    dtype: torch.dtype
    head_dim: int = 16
    device: str = "cpu"
    grads: bool = True
    atol: float = 2e-5
    rtol: float = 1e-4
    oracle: str = "reference"
    cases: Optional[frozenset] = None
    quick: Optional[frozenset] = None
    skip: Callable[[], str] = lambda: ""


def _no_cuda() -> str:
    return "" if HAS_CUDA else "needs CUDA"


def _no_triton() -> str:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    return "" if HAS_CUDA or TRITON_INTERPRET else "triton needs CUDA or TRITON_INTERPRET=1"


def _no_fused() -> str:
    return "" if cpu_fused.available() else f"fused CPU kernel unavailable: {cpu_fused.unavailable_reason()}"


# ---- cases -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One input configuration. layout: a kind built by ``_layout``; bias: a shape kind of
    ``_bias_shape`` (None: no bias); bias_grad / qkv_grad: the bias / q, k, v require grad (where
    the engine has a backward); noncontig: q, k, v as permuted views and the bias stored
    transposed; expand: the bias is a [1, ...] tensor expanded over the batch (stride 0)."""

    name: str
    L: int
    block_size: int
    layout: str
    # (defaults: B = H = 2, bias [1, H, L, L] requiring grad, the scale 1 / sqrt(D))
    bias: Optional[str] = "1HLL"
    B: int = 2
    H: int = 2
    scale: Optional[float] = None
    bias_grad: bool = True
    qkv_grad: bool = True
    noncontig: bool = False
    expand: bool = False


CASES = [
    Case("static-whole-1HLL", 64, 16, "static"),
    Case("static-ragged-1HLL", 75, 16, "static"),
    Case("static-ragged-BHLL", 75, 16, "static", bias="BHLL"),
    Case("static-ragged-nobias", 70, 32, "static", bias=None),
    Case("diag-ragged-BHLL", 70, 32, "diag", bias="BHLL"),
    Case("diag-sparse-11LL", 160, 32, "diag", bias="11LL", B=1),  # 80% sparse
    Case("half-block64", 128, 64, "half", bias="BHLL", B=1),
    Case("full-ragged-1HLL", 50, 16, "full"),  # the cpu backend's SDPA path
    Case("full-ragged-nobias", 50, 16, "full", bias=None),
    Case("random-ragged-HLL", 60, 16, "random", bias="HLL"),
    Case("static-ragged-LL", 60, 16, "static", bias="LL"),
    Case("static-ragged-B11L", 60, 16, "static", bias="B11L"),
    Case("static-ragged-11L1", 60, 16, "static", bias="11L1"),
    Case("static-ragged-1H1L", 60, 16, "static", bias="1H1L"),
    Case("per-head-ragged-scale", 52, 16, "per-head", H=3, scale=0.3),
    Case("per-head-empty-rows-BHLL", 48, 16, "per-head-random", bias="BHLL"),
    Case("empty-rows-1HLL", 56, 16, "empty-rows"),
    Case("empty-rows-nobias", 100, 16, "empty-rows", bias=None),
    Case("empty-layout", 40, 16, "empty"),
    Case("guided-bias-per-head", 75, 16, "guided-bias"),
    Case("guided-bias-block32", 100, 32, "guided-bias", H=3, B=1),
    Case("guided-map-shared-HLL", 70, 16, "guided-map", bias="HLL"),
    Case("noncontig-transposed-bias", 60, 16, "static", noncontig=True, scale=0.5),
    Case("expanded-bias", 60, 16, "random", expand=True),
    Case("bias-without-grad", 60, 16, "static", bias_grad=False),
    Case("only-bias-grad", 60, 16, "static", bias="BHLL", qkv_grad=False),
    Case("one-token", 1, 16, "static"),
    Case("shorter-than-a-block", 13, 16, "static", bias="BHLL"),
    Case("one-past-a-block", 33, 32, "random"),
]
CASE_IDS = [c.name for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS)


# ---- engines, continued: the table ----------------------------------------------------------------
# Triton cases run under the interpreter on a CPU (1-3 s each): one in the quick suite (per-head,
# empty rows, a never-read key column, a per-batch bias; other quick tests hold the kernel too).
_TRITON_QUICK = frozenset({"per-head-empty-rows-BHLL"})
# and, on a CPU, not the cases whose feature another Triton case already has (whole L, block 64,
# other broadcast forms, sparser diagonals): the interpreter takes 1-9 s a case on a 2-core CPU
_TRITON_CPU_LEFT_OUT = {"static-whole-1HLL", "static-ragged-1H1L", "half-block64", "diag-sparse-11LL", "diag-ragged-BHLL",
                        "full-ragged-nobias", "guided-bias-block32", "one-past-a-block"}
_TRITON_CASES = None if HAS_CUDA else frozenset(CASE_IDS) - _TRITON_CPU_LEFT_OUT
_TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"

# CPU engines run every case in the quick suite (all of them together take about 2 s on an idle
# 2-core machine, 10-30x that on a loaded one).
# float64 engines: 1e-8. Here the worst error over 170 seeds was 2.1e-15, but a fresh machine saw
# 1.2e-9 once (passing on rerun; not reproduced, so its cause - another summation order or thread
# count - is a guess). An indexing or masking bug errs by 1e-3 or more, so 1e-8 still catches every
# real fault while no seed can fail on rounding.
F64_ATOL, F64_RTOL = 1e-8, 1e-8

ENGINES = [
    Engine("reference", "reference", F64, atol=F64_ATOL, rtol=F64_RTOL, oracle="formula"),
    Engine("dense", "dense", F32),
    Engine("auto", "auto", F32, cases=frozenset({"static-ragged-1HLL", "full-ragged-1HLL"})),  # cpu on CPU tensors
    # cpu: float32 with a fused head dim -> the fused C kernel (a full layout -> SDPA);
    # float64 or another head dim -> the SDPA-bucket engine
    Engine("cpu-fused", "cpu", F32, skip=_no_fused),
    Engine("cpu-bucket-f64", "cpu", F64, atol=F64_ATOL, rtol=F64_RTOL),
    Engine("cpu-bucket-d24", "cpu", F32, head_dim=24),
    # FlexAttention on a CPU compiles every new shape (10-20 s each on a shared 2-core machine): a
    # few cases, all slow
    Engine("flex-cpu", "flex", F32, grads=False, quick=frozenset(), cases=frozenset(
        {"static-ragged-BHLL", "per-head-empty-rows-BHLL", "guided-bias-per-head", "empty-rows-nobias"})),
    Engine("triton", "triton", F32, device=_TRITON_DEVICE, atol=2e-4, rtol=2e-4, cases=_TRITON_CASES,
           quick=None if HAS_CUDA else _TRITON_QUICK, skip=_no_triton),
    Engine("dense-cuda", "dense", F32, device="cuda", skip=_no_cuda),
    Engine("flex-cuda", "flex", F32, device="cuda", atol=2e-4, rtol=2e-4, skip=_no_cuda),
]


def test_every_backend_has_an_engine():
    """Every backend that ``kernels`` offers is run by this suite."""
    covered = {e.backend for e in ENGINES}
    missing = [b for b in kernels.BACKENDS if b not in covered]
    assert not missing, f"backends without a conformance engine: {missing}"


def _bias_shape(kind: Optional[str], B: int, H: int, L: int):
    return {
        None: None,
        "1HLL": (1, H, L, L),
        "BHLL": (B, H, L, L),
        "HLL": (H, L, L),
        "LL": (L, L),
        "B11L": (B, 1, 1, L),
        "11L1": (1, 1, L, 1),
        "1H1L": (1, H, 1, L),
        "11LL": (1, 1, L, L),
    }[kind]


def _layout(case: Case, gen: torch.Generator, bias: Optional[torch.Tensor], device: str) -> BlockLayout:
    """The case's layout; random kinds draw from ``gen``; guided kinds select from their signal on
    ``device`` (a guided layout lives where its signal does, as in a model)."""
    L, bs, H, kind = case.L, case.block_size, case.H, case.layout
    nb = -(-L // bs)
    if kind == "static":
        return build_layout(PatternConfig(bs, window=bs, num_global=3, stride=3, global_placement="spread"), L)
    if kind == "diag":
        return build_layout(PatternConfig(bs, window=0), L)
    if kind == "half":  # every other block diagonal
        return build_layout(PatternConfig(bs, 0, 0, 2), L)
    if kind == "full":
        lay = build_layout(PatternConfig(bs, window=L), L)
        assert lay.is_full
        return lay
    if kind == "random":
        return BlockLayout((torch.rand(nb, nb, generator=gen) < 0.5) | torch.eye(nb, dtype=torch.bool), bs, L)
    if kind == "per-head":
        cfgs = [PatternConfig(bs, 0), PatternConfig(bs, 0, 0, 2), PatternConfig(bs, bs, 1, 0)]
        return build_layout(cfgs[:H], L)
    if kind == "per-head-random":  # heads differ; an empty query row and a never-computed key column
        m = torch.rand(H, nb, nb, generator=gen) < 0.6
        m[0, 1, :] = False
        m[-1, :, 0] = False
        m[-1, 2, 2] = True
        return BlockLayout(m, bs, L)
    if kind == "empty-rows":  # the first, a middle and the ragged last query row empty; key column 2 unread
        m = (torch.rand(nb, nb, generator=gen) < 0.5) | torch.eye(nb, dtype=torch.bool)
        m[0, :] = False
        m[3, :] = False
        m[nb - 1, :] = False
        m[:, 2] = False
        return BlockLayout(m, bs, L)
    if kind == "empty":
        return BlockLayout(torch.zeros(nb, nb, dtype=torch.bool), bs, L)
    if kind == "guided-bias":  # one layout per head, chosen from the pair bias
        lay = build_layout(GuidedConfig(bs, keep=0.4, pool="logsumexp", window=3), L, signal=bias.detach().to(device))
        assert lay.num_heads == H
        return lay
    if kind == "guided-map":  # one layout for all heads, from a score map [L, L]
        score = torch.randn(L, L, generator=gen).to(device)
        return build_layout(GuidedConfig(bs, mass=0.5, pool="max", spread="layout", num_global=2), L, signal=score)
    raise AssertionError(kind)


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    bias: Optional[torch.Tensor]
    layout: BlockLayout
    grad_out: torch.Tensor


def _seed(engine: Engine, case: Case) -> int:
    return zlib.crc32(f"{RUN_SEED}:{engine.name}:{case.name}".encode())


def _inputs(case: Case, engine: Engine, seed: int) -> Inputs:
    """Fresh inputs drawn in float64 from ``seed``, rounded to the engine's dtype, on its device."""
    g = torch.Generator().manual_seed(seed)
    B, H, L, D = case.B, case.H, case.L, engine.head_dim
    if case.noncontig:  # [B, L, H, D] storage seen as [B, H, L, D]
        q, k, v = (torch.randn(B, L, H, D, generator=g, dtype=F64).permute(0, 2, 1, 3) for _ in range(3))
    else:
        q, k, v = (torch.randn(B, H, L, D, generator=g, dtype=F64) for _ in range(3))
    shape = _bias_shape(case.bias, B, H, L)
    bias = None
    if shape is not None:
        if case.noncontig:
            bias = torch.randn(*shape, generator=g, dtype=F64).transpose(-1, -2)
        elif case.expand:
            bias = torch.randn(1, *shape[1:], generator=g, dtype=F64).expand(*shape)
        else:
            bias = torch.randn(*shape, generator=g, dtype=F64)
    layout = _layout(case, g, bias, engine.device)
    grad_out = torch.randn(B, H, L, D, generator=g, dtype=F64)

    def to(t):
        return None if t is None else t.to(engine.dtype).to(engine.device)

    return Inputs(to(q), to(k), to(v), to(bias), layout, to(grad_out))


# ---- the oracles -----------------------------------------------------------------------------------
def _formula(q, k, v, layout: BlockLayout, bias, scale):
    """out_i = sum_j p_ij v_j with p_ij = exp(s_ij - m_i) / sum_j' exp(s_ij' - m_i) over the pairs
    (i, j) the layout computes (tile (i // bs, j // bs) kept), s_ij = sum_d q_id k_jd * scale +
    bias_ij and m_i the row's largest computed logit; zeros for a row with no computed key.
    Written from the definition, pair by pair (no matmul, no softmax call, [B, H, L, L, D]
    products), independently of ``reference_attention``. Differentiable."""
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    allowed = layout.token_mask().cpu()  # [L, L] or [H, L, L]
    s = (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) * scale  # [B, H, L, L]
    if bias is not None:
        s = s + bias
    live = allowed.any(-1, keepdim=True)  # rows with at least one computed key
    s = torch.where(allowed, s, torch.finfo(s.dtype).min)
    m = s.max(-1, keepdim=True).values.detach()
    e = torch.where(allowed, torch.exp(s - m), torch.zeros((), dtype=s.dtype))
    p = e / torch.where(live, e.sum(-1, keepdim=True), torch.ones((), dtype=s.dtype))
    return (p.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)


def _expected(engine: Engine, x: Inputs, scale, leaves: list[bool]):
    """The oracle's output and the gradients of the inputs flagged in ``leaves`` (q, k, v, bias),
    in float64 on the CPU."""
    ins = [None if t is None else t.detach().cpu().to(F64).requires_grad_(want) for t, want in zip((x.q, x.k, x.v, x.bias), leaves)]
    layout = x.layout
    if layout.device.type != "cpu":
        layout = BlockLayout(layout.block_mask.cpu(), layout.block_size, layout.seq_len)
    if engine.oracle == "formula":
        out = _formula(*ins[:3], layout, ins[3], scale)
    else:
        out = reference_attention(*ins[:3], layout, ins[3], scale)
    wrt = [t for t, want in zip(ins, leaves) if want]
    grads = ()
    if engine.grads and wrt:
        grads = torch.autograd.grad(out, wrt, x.grad_out.cpu().to(F64), allow_unused=True, materialize_grads=True)
    return out.detach(), grads


# ---- the check -------------------------------------------------------------------------------------
def _close(got, want, atol, rtol, what):
    torch.testing.assert_close(got.detach().cpu().double(), want, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _params():
    for e in ENGINES:
        for c in CASES:
            if e.cases is not None and c.name not in e.cases:
                continue
            marks = []
            if e.quick is not None and c.name not in e.quick:
                marks.append(pytest.mark.slow)
            yield pytest.param(e, c, id=f"{e.name}-{c.name}", marks=marks)


@pytest.mark.parametrize("engine,case", list(_params()))
def test_engine_matches_reference(engine: Engine, case: Case):
    reason = engine.skip()
    if reason:
        pytest.skip(reason)
    seed = _seed(engine, case)
    what = f"{engine.name} {case.name} (CONFORMANCE_SEED={RUN_SEED}, case seed {seed})"
    x = _inputs(case, engine, seed)
    layout, scale = x.layout, case.scale

    def run(q, k, v, bias):
        return sparse_attention(q, k, v, layout, bias, scale=scale, backend=engine.backend)

    leaves = [engine.grads and case.qkv_grad] * 3 + [engine.grads and x.bias is not None and case.bias_grad]
    want, want_grads = _expected(engine, x, scale, leaves)

    # forward without autograd (the inference paths); an engine without a backward also gets
    # inputs that require grad there, as a model's parameters would
    with torch.no_grad():
        if engine.grads:
            out = run(x.q, x.k, x.v, x.bias)
        else:
            out = run(*(None if t is None else t.detach().clone().requires_grad_(True) for t in (x.q, x.k, x.v, x.bias)))
    assert out.shape == x.q.shape and out.dtype == x.q.dtype and out.device == x.q.device, (
        f"{what}: output {tuple(out.shape)} {out.dtype} {out.device}"
    )
    _close(out, want, engine.atol, engine.rtol, f"{what} forward (no_grad)")
    tm = layout.token_mask().cpu()
    tm = tm.expand(case.H, case.L, case.L) if tm.dim() == 2 else tm  # [H, L, L] computed pairs
    empty_rows = ~tm.any(-1)  # [H, L]
    unread_keys = ~tm.any(-2)  # [H, L]
    assert (out.cpu()[:, empty_rows] == 0).all(), f"{what}: a row with no computed key is not zero"
    if not engine.grads:
        return

    # forward and backward with autograd
    ins = [None if t is None else t.detach().clone().requires_grad_(want) for t, want in zip((x.q, x.k, x.v, x.bias), leaves)]
    out = run(*ins)
    _close(out, want, engine.atol, engine.rtol, f"{what} forward")
    wrt = [t for t, w in zip(ins, leaves) if w]
    grads = torch.autograd.grad(out, wrt, x.grad_out)
    names = [n for n, w in zip(("dq", "dk", "dv", "dbias"), leaves) if w]
    for name, got, exp, leaf in zip(names, grads, want_grads, wrt):
        assert got.shape == leaf.shape and got.dtype == leaf.dtype, f"{what}: {name} {tuple(got.shape)} {got.dtype}"
        # a gradient sums up to L terms (the bias gradient also over its broadcast dims): atol scales
        _close(got, exp, engine.atol * max(1.0, float(exp.abs().max())), engine.rtol, f"{what} {name}")
    got = dict(zip(names, (g.detach().cpu() for g in grads)))
    if case.qkv_grad:
        assert (got["dq"][:, empty_rows] == 0).all(), f"{what}: dq of a row with no computed key is not zero"
        assert (got["dk"][:, unread_keys] == 0).all() and (got["dv"][:, unread_keys] == 0).all(), (
            f"{what}: dk/dv of a key that no row computes is not zero"
        )
    if "dbias" in got and x.bias.shape[-2:] == (case.L, case.L):
        db = got["dbias"]
        # a bias with a head dimension gets each head's pairs; one shared by the heads, their union
        outside = ~tm if db.dim() >= 3 and db.shape[-3] == case.H else ~tm.any(0)
        assert (db[outside.expand(db.shape)] == 0).all(), f"{what}: dbias nonzero at a pair the layout does not compute"


# ---- a layout is a value: in-place changes after the first call ----------------------------------
# Each change is tried after a first call (forward and backward) has built the layout's index and
# every backend's plan for it. A layout copies its mask and hands out copies, so none of them may
# change what any backend computes: every engine must still agree with the reference on the mask
# the layout was built from (no backend on a stale index while another reads a new mask).
INPLACE_CHANGES = {
    "caller-mask-filled": lambda mask, lay: mask.fill_(True),
    "caller-mask-cleared": lambda mask, lay: mask.fill_(False),
    "block-mask-item-set": lambda mask, lay: lay.block_mask.__setitem__((0, -1), True),
    "mask3-cleared": lambda mask, lay: lay.mask3.fill_(False),
    "kv-counts-zeroed": lambda mask, lay: lay.kv_counts.zero_(),
    "backend-index-written": lambda mask, lay: [t.zero_() for t in lay.index_on("cpu")],
}
_INPLACE_ENGINES = [e for e in ENGINES if e.device == "cpu" and e.name != "auto"]


def _inplace_params():
    for e in _INPLACE_ENGINES:
        for change in INPLACE_CHANGES:
            slow = e.quick is not None  # the compiled / interpreted engines: slow
            yield pytest.param(e, change, id=f"{e.name}-{change}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("engine,change", list(_inplace_params()))
def test_an_in_place_change_after_a_call_changes_no_backends_answer(engine: Engine, change: str):
    reason = engine.skip()
    if reason:
        pytest.skip(reason)
    case = Case("inplace", 60, 16, "random", bias="BHLL")
    seed = _seed(engine, case) ^ zlib.crc32(change.encode())
    what = f"{engine.name} after {change} (CONFORMANCE_SEED={RUN_SEED}, case seed {seed})"
    x = _inputs(case, engine, seed)
    nb = -(-case.L // case.block_size)
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(case.H, nb, nb, generator=gen) < 0.5) | torch.eye(nb, dtype=torch.bool)
    mask[:, 0, -1] = False  # the tile "block-mask-item-set" would add
    mask[1, 2, :] = False   # and an empty row in head 1
    built_from = mask.clone()
    layout = BlockLayout(mask, case.block_size, case.L)
    leaves = [engine.grads] * 4

    def run():
        ins = [t.detach().clone().requires_grad_(engine.grads) for t in (x.q, x.k, x.v, x.bias)]
        out = sparse_attention(*ins[:3], layout, ins[3], backend=engine.backend)
        grads = torch.autograd.grad(out, ins, x.grad_out) if engine.grads else ()
        return out, grads

    run()  # builds the index and the backend's plans for this layout
    INPLACE_CHANGES[change](mask, layout)
    assert torch.equal(layout.block_mask, built_from), f"{what}: the layout's mask changed"
    out, grads = run()
    snapshot = Inputs(x.q, x.k, x.v, x.bias, BlockLayout(built_from, case.block_size, case.L), x.grad_out)
    want, want_grads = _expected(engine, snapshot, None, leaves)
    _close(out, want, engine.atol, engine.rtol, f"{what} forward")
    for name, got, exp in zip(("dq", "dk", "dv", "dbias"), grads, want_grads):
        _close(got, exp, engine.atol * max(1.0, float(exp.abs().max())), engine.rtol, f"{what} {name}")


def test_a_layout_refuses_reassigned_fields_and_keeps_its_own_copy():
    """The fields a layout's caches depend on cannot be reassigned; its tensors are its own."""
    mask = torch.eye(4, dtype=torch.bool)
    layout = BlockLayout(mask, 16, 60)
    for name, value in (("block_mask", torch.ones(4, 4, dtype=torch.bool)), ("block_size", 32), ("seq_len", 64)):
        with pytest.raises(AttributeError):
            setattr(layout, name, value)
    assert layout.block_mask.data_ptr() != mask.data_ptr()
    assert layout.block_mask.data_ptr() != layout.block_mask.data_ptr()  # a copy on every read
    assert layout.kv_counts.data_ptr() != layout.index_on("cpu")[0].data_ptr()


def test_a_layout_built_under_inference_mode_runs_on_every_cpu_engine():
    """Tensors made under ``torch.inference_mode`` have no version counter; a layout's own index
    is an ordinary tensor all the same (the CPU backend keys its plans on it)."""
    g = torch.Generator().manual_seed(RUN_SEED)
    q, k, v = (torch.randn(1, 2, 60, 16, generator=g) for _ in range(3))
    bias = torch.randn(1, 2, 60, 60, generator=g)
    with torch.inference_mode():
        static = build_layout(PatternConfig(16, window=16, num_global=2), 60)
        guided = build_layout(GuidedConfig(16, keep=0.4), 60, signal=bias)
        for layout in (static, guided):
            want = reference_attention(q.double(), k.double(), v.double(), layout, bias.double())
            for backend in ("cpu", "dense"):
                got = sparse_attention(q, k, v, layout, bias, backend=backend)
                _close(got, want, 2e-5, 1e-4, f"{backend} under inference_mode (CONFORMANCE_SEED={RUN_SEED})")
