"""One trial: correctness gate, then time / memory / accuracy of a candidate at every bucket.

Runs inside a worker (a Ray actor or the driver process itself for the local executor). Takes a
plain `TrialRequest` and returns a plain dict (`TrialResult.to_dict()`): the worker never touches
the database. The driver turns the result into objectives and constraint values with `summarize`.

Steps of `TrialRunner.run`:

1. Correctness gate: for each distinct workload shape, fresh random inputs (seeded per trial) at
   the small gate shape (``gate.seq_len`` residues, ``gate.batch`` rows), the trial's layout
   pattern and launch parameters through the candidate backend, against ``reference`` on the same
   inputs: forward, and the gradients of q, k, v and the bias when the mode is fwd+bwd. Error =
   max |candidate - reference| / max |reference|; default tolerances per dtype (`kernels.measure.TOLERANCES`),
   overridable in the space file. A failure ends the trial ("gate failed: ...").
2. For every (workload, bucket): build the layout, then time the candidate and the dense SDPA
   baseline *paired* - interleaved in one loop on the same inputs (`measure.time_paired`: warm-up
   rounds, then rounds in rotating order until the speedup's confidence interval is narrow enough,
   ``measure.max_repeats`` rounds or ``measure.time_cap_s``) - and measure the candidate's peak
   memory above the inputs (`measure.peak_memory`). The speedup stored is the median of the
   per-round ratios with its interval (``speedup_lo`` / ``speedup_hi``) and the rounds. The naive
   baseline's time and both baselines' peak memory come from this worker's cache (measured once per
   worker process and shape; a baseline that runs out of memory is recorded as missing).
   Out of memory in the candidate ends the trial ("out of memory: ...").
3. Accuracy: ``autotune.accuracy.evaluate_pattern(config, bucket, buckets=space buckets,
   max_chains=...)`` per bucket, cached per worker by (pattern, bucket): every metric, on the chains
   of the bucket each at its own length; stored with the chain lengths and the layout's sparsity
   at those lengths (``chain_sparsity``), which is what the recall was measured at. A range with
   no contact is None ("no data"): left out of the objective, unmet for an accuracy target.

A guided candidate (``family: guided``, `patterns.GuidedConfig`) chooses its layout from each
workload's pair bias: in the gate, and inside every timed call (so the construction is part of the
candidate's time; the peak-memory call uses a cold layout with its own buffers). Its accuracy uses
layouts chosen from the chains' structures degraded by the space's ``accuracy_noise`` (default 4 A).
Its cells' ``sparsity`` is that of the layout chosen from the workload's bias.

`TrialRunner.confirm` re-measures a bucket's leading candidates together (one interleaved loop per
workload with SDPA and each other; `autotune.verdict.confirm` stores and uses the figures).

An ``evoformer`` workload measures one whole ``autotune.evoformer.EvoformerBlock`` (built once per
worker from the workload's dims with fixed-seed weights, in the space's dtype on its device) at the
buckets up to its ``max_len``: inputs m [msa_depth, L, c_m] and z [L, L, c_z]; the candidate is the
block with the trial's pattern on MSA row attention and both triangle attentions (sparse, the
space's backend and the trial's kernel config; column attention dense SDPA), the baselines the
same block with dense SDPA attention everywhere (contiguous bias: the fair dense baseline; its
time and peak are ``sdpa_*``, so ``speedup`` is the block's speedup over the SDPA block) and with
OpenFold's materialised naive attention (``naive_*``). One pass is the block's forward (``fwd``) or
forward and backward into the parameter gradients (``fwd+bwd``; ``autotune.evoformer.bench``'s
pass), timed and measured with `measure.time_fn` / `measure.peak_memory`. ``batch`` is the MSA
depth, ``heads`` / ``head_dim`` the MSA attention's. Its gate: the sparse block against the same
block whose three attentions are ``naive`` masked to the pattern (the dense-cost oracle), at
``gate.seq_len`` residues and ``gate.batch`` MSA rows: both outputs (error relative to max |ref|),
and in fwd+bwd the parameter gradients of the MSA row, triangle-start and triangle-end attention
modules and of the rest of the block (per group, relative to the group's max |ref|).

Test-only fault injection: the environment variable ``AUTOTUNE_FAULT_INJECT`` holds a
comma-separated list of ``raise:<trial number>`` (the trial raises after its gate),
``exit:<trial number>`` (the worker process dies with ``os._exit(13)`` after its gate) and
``sleep:<trial number>`` (the trial sleeps 120 s after its gate, to kill a driver mid-trial). It
is read in the worker; the executors forward it to their Ray actors.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from kernels.measure import TOLERANCES, is_oom, naive_attention, peak_memory, time_fn, time_paired
from .space import ACCURACY_METRIC_DIRECTIONS, SearchSpace

__all__ = ["TrialRequest", "TrialRunner", "summarize", "DEFAULT_TOL", "FAULT_ENV", "MEMORY_FLOOR_BYTES"]

FAULT_ENV = "AUTOTUNE_FAULT_INJECT"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_TOL = TOLERANCES  # (forward, backward) relative to max |reference|: `kernels.measure.TOLERANCES`
# Memory ratios divide by max(baseline, 1 MiB): a fused SDPA forward can need almost nothing above
# its inputs, and a ratio against a few pages of noise would mean nothing.
MEMORY_FLOOR_BYTES = 1 << 20
MiB = float(1 << 20)


@dataclass
class TrialRequest:
    study: str
    number: int
    params: dict[str, Any]
    pattern: dict[str, Any]
    kernel: Optional[dict[str, Any]]
    space: dict[str, Any]  # SearchSpace.to_dict()
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fault(number: int) -> Optional[str]:
    spec = os.environ.get(FAULT_ENV, "")
    for item in spec.split(","):
        kind, _, n = item.strip().partition(":")
        if n.strip().isdigit() and int(n) == number and kind in ("raise", "exit", "sleep"):
            return kind
    return None


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    denom = b.abs().max().item()
    err = (a - b).abs().max().item()
    if not math.isfinite(err):
        return math.inf
    return err / max(denom, 1e-12)


class GateFailed(Exception):
    pass


class TrialRunner:
    """Runs trials in one process; holds the per-process caches (baselines, accuracy)."""

    def __init__(self, threads: Optional[int] = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.baselines: dict[tuple, dict[str, Any]] = {}
        self.accuracy: dict[tuple, dict[str, Any]] = {}
        self.blocks: dict[tuple, Any] = {}  # evoformer workloads: (dims, dtype, device) -> EvoformerBlock
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.trials_run = 0

    # -- helpers ------------------------------------------------------------------------------
    def _inputs(self, B: int, H: int, L: int, D: int, bias: bool, device: str, dtype: torch.dtype, gen: torch.Generator,
                grad: bool = False):
        """Fresh random q, k, v [B, H, L, D] and pair bias [1, H, L, L] (or None); leaves that
        require grad when ``grad`` (fwd+bwd)."""
        def rnd(*shape):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(grad)

        q, k, v = rnd(B, H, L, D), rnd(B, H, L, D), rnd(B, H, L, D)
        b = rnd(1, H, L, L).contiguous() if bias else None
        return q, k, v, b

    def _gate(self, space: SearchSpace, pcfg, kcfg, seed: int) -> dict[str, Any]:
        from kernels import reference_attention, sparse_attention

        device, dtype = space.device, DTYPES[space.dtype]
        ftol, btol = DEFAULT_TOL[space.dtype]
        if space.gate.get("fwd_tol") is not None:  # 0 is an exact comparison, not "use the default"
            ftol = space.gate["fwd_tol"]
        if space.gate.get("bwd_tol") is not None:
            btol = space.gate["bwd_tol"]
        L, B = space.gate["seq_len"], space.gate["batch"]
        layout = _nominal_layout(pcfg, L)
        kc = kcfg.for_block(pcfg.block_size) if kcfg is not None else None
        gen = torch.Generator().manual_seed(seed)
        out: dict[str, Any] = {"seq_len": L, "sparsity": layout.sparsity, "fwd_tol": ftol, "bwd_tol": btol}
        seen = set()
        for w in space.workloads:
            if w.kind == "evoformer":
                out.update(self._evoformer_gate(space, w, pcfg, kc, gen, ftol, btol))
                continue
            shape = (w.heads, w.head_dim, w.bias)
            if shape in seen:
                continue
            seen.add(shape)
            grad = space.mode == "fwd+bwd"
            q, k, v, bias = self._inputs(B, w.heads, L, w.head_dim, w.bias, device, dtype, gen, grad)
            leaves = [t for t in (q, k, v, bias) if t is not None]
            lay = _workload_layout(pcfg, L, layout, bias, w.name)
            with torch.set_grad_enabled(grad):
                o = sparse_attention(q, k, v, lay, bias, backend=space.backend, config=kc)
                r = reference_attention(q, k, v, lay, bias)
            e = _rel_err(o.detach(), r.detach())
            out[f"{w.name}.fwd_err"] = e
            if not e <= ftol:
                raise GateFailed(f"gate failed: {w.name} forward error {e:.3g} > {ftol:g} (L={L})")
            if grad:
                go = torch.randn(o.shape, generator=gen).to(device=device, dtype=dtype)
                g1 = torch.autograd.grad(o, leaves, go)
                g2 = torch.autograd.grad(r, leaves, go)
                for name, a, b in zip(("dq", "dk", "dv", "dbias"), g1, g2):
                    e = _rel_err(a, b)
                    out[f"{w.name}.{name}_err"] = e
                    if not e <= btol:
                        raise GateFailed(f"gate failed: {w.name} {name} error {e:.3g} > {btol:g} (L={L})")
        return out

    # -- evoformer workloads --------------------------------------------------------------------
    def _block(self, space: SearchSpace, w):
        """The workload's EvoformerBlock (fixed-seed weights, space dtype and device), one per worker."""
        key = (tuple(sorted(w.block_kwargs().items())), space.dtype, space.device)
        if key not in self.blocks:
            from autotune.evoformer import EvoformerBlock

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                block = EvoformerBlock(**w.block_kwargs())
            self.blocks[key] = block.to(device=space.device, dtype=DTYPES[space.dtype])
        return self.blocks[key]

    @staticmethod
    def _evoformer_inputs(w, L: int, depth: int, device: str, dtype: torch.dtype, gen: torch.Generator):
        """m [depth, L, c_m], z [L, L, c_z], drawn on the device (z is large) from a seed taken from ``gen``."""
        g = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        m = torch.randn(depth, L, w.c_m, generator=g, device=device, dtype=dtype)
        z = torch.randn(L, L, w.c_z, generator=g, device=device, dtype=dtype)
        return m, z

    @staticmethod
    def _sparse_attention(space: SearchSpace, pcfg, kc):
        from autotune.evoformer import EvoformerAttention

        return EvoformerAttention.sparse(pcfg, space.backend, kc)

    def _evoformer_gate(self, space: SearchSpace, w, pcfg, kc, gen: torch.Generator, ftol: float, btol: float) -> dict[str, Any]:
        from autotune.evoformer import AttentionChoice, EvoformerAttention

        device, dtype = space.device, DTYPES[space.dtype]
        L, depth = space.gate["seq_len"], min(space.gate["batch"], w.msa_depth)
        block = self._block(space, w)
        m, z = self._evoformer_inputs(w, L, depth, device, dtype, gen)
        masked = AttentionChoice("naive", pcfg)
        reference = EvoformerAttention(msa_row=masked, tri_start=masked, tri_end=masked, msa_col="naive")
        grad = space.mode == "fwd+bwd"
        groups = {"msa_row": "msa_att_row.", "tri_start": "pair_stack.tri_att_start.", "tri_end": "pair_stack.tri_att_end."}
        params = list(block.named_parameters())
        res = []
        try:
            for attention in (self._sparse_attention(space, pcfg, kc), reference):
                block.set_attention(attention)
                with torch.set_grad_enabled(grad):
                    om, oz = block(m, z)
                grads = None
                if grad:
                    g = torch.Generator().manual_seed(17)
                    gm = torch.randn(om.shape, generator=g).to(device=device, dtype=dtype)
                    gz = torch.randn(oz.shape, generator=g).to(device=device, dtype=dtype)
                    grads = torch.autograd.grad((om, oz), [p for _, p in params], (gm, gz), allow_unused=True)
                res.append((om.detach(), oz.detach(), grads))
        finally:
            block.set_attention(None)
        out: dict[str, Any] = {f"{w.name}.msa_depth": depth}
        (om_c, oz_c, g_c), (om_r, oz_r, g_r) = res
        for name, a, b in (("m", om_c, om_r), ("z", oz_c, oz_r)):
            e = _rel_err(a, b)
            out[f"{w.name}.fwd_{name}_err"] = e
            if not e <= ftol:
                raise GateFailed(f"gate failed: {w.name} forward error ({name}) {e:.3g} > {ftol:g} (L={L})")
        if grad:
            for group in list(groups) + ["rest"]:
                pairs = [(a, b) for (n, _), a, b in zip(params, g_c, g_r) if a is not None and b is not None
                         and (n.startswith(groups[group]) if group != "rest" else not any(n.startswith(x) for x in groups.values()))]
                if not pairs:
                    continue
                a = torch.cat([x.float().flatten() for x, _ in pairs])
                b = torch.cat([y.float().flatten() for _, y in pairs])
                e = _rel_err(a, b)
                out[f"{w.name}.d{group}_err"] = e
                if not e <= btol:
                    raise GateFailed(f"gate failed: {w.name} {group} parameter gradient error {e:.3g} > {btol:g} (L={L})")
        return out

    def _evoformer_fn(self, space: SearchSpace, block, m, z):
        from autotune.evoformer.bench import _pass_fn

        return _pass_fn(block, m, z, space.mode)

    def _evoformer_baseline(self, space: SearchSpace, w, L: int, m, z) -> dict[str, Any]:
        """SDPA block's peak and the naive block's time and peak at (workload, L), cached per worker
        like the attention baselines (the SDPA block's time is taken paired with each candidate)."""
        key = ("evoformer", tuple(sorted(w.to_dict().items())), L, space.dtype, space.mode, space.device)
        if key in self.baselines:
            return dict(self.baselines[key], cached=True)
        block = self._block(space, w)
        fn = self._evoformer_fn(space, block, m, z)
        res: dict[str, Any] = {}
        try:
            for name in ("sdpa", "naive"):
                block.set_attention(name)
                res[name] = self._measure_baseline(space, fn, time_it=(name == "naive"))
        finally:
            block.set_attention(None)
        self.baselines[key] = res
        return dict(res, cached=False)

    @staticmethod
    def _paired_kw(space: SearchSpace, confirm: bool = False) -> dict[str, Any]:
        ms = space.measure
        if confirm:
            return dict(warmup=ms.get("warmup", 2), repeats=ms.get("confirm_repeats", 21),
                        max_repeats=ms.get("confirm_max_repeats", 81), rel_width=ms.get("rel_width", 0.05),
                        time_cap_s=ms.get("confirm_time_cap_s", 20.0), level=space.effective_targets().confidence)
        return dict(warmup=ms.get("warmup", 2), repeats=ms.get("repeats", 7), max_repeats=ms.get("max_repeats", 41),
                    rel_width=ms.get("rel_width", 0.05), time_cap_s=ms.get("time_cap_s", 3.0),
                    level=space.effective_targets().confidence)

    def _evoformer_fns(self, space: SearchSpace, w, block, m, z, sparse: dict[str, Any]) -> dict[str, Any]:
        """Callables of one pass of the block with dense SDPA ("sdpa") and with each sparse
        attention choice of ``sparse`` (name -> EvoformerAttention); each sets its attention first."""
        fn = self._evoformer_fn(space, block, m, z)

        def with_att(att):
            def call():
                block.set_attention(att)
                fn()
            return call

        return {"sdpa": with_att(None), **{name: with_att(att) for name, att in sparse.items()}}

    def _measure_evoformer(self, space: SearchSpace, w, pcfg, kc, layout, L: int, gen: torch.Generator,
                           timing: dict[str, float]) -> dict[str, Any]:
        device, dtype = space.device, DTYPES[space.dtype]
        block = self._block(space, w)
        m, z = self._evoformer_inputs(w, L, w.msa_depth, device, dtype, gen)
        fn = self._evoformer_fn(space, block, m, z)
        t0 = time.perf_counter()
        try:
            pt = time_paired(self._evoformer_fns(space, w, block, m, z, {"cand": self._sparse_attention(space, pcfg, kc)}),
                             baseline="sdpa", device=device, **self._paired_kw(space))
            from autotune.evoformer.attention import layout_for

            layout_for.cache_clear()  # a cold call: per-layout workspaces of the backend count
            block.set_attention(self._sparse_attention(space, pcfg, kc))
            mem, mem_method = peak_memory(fn, device=device)
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                self._free(space)
                raise RuntimeError(f"out of memory: {w.name} L={L} msa_depth={w.msa_depth}") from None
            raise
        finally:
            block.set_attention(None)
        timing["candidate_s"] += time.perf_counter() - t0
        timing["timed_s"] += pt.timed_s
        t0 = time.perf_counter()
        base = self._evoformer_baseline(space, w, L, m, z)
        timing["baseline_s"] += time.perf_counter() - t0
        del m, z, fn
        return self._cell(space, w, L, w.batch(L), layout, pt, mem, mem_method, base)

    @staticmethod
    def _cell(space: SearchSpace, w, L: int, B: int, layout, pt, mem, mem_method, base) -> dict[str, Any]:
        """One measurement dict: the paired timing of candidate and SDPA, memory against the baselines."""
        sdpa, naive = base.get("sdpa"), base.get("naive")
        floor = MEMORY_FLOOR_BYTES
        c, s, r = pt.stats("cand"), pt.stats("sdpa"), pt.ratio("cand")
        mib = lambda b: None if b is None else b / MiB  # noqa: E731
        return {
            "workload": w.name, "kind": w.kind, "bucket": L, "batch": B, "heads": w.heads,
            "head_dim": w.head_dim, "dtype": space.dtype, "mode": space.mode,
            "sparsity": layout.sparsity,
            "time_ms": c["median_ms"], "time_p10_ms": c["p10_ms"], "time_p90_ms": c["p90_ms"],
            "repeats": pt.rounds, "peak_bytes": mem, "memory_method": mem_method,
            "sdpa_ms": s["median_ms"], "sdpa_p10_ms": s["p10_ms"], "sdpa_p90_ms": s["p90_ms"],
            "sdpa_peak_bytes": sdpa and sdpa["peak_bytes"],
            "naive_ms": naive and naive["median_ms"], "naive_peak_bytes": naive and naive["peak_bytes"],
            "peak_mib": mib(mem), "sdpa_peak_mib": mib(sdpa and sdpa["peak_bytes"]),
            "naive_peak_mib": mib(naive and naive["peak_bytes"]),
            "baseline_cached": base["cached"],
            "speedup": r.point, "speedup_lo": r.lo, "speedup_hi": r.hi, "speedup_level": r.level,
            "timing_stop": pt.stop,
            "speedup_naive": (naive["median_ms"] / c["median_ms"]) if naive else None,
            "memory_vs_sdpa": (mem / max(sdpa["peak_bytes"], floor)) if sdpa else None,
            "memory_vs_naive": (mem / max(naive["peak_bytes"], floor)) if naive else None,
        }

    def _baseline(self, space: SearchSpace, w, L: int, B: int, q, k, v, bias) -> dict[str, Any]:
        """SDPA's peak memory and the naive baseline's time and peak, cached per worker and shape."""
        from kernels import dense_attention

        key = (w.heads, w.head_dim, w.bias, L, B, space.dtype, space.mode, space.device)
        if key in self.baselines:
            res = {name: (dict(b) if b else None) for name, b in self.baselines[key].items()}
            return dict(res, cached=True)
        res: dict[str, Any] = {}
        for name, f in (("sdpa", lambda: dense_attention(q, k, v, None, bias)), ("naive", lambda: naive_attention(q, k, v, bias))):
            res[name] = self._measure_baseline(space, self._callable(space, f, q, k, v, bias), time_it=(name == "naive"))
        self.baselines[key] = res
        return dict(res, cached=False)

    def _measure_baseline(self, space: SearchSpace, fn, time_it: bool = True) -> Optional[dict[str, Any]]:
        """Peak memory (and, with ``time_it``, median/p10/p90 time) of one baseline; None when it
        runs out of memory."""
        try:
            t = (time_fn(fn, device=space.device, warmup=max(1, space.measure.get("warmup", 2)),
                         repeats=space.measure.get("repeats", 7)) if time_it else
                 {"median_ms": None, "p10_ms": None, "p90_ms": None})
            mem, _ = peak_memory(fn, device=space.device)
        except Exception as e:  # noqa: BLE001 - a baseline that does not fit is recorded missing
            if not is_oom(e):
                raise
            self._free(space)
            return None
        return {"median_ms": t["median_ms"], "p10_ms": t["p10_ms"], "p90_ms": t["p90_ms"], "peak_bytes": mem}

    @staticmethod
    def _free(space: SearchSpace) -> None:
        if space.device == "cuda":
            torch.cuda.empty_cache()

    @staticmethod
    def _callable(space: SearchSpace, f, q, k, v, bias):
        if space.mode == "fwd":
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

    def _accuracy(self, space: SearchSpace, pcfg, L: int) -> Optional[dict[str, Any]]:
        """Every accuracy metric of the pattern at bucket L, with the chains' lengths and the layout's
        sparsity at those lengths; None when neither an objective nor a target needs accuracy."""
        targets = space.effective_targets()
        if space.accuracy_metric is None and not targets.accuracy_metrics():
            return None
        max_chains = space.accuracy_max_chains if space.accuracy_max_chains is not None else targets.max_chains
        noise = getattr(space, "accuracy_noise", None)
        key = (tuple(sorted(pcfg.to_dict().items())), L, tuple(space.buckets), max_chains, noise)
        if key not in self.accuracy:
            from autotune.accuracy import evaluate_pattern
            from patterns import build_layout

            kw = {} if noise is None else {"noise": noise}  # guided: the degraded structure's noise (default 4 A)
            r = evaluate_pattern(pcfg, L, buckets=space.buckets, max_chains=max_chains, **kw)
            lengths = [int(n) for n in r.lengths]
            self.accuracy[key] = {
                "metrics": {k: (None if v is None else float(v)) for k, v in r.metrics.items()},  # None: no data
                "n_chains": int(r.n_chains),
                "lengths": lengths,
                "chain_sparsity": (r.sparsity if r.sparsity is not None else
                                   sum(build_layout(pcfg, n).sparsity for n in lengths) / len(lengths)
                                   if lengths else None),
                "max_chains": max_chains,
                "extrapolated": bool(r.extrapolated),
                "note": r.note,
            }
        return self.accuracy[key]

    def confirm(self, space: SearchSpace, L: int, candidates: list[tuple[int, dict, Optional[dict]]],
                seed: int = 0) -> list[dict[str, Any]]:
        """Re-measure ``candidates`` ((trial number, pattern dict, kernel dict)) at bucket L together:
        per workload one `time_paired` loop with SDPA and every candidate (``measure.confirm_*``),
        on fresh inputs. One dict per (workload, candidate) with the paired speedup and interval."""
        from kernels import KernelConfig, dense_attention, sparse_attention
        from patterns import pattern_from_dict

        device, dtype = space.device, DTYPES[space.dtype]
        gen = torch.Generator().manual_seed(seed)
        out: list[dict[str, Any]] = []
        for w in space.workloads:
            if not w.applies(L):
                continue
            cfgs = {}
            for number, pattern, kernel in candidates:
                pcfg = pattern_from_dict(pattern)  # PatternConfig, or GuidedConfig (family: guided)
                kc = KernelConfig.from_dict(kernel).for_block(pcfg.block_size) if kernel else None
                cfgs[f"t{number}"] = (number, pcfg, kc)
            if w.kind == "evoformer":
                block = self._block(space, w)
                m, z = self._evoformer_inputs(w, L, w.msa_depth, device, dtype, gen)
                fns = self._evoformer_fns(space, w, block, m, z, {name: self._sparse_attention(space, pcfg, kc)
                                                                   for name, (_, pcfg, kc) in cfgs.items()})
                try:
                    pt = time_paired(fns, baseline="sdpa", device=device, **self._paired_kw(space, confirm=True))
                finally:
                    block.set_attention(None)
            else:
                B = w.batch(L)
                q, k, v, bias = self._inputs(B, w.heads, L, w.head_dim, w.bias, device, dtype, gen,
                                             space.mode == "fwd+bwd")

                def cand(pcfg, kc):
                    # a guided candidate chooses its layout from the bias inside every timed call
                    lay = _nominal_layout(pcfg, L)
                    return self._callable(space, lambda: sparse_attention(
                        q, k, v, _workload_layout(pcfg, L, lay, bias, w.name), bias, backend=space.backend, config=kc,
                    ), q, k, v, bias)

                fns = {"sdpa": self._callable(space, lambda: dense_attention(q, k, v, None, bias), q, k, v, bias)}
                for name, (_, pcfg, kc) in cfgs.items():
                    fns[name] = cand(pcfg, kc)
                pt = time_paired(fns, baseline="sdpa", device=device, **self._paired_kw(space, confirm=True))
            sd = pt.stats("sdpa")
            for name, (number, _, _) in cfgs.items():
                r = pt.ratio(name)
                out.append({"workload": w.name, "trial_number": number, "speedup": r.point, "speedup_lo": r.lo,
                            "speedup_hi": r.hi, "level": r.level, "repeats": pt.rounds,
                            "time_ms": pt.stats(name)["median_ms"], "sdpa_ms": sd["median_ms"], "stop": pt.stop})
        return out

    # -- the trial -----------------------------------------------------------------------------
    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one trial; never raises (except for an injected ``exit`` fault)."""
        t_start = time.perf_counter()
        req = TrialRequest(**request)
        timing = {"gate_s": 0.0, "candidate_s": 0.0, "baseline_s": 0.0, "accuracy_s": 0.0, "timed_s": 0.0}
        result: dict[str, Any] = {
            "number": req.number, "ok": False, "reason": None, "gate": None, "measurements": [],
            "accuracy": {}, "worker": {"host": self.host, "pid": self.pid, "trials_run": self.trials_run},
            "timing": timing,
        }
        self.trials_run += 1
        try:
            from kernels import KernelConfig, dense_attention, sparse_attention
            from patterns import pattern_from_dict

            space = SearchSpace.from_dict(req.space)
            pcfg = pattern_from_dict(req.pattern)  # PatternConfig, or GuidedConfig (family: guided)
            guided = getattr(pcfg, "family", "static") == "guided"
            kcfg = KernelConfig.from_dict(req.kernel) if req.kernel is not None else None
            device, dtype = space.device, DTYPES[space.dtype]
            if device == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("the space asks for device cuda but this worker has no CUDA device")

            t0 = time.perf_counter()
            result["gate"] = self._gate(space, pcfg, kcfg, req.seed)
            timing["gate_s"] = time.perf_counter() - t0

            fault = _fault(req.number)
            if fault == "exit":
                os._exit(13)
            if fault == "sleep":
                time.sleep(120)
            if fault == "raise":
                raise RuntimeError(f"injected fault ({FAULT_ENV}) in trial {req.number}")

            gen = torch.Generator().manual_seed(req.seed + 1)
            for L in space.buckets:
                layout = _nominal_layout(pcfg, L)
                kc = kcfg.for_block(pcfg.block_size) if kcfg is not None else None
                for w in space.workloads:
                    if not w.applies(L):
                        continue
                    if w.kind == "evoformer":
                        result["measurements"].append(self._measure_evoformer(space, w, pcfg, kc, layout, L, gen, timing))
                        continue
                    B = w.batch(L)
                    q, k, v, bias = self._inputs(B, w.heads, L, w.head_dim, w.bias, device, dtype, gen,
                                                 space.mode == "fwd+bwd")
                    t0 = time.perf_counter()
                    lay_w = _workload_layout(pcfg, L, layout, bias, w.name)

                    def run_on(lay, cold=False):
                        if guided:  # the guided layout is built from the bias inside every timed call
                            return self._callable(space, lambda: sparse_attention(
                                q, k, v, _workload_layout(pcfg, L, None, bias, w.name, {} if cold else None), bias,
                                backend=space.backend, config=kc,
                            ), q, k, v, bias)
                        return self._callable(
                            space, lambda: sparse_attention(q, k, v, lay, bias, backend=space.backend, config=kc), q, k, v, bias
                        )

                    sdpa_fn = self._callable(space, lambda: dense_attention(q, k, v, None, bias), q, k, v, bias)
                    try:
                        pt = time_paired({"sdpa": sdpa_fn, "cand": run_on(layout)}, baseline="sdpa", device=device,
                                         **self._paired_kw(space))
                        # a cold call on a new layout object, so that workspaces a backend keeps per
                        # layout (the cpu backend's K^T tiles) count towards the peak
                        mem, mem_method = peak_memory(run_on(layout.fresh(), cold=True), device=device)
                    except Exception as e:  # noqa: BLE001
                        if is_oom(e):
                            self._free(space)
                            raise RuntimeError(f"out of memory: {w.name} L={L} batch={B}") from None
                        raise
                    timing["candidate_s"] += time.perf_counter() - t0
                    timing["timed_s"] += pt.timed_s
                    t0 = time.perf_counter()
                    base = self._baseline(space, w, L, B, q, k, v, bias)
                    timing["baseline_s"] += time.perf_counter() - t0
                    result["measurements"].append(self._cell(space, w, L, B, lay_w, pt, mem, mem_method, base))
                    del q, k, v, bias
                t0 = time.perf_counter()
                acc = self._accuracy(space, pcfg, L)
                timing["accuracy_s"] += time.perf_counter() - t0
                if acc is not None:
                    result["accuracy"][str(L)] = acc
            result["ok"] = True
        except GateFailed as e:
            result["reason"] = str(e)
        except Exception as e:  # noqa: BLE001 - any failure is this trial's, recorded with its reason
            tb = traceback.extract_tb(e.__traceback__)
            where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
            result["reason"] = f"{type(e).__name__}: {e}{where}"[:2000]
            if is_oom(e) and torch.cuda.is_available():
                torch.cuda.empty_cache()
        timing["total_s"] = time.perf_counter() - t_start
        return result


# ---- guided patterns -----------------------------------------------------------------------------


def _nominal_layout(pcfg, L: int):
    """The layout of a static pattern; for a guided one a nominal layout (from a constant signal:
    the per-row budget, where its blocks are is decided per input)."""
    from patterns import build_layout

    if getattr(pcfg, "family", "static") != "guided":
        return build_layout(pcfg, L)
    return build_layout(pcfg, L, signal=torch.zeros(L, L))


def _workload_layout(pcfg, L: int, layout, bias, name: str, workspace: Optional[dict] = None):
    """The layout a workload runs on: the static layout, or the guided layout chosen from the
    workload's pair bias (per head); ``workspace={}`` makes a cold guided layout (its backend
    buffers count in a peak-memory call)."""
    from patterns import build_layout

    if getattr(pcfg, "family", "static") != "guided":
        return layout
    if bias is None:
        raise ValueError(f"workload {name}: a guided pattern chooses its blocks from the pair bias; set bias: true")
    return build_layout(pcfg, L, signal=bias.detach(), workspace=workspace)


# ---- driver side: objectives and constraints -------------------------------------------------------


def _geomean(xs: list[float], what: str = "cell values") -> Optional[float]:
    """`autotune.aggregate.geomean` (logs what it leaves out)."""
    from .aggregate import geomean

    return geomean(xs, what).value


def cell_row(m: dict[str, Any], accuracy: dict[str, Any]) -> dict[str, Any]:
    """A worker's measurement dict with its bucket's accuracy attached (what `autotune.verdict` reads)."""
    acc = accuracy.get(str(m["bucket"])) if accuracy else None
    mib = lambda b: None if b is None else b / MiB  # noqa: E731
    row = dict(m, accuracy=acc)
    for k in ("peak", "sdpa_peak", "naive_peak"):
        if row.get(f"{k}_mib") is None and row.get(f"{k}_bytes") is not None:
            row[f"{k}_mib"] = mib(row[f"{k}_bytes"])
    return row


def cell_values(space: SearchSpace, m: dict[str, Any], accuracy: dict[str, Any]) -> dict[str, Optional[float]]:
    """The targeted quantities of one (workload, bucket) measurement (`autotune.verdict.cell_values`),
    plus ``accuracy``: the value of the space's accuracy objective metric."""
    from .verdict import cell_values as values

    row = cell_row(m, accuracy)
    out = values(space.effective_targets(), row)
    metrics = ((row.get("accuracy") or {}).get("metrics") or {})
    out["accuracy"] = metrics.get(space.accuracy_metric) if space.accuracy_metric else None
    return out


