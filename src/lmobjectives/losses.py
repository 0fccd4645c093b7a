"""Losses computed from hidden states and the output matrix, over target positions only.

Every objective's labels are position-aligned (see :class:`~lmobjectives.Batch`),
so one loss serves CLM, MLM and the rest. It takes ``(hidden, weight,
labels)`` explicitly, never a model, so that a memory-efficient fused
kernel (:mod:`lmobjectives.ops`) can replace the logits matmul.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from .constants import IGNORE_INDEX

__all__ = ["LossOutput", "lm_loss", "sentence_loss"]

Reduction = Literal["mean", "sum"]


@dataclass
class LossOutput:
    """A reduced loss and the counts needed to normalise or report it (all 0-dim tensors)."""

    loss: torch.Tensor  # mean over targets, or their sum (reduction="sum")
    num_tokens: torch.Tensor  # long, number of positions that had a target
    num_correct: torch.Tensor  # long, targets equal to the argmax of the logits

    @property
    def accuracy(self) -> torch.Tensor:
        """Fraction of targets predicted by argmax (0 when there are none)."""
        return self.num_correct / self.num_tokens.clamp(min=1)


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    gather_targets: bool = True,
) -> LossOutput:
    """Cross-entropy of ``hidden @ weight.T`` against ``labels`` at non-ignored positions.

    Per target: ``(1-ε)·(lse - z_y) + ε·(lse - mean_v z_v) + λ·lse²`` with
    ``ε = label_smoothing`` and ``λ = z_loss`` (PaLM's auxiliary z-loss).
    ``reduction="mean"`` divides by the number of targets; ``"sum"`` does not,
    so that gradient accumulation can divide by the total count over
    micro-batches (``sum(loss_i) / sum(num_tokens_i)``). With no target at all
    the loss is an exact 0 connected to the graph (zero gradients, no NaN).

    ``gather_targets`` first selects the positions that have a label (for MLM
    ~15 % of tokens), so only those go through the vocabulary projection.

    Shapes: hidden ``(..., d)``, weight ``(V, d)``, labels ``(...)``.
    """
    _check_reduction(reduction)
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on leading dims")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing!r}")
    if z_loss < 0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss!r}")
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, d)
    y = labels.reshape(-1)  # (N,)
    if gather_targets:
        keep = (y != IGNORE_INDEX).nonzero().squeeze(-1)  # (M,)
        h, y = h[keep], y[keep]  # (M, d), (M,)
    logits = F.linear(h, weight, bias).float()  # (M, V)
    valid = y != IGNORE_INDEX  # (M,)
    safe_y = torch.where(valid, y, 0)
    lse = torch.logsumexp(logits, dim=-1)  # (M,)
    nll = lse - logits.gather(-1, safe_y[:, None]).squeeze(-1)  # (M,)
    if label_smoothing > 0:
        nll = (1 - label_smoothing) * nll + label_smoothing * (lse - logits.mean(-1))
    if z_loss > 0:
        nll = nll + z_loss * lse.square()
    per_token = torch.where(valid, nll, 0.0)
    num = valid.sum()
    total = per_token.sum()
    loss = total / num.clamp(min=1) if reduction == "mean" else total
    correct = ((logits.argmax(-1) == y) & valid).sum()
    return LossOutput(loss=loss, num_tokens=num, num_correct=correct)


def sentence_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: Reduction = "mean") -> LossOutput:
    """Cross-entropy of sentence-level logits ``(B, C)`` against labels ``(B,)`` (NSP, SOP)."""
    _check_reduction(reduction)
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    valid = labels != IGNORE_INDEX
    per = F.cross_entropy(logits.float(), torch.where(valid, labels, 0), reduction="none")
    total = torch.where(valid, per, 0.0).sum()
    num = valid.sum()
    loss = total / num.clamp(min=1) if reduction == "mean" else total
    correct = ((logits.argmax(-1) == labels) & valid).sum()
    return LossOutput(loss=loss, num_tokens=num, num_correct=correct)
