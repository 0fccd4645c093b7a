"""Chunked PyTorch linear cross-entropy (the CPU path and the fallback without Triton).

The tokens are processed ``chunk_size`` rows at a time, so only one ``(chunk_size, V)`` block of
logits exists at any moment (two with ``softcap``); the full ``(N, V)`` logits never do.

Gradient strategy:

* ``reduction="mean"`` / ``"sum"`` with GEMMs in the accumulation dtype (always on CPU; float32
  and float64 inputs anywhere): the upstream gradient is one scalar, so the forward computes
  the gradients for an upstream gradient of 1 while each logits block is still in memory
  (three GEMMs per chunk: logits, ``dinput``, ``dweight``) and keeps them in the accumulation
  dtype; the backward multiplies them by the scalar and casts to the parameters' dtypes, so a
  half-precision gradient is rounded once, after the upstream gradient (an fp16 loss scale
  included) is applied. This is the three-GEMM floor and needs no second pass over the
  vocabulary. The price with half-precision inputs: the saved gradients are float32 (twice the
  bytes of the half-precision gradients) between forward and backward.
* ``reduction="none"``, and half-precision GEMMs (CUDA): every token has its own upstream
  gradient, or ``dlogits`` would be rounded to half precision before the upstream gradient is
  known (an fp16 gradient of a mean over many tokens underflows unless the loss scale is applied
  first); the forward keeps only the per-token log-sum-exp and the backward recomputes the
  logits block by block (four GEMMs in all).

The backward is differentiable once (``_common.backward_once``): a double backward through it
raises instead of returning wrong second-order gradients.

Gradient of one token's loss with respect to its (capped) logits ``z`` (see
:func:`lmobjectives.ops.linear_cross_entropy` for the loss)::

    dloss_i/dz_iv = p_iv * (1 + 2 * lam * lse_i) - (1 - eps) * [v == t_i] - eps / V,
    p_iv = exp(z_iv - lse_i),

times ``1 - tanh(logits_iv / softcap)**2`` when ``softcap`` is set, times the per-token upstream
scale ``row_scale_i`` (0 for ignored tokens; ``1/num_valid`` for ``"mean"``).

Per block, besides the GEMMs: the target logit (a gather), the row max, ``softmax`` in place
(one fused kernel that works row by row in cache), the largest probability (``lse = max -
log(max p)``; it is at least ``1/V``, so it never underflows), the one-hot term (a scatter), and,
where the GEMMs run in the accumulation dtype, the row scale applied to the ``(C, d)`` GEMM
operand and result rather than to the ``(C, V)`` block. Each further option adds a pass
(``z_sum`` and ``eps / V`` for label smoothing, the factor for z-loss, ``1 - tanh**2`` for the
softcap, the argmax for ``want_argmax``). ``benchmarks/linear_cross_entropy_cpu.py`` compares a
step with its three GEMMs alone.

On CPU the GEMMs run in the accumulation dtype (float32; float64 for float64 inputs), because
CPU half-precision matmuls are emulated and slow; on CUDA they run in the input dtype with the
softmax math in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmobjectives.ops._common import (
    LossOptions,
    accumulation_dtype,
    backward_once,
    loss_from_stats,
    row_scale_for_reduction,
)

__all__ = ["chunked_linear_cross_entropy", "default_chunk_size"]

_CHUNK_BYTES = 64 * 2**20
"""Target size of one ``(chunk_size, V)`` logits block; measured best on a 2-core x86 CPU at
N x d x V = 4096 x 512 x 32000 (see benchmarks/linear_cross_entropy_cpu.py)."""


def default_chunk_size(num_tokens: int, vocab_size: int, dtype: torch.dtype) -> int:
    """Rows per chunk so that one logits block is about ``_CHUNK_BYTES`` (at least 1 row)."""
    row_bytes = vocab_size * torch.finfo(accumulation_dtype(dtype)).bits // 8
    return max(1, min(num_tokens, _CHUNK_BYTES // row_bytes))


class _Problem:
    """Tensors and options shared by every chunk of one call (casts done once)."""

    def __init__(
        self,
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        target_mask: Tensor,
        options: LossOptions,
        *,
        chunk_size: int,
        total_vocab: int | None = None,
    ) -> None:
        """``target``: ``(N,)`` class index into this ``weight``'s rows; ``target_mask``:
        ``(N,)`` bool, rows whose target column is one of this weight's rows (the non-ignored
        rows; in the vocabulary-parallel op, the rows whose target lives in this shard).
        ``total_vocab``: ``V`` of the label-smoothing term (the full vocabulary when sharded)."""
        self.acc_dtype = accumulation_dtype(input.dtype)
        # GEMM dtype: see the module docstring.
        self.gemm_dtype = self.acc_dtype if input.device.type == "cpu" else input.dtype
        self.input = input  # (N, d), caller's dtype
        self.weight_g = weight.to(self.gemm_dtype)  # (V, d)
        self.bias_acc = None if bias is None else bias.to(self.acc_dtype)  # (V,)
        self.safe_target = torch.where(target_mask, target, torch.zeros_like(target))  # (N,)
        self.target_hit = target_mask.to(self.acc_dtype)  # (N,) 1.0 where the one-hot applies
        self.num_tokens, self.vocab_size = input.shape[0], weight.shape[0]
        self.total_vocab = self.vocab_size if total_vocab is None else total_vocab
        self.options = options
        self.chunk_size = chunk_size
        rows = min(chunk_size, self.num_tokens)
        device = input.device
        # Reused blocks: (rows, V) logits (tanh(logits / cap) with softcap) and, with softcap
        # only, a second (rows, V) block for z = cap * tanh(logits / cap).
        self.block = torch.empty(rows, self.vocab_size, dtype=self.acc_dtype, device=device)
        self.z_block = torch.empty_like(self.block) if options.softcap is not None else None

    def chunks(self):
        for start in range(0, self.num_tokens, self.chunk_size):
            yield start, min(start + self.chunk_size, self.num_tokens)

    def logits(self, start: int, end: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Fill the block with ``z`` for rows ``start:end``; returns ``(x_g, z, tanh)``."""
        x_g = self.input[start:end].to(self.gemm_dtype)  # (C, d)
        out = self.block[: end - start]  # (C, V)
        if self.gemm_dtype == self.acc_dtype:
            torch.mm(x_g, self.weight_g.t(), out=out)
        else:
            out.copy_(torch.mm(x_g, self.weight_g.t()))
        if self.bias_acc is not None:
            out.add_(self.bias_acc)
        cap = self.options.softcap
        if cap is None:
            return x_g, out, None
        t = out.div_(cap).tanh_()  # (C, V) tanh(logits / cap)
        z = torch.mul(t, cap, out=self.z_block[: end - start])  # (C, V)
        return x_g, z, t

    def grad_into(
        self,
        start: int,
        end: int,
        x_g: Tensor,
        p: Tensor,
        t: Tensor | None,
        lse: Tensor,
        row_scale: Tensor,
        grads: dict[str, Tensor],
    ) -> None:
        """Turn ``p`` (``(C, V)`` probabilities ``p_iv`` of rows ``start:end``) into dlogits in
        place and accumulate the gradients. ``lse``, ``row_scale``: ``(C,)``.

        With GEMMs in the accumulation dtype the row scale is applied to the GEMMs' ``(C, d)``
        operand and result instead of the ``(C, V)`` block (``dinput = r * (q @ W)``,
        ``dweight += q.T @ (r * x)``, ``dbias += q.T @ r`` with ``q = dlogits / r``): one pass
        over the block fewer. With half-precision GEMMs the block is scaled before its cast,
        so that the upstream gradient (an fp16 loss scale) applies before the rounding.
        """
        eps, lam = self.options.label_smoothing, self.options.z_loss
        late = self.gemm_dtype == self.acc_dtype  # row scale after the GEMMs
        coef = (1.0 + 2.0 * lam * lse) if lam > 0.0 else None  # (C,)
        if not late:
            coef = row_scale if coef is None else coef * row_scale
        if coef is not None:
            p.mul_(coef.unsqueeze(1))
        unit = None if late else row_scale  # what multiplies the one-hot and smoothing terms
        target = self.safe_target[start:end].unsqueeze(1)  # (C, 1)
        hit = self.target_hit[start:end]  # (C,)
        one_hot = -(1.0 - eps) * hit if unit is None else -(1.0 - eps) * unit * hit  # (C,)
        p.scatter_add_(1, target, one_hot.unsqueeze(1))
        if eps > 0.0:
            if unit is None:
                p.sub_(eps / self.total_vocab)
            else:
                p.sub_((eps / self.total_vocab * unit).unsqueeze(1))
        if t is not None:  # chain rule through z = cap * tanh(logits / cap)
            p.mul_(t.square_().neg_().add_(1.0))
        if late:
            r = row_scale.unsqueeze(1)  # (C, 1)
            if "input" in grads:
                dx = grads["input"][start:end]  # (C, d)
                torch.mm(p, self.weight_g, out=dx)
                dx.mul_(r)
            if "weight" in grads:
                grads["weight"].addmm_(p.t(), x_g * r)
            if "bias" in grads:
                grads["bias"].addmv_(p.t(), row_scale)
            return
        dz = p.to(self.gemm_dtype)  # (C, V)
        if "input" in grads:
            dx = grads["input"][start:end]  # (C, d)
            if dx.dtype == self.gemm_dtype:
                torch.mm(dz, self.weight_g, out=dx)
            else:
                dx.copy_(torch.mm(dz, self.weight_g))
        if "weight" in grads:
            grads["weight"].add_(torch.mm(dz.t(), x_g))
        if "bias" in grads:
            grads["bias"].add_(p.sum(0))

    def new_grads(self, need_input: bool, need_weight: bool, need_bias: bool) -> dict[str, Tensor]:
        grads: dict[str, Tensor] = {}
        device = self.input.device
        if need_input:  # rows are written once, so the GEMM dtype is enough
            grads["input"] = torch.empty(self.num_tokens, self.input.shape[1], dtype=self.gemm_dtype, device=device)
        if need_weight:
            grads["weight"] = torch.zeros(self.vocab_size, self.input.shape[1], dtype=self.acc_dtype, device=device)
        if need_bias:
            grads["bias"] = torch.zeros(self.vocab_size, dtype=self.acc_dtype, device=device)
        return grads


