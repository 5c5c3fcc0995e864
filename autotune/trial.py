"""One trial: correctness gate, then time / memory / accuracy of a candidate at every bucket.

Runs inside a worker (a Ray actor or the driver process itself for the local executor). Takes a
plain `TrialRequest` and returns a `TrialResult` (plain dataclasses, pickled across Ray's actor
boundary): the worker never touches the database. The result holds one `CellMeasurement` per
(workload, bucket) - units in the field names: ``time_ms``, ``peak_mib``, ``speedup`` and its
interval ``speedup_lo`` / ``speedup_hi`` - one `AccuracyResult` per bucket, the `GateReport`, the
`TrialTiming` and the `WorkerInfo`. The driver turns it into objectives and constraint values
with `summarize`, judges each cell against the space's targets (`TrialResult.judge`) and writes it
with ``Database.write_trial_result``.

What is measured on each workload kind (inputs, candidate, baselines, gate) is its bench in
`autotune.workloads`; the steps below are common to all.

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
workload with SDPA and each other; `autotune.confirm.confirm` stores and uses the figures).

An ``evoformer`` workload (`autotune.workloads.EvoformerBench`) measures one whole
``models.evoformer.EvoformerBlock`` (built once per worker from the workload's dims with
fixed-seed weights, in the space's dtype on its device) at the buckets up to its ``max_len``: inputs
m [msa_depth, L, c_m] and z [L, L, c_z]; the candidate is the block with the trial's pattern on MSA
row attention and both triangle attentions (sparse, the space's backend and the trial's kernel
config; column attention dense SDPA), the baselines the same block with dense SDPA attention
everywhere (contiguous bias: the fair dense baseline; its time and peak are ``sdpa_*``, so
``speedup`` is the block's speedup over the SDPA block) and with OpenFold's materialised naive
attention (``naive_*``). One pass is the block's forward (``fwd``) or forward and backward into the
parameter gradients (``fwd+bwd``; `autotune.workloads.block_pass`, the EvoFormer benchmark's pass),
timed paired and measured with `measure.time_paired` / `measure.peak_memory` (the naive block with
`measure.time_fn`). ``batch`` is the MSA depth, ``heads`` / ``head_dim`` the MSA attention's. Its
gate: the sparse block against the same block whose three attentions are ``naive`` masked to the
pattern (the dense-cost oracle), at ``gate.seq_len`` residues and ``gate.batch`` MSA rows: both
outputs (error relative to max |ref|), and in fwd+bwd the parameter gradients of the MSA row,
triangle-start and triangle-end attention modules and of the rest of the block (per group, relative
to the group's max |ref|).

Test-only fault injection: the environment variable ``AUTOTUNE_FAULT_INJECT`` holds a
comma-separated list of ``raise:<trial number>`` (the trial raises after its gate),
``exit:<trial number>`` (the worker process dies with ``os._exit(13)`` after its gate) and
``sleep:<trial number>`` (the trial sleeps 120 s after its gate, to kill a driver mid-trial). It
is read in the worker; the executors forward it to their Ray actors.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import torch

from kernels.baselines import SDPA
from kernels.measure import is_oom
from results.states import EndReason, TrialState
from search_spaces.objectives import OBJECTIVE_BY_NAME, Objective
from search_spaces.schema import GUIDED_ONLY_PARAMS, STATIC_ONLY_PARAMS
from search_spaces.space import ACCURACY_METRIC_DIRECTIONS, SearchSpace
from .workloads import (DEFAULT_TOL, MEMORY_FLOOR_BYTES, CellMeasurement, GateFailed, TrialTiming, bench_for,
                        nominal_layout)

__all__ = ["TrialRequest", "TrialRunner", "TrialResult", "CellMeasurement", "AccuracyResult", "GateReport",
           "WorkerInfo", "TrialTiming", "summarize", "DEFAULT_TOL", "FAULT_ENV", "MEMORY_FLOOR_BYTES"]

FAULT_ENV = "AUTOTUNE_FAULT_INJECT"
MiB = float(1 << 20)


@dataclass
class TrialRequest:
    study: str
    number: int
    params: dict[str, Any]
    pattern: dict[str, Any]
    kernel: Optional[dict[str, Any]]
    space: Optional[dict[str, Any]]  # SearchSpace.to_dict(); None: the worker's own (sent once, `TrialRunner`)
    seed: int = 0
    deadline: Optional[float] = None  # epoch seconds: the search's timeout (`DeadlineReached`)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- the result ------------------------------------------------------------------------------------


@dataclass
class GateReport:
    """The correctness gate a trial passed: its length, the pattern's sparsity there, the
    tolerances applied and, per workload, the errors measured (``<workload>.<what>_err``; an
    EvoFormer workload also records the MSA depth it used, ``<workload>.msa_depth``)."""

    seq_len: int
    sparsity: float
    fwd_tol: float
    bwd_tol: float
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (one flat mapping)."""
        return {"seq_len": self.seq_len, "sparsity": self.sparsity, "fwd_tol": self.fwd_tol, "bwd_tol": self.bwd_tol,
                **self.values}


