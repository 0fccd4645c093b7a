import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab, attention_mask_4d
from lmobjectives.objectives.span_corruption import (
    SpanCorruption,
    noise_spans_to_inputs_targets,
    random_spans_noise_mask,
    raw_length_for_inputs,
    raw_length_for_total,
    span_corruption_lengths,
)

T, F_ = True, False
PAD, EOS = 0, 1
SENTINELS = tuple(range(199, 99, -1))  # 100 sentinels, counting down from the end as T5's
V = Vocab(size=200, pad_id=PAD, eos_id=EOS, sentinel_ids=SENTINELS)
SMALL = Vocab(size=100, pad_id=0, eos_id=1, sentinel_ids=(99, 98, 97))


# --------------------------------------------------------------------------- a straightforward T5 port
def t5_noise_counts(length, noise_density, mean_noise_span_length):
    """(noise tokens, noise spans) of T5's random_spans_noise_mask, its TensorFlow arithmetic ported to numpy:
    ``tf.round(tf.cast(length, tf.float32) * noise_density)`` (the Python float becomes a float32 tensor; the
    product is float32; ``tf.round`` rounds half to even, as ``np.round``), clipped to [1, length - 1], then
    ``tf.round(tf.cast(num_noise_tokens, tf.float32) / mean_noise_span_length)`` (float32), at least 1."""
    length = max(length, 2)
    noise = int(np.round(np.float32(length) * np.float32(noise_density)))
    noise = min(max(noise, 1), length - 1)
    spans = int(np.round(np.float32(noise) / np.float32(mean_noise_span_length)))
    return noise, max(spans, 1)


def t5_random_spans_noise_mask(length, noise_density, mean_noise_span_length, rng):
    """Per-example numpy port of T5's random_spans_noise_mask (t5/data/preprocessors.py), random_roll=False."""
    orig_length = length
    length = max(length, 2)
    num_noise_tokens, num_noise_spans = t5_noise_counts(length, noise_density, mean_noise_span_length)
    num_nonnoise_tokens = length - num_noise_tokens

    def random_segmentation(num_items, num_segments):
        first_in_segment = np.concatenate([[0], rng.permutation(np.arange(num_items - 1) < num_segments - 1)])
        segment_id = np.cumsum(first_in_segment)
        return np.bincount(segment_id, minlength=num_segments)

    noise_span_lengths = random_segmentation(num_noise_tokens, num_noise_spans)
    nonnoise_span_lengths = random_segmentation(num_nonnoise_tokens, num_noise_spans)
    interleaved = np.stack([nonnoise_span_lengths, noise_span_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros(length, dtype=np.int64)
    span_start_indicator[span_starts] = 1
    is_noise = np.cumsum(span_start_indicator) % 2 == 1
    return is_noise[:orig_length]


def t5_to_unique_sentinel(tokens, noise_mask, sentinels):
    """T5's noise_span_to_unique_sentinel with ordered sentinels (span k -> sentinels[k])."""
    prev = np.concatenate([[False], noise_mask[:-1]])
    first = noise_mask & ~prev
    later = noise_mask & prev
    sentinel = np.asarray(sentinels)[np.maximum(np.cumsum(first) - 1, 0)]
    return np.where(first, sentinel, tokens)[~later]


def t5_random_spans_helper(inputs_length, noise_density, mean_noise_span_length):
    """T5's random_spans_helper (extra tokens per span 1 on both sides)."""

    def lengths(tokens_length):
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return tokens_length - num_noise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def runs(mask_row):
    """[(is_noise, length), ...] of a 1-d bool sequence."""
    out = []
    for v in mask_row:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return [tuple(r) for r in out]


def chi2_sf(stat, df):
    """P(chi-square with df degrees of freedom >= stat)."""
    return float(
        torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64))
    )


def chi2_pvalue(observed, expected):
    return chi2_sf(sum((o - e) ** 2 / e for o, e in zip(observed, expected)), len(observed) - 1)


def two_sample_pvalue(a: Counter, b: Counter):
    """Chi-square test that two equally sized samples come from one law."""
    keys = sorted(set(a) | set(b))
    pooled = [(a[k] + b[k]) / 2 for k in keys]
    return chi2_sf(sum((a[k] - p) ** 2 / p + (b[k] - p) ** 2 / p for k, p in zip(keys, pooled)), len(keys) - 1)


# --------------------------------------------------------------------------- worked example
EXAMPLE_IDS = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20, 21, 22, 23, 24, 25, 26, 27, 0, 0]])
EXAMPLE_MASK = EXAMPLE_IDS != 0


def example(layout):
    obj = SpanCorruption(SMALL, noise_density=0.3, mean_noise_span_length=1.5, layout=layout)
    return obj(EXAMPLE_IDS, attention_mask=EXAMPLE_MASK, generator=torch.Generator().manual_seed(3))


def test_docstring_example_encoder_decoder():
    b = example("encoder_decoder")
    assert b.input_ids.tolist() == [[10, 11, 12, 99, 14, 15, 16, 17, 98, 1], [20, 21, 22, 23, 24, 25, 99, 1, 0, 0]]
    assert b.attention_mask.tolist() == [[T] * 10, [T] * 8 + [F_, F_]]
    assert b.labels.tolist() == [[99, 13, 98, 18, 19, 1], [99, 26, 27, 1, -100, -100]]
    assert b.decoder_input_ids.tolist() == [[0, 99, 13, 98, 18, 19], [0, 99, 26, 27, 1, 0]]
    assert b.decoder_attention_mask.tolist() == [[T] * 6, [T] * 4 + [F_, F_]]
    assert b.causal is False
    assert b.has_targets.tolist() == [T, T]
    assert b.prefix_mask is None