def _softmax_(z: Tensor) -> Tensor:
    """``softmax(z, dim=1)`` written over ``z`` (``(C, V)``, contiguous rows): one fused kernel
    that reads each row while it is in cache, instead of four passes (max, subtract, exp,
    sum) over the whole block."""
    return torch.ops.aten._softmax.out(z, 1, False, out=z)


def _forward(
    problem: _Problem,
    *,
    want_argmax: bool,
    row_scale: Tensor | None,
    grads: dict[str, Tensor],
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """One pass over the chunks: per-token ``lse``, ``z_target``, ``z_sum``, ``argmax``; when
    ``row_scale`` is given, also accumulates the gradients into ``grads``."""
    n, acc = problem.num_tokens, problem.acc_dtype
    device = problem.input.device
    lse = torch.empty(n, dtype=acc, device=device)  # (N,)
    z_target = torch.empty(n, dtype=acc, device=device)  # (N,)
    smoothing = problem.options.label_smoothing > 0
    z_sum = torch.empty(n, dtype=acc, device=device) if smoothing else None
    argmax = torch.empty(n, dtype=torch.int64, device=device) if want_argmax else None
    for start, end in problem.chunks():
        x_g, z, t = problem.logits(start, end)  # z: (C, V)
        rows = slice(start, end)
        picked = z.gather(1, problem.safe_target[rows].unsqueeze(1)).squeeze(1)  # (C,)
        z_target[rows] = picked * problem.target_hit[rows]
        if z_sum is not None:
            z_sum[rows] = z.sum(1)
        if argmax is not None:
            argmax[rows] = z.argmax(1)
        m = z.amax(1)  # (C,)
        p = _softmax_(z)  # (C, V) probabilities, in place
        # The largest probability is exp(m - lse) >= 1/V (never underflows): lse from two
        # cheap max reductions and the fused softmax, instead of subtract, exp and sum passes.
        lse_c = m - p.amax(1).log()  # (C,)
        lse[rows] = lse_c
        if row_scale is not None:
            problem.grad_into(start, end, x_g, p, t, lse_c, row_scale[rows], grads)
    return lse, z_target, z_sum, argmax


def _backward_recompute(problem: _Problem, lse: Tensor, row_scale: Tensor, grads: dict[str, Tensor]) -> None:
    """Recompute the logits chunk by chunk with the saved ``lse`` and accumulate gradients."""
    for start, end in problem.chunks():
        x_g, z, t = problem.logits(start, end)
        lse_c = lse[start:end]  # (C,) the saved (in the vocabulary-parallel op: global) lse
        p = z.sub_(lse_c.unsqueeze(1)).exp_()  # (C, V) probabilities
        problem.grad_into(start, end, x_g, p, t, lse_c, row_scale[start:end], grads)


def _in_range(target: Tensor, valid: Tensor, vocab_size: int) -> Tensor:
    """``(N,)`` rows whose one-hot term applies: valid and (unchecked targets) in ``[0, V)``."""
    return valid & (target >= 0) & (target < vocab_size)


def _finish_grads(
    grads: dict[str, Tensor], input: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    dx = grads.get("input")
    dw = grads.get("weight")
    db = grads.get("bias")
    return (
        None if dx is None else dx.to(input.dtype),
        None if dw is None else dw.to(weight.dtype),
        None if db is None or bias is None else db.to(bias.dtype),
    )


def _problem(input, weight, bias, target, options: LossOptions, chunk_size: int):
    """The chunked problem of one call, and its ``valid`` mask ``(N,)`` (forward and backward alike)."""
    valid = target != options.ignore_index  # (N,)
    in_range = _in_range(target, valid, weight.shape[0])
    return _Problem(input, weight, bias, target, in_range, options, chunk_size=chunk_size), valid


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Outputs ``(loss, lse, argmax)``; only ``loss`` is differentiable."""

    @staticmethod
    def forward(
        ctx,
        input: Tensor,  # (N, d)
        weight: Tensor,  # (V, d)
        bias: Tensor | None,  # (V,)
        target: Tensor,  # (N,) int64
        options: LossOptions,
        chunk_size: int,
        need_grads: tuple[bool, bool, bool],
        want_argmax: bool,
    ):
        problem, valid = _problem(input, weight, bias, target, options, chunk_size)
        # Gradients in the forward only where nothing is rounded to half precision before the
        # upstream gradient is known (see the module docstring).
        grads_in_forward = any(need_grads) and options.reduction != "none" and problem.gemm_dtype == problem.acc_dtype
        row_scale = row_scale_for_reduction(valid, options.reduction, problem.acc_dtype) if grads_in_forward else None
        grads = problem.new_grads(*need_grads) if grads_in_forward else {}
        lse, z_target, z_sum, argmax = _forward(problem, want_argmax=want_argmax, row_scale=row_scale, grads=grads)
        loss = loss_from_stats(lse, z_target, z_sum, valid, options, vocab_size=problem.vocab_size)

        ctx.grads_in_forward = grads_in_forward
        ctx.has_bias = bias is not None
        if grads_in_forward:  # kept in the accumulation dtype: cast once, in backward
            dx, dw, db = (grads.get(k) for k in ("input", "weight", "bias"))
            ctx.grad_present = (dx is not None, dw is not None, db is not None)
            ctx.grad_dtypes = (input.dtype, weight.dtype, None if bias is None else bias.dtype)
            # input, weight, bias: only so that a double backward can name what it needs
            ctx.save_for_backward(*[g for g in (dx, dw, db) if g is not None], input, weight, bias)
        elif any(need_grads):  # recompute in backward
            ctx.options, ctx.chunk_size, ctx.need_grads = options, chunk_size, need_grads
            ctx.save_for_backward(input, weight, bias, target, lse)
        if argmax is None:
            argmax = torch.empty(0, dtype=torch.int64, device=input.device)
        ctx.mark_non_differentiable(lse, argmax)
        return loss, lse, argmax

    @staticmethod
    @backward_once("chunked")
    def backward(ctx, grad_loss: Tensor, grad_lse: Tensor, grad_argmax: Tensor):
        del grad_lse, grad_argmax  # non-differentiable outputs
        nones = (None,) * 5  # target, options, chunk_size, need_grads, want_argmax
        if ctx.grads_in_forward:
            saved = iter(ctx.saved_tensors)
            out = [
                (next(saved) * grad_loss).to(dtype) if present else None  # one rounding
                for present, dtype in zip(ctx.grad_present, ctx.grad_dtypes)
            ]
            return (*out[:2], out[2] if ctx.has_bias else None, *nones)

        input, weight, bias, target, lse = ctx.saved_tensors
        problem, valid = _problem(input, weight, bias, target, ctx.options, ctx.chunk_size)
        row_scale = row_scale_for_reduction(valid, ctx.options.reduction, problem.acc_dtype, grad_loss)  # (N,)
        grads = problem.new_grads(*ctx.need_grads)
        _backward_recompute(problem, lse, row_scale, grads)
        dx, dw, db = _finish_grads(grads, input, weight, bias)
        return (dx, dw, db, *nones)


def chunked_linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    options: LossOptions,
    *,
    chunk_size: int | None,
    want_argmax: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Chunked forward (and custom backward) on flattened, validated tensors.

    Args:
        input: ``(N, d)``; weight: ``(V, d)``; target: ``(N,)`` int64; bias: ``(V,)`` or None.
        options: the loss options.
        chunk_size: rows per chunk; None picks :func:`default_chunk_size`.
        want_argmax: also return the per-token argmax (costs one extra pass per chunk).

    Returns:
        ``(loss, lse, argmax)``: loss as in ``reduction`` (float32/float64), ``lse`` ``(N,)``,
        ``argmax`` ``(N,)`` int64 or None.
    """
    if chunk_size is None:
        chunk_size = default_chunk_size(input.shape[0], weight.shape[0], input.dtype)
    grad_on = torch.is_grad_enabled()
    need_grads = (
        grad_on and input.requires_grad,
        grad_on and weight.requires_grad,
        grad_on and bias is not None and bias.requires_grad,
    )
    loss, lse, argmax = _ChunkedLinearCrossEntropy.apply(
        input, weight, bias, target, options, max(1, chunk_size), need_grads, want_argmax
    )
    return loss, lse, argmax if want_argmax else None
