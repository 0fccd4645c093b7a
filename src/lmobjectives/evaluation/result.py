"""What every evaluation returns: :class:`TaskResult` (numbers, how they were measured, or why not applicable)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..batch import Batch
from ..constants import IGNORE_INDEX

__all__ = ["TaskResult"]


@dataclass
class TaskResult:
    """One evaluation of one run.

    >>> TaskResult("next_token", {"bits_per_byte": 2.5}).headline
    ('bits_per_byte', 2.5)
    >>> TaskResult.not_applicable("pll", "needs a masked LM").to_json()
    {'task': 'pll', 'applies': False, 'reason': 'needs a masked LM'}
    """

    task: str  # the task's name (a key of lmobjectives.evaluation.TASKS)
    metrics: dict[str, float] = field(default_factory=dict)  # the numbers, the headline first
    info: dict[str, Any] = field(default_factory=dict)  # how they were measured: procedure, counts, warnings, examples
    applies: bool = True  # False: the task does not apply to this run (reason says why), metrics is empty
    reason: str = ""  # why the task does not apply

    @classmethod
    def not_applicable(cls, task: str, reason: str) -> TaskResult:
        return cls(task, applies=False, reason=reason)

    @property
    def headline(self) -> tuple[str, float] | None:
        """The first metric ``(name, value)``, or None."""
        return next(iter(self.metrics.items()), None)

    @property
    def warnings(self) -> list[str]:
        return list(self.info.get("warnings", []))

    def to_json(self) -> dict[str, Any]:
        if not self.applies:
            return {"task": self.task, "applies": False, "reason": self.reason}
        return {"task": self.task, "applies": True, "metrics": self.metrics, "info": self.info}


def plain_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool) -> Batch:
    """A one-stack batch of ``input_ids`` ``(B, T)`` with no labels (the evaluations read hidden states)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    return Batch(
        input_ids=input_ids,
        labels=torch.full_like(input_ids, IGNORE_INDEX),
        attention_mask=attention_mask,
        causal=causal,
    )


def encoder_decoder_batch(
    encoder_ids: torch.Tensor,
    decoder_ids: torch.Tensor,
    labels: torch.Tensor,
    encoder_mask: torch.Tensor | None = None,
    decoder_mask: torch.Tensor | None = None,
) -> Batch:
    """An encoder-decoder batch: ``encoder_ids`` ``(B, T)``, ``decoder_ids`` and ``labels`` ``(B, Td)``."""
    if encoder_mask is None:
        encoder_mask = torch.ones_like(encoder_ids, dtype=torch.bool)
    if decoder_mask is None:
        decoder_mask = torch.ones_like(decoder_ids, dtype=torch.bool)
    return Batch(
        input_ids=encoder_ids,
        labels=labels,
        attention_mask=encoder_mask,
        causal=False,
        decoder_input_ids=decoder_ids,
        decoder_attention_mask=decoder_mask,
    )


def finite(value: float) -> float | None:
    """``value`` as a float for JSON, None when it is not finite."""
    value = float(value)
    return value if math.isfinite(value) else None
