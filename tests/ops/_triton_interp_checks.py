"""Triton kernels vs a float64 oracle under the Triton interpreter (CPU tensors).

``python _triton_interp_checks.py [IMPL [TILES]]``: ``IMPL`` is ``triton`` (the default: the
fused kernels) or ``vocab_chunked`` (its epilogue kernels, in chunks of 24 classes, plus a
direct comparison of each epilogue kernel with its torch version). ``TILES`` is
``interpreter`` (the default: the launchers' small interpreter tiles), or ``gpu-half`` /
``gpu-float``: the tiles a GPU launch uses for half-precision / float32 inputs, larger than
most of these problems, so that one partial tile covers a whole dimension.

Run by test_triton_interpreter.py and test_vocab_chunked.py in a subprocess with TRITON_INTERPRET=1 set before Triton is
imported (the variable is read at import time, and other test modules may already have
imported Triton in the pytest process). Standalone:
``TRITON_INTERPRET=1 python tests/ops/_triton_interp_checks.py``. Small shapes only: the
interpreter runs every program in Python. The interpreter tiles are 16 x 32 x 16
(rows x vocabulary x hidden), so these shapes cover several, partial, tiles in each dimension.
"""

from __future__ import annotations

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

from lmobjectives.constants import IGNORE_INDEX  # noqa: E402
from lmobjectives.ops import linear_cross_entropy_with_stats  # noqa: E402

# (n, d, v, dtype, reduction, options, bias, ignore_every)
CASES = [
    (37, 40, 107, torch.float32, "mean", dict(), False, 0),
    (37, 40, 107, torch.float32, "sum", dict(), True, 3),
    (37, 40, 107, torch.float32, "none", dict(label_smoothing=0.1, z_loss=1e-2), True, 4),
    (37, 40, 107, torch.bfloat16, "mean", dict(softcap=2.0, label_smoothing=0.2), False, 5),
    (1, 24, 1007, torch.float32, "mean", dict(z_loss=1e-3), True, 0),
    (20, 17, 33, torch.bfloat16, "none", dict(softcap=3.0, z_loss=1e-2), True, 2),
    (9, 16, 50, torch.float32, "mean", dict(), False, 1),  # every target ignored
]


IMPL_OPTIONS = {"triton": {}, "vocab_chunked": dict(chunk_size=24)}


def grads(x, w, b, t, upstream, impl, reduction, opts):
    leaves = [a.detach().clone().requires_grad_() for a in (x, w) + ((b,) if b is not None else ())]
    out = linear_cross_entropy_with_stats(
        leaves[0],
        leaves[1],
        t,
        bias=leaves[2] if b is not None else None,
        reduction=reduction,
        impl=impl,
        **opts,
        **IMPL_OPTIONS.get(impl, {}),
    )
    gs = torch.autograd.grad(out.loss, leaves, upstream.to(out.loss.dtype))
    return out, [out.loss.detach(), *gs]


def use_gpu_tiles(half: bool) -> None:
    """Make the launchers use the tile sizes of a GPU launch (not its warps or stages, which
    the interpreter has no use for)."""
    from lmobjectives.ops import _triton
    from lmobjectives.ops import _vocab_chunked_kernels as epilogues

    def tiles(config):
        return {k: v for k, v in config.items() if k.startswith("BLOCK_")}

    fused, epilogue = _triton.launch_config, epilogues.launch_config
    _triton.launch_config = lambda kind, *, upcast, interpret=None: tiles(fused(kind, upcast=not half, interpret=False))
    epilogues.launch_config = lambda *, interpret=None: tiles(epilogue(interpret=False))