@dataclass(frozen=True)
class AccuracyResult:
    """Every accuracy metric of the pattern at one bucket (None: no data, e.g. no contact in the
    range), on ``n_chains`` chains of the given ``lengths``; ``chain_sparsity`` is the layout's
    sparsity at those lengths (what the recall was measured at)."""

    metrics: dict[str, Optional[float]]
    n_chains: int
    lengths: list[int]
    chain_sparsity: Optional[float]
    max_chains: Optional[int]
    extrapolated: bool
    note: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "n_chains": self.n_chains, "lengths": list(self.lengths),
                "chain_sparsity": self.chain_sparsity, "max_chains": self.max_chains,
                "extrapolated": self.extrapolated, "note": self.note}


@dataclass(frozen=True)
class WorkerInfo:
    """Where a trial ran: host, process id, trials that process had run before."""

    host: str
    pid: int
    trials_run: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrialResult:
    """What a worker returns for one trial (module docstring); the driver adds its judgement
    (`judge`, `conclude`) before writing it. ``ok`` False: failed with ``reason`` (``retry``: not the trial's
    fault, e.g. its worker's node left the cluster; run again)."""

    number: int
    ok: bool = False
    reason: Optional[str] = None
    gate: Optional[GateReport] = None
    cells: list[CellMeasurement] = field(default_factory=list)
    accuracy: dict[int, AccuracyResult] = field(default_factory=dict)  # bucket -> its accuracy
    worker: Optional[WorkerInfo] = None
    timing: Optional[TrialTiming] = None
    retry: bool = False
    compiles: list[dict[str, Any]] = field(default_factory=list)  # `kernels.compile_cache.CompileRecord`s
    # the driver's: aggregate objectives, Optuna's constraint values, feasibility (`conclude`)
    objectives: Optional[list[float]] = None
    constraints: Optional[list[float]] = None
    feasible: Optional[bool] = None

    @classmethod
    def failed(cls, number: int, reason: str, retry: bool = False) -> "TrialResult":
        """A trial that returned nothing (its worker died, or its node left)."""
        return cls(number=number, reason=reason, retry=retry)

    @property
    def state(self) -> TrialState:
        return TrialState.of_result(self.ok)

    def accuracy_dicts(self) -> dict[str, dict[str, Any]]:
        """The per-bucket accuracy as stored (str(bucket) -> `AccuracyResult.to_dict`)."""
        return {str(L): a.to_dict() for L, a in self.accuracy.items()}

    def judge(self, space: SearchSpace) -> None:
        """Attach the driver's judgement to every cell: its bucket's accuracy, the value of the
        space's accuracy metric, its target violations (<= 0 met) and whether it meets them all."""
        acc = self.accuracy_dicts()
        for c in self.cells:
            c.accuracy = acc.get(str(c.bucket))
            c.accuracy_metric = space.accuracy_metric
            c.accuracy_value = cell_values(space, c, acc)["accuracy"]
            c.violations = cell_violations(space, c, acc)
            c.feasible = all(v <= 0 for v in c.violations.values())

    def conclude(self, objectives: list[float], constraints: list[float]) -> None:
        """The driver's aggregate figures: objective values and Optuna's constraint values
        (``feasible``: every one <= 0)."""
        self.objectives, self.constraints = list(objectives), list(constraints)
        self.feasible = all(v <= 0 for v in constraints)


