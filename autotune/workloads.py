"""What a trial does with each kind of workload: its inputs, the candidate, the baselines, the gate.

A workload's record (its shape, parsed from the space file) is a `search_spaces.space.Workload` of its
kind; what is measured on it is a `WorkloadBench` here, looked up by kind in `BENCHES`:

`AttentionBench` (``msa_row``, ``triangle``)
    Inputs: fresh random q, k, v [B, H, L, D] and the pair bias [1, H, L, L]. Candidate:
    `kernels.sparse_attention` on the trial's layout with the space's backend and kernel config (a
    guided pattern chooses its layout from the bias inside every timed call). Baselines: dense SDPA
    (`kernels.dense_attention`, timed paired with the candidate) and materialised naive attention
    (`kernels.measure.naive_attention`). Gate: the candidate against ``reference`` on the same
    inputs at the gate shape; forward, and the gradients of q, k, v and the bias in fwd+bwd.
`EvoformerBench` (``evoformer``)
    Inputs: m [N_seq, L, c_m] and z [L, L, c_z] for one whole ``models.evoformer.EvoformerBlock``
    (fixed-seed weights, built once per worker). Candidate: the block with the trial's pattern on
    MSA row and both triangle attentions (column attention dense SDPA). Baselines: the same block
    with dense SDPA everywhere (``sdpa_*``: the fair dense baseline, timed paired) and with
    OpenFold's naive attention (``naive_*``). Gate: against the same block whose three attentions
    are ``naive`` masked to the pattern (the dense-cost oracle): both outputs, and in fwd+bwd the
    parameter gradients per group (MSA row, triangle start, triangle end attention, the rest).

Every bench returns its (workload, bucket) figures as one `CellMeasurement` (units in the field
names), with the candidate's time and memory against both baselines. Baselines are measured once
per worker process and shape (`TrialRunner` holds the caches); one that runs out of memory is
recorded as missing. A new workload kind is a record class in `search_spaces.space.WORKLOAD_TYPES` (its
keys, batch and input size) and a `WorkloadBench` subclass registered in `BENCHES`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

import torch

from autotune.evoformer.timed_pass import block_pass
from kernels import clear_plan_caches
import kernels.dispatch  # noqa: F401  (hands patterns.guided the fused CUDA build of guided layouts)
from kernels.baselines import NAIVE, SDPA
from kernels.measure import (TOLERANCES, PairedTiming, is_oom, naive_attention, peak_memory, relative_error, release_memory,
                             time_fn, time_paired)
from results.states import EndReason
from search_spaces.space import SearchSpace, Workload

__all__ = ["CellMeasurement", "Baseline", "Baselines", "TrialTiming", "GateFailed", "WorkloadBench", "AttentionBench",
           "EvoformerBench", "BENCHES", "bench_for", "DTYPES", "DEFAULT_TOL", "MEMORY_FLOOR_BYTES", "block_pass",
           "nominal_layout", "workload_layout"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_TOL = TOLERANCES  # (forward, backward) relative to max |reference|: `kernels.measure.TOLERANCES`
# Memory ratios divide by max(baseline, 1 MiB): a fused SDPA forward can need almost nothing above
# its inputs, and a ratio against a few pages of noise would mean nothing.
MEMORY_FLOOR_BYTES = 1 << 20
MiB = float(1 << 20)


class GateFailed(Exception):
    """The candidate disagrees with its reference beyond the tolerance (the trial ends)."""


# ---- records ---------------------------------------------------------------------------------------


@dataclass
class TrialTiming:
    """Wall seconds of one trial's stages (stored as the trial's ``timing``): the gate, the
    candidate's timing and memory windows, the baselines, the accuracy, the timed calls alone
    (``timed_s``, inside the candidate windows) and the whole trial."""

    gate_s: float = 0.0
    compile_s: float = 0.0  # the compile phases (`kernels.compile_cache`), apart from the gate and timing
    candidate_s: float = 0.0
    baseline_s: float = 0.0
    accuracy_s: float = 0.0
    timed_s: float = 0.0
    total_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Baseline:
    """One baseline at one shape: its time (None when only its memory was measured) and its peak
    memory above the inputs."""

    median_ms: Optional[float]
    p10_ms: Optional[float]
    p90_ms: Optional[float]
    peak_bytes: int


@dataclass(frozen=True)
class Baselines:
    """Both baselines of a (workload, bucket); None: ran out of memory. ``cached``: measured by an
    earlier trial of this worker."""

    sdpa: Optional[Baseline]
    naive: Optional[Baseline]
    cached: bool = False


@dataclass
class CellMeasurement:
    """The figures of one (workload, bucket) of a trial; the fields are named as the database's
    ``at_measurements`` columns, units in the names.

    Times are medians (p10 / p90) in ms over the paired rounds (``repeats``); ``speedup`` is the
    median of the per-round ratios SDPA time / candidate time, with its confidence interval
    [``speedup_lo``, ``speedup_hi``] at ``speedup_level`` and why the loop stopped
    (``timing_stop``); ``speedup_naive`` = naive median / candidate median. Peaks are MiB above the
    inputs, ``memory_vs_*`` the candidate's peak over max(baseline peak, 1 MiB). The last five
    fields are the driver's judgement of the cell against the space's targets (`TrialResult.judge`);
    a worker leaves them unset."""

    workload: str
    kind: str
    bucket: int
    batch: int
    heads: int
    head_dim: int
    dtype: str
    mode: str
    sparsity: float
    time_ms: float
    time_p10_ms: float
    time_p90_ms: float
    repeats: int
    peak_mib: float
    memory_method: str
    sdpa_ms: Optional[float]
    sdpa_p10_ms: Optional[float]
    sdpa_p90_ms: Optional[float]
    sdpa_peak_mib: Optional[float]
    naive_ms: Optional[float]
    naive_peak_mib: Optional[float]
    baseline_cached: bool
    speedup: Optional[float]
    speedup_lo: Optional[float]
    speedup_hi: Optional[float]
    speedup_level: Optional[float]
    timing_stop: Optional[str]
    speedup_naive: Optional[float]
    memory_vs_sdpa: Optional[float]
    memory_vs_naive: Optional[float]
    accuracy: Optional[dict[str, Any]] = None  # the bucket's `AccuracyResult.to_dict()`
    accuracy_metric: Optional[str] = None
    accuracy_value: Optional[float] = None
    violations: Optional[dict[str, float]] = None  # target -> violation, <= 0 met
    feasible: Optional[bool] = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_figures(cls, space: SearchSpace, w: Workload, L: int, B: int, sparsity: float, pt: PairedTiming,
                     peak_bytes: int, memory_method: str, base: Baselines) -> "CellMeasurement":
        """The cell of the paired timing ``pt`` (candidate "cand", baseline "sdpa"), the
        candidate's peak and the baselines."""
        sdpa, naive = base.sdpa, base.naive
        floor = MEMORY_FLOOR_BYTES
        c, s, r = pt.stats("cand"), pt.stats(SDPA), pt.ratio("cand")
        return cls(
            workload=w.name, kind=w.kind, bucket=L, batch=B, heads=w.heads, head_dim=w.head_dim, dtype=space.dtype,
            mode=space.mode, sparsity=sparsity, time_ms=c["median_ms"], time_p10_ms=c["p10_ms"],
            time_p90_ms=c["p90_ms"], repeats=pt.rounds, peak_mib=peak_bytes / MiB, memory_method=memory_method,
            sdpa_ms=s["median_ms"], sdpa_p10_ms=s["p10_ms"], sdpa_p90_ms=s["p90_ms"],
            sdpa_peak_mib=None if sdpa is None else sdpa.peak_bytes / MiB,
            naive_ms=None if naive is None else naive.median_ms,
            naive_peak_mib=None if naive is None else naive.peak_bytes / MiB,
            baseline_cached=base.cached, speedup=r.point, speedup_lo=r.lo, speedup_hi=r.hi, speedup_level=r.level,
            timing_stop=pt.stop,
            speedup_naive=(naive.median_ms / c["median_ms"]) if naive else None,
            memory_vs_sdpa=(peak_bytes / max(sdpa.peak_bytes, floor)) if sdpa else None,
            memory_vs_naive=(peak_bytes / max(naive.peak_bytes, floor)) if naive else None,
        )