def rel_err(a, ref):
    a, ref = a.double(), ref.double()
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def main(impl: str) -> int:
    from lmobjectives.ops import _triton, _vocab_chunked_kernels

    print(
        "tiles:",
        _triton.launch_config("forward", upcast=True),
        _triton.launch_config("backward", upcast=True),
        _vocab_chunked_kernels.launch_config(),
    )
    failures = 0
    for n, d, v, dtype, reduction, opts, with_bias, ignore_every in CASES:
        g = torch.Generator().manual_seed(n * v)
        x = torch.randn(n, d, generator=g).to(dtype)
        w = (torch.randn(v, d, generator=g) * d**-0.5 * 2).to(dtype)
        b = torch.randn(v, generator=g).to(dtype) if with_bias else None
        t = torch.randint(0, v, (n,), generator=g)
        if ignore_every:
            t[::ignore_every] = IGNORE_INDEX
        upstream = torch.rand(n, generator=g) + 0.5 if reduction == "none" else torch.tensor(1.0)
        f64 = [None if a is None else a.double() for a in (x, w, b)]
        oracle_out, oracle = grads(*f64, t, upstream.double(), "reference", reduction, opts)
        ref_out, naive = grads(x, w, b, t, upstream, "reference", reduction, opts)
        out, ours = grads(x, w, b, t, upstream, impl, reduction, opts)
        margin = 1e-6 if dtype == torch.float32 else 2e-3
        for name, o, nv, ref in zip(("loss", "dinput", "dweight", "dbias"), ours, naive, oracle):
            if not torch.isfinite(o).all() or o.dtype != nv.dtype:
                failures += 1
                print(f"FAIL {n}x{d}x{v} {dtype} {reduction} {opts}: {name} bad dtype/non-finite")
                continue
            if ref.abs().max() == 0:
                ok = o.abs().max() == 0
            else:
                ok = rel_err(o, ref) <= 2 * rel_err(nv, ref) + margin
            if not ok:
                failures += 1
                print(
                    f"FAIL {n}x{d}x{v} {dtype} {reduction} {opts}: {name} "
                    f"err {rel_err(o, ref):.3g} naive {rel_err(nv, ref):.3g}"
                )
        lse_budget = 2 * rel_err(ref_out.lse, oracle_out.lse) + margin
        if rel_err(out.lse, oracle_out.lse) > lse_budget or out.num_valid != ref_out.num_valid:
            failures += 1
            print(f"FAIL {n}x{d}x{v}: lse/num_valid")
        if (out.correct != ref_out.correct).float().mean() > 0.05:  # ties may differ in bf16
            failures += 1
            print(f"FAIL {n}x{d}x{v}: argmax accuracy")
        print(f"ok {n}x{d}x{v} {dtype} {reduction} {opts}", flush=True)
    # Frozen weight: only dinput is computed (and it matches the reference).
    x = torch.randn(21, 20, generator=torch.Generator().manual_seed(5))
    w = torch.randn(45, 20, generator=torch.Generator().manual_seed(6)) * 0.3
    t = torch.randint(0, 45, (21,), generator=torch.Generator().manual_seed(7))
    xs = [x.clone().requires_grad_() for _ in range(2)]
    for xi, name in zip(xs, ("reference", impl)):
        linear_cross_entropy_with_stats(xi, w, t, impl=name, **IMPL_OPTIONS.get(name, {})).loss.backward()
    if w.grad is not None or rel_err(xs[1].grad, xs[0].grad) > 1e-5:
        failures += 1
        print("FAIL frozen weight")
    if impl == "vocab_chunked":
        failures += vocab_chunked_epilogues_match_torch()
    failures += unchecked_targets_past_the_vocabulary(impl)
    failures += compiled_is_eager(impl)
    return 1 if failures else 0


def unchecked_targets_past_the_vocabulary(impl: str) -> int:
    """``check_targets=False``: targets ``V`` and ``V + 1`` (inside the last, partial vocabulary
    tile: V = 107 is not a multiple of any tile width) and a large id get the documented target
    logit 0, so a token loss of exactly ``lse``, and finite gradients (the fused kernel once
    matched ``V`` against a padded column holding -inf and returned inf)."""
    g = torch.Generator().manual_seed(8)
    n, d, v = 21, 20, 107
    x = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * 0.3
    t = torch.randint(0, v, (n,), generator=g)
    t[:3] = torch.tensor([v, v + 1, 2**40])
    kw = dict(check_targets=False, reduction="none", **IMPL_OPTIONS.get(impl, {}))
    out = linear_cross_entropy_with_stats(x, w, t, impl=impl, **kw)
    ref = linear_cross_entropy_with_stats(x, w, t.clamp(max=v - 1), impl="reference", reduction="none")
    expected = torch.cat([ref.lse[:3], ref.loss[3:]])
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    loss = linear_cross_entropy_with_stats(*leaves, t, impl=impl, **kw).loss
    finite = all(torch.isfinite(a).all() for a in torch.autograd.grad(loss.sum(), leaves))
    if not (finite and torch.allclose(out.loss, expected, rtol=1e-5, atol=1e-5)):
        print(
            f"FAIL {impl} check_targets=False past V: loss {out.loss[:3].tolist()}, "
            f"expected lse {expected[:3].tolist()}; finite gradients: {finite}"
        )
        return 1
    print(f"ok {impl} check_targets=False past V", flush=True)
    return 0


