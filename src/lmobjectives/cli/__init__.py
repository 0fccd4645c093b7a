"""``lmobj``: the command line. ``lmobj train --objective mlm --steps 600`` calls :func:`lmobjectives.training.train`.

Every generic flag maps to one :class:`~lmobjectives.training.TrainConfig`
field and takes its default from there, so the help shows the defaults the
Python API uses. The objective's own flags are generated from its dataclass
fields (:func:`lmobjectives.objectives.options_of`): ``lmobj train
--objective mlm --unit word --probability 0.4``; ``lmobj train --objective
NAME --help`` lists them with the fields' comments as help. ``lmobj inspect
--objective NAME`` prints one example and writes a picture of its attention
pattern (:mod:`lmobjectives.evaluation.inspection`). ``lmobj eval RUN_DIR`` evaluates a trained run on its
held-out documents (:mod:`lmobjectives.evaluation`): JSON to a file, a table on the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
import typing
import warnings
from dataclasses import fields
from typing import Any

from ..evaluation import inspection
from .. import __version__
from ..constants import DEFAULT_SEED
from ..recipes import OBJECTIVES, Option, Recipe, options_of
from ..training import TrainConfig, train
from ..training.config import POSITIONS

__all__ = ["build_parser", "main"]

EXIT_FAILURE = 1  # the run failed (out of memory, a file that cannot be written, ...)
EXIT_USAGE = 2  # bad arguments (argparse's code), or input the run refuses (a data file, an --out folder)
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


def _none_or(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _option_argument(option: Option) -> dict[str, Any]:
    """``add_argument`` keywords for an objective option, from its annotation."""
    kind, args = option.type, typing.get_args(option.type)
    origin = typing.get_origin(kind)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return {"type": _none_or(inner), "metavar": f"{inner.__name__.upper()}|none"}
    metavar = option.name.upper()
    if origin is tuple:
        return {"type": args[0], "nargs": "+", "metavar": metavar}
    if kind in (int, float, str):
        return {"type": kind, "metavar": metavar}
    return {"type": json.loads, "metavar": "JSON"}


def add_objective_options(parser: argparse.ArgumentParser, name: str) -> None:
    """One flag per option of objective ``name`` (``--unit`` for the field ``unit``), in a group of its own."""
    group = parser.add_argument_group(f"options of --objective {name} ({OBJECTIVES[name].summary})")
    for option in options_of(OBJECTIVES[name]):
        group.add_argument(
            "--" + option.name.replace("_", "-"), dest=f"option_{option.name}", default=option.default,
            help=option.help or option.name, **_option_argument(option),
        )  # fmt: skip


def objective_options(args: argparse.Namespace, recipe: Recipe) -> dict[str, Any]:
    """The objective's options as parsed by the flags of :func:`add_objective_options`."""
    return {o.name: getattr(args, f"option_{o.name}") for o in options_of(recipe)}


def chosen_objective(argv: list[str], default: str) -> str:
    """The value of ``--objective`` in ``argv`` (before parsing: it decides which flags exist)."""
    for i, arg in enumerate(argv):
        if arg == "--objective" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--objective="):
            return arg.split("=", 1)[1]
    return default


def _objective_help() -> str:
    return "training objective; one of: " + "; ".join(
        f"{name} ({recipe.summary})" for name, recipe in OBJECTIVES.items() if not recipe.untrainable
    )


