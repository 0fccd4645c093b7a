"""Triton kernels vs a float64 oracle under the Triton interpreter (CPU tensors).

Run by test_triton_interpreter.py in a subprocess with TRITON_INTERPRET=1 set before Triton is
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


def grads(x, w, b, t, upstream, impl, reduction, opts):
    leaves = [a.detach().clone().requires_grad_() for a in (x, w) + ((b,) if b is not None else ())]
    out = linear_cross_entropy_with_stats(
        leaves[0], leaves[1], t, bias=leaves[2] if b is not None else None,
        reduction=reduction, impl=impl, **opts,
    )
    gs = torch.autograd.grad(out.loss, leaves, upstream.to(out.loss.dtype))
    return out, [out.loss.detach(), *gs]


def rel_err(a, ref):
    a, ref = a.double(), ref.double()
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def main() -> int:
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
        out, ours = grads(x, w, b, t, upstream, "triton", reduction, opts)
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
                print(f"FAIL {n}x{d}x{v} {dtype} {reduction} {opts}: {name} "
                      f"err {rel_err(o, ref):.3g} naive {rel_err(nv, ref):.3g}")
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
    for xi, impl in zip(xs, ("reference", "triton")):
        linear_cross_entropy_with_stats(xi, w, t, impl=impl).loss.backward()
    if w.grad is not None or rel_err(xs[1].grad, xs[0].grad) > 1e-5:
        failures += 1
        print("FAIL frozen weight")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
