"""Training objectives: seeded, pure tensor transforms from token ids to a :class:`Batch`.

``get_objective(name, vocab=..., **options)`` is the entry point; each name
maps to a frozen dataclass whose fields are its options.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..vocab import Vocab
from .base import Batch, Objective, attention_mask_4d, padding_mask
from .clm import CausalLM
from .mlm import MaskedLM, word_ids_from_starts
from .nsp import NextSentencePrediction, SentenceOrderPrediction, SentencePairs

__all__ = [
    "OBJECTIVES",
    "Batch",
    "CausalLM",
    "MaskedLM",
    "NextSentencePrediction",
    "Objective",
    "SentenceOrderPrediction",
    "SentencePairs",
    "attention_mask_4d",
    "get_objective",
    "padding_mask",
    "word_ids_from_starts",
]

OBJECTIVES: dict[str, type] = {
    "clm": CausalLM,
    "mlm": MaskedLM,
    "nsp": NextSentencePrediction,
    "sop": SentenceOrderPrediction,
}


def get_objective(name: str, *, vocab: Vocab, **options: Any) -> Objective:
    """Build the objective called ``name`` with ``options`` (its dataclass fields).

    >>> from lmobjectives import Vocab
    >>> get_objective("clm", vocab=Vocab(size=10, eos_id=2)).document_masking
    False
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective name {name!r}; valid names: {', '.join(sorted(OBJECTIVES))}")
    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a lmobjectives.Vocab, got {type(vocab).__name__}")
    cls = OBJECTIVES[name]
    valid = [f.name for f in dataclasses.fields(cls) if f.name != "vocab" and f.init]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for objective {name!r}; valid options: {', '.join(valid)}")
    return cls(vocab=vocab, **options)
