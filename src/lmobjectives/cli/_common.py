"""What every ``lmobj`` command shares: the exit codes, the help formatter, the integer converters, ``--threads``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

# defined with the entry point, which answers a Ctrl-C before this module is loaded
from ..__main__ import EXIT_INTERRUPTED

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "THREADS",
    "HelpFormatter",
    "add_threads_argument",
    "int_at_least",
    "non_negative_int",
    "positive_int",
]

EXIT_FAILURE = 1  # the run failed (out of memory, a file that cannot be written, ...)
EXIT_USAGE = 2  # bad arguments (argparse's code), or input the run refuses (a data file, an --out folder)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show "(default: ...)" except for on/off switches and defaults the help text explains (None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type=`` that reads an integer ``>= low``; its errors say which integers it takes.

    >>> int_at_least(1)("3"), int_at_least(0)("0")
    (3, 0)
    >>> int_at_least(1)("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: must be a positive integer, got '0'
    """
    what = "a positive integer" if low == 1 else f"an integer >= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)

# --threads: a flag of every command that computes; main() sets torch's threads from it before the command runs
THREADS: dict[str, Any] = {
    "type": positive_int,
    "default": None,
    "metavar": "N",
    "help": "torch CPU threads (torch.set_num_threads); default: torch's (one per core). On a busy machine fewer "
    "threads than cores is often faster",
}


def add_threads_argument(group: Any) -> None:
    group.add_argument("--threads", **THREADS)
