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
