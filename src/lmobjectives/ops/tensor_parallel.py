"""Linear cross-entropy with the vocabulary (weight rows) sharded over a process group.

Layout (Megatron convention): with ``W`` ranks in ``group`` and the full weight ``(V, d)``,
rank ``r`` holds the consecutive rows ``[o_r, o_r + V_r)`` as ``weight_shard`` ``(V_r, d)``, in
rank order (``o_0 = 0``, ``o_{r+1} = o_r + V_r``, ``V = sum_r V_r``). Shards may differ in size
(``V = 257`` on 2 ranks: 129 and 128 rows): one all-gather of the ``W`` shard sizes per call
finds every rank's offset and ``V`` (on a CUDA process group, reading those sizes is one host
synchronisation). ``input`` and ``target`` are replicated: every rank passes the same full
tensors.

Forward, per token ``i`` (each rank streams its shard in chunks, see ``_chunked.py``)::

    lse_r  = log sum_{v in shard r} exp(z_iv)          local log-sum-exp
    m      = all_reduce_max(lse_r)
    lse    = m + log(all_reduce_sum(exp(lse_r - m)))   global log-sum-exp, stable
    z_t    = all_reduce_sum(z_i[t_i] if t_i in shard r else 0)
    sum_z  = all_reduce_sum(sum_{v in shard r} z_iv)   (only with label smoothing)

and the loss is formed from ``lse``, ``z_t`` and ``sum_z`` exactly as in
:func:`lmobjectives.ops.linear_cross_entropy`, so every rank returns the same, unsharded loss.

Backward: ``dz`` on each shard needs only the global ``lse`` (saved), the logits are recomputed
chunk by chunk; ``dweight_shard`` and ``dbias_shard`` stay local, ``dinput`` is summed over the
group with one all-reduce (the input was replicated, so its gradient is the sum of the
contributions of every shard). Communication per call: one all-gather of the shard sizes and
two all-reduces of ``(N,)`` float32 vectors (the second packs 2 or 3 of them) forward, and one
``(N, d)`` all-reduce backward.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from lmobjectives.constants import IGNORE_INDEX
from lmobjectives.ops._chunked import (
    _backward_recompute,
    _finish_grads,
    _forward,
    _Problem,
    default_chunk_size,
)
from lmobjectives.ops._common import (
    LossOptions,
    backward_once,
    cast_for_autocast,
    check_target_range,
    loss_from_stats,
    row_scale_for_reduction,
    validate_tensors,
)

__all__ = ["linear_cross_entropy_vocab_parallel"]


def _shard_problem(
    input: Tensor,
    weight_shard: Tensor,
    bias_shard: Tensor | None,
    target: Tensor,
    valid: Tensor,
    vocab_start: int,
    total_vocab: int,
    options: LossOptions,
    chunk_size: int,
) -> _Problem:
    """This shard's chunked problem; ``z_target`` comes out 0 for targets in other shards."""
    local_target = target - vocab_start  # (N,)
    in_shard = valid & (local_target >= 0) & (local_target < weight_shard.shape[0])  # (N,)
    return _Problem(
        input,
        weight_shard,
        bias_shard,
        local_target,
        in_shard,
        options,
        chunk_size=chunk_size,
        total_vocab=total_vocab,
    )


def _shard_offset(shard_size: int, group, device: torch.device) -> tuple[int, int]:
    """``(first row of this rank's shard, full vocabulary size)`` from every rank's shard size
    (one all-gather of ``W`` integers, on ``device`` for a backend that needs it there)."""
    world_size = dist.get_world_size(group)
    rank = dist.get_rank(group)
    backend = dist.get_backend(group)
    on = device if backend == dist.Backend.NCCL else torch.device("cpu")
    local = torch.tensor([shard_size], dtype=torch.int64, device=on)  # (1,)
    gathered = [torch.empty_like(local) for _ in range(world_size)]  # W x (1,)
    dist.all_gather(gathered, local, group=group)
    sizes = torch.cat(gathered).tolist()
    return sum(sizes[:rank]), sum(sizes)


