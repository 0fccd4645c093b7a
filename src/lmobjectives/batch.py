"""The batch every objective returns, and the attention pattern it describes."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, Protocol

import torch

from ._checks import check_choice, check_generator, check_like, check_token_ids
from .constants import IGNORE_INDEX

__all__ = ["Batch", "Objective", "attention_mask_4d", "attention_mask_rows", "checked_tokens", "padding_mask"]


@dataclass
class Batch:
    """A training batch after an objective's corruption.

    Labels are **position-aligned**: ``labels[b, t]`` is the target for the
    model's output at position ``t`` (CLM shifts once, inside the CLM
    objective; no loss function shifts again). ``IGNORE_INDEX`` means no loss.
    The attention pattern is data, not a model flag: ``causal``,
    ``attention_mask``, ``document_ids``, ``prefix_mask`` and ``perm_mask``
    together say which key each query may see (:func:`attention_mask_4d`).

    An encoder-decoder batch (``decoder_input_ids`` set) uses the Hugging Face
    names: ``input_ids`` / ``attention_mask`` feed the encoder,
    ``decoder_input_ids`` / ``decoder_attention_mask`` the decoder, and
    ``labels`` ``(B, Td)`` are aligned with the *decoder* positions
    (``decoder_input_ids`` is ``labels`` shifted right, so no loss shifts).
    """

    input_ids: torch.Tensor  # (B, T) long, model input after corruption
    labels: torch.Tensor  # (B, T) long, target at each position or IGNORE_INDEX; (B, T, N) for multi-token prediction
    attention_mask: torch.Tensor  # (B, T) bool, True at real (non-padding) tokens
    causal: bool  # True: query t sees keys <= t (decoder); False: bidirectional (encoder)
    document_ids: torch.Tensor | None = None  # (B, T) long; if set, no attention across ids
    position_ids: torch.Tensor | None = None  # (B, T) long; None means 0..T-1 in every row
    token_type_ids: torch.Tensor | None = None  # (B, T) long; 0 = segment A, 1 = segment B
    sentence_labels: torch.Tensor | None = None  # (B,) long; NSP: 1 = B is random, SOP: 1 = swapped
    has_targets: torch.Tensor | None = None  # (B,) bool; False where a row had nothing to predict
    prefix_mask: torch.Tensor | None = None  # (B, T) bool; True in the bidirectional prefix of a causal row (prefix LM)
    decoder_input_ids: torch.Tensor | None = None  # (B, Td) long; encoder-decoder: the decoder's input
    decoder_attention_mask: torch.Tensor | None = None  # (B, Td) bool; True at real decoder tokens
    perm_mask: torch.Tensor | None = None  # (B, T, T) bool; XLNet: True where query i may NOT see key j
    target_mapping: torch.Tensor | None = None  # (B, P, T) float; XLNet: one-hot position of the p-th target

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor moved to ``device``."""
        moved = {
            f.name: (v.to(device) if isinstance(v := getattr(self, f.name), torch.Tensor) else v) for f in fields(self)
        }
        return replace(self, **moved)

    @property
    def num_targets(self) -> torch.Tensor:
        """Number of positions with a label (a 0-dim tensor; no host sync)."""
        return (self.labels != IGNORE_INDEX).sum()


class Objective(Protocol):
    """What :func:`lmobjectives.get_objective` returns: a seeded, pure transform."""

    name: str

    def __call__(
        self, input_ids: torch.Tensor, *, generator: torch.Generator | None = None, **extras: torch.Tensor
    ) -> Batch: ...


def padding_mask(input_ids: torch.Tensor, pad_id: int | None, eos_id: int | None = None) -> torch.Tensor:
    """Guess which tokens are real when no ``attention_mask`` was given.

    Padding is the trailing run of ``pad_id`` in each row. When ``pad_id ==
    eos_id`` the first token of that run is the real end-of-sequence token
    and stays unmasked (so EOS is still learned). Pass an explicit
    ``attention_mask`` whenever this guess can be wrong (e.g. a row that ends
    in EOS *and* is padded with EOS but whose true EOS you want to drop).

    >>> padding_mask(torch.tensor([[5, 6, 2, 2, 2]]), pad_id=2, eos_id=2)
    tensor([[ True,  True,  True, False, False]])
    >>> padding_mask(torch.tensor([[5, 6, 0, 0, 0]]), pad_id=0)
    tensor([[ True,  True, False, False, False]])
    """
    if pad_id is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    is_pad = input_ids == pad_id  # (B, T)
    # trailing run: positions from which every later token is padding
    trailing = is_pad.flip(-1).cumprod(-1).flip(-1).bool()  # (B, T)
    if eos_id is not None and eos_id == pad_id:
        # keep the first token of the trailing run: it is the real EOS
        first = trailing & ~torch.cat([torch.zeros_like(trailing[:, :1]), trailing[:, :-1]], dim=1)
        trailing = trailing & ~first
    return ~trailing


