"""CPU benchmark: peak memory and time of one forward with the dense attention bias against the chunked path.

Variants (one :class:`~lmobjectives.models.Transformer` forward under ``torch.no_grad``, fp32, causal with
document masking: each row packs documents of seeded random lengths, positions restart at every document,
as ``clm --document-masking`` makes them):

* ``dense``   -- ``AttentionImpl("dense")``: the whole ``(B, heads, T, T)`` ALiBi bias and its masked copy (RoPE:
  the ``(B, 1, T, T)`` bool mask) of :func:`lmobjectives.attention_mask_4d`, once per forward, as before;
* ``chunked`` -- the default ``AttentionImpl()``: query rows in chunks that fit a 64 MiB budget, each chunk's
  bias and mask built from the batch's ``(B, T)`` fields, keys cut at the chunk's last query.

for ALiBi and RoPE, at ``B = 8`` and ``T = 512 ... 4096``.

Memory: **peak extra RSS**. Every (configuration, round) runs in a fresh Python subprocess with
``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=65536``, so glibc serves every tensor over 64 KiB
with its own ``mmap`` and returns it on free: the resident set follows the live tensors. The child builds the
model and the batch, resets the kernel's resident-set high-water mark to the current RSS
(``/proc/self/clear_refs`` 5, ``VmHWM``), runs one forward and reads the high-water mark; the difference is
the forward's peak (activations, masks, SDPA's scratch).

Time: that same forward's wall time (the first forward of the process; at these sizes its one-time costs are
small against the attention). Rounds alternate the configurations, so that a busy machine slows each alike; the
1-minute load average is recorded before and after.

Run (this is the command behind benchmarks/results/attention_memory.*; 7.4 minutes on 2 cores at load 9-14, about
5 on a quiet machine; ``--seq-lens 512,1024,2048`` takes a quarter of that)::

    python benchmarks/attention_memory.py --out benchmarks/results/attention_memory
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

IMPLS = ("dense", "chunked")
POSITIONS = ("alibi", "rope")


def documents(T: int, B: int, seed: int):
    """``document_ids`` and restarted ``position_ids`` ``(B, T)``: documents of 32..1023 tokens (seeded)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    doc_rows, pos_rows = [], []
    for _ in range(B):
        lengths = []
        while sum(lengths) < T:
            lengths.append(int(torch.randint(32, 1024, (1,), generator=g)))
        doc_rows.append(torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[:T])
        pos_rows.append(torch.cat([torch.arange(n) for n in lengths])[:T])
    return torch.stack(doc_rows), torch.stack(pos_rows)


