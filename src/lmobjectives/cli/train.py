"""``lmobj train``: train one objective, ``lmobj train --objective mlm --steps 600`` (:func:`lmobjectives.training.train`).

The generic flags are :class:`~lmobjectives.training.TrainConfig`'s fields, in their order: ``--field-name``
with the field's default, the type its annotation gives and the field's help (:func:`._flags.add_field_flag`),
so the help shows the defaults the Python API uses; :data:`FLAGS` says where a flag differs. The objective's
own flags follow, generated from its dataclass fields: ``lmobj train --objective mlm --unit word
--probability 0.4``; ``lmobj train --objective NAME --help`` lists them.
"""

from __future__ import annotations

import argparse
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..recipes import OBJECTIVES, options_of
from ..training import TrainConfig, is_run, train
from ..training.config import POSITIONS
from ..training.run_folder import resume_config
from ..training.trainer import NonFiniteLossError
from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, add_threads_argument
from ._flags import add_field_flag, flag_name, objective_options

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "config_from_args", "run"]

HELP = "train a model with one objective and write metrics, config, tokenizer and checkpoints"
DESCRIPTION = (
    "Train a small transformer (pre-norm, ALiBi) with one objective. Writes OUT/metrics.jsonl (one JSON line "
    "per --log-every steps), OUT/config.json, OUT/tokenizer/ and OUT/checkpoint/ (safetensors). Ctrl-C "
    "finishes the current step, saves a checkpoint and stops; --resume continues exactly."
)
EPILOG = "example: lmobj train --objective mlm --unit word --steps 1000 --out runs/mlm-word"

NOT_FLAGS = ("options",)  # the objective's options: its own flags (add_objective_options) fill them
SECTIONS = {  # the field that starts each section of --help
    "objective": "what to train",
    "steps": "optimisation",
    "d_model": "model",
    "log_every": "logging and checkpoints",
}
TRAINABLE = [name for name, recipe in OBJECTIVES.items() if not recipe.untrainable]

FLAGS: dict[str, dict[str, Any]] = {  # where a field's flag differs from what _flags.add_field_flag gives
    "objective": {  # the data-only objectives parse too (so that --objective plm --help works); run() refuses them
        "choices": list(OBJECTIVES),
        "metavar": "{" + ",".join(TRAINABLE) + "}",
        "more_help": "; one of: "
        + "; ".join(f"{n} ({OBJECTIVES[n].summary})" for n in TRAINABLE)
        + ". Its own options follow below: see lmobj train --objective NAME --help. Data only, not trained: "
        + ", ".join(n for n in OBJECTIVES if n not in TRAINABLE)
        + " (lmobj inspect shows their data)",
    },
    "data": {"metavar": "PATH|builtin|synthetic:KIND[?k=v&...]"},
    "tokenizer": {"metavar": "SPEC"},
    "out": {"metavar": "DIR", "more_help": "; missing parent folders are created, as by every --out of lmobj"},
    "heldout": {"metavar": "FRACTION"},
    "dupe_factor": {"metavar": "N"},
    "positions": {"choices": POSITIONS},
    "eval_every": {"metavar": "N"},
    "stop_after": {"metavar": "STEP"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field but :data:`NOT_FLAGS`, and ``--threads`` after ``--device``."""
    hints = typing.get_type_hints(TrainConfig)
    group: Any = parser
    for field in fields(TrainConfig):
        if field.name in NOT_FLAGS:
            continue
        if field.name in SECTIONS:
            group = parser.add_argument_group(SECTIONS[field.name])
        add_field_flag(group, field, hints[field.name], **FLAGS.get(field.name, {}))
        if field.name == "device":
            add_threads_argument(group)  # not a TrainConfig field: main() sets torch's threads for every command


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of the parsed flags (each flag's destination is its field's name).

    With ``--resume`` on a folder that holds a run, the run's own settings (its ``config.json``), with only the
    flags typed on the command line applied (:func:`~lmobjectives.training.run_folder.resume_config`): a typed
    flag that differs from the run's setting is refused naming the flag and both values, unless a resumed run
    may change it (``--steps``, ``--log-every``, ...).
    """
    recipe = OBJECTIVES[args.objective]
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name not in NOT_FLAGS}
    out = Path(args.out) if args.out is not None else Path("runs") / args.objective  # as resolve_out looks with resume
    if args.resume and is_run(out):
        typed = _typed_flags(args)
        changes = {name: value for name, value in values.items() if name in typed and name not in ("out", "resume")}
        options = {o.name: getattr(args, f"option_{o.name}") for o in options_of(recipe) if f"option_{o.name}" in typed}
        flags = {a.dest: a.option_strings[0] for a in args.parser._actions if a.option_strings}
        return resume_config(
            out,
            flag=lambda name: flags.get(name) or flags.get(f"option_{name}") or flag_name(name),
            options=options,
            **changes,
        )
    return TrainConfig(**values, options=objective_options(args, recipe))


def _typed_flags(args: argparse.Namespace) -> set[str]:
    """The destinations of the flags typed on ``lmobj train``'s command line, a flag typed with its default value
    included: the command's arguments parsed again into a namespace where every destination is already set, to a
    marker (argparse fills in a default only where the namespace has no value). Without ``args.argv`` (flags
    parsed by a caller), the flags whose value is not their default."""
    actions = [a for a in args.parser._actions if a.dest != argparse.SUPPRESS]
    argv = getattr(args, "argv", None)
    if argv is None:
        return {a.dest for a in actions if getattr(args, a.dest, a.default) != a.default}
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in actions})
    args.parser.parse_known_args(argv[argv.index(args.command) + 1 :], namespace=namespace)
    return {a.dest for a in actions if getattr(namespace, a.dest) is not unset}


def run(args: argparse.Namespace) -> int:
    """``lmobj train``: train, print the summary; 0, or EXIT_INTERRUPTED when it stopped before its last step."""
    if why := OBJECTIVES[args.objective].untrainable:
        args.parser.error(
            f"argument --objective: {args.objective} cannot be trained (data only): {why} "
            f"(lmobj inspect --objective {args.objective} shows its data)"
        )
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


# how torch says it is out of memory: CUDA and MPS "... out of memory ...", the CPU's allocator (a RuntimeError)
# "DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes"; Python's own: MemoryError
OUT_OF_MEMORY = ("out of memory", "can't allocate memory")


def _report_failure(error: Exception, config: TrainConfig) -> int:
    """One line on stderr for an error that ended ``lmobj train``; returns the exit status: EXIT_USAGE for input
    the run refuses, EXIT_FAILURE for the rest (out of memory, a full disk, a loss that is not finite, ...)."""
    text = str(error) or type(error).__name__
    if isinstance(error, NonFiniteLossError):
        print(
            f"lmobj train: error: {text}: lower --lr ({config.lr:g}) in a new run (--debug shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    if isinstance(error, MemoryError) or any(sign in text.lower() for sign in OUT_OF_MEMORY):
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
