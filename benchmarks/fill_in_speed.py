"""CPU benchmark: the demo preset's fill-in evaluation of a causal model, candidates scored by the reference path
(every candidate's whole block through the model) against the cached one (the left context once per block).

What is timed: ``fill_in(run, candidates=<every non-special token>, max_positions=32, impl=...)`` on a CLM run of
the demo's model and block length (``lmobj compare --preset demo``: ``candidates="all"``, i.e. the 256 byte values,
``max_positions=32``, the TrainConfig defaults: d_model 128, 2 layers, 4 heads, d_ff 512, ALiBi, seq_len 128). The
run is trained for a few steps first (``--train-steps``; the time per candidate does not depend on the weights),
or read from ``--run``. The whole task is timed, proposal pass included, as ``lmobj eval`` runs it.

Each (path, round) runs in a fresh Python subprocess; rounds alternate the paths so that a busy machine slows
each alike; the 1-minute load average is recorded before and after. Peak memory: the child resets the kernel's
resident-set high-water mark before the call (``/proc/self/clear_refs`` 5) and reads ``VmHWM`` after it, with
glibc's mmap/trim thresholds at 64 KiB so that freed tensors leave the resident set. Both paths' metrics are
recorded: they must agree (the tests check the scores themselves against float64).

Run (the command behind benchmarks/results/fill_in_speed.md; 2.3 minutes on 2 cores at load 2, 3.3 at load 4;
the reference path two thirds of it)::

    python benchmarks/fill_in_speed.py --out benchmarks/results/fill_in_speed
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    MALLOC_ENV,
    child_rounds,
    peak_rss,
    reset_peak_rss,
    stats,
)  # benchmarks/_harness.py (the script's folder is on sys.path)

IMPLS = ("reference", "cached")


def child(args: argparse.Namespace) -> None:
    """One fill_in call with ``impl=args.child`` on the run in ``args.run``; prints one JSON line."""
    import torch

    from lmobjectives.evaluation import fill_in, load_run

    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    every = int((~run.vocab.special_mask()).sum())  # candidates="all", as lmobjectives.compare.runner reads it
    base_kib = reset_peak_rss()
    started = time.perf_counter()
    result = fill_in(run, candidates=every, max_positions=args.max_positions, impl=args.child)
    elapsed = time.perf_counter() - started
    peak_kib = peak_rss()
    print(
        json.dumps(
            {
                "time_s": elapsed,
                "peak_extra_rss_mib": (peak_kib - base_kib) / 1024,
                "metrics": result.metrics,
                "candidates": every,
                "hidden_tokens": result.info["hidden_tokens"],
                "block_length": result.info["block_length"],
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )


def run_child(impl: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        impl,
        "--run",
        args.run,
        f"--threads={args.threads}",
        f"--max-positions={args.max_positions}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | MALLOC_ENV, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_run(out: str, steps: int) -> None:
    """A CLM run at the TrainConfig defaults (the demo's model and seq_len), ``steps`` optimizer steps."""
    from lmobjectives.training import TrainConfig, train

    with contextlib.redirect_stdout(io.StringIO()):
        train(
            TrainConfig(
                objective="clm",
                out=out,
                steps=steps,
                warmup_steps=min(5, steps),
                progress=False,
                save_every=0,
                log_every=max(1, steps),
            )
        )


def markdown(summary: dict) -> str:
    s = summary
    ref, new = s["results"]["reference"], s["results"]["cached"]
    lines = [
        "# Fill-in of a causal model: cached candidate scoring against the reference, demo preset, CPU",
        "",
        f"Command: `{s['command']}` ({s['wall_s'] / 60:.1f} minutes)",
        "",
        f"Task: `fill_in(run, candidates={s['candidates']}, max_positions={s['max_positions']})` (the demo preset's "
        f'`candidates="all"`): {s["hidden_tokens"]} hidden positions of {s["block_length"]}-token held-out blocks, '
        f"each candidate scored by the whole block. Model: the CLM recipe at the TrainConfig defaults "
        f"({s['model']}), trained {s['train_steps']} steps.",
        "",
        f"Machine: {s['machine']}, {s['cpus']} CPUs, {s['threads']} torch thread(s), torch {s['torch']}; "
        f"1-min load average {s['load_start']:.2f} at start, {s['load_end']:.2f} at end.",
        "",
        "Method: a fresh subprocess per (path, round), the paths alternating; time = the whole fill_in call "
        "(proposal pass included); peak extra RSS = VmHWM after the call minus RSS before it (glibc mmap/trim "
        "thresholds at 64 KiB). Median (min-max) over the rounds.",
        "",
        "`reference`: every candidate's whole block through the model, 16 positions x 256 candidates per forward "
        "(as before). `cached`: each block's left context once (its keys and values kept), log p(c | left) of every "
        "candidate from the block's own next-token distribution, and per position the positions after the gap for "
        "all candidates (up to 8192 candidate positions per forward), attending to the kept keys.",
        "",
        "| path | rounds | time s | peak extra RSS MiB | loss | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name in IMPLS:
        r = s["results"][name]
        t, m = r["time_s"], r["peak_extra_rss_mib"]
        lines.append(
            f"| {name} | {len(t['values'])} | {t['median']:.2f} ({t['min']:.2f}-{t['max']:.2f}) | "
            f"{m['median']:.0f} ({m['min']:.0f}-{m['max']:.0f}) | "
            f"{r['loss']!r} | {r['accuracy']!r} |"
        )
    lines += [
        "",
        f"Speed-up (median reference / median cached): **{ref['time_s']['median'] / new['time_s']['median']:.2f}x**; "
        f"per round: {', '.join(f'{a / b:.2f}x' for a, b in zip(ref['time_s']['values'], new['time_s']['values']))}.",
        "",
        f"Same numbers: loss {new['loss']!r} vs {ref['loss']!r} (relative difference "
        f"{abs(new['loss'] - ref['loss']) / abs(ref['loss']):.1e}), "
        f"accuracy {new['accuracy']!r} vs {ref['accuracy']!r}. "
        "The scores themselves are checked in tests/evaluation/test_fill_in.py: both paths within float32 rounding "
        "of a float64 reference (ALiBi, RoPE, multi-token heads; the first and the last position).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=None, help="a CLM run folder (default: train one in a temporary folder)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--max-positions", type=int, default=32, help="the demo preset's max_positions")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write OUT.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is None:
            args.run = str(Path(tmp) / "clm")
            train_run(args.run, args.train_steps)
        runs, load_start, load_end = child_rounds(list(IMPLS), lambda name: run_child(name, args), args.rounds)
        config = json.loads((Path(args.run) / "config.json").read_text())
    errors = {name: r["error"] for name, rs in runs.items() for r in rs if "error" in r}
    if errors:
        sys.exit(f"a child failed: {errors}")
    import torch

    train_config = config.get("train", config)
    first = runs["reference"][0]
    summary = {
        "command": "python benchmarks/fill_in_speed.py " + " ".join(sys.argv[1:]),
        "wall_s": time.perf_counter() - started,
        "candidates": first["candidates"],
        "hidden_tokens": first["hidden_tokens"],
        "block_length": first["block_length"],
        "max_positions": args.max_positions,
        "train_steps": train_config.get("steps", args.train_steps),
        "model": ", ".join(
            f"{k} {train_config[k]}"
            for k in ("d_model", "n_layers", "n_heads", "d_ff", "positions")
            if k in train_config
        ),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": first["threads"],
        "torch": torch.__version__,
        "load_start": load_start,
        "load_end": load_end,
        "results": {
            name: {
                "time_s": stats([r["time_s"] for r in rs]),
                "peak_extra_rss_mib": stats([r["peak_extra_rss_mib"] for r in rs]),
                "loss": rs[0]["metrics"]["loss"],
                "accuracy": rs[0]["metrics"]["accuracy"],
            }
            for name, rs in runs.items()
        },
    }
    text = markdown(summary)
    print(text)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
