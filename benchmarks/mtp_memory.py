"""CPU benchmark: peak memory and step time of Gloeckle et al.'s memory-efficient multi-token schedule against the
naive all-heads-at-once version, on the same model and batch.

Variants (one training step = the loss, then ``total.backward()``; fp32; the parallel-heads
:class:`~lmobjectives.models.MultiTokenTransformer`):

* ``naive``     -- ``n_future`` heads, every head's forward, then one backward (all heads' activations alive);
* ``efficient`` -- ``n_future`` heads, the paper's schedule (:func:`lmobjectives.recipes.step_losses.parallel_heads_loss`):
  trunk forward, then each head's forward + backward in turn, gradients summed at the trunk output;
* ``one_head``  -- ``n_future = 1``: the same trunk and one head (the plain Transformer). Its peak is the
  target ``trunk + one head``, which is also ``trunk + (naive heads) / N``.

Two memory measures:

1. **peak extra RSS** (process level). Every (variant, round) runs in a fresh Python subprocess with
   ``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=65536``, so glibc serves every tensor
   over 64 KiB with its own ``mmap`` and returns it on free: the resident set follows the live tensors.
   The child builds the model and the batch, resets the kernel's resident-set high-water mark to the
   current RSS (``/proc/self/clear_refs`` 5; ``VmHWM`` in ``/proc/self/status``), runs one step and
   reads the high-water mark; the difference is the step's peak (activations, the heads' gradients and
   the ``.grad`` tensors it leaves). (``ru_maxrss`` alone cannot be reset, and importing torch leaves it
   above a small step's peak.)
2. **activation bytes saved for backward** (exact, deterministic): one instrumented forward with
   ``torch.autograd.graph.saved_tensors_hooks`` records, per phase (the trunk, each head with its loss),
   the distinct storages autograd saves, parameters excluded. The naive step holds all phases at once;
   the efficient one holds the trunk's and one head's at a time.

Time: the median (and range) over ``--steps`` timed steps after one untimed step, over all rounds;
rounds alternate the variants, so that a busy machine slows each alike. The 1-minute load average is
recorded.

Run (this is the command behind benchmarks/results/mtp_memory.*)::

    python benchmarks/mtp_memory.py --out benchmarks/results/mtp_memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _harness import (
    MALLOC_ENV,
    child_rounds,
    peak_rss,
    reset_peak_rss,
    stats,
)  # benchmarks/_harness.py (the script's folder is on sys.path)

VARIANTS = ("naive", "efficient", "one_head")


def _setup(args: argparse.Namespace, n_future: int):
    import torch

    from lmobjectives import Vocab
    from lmobjectives.models import TransformerConfig
    from lmobjectives.models.mtp import MultiTokenTransformer
    from lmobjectives.objectives.mtp import MultiTokenPrediction

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        d_ff=4 * args.d_model,
        max_seq_len=args.seq_len,
        n_token_types=0,
    )
    model = MultiTokenTransformer(config, n_future=n_future)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), generator=torch.Generator().manual_seed(1))
    batch = MultiTokenPrediction(Vocab(size=args.vocab), n_future=n_future)(ids)  # one document per row
    return torch, model, batch


def child(args: argparse.Namespace) -> None:
    from lmobjectives.recipes.step_losses import parallel_heads_loss

    variant = args.child
    torch, model, batch = _setup(args, 1 if variant == "one_head" else args.n_future)
    efficient = variant == "efficient"

    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = parallel_heads_loss(model, batch, memory_efficient=efficient)
        loss.total.backward()
        return float(loss.total.detach())

    base_kib = reset_peak_rss()
    value = step()
    peak_kib = peak_rss()
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    print(
        json.dumps(
            {
                "peak_extra_rss_mib": (peak_kib - base_kib) / 1024,
                "times_s": times,
                "loss": value,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )


def saved_activations(args: argparse.Namespace) -> dict:
    """Bytes of the distinct non-parameter storages autograd saves in each phase of one forward."""
    from lmobjectives.losses import lm_loss

    torch, model, batch = _setup(args, args.n_future)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    phases: dict[str, dict[int, int]] = {}
    current: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            current[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        phases["trunk"] = current = {}
        trunk, attention = model.trunk(batch)
        heads = []
        for k in range(args.n_future):
            phases[f"head{k + 1}"] = current = {}
            hidden = model.head(k, trunk, attention)
            heads.append(lm_loss(hidden, model.output_weight, batch.labels[..., k], gather_targets=False).loss)
    trunk_ptrs = set(phases["trunk"])
    sizes = {name: sum(n for p, n in s.items() if name == "trunk" or p not in trunk_ptrs) for name, s in phases.items()}
    union: dict[int, int] = {}
    for s in phases.values():
        union.update(s)
    head_sizes = [v for k, v in sizes.items() if k != "trunk"]
    mib = 2**20
    return {
        "per_phase_mib": {k: v / mib for k, v in sizes.items()},
        "naive_mib": sum(union.values()) / mib,  # everything until the one backward
        "efficient_mib": (sizes["trunk"] + max(head_sizes)) / mib,  # the trunk's, then one head's at a time
        "one_head_mib": (sizes["trunk"] + sizes["head1"]) / mib,
    }


def run_child(variant: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", variant] + [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("n_future", "vocab", "d_model", "n_layers", "n_heads", "batch", "seq_len", "steps", "threads")
    ]
    env = os.environ | MALLOC_ENV
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-future", type=int, default=4, help="heads (Gloeckle et al.: 4)")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4, help="trunk = n_layers - 1 blocks, head 1 = the last")
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (after one untimed step)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    saved = saved_activations(args)
    print("saved activations:", json.dumps(saved), flush=True)
    runs, load_start, load_end = child_rounds(list(VARIANTS), lambda v: run_child(v, args), args.rounds)

    results = {}
    for v, rs in runs.items():
        ok = [r for r in rs if "times_s" in r]
        if not ok:
            results[v] = {"status": rs[-1] if rs else "not run"}
            continue
        results[v] = {
            "peak_extra_rss_mib": stats([r["peak_extra_rss_mib"] for r in ok]),
            "step_s": stats([t for r in ok for t in r["times_s"]]),
            "loss": ok[-1]["loss"],
            "rounds": len(ok),
        }
    naive, eff, one = (results[v].get("peak_extra_rss_mib", {}).get("median") for v in VARIANTS)
    summary = {}
    if None not in (naive, eff, one):
        head = (naive - one) / (args.n_future - 1)  # one head's share, from the naive peaks
        summary = {
            "rss_one_head_share_mib": head,
            "rss_trunk_and_rest_mib": one - head,
            "rss_goal_mib": one,  # trunk + (naive heads) / N = trunk + one head
            "rss_efficient_over_goal": eff / one,
            "rss_efficient_over_naive": eff / naive,
        }
    summary |= {
        "saved_efficient_over_naive": saved["efficient_mib"] / saved["naive_mib"],
        "saved_efficient_over_one_head": saved["efficient_mib"] / saved["one_head_mib"],
    }
    report = {
        "command": "python benchmarks/mtp_memory.py " + " ".join(sys.argv[1:]),
        "model": {
            "n_future": args.n_future,
            "vocab": args.vocab,
            "d_model": args.d_model,
            "n_layers": args.n_layers,
            "n_heads": args.n_heads,
            "d_ff": 4 * args.d_model,
            "batch": args.batch,
            "seq_len": args.seq_len,
            "dtype": "float32",
            "positions": "alibi",
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": next((r["threads"] for rs in runs.values() for r in rs if "threads" in r), None),
            "torch": next((r["torch"] for rs in runs.values() for r in rs if "torch" in r), None),
            "load_average_1min_start_end": [load_start, load_end],
        },
        "method": "fresh subprocess per (variant, round) with glibc mmap/trim thresholds at 64 KiB; peak extra RSS = "
        "VmHWM after one step minus RSS before it (high-water mark reset by clear_refs); time = timed steps after one untimed step; saved "
        "activations = distinct non-parameter storages saved for backward, per phase",
        "saved_activations": saved,
        "results": results,
        "summary": summary,
    }
    print(json.dumps({"results": results, "summary": summary}, indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report))


def markdown(report: dict) -> str:
    m, r, s, saved = report["model"], report["results"], report["summary"], report["saved_activations"]
    lines = [
        f"# Multi-token prediction: memory-efficient schedule vs naive, {m['n_future']} parallel heads, CPU",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Model: MultiTokenTransformer(head_design='parallel'), d_model {m['d_model']}, {m['n_layers']} layers "
        f"(trunk {m['n_layers'] - 1} blocks + one block per head), d_ff {m['d_ff']}, {m['n_heads']} attention heads, "
        f"vocab {m['vocab']}, batch {m['batch']} x {m['seq_len']} tokens, fp32, ALiBi.",
        "",
        f"Machine: {report['machine']['platform']}, {report['machine']['cpu_count']} CPUs, "
        f"{report['machine']['threads']} torch thread(s), torch {report['machine']['torch']}; 1-min load average "
        f"{[round(x, 2) for x in report['machine']['load_average_1min_start_end']]} at start and end (shared host).",
        "",
        f"Method: {report['method']}.",
        "",
        "| variant | peak extra RSS, median (min-max) MiB | step time, median (min-max) s | loss |",
        "|---|---|---|---|",
    ]
    names = {
        "naive": f"naive, {m['n_future']} heads",
        "efficient": f"memory-efficient, {m['n_future']} heads",
        "one_head": "one head (n_future=1)",
    }
    for v, res in r.items():
        if "peak_extra_rss_mib" not in res:
            lines.append(f"| {names[v]} | {res.get('status')} | | |")
            continue
        p, t = res["peak_extra_rss_mib"], res["step_s"]
        lines.append(
            f"| {names[v]} | {p['median']:.1f} ({p['min']:.1f}-{p['max']:.1f}) | "
            f"{t['median']:.3f} ({t['min']:.3f}-{t['max']:.3f}) | {res['loss']:.4f} |"
        )
    lines += [
        "",
        "Activation bytes saved for backward (exact, one instrumented forward; MiB): "
        + ", ".join(f"{k} {v:.1f}" for k, v in saved["per_phase_mib"].items())
        + f"; naive holds {saved['naive_mib']:.1f}, memory-efficient at most {saved['efficient_mib']:.1f} "
        f"({s['saved_efficient_over_naive']:.2f}x naive; {s['saved_efficient_over_one_head']:.2f}x trunk + one head).",
        "",
    ]
    if "rss_goal_mib" in s:
        lines += [
            f"Goal: the heads' peak ≈ one head's, i.e. peak ≤ trunk + (naive heads) / N = the one-head peak "
            f"{s['rss_goal_mib']:.1f} MiB (one head's share from the naive peaks: {s['rss_one_head_share_mib']:.1f} MiB). "
            f"Measured: memory-efficient / goal = {s['rss_efficient_over_goal']:.2f}, memory-efficient / naive = "
            f"{s['rss_efficient_over_naive']:.2f}.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
