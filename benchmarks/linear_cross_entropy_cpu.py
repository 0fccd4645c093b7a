"""CPU benchmark: forward + backward time and peak extra RSS of linear cross-entropy.

Methods (fp32, N x d x V = 4096 x 512 x 32000 by default, no ignored targets):

* ``naive``   -- ``F.cross_entropy(input @ weight.T, target)``
* ``native``  -- torch's chunked ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())``
  (skipped when the installed torch lacks it)
* ``chunked`` -- ``lmobjectives.ops.linear_cross_entropy(..., impl="chunked")``
* ``floor``   -- the three GEMMs of a step and nothing else, over the same token chunks and
  into the same kind of buffers as ``chunked`` (``logits = x_c @ W.T``, ``dx_c = logits @ W``,
  ``dW += logits.T @ x_c``): what ``chunked`` would cost if its softmax and cross-entropy
  were free. Not a loss (``loss`` is reported as 0).

Method: every (method, round) runs in a fresh Python subprocess, so allocator caches and the
process high-water mark start clean. The child builds the inputs, touches them, and reads
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident set so far, KiB on Linux) as the
baseline; it then runs ``--warmup`` untimed and ``--steps`` timed forward+backward steps
(``time.perf_counter``) and reads ``ru_maxrss`` again. "Peak extra RSS" is the difference: the
most memory one training step needed beyond the inputs, including the gradient tensors that
the step leaves in ``.grad``. Time is the median over all timed steps of all rounds, with the
range (min, max) and each round's median as the spread; the ratios to ``naive`` and ``floor``
are of medians. Rounds alternate the methods so that a busy machine slows each of them alike;
the 1-minute load average is recorded at the start and end. On a shared host the spread, not
the median alone, says how far to trust a ratio: the table also gives the ratios of the fastest
steps (the least disturbed ones) and, against the floor, the median over rounds of each round's
ratio (a method and the floor ran seconds apart in the same round).

``--report OUT.json`` rewrites ``OUT.md`` from a saved ``OUT.json`` without running anything.

Run (this is the command behind benchmarks/results/linear_cross_entropy_cpu.*)::

    python benchmarks/linear_cross_entropy_cpu.py --out benchmarks/results/linear_cross_entropy_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _harness import child_rounds  # benchmarks/_harness.py (the script's folder is on sys.path)

METHODS = ("naive", "native", "chunked", "floor")


def child(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from lmobjectives.ops import linear_cross_entropy

    torch.manual_seed(0)
    n, d, v = args.n, args.d, args.v
    x = torch.randn(n, d).requires_grad_()  # (N, d)
    w = (torch.randn(v, d) * d**-0.5).requires_grad_()  # (V, d)
    t = torch.randint(0, v, (n,))  # (N,)
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    if args.child == "naive":

        def loss_fn():
            return F.cross_entropy(x @ w.T, t)
    elif args.child == "native":
        if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
            print(json.dumps({"skipped": "torch has no LinearCrossEntropyOptions"}))
            return
        options = torch.nn.LinearCrossEntropyOptions()

        def loss_fn():
            return F.linear_cross_entropy(x, w, t, options=options)
    elif args.child == "chunked":

        def loss_fn():
            return linear_cross_entropy(x, w, t, impl="chunked", chunk_size=args.chunk_size)
    else:
        loss_fn = _three_gemms(x, w, args.chunk_size)

    times, losses = [], []
    for step in range(args.warmup + args.steps):
        x.grad = None
        w.grad = None
        start = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        elapsed = time.perf_counter() - start
        if step >= args.warmup:
            times.append(elapsed)
        losses.append(loss.item())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "times_s": times,
                "loss": losses[-1],
                "peak_extra_rss_mib": (peak_kib - base_kib) / 1024,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )


def _three_gemms(x, w, chunk_size):
    """A step of the three GEMMs alone, over ``chunked``'s token chunks (its default size)."""
    import torch

    from lmobjectives.ops._chunked import default_chunk_size

    n, v = x.shape[0], w.shape[0]
    rows = chunk_size or default_chunk_size(n, v, x.dtype)
    block = torch.empty(min(rows, n), v)  # (C, V) reused, as chunked's
    zero = torch.zeros((), requires_grad=True)

    def step():
        dx = torch.empty_like(x)  # (N, d)
        dw = torch.zeros_like(w)  # (V, d)
        with torch.no_grad():
            for s in range(0, n, rows):
                e = min(s + rows, n)
                logits = torch.mm(x[s:e], w.t(), out=block[: e - s])  # (C, V)
                torch.mm(logits, w, out=dx[s:e])
                dw.addmm_(logits.t(), x[s:e])
        x.grad, w.grad = dx, dw
        return zero * 1.0  # backward() of a constant: nothing

    return step


