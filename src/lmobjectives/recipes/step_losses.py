"""The step losses: what one training step backpropagates for an objective, given its model and its batch.

Each is a recipe's ``loss`` (``(objective, model, batch) -> StepLoss``); :func:`lm_step_loss` is the default.
They need a model, so they live here, above the objectives (pure transforms) and the models.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..batch import Batch
from ..constants import IGNORE_INDEX
from ..losses import LossOutput, lm_loss, sentence_loss
from ..models.electra import ElectraModel
from ..models.mtp import MultiTokenTransformer
from ..objectives.electra import ELECTRA, gumbel_max_sample, replace_masked
from ..objectives.mtp import MultiTokenPrediction, head_term_name
from ..objectives.spanbert import SpanBERT
from ..ops import linear_cross_entropy_with_stats

__all__ = [
    "StepLoss",
    "electra_loss",
    "lm_step_loss",
    "mtp_step_loss",
    "parallel_heads_loss",
    "sequential_modules_loss",
    "sft_step_loss",
    "spanbert_loss",
]


@dataclass
class StepLoss:
    """What a recipe's loss returns for one batch."""

    total: torch.Tensor  # 0-dim, the quantity to backpropagate
    terms: dict[str, LossOutput]  # reported separately: metrics "<name>_loss", "<name>_accuracy" ("lm": "accuracy")
    metrics: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # other 0-dim values, reported as their mean over steps
    weights: dict[str, float] = field(
        default_factory=dict
    )  # a term's weight in the reported "loss" (default 1), as in total


def lm_step_loss(objective: Any, model: torch.nn.Module, batch: Batch) -> StepLoss:
    """The default loss: cross-entropy at the labelled positions, plus the sentence head's loss when the batch
    has ``sentence_labels`` (NSP, SOP); total = their sum. Works for any model whose output has ``hidden``
    aligned with ``batch.labels`` and ``sentence_logits``, and which exposes ``output_weight``."""

    out = model(batch)
    terms = {"lm": lm_loss(out.hidden, model.output_weight, batch.labels)}
    if batch.sentence_labels is not None and out.sentence_logits is not None:
        terms["sentence"] = sentence_loss(out.sentence_logits, batch.sentence_labels)
    total = terms["lm"].loss
    for name, term in terms.items():
        if name != "lm":
            total = total + term.loss
    return StepLoss(total=total, terms=terms)


def spanbert_loss(objective: SpanBERT, model: torch.nn.Module, batch: Batch) -> StepLoss:
    """``MLM + SBO`` (SpanBERT's ``--pair-loss-weight 1.0``): terms ``"lm"`` and ``"sbo"``, each a mean over targets.

    ``model`` must carry a span boundary head as ``model.sbo`` (architecture ``"transformer_sbo"``,
    :class:`~lmobjectives.models.sbo.TransformerWithSBO`). A batch with no span between two boundary
    tokens has an SBO loss of exactly 0 (no NaN).
    """

    head = getattr(model, "sbo", None)
    if head is None:
        raise TypeError(
            f"spanbert_loss needs a model with a span boundary head (model.sbo; architecture 'transformer_sbo'), "
            f"got {type(model).__name__}"
        )
    if head.max_pair_targets < objective.max_pair_targets:
        raise ValueError(
            f"the model's SBO head has max_pair_targets={head.max_pair_targets} position embeddings, fewer than the "
            f"objective's max_pair_targets={objective.max_pair_targets}"
        )
    out = model(batch)
    lm = lm_loss(out.hidden, model.output_weight, batch.labels)
    t = objective.targets(batch)
    h = head(out.hidden, t.rows, t.left, t.right, t.offset)  # (M, d)
    sbo = lm_loss(h, model.output_weight, t.labels, bias=head.bias)
    return StepLoss(total=lm.loss + sbo.loss, terms={"lm": lm, "sbo": sbo})