# ---- shared steps ----------------------------------------------------------------------------------


def random_qkv(B: int, H: int, L: int, D: int, bias: bool, device: str, dtype: torch.dtype, gen: torch.Generator,
               grad: bool = False):
    """Fresh random q, k, v [B, H, L, D] and pair bias [1, H, L, L] (or None); leaves that
    require grad when ``grad`` (fwd+bwd)."""
    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(grad)

    q, k, v = rnd(B, H, L, D), rnd(B, H, L, D), rnd(B, H, L, D)
    b = rnd(1, H, L, L).contiguous() if bias else None
    return q, k, v, b


def one_pass(mode: str, f: Callable[[], torch.Tensor], q, k, v, bias) -> Callable[[], None]:
    """One timed pass of attention ``f``: its forward without autograd (``fwd``), or forward and
    the gradients of q, k, v and the bias (``fwd+bwd``)."""
    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                f()
        return fwd
    leaves = [t for t in (q, k, v, bias) if t is not None]
    go = torch.ones(q.shape, device=q.device, dtype=q.dtype)

    def fwd_bwd():
        with torch.enable_grad():
            torch.autograd.grad(f(), leaves, go)
    return fwd_bwd


def measure_baseline(space: SearchSpace, fn: Callable[[], None], time_it: bool = True) -> Optional[Baseline]:
    """Peak memory (and, with ``time_it``, median/p10/p90 time) of one baseline; None when it
    runs out of memory."""
    try:
        t = (time_fn(fn, device=space.device, warmup=max(1, space.measure.warmup), repeats=space.measure.repeats)
             if time_it else {"median_ms": None, "p10_ms": None, "p90_ms": None})
        mem, _ = peak_memory(fn, device=space.device)
    except Exception as e:  # noqa: BLE001 - a baseline that does not fit is recorded missing
        if not is_oom(e):
            raise
        release_memory(space.device)
        return None
    return Baseline(t["median_ms"], t["p10_ms"], t["p90_ms"], mem)


