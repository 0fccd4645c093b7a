"""``lmobj``: the command line. ``lmobj train --objective mlm --steps 600`` calls :func:`lmobjectives.training.train`.

Every flag maps to one :class:`~lmobjectives.training.TrainConfig` field and
takes its default from there, so the help shows the defaults the Python API uses.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .objectives import OBJECTIVES
from .training import TrainConfig, train
from .training.config import MLM_UNITS, POSITIONS

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2  # bad arguments (argparse's code)
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (after saving a checkpoint), the shell's convention for SIGINT

DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: ...)" except for on/off switches and defaults the help text explains (None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    g = p.add_argument_group("what to train")
    g.add_argument("--objective", choices=list(OBJECTIVES), default=d["objective"],
                   help="training objective: clm (causal LM, decoder), mlm (masked LM, encoder), "
                        "nsp / sop (sentence pairs: masked LM + next-sentence / sentence-order prediction)")
    g.add_argument("--data", default=d["data"], metavar="PATH|builtin",
                   help="corpus: 'builtin' (English prose shipped with Python, nothing downloaded), "
                        "or a .txt / .jsonl file or folder of them")
    g.add_argument("--tokenizer", default=d["tokenizer"], metavar="SPEC",
                   help="'byte' (UTF-8 bytes + 7 specials), 'bpe:N' / 'wordpiece:N' (train N tokens on the corpus), "
                        "or the path of a saved tokenizer")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for metrics.jsonl, config.json, tokenizer/ and checkpoint/ (default: runs/<objective>)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=_positive_int, default=d["steps"], help="optimizer steps (also the length of the cosine schedule)")
    g.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="sequences per step (blocks for clm/mlm, pairs for nsp/sop)")
    g.add_argument("--seq-len", type=_positive_int, default=d["seq_len"], help="tokens per sequence (block size for clm/mlm, pair length for nsp/sop)")
    g.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate of AdamW")
    g.add_argument("--warmup-steps", type=_non_negative_int, default=d["warmup_steps"], help="steps of linear warm-up before the cosine decay")
    g.add_argument("--min-lr-ratio", type=float, default=d["min_lr_ratio"], help="final learning rate as a fraction of --lr")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="AdamW weight decay (matrices only)")
    g.add_argument("--grad-clip", type=float, default=d["grad_clip"], help="clip the gradient norm to this (0 = off)")
    g.add_argument("--seed", type=int, default=d["seed"], help="seed of the init, the data order and every random draw")
    g.add_argument("--device", default=d["device"], help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'")
    g = p.add_argument_group("objective options")
    g.add_argument("--mlm-unit", choices=MLM_UNITS, default=d["mlm_unit"],
                   help="mlm only: mask single tokens, whole words, or spans of words (SpanBERT)")
    g.add_argument("--mlm-probability", type=float, default=d["mlm_probability"], help="masking rate for mlm, nsp and sop")
    g.add_argument("--document-masking", action="store_true",
                   help="clm only: no attention and no target across the documents packed into one block; positions restart per document")
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=_positive_int, default=d["d_model"], help="width of the residual stream")
    g.add_argument("--layers", type=_positive_int, default=d["n_layers"], help="transformer blocks")
    g.add_argument("--heads", type=_positive_int, default=d["n_heads"], help="attention heads (must divide --d-model)")
    g.add_argument("--d-ff", type=_positive_int, default=d["d_ff"], help="hidden width of each block's MLP")
    g.add_argument("--dropout", type=float, default=d["dropout"], help="dropout rate in the model")
    g.add_argument("--positions", choices=POSITIONS, default=d["positions"], help="relative position scheme")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--log-every", type=_positive_int, default=d["log_every"], help="write a metrics line every N steps (mean over them)")
    g.add_argument("--save-every", type=_non_negative_int, default=d["save_every"],
                   help="checkpoint every N steps, and always at the end and on Ctrl-C (0 = only then)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, reproducing the uninterrupted run exactly "
                        "(starts fresh if there is no checkpoint yet)")
    g.add_argument("--stop-after", type=_positive_int, default=None, metavar="STEP",
                   help="stop with a checkpoint after this step, as if interrupted (continue later with --resume)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl and the summary are still written)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmobj",
        description="Train small language models with the objectives of lmobjectives (CLM, MLM, NSP, SOP).",
        epilog="Run 'lmobj train --help' for the training flags.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser(
        "train",
        help="train a model with one objective and write metrics, config, tokenizer and checkpoints",
        description=(
            "Train a small transformer (pre-norm, ALiBi) with one objective. Writes OUT/metrics.jsonl (one JSON line "
            "per --log-every steps), OUT/config.json, OUT/tokenizer/ and OUT/checkpoint/ (safetensors). Ctrl-C "
            "finishes the current step, saves a checkpoint and stops; --resume continues exactly."
        ),
        formatter_class=_HelpFormatter,
        epilog="example: lmobj train --objective mlm --mlm-unit word --steps 1000 --out runs/mlm-word",
    )
    _add_train_arguments(train_parser)
    train_parser.set_defaults(parser=train_parser)  # so main() can report errors with this command's usage line
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        objective=args.objective,
        data=args.data,
        tokenizer=args.tokenizer,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        seed=args.seed,
        device=args.device,
        mlm_unit=args.mlm_unit,
        mlm_probability=args.mlm_probability,
        document_masking=args.document_masking,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        d_ff=args.d_ff,
        dropout=args.dropout,
        positions=args.positions,
        log_every=args.log_every,
        save_every=args.save_every,
        resume=args.resume,
        stop_after=args.stop_after,
        progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        try:
            config = config_from_args(args)
        except ValueError as e:
            args.parser.error(str(e))  # exits with EXIT_USAGE
        try:
            result = train(config)
        except (ValueError, FileExistsError, FileNotFoundError) as e:
            print(f"lmobj train: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:  # Ctrl-C before the training loop, or a second one inside it
            print("lmobj train: interrupted; the last checkpoint saved (if any) is intact", file=sys.stderr)
            return EXIT_INTERRUPTED
        planned = min(config.steps, config.stop_after or config.steps)
        return EXIT_INTERRUPTED if result.steps < planned else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
