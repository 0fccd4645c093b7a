"""``lmobj``: the command line, one module per command (:data:`COMMANDS`).

Each command's module holds its ``HELP`` (its line in ``lmobj --help``), ``DESCRIPTION`` and ``EPILOG``,
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status): :mod:`.train` trains one objective
(:func:`lmobjectives.training.train`), :mod:`.eval` evaluates a trained run on its held-out documents,
:mod:`.compare` trains and evaluates several objectives at an equal budget, :mod:`.inspect` shows one
example of an objective and :mod:`.quiz` asks questions on them. A command with an ``--objective`` flag
also has the flags of the chosen objective's options (``lmobj train --objective mlm --unit word``;
``lmobj train --objective NAME --help`` lists them). ``lmobj train`` and ``lmobj compare`` generate their
other flags from the fields of ``TrainConfig`` and ``CompareConfig`` (:mod:`._flags`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from types import ModuleType
from typing import Any

from ..__main__ import VERSION
from ..recipes import DEFAULT_OBJECTIVE, OBJECTIVES, options_of
from . import compare, eval, inspect, quiz, train
from ._common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, HelpFormatter  # noqa: F401 (the exit codes: cli.EXIT_USAGE, ...)
from ._flags import add_objective_options, chosen_objective, flag_name

__all__ = ["build_parser", "main"]

# the commands, in the order lmobj --help lists them
COMMANDS: dict[str, ModuleType] = {"train": train, "inspect": inspect, "eval": eval, "compare": compare, "quiz": quiz}
# --debug: lmobj's flag, also taken after any command (a command's own --debug leaves lmobj's value alone when absent)
DEBUG: dict[str, Any] = {"action": "store_true", "help": "show the full traceback of an error instead of one line"}


def build_parser(objective: str = DEFAULT_OBJECTIVE) -> argparse.ArgumentParser:
    """The ``lmobj`` parser; the commands with an ``--objective`` flag have the flags of ``objective``'s options."""
    parser = argparse.ArgumentParser(
        prog="lmobj",
        description=f"Train small language models with the objectives of lmobjectives ({', '.join(OBJECTIVES)}).",
        epilog=f"Run 'lmobj COMMAND --help' ({', '.join(COMMANDS)}) for its flags. Flags are typed in full "
        "(no abbreviations: --objective, not --obj).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=VERSION)
    parser.add_argument("--debug", **DEBUG)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        # allow_abbrev=False: which objective's flags exist is read from argv before parsing (chosen_objective),
        # which sees --objective only when it is typed in full
        sub = commands.add_parser(
            name,
            help=command.HELP,
            description=command.DESCRIPTION,
            epilog=command.EPILOG,
            formatter_class=HelpFormatter,
            allow_abbrev=False,
        )
        sub.add_argument("--debug", **DEBUG, default=argparse.SUPPRESS)  # also after the command: lmobj train --debug
        command.add_arguments(sub)
        if sub.get_default("objective") is not None:
            add_objective_options(sub, objective if objective in OBJECTIVES else DEFAULT_OBJECTIVE)
        sub.set_defaults(parser=sub)  # so that a command can report errors with its own usage line
    return parser


def _abbreviation_hint(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """``" (flags are typed in full, not abbreviated: --obj is --objective?)"`` for the unknown flags that begin a
    flag of ``parser``; else ``""``."""
    flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
    guesses = []
    for arg in unknown:
        given = arg.split("=", 1)[0]
        matches = [flag for flag in flags if given.startswith("--") and flag.startswith(given)]
        if matches:
            guesses.append(f"{given} is {' or '.join(matches)}?")
    return f" (flags are typed in full, not abbreviated: {', '.join(guesses)})" if guesses else ""


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"lmobj: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run ``lmobj`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    The command's ``run`` gets the parsed flags with ``parser`` (its own parser, for usage errors) and
    ``argv`` (this command line) added.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    warnings.formatwarning = _one_line_warning  # a warning is one line on the command line, not a source excerpt
    parser = build_parser(chosen_objective(argv, DEFAULT_OBJECTIVE))
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        sub = getattr(args, "parser", parser)
        hint = ""
        if getattr(args, "objective", None) in OBJECTIVES:
            flags = [flag_name(o.name) for o in options_of(OBJECTIVES[args.objective])]
            hint = f" (the options of --objective {args.objective} are: {', '.join(flags) or 'none'})"
        sub.error(f"unrecognized arguments: {' '.join(unknown)}{_abbreviation_hint(sub, unknown)}{hint}")
    if getattr(args, "threads", None) is not None:
        import torch  # noqa: PLC0415

        torch.set_num_threads(args.threads)
    args.argv = argv
    return COMMANDS[args.command].run(args)