def paired_kwargs(space: SearchSpace, confirm: bool = False) -> dict[str, Any]:
    """`time_paired` arguments of a trial (or of the confirmation) from the space's ``measure``."""
    return space.measure.paired_kwargs(space.effective_targets().confidence, confirm)


def nominal_layout(pattern_config, L: int):
    """The layout of a static pattern; for a guided one a nominal layout (from a constant signal:
    the per-row budget, where its blocks are is decided per input)."""
    from patterns import build_layout

    if getattr(pattern_config, "family", "static") != "guided":
        return build_layout(pattern_config, L)
    return build_layout(pattern_config, L, signal=torch.zeros(L, L))


def workload_layout(pattern_config, L: int, layout, bias, name: str, workspace: Optional[dict] = None):
    """The layout a workload runs on: the static layout, or the guided layout chosen from the
    workload's pair bias (per head); ``workspace={}`` makes a cold guided layout (its backend
    buffers count in a peak-memory call)."""
    from patterns import build_layout

    if getattr(pattern_config, "family", "static") != "guided":
        return layout
    if bias is None:
        raise ValueError(f"workload {name}: a guided pattern chooses its blocks from the pair bias; set bias: true")
    return build_layout(pattern_config, L, signal=bias.detach(), workspace=workspace)


# ---- the benches -----------------------------------------------------------------------------------


