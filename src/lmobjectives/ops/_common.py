"""What every implementation of the linear cross-entropy shares: the loss options
(:class:`LossOptions`), the tensor checks, the accumulation dtype, the loss from per-token
statistics, the per-token upstream scales, and whether Triton is installed.

The import graph inside ``ops/`` points one way (``tests/ops/test_import_graph.py``)::

    __init__ -> linear_cross_entropy, tensor_parallel        (public functions)
    linear_cross_entropy -> _reference, _chunked, _custom_ops (lazily, per impl)
    tensor_parallel -> _chunked
    _custom_ops -> _vocab_chunked, _triton (lazily: it imports Triton)
    _vocab_chunked -> _vocab_chunked_kernels (lazily) -> _triton_kernels <- _triton
    every module -> _common (which imports only torch, lmobjectives.constants and
                             lmobjectives._checks)
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from dataclasses import dataclass

import torch
from torch import Tensor

from lmobjectives._checks import (
    check_choice,
    check_finite_float,
    check_int,
    check_probability,
)
from lmobjectives.constants import IGNORE_INDEX

__all__ = [
    "DOUBLE_BACKWARD_MESSAGE",
    "TRITON_AVAILABLE",
    "LossOptions",
    "accumulation_dtype",
    "backward_once",
    "cast_for_autocast",
    "check_target_range",
    "loss_from_stats",
    "row_scale_for_reduction",
    "validate_tensors",
]

_REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class LossOptions:
    """The loss options of :func:`lmobjectives.ops.linear_cross_entropy` (whose docstring gives
    the math), checked here once and passed as one argument to every implementation. The
    fields are in the order of the public keyword arguments and of the custom operators'
    schema (``_custom_ops``).

    >>> LossOptions(z_loss=1)
    LossOptions(ignore_index=-100, reduction='mean', label_smoothing=0.0, z_loss=1.0, softcap=None)
    >>> LossOptions(reduction="avg")
    Traceback (most recent call last):
    ValueError: reduction must be one of 'mean', 'sum', 'none', got 'avg'
    """

    ignore_index: int = IGNORE_INDEX
    """Target value that contributes neither loss nor gradient."""
    reduction: str = "mean"
    """``"mean"`` (over non-ignored tokens), ``"sum"`` or ``"none"``."""
    label_smoothing: float = 0.0
    """``eps`` in ``[0, 1]``."""
    z_loss: float = 0.0
    """``lam >= 0``, coefficient of ``lse**2``."""
    softcap: float | None = None
    """``cap > 0`` to use ``cap * tanh(logits / cap)``, or None."""

    def __post_init__(self) -> None:
        check_int(self.ignore_index, "ignore_index")
        check_choice(self.reduction, "reduction", _REDUCTIONS)
        smoothing = check_probability(self.label_smoothing, "label_smoothing")
        z_loss = check_finite_float(self.z_loss, "z_loss", low=0)
        softcap = check_finite_float(self.softcap, "softcap", low=0, low_open=True, allow_none=True)
        # Stored as Python floats (an int is accepted): the custom operators' schema says float.
        object.__setattr__(self, "label_smoothing", smoothing)  # frozen: set through object
        object.__setattr__(self, "z_loss", z_loss)
        object.__setattr__(self, "softcap", softcap)


TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None
"""Whether the optional dependency triton is installed (found without importing it)."""


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype accumulates in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_from_stats(
    lse: Tensor,
    z_target: Tensor,
    z_sum: Tensor | None,
    valid: Tensor,
    options: LossOptions,
    *,
    vocab_size: int,
) -> Tensor:
    """The loss from per-token statistics, all ``(N,)``: per token
    ``loss_i = (1-eps)(lse_i - z_target_i) + eps(lse_i - z_sum_i / V) + lam * lse_i**2``, 0 where
    ``valid`` is False; then ``"none"``: as is, ``"sum"``: the sum, ``"mean"``: the sum over
    max(1, number of valid tokens)."""
    eps, lam = options.label_smoothing, options.z_loss
    loss = (1.0 - eps) * (lse - z_target)  # (N,)
    if eps > 0.0:
        assert z_sum is not None
        loss = loss + eps * (lse - z_sum / vocab_size)
    if lam > 0.0:
        loss = loss + lam * lse.square()
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if options.reduction == "none":
        return loss
    total = loss.sum()
    if options.reduction == "sum":
        return total
    return total / valid.sum().clamp_min(1).to(loss.dtype)


def row_scale_for_reduction(
    valid: Tensor, reduction: str, dtype: torch.dtype, grad_loss: Tensor | None = None
) -> Tensor:
    """``(N,)`` d(reduced loss)/d(token loss) -- ``valid / max(1, num_valid)`` for ``"mean"``,
    ``valid`` otherwise -- times the upstream gradient ``grad_loss`` (0-dim, or ``(N,)`` for
    ``"none"``; None: 1)."""
    scale = valid.to(dtype)  # (N,)
    if reduction == "mean":
        scale = scale / valid.sum().clamp_min(1).to(dtype)
    if grad_loss is not None:
        scale = scale * grad_loss.to(dtype)
    return scale


def validate_tensors(input: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None) -> None:
    """Raise ``TypeError``/``ValueError`` naming the bad tensor and what is wrong with it (the
    other options are checked by :class:`LossOptions`)."""
    for name, tensor in (("input", input), ("weight", weight), ("target", target)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if weight.dtype != input.dtype:
        raise TypeError(f"weight dtype {weight.dtype} must match input dtype {input.dtype}")
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if input.dim() < 1:
        raise ValueError(f"input must have shape (..., d), got a {input.dim()}-d tensor")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape (V, d), got shape {tuple(weight.shape)}")
    if weight.shape[1] != input.shape[-1]:
        raise ValueError(
            f"weight has d={weight.shape[1]} but input has d={input.shape[-1]} "
            f"(weight {tuple(weight.shape)}, input {tuple(input.shape)})"
        )
    if weight.shape[0] < 1:
        raise ValueError(f"weight must have at least one row (class), got {tuple(weight.shape)}")
    if target.shape != input.shape[:-1]:
        raise ValueError(f"target shape {tuple(target.shape)} must equal input.shape[:-1] = {tuple(input.shape[:-1])}")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        if bias.dtype != input.dtype:
            raise TypeError(f"bias dtype {bias.dtype} must match input dtype {input.dtype}")
    devices = {t.device for t in (input, weight, target) + ((bias,) if bias is not None else ())}
    if len(devices) != 1:
        raise ValueError(f"input, weight, target (and bias) must share one device, got {devices}")


def check_target_range(target: Tensor, *, vocab_size: int, ignore_index: int, vocab_offset: int = 0) -> None:
    """Fail if a target is neither ``ignore_index`` nor in ``[offset, offset + vocab_size)``.

    On CPU in eager mode this raises a ``ValueError`` showing a bad value (reading a CPU tensor
    is not a device synchronisation). On CUDA, and under ``torch.compile``, it is
    ``torch._assert_async``: no host sync, but a failure surfaces later as a device-side
    assertion (a ``RuntimeError`` that poisons the CUDA context, like ``F.cross_entropy``'s).
    """
    lo, hi = vocab_offset, vocab_offset + vocab_size
    ok = (target == ignore_index) | ((target >= lo) & (target < hi))
    message = f"target values must be in [{lo}, {hi}) or equal ignore_index={ignore_index}"
    if target.device.type == "cpu" and not torch.compiler.is_compiling():
        if not bool(ok.all()):
            bad = target[~ok].flatten()[0].item()
            raise ValueError(f"{message}; found {bad}")
    else:
        torch._assert_async(ok.all(), message)


def cast_for_autocast(
    input: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, contextlib.AbstractContextManager]:
    """``(input, weight, bias, context)``. Under ``torch.autocast`` for ``input``'s device, as
    ``F.linear`` does there: floating arguments other than float64 cast to the autocast dtype
    (differentiably, so float32 master weights get float32 gradients), and a context that
    turns autocast off for the computation on them. Otherwise the arguments unchanged and a
    null context."""
    device_type = input.device.type
    if not torch.is_autocast_enabled(device_type):
        return input, weight, bias, contextlib.nullcontext()
    dtype = torch.get_autocast_dtype(device_type)

    def cast(a: Tensor | None) -> Tensor | None:
        if a is None or not a.is_floating_point() or a.dtype == torch.float64:
            return a
        return a.to(dtype)

    return cast(input), cast(weight), cast(bias), torch.autocast(device_type, enabled=False)


DOUBLE_BACKWARD_MESSAGE = (
    "linear_cross_entropy is differentiable once: its backward (impl={impl!r}) has no "
    "gradient, so a double backward (create_graph=True, then differentiating the gradients) "
    "is not supported; use impl='reference' for higher-order gradients"
)
"""The error every implementation but the reference raises when a second backward reaches it."""


class _NoSecondBackward(torch.autograd.Function):
    """Identity on the first-order gradients, tied to what they depend on; its backward raises."""

    @staticmethod
    def forward(ctx, message: str, count: int, *tensors: Tensor):
        ctx.message = message
        return tuple(t.view_as(t) for t in tensors[:count])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.message)


def backward_once(impl: str):
    """Decorator for an ``autograd.Function.backward`` that is differentiable once. The
    backward runs without recording; under ``create_graph=True`` its gradients are tied to the
    upstream gradients and the saved tensors that require grad by a node whose backward raises
    :data:`DOUBLE_BACKWARD_MESSAGE` -- differentiating them (with respect to anything they
    depend on) fails clearly, never silently (``torch.autograd.function.once_differentiable``
    ties them to detached copies instead, so ``autograd.grad`` skips that node and reports the
    inputs as unused or returns None)."""

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grad_outputs):
            deps = (
                [t for t in (*grad_outputs, *ctx.saved_tensors) if isinstance(t, Tensor) and t.requires_grad]
                if torch.is_grad_enabled()
                else []
            )
            with torch.no_grad():
                grads = backward(ctx, *grad_outputs)
            present = [g for g in grads if isinstance(g, Tensor)]
            if not deps or not present:
                return grads
            message = DOUBLE_BACKWARD_MESSAGE.format(impl=impl)
            tied = iter(_NoSecondBackward.apply(message, len(present), *present, *deps))
            return tuple(next(tied) if isinstance(g, Tensor) else g for g in grads)

        return wrapper

    return decorate
