"""The GPU implementations (``vocab_chunked``, ``triton``) as custom operators, opaque to
``torch.compile``.

Both loop over chunks or launch Triton kernels, ``vocab_chunked`` probes torch once and lends
the ``dinput`` accumulator rows of the ``dweight`` gradient: things the compiler either
cannot trace (``fullgraph=True`` failed on the probe's data-dependent branch; Dynamo cannot
trace Triton's interpreter) or might rewrite (inductor re-plans buffers, and the borrowed
storage must stay exactly where it is). As ``torch.library.custom_op`` s with shape-only
("fake") versions and an autograd formula they run inside a compiled graph exactly as in
eager mode: same loss, same gradients, same memory. The ``chunked`` path is plain PyTorch and
stays traceable (the compiler may fuse it).

Two operators: ``lmobjectives::lce_forward`` ``-> (loss, lse, argmax)`` and
``lmobjectives::lce_backward`` ``-> (dinput, dweight, dbias)``, with an empty tensor for an
output that is not wanted (custom operators return tensors, not None). Each implementation
module provides ``forward_stats`` (per-token log-sum-exp, target logit, logit sum, argmax)
and ``backward_grads`` (gradients for per-token upstream scales); the loss and those scales
are computed here, once for both. This module also holds each implementation's entry point
(:func:`vocab_chunked_linear_cross_entropy`, :func:`triton_linear_cross_entropy`), so that the
imports point one way: ``_custom_ops`` imports the implementations, never the reverse.

The operators' schema takes tensors and primitives only, so :class:`~._common.LossOptions`
crosses it as its five fields: unpacked in :func:`linear_cross_entropy_op`, packed again in
each operator.

The operators are differentiable once: ``lce_backward``'s own autograd formula raises a clear
error if a second backward (``create_graph=True``, then differentiating the gradients) reaches
it, instead of the dispatcher's "no autograd formula" or a silently wrong result.
"""

import torch
from torch import Tensor

from lmobjectives._checks import check_choice
from lmobjectives.ops import _vocab_chunked
from lmobjectives.ops._common import (
    DOUBLE_BACKWARD_MESSAGE,
    LossOptions,
    accumulation_dtype,
    loss_from_stats,
    row_scale_for_reduction,
)

__all__ = [
    "linear_cross_entropy_op",
    "triton_linear_cross_entropy",
    "vocab_chunked_linear_cross_entropy",
]


def _module(impl: str):
    if impl == "triton":
        from lmobjectives.ops import _triton  # imports Triton: only on first use

        return _triton
    if impl == "vocab_chunked":
        return _vocab_chunked
    raise ValueError(f"no custom operator for impl={impl!r}")


def _impl_options(impl: str, chunk: int, epilogue: str, borrow: bool | None = None) -> dict:
    """The implementation's own keyword options: vocab_chunked's chunk and epilogue (and, for
    its backward, borrow); none for triton."""
    if impl != "vocab_chunked":
        return {}
    options = dict(chunk=chunk, epilogue=epilogue)
    if borrow is not None:
        options["borrow"] = borrow
    return options