def _add_train_arguments(p: argparse.ArgumentParser, objective: str) -> None:
    d = DEFAULTS
    g = p.add_argument_group("what to train")
    g.add_argument("--objective", choices=[n for n, r in OBJECTIVES.items() if not r.untrainable], default=d["objective"],
                   help=_objective_help() + ". Its own options follow below: see lmobj train --objective NAME --help")
    g.add_argument("--data", default=d["data"], metavar="PATH|builtin|synthetic:KIND[?k=v&...]",
                   help="corpus: 'builtin' (English prose shipped with Python, nothing downloaded), "
                        "a .txt / .jsonl file or folder of them, or a seeded synthetic corpus: synthetic:markov "
                        "(known entropy rate), synthetic:topics (documents with distinct topics), synthetic:icl "
                        "(in-context key-value sequences), e.g. synthetic:markov?docs=500&seed=0; for chat "
                        "objectives (sft's layout) a .jsonl of {'messages': [...]} or {'prompt', 'completion'} records")
    g.add_argument("--skip-bad-files", action="store_true",
                   help="skip data files that are not UTF-8 or cannot be read (each named in a warning) instead of stopping")
    g.add_argument("--tokenizer", default=d["tokenizer"], metavar="SPEC",
                   help="'byte' (UTF-8 bytes + 7 specials), 'bpe:N' / 'wordpiece:N' (train N tokens on the corpus), "
                        "or the path of a saved tokenizer")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for metrics.jsonl, config.json, tokenizer/ and checkpoint/ (default: runs/<objective>)")
    g.add_argument("--heldout", type=float, default=d["heldout"], metavar="FRACTION",
                   help="fraction of the documents held out of training for evaluation (lmobj eval, --eval-every), "
                        "chosen by a hash of each document's words: the same split for every objective and seed; 0 = none")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=_positive_int, default=d["steps"], help="optimizer steps (also the length of the cosine schedule)")
    g.add_argument("--batch-size", type=_positive_int, default=d["batch_size"], help="sequences per step (blocks, sentence pairs, ...)")
    g.add_argument("--seq-len", type=_positive_int, default=d["seq_len"],
                   help="tokens per model input (block size, pair length, encoder input length)")
    g.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate of AdamW")
    g.add_argument("--warmup-steps", type=_non_negative_int, default=d["warmup_steps"], help="steps of linear warm-up before the cosine decay")
    g.add_argument("--min-lr-ratio", type=float, default=d["min_lr_ratio"], help="final learning rate as a fraction of --lr")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="AdamW weight decay (matrices only)")
    g.add_argument("--grad-clip", type=float, default=d["grad_clip"], help="clip the gradient norm to this (0 = off)")
    g.add_argument("--seed", type=int, default=d["seed"], help="seed of the init, the data order and every random draw")
    g.add_argument("--dupe-factor", type=_positive_int, default=None, metavar="N",
                   help="static corruption (BERT): N fixed corruptions per block, one per epoch in turn; "
                        "default: a fresh one every step (RoBERTa's dynamic masking)")
    g.add_argument("--device", default=d["device"], help="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'")
    _add_threads_argument(g)
    g = p.add_argument_group("model")
    g.add_argument("--d-model", type=_positive_int, default=d["d_model"], help="width of the residual stream")
    g.add_argument("--layers", type=_positive_int, default=d["n_layers"], help="transformer blocks")
    g.add_argument("--heads", type=_positive_int, default=d["n_heads"], help="attention heads (must divide --d-model)")
    g.add_argument("--d-ff", type=_positive_int, default=d["d_ff"], help="hidden width of each block's MLP")
    g.add_argument("--dropout", type=float, default=d["dropout"], help="dropout rate in the model")
    g.add_argument("--positions", choices=POSITIONS, default=d["positions"], help="relative position scheme")
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--log-every", type=_positive_int, default=d["log_every"], help="write a metrics line every N steps (mean over them)")
    g.add_argument("--eval-every", type=_non_negative_int, default=None, metavar="N",
                   help="add the loss on held-out batches (eval_loss, eval_accuracy, ...) to the metrics line every N steps "
                        "(a multiple of --log-every) and at the end; default: 10 x --log-every when documents are held out; 0 = never")
    g.add_argument("--eval-batches", type=_positive_int, default=d["eval_batches"],
                   help="held-out batches per evaluation (the same ones every time)")
    g.add_argument("--save-every", type=_non_negative_int, default=d["save_every"],
                   help="checkpoint every N steps, and always at the end and on Ctrl-C (0 = only then)")
    g.add_argument("--keep-checkpoints", type=_positive_int, default=d["keep_checkpoints"],
                   help="complete checkpoints kept; a damaged newest one falls back on the next")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, reproducing the uninterrupted run exactly "
                        "(starts fresh if there is no checkpoint yet)")
    g.add_argument("--stop-after", type=_positive_int, default=None, metavar="STEP",
                   help="stop with a checkpoint after this step, as if interrupted (continue later with --resume)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl and the summary are still written)")
    add_objective_options(p, objective if objective in OBJECTIVES else d["objective"])


