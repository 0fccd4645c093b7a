"""Launchers, forward and backward of the Triton linear cross-entropy (kernels in
``_triton_kernels``; autograd and ``torch.compile`` through the custom operator in
``_custom_ops``).

Memory: besides the outputs, the forward allocates ``(S, N)`` float32 partials (``S`` vocabulary
splits, at most a few dozen) and saves ``lse`` ``(N,)``; the backward allocates float32
accumulators for the gradients it needs (``(N, d)``, ``(V, d)``, ``(V,)``) and casts them to the
parameter dtypes at the end. No ``(N, V)`` tensor exists at any point.

Cost: forward = one logits GEMM; backward = logits recomputation plus the two gradient GEMMs,
so four GEMM-equivalents in all, with the gradient GEMMs accumulated through float32 atomics
(so the gradients are not bitwise deterministic from run to run).

Importing this module imports Triton; ``lmobjectives.ops`` only imports it on first use.
"""

from __future__ import annotations

import os

import torch
import triton
from torch import Tensor

from lmobjectives.ops._common import LossOptions
from lmobjectives.ops._triton_kernels import (
    COMPILE_OPTIONS,
    lce_backward_kernel,
    lce_forward_kernel,
)

__all__ = ["backward_grads", "forward_stats", "launch_config"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def launch_config(kind: str, *, upcast: bool, interpret: bool | None = None) -> dict[str, int]:
    """Tile sizes and launch options of the ``"forward"`` or ``"backward"`` kernel; ``upcast``
    is the kernels' ``UPCAST`` (float32 matmuls: float32 inputs). Small tiles under the (slow,
    CPU) interpreter (``interpret``, default: ``TRITON_INTERPRET=1``) so that tests with a few
    dozen rows still cover several blocks in every dimension.

    Chosen so that every variant compiles for sm_90 without register spills with Triton 3.6
    and 3.9 (``tests/ops/test_triton_resources.py``): half precision uses 128x128 tiles on
    tensor cores; the float32 ("ieee") matmuls need more registers, and at 128x128 the
    backward spilled 14 KB per thread, hence 64x64 tiles.
    """
    if _interpreting() if interpret is None else interpret:
        return dict(BLOCK_N=16, BLOCK_V=32, BLOCK_D=16)
    if kind == "forward":
        if upcast:
            return dict(BLOCK_N=64, BLOCK_V=64, BLOCK_D=32, num_warps=8, num_stages=2, **COMPILE_OPTIONS)
        return dict(BLOCK_N=128, BLOCK_V=128, BLOCK_D=64, num_warps=8, num_stages=3, **COMPILE_OPTIONS)
    if upcast:
        return dict(BLOCK_N=64, BLOCK_V=64, BLOCK_D=32, num_warps=8, num_stages=2, **COMPILE_OPTIONS)
    return dict(BLOCK_N=128, BLOCK_V=128, BLOCK_D=64, num_warps=8, num_stages=2, **COMPILE_OPTIONS)


def _upcast(x: Tensor) -> bool:
    """The kernels' UPCAST: float32 matmuls for float32 inputs, and always under the
    interpreter, whose bfloat16 ``tl.dot`` is wrong in Triton 3.x."""
    return x.dtype == torch.float32 or _interpreting()


def _target_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return 4
    return 4 * torch.cuda.get_device_properties(device).multi_processor_count


def forward_stats(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    options: LossOptions,
    *,
    need_argmax: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Per-token ``(lse, z_target, z_sum, argmax)`` for ``x`` ``(N, d)``, ``weight`` ``(V, d)``
    (``z_sum`` None without label smoothing, ``argmax`` None unless asked for).

    ``z_target`` is 0 for targets outside ``[0, V)`` (ignored positions included).
    """
    softcap, need_zsum = options.softcap, options.label_smoothing > 0.0
    n, d = x.shape
    v = weight.shape[0]
    cfg = launch_config("forward", upcast=_upcast(x))
    row_blocks = triton.cdiv(n, cfg["BLOCK_N"])
    vocab_blocks = triton.cdiv(v, cfg["BLOCK_V"])
    # Split the vocabulary when there are too few row blocks to fill the GPU.
    splits = min(vocab_blocks, max(1, triton.cdiv(_target_programs(x.device), max(row_blocks, 1))))
    blocks_per_split = triton.cdiv(vocab_blocks, splits)
    splits = triton.cdiv(vocab_blocks, blocks_per_split)  # every split gets >= 1 block

    f32 = dict(dtype=torch.float32, device=x.device)
    run_max = torch.empty(splits, n, **f32)  # (S, N)
    sumexp = torch.empty(splits, n, **f32)  # (S, N)
    z_target = torch.empty(splits, n, **f32)  # (S, N)
    z_sum = torch.empty(splits, n, **f32) if need_zsum else run_max  # (S, N)
    argmax = torch.empty(splits, n, dtype=torch.int64, device=x.device) if need_argmax else target  # (S, N)
    if n > 0:
        lce_forward_kernel[(row_blocks, splits)](
            x,
            weight,
            bias if bias is not None else x,
            target,
            run_max,
            sumexp,
            z_target,
            z_sum,
            argmax,
            n,
            v,
            d,
            x.stride(0),
            weight.stride(0),
            float(softcap) if softcap is not None else 1.0,
            blocks_per_split,
            HAS_BIAS=bias is not None,
            HAS_SOFTCAP=softcap is not None,
            NEED_ZSUM=need_zsum,
            NEED_ARGMAX=need_argmax,
            UPCAST=_upcast(x),
            **cfg,
        )
    total_max = run_max.amax(0)  # (N,)
    lse = total_max + (sumexp * (run_max - total_max).exp()).sum(0).log()  # (N,)
    best = None
    if need_argmax:
        best_split = run_max.argmax(0, keepdim=True)  # (1, N): first split holding the max
        best = argmax.gather(0, best_split).squeeze(0)  # (N,)
    return lse, z_target.sum(0), z_sum.sum(0) if need_zsum else None, best


def backward_grads(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    lse: Tensor,
    row_scale: Tensor,
    options: LossOptions,
    *,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for per-token upstream scales ``row_scale`` ``(N,)`` (0 at ignored tokens)."""
    label_smoothing, z_loss, softcap = options.label_smoothing, options.z_loss, options.softcap
    n, d = x.shape
    v = weight.shape[0]
    coef_a = row_scale * (1.0 + 2.0 * z_loss * lse)  # (N,)
    coef_b = row_scale * (1.0 - label_smoothing)  # (N,)
    coef_c = row_scale * (label_smoothing / v)  # (N,)
    f32 = dict(dtype=torch.float32, device=x.device)
    need_dx, need_dw, need_db = need
    dx = torch.zeros(n, d, **f32) if need_dx else coef_a  # (N, d)
    dw = torch.zeros(v, d, **f32) if need_dw else coef_a  # (V, d)
    db = torch.zeros(v, **f32) if need_db else coef_a  # (V,)
    cfg = launch_config("backward", upcast=_upcast(x))
    row_blocks = triton.cdiv(n, cfg["BLOCK_N"])
    vocab_blocks = triton.cdiv(v, cfg["BLOCK_V"])
    if n > 0 and any(need):
        lce_backward_kernel[(row_blocks * vocab_blocks,)](
            x,
            weight,
            bias if bias is not None else x,
            target,
            lse,
            coef_a,
            coef_b,
            coef_c,
            dx,
            dw,
            db,
            n,
            v,
            d,
            x.stride(0),
            weight.stride(0),
            float(softcap) if softcap is not None else 1.0,
            row_blocks,
            HAS_BIAS=bias is not None,
            HAS_SOFTCAP=softcap is not None,
            NEED_DX=need_dx,
            NEED_DW=need_dw,
            NEED_DB=need_db,
            UPCAST=_upcast(x),
            **cfg,
        )
    return (
        dx.to(x.dtype) if need_dx else None,
        dw.to(weight.dtype) if need_dw else None,
        db.to(bias.dtype) if need_db and bias is not None else None,
    )
