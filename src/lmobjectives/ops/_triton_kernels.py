"""Triton kernels for linear cross-entropy; launched from ``_triton.py``.

Neither kernel writes a logits-sized tensor: each program computes one ``(BLOCK_N, BLOCK_V)``
tile of logits in registers by looping over the hidden dimension in ``BLOCK_D`` steps and
reduces it on the spot.

* ``lce_forward_kernel``: grid ``(row blocks, vocabulary splits)``. Each program walks its
  split's vocabulary blocks with an online log-sum-exp and writes, per row and split, the
  running max ``m``, the sum ``s = sum exp(z - m)``, the target logit, the logit sum and the
  argmax -- ``(S, N)`` partials that the launcher combines (``S`` is small).
* ``lce_backward_kernel``: grid ``row blocks x vocabulary blocks``. Each program recomputes its
  logits tile, forms ``dlogits`` in registers::

      dz = a_i * exp(z - lse_i) - b_i * [v == t_i] - c_i      (times 1 - tanh^2 with softcap)

  and multiplies it straight into both gradients, ``dinput[rows] += dz @ W[cols]`` and
  ``dweight[cols] += dz.T @ input[rows]``, with float32 atomic adds. The matmuls run on the
  input dtype (bf16/fp16 tensor cores) with float32 accumulation.

All pointer offsets are int64 (``rows``/``cols`` are cast before multiplying by strides), so
``N * V`` and ``V * d`` beyond 2**31 are safe.

``UPCAST`` runs the matmuls in float32 with ``input_precision="ieee"``: used for float32
inputs (matching cuBLAS float32 rather than TF32) and under ``TRITON_INTERPRET=1``, whose
bfloat16 ``tl.dot`` is wrong in Triton 3.x.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Compile options every launch passes (besides tiles, warps and stages): fused multiply-adds
# on, as Triton did by default up to 3.9 (3.10 turns them off unless asked).
COMPILE_OPTIONS = dict(enable_fp_fusion=True)


@triton.jit
def _tanh(x):
    # tanh via exp: exact limits at +-inf (exp overflows to inf -> 1, underflows to 0 -> -1).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _logits_tile(
    x_ptr,
    w_ptr,
    b_ptr,
    rows,
    cols,
    N,
    V,
    D,
    stride_x,
    stride_w,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``(BLOCK_N, BLOCK_V)`` float32 tile ``input[rows] @ weight[cols].T + bias[cols]``."""
    row_mask = rows < N
    col_mask = cols < V
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for k in range(0, D, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        k_mask = ks < D
        x = tl.load(
            x_ptr + rows[:, None] * stride_x + ks[None, :],
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_D)
        w = tl.load(
            w_ptr + cols[:, None] * stride_w + ks[None, :],
            mask=col_mask[:, None] & k_mask[None, :],
            other=0.0,
        )  # (BLOCK_V, BLOCK_D)
        if UPCAST:
            acc = tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def lce_forward_kernel(
    x_ptr,  # (N, D) input
    w_ptr,  # (V, D) weight
    b_ptr,  # (V,) bias (unused without HAS_BIAS)
    target_ptr,  # (N,) int64
    max_ptr,  # (S, N) float32 out: max_v z over the split
    sumexp_ptr,  # (S, N) float32 out: sum_v exp(z - max)
    ztarget_ptr,  # (S, N) float32 out: z[target] if the target is in the split, else 0
    zsum_ptr,  # (S, N) float32 out: sum_v z (only with NEED_ZSUM)
    argmax_ptr,  # (S, N) int64 out: first argmax over the split (only with NEED_ARGMAX)
    N,
    V,
    D,
    stride_x,
    stride_w,
    softcap,
    blocks_per_split,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    NEED_ZSUM: tl.constexpr,
    NEED_ARGMAX: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1).to(tl.int64)
    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) int64
    row_mask = rows < N
    target = tl.load(target_ptr + rows, mask=row_mask, other=-1)  # (BLOCK_N,)

    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_target = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    best = tl.zeros((BLOCK_N,), dtype=tl.int64)

    v_begin = split * blocks_per_split * BLOCK_V
    num_blocks = tl.minimum(blocks_per_split, tl.cdiv(V - v_begin, BLOCK_V))
    for j in range(0, num_blocks):
        cols = v_begin + j * BLOCK_V + tl.arange(0, BLOCK_V)  # (BLOCK_V,) int64
        col_mask = cols < V
        z = _logits_tile(
            x_ptr,
            w_ptr,
            b_ptr,
            rows,
            cols,
            N,
            V,
            D,
            stride_x,
            stride_w,
            HAS_BIAS,
            UPCAST,
            BLOCK_N,
            BLOCK_V,
            BLOCK_D,
        )  # (BLOCK_N, BLOCK_V)
        if HAS_SOFTCAP:
            z = softcap * _tanh(z / softcap)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        tile_max = tl.max(z, axis=1)  # (BLOCK_N,)
        if NEED_ARGMAX:
            tile_arg = tl.argmax(z, axis=1).to(tl.int64) + v_begin + j * BLOCK_V
            best = tl.where(tile_max > run_max, tile_arg, best)  # strict: first max wins
        new_max = tl.maximum(run_max, tile_max)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
        # col_mask: a target past V (check_targets=False) must not pick a padded -inf column.
        is_target = (cols[None, :] == target[:, None]) & col_mask[None, :]
        z_target += tl.sum(tl.where(is_target, z, 0.0), axis=1)
        if NEED_ZSUM:
            z_sum += tl.sum(tl.where(col_mask[None, :], z, 0.0), axis=1)

    out = split * N + rows
    tl.store(max_ptr + out, run_max, mask=row_mask)
    tl.store(sumexp_ptr + out, run_sum, mask=row_mask)
    tl.store(ztarget_ptr + out, z_target, mask=row_mask)
    if NEED_ZSUM:
        tl.store(zsum_ptr + out, z_sum, mask=row_mask)
    if NEED_ARGMAX:
        tl.store(argmax_ptr + out, best, mask=row_mask)