def test_docstring_example_decoder():
    b = example("decoder")
    assert b.input_ids.tolist() == [
        [0, 10, 11, 12, 99, 14, 15, 16, 17, 98, 1, 99, 13, 98, 18, 19],
        [0, 20, 21, 22, 23, 24, 25, 99, 1, 99, 26, 27, 1, 0, 0, 0],
    ]
    assert b.labels.tolist() == [
        [-100] * 10 + [99, 13, 98, 18, 19, 1],
        [-100] * 8 + [99, 26, 27, 1] + [-100] * 4,
    ]
    assert b.prefix_mask.tolist() == [[T] * 11 + [F_] * 5, [T] * 9 + [F_] * 7]
    assert b.attention_mask.tolist() == [[T] * 16, [T] * 12 + [F_] * 4]
    assert b.causal is True and b.decoder_input_ids is None


def test_docstring_example_noise_spans_to_inputs_targets():
    out = noise_spans_to_inputs_targets(
        torch.tensor([[5, 6, 7, 8, 9]]),
        torch.tensor([[0, 1, 1, 0, 1]]).bool(),
        torch.ones(1, 5, dtype=torch.bool),
        (99, 98),
        eos_id=1,
        pad_id=0,
    )
    assert out.inputs.tolist() == [[5, 99, 8, 98, 1]]
    assert out.targets.tolist() == [[99, 6, 7, 98, 9, 1]]
    assert out.inputs_mask.all() and out.targets_mask.all()


# --------------------------------------------------------------------------- lengths
# (inputs length, density, mean span) -> (raw length, targets length); the first is T5's and HF's 512 -> 568, 114
LENGTH_CASES = [
    ((512, 0.15, 3.0), (568, 114)),
    ((256, 0.15, 3.0), (284, 58)),
    ((1024, 0.15, 3.0), (1137, 229)),
    ((512, 0.5, 3.0), (766, 512)),
    ((512, 0.15, 64.0), (600, 92)),
    ((626, 0.15, 8.0), (719, 123)),
    ((100, 0.25, 1.0), (99, 51)),
    ((511, 0.5, 3.0), (765, 510)),
]


@pytest.mark.parametrize("args, expected", LENGTH_CASES)
def test_raw_length_for_inputs_exact(args, expected):
    assert raw_length_for_inputs(*args) == expected
    assert t5_random_spans_helper(*args) == expected  # the reference agrees
    raw, targets = expected
    inputs_length, targets_length = span_corruption_lengths(raw, *args[1:])
    assert inputs_length <= args[0] and targets_length == targets
    assert span_corruption_lengths(raw + 1, *args[1:])[0] > args[0] or args[1] == 0.5


def test_raw_length_for_inputs_half_density_rule():
    # T5's "minor hack" at density 0.5: 991 raw tokens would give 512 inputs and 513 targets, so T5 takes 990
    # and reports 512 targets; 990 tokens give 495 noise tokens in 15 spans: 511 targets (exact)
    assert t5_random_spans_helper(512, 0.5, 32.0) == (990, 512)
    assert span_corruption_lengths(991, 0.5, 32.0) == (512, 513)
    assert raw_length_for_inputs(512, 0.5, 32.0) == (990, 511)
    assert span_corruption_lengths(990, 0.5, 32.0) == (511, 511)


@pytest.mark.parametrize(
    "total, d, mu", [(626, 0.15, 3.0), (512, 0.15, 3.0), (1024, 0.5, 3.0), (300, 0.25, 64.0), (6, 0.15, 3.0)]
)
def test_raw_length_for_total_is_the_largest_that_fits(total, d, mu):
    raw = raw_length_for_total(total, d, mu)
    assert sum(span_corruption_lengths(raw, d, mu)) <= total
    assert sum(span_corruption_lengths(raw + 1, d, mu)) > total


@pytest.mark.parametrize("args, expected", LENGTH_CASES[:3])
def test_full_rows_fill_the_widths_exactly(args, expected):
    raw, targets = expected
    x = torch.randint(2, 99, (3, raw), generator=torch.Generator().manual_seed(0))
    obj = SpanCorruption(V, noise_density=args[1], mean_noise_span_length=args[2])
    assert obj.raw_length(args[0]) == raw
    b = obj(x, generator=torch.Generator().manual_seed(1))
    assert tuple(b.input_ids.shape) == (3, args[0]) and tuple(b.labels.shape) == (3, targets)
    assert b.attention_mask.all() and b.decoder_attention_mask.all()
    dec = SpanCorruption(V, noise_density=args[1], mean_noise_span_length=args[2], layout="decoder")
    assert dec.raw_length(args[0] + targets) == raw
    assert tuple(dec(x, generator=torch.Generator().manual_seed(1)).input_ids.shape) == (3, args[0] + targets)


