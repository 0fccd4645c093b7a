"""ELECTRA with Hugging Face heads: the generator's samples, the discriminator's batch and loss, and
:class:`ElectraPair`, the two models trained jointly by :class:`lmobjectives.hf.ObjectiveTrainer`.

The collator's ELECTRA batch is the generator's: masked ``input_ids`` and MLM ``labels`` for
``ElectraForMaskedLM``. The discriminator's batch depends on what the generator samples, so it is made at
training time: :func:`sample_replacements` draws one token per masked position from the generator
(temperature 1, without gradient: ELECTRA's ``stop_gradient``), :func:`discriminator_features` puts them
in (:func:`lmobjectives.objectives.electra.replace_masked`) and gives ``ElectraForPreTraining``'s
``labels`` (1 = replaced, a sample equal to the original counts as original), and
:func:`discriminator_loss` is its loss as a sum over the real tokens.

:class:`ElectraPair` holds an ``ElectraForMaskedLM`` generator and an ``ElectraForPreTraining``
discriminator with one embedding module, as ELECTRA's released code shares them
(``untied_generator_embeddings = False``: one ``electra/embeddings`` scope, token, position and token-type
tables and their LayerNorm, read by both models; the generator's output layer is the shared token table).
Its ``forward`` returns the two loss terms as sums, ``"generator"`` over the masked tokens and
``"discriminator"`` over the real tokens; ``ObjectiveTrainer`` divides each by its own count over the
accumulation window and the processes, and weighs the discriminator by ``discriminator_weight`` (50).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_finite_float
from ..batch import Batch
from ..constants import IGNORE_INDEX
from ..losses import LossOutput, lm_loss
from ..objectives.electra import ELECTRA, gumbel_max_sample, replace_masked
from ..training.streams import data_fingerprint, derive_seed
from .heads import Head, head_of

__all__ = ["ElectraPair", "discriminator_features", "discriminator_loss", "sample_replacements"]

Features = Mapping[str, torch.Tensor]


def _generator_head(generator_model: Any, who: str) -> Head:
    head = head_of(generator_model)
    if head is None or head.name != "generator":
        raise TypeError(f"{who} needs an ElectraForMaskedLM generator, got {type(generator_model).__name__}")
    return head


def _masked_rows(generator_model: Any, head: Head, features: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's transformed hidden states at the masked positions (row-major) ``(M, e)``, and their
    targets ``(M,)``: what its output layer (the token table) projects."""
    inputs = {k: v for k, v in features.items() if k != "labels"}
    hidden, _ = head.body(generator_model, inputs)  # (B, T, d_gen)
    labels = features["labels"]
    rows = (labels != IGNORE_INDEX).flatten().nonzero().squeeze(-1)  # (M,)
    h = head.transform(generator_model, hidden.flatten(0, 1).index_select(0, rows))  # (M, e)
    return h, labels.flatten().index_select(0, rows)


def _logits(generator_model: Any, head: Head, h: torch.Tensor) -> torch.Tensor:
    """``(M, V)`` fp32 logits of the rows ``h`` (no gradient: only sampled from)."""
    out = head.output(generator_model)
    bias = None if out.bias is None else out.bias.detach().float()
    return F.linear(h.detach().float(), out.weight.detach().float(), bias)


@torch.no_grad()
def sample_replacements(generator_model: Any, features: Features, rng: torch.Generator | None = None) -> torch.Tensor:
    """One token ``(M,)`` per masked position (``labels != -100``, row-major) from ``generator_model``'s
    distribution (an ``ElectraForMaskedLM``), by the Gumbel-max trick on the masked rows' logits only."""
    head = _generator_head(generator_model, "sample_replacements")
    h, _ = _masked_rows(generator_model, head, features)
    logits = _logits(generator_model, head, h)  # (M, V)
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
    for key in ("token_type_ids", "position_ids"):
        if key in features:
            out[key] = features[key]
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


