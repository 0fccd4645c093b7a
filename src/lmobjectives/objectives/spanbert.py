"""SpanBERT (Joshi et al., 2020): span masking plus the span boundary objective (SBO).

The masked-LM half is :class:`~lmobjectives.objectives.mlm.MaskedLM` with ``unit="span"``. The SBO
half predicts every masked token of a span again, this time only from the encoder outputs at the
span's two boundary tokens and the token's offset in the span
(:class:`~lmobjectives.models.sbo.SpanBoundaryHead`). Its targets are a function of the masked
batch alone (:func:`span_boundary_targets`), so the objective returns a plain :class:`Batch` and
:func:`lmobjectives.recipes.step_losses.spanbert_loss` computes ``loss = MLM + SBO`` from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .._checks import check_like, check_positive_int
from .._option import option
from ..batch import Batch
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from .mlm import MaskedLM

__all__ = ["SpanBERT", "SpanBoundaryTargets", "span_boundary_targets"]


class SpanBoundaryTargets(NamedTuple):
    """One row per SBO target (a masked token of a span with both boundaries), in row-major order."""

    rows: torch.Tensor  # (M,) long, batch row
    positions: torch.Tensor  # (M,) long, position of the masked token i
    left: torch.Tensor  # (M,) long, position of the left boundary token s - 1
    right: torch.Tensor  # (M,) long, position of the right boundary token e + 1
    offset: torch.Tensor  # (M,) long, i - s (0 for the span's first token)
    labels: torch.Tensor  # (M,) long, the original token id at i


def span_boundary_targets(
    labels: torch.Tensor,
    attention_mask: torch.Tensor,
    max_pair_targets: int = 15,
    *,
    special: torch.Tensor | None = None,
) -> SpanBoundaryTargets:
    """SpanBERT's pair targets from a masked batch: spans are the maximal runs of labelled positions.

    A span ``s..e`` (a run of ``labels != IGNORE_INDEX``; touching spans form one run, as
    SpanBERT's ``merge_intervals`` makes them) gives SBO targets when both boundary tokens
    ``s - 1`` and ``e + 1`` exist in the row, are real (``attention_mask``) and are not special
    (``special`` ``(B, T)`` bool, True at [CLS], [SEP], EOS, ...; :meth:`SpanBERT.targets` passes
    the vocab's special ids); a span at the edge of the row or next to padding or a special token
    gives none. This is SpanBERT's ``endpoints="external"`` rule: it masks the sentence before
    [CLS] and [SEP] are added and keeps a span only if both outer tokens lie in the sentence.
    Only the first ``max_pair_targets`` tokens of a span are targets (SpanBERT truncates its
    pair targets to ``--max-pair-targets``, 15 in its released runs).

    Worked example (one row, labels shown as ``x`` where set; ``attention_mask`` all True but
    the last position)::

        labels      [-, x, x, -, x, -, x, x]      positions 0..7, position 7 is padding
        spans       1..2 (boundaries 0 and 3), 4..4 (boundaries 3 and 5), 6..7 (no right boundary)
        rows        [0, 0, 0]
        positions   [1, 2, 4]
        left        [0, 0, 3]
        right       [3, 3, 5]
        offset      [0, 1, 0]

    >>> y = torch.tensor([[-100, 11, 12, -100, 14, -100, 16, 17]])
    >>> t = span_boundary_targets(y, torch.tensor([[True] * 7 + [False]]))
    >>> t.positions.tolist(), t.left.tolist(), t.right.tolist(), t.offset.tolist(), t.labels.tolist()
    ([1, 2, 4], [0, 0, 3], [3, 3, 5], [0, 1, 0], [11, 12, 14])
    """
    check_positive_int(max_pair_targets, "max_pair_targets")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        raise ValueError(f"labels must be a (B, T) tensor, got {type(labels).__name__} {getattr(labels, 'shape', '')}")
    real = check_like(attention_mask, labels, "attention_mask", dtype="bool")  # (B, T)
    if special is not None:
        real = real & ~check_like(special, labels, "special", dtype="bool")  # (B, T) the possible boundaries
    B, T = labels.shape
    sel = labels != IGNORE_INDEX  # (B, T)
    t = torch.arange(T, device=labels.device).expand(B, T)  # (B, T)
    prev = torch.cat([torch.zeros_like(sel[:, :1]), sel[:, :-1]], 1)
    nxt = torch.cat([sel[:, 1:], torch.zeros_like(sel[:, :1])], 1)
    start = torch.where(sel & ~prev, t, -1).cummax(-1).values  # (B, T) first position of the run at t
    end = torch.where(sel & ~nxt, t, T).flip(-1).cummin(-1).values.flip(-1)  # (B, T) last position of the run
    left, right, offset = start - 1, end + 1, t - start
    inside = (left >= 0) & (right < T)
    real_left = real.gather(1, left.clamp(0, T - 1))
    real_right = real.gather(1, right.clamp(0, T - 1))
    valid = sel & inside & real_left & real_right & (offset < max_pair_targets)  # (B, T)
    rows, positions = valid.nonzero(as_tuple=True)  # (M,) each, row-major
    return SpanBoundaryTargets(
        rows=rows,
        positions=positions,
        left=left[rows, positions],
        right=right[rows, positions],
        offset=offset[rows, positions],
        labels=labels[rows, positions],
    )


@dataclass(frozen=True)
class SpanBERT:
    """SpanBERT's pretraining data: span masking, trained with ``loss = MLM + SBO`` (:func:`lmobjectives.recipes.step_losses.spanbert_loss`).

    The batch is :class:`MaskedLM` with ``unit="span"`` and these options (SpanBERT's defaults:
    15 % of tokens, Geometric(0.2) span lengths on 1..10 words, one 80/10/10 decision per span,
    a fixed budget per row). The SBO targets are read off the masked batch by
    :func:`span_boundary_targets` (every masked token of a span whose two boundary tokens are
    real, non-special tokens of the row, the first ``max_pair_targets`` of each span). SpanBERT
    trains on single contiguous segments without NSP, which is the blocks layout here.

    Deviations from SpanBERT's code (see docs/deviations.md): the budget is BERT's
    ``round(0.15 n)`` over maskable tokens (SpanBERT: ``ceil`` over all tokens); spans are whole
    words (SpanBERT cuts its last span mid-word to hit the budget); random replacements are
    uniform over ordinary ids unless ``random_ids="unigram"`` (SpanBERT: its input's unigram
    distribution; the trainer binds corpus counts); the SBO position embedding has the model's
    width unless the architecture's ``position_size`` says otherwise (SpanBERT: 200).

    Worked example (vocab size 10, pad 0, MASK 3; ``probability=0.5, mask_fraction=1,
    random_fraction=0``, ``generator=torch.Generator().manual_seed(0)``; words as in
    :class:`MaskedLM`'s example)::

        input_ids   [[1, 4, 5, 6, 7, 8, 9, 4, 5, 6, 2, 0, 0]]
        word_ids    [[-1, 0, 0, 1, 2, 2, 2, 3, 4, 4, -1, -1, -1]]
        -> input_ids  [[1, 4, 5, 6, 3, 3, 3, 3, 5, 6, 2, 0, 0]]
        -> labels     [[-100, -100, -100, -100, 7, 8, 9, 4, -100, -100, -100, -100, -100]]
        SBO targets: positions [4, 5, 6, 7], left 3, right 8, offset [0, 1, 2, 3]
    """

    vocab: Vocab  # vocabulary: mask_id is required; special_ids are never selected nor drawn
    probability: float = option(0.15, "share of maskable tokens to mask (SpanBERT mask_ratio)")
    mask_fraction: float = option(0.8, "share of spans replaced by [MASK]")
    random_fraction: float = option(0.1, "share of spans replaced by random ids; the rest are kept")
    selection: str = option("exact", '"exact" (fixed token budget per row, SpanBERT) | "bernoulli" (Binomial budget)')
    max_predictions: int | None = option(None, "cap on masked tokens per row; None = no cap")
    span_geometric_p: float = option(0.2, "parameter of the geometric span length (SpanBERT p)")
    max_span_length: int = option(10, "longest span, in words (SpanBERT l_max)")
    max_pair_targets: int = option(15, "SBO: tokens of a span that are SBO targets (SpanBERT --max-pair-targets)")
    random_ids: str = option(
        "uniform", 'random replacements: "uniform" over ordinary ids, or "unigram" (corpus counts, SpanBERT)'
    )
    _mlm: MaskedLM | None = field(default=None, init=False, repr=False, compare=False)  # built from the options

    name = "spanbert"

    def __post_init__(self) -> None:
        check_positive_int(self.max_pair_targets, "max_pair_targets")
        mlm = MaskedLM(
            vocab=self.vocab,
            probability=self.probability,
            mask_fraction=self.mask_fraction,
            random_fraction=self.random_fraction,
            unit="span",
            selection=self.selection,
            max_predictions=self.max_predictions,
            span_geometric_p=self.span_geometric_p,
            max_span_length=self.max_span_length,
            random_ids=self.random_ids,
        )
        object.__setattr__(self, "_mlm", mlm)

    @property
    def needs_unigram_counts(self) -> bool:
        """True when ``random_ids="unigram"`` and no counts are bound yet (see :meth:`with_unigram_counts`)."""
        return self._mlm.needs_unigram_counts  # type: ignore[union-attr]

    def with_unigram_counts(self, counts: torch.Tensor) -> SpanBERT:
        """A copy whose random replacements follow ``counts`` ``(vocab.size,)`` (``random_ids="unigram"``)."""
        copy = SpanBERT(**{k: getattr(self, k) for k in self.__dataclass_fields__ if k != "_mlm"})
        object.__setattr__(copy, "_mlm", self._mlm.with_unigram_counts(counts))  # type: ignore[union-attr]
        return copy

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        word_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Span-masked ``input_ids`` ``(B, T)``; ``word_ids`` ``(B, T)`` are required (spans are whole words)."""
        if word_ids is None:
            raise ValueError(
                "SpanBERT needs word_ids (B, T): spans are whole words (same id = same word, -1 = no word); "
                "build them with lmobjectives.data.word_ids_from_starts or a tokenizer's encode_words"
            )
        return self._mlm(input_ids, attention_mask=attention_mask, word_ids=word_ids, generator=generator)  # type: ignore[misc]

    def targets(self, batch: Batch) -> SpanBoundaryTargets:
        """The SBO targets of a batch this objective made (:func:`span_boundary_targets`): a span next to a
        special token ([CLS], [SEP], EOS, ...) or padding gives none. A boundary is never a target, so its
        ``input_ids`` is the original token."""
        special = self.vocab.special_mask(batch.input_ids.device)[batch.input_ids]  # (B, T)
        return span_boundary_targets(batch.labels, batch.attention_mask, self.max_pair_targets, special=special)