# --------------------------------------------------------------------------- the noise mask
@pytest.mark.parametrize(
    "n, d, mu",
    [(568, 0.15, 3.0), (568, 0.5, 3.0), (568, 0.15, 64.0), (568, 0.5, 64.0), (200, 0.25, 1.0), (37, 0.5, 32.0)],
)
def test_noise_mask_counts_and_structure(n, d, mu):
    B = 64
    lengths = torch.randint(max(2, n // 2), n + 1, (B,), generator=torch.Generator().manual_seed(0))
    lengths[0] = n
    mask = random_spans_noise_mask(lengths, d, mu, width=n, generator=torch.Generator().manual_seed(1))
    assert mask.shape == (B, n) and mask.dtype == torch.bool
    span_lengths = []
    for row, length in zip(mask.tolist(), lengths.tolist()):
        noise, spans = t5_noise_counts(length, d, mu)
        assert not any(row[length:])
        r = runs(row[:length])
        assert sum(k for v, k in r if v) == noise  # exactly round(L * density), clipped
        assert [v for v, _ in r] == [False, True] * spans  # spans alternate, non-noise first, noise last
        span_lengths += [k for v, k in r if v]
    # mean span length: exactly noise / spans per row, so close to mu whenever spans > 1
    if n * d / mu >= 10:
        assert abs(np.mean(span_lengths) - mu) / mu < 0.05


def test_noise_mask_per_row_denoisers():
    # UL2: one (density, mean span) per row, including the prefix-LM-like extreme (one span: a suffix)
    d = torch.tensor([0.15, 0.5, 0.5, 0.15, 0.25])
    mu = torch.tensor([3.0, 3.0, 64.0, 64.0, 1000.0])
    lengths = torch.tensor([512, 512, 128, 512, 100])
    mask = random_spans_noise_mask(lengths, d, mu, width=512, generator=torch.Generator().manual_seed(0))
    expected_noise = [77, 256, 64, 77, 25]
    expected_spans = [26, 85, 1, 1, 1]
    for b in range(5):
        r = runs(mask[b, : lengths[b]].tolist())
        assert sum(k for v, k in r if v) == expected_noise[b]
        assert len(r) == 2 * expected_spans[b]
    assert mask[2, :128].tolist() == [F_] * 64 + [T] * 64  # a single span is the suffix: a prefix-LM split
    assert mask[4, :100].tolist() == [F_] * 75 + [T] * 25


def test_noise_mask_is_seeded_and_uses_only_the_generator():
    lengths = torch.full((8,), 100)
    a = random_spans_noise_mask(lengths, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    b = random_spans_noise_mask(lengths, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, random_spans_noise_mask(lengths, generator=torch.Generator().manual_seed(6)))


# small settings whose masks can all be listed: (length, density, mean span) -> number of masks
DIST_CASES = [
    (12, 0.5, 3.0, math.comb(5, 1) * math.comb(5, 1)),
    (9, 0.3, 1.5, math.comb(2, 1) * math.comb(5, 1)),
    (10, 0.4, 1.0, math.comb(3, 3) * math.comb(5, 3)),
]


def test_segmentation_is_uniform_and_matches_the_reference():
    # one batch mixing three settings, row by row; every mask of a setting is equally likely (T5), and the
    # empirical distribution matches the per-example numpy port of T5's random_spans_noise_mask
    per_case = 6000
    B = per_case * len(DIST_CASES)
    case = torch.arange(B) % len(DIST_CASES)
    pick = lambda i: torch.tensor([c[i] for c in DIST_CASES])[case]  # noqa: E731
    mask = random_spans_noise_mask(pick(0), pick(1), pick(2), width=12, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    for i, (n, d, mu, n_masks) in enumerate(DIST_CASES):
        ours = Counter(tuple(r[:n]) for r in mask[case == i].tolist())
        ref = Counter(tuple(t5_random_spans_noise_mask(n, d, mu, rng).tolist()) for _ in range(per_case))
        assert set(ours) == set(ref) and len(ours) == n_masks  # same support, all of it reached
        keys = sorted(ours)
        assert chi2_pvalue([ours[k] for k in keys], [per_case / n_masks] * n_masks) > 1e-3
        assert two_sample_pvalue(ours, ref) > 1e-3  # ours against the reference's draws


def test_span_lengths_follow_the_reference_at_t5_scale():
    # 568 tokens: the distribution of a noise span's length (pooled) equals the reference's
    B = 400
    mask = random_spans_noise_mask(torch.full((B,), 568), generator=torch.Generator().manual_seed(0))
    ours = Counter(min(k, 8) for row in mask.tolist() for v, k in runs(row) if v)
    rng = np.random.default_rng(0)
    ref_masks = [t5_random_spans_noise_mask(568, 0.15, 3.0, rng).tolist() for _ in range(B)]
    ref = Counter(min(k, 8) for row in ref_masks for v, k in runs(row) if v)
    assert sum(ours.values()) == sum(ref.values()) == B * 28
    assert two_sample_pvalue(ours, ref) > 1e-3


# --------------------------------------------------------------------------- inputs and targets
def reconstruct(inputs, targets, sentinels):
    """Original tokens from one row's real inputs and targets (EOS dropped)."""
    assert targets[0] == sentinels[0] if targets else True
    spans, current = {}, None
    for tok in targets:
        if tok in sentinels:
            current = tok
            spans[current] = []
        else:
            spans[current].append(tok)
    out = []
    for tok in inputs:
        out += spans.pop(tok) if tok in sentinels else [tok]
    assert not spans
    return out


def test_inputs_targets_match_the_t5_port():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, 99, (32, 120), generator=g)
    lengths = torch.randint(2, 121, (32,), generator=g)
    real = torch.arange(120) < lengths[:, None]
    b = SpanCorruption(V)(x, attention_mask=real, generator=g)
    # recover the mask from the batch is not possible in general; instead, draw again with the same seed
    g2 = torch.Generator().manual_seed(0)
    torch.randint(2, 99, (32, 120), generator=g2), torch.randint(2, 121, (32,), generator=g2)
    mask = random_spans_noise_mask(lengths, 0.15, 3.0, width=120, generator=g2)
    for row in range(32):
        n = int(lengths[row])
        tokens, m = x[row, :n].numpy(), mask[row, :n].numpy()
        inputs = list(t5_to_unique_sentinel(tokens, m, SENTINELS)) + [EOS]
        targets = list(t5_to_unique_sentinel(tokens, ~m, SENTINELS)) + [EOS]
        assert b.input_ids[row, : len(inputs)].tolist() == inputs
        assert b.attention_mask[row].sum() == len(inputs)
        assert b.labels[row, : len(targets)].tolist() == targets
        assert (b.labels[row, len(targets) :] == IGNORE_INDEX).all()


@settings(max_examples=80, deadline=None)
@given(
    lengths=st.lists(st.integers(2, 40), min_size=1, max_size=6),
    d=st.sampled_from([0.05, 0.15, 0.3, 0.5]),
    mu=st.sampled_from([1.0, 1.5, 3.0, 8.0, 64.0]),
    layout=st.sampled_from(["encoder_decoder", "decoder"]),
    seed=st.integers(0, 2**31),
)
def test_reconstruction_properties(lengths, d, mu, layout, seed):
    g = torch.Generator().manual_seed(seed)
    W = max(lengths)
    real = torch.arange(W) < torch.tensor(lengths)[:, None]
    x = torch.where(real, torch.randint(2, 100, (len(lengths), W), generator=g), PAD)
    obj = SpanCorruption(V, noise_density=d, mean_noise_span_length=mu, layout=layout)
    feasible = all((counts := t5_noise_counts(n, d, mu)) and counts[1] <= n - counts[0] for n in lengths)
    if not feasible:
        with pytest.raises(ValueError, match="too short|cannot make"):
            obj(x, attention_mask=real, generator=g)
        return
    b = obj(x, attention_mask=real, generator=g)
    for row, n in enumerate(lengths):
        if layout == "encoder_decoder":
            inputs = b.input_ids[row][b.attention_mask[row]].tolist()
            targets = b.labels[row][b.labels[row] != IGNORE_INDEX].tolist()
            shifted = [t if t != IGNORE_INDEX else PAD for t in b.labels[row, :-1].tolist()]
            assert b.decoder_input_ids[row, 1:].tolist() == shifted
        else:
            seq = b.input_ids[row, 1:][b.attention_mask[row, 1:]].tolist() + [EOS]
            i_len = int(b.prefix_mask[row].sum()) - 1
            inputs, targets = seq[:i_len], seq[i_len:]
            has = b.labels[row] != IGNORE_INDEX
            assert b.labels[row][has].tolist() == targets
            assert torch.equal(b.labels[row, :-1][has[:-1]], b.input_ids[row, 1:][has[:-1]])  # next position holds it
        assert inputs[-1] == EOS and targets[-1] == EOS
        noise, spans = t5_noise_counts(n, d, mu)
        assert len(inputs) == n - noise + spans + 1 and len(targets) == noise + spans + 1
        assert [t for t in inputs if t in SENTINELS] == list(SENTINELS[:spans])  # in order, one per span
        assert reconstruct(inputs[:-1], targets[:-1], SENTINELS) == x[row, :n].tolist()


def test_noise_spans_to_inputs_targets_general_masks():
    x = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10]])
    noise = torch.tensor([[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]]).bool()
    real = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]).bool()
    out = noise_spans_to_inputs_targets(x, noise, real, (99, 98), eos_id=1, pad_id=0)
    # a mask starting with noise: the sentinel names the same span in both; no noise: targets are EOS alone;
    # a noise flag on padding is ignored (a prefix-LM split: one suffix span)
    assert out.inputs.tolist() == [[99, 7, 98, 9, 10, 1, 0], [5, 6, 7, 8, 9, 10, 1], [5, 6, 7, 99, 1, 0, 0]]
    assert out.targets.tolist() == [[99, 5, 6, 98, 8, 1], [1, 0, 0, 0, 0, 0], [99, 8, 9, 1, 0, 0]]
    assert out.inputs_length.tolist() == [6, 7, 5] and out.targets_length.tolist() == [6, 1, 4]
    assert out.targets_mask.tolist() == [[T] * 6, [T] + [F_] * 5, [T] * 4 + [F_] * 2]


