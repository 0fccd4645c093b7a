"""A :class:`~lmobjectives.Batch` under the names and conventions of Hugging Face heads.

Worked example: a causal batch (our labels are position-aligned: ``labels[t]`` is the target of position
``t``, CLM shifted once) becomes HF's *unshifted* ``labels`` (the target of position ``t`` is ``labels[t +
1]``; every HF causal head shifts internally), so position 0 never has a label::

    Batch.labels      [[   8,    2,    9,    2, -100, -100]]
    HF labels         [[-100,    8,    2,    9,    2, -100]]

Per kind of batch (what decides is the batch's data, never the objective's name):

- **causal** (``Batch.causal``: clm, fim, sft, prefix LM and the decoder layouts): unshifted ``labels`` as
  above, for ``GPT2LMHeadModel``, ``LlamaForCausalLM`` and any ``*ForCausalLM``;
- **bidirectional** (mlm, spanbert, electra's generator, sentence pairs): ``labels`` as they are (HF's
  masked-LM heads do not shift); sentence pairs add ``token_type_ids`` and ``next_sentence_label``
  (``BertForPreTraining``: 0 = B continues A, 1 = B is random) or ``sentence_order_label``
  (``AlbertForPreTraining``: 0 = in order, 1 = swapped), our own conventions, so the values pass unchanged;
- **encoder-decoder** (span corruption, UL2 with ``layout="encoder_decoder"``): ``labels``,
  ``decoder_input_ids`` (labels shifted right, from the objective) and ``decoder_attention_mask`` for
  ``T5ForConditionalGeneration``; T5 uses the given ``decoder_input_ids`` and does not shift;
- **XLNet** (plm): ``perm_mask`` (1 = query ``i`` may not see key ``j``, float), ``target_mapping`` and
  ``labels`` for ``XLNetLMHeadModel``.

Attention: ``attention_mask`` is the 2-D padding mask (long 0/1) where that is the whole pattern. A row
holding several documents (``document_ids``), or a causal row with a bidirectional prefix (``prefix_mask``),
is not expressible in 2-D: ``packed_attention="mask"`` (default) sends the pattern of
:func:`~lmobjectives.batch.attention_mask_4d` as a 4-D additive mask ``(B, 1, T, T)`` (0 = attend, the
dtype's minimum = blocked), which transformers 5 passes through unchanged to eager, SDPA and flex attention;
``"position_ids"`` sends no ``attention_mask`` and only the restarting ``position_ids``, from which
transformers detects the documents (its packed-sequence path; also what flash-attention needs; it runs only
without a KV cache: ``use_cache=False``, as in training); it is valid only for causal document packing
without a prefix. ``position_ids`` are sent whenever the batch has
them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch

from ..batch import Batch, attention_mask_4d
from ..constants import IGNORE_INDEX
from ..objectives import NextSentencePrediction, SentenceOrderPrediction

__all__ = [
    "LABEL_NAMES",
    "SENTENCE_LABEL_NAMES",
    "PackedAttention",
    "hf_features",
    "shift_for_hf",
    "with_free_last_position",
]

PackedAttention = Literal["mask", "position_ids"]

SENTENCE_LABEL_NAMES: dict[type, str] = {
    NextSentencePrediction: "next_sentence_label",  # BertForPreTraining; 0 = B continues A
    SentenceOrderPrediction: "sentence_order_label",  # AlbertForPreTraining; 0 = in order
}
"""The HF argument that carries ``Batch.sentence_labels``, by objective class."""

LABEL_NAMES = ("labels", *SENTENCE_LABEL_NAMES.values())  # every HF name the collator puts a target under


def shift_for_hf(labels: torch.Tensor) -> torch.Tensor:
    """Our position-aligned causal labels ``(B, T)`` as HF's unshifted ones: ``out[:, t + 1] = labels[:, t]``.

    The last position must have no target (see :func:`with_free_last_position`).

    >>> shift_for_hf(torch.tensor([[8, 2, 9, 2, -100, -100]]))
    tensor([[-100,    8,    2,    9,    2, -100]])
    """
    if bool((labels[:, -1] != IGNORE_INDEX).any()):
        raise ValueError("a causal batch has a target at its last position, which HF's unshifted labels cannot hold")
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, 1:] = labels[:, :-1]
    return out


def with_free_last_position(batch: Batch, fill: int) -> Batch:
    """``batch`` itself, or, where a row has a target at its last position (the decoder layouts: the sequence
    is already shifted, its last token is a target), ``batch`` with one padding position appended, so the
    unshifted HF labels have room for that target. The new position is padding: no query attends to it."""
    if not bool((batch.labels[:, -1] != IGNORE_INDEX).any()):
        return batch

    def grow(x: torch.Tensor | None, value: object) -> torch.Tensor | None:
        if x is None:
            return None
        col = x[:, -1:] if value is None else torch.full_like(x[:, -1:], value)  # type: ignore[arg-type]
        return torch.cat([x, col], dim=1)

    return replace(
        batch,
        input_ids=grow(batch.input_ids, fill),
        labels=grow(batch.labels, IGNORE_INDEX),
        attention_mask=grow(batch.attention_mask, False),
        document_ids=grow(batch.document_ids, None),
        position_ids=None
        if batch.position_ids is None
        else torch.cat([batch.position_ids, batch.position_ids[:, -1:] + 1], 1),
        token_type_ids=grow(batch.token_type_ids, None),
        prefix_mask=grow(batch.prefix_mask, False),
    )


def _several_documents(batch: Batch) -> bool:
    """Whether a row holds real tokens of more than one document (``document_ids`` changes inside it)."""
    if batch.document_ids is None:
        return False
    d, real = batch.document_ids, batch.attention_mask
    return bool(((d[:, 1:] != d[:, :-1]) & real[:, 1:]).any())


def additive_mask(batch: Batch, dtype: torch.dtype) -> torch.Tensor:
    """:func:`~lmobjectives.batch.attention_mask_4d` as HF's 4-D additive mask ``(B, 1, T, T)``."""
    allowed = attention_mask_4d(batch)
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


