"""Vocabulary-parallel linear cross-entropy on 2 CPU processes (gloo) vs the unsharded op."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmobjectives.constants import IGNORE_INDEX
from lmobjectives.ops import linear_cross_entropy, linear_cross_entropy_vocab_parallel

WORLD_SIZE = 2

# (reduction, options, dtype, bias, chunk_size)
CASES = [
    ("mean", dict(), torch.float64, False, None),
    ("sum", dict(label_smoothing=0.1, z_loss=1e-2), torch.float64, True, 3),
    ("none", dict(softcap=2.0, label_smoothing=0.3), torch.float64, True, 4),
    ("mean", dict(z_loss=1e-3, softcap=5.0), torch.float32, False, 5),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        for reduction, opts, dtype, with_bias, chunk_size in CASES:
            g = torch.Generator().manual_seed(0)  # identical data on every rank
            n, d, shard = 13, 6, 9
            x = torch.randn(2, n, d, generator=g, dtype=torch.float64).to(dtype)  # (2, n, d)
            w = torch.randn(WORLD_SIZE * shard, d, generator=g, dtype=torch.float64).to(dtype)
            b = torch.randn(WORLD_SIZE * shard, generator=g, dtype=torch.float64).to(dtype)
            t = torch.randint(0, WORLD_SIZE * shard, (2, n), generator=g)
            t[0, ::3] = IGNORE_INDEX
            upstream = torch.rand(2, n, generator=g, dtype=torch.float64) + 0.5
            rows = slice(rank * shard, (rank + 1) * shard)

            ref_x, ref_w, ref_b = (a.clone().requires_grad_() for a in (x, w, b))
            ref = linear_cross_entropy(
                ref_x,
                ref_w,
                t,
                bias=ref_b if with_bias else None,
                reduction=reduction,
                impl="reference",
                **opts,
            )
            (ref * upstream.to(ref.dtype)).sum().backward()

            xs = x.clone().requires_grad_()
            ws = w[rows].clone().requires_grad_()
            bs = b[rows].clone().requires_grad_() if with_bias else None
            loss = linear_cross_entropy_vocab_parallel(
                xs, ws, t, bias_shard=bs, reduction=reduction, chunk_size=chunk_size, **opts
            )
            (loss * upstream.to(loss.dtype)).sum().backward()

            tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else {}
            torch.testing.assert_close(loss, ref.detach(), **tol)
            torch.testing.assert_close(xs.grad, ref_x.grad, **tol)
            torch.testing.assert_close(ws.grad, ref_w.grad[rows], **tol)
            if with_bias:
                torch.testing.assert_close(bs.grad, ref_b.grad[rows], **tol)
        _check_autocast(rank)
        _check_unequal_shards(rank)
        _check_double_backward_raises(rank)
    finally:
        dist.destroy_process_group()


def _check_autocast(rank: int) -> None:
    """Under autocast (bfloat16) float32 arguments are cast as in the unsharded op: the same
    loss and float32 gradients as the unsharded op under autocast, to bfloat16 precision."""
    g = torch.Generator().manual_seed(1)
    n, d, shard = 13, 6, 9
    x = torch.randn(n, d, generator=g)
    w = torch.randn(WORLD_SIZE * shard, d, generator=g)
    t = torch.randint(0, WORLD_SIZE * shard, (n,), generator=g)
    rows = slice(rank * shard, (rank + 1) * shard)
    ref_x, ref_w = x.clone().requires_grad_(), w.clone().requires_grad_()
    xs, ws = x.clone().requires_grad_(), w[rows].clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = linear_cross_entropy(ref_x, ref_w, t)
        loss = linear_cross_entropy_vocab_parallel(xs, ws, t)
    ref.backward()
    loss.backward()
    assert loss.dtype == torch.float32 and xs.grad.dtype == ws.grad.dtype == torch.float32
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(xs.grad, ref_x.grad, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(ws.grad, ref_w.grad[rows], rtol=1e-2, atol=1e-3)


def _check_unequal_shards(rank: int) -> None:
    """Shards of 129 and 128 rows (V = 257): the loss and gradients of the unsharded op, in
    float64 (before shard sizes were gathered, rank 1 assumed offset 128 and V = 256)."""
    g = torch.Generator().manual_seed(2)
    n, d, sizes = 11, 5, (129, 128)
    v = sum(sizes)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64)
    t = torch.randint(0, v, (n,), generator=g)
    t[:3] = torch.tensor([128, 129, v - 1])  # the last row of shard 0, the first and last of 1
    t[3] = IGNORE_INDEX
    rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    for reduction, opts in (("mean", dict()), ("none", dict(label_smoothing=0.2, z_loss=1e-2))):
        upstream = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
        ref_x, ref_w = x.clone().requires_grad_(), w.clone().requires_grad_()
        ref = linear_cross_entropy(ref_x, ref_w, t, reduction=reduction, impl="reference", **opts)
        (ref * upstream).sum().backward()
        xs, ws = x.clone().requires_grad_(), w[rows].clone().requires_grad_()
        loss = linear_cross_entropy_vocab_parallel(xs, ws, t, reduction=reduction, **opts)
        (loss * upstream).sum().backward()
        tol = dict(rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss, ref.detach(), **tol)
        torch.testing.assert_close(xs.grad, ref_x.grad, **tol)
        torch.testing.assert_close(ws.grad, ref_w.grad[rows], **tol)


def _check_double_backward_raises(rank: int) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5 * WORLD_SIZE, (4,), generator=g)
    (gx,) = torch.autograd.grad(linear_cross_entropy_vocab_parallel(x, w, t), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(gx.square().sum(), x)


def test_vocab_parallel_matches_unsharded_two_processes():
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD_SIZE, join=True)


def test_vocab_parallel_validates_arguments():
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy_vocab_parallel(
            torch.zeros(2, 3),
            torch.zeros(4, 3),
            torch.zeros(2, dtype=torch.long),
            reduction="bad",
        )