# --------------------------------------------------------------------------- the objective
def test_does_not_edit_input_and_is_seeded():
    x = torch.randint(2, 99, (4, 50), generator=torch.Generator().manual_seed(0))
    m = torch.ones(4, 50, dtype=torch.bool)
    before, m_before = x.clone(), m.clone()
    obj = SpanCorruption(V)
    a = obj(x, attention_mask=m, generator=torch.Generator().manual_seed(7))
    a.input_ids[0, 0] = 3
    a.attention_mask[0, 0] = False
    assert torch.equal(x, before) and torch.equal(m, m_before)
    b = obj(x, attention_mask=m, generator=torch.Generator().manual_seed(7))
    c = obj(x, attention_mask=m, generator=torch.Generator().manual_seed(7))
    assert torch.equal(b.input_ids, c.input_ids) and torch.equal(b.labels, c.labels)


def test_padding_from_pad_id_without_attention_mask_and_any_real_pattern():
    x = EXAMPLE_IDS
    a = SpanCorruption(SMALL, 0.3, 1.5)(x, generator=torch.Generator().manual_seed(3))
    assert a.input_ids.tolist() == example("encoder_decoder").input_ids.tolist()
    # real tokens need not be a prefix: the draw is over the real tokens in order
    left = torch.cat([torch.zeros(2, 3, dtype=torch.long), x], 1)
    lm = torch.cat([torch.zeros(2, 3, dtype=torch.bool), EXAMPLE_MASK], 1)
    b = SpanCorruption(SMALL, 0.3, 1.5)(left, attention_mask=lm, generator=torch.Generator().manual_seed(3))
    assert (b.input_ids.shape[1], b.labels.shape[1]) == span_corruption_lengths(13, 0.3, 1.5) == (13, 8)
    assert b.labels[:, :6].tolist() == example("encoder_decoder").labels.tolist()


