"""Guided patterns: selection against a brute-force loop over tiles, bad signals, device placement,
and every backend exact on guided layouts."""

from __future__ import annotations

import math
import random

import pytest
import torch

from kernels import sparse_attention
from kernels.reference import reference_attention
from patterns import BlockLayout, GuidedConfig, PatternConfig, build_layout
from patterns.rules import Global, Local


# ---- brute force: a plain Python loop over tiles ------------------------------------------------------
def _pool_tile(vals: list[float], pool: str) -> float:
    if pool == "max":
        return max(vals)
    if pool == "mean":
        return sum(vals) / len(vals)
    m = max(vals)
    if m == -math.inf:
        return -math.inf
    return m + math.log(sum(math.exp(x - m) for x in vals))


def _brute(cfg: GuidedConfig, L: int, signal: torch.Tensor) -> torch.Tensor:
    s = signal.double()
    shared = s.dim() == 2
    s3 = s.unsqueeze(0) if shared else (s[0] if s.dim() == 4 else s)
    bs = cfg.block_size
    nb = -(-L // bs)
    forced = Local(cfg.window).blocks(L, bs)
    if cfg.num_global:
        forced = forced | Global(cfg.num_global, cfg.global_placement).blocks(L, bs)
    forced = forced.tolist()
    out = torch.zeros(s3.shape[0], nb, nb, dtype=torch.bool)
    for g in range(s3.shape[0]):
        score = [[_pool_tile(s3[g, I * bs:(I + 1) * bs, J * bs:(J + 1) * bs].reshape(-1).tolist(), cfg.pool)
                  for J in range(nb)] for I in range(nb)]
        if cfg.spread == "row":
            groups = [[(I, J) for J in range(nb)] for I in range(nb)]
        else:
            groups = [[(I, J) for I in range(nb) for J in range(nb)]]
        for grp in groups:
            order = sorted(range(len(grp)), key=lambda p: (not forced[grp[p][0]][grp[p][1]], -score[grp[p][0]][grp[p][1]], p))
            n_forced = sum(forced[i][j] for i, j in grp)
            if cfg.keep is not None:
                n = max(n_forced, min(len(grp), max(1, math.ceil(cfg.keep * len(grp) - 1e-9))))
                chosen = order[:n]
            else:
                top = max(score[i][j] for i, j in grp)
                top = top if math.isfinite(top) else 0.0
                w = [math.exp(score[grp[p][0]][grp[p][1]] - top) for p in order]
                total = sum(w)
                chosen, before = [], 0.0
                for rank, p in enumerate(order):
                    if rank < n_forced or before < cfg.mass * total:
                        chosen.append(p)
                    before += w[rank]
            for p in chosen:
                out[g, grp[p][0], grp[p][1]] = True
    return out[0] if shared else out


def _check(cfg, L, signal):
    lay = build_layout(cfg, L, signal=signal)
    want = _brute(cfg, L, signal)
    assert lay.block_mask.shape == want.shape
    assert torch.equal(lay.block_mask, want), (cfg, L)
    assert lay.mask3.diagonal(dim1=-2, dim2=-1).all()  # the diagonal is always kept: no empty row
    assert lay.config == cfg
    return lay


POOLS = ("max", "mean", "logsumexp")


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("spread", ("row", "layout"))
@pytest.mark.parametrize("budget", ("keep", "mass"))
def test_selection_matches_brute_force(pool, spread, budget):
    rng = random.Random(hash((pool, spread, budget)) % 1000)
    for trial in range(4):
        L = rng.choice([16, 37, 64, 100, 129])
        bs = rng.choice([16, 32])
        frac = rng.choice([0.1, 0.3, 0.5, 0.77, 1.0])
        window = rng.choice([0, 0, 5, 40])
        num_global = rng.choice([0, 0, 3])
        placement = rng.choice(["first", "spread"])
        cfg = GuidedConfig(bs, **{budget: frac}, pool=pool, window=window, num_global=num_global,
                           global_placement=placement, spread=spread)
        g = torch.Generator().manual_seed(trial)
        shape = rng.choice([(L, L), (3, L, L), (1, 2, L, L)])
        sig = torch.randn(*shape, generator=g, dtype=torch.float64) * 3
        lay = _check(cfg, L, sig)
        assert lay.num_heads == (None if len(shape) == 2 else shape[-3])


@pytest.mark.parametrize("pool", POOLS)
def test_ties_are_broken_by_position(pool):
    """Integer-valued tiles with many equal scores: the lower key block (row-major position for
    spread=layout) wins, and the result equals the brute force. (logsumexp: whole tiles only; for a
    ragged tile and its transpose the two-pass logsumexp may differ in the last bit, a tie in exact
    arithmetic that rounding breaks, still deterministically.)"""
    L, bs = (96 if pool == "logsumexp" else 90), 16
    nb = -(-L // bs)
    g = torch.Generator().manual_seed(3)
    tile_vals = torch.randint(0, 3, (2, nb, nb), generator=g).double()
    sig = tile_vals.repeat_interleave(bs, 1).repeat_interleave(bs, 2)[:, :L, :L].contiguous()
    for spread in ("row", "layout"):
        for cfg in (GuidedConfig(bs, keep=0.4, pool=pool, spread=spread), GuidedConfig(bs, mass=0.6, pool=pool, spread=spread)):
            _check(cfg, L, sig)
    # a constant signal: per row, the forced diagonal plus the first columns
    cfg = GuidedConfig(bs, keep=0.5, pool=pool)
    lay = _check(cfg, L, torch.zeros(L, L))
    for i in range(nb):
        kept = lay.block_mask[i].nonzero().flatten().tolist()
        expect = sorted({i} | set([j for j in range(nb) if j != i][: math.ceil(0.5 * nb) - 1]))
        assert kept == expect


def test_budget_counts_and_forced_blocks():
    L, bs = 256, 16
    nb = L // bs
    sig = torch.randn(4, L, L)
    lay = build_layout(GuidedConfig(bs, keep=0.25), L, signal=sig)
    assert (lay.kv_counts == 4).all()
    lay = build_layout(GuidedConfig(bs, keep=0.25, spread="layout"), L, signal=sig)
    assert (lay.block_mask.sum((-1, -2)) == math.ceil(0.25 * nb * nb)).all()
    # forced window wider than the budget: the forced tiles are all kept, nothing else
    lay = build_layout(GuidedConfig(bs, keep=0.1, window=40), L, signal=sig)
    assert torch.equal(lay.block_mask, Local(40).blocks(L, bs).expand(4, -1, -1))
    # global residues give full rows and columns
    lay = build_layout(GuidedConfig(bs, keep=0.1, num_global=20), L, signal=sig)
    assert lay.block_mask[:, :2].all() and lay.block_mask[:, :, :2].all()
    # mass=1 keeps every tile of finite weight; a tiny mass keeps the forced diagonal only (forced
    # tiles count towards the mass)
    assert build_layout(GuidedConfig(bs, mass=1.0), L, signal=sig).is_full
    lay = build_layout(GuidedConfig(bs, mass=1e-6), L, signal=sig)
    assert (lay.kv_counts == 1).all()


def test_signal_picks_the_strong_tiles():
    """A score map with a few planted strong tiles: exactly those (plus the diagonal) are kept."""
    L, bs = 128, 32
    sig = torch.full((L, L), -5.0)
    planted = [(0, 3), (1, 2), (2, 0), (3, 1)]
    for i, j in planted:
        sig[i * bs + 7, j * bs + 11] = 2.0
    lay = build_layout(GuidedConfig(bs, keep=0.5, pool="max"), L, signal=sig)
    want = torch.eye(4, dtype=torch.bool)
    for i, j in planted:
        want[i, j] = True
    assert torch.equal(lay.block_mask, want)


def test_bad_signals_and_configs():
    cfg = GuidedConfig(16, keep=0.5)
    with pytest.raises(ValueError, match="needs a signal"):
        build_layout(cfg, 64)
    with pytest.raises(ValueError, match="signal shape"):
        build_layout(cfg, 64, signal=torch.zeros(63, 63))
    with pytest.raises(ValueError, match="signal shape"):
        build_layout(cfg, 64, signal=torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match="signal shape"):
        build_layout(cfg, 64, signal=torch.zeros(64))
    bad = torch.zeros(2, 64, 64)
    bad[1, 5, 9] = float("nan")
    for pool in ("max", "mean", "logsumexp"):
        for sig in (bad, bad[1]):
            with pytest.raises(ValueError, match="NaN"):
                build_layout(GuidedConfig(16, keep=0.5, pool=pool), 64, signal=sig)
    with pytest.raises(ValueError, match="floating"):
        build_layout(cfg, 64, signal=torch.zeros(64, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match="torch.Tensor"):
        build_layout(cfg, 64, signal=[[0.0]])
    with pytest.raises(ValueError, match="contradicts"):
        build_layout(cfg, 64, 32, signal=torch.zeros(64, 64))
    for kw, msg in [({}, "exactly one budget"), ({"keep": 0.5, "mass": 0.5}, "exactly one budget"),
                    ({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"), ({"mass": float("nan")}, "mass"),
                    ({"keep": 0.5, "pool": "min"}, "pool"), ({"keep": 0.5, "window": -1}, "window"),
                    ({"keep": 0.5, "spread": "col"}, "spread"), ({"keep": True}, "keep")]:
        with pytest.raises(ValueError, match=msg):
            GuidedConfig(16, **kw)
    with pytest.raises(ValueError, match="block_size"):
        GuidedConfig(24, keep=0.5)
    # infinite signal values are scores, not errors: -inf tiles are never preferred
    sig = torch.zeros(64, 64)
    sig[:, 32:] = float("-inf")
    lay = build_layout(GuidedConfig(16, keep=0.5), 64, signal=sig)
    assert lay.block_mask[0].tolist() == [True, True, False, False]


def test_static_configs_unchanged_and_dict_round_trip():
    cfg = PatternConfig(32, 64, 4, 2)
    a = build_layout(cfg, 200)
    b = build_layout(cfg, 200, signal=torch.randn(200, 200))  # ignored by static patterns
    assert torch.equal(a.block_mask, b.block_mask)
    g = GuidedConfig(32, mass=0.8, pool="logsumexp", window=16, num_global=2, spread="layout")
    d = g.to_dict()
    assert d["family"] == "guided"
    assert GuidedConfig.from_dict(d) == g
    with pytest.raises(ValueError, match="unknown guided pattern key"):
        GuidedConfig.from_dict({**d, "stride": 2})


def test_layout_lives_on_the_signal_device_and_bf16_signal():
    sig = torch.randn(2, 70, 70)
    lay = build_layout(GuidedConfig(16, keep=0.5), 70, signal=sig)
    assert lay.device == sig.device and lay.kv_indices.device == sig.device
    lay16 = build_layout(GuidedConfig(16, keep=0.5), 70, signal=sig.bfloat16())
    assert lay16.block_mask.shape == lay.block_mask.shape
    if torch.cuda.is_available():
        c = build_layout(GuidedConfig(16, keep=0.5), 70, signal=sig.cuda())
        assert c.block_mask.is_cuda and c.kv_indices.is_cuda
        assert torch.equal(c.block_mask.cpu(), lay.block_mask)


def test_selection_is_not_differentiated():
    sig = torch.randn(2, 64, 64, requires_grad=True)
    lay = build_layout(GuidedConfig(16, keep=0.5), 64, signal=sig)
    assert not lay.block_mask.requires_grad


# ---- kernels on guided layouts -----------------------------------------------------------------------
# Exactness of every backend on guided layouts (per head and shared, ragged L, forward and gradients):
# tests/test_conformance.py.


def test_fresh_guided_layout_each_forward_stays_exact():
    """A new layout per forward (what a model does): backends' per-layout caches never mix layouts."""
    L, bs, H = 64, 16, 2
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, H, L, 16, generator=g) for _ in range(3))
    cfg = GuidedConfig(bs, keep=0.5)
    spaces = set()
    for step in range(4):
        bias = torch.randn(1, H, L, L, generator=g)
        lay = build_layout(cfg, L, signal=bias)
        spaces.add(id(lay.workspace))
        with torch.no_grad():  # no-grad calls reuse the shared workspace
            out = sparse_attention(q, k, v, lay, bias, backend="cpu")
        torch.testing.assert_close(out, reference_attention(q, k, v, lay, bias), atol=2e-5, rtol=1e-4)
        out = sparse_attention(q, k, v, lay, bias, backend="cpu")
        torch.testing.assert_close(out, reference_attention(q, k, v, lay, bias), atol=2e-5, rtol=1e-4)
    assert len(spaces) == 1  # one workspace per config, shared by every layout built from it
    assert lay.fresh().workspace is None  # a cold copy owns nothing


def test_logsumexp_in_chunks_matches_brute_force(monkeypatch):
    """The logsumexp row pass runs in chunks of query-block rows (bounded temporaries)."""
    import patterns.guided as pg

    monkeypatch.setattr(pg, "_LSE_CHUNK", 16 * 16 * 3)  # forces several chunks
    for L in (37, 100):
        sig = torch.randn(3, L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(L))
        _check(GuidedConfig(16, keep=0.3, pool="logsumexp"), L, sig)
        _check(GuidedConfig(16, mass=0.5, pool="logsumexp", spread="layout"), L, sig[0])


def test_shared_workspaces_are_bounded_and_cold_layouts_own_theirs():
    import patterns.guided as pg

    sig = torch.randn(40, 40)
    cfgs = [GuidedConfig(16, keep=k) for k in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)]
    lays = [build_layout(c, 40, signal=sig) for c in cfgs]
    assert len(pg._WORKSPACES) <= pg._MAX_WORKSPACES
    assert cfgs[-1] in pg._WORKSPACES and cfgs[0] not in pg._WORKSPACES
    assert build_layout(cfgs[-1], 40, signal=sig).workspace is lays[-1].workspace
    own = build_layout(cfgs[-1], 40, signal=sig, workspace={})
    assert own.workspace == {} and own.workspace is not lays[-1].workspace


def test_logsumexp_with_minus_inf_tiles_matches_brute_force():
    """The tile-max-shifted logsumexp: a tile that is all -inf pools to -inf (ranked last), a
    partly -inf tile pools over its finite pairs."""
    L, bs = 64, 16
    sig = torch.randn(2, L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    sig[0, :16, 32:48] = -math.inf          # a whole tile
    sig[1, 16:32, :8] = -math.inf           # half a tile
    sig[1, 40, 50] = 30.0                   # one dominant pair
    for spread in ("row", "layout"):
        _check(GuidedConfig(bs, keep=0.5, pool="logsumexp", spread=spread), L, sig)
        _check(GuidedConfig(bs, mass=0.7, pool="logsumexp", spread=spread), L, sig)


def test_construction_runs_on_one_thread_and_restores_the_count():
    """The build runs its reductions on one intra-op thread and puts the caller's count back, also
    when it raises."""
    import patterns.guided as pg

    prev = torch.get_num_threads()
    seen = []
    real = pg.pool_signal

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    try:
        torch.set_num_threads(2)
        pg.pool_signal = spy
        build_layout(GuidedConfig(16, keep=0.5), 48, signal=torch.randn(2, 48, 48))
        assert seen == [1] and torch.get_num_threads() == 2
        bad = torch.randn(48, 48)
        bad[3, 4] = float("nan")
        with pytest.raises(ValueError, match="NaN"):
            build_layout(GuidedConfig(16, keep=0.5), 48, signal=bad)
        assert torch.get_num_threads() == 2
    finally:
        pg.pool_signal = real
        torch.set_num_threads(prev)


def test_logsumexp_pool_values_and_non_finite_tiles():
    """The two-level logsumexp (fused log_softmax per row segment, then over the tile's rows) equals
    each tile's logsumexp over its real pairs; an all -inf tile gives -inf, a +inf pair +inf, a NaN
    pair NaN (whatever else its row segment holds)."""
    from patterns.guided import pool_signal

    L, bs = 70, 16
    nb = -(-L // bs)
    s = torch.randn(2, L, L, dtype=torch.float64, generator=torch.Generator().manual_seed(11)) * 4
    s[0, :16, 16:32] = -math.inf               # a whole tile
    s[0, 20, 40] = math.inf                    # +inf in a row segment with finite values
    s[1, 33, 3] = math.nan                     # NaN in a row segment with finite values
    s[1, 64:, 64:] = -math.inf                 # the ragged corner tile
    got = pool_signal(s, bs, "logsumexp")
    for g in range(2):
        for i in range(nb):
            for j in range(nb):
                want = torch.logsumexp(s[g, i * bs:(i + 1) * bs, j * bs:(j + 1) * bs].reshape(-1), 0)
                if torch.isnan(s[g, i * bs:(i + 1) * bs, j * bs:(j + 1) * bs]).any():
                    assert torch.isnan(got[g, i, j]), (g, i, j)
                else:
                    torch.testing.assert_close(got[g, i, j], want, rtol=1e-12, atol=0, msg=f"tile {(g, i, j)}")
    assert got[0, 0, 1] == -math.inf and got[0, 1, 2] == math.inf and got[1, 4, 4] == -math.inf
    # float32 signals: within rounding of the float64 value
    s32 = torch.randn(3, 100, 100, generator=torch.Generator().manual_seed(12)) * 3
    torch.testing.assert_close(pool_signal(s32, 32, "logsumexp").double(), pool_signal(s32.double(), 32, "logsumexp"),
                               rtol=1e-6, atol=1e-6)