def _fault(number: int) -> Optional[str]:
    spec = os.environ.get(FAULT_ENV, "")
    for item in spec.split(","):
        kind, _, n = item.strip().partition(":")
        if n.strip().isdigit() and int(n) == number and kind in ("raise", "exit", "sleep"):
            return kind
    return None


def _inject_fault(number: int) -> None:
    """Test-only faults after the gate (module docstring)."""
    fault = _fault(number)
    if fault == "exit":
        os._exit(13)
    if fault == "sleep":
        time.sleep(120)
    if fault == "raise":
        raise RuntimeError(f"injected fault ({FAULT_ENV}) in trial {number}")


CUT_GRACE_S = 5.0  # a trial still running this long after the search's deadline is cut (SIGALRM)
TIMEOUT_REASON = EndReason.INTERRUPTED.text("the search's timeout")


class DeadlineReached(BaseException):
    """The search's timeout passed while this trial ran: it stops at the next cell (or is cut
    ``CUT_GRACE_S`` after the deadline); recorded as interrupted and enqueued for a resume. A
    BaseException, like KeyboardInterrupt, so that no ``except Exception`` on its way (a compile
    phase, a bench's out-of-memory handler) mistakes it for the candidate's own failure."""


def _check_deadline(deadline: Optional[float]) -> None:
    if deadline is not None and time.time() >= deadline:
        raise DeadlineReached(TIMEOUT_REASON)


class _DeadlineAlarm:
    """Raise `DeadlineReached` in the trial ``CUT_GRACE_S`` after ``deadline`` (SIGALRM; only in a
    process's main thread - the local executor, a Ray actor - elsewhere the checks between cells
    alone bound the trial). A kernel call in flight returns first: the cut lands between calls."""

    def __init__(self, deadline: Optional[float]) -> None:
        self.deadline, self.old = deadline, None

    def __enter__(self):
        import signal
        import threading

        if self.deadline is None or threading.current_thread() is not threading.main_thread() \
                or not hasattr(signal, "setitimer"):
            return self

        def cut(signum, frame):
            raise DeadlineReached(TIMEOUT_REASON)

        self.old = signal.signal(signal.SIGALRM, cut)
        signal.setitimer(signal.ITIMER_REAL, max(0.01, self.deadline + CUT_GRACE_S - time.time()))
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            import signal

            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


