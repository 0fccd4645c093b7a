"""Triton epilogues of the vocabulary-chunked linear cross-entropy (``_vocab_chunked.py``).

The GEMMs of that implementation run in cuBLAS; these kernels only touch the ``(N, C)`` logits
chunk it produced (``C`` vocabulary rows starting at ``v_offset``), one read (forward) or one
read plus one in-place write (backward), with the math in float32:

* ``forward_epilogue``: folds the chunk into the per-token running state -- max ``m``,
  ``s = sum exp(z - m)``, target logit, logit sum (label smoothing), first argmax -- exactly
  like one more block of an online log-sum-exp.
* ``backward_epilogue``: overwrites the chunk with ``dlogits`` in the input dtype::

      dz = a_i * exp(z - lse_i) - b_i * [v == t_i] - c_i        (times 1 - tanh^2 with softcap)
      a_i = r_i (1 + 2 lam lse_i),  b_i = r_i (1 - eps),  c_i = r_i eps / V,  r_i = row scale

  and 0 on rows whose scale ``r_i`` is 0 (ignored tokens).

``z`` is the logit plus the bias (added here in float32, not by the GEMM), capped with
``softcap * tanh(z / softcap)`` when a cap is set. Each program owns ``BLOCK_N`` whole rows and
walks the chunk in ``BLOCK_V`` columns, so no two programs touch the same element or the same
state entry. Row offsets are int64 (``N * C`` may exceed 2**31).

Importing this module imports Triton; ``_vocab_chunked`` imports it on first use.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl
from torch import Tensor

from lmobjectives.ops._triton_kernels import COMPILE_OPTIONS, _tanh

__all__ = ["backward_epilogue", "forward_epilogue", "launch_config"]


def launch_config(*, interpret: bool | None = None) -> dict[str, int]:
    """Rows per program, columns per step. Small under the (CPU) interpreter (``interpret``,
    default: ``TRITON_INTERPRET=1``) so that tests with a few dozen rows and columns still
    cover several programs and several steps."""
    if os.environ.get("TRITON_INTERPRET") == "1" if interpret is None else interpret:
        return dict(BLOCK_N=4, BLOCK_V=32)
    # 8 warps: no register spills on sm_90 (tests/ops/test_triton_resources.py).
    return dict(BLOCK_N=4, BLOCK_V=1024, num_warps=8, **COMPILE_OPTIONS)


@triton.jit
def _load_z(
    logits_ptr,
    bias_ptr,
    rows,
    cols,
    row_mask,
    col_mask,
    C,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
):
    """``(BLOCK_N, BLOCK_V)`` float32 ``(z, tanh)``: logits + bias, capped; ``tanh`` is
    ``tanh((logits + bias) / softcap)`` with a cap (else ``z`` again, unused)."""
    offs = rows[:, None] * C + cols[None, :]  # int64
    z = tl.load(logits_ptr + offs, mask=row_mask[:, None] & col_mask[None, :], other=0.0)
    z = z.to(tl.float32)
    if HAS_BIAS:
        z += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    th = z
    if HAS_SOFTCAP:
        th = _tanh(z / softcap)
        z = softcap * th
    return z, th


@triton.jit
def _forward_epilogue_kernel(
    logits_ptr,  # (N, C) logits chunk, input dtype, contiguous
    bias_ptr,  # (C,) bias of the chunk (unused without HAS_BIAS)
    target_ptr,  # (N,) int64 class indices into the full vocabulary
    max_ptr,  # (N,) float32 running max (in/out)
    sumexp_ptr,  # (N,) float32 running sum of exp(z - max) (in/out)
    ztarget_ptr,  # (N,) float32 target logit, accumulated over chunks (in/out)
    zsum_ptr,  # (N,) float32 sum of logits (in/out; only with NEED_ZSUM)
    argmax_ptr,  # (N,) int64 first argmax (in/out; only with NEED_ARGMAX)
    N,
    C,
    v_offset,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    NEED_ZSUM: tl.constexpr,
    NEED_ARGMAX: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) int64
    row_mask = rows < N
    target_col = tl.load(target_ptr + rows, mask=row_mask, other=-1) - v_offset  # (BLOCK_N,)

    run_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_target = tl.zeros((BLOCK_N,), dtype=tl.float32)
    z_sum = tl.zeros((BLOCK_N,), dtype=tl.float32)
    best = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for start in range(0, C, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)  # (BLOCK_V,) column within the chunk
        col_mask = cols < C
        z, th = _load_z(
            logits_ptr,
            bias_ptr,
            rows,
            cols,
            row_mask,
            col_mask,
            C,
            softcap,
            HAS_BIAS,
            HAS_SOFTCAP,
        )
        z = tl.where(col_mask[None, :], z, float("-inf"))
        tile_max = tl.max(z, axis=1)  # (BLOCK_N,)
        if NEED_ARGMAX:
            tile_arg = tl.argmax(z, axis=1).to(tl.int64) + start
            best = tl.where(tile_max > run_max, tile_arg, best)  # strict: first max wins
        new_max = tl.maximum(run_max, tile_max)
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(z - new_max[:, None]), axis=1)
        run_max = new_max
        is_target = (cols[None, :] == target_col[:, None]) & col_mask[None, :]
        z_target += tl.sum(tl.where(is_target, z, 0.0), axis=1)
        if NEED_ZSUM:
            z_sum += tl.sum(tl.where(col_mask[None, :], z, 0.0), axis=1)

    # Merge with the state of the previous chunks (-inf == -inf: scale 1, not exp(nan)).
    old_max = tl.load(max_ptr + rows, mask=row_mask, other=0.0)
    old_sum = tl.load(sumexp_ptr + rows, mask=row_mask, other=0.0)
    new_max = tl.maximum(old_max, run_max)
    old_scale = tl.where(old_max == new_max, 1.0, tl.exp(old_max - new_max))
    run_scale = tl.where(run_max == new_max, 1.0, tl.exp(run_max - new_max))
    tl.store(max_ptr + rows, new_max, mask=row_mask)
    tl.store(sumexp_ptr + rows, old_sum * old_scale + run_sum * run_scale, mask=row_mask)
    old_target = tl.load(ztarget_ptr + rows, mask=row_mask, other=0.0)
    tl.store(ztarget_ptr + rows, old_target + z_target, mask=row_mask)
    if NEED_ZSUM:
        old_zsum = tl.load(zsum_ptr + rows, mask=row_mask, other=0.0)
        tl.store(zsum_ptr + rows, old_zsum + z_sum, mask=row_mask)
    if NEED_ARGMAX:
        old_best = tl.load(argmax_ptr + rows, mask=row_mask, other=0)
        best = tl.where(run_max > old_max, best + v_offset, old_best)  # earlier chunk on ties
        tl.store(argmax_ptr + rows, best, mask=row_mask)


@triton.jit
def _backward_epilogue_kernel(
    logits_ptr,  # (N, C) logits chunk in, dlogits out (in place), input dtype, contiguous
    bias_ptr,  # (C,) bias of the chunk (unused without HAS_BIAS)
    target_ptr,  # (N,) int64 class indices into the full vocabulary
    lse_ptr,  # (N,) float32 log-sum-exp over the full vocabulary
    row_scale_ptr,  # (N,) float32 d(loss)/d(token loss); 0 at ignored tokens
    N,
    C,
    v_offset,
    softcap,
    smoothing,  # eps
    z_loss,  # lam
    smoothing_per_class,  # eps / V
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) int64
    row_mask = rows < N
    target_col = tl.load(target_ptr + rows, mask=row_mask, other=-1) - v_offset  # (BLOCK_N,)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    scale = tl.load(row_scale_ptr + rows, mask=row_mask, other=0.0)
    coef_a = scale * (1.0 + 2.0 * z_loss * lse)
    coef_b = scale * (1.0 - smoothing)
    coef_c = scale * smoothing_per_class
    active = scale != 0.0
    for start in range(0, C, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        col_mask = cols < C
        z, th = _load_z(
            logits_ptr,
            bias_ptr,
            rows,
            cols,
            row_mask,
            col_mask,
            C,
            softcap,
            HAS_BIAS,
            HAS_SOFTCAP,
        )
        dz = coef_a[:, None] * tl.exp(z - lse[:, None])
        dz -= tl.where(cols[None, :] == target_col[:, None], coef_b[:, None], 0.0)
        dz -= coef_c[:, None]
        if HAS_SOFTCAP:
            dz *= 1.0 - th * th
        dz = tl.where(active[:, None], dz, 0.0)
        offs = rows[:, None] * C + cols[None, :]
        tl.store(
            logits_ptr + offs,
            dz.to(logits_ptr.dtype.element_ty),
            mask=row_mask[:, None] & col_mask[None, :],
        )


def forward_epilogue(
    logits: Tensor,
    bias: Tensor | None,
    target: Tensor,
    v_offset: int,
    state: tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None],
    *,
    softcap: float | None,
) -> None:
    """Fold ``logits`` ``(N, C)`` (contiguous) into ``state = (max, sumexp, z_target, z_sum,
    argmax)``, each ``(N,)``, in place; ``z_sum``/``argmax`` may be None (not tracked)."""
    n, c = logits.shape
    run_max, sumexp, z_target, z_sum, argmax = state
    if n == 0 or c == 0:
        return
    cfg = launch_config()
    _forward_epilogue_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
        logits,
        logits if bias is None else bias,
        target,
        run_max,
        sumexp,
        z_target,
        run_max if z_sum is None else z_sum,
        target if argmax is None else argmax,
        n,
        c,
        v_offset,
        1.0 if softcap is None else float(softcap),
        HAS_BIAS=bias is not None,
        HAS_SOFTCAP=softcap is not None,
        NEED_ZSUM=z_sum is not None,
        NEED_ARGMAX=argmax is not None,
        **cfg,
    )


def backward_epilogue(
    logits: Tensor,
    bias: Tensor | None,
    target: Tensor,
    v_offset: int,
    lse: Tensor,
    row_scale: Tensor,
    *,
    softcap: float | None,
    label_smoothing: float,
    z_loss: float,
    vocab_size: int,
) -> None:
    """Overwrite ``logits`` ``(N, C)`` (contiguous) with ``dlogits`` (see the module
    docstring); ``lse`` and ``row_scale`` are ``(N,)`` float32."""
    n, c = logits.shape
    if n == 0 or c == 0:
        return
    cfg = launch_config()
    _backward_epilogue_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
        logits,
        logits if bias is None else bias,
        target,
        lse,
        row_scale,
        n,
        c,
        v_offset,
        1.0 if softcap is None else float(softcap),
        float(label_smoothing),
        float(z_loss),
        float(label_smoothing) / vocab_size,
        HAS_BIAS=bias is not None,
        HAS_SOFTCAP=softcap is not None,
        **cfg,
    )
