"""Masked language modelling (BERT): corrupt some tokens, predict the originals.

Three selection units (``unit=``):

* ``"token"``: each maskable token on its own (BERT, HF ``DataCollatorForLanguageModeling``);
* ``"word"``: whole-word masking, all sub-tokens of a word together (BERT wwm);
* ``"span"``: contiguous spans of whole words, span length in words drawn from a
  geometric distribution (SpanBERT, Joshi et al. 2020, section 3.1).

Everything is vectorised over the batch: no Python loop over rows, words or
tokens, and memory stays ``O(B * T)`` (span masking: ``O(B * T * max_span_length)``
at most, never ``B * T * T``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._checks import check_like, check_positive_int, check_probability
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from .base import Batch, checked_tokens

__all__ = ["MaskedLM", "word_ids_from_starts"]

UNITS = ("token", "word", "span")
SELECTIONS = ("bernoulli", "exact")


def word_ids_from_starts(is_word_start: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Word ids ``(B, T)`` from a word-start flag: ids count words from 0 in each row, -1 off words.

    A word runs from a start to the token before the next start (or before the
    next invalid token). An invalid token (special, padding; ``valid`` False)
    gets -1 and ends the word before it; a valid token right after an invalid
    one starts a word even when its flag is False.

    >>> word_ids_from_starts(torch.tensor([[0, 1, 0, 1, 1, 0]]), torch.tensor([[0, 1, 1, 1, 1, 0]]))
    tensor([[-1,  0,  0,  1,  2, -1]])
    """
    starts = is_word_start.bool()  # (B, T)
    if valid is None:
        valid = torch.ones_like(starts)
    valid = valid.bool()
    prev_valid = torch.cat([torch.zeros_like(valid[:, :1]), valid[:, :-1]], dim=1)  # (B, T)
    starts = valid & (starts | ~prev_valid)
    ids = starts.long().cumsum(-1) - 1  # (B, T)
    return torch.where(valid, ids, -1)


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
    the trailing ``pad_id`` run, see :func:`~lmobjectives.objectives.base.padding_mask`)
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

    Units (``unit=``; ``"word"`` and ``"span"`` need ``word_ids``):

    * ``"token"``: tokens on their own.
    * ``"word"``: whole-word masking; all sub-tokens of a word share its
      selection, the 80/10/10 split stays per token (BERT). With
      ``"bernoulli"`` ``probability`` applies per **word** (HF
      ``whole_word_mask``), so about ``p`` of the tokens when word length is
      independent of selection. With ``"exact"`` the budget ``k`` counts
      **tokens** (BERT wwm): words are taken in random order while the running
      count stays ``<= k``. *Deviation*: BERT skips a word that would overflow
      and tries the next; we stop at the first one (a vectorised prefix), so a
      row may end up to one word short, and the first word is always taken
      (a row with a word always has a target, even if that word exceeds ``k``).
    * ``"span"``: SpanBERT (Joshi et al., 2020, section 3.1). Each row has a
      token budget: ``k`` above with ``"exact"`` (SpanBERT's code rounds up,
      we keep BERT's formula), ``Binomial(n, p)`` with ``"bernoulli"`` (capped
      by ``max_predictions`` if set). Candidate spans are drawn in sequence:
      start word uniform over the row's words (the paper; SpanBERT's code
      draws a token and moves to its word's start, which favours long words),
      length in words from Geometric(``span_geometric_p``) on
      ``1..max_span_length``, renormalised as in SpanBERT's code (mean 3.80
      words for 0.2 and 10), cut at the row's last word. Spans are taken in
      order while the union of their words fits the budget; the first span
      that does not fit still adds its new words left to right while they
      fit (SpanBERT cuts mid-word to hit the budget exactly), so a row may
      end up to one word short. An overlapping span adds only its new words
      (SpanBERT skips an anchor that is already masked). The 80/10/10
      decision is made once per span (SpanBERT makes it once per merged run
      of touching spans); a "random" span gets an independent random id per
      token; a token covered by two spans follows the first. Up to ``k``
      candidates are drawn per row; only when they run out (very large
      ``probability``) does a row end further below budget.

    ``word_ids`` ``(B, T)`` int: a **word** is a maximal run of consecutive
    maskable tokens with the same id ``>= 0`` (so HF ``word_ids()`` of a
    sentence pair, which restart at 0 after [SEP], work as they are); -1 marks
    tokens outside any word (never selected by the word and span units).
    :func:`word_ids_from_starts` builds them from a word-start flag.

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
    """

    vocab: Vocab  # vocabulary: mask_id is required; special_ids are never selected nor drawn
    probability: float = 0.15  # selection rate in (0, 1]: per unit (bernoulli) or budget fraction (exact, span)
    mask_fraction: float = 0.8  # share of selected tokens replaced by [MASK]
    random_fraction: float = 0.1  # share replaced by a random non-special id; the rest are kept
    unit: str = "token"  # "token" | "word" (whole-word masking) | "span" (SpanBERT)
    selection: str = "bernoulli"  # "bernoulli" (independent draws) | "exact" (fixed count per row, BERT)
    max_predictions: int | None = None  # cap on targets per row (BERT max_predictions_per_seq); budgeted modes only
    span_geometric_p: float = 0.2  # span: parameter of the geometric span length (SpanBERT p)
    max_span_length: int = 10  # span: longest span, in words (SpanBERT l_max)
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
        if self.max_predictions is not None and self.selection == "bernoulli" and self.unit != "span":
            raise ValueError(
                f"max_predictions={self.max_predictions!r} only applies to a budget (selection='exact' or unit='span'); "
                f"with selection='bernoulli' and unit={self.unit!r} there is none"
            )
        object.__setattr__(
            self, "span_geometric_p", check_probability(self.span_geometric_p, "span_geometric_p", low_open=True)
        )
        check_positive_int(self.max_span_length, "max_span_length")
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
                raise ValueError("word_ids was given but unit='token'; set unit='word' or unit='span' to use it")
            if self.selection == "bernoulli":
                batch = self._token_bernoulli(input_ids, real, special, ordinary, generator)
                if batch is not None:
                    return batch
        maskable = real & ~special.index_select(0, input_ids.reshape(-1)).view_as(input_ids)  # (B, T)

        if self.unit != "token":
            if word_ids is None:
                raise ValueError(
                    f"unit={self.unit!r} needs word_ids (B, T): same id = same word, -1 = no word; "
                    "build them with lmobjectives.objectives.mlm.word_ids_from_starts (the byte tokenizer derives "
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
            pick = torch.randint(ordinary.numel(), pos.shape, generator=generator, device=flat.device)  # (M,)
            new = torch.where(to_random, ordinary.index_select(0, pick), new)
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
                pick = torch.randint(ordinary.numel(), (count,), generator=generator, device=input_ids.device)
                corrupted.masked_scatter_(rnd, ordinary.index_select(0, pick))
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
            k = self._budget(maskable.sum(-1))  # (B,) token budget; at most k words are taken
            top = min(int(k.max()), W)
            keys = torch.where(exists, u, 2.0)  # (B, W)
            order = keys.topk(top, dim=-1, largest=False).indices  # (B, top) words in random order
            take = length.gather(1, order).cumsum(-1) <= k[:, None]  # (B, top) prefix that fits the budget
            take[:, 0] = True  # the first word always (BERT would try smaller words instead)
            word_sel = torch.zeros_like(exists).scatter_(1, order, take) & exists
        selected = maskable & word_sel.gather(1, index)
        split = torch.rand(B, T, generator=generator, device=device)  # per token (BERT wwm)
        return selected, split, 1.0

    def _select_spans(self, maskable: torch.Tensor, word_ids: torch.Tensor, generator):
        B, T = maskable.shape
        device = maskable.device
        index, length, n_words = self._words(maskable, word_ids)
        W = length.shape[1]
        if self.selection == "exact":
            budget = self._budget(maskable.sum(-1))  # (B,)
        else:
            drawn, _ = _bernoulli_at_least_one(maskable, self.probability, generator)  # (B, T)
            budget = drawn.sum(-1)  # (B,) ~ Binomial(n, p)
            if self.max_predictions is not None:
                budget = budget.clamp(max=self.max_predictions)
        # candidate spans, in order: start word uniform, length ~ truncated geometric (in words)
        K = max(int(budget.max()), 1)  # every span that is taken adds >= 1 token, so K suffice unless they overlap
        L = self.max_span_length
        cand_u = torch.rand(B, K, 2, generator=generator, device=device)  # (B, K, start|length)
        start = (cand_u[..., 0] * n_words[:, None]).long()  # (B, K) word slot
        span_len = _truncated_geometric(cand_u[..., 1], self.span_geometric_p, L)  # (B, K) words
        end = torch.minimum(start + span_len, n_words[:, None])  # (B, K) exclusive, cut at the last word
        words = start[..., None] + torch.arange(L, device=device)  # (B, K, L)
        target = torch.where(words < end[..., None], words, W).view(B, K * L)  # W: a spare slot for "none"
        cand = torch.arange(K, device=device).repeat_interleave(L).expand(B, K * L)
        first = torch.full((B, W + 1), K, dtype=torch.long, device=device)
        first.scatter_reduce_(1, target, cand, reduce="amin")  # first span covering each word slot
        first = first[:, :W]  # (B, W); K = uncovered
        # spans are taken in order while the union of their words fits the budget
        new_cost = torch.zeros(B, K + 1, dtype=torch.long, device=device).scatter_add_(1, first, length)[:, :K]
        cum = new_cost.cumsum(-1)  # (B, K) tokens covered by spans 0..j
        cross = (cum <= budget[:, None]).sum(-1, keepdim=True)  # (B, 1) first span that does not fit (K if none)
        base = (cum - new_cost).gather(1, cross.clamp(max=K - 1))  # (B, 1) tokens before it
        # ... and of the span that does not fit, its new words left to right while they fit
        is_cross = first == cross  # (B, W); never true when cross = K (uncovered words have first = K)
        cross_len = torch.where(is_cross, length, 0)
        within = cross_len.cumsum(-1) - cross_len  # (B, W) its tokens in earlier words
        fits = base + within + length <= budget[:, None]
        very_first = (cross == 0) & (budget[:, None] > 0) & (within == 0)  # anchor word of span 0: always taken
        word_sel = (first < cross) | (is_cross & (fits | very_first))  # (B, W)
        span_u = torch.rand(B, K + 1, generator=generator, device=device)  # one replacement draw per span
        word_split = torch.where(word_sel, span_u.gather(1, first), 2.0)  # (B, W); 2 = not selected
        split = word_split.gather(1, index)  # (B, T)
        selected = maskable & (split < 2.0)
        return selected, split, 1.0
