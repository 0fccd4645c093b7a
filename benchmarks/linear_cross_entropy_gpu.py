"""GPU benchmark of linear cross-entropy implementations (written for one H200 run).

What it does, in order:

1. Correctness: both of our GPU designs (``ours`` = ``impl="triton"``, ``vocab_chunked``) at
   the first shape, bf16, against a float32 reference (loss, dinput, dweight), with the naive
   bf16 computation's error as the budget (pass if ours <= 2 x naive + 1e-3). Printed and
   stored under ``"correctness"`` (``"pass"`` maps each design to True/False).
2. For each bf16 shape N x d x V (default 8192x4096x128256, 8192x2304x256000,
   32768x4096x128256), 5 % of targets ignored, fresh random inputs (``x ~ N(0, 1)``,
   ``W ~ N(0, 1/d) * 2``): for each method, forward+backward median time (CUDA events,
   ``--warmup`` untimed then ``--iters`` timed steps), peak extra device memory
   (``torch.cuda.max_memory_allocated()`` during one step minus the memory allocated before
   it; includes the bf16 ``.grad`` tensors the step creates) and the relative error
   ``||g - g_ref|| / ||g_ref||`` of dinput and dweight against a float32 reference
   (computed chunk by chunk with plain float32 math, independent of every method).

Methods: ``naive`` (bf16 logits, float32 ``F.cross_entropy``), ``compiled_naive``
(``torch.compile`` of the same), ``liger`` (Liger-Kernel ``LigerFusedLinearCrossEntropyLoss``,
if importable), ``cce`` (Apple ``cut_cross_entropy.linear_cross_entropy``, default impl, if
importable), ``torch_chunked`` (``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``
if present), ``floor`` (three bf16 matmuls into a preallocated N x V bf16 buffer: the GEMM
floor; time only, its memory is not comparable), ``ours`` (``lmobjectives.ops``,
``impl="triton"``: fused kernels, float32 atomics), ``vocab_chunked`` (``lmobjectives.ops``,
``impl="vocab_chunked"``, our second design: cuBLAS GEMMs over 64 MiB vocabulary chunks plus
Triton epilogues, four GEMMs, float32 ``dinput`` accumulator in borrowed ``dweight`` rows),
``vocab_chunked_noborrow`` (the same with a separate float32 ``(N/2, d)`` accumulator: no
recomputed logits, ``2 N d`` more bytes). How the installed torch accumulates
``vocab_chunked``'s ``dinput`` is stored under ``"vocab_chunked_dinput_accumulation"``.
Every method runs inside try/except (an error or OOM is recorded and the run continues) and
memory is freed between methods.

Run on the GPU machine::

    python benchmarks/linear_cross_entropy_gpu.py --out benchmarks/results/linear_cross_entropy_h200

Check the script without a GPU (tiny shapes, CPU, ours = chunked, vocab_chunked with its
torch epilogues, no CUDA timing/memory)::

    python benchmarks/linear_cross_entropy_gpu.py --dry-run --out /tmp/lce_gpu_dry
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

from lmobjectives.constants import IGNORE_INDEX
from lmobjectives.ops import linear_cross_entropy
from lmobjectives.ops._vocab_chunked import dinput_accumulation

DEFAULT_SHAPES = "8192x4096x128256,8192x2304x256000,32768x4096x128256"
METHODS = (
    "naive",
    "ours",
    "vocab_chunked",
    "liger",
    "cce",
    "floor",
    "vocab_chunked_noborrow",
    "torch_chunked",
    "compiled_naive",
)
"""Run in this order at every shape: ours early, the slowest to start (``torch.compile``) last,
so a run cut short by its time limit still has the rows that matter."""
DESIGNS = ("ours", "vocab_chunked")
"""Our GPU designs, checked for correctness at the first shape."""


# --------------------------------------------------------------------------- inputs & reference


def make_inputs(n, d, v, *, device, dtype, ignore_frac, seed):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n, d, generator=g, device=device, dtype=torch.float32).to(dtype)
    w = torch.randn(v, d, generator=g, device=device, dtype=torch.float32) * 2 / math.sqrt(d)
    w = w.to(dtype)
    t = torch.randint(0, v, (n,), generator=g, device=device)
    ignore = torch.rand(n, generator=g, device=device) < ignore_frac
    t = torch.where(ignore, torch.full_like(t, IGNORE_INDEX), t)
    return x, w, t


@torch.no_grad()
def fp32_reference(x, w, t, chunk=4096):
    """Mean cross-entropy and its gradients in float32, ``chunk`` tokens at a time::

    p = softmax(x W^T); dlogits = (p - onehot(t)) * valid / num_valid; dx = dlogits W;
    dW = dlogits^T x.
    """
    xf, wf = x.float(), w.float()
    valid = t != IGNORE_INDEX
    count = valid.sum().clamp_min(1).float()
    dx = torch.empty_like(xf)  # (N, d)
    dw = torch.zeros_like(wf)  # (V, d)
    total = torch.zeros((), device=x.device)
    for s in range(0, x.shape[0], chunk):
        e = min(s + chunk, x.shape[0])
        logits = xf[s:e] @ wf.T  # (C, V)
        lse = torch.logsumexp(logits, -1)  # (C,)
        tc, vc = t[s:e], valid[s:e]
        safe = torch.where(vc, tc, torch.zeros_like(tc))
        zt = logits.gather(1, safe[:, None]).squeeze(1)
        total += torch.where(vc, lse - zt, torch.zeros_like(lse)).sum()
        p = (logits - lse[:, None]).exp_()  # (C, V)
        p.scatter_add_(1, safe[:, None], -torch.ones_like(p[:, :1]))
        p.mul_((vc.float() / count)[:, None])
        dx[s:e] = p @ wf
        dw.addmm_(p.T, xf[s:e])
        del logits, p
    return total / count, dx, dw


def rel_err(a, ref):
    return ((a.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# --------------------------------------------------------------------------- methods


def build_method(name, x, w, t, *, device):
    """Return ``step() -> loss`` (forward only; the caller runs backward), or raise."""
    if name == "naive":
        return lambda: F.cross_entropy((x @ w.T).float(), t, ignore_index=IGNORE_INDEX)
    if name == "compiled_naive":

        def naive(x, w, t):
            return F.cross_entropy((x @ w.T).float(), t, ignore_index=IGNORE_INDEX)

        # dynamic=False: one static compile per shape (~20-60 s each on a cold cache, inside the
        # untimed warm-up). The default would recompile the second shape with symbolic sizes:
        # as slow to compile, and its kernels would not be the static ones timed at shape 1.
        compiled = torch.compile(naive, dynamic=False)
        return lambda: compiled(x, w, t)
    if name == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX)
        return lambda: liger(w, x, t)
    if name == "cce":
        from cut_cross_entropy import linear_cross_entropy as cce_lce

        return lambda: cce_lce(x, w, t, ignore_index=IGNORE_INDEX)
    if name == "torch_chunked":
        if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            raise RuntimeError("this torch has no LinearCrossEntropyOptions")
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda: F.linear_cross_entropy(x, w, t, ignore_index=IGNORE_INDEX, options=options)
    if name == "ours":
        impl = "triton" if device.type == "cuda" else "chunked"
        return lambda: linear_cross_entropy(x, w, t, impl=impl)
    if name == "vocab_chunked":
        return lambda: linear_cross_entropy(x, w, t, impl="vocab_chunked")
    if name == "vocab_chunked_noborrow":
        from lmobjectives.ops._common import LossOptions
        from lmobjectives.ops._custom_ops import vocab_chunked_linear_cross_entropy

        def noborrow():
            loss, _, _ = vocab_chunked_linear_cross_entropy(
                x,
                w,
                t,
                None,
                LossOptions(),
                chunk_size=None,
                want_argmax=False,
                borrow_dweight=False,
            )
            return loss

        return noborrow
    raise ValueError(name)


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def measure(name, x, w, t, ref, args, device):
    """Time, memory and gradient error of one method (one shape)."""
    timer = Timer(device)
    if name == "floor":
        n, v = x.shape[0], w.shape[0]
        g = torch.empty(n, v, device=device, dtype=x.dtype)  # (N, V) preallocated

        def floor_step():
            torch.mm(x, w.T, out=g)
            torch.mm(g, w)
            torch.mm(g.T, x)

        for _ in range(args.warmup):
            floor_step()
        times = [timer(floor_step) for _ in range(args.iters)]
        return {
            "median_s": statistics.median(times),
            "times_s": times,
            "note": "three bf16 GEMMs, N x V buffer preallocated; time only",
        }

    xg = x.detach().clone().requires_grad_()
    wg = w.detach().clone().requires_grad_()
    step_loss = build_method(name, xg, wg, t, device=device)

    def step():
        xg.grad = None
        wg.grad = None
        step_loss().backward()

    for _ in range(args.warmup):
        step()
    # Error of the last warm-up step's gradients against the float32 reference.
    loss_value = step_loss().item()
    errs = {"rel_err_dinput": rel_err(xg.grad, ref[1]), "rel_err_dweight": rel_err(wg.grad, ref[2])}
    times = [timer(step) for _ in range(args.iters)]
    out = {
        "median_s": statistics.median(times),
        "times_s": times,
        "loss": loss_value,
        "loss_ref": ref[0].item(),
        **errs,
    }
    if device.type == "cuda":
        xg.grad = None
        wg.grad = None
        free(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        out["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    xg = wg = step_loss = None  # free the method's tensors before the next one (step() holds them)
    return out


def correctness(x, w, t, ref, device):
    """Our designs vs the float32 reference, budget = 2 x naive bf16 error + 1e-3."""
    res = {}
    for name in ("naive", *DESIGNS):
        try:  # one design failing (a kernel that does not compile, OOM) must not hide the other
            xg = x.detach().clone().requires_grad_()
            wg = w.detach().clone().requires_grad_()
            loss = build_method(name, xg, wg, t, device=device)()
            loss.backward()
            res[name] = {
                "loss_rel_err": abs(loss.item() - ref[0].item()) / abs(ref[0].item()),
                "rel_err_dinput": rel_err(xg.grad, ref[1]),
                "rel_err_dweight": rel_err(wg.grad, ref[2]),
            }
        except Exception as exc:  # noqa: BLE001 - record and go on
            res[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        xg = wg = loss = None
        free(device)
    naive = res["naive"]
    res["pass"] = {
        name: "error" not in res[name]
        and "error" not in naive
        and all(res[name][k] <= 2 * naive[k] + 1e-3 for k in res[name])
        for name in DESIGNS
    }
    return res


# --------------------------------------------------------------------------- driver


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma list of NxdxV")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--ignore-frac", type=float, default=0.05)
    parser.add_argument("--out", required=True, help="write OUT.json and OUT.md")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, float32, tiny shapes: checks the script, not the GPU"
    )
    args = parser.parse_args()

    if args.dry_run:
        device, dtype = torch.device("cpu"), torch.float32
        if args.shapes == DEFAULT_SHAPES:
            args.shapes = "64x32x1000,33x16x517"
        args.warmup, args.iters = 1, 2
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device; use --dry-run to check the script on CPU")
        device, dtype = torch.device("cuda"), torch.bfloat16
    shapes = [tuple(int(s) for s in shape.split("x")) for shape in args.shapes.split(",")]
    methods = args.methods.split(",")

    report = {
        "command": "python " + " ".join(sys.argv),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "dtype": str(dtype),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "versions": versions(),
        "args": vars(args),
        "vocab_chunked_dinput_accumulation": dinput_accumulation(device, dtype),
        "correctness": None,
        "results": {},
    }
    for i, (n, d, v) in enumerate(shapes):
        key = f"{n}x{d}x{v}"
        print(f"== shape {key}", flush=True)
        try:
            x, w, t = make_inputs(n, d, v, device=device, dtype=dtype, ignore_frac=args.ignore_frac, seed=i)
            ref = fp32_reference(x, w, t)
        except Exception as exc:  # noqa: BLE001 - e.g. OOM: record it, try the next shape
            report["results"][key] = {"setup": {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}}
            print(f"  setup: {report['results'][key]['setup']['error']}", flush=True)
            x = w = t = ref = None
            free(device)
            write(report, args.out)
            continue
        if i == 0:
            try:
                report["correctness"] = correctness(x, w, t, ref, device)
            except Exception as exc:  # noqa: BLE001 - keep going, record the failure
                report["correctness"] = {"error": repr(exc), "traceback": traceback.format_exc()}
            print("correctness:", json.dumps(report["correctness"]), flush=True)
        report["results"][key] = {}
        for name in methods:
            try:
                res = measure(name, x, w, t, ref, args, device)
            except Exception as exc:  # noqa: BLE001 - OOM, missing package, ...
                res = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            report["results"][key][name] = res
            print(f"  {name}: {summarise(res)}", flush=True)
            free(device)
            write(report, args.out)
        del x, w, t, ref
        free(device)
    write(report, args.out)


def versions():
    out = {}
    for mod in ("triton", "liger_kernel", "cut_cross_entropy"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def summarise(res):
    if "error" in res:
        return res["error"]
    parts = [f"{res['median_s'] * 1e3:.1f} ms"]
    if "peak_extra_mib" in res:
        parts.append(f"{res['peak_extra_mib']:.0f} MiB")
    if "rel_err_dinput" in res:
        parts.append(f"dx {res['rel_err_dinput']:.2e} dW {res['rel_err_dweight']:.2e}")
    return ", ".join(parts)


def _write_atomic(path, text):
    """Write then rename, so a run killed mid-write keeps the previous complete file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write(report, out):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Linear cross-entropy on {report['device']} ({report['dtype']})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Versions: torch {report['torch']}, {report['versions']}",
        "",
        f"Correctness (our designs vs float32 reference): `{json.dumps(report['correctness'])}`",
        "",
        f"vocab_chunked dinput accumulation: {report.get('vocab_chunked_dinput_accumulation')}",
        "",
    ]
    for shape, rows in report["results"].items():
        lines += [
            f"## N x d x V = {shape}",
            "",
            "| method | fwd+bwd median (ms) | peak extra memory (MiB) | rel err dinput | rel err dweight |",
            "|---|---|---|---|---|",
        ]
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"| {name} | {r['error'][:80]} | | | |")
                continue
            mem = f"{r['peak_extra_mib']:.0f}" if "peak_extra_mib" in r else "-"
            ex = f"{r['rel_err_dinput']:.2e}" if "rel_err_dinput" in r else "-"
            ew = f"{r['rel_err_dweight']:.2e}" if "rel_err_dweight" in r else "-"
            lines.append(f"| {name} | {r['median_s'] * 1e3:.1f} | {mem} | {ex} | {ew} |")
        lines.append("")
    _write_atomic(out.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    main()