def _failure_reason(e: BaseException) -> str:
    """One line: the exception and where it was raised (cut to 2000 characters)."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
    return f"{type(e).__name__}: {e}{where}"[:2000]


@dataclass(frozen=True)
class _Candidate:
    """A trial's parsed request: the space, its pattern (PatternConfig, or GuidedConfig for
    ``family: guided``) and kernel config."""

    space: SearchSpace
    pattern_config: Any
    kcfg: Any

    def kernel_at(self, block_size: int):
        return self.kcfg.for_block(block_size) if self.kcfg is not None else None


class TrialRunner:
    """Runs trials in one process; holds the per-process caches (baselines, accuracy, EvoFormer
    blocks) and the search space, parsed once: an executor hands the space to each worker when it
    starts it (``space``, the stored form), and the search's requests then carry none
    (``TrialRequest.space`` None); a request that carries a space (a benchmark, a confirmation
    outside the search) is run with that one."""

    def __init__(self, threads: Optional[int] = None, space: Optional[dict[str, Any]] = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.space: Optional[SearchSpace] = SearchSpace.from_dict(space) if space is not None else None
        self.baselines: dict[tuple, dict[str, Any]] = {}  # shape -> {"sdpa", "naive"}: Baseline or None
        self.accuracy: dict[tuple, AccuracyResult] = {}
        self.blocks: dict[tuple, Any] = {}  # evoformer workloads: (dims, dtype, device) -> EvoformerBlock
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.trials_run = 0
        from kernels.compile_cache import CompileLedger

        self.compiles = CompileLedger()  # launch configs compiled in this process (compile once)

    # -- steps of a trial ---------------------------------------------------------------------
    def _parse(self, req: TrialRequest) -> _Candidate:
        from kernels import KernelConfig
        from patterns import pattern_from_dict

        space = SearchSpace.from_dict(req.space) if req.space is not None else self.space
        if space is None:
            raise RuntimeError("the trial request carries no search space and this worker was given none")
        cand = _Candidate(space, pattern_from_dict(req.pattern),
                          KernelConfig.from_dict(req.kernel) if req.kernel is not None else None)
        if space.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("the space asks for device cuda but this worker has no CUDA device")
        return cand

    def _gate(self, cand: _Candidate, seed: int) -> GateReport:
        """Step 1: every distinct workload shape through its bench's gate, on inputs seeded per trial."""
        space, pattern_config = cand.space, cand.pattern_config
        ftol, btol = space.gate.tolerances(DEFAULT_TOL[space.dtype])  # 0 is an exact comparison
        L = space.gate.seq_len
        layout = nominal_layout(pattern_config, L)
        kernel_config = cand.kernel_at(pattern_config.block_size)
        gen = torch.Generator().manual_seed(seed)
        report = GateReport(seq_len=L, sparsity=layout.sparsity, fwd_tol=ftol, bwd_tol=btol)
        seen = set()
        for w in space.workloads:
            bench = bench_for(space, w, self)
            key = bench.gate_key()
            if key is not None and key in seen:
                continue
            seen.add(key)
            report.values.update(bench.gate(pattern_config, kernel_config, layout, gen, ftol, btol))
        return report

    def _compile_phase(self, cand: _Candidate, L: int, B: Optional[int], result: TrialResult, seed: int) -> None:
        """A compile phase per workload at length L (batch B, default the workload's): one untimed
        pass of the candidate on inputs of the cell's shape (an attention call, or a whole EvoFormer
        block with its three sparse calls), the first time its compile key is met in this worker
        (`kernels.compile_cache`); Triton backend only (the CPU backends compile nothing). Its
        seconds go to ``timing.compile_s``, its record to ``result.compiles``."""
        space, pattern_config = cand.space, cand.pattern_config
        if space.backend != "triton":
            return
        from kernels.compile_cache import compile_key

        kernel_config = cand.kernel_at(pattern_config.block_size)
        for w in space.workloads:
            if not w.applies(L):
                continue
            batch = B if B is not None else w.batch(L)
            key = tuple(compile_key(backend=space.backend, dtype=space.dtype, mode=space.mode, heads=heads,
                                    head_dim=head_dim, bias=bias, batch=b, length=L,
                                    block_size=pattern_config.block_size,
                                    kernel=None if kernel_config is None else kernel_config.to_dict())
                        for heads, head_dim, bias, b in bench_for(space, w, self).compile_shapes(L, batch))
            key = key[0] if len(key) == 1 else (w.kind, *key)
            rec = self.compiles.ensure(
                key, lambda: self.compile_step(space, w, pattern_config, kernel_config, L, batch, seed))
            if rec is not None:
                result.timing.compile_s += rec.seconds
                result.compiles.append(rec.to_dict())

    def compile_step(self, space: SearchSpace, w, pattern_config, kernel_config, L: int, batch: int, seed: int) -> None:
        """One pass of the candidate at (L, batch) on fresh inputs (what compiles its kernels)."""
        bench_for(space, w, self).compile_pass(pattern_config, kernel_config, L, batch, seed)
        if space.device == "cuda":
            torch.cuda.synchronize()

    def _measure_buckets(self, cand: _Candidate, seed: int, result: TrialResult,
                         deadline: Optional[float] = None) -> None:
        """Steps 2 and 3: every (workload, bucket) cell (after its compile phase), then the bucket's
        accuracy; `DeadlineReached` between cells once the search's timeout has passed."""
        space, pattern_config = cand.space, cand.pattern_config
        timing = result.timing
        gen = torch.Generator().manual_seed(seed + 1)
        for L in space.buckets:
            layout = nominal_layout(pattern_config, L)
            kernel_config = cand.kernel_at(pattern_config.block_size)
            _check_deadline(deadline)
            self._compile_phase(cand, L, None, result, seed)
            for w in space.workloads:
                if w.applies(L):
                    _check_deadline(deadline)
                    bench = bench_for(space, w, self)
                    result.cells.append(bench.measure(pattern_config, kernel_config, layout, L, gen, timing))
            t0 = time.perf_counter()
            acc = self._accuracy(space, pattern_config, L)
            timing.accuracy_s += time.perf_counter() - t0
            if acc is not None:
                result.accuracy[L] = acc

    def _accuracy(self, space: SearchSpace, pattern_config, L: int) -> Optional[AccuracyResult]:
        """Every accuracy metric of the pattern at bucket L, with the chains' lengths and the layout's
        sparsity at those lengths; None when neither an objective nor a target needs accuracy."""
        targets = space.effective_targets()
        if space.accuracy_metric is None and not targets.accuracy_metrics():
            return None
        max_chains = space.accuracy_max_chains if space.accuracy_max_chains is not None else targets.max_chains
        noise = space.accuracy_noise
        key = (tuple(sorted(pattern_config.to_dict().items())), L, tuple(space.buckets), max_chains, noise)
        if key not in self.accuracy:
            from autotune.accuracy import evaluate_pattern
            from patterns import build_layout

            # guided: the degraded structure's noise (default 4 A)
            r = evaluate_pattern(pattern_config, L, buckets=space.buckets, max_chains=max_chains, noise=noise)
            lengths = [int(n) for n in r.lengths]
            self.accuracy[key] = AccuracyResult(
                metrics={k: (None if v is None else float(v)) for k, v in r.metrics.items()},  # None: no data
                n_chains=int(r.n_chains),
                lengths=lengths,
                chain_sparsity=(r.sparsity if r.sparsity is not None else
                                sum(build_layout(pattern_config, n).sparsity for n in lengths) / len(lengths)
                                if lengths else None),
                max_chains=max_chains,
                extrapolated=bool(r.extrapolated),
                note=r.note,
            )
        return self.accuracy[key]

    def confirm(self, space: SearchSpace, L: int, candidates: list[tuple[int, dict, Optional[dict]]],
                seed: int = 0) -> list[dict[str, Any]]:
        """Re-measure ``candidates`` ((trial number, pattern dict, kernel dict)) at bucket L together:
        per workload one `time_paired` loop with SDPA and every candidate (``measure.confirm_*``),
        on fresh inputs. One dict per (workload, candidate) with the paired speedup and interval
        (the columns of ``results.verdict``'s confirmation rows)."""
        from kernels import KernelConfig
        from patterns import pattern_from_dict

        gen = torch.Generator().manual_seed(seed)
        out: list[dict[str, Any]] = []
        for w in space.workloads:
            if not w.applies(L):
                continue
            cfgs = {}
            for number, pattern, kernel in candidates:
                pattern_config = pattern_from_dict(pattern)  # PatternConfig, or GuidedConfig (family: guided)
                kernel_config = KernelConfig.from_dict(kernel).for_block(pattern_config.block_size) if kernel else None
                cfgs[f"t{number}"] = (number, pattern_config, kernel_config)
            pt = bench_for(space, w, self).confirm_timing(L, cfgs, gen)
            sd = pt.stats(SDPA)
            for name, (number, _, _) in cfgs.items():
                r = pt.ratio(name)
                out.append({"workload": w.name, "trial_number": number, "speedup": r.point, "speedup_lo": r.lo,
                            "speedup_hi": r.hi, "level": r.level, "repeats": pt.rounds,
                            "time_ms": pt.stats(name)["median_ms"], "sdpa_ms": sd["median_ms"], "stop": pt.stop})
        return out

    # -- the trial -----------------------------------------------------------------------------
    def run(self, request: Union[dict[str, Any], TrialRequest]) -> TrialResult:
        """Run one trial (``request``: a `TrialRequest` or its dict); never raises (except for an
        injected ``exit`` fault). Steps: parse, gate, injected faults, buckets (module docstring)."""
        t_start = time.perf_counter()
        req = request if isinstance(request, TrialRequest) else TrialRequest(**request)
        result = TrialResult(number=req.number, worker=WorkerInfo(self.host, self.pid, self.trials_run),
                             timing=TrialTiming())
        self.trials_run += 1
        try:
            with _DeadlineAlarm(req.deadline):
                cand = self._parse(req)
                self._compile_phase(cand, cand.space.gate.seq_len, cand.space.gate.batch, result, req.seed)
                t0 = time.perf_counter()
                result.gate = self._gate(cand, req.seed)
                result.timing.gate_s = time.perf_counter() - t0
                _inject_fault(req.number)
                self._measure_buckets(cand, req.seed, result, req.deadline)
                result.ok = True
        except DeadlineReached as e:  # not the candidate's fault: run again when the study resumes
            result.reason, result.retry, result.cells = str(e), True, []
        except GateFailed as e:
            result.reason = str(e)
        except Exception as e:  # noqa: BLE001 - any failure is this trial's, recorded with its reason
            result.reason = _failure_reason(e)
            if is_oom(e) and torch.cuda.is_available():
                torch.cuda.empty_cache()
        result.timing.total_s = time.perf_counter() - t_start
        return result