class WorkloadBench:
    """What a trial measures on one workload ``w`` of ``space``. ``caches`` is the worker's
    (`TrialRunner`): ``baselines`` (shape -> `Baselines` without the cached flag) and ``blocks``."""

    def __init__(self, space: SearchSpace, w: Workload, caches) -> None:
        self.space, self.w, self.caches = space, w, caches
        self.device, self.dtype = space.device, DTYPES[space.dtype]

    def gate_key(self) -> Optional[tuple]:
        """Workloads with the same key are gated once per trial (None: each one)."""
        return None

    def gate(self, pattern_config, kernel_config, layout, gen: torch.Generator, ftol: float,
             btol: float) -> dict[str, float]:
        """The candidate against its reference at the gate shape (``layout``: the pattern's layout
        there): the errors (``<name>.<what>``); `GateFailed` beyond a tolerance."""
        raise NotImplementedError

    def measure(self, pattern_config, kernel_config, layout, L: int, gen: torch.Generator,
                timing: TrialTiming) -> CellMeasurement:
        """Time the candidate paired with SDPA, its peak memory and the baselines at bucket L."""
        raise NotImplementedError

    def confirm_timing(self, L: int, cfgs: dict[str, tuple], gen: torch.Generator) -> PairedTiming:
        """One paired loop of SDPA ("sdpa") and every candidate (name -> (number, pattern config,
        kernel config)) on fresh inputs at bucket L (``measure.confirm_*``)."""
        raise NotImplementedError

    def compile_shapes(self, L: int, batch: int) -> list[tuple[int, int, bool, int]]:
        """The attention calls one pass of this workload makes at length L, as (heads, head_dim,
        bias, batch): what its compile key is made of (`kernels.compile_cache.compile_key`)."""
        raise NotImplementedError

    def compile_pass(self, pattern_config, kernel_config, L: int, batch: int, seed: int) -> None:
        """One untimed pass of the candidate at length L on fresh inputs: what compiles its kernels
        (the trial's compile phase, `autotune.trial.TrialRunner.compile_step`)."""
        raise NotImplementedError

    def _cached(self, key: tuple, measure: Callable[[], dict[str, Optional[Baseline]]]) -> Baselines:
        if key in self.caches.baselines:
            return Baselines(**self.caches.baselines[key], cached=True)
        res = measure()
        self.caches.baselines[key] = res
        return Baselines(**res, cached=False)