def _add_inspect_arguments(p: argparse.ArgumentParser, objective: str) -> None:
    g = p.add_argument_group("what to show")
    g.add_argument("--objective", choices=list(OBJECTIVES), default=DEFAULTS["objective"],
                   help="objective to show; one of: " + "; ".join(f"{n} ({r.summary})" for n, r in OBJECTIVES.items())
                        + ". Its own options follow below: see lmobj inspect --objective NAME --help")
    g.add_argument("--text", default=None,
                   help="text to lay out and corrupt as the trainer would (default: a built-in passage, three short "
                        "documents of the built-in corpus); objectives that read sentence pairs or documents take its "
                        "two halves as two documents, so it needs two sentences or more")
    g.add_argument("--seq-len", type=_positive_int, default=inspection.DEFAULT_SEQ_LEN,
                   help="tokens per model input, as lmobj train's --seq-len (block size, pair length, encoder input length)")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the example's choice and of its corruption")
    g.add_argument("--tokenizer", default="byte", metavar="SPEC",
                   help="'byte', 'bpe:N' / 'wordpiece:N' (trained on the text), or a saved tokenizer's path "
                        "(e.g. RUN/tokenizer of a training run)")
    g = p.add_argument_group("output")
    g.add_argument("--out", default=None, metavar="PATH.png",
                   help="where to write the picture of the attention pattern and loss positions (default: inspect-<objective>.png)")
    g.add_argument("--no-color", action="store_true",
                   help="plain text even on a terminal (colours are used only when stdout is a terminal and NO_COLOR is unset)")
    add_objective_options(p, objective if objective in OBJECTIVES else DEFAULTS["objective"])


def _add_threads_argument(group: Any) -> None:
    group.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="torch CPU threads (torch.set_num_threads); default: torch's (one per core). On a busy "
                            "machine fewer threads than cores is often faster")  # fmt: skip


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    from ..evaluation import TASKS  # noqa: PLC0415

    p.add_argument("run_dir", metavar="RUN_DIR", help="the output folder of an lmobj train run")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="evaluations to run (default: all; those that do not apply to the run are listed as not "
                        "applicable, while a task named here that does not apply is an error): "
                        + "; ".join(f"{t.name} ({t.summary})" for t in TASKS.values()))
    p.add_argument("--out", default=None, metavar="PATH.json", help="where to write the results as JSON (default: RUN_DIR/eval.json)")
    p.add_argument("--reference", default=None, metavar="RUN_DIR",
                   help="a causal run (e.g. a longer CLM run) scoring the generation task's continuations (bits per byte)")
    p.add_argument("--balanced", action="store_true",
                   help="sentence_pairs: score an even subset of each pair kind (the majority label subsampled)")
    p.add_argument("--device", default="cpu", help="'cpu', 'cuda', 'cuda:N' or 'auto'")
    _add_threads_argument(p)


def _add_compare_arguments(p: argparse.ArgumentParser) -> None:
    from ..compare import PRESETS  # noqa: PLC0415
    from ..evaluation import TASKS  # noqa: PLC0415

    d = DEFAULTS
    g = p.add_argument_group("what to compare")
    g.add_argument("objectives", nargs="*", metavar="OBJECTIVE",
                   help="objective specs NAME or NAME:option=value,option=value (e.g. clm mlm:unit=word,probability=0.4); "
                        "with --preset, they replace the preset's objectives")
    g.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="a named comparison: " + "; ".join(f"{n} ({' vs '.join(q.objectives)})" for n, q in PRESETS.items()))
    g.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="evaluations (default: the preset's, else every one; those that do not apply to a run are shown "
                        "as not applicable): " + ", ".join(TASKS))
    g.add_argument("--seeds", type=_positive_int, default=None, metavar="K",
                   help="runs per objective, seeds --seed, --seed + 1, ...; the report shows the spread (default: the preset's, else 1)")
    g.add_argument("--list-presets", action="store_true", help="print the presets (question, objectives, settings) and exit")
    g.add_argument("--out", default=None, metavar="DIR",
                   help="report folder, also holding the runs (default: reports/<preset>); a rerun continues it")
    g = p.add_argument_group("the shared budget and model (default: the preset's, else lmobj train's)")
    g.add_argument("--steps", type=_positive_int, default=None, help=f"optimizer steps per run (lmobj train: {d['steps']})")
    g.add_argument("--scale", type=float, default=1.0, metavar="F",
                   help="multiply the steps by F (e.g. 0.1 for a quick look; the report says the steps it ran)")
    g.add_argument("--batch-size", type=_positive_int, default=None, help=f"inputs per step ({d['batch_size']})")
    g.add_argument("--seq-len", type=_positive_int, default=None, help=f"tokens per input ({d['seq_len']})")
    g.add_argument("--lr", type=float, default=None, help=f"peak learning rate ({d['lr']})")
    g.add_argument("--d-model", type=_positive_int, default=None, help=f"model width ({d['d_model']})")
    g.add_argument("--layers", type=_positive_int, default=None, help=f"transformer blocks ({d['n_layers']})")
    g.add_argument("--heads", type=_positive_int, default=None, help=f"attention heads ({d['n_heads']})")
    g.add_argument("--d-ff", type=_positive_int, default=None, help=f"MLP hidden width ({d['d_ff']})")
    g.add_argument("--data", default=None, metavar="PATH|builtin|synthetic:...", help=f"corpus of every run ({d['data']})")
    g.add_argument("--tokenizer", default=None, metavar="SPEC", help=f"tokenizer of every run ({d['tokenizer']})")
    g.add_argument("--seed", type=int, default=None, help=f"the first seed ({DEFAULT_SEED})")
    g = p.add_argument_group("how to run")
    g.add_argument("--device", default=None, help="'auto', 'cpu', 'cuda', 'cuda:N' (default: auto)")
    _add_threads_argument(g)
    g.add_argument("--no-progress", action="store_true", help="no progress bar or lines (the table and report are still written)")