def cell_violations(space: SearchSpace, m: dict[str, Any], accuracy: dict[str, Any]) -> dict[str, float]:
    """Target name -> violation (<= 0 met) at this cell: the space's targets, one rule for all."""
    from .verdict import cell_violations as violations

    return violations(space.effective_targets(), cell_row(m, accuracy))


def constraint_names(space: SearchSpace) -> list[str]:
    """Names of the constraint values `summarize` returns (the space's targets, in order)."""
    return space.effective_targets().names()


def summarize(space: SearchSpace, result: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(objective values in the order of ``space.objectives``, constraint values in the order of
    `constraint_names`; <= 0 feasible, worst cell) of a successful trial result."""
    ms = result["measurements"]
    acc = result.get("accuracy") or {}
    objs: list[float] = []
    for o in space.objectives:
        if o in ("speedup", "memory_vs_sdpa", "memory_vs_naive"):
            v = _geomean([m.get(o) for m in ms], o)
            v = v if v is not None else (0.0 if o == "speedup" else 1e9)
        elif o == "sparsity":
            v = sum(m["sparsity"] for m in ms) / len(ms)
        else:  # accuracy: the worst bucket
            vals = [a["metrics"][space.accuracy_metric] for a in acc.values() if a["metrics"].get(space.accuracy_metric) is not None]
            worst = min if ACCURACY_METRIC_DIRECTIONS[space.accuracy_metric] == "max" else max
            v = worst(vals) if vals else float("nan")
        objs.append(float(v))
    viols = [cell_violations(space, m, acc) for m in ms]
    cons = [max(v[name] for v in viols) for name in constraint_names(space)]
    return objs, cons