def run_child(method: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--n",
        str(args.n),
        "--d",
        str(args.d),
        "--v",
        str(args.v),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
    ]
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--v", type=int, default=32000)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=None, help="ours; default: auto")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--report", default=None, help="rewrite the .md of a saved .json, run nothing")
    parser.add_argument("--child", choices=METHODS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.report:
        saved = Path(args.report)
        saved.with_suffix(".md").write_text(markdown(json.loads(saved.read_text())))
        return

    methods = args.methods.split(",")
    runs, load_start, load_end = child_rounds(methods, lambda m: run_child(m, args), args.rounds)

    results = {}
    for m, rs in runs.items():
        ok = [r for r in rs if "times_s" in r]
        if not ok:
            results[m] = {"status": rs[-1] if rs else "not run"}
            continue
        times = [t for r in ok for t in r["times_s"]]
        results[m] = {
            "median_s": statistics.median(times),
            "min_s": min(times),
            "max_s": max(times),
            "round_medians_s": [statistics.median(r["times_s"]) for r in ok],
            "times_s": times,
            "peak_extra_rss_mib": max(r["peak_extra_rss_mib"] for r in ok),
            "loss": ok[-1]["loss"],
        }
    report = {
        "command": "python benchmarks/linear_cross_entropy_cpu.py " + " ".join(sys.argv[1:]),
        "shape": {"N": args.n, "d": args.d, "V": args.v, "dtype": "float32"},
        "chunk_size": args.chunk_size or "auto",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "threads": next((r["threads"] for rs in runs.values() for r in rs if "threads" in r), None),
            "torch": next((r["torch"] for rs in runs.values() for r in rs if "torch" in r), None),
            "load_average_1min_start_end": [load_start, load_end],
        },
        "method": "fresh subprocess per (method, round); time = median of timed fwd+bwd steps; "
        "memory = ru_maxrss after steps minus ru_maxrss after building inputs",
        "results": results,
    }
    print(json.dumps(results, indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report))


def markdown(report: dict) -> str:
    s = report["shape"]
    results = report["results"]
    naive, floor = results.get("naive", {}), results.get("floor", {})
    lines = [
        f"# Linear cross-entropy on CPU, fp32, N x d x V = {s['N']} x {s['d']} x {s['V']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPUs, "
        f"{report['machine']['threads']} torch threads, torch {report['machine']['torch']}; "
        f"1-min load average {[round(x, 2) for x in report['machine']['load_average_1min_start_end']]} "
        "at start and end (shared host).",
        "",
        f"Method: {report['method']}.",
        "",
        "| method | median (s) | min (s) | range (s) | round medians (s) | vs naive: median, min "
        "| vs floor: median, min, per round | peak extra RSS (MiB) | vs naive memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(r, base, key):
        return f"{r[key] / base[key]:.2f}x" if key in base and key in r else "n/a"

    def per_round(r, base):
        if "round_medians_s" not in base or "round_medians_s" not in r:
            return "n/a"
        pairs = zip(r["round_medians_s"], base["round_medians_s"])
        return f"{statistics.median(a / b for a, b in pairs):.2f}x"

    for m, r in results.items():
        if "median_s" not in r:
            lines.append(f"| {m} | {r.get('status')} | | | | | | | |")
            continue
        rounds = ", ".join(f"{t:.2f}" for t in r["round_medians_s"])
        lines.append(
            f"| {m} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} "
            f"| {rounds} | {ratio(r, naive, 'median_s')}, {ratio(r, naive, 'min_s')} "
            f"| {ratio(r, floor, 'median_s')}, {ratio(r, floor, 'min_s')}, {per_round(r, floor)} "
            f"| {r['peak_extra_rss_mib']:.0f} | {ratio(r, naive, 'peak_extra_rss_mib')} |"
        )
    lines += [
        "",
        "`floor`: the three GEMMs of the step alone over chunked's token chunks (no softmax, "
        "no loss): the time chunked would take if everything but its GEMMs were free. "
        "\"per round\": the median over rounds of (this method's round median / the floor's). "
        "A round whose steps all ran slow (another job on the host) moves the medians; the "
        "fastest steps and the per-round ratios are the least disturbed readings.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
