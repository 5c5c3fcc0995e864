"""One trial: correctness gate, then time / memory / accuracy of a candidate at every bucket.

Runs inside a worker (a Ray actor or the driver process itself for the local executor). Takes a
plain `TrialRequest` and returns a plain dict (`TrialResult.to_dict()`): the worker never touches
the database. The driver turns the result into objectives and constraint values with `summarize`.

Steps of `TrialRunner.run`:

1. Correctness gate: for each distinct workload shape, fresh random inputs (seeded per trial) at
   the small gate shape (``gate.seq_len`` residues, ``gate.batch`` rows), the trial's layout
   pattern and launch parameters through the candidate backend, against ``reference`` on the same
   inputs: forward, and the gradients of q, k, v and the bias when the mode is fwd+bwd. Error =
   max |candidate - reference| / max |reference|; default tolerances per dtype (`DEFAULT_TOL`),
   overridable in the space file. A failure ends the trial ("gate failed: ...").
2. For every (workload, bucket): build the layout, time the candidate (`measure.time_fn`),
   measure its peak memory above the inputs (`measure.peak_memory`), then the dense SDPA
   baseline's time at the same shape right after it, in the same process and on the same inputs
   (so that both see the same machine load; SDPA is cheap next to a trial). The naive baseline
   and both baselines' peak memory come from this worker's cache (measured once per worker
   process and shape; a baseline that runs out of memory is recorded as missing).
   Out of memory in the candidate ends the trial ("out of memory: ...").
3. Accuracy: ``autotune.accuracy.evaluate_pattern(config, bucket, buckets=space buckets,
   max_chains=...)`` per bucket, cached per worker by (pattern, bucket).

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

from .measure import is_oom, naive_attention, peak_memory, time_fn
from .space import ACCURACY_METRIC_DIRECTIONS, SearchSpace

__all__ = ["TrialRequest", "TrialRunner", "summarize", "DEFAULT_TOL", "FAULT_ENV", "MEMORY_FLOOR_BYTES"]

FAULT_ENV = "AUTOTUNE_FAULT_INJECT"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_TOL = {  # (forward, backward) relative to max |reference|
    "float32": (1e-4, 1e-3),
    "bfloat16": (2e-2, 5e-2),
    "float16": (5e-3, 2e-2),
}
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
    def _inputs(self, B: int, H: int, L: int, D: int, bias: bool, device: str, dtype: torch.dtype, gen: torch.Generator):
        def rnd(*shape):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        q, k, v = rnd(B, H, L, D), rnd(B, H, L, D), rnd(B, H, L, D)
        b = rnd(1, H, L, L).contiguous() if bias else None
        return q, k, v, b

    def _gate(self, space: SearchSpace, pcfg, kcfg, seed: int) -> dict[str, Any]:
        from kernels import reference_attention, sparse_attention
        from patterns import build_layout

        device, dtype = space.device, DTYPES[space.dtype]
        ftol, btol = DEFAULT_TOL[space.dtype]
        if space.gate.get("fwd_tol") is not None:  # 0 is an exact comparison, not "use the default"
            ftol = space.gate["fwd_tol"]
        if space.gate.get("bwd_tol") is not None:
            btol = space.gate["bwd_tol"]
        L, B = space.gate["seq_len"], space.gate["batch"]
        layout = build_layout(pcfg, L)
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
            q, k, v, bias = self._inputs(B, w.heads, L, w.head_dim, w.bias, device, dtype, gen)
            grad = space.mode == "fwd+bwd"
            leaves = [t for t in (q, k, v, bias) if t is not None]
            if grad:
                for t in leaves:
                    t.requires_grad_(True)
            with torch.set_grad_enabled(grad):
                o = sparse_attention(q, k, v, layout, bias, backend=space.backend, config=kc)
                r = reference_attention(q, k, v, layout, bias)
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
        """Dense SDPA and naive blocks at (workload, L), cached per worker like the attention baselines."""
        key = ("evoformer", tuple(sorted(w.to_dict().items())), L, space.dtype, space.mode, space.device,
               space.measure["warmup"], space.measure["repeats"])
        if key in self.baselines:
            return dict(self.baselines[key], cached=True)
        block = self._block(space, w)
        fn = self._evoformer_fn(space, block, m, z)
        res: dict[str, Any] = {}
        try:
            for name in ("sdpa", "naive"):
                block.set_attention(name)
                res[name] = self._measure_baseline(space, fn)
        finally:
            block.set_attention(None)
        self.baselines[key] = res
        return dict(res, cached=False)

    def _measure_evoformer(self, space: SearchSpace, w, pcfg, kc, layout, L: int, gen: torch.Generator,
                           timing: dict[str, float]) -> dict[str, Any]:
        device, dtype = space.device, DTYPES[space.dtype]
        block = self._block(space, w)
        m, z = self._evoformer_inputs(w, L, w.msa_depth, device, dtype, gen)
        fn = self._evoformer_fn(space, block, m, z)
        t0 = time.perf_counter()
        block.set_attention(self._sparse_attention(space, pcfg, kc))
        try:
            tm = time_fn(fn, device=device, warmup=space.measure["warmup"], repeats=space.measure["repeats"])
            from autotune.evoformer.attention import layout_for

            layout_for.cache_clear()  # a cold call: per-layout workspaces of the backend count
            mem, mem_method = peak_memory(fn, device=device)
        except Exception as e:  # noqa: BLE001
            if is_oom(e):
                self._free(space)
                raise RuntimeError(f"out of memory: {w.name} L={L} msa_depth={w.msa_depth}") from None
            raise
        finally:
            block.set_attention(None)
        timing["candidate_s"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        base = self._evoformer_baseline(space, w, L, m, z)
        timing["baseline_s"] += time.perf_counter() - t0
        del m, z, fn
        return self._cell(space, w, L, w.batch(L), layout, tm, mem, mem_method, base)

    @staticmethod
    def _cell(space: SearchSpace, w, L: int, B: int, layout, tm, mem, mem_method, base) -> dict[str, Any]:
        """One measurement dict (candidate timing and memory against the baselines)."""
        sdpa, naive = base.get("sdpa"), base.get("naive")
        floor = MEMORY_FLOOR_BYTES
        return {
            "workload": w.name, "kind": w.kind, "bucket": L, "batch": B, "heads": w.heads,
            "head_dim": w.head_dim, "dtype": space.dtype, "mode": space.mode,
            "sparsity": layout.sparsity,
            "time_ms": tm["median_ms"], "time_p10_ms": tm["p10_ms"], "time_p90_ms": tm["p90_ms"],
            "repeats": tm["repeats"], "peak_bytes": mem, "memory_method": mem_method,
            "sdpa_ms": sdpa and sdpa["median_ms"], "sdpa_p10_ms": sdpa and sdpa["p10_ms"],
            "sdpa_p90_ms": sdpa and sdpa["p90_ms"], "sdpa_peak_bytes": sdpa and sdpa["peak_bytes"],
            "naive_ms": naive and naive["median_ms"], "naive_peak_bytes": naive and naive["peak_bytes"],
            "baseline_cached": base["cached"],
            "speedup": (sdpa["median_ms"] / tm["median_ms"]) if sdpa else None,
            "speedup_naive": (naive["median_ms"] / tm["median_ms"]) if naive else None,
            "memory_vs_sdpa": (mem / max(sdpa["peak_bytes"], floor)) if sdpa else None,
            "memory_vs_naive": (mem / max(naive["peak_bytes"], floor)) if naive else None,
        }

    def _baseline(self, space: SearchSpace, w, L: int, B: int, q, k, v, bias) -> dict[str, Any]:
        from kernels import dense_attention

        key = (w.heads, w.head_dim, w.bias, L, B, space.dtype, space.mode, space.device,
               space.measure["warmup"], space.measure["repeats"])
        if key in self.baselines:
            res = {name: (dict(b) if b else None) for name, b in self.baselines[key].items()}
            if res.get("sdpa") is not None:  # re-time SDPA next to this candidate (same load)
                fn = self._callable(space, lambda: dense_attention(q, k, v, None, bias), q, k, v, bias)
                t = time_fn(fn, device=space.device, warmup=space.measure["warmup"], repeats=space.measure["repeats"])
                res["sdpa"].update(median_ms=t["median_ms"], p10_ms=t["p10_ms"], p90_ms=t["p90_ms"])
            return dict(res, cached=True)
        res: dict[str, Any] = {}
        for name, f in (("sdpa", lambda: dense_attention(q, k, v, None, bias)), ("naive", lambda: naive_attention(q, k, v, bias))):
            res[name] = self._measure_baseline(space, self._callable(space, f, q, k, v, bias))
        self.baselines[key] = res
        return dict(res, cached=False)

    def _measure_baseline(self, space: SearchSpace, fn) -> Optional[dict[str, Any]]:
        """Median/p10/p90 time and peak memory of one baseline; None when it runs out of memory."""
        try:
            t = time_fn(fn, device=space.device, warmup=space.measure["warmup"], repeats=space.measure["repeats"])
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
        if space.accuracy_metric is None:
            return None
        key = (tuple(sorted(pcfg.to_dict().items())), L, tuple(space.buckets), space.accuracy_max_chains)
        if key not in self.accuracy:
            from autotune.accuracy import evaluate_pattern

            r = evaluate_pattern(pcfg, L, buckets=space.buckets, max_chains=space.accuracy_max_chains)
            self.accuracy[key] = {
                "metrics": {k: float(v) for k, v in r.metrics.items()},
                "n_chains": int(r.n_chains),
                "extrapolated": bool(r.extrapolated),
                "note": r.note,
            }
        return self.accuracy[key]

    # -- the trial -----------------------------------------------------------------------------
    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one trial; never raises (except for an injected ``exit`` fault)."""
        t_start = time.perf_counter()
        req = TrialRequest(**request)
        timing = {"gate_s": 0.0, "candidate_s": 0.0, "baseline_s": 0.0, "accuracy_s": 0.0}
        result: dict[str, Any] = {
            "number": req.number, "ok": False, "reason": None, "gate": None, "measurements": [],
            "accuracy": {}, "worker": {"host": self.host, "pid": self.pid, "trials_run": self.trials_run},
            "timing": timing,
        }
        self.trials_run += 1
        try:
            from kernels import KernelConfig, sparse_attention
            from patterns import PatternConfig, build_layout

            space = SearchSpace.from_dict(req.space)
            pcfg = PatternConfig.from_dict(req.pattern)
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
                layout = build_layout(pcfg, L)
                kc = kcfg.for_block(pcfg.block_size) if kcfg is not None else None
                for w in space.workloads:
                    if not w.applies(L):
                        continue
                    if w.kind == "evoformer":
                        result["measurements"].append(self._measure_evoformer(space, w, pcfg, kc, layout, L, gen, timing))
                        continue
                    B = w.batch(L)
                    q, k, v, bias = self._inputs(B, w.heads, L, w.head_dim, w.bias, device, dtype, gen)
                    if space.mode == "fwd+bwd":
                        for t in (q, k, v, bias):
                            if t is not None:
                                t.requires_grad_(True)
                    t0 = time.perf_counter()
                    def run_on(lay):
                        return self._callable(
                            space, lambda: sparse_attention(q, k, v, lay, bias, backend=space.backend, config=kc), q, k, v, bias
                        )

                    try:
                        tm = time_fn(run_on(layout), device=device, warmup=space.measure["warmup"], repeats=space.measure["repeats"])
                        # a cold call on a new layout object, so that workspaces a backend keeps per
                        # layout (the cpu backend's K^T tiles) count towards the peak
                        mem, mem_method = peak_memory(run_on(layout.fresh()), device=device)
                    except Exception as e:  # noqa: BLE001
                        if is_oom(e):
                            self._free(space)
                            raise RuntimeError(f"out of memory: {w.name} L={L} batch={B}") from None
                        raise
                    timing["candidate_s"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    base = self._baseline(space, w, L, B, q, k, v, bias)
                    timing["baseline_s"] += time.perf_counter() - t0
                    result["measurements"].append(self._cell(space, w, L, B, layout, tm, mem, mem_method, base))
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


# ---- driver side: objectives and constraints -------------------------------------------------------


def _geomean(xs: list[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None and x > 0 and math.isfinite(x)]
    if not xs:
        return None
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def cell_values(space: SearchSpace, m: dict[str, Any], accuracy: dict[str, Any]) -> dict[str, Optional[float]]:
    """The constrained quantities of one (workload, bucket) measurement."""
    acc = accuracy.get(str(m["bucket"])) if accuracy else None
    return {
        "speedup": m.get("speedup"),
        "memory_vs_sdpa": m.get("memory_vs_sdpa"),
        "memory_vs_naive": m.get("memory_vs_naive"),
        "sparsity": m.get("sparsity"),
        "accuracy": (acc["metrics"].get(space.accuracy_metric) if acc and space.accuracy_metric else None),
    }


def cell_violations(space: SearchSpace, m: dict[str, Any], accuracy: dict[str, Any]) -> dict[str, float]:
    vals = cell_values(space, m, accuracy)
    return {c.name: c.violation(vals[c.name]) for c in space.constraints}


def summarize(space: SearchSpace, result: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(objective values in the order of ``space.objectives``, constraint values in the order of
    ``space.constraints``; <= 0 feasible, worst cell) of a successful trial result."""
    ms = result["measurements"]
    acc = result.get("accuracy") or {}
    objs: list[float] = []
    for o in space.objectives:
        if o in ("speedup", "memory_vs_sdpa", "memory_vs_naive"):
            v = _geomean([m.get(o) for m in ms])
            v = v if v is not None else (0.0 if o == "speedup" else 1e9)
        elif o == "sparsity":
            v = sum(m["sparsity"] for m in ms) / len(ms)
        else:  # accuracy: the worst bucket
            vals = [a["metrics"][space.accuracy_metric] for a in acc.values()]
            worst = min if ACCURACY_METRIC_DIRECTIONS[space.accuracy_metric] == "max" else max
            v = worst(vals) if vals else float("nan")
        objs.append(float(v))
    cons: list[float] = []
    for c in space.constraints:
        cons.append(max(cell_violations(space, m, acc)[c.name] for m in ms))
    return objs, cons