def test_decoder_layout_attention_is_prefix_lm():
    b = example("decoder")
    m = attention_mask_4d(b)[1, 0]  # row 1: 8 inputs tokens + EOS, start token at 0
    i_len = 8
    assert m[: i_len + 1, : i_len + 1].all()  # start token and inputs see each other
    assert not m[: i_len + 1, i_len + 1 :].any()  # ... but no target
    assert not m[i_len + 1, i_len + 2 :].any() and m[i_len + 2, : i_len + 3].all()  # targets are causal


def test_encoder_decoder_batch_feeds_hf_t5():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=V.size,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        dropout_rate=0.0,
        decoder_start_token_id=V.pad_id,
        pad_token_id=V.pad_id,
        eos_token_id=V.eos_id,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, 99, (4, 40), generator=g)
    real = torch.arange(40) < torch.tensor([40, 31, 12, 25])[:, None]
    b = SpanCorruption(V)(torch.where(real, x, PAD), attention_mask=real, generator=g)
    assert (b.labels == IGNORE_INDEX).any()  # padded targets are part of the check
    with torch.no_grad():
        own = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels)
        given_ = model(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            labels=b.labels,
            decoder_input_ids=b.decoder_input_ids,
            decoder_attention_mask=b.decoder_attention_mask,
        )
    assert torch.equal(model._shift_right(b.labels), b.decoder_input_ids)
    ce = F.cross_entropy(given_.logits.reshape(-1, V.size), b.labels.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(own.loss, given_.loss)
    torch.testing.assert_close(given_.loss, ce)


@pytest.mark.parametrize("layout", ["encoder_decoder", "decoder"])
def test_ul2_settings_run(layout):
    # UL2's denoisers at 568 tokens: dense (0.5) and long spans (64) fit in 100 sentinels
    x = torch.randint(2, 99, (4, 568), generator=torch.Generator().manual_seed(0))
    for d, mu in [(0.5, 3.0), (0.15, 64.0), (0.5, 64.0), (0.15, 8.0)]:
        b = SpanCorruption(V, noise_density=d, mean_noise_span_length=mu, layout=layout)(x, generator=torch.Generator())
        assert int(b.num_targets) == 4 * span_corruption_lengths(568, d, mu)[1]


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "options, exc, words",
    [
        ({"noise_density": 0.0}, ValueError, "noise_density must lie in \\(0, 1\\)"),
        ({"noise_density": 1.0}, ValueError, "noise_density must lie in \\(0, 1\\)"),
        ({"noise_density": "0.1"}, TypeError, "noise_density"),
        ({"mean_noise_span_length": 0.5}, ValueError, "mean_noise_span_length must be >= 1"),
        ({"mean_noise_span_length": float("nan")}, TypeError, "mean_noise_span_length"),
        ({"layout": "encoder"}, ValueError, "layout must be one of"),
    ],
)
def test_bad_options(options, exc, words):
    with pytest.raises(exc, match=words):
        SpanCorruption(V, **options)


def test_vocab_requirements():
    with pytest.raises(ValueError, match="Vocab.sentinel_ids"):
        SpanCorruption(Vocab(size=10, pad_id=0, eos_id=1))
    with pytest.raises(ValueError, match="eos_id"):
        SpanCorruption(Vocab(size=10, pad_id=0, sentinel_ids=(9,)))


def test_too_few_sentinels_names_the_counts():
    x = torch.randint(2, 90, (2, 100), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"row \d has 5 noise spans but Vocab.sentinel_ids holds 3 sentinels"):
        SpanCorruption(SMALL)(x, generator=torch.Generator())  # 15 noise tokens in 5 spans


def test_sentinel_in_the_input_is_refused():
    x = torch.randint(2, 90, (2, 30), generator=torch.Generator().manual_seed(0))
    x[1, 4] = 98
    with pytest.raises(ValueError, match=r"input_ids\[1, 4\] = 98 is one of the sentinels \(Vocab.sentinel_ids\)"):
        SpanCorruption(SMALL)(x, generator=torch.Generator())
    scattered = Vocab(size=200, pad_id=0, eos_id=1, sentinel_ids=(199, 100, 20, 60, 70, 80))
    x = torch.randint(21, 60, (2, 30), generator=torch.Generator().manual_seed(0))
    x[1, 4] = 150  # inside the range of non-contiguous sentinels but not one of them: fine
    SpanCorruption(scattered)(x, generator=torch.Generator())
    x[0, 0] = 60
    with pytest.raises(ValueError, match=r"input_ids\[0, 0\] = 60"):
        SpanCorruption(scattered)(x, generator=torch.Generator())


