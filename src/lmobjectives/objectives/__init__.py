"""Training objectives: seeded, pure tensor transforms from token ids to a :class:`Batch`.

``get_objective(name, vocab=..., **options)`` is the entry point; each name
maps to a frozen dataclass whose fields are its options. :data:`OBJECTIVES`
is the registry: one :class:`Recipe` per name, saying what data the objective
reads, what model it needs and how its loss is computed, so the trainer and
the CLI never branch on a name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..constants import FIM_TOKENS, NUM_SENTINELS, PARADIGM_TOKENS, sentinel_token
from ..vocab import Vocab
from .base import Batch, Objective, attention_mask_4d, padding_mask
from .clm import CausalLM
from .electra import ELECTRA, electra_loss
from .fim import FillInTheMiddle, fim_reassemble
from .mlm import MaskedLM, word_ids_from_starts
from .mtp import MultiTokenPrediction, mtp_step_loss
from .nsp import NextSentencePrediction, SentenceOrderPrediction, SentencePairs
from .plm import PermutationLM
from .prefix_lm import PrefixLM, document_lengths, prefix_lm_batch
from ..sft import CHAT_TOKENS
from .recipe import ModelSpec, Option, Recipe, StepLoss, options_of
from .sft import SupervisedFineTuning, sft_step_loss
from .span_corruption import SpanCorruption, random_spans_noise_mask, span_corruption_lengths
from .spanbert import SpanBERT, span_boundary_targets, spanbert_loss
from .ul2 import UL2

__all__ = [
    "DEFAULT_OBJECTIVE",
    "ELECTRA",
    "OBJECTIVES",
    "Batch",
    "CausalLM",
    "FillInTheMiddle",
    "MaskedLM",
    "MultiTokenPrediction",
    "NextSentencePrediction",
    "ModelSpec",
    "Objective",
    "Option",
    "PermutationLM",
    "PrefixLM",
    "Recipe",
    "SentenceOrderPrediction",
    "SentencePairs",
    "SpanBERT",
    "SpanCorruption",
    "StepLoss",
    "SupervisedFineTuning",
    "UL2",
    "attention_mask_4d",
    "document_lengths",
    "fim_reassemble",
    "get_objective",
    "options_of",
    "padding_mask",
    "prefix_lm_batch",
    "random_spans_noise_mask",
    "span_boundary_targets",
    "span_corruption_lengths",
    "word_ids_from_starts",
]

DEFAULT_OBJECTIVE = "clm"  # what `lmobj train` trains without --objective

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
        model=lambda o: ModelSpec(architecture="electra", kwargs={"generator_size": o.generator_size}),
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
        model=lambda o: ModelSpec(architecture="mtp", kwargs={"n_future": o.n_future, "head_design": o.head_design}),
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
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective name {name!r}; valid names: {', '.join(sorted(OBJECTIVES))}")
    if not isinstance(vocab, Vocab):
        raise TypeError(f"vocab must be a lmobjectives.Vocab, got {type(vocab).__name__}")
    cls = OBJECTIVES[name].objective
    valid = [f.name for f in dataclasses.fields(cls) if f.name != "vocab" and f.init]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))} for objective {name!r}; valid options: {', '.join(valid)}")
    return cls(vocab=vocab, **options)
