"""``option()``: an objective's option, a dataclass field that carries its own help text."""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["option"]


def option(default: Any, help: str) -> Any:
    """A dataclass field with ``default`` whose ``metadata["help"]`` is ``help``: the one-line text that
    ``lmobj train --objective NAME --help`` shows for its flag (:func:`lmobjectives.recipes.options_of`).

    >>> import dataclasses
    >>> @dataclasses.dataclass(frozen=True)
    ... class Toy:
    ...     rate: float = option(0.5, "how often")
    >>> Toy().rate, dataclasses.fields(Toy)[0].metadata["help"]
    (0.5, 'how often')
    """
    return dataclasses.field(default=default, metadata={"help": help})
