"""lmobjectives: language-model training objectives, faithful to their papers, vectorised and seeded.

The names below are imported on first use (PEP 562), so ``import lmobjectives`` and the ``lmobj``
entry point do not load torch before they need it.
"""

from importlib import import_module
from typing import Any

from .constants import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "OBJECTIVES", "Batch", "Vocab", "attention_mask_4d", "get_objective"]

__version__ = "0.1.0"

_LAZY = {
    "OBJECTIVES": ".recipes",
    "Batch": ".batch",
    "attention_mask_4d": ".batch",
    "get_objective": ".recipes",
    "Vocab": ".vocab",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'lmobjectives' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
