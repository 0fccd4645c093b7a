"""What the benchmark scripts share: in-process timing of several paths round-robin, and rounds of child
processes (one per method, interleaved so that every method sees the same machine load), with the load
average before and after, and a child's peak resident memory. Scripts import it as a sibling module (``python benchmarks/NAME.py``)."""

from __future__ import annotations

import os
import re
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def time_interleaved(paths: dict[str, Callable[[], object]], calls: dict[str, int], warmup: int, rounds: int) -> dict:
    """Median, min and max wall time per call of each path (ms), and minor page faults per call, measured
    round-robin: each round times every path ``calls[name]`` times in a row; ``warmup`` untimed rounds first."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    faults = {name: 0 for name in paths}
    for r in range(warmup + rounds):
        for name, fn in paths.items():
            for _ in range(calls[name]):
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = time.perf_counter()
                fn()
                t1 = time.perf_counter()
                if r >= warmup:
                    times[name].append(t1 - t0)
                    faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return {
        name: {
            "median_ms": 1e3 * statistics.median(ts),
            "min_ms": 1e3 * min(ts),
            "max_ms": 1e3 * max(ts),
            "calls": len(ts),
            "page_faults_per_call": faults[name] / len(ts),
        }
        for name, ts in times.items()
    }


def child_rounds(
    names: list[str], run_child: Callable[[str], dict], rounds: int
) -> tuple[dict[str, list[dict]], float, float]:
    """``rounds`` rounds, each running ``run_child(name)`` (a fresh process) for every name in turn; returns every
    result by name, and the 1-minute load average before and after."""
    load_start = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names:
            res = run_child(name)
            runs[name].append(res)
            print(f"round {r} {name}: {res}", flush=True)
    return runs, load_start, os.getloadavg()[0]


def stats(values: list[float]) -> dict:
    """Median, min, max and the values themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
"""glibc thresholds for a child that measures memory: freed blocks go back to the OS, so RSS follows tensors."""


def _proc_status(key: str) -> int:
    """A ``/proc/self/status`` field in KiB (Linux)."""
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


def reset_peak_rss() -> int:
    """Reset the kernel's resident-set high-water mark to the current RSS (``clear_refs`` 5); return it (KiB).
    Without it (not Linux), ``ru_maxrss`` is the process's high-water mark so far."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss() -> int:
    """The resident-set high-water mark (KiB) since :func:`reset_peak_rss`."""
    try:
        return _proc_status("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
