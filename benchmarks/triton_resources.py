"""Registers, spills and shared memory of every Triton kernel, compiled for Hopper (sm_90) on a
machine without a GPU; see ``lmobjectives.ops._triton_resources`` for how.

Run (this is the command behind benchmarks/results/triton_resources_sm90.*)::

    python benchmarks/triton_resources.py --out benchmarks/results/triton_resources_sm90
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import triton

from lmobjectives.ops._triton_resources import HOPPER, HOPPER_SHARED_BYTES, compile_resources, variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="path without suffix")
    args = parser.parse_args()
    rows = []
    for variant in variants():
        r = compile_resources(variant)
        rows.append(dataclasses.asdict(r))
        print(
            f"{r.variant:75s} regs {r.registers:3d}  spills {r.spill_bytes:5d} B  "
            f"shared {r.shared_bytes // 1024:3d} KiB"
        )
    meta = dict(
        target=f"{HOPPER.backend} sm_{HOPPER.arch}",
        shared_limit_bytes=HOPPER_SHARED_BYTES,
        triton=triton.__version__,
        python=platform.python_version(),
        command="python benchmarks/triton_resources.py --out " + str(args.out),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, kernels=rows), indent=2))
    lines = [
        f"# Triton kernels compiled for {meta['target']} (Triton {meta['triton']}, no GPU)",
        "",
        f"`{meta['command']}`. Spills: bytes of spill stores + loads per thread; the shared-memory limit per "
        f"block is {HOPPER_SHARED_BYTES // 1024} KiB.",
        "",
        "| kernel variant | tiles, warps, stages | registers | spills (B) | shared (KiB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        lines.append(
            f"| `{r['variant']}` | {cfg} | {r['registers']} | {r['spill_bytes']} | {r['shared_bytes'] / 1024:.0f} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
