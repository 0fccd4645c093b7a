"""Masked language modelling (BERT): corrupt some tokens, predict the originals.

Four selection units (``unit=``):

* ``"token"``: each maskable token on its own (BERT, HF ``DataCollatorForLanguageModeling``);
* ``"word"``: whole-word masking, all sub-tokens of a word together (BERT wwm);
* ``"span"``: contiguous spans of whole words, span length in words drawn from a
  geometric distribution (SpanBERT, Joshi et al. 2020, section 3.1);
* ``"ngram"``: n-grams of whole words, ``P(n)`` proportional to ``1/n`` (ALBERT).

Everything is vectorised over the batch: no Python loop over rows, words or
tokens, and memory stays ``O(B * T)`` (span masking: ``O(B * T * max_span_length)``
at most, never ``B * T * T``). Budgeted selection scans candidates in a few
vectorised rounds (:func:`_greedy_fill`), never a loop per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from .._checks import check_like, check_positive_int, check_probability
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from ..batch import Batch, checked_tokens
from .._option import option

__all__ = ["MaskedLM"]


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
        raise ValueError("unigram counts are all zero on the ordinary (non-special) ids: nothing to draw random ids from")
    return c

UNITS = ("token", "word", "span", "ngram")
SELECTIONS = ("bernoulli", "exact")
RANDOM_IDS = ("uniform", "unigram")
_SPARE_CANDIDATES = 8  # span: candidates drawn beyond the largest budget, for the ones that add nothing
_TAIL_WINDOW = 16  # candidates a budget-filling round looks at per row


def _truncated_geometric(u: torch.Tensor, p: float, n: int | torch.Tensor) -> torch.Tensor:
    """Inverse CDF of Geometric(p) on ``{1, ..., n}`` (renormalised, not clipped): uniforms -> long.

    ``P(L = l) = p (1-p)^(l-1) / (1 - (1-p)^n)``. With p = 0.2, n = 10 the mean is 3.80.
    """
    if p >= 1.0:
        return torch.ones_like(u, dtype=torch.long)
    q = 1.0 - p
    n_t = torch.as_tensor(n, dtype=u.dtype, device=u.device)
    tail = 1.0 - torch.pow(torch.as_tensor(q, dtype=u.dtype, device=u.device), n_t)  # P(L <= n) before renormalising
    length = torch.ceil(torch.log1p(-u * tail) / math.log(q))
    return torch.minimum(length.clamp(min=1), n_t.clamp(min=1)).long()


def _bernoulli_positions(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Sorted positions in ``[0, n)`` of i.i.d. Bernoulli(``p``) successes, drawn as geometric gaps.

    The gap between successive successes of a Bernoulli(p) sequence is
    Geometric(p) on ``{1, 2, ...}``, ``floor(log(1 - u) / log(1 - p)) + 1``
    for a uniform ``u``; cumulative gaps are the success positions. This
    draws about ``n * p`` uniforms (float64) instead of ``n``.
    """
    if p >= 1.0:
        return torch.arange(n, device=device)
    log_q = math.log1p(-p)
    parts, last, need = [], -1, n
    while need > 0:
        mean = need * p
        k = int(mean + 6.0 * math.sqrt(mean * (1.0 - p)) + 16)  # enough in all but ~1e-9 of calls
        u = torch.rand(k, generator=generator, device=device, dtype=torch.float64)  # (k,)
        gaps = torch.floor(torch.log1p(-u) / log_q).long() + 1  # (k,) Geometric(p) on {1, 2, ...}
        pos = gaps.cumsum(0) + last  # (k,)
        parts.append(pos)
        last = int(pos[-1])
        need = n - 1 - last
    pos = torch.cat(parts) if len(parts) > 1 else parts[0]
    return pos[: int(torch.searchsorted(pos, n))]  # sorted: cut instead of a boolean mask


def _any_per_row(x: torch.Tensor) -> torch.Tensor:
    """``x.any(-1)`` for a bool (B, T) tensor (a uint8 max: several times faster on CPU)."""
    return x.view(torch.uint8).amax(-1).bool()


def _any(x: torch.Tensor) -> bool:
    """``bool(x.any())`` for a bool tensor (host sync)."""
    return bool(x.view(torch.uint8).amax())


