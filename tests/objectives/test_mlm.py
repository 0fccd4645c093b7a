import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, OBJECTIVES, Vocab, get_objective
from lmobjectives.objectives.mlm import MaskedLM, _at_least_one, _bernoulli_positions, _truncated_geometric, word_ids_from_starts

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
        mlm = get_objective("mlm", vocab=V, probability=1.0, mask_fraction=1.0, random_fraction=0.0, selection=selection)
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
        u = _at_least_one(torch.rand(2, 3, generator=g), eligible, 0.5, g)
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


@pytest.mark.parametrize("unit", ["word", "span"])
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
    b = get_objective("mlm", vocab=VB, unit="word", selection="exact")(ids, attention_mask=real, word_ids=wid, generator=gen(15))
    got = (b.labels != IGNORE_INDEX).sum(-1).tolist()
    longest = max(len(w) for ws in words for w in ws)
    for n_b, k_b, ws in zip(maskable.sum(-1).tolist(), got, words):
        k = max(1, round(n_b * 0.15))
        # at most the budget (unless the first word alone exceeds it), less than one word short of it
        assert k_b <= max(k, longest)
        assert k_b > k - longest
    budget = sum(max(1, round(n * 0.15)) for n in maskable.sum(-1).tolist())
    assert 0.85 < sum(got) / budget <= 1.05


def test_words_are_runs_of_equal_ids():
    # HF word_ids() of a pair restart at 0 after [SEP]; a repeated id after another word is a new word
    x = torch.tensor([[1, 4, 5, 2, 6, 7, 8, 2]])
    wid = torch.tensor([[-1, 0, 0, -1, 0, 1, 0, -1]])
    maskable = maskable_of(x, torch.ones_like(x, dtype=torch.bool), V)
    index, length, n_words = MaskedLM._words(maskable, wid)
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
    lengths = _truncated_geometric(u, 0.2, 10)
    assert lengths.min() == 1 and lengths.max() == 10
    pmf = [0.2 * 0.8 ** (k - 1) / (1 - 0.8**10) for k in range(1, 11)]
    counts = torch.bincount(lengths, minlength=11)[1:].tolist()
    for c, p in zip(counts, pmf):
        assert binomial_ok(c, 200_000, p)
    mean = sum(k * p for k, p in zip(range(1, 11), pmf))
    assert abs(mean - 3.797) < 1e-3  # SpanBERT's 3.8
    assert abs(lengths.double().mean().item() - mean) < 0.03
    assert _truncated_geometric(u[:10], 1.0, 10).tolist() == [1] * 10


def spans_of(mlm, ids, real, wid, seed):
    """Reproduce the span selection of mlm(..., generator=gen(seed)): one list of word slots per span."""
    maskable = maskable_of(ids, real) & (wid >= 0)
    selected, split, _ = mlm._select_spans(maskable, wid, gen(seed))
    index, _, _ = MaskedLM._words(maskable, wid)
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
    mlm = get_objective("mlm", vocab=VB, unit="span", selection="exact", probability=0.03, mask_fraction=0.5, random_fraction=0.0)
    selected, rows = spans_of(mlm, ids, real, wid, seed=19)
    sizes = []
    for r, spans in enumerate(rows):
        for words in spans:
            lo, hi = words[0], words[-1]
            assert hi - lo + 1 <= 10  # within one sampled span of at most 10 words
            assert selected[r, lo : hi + 1].all()  # gaps were covered by earlier spans
            sizes.append(len(words))
    assert max(sizes) <= 10
    assert abs(sum(sizes) / len(sizes) - 3.8) < 0.3
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
    unit=st.sampled_from(["token", "word", "span"]),
    selection=st.sampled_from(["bernoulli", "exact"]),
    p=st.floats(0.01, 1.0),
    m=st.floats(0.0, 1.0),
    r=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_properties(data, unit, selection, p, m, r, seed):
    ids, real, wid = data
    r = min(r, 1.0 - m)
    mlm = get_objective("mlm", vocab=VB, unit=unit, selection=selection, probability=p, mask_fraction=m, random_fraction=r)
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
    for unit in ("token", "word", "span"):
        get_objective("mlm", vocab=VB, unit=unit)(ids, attention_mask=real, word_ids=None if unit == "token" else wid, generator=gen())
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- devices


@pytest.mark.parametrize("unit", ["token", "word", "span"])
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
        pos = _bernoulli_positions(n, p, g, torch.device("cpu"))
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
