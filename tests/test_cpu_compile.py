"""The CPU backend's fused kernel as registered ops (``sparse_autotune::cpu_block_sparse_attention_fwd``
/ ``_bwd``) inside ``torch.compile(fullgraph=True)``: no graph break, forward and gradients bitwise
equal to eager, bias broadcasts [1, H, L, L], [B, H, L, L] and none; ``torch.library.opcheck`` of
both ops (schema, fake tensors, autograd registration, AOT dispatch); one-line errors on bad op
arguments.

Inputs are fresh random every run; the seed is in every assertion message.
"""

from __future__ import annotations

import secrets

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from kernels import cpu_fused, sparse_attention
from patterns import BlockLayout, PatternConfig, build_layout
from patterns.sparsity import pattern_for_sparsity

pytestmark = pytest.mark.skipif(not cpu_fused.available(), reason="fused CPU kernel not available (no C compiler)")

FWD = torch.ops.sparse_autotune.cpu_block_sparse_attention_fwd.default
BWD = torch.ops.sparse_autotune.cpu_block_sparse_attention_bwd.default
B, H, D = 2, 3, 16


def _seed() -> int:
    return secrets.randbelow(2**31 - 1)


def _inputs(L, bias_shape, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=g)
    grad = torch.randn(B, H, L, D, generator=g)
    return q, k, v, bias, grad


def _run(fn, q, k, v, bias, grad):
    """Output and the gradients of q, k, v (and bias) of fn(q, k, v, bias)."""
    x = [t.clone().requires_grad_(True) for t in (q, k, v)] + ([] if bias is None else [bias.clone().requires_grad_(True)])
    out = fn(x[0], x[1], x[2], x[3] if bias is not None else None)
    return (out.detach(), *torch.autograd.grad(out, x, grad))


def _attention(layout):
    def fn(q, k, v, bias):
        return sparse_attention(q, k, v, layout, bias, backend="cpu")

    return fn