# The type hints are the operators' schemas (torch.library reads them), hence no
# ``from __future__ import annotations`` in this module and typing.Optional in the signatures.
@torch.library.custom_op("lmobjectives::lce_forward", mutates_args=())
def _forward(
    impl: str,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk: int,
    epilogue: str,
    borrow: bool,
    want_argmax: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    del borrow  # a backward option, kept here so that the autograd context has it
    options = LossOptions(ignore_index, reduction, label_smoothing, z_loss, softcap)
    lse, z_target, z_sum, argmax = _module(impl).forward_stats(
        x,
        weight,
        bias,
        target,
        options,
        need_argmax=want_argmax,
        **_impl_options(impl, chunk, epilogue),
    )
    loss = loss_from_stats(lse, z_target, z_sum, target != ignore_index, options, vocab_size=weight.shape[0])
    if argmax is None:
        argmax = torch.empty(0, dtype=torch.int64, device=x.device)
    return loss, lse, argmax


@_forward.register_fake
def _forward_fake(
    impl,
    x,
    weight,
    bias,
    target,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss,
    softcap,
    chunk,
    epilogue,
    borrow,
    want_argmax,
):
    n, acc = x.shape[0], accumulation_dtype(x.dtype)
    loss = x.new_empty((n,) if reduction == "none" else (), dtype=acc)
    lse = x.new_empty((n,), dtype=acc)
    argmax = x.new_empty((n,) if want_argmax else (0,), dtype=torch.int64)
    return loss, lse, argmax


@torch.library.custom_op("lmobjectives::lce_backward", mutates_args=())
def _backward(
    impl: str,
    grad_loss: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    lse: Tensor,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk: int,
    epilogue: str,
    borrow: bool,
    need_dx: bool,
    need_dw: bool,
    need_db: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    options = LossOptions(ignore_index, reduction, label_smoothing, z_loss, softcap)
    row_scale = row_scale_for_reduction(target != ignore_index, reduction, lse.dtype, grad_loss)
    grads = _module(impl).backward_grads(
        x,
        weight,
        bias,
        target,
        lse,
        row_scale,
        options,
        need=(need_dx, need_dw, need_db),
        **_impl_options(impl, chunk, epilogue, borrow),
    )
    return tuple(x.new_empty(0) if g is None else g for g in grads)


@_backward.register_fake
def _backward_fake(
    impl,
    grad_loss,
    x,
    weight,
    bias,
    target,
    lse,
    ignore_index,
    reduction,
    label_smoothing,
    z_loss,
    softcap,
    chunk,
    epilogue,
    borrow,
    need_dx,
    need_dw,
    need_db,
):
    return (
        torch.empty_like(x) if need_dx else x.new_empty(0),
        torch.empty_like(weight) if need_dw else x.new_empty(0),
        torch.empty_like(bias) if need_db else x.new_empty(0),
    )


def _setup_context(ctx, inputs, output) -> None:
    impl, x, weight, bias, target, *args = inputs
    loss, lse, argmax = output
    ctx.save_for_backward(x, weight, bias, target, lse)
    ctx.impl, ctx.args = impl, args[:-1]  # the loss and impl options, all but want_argmax
    ctx.mark_non_differentiable(lse, argmax)


def _backward_formula(ctx, grad_loss, grad_lse, grad_argmax):
    del grad_lse, grad_argmax  # non-differentiable outputs
    x, weight, bias, target, lse = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[1:4]
    nones = (None,) * 10  # target and the options
    if not (need_dx or need_dw or need_db):
        return (None, None, None, None, *nones)
    dx, dw, db = _backward(ctx.impl, grad_loss, x, weight, bias, target, lse, *ctx.args, need_dx, need_dw, need_db)
    return (None, dx if need_dx else None, dw if need_dw else None, db if need_db else None, *nones)


_forward.register_autograd(_backward_formula, setup_context=_setup_context)


def _backward_setup_context(ctx, inputs, output) -> None:
    ctx.impl = inputs[0]


def _double_backward(ctx, grad_dx, grad_dw, grad_db):
    raise RuntimeError(DOUBLE_BACKWARD_MESSAGE.format(impl=ctx.impl))


_backward.register_autograd(_double_backward, setup_context=_backward_setup_context)


def linear_cross_entropy_op(
    impl: str,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    options: LossOptions,
    *,
    want_argmax: bool,
    chunk: int = 0,
    epilogue: str = "",
    borrow: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(loss, lse, argmax or None)`` of ``impl`` (``"triton"`` or ``"vocab_chunked"``, whose
    ``chunk``/``epilogue``/``borrow`` options are ignored by ``"triton"``), differentiable in
    ``x``, ``weight`` and ``bias``, one opaque operator to ``torch.compile``."""
    o = options  # the one place where the options become the operators' primitive arguments
    loss, lse, argmax = _forward(
        impl,
        x,
        weight,
        bias,
        target,
        o.ignore_index,
        o.reduction,
        o.label_smoothing,
        o.z_loss,
        o.softcap,
        chunk,
        epilogue,
        borrow,
        want_argmax,
    )
    return loss, lse, argmax if want_argmax else None


def vocab_chunked_linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    options: LossOptions,
    *,
    chunk_size: int | None,
    want_argmax: bool,
    epilogue: str | None = None,
    borrow_dweight: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Vocabulary-chunked forward and backward on flattened, validated tensors; same
    conventions as ``chunked_linear_cross_entropy``.

    Args:
        input: ``(N, d)``; weight: ``(V, d)``; target: ``(N,)`` int64; bias: ``(V,)`` or None.
        chunk_size: classes per chunk; None picks ``_vocab_chunked.default_vocab_chunk``.
        want_argmax: also return the per-token argmax.
        epilogue: ``"triton"`` or ``"torch"``; None picks ``_vocab_chunked.default_epilogue``.
        borrow_dweight: let the ``dinput`` accumulator borrow unwritten ``dweight`` rows (see
            the module docstring); False allocates a separate float32 ``(N/2, d)`` instead
            (no recomputed logits, ``2 N d`` more bytes).

    Returns:
        ``(loss, lse, argmax)``: loss as in ``reduction`` (float32/float64), ``lse`` ``(N,)``,
        ``argmax`` ``(N,)`` int64 or None.
    """
    n, v = input.shape[0], weight.shape[0]
    chunk = _vocab_chunked.default_vocab_chunk(n, v, input.dtype) if chunk_size is None else chunk_size
    if epilogue is None:
        epilogue = _vocab_chunked.default_epilogue(input.device, input.dtype)
    check_choice(epilogue, "epilogue", ("torch", "triton"))
    return linear_cross_entropy_op(
        "vocab_chunked",
        input,
        weight,
        bias,
        target,
        options,
        chunk=max(1, min(chunk, v)),
        epilogue=epilogue,
        borrow=borrow_dweight,
        want_argmax=want_argmax,
    )


def triton_linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    options: LossOptions,
    *,
    want_argmax: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Triton forward/backward on flattened, validated tensors; same conventions as
    ``chunked_linear_cross_entropy`` (float64 is refused before this, by ``_resolve_impl``)."""
    return linear_cross_entropy_op(
        "triton",
        input.contiguous(),
        weight.contiguous(),
        None if bias is None else bias.contiguous(),
        target.contiguous(),
        options,
        want_argmax=want_argmax,
    )
