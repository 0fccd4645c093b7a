"""Throughput of SpanCorruption against a per-example numpy implementation of the same algorithm.

Same batch for both: 256 rows of 568 raw tokens (T5's raw length for 512 encoder inputs at noise
density 0.15 and mean span 3), ids uniform over an ordinary range of a 32 100-id T5-like vocabulary
(pad 0, EOS 1, sentinels ``<extra_id_0..99>`` = 32099 down to 32000, as T5's).

* ``ours``: ``SpanCorruption()`` (encoder_decoder layout, defaults) end to end: argument checks,
  padding from ``attention_mask``, sentinel-collision check, the noise mask for the whole batch,
  inputs/targets, labels, ``decoder_input_ids`` and masks: a complete batch for
  ``T5ForConditionalGeneration``.
* ``ours_decoder``: the same with ``layout="decoder"`` (inputs then targets, prefix LM).
* ``ours_noise_mask``: only ``random_spans_noise_mask`` for the batch.
* ``numpy_per_example`` (the baseline): a loop over the rows, each doing what T5's preprocessors do
  for one example (``random_spans_noise_mask`` ported line by line to numpy with a seeded
  ``np.random.Generator``: two shuffles, cumsums, the span-start indicator; then
  ``noise_span_to_unique_sentinel`` / ``nonnoise_span_to_unique_sentinel`` and EOS), padded into
  the same arrays (inputs, attention mask, labels, decoder inputs, decoder mask) as ours.
* ``numpy_noise_mask``: only the baseline's per-example masks.

Paths are timed round-robin (each round times every path once, ours ``--ours-calls`` times), so all
see the same machine load; median and range (min-max) over the calls. Tokens/s counts the B x 568
raw tokens.

Run: ``python benchmarks/span_corruption_throughput.py`` (writes
benchmarks/results/span_corruption_throughput.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from _harness import time_interleaved  # benchmarks/_harness.py (the script's folder is on sys.path)

from lmobjectives import Vocab
from lmobjectives.objectives.span_corruption import SpanCorruption, random_spans_noise_mask, span_corruption_lengths

RESULTS = Path(__file__).resolve().parent / "results"
VOCAB_SIZE, PAD, EOS = 32100, 0, 1
SENTINELS = tuple(range(VOCAB_SIZE - 1, VOCAB_SIZE - 101, -1))  # <extra_id_0> = 32099, ... (T5)
IGNORE = -100


# --------------------------------------------------------------------------- baseline
def numpy_noise_mask(length: int, noise_density: float, mean_noise_span_length: float, rng) -> np.ndarray:
    """T5's random_spans_noise_mask for one example, in numpy."""
    orig_length = length
    length = max(length, 2)
    num_noise_tokens = min(max(int(round(length * noise_density)), 1), length - 1)
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
    num_nonnoise_tokens = length - num_noise_tokens

    def random_segmentation(num_items: int, num_segments: int) -> np.ndarray:
        first_in_segment = np.zeros(num_items, dtype=np.int64)
        first_in_segment[1:] = rng.permutation(np.arange(num_items - 1) < num_segments - 1)
        return np.bincount(np.cumsum(first_in_segment), minlength=num_segments)

    noise_lengths = random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_lengths = random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    indicator = np.zeros(length, dtype=np.int64)
    indicator[np.cumsum(interleaved)[:-1]] = 1
    return (np.cumsum(indicator) % 2 == 1)[:orig_length]