class AttentionBench(WorkloadBench):
    """MSA row and triangle attention (module docstring)."""

    def gate_key(self) -> Optional[tuple]:
        return (self.w.heads, self.w.head_dim, self.w.bias)

    def _inputs(self, B: int, L: int, gen: torch.Generator):
        w = self.w
        return random_qkv(B, w.heads, L, w.head_dim, w.bias, self.device, self.dtype, gen, self.space.mode == "fwd+bwd")

    def _pass(self, f: Callable[[], torch.Tensor], q, k, v, bias) -> Callable[[], None]:
        return one_pass(self.space.mode, f, q, k, v, bias)

    def compile_shapes(self, L, batch):
        return [(self.w.heads, self.w.head_dim, self.w.bias, batch)]

    def compile_pass(self, pattern_config, kernel_config, L, batch, seed):
        from kernels import sparse_attention

        space = self.space
        q, k, v, bias = self._inputs(batch, L, torch.Generator().manual_seed(seed + 2))
        lay = workload_layout(pattern_config, L, nominal_layout(pattern_config, L), bias, self.w.name)
        self._pass(lambda: sparse_attention(q, k, v, lay, bias, backend=space.backend, config=kernel_config),
                   q, k, v, bias)()

    def gate(self, pattern_config, kernel_config, layout, gen, ftol, btol):
        from kernels import reference_attention, sparse_attention

        space, w = self.space, self.w
        L, B = space.gate.seq_len, space.gate.batch
        grad = space.mode == "fwd+bwd"
        q, k, v, bias = self._inputs(B, L, gen)
        leaves = [t for t in (q, k, v, bias) if t is not None]
        lay = workload_layout(pattern_config, L, layout, bias, w.name)
        with torch.set_grad_enabled(grad):
            o = sparse_attention(q, k, v, lay, bias, backend=space.backend, config=kernel_config)
            r = reference_attention(q, k, v, lay, bias)
        out: dict[str, float] = {}
        e = relative_error(o.detach(), r.detach())
        out[f"{w.name}.fwd_err"] = e
        if not e <= ftol:
            raise GateFailed(EndReason.GATE_FAILED.text(f"{w.name} forward error {e:.3g} > {ftol:g} (L={L})"))
        if grad:
            go = torch.randn(o.shape, generator=gen).to(device=self.device, dtype=self.dtype)
            g1 = torch.autograd.grad(o, leaves, go)
            g2 = torch.autograd.grad(r, leaves, go)
            for name, a, b in zip(("dq", "dk", "dv", "dbias"), g1, g2):
                e = relative_error(a, b)
                out[f"{w.name}.{name}_err"] = e
                if not e <= btol:
                    raise GateFailed(EndReason.GATE_FAILED.text(f"{w.name} {name} error {e:.3g} > {btol:g} (L={L})"))
        return out

    def measure(self, pattern_config, kernel_config, layout, L, gen, timing):
        from kernels import dense_attention, sparse_attention

        space, w = self.space, self.w
        guided = getattr(pattern_config, "family", "static") == "guided"
        B = w.batch(L)
        q, k, v, bias = self._inputs(B, L, gen)
        t0 = time.perf_counter()
        lay_w = workload_layout(pattern_config, L, layout, bias, w.name)

        def run_on(lay, cold=False):
            if guided:  # the guided layout is built from the bias inside every timed call
                return self._pass(lambda: sparse_attention(
                    q, k, v, workload_layout(pattern_config, L, None, bias, w.name, {} if cold else None), bias,
                    backend=space.backend, config=kernel_config,
                ), q, k, v, bias)
            return self._pass(lambda: sparse_attention(q, k, v, lay, bias, backend=space.backend, config=kernel_config),
                              q, k, v, bias)

        sdpa_fn = self._pass(lambda: dense_attention(q, k, v, None, bias), q, k, v, bias)
        try:
            pt = time_paired({SDPA: sdpa_fn, "cand": run_on(layout)}, baseline=SDPA, device=self.device,
                             **paired_kwargs(space))
            # a cold call on a new layout object, so that workspaces a backend keeps per layout (the
            # cpu backend's K^T tiles) count towards the peak
            clear_plan_caches()
            mem, mem_method = peak_memory(run_on(layout.fresh(), cold=True), device=self.device)
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                release_memory(space.device)
                raise RuntimeError(EndReason.OUT_OF_MEMORY.text(f"{w.name} L={L} batch={B}")) from None
            raise
        timing.candidate_s += time.perf_counter() - t0
        timing.timed_s += pt.timed_s
        t0 = time.perf_counter()
        base = self._baselines(L, B, q, k, v, bias)
        timing.baseline_s += time.perf_counter() - t0
        return CellMeasurement.from_figures(space, w, L, B, lay_w.sparsity, pt, mem, mem_method, base)

    def _baselines(self, L: int, B: int, q, k, v, bias) -> Baselines:
        """SDPA's peak memory and the naive baseline's time and peak, cached per worker and shape."""
        from kernels import dense_attention

        w, space = self.w, self.space
        key = (w.heads, w.head_dim, w.bias, L, B, space.dtype, space.mode, space.device)
        return self._cached(key, lambda: {
            name: measure_baseline(space, self._pass(f, q, k, v, bias), time_it=(name == NAIVE))
            for name, f in ((SDPA, lambda: dense_attention(q, k, v, None, bias)),
                            (NAIVE, lambda: naive_attention(q, k, v, bias)))})

    def confirm_timing(self, L, cfgs, gen):
        from kernels import dense_attention, sparse_attention

        space, w = self.space, self.w
        q, k, v, bias = self._inputs(w.batch(L), L, gen)

        def cand(pattern_config, kernel_config):
            # a guided candidate chooses its layout from the bias inside every timed call
            lay = nominal_layout(pattern_config, L)
            return self._pass(lambda: sparse_attention(
                q, k, v, workload_layout(pattern_config, L, lay, bias, w.name), bias, backend=space.backend, config=kernel_config,
            ), q, k, v, bias)

        fns = {SDPA: self._pass(lambda: dense_attention(q, k, v, None, bias), q, k, v, bias)}
        for name, (_, pattern_config, kernel_config) in cfgs.items():
            fns[name] = cand(pattern_config, kernel_config)
        return time_paired(fns, baseline=SDPA, device=self.device, **paired_kwargs(space, confirm=True))


