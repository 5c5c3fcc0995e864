"""The baselines every measurement compares a sparse candidate against: one vocabulary.

Two baselines, each with one name everywhere it is stored or printed: the ``backend`` column of
the kernel benchmark's CSV and the ``speedup_vs_<name>`` columns (``kernels.bench``), the variants
of the EvoFormer benchmark (``autotune.evoformer.bench``), the paired timings and the cells' columns
``<name>_ms`` / ``<name>_peak_mib`` of the search's database (``autotune.workloads``,
``autotune.trial``, ``results.db``), the objectives ``memory_vs_<name>`` and the report:

* ``sdpa``: dense ``torch.nn.functional.scaled_dot_product_attention`` with the contiguous bias,
  every L x L pair computed whatever the sparsity (already flash-style where PyTorch has such a
  kernel). Computed by the registered backend ``dense`` (`kernels.dense.dense_attention`) with no
  layout.
* ``naive``: attention with the L x L logits materialised, what OpenFold's default attention
  allocates (`kernels.measure.naive_attention`; the EvoFormer kind ``naive``). The kernel
  benchmark times the materialised reference on the case's layout
  (`kernels.reference.reference_attention`, the registered backend ``reference``), the same
  L x L materialisation.

``dense`` and ``reference`` are backend names (`kernels.backends`), which a space's ``backend``
may name and stored spaces hold; they never name a baseline in a stored row (the committed CSVs
and the databases' rows say ``sdpa`` / ``naive`` only), so no stored name needs translating: a
baseline's ``backend`` records which backend computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

SDPA = "sdpa"
NAIVE = "naive"


@dataclass(frozen=True)
class Baseline:
    """One baseline: ``name`` (stored and printed), ``backend`` (the registered backend that
    computes it, `kernels.backends`), ``text`` (what the report calls it)."""

    name: str
    backend: str
    text: str


BASELINES: dict[str, Baseline] = {
    SDPA: Baseline(SDPA, "dense", "dense SDPA (scaled_dot_product_attention, same process)"),
    NAIVE: Baseline(NAIVE, "reference", "naive attention (materialised softmax(QK^T/sqrt(d) + bias) V)"),
}

