"""Multi-token prediction: predict tokens t+1 ... t+N from tokens <= t (Gloeckle et al. 2024; DeepSeek-V3).

The objective builds the labels, one column per future token; the two head designs live in
:class:`lmobjectives.models.MultiTokenTransformer` and the losses here (:func:`mtp_step_loss`, the
recipe's loss, which picks :func:`parallel_heads_loss` or :func:`sequential_modules_loss`).

Sources: F. Gloeckle, B. Y. Idrissi, B. Rozière, D. Lopez-Paz, G. Synnaeve, "Better & Faster Large Language
Models via Multi-token Prediction", ICML 2024 (arXiv:2404.19737), §2 and Fig. 2 (the memory-efficient
schedule); DeepSeek-AI, "DeepSeek-V3 Technical Report" (arXiv:2412.19437), §2.2 (MTP modules, Eqs. 21-25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from .._checks import check_like, check_positive_int
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from .base import Batch, checked_tokens
from .clm import documents_from_eos, positions_within_documents
from .recipe import StepLoss

if TYPE_CHECKING:  # pragma: no cover
    from ..losses import LossOutput

__all__ = [
    "MultiTokenPrediction",
    "head_term_name",
    "mtp_step_loss",
    "parallel_heads_loss",
    "sequential_modules_loss",
]

HeadDesign = Literal["parallel", "sequential"]


def head_term_name(k: int) -> str:
    """The :class:`StepLoss` term of the head that predicts token ``t + 1 + k``: ``"lm"`` for ``k = 0`` (so the
    trainer's ``accuracy`` stays next-token accuracy), then ``"head2"``, ``"head3"``, ... (``"headK"``
    predicts the token ``K`` positions ahead).

    >>> [head_term_name(k) for k in range(3)]
    ['lm', 'head2', 'head3']
    """
    return "lm" if k == 0 else f"head{k + 1}"


@dataclass(frozen=True)
class MultiTokenPrediction:
    """Multi-token prediction: ``labels[b, t, k]`` is the token at ``t + 1 + k``, for ``k < n_future``.

    The labels get one more axis than every other objective's: ``(B, T, n_future)``, and column ``k``
    is the target of the head that looks ``k + 1`` tokens ahead. A target is kept only when the tokens
    ``t, t+1, ..., t+1+k`` are all real (``attention_mask``, or the trailing run of ``vocab.pad_id``
    as in :class:`~lmobjectives.objectives.CausalLM`, so an EOS that equals the pad id is still
    learned) and belong to one document; else it is ``IGNORE_INDEX``. Past the end of the row and
    across a document boundary there is nothing to predict. Documents come from ``document_ids`` when
    given, else from EOS (which closes its document), else the row is one document.

    Worked example (``pad_id = eos_id = 2``, ``n_future = 2``; two packed documents ``7 8 9 EOS`` and
    ``4 EOS``, then padding)::

        input_ids        [[ 7,  8,  9,    2,    4,    2,    2]]
        labels[..., 0]   [[ 8,  9,  2, -100,    2, -100, -100]]   # t+1
        labels[..., 1]   [[ 9,  2, -100, -100, -100, -100, -100]]   # t+2
        attention_mask   [[ T,  T,  T,    T,    T,    T,    F]]
        document_ids     [[ 0,  0,  0,    0,    1,    1,    2]]   # document_masking=True
        position_ids     [[ 0,  1,  2,    3,    0,    1,    0]]   # document_masking=True

    >>> mtp = MultiTokenPrediction(Vocab(size=10, pad_id=2, eos_id=2), n_future=2)
    >>> mtp(torch.tensor([[7, 8, 9, 2, 4, 2, 2]])).labels[0].T
    tensor([[   8,    9,    2, -100,    2, -100, -100],
            [   9,    2, -100, -100, -100, -100, -100]])

    Column 0 is :class:`~lmobjectives.objectives.CausalLM`'s labels with ``document_masking=True``
    even when this objective's ``document_masking`` is False. **Deviation** (from CLM without document
    masking, and from the papers, which pack without saying what happens at a boundary): an EOS never
    predicts the next document's tokens, because the issue asks that no head predicts across a
    document. ``document_masking`` adds what CLM's adds: no attention across documents and positions
    that restart at each document.

    The other fields configure the model and the loss (they are the run's options, read by the
    recipe): ``head_design="parallel"`` is Gloeckle et al.'s ``n_future`` independent one-block heads on a
    shared trunk, loss ``Σ_k CE_k``, trained with the paper's memory-efficient schedule unless
    ``memory_efficient=False``; ``head_design="sequential"`` is DeepSeek-V3's ``D = n_future - 1`` chained
    MTP modules behind the full model, loss ``CE_main + mtp_weight / D · Σ_k CE_k``. Defaults:
    ``n_future=2`` is DeepSeek-V3's depth 1 and Gloeckle et al.'s best natural-language setting (they
    use 4 on code); ``mtp_weight=0.3`` is DeepSeek-V3's λ for its first 10T tokens (then 0.1).

    A batch with no target at all raises ``ValueError``; rows without one are reported in
    ``has_targets`` (a row with a target for some head has one for the next-token head). No randomness:
    ``generator`` is accepted for a uniform interface.
    """

    vocab: Vocab  # vocabulary (eos_id marks document boundaries, pad_id padding)
    n_future: int = 2  # tokens predicted at each position (t+1 ... t+n_future); 1 is plain next-token prediction
    head_design: HeadDesign = "parallel"  # 'parallel': Gloeckle et al.'s independent heads; 'sequential': DeepSeek-V3's chained modules
    document_masking: bool = False  # also no attention across documents, positions restarting per document
    mtp_weight: float = 0.3  # sequential heads: lambda, the weight of the mean loss of the extra depths (DeepSeek-V3)
    memory_efficient: bool = True  # parallel heads: one head's forward and backward at a time (Gloeckle et al. Fig. 2)

    name = "mtp"

    def __post_init__(self) -> None:
        check_positive_int(self.n_future, "n_future")
        if self.head_design not in ("parallel", "sequential"):
            raise ValueError(f"head_design must be 'parallel' or 'sequential', got {self.head_design!r}")
        for flag in ("document_masking", "memory_efficient"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        w = self.mtp_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"mtp_weight must be a finite number > 0, got {w!r}")

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        input_ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, T), (B, T)
        B, T = input_ids.shape
        if document_ids is not None:
            document_ids = check_like(document_ids, input_ids, "document_ids")  # (B, T)
        elif self.vocab.eos_id is not None:
            document_ids = documents_from_eos(input_ids, self.vocab.eos_id)  # (B, T)
        elif self.document_masking:
            self.vocab.require("eos_id", who="MultiTokenPrediction(document_masking=True) without document_ids")
        # link[b, t]: t -> t+1 stays inside real tokens of one document
        link = real[:, :-1] & real[:, 1:]  # (B, T-1)
        if document_ids is not None:
            link = link & (document_ids[:, :-1] == document_ids[:, 1:])
        labels = torch.full((B, T, self.n_future), IGNORE_INDEX, dtype=torch.long, device=input_ids.device)
        chain = link  # (B, T-1-k) at step k: the tokens t .. t+1+k are linked
        for k in range(min(self.n_future, T - 1)):  # a loop over the heads, vectorised over batch and time
            labels[:, : T - 1 - k, k] = torch.where(chain, input_ids[:, 1 + k :], IGNORE_INDEX)
            chain = chain[:, :-1] & link[:, k + 1 :]  # (B, T-2-k)
        has_targets = (labels[..., 0] != IGNORE_INDEX).any(-1)  # (B,)
        if not bool(has_targets.any()):  # host sync, as in CausalLM: never a silently all-ignored batch
            raise ValueError(
                f"MultiTokenPrediction: input_ids of shape {tuple(input_ids.shape)} has nothing to predict (no row "
                "holds two consecutive real tokens of one document); refusing to return a batch with no target"
            )
        position_ids = None
        if self.document_masking:
            position_ids = positions_within_documents(document_ids)  # type: ignore[arg-type]
        return Batch(
            input_ids=input_ids.clone(),
            labels=labels,
            attention_mask=real,
            causal=True,
            document_ids=document_ids if self.document_masking else None,
            position_ids=position_ids,
            has_targets=has_targets,
        )


# ----------------------------------------------------------------------------- losses


def _check_labels(model: Any, batch: Batch, heads: str) -> torch.Tensor:
    """``batch.labels`` ``(B, T, N)`` checked against the model: a multi-token model of the same design and N."""
    from ..models.mtp import (
        MultiTokenTransformer,  # lazy: models import objectives.base
    )

    if not isinstance(model, MultiTokenTransformer):
        raise TypeError(f"the mtp loss needs a MultiTokenTransformer (architecture 'mtp'), got {type(model).__name__}")
    if model.head_design != heads:
        raise ValueError(f"the {heads} heads loss got a model with head_design={model.head_design!r}")
    labels = batch.labels
    if labels.dim() != 3 or labels.shape[-1] != model.n_future:
        raise ValueError(
            f"batch.labels must be (B, T, n_future={model.n_future}) from the mtp objective, got shape "
            f"{tuple(labels.shape)}"
        )
    return labels


def _head_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> LossOutput:
    from ..losses import lm_loss  # lazy: the loss pulls in the fused kernels

    # nearly every position is a target, so no gather (and no host sync) before the projection
    return lm_loss(hidden, weight, labels, gather_targets=False)


class _AccumulatedGradients(torch.autograd.Function):
    """``total`` of the memory-efficient schedule: its value is the real loss; its backward hands the gradients
    already accumulated (trunk output, head parameters) to autograd, which continues into the trunk.

    The gradients are stored on ``ctx`` (not saved tensors) and scaled in place by the incoming gradient,
    so this backward runs once (``retain_graph`` and a second backward raise)."""

    @staticmethod
    def forward(ctx: Any, value: torch.Tensor, grads: list[torch.Tensor | None], *inputs: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return value.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("the memory-efficient MTP loss can be backpropagated once only")
        return (None, None, *(None if g is None else g.mul_(grad_out) for g in grads))


def parallel_heads_loss(model: Any, batch: Batch, *, memory_efficient: bool = True) -> StepLoss:
    """Gloeckle et al.'s loss ``Σ_k CE_k`` (each the mean over head ``k``'s targets), terms per head.

    ``memory_efficient=False`` is the naive version: every head's forward, then one backward through
    all of them, so all ``N`` heads' activations are alive together. ``memory_efficient=True`` is the
    paper's schedule (Fig. 2): the trunk runs forward once; then, one head at a time, that head's
    forward and backward (``torch.autograd.grad``) from the *detached* trunk output, summing the
    gradient at the trunk output and the head's parameter gradients (its block, the shared final norm
    and the shared unembedding). Only one head's activations exist at a time. The returned
    ``total`` is the real loss ``Σ_k CE_k`` as a value; its backward (the trainer's
    ``total.backward()``) delivers the summed head gradients to their parameters and continues from the
    trunk output through the trunk, so that every parameter ends up with the naive version's gradient
    (same dropout draws too: the forwards run in the same order). Term values are the heads' real,
    detached losses. Without grad mode (evaluation) both run the heads one at a time with no backward.
    """
    labels = _check_labels(model, batch, "parallel")
    weight = model.output_weight
    N = model.n_future
    terms: dict[str, LossOutput] = {}
    if not memory_efficient and torch.is_grad_enabled():
        out = model(batch)  # every head, all alive until the backward
        for k in range(N):
            terms[head_term_name(k)] = _head_loss(out.heads[:, :, k], weight, labels[..., k])
        total = sum(t.loss for t in terms.values())
        return StepLoss(total=total, terms=terms)  # type: ignore[arg-type]
    trunk, attention = model.trunk(batch)  # (B, T, d), attention inputs shared by the heads
    if not torch.is_grad_enabled():
        for k in range(N):
            terms[head_term_name(k)] = _head_loss(model.head(k, trunk, attention), weight, labels[..., k])
        return StepLoss(total=sum(t.loss for t in terms.values()), terms=terms)  # type: ignore[arg-type]
    detached = trunk.detach().requires_grad_(trunk.requires_grad)  # (B, T, d): the heads' input
    shared = [p for p in (*model.ln_f.parameters(), weight) if p.requires_grad]
    grads: dict[torch.Tensor, torch.Tensor] = {}  # parameter -> its summed gradient
    trunk_grad: torch.Tensor | None = None  # (B, T, d)
    for k in range(N):
        params = [p for p in model.head_block(k).parameters() if p.requires_grad] + shared
        term = _head_loss(model.head(k, detached, attention), weight, labels[..., k])
        inputs = ([detached] if detached.requires_grad else []) + params
        if inputs and term.loss.requires_grad:
            got = torch.autograd.grad(term.loss, inputs, allow_unused=True)  # frees head k's activations
            if detached.requires_grad:
                g, got = got[0], got[1:]
                trunk_grad = g if trunk_grad is None else trunk_grad.add_(g)
            for p, g in zip(params, got):
                if g is not None:
                    grads[p] = g if p not in grads else grads[p].add_(g)
        terms[head_term_name(k)] = type(term)(loss=term.loss.detach(), num_tokens=term.num_tokens,
                                              num_correct=term.num_correct)  # fmt: skip
    value = sum(t.loss for t in terms.values())
    targets = ([trunk] if trunk_grad is not None else []) + list(grads)
    if not targets:
        return StepLoss(total=value, terms=terms)  # type: ignore[arg-type]
    carried = ([trunk_grad] if trunk_grad is not None else []) + list(grads.values())
    total = _AccumulatedGradients.apply(value, carried, *targets)
    return StepLoss(total=total, terms=terms)


def sequential_modules_loss(model: Any, batch: Batch, *, weight: float = 0.3) -> StepLoss:
    """DeepSeek-V3's loss (§2.2, Eqs. 24-25): ``CE_main + weight / D · Σ_{k=1..D} CE_k``.

    Terms: ``"lm"`` (the main model's next-token loss) and ``"head{k+1}"`` for depth ``k`` (the real,
    unweighted cross-entropy of the token ``k + 1`` ahead); metric ``"mtp_weighted_loss"`` is the
    weighted extra part ``weight / D · Σ_k CE_k``, so the trained total is ``lm_loss +
    mtp_weighted_loss``.
    """
    labels = _check_labels(model, batch, "sequential")
    out = model(batch)
    terms = {head_term_name(k): _head_loss(out.heads[:, :, k], model.output_weight, labels[..., k])
             for k in range(model.n_future)}  # fmt: skip
    main = terms["lm"].loss
    D = model.n_future - 1
    if D == 0:
        return StepLoss(total=main, terms=terms)
    extra = weight / D * sum(terms[head_term_name(k)].loss for k in range(1, D + 1))
    weights = {head_term_name(k): weight / D for k in range(1, D + 1)}  # the reported "loss" is the trained total
    return StepLoss(total=main + extra, terms=terms, metrics={"mtp_weighted_loss": extra.detach()}, weights=weights)


def mtp_step_loss(objective: MultiTokenPrediction, model: Any, batch: Batch) -> StepLoss:
    """The recipe's loss: the objective's ``head_design`` with its ``memory_efficient`` / ``mtp_weight``."""
    if objective.head_design == "parallel":
        return parallel_heads_loss(model, batch, memory_efficient=objective.memory_efficient)
    return sequential_modules_loss(model, batch, weight=objective.mtp_weight)