def call_child(args: argparse.Namespace, impl: str, T: int) -> None:
    """One attention call (no model) with ALiBi over the same documents: FlexAttention in eager mode, or :func:`attend`."""
    import warnings

    import torch

    from lmobjectives import IGNORE_INDEX, Batch
    from lmobjectives.models import TransformerConfig
    from lmobjectives.models.attention import AttentionImpl, attend
    from lmobjectives.models.transformer import alibi_slopes, self_attention_inputs

    torch.set_num_threads(args.threads)
    B, nh, hs = args.batch, args.n_heads, args.d_model // args.n_heads
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, nh, T, hs, generator=g) for _ in range(3))
    doc, pos = documents(T, B, seed=2)
    slopes = alibi_slopes(nh)
    flex_warning = ""
    base_kib = reset_peak_rss()
    started = time.perf_counter()
    with torch.no_grad():
        if impl == "flex":
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            def mask_mod(b, h, i, j):
                return (j <= i) & (doc[b, i] == doc[b, j])

            def score_mod(score, b, h, i, j):
                return score - slopes[h] * (pos[b, i] - pos[b, j]).abs()

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                block_mask = create_block_mask(mask_mod, B, None, T, T, device="cpu")
                y = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
            flex_warning = " ".join(str(caught[0].message).split())[:120] if caught else ""
        else:
            ids = torch.zeros(B, T, dtype=torch.long)
            batch = Batch(
                ids,
                torch.full_like(ids, IGNORE_INDEX),
                torch.ones_like(ids, dtype=torch.bool),
                True,
                document_ids=doc,
                position_ids=pos,
            )
            config = TransformerConfig(vocab_size=2, d_model=args.d_model, n_heads=nh, max_seq_len=T)
            y = attend(q, k, v, self_attention_inputs(batch, config, slopes, impl=AttentionImpl(impl)))
    elapsed = time.perf_counter() - started
    peak_kib = peak_rss()
    print(
        json.dumps(
            {
                "peak_extra_rss_mib": (peak_kib - base_kib) / 1024,
                "time_s": elapsed,
                "checksum": float(y.double().abs().sum()),
                "warning": flex_warning,
                "chunk_rows": AttentionImpl().rows_per_chunk(B, nh, T) if impl == "chunked" else T,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )


def child(args: argparse.Namespace) -> None:
    import torch

    from lmobjectives import IGNORE_INDEX, Batch
    from lmobjectives.models import Transformer, TransformerConfig
    from lmobjectives.models.attention import AttentionImpl, set_attention_impl

    impl, positions, T = args.child.split(":")
    T = int(T)
    if positions == "call":
        call_child(args, impl, T)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        d_ff=4 * args.d_model,
        max_seq_len=T,
        positions=positions,
        n_token_types=0,
    )
    model = Transformer(config).eval()
    set_attention_impl(model, AttentionImpl(impl))
    ids = torch.randint(0, args.vocab, (args.batch, T), generator=torch.Generator().manual_seed(1))
    doc, pos = documents(T, args.batch, seed=2)
    batch = Batch(
        ids,
        torch.full_like(ids, IGNORE_INDEX),
        torch.ones_like(ids, dtype=torch.bool),
        True,
        document_ids=doc,
        position_ids=pos,
    )
    base_kib = reset_peak_rss()
    started = time.perf_counter()
    with torch.no_grad():
        hidden = model(batch).hidden
    elapsed = time.perf_counter() - started
    peak_kib = peak_rss()
    rows = AttentionImpl().rows_per_chunk(args.batch, args.n_heads, T)
    print(
        json.dumps(
            {
                "peak_extra_rss_mib": (peak_kib - base_kib) / 1024,
                "time_s": elapsed,
                "checksum": float(hidden.double().abs().sum()),
                "chunk_rows": rows if impl == "chunked" else T,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )


def run_child(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", name] + [
        f"--{k.replace('_', '-')}={getattr(args, k)}"
        for k in ("vocab", "d_model", "n_layers", "n_heads", "batch", "threads")
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | MALLOC_ENV, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc={proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-lens", default="512,1024,2048,4096")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--call-seq-len", type=int, default=1024, help="T of the single-call FlexAttention comparison")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    names = [
        f"{impl}:{positions}:{T}"
        for T in map(int, args.seq_lens.split(","))
        for positions in POSITIONS
        for impl in IMPLS
    ]
    names += [f"{impl}:call:{args.call_seq_len}" for impl in ("dense", "chunked", "flex")]
    started = time.perf_counter()
    runs, load_start, load_end = child_rounds(names, lambda n: run_child(n, args), args.rounds)
    results = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "time_s" in r]
        if not ok:
            results[name] = {"status": rs[-1] if rs else "not run"}
            continue
        results[name] = {
            "peak_extra_rss_mib": stats([r["peak_extra_rss_mib"] for r in ok]),
            "forward_s": stats([r["time_s"] for r in ok]),
            "chunk_rows": ok[-1]["chunk_rows"],
            "checksum": ok[-1]["checksum"],
            "warning": ok[-1].get("warning", ""),
            "rounds": len(ok),
        }
    first = next((r for rs in runs.values() for r in rs if "torch" in r), {})
    report = {
        "command": "python benchmarks/attention_memory.py " + " ".join(sys.argv[1:]),
        "model": {
            "vocab": args.vocab,
            "d_model": args.d_model,
            "n_layers": args.n_layers,
            "n_heads": args.n_heads,
            "d_ff": 4 * args.d_model,
            "batch": args.batch,
            "dtype": "float32",
            "pattern": "causal, document masking (documents of 32..1023 tokens), restarted positions",
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": first.get("threads"),
            "torch": first.get("torch"),
            "load_average_1min_start_end": [load_start, load_end],
            "wall_s": time.perf_counter() - started,
        },
        "method": "fresh subprocess per (configuration, round) with glibc mmap/trim thresholds at 64 KiB; peak extra "
        "RSS = VmHWM after one forward (torch.no_grad) minus RSS before it (high-water mark reset by "
        "clear_refs); time = that forward's wall time",
        "results": results,
    }
    print(json.dumps(results, indent=1))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
        out.with_suffix(".md").write_text(markdown(report))


def markdown(report: dict) -> str:
    m, r, machine = report["model"], report["results"], report["machine"]
    lines = [
        f"# Attention without a dense bias: peak memory and time of one forward, B = {m['batch']}, CPU",
        "",
        f"Command: `{report['command']}` ({machine['wall_s'] / 60:.1f} minutes)",
        "",
        f"Model: Transformer, d_model {m['d_model']}, {m['n_layers']} layers, {m['n_heads']} heads, d_ff {m['d_ff']}, "
        f"vocab {m['vocab']}, {m['dtype']}; batch {m['batch']} rows, {m['pattern']}.",
        "",
        f"Machine: {machine['platform']}, {machine['cpu_count']} CPUs, {machine['threads']} torch thread(s), torch "
        f"{machine['torch']}; 1-min load average {[round(x, 2) for x in machine['load_average_1min_start_end']]} at "
        "start and end (shared host: other work ran beside it).",
        "",
        f"Method: {report['method']}.",
        "",
        "`dense`: the whole (B, heads, T, T) bias and masked copy (RoPE: the (B, 1, T, T) bool mask), as before; "
        "`chunked`: the default, query rows in chunks (C rows) within a 64 MiB budget. Median (min-max) over the rounds.",
        "",
        "| positions | T | dense peak MiB | chunked peak MiB (C) | dense forward s | chunked forward s | same output |",
        "|---|---|---|---|---|---|---|",
    ]
    seq_lens = sorted({int(name.split(":")[2]) for name in r})
    for positions in POSITIONS:
        for T in seq_lens:
            d, c = r.get(f"dense:{positions}:{T}", {}), r.get(f"chunked:{positions}:{T}", {})
            if "forward_s" not in d or "forward_s" not in c:
                lines.append(f"| {positions} | {T} | {d.get('status', '')} | {c.get('status', '')} | | | |")
                continue
            dp, cp, dt, ct = d["peak_extra_rss_mib"], c["peak_extra_rss_mib"], d["forward_s"], c["forward_s"]
            same = abs(d["checksum"] - c["checksum"]) <= 1e-6 * abs(d["checksum"])
            chunk = "one chunk" if c["chunk_rows"] >= T else c["chunk_rows"]
            lines.append(
                f"| {positions} | {T} | {dp['median']:.0f} ({dp['min']:.0f}-{dp['max']:.0f}) | "
                f"{cp['median']:.0f} ({cp['min']:.0f}-{cp['max']:.0f}) ({chunk}) | "
                f"{dt['median']:.2f} ({dt['min']:.2f}-{dt['max']:.2f}) | {ct['median']:.2f} ({ct['min']:.2f}-{ct['max']:.2f}) | "
                f"{'yes' if same else 'no'} |"
            )
    lines += [
        "",
        "same output: the sums of |hidden| agree to 1e-6 relative (the tests check the outputs themselves, in float64).",
        "With T ≤ C the chunked path is one chunk, built once per forward: the dense computation.",
        "",
        f"One attention call, no model (ALiBi, the same documents, B = {m['batch']}, {m['n_heads']} heads, head size "
        f"{m['d_model'] // m['n_heads']}): FlexAttention (`create_block_mask` + `flex_attention` with an ALiBi "
        "`score_mod`) in eager mode, as a CPU without torch.compile runs it, against `attend`.",
        "",
        "| call | T | peak extra RSS MiB | time s | same output |",
        "|---|---|---|---|---|",
    ]
    calls = {name.split(":")[0]: res for name, res in r.items() if name.split(":")[1] == "call"}
    reference = calls.get("dense", {}).get("checksum")
    for impl, res in calls.items():
        T = next(name.split(":")[2] for name in r if name.startswith(f"{impl}:call:"))
        if "forward_s" not in res:
            lines.append(f"| {impl} | {T} | {res.get('status', '')} | | |")
            continue
        p, t = res["peak_extra_rss_mib"], res["forward_s"]
        same = reference is not None and abs(res["checksum"] - reference) <= 1e-5 * abs(reference)
        lines.append(
            f"| {impl} | {T} | {p['median']:.0f} ({p['min']:.0f}-{p['max']:.0f}) | "
            f"{t['median']:.2f} ({t['min']:.2f}-{t['max']:.2f}) | {'yes' if same else 'no'} |"
        )
    warning = calls.get("flex", {}).get("warning")
    if warning:
        lines += ["", f'torch\'s warning on the flex call: "{warning}..."']
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
