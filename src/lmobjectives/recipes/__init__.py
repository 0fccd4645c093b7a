"""How each objective is trained: :data:`OBJECTIVES` maps a name to its :class:`Recipe`.

A recipe says what data the objective reads, what model it needs and how its loss is computed, so the
trainer, the evaluations and the CLI never branch on a name. ``get_objective(name, vocab=..., **options)``
builds an objective by name; its options are its dataclass fields (:func:`options_of`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .._checks import check_choice
from ..batch import Objective
from ..constants import FIM_TOKENS, NUM_SENTINELS, PARADIGM_TOKENS, sentinel_token
from ..data.chat_template import CHAT_TOKENS
from ..objectives import (
    ELECTRA,
    UL2,
    CausalLM,
    FillInTheMiddle,
    MaskedLM,
    MultiTokenPrediction,
    NextSentencePrediction,
    PermutationLM,
    PrefixLM,
    SentenceOrderPrediction,
    SpanBERT,
    SpanCorruption,
    SupervisedFineTuning,
)
from ..vocab import Vocab
from .recipe import DataLayout, ModelSpec, Option, Recipe, options_of
from .step_losses import StepLoss, electra_loss, lm_step_loss, mtp_step_loss, sft_step_loss, spanbert_loss

__all__ = [
    "DEFAULT_OBJECTIVE",
    "LEGACY_ARCHITECTURES",
    "OBJECTIVES",
    "DataLayout",
    "ModelSpec",
    "Option",
    "Recipe",
    "StepLoss",
    "get_objective",
    "lm_step_loss",
    "options_of",
]

DEFAULT_OBJECTIVE = "clm"  # what `lmobj train` trains without --objective

LEGACY_ARCHITECTURES = {"electra": "generator_discriminator", "mtp": "multi_token"}
"""Architecture names that runs saved before their renaming carry in ``config.json``, and their names now."""

_SENTENCE_PAIRS = ModelSpec(n_token_types=2, n_sentence_classes=2)  # segment embeddings and the [CLS] head
_SENTINELS = tuple(sentinel_token(i) for i in range(NUM_SENTINELS))  # T5's <extra_id_0> ... <extra_id_99>


def _pair_words(objective: NextSentencePrediction | SentenceOrderPrediction) -> tuple[str, ...]:
    """Each sentence's word ids, for the whole-word units (word, span, ngram) of the pairs' masked LM."""
    return ("word_ids",) if objective.unit != "token" and objective.mlm_probability > 0 else ()


def _layout_model(objective: SpanCorruption | UL2) -> ModelSpec:
    """The encoder-decoder for ``layout="encoder_decoder"``, else the one-stack transformer (prefix LM)."""
    return ModelSpec(architecture="encoder_decoder") if objective.layout == "encoder_decoder" else ModelSpec()


OBJECTIVES: dict[str, Recipe] = {
    "clm": Recipe(
        CausalLM,
        "causal LM (GPT): predict token t+1 from tokens <= t",
        block_extras=lambda o: ("document_ids",) if o.document_masking else (),
    ),
    "mlm": Recipe(
        MaskedLM,
        "masked LM (BERT): predict selected tokens, words or spans from both sides",
        block_extras=lambda o: () if o.unit == "token" else ("word_ids",),
    ),
    "spanbert": Recipe(
        SpanBERT,
        "SpanBERT: whole-word span masking + span boundary objective (each span token from its two boundaries)",
        block_extras=lambda o: ("word_ids",),
        model=lambda o: ModelSpec(architecture="transformer_sbo", kwargs={"max_pair_targets": o.max_pair_targets}),
        loss=spanbert_loss,
    ),
    "electra": Recipe(
        ELECTRA,
        "ELECTRA (Clark et al. 2020): a small MLM generator fills masked tokens, the discriminator detects replaced ones",
        model=lambda o: ModelSpec(architecture="generator_discriminator", kwargs={"generator_size": o.generator_size}),
        loss=electra_loss,
    ),
    "nsp": Recipe(
        NextSentencePrediction,
        "BERT sentence pairs: masked LM + is B the real next segment?",
        data="sentences",
        length_option="max_seq_length",
        block_extras=_pair_words,
        model=lambda o: _SENTENCE_PAIRS,
    ),
    "sop": Recipe(
        SentenceOrderPrediction,
        "ALBERT sentence pairs: masked LM + are A and B in order or swapped?",
        data="sentences",
        length_option="max_seq_length",
        block_extras=_pair_words,
        model=lambda o: _SENTENCE_PAIRS,
    ),
    "prefix_lm": Recipe(
        PrefixLM,
        "prefix LM (T5): a uniform split per document; bidirectional prefix, causal suffix, loss on the suffix",
        block_extras=lambda o: ("document_ids",) if o.document_masking else (),
    ),
    "span_corruption": Recipe(
        SpanCorruption,
        "span corruption (T5): noise spans become sentinels; predict sentinel + span for each",
        block_length=lambda o, seq_len: o.raw_length(seq_len),
        special_tokens=_SENTINELS,
        model=_layout_model,
    ),
    "ul2": Recipe(
        UL2,
        "UL2 mixture of denoisers: R/X span corruption and S prefix LM, each behind a paradigm token",
        block_length=lambda o, seq_len: o.raw_length(seq_len),
        special_tokens=_SENTINELS + tuple(PARADIGM_TOKENS.values()),
        model=_layout_model,
    ),
    "mtp": Recipe(
        MultiTokenPrediction,
        "multi-token prediction (Gloeckle et al. 2024 parallel heads; DeepSeek-V3 sequential modules): t+1 ... t+n",
        block_extras=lambda o: ("document_ids",) if o.document_masking else (),
        model=lambda o: ModelSpec(
            architecture="multi_token", kwargs={"n_future": o.n_future, "head_design": o.head_design}
        ),
        loss=mtp_step_loss,
    ),
    "fim": Recipe(
        FillInTheMiddle,
        "fill-in-the-middle (Bavarian et al. 2022): PSM/SPM-rearranged documents, causal LM on every token",
        data="documents",
        length_option="seq_len",
        special_tokens=tuple(FIM_TOKENS.values()),
    ),
    "sft": Recipe(
        SupervisedFineTuning,
        "supervised fine-tuning: causal LM on chat conversations, loss on the assistant's answers only",
        data="conversations",
        special_tokens=CHAT_TOKENS,
        loss=sft_step_loss,
    ),
    "plm": Recipe(
        PermutationLM,
        "permutation LM (XLNet): span targets predicted in a random factorisation order (data only)",
        untrainable=(
            "XLNet's objective needs two-stream attention (a content and a query stream), which the package's "
            "one-stream transformer does not have; plm builds XLNet's data (perm_mask, target_mapping) only"
        ),
    ),
}


def get_objective(name: str, *, vocab: Vocab, **options: Any) -> Objective:
    """Build the objective called ``name`` with ``options`` (its dataclass fields).

    >>> from lmobjectives import Vocab
    >>> get_objective("clm", vocab=Vocab(size=10, eos_id=2)).document_masking
    False
    """
    check_choice(name, "objective", sorted(OBJECTIVES))
    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a lmobjectives.Vocab, got {type(vocab).__name__}")
    cls = OBJECTIVES[name].objective
    valid = [f.name for f in dataclasses.fields(cls) if f.name != "vocab" and f.init]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for objective {name!r}; valid options: {', '.join(valid)}"
        )
    return cls(vocab=vocab, **options)
