"""Prefix language modelling (T5's ``prefix_lm``): a bidirectional prefix, then causal prediction of the rest.

Each example (a row, or each document of a packed row) is cut at a split
point: its first ``P`` tokens form the **prefix**, seen bidirectionally and
never predicted; the rest is the **suffix**, attended causally and predicted
token by token. One decoder-only model reads both parts: the split is data on
the batch (``Batch.prefix_mask``), not a model flag.

:func:`prefix_lm_batch` builds the batch for split points chosen by the caller
(UL2's S-denoiser reuses it); :class:`PrefixLM` draws the split points (T5) and
calls it. :func:`document_lengths` gives the lengths the split points are drawn
from. Everything is vectorised over the batch and its documents: no Python loop
over rows, documents or tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_like
from .._option import option
from ..batch import Batch, checked_tokens
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from .clm import masking_document_ids, positions_within_documents

__all__ = ["PrefixLM", "document_lengths", "prefix_lm_batch"]


def _check_mask(attention_mask: object, name: str = "attention_mask") -> torch.Tensor:
    """A bool ``(B, T)`` copy of a bool or 0/1 integer mask."""
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, T], got {type(attention_mask).__name__}")
    if attention_mask.dim() != 2:
        raise ValueError(f"{name} must have rank 2 [B, T], got shape {tuple(attention_mask.shape)}")
    return check_like(attention_mask, attention_mask, name, dtype="bool")


def _document_index(document_ids: torch.Tensor | None, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """``k`` ``(B, T)``: index of each token's document within its row (0, 1, 2, ... along the row)."""
    if document_ids is None:
        return torch.zeros(shape, dtype=torch.long, device=device)
    changes = (document_ids[:, 1:] != document_ids[:, :-1]).long()  # (B, T-1)
    return torch.cat([torch.zeros_like(document_ids[:, :1]), changes.cumsum(-1)], dim=1)  # (B, T)


def _check_document_ids(document_ids: object, like: torch.Tensor) -> torch.Tensor:
    """A long copy of ``document_ids`` in which every id of a row forms one contiguous run."""
    document_ids = check_like(document_ids, like, "document_ids")  # (B, T)
    runs = 1 + (document_ids[:, 1:] != document_ids[:, :-1]).sum(-1)  # (B,)
    ordered = document_ids.sort(-1).values  # (B, T)
    distinct = 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(-1)  # (B,)
    split = runs != distinct  # (B,) some id occurs in two separate runs
    if bool(split.any()):
        b = int(split.nonzero()[0, 0])
        raise ValueError(
            f"document_ids: row {b} ({document_ids[b].tolist()[:16]}...) has a document id in two separate runs; "
            "each document must be one contiguous run of tokens (as pack_documents and documents_from_eos give)"
        )
    return document_ids


def _lengths_and_ranks(real: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lengths (B, T), rank (B, T))``: real tokens of each row's k-th document, and each token's rank among them.

    ``rank`` counts the real tokens of a token's document before it, so padding
    anywhere in a document (left, right) does not shift the split.
    """
    real_long = real.long()  # (B, T)
    lengths = torch.zeros_like(index).scatter_add_(1, index, real_long)  # (B, T): column k = document k
    before = real_long.cumsum(-1) - real_long  # (B, T) real tokens strictly before t in the row
    first = torch.zeros_like(index).scatter_reduce_(1, index, before, "amin", include_self=False)  # (B, T)
    rank = before - first.gather(1, index)  # (B, T) real tokens of the same document before t
    return lengths, rank


def document_lengths(attention_mask: torch.Tensor, document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Real tokens ``(B, T)`` of each row's documents: column ``k`` is the ``k``-th document along the row.

    Documents are the runs of equal ``document_ids`` (``None``: the whole row
    is one document); a document cut by the block boundary counts only its
    tokens in this row. Columns past a row's last document are 0. This is the
    ``L`` a split point is drawn from, and the bound ``prefix_lm_batch`` checks.

    >>> document_lengths(torch.tensor([[1, 1, 1, 1, 1, 0]]), torch.tensor([[0, 0, 0, 1, 1, 2]]))
    tensor([[3, 2, 0, 0, 0, 0]])
    """
    real = _check_mask(attention_mask)
    if document_ids is not None:
        document_ids = _check_document_ids(document_ids, real)
    index = _document_index(document_ids, real.shape, real.device)  # (B, T)
    return _lengths_and_ranks(real, index)[0]


