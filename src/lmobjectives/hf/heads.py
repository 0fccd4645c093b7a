"""The loss terms of a Hugging Face model's batch, from its body's hidden states and its output embedding.

:func:`loss_terms` runs the model's **body** (``model.bert``, ``model.model``, T5's encoder and decoder, XLNet's
query stream, ...), applies the head's own transform (BERT's ``cls.predictions.transform``, ALBERT's dense + activation +
LayerNorm, ELECTRA's ``generator_predictions``; nothing for decoder-only heads, T5's ``d_model ** -0.5``
rescaling where its config says so) to the rows that have a target only, and hands those rows with the
output embedding's weight and bias to the package's fused linear cross-entropy
(:func:`lmobjectives.losses.lm_loss`): the ``N x V`` logits are never built, and an MLM batch projects ~15 %
of its rows. Sentence heads (NSP, SOP) and ELECTRA's discriminator run as the model runs them. Every term is
a **sum** with its target count (``reduction="sum"``), so the caller divides by whatever count it wants: the
batch's own (the head's mean) or the accumulation window's (:class:`lmobjectives.hf.ObjectiveTrainer`).

Nothing is patched: the model's modules are called through their public attributes, as its own ``forward``
calls them. :func:`head_of` says which models are known; any other model falls back to its own ``logits``
(:data:`LOGITS`), which builds the logits but keeps the per-term normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..losses import LossOutput, lm_loss, sentence_loss
from .features import LABEL_NAMES

__all__ = ["Head", "LOGITS", "head_of", "loss_terms", "target_counts"]

Features = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Head:
    """How one family of HF models is read: its body, its transform, its output layer, its sentence head."""

    name: str  # the family, for messages: "bert", "causal", ...
    shifts_labels: bool  # HF's loss pairs logits[t] with labels[t + 1] (causal heads)
    body: Callable[
        [Any, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]
    ]  # -> hidden (B, T, d), pooled (B, d)
    transform: Callable[[Any, torch.Tensor], torch.Tensor]  # rows (M, d) -> rows (M, d') the output layer reads
    output: Callable[[Any], torch.nn.Module]  # the output embedding (a Linear: weight (V, d'), bias (V,) or None)
    sentence: tuple[str, Callable[[Any, torch.Tensor], torch.Tensor]] | None = None  # (label key, pooled -> logits)


def _inputs(features: Features, *names: str) -> dict[str, torch.Tensor]:
    return {k: features[k] for k in names if k in features}


def _encoder_body(pooled: bool) -> Callable[[Any, dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor | None]]:
    """The encoder body (``model.base_model``: ``model.bert``, ``model.albert``, ...); with ``pooled``, its pooler output too."""

    def body(model: Any, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = model.base_model(**_inputs(features, "input_ids", "attention_mask", "token_type_ids", "position_ids"))
        return out[0], (out[1] if pooled else None)

    return body


def _causal_body(model: Any, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
    out = model.base_model(**_inputs(features, "input_ids", "attention_mask", "position_ids"), use_cache=False)
    return out[0], None


def _t5_body(model: Any, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
    encoded = model.encoder(input_ids=features["input_ids"], attention_mask=features.get("attention_mask"))[0]
    decoded = model.decoder(
        input_ids=features["decoder_input_ids"],
        attention_mask=features.get("decoder_attention_mask"),
        encoder_hidden_states=encoded,
        encoder_attention_mask=features.get("attention_mask"),
        use_cache=False,
    )[0]
    return decoded, None


def _xlnet_body(model: Any, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
    """XLNet's query stream at the ``target_mapping`` rows ``(B, P, d)`` (its content stream without one)."""
    names = ("input_ids", "attention_mask", "perm_mask", "target_mapping", "token_type_ids")
    return model.transformer(**_inputs(features, *names), use_mems=False)[0], None


def _t5_transform(model: Any, h: torch.Tensor) -> torch.Tensor:
    return h * model.model_dim**-0.5 if model.config.scale_decoder_outputs else h


def _albert_transform(model: Any, h: torch.Tensor) -> torch.Tensor:
    p = model.predictions
    return p.LayerNorm(p.activation(p.dense(h)))


def _identity(model: Any, h: torch.Tensor) -> torch.Tensor:
    return h


_CAUSAL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3")  # plain logits = hidden @ E.T: no softcap, no scale


