"""The block-sparse attention custom ops, declared once for every backend that has them.

The CPU fused kernel (``kernels.cpu_fused``) and the Triton kernels (``kernels.triton_op``) each
register a forward and a backward op (namespace ``sparse_autotune``) with the same leading
arguments and the same autograd wiring; only their trailing parameters (block size, scale, launch
config, ...) and their implementations differ:

* forward ``(q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices, <forward params>)
  -> (out, lse)``: q_counts / q_indices are read by the backward only, they are inputs so that
  autograd can save them;
* backward ``(grad_out, q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices,
  <backward params>, compute_dbias) -> (dq, dk, dv, dbias)``: dbias has the bias's shape when
  ``compute_dbias`` and a bias is given, otherwise it is an empty tensor;
* the forward's autograd formula saves q, k, v, out, lse, the bias and the index and calls the
  backward op (no double backward); the gradient of ``lse`` (an auxiliary output) is ignored;
* the backward's fake (meta) implementation is the same for both; each forward brings its own
  (the LSE's shape differs).

``declare_attention_ops`` writes the schemas from these shared argument lists, registers the ops,
their fakes and the autograd formula, and returns the two op objects.

Both backends' entry points skip the registered ops on a plain eager call (``plain_eager``: no
graph capture sees it), where their dispatch is pure host cost: without gradients (``wants_grad``
false) they call the forward implementation, with gradients the forward op's autograd formula
runs in a ``torch.autograd.Function`` made by ``eager_autograd_function`` (same saved tensors,
same backward implementation: bitwise the op path's gradients). torch.compile, torch.export,
dispatch modes and tensor subclasses see the ops.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

__all__ = [
    "FORWARD_ARGS", "BACKWARD_ARGS", "declare_attention_ops", "rows_in_place", "empty_in_order_of", "plain_eager",
    "eager_autograd_function", "wants_grad",
]

FORWARD_ARGS = (
    "Tensor q, Tensor k, Tensor v, Tensor? bias, "
    "Tensor kv_counts, Tensor kv_indices, Tensor q_counts, Tensor q_indices"
)
BACKWARD_ARGS = (
    "Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? bias, "
    "Tensor kv_counts, Tensor kv_indices, Tensor q_counts, Tensor q_indices"
)
N_TENSORS = 8  # forward tensor inputs before the backend's own parameters


def rows_in_place(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last (head) dimension has unit stride, so that a kernel reads it in
    place through its other strides (permuted views, slices of a fused projection); otherwise a
    contiguous copy (a head dimension with another stride cannot be loaded as rows)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _dim_order(strides: tuple[int, ...]) -> tuple[int, ...]:
    """The memory order of a 4-d tensor with these strides (outermost first, the last dimension
    last; ties keep the logical order). Cached for concrete strides; symbolic ones (a traced
    call with dynamic shapes) are sorted each time."""
    if all(type(x) is int for x in strides):
        return _dim_order_cached(tuple(strides))
    return (*sorted(range(3), key=lambda i: -strides[i]), 3)


@functools.lru_cache(maxsize=256)
def _dim_order_cached(strides: tuple[int, ...]) -> tuple[int, ...]:
    return (*sorted(range(3), key=lambda i: -strides[i]), 3)


def empty_in_order_of(t: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """An uninitialised dense tensor of ``t``'s [B, H, L, D] shape laid out in ``t``'s dimension
    order: for q a permuted view of [B, L, H, D] memory the output has [B, L, H, D] memory, so the
    caller's transpose back to [B, L, H, D] is a free view (no copy before the gating multiply)."""
    return torch.empty_permuted(t.shape, _dim_order(t.stride()), dtype=dtype or t.dtype, device=t.device)


def _backward_fake(grad_out, q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices, *params):
    compute_dbias = params[-1]
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    dbias = bias.new_empty(bias.shape) if compute_dbias and bias is not None else q.new_empty((0,))
    return dq, dk, dv, dbias


def declare_attention_ops(
    forward_name: str,
    backward_name: str,
    *,
    forward_params: str,
    backward_params: str,
    forward: Callable,
    forward_fake: Callable,
    backward: Callable,
    backward_args: Callable[[tuple], tuple],
    device_types=None,
    backward_fake: Callable = None,
):
    """Register the forward and backward op of one backend; returns (forward_op, backward_op).

    ``forward_params`` / ``backward_params``: the schema text of the backend's trailing parameters
    (``compute_dbias`` is appended to the backward's). The implementations get the layout's index
    as one tuple ``index = (kv_counts, kv_indices, q_counts, q_indices)``: ``forward(q, k, v, bias,
    index, *params)`` and ``forward_fake`` (same arguments) give (out, lse); ``backward(grad_out,
    q, k, v, out, lse, bias, index, *backward_params, compute_dbias)`` gives (dq, dk, dv, dbias);
    ``backward_args(params)`` picks the backward op's parameters out of the forward's;
    ``backward_fake`` (same arguments as the backward op) replaces the shared fake backward (dq,
    dk, dv contiguous) for a backend whose gradients have other strides."""
    def fwd(q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices, *params):
        return forward(q, k, v, bias, (kv_counts, kv_indices, q_counts, q_indices), *params)

    def fwd_fake(q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices, *params):
        return forward_fake(q, k, v, bias, (kv_counts, kv_indices, q_counts, q_indices), *params)

    def bwd(grad_out, q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices, *params):
        return backward(grad_out, q, k, v, out, lse, bias, (kv_counts, kv_indices, q_counts, q_indices), *params)

    fwd_op = torch.library.custom_op(
        forward_name, mutates_args=(), device_types=device_types,
        schema=f"({FORWARD_ARGS}, {forward_params}) -> (Tensor, Tensor)",
    )(fwd)
    fwd_op.register_fake(fwd_fake)
    bwd_op = torch.library.custom_op(
        backward_name, mutates_args=(), device_types=device_types,
        schema=f"({BACKWARD_ARGS}, {backward_params}, bool compute_dbias) -> (Tensor, Tensor, Tensor, Tensor)",
    )(bwd)
    bwd_op.register_fake(backward_fake or _backward_fake)

    def setup_context(ctx, inputs, output):
        _save(ctx, inputs[:N_TENSORS], output, backward_args(tuple(inputs[N_TENSORS:])))
        ctx.n_inputs = len(inputs)

    through_op = _through(bwd_op)

    def autograd_backward(ctx, grad_out, grad_lse):
        return _backward(ctx, through_op, grad_out) + (None,) * (ctx.n_inputs - 4)

    fwd_op.register_autograd(autograd_backward, setup_context=setup_context)
    return fwd_op, bwd_op