def electra_loss(
    objective: ELECTRA, model: ElectraModel, batch: Batch, *, generator: torch.Generator | None = None
) -> StepLoss:
    """ELECTRA's loss on the generator's ``batch``: generator MLM + ``discriminator_weight`` x discriminator BCE.

    1. The generator runs on the masked input; its MLM loss at the masked positions goes through the
       package's fused linear cross-entropy (:func:`lmobjectives.losses.lm_loss`), on the masked rows
       only (``hidden[masked]``: the head and the vocabulary projection never see the others).
    2. One token per masked position is sampled from the generator's distribution at temperature 1
       (:func:`gumbel_max_sample`, on logits ``h @ E.T + b`` of the masked rows only, without gradient:
       ELECTRA's ``stop_gradient``). The discriminator's input and labels come from
       :func:`replace_masked`.
    3. The discriminator's loss: sigmoid cross-entropy of its replaced-token logits, mean over every
       real token (``attention_mask``; ELECTRA's ``input_mask`` weights), specials included.

    ``total = generator + discriminator_weight * discriminator`` (ELECTRA: ``gen_weight = 1``,
    ``disc_weight = 50``), which ``weights`` makes the reported ``loss`` too. Terms: ``"generator"`` (MLM loss; accuracy = argmax hits on the masked
    positions) and ``"discriminator"`` (BCE mean; ``num_tokens`` = real tokens, ``num_correct`` =
    tokens with ``(logit > 0) == replaced``, ELECTRA's ``disc_accuracy``). Metrics, per step:
    ``replaced_fraction`` (replaced / real tokens: the all-"original" baseline's error),
    ``discriminator_precision`` and ``discriminator_recall`` on the replaced tokens (0 when
    undefined, as ``tf.metrics.accuracy`` with zero weight gives in ELECTRA's evaluation).

    Randomness: the sample draws from ``generator``, by default None: torch's global generator, as
    the model's dropout does. The trainer seeds it from ``(seed, step)`` before every step
    (``training.trainer``), so a resumed run draws the same samples as an uninterrupted one; pass a
    generator to make a call reproducible on its own.
    """

    masked = batch.labels != IGNORE_INDEX  # (B, T)
    rows = masked.flatten().nonzero().squeeze(-1)  # (M,) row-major
    targets = batch.labels.flatten().index_select(0, rows)  # (M,)
    gen_hidden = model.generator_hidden(batch)  # (B, T, d_gen)
    h = model.generator.head(gen_hidden.flatten(0, 1).index_select(0, rows))  # (M, d)
    weight, bias = model.output_weight, model.generator.output_bias  # (V, d), (V,)
    gen = lm_loss(h, weight, targets, bias=bias, gather_targets=False)
    with torch.no_grad():
        work = torch.promote_types(h.dtype, torch.float32)  # fp32 at least; float64 stays float64
        logits = torch.addmm(bias.to(work), h.to(work), weight.to(work).t())  # (M, V), masked rows only
        sampled = gumbel_max_sample(logits, generator)  # (M,)
    fake, replaced = replace_masked(batch, sampled)  # (B, T), (B, T)

    hidden = model(replace(batch, input_ids=fake)).hidden  # (B, T, d)
    disc_logits = model.replaced_logits(hidden)  # (B, T)
    disc_logits = disc_logits.to(torch.promote_types(disc_logits.dtype, torch.float32))
    real = batch.attention_mask  # (B, T)
    per_token = F.binary_cross_entropy_with_logits(
        disc_logits, replaced.to(disc_logits.dtype), reduction="none"
    )  # (B, T)
    n_real = real.sum()
    disc_loss = torch.where(real, per_token, 0.0).sum() / n_real.clamp(min=1)
    predicted = (disc_logits > 0) & real  # (B, T): ELECTRA's preds = round((sign(logit) + 1) / 2)
    replaced = replaced & real
    n_replaced, n_predicted = replaced.sum(), predicted.sum()
    hits = (predicted & replaced).sum()
    correct = ((predicted == replaced) & real).sum()
    disc = LossOutput(loss=disc_loss, num_tokens=n_real, num_correct=correct)

    def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a / b.clamp(min=1)).float().detach()

    return StepLoss(
        total=gen.loss + objective.discriminator_weight * disc_loss,
        terms={"generator": gen, "discriminator": disc},
        weights={"discriminator": objective.discriminator_weight},  # the reported "loss" is the trained total
        metrics={
            "replaced_fraction": ratio(n_replaced, n_real),
            "discriminator_precision": ratio(hits, n_predicted),
            "discriminator_recall": ratio(hits, n_replaced),
        },
    )