def checked_tokens(
    input_ids: object, vocab: object, attention_mask: object, generator: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """The checks every token-level objective starts with: ``(input_ids (B, T) long, real (B, T) bool)``.

    ``real`` is ``attention_mask`` when given (checked, copied), else :func:`padding_mask` of ``vocab``'s
    pad and EOS ids; ``generator`` must be None or a generator on the tensors' device.
    """
    ids = check_token_ids(input_ids, vocab)  # type: ignore[arg-type]  # (B, T) long
    check_generator(generator, ids.device)
    if attention_mask is None:
        real = padding_mask(ids, vocab.pad_id, vocab.eos_id)  # type: ignore[attr-defined]  # (B, T)
    else:
        real = check_like(attention_mask, ids, "attention_mask", dtype="bool")  # (B, T)
    return ids, real


AttentionPart = Literal["self", "decoder", "cross"]


def attention_mask_4d(batch: Batch, part: AttentionPart = "self") -> torch.Tensor:
    """Bool mask ``(B, 1, Tq, Tk)``, True where query ``i`` may attend to key ``j``.

    ``part="self"`` is the pattern over ``input_ids`` (the whole model for a
    decoder-only or encoder batch, the encoder of an encoder-decoder batch):
    key padding, then causality (``causal``), except that inside the prefix
    (``prefix_mask``) queries also see the later prefix keys, then document
    boundaries (``document_ids``) and XLNet's ``perm_mask``. Each query also
    sees itself, so no row is empty (padding queries included): no NaN in SDPA.

    ``part="decoder"`` (encoder-decoder only) is causal self-attention over
    ``decoder_input_ids`` with its padding; ``part="cross"`` lets every
    decoder query see every real encoder key, shape ``(B, 1, Td, T)``.

    >>> b = Batch(input_ids=torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long),
    ...           attention_mask=torch.tensor([[True, True, True, False]]), causal=True,
    ...           prefix_mask=torch.tensor([[True, True, False, False]]))
    >>> attention_mask_4d(b)[0, 0].int()   # prefix LM: positions 0, 1 see each other; 2 is causal; 3 is padding
    tensor([[1, 1, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 1]], dtype=torch.int32)
    """
    return attention_mask_rows(batch, part).contiguous()  # (B, 1, Tq, Tk)


def attention_mask_rows(
    batch: Batch, part: AttentionPart = "self", rows: slice = slice(None), keys: slice = slice(None)
) -> torch.Tensor:
    """``attention_mask_4d(batch, part)[:, :, rows, keys]``, built from the batch's ``(B, T)`` fields only.

    Memory is ``O(B * len(rows) * len(keys))``; the rows of :func:`attention_mask_4d` in chunks concatenate to it
    (a test checks every pattern). ``rows`` and ``keys`` are slices with step 1.

    >>> b = Batch(input_ids=torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long),
    ...           attention_mask=torch.tensor([[True, True, True, False]]), causal=True,
    ...           prefix_mask=torch.tensor([[True, True, False, False]]))
    >>> attention_mask_rows(b, rows=slice(1, 3))[0, 0].int()   # rows 1 and 2 of attention_mask_4d's example
    tensor([[1, 1, 0, 0],
            [1, 1, 1, 0]], dtype=torch.int32)
    """
    check_choice(part, "attention mask: part", ("self", "decoder", "cross"))
    if part == "self":
        n_queries = n_keys = batch.input_ids.shape[1]
    elif batch.decoder_input_ids is None:
        raise ValueError(f"attention mask: part={part!r} needs an encoder-decoder batch (decoder_input_ids is None)")
    else:
        n_queries = batch.decoder_input_ids.shape[1]
        n_keys = n_queries if part == "decoder" else batch.input_ids.shape[1]
    q0, q1, qstep = rows.indices(n_queries)
    k0, k1, kstep = keys.indices(n_keys)
    if qstep != 1 or kstep != 1:
        raise ValueError(f"attention_mask_rows: rows and keys must be slices with step 1, got {rows!r}, {keys!r}")
    device = batch.input_ids.device
    q = torch.arange(q0, max(q0, q1), device=device)[:, None]  # (C, 1) query positions
    k = torch.arange(k0, max(k0, k1), device=device)[None, :]  # (1, K) key positions
    rows, keys = slice(q0, max(q0, q1)), slice(k0, max(k0, k1))
    if part == "self":
        allowed = batch.attention_mask[:, None, keys]  # (B, 1, K): key padding
        if batch.causal:
            visible = k <= q  # (C, K)
            if batch.prefix_mask is not None:  # inside the prefix, queries also see the later prefix keys
                visible = visible | (batch.prefix_mask[:, rows, None] & batch.prefix_mask[:, None, keys])  # (B, C, K)
            allowed = allowed & visible
        if batch.document_ids is not None:
            allowed = allowed & (batch.document_ids[:, rows, None] == batch.document_ids[:, None, keys])  # (B, C, K)
        if batch.perm_mask is not None:
            allowed = allowed & ~batch.perm_mask[:, rows, keys]
        allowed = allowed | (k == q)  # every query sees itself: no empty row
    elif part == "decoder":
        real = batch.decoder_attention_mask
        allowed = (k <= q) if real is None else real[:, None, keys] & (k <= q)  # (B or 1, C, K)
        allowed = allowed | (k == q)
    else:  # cross: every real encoder key; a row without a real key sees every key
        real = batch.attention_mask  # (B, T)
        allowed = real[:, None, keys] | ~real.any(-1)[:, None, None]  # (B, 1, K)
    B = batch.input_ids.shape[0]
    return allowed.expand(B, q.shape[0], k.shape[1])[:, None]  # (B, 1, C, K)