class ElectraPair(nn.Module):
    """ELECTRA's generator and discriminator, two Hugging Face models with one embedding module.

    ``ElectraPair(generator, discriminator)`` takes an ``ElectraForMaskedLM`` and an ``ElectraForPreTraining``
    whose configs agree on ``vocab_size``, ``embedding_size``, ``max_position_embeddings`` and
    ``type_vocab_size`` (the generator narrower: ELECTRA's ``hidden_size`` ratio is 1/4 to 1/3, same depth;
    its ``embeddings_project`` maps the shared embedding to its width). It makes ``generator.electra.embeddings``
    the discriminator's module and, where the generator's output layer was tied to its token table (HF's
    default), ties it to the shared table: the generator's own embedding is dropped. Nothing else changes:
    both stay ordinary HF models (``pair.discriminator.save_pretrained(...)`` is the fine-tuning checkpoint).

    ``forward(input_ids, attention_mask, labels, token_type_ids=None, position_ids=None)`` takes the
    ``electra`` collator's batch and returns ``{"generator": ..., "discriminator": ...}``, each a
    :class:`~lmobjectives.losses.LossOutput` **sum** with its count:

    1. the generator's MLM loss at the masked positions, through the fused linear cross-entropy on the
       masked rows only (``impl``: :func:`lmobjectives.ops.linear_cross_entropy`'s);
    2. one token per masked position sampled from the generator (Gumbel-max, temperature 1, no gradient);
       the noise of each row comes from a generator seeded by ``(seed, the row's real tokens and labels)``,
       so a row draws the same noise however rows are split into micro-batches or processes, and on resume;
    3. the discriminator's BCE over every real token (``attention_mask``: ``ElectraForPreTraining``'s).

    :meth:`target_counts` counts both terms from the batch alone; ``term_weights`` is
    ``{"generator": 1, "discriminator": discriminator_weight}`` (ELECTRA: 50).
    ``state_dict()`` holds each shared tensor once, under ``discriminator.``; ``load_state_dict`` takes it
    back (strict), so Trainer's safetensors checkpoints work.
    """

    def __init__(
        self,
        generator: Any,
        discriminator: Any,
        *,
        discriminator_weight: float | None = None,
        seed: int = 0,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        _generator_head(generator, "ElectraPair")
        if not hasattr(discriminator, "discriminator_predictions"):
            raise TypeError(
                f"ElectraPair needs an ElectraForPreTraining discriminator, got {type(discriminator).__name__}"
            )
        g_cfg, d_cfg = generator.config, discriminator.config
        for key in ("vocab_size", "embedding_size", "max_position_embeddings", "type_vocab_size"):
            if getattr(g_cfg, key) != getattr(d_cfg, key):
                raise ValueError(
                    f"ElectraPair shares the embeddings: the generator's {key} is {getattr(g_cfg, key)}, the "
                    f"discriminator's {getattr(d_cfg, key)}; build the generator's config with the discriminator's"
                )
        weight = ELECTRA.discriminator_weight if discriminator_weight is None else discriminator_weight
        self.discriminator_weight = check_finite_float(
            weight, "discriminator_weight (ELECTRA: 50)", low=0, low_open=True
        )
        self.seed = seed
        self.impl = impl
        shared = discriminator.electra.embeddings
        tied = generator.generator_lm_head.weight is generator.electra.embeddings.word_embeddings.weight
        generator.electra.embeddings = shared
        if tied:
            generator.generator_lm_head.weight = shared.word_embeddings.weight
        self.generator = generator
        self.discriminator = discriminator
        # state_dict keys that alias a discriminator tensor: left out on save, filled in on load
        self._aliases = {
            f"generator.electra.embeddings.{k}": f"discriminator.electra.embeddings.{k}" for k in shared.state_dict()
        }
        if tied:
            self._aliases["generator.generator_lm_head.weight"] = (
                "discriminator.electra.embeddings.word_embeddings.weight"
            )
        self.register_state_dict_post_hook(_drop_aliases)
        self.register_load_state_dict_pre_hook(_fill_aliases)

    @property
    def _head(self) -> Head:  # not stored: a Head holds closures, and the pair stays picklable
        return _generator_head(self.generator, "ElectraPair")

    @property
    def term_weights(self) -> dict[str, float]:
        """The weight of each term in the loss: ``generator + discriminator_weight * discriminator``."""
        return {"generator": 1.0, "discriminator": self.discriminator_weight}

    def target_counts(self, features: Features) -> dict[str, torch.Tensor]:
        """Each term's number of targets, from the batch alone: masked tokens, real tokens."""
        return {
            "generator": (features["labels"] != IGNORE_INDEX).sum(),
            "discriminator": features["attention_mask"].bool().sum(),
        }

    @torch.no_grad()
    def sample(self, features: Features) -> torch.Tensor:
        """The tokens ``(M,)`` that :meth:`forward` puts at the masked positions (row-major) of ``features``."""
        h, _ = _masked_rows(self.generator, self._head, features)
        return self._sample(features, _logits(self.generator, self._head, h))

    def _sample(self, features: Features, logits: torch.Tensor) -> torch.Tensor:
        labels, real = features["labels"], features["attention_mask"].bool()
        ids_cpu, labels_cpu, real_cpu = features["input_ids"].cpu(), labels.cpu(), real.cpu()
        counts = (labels_cpu != IGNORE_INDEX).sum(1).tolist()  # masked positions per row
        picks = []
        for i, part in enumerate(logits.split(counts)):  # (M_i, V) each
            if not counts[i]:
                continue
            row = real_cpu[i]
            seed = derive_seed(self.seed, "electra-sample", data_fingerprint(ids_cpu[i][row], labels_cpu[i][row]))
            picks.append(gumbel_max_sample(part, torch.Generator(device=logits.device).manual_seed(seed)))
        return torch.cat(picks) if picks else logits.new_zeros(0, dtype=torch.long)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> dict[str, LossOutput]:
        features = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for key, value in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
            if value is not None:
                features[key] = value
        h, targets = _masked_rows(self.generator, self._head, features)  # (M, e), (M,)
        out = self._head.output(self.generator)
        generator_term = lm_loss(
            h, out.weight, targets, bias=out.bias, reduction="sum", gather_targets=False, impl=self.impl
        )
        with torch.no_grad():
            sampled = self._sample(features, _logits(self.generator, self._head, h))  # (M,)
        fake = discriminator_features(features, sampled)
        return {"generator": generator_term, "discriminator": discriminator_loss(self.discriminator, fake)}


def _drop_aliases(module: ElectraPair, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    for key in module._aliases:
        state_dict.pop(prefix + key, None)


def _fill_aliases(
    module: ElectraPair,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    for key, source in module._aliases.items():
        if prefix + key not in state_dict and prefix + source in state_dict:
            state_dict[prefix + key] = state_dict[prefix + source]