def test_rows_too_short_are_refused():
    with pytest.raises(ValueError, match="row 1 has 1 real token"):
        SpanCorruption(V)(torch.tensor([[5, 6, 7], [5, 0, 0]]), generator=torch.Generator())
    # density 0.6 with one-token spans: 3 noise spans need 3 non-noise tokens, there are 2
    with pytest.raises(ValueError, match="5 real tokens.*3 noise tokens in 3 spans.*2 non-noise tokens"):
        dense = SpanCorruption(V, noise_density=0.6, mean_noise_span_length=1.0)
        dense(torch.full((1, 5), 7), generator=torch.Generator())
    with pytest.raises(ValueError, match="input_ids of shape \\(2, 1\\) has 1 real token"):
        SpanCorruption(V)(torch.full((2, 1), 7), generator=torch.Generator())
    with pytest.raises(ValueError, match="raw_length=5 has 5 real tokens"):
        span_corruption_lengths(5, 0.6, 1.0)
    with pytest.raises(ValueError, match="inputs_length must be an int >= 3, got 2"):
        raw_length_for_inputs(2)


def test_noise_mask_bad_arguments():
    with pytest.raises(ValueError, match=r"noise_density must lie in \(0, 1\), got 1.7.* \(row 1\)"):
        random_spans_noise_mask(torch.tensor([10, 10]), torch.tensor([0.1, 1.7]), 3.0)
    with pytest.raises(ValueError, match="mean_noise_span_length must be a finite float >= 1, got 0.5"):
        random_spans_noise_mask(torch.tensor([10, 10]), 0.15, torch.tensor([3.0, 0.5]))
    with pytest.raises(ValueError, match=r"shape \(B,\) = \(2,\)"):
        random_spans_noise_mask(torch.tensor([10, 10]), torch.tensor([0.1, 0.2, 0.3]), 3.0)
    with pytest.raises(ValueError, match="more than width=8"):
        random_spans_noise_mask(torch.tensor([10, 10]), 0.15, 3.0, width=8)
    with pytest.raises(TypeError, match="integer"):
        random_spans_noise_mask(torch.tensor([10.0]), 0.15, 3.0)


def test_noise_mask_docstring_example():
    g = torch.Generator().manual_seed(0)
    mask = random_spans_noise_mask(
        torch.tensor([8, 5]), torch.tensor([0.5, 0.4]), torch.tensor([2.0, 1.0]), generator=g
    )
    assert mask.int().tolist() == [[0, 1, 1, 1, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0, 0, 0]]


@pytest.mark.parametrize("gaps, cuts, starve", [(60, 1, False), (64, 2, False), (60, 1, True)])
def test_candidate_draw_is_a_uniform_subset(gaps, cuts, starve, monkeypatch):
    # the cheap path of _random_cuts (keys for Bernoulli candidates only) against the uniform law; with
    # starve, candidates are so rare that most rows hold too few and are redrawn: the law must not change
    from lmobjectives.objectives import _noise_spans as sc

    B = 100000
    g_, c_ = torch.full((B,), gaps), torch.full((B,), cuts)
    assert sc._candidates(g_, c_)[1] < gaps  # this setting takes the candidate path
    if starve:
        real_candidates = sc._candidates
        monkeypatch.setattr(sc, "_candidates", lambda g, c: (real_candidates(g, c)[0] / 4, real_candidates(g, c)[1]))
    # mix in rows of another length, so that each row's own end is exercised
    g_[1::2] = 7
    chosen = sc._random_cuts(g_, c_, cuts, torch.Generator().manual_seed(0))
    for rows, n in ((slice(0, None, 2), gaps), (slice(1, None, 2), 7)):
        counts = Counter(tuple(r) for r in chosen[rows].tolist())
        cells = math.comb(n, cuts)
        assert len(counts) == cells and all(len(set(c)) == cuts and max(c) < n for c in counts)
        assert chi2_pvalue(list(counts.values()), [B / 2 / cells] * cells) > 1e-3


# --------------------------------------------------------------------------- fixed-count fast path vs general path
BIG = Vocab(size=1000, pad_id=0, eos_id=1, sentinel_ids=tuple(range(999, 899, -1)))


def masks_from_batch(b, n, vocab):
    """Each row's noise mask over its n tokens 2, 3, ..., n + 1 (distinct): the tokens in the targets."""
    out = []
    for row in range(b.labels.shape[0]):
        noise = set(b.labels[row][b.labels[row] != IGNORE_INDEX].tolist())
        out.append(tuple(t in noise for t in range(2, n + 2)))
    return out


def spy_general_path(monkeypatch):
    from lmobjectives.objectives import span_corruption as sc

    calls = []
    real_mask = sc.random_spans_noise_mask
    monkeypatch.setattr(sc, "random_spans_noise_mask", lambda *a, **k: calls.append(1) or real_mask(*a, **k))
    return calls


@pytest.mark.parametrize("padded", [False, True])
def test_fast_path_is_t5s_law_and_t5s_outputs(padded, monkeypatch):
    # rows of one length (no padding, or the same padding everywhere) take the fixed-count path; its masks
    # follow T5's law (uniform, same as the numpy port) and its inputs / targets are T5's for that mask
    calls = spy_general_path(monkeypatch)
    per_case, rng = 6000, np.random.default_rng(1)
    for n, d, mu, n_masks in DIST_CASES:
        W = n + 3 if padded else n
        x = torch.where(torch.arange(W) < n, torch.arange(2, W + 2), PAD).expand(per_case, W)
        b = SpanCorruption(BIG, d, mu)(x, attention_mask=x != PAD, generator=torch.Generator().manual_seed(n))
        assert (b.input_ids.shape[1], b.labels.shape[1]) == span_corruption_lengths(W, d, mu)
        masks = masks_from_batch(b, n, BIG)
        for row in (0, 1, per_case - 1):
            m, tokens = np.array(masks[row]), np.arange(2, n + 2)
            inputs = list(t5_to_unique_sentinel(tokens, m, BIG.sentinel_ids)) + [EOS]
            targets = list(t5_to_unique_sentinel(tokens, ~m, BIG.sentinel_ids)) + [EOS]
            assert b.input_ids[row][b.attention_mask[row]].tolist() == inputs
            assert b.labels[row][b.decoder_attention_mask[row]].tolist() == targets
        ours = Counter(masks)
        ref = Counter(tuple(t5_random_spans_noise_mask(n, d, mu, rng).tolist()) for _ in range(per_case))
        assert set(ours) == set(ref) and len(ours) == n_masks
        keys = sorted(ours)
        assert chi2_pvalue([ours[k] for k in keys], [per_case / n_masks] * n_masks) > 1e-3
        assert two_sample_pvalue(ours, ref) > 1e-3
    assert not calls  # never the general path


