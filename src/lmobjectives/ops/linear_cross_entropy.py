"""Fused linear + cross-entropy: the loss of ``input @ weight.T`` without the ``(N, V)`` logits.

Math (per token ``i``, ``N`` tokens, vocabulary ``V``, ``eps = label_smoothing``,
``lam = z_loss``, ``cap = softcap``)::

    logits_i = input_i @ weight.T + bias                       # (V,)
    z_i      = cap * tanh(logits_i / cap)   if cap else logits_i
    lse_i    = log(sum_v exp(z_iv))
    loss_i   = (1 - eps) * (lse_i - z_i[t_i])                  # cross-entropy
             + eps * (lse_i - mean_v z_iv)                      # label smoothing
             + lam * lse_i ** 2                                 # z-loss (PaLM), on capped logits
    loss_i   = 0                              where t_i == ignore_index

    reduction="mean": sum_i loss_i / max(1, #{i: t_i != ignore_index})
    reduction="sum" : sum_i loss_i
    reduction="none": loss_i, shaped like target

With ``eps = lam = 0`` and no cap this is ``F.cross_entropy(input @ weight.T + bias, target)``,
and ``eps > 0`` matches ``F.cross_entropy(..., label_smoothing=eps)``. When every token is
ignored the mean is 0 and every gradient is 0 (never NaN).

Worked example (check it by hand): ``V = 2``, ``weight = [[1, 0], [0, 1]]``, one token
``input = [[0, 0]]`` so both logits are 0, ``lse = log 2``; with ``target = [0]`` the loss is
``log 2 = 0.6931``; with ``z_loss = 1`` it is ``log 2 + (log 2)**2 = 1.1736``; with
``target = [-100]`` it is ``0``.

Implementations (``impl=``, see :class:`Impl`): ``"reference"`` materialises the logits;
``"chunked"`` streams over token chunks in PyTorch (CPU default); ``"triton"`` is a blocked
Triton kernel pair for CUDA; ``"vocab_chunked"`` streams over vocabulary chunks with cuBLAS
GEMMs and small epilogue kernels (Triton on CUDA); ``"auto"`` picks ``"vocab_chunked"`` for
CUDA tensors (not float64), otherwise ``"chunked"``. Which GPU design is faster is for the GPU
benchmark to say (``benchmarks/linear_cross_entropy_gpu.py``); ``"auto"`` follows it.

``torch.compile``: ``"chunked"`` is plain PyTorch and is traced (and may be fused);
``"triton"`` and ``"vocab_chunked"`` are each one custom operator (``_custom_ops``), opaque to
the compiler, so a compiled graph (``fullgraph=True`` included) runs them exactly as eager
mode does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor

from lmobjectives._checks import check_choice, check_positive_int
from lmobjectives.constants import IGNORE_INDEX
from lmobjectives.ops._common import (
    TRITON_AVAILABLE,
    LossOptions,
    cast_for_autocast,
    check_target_range,
    validate_tensors,
)

__all__ = [
    "Impl",
    "LinearCrossEntropyOutput",
    "linear_cross_entropy",
    "linear_cross_entropy_with_stats",
]


class Impl(StrEnum):
    """Which implementation :func:`linear_cross_entropy` runs."""

    REFERENCE = "reference"
    """Plain PyTorch: builds the full ``(N, V)`` logits. Test oracle; small problems only."""
    CHUNKED = "chunked"
    """PyTorch over chunks of tokens with a custom autograd.Function (any device)."""
    TRITON = "triton"
    """Triton kernels blocked over tokens and vocabulary (CUDA, or CPU under
    ``TRITON_INTERPRET=1``); never writes an ``(N, V)`` tensor."""
    VOCAB_CHUNKED = "vocab_chunked"
    """Chunks of classes (rows of ``weight``): each chunk's logits come from a cuBLAS GEMM in
    the input dtype and are reduced by an epilogue kernel (Triton on CUDA, torch elsewhere);
    the backward recomputes them, writes ``dweight`` chunk by chunk and accumulates ``dinput``
    in float32. Four GEMMs, one ``(N, chunk)`` logits buffer (about 64 MiB); any device."""
    AUTO = "auto"
    """``VOCAB_CHUNKED`` for non-float64 CUDA tensors (its cost is predictable: four cuBLAS GEMMs
    at the memory floor; the fused ``TRITON`` design has yet to be measured on a GPU), else
    ``CHUNKED``."""


@dataclass(frozen=True)
class LinearCrossEntropyOutput:
    """Loss plus per-token statistics from :func:`linear_cross_entropy_with_stats`.

    Token-shaped fields have the shape of ``target`` (``input.shape[:-1]``).
    """

    loss: Tensor
    """The loss as :func:`linear_cross_entropy` returns it (differentiable)."""
    lse: Tensor
    """Log-sum-exp of the (capped) logits per token, float32 (float64 for float64 input),
    detached; also defined at ignored positions."""
    correct: Tensor
    """bool, ``argmax_v z_v == target`` per token; False at ignored positions."""
    num_valid: Tensor
    """0-dim int64, the number of tokens whose target is not ``ignore_index``."""

    @property
    def accuracy(self) -> Tensor:
        """0-dim float32: ``correct.sum() / max(1, num_valid)`` (0 when every token is ignored)."""
        return self.correct.sum().float() / self.num_valid.clamp_min(1).float()


def _resolve_impl(impl: str | Impl, device: torch.device, dtype: torch.dtype = torch.float32) -> Impl:
    check_choice(impl, "impl", [i.value for i in Impl])
    impl = Impl(impl)
    if impl == Impl.AUTO:
        on_gpu = device.type == "cuda" and dtype != torch.float64
        return Impl.VOCAB_CHUNKED if on_gpu else Impl.CHUNKED
    if impl == Impl.TRITON:
        if dtype == torch.float64:  # the kernels accumulate in float32
            raise TypeError("impl='triton' supports float16, bfloat16 and float32 inputs, not float64")
        if not TRITON_AVAILABLE:
            raise ValueError("impl='triton' needs the optional dependency triton (pip install triton)")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got device {device}")
    return impl


def _run(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    options: LossOptions,
    *,
    impl: str | Impl,
    chunk_size: int | None,
    check_targets: bool,
    want_argmax: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Validate, flatten, dispatch. Returns ``(loss, lse, argmax, flat_target)`` with the
    token-shaped tensors flattened to ``(N,)``."""
    input, weight, bias, precision = cast_for_autocast(input, weight, bias)
    with precision:
        validate_tensors(input, weight, target, bias)
        check_positive_int(chunk_size, "chunk_size", allow_none=True)
        resolved = _resolve_impl(impl, input.device, input.dtype)
        x = input.reshape(-1, input.shape[-1])  # (N, d)
        t = target.reshape(-1).long()  # (N,)
        if check_targets:
            check_target_range(t, vocab_size=weight.shape[0], ignore_index=options.ignore_index)
        if resolved == Impl.REFERENCE:
            from lmobjectives.ops._reference import reference_linear_cross_entropy

            loss, lse, argmax = reference_linear_cross_entropy(x, weight, t, bias, options)
        elif resolved == Impl.CHUNKED:
            from lmobjectives.ops._chunked import chunked_linear_cross_entropy

            loss, lse, argmax = chunked_linear_cross_entropy(
                x.contiguous(),
                weight,
                t,
                bias,
                options,
                chunk_size=chunk_size,
                want_argmax=want_argmax,
            )
        elif resolved == Impl.VOCAB_CHUNKED:
            from lmobjectives.ops._custom_ops import vocab_chunked_linear_cross_entropy

            loss, lse, argmax = vocab_chunked_linear_cross_entropy(
                x, weight, t, bias, options, chunk_size=chunk_size, want_argmax=want_argmax
            )
        else:
            from lmobjectives.ops._custom_ops import triton_linear_cross_entropy

            loss, lse, argmax = triton_linear_cross_entropy(x, weight, t, bias, options, want_argmax=want_argmax)
        return loss, lse, argmax, t


def linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: str | Impl = Impl.AUTO,
    chunk_size: int | None = None,
    check_targets: bool = True,
) -> Tensor:
    """Cross-entropy of ``input @ weight.T (+ bias)`` against ``target``, without the logits.

    Drop-in for ``torch.nn.functional.linear_cross_entropy(input, linear_weight, target)``
    (the bias is the keyword ``bias=`` here); the math is in this module's docstring.

    Args:
        input: ``(..., d)`` hidden states (float16, bfloat16, float32 or float64).
        weight: ``(V, d)`` classifier (unembedding) weight, same dtype as ``input``.
        target: ``(...)`` integer class indices, ``input.shape[:-1]``.
        bias: optional ``(V,)`` bias, same dtype as ``input``.
        ignore_index: target value that contributes neither loss nor gradient.
        reduction: ``"mean"`` (over non-ignored tokens), ``"sum"`` or ``"none"``.
        label_smoothing: ``eps`` in ``[0, 1]``.
        z_loss: ``lam >= 0``, coefficient of ``lse**2``.
        softcap: ``cap > 0`` to use ``cap * tanh(logits / cap)``, or None.
        impl: ``"auto"``, ``"chunked"``, ``"triton"``, ``"vocab_chunked"`` or
            ``"reference"`` (:class:`Impl`).
        chunk_size: tokens per chunk for ``impl="chunked"``, classes per chunk for
            ``impl="vocab_chunked"``; None sizes a logits block to about 64 MiB.
        check_targets: verify every target is ``ignore_index`` or in ``[0, V)``; see
            :func:`check_target_range` (an eager ``ValueError`` on CPU, an async device
            assertion on CUDA). With False, the chunked and Triton paths give an
            out-of-range target a target logit of 0 (never an out-of-bounds access) and the
            reference path raises from ``gather``.

    Returns:
        The loss: 0-dim for ``"mean"``/``"sum"``, ``target.shape`` for ``"none"`` (0 at
        ignored positions). float32 for half/float32 inputs, float64 for float64 inputs.
        Gradients flow to ``input``, ``weight`` and ``bias`` (accumulated in float32, returned
        in their own dtypes); none are computed for tensors that do not require grad.

    Under ``torch.autocast`` it behaves as ``F.linear`` does there: float32 (and other
    non-float64) ``input``, ``weight`` and ``bias`` are cast to the autocast dtype first, so
    the products run in that dtype and float32 master weights still get float32 gradients.

    Example::

        >>> w = torch.eye(2)
        >>> linear_cross_entropy(torch.zeros(1, 2), w, torch.tensor([0]))
        tensor(0.6931)
    """
    options = LossOptions(ignore_index, reduction, label_smoothing, z_loss, softcap)
    loss, _, _, _ = _run(
        input,
        weight,
        target,
        bias,
        options,
        impl=impl,
        chunk_size=chunk_size,
        check_targets=check_targets,
        want_argmax=False,
    )
    return loss.reshape(target.shape) if reduction == "none" else loss