@triton.jit
def lce_backward_kernel(
    x_ptr,  # (N, D) input
    w_ptr,  # (V, D) weight
    b_ptr,  # (V,) bias (unused without HAS_BIAS)
    target_ptr,  # (N,) int64
    lse_ptr,  # (N,) float32
    coef_a_ptr,  # (N,) float32: row_scale * (1 + 2 z_loss lse)
    coef_b_ptr,  # (N,) float32: row_scale * (1 - label_smoothing)
    coef_c_ptr,  # (N,) float32: row_scale * label_smoothing / V
    dx_ptr,  # (N, D) float32 accumulator (only with NEED_DX)
    dw_ptr,  # (V, D) float32 accumulator (only with NEED_DW)
    db_ptr,  # (V,) float32 accumulator (only with NEED_DB)
    N,
    V,
    D,
    stride_x,
    stride_w,
    softcap,
    num_row_blocks,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_DW: tl.constexpr,
    NEED_DB: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Row blocks vary fastest: programs running together share one weight tile (L2 reuse).
    pid = tl.program_id(0)
    pid_n = pid % num_row_blocks
    pid_v = pid // num_row_blocks
    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) int64
    cols = pid_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)  # (BLOCK_V,) int64
    row_mask = rows < N
    col_mask = cols < V

    logits = _logits_tile(
        x_ptr,
        w_ptr,
        b_ptr,
        rows,
        cols,
        N,
        V,
        D,
        stride_x,
        stride_w,
        HAS_BIAS,
        UPCAST,
        BLOCK_N,
        BLOCK_V,
        BLOCK_D,
    )  # (BLOCK_N, BLOCK_V)
    if HAS_SOFTCAP:
        th = _tanh(logits / softcap)
        z = softcap * th
    else:
        z = logits
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    coef_a = tl.load(coef_a_ptr + rows, mask=row_mask, other=0.0)
    coef_b = tl.load(coef_b_ptr + rows, mask=row_mask, other=0.0)
    coef_c = tl.load(coef_c_ptr + rows, mask=row_mask, other=0.0)
    target = tl.load(target_ptr + rows, mask=row_mask, other=-1)

    dz = coef_a[:, None] * tl.exp(z - lse[:, None])
    dz -= tl.where(cols[None, :] == target[:, None], coef_b[:, None], 0.0)
    dz -= coef_c[:, None]
    if HAS_SOFTCAP:
        dz *= 1.0 - th * th
    dz = tl.where(row_mask[:, None] & col_mask[None, :], dz, 0.0)  # (BLOCK_N, BLOCK_V) fp32

    if NEED_DB:
        tl.atomic_add(db_ptr + cols, tl.sum(dz, axis=0), mask=col_mask)
    if UPCAST:
        dz_mm = dz
    else:
        dz_mm = dz.to(x_ptr.dtype.element_ty)
    for k in range(0, D, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        k_mask = ks < D
        if NEED_DX:
            w = tl.load(
                w_ptr + cols[:, None] * stride_w + ks[None, :],
                mask=col_mask[:, None] & k_mask[None, :],
                other=0.0,
            )  # (BLOCK_V, BLOCK_D)
            if UPCAST:
                dx_part = tl.dot(dz_mm, w.to(tl.float32), input_precision="ieee")
            else:
                dx_part = tl.dot(dz_mm, w)  # (BLOCK_N, BLOCK_D)
            tl.atomic_add(
                dx_ptr + rows[:, None] * D + ks[None, :],
                dx_part,
                mask=row_mask[:, None] & k_mask[None, :],
            )
        if NEED_DW:
            x = tl.load(
                x_ptr + rows[:, None] * stride_x + ks[None, :],
                mask=row_mask[:, None] & k_mask[None, :],
                other=0.0,
            )  # (BLOCK_N, BLOCK_D)
            if UPCAST:
                dw_part = tl.dot(tl.trans(dz_mm), x.to(tl.float32), input_precision="ieee")
            else:
                dw_part = tl.dot(tl.trans(dz_mm), x)  # (BLOCK_V, BLOCK_D)
            tl.atomic_add(
                dw_ptr + cols[:, None] * D + ks[None, :],
                dw_part,
                mask=col_mask[:, None] & k_mask[None, :],
            )