# ---- driver side: objectives and constraints -------------------------------------------------------


def _geomean(xs: list[float], what: str = "cell values") -> Optional[float]:
    """`results.aggregate.geomean` (logs what it leaves out)."""
    from results.aggregate import geomean

    return geomean(xs, what).value


Cell = Union[CellMeasurement, dict[str, Any]]
AccuracyMap = Union[dict[int, AccuracyResult], dict[str, Any]]


def _bucket_accuracy(accuracy: Optional[AccuracyMap], bucket: int) -> Optional[dict[str, Any]]:
    """The stored form of a bucket's accuracy from a result's map (int -> `AccuracyResult`) or
    its stored form (str(bucket) -> dict)."""
    if not accuracy:
        return None
    acc = accuracy.get(bucket, accuracy.get(str(bucket)))  # type: ignore[arg-type]
    return acc.to_dict() if isinstance(acc, AccuracyResult) else acc


def cell_row(m: Cell, accuracy: Optional[AccuracyMap]) -> dict[str, Any]:
    """A cell as the dict `results.verdict` reads, with its bucket's accuracy attached (a dict
    cell with byte peaks, the older form, gets MiB peaks)."""
    row = m.to_dict() if isinstance(m, CellMeasurement) else dict(m)
    row["accuracy"] = _bucket_accuracy(accuracy, row["bucket"])
    for k in ("peak", "sdpa_peak", "naive_peak"):
        if row.get(f"{k}_mib") is None and row.get(f"{k}_bytes") is not None:
            row[f"{k}_mib"] = row[f"{k}_bytes"] / MiB
    return row