def test_general_path_is_t5s_law(monkeypatch):
    # rows of different lengths take the general path (random_spans_noise_mask + noise_spans_to_inputs_targets)
    calls = spy_general_path(monkeypatch)
    per_case, rng = 6000, np.random.default_rng(2)
    for n, d, mu, n_masks in DIST_CASES:
        other = 12 if n < 12 else 11  # every other row: another length
        lengths = torch.tensor([n, other]).repeat(per_case)  # (2 * per_case,)
        x = torch.where(torch.arange(12) < lengths[:, None], torch.arange(2, 14), PAD)
        b = SpanCorruption(BIG, d, mu)(x, generator=torch.Generator().manual_seed(n))
        ours = Counter(masks_from_batch(b, n, BIG)[::2])
        ref = Counter(tuple(t5_random_spans_noise_mask(n, d, mu, rng).tolist()) for _ in range(per_case))
        assert set(ours) == set(ref) and len(ours) == n_masks
        keys = sorted(ours)
        assert chi2_pvalue([ours[k] for k in keys], [per_case / n_masks] * n_masks) > 1e-3
        assert two_sample_pvalue(ours, ref) > 1e-3
    assert len(calls) == len(DIST_CASES)


def test_fast_path_span_lengths_follow_the_reference_at_t5_scale(monkeypatch):
    calls = spy_general_path(monkeypatch)
    B = 400
    x = torch.arange(2, 570).expand(B, 568)
    b = SpanCorruption(BIG)(x, generator=torch.Generator().manual_seed(0))
    assert tuple(b.input_ids.shape) == (B, 512) and tuple(b.labels.shape) == (B, 114) and not calls
    ours = Counter(min(k, 8) for row in masks_from_batch(b, 568, BIG) for v, k in runs(row) if v)
    rng = np.random.default_rng(0)
    ref_masks = [t5_random_spans_noise_mask(568, 0.15, 3.0, rng).tolist() for _ in range(B)]
    ref = Counter(min(k, 8) for row in ref_masks for v, k in runs(row) if v)
    assert sum(ours.values()) == sum(ref.values()) == B * 28
    assert two_sample_pvalue(ours, ref) > 1e-3


@pytest.mark.parametrize("gaps, cuts", [(6, 2), (6, 4), (7, 3), (5, 0), (5, 5), (1, 1)])
def test_fixed_cuts_is_a_uniform_subset(gaps, cuts):
    from lmobjectives.objectives import _noise_spans as sc

    B = 30000
    chosen = sc._fixed_cuts(B, gaps, cuts, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert chosen.shape == (B, cuts)
    counts = Counter(tuple(r) for r in chosen.tolist())
    cells = math.comb(gaps, cuts)
    assert len(counts) == cells and all(list(c) == sorted(set(c)) and (not c or max(c) < gaps) for c in counts)
    if cells > 1:
        assert chi2_pvalue(list(counts.values()), [B / cells] * cells) > 1e-3


# --------------------------------------------------------------------------- T5's float32 counts, every length
@pytest.mark.parametrize("mu", [3.0, 8.0, 1.5])
@pytest.mark.parametrize("d", [0.15, 0.3, 0.5, 0.35, 0.25, 0.1, 0.05, 0.45, 0.8])
def test_counts_are_t5s_float32_arithmetic_on_every_length(d, mu):
    # T5 rounds length * density in float32 (TensorFlow), not float64: they differ on exact ties in float64
    # (18 lengths <= 2048 at density 0.15, 39 at 0.3); every length 1..2048 against the numpy port
    lengths = [n for n in range(2, 2049) if t5_noise_counts(n, d, mu)[1] <= n - t5_noise_counts(n, d, mu)[0]]
    for n in lengths:
        noise, spans = t5_noise_counts(n, d, mu)
        assert span_corruption_lengths(n, d, mu) == (n - noise + spans + 1, noise + spans + 1), n
    with pytest.raises(ValueError, match="raw_length must be an int >= 2, got 1"):
        span_corruption_lengths(1, d, mu)
    # the batched mask (UL2's path) counts the same
    mask = random_spans_noise_mask(torch.tensor(lengths), d, mu, width=2048, generator=torch.Generator().manual_seed(0))
    starts = mask & ~torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1)
    got = list(zip(mask.sum(1).tolist(), starts.sum(1).tolist()))
    assert got == [t5_noise_counts(n, d, mu) for n in lengths]


def test_t5s_float32_tie_literal():
    # 190 * 0.15 is 28.499999999999996 in float64 (28) but 28.500002 in float32 (29): T5 gives 29 noise tokens
    assert t5_noise_counts(190, 0.15, 3.0) == (29, 10)
    assert span_corruption_lengths(190) == (190 - 29 + 10 + 1, 29 + 10 + 1)
    b = SpanCorruption(V)(torch.randint(2, 99, (2, 190), generator=torch.Generator().manual_seed(0)))
    assert (b.labels != IGNORE_INDEX).sum(1).tolist() == [40, 40]