def prefix_lm_batch(
    input_ids: torch.Tensor,
    prefix_lengths: torch.Tensor,
    *,
    attention_mask: torch.Tensor,
    document_ids: torch.Tensor | None = None,
) -> Batch:
    """The prefix-LM batch for given split points: prefix mask, suffix labels, positions.

    ``prefix_lengths[b, k]`` is the number of prefix tokens ``P`` of the
    ``k``-th document of row ``b`` (documents are the runs of equal
    ``document_ids`` along the row, counted from 0; ``None``: one document per
    row, and ``prefix_lengths`` may be ``(B,)``). Extra columns are ignored;
    :func:`document_lengths` has the right shape. Each ``P`` must lie in
    ``[0, L]`` for a document of ``L`` real tokens (``attention_mask`` True);
    ``P`` counts real tokens, so padding does not move the split. ``P = L``:
    the whole document is prefix and has no target; ``P = 0``: no prefix,
    causal LM inside the document.

    Convention (seqio ``PrefixLMFeatureConverter``, mesh-tensorflow): the
    **last prefix token is in the bidirectional region and predicts the first
    suffix token**. With labels position-aligned (``labels[b, t]`` is the
    target of the output at ``t``), ``labels[t] = input_ids[t + 1]`` exactly
    where token ``t + 1`` is a real suffix token of the same document as the
    real token ``t``; every other label is ``IGNORE_INDEX``. No prefix token is
    a target: under bidirectional attention it would be visible to the
    positions that predict it. (seqio puts a BOS-shifted copy in front, so its
    bidirectional region is ``P + 1`` decoder positions: the same region.)

    The returned :class:`Batch` has ``causal=True``, ``prefix_mask`` True at
    real prefix tokens, ``document_ids`` and restarting ``position_ids``
    (:func:`~lmobjectives.objectives.clm.positions_within_documents`) when
    ``document_ids`` is given, else ``None`` for both, and ``has_targets`` per
    row. A batch with no target at all is returned as such (``has_targets``
    all False), so a caller mixing objectives per row decides; :class:`PrefixLM`
    refuses it. The inputs are not modified and not aliased.

    >>> b = prefix_lm_batch(torch.tensor([[7, 8, 9, 2, 5, 6]]), torch.tensor([[2, 1]]),
    ...                     attention_mask=torch.ones(1, 6, dtype=torch.bool),
    ...                     document_ids=torch.tensor([[0, 0, 0, 0, 1, 1]]))
    >>> b.prefix_mask.int(), b.labels
    (tensor([[1, 1, 0, 0, 1, 0]], dtype=torch.int32), tensor([[-100,    9,    2, -100,    6, -100]]))
    """
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of shape [B, T], got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids (torch.long), got dtype {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty [B, T] tensor, got shape {tuple(input_ids.shape)}")
    input_ids = input_ids.long()
    real = check_like(attention_mask, input_ids, "attention_mask", dtype="bool")  # (B, T)
    if document_ids is not None:
        document_ids = _check_document_ids(document_ids, input_ids)  # (B, T)
    index = _document_index(document_ids, input_ids.shape, input_ids.device)  # (B, T)
    prefix = _check_prefix_lengths(prefix_lengths, input_ids, document_ids is None, index)  # (B, D)
    lengths, rank = _lengths_and_ranks(real, index)  # (B, T), (B, T)
    P = prefix.gather(1, index)  # (B, T): the split of each token's document
    L = lengths.gather(1, index)  # (B, T): the length of each token's document
    too_long = P > L  # (B, T)
    if bool(too_long.any()):  # host sync, on the argument check only
        b, t = (int(i) for i in too_long.nonzero()[0])
        k = int(index[b, t])
        raise ValueError(
            f"prefix_lengths[{b}, {k}] = {int(P[b, t])} exceeds the {int(L[b, t])} real tokens of document {k} of "
            f"row {b}; each prefix length must lie in [0, L] (see document_lengths)"
        )
    return _build(input_ids, real, document_ids, rank, P)


def _build(
    input_ids: torch.Tensor, real: torch.Tensor, document_ids: torch.Tensor | None, rank: torch.Tensor, P: torch.Tensor
) -> Batch:
    """The batch from checked pieces: ``rank`` and ``P`` ``(B, T)`` per token (its rank, its document's split)."""
    in_prefix = real & (rank < P)  # (B, T)
    in_suffix = real & (rank >= P)  # (B, T)
    keep = real[:, :-1] & in_suffix[:, 1:]  # (B, T-1): a real token whose next token is a real suffix token ...
    if document_ids is not None:
        keep = keep & (document_ids[:, :-1] == document_ids[:, 1:])  # ... of the same document
    labels = torch.full_like(input_ids, IGNORE_INDEX)  # (B, T)
    labels[:, :-1] = torch.where(keep, input_ids[:, 1:], IGNORE_INDEX)
    return Batch(
        input_ids=input_ids.clone(),
        labels=labels,
        attention_mask=real,
        causal=True,
        document_ids=document_ids,
        position_ids=None if document_ids is None else positions_within_documents(document_ids),
        has_targets=keep.any(-1),
        prefix_mask=in_prefix,
    )


def _check_prefix_lengths(
    prefix_lengths: object, input_ids: torch.Tensor, one_per_row: bool, index: torch.Tensor
) -> torch.Tensor:
    """``prefix_lengths`` as a long ``(B, D)`` tensor with a column for every document of every row."""
    B = input_ids.shape[0]
    if not isinstance(prefix_lengths, torch.Tensor):
        raise TypeError(f"prefix_lengths must be a torch.Tensor of shape (B, D), got {type(prefix_lengths).__name__}")
    if prefix_lengths.dtype.is_floating_point or prefix_lengths.dtype.is_complex or prefix_lengths.dtype == torch.bool:
        raise TypeError(f"prefix_lengths must be an integer tensor, got dtype {prefix_lengths.dtype}")
    if prefix_lengths.dim() == 1 and one_per_row:
        prefix_lengths = prefix_lengths[:, None]  # (B, 1)
    if prefix_lengths.dim() != 2 or prefix_lengths.shape[0] != B or prefix_lengths.shape[1] == 0:
        want = f"({B},) or ({B}, D)" if one_per_row else f"({B}, D), one column per document of a row"
        raise ValueError(f"prefix_lengths must have shape {want}, got {tuple(prefix_lengths.shape)}")
    prefix = prefix_lengths.to(device=input_ids.device, dtype=torch.long)  # (B, D)
    if bool((prefix < 0).any()):
        raise ValueError(f"prefix_lengths must be >= 0, got {int(prefix.min())}")
    D = prefix.shape[1]
    needed = int(index[:, -1].max()) + 1  # documents in the fullest row
    if needed > D:
        raise ValueError(
            f"prefix_lengths has {D} column(s) but a row of input_ids holds {needed} documents; give one column per "
            "document (document_lengths has T columns)"
        )
    return prefix


@dataclass(frozen=True)
class PrefixLM:
    """Prefix LM: a random split per example; bidirectional prefix, causal suffix, loss on the suffix only.

    Every example (each document of a packed row with ``document_masking``,
    else each row) of ``L >= 2`` real tokens gets its own split point ``P``
    drawn uniformly from ``[1, L)`` (T5's ``prefix_lm`` task,
    ``random_prefix_noise_mask``: at least one prefix and one target token),
    from ``generator`` (draw protocol: float64 uniforms ``u`` of shape ``(B, T)``,
    column ``k`` for the ``k``-th document of a row, ``P = 1 + floor(u (L - 1))``).
    Then, as :func:`prefix_lm_batch` with these splits:
    the ``P`` prefix tokens attend to each other bidirectionally
    (``prefix_mask``), the suffix causally; ``labels[t] = input_ids[t + 1]``
    for every real suffix token ``t + 1`` of the same document, so the **last
    prefix token predicts the first suffix token** and sits in the
    bidirectional region (seqio's ``PrefixLMFeatureConverter``). An example
    with ``L < 2`` is all prefix and has no target.

    Documents (``document_masking=True``, the default): the runs of equal
    ``document_ids`` (``pack_documents`` gives them), or without them the
    documents closed by EOS (:func:`~lmobjectives.objectives.clm.documents_from_eos`;
    EOS belongs to its document, so ``L`` counts it and, with ``L >= 2``, it
    is a target). No attention across documents, positions restart per document,
    as CausalLM's ``document_masking``. A document cut by the block boundary
    is an example in each row it touches. Padding comes from ``attention_mask``
    when given, otherwise from the trailing run of ``pad_id`` (``pad_id ==
    eos_id``: the first token of that run is the real EOS), as in CausalLM.

    Worked example (``pad_id = eos_id = 2``; documents ``7 8 9 EOS`` and ``5 6 EOS``,
    then padding; with seed 5 the drawn splits are ``P = 2`` and ``P = 1``;
    ``prefix_lm_batch(x, [[2, 1, 0]], ...)`` gives the same batch)::

        input_ids        [[ 7,    8,  9,  2,     5,  6,  2,     2]]
        prefix_mask      [[ T,    T,  F,  F,     T,  F,  F,     F]]
        labels           [[-100,  9,  2, -100,   6,  2, -100, -100]]
        document_ids     [[ 0,    0,  0,  0,     1,  1,  1,     2]]
        position_ids     [[ 0,    1,  2,  3,     0,  1,  2,     0]]
        attention_mask   [[ T,    T,  T,  T,     T,  T,  T,     F]]

    >>> from lmobjectives.batch import attention_mask_4d
    >>> x = torch.tensor([[7, 8, 9, 2, 5, 6, 2, 2]])
    >>> b = PrefixLM(Vocab(size=10, pad_id=2, eos_id=2))(x, generator=torch.Generator().manual_seed(5))
    >>> b.labels
    tensor([[-100,    9,    2, -100,    6,    2, -100, -100]])
    >>> attention_mask_4d(b)[0, 0].int()   # 7 and 8 see each other; documents apart; padding sees itself
    tensor([[1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.int32)

    *Deviations from T5*: T5 takes a random chunk of one document and appends
    EOS to both the prefix and the targets; here blocks are fixed (packed by
    the data pipeline) and no token is inserted, so the prefix/suffix boundary
    is marked only by the attention pattern. A batch with nothing to predict
    (every example shorter than 2 tokens) raises ``ValueError``; rows without a
    target are reported in ``has_targets``.
    """

    vocab: Vocab  # vocabulary (eos_id for document boundaries, pad_id for padding)
    document_masking: bool = option(
        True, "each document is an example: own split, no attention across, positions restart"
    )

    name = "prefix_lm"

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        input_ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, T), (B, T)
        document_ids = masking_document_ids(
            input_ids, document_ids, self.vocab, self.document_masking, "PrefixLM", check=_check_document_ids
        )
        index = _document_index(document_ids, input_ids.shape, input_ids.device)  # (B, T)
        lengths, rank = _lengths_and_ranks(real, index)  # (B, T) column k = document k, (B, T) per token
        u = torch.rand(lengths.shape, generator=generator, device=input_ids.device, dtype=torch.float64)  # (B, T)
        drawn = 1 + (u * (lengths - 1)).floor().long()  # (B, T) uniform in [1, L) where L >= 2
        prefix = torch.where(lengths >= 2, torch.minimum(drawn, lengths - 1), lengths)  # (B, T); L < 2: all prefix
        batch = _build(input_ids, real, document_ids, rank, prefix.gather(1, index))  # = prefix_lm_batch(..., prefix)
        if not bool(batch.has_targets.any()):  # host sync, as in CausalLM: never a silently all-ignored batch
            raise ValueError(
                f"PrefixLM: input_ids of shape {tuple(input_ids.shape)} has nothing to predict (no "
                + ("document" if self.document_masking else "row")
                + " has a real suffix token right after a real token: examples need >= 2 real tokens); "
                "refusing to return a batch with no target"
            )
        return batch