def _at_least_one(u: torch.Tensor, eligible: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Uniforms ``u`` adjusted so that ``u < p`` holds at one eligible place at least (if any).

    An exact draw from i.i.d. Bernoulli(p) over the eligible places
    *conditioned on at least one success*: the first success (in row-major
    order) has the truncated geometric law, the places before it fail, it
    succeeds, the places after it keep their own draw. The successful place
    gets ``u * p``, so ``u / p`` stays uniform given selection (the
    replacement split reads it). Callers use it only after a plain draw came
    out empty; a plain draw, else this, is again exactly the conditional law.
    """
    if p >= 1.0:
        return u
    rank = eligible.flatten().cumsum(0).view_as(eligible)  # (B, T) 1-based rank among eligible places
    count = rank[-1, -1]  # number of eligible places (0-dim, stays on device)
    v = torch.rand((), generator=generator, device=u.device, dtype=torch.float64)
    first = _truncated_geometric(v, p, count)  # 0-dim long
    before = eligible & (rank < first)
    at = eligible & (rank == first)
    return torch.where(before, 1.0, torch.where(at, u * p, u))


def _bernoulli_at_least_one(
    eligible: torch.Tensor, p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(selected, u)``: i.i.d. Bernoulli(p) over ``eligible`` places, conditioned on >= 1 success.

    A plain draw, redrawn with :func:`_at_least_one` when it came out empty: together
    exactly the conditional law. ``selected = eligible & (u < p)``; ``u / p`` is uniform
    given selection.
    """
    u = torch.rand(eligible.shape, generator=generator, device=eligible.device)
    selected = eligible & (u < p)
    if not _any(selected):
        u = _at_least_one(torch.rand(eligible.shape, generator=generator, device=eligible.device), eligible, p, generator)
        selected = eligible & (u < p)
    return selected, u


@dataclass(frozen=True)
class MaskedLM:
    """Masked-LM corruption: select tokens, replace most by [MASK], predict the originals.

    **Maskable** tokens are real (``attention_mask`` True; without one, not in
    the trailing ``pad_id`` run, see :func:`~lmobjectives.batch.padding_mask`)
    and not special (``Vocab.special_ids``: PAD, CLS, SEP, MASK, UNK and the
    extras, as HF's ``get_special_tokens_mask``). Only maskable tokens are
    ever selected. A selected token gets its original id as label and is
    replaced by ``mask_id`` with probability ``mask_fraction``, by a random
    id with probability ``random_fraction``, and kept otherwise (BERT:
    0.8 / 0.1 / 0.1). Random ids are uniform over the **non-special** ids
    (*deviation*: BERT and HF draw from the whole vocabulary, [CLS]/[MASK]
    included); a random id may equal the original, as in BERT. Masking is
    dynamic (RoBERTa): a new mask on every call, drawn only from
    ``generator``; the caller's tensors are never modified.

    Selection (``selection=``):

    * ``"bernoulli"`` (default, HF semantics): each maskable unit independently
      with probability ``probability``. With ``unit="token"`` the selected
      positions are drawn directly as geometric gaps between successes (the
      same law, with ~p·B·T uniforms instead of B·T), and one more uniform
      per selected token makes the [MASK] / random / keep split. On the rare
      dense fallback (the redraw below) one uniform ``u`` per token decides
      both: selected if ``u < p``, split on ``u / p``, uniform given
      selection, so the split has exactly the stated law. A short row may get no target: its
      ``has_targets`` is False and its labels are all ``IGNORE_INDEX`` (no
      token is forced, as in HF). Only a batch with no target at all is
      redrawn, from the exact law conditioned on at least one target (see
      ``_at_least_one``; this changes the law only on an event of probability
      ``(1-p)^N`` for ``N`` maskable units).
    * ``"exact"`` (BERT ``create_pretraining_data.py``): each row gets exactly
      ``k = min(max_predictions, max(1, round(n * probability)))`` targets,
      chosen uniformly, ``n`` = its number of maskable tokens (``round``
      halves to even, as Python 3). *Deviation*: BERT counts ``n`` over all
      tokens, [CLS]/[SEP] included; we count what can be predicted.

    A batch with nothing maskable at all raises ``ValueError`` (never a
    silently all-ignored batch).

    Units (``unit=``; ``"word"``, ``"span"`` and ``"ngram"`` need ``word_ids``):

    * ``"token"``: tokens on their own.
    * ``"word"``: whole-word masking; all sub-tokens of a word share its
      selection, the 80/10/10 split stays per token (BERT). With
      ``"bernoulli"`` ``probability`` applies per **word** (HF
      ``whole_word_mask``), so about ``p`` of the tokens when word length is
      independent of selection. With ``"exact"`` the budget ``k`` counts
      **tokens** (BERT wwm): words are scanned in random order and a word is
      taken when it fits in what is left of ``k``; one that would overflow is
      skipped and the scan goes on, as BERT's ``continue`` does.
    * ``"span"``: SpanBERT (Joshi et al., 2020, section 3.1). Each row has a
      token budget: ``k`` above with ``"exact"`` (SpanBERT's code rounds up,
      we keep BERT's formula), ``Binomial(n, p)`` with ``"bernoulli"`` (capped
      by ``max_predictions`` if set). Candidate spans are drawn in sequence:
      start word uniform over the row's words (the paper; SpanBERT's code
      draws a token and moves to its word's start, which favours long words),
      length in words from Geometric(``span_geometric_p``) on
      ``1..max_span_length``, renormalised as in SpanBERT's code (mean 3.80
      words for 0.2 and 10), cut at the row's last word. Each candidate adds
      its not yet masked words left to right while they fit in what is left
      of the budget; a candidate whose first new word does not fit adds
      nothing and the next one is tried (SpanBERT instead cuts the last span
      mid-word to hit its budget exactly). An overlapping span adds only its
      new words (SpanBERT skips a span whose anchor token is already masked).
      The 80/10/10 decision is made once per span (SpanBERT makes it once per
      merged run of touching spans); a "random" span gets an independent
      random id per token. ``k + 8`` candidates are drawn per row; only when
      they run out does a row end below budget.
    * ``"ngram"``: ALBERT's n-gram masking (Lan et al., 2020, section 4.1;
      ``create_pretraining_data.py``): every word is the start of one
      candidate n-gram of ``n`` whole words, ``P(n) = (1/n) / sum_{k<=N} 1/k``
      for ``N = max_ngram`` (3: 6/11, 3/11, 2/11), cut at the row's last word;
      candidates are scanned in random order against the token budget (as
      for spans); one that would overflow is shortened to its longest prefix
      that fits, and one that touches an already masked word is skipped.
      80/10/10 per token.

    Budgeted rows (word ``"exact"``, span, ngram) never get more targets than
    their budget, with one documented exception: a row with a budget whose
    every candidate is longer than it takes its first candidate's first word
    (BERT and ALBERT would give that row no target). Measured (2048 rows of
    64-128 tokens, words of 1-4 tokens with a word starting at a token with
    probability 0.75, ``selection="exact"``, p = 0.15; before = the previous
    prefix rule): token share 0.1500 for word, span and ngram (before 0.1463
    word, 0.1466 span), rows that exactly fill the budget 100 % (before 74 %
    and 75 %), rows over budget 0.

    Random replacements (``random_ids``): ``"uniform"`` over the ordinary ids,
    or ``"unigram"``, in proportion to corpus counts bound by
    :meth:`with_unigram_counts` (SpanBERT draws from its input's token
    distribution; special ids are never drawn here).

    ``word_ids`` ``(B, T)`` int: a **word** is a maximal run of consecutive
    maskable tokens with the same id ``>= 0`` (so HF ``word_ids()`` of a
    sentence pair, which restart at 0 after [SEP], work as they are); -1 marks
    tokens outside any word (never selected by the word and span units).
    :func:`lmobjectives.data.word_ids_from_starts` builds them from a word-start flag.

    Deterministic example (``probability=1.0, mask_fraction=1.0,
    random_fraction=0.0``, either selection; vocab size 10, pad 0, CLS 1,
    SEP 2, MASK 3): every real, non-special token is masked::

        input_ids        [[   1,  5,  6,    2,  7,    2,    0]]
        -> input_ids     [[   1,  3,  3,    2,  3,    2,    0]]
        -> labels        [[-100,  5,  6, -100,  7, -100, -100]]
        attention_mask   [[   T,  T,  T,    T,  T,    T,    F]]

    Seeded examples (same vocab, ordinary ids 4..9, ``probability=0.5``,
    ``generator=torch.Generator().manual_seed(0)``)::

        input_ids      [[   1,    4,    5,    6,    7,    8,    9,    4,    5,    6,    2,    0,    0]]
        word_ids       [[  -1,    0,    0,    1,    2,    2,    2,    3,    4,    4,   -1,   -1,   -1]]

        unit="token"   (8 and 4 -> [MASK], 5 -> random 4)
        -> input_ids   [[   1,    4,    5,    6,    7,    3,    9,    3,    4,    6,    2,    0,    0]]
        -> labels      [[-100, -100, -100, -100, -100,    8, -100,    4,    5, -100, -100, -100, -100]]

        unit="word"    (words 0, 2, 3, 4 are selected; 5 -> random 6)
        -> input_ids   [[   1,    3,    6,    6,    3,    3,    3,    3,    3,    3,    2,    0,    0]]
        -> labels      [[-100,    4,    5, -100,    7,    8,    9,    4,    5,    6, -100, -100, -100]]

        unit="span", selection="exact"   (budget round(9 * 0.5) = 4 tokens: words 2 and 3)
        -> input_ids   [[   1,    4,    5,    6,    3,    3,    3,    3,    5,    6,    2,    0,    0]]
        -> labels      [[-100, -100, -100, -100,    7,    8,    9,    4, -100, -100, -100, -100, -100]]

        unit="ngram", selection="exact"  (budget 4 tokens: the bigram of words 1 and 2)
        -> input_ids   [[   1,    4,    5,    3,    3,    3,    3,    4,    5,    6,    2,    0,    0]]
        -> labels      [[-100, -100, -100,    6,    7,    8,    9, -100, -100, -100, -100, -100, -100]]
    """

    vocab: Vocab  # vocabulary: mask_id is required; special_ids are never selected nor drawn
    probability: float = option(0.15, "selection rate in (0, 1]: per unit (bernoulli) or budget fraction (exact, span)")
    mask_fraction: float = option(0.8, "share of selected tokens replaced by [MASK]")
    random_fraction: float = option(0.1, "share replaced by a random non-special id; the rest are kept")
    unit: str = option("token", "\"token\" | \"word\" (whole-word masking) | \"span\" (SpanBERT)")
    selection: str = option("bernoulli", "\"bernoulli\" (independent draws) | \"exact\" (fixed count per row, BERT)")
    max_predictions: int | None = option(None, "cap on targets per row (BERT max_predictions_per_seq); budgeted modes only")
    span_geometric_p: float = option(0.2, "span: parameter of the geometric span length (SpanBERT p)")
    max_span_length: int = option(10, "span: longest span, in words (SpanBERT l_max)")
    max_ngram: int = option(3, "ngram: longest n-gram, in words (ALBERT n); P(n) proportional to 1/n")
    random_ids: str = option("uniform", "random replacements: \"uniform\" over ordinary ids, or \"unigram\" (corpus counts, SpanBERT)")
    _unigram: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)  # counts (V,)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # per-device lookup tables

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
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(map(repr, UNITS))}, got {self.unit!r}")
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(map(repr, SELECTIONS))}, got {self.selection!r}")
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
        if self.random_ids not in RANDOM_IDS:
            raise ValueError(f"random_ids must be one of {', '.join(map(repr, RANDOM_IDS))}, got {self.random_ids!r}")
        if r > 0 and len(self.vocab.special_ids) >= self.vocab.size:
            raise ValueError(
                f"random_fraction={r!r} needs ordinary (non-special) ids to draw from, "
                "but every id of the vocab is special"
            )

    # ---------------------------------------------------------------- tables
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
        trailing padding); ``word_ids`` ``(B, T)`` is required by the word and span units."""
        input_ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, T), (B, T)
        device = input_ids.device
        special, ordinary = self._tables(device)
        if self.unit == "token":
            if word_ids is not None:
                raise ValueError("word_ids was given but unit='token'; set unit='word', 'span' or 'ngram' to use it")
            if self.selection == "bernoulli":
                batch = self._token_bernoulli(input_ids, real, special, ordinary, generator)
                if batch is not None:
                    return batch
        maskable = real & ~special.index_select(0, input_ids.reshape(-1)).view_as(input_ids)  # (B, T)

        if self.unit != "token":
            if word_ids is None:
                raise ValueError(
                    f"unit={self.unit!r} needs word_ids (B, T): same id = same word, -1 = no word; "
                    "build them with lmobjectives.data.word_ids_from_starts (the byte tokenizer derives "
                    "them from whitespace) or from a HF tokenizer's word_ids()"
                )
            word_ids = check_like(word_ids, input_ids, "word_ids")
            if int(word_ids.min()) < -1:
                raise ValueError(f"word_ids must be >= -1 (-1 = not part of a word), got {int(word_ids.min())}")
            maskable = maskable & (word_ids >= 0)

        if not _any(maskable):
            raise ValueError(
                "MaskedLM: the batch has nothing to mask (every token is padding or special"
                + ("" if self.unit == "token" else ", or has word id -1")
                + "); refusing to return a batch with no target"
            )
        if self.unit == "token":
            selected, split, scale = self._select_tokens(maskable, generator)
        elif self.unit == "word":
            selected, split, scale = self._select_words(maskable, word_ids, generator)  # type: ignore[arg-type]
        elif self.unit == "ngram":
            selected, split, scale = self._select_ngrams(maskable, word_ids, generator)  # type: ignore[arg-type]
        else:
            selected, split, scale = self._select_spans(maskable, word_ids, generator)  # type: ignore[arg-type]
        corrupted = self._replace(input_ids, selected, split, scale, ordinary, generator)
        labels = torch.where(selected, input_ids, IGNORE_INDEX)  # (B, T)
        return Batch(
            input_ids=corrupted,
            labels=labels,
            attention_mask=real,
            causal=False,
            has_targets=_any_per_row(selected),
        )

    def _token_bernoulli(self, input_ids, real, special, ordinary, generator) -> Batch | None:
        """Token-level Bernoulli selection touching only the ~p·B·T selected positions.

        Candidates are Bernoulli(p) over all ``B * T`` positions
        (:func:`_bernoulli_positions`); keeping the maskable ones gives each
        maskable token an independent Bernoulli(p), the same law as drawing
        per maskable token. One uniform per candidate then splits
        [MASK] / random / keep, and random ids are drawn per candidate. Returns None when nothing was selected, so the
        caller takes the dense path (an error if nothing is maskable, else
        the redraw conditioned on at least one target).
        """
        B, T = input_ids.shape
        flat = input_ids.reshape(-1)  # (B*T,)
        pos = _bernoulli_positions(flat.numel(), self.probability, generator, flat.device)  # (M,) candidates
        original = flat.index_select(0, pos)  # (M,)
        keep = real.reshape(-1).index_select(0, pos) & ~special.index_select(0, original)  # (M,) selected
        if pos.numel() == 0 or not _any(keep):
            return None
        # one write per tensor, no boolean indexing: unselected candidates are written their own value
        split = torch.rand(pos.shape, generator=generator, device=flat.device)  # (M,)
        new = torch.where(keep & (split < self.mask_fraction), self.vocab.mask_id, original)  # (M,)
        if self.random_fraction > 0:
            to_random = keep & (split >= self.mask_fraction) & (split < self.mask_fraction + self.random_fraction)
            new = torch.where(to_random, self._draw_random(tuple(pos.shape), ordinary, generator, flat.device), new)
        corrupted = flat.clone().index_put_((pos,), new)
        labels = torch.full_like(flat, IGNORE_INDEX).index_put_((pos,), torch.where(keep, original, IGNORE_INDEX))
        has_targets = torch.zeros(B, dtype=torch.long, device=flat.device).index_add_(0, pos // T, keep.long()) > 0
        return Batch(
            input_ids=corrupted.view(B, T),
            labels=labels.view(B, T),
            attention_mask=real,
            causal=False,
            has_targets=has_targets,
        )

    def _replace(self, input_ids, selected, split, scale, ordinary, generator) -> torch.Tensor:
        """Corrupt the selected tokens; given selection, ``split / scale`` is uniform on [0, 1)."""
        m_cut = scale * self.mask_fraction
        r_cut = scale * (self.mask_fraction + self.random_fraction)
        masked = selected & (split < m_cut) if self.mask_fraction > 0 else None  # (B, T)
        corrupted = input_ids.clone() if masked is None else torch.where(masked, self.vocab.mask_id, input_ids)
        if self.random_fraction > 0:
            rnd = selected & (split < r_cut)  # (B, T)
            if masked is not None:
                rnd &= ~masked
            count = int(torch.count_nonzero(rnd))  # one draw per random position, written in row-major order
            if count:
                corrupted.masked_scatter_(rnd, self._draw_random((count,), ordinary, generator, input_ids.device))
        return corrupted

    # ---------------------------------------------------------------- units
    def _budget(self, n: torch.Tensor) -> torch.Tensor:
        """Exact per-row count ``min(max_predictions, max(1, round(n p)))``, 0 where n = 0."""
        k = torch.round(n.double() * self.probability).long().clamp(min=1)  # (B,)
        if self.max_predictions is not None:
            k = k.clamp(max=self.max_predictions)
        return torch.where(n > 0, k, 0)

    def _select_tokens(self, maskable: torch.Tensor, generator):
        B, T = maskable.shape
        device = maskable.device
        if self.selection == "bernoulli":
            selected, u = _bernoulli_at_least_one(maskable, self.probability, generator)  # (B, T) each
            return selected, u, self.probability  # one uniform: select if u < p, split on u / p
        u = torch.rand(B, T, generator=generator, device=device)  # (B, T)
        k = self._budget(maskable.sum(-1))  # (B,)
        top = int(k.max())
        keys = torch.where(maskable, u, 2.0)  # (B, T); non-maskable never among the k smallest (k <= n)
        first = keys.topk(top, dim=-1, largest=False).indices  # (B, top) the top smallest keys, in order
        take = torch.arange(top, device=device) < k[:, None]  # (B, top)
        selected = torch.zeros_like(maskable).scatter_(1, first, take)
        split = torch.rand(B, T, generator=generator, device=device)
        return selected, split, 1.0

    @staticmethod
    def _words(maskable: torch.Tensor, word_ids: torch.Tensor):
        """Words as slots: slot of each token (B, T), tokens per slot (B, W), words per row (B,).

        A word is a maximal run of maskable tokens with one id; slots count words
        from 0 in each row; ``W`` is the most words in a row.
        """
        w = torch.where(maskable, word_ids, -1)  # (B, T)
        start = maskable.clone()
        start[:, 1:] &= w[:, 1:] != w[:, :-1]  # (B, T) first token of a word
        index = start.cumsum(-1)  # (B, T) 1-based slot at word tokens
        n_words = index[:, -1]  # (B,)
        W = max(int(n_words.max()), 1)
        index = (index - 1).clamp_(min=0)  # (B, T) slot of each token (0 off words; masked out by callers)
        length = torch.zeros(index.shape[0], W, dtype=torch.long, device=index.device)
        length.scatter_add_(1, index, maskable.long())  # (B, W) tokens per word
        return index, length, n_words

    def _token_budget(self, maskable: torch.Tensor, generator) -> torch.Tensor:
        """Tokens to select per row (B,): ``k`` (exact) or ``Binomial(n, p)`` capped by ``max_predictions``."""
        if self.selection == "exact":
            return self._budget(maskable.sum(-1))
        drawn, _ = _bernoulli_at_least_one(maskable, self.probability, generator)  # (B, T)
        budget = drawn.sum(-1)  # (B,) ~ Binomial(n, p)
        if self.max_predictions is not None:
            budget = budget.clamp(max=self.max_predictions)
        return budget

    def _select_words(self, maskable: torch.Tensor, word_ids: torch.Tensor, generator):
        B, T = maskable.shape
        device = maskable.device
        index, length, n_words = self._words(maskable, word_ids)
        W = length.shape[1]
        exists = torch.arange(W, device=device) < n_words[:, None]  # (B, W) word slots in use
        if self.selection == "bernoulli":
            word_sel, _ = _bernoulli_at_least_one(exists, self.probability, generator)  # (B, W) per word
        else:
            u = torch.rand(B, W, generator=generator, device=device)  # (B, W) one uniform per word
            budget = self._budget(maskable.sum(-1))  # (B,) token budget
            order = torch.where(exists, u, 2.0).argsort(-1)  # (B, W) words in random order, missing slots last
            ranked = exists.gather(1, order)  # (B, W)
            words = torch.where(ranked, order, W)[..., None]  # (B, K=W, L=1) candidates: one word each
            word_sel, _ = _greedy_fill(words, length, budget, mode="new")
        selected = maskable & word_sel.gather(1, index)
        split = torch.rand(B, T, generator=generator, device=device)  # per token (BERT wwm)
        return selected, split, 1.0

    def _select_spans(self, maskable: torch.Tensor, word_ids: torch.Tensor, generator):
        B, T = maskable.shape
        device = maskable.device
        index, length, n_words = self._words(maskable, word_ids)
        budget = self._token_budget(maskable, generator)  # (B,)
        # candidate spans, in order: start word uniform, length ~ truncated geometric (in words)
        K = int(budget.max()) + _SPARE_CANDIDATES  # a span that is taken adds >= 1 token; spares for skipped ones
        L = self.max_span_length
        cand_u = torch.rand(B, K, 2, generator=generator, device=device)  # (B, K, start|length)
        start = (cand_u[..., 0] * n_words[:, None]).long()  # (B, K) word slot
        span_len = _truncated_geometric(cand_u[..., 1], self.span_geometric_p, L)  # (B, K) words
        end = torch.minimum(start + span_len, n_words[:, None])  # (B, K) exclusive, cut at the last word
        slots = start[..., None] + torch.arange(L, device=device)  # (B, K, L)
        words = torch.where(slots < end[..., None], slots, length.shape[1])  # (B, K, L); W = no word
        word_sel, owner = _greedy_fill(words, length, budget, mode="new")
        span_u = torch.rand(B, K + 1, generator=generator, device=device)  # one replacement draw per span
        word_split = torch.where(word_sel, span_u.gather(1, owner), 2.0)  # (B, W); 2 = not selected
        split = word_split.gather(1, index)  # (B, T)
        selected = maskable & (split < 2.0)
        return selected, split, 1.0

    def _select_ngrams(self, maskable: torch.Tensor, word_ids: torch.Tensor, generator):
        B, T = maskable.shape
        device = maskable.device
        index, length, n_words = self._words(maskable, word_ids)
        W = length.shape[1]
        m = self.max_ngram
        budget = self._token_budget(maskable, generator)  # (B,)
        slot = torch.arange(W, device=device)
        exists = slot < n_words[:, None]  # (B, W)
        u = torch.rand(B, W, 2, generator=generator, device=device)  # (B, W, order|n) per start word
        order = torch.where(exists, u[..., 0], 2.0).argsort(-1)  # (B, W) start words in random order
        rank = torch.empty_like(order).scatter_(1, order, slot.expand(B, W))  # (B, W) position in that order
        cdf = self._ngram_cdf(device)  # (m,)
        n = torch.searchsorted(cdf, u[..., 1].contiguous(), right=True).clamp(max=m - 1) + 1  # (B, W) P(n) ~ 1/n
        n = torch.minimum(n, (n_words[:, None] - slot).clamp(min=0))  # cut at the row's last word (ALBERT)
        taken = _first_come_intervals(n, rank, exists, m)  # (B, W) taken if no earlier overlapping n-gram is
        starts = cat_zero(length.cumsum(-1))  # (B, W+1) tokens before each slot
        cost = starts.gather(1, slot + n) - starts[:, :W]  # (B, W) tokens of each full n-gram
        ranked = exists.gather(1, order)  # (B, W)
        words = order[..., None] + torch.arange(m, device=device)  # (B, W, m) candidate j = n-gram at order[j]
        words = torch.where(torch.arange(m, device=device) < n.gather(1, order)[..., None], words, W)
        words = torch.where(ranked[..., None], words, W)
        word_sel, _ = _greedy_fill(words, length, budget, mode="all", bulk=(taken.gather(1, order), cost.gather(1, order)))
        selected = maskable & word_sel.gather(1, index)
        split = torch.rand(B, T, generator=generator, device=device)  # per token (ALBERT)
        return selected, split, 1.0

    def _ngram_cdf(self, device: torch.device) -> torch.Tensor:
        """Cumulative ALBERT n-gram law ``P(n) = (1/n) / sum_k (1/k)`` on ``1..max_ngram`` (float32, on device)."""
        key = ("ngram", str(device))
        if key not in self._cache:
            p = 1.0 / torch.arange(1, self.max_ngram + 1, dtype=torch.float64)
            self._cache[key] = (p / p.sum()).cumsum(0).to(device=device, dtype=torch.float32)
        return self._cache[key]


def cat_zero(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N) with a column of zeros in front: (B, N+1)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)


def _first_come_intervals(n: torch.Tensor, rank: torch.Tensor, exists: torch.Tensor, m: int) -> torch.Tensor:
    """Which n-grams a first-come scan in ``rank`` order takes when overlaps are skipped (budget aside).

    N-gram ``a`` covers word slots ``a .. a + n[a] - 1`` (``n <= m``). Scanning candidates by
    increasing ``rank``, a candidate is taken unless it overlaps one taken before it (ALBERT skips a
    candidate with a covered index). Resolved without a scan: each round decides every candidate
    whose earlier overlapping neighbours (within ``m - 1`` slots) are all decided; the earliest
    undecided candidate is always decided, and rounds are few (a chain of increasing ranks among
    overlapping neighbours).
    """
    B, W = n.shape
    live = exists & (n > 0)

    def shift(x: torch.Tensor, d: int, fill) -> torch.Tensor:  # x[:, a + d], ``fill`` outside the row
        out = torch.full_like(x, fill)
        if d > 0:
            out[:, : W - d] = x[:, d:]
        else:
            out[:, -d:] = x[:, : W + d]
        return out

    earlier = []  # (d, mask): slot a + d holds an overlapping candidate scanned before a
    for d in range(1, m):
        if d >= W:
            break
        left = live & shift(live, -d, False) & (shift(n, -d, 0) > d) & (shift(rank, -d, W) < rank)
        right = live & shift(live, d, False) & (n > d) & (shift(rank, d, W) < rank)
        earlier += [(-d, left), (d, right)]
    status = torch.where(live, 0, 2).to(torch.int8)  # 0 undecided, 1 taken, 2 skipped
    while True:
        blocked = torch.zeros_like(live)
        pending = torch.zeros_like(live)
        for d, mask in earlier:
            s = shift(status, d, 2)
            blocked |= mask & (s == 1)
            pending |= mask & (s == 0)
        undecided = status == 0
        status = torch.where(undecided & blocked, 2, torch.where(undecided & ~pending, 1, status)).to(torch.int8)
        if not _any(status == 0):
            return status == 1


def _greedy_fill(
    words: torch.Tensor,
    length: torch.Tensor,
    budget: torch.Tensor,
    *,
    mode: str,
    bulk: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First-fit of ordered candidates into a token budget, as BERT / ALBERT / SpanBERT's loops do, vectorised.

    ``words`` ``(B, K, L)``: candidate ``j`` of a row covers the word slots ``words[b, j, :]``
    (left to right; ``W`` = no word, always at the end); ``length`` ``(B, W)`` tokens per word;
    ``budget`` ``(B,)`` tokens. Candidates are scanned in order with the remaining budget ``r``:

    * ``mode="new"`` (words, SpanBERT spans): the candidate adds its not yet covered words left to
      right while they fit in ``r``; it is skipped if its first new word does not fit;
    * ``mode="all"`` (ALBERT n-grams): the candidate is shortened to its longest prefix that fits
      in ``r``, then skipped if that prefix is empty or holds a covered word.

    Then the scan goes on with the next candidate (BERT's ``continue``), so a row stops short of
    its budget only when no later candidate fits. A row with a budget and a word that took
    nothing (every word longer than the budget) takes its first candidate's first word (a
    documented deviation: BERT and ALBERT give such a row no target).

    Vectorised: a **bulk** step takes every candidate before the first one that does not fit
    whole (for ``"new"``, from the first candidate covering each word; for ``"all"``, ``bulk`` =
    (taken at full length by the overlap scan, full cost), both in candidate order), then each
    **tail** round looks at the next ``_TAIL_WINDOW`` candidates of every row that can still take
    something and takes the first that adds something (or moves past the window). The bulk step
    leaves less than one candidate's worth of budget, and a tail round takes >= 1 token or skips
    a whole window, so rounds are few and touch only the rows still filling.

    Returns ``(word_sel (B, W) bool, owner (B, W) long)``: the candidate that took each word (``K``
    if none).
    """
    B, K, L = words.shape
    W = length.shape[1]
    device = words.device
    flat = words.reshape(B, K * L)  # (B, K*L)
    length_x = torch.cat([length, torch.zeros_like(length[:, :1])], 1)  # (B, W+1); slot W: no tokens
    cand = torch.arange(K, device=device)
    if bulk is None:  # "new": the first candidate covering each word takes it, in order, while the union fits
        first = torch.full((B, W + 1), K, dtype=torch.long, device=device)
        first.scatter_reduce_(1, flat, cand.repeat_interleave(L).expand(B, K * L), reduce="amin")
        first = first[:, :W]  # (B, W); K = uncovered
        new_cost = torch.zeros(B, K + 1, dtype=torch.long, device=device).scatter_add_(1, first, length)[:, :K]
        cum = new_cost.cumsum(-1)  # (B, K) tokens of candidates 0..j
        q = (cum <= budget[:, None]).sum(-1)  # (B,) first candidate that does not fit (K if none)
        taken_w = first < q[:, None]  # (B, W)
        owner = torch.where(taken_w, first, K)
        used = torch.where(taken_w, length, 0).sum(-1)  # (B,)
    else:  # "all": candidates taken by the overlap scan, in order, while their full cost fits
        taken_c, cost = bulk  # (B, K) each
        paid = torch.where(taken_c, cost, 0)
        before = paid.cumsum(-1) - paid  # (B, K) tokens taken before candidate j
        over = (words[..., 0] < W) & (before + cost > budget[:, None])  # (B, K) the budget binds at j
        q = torch.where(over.any(-1), over.to(torch.uint8).argmax(-1), K)  # (B,)
        keep = taken_c & (cand < q[:, None])  # (B, K)
        hit = torch.where(keep[..., None], words, W).reshape(B, K * L)
        owner = torch.full((B, W + 1), K, dtype=torch.long, device=device)
        owner.scatter_(1, hit, cand.repeat_interleave(L).expand(B, K * L).contiguous())
        owner = owner[:, :W]
        used = torch.where(keep, cost, 0).sum(-1)
    covered = torch.cat([owner < K, torch.ones_like(owner[:, :1], dtype=torch.bool)], 1)  # (B, W+1); slot W: "covered"
    owner = torch.cat([owner, torch.full_like(owner[:, :1], K)], 1)  # (B, W+1)
    remaining = budget - used  # (B,)
    pointer = q  # (B,) next candidate to scan
    window = torch.arange(_TAIL_WINDOW, device=device)
    while True:  # tail: rows that can still take something scan a window of candidates and take the first that adds
        idx = ((remaining > 0) & (pointer < K)).nonzero().flatten()  # (A,) active rows
        if idx.numel() == 0:
            break
        A = idx.numel()
        at = pointer[idx, None] + window  # (A, C) candidates in the window
        inside = at < K
        w = words[idx[:, None], at.clamp(max=K - 1)]  # (A, C, L)
        w = torch.where(inside[..., None], w, W)
        cov = covered[idx].gather(1, w.view(A, -1)).view_as(w)  # (A, C, L)
        cost = length_x[idx].gather(1, w.view(A, -1)).view_as(w)  # (A, C, L) tokens per word
        r = remaining[idx, None, None]  # (A, 1, 1)
        if mode == "new":  # its new words, left to right, while they fit
            take = ~cov & (torch.where(cov, 0, cost).cumsum(-1) <= r)
            valid = take.any(-1)  # (A, C)
        else:  # its longest prefix that fits, unless that prefix holds a covered word
            take = (w < W) & (cost.cumsum(-1) <= r)
            valid = take[..., 0] & ~(take & cov).any(-1)
        has = valid.any(-1)  # (A,)
        j = valid.to(torch.uint8).argmax(-1)  # (A,) first valid in the window (0 if none)
        a = torch.arange(A, device=device)
        chosen = take[a, j] & has[:, None]  # (A, L)
        hit = torch.where(chosen, w[a, j], W)  # (A, L)
        rows = idx[:, None].expand_as(hit)
        covered[rows, hit] = True
        owner[rows, hit] = (pointer[idx] + j)[:, None].expand_as(hit)
        remaining[idx] -= torch.where(chosen, cost[a, j], 0).sum(-1)
        pointer[idx] = torch.where(has, pointer[idx] + j + 1, pointer[idx] + _TAIL_WINDOW)
    word_sel = covered[:, :W].clone()
    # a row with a budget and words that took nothing: its first candidate's first word (documented deviation)
    empty = (budget > 0) & ~word_sel.any(-1) & (words[:, 0, 0] < W)  # (B,)
    if _any(empty):
        w0 = torch.where(empty, words[:, 0, 0], W)[:, None]  # (B, 1)
        covered.scatter_(1, w0, True)
        owner.scatter_(1, w0, torch.zeros_like(w0))
        word_sel = covered[:, :W].clone()
    return word_sel, owner[:, :W]
