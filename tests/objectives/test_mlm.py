import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, OBJECTIVES, Vocab, get_objective
from lmobjectives.data.tokenizers import word_ids_from_starts
from lmobjectives.objectives._masking import (
    SPARE_CANDIDATES,
    BernoulliTokens,
    BernoulliWords,
    BinomialBudget,
    ExactBudget,
    ExactTokens,
    ExactWords,
    NGrams,
    Spans,
    Tokens,
    at_least_one,
    bernoulli_positions,
    word_slots,
)
from lmobjectives.objectives._span_lengths import truncated_geometric
from lmobjectives.objectives.mlm import MaskedLM

T_, F_ = True, False
V = Vocab(size=10, pad_id=0, cls_id=1, sep_id=2, mask_id=3)  # ordinary ids: 4..9
# a larger vocabulary for statistics: specials 0..4 and 17 (an "extra" reserved id)
VB = Vocab(size=40, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4, extra_special_ids=(17,))
SPECIAL_B = torch.tensor(VB.special_ids)
ORDINARY_B = [i for i in range(VB.size) if i not in VB.special_ids]

X = torch.tensor([[1, 4, 5, 6, 7, 8, 9, 4, 5, 6, 2, 0, 0]])
W = torch.tensor([[-1, 0, 0, 1, 2, 2, 2, 3, 4, 4, -1, -1, -1]])