def sft_step_loss(objective: Any, model: torch.nn.Module, batch: Batch) -> StepLoss:
    """The SFT loss of one batch, normalised as ``objective.normalize`` says.

    - ``"token"`` (default): the mean cross-entropy over every target token of the batch, as
      :func:`~lmobjectives.recipes.step_losses.lm_step_loss`. A conversation weighs as much as its number of
      answer tokens: long answers dominate the gradient.
    - ``"sequence"``: the mean over the batch's conversations (``document_ids`` within each row) of each
      conversation's mean token loss. Every conversation weighs the same, so a one-line answer counts as
      much as a page; each token of a short answer weighs more than one of a long answer. With equal answer
      lengths the two are equal.

    Both values are reported (``token_mean_loss``, ``sequence_mean_loss``) with the number of conversations
    that had a target (``conversations``); the ``lm`` term, and so the total, is the chosen one.
    """

    out = model(batch)
    labels = batch.labels  # (B, T)
    T = labels.shape[1]
    keep = (labels != IGNORE_INDEX).nonzero(as_tuple=True)  # ((M,), (M,)) the target positions
    stats = linear_cross_entropy_with_stats(out.hidden[keep], model.output_weight, labels[keep], reduction="none")
    per_token = stats.loss  # (M,) differentiable
    docs = batch.document_ids if batch.document_ids is not None else torch.zeros_like(labels)  # (B, T)
    conversation = keep[0] * (T + 1) + docs[keep]  # (M,) one key per (row, conversation); doc ids are < T + 1
    _, which, sizes = torch.unique(conversation, return_inverse=True, return_counts=True)  # (M,), (C,)
    n_conversations = sizes.numel()
    weights = 1.0 / (sizes[which].to(per_token.dtype) * max(n_conversations, 1))  # (M,) sums to 1 over targets
    count = torch.tensor(per_token.numel(), device=labels.device)
    token_mean = per_token.sum() / count.clamp(min=1)
    sequence_mean = (per_token * weights).sum()
    loss = sequence_mean if objective.normalize == "sequence" else token_mean
    term = LossOutput(loss=loss, num_tokens=count, num_correct=stats.correct.sum())
    metrics = {
        "token_mean_loss": token_mean.detach(),
        "sequence_mean_loss": sequence_mean.detach(),
        "conversations": torch.tensor(float(n_conversations)),
    }
    return StepLoss(total=loss, terms={"lm": term}, metrics=metrics)


# ----------------------------------------------------------------------------- multi-token prediction


def _check_labels(model: Any, batch: Batch, heads: str) -> torch.Tensor:
    """``batch.labels`` ``(B, T, N)`` checked against the model: a multi-token model of the same design and N."""

    if not isinstance(model, MultiTokenTransformer):
        raise TypeError(
            f"the mtp loss needs a MultiTokenTransformer (architecture 'multi_token'), got {type(model).__name__}"
        )
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
        terms[head_term_name(k)] = type(term)(
            loss=term.loss.detach(), num_tokens=term.num_tokens, num_correct=term.num_correct
        )
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
    terms = {
        head_term_name(k): _head_loss(out.heads[:, :, k], model.output_weight, labels[..., k])
        for k in range(model.n_future)
    }
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