def _run_compare(args: argparse.Namespace, argv: list[str]) -> int:
    """``lmobj compare``: train, evaluate, print the table and where the report is."""
    import dataclasses  # noqa: PLC0415
    import shlex  # noqa: PLC0415

    from ..compare import PRESETS, CompareConfig, compare  # noqa: PLC0415
    from ..compare.report import format_summary  # noqa: PLC0415

    if args.list_presets:
        for name, preset in PRESETS.items():
            print(f"{name}: {preset.question}\n  objectives: {' '.join(preset.objectives)}; tasks: "
                  f"{' '.join(preset.tasks) if preset.tasks else 'all'}; {', '.join(f'{k} {v}' for k, v in preset.settings.items())}")
        return 0
    overrides = {"tasks": args.tasks, "seeds": args.seeds, "out": args.out, "steps": args.steps, "batch_size": args.batch_size,
                 "seq_len": args.seq_len, "lr": args.lr, "d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads,
                 "d_ff": args.d_ff, "data": args.data, "tokenizer": args.tokenizer, "seed": args.seed, "device": args.device,
                 "threads": args.threads}  # fmt: skip
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.update(progress=not args.no_progress, command=shlex.join(["lmobj", *(a for a in argv if a != "--no-progress")]))
    try:
        if args.preset is not None:
            config = CompareConfig.from_preset(args.preset, scale=args.scale, objectives=tuple(args.objectives) or None, **overrides)
        elif args.objectives:
            config = CompareConfig(objectives=tuple(args.objectives), **overrides)
            if args.scale != 1.0:
                if not args.scale > 0:
                    raise ValueError(f"--scale must be a positive number, got {args.scale!r}")
                config = dataclasses.replace(config, steps=max(1, round(config.steps * args.scale)))
        else:
            args.parser.error("give objective specs to compare (e.g. lmobj compare clm mlm) or --preset NAME (see --list-presets)")
    except (ValueError, TypeError) as e:
        args.parser.error(str(e))  # exits with EXIT_USAGE
    try:
        result = compare(config)
    except KeyboardInterrupt:
        print("lmobj compare: interrupted; finished runs and checkpoints are kept: run the same command again to continue",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, (ValueError, FileExistsError, FileNotFoundError)):
            print(f"lmobj compare: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"lmobj compare: error: {type(e).__name__}: {e} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_FAILURE
    if not result.complete:
        return EXIT_INTERRUPTED
    print("\n" + format_summary(result.results))
    others = ", ".join(p.name for k, p in result.files.items() if k != "html")
    print(f"report: {result.files['html']} (also {others}); {result.results['timing']['total_s']:.0f} s")
    return 0


def build_parser(objective: str = DEFAULTS["objective"]) -> argparse.ArgumentParser:
    """The ``lmobj`` parser; the ``train`` command has the flags of ``objective``'s options."""
    parser = argparse.ArgumentParser(
        prog="lmobj",
        description=f"Train small language models with the objectives of lmobjectives ({', '.join(OBJECTIVES)}).",
        epilog="Run 'lmobj COMMAND --help' (train, eval, compare, inspect, quiz) for its flags.",
    )
    parser.add_argument("--version", action="version", version=f"lmobj (lmobjectives) {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error instead of one line")
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
        epilog="example: lmobj train --objective mlm --unit word --steps 1000 --out runs/mlm-word",
    )
    _add_train_arguments(train_parser, objective)
    train_parser.set_defaults(parser=train_parser)  # so main() can report errors with this command's usage line
    inspect_parser = commands.add_parser(
        "inspect",
        help="show one example of an objective: its corruption in the terminal, its attention pattern in a PNG",
        description=(
            "Lay out one example as the trainer does, corrupt it with the objective, print it token by token (kept, "
            "masked, replaced, sentinel, special; what each position with a loss predicts) and write a PNG of which "
            "position may attend to which (causal, bidirectional, prefix, encoder-decoder, ...) next to the "
            "positions that carry a loss. The picture needs matplotlib (pip install matplotlib)."
        ),
        formatter_class=_HelpFormatter,
        epilog="example: lmobj inspect --objective mlm --unit word --text 'The cat sat on the mat.' --out mlm.png",
    )
    _add_inspect_arguments(inspect_parser, objective)
    inspect_parser.set_defaults(parser=inspect_parser)
    eval_parser = commands.add_parser(
        "eval",
        help="evaluate a trained run on its held-out documents: next-token, fill-in, PLL, NSP/SOP, generation, probe",
        description=(
            "Evaluate the model of RUN_DIR on documents its training never saw (the run's --heldout split), with "
            "each task that applies to the way it reads text (causal, bidirectional, encoder-decoder). Prints a table "
            "and writes the numbers, and how each was measured, as JSON."
        ),
        formatter_class=_HelpFormatter,
        epilog="example: lmobj eval runs/mlm --tasks next_token fill_in pll --reference runs/clm",
    )
    _add_eval_arguments(eval_parser)
    eval_parser.set_defaults(parser=eval_parser)
    compare_parser = commands.add_parser(
        "compare",
        help="train several objectives at an equal budget, evaluate each on held-out text, write a report with plots",
        description=(
            "Train the same model on the same data with each objective (and each seed), at the same number of input "
            "tokens, evaluate every run on held-out documents with the tasks that apply, and write OUT/report.md, a "
            "self-contained OUT/report.html with plots, and OUT/results.json. Runs are kept in OUT/runs: an "
            "interrupted comparison continues where it stopped when run again with the same settings."
        ),
        formatter_class=_HelpFormatter,
        epilog="examples: lmobj compare --preset demo;  lmobj compare clm mlm mlm:unit=word,probability=0.4 --seeds 2",
    )
    _add_compare_arguments(compare_parser)
    compare_parser.set_defaults(parser=compare_parser)
    from . import quiz  # noqa: PLC0415

    quiz_parser = commands.add_parser(
        "quiz",
        help="active recall: questions on the objectives, one at a time, the answer on Enter",
        description=(
            "Ask questions on language-modelling objectives (MLM vs CLM, NSP/SOP, masking, span corruption, prefix "
            "LM, denoisers, ELECTRA, MTP, SFT, the losses); each answer names the code and the measured evidence in "
            "the repository. On a terminal: one question at a time, Enter shows the answer, q quits. Otherwise "
            "(stdin not a terminal) every question is printed with its answer."
        ),
        formatter_class=_HelpFormatter,
        epilog="examples: lmobj quiz --topic nsp-sop;  lmobj quiz --shuffle --seed 3;  lmobj quiz --list",
    )
    quiz.add_arguments(quiz_parser)
    quiz_parser.set_defaults(parser=quiz_parser)
    return parser