def compiled_is_eager(impl: str) -> int:
    """``torch.compile(fullgraph=True)`` runs the kernels as one opaque custom operator: the
    loss and gradients are bit-identical to eager mode."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(29, 24, generator=g).bfloat16()
    w = (torch.randn(61, 24, generator=g) * 0.4).bfloat16()
    t = torch.randint(0, 61, (29,), generator=g)
    t[::3] = IGNORE_INDEX
    opts = dict(impl=impl, label_smoothing=0.1, softcap=4.0, **IMPL_OPTIONS.get(impl, {}))

    def step(x, w, t):
        return linear_cross_entropy_with_stats(x, w, t, **opts).loss

    results = []
    for fn in (step, torch.compile(step, backend="aot_eager", fullgraph=True)):
        leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
        loss = fn(*leaves, t)
        results.append([loss.detach(), *torch.autograd.grad(loss, leaves)])
    if not all(torch.equal(a, b) for a, b in zip(*results)):
        print(f"FAIL {impl} under torch.compile differs from eager")
        return 1
    print(f"ok {impl} under torch.compile", flush=True)
    return 0


def vocab_chunked_epilogues_match_torch() -> int:
    """Each vocab_chunked epilogue kernel against its torch version on the same inputs: float32
    to 1e-5 (same math, different summation order), argmax exactly (ties included: the logits
    are rounded to a coarse grid so that many ties exist)."""
    from lmobjectives.ops import _vocab_chunked as vc
    from lmobjectives.ops._common import LossOptions
    from lmobjectives.ops._custom_ops import vocab_chunked_linear_cross_entropy

    failures = 0
    if vc.default_epilogue(torch.device("cpu"), torch.float32) != "triton":
        print("FAIL vocab_chunked: the Triton epilogue is not the default under the interpreter")
        return 1
    g = torch.Generator().manual_seed(11)
    n, d, v = 19, 12, 75
    x = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g)
    b = torch.randn(v, generator=g)
    t = torch.randint(0, v, (n,), generator=g)
    t[::5] = IGNORE_INDEX
    # Inputs and weights in {-1, 0, 1}, zero bias: equal maximal logits in 11 of the 19 rows,
    # in different chunks in 10 of them (the first one must win).
    ties = (x.round().clamp(-1, 1), w.round().clamp(-1, 1), torch.zeros(v))
    for inputs, opts in (((x, w, b), dict(softcap=2.5, label_smoothing=0.3, z_loss=0.1)), (ties, dict())):
        outs = {}
        for epilogue in ("torch", "triton"):
            leaves = [a.clone().requires_grad_() for a in inputs]
            loss, lse, argmax = vocab_chunked_linear_cross_entropy(
                leaves[0],
                leaves[1],
                t,
                leaves[2],
                LossOptions(reduction="sum", **opts),
                chunk_size=20,
                want_argmax=True,
                epilogue=epilogue,
            )
            outs[epilogue] = [loss.detach(), lse, *torch.autograd.grad(loss, leaves)], argmax
        (ref, ref_arg), (got, got_arg) = outs["torch"], outs["triton"]
        for name, a, r in zip(("loss", "lse", "dinput", "dweight", "dbias"), got, ref):
            if rel_err(a, r) > 1e-5:
                failures += 1
                print(f"FAIL vocab_chunked epilogue {opts}: {name} {rel_err(a, r):.3g}")
        if not torch.equal(got_arg, ref_arg):
            failures += 1
            print(f"FAIL vocab_chunked epilogue {opts}: argmax differs")
    print("ok vocab_chunked epilogues match torch", flush=True)
    return failures


if __name__ == "__main__":
    tiles = sys.argv[2] if len(sys.argv) > 2 else "interpreter"
    if tiles != "interpreter":
        assert tiles in ("gpu-half", "gpu-float"), tiles
        use_gpu_tiles(half=tiles == "gpu-half")
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "triton"))