def _layout(kind, L):
    if kind == "full":
        return build_layout(pattern_for_sparsity(L, 0.0, block_size=16), L)
    if kind == "per-head":
        nb = -(-L // 16)
        m = torch.rand(H, nb, nb, generator=torch.Generator().manual_seed(L)) < 0.5
        m[0] = torch.eye(nb, dtype=torch.bool)
        return BlockLayout(m, 16, L)
    return build_layout(PatternConfig(16, window=16, num_global=1, stride=3, global_placement="spread"), L)


def _assert_same(got, want, what):
    for name, a, b in zip(["out", "dq", "dk", "dv", "dbias"], got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {name} {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
        # bitwise, NaN where eager has NaN
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {name} differs from eager: {m}")


@pytest.mark.parametrize(
    "bias_kind,L,layout_kind",
    [
        ("1HLL", 64, "shared"), pytest.param("BHLL", 64, "shared", marks=pytest.mark.slow), (None, 64, "shared"),
        pytest.param("1HLL", 72, "shared", marks=pytest.mark.slow),  # BHLL-ragged-per-head covers both
        ("BHLL", 80, "per-head"), ("1HLL", 64, "full"), (None, 48, "full"),
    ],
    ids=["1HLL", "BHLL", "none", "1HLL-ragged", "BHLL-ragged-per-head", "1HLL-full", "none-full"],
)
def test_fullgraph_matches_eager(bias_kind, L, layout_kind):
    """torch.compile(fullgraph=True) through dynamo and AOTAutograd (the ``aot_eager`` backend:
    fake-tensor tracing of both ops, the joint forward/backward graph) equals eager bitwise."""
    seed = _seed()
    torch._dynamo.reset()
    layout = _layout(layout_kind, L)
    shape = {None: None, "1HLL": (1, H, L, L), "BHLL": (B, H, L, L)}[bias_kind]
    q, k, v, bias, grad = _inputs(L, shape, seed)
    fn = _attention(layout)
    eager = _run(fn, q, k, v, bias, grad)
    compiled = _run(torch.compile(fn, fullgraph=True, backend="aot_eager"), q, k, v, bias, grad)
    _assert_same(compiled, eager, f"seed={seed} bias={bias_kind} L={L} {layout_kind}")
    with torch.no_grad():  # inference: eager runs the op's implementation directly
        _assert_same([torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v, bias)], [fn(q, k, v, bias)], f"seed={seed} no_grad")


@pytest.mark.parametrize("layout_kind", ["shared", "full"])
def test_fullgraph_non_finite_matches_eager(layout_kind):
    """Non-finite inputs (``kernels.reference`` semantics) compiled: NaN in one q row, a bias row
    all -inf, inf in v (the full layout's SDPA path then takes its exact path, chosen at run time
    by ``torch.cond``)."""
    seed = _seed()
    torch._dynamo.reset()
    L = 64
    layout = _layout(layout_kind, L)
    q, k, v, bias, grad = _inputs(L, (1, H, L, L), seed)
    q[0, 1, 5] = float("nan")
    bias[0, 2, 9] = float("-inf")
    v[1, 0, 3, 2] = float("inf")
    fn = _attention(layout)
    eager = _run(fn, q, k, v, bias, grad)
    compiled = _run(torch.compile(fn, fullgraph=True, backend="aot_eager"), q, k, v, bias, grad)
    _assert_same(compiled, eager, f"seed={seed} {layout_kind} non-finite")
    # and finite v on the same compiled function takes the SDPA path: still eager's result
    v[1, 0, 3, 2] = 0.5
    _assert_same(_run(torch.compile(fn, fullgraph=True, backend="aot_eager"), q, k, v, bias, grad),
                 _run(fn, q, k, v, bias, grad), f"seed={seed} {layout_kind} finite v")


@pytest.mark.slow
@pytest.mark.parametrize("layout_kind", ["shared", "full"])
def test_fullgraph_inductor_matches_eager(layout_kind):
    """The default backend (Inductor) too, forward and gradients, bias [1, H, L, L]: bitwise on
    the fused op; a full layout (SDPA inside ``torch.cond``, whose autograd graph Inductor lowers
    itself) agrees to float32 rounding."""
    seed = _seed()
    torch._dynamo.reset()
    L = 72
    layout = _layout(layout_kind, L)
    q, k, v, bias, grad = _inputs(L, (1, H, L, L), seed)
    fn = _attention(layout)
    got, want = _run(torch.compile(fn, fullgraph=True), q, k, v, bias, grad), _run(fn, q, k, v, bias, grad)
    if layout_kind == "shared":
        _assert_same(got, want, f"seed={seed}")
    else:
        for name, a, b in zip(["out", "dq", "dk", "dv", "dbias"], got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"seed={seed} {name}: {m}")


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "nograd"])
@pytest.mark.parametrize("bias_kind", ["1HLL", None])
def test_no_graph_break(bias_kind, grad):
    """torch._dynamo.explain: one graph, no break (the ctypes autograd.Function broke it 8-10
    times), with autograd and under no_grad (where eager skips the dispatcher)."""
    torch._dynamo.reset()
    L = 64
    layout = _layout("shared", L)
    q, k, v, bias, _ = _inputs(L, None if bias_kind is None else (1, H, L, L), _seed())
    q.requires_grad_(True)
    with torch.set_grad_enabled(grad):
        ex = torch._dynamo.explain(_attention(layout))(q, k, v, bias)
    assert (ex.graph_count, ex.graph_break_count) == (1, 0), [str(r.reason)[:200] for r in ex.break_reasons]


def test_compiled_function_follows_the_layout_argument():
    """A compiled function taking the layout as an argument gives each layout's own result: a full
    layout (SDPA path) and two sparse layouts of one geometry (the fused op), in any order."""
    seed = _seed()
    torch._dynamo.reset()
    L = 64
    layouts = [
        build_layout(pattern_for_sparsity(L, 0.0, block_size=16), L),
        build_layout(PatternConfig(16, window=0), L),
        build_layout(PatternConfig(16, window=16, num_global=1), L),
    ]
    q, k, v, _, _ = _inputs(L, None, seed)

    def fn(q, k, v, layout):
        return sparse_attention(q, k, v, layout, None, backend="cpu")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    counters.clear()
    for lay in layouts + layouts[::-1]:
        assert torch.equal(compiled(q, k, v, lay), fn(q, k, v, lay)), f"seed={seed} layout={lay.block_mask.sum()}"
    # one compilation per layout object (guarded on it), none when a layout comes back
    assert counters["stats"]["unique_graphs"] == len(layouts)