def _run_eval(args: argparse.Namespace) -> int:
    """``lmobj eval``: evaluate, print the table, write the JSON; bad input is one line and EXIT_USAGE."""
    from ..evaluation import NotApplicable, evaluate, load_run  # noqa: PLC0415

    try:
        run = load_run(args.run_dir, device=args.device)
        options: dict[str, dict[str, Any]] = {}
        if args.reference is not None:
            options["generation"] = {"reference": load_run(args.reference, device=args.device)}
        if args.balanced:
            options["sentence_pairs"] = {"balanced": True}
        if args.tasks is not None:
            options = {k: v for k, v in options.items() if k in args.tasks}
        report = evaluate(run, args.tasks, options=options, strict=args.tasks is not None,
                          progress=lambda name: print(f"evaluating {name} ...", file=sys.stderr, flush=True))  # fmt: skip
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
        with open(out, "w") as f:
            json.dump(report.to_json(), f, indent=2)
            f.write("\n")
    except OSError as e:
        print(f"lmobj eval: error: cannot write {out!r}: {e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"results: {out}")
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    """``lmobj inspect``: print the example, write its picture; bad arguments exit with EXIT_USAGE."""
    try:
        example = inspection.example_batch(
            args.objective, args.text, options=objective_options(args, OBJECTIVES[args.objective]),
            seq_len=args.seq_len, seed=args.seed, tokenizer=args.tokenizer,
        )  # fmt: skip
    except (ValueError, TypeError, FileNotFoundError) as e:
        args.parser.error(str(e))  # exits with EXIT_USAGE
    color = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
    sys.stdout.write(inspection.render_text(example, color=color))
    out = args.out if args.out is not None else f"inspect-{args.objective}.png"
    try:
        inspection.plot_example(example, out)
    except ImportError as e:
        print(f"lmobj inspect: error: no picture written: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"lmobj inspect: error: cannot write the picture to {out!r}: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"picture: {out}")
    return 0


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        objective=args.objective,
        options=objective_options(args, OBJECTIVES[args.objective]),
        data=args.data,
        skip_bad_files=args.skip_bad_files,
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
        dupe_factor=args.dupe_factor,
        heldout=args.heldout,
        device=args.device,
        d_model=args.d_model,
        n_layers=args.layers,
        n_heads=args.heads,
        d_ff=args.d_ff,
        dropout=args.dropout,
        positions=args.positions,
        log_every=args.log_every,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        stop_after=args.stop_after,
        progress=not args.no_progress,
    )


