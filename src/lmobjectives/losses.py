"""Losses computed from hidden states and the output matrix, over target positions only.

Every objective's labels are position-aligned (see :class:`~lmobjectives.Batch`),
so one loss serves CLM, MLM and the rest. It takes ``(hidden, weight,
labels)`` explicitly, never a model, so that a memory-efficient fused
kernel (:mod:`lmobjectives.ops`) can replace the logits matmul.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F

from ._checks import check_choice, check_int
from .constants import IGNORE_INDEX
from .ops import linear_cross_entropy_with_stats

__all__ = ["LossOutput", "TokenLosses", "lm_logits", "lm_loss", "lm_token_losses", "sentence_loss"]

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


def lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    gather_targets: bool = True,
    num_targets: int | None = None,
    impl: str = "auto",
) -> LossOutput:
    """Cross-entropy of ``hidden @ weight.T`` against ``labels`` at non-ignored positions.

    Per target: ``(1-ε)·(lse - z_y) + ε·(lse - mean_v z_v) + λ·lse²`` with
    ``ε = label_smoothing`` and ``λ = z_loss`` (PaLM's auxiliary z-loss), ``z``
    the (optionally soft-capped) logits. ``reduction="mean"`` divides by the
    number of targets; ``"sum"`` does not, so that gradient accumulation can
    divide by the total count over micro-batches (``sum(loss_i) /
    sum(num_tokens_i)``). With no target at all the loss is an exact 0
    connected to the graph (zero gradients, no NaN).

    The logits are never materialised: the projection and the loss run in
    :func:`lmobjectives.ops.linear_cross_entropy` (``impl="auto"`` picks its
    vocabulary-chunked path on CUDA and its token-chunked path elsewhere).
    ``gather_targets`` first selects the positions that have a label (for
    MLM ~15 % of tokens), so only those go through the vocabulary projection;
    finding them needs their number on the host: without ``num_targets``
    that is one host sync per call on CUDA (``nonzero``). Pass
    ``num_targets``, the number of labels that are not ``IGNORE_INDEX``
    counted on the host (e.g. on the CPU batch before it is moved to the
    device: reading a CPU tensor is no device sync), and the gather has a
    static size (``nonzero_static``): no sync; a wrong count fails an
    asynchronous device assertion (on CPU at once). Turn the gather off for
    CLM-like batches where nearly every position is a target.

    Shapes: hidden ``(..., d)``, weight ``(V, d)``, labels ``(...)``.
    """
    check_choice(reduction, "reduction", get_args(Reduction))
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on leading dims")
    h = hidden.reshape(-1, hidden.shape[-1])  # (N, d)
    y = labels.reshape(-1)  # (N,)
    check_int(num_targets, "num_targets", low=0, high=y.numel(), allow_none=True)
    if gather_targets:
        has_target = y != IGNORE_INDEX  # (N,)
        if num_targets is None:
            keep = has_target.nonzero().squeeze(-1)  # (M,): a host sync on CUDA
        else:
            torch._assert_async(has_target.sum() == num_targets, "num_targets differs from the number of labels")
            keep = torch.nonzero_static(has_target, size=num_targets).squeeze(-1)  # (M,) no sync
        h, y = h[keep], y[keep]  # (M, d), (M,)
    out = linear_cross_entropy_with_stats(
        h,
        weight,
        y,
        bias=bias,
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        impl=impl,
    )
    return LossOutput(loss=out.loss, num_tokens=out.num_valid, num_correct=out.correct.sum())


@dataclass
class TokenLosses:
    """Per-position cross-entropy and argmax hits (each with the shape of the labels)."""

    loss: torch.Tensor  # float, -log p(label) at each labelled position (natural log), 0 where there is no label
    correct: torch.Tensor  # bool, the label is the argmax of the logits; False where there is no label
    mask: torch.Tensor  # bool, True where the position has a label (not IGNORE_INDEX)

    def reduce(self) -> LossOutput:
        """The mean over labelled positions, as :func:`lm_loss` (without label smoothing or z-loss) returns it."""
        num = self.mask.sum()
        return LossOutput(loss=self.loss.sum() / num.clamp(min=1), num_tokens=num, num_correct=self.correct.sum())


def lm_token_losses(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    impl: str = "auto",
) -> TokenLosses:
    """The cross-entropy of ``hidden @ weight.T`` at every labelled position, not reduced (evaluation:
    bits per byte, pseudo-log-likelihoods, per-position curves). Differentiable like :func:`lm_loss`,
    through the same kernels (``reduction="none"``), so the logits are never materialised either.

    Shapes: hidden ``(..., d)``, weight ``(V, d)``, labels ``(...)``; every field of the result ``(...)``.

    >>> hidden, weight = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> out = lm_token_losses(hidden, weight, torch.tensor([[0, IGNORE_INDEX]]))
    >>> out.loss, out.correct, out.mask
    (tensor([[0.1269, 0.0000]]), tensor([[ True, False]]), tensor([[ True, False]]))
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on leading dims")
    out = linear_cross_entropy_with_stats(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        labels.reshape(-1),
        bias=bias,
        ignore_index=IGNORE_INDEX,
        reduction="none",
        softcap=softcap,
        impl=impl,
    )
    mask = labels != IGNORE_INDEX
    loss = torch.where(mask, out.loss.reshape(labels.shape), 0.0)
    return TokenLosses(loss=loss, correct=out.correct.reshape(labels.shape) & mask, mask=mask)


def lm_logits(hidden: torch.Tensor, weight: torch.Tensor, *, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The logits ``hidden @ weight.T (+ bias)`` ``(..., V)``, in float32 at least: for evaluation on a few
    positions (candidate scoring, generation), where the ``(N, V)`` matrix is small.

    >>> lm_logits(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    tensor([[1., 2., 3.]])
    """
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    logits = hidden.to(dtype) @ weight.to(dtype).T
    return logits if bias is None else logits + bias.to(dtype)


def sentence_loss(logits: torch.Tensor, labels: torch.Tensor, *, reduction: Reduction = "mean") -> LossOutput:
    """Cross-entropy of sentence-level logits ``(B, C)`` against labels ``(B,)`` (NSP, SOP)."""
    check_choice(reduction, "reduction", get_args(Reduction))
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (B, C) and labels (B,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class ids, got dtype {labels.dtype}")
    valid = labels != IGNORE_INDEX
    work = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least; float64 stays float64
    per = F.cross_entropy(work, torch.where(valid, labels, 0).long(), reduction="none")
    total = torch.where(valid, per, 0.0).sum()
    num = valid.sum()
    loss = total / num.clamp(min=1) if reduction == "mean" else total
    correct = ((logits.argmax(-1) == labels) & valid).sum()
    return LossOutput(loss=loss, num_tokens=num, num_correct=correct)
