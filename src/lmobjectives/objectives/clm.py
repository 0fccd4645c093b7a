"""Causal language modelling (GPT): predict token t+1 from tokens <= t."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._checks import check_like
from .._option import option
from ..batch import Batch, checked_tokens
from ..constants import IGNORE_INDEX
from ..vocab import Vocab

__all__ = ["CausalLM", "documents_from_eos", "masking_document_ids", "positions_within_documents"]


def documents_from_eos(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Document ids ``(B, T)`` of a packed stream: EOS closes a document and belongs to it.

    >>> documents_from_eos(torch.tensor([[7, 8, 2, 9, 2, 4]]), eos_id=2)
    tensor([[0, 0, 0, 1, 1, 2]])
    """
    is_eos = (input_ids == eos_id).long()  # (B, T)
    return is_eos.cumsum(-1) - is_eos  # number of EOS strictly before t


def masking_document_ids(
    input_ids: torch.Tensor,
    document_ids: object,
    vocab: Vocab,
    document_masking: bool,
    who: str,
    check: Callable[[object, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """The document ids ``(B, T)`` that ``document_masking`` needs: ``document_ids`` when given (passed through
    ``check(document_ids, input_ids)``; default: same shape and device, long), else from EOS (``vocab.eos_id``
    required); None without document masking, where passing ``document_ids`` is an error. ``who`` names the
    objective in errors.

    >>> masking_document_ids(torch.tensor([[7, 2, 9]]), None, Vocab(size=10, eos_id=2), True, "CausalLM")
    tensor([[0, 0, 1]])
    """
    if not document_masking:
        if document_ids is not None:
            raise ValueError("document_ids was given but document_masking=False; set document_masking=True to use it")
        return None
    if document_ids is None:
        vocab.require("eos_id", who=f"{who}(document_masking=True) without document_ids")
        return documents_from_eos(input_ids, vocab.eos_id)  # type: ignore[arg-type]
    if check is None:
        return check_like(document_ids, input_ids, "document_ids")
    return check(document_ids, input_ids)


def positions_within_documents(document_ids: torch.Tensor) -> torch.Tensor:
    """Positions ``(B, T)`` that restart at 0 where the document id changes.

    >>> positions_within_documents(torch.tensor([[0, 0, 0, 1, 1, 2]]))
    tensor([[0, 1, 2, 0, 1, 0]])
    """
    B, T = document_ids.shape
    t = torch.arange(T, device=document_ids.device).expand(B, T)  # (B, T)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_index = torch.where(starts, t, torch.zeros_like(t)).cummax(-1).values  # (B, T)
    return t - start_index


@dataclass(frozen=True)
class CausalLM:
    """Next-token prediction. The one place in the library where labels are shifted.

    ``labels[b, t] = input_ids[b, t + 1]`` when both tokens are real; the last
    position, positions whose next token is padding, and (with
    ``document_masking``) positions whose next token starts another document
    get ``IGNORE_INDEX``. Padding comes from ``attention_mask`` when given,
    otherwise from the trailing run of ``vocab.pad_id``; if ``pad_id ==
    eos_id`` the first token of that run is the real EOS and **is** a label
    (the usual ``labels[input_ids == pad_id] = -100`` drops every EOS and the
    model never learns to stop).

    Worked example (``pad_id = eos_id = 2``; two packed documents ``7 8 EOS``
    and ``9 EOS``, then padding)::

        input_ids        [[ 7,  8,  2,    9,  2,    2]]
        labels           [[ 8,  2,  9,    2, -100, -100]]     # document_masking=False
        labels           [[ 8,  2, -100,  2, -100, -100]]     # document_masking=True
        document_ids     [[ 0,  0,  0,    1,  1,    2]]       # document_masking=True
        position_ids     [[ 0,  1,  2,    0,  1,    0]]       # document_masking=True
        attention_mask   [[ T,  T,  T,    T,  T,    F]]

    A batch with no target at all (``T = 1``, no row with two consecutive
    real tokens of one document) raises ``ValueError``; rows without a target
    are reported in ``has_targets``. No randomness: ``generator`` is accepted
    for a uniform interface.
    """

    vocab: Vocab  # vocabulary (eos_id used for document boundaries, pad_id for padding)
    document_masking: bool = option(False, "no attention / no target across documents; positions restart per document")

    name = "clm"

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        input_ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, T), (B, T)
        labels = torch.full_like(input_ids, IGNORE_INDEX)  # (B, T)
        keep = real[:, :-1] & real[:, 1:]  # (B, T-1): both this token and the next are real
        position_ids = None
        document_ids = masking_document_ids(input_ids, document_ids, self.vocab, self.document_masking, "CausalLM")
        if document_ids is not None:
            keep = keep & (document_ids[:, :-1] == document_ids[:, 1:])
            position_ids = positions_within_documents(document_ids)
        has_targets = keep.any(-1)  # (B,)
        if not bool(has_targets.any()):  # host sync, as in MaskedLM: never a silently all-ignored batch
            raise ValueError(
                f"CausalLM: input_ids of shape {tuple(input_ids.shape)} has nothing to predict (no row holds two "
                "consecutive real tokens"
                + (" of one document" if self.document_masking else "")
                + "); refusing to return a batch with no target"
            )
        labels[:, :-1] = torch.where(keep, input_ids[:, 1:], IGNORE_INDEX)
        return Batch(
            input_ids=input_ids.clone(),
            labels=labels,
            attention_mask=real,
            causal=True,
            document_ids=document_ids,
            position_ids=position_ids,
            has_targets=has_targets,
        )
