"""Target selection for masked-LM (:class:`~lmobjectives.objectives.mlm.MaskedLM`): one strategy per unit x selection.

A strategy takes the batch as :class:`Tokens` and a generator and returns a :class:`Selection`: which
places are targets, and one uniform per place that the 80/10/10 replacement reads. The strategies:

* :class:`BernoulliTokens`: each maskable token with probability p, drawn sparsely as geometric gaps;
* :class:`ExactTokens`: exactly the row's budget of tokens, uniformly (BERT);
* :class:`BernoulliWords`: each whole word with probability p (HF ``whole_word_mask``);
* :class:`ExactWords`: whole words in random order into the row's token budget (BERT wwm);
* :class:`Spans`: SpanBERT's geometric spans of whole words into the budget;
* :class:`NGrams`: ALBERT's n-grams of whole words into the budget.

A budget (:class:`ExactBudget`, :class:`BinomialBudget`) is a number of tokens per row.
:func:`greedy_fill` fills it from ordered candidates as BERT's, SpanBERT's and ALBERT's loops do
(an overflowing candidate is skipped and the scan goes on), vectorised.

Everything is vectorised over the batch: no Python loop over rows, words or tokens, and memory stays
``O(B * T)`` (spans: ``O(B * T * max_span_length)`` at most, never ``B * T * T``). Budget filling scans
candidates in a few vectorised rounds, never a loop per row. Random draws come only from the generator
passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._span_lengths import ngram_cdf, ngram_lengths, truncated_geometric

__all__ = [
    "BernoulliTokens", "BernoulliWords", "BinomialBudget", "ExactBudget", "ExactTokens", "ExactWords", "NGrams",
    "SPARE_CANDIDATES", "Selection", "Spans", "Tokens",
    "at_least_one", "bernoulli_at_least_one", "bernoulli_positions", "greedy_fill", "word_slots",
]  # fmt: skip

SPARE_CANDIDATES = 8  # spans: candidates drawn beyond the largest budget, for the ones that add nothing
_TAIL_WINDOW = 16  # candidates a budget-filling round looks at per row


# ----------------------------------------------------------------------------- input, output


@dataclass(frozen=True)
class Tokens:
    """One checked batch, as the strategies see it."""

    input_ids: torch.Tensor  # (B, T) long
    real: torch.Tensor  # (B, T) bool: not padding
    special: torch.Tensor  # (V,) bool: special-id lookup
    word_ids: torch.Tensor | None  # (B, T) long, -1 = no word; None for unit="token"

    def maskable(self) -> torch.Tensor:
        """(B, T) bool: real, not special and (with word ids) in a word; ``ValueError`` if no token is."""
        ids = self.input_ids
        maskable = self.real & ~self.special.index_select(0, ids.reshape(-1)).view_as(ids)  # (B, T)
        if self.word_ids is not None:
            maskable = maskable & (self.word_ids >= 0)
        if not _any(maskable):
            raise ValueError(
                "MaskedLM: the batch has nothing to mask (every token is padding or special"
                + ("" if self.word_ids is None else ", or has word id -1")
                + "); refusing to return a batch with no target"
            )
        return maskable


@dataclass(frozen=True)
class Selection:
    """The targets of one batch and the uniform that splits each into [MASK] / random / keep.

    Dense (``positions`` None): ``selected`` and ``split`` are (B, T). Sparse: ``positions`` (M,) are
    flat indices into the (B * T,) batch and ``selected``, ``split`` (M,) describe those places only.
    Given selection, ``split / scale`` is uniform on [0, 1).
    """

    selected: torch.Tensor  # (B, T) or (M,) bool
    split: torch.Tensor  # same shape, float
    scale: float = 1.0
    positions: torch.Tensor | None = None  # (M,) long, sorted; None = dense

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T) at the places, shaped like ``selected``: ``x`` itself (dense) or its (M,) values (sparse)."""
        return x if self.positions is None else x.reshape(-1).index_select(0, self.positions)

    def scatter(self, values: torch.Tensor, like: torch.Tensor, fill: int | None = None) -> torch.Tensor:
        """(B, T): ``values`` (shaped like ``selected``) at the places, ``like`` (or ``fill``) elsewhere.

        Dense: ``values`` itself. Sparse: a new tensor, one write of the M places.
        """
        if self.positions is None:
            return values
        flat = like.reshape(-1)  # (B*T,)
        out = flat.clone() if fill is None else torch.full_like(flat, fill)
        return out.index_put_((self.positions,), values).view_as(like)

    def has_targets(self, shape: torch.Size) -> torch.Tensor:
        """(B,) bool: rows of the (B, T) batch with a selected place."""
        if self.positions is None:
            return _any_per_row(self.selected)
        B, T = shape
        rows = torch.zeros(B, dtype=torch.long, device=self.selected.device)
        return rows.index_add_(0, self.positions // T, self.selected.long()) > 0


def _any_per_row(x: torch.Tensor) -> torch.Tensor:
    """``x.any(-1)`` for a bool (B, T) tensor (a uint8 max: several times faster on CPU)."""
    return x.view(torch.uint8).amax(-1).bool()


def _any(x: torch.Tensor) -> bool:
    """``bool(x.any())`` for a bool tensor (host sync)."""
    return bool(x.view(torch.uint8).amax())


# ----------------------------------------------------------------------------- Bernoulli draws


def bernoulli_positions(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Sorted positions in ``[0, n)`` of i.i.d. Bernoulli(``p``) successes, drawn as geometric gaps.

    The gap between successive successes of a Bernoulli(p) sequence is Geometric(p) on ``{1, 2, ...}``,
    ``floor(log(1 - u) / log(1 - p)) + 1`` for a uniform ``u``; cumulative gaps are the success
    positions. This draws about ``n * p`` uniforms (float64) instead of ``n``.
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


def at_least_one(u: torch.Tensor, eligible: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Uniforms ``u`` (B, T) adjusted so that ``u < p`` holds at one ``eligible`` place at least (if any).

    An exact draw from i.i.d. Bernoulli(p) over the eligible places *conditioned on at least one
    success*: the first success (in row-major order) has the truncated geometric law, the places before
    it fail, it succeeds, the places after it keep their own draw. The successful place gets ``u * p``,
    so ``u / p`` stays uniform given selection (the replacement split reads it). Callers use it only
    after a plain draw came out empty; a plain draw, else this, is again exactly the conditional law.
    """
    if p >= 1.0:
        return u
    rank = eligible.flatten().cumsum(0).view_as(eligible)  # (B, T) 1-based rank among eligible places
    count = rank[-1, -1]  # number of eligible places (0-dim, stays on device)
    v = torch.rand((), generator=generator, device=u.device, dtype=torch.float64)
    first = truncated_geometric(v, p, count)  # 0-dim long
    before = eligible & (rank < first)
    at = eligible & (rank == first)
    return torch.where(before, 1.0, torch.where(at, u * p, u))


def bernoulli_at_least_one(
    eligible: torch.Tensor, p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(selected, u)``, each like ``eligible`` (B, N): Bernoulli(p) over ``eligible``, conditioned on >= 1 success.

    A plain draw, redrawn with :func:`at_least_one` when it came out empty: together exactly the
    conditional law. ``selected = eligible & (u < p)``; ``u / p`` is uniform given selection.
    """
    u = torch.rand(eligible.shape, generator=generator, device=eligible.device)
    selected = eligible & (u < p)
    if not _any(selected):
        u = at_least_one(torch.rand(eligible.shape, generator=generator, device=eligible.device), eligible, p, generator)
        selected = eligible & (u < p)
    return selected, u


# ----------------------------------------------------------------------------- budgets (tokens per row)


@dataclass(frozen=True)
class ExactBudget:
    """BERT's count per row: ``min(max_predictions, max(1, round(n * probability)))``, 0 where ``n = 0``.

    ``n`` is the row's number of maskable tokens; ``round`` halves to even, as Python 3's.
    """

    probability: float
    max_predictions: int | None

    def __call__(self, maskable: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B,) long from ``maskable`` (B, T); draws nothing."""
        n = maskable.sum(-1)  # (B,)
        k = torch.round(n.double() * self.probability).long().clamp(min=1)  # (B,)
        if self.max_predictions is not None:
            k = k.clamp(max=self.max_predictions)
        return torch.where(n > 0, k, 0)


@dataclass(frozen=True)
class BinomialBudget:
    """``Binomial(n, probability)`` tokens per row (the count of a Bernoulli draw per maskable token,
    conditioned on >= 1 in the batch), capped by ``max_predictions`` if set."""

    probability: float
    max_predictions: int | None

    def __call__(self, maskable: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """(B,) long from ``maskable`` (B, T)."""
        drawn, _ = bernoulli_at_least_one(maskable, self.probability, generator)  # (B, T)
        budget = drawn.sum(-1)  # (B,)
        if self.max_predictions is not None:
            budget = budget.clamp(max=self.max_predictions)
        return budget


Budget = ExactBudget | BinomialBudget


# ----------------------------------------------------------------------------- token units


@dataclass(frozen=True)
class BernoulliTokens:
    """Each maskable token independently with probability ``probability``, touching only ~p·B·T places.

    Candidates are Bernoulli(p) over all ``B * T`` positions (:func:`bernoulli_positions`); keeping the
    maskable ones gives each maskable token an independent Bernoulli(p), the same law as a draw per
    maskable token. One more uniform per candidate makes the [MASK] / random / keep split (sparse
    :class:`Selection`). When no candidate is maskable, the batch is redrawn densely from the law
    conditioned on at least one target (:func:`bernoulli_at_least_one`): one uniform ``u`` per token,
    selected if ``u < p``, split on ``u / p``. A row may get no target (no token is forced, as in HF).
    """

    probability: float

    def __call__(self, tokens: Tokens, generator: torch.Generator | None) -> Selection:
        flat = tokens.input_ids.reshape(-1)  # (B*T,)
        pos = bernoulli_positions(flat.numel(), self.probability, generator, flat.device)  # (M,) candidates
        original = flat.index_select(0, pos)  # (M,)
        keep = tokens.real.reshape(-1).index_select(0, pos) & ~tokens.special.index_select(0, original)  # (M,)
        if pos.numel() > 0 and _any(keep):
            split = torch.rand(pos.shape, generator=generator, device=flat.device)  # (M,)
            return Selection(keep, split, positions=pos)
        selected, u = bernoulli_at_least_one(tokens.maskable(), self.probability, generator)  # (B, T) each
        return Selection(selected, u, scale=self.probability)


@dataclass(frozen=True)
class ExactTokens:
    """Exactly ``budget`` tokens per row, uniformly among its maskable tokens (BERT)."""

    budget: ExactBudget

    def __call__(self, tokens: Tokens, generator: torch.Generator | None) -> Selection:
        maskable = tokens.maskable()  # (B, T)
        B, T = maskable.shape
        device = maskable.device
        u = torch.rand(B, T, generator=generator, device=device)  # (B, T)
        k = self.budget(maskable, generator)  # (B,)
        top = int(k.max())
        keys = torch.where(maskable, u, 2.0)  # (B, T); non-maskable never among the k smallest (k <= n)
        first = keys.topk(top, dim=-1, largest=False).indices  # (B, top) the top smallest keys, in order
        take = torch.arange(top, device=device) < k[:, None]  # (B, top)
        selected = torch.zeros_like(maskable).scatter_(1, first, take)  # (B, T)
        split = torch.rand(B, T, generator=generator, device=device)  # (B, T)
        return Selection(selected, split)


# ----------------------------------------------------------------------------- word units


def word_slots(maskable: torch.Tensor, word_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Words as slots: slot of each token (B, T), tokens per slot (B, W), words per row (B,).

    A word is a maximal run of maskable tokens with one id; slots count words from 0 in each row;
    ``W`` is the most words in a row. Tokens off words get slot 0 (callers mask them out).
    """
    w = torch.where(maskable, word_ids, -1)  # (B, T)
    start = maskable.clone()
    start[:, 1:] &= w[:, 1:] != w[:, :-1]  # (B, T) first token of a word
    index = start.cumsum(-1)  # (B, T) 1-based slot at word tokens
    n_words = index[:, -1]  # (B,)
    W = max(int(n_words.max()), 1)
    index = (index - 1).clamp_(min=0)  # (B, T) slot of each token
    length = torch.zeros(index.shape[0], W, dtype=torch.long, device=index.device)
    length.scatter_add_(1, index, maskable.long())  # (B, W) tokens per word
    return index, length, n_words


def _per_token(maskable, word_sel, index, generator) -> Selection:
    """Tokens of the selected words (``word_sel`` (B, W)), with one split uniform per token (BERT wwm, ALBERT)."""
    selected = maskable & word_sel.gather(1, index)  # (B, T)
    split = torch.rand(maskable.shape, generator=generator, device=maskable.device)  # (B, T)
    return Selection(selected, split)


@dataclass(frozen=True)
class BernoulliWords:
    """Each whole word independently with probability ``probability`` (HF ``whole_word_mask``); 80/10/10 per token.

    About ``probability`` of the tokens are selected when a word's length is independent of its selection.
    """

    probability: float

    def __call__(self, tokens: Tokens, generator: torch.Generator | None) -> Selection:
        maskable = tokens.maskable()  # (B, T)
        index, length, n_words = word_slots(maskable, tokens.word_ids)
        exists = torch.arange(length.shape[1], device=maskable.device) < n_words[:, None]  # (B, W) slots in use
        word_sel, _ = bernoulli_at_least_one(exists, self.probability, generator)  # (B, W)
        return _per_token(maskable, word_sel, index, generator)


@dataclass(frozen=True)
class ExactWords:
    """Whole words into the row's token budget (BERT wwm): words in random order, each taken when it fits
    in what is left; one that would overflow is skipped and the scan goes on. 80/10/10 per token."""

    budget: ExactBudget

    def __call__(self, tokens: Tokens, generator: torch.Generator | None) -> Selection:
        maskable = tokens.maskable()  # (B, T)
        index, length, n_words = word_slots(maskable, tokens.word_ids)
        B, W = length.shape
        exists = torch.arange(W, device=maskable.device) < n_words[:, None]  # (B, W) slots in use
        u = torch.rand(B, W, generator=generator, device=maskable.device)  # (B, W) one uniform per word
        budget = self.budget(maskable, generator)  # (B,)
        order = torch.where(exists, u, 2.0).argsort(-1)  # (B, W) words in random order, missing slots last
        ranked = exists.gather(1, order)  # (B, W)
        words = torch.where(ranked, order, W)[..., None]  # (B, K=W, L=1) candidates: one word each
        word_sel, _ = greedy_fill(words, length, budget, mode="new")
        return _per_token(maskable, word_sel, index, generator)


@dataclass(frozen=True)
class Spans:
    """SpanBERT spans of whole words into the row's token budget (Joshi et al., 2020, section 3.1).

    Candidate spans are drawn in sequence: start word uniform over the row's words, length in words
    from Geometric(``geometric_p``) on ``1..max_length`` (:func:`truncated_geometric`), cut at the row's
    last word. Each candidate adds its not yet masked words left to right while they fit in what is left
    of the budget; one whose first new word does not fit adds nothing and the next is tried.
    ``budget + SPARE_CANDIDATES`` candidates are drawn per row; only when they run out does a row end
    below budget. The 80/10/10 split is drawn once per span (all its tokens share one uniform); a
    "random" span gets an independent random id per token.
    """

    budget: Budget
    geometric_p: float
    max_length: int

    def __call__(self, tokens: Tokens, generator: torch.Generator | None) -> Selection:
        maskable = tokens.maskable()  # (B, T)
        B, T = maskable.shape
        device = maskable.device
        index, length, n_words = word_slots(maskable, tokens.word_ids)
        budget = self.budget(maskable, generator)  # (B,)
        K = int(budget.max()) + SPARE_CANDIDATES  # a span that is taken adds >= 1 token; spares for skipped ones
        L = self.max_length
        cand_u = torch.rand(B, K, 2, generator=generator, device=device)  # (B, K, start|length)
        start = (cand_u[..., 0] * n_words[:, None]).long()  # (B, K) word slot
        span_len = truncated_geometric(cand_u[..., 1], self.geometric_p, L)  # (B, K) words
        end = torch.minimum(start + span_len, n_words[:, None])  # (B, K) exclusive, cut at the last word
        slots = start[..., None] + torch.arange(L, device=device)  # (B, K, L)
        words = torch.where(slots < end[..., None], slots, length.shape[1])  # (B, K, L); W = no word
        word_sel, owner = greedy_fill(words, length, budget, mode="new")  # (B, W) each
        span_u = torch.rand(B, K + 1, generator=generator, device=device)  # (B, K+1) one draw per span
        word_split = torch.where(word_sel, span_u.gather(1, owner), 2.0)  # (B, W); 2 = not selected
        split = word_split.gather(1, index)  # (B, T)
        return Selection(maskable & (split < 2.0), split)


@dataclass(frozen=True)
class NGrams:
    """ALBERT n-grams of whole words into the row's token budget (Lan et al., 2020, section 4.1).

    Every word starts one candidate of ``n`` whole words, ``P(n)`` proportional to ``1/n`` on
    ``1..max_ngram`` (:func:`ngram_cdf`), cut at the row's last word; candidates are scanned in random
    order; one that would overflow is shortened to its longest prefix that fits, one that touches an
    already masked word is skipped. 80/10/10 per token.
    """

    budget: Budget
    max_ngram: int
    _cdf: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # per device: (max_ngram,) law

    def __call__(self, tokens: Tokens, generator: torch.Generator | None) -> Selection:
        maskable = tokens.maskable()  # (B, T)
        device = maskable.device
        index, length, n_words = word_slots(maskable, tokens.word_ids)
        B, W = length.shape
        m = self.max_ngram
        budget = self.budget(maskable, generator)  # (B,)
        slot = torch.arange(W, device=device)
        exists = slot < n_words[:, None]  # (B, W)
        u = torch.rand(B, W, 2, generator=generator, device=device)  # (B, W, order|n) per start word
        order = torch.where(exists, u[..., 0], 2.0).argsort(-1)  # (B, W) start words in random order
        rank = torch.empty_like(order).scatter_(1, order, slot.expand(B, W))  # (B, W) position in that order
        n = ngram_lengths(u[..., 1], self._law(device))  # (B, W) P(n) ~ 1/n
        n = torch.minimum(n, (n_words[:, None] - slot).clamp(min=0))  # cut at the row's last word (ALBERT)
        taken = _first_come_intervals(n, rank, exists, m)  # (B, W) taken if no earlier overlapping n-gram is
        starts = _cat_zero(length.cumsum(-1))  # (B, W+1) tokens before each slot
        cost = starts.gather(1, slot + n) - starts[:, :W]  # (B, W) tokens of each full n-gram
        ranked = exists.gather(1, order)  # (B, W)
        words = order[..., None] + torch.arange(m, device=device)  # (B, W, m) candidate j = n-gram at order[j]
        words = torch.where(torch.arange(m, device=device) < n.gather(1, order)[..., None], words, W)
        words = torch.where(ranked[..., None], words, W)
        bulk = (taken.gather(1, order), cost.gather(1, order))
        word_sel, _ = greedy_fill(words, length, budget, mode="all", bulk=bulk)
        return _per_token(maskable, word_sel, index, generator)

    def _law(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._cdf:
            self._cdf[key] = ngram_cdf(self.max_ngram, device)
        return self._cdf[key]


# ----------------------------------------------------------------------------- budget filling


def _cat_zero(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, N) with a column of zeros in front: (B, N+1)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x], dim=1)


def _first_come_intervals(n: torch.Tensor, rank: torch.Tensor, exists: torch.Tensor, m: int) -> torch.Tensor:
    """Which n-grams a first-come scan in ``rank`` order takes when overlaps are skipped (budget aside): (B, W) bool.

    N-gram ``a`` covers word slots ``a .. a + n[a] - 1`` (``n`` (B, W) <= m). Scanning candidates by
    increasing ``rank`` (B, W), a candidate is taken unless it overlaps one taken before it (ALBERT skips
    a candidate with a covered index). Resolved without a scan: each round decides every candidate whose
    earlier overlapping neighbours (within ``m - 1`` slots) are all decided; the earliest undecided
    candidate is always decided, and rounds are few (a chain of increasing ranks among overlapping
    neighbours).
    """
    B, W = n.shape
    live = exists & (n > 0)  # (B, W)

    def shift(x: torch.Tensor, d: int, fill) -> torch.Tensor:  # x[:, a + d], ``fill`` outside the row
        out = torch.full_like(x, fill)
        if d > 0:
            out[:, : W - d] = x[:, d:]
        else:
            out[:, -d:] = x[:, : W + d]
        return out

    earlier = []  # (d, mask (B, W)): slot a + d holds an overlapping candidate scanned before a
    for d in range(1, m):
        if d >= W:
            break
        left = live & shift(live, -d, False) & (shift(n, -d, 0) > d) & (shift(rank, -d, W) < rank)
        right = live & shift(live, d, False) & (n > d) & (shift(rank, d, W) < rank)
        earlier += [(-d, left), (d, right)]
    status = torch.where(live, 0, 2).to(torch.int8)  # (B, W) 0 undecided, 1 taken, 2 skipped
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


def greedy_fill(
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
    nothing (every word longer than the budget) takes its first candidate's first word (BERT and
    ALBERT give such a row no target: ``docs/deviations.md``).

    Vectorised: a **bulk** step takes every candidate before the first one that does not fit
    whole (for ``"new"``, from the first candidate covering each word; for ``"all"``, ``bulk`` =
    (taken at full length by the overlap scan, full cost), both (B, K) in candidate order), then each
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
    # a row with a budget and words that took nothing: its first candidate's first word (see docs/deviations.md)
    empty = (budget > 0) & ~word_sel.any(-1) & (words[:, 0, 0] < W)  # (B,)
    if _any(empty):
        w0 = torch.where(empty, words[:, 0, 0], W)[:, None]  # (B, 1)
        covered.scatter_(1, w0, True)
        owner.scatter_(1, w0, torch.zeros_like(w0))
        word_sel = covered[:, :W].clone()
    return word_sel, owner[:, :W]
