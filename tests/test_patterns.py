"""Patterns: rules, configs and layouts (property tests on random configs and lengths)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from patterns import (
    SUPPORTED_BLOCK_SIZES,
    BlockLayout,
    Global,
    Local,
    PatternConfig,
    Strided,
    build_layout,
    render,
    tile_tokens,
)

configs = st.builds(
    PatternConfig,
    block_size=st.sampled_from(SUPPORTED_BLOCK_SIZES),
    window=st.integers(0, 300),
    num_global=st.integers(0, 70),
    stride=st.integers(0, 6),
    global_placement=st.sampled_from(["first", "spread"]),
)
lengths = st.integers(1, 400)


@settings(max_examples=60, deadline=None)
@given(cfg=configs, L=lengths)
def test_layout_properties(cfg, L):
    lay = build_layout(cfg, L)
    nb = math.ceil(L / cfg.block_size)
    assert lay.block_mask.shape == (nb, nb)
    tok = lay.token_mask()
    assert tok.shape == (L, L)
    i = torch.arange(L)
    # every pair within the window attends
    near = (i[:, None] - i[None, :]).abs() <= cfg.window
    assert tok[near].all()
    # global rows and columns are full
    if cfg.num_global:
        pos = Global(cfg.num_global, cfg.global_placement).positions(L)
        assert tok[pos, :].all() and tok[:, pos].all()
    # sparsity is the mask's count
    assert lay.sparsity == pytest.approx(1.0 - tok.sum().item() / (L * L), abs=1e-12)
    # the block mask is exactly the tiling of the rule's own token set (closed forms agree)
    assert torch.equal(lay.block_mask, tile_tokens(cfg.rule().tokens(L), cfg.block_size))
    # the token mask is the block mask expanded and cropped
    assert torch.equal(tile_tokens(tok, cfg.block_size), lay.block_mask)


@settings(max_examples=40, deadline=None)
@given(cfg=configs, L=lengths)
def test_compact_index_matches_mask(cfg, L):
    lay = build_layout(cfg, L)
    m = lay.mask3
    for counts, idx, mat in ((lay.kv_counts, lay.kv_indices, m), (lay.q_counts, lay.q_indices, m.transpose(-1, -2))):
        assert torch.equal(counts.long(), mat.sum(-1))
        for r in range(mat.shape[1]):
            c = int(counts[0, r])
            kept = idx[0, r, :c]
            assert torch.equal(kept.long(), torch.nonzero(mat[0, r]).flatten())
            assert (idx[0, r] >= 0).all() and (idx[0, r] < lay.n_blocks).all()


def test_window_zero_keeps_only_diagonal_tiles():
    lay = build_layout(PatternConfig(block_size=16, window=0), 100)
    assert torch.equal(lay.block_mask, torch.eye(7, dtype=torch.bool))


def test_window_reaches_neighbour_tile_at_one_residue():
    # tiles I and I+1 are 1 residue apart at their boundary
    lay = build_layout(PatternConfig(block_size=16, window=1), 64)
    assert lay.block_mask[0, 1] and not lay.block_mask[0, 2]
    lay = build_layout(PatternConfig(block_size=16, window=17), 64)
    assert lay.block_mask[0, 2] and not lay.block_mask[0, 3]


def test_stride_keeps_every_sth_block_diagonal():
    lay = build_layout(PatternConfig(block_size=16, window=0, stride=3), 16 * 10)
    I = torch.arange(10)
    expect = (I[:, None] - I[None, :]) % 3 == 0
    assert torch.equal(lay.block_mask, expect)
    assert build_layout(PatternConfig(block_size=16, stride=1), 100).is_full


def test_ragged_tail_sparsity_counts_real_pairs():
    lay = build_layout(PatternConfig(block_size=64, window=0), 100)  # tiles 64 and 36
    assert lay.sparsity == pytest.approx(1 - (64 * 64 + 36 * 36) / 100**2)
    assert lay.token_mask().shape == (100, 100)


def test_union_of_rules_and_layouts():
    L, bs = 200, 32
    a = build_layout(Local(10), L, bs)
    b = build_layout(Strided(2, bs), L, bs)
    both = build_layout(Local(10) | Strided(2, bs), L, bs)
    assert torch.equal((a | b).block_mask, both.block_mask)
    inter = build_layout(Local(40) & Global(5), L, bs)
    exact = (Local(40) & Global(5)).tokens(L)
    assert torch.equal(inter.block_mask, tile_tokens(exact, bs))
    assert inter.token_mask()[exact].all()
    assert inter.block_mask.sum() < build_layout(Local(40), L, bs).block_mask.sum()


def test_per_head_layout():
    cfgs = [PatternConfig(32, 0), PatternConfig(32, 64), PatternConfig(32, 0, num_global=32)]
    lay = build_layout(cfgs, 150)
    assert lay.num_heads == 3 and lay.block_mask.shape == (3, 5, 5)
    assert lay.token_mask().shape == (3, 150, 150)
    for h, c in enumerate(cfgs):
        assert torch.equal(lay.block_mask[h], build_layout(c, 150).block_mask)
    assert lay.kv_counts.shape == (3, 5)
    dens = sum(build_layout(c, 150).density for c in cfgs) / 3
    assert lay.density == pytest.approx(dens)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(block_size=48), "block_size"),
        (dict(block_size=256), "block_size"),
        (dict(window=-1), "window"),
        (dict(num_global=-3), "num_global"),
        (dict(stride=-1), "stride"),
        (dict(window=1.5), "window"),
        (dict(global_placement="middle"), "global_placement"),
    ],
)
def test_invalid_config_names_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"PatternConfig\.{field}"):
        PatternConfig(**kwargs)


def test_from_dict_rejects_unknown_key():
    with pytest.raises(ValueError, match="unknown pattern key"):
        PatternConfig.from_dict({"block_size": 64, "windw": 3}, source="x.yaml")
    assert PatternConfig.from_dict({"block_size": 32, "window": 8}).window == 8


def test_layout_rejects_wrong_mask_shape():
    with pytest.raises(ValueError, match="block_mask"):
        BlockLayout(torch.ones(3, 3, dtype=torch.bool), 16, 100)


def test_render_writes_png(tmp_path):
    lay = build_layout(PatternConfig(32, 40, 16, 3), 300)
    out = render(lay, tmp_path / "layout.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# ---- one name per concept: pattern_for_sparsity (two rules), pattern_label ------------------------


def _old_richest(seq_len, target, block_size=64):
    """The kernel benchmark's rule as it was (patterns/sparsity.py before the two rules merged)."""
    nb = math.ceil(seq_len / block_size)
    if target == 0.0:
        return PatternConfig(block_size, nb * block_size, 0, 0)
    cands = []
    for g in (block_size, 0):
        for s in (0, 8, 16):
            for wb in range(nb + 1):
                cfg = PatternConfig(block_size, wb * block_size, g, s)
                sp = build_layout(cfg, seq_len).sparsity
                cands.append((abs(sp - target), cfg))
                if sp <= 0.0:
                    break
    best = min(d for d, _ in cands)
    near = [(d, c) for d, c in cands if d <= best + 0.02]
    return min(near, key=lambda it: (it[1].num_global == 0, it[1].stride == 0, round(it[0], 9), it[1].window,
                                     it[1].stride, it[1].num_global))[1]


