"""One input contract for every backend: ``kernels.sparse_attention`` refuses what no backend can
compute, with the same ``ValueError`` whatever the backend, before any backend runs.

Refused (each case below, on every backend of the registry): head dim 0 (and any empty
dimension), block size 0, q/k/v of different dtypes, integer q/k/v, an integer bias, a bias that
does not broadcast to [B, H, L, L] (more than 4 dimensions, a wrong size), q/k/v of different
shapes, a layout for another length. Accepted: a bias of 0 to 4 dimensions that broadcasts (a 0-d
bias is a constant shift of every logit). The full check runs once per (shapes, dtypes, devices,
layout geometry) and is then remembered.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import kernels
from kernels import backends, reference_attention, sparse_attention
from patterns import BlockLayout

B, H, L, D, BS = 2, 2, 40, 16, 16


def _layout(L: int = L, bs: int = BS) -> BlockLayout:
    nb = -(-L // bs)
    return BlockLayout(torch.eye(nb, dtype=torch.bool) | (torch.rand(nb, nb) < 0.5), bs, L)


def _qkv(dtype=torch.float32, shape=(B, H, L, D)):
    if dtype.is_floating_point:
        return tuple(torch.randn(*shape, dtype=dtype) for _ in range(3))
    return tuple(torch.randint(-3, 3, shape, dtype=dtype) for _ in range(3))


def _block_size_zero() -> BlockLayout:
    lay = _layout()
    lay._block_size = 0  # corrupted after construction (the constructor itself refuses 0)
    return lay


# (case id, inputs maker -> (q, k, v, layout, bias), a phrase the message must contain)
BAD = [
    ("head-dim-0", lambda: (*_qkv(shape=(B, H, L, 0)), _layout(), None), "head dim D all >= 1"),
    ("batch-0", lambda: (*_qkv(shape=(0, H, L, D)), _layout(), None), ">= 1"),
    ("block-size-0", lambda: (*_qkv(), _block_size_zero(), None), "layout.block_size must be an integer >= 1"),
    ("mixed-dtypes", lambda: (_qkv()[0], *_qkv(torch.float64)[1:], _layout(), None), "one floating dtype"),
    ("integer-qkv", lambda: (*_qkv(torch.int64), _layout(), None), "one floating dtype"),
    ("integer-bias", lambda: (*_qkv(), _layout(), torch.ones(1, H, L, L, dtype=torch.int32)), "bias must be a floating"),
    ("bias-5d", lambda: (*_qkv(), _layout(), torch.randn(1, 1, H, L, L)), "does not broadcast"),
    ("bias-wrong-batch", lambda: (*_qkv(), _layout(), torch.randn(3, H, L, L)), "does not broadcast"),
    ("bias-wrong-keys", lambda: (*_qkv(), _layout(), torch.randn(L, L + 1)), "does not broadcast"),
    ("qkv-shapes", lambda: (*_qkv()[:2], torch.randn(B, H, L, D + 1), _layout(), None), "the same shape"),
    ("layout-length", lambda: (*_qkv(), _layout(L + 8), None), "layout.seq_len"),
    ("not-a-tensor", lambda: (_qkv()[0].numpy(), *_qkv()[1:], _layout(), None), "q must be a torch.Tensor"),
    ("not-a-layout", lambda: (*_qkv(), "64", None), "layout must be a patterns.BlockLayout"),
]


def _refusing_registry(monkeypatch):
    """Every backend's entry replaced by one that records being called."""
    called = []
    for name, rec in list(backends.REGISTRY.items()):
        monkeypatch.setitem(backends.REGISTRY, name, dataclasses.replace(
            rec, run=lambda *a, _n=name, **kw: called.append(_n)))
    return called


@pytest.mark.parametrize("case,make,phrase", BAD, ids=[c[0] for c in BAD])
def test_every_backend_refuses_with_the_same_value_error_before_running(case, make, phrase, monkeypatch):
    called = _refusing_registry(monkeypatch)
    messages = set()
    for name in kernels.BACKENDS:
        q, k, v, layout, bias = make()
        with pytest.raises(ValueError) as err:
            sparse_attention(q, k, v, layout, bias, backend=name)
        messages.add(str(err.value))
    assert called == [], f"{case}: backends ran before the refusal: {called}"
    assert len(messages) == 1, f"{case}: different messages per backend: {messages}"
    (message,) = messages
    assert phrase in message and "\n" not in message, message


def test_the_real_backends_refuse_too():
    """Without the recording stand-ins: no backend's own error (ZeroDivisionError, a torch or
    Inductor error) comes first."""
    for case, make, phrase in BAD:
        for name in kernels.BACKENDS:
            q, k, v, layout, bias = make()
            with pytest.raises(ValueError, match=phrase.split(" ")[0]):
                sparse_attention(q, k, v, layout, bias, backend=name)


@pytest.mark.parametrize("shape", [(), (L,), (L, L), (H, 1, L), (B, 1, L, L)], ids=str)
@pytest.mark.parametrize("backend", ["reference", "dense", "cpu"])
def test_a_bias_of_fewer_dimensions_broadcasts(shape, backend):
    q, k, v = _qkv()
    layout = _layout()
    bias = torch.randn(shape, requires_grad=True)
    out = sparse_attention(q, k, v, layout, bias, backend=backend)
    want = reference_attention(q.double(), k.double(), v.double(), layout, bias.detach().double().expand(B, H, L, L))
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=1e-4)
    (g,) = torch.autograd.grad(out.sum(), bias)
    assert g.shape == bias.shape


def test_the_contract_is_checked_once_per_shape(monkeypatch):
    calls = []
    from kernels import inputs

    full = inputs._check_contract
    monkeypatch.setattr(inputs, "_check_contract", lambda *a: (calls.append(1), full(*a))[1])
    inputs._CHECKED.clear()
    q, k, v = _qkv()
    layout, bias = _layout(), torch.randn(1, H, L, L)
    for _ in range(3):
        sparse_attention(q, k, v, layout, bias, backend="reference")
    assert len(calls) == 1
    sparse_attention(q, k, v, layout, None, backend="reference")  # another bias shape: checked again
    assert len(calls) == 2