def linear_cross_entropy_with_stats(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: str | Impl = Impl.AUTO,
    chunk_size: int | None = None,
    check_targets: bool = True,
) -> LinearCrossEntropyOutput:
    """Same loss as :func:`linear_cross_entropy` plus per-token log-sum-exp and argmax
    accuracy from the same pass (the argmax costs one extra read of each logits block).

    Arguments are those of :func:`linear_cross_entropy`. Per-token losses with gradients are
    ``reduction="none"``.

    Example::

        >>> out = linear_cross_entropy_with_stats(
        ...     torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), torch.eye(2),
        ...     torch.tensor([0, 0, -100]))
        >>> out.correct, out.num_valid, out.accuracy
        (tensor([ True, False, False]), tensor(2), tensor(0.5000))
    """
    options = LossOptions(ignore_index, reduction, label_smoothing, z_loss, softcap)
    loss, lse, argmax, flat_target = _run(
        input,
        weight,
        target,
        bias,
        options,
        impl=impl,
        chunk_size=chunk_size,
        check_targets=check_targets,
        want_argmax=True,
    )
    valid = flat_target != ignore_index  # (N,)
    assert argmax is not None
    correct = (argmax == flat_target) & valid  # (N,)
    if reduction == "none":
        loss = loss.reshape(target.shape)
    return LinearCrossEntropyOutput(
        loss=loss,
        lse=lse.reshape(target.shape),
        correct=correct.reshape(target.shape),
        num_valid=valid.sum(),
    )
