"""ELECTRA with Hugging Face heads: the generator's samples, the discriminator's batch and its loss.

The collator's ELECTRA batch is the generator's: masked ``input_ids`` and MLM ``labels`` for
``ElectraForMaskedLM``. The discriminator's batch depends on what the generator samples, so it is made at
training time: :func:`sample_replacements` draws one token per masked position from the generator
(temperature 1, without gradient: ELECTRA's ``stop_gradient``), :func:`discriminator_features` puts them
in (:func:`lmobjectives.objectives.electra.replace_masked`) and gives ``ElectraForPreTraining``'s
``labels`` (1 = replaced, a sample equal to the original counts as original), and
:func:`discriminator_loss` is its loss as a sum over the real tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..batch import Batch
from ..constants import IGNORE_INDEX
from ..losses import LossOutput
from ..objectives.electra import gumbel_max_sample, replace_masked
from .heads import head_of

__all__ = ["discriminator_features", "discriminator_loss", "sample_replacements"]

Features = Mapping[str, torch.Tensor]


@torch.no_grad()
def sample_replacements(generator_model: Any, features: Features, rng: torch.Generator | None = None) -> torch.Tensor:
    """One token ``(M,)`` per masked position (``labels != -100``, row-major) from ``generator_model``'s
    distribution (an ``ElectraForMaskedLM``), by the Gumbel-max trick on the masked rows' logits only."""
    head = head_of(generator_model)
    if head is None or head.name != "generator":
        raise TypeError(f"sample_replacements needs an ElectraForMaskedLM, got {type(generator_model).__name__}")
    inputs = {k: v for k, v in features.items() if k != "labels"}
    hidden, _ = head.body(generator_model, inputs)  # (B, T, d)
    rows = (features["labels"] != IGNORE_INDEX).flatten().nonzero().squeeze(-1)  # (M,)
    h = head.transform(generator_model, hidden.flatten(0, 1).index_select(0, rows))  # (M, e)
    out = head.output(generator_model)
    logits = F.linear(h.float(), out.weight.float(), None if out.bias is None else out.bias.float())  # (M, V)
    if rng is not None and rng.device != logits.device:
        raise ValueError(f"rng is on {rng.device}, the logits on {logits.device}")
    return gumbel_max_sample(logits, rng)


def discriminator_features(features: Features, sampled: torch.Tensor) -> dict[str, torch.Tensor]:
    """``ElectraForPreTraining``'s arguments: the input with the samples put in, ``attention_mask``, and
    ``labels`` (long, 1 = replaced)."""
    real = features["attention_mask"].bool()
    batch = Batch(input_ids=features["input_ids"], labels=features["labels"], attention_mask=real, causal=False)
    fake, replaced = replace_masked(batch, sampled)
    out = {"input_ids": fake, "attention_mask": features["attention_mask"], "labels": replaced.long()}
    if "token_type_ids" in features:
        out["token_type_ids"] = features["token_type_ids"]
    return out


def discriminator_loss(model: Any, features: Features) -> LossOutput:
    """The replaced-token BCE of ``model`` (an ``ElectraForPreTraining``) summed over the real tokens
    (``attention_mask``), with their count: divided by it, ``ElectraForPreTraining``'s own loss."""
    if not hasattr(model, "discriminator_predictions"):
        raise TypeError(f"discriminator_loss needs an ElectraForPreTraining, got {type(model).__name__}")
    names = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
    hidden = model.base_model(**{k: features[k] for k in names if k in features})[0]  # (B, T, d)
    logits = model.discriminator_predictions(hidden)  # (B, T)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    real = features["attention_mask"].bool()
    labels = features["labels"]
    per = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")  # (B, T)
    correct = (((logits > 0) == labels.bool()) & real).sum()
    return LossOutput(loss=torch.where(real, per, 0.0).sum(), num_tokens=real.sum(), num_correct=correct)