class _VocabParallelLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        input: Tensor,  # (N, d), replicated
        weight_shard: Tensor,  # (V_r, d)
        bias_shard: Tensor | None,  # (V_r,)
        target: Tensor,  # (N,) int64 global class indices, replicated
        group,
        vocab_start: int,
        total_vocab: int,
        options: LossOptions,
        chunk_size: int,
    ) -> Tensor:
        valid = target != options.ignore_index  # (N,)
        problem = _shard_problem(
            input,
            weight_shard,
            bias_shard,
            target,
            valid,
            vocab_start,
            total_vocab,
            options,
            chunk_size,
        )
        lse_local, z_target, z_sum, _ = _forward(problem, want_argmax=False, row_scale=None, grads={})

        lse_max = lse_local.clone()  # (N,)
        dist.all_reduce(lse_max, op=dist.ReduceOp.MAX, group=group)
        sum_exp = (lse_local - lse_max).exp()  # (N,)
        # One sum all-reduce for the sum-of-exps, the target logit and (optionally) the logit sum.
        pieces = [sum_exp, z_target] + ([z_sum] if z_sum is not None else [])
        packed = torch.stack(pieces)  # (2 or 3, N)
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        lse = lse_max + packed[0].log()  # (N,) global log-sum-exp
        loss = loss_from_stats(
            lse,
            packed[1],
            packed[2] if z_sum is not None else None,
            valid,
            options,
            vocab_size=total_vocab,
        )

        ctx.group, ctx.vocab_start, ctx.total_vocab = group, vocab_start, total_vocab
        ctx.options, ctx.chunk_size = options, chunk_size
        ctx.has_bias = bias_shard is not None
        ctx.needs = (
            input.requires_grad,
            weight_shard.requires_grad,
            bias_shard is not None and bias_shard.requires_grad,
        )
        ctx.save_for_backward(input, weight_shard, bias_shard, target, lse)
        return loss

    @staticmethod
    @backward_once("vocab_parallel")
    def backward(ctx, grad_loss: Tensor):
        input, weight_shard, bias_shard, target, lse = ctx.saved_tensors
        valid = target != ctx.options.ignore_index
        problem = _shard_problem(
            input,
            weight_shard,
            bias_shard,
            target,
            valid,
            ctx.vocab_start,
            ctx.total_vocab,
            ctx.options,
            ctx.chunk_size,
        )
        row_scale = row_scale_for_reduction(valid, ctx.options.reduction, problem.acc_dtype, grad_loss)
        # dinput must be all-reduced even on ranks that would not need it locally.
        grads = problem.new_grads(ctx.needs[0], ctx.needs[1], ctx.needs[2])
        _backward_recompute(problem, lse, row_scale, grads)
        if "input" in grads:
            dx = grads["input"].to(problem.acc_dtype)  # (N, d), sum over shards in full precision
            dist.all_reduce(dx, op=dist.ReduceOp.SUM, group=ctx.group)
            grads["input"] = dx
        dx, dw, db = _finish_grads(grads, input, weight_shard, bias_shard)
        return dx, dw, db if ctx.has_bias else None, None, None, None, None, None, None


def linear_cross_entropy_vocab_parallel(
    input: Tensor,
    weight_shard: Tensor,
    target: Tensor,
    *,
    bias_shard: Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    chunk_size: int | None = None,
    check_targets: bool = True,
) -> Tensor:
    """:func:`lmobjectives.ops.linear_cross_entropy` with ``weight`` sharded by vocabulary rows.

    Args:
        input: ``(..., d)``, the same on every rank of ``group``.
        weight_shard: ``(V_r, d)``, this rank's consecutive rows of the full ``(V, d)`` weight:
            rank 0 holds the first ``V_0`` rows, rank 1 the next ``V_1``, and so on (shards may
            differ in size; each has at least one row).
        target: ``(...)`` class indices into the full vocabulary, the same on every rank.
        bias_shard: optional ``(V_r,)`` slice of the bias.
        group: the tensor-parallel process group (None: the default group).
        ignore_index, reduction, label_smoothing, z_loss, softcap, check_targets: as in
            :func:`~lmobjectives.ops.linear_cross_entropy` (``label_smoothing`` averages over
            the full vocabulary).
        chunk_size: tokens per chunk; None sizes a ``(chunk, V_r)`` block to about 64 MiB.

    Returns:
        The unsharded loss, identical on every rank. ``input.grad`` is the full gradient on
        every rank; ``weight_shard.grad`` is this shard's slice of the full gradient. Under
        ``torch.autocast`` the arguments are cast as in ``linear_cross_entropy``.
    """
    options = LossOptions(ignore_index, reduction, label_smoothing, z_loss, softcap)
    input, weight_shard, bias_shard, precision = cast_for_autocast(input, weight_shard, bias_shard)
    with precision:
        validate_tensors(input, weight_shard, target, bias_shard)
        shard_size = weight_shard.shape[0]
        vocab_start, total_vocab = _shard_offset(shard_size, group, input.device)
        x = input.reshape(-1, input.shape[-1]).contiguous()  # (N, d)
        t = target.reshape(-1).long()  # (N,)
        if check_targets:
            check_target_range(t, vocab_size=total_vocab, ignore_index=ignore_index)
        if chunk_size is None:
            chunk_size = default_chunk_size(x.shape[0], shard_size, x.dtype)
        loss = _VocabParallelLinearCrossEntropy.apply(
            x,
            weight_shard,
            bias_shard,
            t,
            group,
            vocab_start,
            total_vocab,
            options,
            max(1, chunk_size),
        )
        return loss.reshape(target.shape) if reduction == "none" else loss
