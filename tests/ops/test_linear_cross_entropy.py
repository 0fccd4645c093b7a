"""Tests for lmobjectives.ops.linear_cross_entropy (reference, chunked and vocab_chunked paths
on CPU; the Triton kernels run under the interpreter in test_triton_interpreter.py and
test_vocab_chunked.py, and on CUDA below)."""

from __future__ import annotations

import dataclasses
import inspect
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives.constants import IGNORE_INDEX
from lmobjectives.ops import (
    Impl,
    LinearCrossEntropyOutput,
    linear_cross_entropy,
    linear_cross_entropy_vocab_parallel,
    linear_cross_entropy_with_stats,
)
from lmobjectives.ops._common import LossOptions

CUDA = torch.cuda.is_available()

# The CPU implementations under test, each with a chunk size that gives many chunks at the
# accuracy-test shape (33 tokens, 1007 classes): tokens for "chunked", classes for
# "vocab_chunked" (63 chunks, the last 39 classes deferred: see _vocab_chunked).
CHUNKED_IMPLS = [("chunked", 8), ("vocab_chunked", 16)]


# --------------------------------------------------------------------------- helpers


def make_problem(n, d, v, *, dtype, device="cpu", bias=False, ignore_every=0, seed=0):
    """Float64 master values (rounded through ``dtype``) so that the float64 oracle sees exactly
    the numbers the ``dtype`` computation sees."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(v, d, generator=g, dtype=torch.float64) / math.sqrt(d) * 2.0
    b = torch.randn(v, generator=g, dtype=torch.float64) if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        t[::ignore_every] = IGNORE_INDEX
    cast = lambda a: None if a is None else a.to(dtype).to(device)  # noqa: E731
    return cast(x), cast(w), cast(b), t.to(device)


def loss_and_grads(x, w, b, t, upstream, **kw):
    """Loss and (dx, dw, db) of ``loss`` contracted with ``upstream``."""
    leaves = [a.detach().clone().requires_grad_() for a in (x, w) + ((b,) if b is not None else ())]
    bias = leaves[2] if b is not None else None
    loss = linear_cross_entropy(leaves[0], leaves[1], t, bias=bias, **kw)
    grads = torch.autograd.grad(loss, leaves, upstream.to(loss.dtype))
    return [loss.detach(), *grads]


def rel_err(a, ref):
    a, ref = a.double(), ref.double()
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


MARGIN = {torch.float32: 1e-6, torch.bfloat16: 2e-3, torch.float64: 1e-12}


def assert_within_error_budget(impl, dtype, n, d, v, *, bias, ignore_every, reduction, **opts):
    """The ``impl`` result in ``dtype`` may err (vs a float64 oracle on the same inputs) at most
    twice as much as the naive same-dtype computation, plus a small margin."""
    x, w, b, t = make_problem(n, d, v, dtype=dtype, bias=bias, ignore_every=ignore_every)
    upstream = (
        torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        if reduction == "none"
        else torch.tensor(1.0, dtype=torch.float64)
    )
    kw = dict(reduction=reduction, **opts)
    oracle = loss_and_grads(
        *(None if a is None else a.double() for a in (x, w, b)), t, upstream, impl="reference", **kw
    )
    naive = loss_and_grads(x, w, b, t, upstream, impl="reference", **kw)
    ours = loss_and_grads(x, w, b, t, upstream, impl=impl, **kw)
    for name, o, nv, ref in zip(("loss", "dinput", "dweight", "dbias"), ours, naive, oracle):
        assert o.dtype == (nv.dtype), name
        budget = 2.0 * rel_err(nv, ref) + MARGIN[dtype]
        assert rel_err(o, ref) <= budget, f"{name}: {rel_err(o, ref):.3g} > budget {budget:.3g}"


# --------------------------------------------------------------------------- worked examples


def test_worked_example_from_docstring():
    w = torch.eye(2)
    x = torch.zeros(1, 2)
    assert linear_cross_entropy(x, w, torch.tensor([0])).item() == pytest.approx(math.log(2))
    assert linear_cross_entropy(x, w, torch.tensor([0]), z_loss=1.0).item() == pytest.approx(
        math.log(2) + math.log(2) ** 2
    )
    assert linear_cross_entropy(x, w, torch.tensor([-100])).item() == 0.0
    assert round(linear_cross_entropy(x, w, torch.tensor([0]), z_loss=1.0).item(), 4) == 1.1736


def test_stats_worked_example():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    out = linear_cross_entropy_with_stats(x, torch.eye(2), torch.tensor([0, 0, -100]))
    assert isinstance(out, LinearCrossEntropyOutput)
    assert out.correct.tolist() == [True, False, False]
    assert out.num_valid.item() == 2
    assert out.accuracy.item() == 0.5
    # lse of logits [1, 0] is log(e + 1) = 1.3133; of [0, 0] it is log 2.
    assert [round(v, 4) for v in out.lse.tolist()] == [1.3133, 1.3133, 0.6931]
    # mean of (lse - 1) and (lse - 0) over the two valid tokens: 1.3133 - 0.5
    assert round(out.loss.item(), 4) == 0.8133


def test_matches_torch_cross_entropy():
    x, w, b, t = make_problem(19, 12, 41, dtype=torch.float64, bias=True, ignore_every=5)
    for reduction in ("mean", "sum", "none"):
        ours = linear_cross_entropy(x, w, t, bias=b, reduction=reduction, label_smoothing=0.2)
        ref = torch.nn.functional.cross_entropy(x @ w.T + b, t, reduction=reduction, label_smoothing=0.2)
        torch.testing.assert_close(ours, ref)


# --------------------------------------------------------------------------- accuracy


OPTION_CASES = {
    "plain": dict(),
    "ignored": dict(ignore_every=3),
    "smoothing": dict(label_smoothing=0.1, ignore_every=4),
    "z_loss": dict(z_loss=1e-3),
    "softcap": dict(softcap=2.0, ignore_every=5),
    "bias": dict(bias=True),
    "everything": dict(bias=True, ignore_every=3, label_smoothing=0.2, z_loss=1e-2, softcap=3.0),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", list(OPTION_CASES))
@pytest.mark.parametrize("impl,chunk_size", CHUNKED_IMPLS)
def test_chunked_within_error_budget(impl, chunk_size, case, reduction, dtype):
    opts = dict(OPTION_CASES[case])
    bias, ignore_every = opts.pop("bias", False), opts.pop("ignore_every", 0)
    assert_within_error_budget(
        impl,
        dtype,
        33,
        48,
        1007,
        bias=bias,
        ignore_every=ignore_every,
        reduction=reduction,
        chunk_size=chunk_size,
        **opts,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("impl", ["chunked", "vocab_chunked"])
def test_chunked_single_token(impl, n, dtype):
    assert_within_error_budget(impl, dtype, n, 16, 1007, bias=True, ignore_every=0, reduction="mean", z_loss=1e-3)


def test_default_chunking_multiple_chunks(monkeypatch):
    import lmobjectives.ops._chunked as chunked

    monkeypatch.setattr(chunked, "_CHUNK_BYTES", 40 * 1003 * 4)  # 40 rows of V=1003 floats
    assert chunked.default_chunk_size(300, 1003, torch.float32) == 40
    x, w, b, t = make_problem(300, 8, 1003, dtype=torch.float32, ignore_every=7)
    one = torch.tensor(1.0)
    ref = loss_and_grads(x, w, b, t, one, impl="reference")
    got = loss_and_grads(x, w, b, t, one, impl="chunked")
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["chunked", "vocab_chunked"])
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 20),
    d=st.integers(1, 9),
    v=st.integers(1, 70),
    chunk=st.integers(1, 8),
    ignore_p=st.sampled_from([0.0, 0.3, 1.0]),
    label_smoothing=st.sampled_from([0.0, 0.25, 1.0]),
    z_loss=st.sampled_from([0.0, 0.1]),
    softcap=st.sampled_from([None, 0.5, 30.0]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_chunked_equals_reference(
    impl, n, d, v, chunk, ignore_p, label_smoothing, z_loss, softcap, reduction, bias, seed
):
    """float64: every chunking (of tokens or of classes) gives the reference to rounding."""
    x, w, b, t = make_problem(n, d, v, dtype=torch.float64, bias=bias, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    t = torch.where(torch.rand(n, generator=g) < ignore_p, IGNORE_INDEX, t)
    upstream = (
        torch.randn(n, generator=g, dtype=torch.float64)
        if reduction == "none"
        else (torch.tensor(0.7, dtype=torch.float64))
    )
    kw = dict(reduction=reduction, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap)
    ref = loss_and_grads(x, w, b, t, upstream, impl="reference", **kw)
    got = loss_and_grads(x, w, b, t, upstream, impl=impl, chunk_size=chunk, **kw)
    for a, r in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-12)


# Unit roundoff: one rounding to the dtype errs by at most this much relative to the value.
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    "dtype,upstream",
    [(torch.float16, 2.0**16), (torch.float16, 0.7 * 2.0**16), (torch.bfloat16, 0.7)],
    ids=["fp16-scale-2^16", "fp16-scale-0.7x2^16", "bf16-0.7"],
)
@pytest.mark.parametrize("impl,roundings", [("chunked", 1), ("vocab_chunked", 2)])
def test_half_gradients_rounded_once_after_the_upstream_gradient(impl, roundings, dtype, upstream, reduction):
    """Loss scaling: half-precision gradients of a mean over 4096 tokens with small weights
    (unscaled ``dinput`` ~ 1e-6, in fp16's subnormal range) times an upstream gradient (the fp16
    loss scale 2**16, or a factor that is not a power of 2), against the float64 oracle.
    ``chunked`` computes them in float32 and rounds once, after the upstream gradient is
    applied: within one unit roundoff. (Before: fp16 ``dinput`` 2.9e-3 with 1 % exact zeros;
    bf16 4.6e-3 > 3.9e-3, rounded before and after the scale.) ``vocab_chunked`` rounds
    ``dlogits`` to the input dtype for its GEMMs by design: two roundings."""
    n, d, v = 4096, 32, 500
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(v, d, generator=g, dtype=torch.float64) * 0.01).to(dtype)
    t = torch.randint(0, v, (n,), generator=g)
    t[::20] = IGNORE_INDEX
    if reduction == "sum":  # the sum normalised outside (gradient accumulation), then scaled
        upstream /= (t != IGNORE_INDEX).sum().item()
    scale = torch.tensor(upstream, dtype=torch.float64)
    oracle = loss_and_grads(x.double(), w.double(), None, t, scale, impl="reference", reduction=reduction)
    ours = loss_and_grads(x, w, None, t, scale, impl=impl, reduction=reduction)
    for name, o, ref in zip(("dinput", "dweight"), ours[1:], oracle[1:]):
        assert o.dtype == dtype
        budget = roundings * UNIT_ROUNDOFF[dtype] + 1e-5
        assert rel_err(o, ref) <= budget, f"{name}: {rel_err(o, ref):.3g} > {budget:.3g}"
        assert not ((o == 0) & (ref != 0)).any(), f"{name}: gradients flushed to zero"


@pytest.mark.parametrize("impl", ["chunked", "vocab_chunked"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_double_backward_raises_clearly(impl, reduction):
    """First-order gradients are right under create_graph=True; differentiating them again
    (here: a loss times a learnable weight, then the gradient's norm) raises a clear error
    for the fused paths (before: chunked mean/sum silently gave a wrong second-order gradient,
    the others failed with errors about out= or a missing autograd formula). The reference
    path, plain autograd, supports it."""
    x, w, _, t = make_problem(9, 5, 13, dtype=torch.float64, ignore_every=4)

    def second_order(impl):
        a = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        loss = a * linear_cross_entropy(xi, wi, t, impl=impl, reduction=reduction).sum()
        gx, gw = torch.autograd.grad(loss, (xi, wi), create_graph=True)
        return (gx, gw), lambda: torch.autograd.grad(gx.square().sum(), (a, xi, wi))

    (ref_gx, ref_gw), ref_second = second_order("reference")
    assert all(torch.isfinite(h).all() for h in ref_second())
    (gx, gw), second = second_order(impl)
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gw, ref_gw)
    with pytest.raises(RuntimeError, match=f"differentiable once.*impl='{impl}'"):
        second()


@pytest.mark.parametrize("impl", ["chunked", "vocab_chunked"])
def test_unchecked_targets_past_the_vocabulary_have_target_logit_zero(impl):
    """check_targets=False: targets V, V+1 and a large id give the documented target logit 0,
    i.e. a token loss of exactly lse (the triton kernels: _triton_interp_checks.py)."""
    x, w, b, t = make_problem(6, 5, 37, dtype=torch.float64, bias=True)
    v = w.shape[0]
    t[:3] = torch.tensor([v, v + 1, 2**40])
    for bad in (v, v + 1, 2**40):  # the reference path refuses them (from gather), as documented
        with pytest.raises(RuntimeError, match="out of bounds"):
            linear_cross_entropy(x, w, torch.full_like(t, bad), impl="reference", check_targets=False)
    out = linear_cross_entropy_with_stats(
        x, w, t, bias=b, impl=impl, check_targets=False, reduction="none", chunk_size=8
    )
    ref = linear_cross_entropy_with_stats(x, w, t.clamp(max=v - 1), bias=b, impl="reference", reduction="none")
    torch.testing.assert_close(out.lse, ref.lse)
    torch.testing.assert_close(out.loss[:3], ref.lse[:3])
    torch.testing.assert_close(out.loss[3:], ref.loss[3:])
    leaves = [a.clone().requires_grad_() for a in (x, w, b)]
    loss = linear_cross_entropy(leaves[0], leaves[1], t, bias=leaves[2], impl=impl, check_targets=False, chunk_size=8)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, leaves))


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("impl", ["reference", "chunked", "vocab_chunked"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_loss_and_zero_grads(impl, reduction):
    x, w, b, _ = make_problem(7, 5, 11, dtype=torch.float32, bias=True)
    t = torch.full((7,), IGNORE_INDEX)
    upstream = torch.ones(7) if reduction == "none" else torch.tensor(1.0)
    loss, dx, dw, db = loss_and_grads(
        x, w, b, t, upstream, impl=impl, reduction=reduction, label_smoothing=0.1, z_loss=0.1
    )
    assert torch.count_nonzero(loss) == 0
    for grad in (dx, dw, db):
        assert torch.isfinite(grad).all() and torch.count_nonzero(grad) == 0


def test_custom_ignore_index_and_none_reduction_zeros():
    x, w, _, _ = make_problem(6, 4, 9, dtype=torch.float64)
    t = torch.tensor([0, 3, 1, 2, 3, 8])
    loss = linear_cross_entropy(x, w, t, ignore_index=3, reduction="none", impl="chunked")
    assert loss[1] == 0 and loss[4] == 0 and (loss[[0, 2, 3, 5]] > 0).all()


@pytest.mark.parametrize("impl", ["chunked", "vocab_chunked"])
def test_leading_dimensions_are_flattened(impl):
    x, w, b, t = make_problem(12, 6, 17, dtype=torch.float64, ignore_every=5)
    x3, t3 = x.reshape(3, 4, 6), t.reshape(3, 4)
    for reduction in ("mean", "none"):
        got = linear_cross_entropy(x3, w, t3, reduction=reduction, impl=impl, chunk_size=5)
        ref = linear_cross_entropy(x, w, t, reduction=reduction, impl="reference")
        assert got.shape == ((3, 4) if reduction == "none" else ())
        torch.testing.assert_close(got.reshape(ref.shape), ref)
    out = linear_cross_entropy_with_stats(x3, w, t3, impl=impl)
    assert out.lse.shape == out.correct.shape == (3, 4)


@pytest.mark.parametrize("impl", ["chunked", "vocab_chunked"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_frozen_weight_and_input_without_grad(reduction, dtype, impl):
    """Only the gradients that are asked for are computed, and they do not change (bf16: the
    vocab_chunked dinput accumulator cannot borrow dweight rows when the weight is frozen)."""
    x, w, _, t = make_problem(9, 5, 13, dtype=dtype, ignore_every=4)
    upstream = torch.ones(9, dtype=torch.float64) if reduction == "none" else 1.0
    kw = dict(reduction=reduction, impl=impl, chunk_size=4)
    ref_x, ref_w = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = linear_cross_entropy(ref_x, ref_w, t, **kw)
    (ref * upstream).sum().backward()
    if dtype == torch.float64:
        ref_xd, ref_wd = x.clone().requires_grad_(), w.clone().requires_grad_()
        (linear_cross_entropy(ref_xd, ref_wd, t, reduction=reduction, impl="reference") * upstream).sum().backward()
        torch.testing.assert_close(ref_x.grad, ref_xd.grad)
        torch.testing.assert_close(ref_w.grad, ref_wd.grad)

    frozen = w.clone()  # weight.requires_grad False: no dweight
    xi = x.clone().requires_grad_()
    (linear_cross_entropy(xi, frozen, t, **kw) * upstream).sum().backward()
    assert frozen.grad is None
    torch.testing.assert_close(xi.grad, ref_x.grad, rtol=0, atol=0)

    wi = w.clone().requires_grad_()  # input without grad: only dweight
    (linear_cross_entropy(x, wi, t, **kw) * upstream).sum().backward()
    torch.testing.assert_close(wi.grad, ref_w.grad, rtol=0, atol=0)


def test_no_grad_forward_and_retain_graph():
    x, w, _, t = make_problem(10, 4, 15, dtype=torch.float64)
    with torch.no_grad():
        loss = linear_cross_entropy(x.requires_grad_(), w, t, impl="chunked")
    assert not loss.requires_grad
    x = x.detach().requires_grad_()
    loss = linear_cross_entropy(x, w, t, impl="chunked")
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("impl", ["chunked", "vocab_chunked"])
def test_stats_match_reference(impl):
    x, w, b, t = make_problem(25, 7, 31, dtype=torch.float32, bias=True, ignore_every=4)
    ref = linear_cross_entropy_with_stats(x, w, t, bias=b, impl="reference", softcap=4.0)
    got = linear_cross_entropy_with_stats(x, w, t, bias=b, impl=impl, softcap=4.0, chunk_size=6)
    torch.testing.assert_close(got.lse, ref.lse)
    assert torch.equal(got.correct, ref.correct)
    assert got.num_valid.item() == (t != IGNORE_INDEX).sum().item()
    assert not got.correct[t == IGNORE_INDEX].any()
    assert 0.0 <= got.accuracy.item() <= 1.0


@pytest.mark.parametrize("impl", ["chunked", "vocab_chunked"])
def test_grads_in_input_dtype_and_loss_in_float32(impl):
    x, w, b, t = make_problem(5, 4, 9, dtype=torch.bfloat16, bias=True)
    loss, dx, dw, db = loss_and_grads(x, w, b, t, torch.tensor(1.0), impl=impl)
    assert loss.dtype == torch.float32
    assert dx.dtype == dw.dtype == db.dtype == torch.bfloat16


# --------------------------------------------------------------------------- torch.compile


@pytest.mark.parametrize("backend,chunk_size", [("aot_eager", 4), ("inductor", None)])
def test_chunked_under_torch_compile(backend, chunk_size):
    torch._dynamo.reset()
    x, w, _, t = make_problem(12, 8, 29, dtype=torch.float32, ignore_every=5)
    kw = dict(impl="chunked", chunk_size=chunk_size, label_smoothing=0.1, softcap=5.0, z_loss=1e-3)

    def step(x, w, t):
        return linear_cross_entropy(x, w, t, **kw)

    eager = loss_and_grads(x, w, None, t, torch.tensor(1.0), **kw)
    xc, wc = x.clone().requires_grad_(), w.clone().requires_grad_()
    loss = torch.compile(step, backend=backend, fullgraph=True)(xc, wc, t)
    loss.backward()
    torch.testing.assert_close(loss.detach(), eager[0])
    torch.testing.assert_close(xc.grad, eager[1])
    torch.testing.assert_close(wc.grad, eager[2])


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_vocab_chunked_under_torch_compile_is_eager(backend, dtype, reduction):
    """vocab_chunked is one opaque custom operator to the compiler: compiled with
    fullgraph=True it gives bit-identical loss and gradients (bf16 with V >= N also lends the
    dinput accumulator dweight rows, which the compiler must not move)."""
    torch._dynamo.reset()
    x, w, b, t = make_problem(37, 40, 107, dtype=dtype, bias=True, ignore_every=4)
    kw = dict(impl="vocab_chunked", chunk_size=24, reduction=reduction, label_smoothing=0.1, softcap=5.0, z_loss=1e-3)
    upstream = torch.rand(37) if reduction == "none" else torch.tensor(1.0)
    eager = loss_and_grads(x, w, b, t, upstream, **kw)
    leaves = [a.clone().requires_grad_() for a in (x, w, b)]

    def step(x, w, b, t):
        return linear_cross_entropy(x, w, t, bias=b, **kw)

    loss = torch.compile(step, backend=backend, fullgraph=True)(*leaves, t)
    got = [loss.detach(), *torch.autograd.grad(loss, leaves, upstream.to(loss.dtype))]
    for a, e in zip(got, eager):
        assert torch.equal(a, e)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_custom_operators_pass_opcheck(dtype, reduction):
    """Schema, fake (shape-only) versions against the real ones, autograd registration and
    tracing of the two operators behind impl="vocab_chunked"/"triton"."""
    import lmobjectives.ops._custom_ops  # noqa: F401  (registers the operators)

    x, w, b, t = make_problem(37, 40, 107, dtype=dtype, bias=True, ignore_every=4)
    x, w, b = (a.requires_grad_() for a in (x, w, b))
    options = (IGNORE_INDEX, reduction, 0.1, 1e-3, 5.0, 24, "torch", True)
    ops = torch.ops.lmobjectives
    torch.library.opcheck(ops.lce_forward.default, ("vocab_chunked", x, w, b, t, *options, True))
    lse = torch.randn(37)
    grad = torch.rand(37) if reduction == "none" else torch.tensor(1.0)
    for need in ((True, True, True), (True, False, False), (False, True, False)):
        torch.library.opcheck(
            ops.lce_backward.default,
            ("vocab_chunked", grad, x.detach(), w.detach(), b.detach(), t, lse, *options, *need),
        )


@pytest.mark.parametrize("impl", ["reference", "chunked", "vocab_chunked"])
def test_autocast_casts_like_f_linear(impl):
    """Under autocast, float32 arguments run as their bfloat16 casts; the float32 leaves get
    exactly the cast-back gradients of that bfloat16 computation."""
    x, w, b, t = make_problem(23, 16, 50, dtype=torch.float32, bias=True, ignore_every=5)
    leaves = [a.clone().requires_grad_() for a in (x, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(leaves[0], leaves[1], t, bias=leaves[2], impl=impl)
    loss.backward()
    ref = loss_and_grads(*(a.bfloat16() for a in (x, w, b)), t, torch.tensor(1.0), impl=impl)
    assert loss.dtype == torch.float32 and torch.equal(loss.detach(), ref[0])
    for leaf, g in zip(leaves, ref[1:]):
        assert leaf.grad.dtype == torch.float32 and torch.equal(leaf.grad, g.float())


# --------------------------------------------------------------------------- errors


def _args():
    x, w, b, t = make_problem(4, 3, 5, dtype=torch.float32, bias=True)
    return x, w, b, t


@pytest.mark.parametrize(
    "change,error,match",
    [
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(impl="cuda"), ValueError, "impl"),
        (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing"),
        (dict(z_loss=-1.0), ValueError, "z_loss"),
        (dict(softcap=0.0), ValueError, "softcap"),
        (dict(softcap=-2.0), ValueError, "softcap"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
        (dict(weight=torch.zeros(5, 4)), ValueError, "d=4"),
        (dict(weight=torch.zeros(5, 3, 1)), ValueError, "weight"),
        (dict(weight=torch.zeros(5, 3, dtype=torch.float64)), TypeError, "weight dtype"),
        (dict(target=torch.zeros(4, 1, dtype=torch.long)), ValueError, "target shape"),
        (dict(target=torch.zeros(4)), TypeError, "target"),
        (dict(bias=torch.zeros(6)), ValueError, "bias"),
        (dict(input=torch.zeros(4, 3, dtype=torch.long)), TypeError, "input"),
        (
            dict(
                input=torch.zeros(4, 3, dtype=torch.float64),
                weight=torch.zeros(5, 3, dtype=torch.float64),
                bias=None,
                impl="triton",
            ),
            TypeError,
            "not float64",
        ),
    ],
)
def test_invalid_arguments(change, error, match):
    x, w, b, t = _args()
    args = dict(input=x, weight=w, target=t, bias=b)
    args.update(change)
    pos = [args.pop(k) for k in ("input", "weight", "target")]
    with pytest.raises(error, match=match):
        linear_cross_entropy(*pos, **args)


@pytest.mark.parametrize("impl", ["chunked", "vocab_chunked"])
@pytest.mark.parametrize("bad", [5, 17, -1, -101])
def test_out_of_range_target_raises(bad, impl):
    x, w, _, t = _args()
    t[2] = bad
    with pytest.raises(ValueError, match=f"found {bad}"):
        linear_cross_entropy(x, w, t, impl=impl)
    # Opt-out: no error and no out-of-bounds read (the bad target's logit counts as 0).
    loss = linear_cross_entropy(x, w, t, impl=impl, check_targets=False, reduction="none")
    assert torch.isfinite(loss).all()
    if impl == "vocab_chunked":  # same convention as chunked
        ref = linear_cross_entropy(x, w, t, impl="chunked", check_targets=False, reduction="none")
        torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize(
    "fn",
    [linear_cross_entropy, linear_cross_entropy_with_stats, linear_cross_entropy_vocab_parallel],
)
def test_public_defaults_are_the_loss_options_defaults(fn):
    """The public keyword defaults and LossOptions' (what the internals are given) agree."""
    params = inspect.signature(fn).parameters
    for field in dataclasses.fields(LossOptions):
        assert params[field.name].default == field.default, field.name


def test_impl_resolution(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from lmobjectives.ops.linear_cross_entropy import _resolve_impl

    assert _resolve_impl("auto", torch.device("cpu")) is Impl.CHUNKED
    assert _resolve_impl("auto", torch.device("cuda"), torch.bfloat16) is Impl.VOCAB_CHUNKED
    assert _resolve_impl("auto", torch.device("cuda"), torch.float64) is Impl.CHUNKED
    assert _resolve_impl(Impl.REFERENCE, torch.device("cpu")) is Impl.REFERENCE
    assert _resolve_impl("vocab_chunked", torch.device("cpu")) is Impl.VOCAB_CHUNKED
    with pytest.raises(ValueError, match="impl='triton'"):
        _resolve_impl("triton", torch.device("cpu"))


def test_import_and_cpu_path_work_without_triton():
    script = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from lmobjectives.ops import linear_cross_entropy\n"
        "from lmobjectives.ops import linear_cross_entropy as f\n"
        "x = torch.randn(3, 4, requires_grad=True)\n"
        "f(x, torch.randn(5, 4), torch.tensor([0, 1, 2])).backward()\n"
        "f(x, torch.randn(5, 4), torch.tensor([0, 1, 2]), impl='vocab_chunked').backward()\n"
        "assert 'triton' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# --------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["triton", "chunked", "vocab_chunked"])
@pytest.mark.parametrize("case", ["plain", "everything"])
def test_cuda_within_error_budget(impl, dtype, case):
    opts = dict(OPTION_CASES[case])
    bias, ignore_every = opts.pop("bias", False), opts.pop("ignore_every", 0)
    for reduction in ("mean", "none"):
        x, w, b, t = make_problem(1031, 256, 5003, dtype=dtype, device="cuda", bias=bias, ignore_every=ignore_every)
        upstream = (
            torch.rand(1031, dtype=torch.float64, device="cuda")
            if reduction == "none"
            else torch.tensor(1.0, dtype=torch.float64, device="cuda")
        )
        kw = dict(reduction=reduction, **opts)
        oracle = loss_and_grads(
            *(None if a is None else a.double() for a in (x, w, b)), t, upstream, impl="reference", **kw
        )
        naive = loss_and_grads(x, w, b, t, upstream, impl="reference", **kw)
        ours = loss_and_grads(x, w, b, t, upstream, impl=impl, **kw)
        for o, nv, ref in zip(ours, naive, oracle):
            assert rel_err(o, ref) <= 2.0 * rel_err(nv, ref) + MARGIN[dtype]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("impl", ["triton", "vocab_chunked"])
def test_cuda_autocast_casts_like_f_linear(impl):
    x, w, b, t = make_problem(1031, 256, 5003, dtype=torch.float32, device="cuda", bias=True, ignore_every=7)
    leaves = [a.clone().requires_grad_() for a in (x, w, b)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = linear_cross_entropy(leaves[0], leaves[1], t, bias=leaves[2], impl=impl)
    loss.backward()
    one = torch.tensor(1.0, device="cuda")
    ref = loss_and_grads(*(a.bfloat16() for a in (x, w, b)), t, one, impl=impl)
    assert rel_err(loss.detach(), ref[0]) < 1e-6
    for leaf, g in zip(leaves, ref[1:]):
        assert leaf.grad.dtype == torch.float32 and rel_err(leaf.grad, g.float()) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("impl", ["auto", "triton", "chunked"])  # auto: vocab_chunked
def test_cuda_under_torch_compile(impl):
    """Inductor, fullgraph, on CUDA: the custom operators (auto = vocab_chunked, triton) are
    bit-identical to eager; the traceable chunked path agrees within float32 rounding."""
    torch._dynamo.reset()
    x, w, b, t = make_problem(1031, 256, 5003, dtype=torch.bfloat16, device="cuda", bias=True, ignore_every=7)
    kw = dict(impl=impl, label_smoothing=0.1, z_loss=1e-4)
    one = torch.tensor(1.0, device="cuda")
    eager = loss_and_grads(x, w, b, t, one, **kw)
    leaves = [a.clone().requires_grad_() for a in (x, w, b)]

    def step(x, w, b, t):
        return linear_cross_entropy(x, w, t, bias=b, **kw)

    loss = torch.compile(step, fullgraph=True)(*leaves, t)
    got = [loss.detach(), *torch.autograd.grad(loss, leaves)]
    for a, e in zip(got, eager):
        if impl == "chunked":
            assert rel_err(a, e) < 1e-2
        else:
            assert torch.equal(a, e)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("impl,kw", [("triton", {}), ("vocab_chunked", dict(chunk_size=2**16 + 17))])
def test_cuda_int64_indexing(impl, kw):
    """N * V >= 2**31 (for vocab_chunked: N * chunk, one chunk of every class): the Triton
    kernels must use int64 offsets (compared with chunked)."""
    n, d, v = 2**15 + 3, 64, 2**16 + 17  # N * V > 2**31
    x, w, _, t = make_problem(n, d, v, dtype=torch.bfloat16, device="cuda", ignore_every=17)
    one = torch.tensor(1.0, device="cuda")
    ref = loss_and_grads(x, w, None, t, one, impl="chunked")
    got = loss_and_grads(x, w, None, t, one, impl=impl, **kw)
    for a, r in zip(got, ref):
        assert rel_err(a, r) < 2e-2
