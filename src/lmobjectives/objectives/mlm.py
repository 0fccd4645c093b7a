"""Masked language modelling (BERT): corrupt some tokens, predict the originals.

:class:`MaskedLM` selects targets by ``unit`` (tokens, whole words, SpanBERT spans, ALBERT n-grams) and
``selection`` (independent draws, or an exact count per row), then replaces them 80/10/10. One selection
strategy per (unit, selection) lives in :mod:`._masking`; the span and n-gram length laws in
:mod:`._span_lengths`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from .._checks import check_choice, check_like, check_positive_int, check_probability
from .._option import option
from ..batch import Batch, checked_tokens
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from ._masking import (
    BernoulliTokens,
    BernoulliWords,
    BinomialBudget,
    ExactBudget,
    ExactTokens,
    ExactWords,
    NGrams,
    Selection,
    Spans,
    Tokens,
)

__all__ = ["MaskedLM"]

UNITS = ("token", "word", "span", "ngram")
SELECTIONS = ("bernoulli", "exact")
RANDOM_IDS = ("uniform", "unigram")


def _check_counts(counts: object, vocab: Vocab) -> torch.Tensor:
    """``counts`` as a float64 CPU tensor ``(vocab.size,)``, checked: finite, >= 0, some ordinary id > 0."""
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"unigram counts must be a torch.Tensor of shape ({vocab.size},), got {type(counts).__name__}")
    if counts.dtype == torch.bool or counts.dtype.is_complex:
        raise TypeError(f"unigram counts must be a real tensor, got dtype {counts.dtype}")
    if tuple(counts.shape) != (vocab.size,):
        raise ValueError(
            f"unigram counts must have shape (vocab.size,) = ({vocab.size},), one count per id, got {tuple(counts.shape)}"
        )
    c = counts.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(c).all()) or bool((c < 0).any()):
        raise ValueError("unigram counts must be finite and >= 0")
    if float(torch.where(vocab.special_mask(), 0.0, c).sum()) <= 0:
        raise ValueError(
            "unigram counts are all zero on the ordinary (non-special) ids: nothing to draw random ids from"
        )
    return c


@dataclass(frozen=True)
class MaskedLM:
    """Masked-LM corruption: select tokens, replace most by [MASK], predict the originals.

    Each call selects targets among the maskable tokens, by ``unit`` and ``selection`` (below). A target
    gets its original id as label and is replaced by ``mask_id`` with probability ``mask_fraction``, by a
    random ordinary id with probability ``random_fraction`` (possibly the original, as in BERT), and kept
    otherwise (BERT: 0.8 / 0.1 / 0.1). Masking is dynamic (RoBERTa): a new mask on every call, drawn only
    from ``generator``.

    Contract:

    * In: ``input_ids`` ``(B, T)`` ids of ``vocab``; ``attention_mask`` ``(B, T)``, True on real tokens
      (default: all but the trailing ``pad_id`` run, :func:`~lmobjectives.batch.padding_mask`); ``word_ids``
      ``(B, T)`` int, required by the units ``"word"``, ``"span"``, ``"ngram"`` and refused by ``"token"``.
      A **word** is a maximal run of consecutive maskable tokens with one id ``>= 0`` (HF ``word_ids()`` of
      a sentence pair, which restart at 0 after [SEP], work as they are); -1 = no word.
      :func:`lmobjectives.data.word_ids_from_starts` builds them from word starts.
    * Out: a :class:`~lmobjectives.batch.Batch` with ``causal=False``: the corrupted ``input_ids``;
      ``labels``, the original id at each target and ``IGNORE_INDEX`` elsewhere; ``attention_mask``, the
      real tokens; ``has_targets`` ``(B,)``, False for a row with no target. The caller's tensors are
      never modified.
    * Never selected: padding, special ids (``Vocab.special_ids``: PAD, CLS, SEP, MASK, UNK and the
      extras, as HF's ``get_special_tokens_mask``) and, with word units, tokens of word id -1. Random
      replacements are never special ids: uniform over the ordinary ids (``random_ids="uniform"``), or in
      proportion to corpus counts bound by :meth:`with_unigram_counts` (``"unigram"``).
    * A batch with nothing maskable raises ``ValueError``: no batch is ever all-ignored.

    Selection: ``"bernoulli"`` (HF) takes each unit independently with probability ``probability``; a
    row may get no target, and only a batch with no target at all is redrawn, from the same law
    conditioned on at least one target. ``"exact"`` (BERT) gives each row
    ``k = min(max_predictions, max(1, round(n * probability)))`` target tokens, ``n`` its maskable tokens.

    Units:

    * ``"token"``: tokens on their own.
    * ``"word"``: whole-word masking; all tokens of a word share its selection, the 80/10/10 split stays
      per token. ``"bernoulli"``: ``probability`` per word; ``"exact"``: words in random order are taken
      while they fit in the token budget ``k``, one that would overflow is skipped.
    * ``"span"``: spans of whole words into a token budget (``k``; ``Binomial(n, p)`` capped by
      ``max_predictions`` with ``"bernoulli"``): start word uniform, length in words from
      Geometric(``span_geometric_p``) on ``1..max_span_length``; one 80/10/10 decision per span.
    * ``"ngram"``: n-grams of ``1..max_ngram`` whole words, ``P(n)`` proportional to ``1/n``, into the same
      budget; an overflowing one is shortened, one touching a masked word skipped; 80/10/10 per token.

    A budgeted row never gets more targets than its budget, except a row whose every candidate is longer
    than the budget: it gets its first candidate's first word. Each strategy of
    :mod:`lmobjectives.objectives._masking` states its law in full; every difference from the original
    code is a "mlm" row of ``docs/deviations.md``.

    Worked example (vocab size 10: PAD 0, CLS 1, SEP 2, MASK 3, ordinary ids 4..9; one line per row of
    ids, one column per position). With ``probability=1.0, mask_fraction=1.0, random_fraction=0.0`` every
    real, non-special token is masked, under either selection:

    >>> vocab = Vocab(size=10, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
    >>> def table(*rows):
    ...     for row in rows:
    ...         print("".join(f"{v:5}" for v in row[0].tolist()))
    >>> x = torch.tensor([[1, 5, 6, 2, 7, 2, 0]])
    >>> b = MaskedLM(vocab, probability=1.0, mask_fraction=1.0, random_fraction=0.0)(x)
    >>> table(x, b.input_ids, b.labels)
        1    5    6    2    7    2    0
        1    3    3    2    3    2    0
     -100    5    6 -100    7 -100 -100
    >>> b.attention_mask.tolist(), b.has_targets.tolist()
    ([[True, True, True, True, True, True, False]], [True])

    Seeded, ``probability=0.5``, on a row of nine maskable tokens in five words (``w``: word of each token):

    >>> x = torch.tensor([[1, 4, 5, 6, 7, 8, 9, 4, 5, 6, 2, 0, 0]])
    >>> w = torch.tensor([[-1, 0, 0, 1, 2, 2, 2, 3, 4, 4, -1, -1, -1]])
    >>> seed0 = lambda: torch.Generator().manual_seed(0)
    >>> b = MaskedLM(vocab, probability=0.5)(x, generator=seed0())
    >>> table(x, b.input_ids, b.labels)  # tokens 8, 4 -> [MASK], 5 -> random 4
        1    4    5    6    7    8    9    4    5    6    2    0    0
        1    4    5    6    7    3    9    3    4    6    2    0    0
     -100 -100 -100 -100 -100    8 -100    4    5 -100 -100 -100 -100
    >>> b = MaskedLM(vocab, probability=0.5, unit="word")(x, word_ids=w, generator=seed0())
    >>> table(w, b.input_ids, b.labels)  # words 0, 2, 3, 4; token 5 -> random 6, the others -> [MASK]
       -1    0    0    1    2    2    2    3    4    4   -1   -1   -1
        1    3    6    6    3    3    3    3    3    3    2    0    0
     -100    4    5 -100    7    8    9    4    5    6 -100 -100 -100
    >>> b = MaskedLM(vocab, probability=0.5, unit="span", selection="exact")(x, word_ids=w, generator=seed0())
    >>> table(b.input_ids, b.labels)  # budget round(9 * 0.5) = 4 tokens: words 2 and 3
        1    4    5    6    3    3    3    3    5    6    2    0    0
     -100 -100 -100 -100    7    8    9    4 -100 -100 -100 -100 -100
    >>> b = MaskedLM(vocab, probability=0.5, unit="ngram", selection="exact")(x, word_ids=w, generator=seed0())
    >>> table(b.input_ids, b.labels)  # budget 4 tokens: the bigram of words 1 and 2
        1    4    5    3    3    3    3    4    5    6    2    0    0
     -100 -100 -100    6    7    8    9 -100 -100 -100 -100 -100 -100

    References: BERT (Devlin et al., 2019, section 3.1, and ``create_pretraining_data.py``, whole-word
    masking included); RoBERTa (Liu et al., 2019, section 4.1: dynamic masking); SpanBERT (Joshi et al.,
    2020, section 3.1); ALBERT (Lan et al., 2020, section 4.1: n-gram masking).
    """

    vocab: Vocab  # vocabulary: mask_id is required; special_ids are never selected nor drawn
    probability: float = option(
        0.15, "selection rate in (0, 1]: per unit (bernoulli) or budget fraction (exact, span, ngram)"
    )
    mask_fraction: float = option(0.8, "share of selected tokens replaced by [MASK]")
    random_fraction: float = option(0.1, "share replaced by a random non-special id; the rest are kept")
    unit: str = option("token", '"token" | "word" (whole-word masking) | "span" (SpanBERT) | "ngram" (ALBERT)')
    selection: str = option("bernoulli", '"bernoulli" (independent draws) | "exact" (fixed count per row, BERT)')
    max_predictions: int | None = option(
        None, "cap on targets per row (BERT max_predictions_per_seq); budgeted modes only"
    )
    span_geometric_p: float = option(0.2, "span: parameter of the geometric span length (SpanBERT p)")
    max_span_length: int = option(10, "span: longest span, in words (SpanBERT l_max)")
    max_ngram: int = option(3, "ngram: longest n-gram, in words (ALBERT n); P(n) proportional to 1/n")
    random_ids: str = option(
        "uniform", 'random replacements: "uniform" over ordinary ids, or "unigram" (corpus counts, SpanBERT)'
    )
    _unigram: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)  # counts (V,)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # per-device lookup tables
    _select: Callable[[Tokens, torch.Generator | None], Selection] | None = field(
        default=None, init=False, repr=False, compare=False
    )  # the selection strategy for (unit, selection), set by __post_init__

    name = "mlm"

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocab):
            raise TypeError(f"MaskedLM: vocab must be a lmobjectives.Vocab, got {type(self.vocab).__name__}")
        self.vocab.require("mask_id", who="MaskedLM")
        object.__setattr__(self, "probability", check_probability(self.probability, "probability", low_open=True))
        m = check_probability(self.mask_fraction, "mask_fraction")
        r = check_probability(self.random_fraction, "random_fraction")
        if m + r > 1.0 + 1e-9:
            raise ValueError(
                f"mask_fraction + random_fraction must be <= 1, got mask_fraction={m!r} + random_fraction={r!r} = {m + r!r}"
            )
        object.__setattr__(self, "mask_fraction", m)
        object.__setattr__(self, "random_fraction", r)
        check_choice(self.unit, "unit", UNITS)
        check_choice(self.selection, "selection", SELECTIONS)
        check_positive_int(self.max_predictions, "max_predictions", allow_none=True)
        if self.max_predictions is not None and self.selection == "bernoulli" and self.unit in ("token", "word"):
            raise ValueError(
                f"max_predictions={self.max_predictions!r} only applies to a budget "
                "(selection='exact', or unit='span' or 'ngram'); "
                f"with selection='bernoulli' and unit={self.unit!r} there is none"
            )
        object.__setattr__(
            self, "span_geometric_p", check_probability(self.span_geometric_p, "span_geometric_p", low_open=True)
        )
        check_positive_int(self.max_span_length, "max_span_length")
        if isinstance(self.max_ngram, bool) or not isinstance(self.max_ngram, int) or self.max_ngram < 1:
            raise ValueError(f"max_ngram must be an int >= 1 (the longest n-gram, in words), got {self.max_ngram!r}")
        check_choice(self.random_ids, "random_ids", RANDOM_IDS)
        if r > 0 and len(self.vocab.special_ids) >= self.vocab.size:
            raise ValueError(
                f"random_fraction={r!r} needs ordinary (non-special) ids to draw from, "
                "but every id of the vocab is special"
            )
        object.__setattr__(self, "_select", self._strategy())

    def _strategy(self) -> Callable[[Tokens, torch.Generator | None], Selection]:
        """The selection strategy (:mod:`._masking`) for this (unit, selection)."""
        p, cap = self.probability, self.max_predictions
        budget = ExactBudget(p, cap) if self.selection == "exact" else BinomialBudget(p, cap)
        match self.unit, self.selection:
            case "token", "bernoulli":
                return BernoulliTokens(p)
            case "token", "exact":
                return ExactTokens(budget)
            case "word", "bernoulli":
                return BernoulliWords(p)
            case "word", "exact":
                return ExactWords(budget)
            case "span", _:
                return Spans(budget, self.span_geometric_p, self.max_span_length)
            case "ngram", _:
                return NGrams(budget, self.max_ngram)

    # ---------------------------------------------------------------- call
    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        word_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Corrupt ``input_ids`` ``(B, T)``; ``attention_mask`` ``(B, T)`` marks real tokens (default: not
        trailing padding); ``word_ids`` ``(B, T)`` is required by the word, span and ngram units."""
        input_ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, T), (B, T)
        special, ordinary = self._tables(input_ids.device)
        tokens = Tokens(input_ids, real, special, self._checked_word_ids(word_ids, input_ids))
        chosen = self._select(tokens, generator)  # the targets: dense (B, T) places or sparse (M,) ones
        original = chosen.gather(input_ids)  # the ids at those places
        corrupted = self._replace(original, chosen, ordinary, generator)  # 80/10/10
        labels = torch.where(chosen.selected, original, IGNORE_INDEX)
        return Batch(
            input_ids=chosen.scatter(corrupted, input_ids),  # (B, T)
            labels=chosen.scatter(labels, input_ids, fill=IGNORE_INDEX),  # (B, T)
            attention_mask=real,
            causal=False,
            has_targets=chosen.has_targets(input_ids.shape),  # (B,)
        )

    def _checked_word_ids(self, word_ids: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor | None:
        """``word_ids`` checked against the unit: None for ``"token"``, else a (B, T) long copy with ids >= -1."""
        if self.unit == "token":
            if word_ids is not None:
                raise ValueError("word_ids was given but unit='token'; set unit='word', 'span' or 'ngram' to use it")
            return None
        if word_ids is None:
            raise ValueError(
                f"unit={self.unit!r} needs word_ids (B, T): same id = same word, -1 = no word; "
                "build them with lmobjectives.data.word_ids_from_starts (the byte tokenizer derives "
                "them from whitespace) or from a HF tokenizer's word_ids()"
            )
        word_ids = check_like(word_ids, input_ids, "word_ids")
        if int(word_ids.min()) < -1:
            raise ValueError(f"word_ids must be >= -1 (-1 = not part of a word), got {int(word_ids.min())}")
        return word_ids

    def _replace(self, values: torch.Tensor, chosen: Selection, ordinary: torch.Tensor, generator) -> torch.Tensor:
        """The 80/10/10 replacement: a corrupted copy of ``values`` (the ids at ``chosen``'s places, its shape).

        A selected place becomes [MASK] where ``split / scale < mask_fraction``, a random ordinary id where
        it is below ``mask_fraction + random_fraction``, and keeps its id otherwise.
        """
        selected, split, scale = chosen.selected, chosen.split, chosen.scale
        masked = selected & (split < scale * self.mask_fraction)
        corrupted = torch.where(masked, self.vocab.mask_id, values)
        if self.random_fraction > 0:
            rnd = selected & ~masked & (split < scale * (self.mask_fraction + self.random_fraction))
            if chosen.positions is not None:  # sparse: few places, one id each (no count, no host sync)
                drawn = self._draw_random(tuple(values.shape), ordinary, generator, values.device)  # (M,)
                corrupted = torch.where(rnd, drawn, corrupted)
            else:  # dense: one id per random place, written in row-major order
                count = int(torch.count_nonzero(rnd))
                if count:
                    corrupted.masked_scatter_(rnd, self._draw_random((count,), ordinary, generator, values.device))
        return corrupted

    # ---------------------------------------------------------------- tables and random ids
    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(special lookup (size,) bool, ordinary ids (n,) long) on ``device``, built once."""
        key = str(device)
        if key not in self._cache:
            special = self.vocab.special_mask(device)  # (V,)
            ordinary = (~special).nonzero().flatten()  # (V - #special,)
            self._cache[key] = (special, ordinary)
        return self._cache[key]

    @property
    def needs_unigram_counts(self) -> bool:
        """True when random replacements follow corpus counts that :meth:`with_unigram_counts` has not bound yet."""
        return self.random_ids == "unigram" and self.random_fraction > 0 and self._unigram is None

    def with_unigram_counts(self, counts: torch.Tensor) -> MaskedLM:
        """A copy that draws random replacements in proportion to ``counts`` ``(vocab.size,)`` (``random_ids="unigram"``).

        ``counts[i]`` is how often id ``i`` occurs in the corpus (any non-negative numbers; the
        trainer passes ``torch.bincount`` of the corpus' real tokens). Special ids are never drawn,
        whatever their count (SpanBERT draws from the raw token stream, specials included).
        """
        object.__setattr__(copy := replace(self), "_unigram", _check_counts(counts, self.vocab))
        return copy

    def _draw_random(self, shape: tuple[int, ...], ordinary: torch.Tensor, generator, device) -> torch.Tensor:
        """Random replacement ids ``shape``: uniform over ordinary ids, or from the bound unigram counts."""
        if self.random_ids == "uniform":
            pick = torch.randint(ordinary.numel(), shape, generator=generator, device=device)
            return ordinary.index_select(0, pick.reshape(-1)).view(shape)
        key = ("unigram", str(device))
        if key not in self._cache:
            if self._unigram is None:
                raise ValueError(
                    "random_ids='unigram' needs the corpus' token counts: call objective.with_unigram_counts(counts) "
                    "with counts (vocab.size,) (lmobj train binds them from the corpus)"
                )
            w = torch.where(self.vocab.special_mask(), 0.0, self._unigram)  # (V,) float64
            self._cache[key] = w.cumsum(0).to(device)  # (V,) cumulative weights
        cdf = self._cache[key]
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64) * cdf[-1]
        return torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.numel() - 1)  # id i with cdf[i-1] <= u < cdf[i]