def _save(ctx, tensors: tuple, output: tuple, backward_params: tuple) -> None:
    """What the backward needs: q, k, v, out, lse, the bias and the index; the backward op's
    parameters; whether a bias was given."""
    q, k, v, bias, kv_counts, kv_indices, q_counts, q_indices = tensors
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, bias, kv_counts, kv_indices, q_counts, q_indices)
    ctx.params = backward_params
    ctx.has_bias = bias is not None


def _through(bwd_op) -> Callable:
    """The backward op called with the index as one tuple (the implementations' convention)."""
    def run(grad_out, q, k, v, out, lse, bias, index, *params):
        return bwd_op(grad_out, q, k, v, out, lse, bias, *index, *params)
    return run


def _backward(ctx, backward: Callable, grad_out) -> tuple:
    """(dq, dk, dv, dbias or None) from the saved tensors through ``backward(grad_out, q, k, v, out,
    lse, bias, index, *params, compute_dbias)`` (dbias only when the bias needs a gradient); the
    gradient of the LSE output is ignored."""
    q, k, v, out, lse, bias, *index = ctx.saved_tensors
    compute_dbias = bool(ctx.has_bias and ctx.needs_input_grad[3])
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv, dbias = backward(grad_out, q, k, v, out, lse, bias, tuple(index), *ctx.params, compute_dbias)
    return dq, dk, dv, dbias if compute_dbias else None


def plain_eager(*tensors: Optional[torch.Tensor]) -> bool:
    """True for a call that no graph capture sees: not traced by torch.compile / torch.export, no
    dispatch mode (fake tensors, make_fx, FLOP counters) and plain tensors only (no subclass). Such
    a call may skip the registered op (its dispatch is pure host cost there) and launch the
    kernels itself, with ``eager_autograd_function`` when gradients are needed."""
    if torch.compiler.is_compiling() or _dispatch_modes() > 0:
        return False
    for t in tensors:  # a loop, not all(<generator>): per call
        if t is not None and type(t) is not _Tensor:
            return False
    return True


def wants_grad(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
    """Whether autograd records this call (grad mode on and an input requires grad): a plain eager
    call (``plain_eager``) then goes through ``eager_autograd_function``, otherwise it launches the
    forward alone (no LSE kept for a backward)."""
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                        or (bias is not None and bias.requires_grad))


_Tensor = torch.Tensor
_dispatch_modes = torch._C._len_torch_dispatch_stack


def eager_autograd_function(name: str, forward: Callable, backward: Callable, bwd_op) -> type:
    """A ``torch.autograd.Function`` with the registered forward op's autograd formula, for plain
    eager calls (``plain_eager``): the same saved tensors and the same backward, without the
    dispatcher. The backward calls ``backward``, the backward op's implementation (the
    ``backward`` of ``declare_attention_ops``: same gradients, bitwise), except under
    ``create_graph=True``, where it calls the registered ``bwd_op`` as the op's formula does (whose
    gradients raise when differentiated: no double backward). The registered op's eager autograd
    path costs ~0.1 ms of host time a forward (the dispatcher, the redispatch below autograd, and
    torch.library re-filling the schema's arguments for ``setup_context``, quadratic in their
    number) and its backward op's dispatch ~25 us more; this one costs a ``Function.apply``.

    ``apply(q, k, v, bias, index, plan, backward_params)``: ``index`` is the layout's
    (kv_counts, kv_indices, q_counts, q_indices) as one tuple (no gradients; fewer arguments for
    ``apply`` to walk); ``forward(plan, q, k, v, bias, kv_counts, kv_indices)`` gives (out, lse),
    ``plan`` being the backend's launch plan of the call; ``backward_params`` are the backward op's
    parameters (those before ``compute_dbias``). Returns (out, lse), lse not differentiable."""

    def fwd(ctx, q, k, v, bias, index, plan, backward_params):
        out, lse = forward(plan, q, k, v, bias, index[0], index[1])
        _save(ctx, (q, k, v, bias, *index), (out, lse), backward_params)
        ctx.mark_non_differentiable(lse)
        ctx.set_materialize_grads(False)  # no zero-filled gradient of the LSE (ignored) per backward
        return out, lse

    through_op = _through(bwd_op)

    def bwd(ctx, grad_out, grad_lse):
        return _backward(ctx, through_op if torch.is_grad_enabled() else backward, grad_out) + (None,) * 3

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(fwd), "backward": staticmethod(bwd)})