def numpy_to_unique_sentinel(tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """T5's noise_span_to_unique_sentinel for one example (span k -> sentinels[k]), EOS appended."""
    prev = np.concatenate([[False], mask[:-1]])
    first = mask & ~prev
    later = mask & prev
    out = np.where(first, sentinels[np.maximum(np.cumsum(first) - 1, 0)], tokens)[~later]
    return np.append(out, EOS)


def numpy_per_example(ids: np.ndarray, lengths: np.ndarray, d: float, mu: float, rng) -> dict[str, np.ndarray]:
    B, T = ids.shape
    Wi, Wt = span_corruption_lengths(T, d, mu)
    sentinels = np.asarray(SENTINELS)
    inputs = np.full((B, Wi), PAD, dtype=np.int64)
    labels = np.full((B, Wt), IGNORE, dtype=np.int64)
    for b in range(B):
        tokens = ids[b, : lengths[b]]
        mask = numpy_noise_mask(int(lengths[b]), d, mu, rng)
        x = numpy_to_unique_sentinel(tokens, mask, sentinels)
        y = numpy_to_unique_sentinel(tokens, ~mask, sentinels)
        inputs[b, : len(x)] = x
        labels[b, : len(y)] = y
    decoder_input_ids = np.concatenate([np.full((B, 1), PAD), np.where(labels == IGNORE, PAD, labels)[:, :-1]], 1)
    return {
        "input_ids": inputs,
        "attention_mask": inputs != PAD,
        "labels": labels,
        "decoder_input_ids": decoder_input_ids,
        "decoder_attention_mask": labels != IGNORE,
    }


# --------------------------------------------------------------------------- timing
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--length", type=int, default=568, help="raw tokens per row (568 -> 512 inputs)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds; each times every path")
    ap.add_argument("--ours-calls", type=int, default=5, help="calls of each of our paths per round (numpy: 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--malloc-rerun",
        action="store_true",
        help=f"also rerun in a subprocess with {' '.join(f'{k}={v}' for k, v in MALLOC_ENV.items())} and report both",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    B, T = args.batch, args.length
    d, mu = 0.15, 3.0
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB_SIZE - 100, (B, T), generator=g)  # (B, T), no sentinel, no pad
    real = torch.ones(B, T, dtype=torch.bool)
    lengths = real.sum(-1)
    vocab = Vocab(size=VOCAB_SIZE, pad_id=PAD, eos_id=EOS, sentinel_ids=SENTINELS)
    ours = SpanCorruption(vocab, noise_density=d, mean_noise_span_length=mu)
    ours_dec = SpanCorruption(vocab, noise_density=d, mean_noise_span_length=mu, layout="decoder")
    ids_np, lengths_np = ids.numpy(), lengths.numpy()
    rng = np.random.default_rng(0)

    # sanity: both give the same shapes, the same number of targets, and reconstructable rows
    mine, theirs = ours(ids, attention_mask=real, generator=g), numpy_per_example(ids_np, lengths_np, d, mu, rng)
    assert (
        tuple(mine.input_ids.shape) == theirs["input_ids"].shape and tuple(mine.labels.shape) == theirs["labels"].shape
    )
    assert int((mine.labels != IGNORE).sum()) == int((theirs["labels"] != IGNORE).sum())
    assert bool(mine.attention_mask.all()) and bool(theirs["attention_mask"].all())

    load_before = os.getloadavg()
    paths = {
        "ours": lambda: ours(ids, attention_mask=real, generator=g),
        "ours_decoder": lambda: ours_dec(ids, attention_mask=real, generator=g),
        "ours_noise_mask": lambda: random_spans_noise_mask(lengths, d, mu, width=T, generator=g),
        "numpy_per_example": lambda: numpy_per_example(ids_np, lengths_np, d, mu, rng),
        "numpy_noise_mask": lambda: [numpy_noise_mask(int(n), d, mu, rng) for n in lengths_np],
    }
    calls = {name: args.ours_calls if name.startswith("ours") else 1 for name in paths}
    results = time_interleaved(paths, calls, args.warmup, args.rounds)
    load_after = os.getloadavg()
    for r in results.values():
        r["tokens_per_s"] = B * T / (r["median_ms"] / 1e3)
        r["tokens_per_s_range"] = [B * T / (r["max_ms"] / 1e3), B * T / (r["min_ms"] / 1e3)]

    def ratio(a, b):
        return results[b]["median_ms"] / results[a]["median_ms"]

    ratios = {
        "ours_vs_numpy_per_example": ratio("ours", "numpy_per_example"),
        "ours_decoder_vs_numpy_per_example": ratio("ours_decoder", "numpy_per_example"),
        "noise_mask_vs_numpy_noise_mask": ratio("ours_noise_mask", "numpy_noise_mask"),
    }
    Wi, Wt = span_corruption_lengths(T, d, mu)
    report = {
        "command": "python "
        + " ".join([os.path.relpath(__file__, Path.cwd())] + (sys.argv[1:] if argv is None else list(argv))),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        },
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__},
        "batch": {
            "B": B,
            "T": T,
            "inputs_width": Wi,
            "targets_width": Wt,
            "noise_density": d,
            "mean_noise_span_length": mu,
        },
        "results": results,
        "ratios": ratios,
    }
    report["goals"] = {"ours >= 10x numpy_per_example": ratios["ours_vs_numpy_per_example"] >= 10}
    if args.malloc_rerun:
        cmd = [
            sys.executable,
            __file__,
            "--no-write",
            "--batch",
            str(B),
            "--length",
            str(T),
            "--warmup",
            str(args.warmup),
            "--rounds",
            str(args.rounds),
            "--ours-calls",
            str(args.ours_calls),
        ]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, env={**os.environ, **MALLOC_ENV}, capture_output=True, text=True, check=True).stdout
        report["malloc_rerun"] = json.loads(out)
    print(json.dumps(report, indent=2))
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "span_corruption_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "span_corruption_throughput.md").write_text(markdown(report))
    return report


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "67108864", "MALLOC_TRIM_THRESHOLD_": "268435456"}
"""glibc keeps freed blocks up to these sizes instead of handing them back to the OS (a training process,
which frees large activations, reaches similar thresholds by glibc's own adaptation)."""