def _old_band(target, seq_len, bs):
    """The EvoFormer benchmark's rule as it was (autotune/evoformer/bench.py, arguments swapped)."""
    nb = math.ceil(seq_len / bs)
    best, best_key = None, None
    for k in range(0, max(1, nb // 2) + 1):
        for g in (bs, 0):
            for stride in [0] + list(range(2, nb)):
                cfg = PatternConfig(block_size=bs, window=k * bs, num_global=g, stride=stride)
                s = build_layout(cfg, seq_len).sparsity
                key = (round(abs(s - target) / 0.02), g == 0, -k, stride != 0, abs(s - target))
                if best_key is None or key < best_key:
                    best, best_key = cfg, key
    return best


@pytest.mark.parametrize("bs, lengths", [(16, (40, 100, 160)), (32, (64, 200, 300)), (64, (256, 700, 1024))])
def test_pattern_for_sparsity_keeps_each_callers_results(bs, lengths):
    from patterns import pattern_for_sparsity

    differ = 0
    for L in lengths:
        for target in (0.0, 0.3, 0.5, 0.75, 0.9, 0.97):
            rich = pattern_for_sparsity(L, target, block_size=bs)
            band = pattern_for_sparsity(L, target, bs, rule="band")
            assert rich == _old_richest(L, target, bs), (L, target)
            assert band == _old_band(target, L, bs), (L, target)
            differ += rich != band
    assert differ > 0  # the two tie-breaking rules really are different: each caller keeps its own


def test_pattern_for_sparsity_refuses_bad_arguments():
    from patterns import pattern_for_sparsity

    with pytest.raises(ValueError, match="rule must be one of"):
        pattern_for_sparsity(128, 0.5, 16, rule="widest")
    with pytest.raises(ValueError, match="target sparsity"):
        pattern_for_sparsity(128, 1.5, 16, rule="band")


def _old_report_label(p):
    """The report's pattern column as it was (autotune/report/build.py _pattern_str)."""
    if not p:
        return "\u2014"
    if p.get("family") == "guided":
        budget = f"keep{p.get('keep')}" if p.get("keep") is not None else f"mass{p.get('mass')}"
        return (f"guided bs{p.get('block_size')}/{budget}/{p.get('pool', 'max')}/{p.get('spread', 'row')}"
                f"/w{p.get('window', 0)}/g{p.get('num_global', 0)}")
    s = f"bs{p.get('block_size')}/w{p.get('window')}/g{p.get('num_global')}/s{p.get('stride')}"
    if p.get("num_global") and p.get("global_placement") not in (None, "first"):
        s += f"/{p['global_placement']}"
    return s


@settings(max_examples=60, deadline=None)
@given(cfg=configs)
def test_pattern_label_static(cfg):
    from patterns import pattern_label

    assert pattern_label(cfg) == pattern_label(cfg.to_dict()) == _old_report_label(cfg.to_dict())
    if cfg.global_placement == "first" or not cfg.num_global:  # the EvoFormer benchmark's spelling
        assert pattern_label(cfg) == f"bs{cfg.block_size}/w{cfg.window}/g{cfg.num_global}/s{cfg.stride}"


def test_pattern_label_guided_dicts_and_missing():
    from patterns import GuidedConfig, pattern_label

    for g in (GuidedConfig(16, keep=0.25), GuidedConfig(32, mass=0.9, pool="logsumexp", spread="layout", window=32,
                                                       num_global=4)):
        assert pattern_label(g) == _old_report_label(g.to_dict())
    assert pattern_label(GuidedConfig(16, keep=0.25)) == "guided bs16/keep0.25/max/row/w0/g0"
    assert pattern_label(PatternConfig(64, 128, 16, 0, "spread")) == "bs64/w128/g16/s0/spread"
    for stored in ({"block_size": 64}, {"family": "guided", "block_size": 16, "mass": 0.5}):  # a hand-edited row
        assert pattern_label(stored) == _old_report_label(stored)
    assert pattern_label(None) == pattern_label({}) == "\u2014" and pattern_label(None, missing="") == ""
    with pytest.raises(TypeError, match="pattern_label"):
        pattern_label(3)


# ---- the error base class ---------------------------------------------------------------------------


def test_input_error_reported_as_one_line_exit_2(capsys):
    from patterns.errors import InputError, exit_on_input_error, report_input_error

    assert issubclass(InputError, ValueError)
    assert report_input_error(InputError("space.yaml: budget.trials: must be >= 1"), "autotune") == 2
    assert capsys.readouterr().err == "autotune: error: space.yaml: budget.trials: must be >= 1\n"
    assert report_input_error(InputError("x"), None, message="masked") == 2
    assert capsys.readouterr().err == "error: masked\n"
    with pytest.raises(SystemExit) as ei:
        with exit_on_input_error("python -m kernels.bench"):
            raise InputError("bad.yaml: buckets: must be a non-empty list")
    assert ei.value.code == 2
    assert capsys.readouterr().err == "python -m kernels.bench: error: bad.yaml: buckets: must be a non-empty list\n"
    with pytest.raises(KeyError):  # anything else passes through
        with exit_on_input_error("p"):
            raise KeyError("k")


def test_error_base_loads_no_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, patterns.errors; sys.exit(1 if 'torch' in sys.modules else 0)"
    root = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=120).returncode == 0


def test_the_report_and_the_kernels_vocabulary_load_no_torch():
    """The report is built from the database alone: importing it (and the kernels package's
    baseline vocabulary and compile bookkeeping it reads) loads no torch; `kernels` loads its
    public names on first use."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, results.report, kernels, kernels.baselines, kernels.compile_cache; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    root = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=120).returncode == 0


def test_every_project_error_class_is_an_input_error():
    """Every exception class the project defines (found in the source, wherever it moves) derives
    from patterns.errors.InputError, so each command line maps it to one line and exit status 2 -
    except ExecutorError: it reaches the search's command line only mid-run (every Ray worker node
    gone: exit status 1); at start-up the search turns it into a UsageError (exit 2)."""
    import ast
    import importlib
    from pathlib import Path

    from patterns.errors import InputError

    root = Path(__file__).resolve().parent.parent
    not_input = {"ExecutorError"}
    found = {}
    for pkg in ("patterns", "kernels", "models", "search_spaces", "results", "autotune"):
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                    mod = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                    found[node.name] = getattr(importlib.import_module(mod), node.name)
    assert {"SpaceError", "StorageError", "ReportError", "TunedFileError", "TunedMismatchError", "YAMLInputError",
            "UsageError", "ExportError", "IngestError", "CopyError", "ProteinLoadError"} <= set(found), sorted(found)
    for name, cls in found.items():
        assert issubclass(cls, InputError) != (name in not_input), name