# ---- opcheck ----------------------------------------------------------------------------------------
def _op_args(bias_shape, requires_grad, L=40, per_head=False):
    layout = _layout("per-head" if per_head else "shared", L)
    kv_counts, kv_indices, q_counts, q_indices = layout.index_on("cpu")
    q, k, v = (torch.randn(B, H, L, D, requires_grad=requires_grad) for _ in range(3))
    bias = None if bias_shape is None else torch.randn(*bias_shape, requires_grad=requires_grad)
    return (q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices, 16, L, 0.25)


@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
@pytest.mark.parametrize("bias_shape", [None, (1, H, 40, 40), (B, H, 40, 40), (B, 1, 40, 40)], ids=str)
def test_opcheck_forward(bias_shape, requires_grad):
    torch.library.opcheck(FWD, _op_args(bias_shape, requires_grad))


def test_opcheck_forward_per_head_layout():
    torch.library.opcheck(FWD, _op_args((1, H, 40, 40), True, per_head=True))


@pytest.mark.parametrize("compute_dbias", [False, True])
@pytest.mark.parametrize("bias_shape", [None, (1, H, 40, 40), (B, H, 40, 40)], ids=str)
def test_opcheck_backward(bias_shape, compute_dbias):
    q, k, v, bias, *index, bs, L, scale = _op_args(bias_shape, False)
    out, lse = FWD(q, k, v, bias, *index, bs, L, scale)
    args = (torch.randn_like(out), q, k, v, out, lse, bias, *index, bs, L, scale, compute_dbias)
    # no double backward: the backward op has no autograd formula of its own
    torch.library.opcheck(BWD, args)


def test_backward_op_returns_bias_shaped_dbias():
    q, k, v, bias, *index, bs, L, scale = _op_args((1, H, 40, 40), False)
    out, lse = FWD(q, k, v, bias, *index, bs, L, scale)
    res = BWD(torch.randn_like(out), q, k, v, out, lse, bias, *index, bs, L, scale, True)
    assert [tuple(t.shape) for t in res] == [tuple(q.shape)] * 3 + [tuple(bias.shape)]
    res = BWD(torch.randn_like(out), q, k, v, out, lse, bias, *index, bs, L, scale, False)
    assert res[3].numel() == 0


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda a: (*a[:9], a[9] + 16, a[10]), "seq_len"),
        (lambda a: (a[0].double(), *a[1:]), "float32"),
        (lambda a: (*a[:3], torch.randn(1, H, 40, 39), *a[4:]), "bias"),
        (lambda a: (*a[:4], a[4][:, :-1], *a[5:]), "index"),
        (lambda a: (*a[:8], 24, *a[9:]), "block size"),
        (lambda a: (*a[:5], a[5] + 3, *a[6:]), "kv_indices"),
        (lambda a: (*a[:6], a[6] + 100, *a[7:]), "q_counts"),
    ],
    ids=["seq_len", "dtype", "bias", "index", "block_size", "kv_indices", "q_counts"],
)
def test_bad_op_arguments_raise_one_line(change, needle):
    """The C kernel trusts sizes and strides: the op checks them and names what is wrong."""
    args = change(_op_args((1, H, 40, 40), False))
    with pytest.raises(ValueError, match=needle) as err:
        FWD(*args)
    assert "\n" not in str(err.value)


def test_compile_mark_is_the_one_torch_sets():
    """kernels.compile_marks sets torch.compile's constant-result marker without importing dynamo;
    the marker must stay the one torch.compiler.assume_constant_result sets."""
    from kernels import compile_marks

    def f():
        return 0

    def g():
        return 0

    torch.compiler.assume_constant_result(f)
    compile_marks.assume_constant_result(g)
    marked = {k for k, v in vars(f).items() if v is True}
    assert marked == {k for k, v in vars(g).items() if v is True} == {compile_marks._MARKER}