def head_of(model: Any) -> Head | None:
    """The :class:`Head` of a known model (BERT and ALBERT pre-training and MLM heads, ELECTRA's generator,
    T5, XLNet's LM head, GPT-2 / Llama / Mistral / Qwen2 / Qwen3 causal heads), else None."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind == "bert" and hasattr(model, "cls") and hasattr(model.cls, "predictions"):
        nsp = getattr(model.cls, "seq_relationship", None)
        return Head(
            "bert",
            False,
            _encoder_body(pooled=nsp is not None),
            lambda m, h: m.cls.predictions.transform(h),
            lambda m: m.cls.predictions.decoder,
            None if nsp is None else ("next_sentence_label", lambda m, pooled: m.cls.seq_relationship(pooled)),
        )
    if kind == "albert" and hasattr(model, "predictions"):
        sop = hasattr(model, "sop_classifier")
        return Head(
            "albert",
            False,
            _encoder_body(pooled=sop),
            _albert_transform,
            lambda m: m.predictions.decoder,
            ("sentence_order_label", lambda m, pooled: m.sop_classifier(pooled)) if sop else None,
        )
    if hasattr(model, "generator_lm_head") and hasattr(model, "generator_predictions"):  # ElectraForMaskedLM
        return Head(
            "generator",
            False,
            _encoder_body(pooled=False),
            lambda m, h: m.generator_predictions(h),
            lambda m: m.generator_lm_head,
        )
    if kind == "t5" and hasattr(model, "lm_head") and hasattr(model, "decoder"):
        return Head("t5", False, _t5_body, _t5_transform, lambda m: m.lm_head)
    if kind == "xlnet" and hasattr(model, "lm_loss") and hasattr(model, "transformer"):  # XLNetLMHeadModel
        return Head("xlnet", False, _xlnet_body, _identity, lambda m: m.lm_loss)
    if (
        kind in _CAUSAL_TYPES
        and callable(getattr(model, "get_output_embeddings", None))
        and model.get_output_embeddings() is not None
    ):
        return Head("causal", True, _causal_body, _identity, lambda m: m.get_output_embeddings())
    return None


def _aligned_targets(head_shifts: bool, labels: torch.Tensor) -> torch.Tensor:
    """Targets aligned with the hidden states: HF's unshifted causal labels shifted back (``labels[:, 1:]``
    against ``hidden[:, :-1]``); other labels as they are. Same shape as ``labels``, IGNORE_INDEX at the end."""
    if not head_shifts:
        return labels
    return torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE_INDEX)], dim=1)


def target_counts(model: Any, features: Features) -> dict[str, torch.Tensor]:
    """The number of targets of each loss term of one batch, from the batch alone (no forward): ``"lm"`` (the
    labels the head scores: ``labels[:, 1:]`` for causal heads) and ``"sentence"`` where there are sentence labels."""
    head = head_of(model)
    shifts = head.shifts_labels if head is not None else _logits_shift(model)
    counts: dict[str, torch.Tensor] = {}
    if "labels" in features:
        labels = features["labels"]
        counts["lm"] = ((labels[:, 1:] if shifts else labels) != IGNORE_INDEX).sum()
    for key in LABEL_NAMES[1:]:
        if key in features:
            counts["sentence"] = (features[key] != IGNORE_INDEX).sum()
    return counts


def loss_terms(model: Any, features: Features, *, impl: str = "auto") -> dict[str, LossOutput]:
    """Each loss term of ``model`` on ``features`` (the collator's output) as a **sum** over its targets with
    their count: ``"lm"`` (the token targets) and ``"sentence"`` (NSP / SOP labels) where the batch has them.

    Known heads (:func:`head_of`) go through the fused linear cross-entropy (``impl`` as in
    :func:`lmobjectives.ops.linear_cross_entropy`) on the target rows only; other models through :data:`LOGITS`.
    """
    head = head_of(model)
    if head is None:
        return LOGITS(model, features)
    model_inputs = {k: v for k, v in features.items() if k not in LABEL_NAMES}
    hidden, pooled = head.body(model, model_inputs)  # (B, T, d), (B, d) or None
    terms: dict[str, LossOutput] = {}
    if "labels" in features:
        targets = _aligned_targets(head.shifts_labels, features["labels"])  # (B, T)
        rows = (targets != IGNORE_INDEX).flatten().nonzero().squeeze(-1)  # (M,)
        h = head.transform(model, hidden.flatten(0, 1).index_select(0, rows))  # (M, d'): the target rows only
        out = head.output(model)
        terms["lm"] = lm_loss(
            h,
            out.weight,
            targets.flatten().index_select(0, rows),
            bias=out.bias,
            reduction="sum",
            gather_targets=False,
            impl=impl,
        )
    if head.sentence is not None and head.sentence[0] in features and pooled is not None:
        key, classify = head.sentence
        terms["sentence"] = sentence_loss(classify(model, pooled), features[key], reduction="sum")
    return terms


def _logits_shift(model: Any) -> bool:
    """Whether a model's own loss shifts its labels: a known head's convention, else a causal-LM head (as
    ``transformers.Trainer`` decides; ``XLNetLMHeadModel`` is in that mapping but does not shift)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    head = head_of(model)
    if head is not None:
        return head.shifts_labels

    config = getattr(model, "config", None)
    causal = type(model).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    return causal and not getattr(config, "is_encoder_decoder", False)


def _logits_terms(model: Any, features: Features, *, reference: Any = None) -> dict[str, LossOutput]:
    """The fallback for a model :func:`head_of` does not know: its own forward (no labels) gives the logits,
    scored here with the same per-term sums (the logits are built: no memory saving). ``reference``: the
    model whose class says whether labels shift, when ``model`` is a wrapper (DDP)."""
    out = model(**{k: v for k, v in features.items() if k not in LABEL_NAMES})
    terms: dict[str, LossOutput] = {}
    if "labels" in features:
        logits = out["logits"] if "logits" in out else out["prediction_logits"]  # (B, T, V)
        targets = _aligned_targets(_logits_shift(model if reference is None else reference), features["labels"])
        flat = logits.flatten(0, 1).float()
        y = targets.flatten()
        valid = y != IGNORE_INDEX
        per = F.cross_entropy(flat, torch.where(valid, y, 0), reduction="none")
        terms["lm"] = LossOutput(
            loss=torch.where(valid, per, 0.0).sum(),
            num_tokens=valid.sum(),
            num_correct=((flat.argmax(-1) == y) & valid).sum(),
        )
    for key, name in (("next_sentence_label", "seq_relationship_logits"), ("sentence_order_label", "sop_logits")):
        if key in features and name in out:
            terms["sentence"] = sentence_loss(out[name], features[key], reduction="sum")
    return terms


LOGITS = _logits_terms
"""The loss terms from a model's own ``logits`` (any HF model; the test oracle of the fused path too)."""