def hf_features(
    batch: Batch, objective: Any, packed_attention: PackedAttention = "mask", mask_dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The keyword arguments of the matching HF head for ``batch`` (see the module's docstring)."""
    out: dict[str, torch.Tensor] = {"input_ids": batch.input_ids}
    if batch.labels.dim() != 2:
        raise ValueError(
            f"{objective.name}: labels of shape {tuple(batch.labels.shape)} (a target per future token) have no "
            "Hugging Face head; train this objective with lmobj train"
        )
    if batch.decoder_input_ids is not None:  # encoder-decoder (T5)
        out["attention_mask"] = batch.attention_mask.long()
        out["decoder_input_ids"] = batch.decoder_input_ids
        if batch.decoder_attention_mask is not None:
            out["decoder_attention_mask"] = batch.decoder_attention_mask.long()
        out["labels"] = batch.labels
        return out
    if batch.perm_mask is not None:  # XLNet: its own two-stream attention reads perm_mask
        out["attention_mask"] = batch.attention_mask.long()
        out["perm_mask"] = batch.perm_mask.float()
        if batch.target_mapping is not None:
            out["target_mapping"] = batch.target_mapping
        out["labels"] = batch.labels
        return out
    if batch.causal:
        v = objective.vocab
        batch = with_free_last_position(batch, next(i for i in (v.pad_id, v.eos_id, 0) if i is not None))
        out["input_ids"] = batch.input_ids
    out["labels"] = shift_for_hf(batch.labels) if batch.causal else batch.labels
    beyond_2d = _several_documents(batch) or (batch.causal and batch.prefix_mask is not None)
    if not beyond_2d:
        out["attention_mask"] = batch.attention_mask.long()
    elif packed_attention == "position_ids":
        if not batch.causal or batch.prefix_mask is not None or batch.position_ids is None:
            raise ValueError(
                f"{objective.name}: packed_attention='position_ids' keeps only causal documents apart (restarting "
                "position_ids); this batch's pattern needs packed_attention='mask'"
            )
    else:
        out["attention_mask"] = additive_mask(batch, mask_dtype)
    if batch.position_ids is not None:
        out["position_ids"] = batch.position_ids
    if batch.token_type_ids is not None:
        out["token_type_ids"] = batch.token_type_ids
    if batch.sentence_labels is not None:
        name = SENTENCE_LABEL_NAMES.get(type(objective))
        if name is None:
            raise ValueError(f"{objective.name}: no Hugging Face name is known for its sentence labels")
        out[name] = batch.sentence_labels
    return out