# --------------------------------------------------------------------------- interior padding
def rows_with_holes(seed, B, T, hole_rate):
    """Rows of distinct ordinary tokens whose real tokens have holes anywhere (interior, left, right)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randperm(98, generator=g)[:T].add(2).expand(B, T).clone()  # ids 2..99, distinct within a row
    real = torch.rand(B, T, generator=g) >= hole_rate  # (B, T) holes anywhere
    real[0, : T // 4] = False  # a left-padded row with holes
    real[-1, -T // 4 :] = False  # a right-padded row with holes
    real[:, T // 2] = real[:, T // 2 + 1] = True  # at least 2 real tokens
    return x.masked_fill(~real, PAD), real


def read_pieces(b, layout):
    """Per row: (inputs, targets), EOS included, read back from a span-corruption batch."""
    out = []
    for row in range(b.input_ids.shape[0]):
        if layout == "encoder_decoder":
            out.append(
                (
                    b.input_ids[row][b.attention_mask[row]].tolist(),
                    b.labels[row][b.labels[row] != IGNORE_INDEX].tolist(),
                )
            )
        else:
            seq = b.input_ids[row, 1:][b.attention_mask[row, 1:]].tolist() + [EOS]
            i_len = int(b.prefix_mask[row].sum()) - 1
            out.append((seq[:i_len], seq[i_len:]))
    return out


@pytest.mark.parametrize("layout", ["encoder_decoder", "decoder"])
@pytest.mark.parametrize("hole_rate", [0.1, 0.3])
def test_interior_padding_spans_are_counted_and_cut_over_the_real_tokens(layout, hole_rate):
    # holes in attention_mask inside a row: the spans are T5's over the row's real tokens, in order, as if the
    # holes were not there (a span crossing a hole is one span)
    for seed in range(20):
        for d, mu in ((0.15, 3.0), (0.5, 3.0), (0.3, 1.5)):
            x, real = rows_with_holes(seed, 6, 60, hole_rate)
            b = SpanCorruption(V, noise_density=d, mean_noise_span_length=mu, layout=layout)(
                x, attention_mask=real, generator=torch.Generator().manual_seed(seed)
            )
            for row, (inputs, targets) in enumerate(read_pieces(b, layout)):
                n = int(real[row].sum())
                noise, spans = t5_noise_counts(n, d, mu)
                assert (len(inputs), len(targets)) == (n - noise + spans + 1, noise + spans + 1), (seed, row)
                assert [t for t in inputs if t in SENTINELS] == list(SENTINELS[:spans])
                assert reconstruct(inputs[:-1], targets[:-1], SENTINELS) == x[row][real[row]].tolist()


def test_interior_padding_equals_the_compacted_rows():
    # the same real tokens, compacted to the left: the same inputs and targets from the same draws
    x, real = rows_with_holes(5, 6, 40, 0.2)
    order = (~real).long().argsort(dim=1, stable=True)
    compact_x, compact_real = x.gather(1, order), real.gather(1, order)
    assert not bool(real.equal(compact_real))
    for layout in ("encoder_decoder", "decoder"):
        obj = SpanCorruption(V, layout=layout)
        a = obj(x, attention_mask=real, generator=torch.Generator().manual_seed(1))
        c = obj(compact_x, attention_mask=compact_real, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a.input_ids, c.input_ids) and torch.equal(a.labels, c.labels)


def test_noise_spans_to_inputs_targets_spans_cross_holes():
    # positions 2 and 4 are noise with a hole (position 3) between them: one span
    x = torch.tensor([[5, 6, 7, 0, 8, 9]])
    out = noise_spans_to_inputs_targets(
        x,
        torch.tensor([[0, 0, 1, 0, 1, 0]]).bool(),
        torch.tensor([[1, 1, 1, 0, 1, 1]]).bool(),
        (99, 98),
        eos_id=1,
        pad_id=0,
    )
    assert out.inputs.tolist() == [[5, 6, 99, 9, 1]] and out.targets.tolist() == [[99, 7, 8, 1]]


def test_length_helper_clips_the_span_count_where_t5s_overflows():
    # T5's random_spans_helper lets round(noise / mean) be 0; its mask makes at least one span, so T5's raw length
    # overflows inputs_length by one token there; ours clips to 1 span, as the mask does, and fits
    for L in range(4, 10):
        t5_raw, _ = t5_random_spans_helper(L, 0.15, 3.0)
        noise, spans = t5_noise_counts(t5_raw, 0.15, 3.0)
        assert t5_raw - noise + spans + 1 == L + 1  # T5's own mask overflows
        raw, _ = raw_length_for_inputs(L, 0.15, 3.0)
        assert raw == t5_raw - 1 and span_corruption_lengths(raw, 0.15, 3.0)[0] == L


def test_length_helper_uses_the_masks_float32_counts():
    # at inputs_length 166 (density 0.15, span 8) T5's float64 helper stops at 189 raw tokens; with the mask's
    # float32 counts 190 tokens (29 noise, not 28) still fit
    assert t5_random_spans_helper(166, 0.15, 8.0)[0] == 189
    assert raw_length_for_inputs(166, 0.15, 8.0)[0] == 190 and span_corruption_lengths(190, 0.15, 8.0)[0] == 166
    assert span_corruption_lengths(191, 0.15, 8.0)[0] > 166
