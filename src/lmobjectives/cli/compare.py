"""``lmobj compare``: several objectives at an equal budget, each run evaluated, one report (:mod:`lmobjectives.compare`).

The flags are :class:`~lmobjectives.compare.CompareConfig` fields (:data:`GROUPS`, generated as ``lmobj
train``'s are, by :func:`._flags.add_field_flag`) and three flags of the command itself: ``--preset``,
``--list-presets`` and ``--scale``. Each field's flag defaults to None, which leaves the value to the preset,
else to the field's default, which its help shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing
from typing import Any

from .._checks import check_finite_float
from ..compare import PRESETS, CompareConfig, compare
from ..compare.report import format_summary
from ..evaluation import TASKS
from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, THREADS
from ._flags import add_field_flag

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]

HELP = "train several objectives at an equal budget, evaluate each on held-out text, write a report with plots"
DESCRIPTION = (
    "Train the same model on the same data with each objective (and each seed), at the same number of input "
    "tokens, evaluate every run on held-out documents with the tasks that apply, and write OUT/report.md, a "
    "self-contained OUT/report.html with plots, and OUT/results.json. Runs are kept in OUT/runs: an "
    "interrupted comparison continues where it stopped when run again with the same settings."
)
EPILOG = "examples: lmobj compare --preset demo;  lmobj compare clm mlm mlm:unit=word,probability=0.4 --seeds 2"

# the sections of --help and their flags: CompareConfig fields, and (with dashes) flags of the command only
GROUPS = {
    "what to compare": ("objectives", "--preset", "tasks", "seeds", "--list-presets", "out"),
    "the shared budget and model (default: the preset's, else lmobj train's)": (
        "steps",
        "--scale",
        "batch_size",
        "seq_len",
        "lr",
        "d_model",
        "n_layers",
        "n_heads",
        "d_ff",
        "data",
        "tokenizer",
        "seed",
    ),
    "how to run": ("device", "threads", "progress"),
}
# task_options, heldout, warmup_steps, log_every: a preset's settings (or the Python API's); preset: set by
# --preset, which is CompareConfig.from_preset, not the field alone; command: this command line
NOT_FLAGS = ("task_options", "preset", "heldout", "warmup_steps", "log_every", "command")

FLAGS: dict[str, dict[str, Any]] = {  # where a field's flag differs from what _flags.add_field_flag gives
    "objectives": {"names": ["objectives"], "nargs": "*", "metavar": "OBJECTIVE"},
    "tasks": {"metavar": "TASK", "more_help": ": " + ", ".join(TASKS)},
    "seeds": {"metavar": "K"},
    "out": {"metavar": "DIR", "more_help": "; missing parent folders are created, as by every --out of lmobj"},
    "data": {"metavar": "PATH|builtin|synthetic:..."},
    "tokenizer": {"metavar": "SPEC"},
    "threads": THREADS,  # the flag of every command that computes, with its help
}
SHOWN = {  # how a flag's help shows the field's default, the value it falls back on without a preset
    "seeds": "default: the preset's, else {}",
    "steps": "lmobj train: {}",
    "device": "default: {}",
    **dict.fromkeys(
        ("batch_size", "seq_len", "lr", "d_model", "n_layers", "n_heads", "d_ff", "data", "tokenizer", "seed"), "{}"
    ),
}
OWN = {  # the flags of the command that are not CompareConfig fields
    "--preset": {
        "choices": list(PRESETS),
        "default": None,
        "help": "a named comparison: " + "; ".join(f"{n} ({' vs '.join(q.objectives)})" for n, q in PRESETS.items()),
    },
    "--list-presets": {"action": "store_true", "help": "print the presets (question, objectives, settings) and exit"},
    "--scale": {
        "type": float,
        "default": 1.0,
        "metavar": "F",
        "help": "multiply the steps by F (e.g. 0.1 for a quick look; the report says the steps it ran)",
    },
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fields = {f.name: f for f in dataclasses.fields(CompareConfig)}
    hints = typing.get_type_hints(CompareConfig)
    for title, names in GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            if name in OWN:
                group.add_argument(name, **OWN[name])
                continue
            field = fields[name]
            override = {} if isinstance(field.default, bool) else {"default": None}  # None: the preset's value
            if name in SHOWN:
                override["more_help"] = f" ({SHOWN[name].format(field.default)})"
            add_field_flag(group, field, hints[name], **(override | FLAGS.get(name, {})))


def run(args: argparse.Namespace) -> int:
    """``lmobj compare``: train, evaluate, print the table and where the report is."""
    if args.list_presets:
        for name, preset in PRESETS.items():
            print(
                f"{name}: {preset.question}\n  objectives: {' '.join(preset.objectives)}; tasks: "
                f"{' '.join(preset.tasks) if preset.tasks else 'all'}; {', '.join(f'{k} {v}' for k, v in preset.settings.items())}"
            )
        return 0
    values = {name: getattr(args, name) for names in GROUPS.values() for name in names if name not in OWN}
    objectives = tuple(values.pop("objectives") or ())
    overrides = {k: v for k, v in values.items() if v is not None}
    overrides["command"] = shlex.join(["lmobj", *(a for a in args.argv if a != "--no-progress")])
    try:
        if args.preset is not None:
            config = CompareConfig.from_preset(
                args.preset, scale=args.scale, objectives=objectives or None, **overrides
            )
        elif objectives:
            config = CompareConfig(objectives=objectives, **overrides)
            if args.scale != 1.0:
                check_finite_float(args.scale, "--scale", low=0, low_open=True)
                config = dataclasses.replace(config, steps=max(1, round(config.steps * args.scale)))
        else:
            args.parser.error(
                "give objective specs to compare (e.g. lmobj compare clm mlm) or --preset NAME (see --list-presets)"
            )
    except (ValueError, TypeError) as e:
        args.parser.error(str(e))  # exits with EXIT_USAGE
    try:
        result = compare(config)
    except KeyboardInterrupt:
        print(
            "lmobj compare: interrupted; finished runs and checkpoints are kept: run the same command again to continue",
            file=sys.stderr,
        )
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