def cell_values(space: SearchSpace, m: Cell, accuracy: Optional[AccuracyMap]) -> dict[str, Optional[float]]:
    """The targeted quantities of one (workload, bucket) measurement (`results.verdict.cell_values`),
    plus ``accuracy``: the value of the space's accuracy objective metric."""
    from results.verdict import cell_values as values

    row = cell_row(m, accuracy)
    out = values(space.effective_targets(), row)
    metrics = ((row.get("accuracy") or {}).get("metrics") or {})
    out["accuracy"] = metrics.get(space.accuracy_metric) if space.accuracy_metric else None
    return out


def cell_violations(space: SearchSpace, m: Cell, accuracy: Optional[AccuracyMap]) -> dict[str, float]:
    """Target name -> violation (<= 0 met) at this cell: the space's targets, one rule for all."""
    from results.verdict import cell_violations as violations

    return violations(space.effective_targets(), cell_row(m, accuracy))


def constraint_names(space: SearchSpace) -> list[str]:
    """Names of the constraint values `summarize` returns (the space's targets, in order)."""
    return space.effective_targets().names()


def _objective_value(space: SearchSpace, o: Objective, rows: list[dict[str, Any]], acc: dict[str, Any]) -> float:
    """One objective of a trial from its cells, by its record's aggregation: ``geomean`` of the
    cells' measured values (the record's ``missing`` when none has one), ``mean``, or for the
    accuracy objective the worst bucket's value of the space's accuracy metric."""
    if o.per_metric:
        vals = [a["metrics"][space.accuracy_metric] for a in acc.values() if a["metrics"].get(space.accuracy_metric) is not None]
        worst = min if ACCURACY_METRIC_DIRECTIONS[space.accuracy_metric] == "max" else max
        return worst(vals) if vals else float("nan")
    values = [o.measure(r.get) for r in rows]
    if o.aggregate == "mean":
        return sum(values) / len(values)
    v = _geomean(values, o.name)
    return v if v is not None else o.missing


