"""``lmobj inspect --objective NAME``: one example's corruption in the terminal and a picture of its attention
pattern (:mod:`lmobjectives.evaluation.inspection`); the objective's own flags as for ``lmobj train``."""

from __future__ import annotations

import argparse
import os
import sys

from ..constants import DEFAULT_SEED
from ..evaluation import inspection
from ..recipes import DEFAULT_OBJECTIVE, OBJECTIVES
from ._common import EXIT_FAILURE, EXIT_USAGE, positive_int
from ._flags import objective_options

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]

HELP = "show one example of an objective: its corruption in the terminal, its attention pattern in a PNG"
DESCRIPTION = (
    "Lay out one example as the trainer does, corrupt it with the objective, print it token by token (kept, "
    "masked, replaced, sentinel, special; what each position with a loss predicts) and write a PNG of which "
    "position may attend to which (causal, bidirectional, prefix, encoder-decoder, ...) next to the "
    "positions that carry a loss. The picture needs matplotlib (pip install matplotlib)."
)
EPILOG = "example: lmobj inspect --objective mlm --unit word --text 'The cat sat on the mat.' --out mlm.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("what to show")
    g.add_argument(
        "--objective",
        choices=list(OBJECTIVES),
        default=DEFAULT_OBJECTIVE,
        help="objective to show; one of: "
        + "; ".join(f"{n} ({r.summary})" for n, r in OBJECTIVES.items())
        + ". Its own options follow below: see lmobj inspect --objective NAME --help",
    )
    g.add_argument(
        "--text",
        default=None,
        help="text to lay out and corrupt as the trainer would (default: a built-in passage, three short "
        "documents of the built-in corpus); objectives that read sentence pairs or documents take its "
        "two halves as two documents, so it needs two sentences or more",
    )
    g.add_argument(
        "--seq-len",
        type=positive_int,
        default=inspection.DEFAULT_SEQ_LEN,
        help="tokens per model input, as lmobj train's --seq-len (block size, pair length, encoder input length)",
    )
    g.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the example's choice and of its corruption")
    g.add_argument(
        "--tokenizer",
        default="byte",
        metavar="SPEC",
        help="'byte', 'bpe:N' / 'wordpiece:N' (trained on the text), or a saved tokenizer's path "
        "(e.g. RUN/tokenizer of a training run)",
    )
    g = parser.add_argument_group("output")
    g.add_argument(
        "--out",
        default=None,
        metavar="PATH.png",
        help="where to write the picture of the attention pattern and loss positions (default: inspect-<objective>.png); "
        "missing parent folders are created, as by every --out of lmobj",
    )
    g.add_argument(
        "--no-color",
        action="store_true",
        help="plain text even on a terminal (colours are used only when stdout is a terminal and NO_COLOR is unset)",
    )


def run(args: argparse.Namespace) -> int:
    """``lmobj inspect``: print the example, write its picture; bad arguments exit with EXIT_USAGE."""
    try:
        example = inspection.example_batch(
            args.objective,
            args.text,
            options=objective_options(args, OBJECTIVES[args.objective]),
            seq_len=args.seq_len,
            seed=args.seed,
            tokenizer=args.tokenizer,
        )
    except (ValueError, TypeError, FileNotFoundError) as e:
        args.parser.error(str(e))  # exits with EXIT_USAGE
    color = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
    sys.stdout.write(inspection.render_text(example, color=color))
    out = args.out if args.out is not None else f"inspect-{args.objective}.png"
    try:
        inspection.plot_example(example, out)
    except ImportError as e:
        print(f"lmobj inspect: error: no picture written: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as e:
        print(f"lmobj inspect: error: cannot write the picture to {out!r}: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"picture: {out}")
    return 0