def gen(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def make_batch(B, T, seed, *, words=False, specials=True, vocab=VB):
    """Random ids with [CLS] ... [SEP] ... [SEP], variable length padding, sprinkled UNK and reserved ids."""
    g = gen(seed)
    ordinary = torch.tensor([i for i in range(vocab.size) if i not in vocab.special_ids])
    ids = ordinary[torch.randint(len(ordinary), (B, T), generator=g)]
    lens = torch.randint(max(T // 2, 1), T + 1, (B,), generator=g)
    t = torch.arange(T)
    real = t[None] < lens[:, None]
    if specials:
        ids = torch.where(torch.rand(B, T, generator=g) < 0.03, vocab.unk_id, ids)
        ids = torch.where(torch.rand(B, T, generator=g) < 0.02, 17, ids)
        ids[:, 0] = vocab.cls_id
        ids[t[None] == (lens // 2)[:, None]] = vocab.sep_id
        ids[t[None] == (lens - 1)[:, None]] = vocab.sep_id
    ids = torch.where(real, ids, vocab.pad_id)
    if not words:
        return ids, real
    maskable = real & ~vocab.special_mask()[ids]
    wid = word_ids_from_starts(torch.rand(B, T, generator=g) < 0.7, maskable)
    return ids, real, wid


def maskable_of(ids, real, vocab=VB):
    return real & ~vocab.special_mask()[ids]


# ----------------------------------------------------------------------------- worked examples


def test_docstring_deterministic_example():
    x = torch.tensor([[1, 5, 6, 2, 7, 2, 0]])
    for selection in ("exact", "bernoulli"):
        mlm = get_objective(
            "mlm", vocab=V, probability=1.0, mask_fraction=1.0, random_fraction=0.0, selection=selection
        )
        b = mlm(x)
        assert b.input_ids.tolist() == [[1, 3, 3, 2, 3, 2, 0]]
        assert b.labels.tolist() == [[-100, 5, 6, -100, 7, -100, -100]]
        assert b.attention_mask.tolist() == [[T_, T_, T_, T_, T_, T_, F_]]
        assert b.causal is False
        assert b.has_targets.tolist() == [True]


def test_docstring_seeded_examples():
    b = get_objective("mlm", vocab=V, probability=0.5)(X, generator=gen(0))
    assert b.input_ids.tolist() == [[1, 4, 5, 6, 7, 3, 9, 3, 4, 6, 2, 0, 0]]
    assert b.labels.tolist() == [[-100, -100, -100, -100, -100, 8, -100, 4, 5, -100, -100, -100, -100]]
    b = get_objective("mlm", vocab=V, probability=0.5, unit="word")(X, word_ids=W, generator=gen(0))
    assert b.input_ids.tolist() == [[1, 3, 6, 6, 3, 3, 3, 3, 3, 3, 2, 0, 0]]
    assert b.labels.tolist() == [[-100, 4, 5, -100, 7, 8, 9, 4, 5, 6, -100, -100, -100]]
    b = get_objective("mlm", vocab=V, probability=0.5, unit="span", selection="exact")(X, word_ids=W, generator=gen(0))
    assert b.input_ids.tolist() == [[1, 4, 5, 6, 3, 3, 3, 3, 5, 6, 2, 0, 0]]
    assert b.labels.tolist() == [[-100, -100, -100, -100, 7, 8, 9, 4, -100, -100, -100, -100, -100]]
    assert b.has_targets.tolist() == [True] and b.attention_mask.tolist() == [[T_] * 11 + [F_] * 2]
    b = get_objective("mlm", vocab=V, probability=0.5, unit="ngram", selection="exact")(X, word_ids=W, generator=gen(0))
    assert b.input_ids.tolist() == [[1, 4, 5, 3, 3, 3, 3, 4, 5, 6, 2, 0, 0]]
    assert b.labels.tolist() == [[-100, -100, -100, 6, 7, 8, 9, -100, -100, -100, -100, -100, -100]]


def test_word_ids_from_starts():
    starts = torch.tensor([[0, 1, 0, 1, 1, 0]])
    valid = torch.tensor([[0, 1, 1, 1, 1, 0]])
    assert word_ids_from_starts(starts, valid).tolist() == [[-1, 0, 0, 1, 2, -1]]
    # a valid token after an invalid one starts a word even without the flag
    assert word_ids_from_starts(torch.tensor([[1, 0, 0, 0]]), torch.tensor([[1, 0, 1, 1]])).tolist() == [[0, -1, 1, 1]]
    assert word_ids_from_starts(torch.tensor([[1, 0, 1]])).tolist() == [[0, 0, 1]]


def test_registry_builds_from_fields():
    assert OBJECTIVES["mlm"].objective is MaskedLM
    mlm = get_objective("mlm", vocab=V, probability=0.2, unit="token", selection="exact", max_predictions=3)
    assert isinstance(mlm, MaskedLM) and mlm.name == "mlm"
    assert (mlm.probability, mlm.selection, mlm.max_predictions) == (0.2, "exact", 3)
    with pytest.raises(ValueError, match="unknown option.*'_cache'"):
        get_objective("mlm", vocab=V, _cache={})
    assert get_objective("mlm", vocab=V) == MaskedLM(vocab=V)  # the table cache does not take part in ==


@pytest.mark.parametrize(
    "unit, selection, strategy, budget",
    [
        ("token", "bernoulli", BernoulliTokens, None),
        ("token", "exact", ExactTokens, ExactBudget),
        ("word", "bernoulli", BernoulliWords, None),
        ("word", "exact", ExactWords, ExactBudget),
        ("span", "bernoulli", Spans, BinomialBudget),
        ("span", "exact", Spans, ExactBudget),
        ("ngram", "bernoulli", NGrams, BinomialBudget),
        ("ngram", "exact", NGrams, ExactBudget),
    ],
)
def test_each_unit_and_selection_has_one_strategy(unit, selection, strategy, budget):
    mlm = MaskedLM(V, unit=unit, selection=selection, probability=0.3)
    assert type(mlm._select) is strategy
    if budget is not None:
        assert mlm._select.budget == budget(0.3, None)
    assert mlm.with_unigram_counts(torch.ones(V.size))._select == mlm._select  # a copy builds its own, equal


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"probability": 0.0}, ValueError, r"probability must lie in \(0, 1\], got 0.0"),
        ({"probability": 1.5}, ValueError, "probability.*1.5"),
        ({"probability": float("nan")}, TypeError, "probability"),
        ({"probability": "0.1"}, TypeError, "probability"),
        ({"mask_fraction": 1.2}, ValueError, "mask_fraction.*1.2"),
        ({"random_fraction": -0.1}, ValueError, "random_fraction.*-0.1"),
        ({"mask_fraction": 0.9, "random_fraction": 0.2}, ValueError, "mask_fraction=0.9.*random_fraction=0.2"),
        ({"unit": "sentence"}, ValueError, "unit.*'sentence'"),
        ({"selection": "topk"}, ValueError, "selection.*'topk'"),
        ({"selection": "exact", "max_predictions": 0}, ValueError, "max_predictions.*0"),
        ({"max_predictions": 5}, ValueError, "max_predictions=5 only applies"),
        ({"unit": "word", "max_predictions": 5}, ValueError, "max_predictions=5 only applies"),
        ({"unit": "ngram", "max_ngram": 0}, ValueError, "max_ngram must be an int >= 1.*got 0"),
        ({"unit": "ngram", "max_ngram": 2.0}, ValueError, "max_ngram.*2.0"),
        ({"random_ids": "zipf"}, ValueError, "random_ids.*'zipf'"),
        ({"unit": "span", "max_span_length": 0}, ValueError, "max_span_length.*0"),
        ({"unit": "span", "span_geometric_p": 0.0}, ValueError, "span_geometric_p"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        get_objective("mlm", vocab=V, **options)


def test_vocab_needs_mask_id():
    with pytest.raises(ValueError, match="MaskedLM needs Vocab.mask_id"):
        MaskedLM(vocab=Vocab(size=10, pad_id=0))
    with pytest.raises(TypeError, match="vocab"):
        MaskedLM(vocab=10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every id of the vocab is special"):
        MaskedLM(vocab=Vocab(size=2, pad_id=0, mask_id=1))
    MaskedLM(vocab=Vocab(size=2, pad_id=0, mask_id=1), random_fraction=0.0)  # fine without random replacement


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.tensor([[1.0, 5.0]]), TypeError, "input_ids.*dtype"),
        (torch.tensor([1, 5, 6]), ValueError, "rank 2"),
        (torch.zeros(0, 4, dtype=torch.long), ValueError, "empty"),
        (torch.tensor([[1, 5, 10]]), ValueError, "id 10, outside"),
        (torch.tensor([[1, -5, 6]]), ValueError, "id -5, outside"),
        ([[1, 5, 6]], TypeError, "torch.Tensor"),
        (torch.tensor([[1, 2, 0]]), ValueError, "nothing to mask"),
    ],
)
def test_bad_input_ids(x, error, match):
    with pytest.raises(error, match=match):
        get_objective("mlm", vocab=V)(x)


def test_bad_extras():
    mlm = get_objective("mlm", vocab=V)
    wmlm = get_objective("mlm", vocab=V, unit="word")
    with pytest.raises(ValueError, match="unit='word' needs word_ids"):
        wmlm(X)
    with pytest.raises(ValueError, match="unit='span' needs word_ids"):
        get_objective("mlm", vocab=V, unit="span")(X)
    with pytest.raises(ValueError, match="word_ids must have the shape"):
        wmlm(X, word_ids=W[:, :5])
    with pytest.raises(TypeError, match="word_ids must be an integer"):
        wmlm(X, word_ids=W.float())
    with pytest.raises(ValueError, match="word_ids must be >= -1"):
        wmlm(X, word_ids=W - 5)
    with pytest.raises(ValueError, match="word_ids was given but unit='token'"):
        mlm(X, word_ids=W)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        mlm(X, attention_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="generator"):
        mlm(X, generator=0)
    with pytest.raises(ValueError, match="nothing to mask.*word id -1"):
        wmlm(X, word_ids=torch.full_like(W, -1))


# ----------------------------------------------------------------------------- statistics


def binomial_ok(k, n, p, sigmas=5.0):
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def test_bernoulli_selection_rate_and_split():
    ids, real = make_batch(512, 64, seed=1)
    maskable = maskable_of(ids, real)
    mlm = get_objective("mlm", vocab=VB)
    g = gen(2)
    n = sel = masked = changed = 0
    for _ in range(4):
        b = mlm(ids, attention_mask=real, generator=g)
        s = b.labels != IGNORE_INDEX
        assert not (s & ~maskable).any()
        n += int(maskable.sum())
        sel += int(s.sum())
        masked += int((s & (b.input_ids == VB.mask_id)).sum())
        changed += int((s & (b.input_ids != VB.mask_id) & (b.input_ids != ids)).sum())
    assert binomial_ok(sel, n, 0.15)
    assert binomial_ok(masked, sel, 0.8)
    p_changed = 0.1 * (1 - 1 / len(ORDINARY_B))  # a random id equal to the original is "kept"
    assert binomial_ok(changed, sel, p_changed)


def test_random_replacements_are_uniform_over_ordinary_ids():
    ids, real = make_batch(256, 64, seed=3)
    mlm = get_objective("mlm", vocab=VB, probability=1.0, mask_fraction=0.0, random_fraction=1.0)
    b = mlm(ids, attention_mask=real, generator=gen(4))
    s = b.labels != IGNORE_INDEX
    drawn = b.input_ids[s]
    assert not torch.isin(drawn, SPECIAL_B).any()
    counts = torch.bincount(drawn, minlength=VB.size)[ORDINARY_B]
    n = int(s.sum())
    for c in counts.tolist():
        assert binomial_ok(c, n, 1 / len(ORDINARY_B))
    # unselected positions, specials and padding untouched
    assert torch.equal(b.input_ids[~s], ids[~s])


@pytest.mark.parametrize("probability, cap", [(0.15, None), (0.25, None), (0.5, 3), (0.05, None)])
def test_exact_count_per_row(probability, cap):
    ids, real = make_batch(64, 30, seed=5)
    mlm = get_objective("mlm", vocab=VB, probability=probability, selection="exact", max_predictions=cap)
    b = mlm(ids, attention_mask=real, generator=gen(6))
    n = maskable_of(ids, real).sum(-1).tolist()
    got = (b.labels != IGNORE_INDEX).sum(-1).tolist()
    for n_b, k_b in zip(n, got):
        want = min(cap or n_b, max(1, round(n_b * probability))) if n_b else 0  # Python 3 round: half to even
        assert k_b == want
    assert b.has_targets.tolist() == [k > 0 for k in got]


def test_exact_count_rounds_half_to_even():
    x = torch.tensor([[5] * 10 + [0] * 20, [5] * 30])  # 10 * 0.25 = 2.5 -> 2; 30 * 0.15 = 4.5 -> 4
    b = get_objective("mlm", vocab=V, probability=0.25, selection="exact")(x, generator=gen())
    assert (b.labels != IGNORE_INDEX).sum(-1).tolist()[0] == 2
    b = get_objective("mlm", vocab=V, probability=0.15, selection="exact")(x, generator=gen())
    assert (b.labels != IGNORE_INDEX).sum(-1).tolist()[1] == 4


def test_exact_selection_is_uniform_over_positions():
    x = torch.full((4000, 8), 5)
    b = get_objective("mlm", vocab=V, probability=0.25, selection="exact")(x, generator=gen(7))
    per_position = (b.labels != IGNORE_INDEX).sum(0)  # each row picks 2 of 8 positions
    for c in per_position.tolist():
        assert binomial_ok(c, 4000, 0.25)


def test_at_least_one_is_the_exact_conditional_law():
    # 3 eligible places, p = 0.5: given >= 1 success, each of the 7 patterns has probability 1/7
    eligible = torch.tensor([[True, False, True], [False, True, False]])
    g = gen(8)
    counts = {}
    draws = 7000
    for _ in range(draws):
        u = at_least_one(torch.rand(2, 3, generator=g), eligible, 0.5, g)
        pattern = tuple((eligible & (u < 0.5)).flatten().tolist())
        counts[pattern] = counts.get(pattern, 0) + 1
    assert len(counts) == 7
    for c in counts.values():
        assert binomial_ok(c, draws, 1 / 7)


def test_tiny_batch_always_has_a_target_and_uniform_split():
    x = torch.tensor([[1, 5, 2]])  # one maskable token, p = 0.01: plain Bernoulli would be empty 99 % of the time
    mlm = get_objective("mlm", vocab=V, probability=0.01)
    g = gen(9)
    outs = torch.stack([mlm(x, generator=g).input_ids[0, 1] for _ in range(2000)])
    assert binomial_ok(int((outs == 3).sum()), 2000, 0.8)  # the forced token still gets the 80/10/10 split
    assert binomial_ok(int((outs == 5).sum()), 2000, 0.1 + 0.1 / 6)


def test_bernoulli_rows_without_targets_are_reported():
    x = torch.tensor([[1, 5, 6, 7, 8, 9, 5, 6, 7, 8, 9, 2], [1, 5, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    mlm = get_objective("mlm", vocab=V, probability=0.1)
    seen_empty = False
    for seed in range(200):
        b = mlm(x, generator=gen(seed))
        assert b.has_targets.tolist() == (b.labels != IGNORE_INDEX).any(-1).tolist()
        seen_empty |= not bool(b.has_targets[1])
    assert seen_empty


# ----------------------------------------------------------------------------- whole words


def word_slices(wid, maskable):
    """Per row, the list of words as lists of positions (runs of equal ids on maskable tokens)."""
    out = []
    for w_row, m_row in zip(wid.tolist(), maskable.tolist()):
        words, prev = [], None
        for t, (w, m) in enumerate(zip(w_row, m_row)):
            if m and w >= 0:
                if prev is not None and prev == (w, t - 1):
                    words[-1].append(t)
                else:
                    words.append([t])
                prev = (w, t)
            else:
                prev = None
        out.append(words)
    return out


@pytest.mark.parametrize("unit", ["word", "span", "ngram"])
@pytest.mark.parametrize("selection", ["bernoulli", "exact"])
def test_whole_words_share_selection(unit, selection):
    ids, real, wid = make_batch(64, 48, seed=10, words=True)
    mlm = get_objective("mlm", vocab=VB, unit=unit, selection=selection, probability=0.3)
    b = mlm(ids, attention_mask=real, word_ids=wid, generator=gen(11))
    s = b.labels != IGNORE_INDEX
    maskable = maskable_of(ids, real)
    assert not (s & ~maskable).any() and not (s & (wid < 0)).any()
    for row, words in enumerate(word_slices(wid, maskable)):
        for positions in words:
            flags = s[row, positions].tolist()
            assert all(flags) or not any(flags)


def test_word_bernoulli_rate_is_per_word():
    ids, real, wid = make_batch(256, 64, seed=12, words=True)
    maskable = maskable_of(ids, real)
    words = word_slices(wid, maskable)
    n_words = sum(len(w) for w in words)
    b = get_objective("mlm", vocab=VB, unit="word")(ids, attention_mask=real, word_ids=wid, generator=gen(13))
    s = b.labels != IGNORE_INDEX
    picked = sum(bool(s[r, w[0]]) for r, ws in enumerate(words) for w in ws)
    assert binomial_ok(picked, n_words, 0.15)


def test_word_exact_budget():
    ids, real, wid = make_batch(128, 64, seed=14, words=True)
    maskable = maskable_of(ids, real)
    words = word_slices(wid, maskable)
    b = get_objective("mlm", vocab=VB, unit="word", selection="exact")(
        ids, attention_mask=real, word_ids=wid, generator=gen(15)
    )
    got = (b.labels != IGNORE_INDEX).sum(-1).tolist()
    for n_b, k_b, ws in zip(maskable.sum(-1).tolist(), got, words):
        k = max(1, round(n_b * 0.15))
        if min(len(w) for w in ws) <= k:  # a word fits: BERT's scan fills the budget from the words that fit
            assert k_b <= k
        else:  # every word is longer than the budget: the first word (documented deviation)
            assert k_b == 0 or any(k_b == len(w) for w in ws)


def test_words_are_runs_of_equal_ids():
    # HF word_ids() of a pair restart at 0 after [SEP]; a repeated id after another word is a new word
    x = torch.tensor([[1, 4, 5, 2, 6, 7, 8, 2]])
    wid = torch.tensor([[-1, 0, 0, -1, 0, 1, 0, -1]])
    maskable = maskable_of(x, torch.ones_like(x, dtype=torch.bool), V)
    index, length, n_words = word_slots(maskable, wid)
    assert n_words.tolist() == [4]
    assert length.tolist() == [[2, 1, 1, 1]]
    assert index[maskable].tolist() == [0, 0, 1, 2, 3]


def test_span_rate_close_to_p():
    ids, real, wid = make_batch(256, 128, seed=16, words=True)
    maskable = maskable_of(ids, real)
    for selection in ("exact", "bernoulli"):
        mlm = get_objective("mlm", vocab=VB, unit="span", selection=selection)
        rate = sum(
            int((mlm(ids, attention_mask=real, word_ids=wid, generator=gen(s)).labels != IGNORE_INDEX).sum())
            for s in range(3)
        ) / (3 * int(maskable.sum()))
        assert abs(rate - 0.15) < 0.01, (selection, rate)


def test_truncated_geometric_law():
    u = torch.rand(200_000, generator=gen(17), dtype=torch.float64)
    lengths = truncated_geometric(u, 0.2, 10)
    assert lengths.min() == 1 and lengths.max() == 10
    pmf = [0.2 * 0.8 ** (k - 1) / (1 - 0.8**10) for k in range(1, 11)]
    counts = torch.bincount(lengths, minlength=11)[1:].tolist()
    for c, p in zip(counts, pmf):
        assert binomial_ok(c, 200_000, p)
    mean = sum(k * p for k, p in zip(range(1, 11), pmf))
    assert abs(mean - 3.797) < 1e-3  # SpanBERT's 3.8
    assert abs(lengths.double().mean().item() - mean) < 0.03
    assert truncated_geometric(u[:10], 1.0, 10).tolist() == [1] * 10


def selection_of(mlm, ids, real, wid, generator):
    """The selection step alone, as mlm(ids, attention_mask=real, word_ids=wid) runs it: its Selection."""
    return mlm._select(Tokens(ids, real, VB.special_mask(), wid), generator)


def spans_of(mlm, ids, real, wid, seed):
    """Reproduce the span selection of mlm(..., generator=gen(seed)): one list of word slots per span."""
    maskable = maskable_of(ids, real) & (wid >= 0)
    chosen = selection_of(mlm, ids, real, wid, gen(seed))
    selected, split = chosen.selected, chosen.split
    index, _, _ = word_slots(maskable, wid)
    rows = []
    for r in range(ids.shape[0]):
        groups = {}
        for t in selected[r].nonzero().flatten().tolist():
            groups.setdefault(float(split[r, t]), set()).add(int(index[r, t]))
        rows.append([sorted(g) for g in groups.values()])
    return selected, rows


def test_spans_are_contiguous_whole_words_with_geometric_length():
    # long rows of one-token words at a low rate, so spans rarely overlap and mean ~ E[L] = 3.8 words
    B, T = 64, 1024
    ids = torch.randint(5, 40, (B, T), generator=gen(18))
    ids = torch.where(ids == 17, 18, ids)
    real = torch.ones(B, T, dtype=torch.bool)
    wid = torch.arange(T).expand(B, T)
    mlm = get_objective(
        "mlm", vocab=VB, unit="span", selection="exact", probability=0.03, mask_fraction=0.5, random_fraction=0.0
    )
    selected, rows = spans_of(mlm, ids, real, wid, seed=19)
    sizes = []
    for r, spans in enumerate(rows):
        for words in spans:
            lo, hi = words[0], words[-1]
            assert hi - lo + 1 <= 10  # within one sampled span of at most 10 words
            assert selected[r, lo : hi + 1].all()  # gaps were covered by earlier spans
            sizes.append(len(words))
    assert max(sizes) <= 10
    # E[L] = 3.8 for the candidates; the last span of a row is cut at the budget and overlaps add only new words
    assert 3.2 < sum(sizes) / len(sizes) < 3.9
    # SpanBERT: one replacement decision per span (mask_fraction=0.5, rest kept)
    b = mlm(ids, attention_mask=real, word_ids=wid, generator=gen(19))
    assert torch.equal(b.labels != IGNORE_INDEX, selected)
    for r, spans in enumerate(rows):
        for words in spans:
            out = b.input_ids[r, words]
            assert (out == VB.mask_id).all() or torch.equal(out, ids[r, words])


# ----------------------------------------------------------------------------- properties


@st.composite
def batches(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    ids = torch.randint(0, VB.size, (B, T), generator=g)  # specials anywhere
    ids[0, torch.randint(T, (1,), generator=g)] = 20  # at least one maskable token
    lens = torch.randint(1, T + 1, (B,), generator=g)
    lens[0] = T
    real = torch.arange(T)[None] < lens[:, None]
    real[0] = True
    wid = word_ids_from_starts(torch.rand(B, T, generator=g) < 0.6, maskable_of(ids, real))
    return ids, real, wid


@settings(max_examples=120, deadline=None)
@given(
    data=batches(),
    unit=st.sampled_from(["token", "word", "span", "ngram"]),
    selection=st.sampled_from(["bernoulli", "exact"]),
    p=st.floats(0.01, 1.0),
    m=st.floats(0.0, 1.0),
    r=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties(data, unit, selection, p, m, r, seed):
    ids, real, wid = data
    r = min(r, 1.0 - m)
    mlm = get_objective(
        "mlm", vocab=VB, unit=unit, selection=selection, probability=p, mask_fraction=m, random_fraction=r
    )
    extras = {} if unit == "token" else {"word_ids": wid}
    before = ids.clone()
    b = mlm(ids, attention_mask=real, generator=gen(seed), **extras)
    assert torch.equal(ids, before)  # the caller's tensor is untouched
    s = b.labels != IGNORE_INDEX
    maskable = maskable_of(ids, real) & (True if unit == "token" else wid >= 0)
    assert not (s & ~maskable).any()  # never a special, padding or word-less token
    assert torch.equal(b.labels[s], ids[s])  # labels are the originals
    assert torch.equal(b.input_ids[~s], ids[~s])  # unselected positions unchanged
    out = b.input_ids[s]
    assert not torch.isin(out[out != VB.mask_id], SPECIAL_B).any()  # nothing special inserted but [MASK]
    assert bool(s.any())  # never an all-ignored batch
    assert b.has_targets.tolist() == s.any(-1).tolist()
    assert torch.equal(b.attention_mask, real) and b.causal is False
    assert b.input_ids.dtype == torch.long and b.labels.dtype == torch.long
    again = mlm(ids, attention_mask=real, generator=gen(seed), **extras)  # same seed, same batch
    assert torch.equal(again.input_ids, b.input_ids) and torch.equal(again.labels, b.labels)
    if selection == "exact" and unit == "token":
        n = maskable.sum(-1).tolist()
        assert s.sum(-1).tolist() == [max(1, round(k * p)) if k else 0 for k in n]
    if selection == "exact" and unit != "token":  # never over budget but for the documented first-word rule
        k = [max(1, round(n * p)) if n else 0 for n in maskable_of(ids, real).sum(-1).tolist()]
        for row, (k_b, got) in enumerate(zip(k, s.sum(-1).tolist())):
            words = word_slices(wid, maskable)[row]
            assert got <= k_b or (got in [len(w) for w in words] and min(len(w) for w in words) > k_b)
    if unit != "token":
        for row, words in enumerate(word_slices(wid, maskable)):
            for positions in words:
                flags = s[row, positions].tolist()
                assert all(flags) or not any(flags)


def test_padding_from_pad_id_without_attention_mask():
    x = torch.tensor([[1, 5, 6, 7, 2, 0, 0], [1, 5, 0, 6, 2, 0, 0]])  # a pad id inside a row is special anyway
    b = get_objective("mlm", vocab=V, probability=1.0, selection="exact", mask_fraction=1.0, random_fraction=0.0)(x)
    assert b.attention_mask.tolist() == [[T_, T_, T_, T_, T_, F_, F_], [T_, T_, T_, T_, T_, F_, F_]]
    assert b.input_ids.tolist() == [[1, 3, 3, 3, 2, 0, 0], [1, 3, 0, 3, 2, 0, 0]]


def test_dynamic_masking_changes_between_calls():
    ids, real = make_batch(8, 64, seed=20)
    mlm = get_objective("mlm", vocab=VB)
    g = gen(21)
    a, b = mlm(ids, attention_mask=real, generator=g), mlm(ids, attention_mask=real, generator=g)
    assert not torch.equal(a.labels, b.labels)


def test_global_rng_untouched():
    ids, real, wid = make_batch(4, 32, seed=22, words=True)
    state = torch.get_rng_state()
    for unit in ("token", "word", "span", "ngram"):
        get_objective("mlm", vocab=VB, unit=unit)(
            ids, attention_mask=real, word_ids=None if unit == "token" else wid, generator=gen()
        )
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- devices


@pytest.mark.parametrize("unit", ["token", "word", "span", "ngram"])
def test_runs_on_device(device, unit):
    ids, real, wid = make_batch(16, 32, seed=23, words=True)
    mlm = get_objective("mlm", vocab=VB, unit=unit, selection="exact")
    extras = {} if unit == "token" else {"word_ids": wid.to(device)}
    b = mlm(ids.to(device), attention_mask=real.to(device), generator=gen(24, device.type), **extras)
    for t in (b.input_ids, b.labels, b.attention_mask, b.has_targets):
        assert t.device.type == device.type
    s = b.labels != IGNORE_INDEX
    assert not (s & ~maskable_of(ids, real).to(device)).any()
    assert torch.equal(b.labels[s], ids.to(device)[s])
    if unit == "token":
        assert s.sum(-1).tolist() == [max(1, round(n * 0.15)) for n in maskable_of(ids, real).sum(-1).tolist()]


@pytest.mark.parametrize("p", [0.15, 0.5, 0.97])
def test_bernoulli_positions_have_the_bernoulli_law(p):
    # per-position rate p, count variance n p (1 - p) (independence), sorted and unique, in range
    n, draws, g = 50, 4000, gen(11)
    hits = torch.zeros(n)
    counts = []
    for _ in range(draws):
        pos = bernoulli_positions(n, p, g, torch.device("cpu"))
        assert pos.numel() == 0 or (int(pos.min()) >= 0 and int(pos.max()) < n)
        assert torch.all(pos[1:] > pos[:-1])
        hits[pos] += 1
        counts.append(pos.numel())
    for c in hits.tolist():
        assert binomial_ok(int(c), draws, p)
    var = torch.tensor(counts, dtype=torch.float64).var().item()
    assert abs(var / (n * p * (1 - p)) - 1) < 0.15


def test_attention_mask_is_not_aliased():
    mask = torch.ones_like(X, dtype=torch.bool)
    for selection in ("bernoulli", "exact"):  # the sparse token path and the dense path
        b = get_objective("mlm", vocab=V, selection=selection)(X, attention_mask=mask, generator=gen())
        assert b.attention_mask is not mask
        b.attention_mask[0, 0] = False
        assert bool(mask[0, 0])


# ----------------------------------------------------------------------------- budgeted scans vs the originals' loops


def _words_of(maskable, wid):
    index, length, n_words = word_slots(maskable, wid)
    return index, length, n_words


def _first_word_rule(taken, first_word):
    return taken if taken else {first_word}


def ref_bert_wwm(order, length, k):
    """BERT create_masked_lm_predictions (whole words, shuffled): skip a word that overflows, go on."""
    taken, r = set(), k
    for w in order:
        if r <= 0:
            break
        if length[w] > r:
            continue
        taken.add(w)
        r -= length[w]
    return _first_word_rule(taken, order[0]) if k > 0 and order else taken


def ref_spans(cands, length, k):
    """SpanBERT's loop over candidate spans, at whole-word granularity: new words left to right while they fit."""
    taken, r = set(), k
    for start, end in cands:
        for w in range(start, end):
            if w in taken:
                continue
            if length[w] > r:
                break
            taken.add(w)
            r -= length[w]
    return _first_word_rule(taken, cands[0][0]) if k > 0 and cands and cands[0][1] > cands[0][0] else taken


def ref_albert(order, n, length, k):
    """ALBERT create_masked_lm_predictions with n-grams: shorten to fit, skip if overflowing or covered."""
    taken, r = set(), k
    for a in order:
        if r <= 0:
            break
        m = n[a]
        while m > 0 and sum(length[a : a + m]) > r:
            m -= 1
        if m == 0 or any(w in taken for w in range(a, a + m)):
            continue
        taken.update(range(a, a + m))
        r -= sum(length[a : a + m])
    return _first_word_rule(taken, order[0]) if k > 0 and order else taken


def selected_words(b, maskable, wid):
    index, _, _ = _words_of(maskable, wid)
    s = b.labels != IGNORE_INDEX
    return [set(index[r][s[r]].tolist()) for r in range(s.shape[0])]


@pytest.mark.parametrize("p", [0.15, 0.4])
@pytest.mark.parametrize("unit", ["word", "span", "ngram"])
def test_exact_budget_scans_equal_the_original_loops(unit, p):
    """Replay the objective's draws and run BERT's / SpanBERT's / ALBERT's loop on them: same words, row by row."""
    ids, real, wid = make_batch(48, 40, seed=30, words=True)
    maskable = maskable_of(ids, real) & (wid >= 0)
    index, length, n_words = _words_of(maskable, wid)
    B, W = length.shape
    k = torch.clamp(torch.round(maskable.sum(-1).double() * p).long(), min=1) * (maskable.sum(-1) > 0)
    mlm = get_objective("mlm", vocab=VB, unit=unit, selection="exact", probability=p)
    b = mlm(ids, attention_mask=real, word_ids=wid, generator=gen(31))
    got = selected_words(b, maskable, wid)
    g = gen(31)  # the draws, in the objective's order
    exists = torch.arange(W) < n_words[:, None]
    if unit == "word":
        order = torch.where(exists, torch.rand(B, W, generator=g), 2.0).argsort(-1)
        for r in range(B):
            o = [w for w in order[r].tolist() if w < n_words[r]]
            assert got[r] == ref_bert_wwm(o, length[r].tolist(), int(k[r])), r
    elif unit == "span":
        K = int(k.max()) + SPARE_CANDIDATES
        u = torch.rand(B, K, 2, generator=g)
        start = (u[..., 0] * n_words[:, None]).long()
        end = torch.minimum(start + truncated_geometric(u[..., 1], 0.2, 10), n_words[:, None])
        for r in range(B):
            cands = list(zip(start[r].tolist(), end[r].tolist()))
            assert got[r] == ref_spans(cands, length[r].tolist(), int(k[r])), r
    else:
        u = torch.rand(B, W, 2, generator=g)
        order = torch.where(exists, u[..., 0], 2.0).argsort(-1)
        cdf = torch.tensor([6 / 11, 9 / 11, 1.0])
        n = torch.searchsorted(cdf, u[..., 1].contiguous(), right=True).clamp(max=2) + 1
        for r in range(B):
            o = [a for a in order[r].tolist() if a < n_words[r]]
            nn = [min(int(n[r, a]), int(n_words[r]) - a) for a in range(W)]
            assert got[r] == ref_albert(o, nn, length[r].tolist(), int(k[r])), r


def short_rows(B, lengths, seed):
    """Rows of one-token words, lengths drawn from ``lengths``."""
    g = gen(seed)
    T = max(lengths)
    lens = torch.tensor(lengths)[torch.randint(len(lengths), (B,), generator=g)]
    real = torch.arange(T)[None] < lens[:, None]
    ids = torch.where(real, torch.randint(5, 17, (B, T), generator=g), 0)
    wid = torch.where(real, torch.arange(T).expand(B, T), -1)
    return ids, real, wid


@pytest.mark.parametrize("selection", ["exact", "bernoulli"])
def test_span_budget_is_never_exceeded_on_short_rows(selection):
    """Short rows never get more than their budget (docs/deviations.md, mlm `unit="span"` (bug, fixed))."""
    ids, real, wid = short_rows(3000, [3, 5, 6, 7, 9, 12, 14], seed=32)
    mlm = get_objective("mlm", vocab=VB, unit="span", selection=selection)
    g = gen(33)
    if selection == "exact":
        b = mlm(ids, attention_mask=real, word_ids=wid, generator=g)
        k = torch.clamp(torch.round(real.sum(-1).double() * 0.15).long(), min=1)
        assert torch.equal((b.labels != IGNORE_INDEX).sum(-1), k)  # one-token words: exactly the budget
    else:
        maskable = real
        selected = selection_of(mlm, ids, real, wid, gen(34)).selected
        g2 = gen(34)
        drawn = (torch.rand(maskable.shape, generator=g2) < 0.15) & maskable
        if not drawn.any():
            pytest.skip("redrawn")
        assert torch.equal(selected.sum(-1), drawn.sum(-1))  # exactly its Binomial budget


def test_span_positions_are_uniform_at_budget_one():
    ids, real, wid = short_rows(12000, [5, 6, 7], seed=35)  # budget round(0.15 n) = 1
    b = get_objective("mlm", vocab=VB, unit="span", selection="exact")(
        ids, attention_mask=real, word_ids=wid, generator=gen(36)
    )
    s = b.labels != IGNORE_INDEX
    assert (s.sum(-1) == 1).all()
    for n in (5, 6, 7):
        counts = s[real.sum(-1) == n][:, :n].sum(0).double()
        assert chi2_ok(counts, torch.full((n,), 1 / n))


def chi2_ok(counts, probs, alpha_sigmas=4.0):
    """Pearson chi-square within mean + alpha_sigmas * sd of its chi-square(df) law."""
    n = counts.sum()
    expected = probs * n
    stat = float(((counts - expected) ** 2 / expected).sum())
    df = counts.numel() - 1
    return stat <= df + alpha_sigmas * math.sqrt(2 * df)


def realistic(B, T, seed):
    """Rows of 1-4-token words (a word starts at a token with probability 0.75), as BERT's wordpieces."""
    g = gen(seed)
    lens = torch.randint(T // 2, T + 1, (B,), generator=g)
    real = torch.arange(T)[None] < lens[:, None]
    ids = torch.where(real, torch.randint(5, 17, (B, T), generator=g), 0)
    wid = word_ids_from_starts(torch.rand(B, T, generator=g) < 0.75, real)
    return ids, real, wid


@pytest.mark.parametrize("unit", ["word", "span", "ngram"])
def test_exact_budget_is_filled_as_the_originals_do(unit):
    ids, real, wid = realistic(1024, 96, seed=37)
    b = get_objective("mlm", vocab=VB, unit=unit, selection="exact")(
        ids, attention_mask=real, word_ids=wid, generator=gen(38)
    )
    got = (b.labels != IGNORE_INDEX).sum(-1)
    k = torch.clamp(torch.round(real.sum(-1).double() * 0.15).long(), min=1)
    assert (got <= k).all()
    assert float((got == k).double().mean()) > 0.995  # BERT's scan fills it unless no word fits
    assert abs(int(got.sum()) / int(real.sum()) - 0.15) < 0.003


def test_ngram_lengths_follow_albert():
    """Long rows of one-token words at a low rate: taken n-grams rarely touch, lengths ~ P(n) = (1/n) / (11/6)."""
    B, T = 200, 600
    ids = torch.randint(5, 17, (B, T), generator=gen(39))
    real = torch.ones(B, T, dtype=torch.bool)
    wid = torch.arange(T).expand(B, T)
    mlm = get_objective("mlm", vocab=VB, unit="ngram", selection="exact", probability=0.02)
    s = mlm(ids, attention_mask=real, word_ids=wid, generator=gen(40)).labels != IGNORE_INDEX
    starts = s & ~torch.cat([torch.zeros(B, 1, dtype=torch.bool), s[:, :-1]], 1)
    run = torch.zeros(4)
    for r in range(B):
        pos = s[r].nonzero().flatten().tolist()
        lengths, cur = [], 0
        for i, p in enumerate(pos):
            cur += 1
            if i + 1 == len(pos) or pos[i + 1] != p + 1:
                lengths.append(cur)
                cur = 0
        lengths = lengths[:-1] if len(lengths) > 1 else lengths  # the row's last n-gram may be shortened to fit
        for n in lengths:
            run[min(n, 4) - 1] += 1
    assert int(starts.sum()) > 1000
    assert run[3] < 0.03 * run.sum()  # touching n-grams are rare at this rate
    assert chi2_ok(run[:3], torch.tensor([6 / 11, 3 / 11, 2 / 11]))


def test_ngram_never_overlaps_and_albert_skips_covered():
    # every word a 3-gram candidate, budget the whole row: ALBERT's first-come n-grams tile without overlap
    x = torch.full((200, 9), 5)
    wid = torch.arange(9).expand(200, 9)
    mlm = get_objective("mlm", vocab=VB, unit="ngram", selection="exact", probability=1.0, max_ngram=3)
    b = mlm(x, word_ids=wid, generator=gen(41))
    assert ((b.labels != IGNORE_INDEX).sum(-1) >= 1).all()


# ----------------------------------------------------------------------------- unigram random ids


def test_unigram_random_ids_follow_the_counts():
    counts = torch.zeros(VB.size)
    counts[5], counts[6], counts[20] = 1.0, 3.0, 4.0
    counts[VB.mask_id] = 100.0  # a special id's count is ignored
    mlm = get_objective("mlm", vocab=VB, probability=1.0, mask_fraction=0.0, random_fraction=1.0, random_ids="unigram")
    assert mlm.needs_unigram_counts
    bound = mlm.with_unigram_counts(counts)
    assert not bound.needs_unigram_counts and mlm.needs_unigram_counts  # a copy; the original is unchanged
    ids, real = make_batch(128, 64, seed=42)
    for unit in ("token", "word"):
        extras = (
            {} if unit == "token" else {"word_ids": word_ids_from_starts(torch.ones_like(ids), maskable_of(ids, real))}
        )
        b = MaskedLM(
            vocab=VB, probability=1.0, mask_fraction=0.0, random_fraction=1.0, random_ids="unigram", unit=unit
        ).with_unigram_counts(counts)(ids, attention_mask=real, generator=gen(43), **extras)
        drawn = b.input_ids[b.labels != IGNORE_INDEX]
        got = torch.bincount(drawn, minlength=VB.size)
        assert int(got.sum()) == drawn.numel() and set(got.nonzero().flatten().tolist()) <= {5, 6, 20}
        assert chi2_ok(got[[5, 6, 20]].double(), torch.tensor([1 / 8, 3 / 8, 4 / 8]))


def test_unigram_bad_counts():
    mlm = get_objective("mlm", vocab=VB, random_ids="unigram", probability=1.0, mask_fraction=0.0, random_fraction=1.0)
    ids, real = make_batch(2, 8, seed=44)
    with pytest.raises(ValueError, match=r"random_ids='unigram' needs the corpus' token counts"):
        mlm(ids, attention_mask=real)
    with pytest.raises(ValueError, match=r"unigram counts must have shape \(vocab.size,\) = \(40,\).*\(39,\)"):
        mlm.with_unigram_counts(torch.ones(39))
    with pytest.raises(ValueError, match="all zero on the ordinary"):
        mlm.with_unigram_counts(torch.zeros(40))
    special_only = torch.zeros(40)
    special_only[VB.mask_id] = 5
    with pytest.raises(ValueError, match="all zero on the ordinary"):
        mlm.with_unigram_counts(special_only)
    with pytest.raises(ValueError, match="finite and >= 0"):
        mlm.with_unigram_counts(torch.full((40,), -1.0))
    with pytest.raises(TypeError, match="unigram counts must be a torch.Tensor"):
        mlm.with_unigram_counts([1] * 40)


def test_default_random_ids_are_unchanged_by_the_unigram_option():
    ids, real = make_batch(16, 32, seed=45)
    a = get_objective("mlm", vocab=VB)(ids, attention_mask=real, generator=gen(46))
    b = get_objective("mlm", vocab=VB, random_ids="uniform")(ids, attention_mask=real, generator=gen(46))
    assert torch.equal(a.input_ids, b.input_ids)