def summarize(space: SearchSpace, result: Union[TrialResult, dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(objective values in the order of ``space.objectives``, constraint values in the order of
    `constraint_names`; <= 0 feasible, worst cell) of a successful trial result (a `TrialResult`,
    or a mapping with ``measurements`` and ``accuracy`` in their stored forms)."""
    if isinstance(result, TrialResult):
        ms: list[Cell] = list(result.cells)
        acc: dict[str, Any] = result.accuracy_dicts()
    else:
        ms, acc = list(result["measurements"]), result.get("accuracy") or {}
    rows = [cell_row(m, acc) for m in ms]
    objs = [float(_objective_value(space, OBJECTIVE_BY_NAME[o], rows, acc)) for o in space.objectives]
    viols = [cell_violations(space, r, acc) for r in rows]
    cons = [max(v[name] for v in viols) for name in constraint_names(space)]
    return objs, cons


# ---- what Optuna's tools show of a trial ------------------------------------------------------------

#: pattern parameters in effect for one family only (`search_spaces.space`): a trial of the other
#: family never suggests them, so Optuna's importance and slice plots see only parameters in effect
_ONLY_FOR = {"guided": tuple(f"pattern.{k}" for k in STATIC_ONLY_PARAMS),
             "static": tuple(f"pattern.{k}" for k in GUIDED_ONLY_PARAMS)}
ATTR_LIMIT = 1000  # bytes: the largest user attribute written (the dashboard's trial page, plot hovers)


def suggest_params(trial: Any, space: SearchSpace) -> dict[str, Any]:
    """The searched parameters of ``trial`` by Optuna's define-by-run API: ``pattern.family``
    first (when searched), then every other parameter of `SearchSpace.distributions` in its
    order, less those its family does not use (`_ONLY_FOR`). An enqueued trial (a retry) gets its
    enqueued values back from ``suggest_*``. Same sampler seed, same suggestions: reproducible."""
    dists = space.distributions()
    fixed = space.fixed()
    params: dict[str, Any] = {}
    if "pattern.family" in dists:
        params["pattern.family"] = _suggest(trial, "pattern.family", dists["pattern.family"])
    family = params.get("pattern.family", fixed.get("pattern.family", "static"))
    skip = set(_ONLY_FOR.get(family, ()))
    for name, dist in dists.items():
        if name not in params and name not in skip:
            params[name] = _suggest(trial, name, dist)
    return params


def _suggest(trial: Any, name: str, dist: Any) -> Any:
    """``trial.suggest_categorical`` / ``suggest_int`` for one of `SearchSpace.distributions`."""
    if hasattr(dist, "choices"):
        return trial.suggest_categorical(name, list(dist.choices))
    return trial.suggest_int(name, dist.low, dist.high, step=dist.step)


def metric_names(space: SearchSpace) -> list[str]:
    """Optuna's names of the objectives (``study.set_metric_names``): ``accuracy`` is named for
    the metric it measures (``contact_recall_long``: long-range contact recall); our tables keep
    the space's objective names."""
    metric = space.accuracy_metric or "contact_recall_long"
    return [metric if OBJECTIVE_BY_NAME[o].per_metric else o for o in space.objectives]


def bucket_attrs(buckets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Flat user attributes of a trial's per-bucket view (`autotune.search.bucket_view`), one per
    bucket and metric, each a number, a flag or a short string: ``L64.speedup``,
    ``L64.speedup_lo``, ``L64.memory_vs_sdpa``, ``L64.sparsity``, ``L64.<accuracy metric>``,
    ``L64.feasible`` (every target but speedup met there), ``L64.meets_speedup``,
    ``L64.violated`` (the targets not met, comma-separated, "" when none) and ``L64.workloads``."""
    out: dict[str, Any] = {}
    for L, b in buckets.items():
        for k, v in b.items():
            if k == "violations":
                out[f"L{L}.violated"] = ",".join(n for n, x in v.items() if x > 0)
            elif k == "workloads":
                out[f"L{L}.workloads"] = ",".join(v)[:ATTR_LIMIT]
            else:
                out[f"L{L}.{k}"] = v
    return out
