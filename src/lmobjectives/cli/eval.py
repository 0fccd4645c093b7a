"""``lmobj eval RUN_DIR``: evaluate a trained run on its held-out documents (:mod:`lmobjectives.evaluation`):
a table on the terminal, JSON in a file."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..evaluation import TASKS, NotApplicable, evaluate, load_run
from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, add_threads_argument

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]

HELP = "evaluate a trained run on its held-out documents: next-token, fill-in, PLL, NSP/SOP, generation, probe"
DESCRIPTION = (
    "Evaluate the model of RUN_DIR on documents its training never saw (the run's --heldout split), with "
    "each task that applies to the way it reads text (causal, bidirectional, encoder-decoder). Prints a table "
    "and writes the numbers, and how each was measured, as JSON."
)
EPILOG = "example: lmobj eval runs/mlm --tasks next_token fill_in pll --reference runs/clm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("run_dir", metavar="RUN_DIR", help="the output folder of an lmobj train run")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="TASK",
        help="evaluations to run (default: all; those that do not apply to the run are listed as not "
        "applicable, while a task named here that does not apply is an error): "
        + "; ".join(f"{t.name} ({t.summary})" for t in TASKS.values()),
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="PATH.json",
        help="where to write the results as JSON (default: RUN_DIR/eval.json); missing parent folders are created, as by "
        "every --out of lmobj",
    )
    p.add_argument(
        "--reference",
        default=None,
        metavar="RUN_DIR",
        help="a causal run (e.g. a longer CLM run) scoring the generation task's continuations (bits per byte)",
    )
    p.add_argument(
        "--balanced",
        action="store_true",
        help="sentence_pairs: score an even subset of each pair kind (the majority label subsampled)",
    )
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:N' or 'auto'")
    add_threads_argument(p)


def run(args: argparse.Namespace) -> int:
    """``lmobj eval``: evaluate, print the table, write the JSON; bad input is one line and EXIT_USAGE."""
    try:
        loaded = load_run(args.run_dir, device=args.device)
        options: dict[str, dict[str, Any]] = {}
        if args.reference is not None:
            options["generation"] = {"reference": load_run(args.reference, device=args.device)}
        if args.balanced:
            options["sentence_pairs"] = {"balanced": True}
        if args.tasks is not None:
            options = {k: v for k, v in options.items() if k in args.tasks}
        report = evaluate(
            loaded,
            args.tasks,
            options=options,
            strict=args.tasks is not None,
            progress=lambda name: print(f"evaluating {name} ...", file=sys.stderr, flush=True),
        )
    except KeyboardInterrupt:
        print("lmobj eval: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, FileNotFoundError, NotApplicable) as e:
        if args.debug:
            raise
        print(f"lmobj eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        if args.debug:
            raise
        print(f"lmobj eval: error: {type(e).__name__}: {e} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    out = args.out if args.out is not None else os.path.join(args.run_dir, "eval.json")
    print(report.table())
    try:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)  # as every --out of lmobj: missing parents are made
        with open(out, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
    except OSError as e:
        print(f"lmobj eval: error: cannot write {out!r}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"results: {out}")
    return 0