NOTES = {
    "ours": "SpanCorruption() (encoder_decoder): a complete T5 batch from (ids, attention_mask)",
    "ours_decoder": "layout='decoder': inputs then targets, prefix LM",
    "ours_noise_mask": "random_spans_noise_mask for the batch only",
    "numpy_per_example": "T5's algorithm per row in numpy, padded into the same arrays (the baseline)",
    "numpy_noise_mask": "the baseline's per-row masks only",
}


def _table(r: dict) -> list[str]:
    lines = [
        "| path | median ms | range ms | calls | tokens/s (median) | tokens/s (range) | page faults / call | what |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, x in r["results"].items():
        lo, hi = x["tokens_per_s_range"]
        lines.append(
            f"| {name} | {x['median_ms']:.2f} | {x['min_ms']:.2f}-{x['max_ms']:.2f} | {x['calls']} | "
            f"{x['tokens_per_s']:.3g} | {lo:.3g}-{hi:.3g} | {x['page_faults_per_call']:.0f} | {NOTES.get(name, '')} |"
        )
    lines += ["", "| speed-up (numpy median / ours median) | x |", "|---|---:|"]
    lines += [f"| {k} | {x:.1f} |" for k, x in r["ratios"].items()]
    lines += ["", "Goals: " + ", ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in r["goals"].items())]
    return lines


def markdown(r: dict) -> str:
    m, v, b = r["machine"], r["versions"], r["batch"]
    lines = [
        "# SpanCorruption throughput vs a per-example numpy implementation",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Machine: {m['cpus']} CPU cores ({m['processor']}, {m['platform']}), torch threads {m['torch_threads']}, "
        f"load average (1 min) before/after {m['load_average_before'][0]:.2f}/{m['load_average_after'][0]:.2f} "
        "(the machine is shared; a load above the core count inflates every number).",
        f"Versions: Python {v['python']}, torch {v['torch']}, numpy {v['numpy']}. glibc malloc settings: "
        + (", ".join(f"{k}={x}" for k, x in m["malloc_env"].items()) or "defaults")
        + " (minor page faults per call are reported: glibc hands large freed blocks back to the OS between "
        "calls, and touching them again costs system time).",
        (
            f"Torch ran on {m['torch_threads']} of {m['cpus']} cores (`--threads`): on this shared, oversubscribed "
            "machine an OpenMP thread waiting for a busy core stalls every parallel op. The numpy baseline is "
            "single-threaded either way."
            if m["torch_threads"] < (m["cpus"] or 1)
            else "Torch used its default thread count."
        ),
        f"Batch: {b['B']} x {b['T']} raw tokens, noise density {b['noise_density']}, mean span "
        f"{b['mean_noise_span_length']}: inputs {b['inputs_width']}, targets {b['targets_width']} wide. "
        "Tokens/s counts the B*T raw tokens. Paths timed round-robin; median and range (min-max) per call.",
        "",
        *_table(r),
        "",
    ]
    if "malloc_rerun" in r:
        rr = r["malloc_rerun"]
        env = " ".join(f"{k}={x}" for k, x in rr["machine"]["malloc_env"].items())
        lines += [
            f"## The same, rerun in a subprocess with `{env}`",
            "",
            "glibc then keeps freed blocks instead of handing them back to the OS (a training process, which frees "
            "large activations, reaches similar thresholds by glibc's own adaptation). Load average (1 min) "
            f"before/after {rr['machine']['load_average_before'][0]:.2f}/{rr['machine']['load_average_after'][0]:.2f}.",
            "",
            *_table(rr),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
