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
    "BernoulliTokens",
    "BernoulliWords",
    "BinomialBudget",
    "ExactBudget",
    "ExactTokens",
    "ExactWords",
    "NGrams",
    "SPARE_CANDIDATES",
    "Selection",
    "Spans",
    "Tokens",
    "at_least_one",
    "bernoulli_at_least_one",
    "bernoulli_positions",
    "greedy_fill",
    "word_slots",
]

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
        u = at_least_one(
            torch.rand(eligible.shape, generator=generator, device=eligible.device), eligible, p, generator
        )
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
    on = maskable.long()  # (B, T)
    w = (word_ids + 1) * on - 1  # (B, T) word id at maskable tokens, -1 elsewhere (a where, without its cost)
    start = maskable.clone()
    start[:, 1:] &= w[:, 1:] != w[:, :-1]  # (B, T) first token of a word
    index = start.long().cumsum(-1)  # (B, T) 1-based slot at word tokens (a long cumsum: a bool one is slow on CPU)
    n_words = index[:, -1].clone()  # (B,)
    W = max(int(n_words.max()), 1)
    index = (index - 1).clamp_(min=0)  # (B, T) slot of each token
    length = torch.zeros(index.shape[0], W, dtype=torch.long, device=index.device)
    length.scatter_add_(1, index, on)  # (B, W) tokens per word
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
        key = _order_keys(u, exists)  # (B, W) the words' order, as u's argsort: no sort
        word_sel = _ordered_scan(key, exists.long(), length, budget, m=1)  # (B, W)
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
        W = length.shape[1]

        def spans(rows: slice | torch.Tensor, C: int) -> torch.Tensor:  # (R, C, L) word slots of the first C spans
            slots = start[rows, :C, None] + torch.arange(L, device=device)
            return torch.where(slots < end[rows, :C, None], slots, W)  # W = no word

        # a span that is taken adds >= 1 token, so K = budget + spares always suffices, but a span adds
        # about its mean length: scan the first C, and all K only in the rows that get that far
        C = min(K, SPARE_CANDIDATES + math.ceil(2.0 * (K - SPARE_CANDIDATES) / _mean_words(self.geometric_p, L)))
        covered, owner, remaining, pointer = _fill(spans(slice(None), C), length, budget, mode="new")
        owner = torch.where(owner == C, K, owner)  # K: no span
        if C < K:
            redo = ((remaining > 0) & (pointer >= C)).nonzero().flatten()  # (R,) rows that ran out of spans
            if redo.numel() > 0:
                c, o, _, _ = _fill(spans(redo, K), length[redo], budget[redo], mode="new")
                covered[redo], owner[redo] = c, o
        word_sel, owner = _first_word_rule(covered, owner, budget, torch.where(end[:, 0] > start[:, 0], start[:, 0], W))
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
        key = _order_keys(u[..., 0], exists)  # (B, W) start words in random order (u's argsort, no sort)
        n = ngram_lengths(u[..., 1], self._law(device))  # (B, W) P(n) ~ 1/n
        n = torch.minimum(n, (n_words[:, None] - slot).clamp(min=0))  # cut at the row's last word (ALBERT)
        # overlaps are resolved only among the first candidates in key order; the scan's rounds go on past them
        share = (2.0 * budget.double() / maskable.sum(-1).clamp(min=1) + 16.0 / n_words.clamp(min=1)).clamp(max=1.0)
        prefix = (share * 16777216.0).long() << max(W - 1, 1).bit_length()  # (B,) a key: about that share of starts
        word_sel = _ordered_scan(key, n, length, budget, m=m, prefix=prefix)  # (B, W)
        return _per_token(maskable, word_sel, index, generator)

    def _law(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._cdf:
            self._cdf[key] = ngram_cdf(self.max_ngram, device)
        return self._cdf[key]


# ----------------------------------------------------------------------------- budget filling


def _mean_words(p: float, n: int) -> float:
    """Mean of :func:`truncated_geometric`'s law, Geometric(p) on ``1..n``."""
    q = 1.0 - p
    return sum(k * p * q ** (k - 1) for k in range(1, n + 1)) / (1.0 - q**n) if p < 1.0 else 1.0


def _first_come_intervals(n: torch.Tensor, key: torch.Tensor, live: torch.Tensor, m: int) -> torch.Tensor:
    """Which n-grams a first-come scan in ``key`` order takes when overlaps are skipped (budget aside): (B, W) bool.

    N-gram ``a`` covers word slots ``a .. a + n[a] - 1`` (``n`` (B, W) <= m). Scanning the ``live``
    candidates by increasing ``key`` (B, W), a candidate is taken unless it overlaps one taken before it
    (ALBERT skips a candidate with a covered index). Resolved without a scan: each round decides every
    candidate whose earlier overlapping neighbours (within ``m - 1`` slots) are all decided; the earliest
    undecided candidate is always decided, and rounds are few (a chain of increasing keys among
    overlapping neighbours).
    """
    B, W = n.shape
    pad = m - 1

    def padded(x: torch.Tensor, fill) -> torch.Tensor:  # (B, W + 2 pad): slot a at a + pad
        edge = x.new_full((B, pad), fill)
        return torch.cat([edge, x, edge], 1)

    live_p, n_p, key_p = padded(live, False), padded(n, 0), padded(key, _NO_KEY)
    earlier = []  # (d, mask (B, W)): slot a + d holds an overlapping candidate scanned before a
    for d in range(1, min(m, W)):
        at = slice(pad - d, pad - d + W)  # slot a - d
        left = live & live_p[:, at] & (n_p[:, at] > d) & (key_p[:, at] < key)
        at = slice(pad + d, pad + d + W)  # slot a + d
        right = live & live_p[:, at] & (n > d) & (key_p[:, at] < key)
        earlier += [(-d, left), (d, right)]
    status_p = padded(torch.where(live, 0, 2).to(torch.int8), 2)  # (B, W+2pad) 0 undecided, 1 taken, 2 skipped
    status = status_p[:, pad : pad + W]  # a view
    while True:
        blocked = torch.zeros_like(live)
        pending = torch.zeros_like(live)
        for d, mask in earlier:
            s = status_p[:, pad + d : pad + d + W]
            blocked |= mask & (s == 1)
            pending |= mask & (s == 0)
        undecided = status == 0
        status.masked_fill_(undecided & blocked, 2)
        status.masked_fill_(undecided & ~blocked & ~pending, 1)
        if not _any(status == 0):
            return status == 1


_NO_KEY = torch.iinfo(torch.long).max  # the key of a missing slot: after every real one
_ROUND_BUCKETS = 16  # key buckets in one window of the scan's rounds


def _order_keys(u: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
    """(B, W) int64 keys that order each row's existing slots as ``u.argsort(-1)`` does, without sorting.

    ``key = (u * 2**24) * 2**s + slot`` (``2**s >= W``): torch's float32 uniforms are multiples of
    2**-24, so the key keeps their order exactly and breaks ties by slot; missing slots get ``_NO_KEY``.
    """
    B, W = u.shape
    shift = max(W - 1, 1).bit_length()
    slot = torch.arange(W, device=u.device)
    key = ((u * 16777216.0).long() << shift) + slot  # (B, W)
    return key.masked_fill_(~exists, _NO_KEY)


def _ordered_scan(
    key: torch.Tensor,
    n: torch.Tensor,
    length: torch.Tensor,
    budget: torch.Tensor,
    *,
    m: int,
    prefix: torch.Tensor | None = None,
) -> torch.Tensor:
    """ALBERT's (and, with ``m = 1``, BERT wwm's) budget scan over n-grams in key order, without a sort: (B, W) bool.

    Candidate ``a`` of a row is the n-gram of word slots ``a .. a + n[a] - 1`` (``n`` (B, W) in
    ``0..m``, 0 = no candidate), scanned by increasing ``key`` (:func:`_order_keys`) with the remaining
    budget ``r`` (``budget`` (B,) tokens, ``length`` (B, W) tokens per word): while ``r > 0``, the
    candidate is shortened to its longest prefix that fits in ``r``, and taken unless that prefix is
    empty or holds a covered word (ALBERT's ``create_masked_lm_predictions``; with one-word candidates,
    BERT's whole-word scan: a word that overflows is skipped, the scan goes on). A row with a budget
    and candidates that took nothing takes its first candidate's first word (``docs/deviations.md``).

    Vectorised in three steps, each exact:

    * **overlaps** (``m > 1``): which candidates the scan takes if the budget never binds
      (:func:`_first_come_intervals`), among the candidates whose key is below ``prefix`` (B,) (default:
      all). A candidate's fate depends only on earlier ones, so a key prefix is resolved exactly.
    * **bulk**: keys are cut into buckets (one to two per slot); a bucket is *safe* when every candidate
      in it still fits whole, whatever its place in the bucket: the tokens taken up to the end of the
      bucket plus the largest candidate skipped in it stay within budget. Up to the first unsafe
      bucket the budgeted scan is the unbudgeted one, so its candidates are taken from one cumulative
      sum over buckets (a counting sort; no per-row sort).
    * **rounds**: from there on, each round takes, in every row still filling, the first candidate (the
      smallest key after the last one scanned) that the scan would take. A candidate that cannot be
      taken now never can (``r`` only falls, the covered words only grow), so this is the scan itself;
      rounds are few because the bulk leaves at most a bucket and a candidate's worth of budget.
    """
    B, W = n.shape
    device = n.device
    pad = m - 1
    lx = torch.cat([length, length.new_zeros(B, pad)], 1) if pad else length  # (B, W+m-1)
    part = [lx[:, :W]]  # part[d-1]: tokens of the first d words of each candidate (ignoring n)
    for d in range(1, m):
        part.append(part[-1] + lx[:, d : d + W])
    cost = part[0] * (n >= 1).long()  # (B, W) tokens of each full candidate (same-dtype products: fast on CPU)
    for d in range(2, m + 1):
        cost += (part[d - 1] - part[d - 2]) * (n >= d).long()
    live = n > 0  # (B, W)
    if prefix is not None:
        live &= key < prefix[:, None]
    taken_c = _first_come_intervals(n, key, live, m) if m > 1 else live  # (B, W)

    # bulk: buckets of the key (about two per slot), safe while everything in them fits whole
    key_bits = 24 + max(W - 1, 1).bit_length()
    nb = min(max(W - 1, 1).bit_length(), 24)
    NB = 1 << nb
    bucket = (key >> (key_bits - nb)).clamp_(max=NB)  # (B, W); NB: missing
    paid = (cost * taken_c.long()).int()  # (B, W) int32: half the memory traffic
    hist = torch.zeros(B, NB + 1, dtype=torch.int32, device=device).scatter_add_(1, bucket, paid)  # (B, NB+1)
    cum = hist.cumsum(-1, dtype=torch.int32)  # (B, NB+1) tokens taken up to the end of each bucket
    if m > 1:  # a skipped candidate may be shortened to fit when the budget binds: its bucket is unsafe
        skipped = (cost * ((n > 0) & ~taken_c).long()).int()  # (B, W)
        cum_or_skip = torch.zeros_like(hist).scatter_reduce_(1, bucket, skipped, reduce="amax") + cum
        unsafe = cum_or_skip > budget[:, None]
    else:
        unsafe = cum > budget[:, None]  # (B, NB+1)
    unsafe[:, NB] = True
    if prefix is not None:  # from the bucket that holds the prefix's end, the overlap step knows nothing
        unsafe |= torch.arange(NB + 1, device=device) >= (prefix >> (key_bits - nb)).clamp(max=NB)[:, None]
    stop = unsafe.to(torch.uint8).argmax(-1)  # (B,) first unsafe bucket
    taken = taken_c & (bucket < stop[:, None])  # (B, W)
    remaining = budget - cum.gather(1, (stop - 1).clamp(min=0)[:, None])[:, 0] * (stop > 0).long()  # (B,)
    after = stop << (key_bits - nb)  # (B,) the scan goes on with the keys from here
    covered = torch.zeros(B, W + pad, dtype=torch.bool, device=device)  # (B, W+m-1) words taken
    for e in range(m):
        covered[:, e : e + W] |= taken & (n > e)

    # rounds: every row still filling takes the next candidate the scan takes, from a window of the next keys
    last = torch.where(n > 0, key, -1).amax(-1)  # (B,) the row's last candidate key
    width = _ROUND_BUCKETS << (key_bits - nb)  # keys in a window: about _ROUND_BUCKETS candidates
    rows = ((remaining > 0) & (budget > 0) & (after <= last)).nonzero().flatten()  # (A,)
    while rows.numel() > 0:
        A = rows.numel()
        lo, hi = after[rows], after[rows] + width  # (A,) this window's keys: [lo, hi)
        k = key[rows]  # (A, W)
        inside = (k >= lo[:, None]) & (k < hi[:, None])  # (A, W); missing slots have _NO_KEY
        place = inside.long().cumsum(-1)  # (A, W) 1-based place in the window
        J = int(place[:, -1].max())
        if J > 0:  # the window's candidates (A, J): slots (W = none), keys, sizes and prefix costs
            at = torch.where(inside, place - 1, J)  # (A, W)
            slot_w = torch.full((A, J + 1), W, dtype=torch.long, device=device)
            slot_w = slot_w.scatter_(1, at, torch.arange(W, device=device).expand(A, W))[:, :J]  # (A, J)
            real_w = slot_w < W
            s_w = slot_w.clamp(max=W - 1)
            key_w = torch.where(real_w, k.gather(1, s_w), _NO_KEY)  # (A, J)
            n_w = n[rows].gather(1, s_w) * real_w.long()  # (A, J)
            part_w = [x[rows].gather(1, s_w) for x in part]  # (A, J) each
            live_r = torch.arange(A, device=device)  # rows of the window still taking
            while live_r.numel() > 0:
                g_rows = rows[live_r]
                r = remaining[g_rows, None]  # (L, 1)
                fits = [(part_w[d - 1][live_r] <= r) & (n_w[live_r] >= d) for d in range(1, m + 1)]  # (L, J) each
                kw = key_w[live_r]
                ok = fits[0] & (kw >= after[g_rows, None])
                sw = s_w[live_r]
                if m > 1:
                    for e in range(m):
                        ok &= ~(covered[g_rows[:, None], sw + e] & fits[e])
                best, j = (kw | ((~ok).long() << 62)).min(-1)  # (L,) the smallest key the scan takes now
                has = best < (1 << 62)
                short = sum(f.long() for f in fits) if m > 1 else fits[0].long()  # (L, J)
                a_l = torch.arange(live_r.numel(), device=device)
                take = short[a_l, j] * has.long()  # (L,) words taken
                start = sw[a_l, j]  # (L,)
                for e in range(m):
                    hit = take > e
                    covered[g_rows[hit], start[hit] + e] = True
                remaining[g_rows] -= sum(part_w[d - 1][live_r, j] * (take == d).long() for d in range(1, m + 1))
                after[g_rows] = torch.where(has, best + 1, after[g_rows])
                live_r = live_r[has & (remaining[g_rows] > 0)]
        after[rows] = torch.maximum(after[rows], hi)  # the window is scanned: what it could take, it took
        rows = rows[(remaining[rows] > 0) & (after[rows] <= last[rows])]

    word_sel = covered[:, :W]
    # a row with a budget and candidates that took nothing: its first candidate's first word (see docs/deviations.md)
    first_key, first = torch.where(n > 0, key, _NO_KEY).min(-1)  # (B,)
    empty = (budget > 0) & ~_any_per_row(word_sel) & (first_key < _NO_KEY)
    if _any(empty):
        word_sel = word_sel.clone()
        word_sel[empty.nonzero().flatten(), first[empty]] = True
    return word_sel


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
    covered, owner, _, _ = _fill(words, length, budget, mode=mode, bulk=bulk)
    return _first_word_rule(covered, owner, budget, words[:, 0, 0])


def _fill(words, length, budget, *, mode, bulk=None):
    """:func:`greedy_fill`'s scan before its first-word rule: ``(covered, owner)`` (B, W+1) (slot W: none),
    ``remaining`` (B,) budget left, ``pointer`` (B,) the next candidate it would scan (K: none left)."""
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
    return covered, owner, remaining, pointer


def _first_word_rule(covered, owner, budget, first_word):
    """A row with a budget and words that took nothing gets its first candidate's first word (docs/deviations.md).

    ``covered``, ``owner`` (B, W+1) as :func:`_fill` leaves them; ``first_word`` (B,) (W = none).
    Returns ``(word_sel (B, W) bool, owner (B, W) long)``.
    """
    W = covered.shape[1] - 1
    word_sel = covered[:, :W].clone()
    empty = (budget > 0) & ~_any_per_row(word_sel) & (first_word < W)  # (B,)
    if _any(empty):
        w0 = torch.where(empty, first_word, W)[:, None]  # (B, 1)
        covered.scatter_(1, w0, True)
        owner.scatter_(1, w0, torch.zeros_like(w0))
        word_sel = covered[:, :W].clone()
    return word_sel, owner[:, :W]