class EvoformerBench(WorkloadBench):
    """A whole EvoFormer block (module docstring)."""

    GRAD_GROUPS = {"msa_row": "msa_att_row.", "tri_start": "pair_stack.tri_att_start.",
                   "tri_end": "pair_stack.tri_att_end."}

    def block(self):
        """The workload's EvoformerBlock (fixed-seed weights, space dtype and device), one per worker."""
        space, w = self.space, self.w
        key = (tuple(sorted(w.block_kwargs().items())), space.dtype, space.device)
        if key not in self.caches.blocks:
            from models.evoformer import EvoformerBlock

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                block = EvoformerBlock(**w.block_kwargs())
            self.caches.blocks[key] = block.to(device=space.device, dtype=self.dtype)
        return self.caches.blocks[key]

    def inputs(self, L: int, depth: int, gen: torch.Generator):
        """m [depth, L, c_m], z [L, L, c_z], drawn on the device (z is large) from a seed taken from ``gen``."""
        device, dtype, w = self.device, self.dtype, self.w
        g = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        m = torch.randn(depth, L, w.c_m, generator=g, device=device, dtype=dtype)
        z = torch.randn(L, L, w.c_z, generator=g, device=device, dtype=dtype)
        return m, z

    def compile_shapes(self, L, batch):
        """The block's sparse calls: MSA row attention (MSA depth rows, the MSA heads, pair bias)
        and the two triangle attentions (L rows, the pair heads, pair bias)."""
        w = self.w
        return [(w.heads, w.head_dim, True, w.msa_depth), (w.pair_heads, w.head_dim, True, L)]

    def compile_pass(self, pattern_config, kernel_config, L, batch, seed):
        block = self.block()
        m, z = self.inputs(L, self.w.msa_depth, torch.Generator().manual_seed(seed + 2))
        block.set_attention(self.candidate(pattern_config, kernel_config))
        try:
            block_pass(block, m, z, self.space.mode)()
        finally:
            block.set_attention(None)

    def candidate(self, pattern_config, kernel_config):
        """The sparse attention choice of the block (MSA row and both triangle attentions)."""
        from models.evoformer import EvoformerAttention

        return EvoformerAttention.sparse(pattern_config, self.space.backend, kernel_config)

    def _fns(self, block, m, z, sparse: dict[str, Any]) -> dict[str, Callable[[], None]]:
        """Callables of one pass of the block with dense SDPA ("sdpa") and with each sparse
        attention choice of ``sparse`` (name -> EvoformerAttention); each sets its attention first."""
        fn = block_pass(block, m, z, self.space.mode)

        def with_att(att):
            def call():
                block.set_attention(att)
                fn()
            return call

        return {SDPA: with_att(None), **{name: with_att(att) for name, att in sparse.items()}}

    def _outputs(self, block, attention, m, z, params) -> tuple:
        """(m out, z out, parameter gradients or None) of one pass with ``attention``."""
        device, dtype = self.device, self.dtype
        grad = self.space.mode == "fwd+bwd"
        block.set_attention(attention)
        with torch.set_grad_enabled(grad):
            om, oz = block(m, z)
        grads = None
        if grad:
            g = torch.Generator().manual_seed(17)
            gm = torch.randn(om.shape, generator=g).to(device=device, dtype=dtype)
            gz = torch.randn(oz.shape, generator=g).to(device=device, dtype=dtype)
            grads = torch.autograd.grad((om, oz), [p for _, p in params], (gm, gz), allow_unused=True)
        return om.detach(), oz.detach(), grads

    def gate(self, pattern_config, kernel_config, layout, gen, ftol, btol):
        from models.evoformer import AttentionChoice, EvoformerAttention

        space, w = self.space, self.w
        L, depth = space.gate.seq_len, min(space.gate.batch, w.msa_depth)
        block = self.block()
        m, z = self.inputs(L, depth, gen)
        masked = AttentionChoice(NAIVE, pattern_config)
        reference = EvoformerAttention(msa_row=masked, tri_start=masked, tri_end=masked, msa_col=NAIVE)
        params = list(block.named_parameters())
        try:
            candidate = self.candidate(pattern_config, kernel_config)
            res = [self._outputs(block, att, m, z, params) for att in (candidate, reference)]
        finally:
            block.set_attention(None)
        out: dict[str, float] = {f"{w.name}.msa_depth": depth}
        (om_c, oz_c, g_c), (om_r, oz_r, g_r) = res
        for name, a, b in (("m", om_c, om_r), ("z", oz_c, oz_r)):
            e = relative_error(a, b)
            out[f"{w.name}.fwd_{name}_err"] = e
            if not e <= ftol:
                raise GateFailed(EndReason.GATE_FAILED.text(f"{w.name} forward error ({name}) {e:.3g} > {ftol:g} (L={L})"))
        if g_c is not None:
            out.update(self._gradient_errors(params, g_c, g_r, btol, L))
        return out

    def _gradient_errors(self, params, g_c, g_r, btol: float, L: int) -> dict[str, float]:
        """Relative parameter-gradient error per group (`GRAD_GROUPS` and the rest of the block)."""
        groups, name = self.GRAD_GROUPS, self.w.name
        out: dict[str, float] = {}
        for group in list(groups) + ["rest"]:
            pairs = [(a, b) for (n, _), a, b in zip(params, g_c, g_r) if a is not None and b is not None
                     and (n.startswith(groups[group]) if group != "rest" else not any(n.startswith(x) for x in groups.values()))]
            if not pairs:
                continue
            a = torch.cat([x.float().flatten() for x, _ in pairs])
            b = torch.cat([y.float().flatten() for _, y in pairs])
            e = relative_error(a, b)
            out[f"{name}.d{group}_err"] = e
            if not e <= btol:
                raise GateFailed(EndReason.GATE_FAILED.text(f"{name} {group} parameter gradient error {e:.3g} > {btol:g} (L={L})"))
        return out

    def measure(self, pattern_config, kernel_config, layout, L, gen, timing):
        space, w = self.space, self.w
        block = self.block()
        m, z = self.inputs(L, w.msa_depth, gen)
        fn = block_pass(block, m, z, space.mode)
        t0 = time.perf_counter()
        try:
            pt = time_paired(self._fns(block, m, z, {"cand": self.candidate(pattern_config, kernel_config)}), baseline=SDPA,
                             device=self.device, **paired_kwargs(space))
            from models.evoformer.attention import cached_layout

            cached_layout.cache_clear()  # a cold call: per-layout workspaces of the backend count
            clear_plan_caches()
            block.set_attention(self.candidate(pattern_config, kernel_config))
            mem, mem_method = peak_memory(fn, device=self.device)
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                release_memory(space.device)
                raise RuntimeError(EndReason.OUT_OF_MEMORY.text(f"{w.name} L={L} msa_depth={w.msa_depth}")) from None
            raise
        finally:
            block.set_attention(None)
        timing.candidate_s += time.perf_counter() - t0
        timing.timed_s += pt.timed_s
        t0 = time.perf_counter()
        base = self._baselines(L, block, fn)
        timing.baseline_s += time.perf_counter() - t0
        return CellMeasurement.from_figures(space, w, L, w.batch(L), layout.sparsity, pt, mem, mem_method, base)

    def _baselines(self, L: int, block, fn) -> Baselines:
        """SDPA block's peak and the naive block's time and peak at (workload, L), cached per worker
        like the attention baselines (the SDPA block's time is taken paired with each candidate)."""
        space = self.space
        key = ("evoformer", tuple(sorted(self.w.to_dict().items())), L, space.dtype, space.mode, space.device)

        def measure() -> dict[str, Optional[Baseline]]:
            res: dict[str, Optional[Baseline]] = {}
            try:
                for name in (SDPA, NAIVE):
                    block.set_attention(name)
                    res[name] = measure_baseline(space, fn, time_it=(name == NAIVE))
            finally:
                block.set_attention(None)
            return res

        return self._cached(key, measure)

    def confirm_timing(self, L, cfgs, gen):
        block = self.block()
        m, z = self.inputs(L, self.w.msa_depth, gen)
        fns = self._fns(block, m, z, {name: self.candidate(pattern_config, kernel_config)
                                      for name, (_, pattern_config, kernel_config) in cfgs.items()})
        try:
            return time_paired(fns, baseline=SDPA, device=self.device, **paired_kwargs(self.space, confirm=True))
        finally:
            block.set_attention(None)


#: workload kind -> what a trial measures on it
BENCHES: dict[str, type[WorkloadBench]] = {"msa_row": AttentionBench, "triangle": AttentionBench,
                                           "evoformer": EvoformerBench}


def bench_for(space: SearchSpace, w: Workload, caches) -> WorkloadBench:
    """The bench of workload ``w`` (by its kind)."""
    return BENCHES[w.kind](space, w, caches)