def _report_failure(error: Exception, config: TrainConfig) -> int:
    """One line on stderr for an error that ended ``lmobj train``; returns the exit status."""
    text = str(error) or type(error).__name__
    if isinstance(error, MemoryError) or "out of memory" in text.lower():
        print(
            f"lmobj train: error: out of memory ({type(error).__name__}); the memory grows with --batch-size "
            f"({config.batch_size}), --seq-len ({config.seq_len}) and --d-model ({config.d_model}) / --layers "
            f"({config.n_layers}): lower one of them (--debug shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if isinstance(error, (ValueError, FileExistsError, FileNotFoundError)) and not isinstance(error, UnicodeError):
        print(f"lmobj train: error: {text}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(error, OSError) and error.filename is not None:
        text = f"{error.strerror or text}: {error.filename}"
    print(f"lmobj train: error: {type(error).__name__}: {text} (--debug shows the traceback)", file=sys.stderr)
    return EXIT_FAILURE


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"lmobj: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.formatwarning = _one_line_warning  # a warning is one line on the command line, not a source excerpt
    parser = build_parser(chosen_objective(argv, DEFAULTS["objective"]))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = getattr(args, "parser", parser)
        hint = ""
        if getattr(args, "objective", None) in OBJECTIVES:
            flags = ["--" + o.name.replace("_", "-") for o in options_of(OBJECTIVES[args.objective])]
            hint = f" (the options of --objective {args.objective} are: {', '.join(flags) or 'none'})"
        sub.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    if getattr(args, "threads", None) is not None:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
    if args.command == "compare":
        return _run_compare(args, argv)
    if args.command == "eval":
        return _run_eval(args)
    if args.command == "train":
        try:
            config = config_from_args(args)
        except ValueError as e:
            args.parser.error(str(e))  # exits with EXIT_USAGE
        try:
            result = train(config)
        except KeyboardInterrupt:  # Ctrl-C before the training loop, or a second one inside it
            print("lmobj train: interrupted; the last checkpoint saved (if any) is intact", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:
            if args.debug:
                raise
            return _report_failure(e, config)
        planned = min(config.steps, config.stop_after or config.steps)
        return EXIT_INTERRUPTED if result.steps < planned else 0
    if args.command == "inspect":
        return _run_inspect(args)
    if args.command == "quiz":
        from . import quiz  # noqa: PLC0415

        try:
            return quiz.run_from_args(args)
        except KeyboardInterrupt:  # Ctrl-C while waiting for Enter
            print(file=sys.stderr)
            return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
