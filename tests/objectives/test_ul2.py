import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab, attention_mask_4d
from lmobjectives.objectives.span_corruption import span_corruption_lengths
from lmobjectives.objectives.ul2 import UL2

T_, F_ = True, False
PAD, EOS, NLU, NLG, S2S = 0, 1, 2, 3, 4
SENTINELS = tuple(range(299, 199, -1))  # 100 sentinels
V = Vocab(size=300, pad_id=PAD, eos_id=EOS, sentinel_ids=SENTINELS, nlu_id=NLU, nlg_id=NLG, s2s_id=S2S)
TEXT = (5, 200)  # ordinary token ids: [5, 200)

# the paper's seven denoisers, in UL2's default order: (paradigm, mean span, density); S last
DENOISERS = [(NLU, 3.0, 0.15), (NLU, 8.0, 0.15), (NLG, 3.0, 0.5), (NLG, 8.0, 0.5), (NLG, 64.0, 0.15), (NLG, 64.0, 0.5)]
S_TASK = len(DENOISERS)


def only(task: int) -> tuple[float, ...]:
    """Rates that always draw ``task``."""
    return tuple(float(i == task) for i in range(S_TASK + 1))


def t5_counts(n: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a row of n tokens, as T5's random_spans_noise_mask computes them: in
    TensorFlow float32, ``tf.round`` half to even (numpy port)."""
    noise = min(max(int(np.round(np.float32(n) * np.float32(density))), 1), n - 1)
    return noise, max(int(np.round(np.float32(noise) / np.float32(mean_span))), 1)


def chi2_pvalue(observed, expected):
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    df = len(observed) - 1
    half = torch.tensor([df / 2, stat / 2], dtype=torch.float64)
    return float(torch.special.gammaincc(half[0], half[1]))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_rows(seed: int, B: int, T: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Right- (or left-) padded rows of ordinary tokens, each with a random length in [2, T]."""
    g = gen(seed)
    ids = torch.randint(*TEXT, (B, T), generator=g)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    mask = torch.arange(T) < lengths[:, None]
    if left:
        mask = mask.flip(1)
    return ids.masked_fill(~mask, PAD), mask


def pieces(batch, layout: str) -> list[tuple[int, list[int], list[int]]]:
    """Per row: (paradigm token, inputs with their EOS, targets with their EOS), read back from the batch."""
    out = []
    for b in range(batch.input_ids.shape[0]):
        if layout == "encoder_decoder":
            encoder = batch.input_ids[b][batch.attention_mask[b]].tolist()
            targets = batch.labels[b][batch.labels[b] != IGNORE_INDEX].tolist()
            out.append((encoder[0], encoder[1:], targets))
        else:
            ids, real, prefix = batch.input_ids[b], batch.attention_mask[b], batch.prefix_mask[b]
            head = ids[prefix].tolist()
            out.append((head[0], head[1:], ids[real & ~prefix].tolist()))
    return out


def reconstruct(paradigm: int, inputs: list[int], targets: list[int], sentinels=SENTINELS) -> tuple[list[int], int]:
    """The original tokens from inputs and targets, and the number of noise spans (0 for S)."""
    assert inputs[-1] == EOS and targets[-1] == EOS
    inputs, targets = inputs[:-1], targets[:-1]
    if paradigm == S2S:
        assert not set(inputs + targets) & set(sentinels)
        return inputs + targets, 0
    spans: list[list[int]] = []
    for tok in targets:  # sentinel k, then span k's tokens
        if tok in sentinels:
            assert tok == sentinels[len(spans)]
            spans.append([])
        else:
            spans[-1].append(tok)
    assert spans and all(spans)
    assert inputs[0] not in sentinels and inputs[-1] in sentinels  # T5 (no random_roll): starts kept, ends with noise
    out, k = [], 0
    for tok in inputs:
        if tok in sentinels:
            assert tok == sentinels[k]
            out += spans[k]
            k += 1
        else:
            out.append(tok)
    assert k == len(spans)
    return out, len(spans)


# --------------------------------------------------------------------------- worked example
EX_VOCAB = Vocab(size=100, pad_id=0, eos_id=1, sentinel_ids=(99, 98, 97), nlu_id=2, nlg_id=3, s2s_id=4)
EX_IDS = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29],
                       [30, 31, 32, 33, 34, 35, 36, 37, 0, 0]])  # fmt: skip
I = IGNORE_INDEX


def test_worked_example_encoder_decoder():
    b = UL2(EX_VOCAB)(EX_IDS, generator=gen(28))
    assert b.input_ids.tolist() == [
        [2, 10, 11, 12, 13, 14, 15, 16, 17, 99, 1],
        [3, 20, 21, 99, 24, 25, 26, 98, 1, 0, 0],
        [4, 30, 31, 32, 33, 1, 0, 0, 0, 0, 0],
    ]
    assert b.attention_mask.tolist() == [[T_] * 11, [T_] * 9 + [F_] * 2, [T_] * 6 + [F_] * 5]
    assert b.labels.tolist() == [
        [99, 18, 19, 1, I, I, I, I, I, I],
        [99, 22, 23, 98, 27, 28, 29, 1, I, I],
        [34, 35, 36, 37, 1, I, I, I, I, I],
    ]
    assert b.decoder_input_ids.tolist() == [
        [0, 99, 18, 19, 1, 0, 0, 0, 0, 0],
        [0, 99, 22, 23, 98, 27, 28, 29, 1, 0],
        [0, 34, 35, 36, 37, 1, 0, 0, 0, 0],
    ]
    assert b.decoder_attention_mask.tolist() == (b.labels != I).tolist()
    assert b.causal is False and b.has_targets.all()


def test_worked_example_decoder():
    b = UL2(EX_VOCAB, layout="decoder")(EX_IDS, generator=gen(28))
    assert b.input_ids.tolist() == [
        [2, 10, 11, 12, 13, 14, 15, 16, 17, 99, 1, 99, 18, 19, 1, 0, 0],
        [3, 20, 21, 99, 24, 25, 26, 98, 1, 99, 22, 23, 98, 27, 28, 29, 1],
        [4, 30, 31, 32, 33, 1, 34, 35, 36, 37, 1, 0, 0, 0, 0, 0, 0],
    ]
    assert b.labels.tolist() == [
        [I] * 10 + [99, 18, 19, 1, I, I, I],
        [I] * 8 + [99, 22, 23, 98, 27, 28, 29, 1, I],
        [I] * 5 + [34, 35, 36, 37, 1] + [I] * 7,
    ]
    assert b.prefix_mask.sum(1).tolist() == [11, 9, 6]
    assert b.attention_mask.sum(1).tolist() == [15, 17, 11]
    assert b.causal is True and b.position_ids is None and b.document_ids is None


def test_worked_example_draws():
    # the documented draw order: one uniform per row for its task, one per row for the S split, then the spans
    g = gen(28)
    task = torch.searchsorted(
        torch.tensor([0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0], dtype=torch.float64),
        torch.rand(3, generator=g, dtype=torch.float64),
        right=True,
    )
    assert task.tolist() == [0, 2, S_TASK]  # R (mu=3, r=0.15), X (mu=3, r=0.5), S
    u = torch.rand(3, generator=g, dtype=torch.float64)
    assert 1 + int(u[2] * (8 - 1)) == 4  # row 2: P = 4 of its 8 tokens
    assert [t5_counts(10, 0.15, 3.0), t5_counts(10, 0.5, 3.0)] == [(2, 1), (5, 2)]  # rows 0 and 1
    b = UL2(EX_VOCAB)(EX_IDS, generator=gen(28))
    got = [reconstruct(*p, sentinels=(99, 98, 97))[1] for p in pieces(b, "encoder_decoder")]
    assert got == [1, 2, 0] and b.attention_mask[2].sum() == 1 + 4 + 1


# --------------------------------------------------------------------------- the mixture
def infer_task(paradigm: int, inputs: list[int], targets: list[int], n: int) -> int:
    """Which denoiser made a row (unique for the default mixture at n = 100)."""
    if paradigm == S2S:
        return S_TASK
    spans = sum(tok in SENTINELS for tok in inputs)
    noise = len(targets) - spans - 1
    found = [k for k, (p, mu, r) in enumerate(DENOISERS) if p == paradigm and t5_counts(n, r, mu) == (noise, spans)]
    assert len(found) == 1, (paradigm, noise, spans)
    return found[0]


@pytest.mark.parametrize("rates", [None, (0.5, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25)])
def test_denoiser_frequencies_match_rates(rates):
    objective = UL2(V) if rates is None else UL2(V, rates=rates)
    B, n = 14000, 100
    ids = torch.randint(*TEXT, (B, n), generator=gen(1))
    batch = objective(ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), generator=gen(2))
    counts = [0] * (S_TASK + 1)
    for paradigm, inputs, targets in pieces(batch, "encoder_decoder"):
        counts[infer_task(paradigm, inputs, targets, n)] += 1
    used = [k for k, r in enumerate(objective.rates) if r > 0]
    assert objective.rates == ((0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.2) if rates is None else rates)
    assert all(counts[k] == 0 for k in range(S_TASK + 1) if k not in used)  # a zero rate is never drawn
    assert chi2_pvalue([counts[k] for k in used], [objective.rates[k] * B for k in used]) > 1e-3


@pytest.mark.parametrize("task", range(S_TASK + 1))
@pytest.mark.parametrize("layout", ["encoder_decoder", "decoder"])
def test_each_denoiser_counts_paradigm_and_reconstruction(task, layout):
    # one denoiser at a time (its rate 1), rows of every length 2..60: T5's counts for the row's length
    T, B = 60, 118
    ids = torch.randint(*TEXT, (B, T), generator=gen(task))
    lengths = torch.arange(B) % (T - 1) + 2  # (B,) every length in [2, T], twice
    mask = torch.arange(T) < lengths[:, None]
    batch = UL2(V, rates=only(task), layout=layout)(ids.masked_fill(~mask, PAD), attention_mask=mask, generator=gen(7))
    widths = UL2(V, rates=only(task), layout=layout).widths(T)
    assert (batch.input_ids.shape[1], batch.labels.shape[1]) == widths
    for b, (paradigm, inputs, targets) in enumerate(pieces(batch, layout)):
        n = int(lengths[b])
        original, spans = reconstruct(paradigm, inputs, targets)
        assert original == ids[b, :n].tolist()
        if task == S_TASK:
            assert paradigm == S2S and 1 <= len(inputs) - 1 <= n - 1  # P in [1, n - 1]
        else:
            want_paradigm, mu, r = DENOISERS[task]
            assert paradigm == want_paradigm
            assert (len(targets) - spans - 1, spans) == t5_counts(n, r, mu)  # (noise, spans)
            assert (len(inputs), len(targets)) == span_corruption_lengths(n, r, mu)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    B=st.integers(1, 6),
    T=st.integers(2, 40),
    layout=st.sampled_from(["encoder_decoder", "decoder"]),
    left=st.booleans(),
)
def test_reconstruction_and_labels_over_random_draws(seed, B, T, layout, left):
    ids, mask = random_rows(seed, B, T, left)
    before = ids.clone()
    batch = UL2(V, layout=layout)(ids, attention_mask=mask, generator=gen(seed))
    assert torch.equal(ids, before)  # the caller's tensor is untouched
    assert (batch.input_ids.shape[1], batch.labels.shape[1]) == UL2(V, layout=layout).widths(T)
    for b, (paradigm, inputs, targets) in enumerate(pieces(batch, layout)):
        assert paradigm in (NLU, NLG, S2S)
        assert reconstruct(paradigm, inputs, targets)[0] == ids[b][mask[b]].tolist()
    if layout == "encoder_decoder":
        start = torch.full_like(batch.labels[:, :1], PAD)
        assert torch.equal(batch.decoder_input_ids, torch.cat([start, batch.labels.clamp(min=0)[:, :-1]], 1))
        assert torch.equal(batch.decoder_attention_mask, batch.labels != IGNORE_INDEX)
    else:
        # labels[t] = input_ids[t + 1] exactly where t + 1 is a target (a real token after the prefix)
        ids_out, real, prefix = batch.input_ids, batch.attention_mask, batch.prefix_mask
        is_target = torch.cat([real[:, 1:] & ~prefix[:, 1:], torch.zeros_like(real[:, :1])], 1)
        want = torch.where(is_target, torch.cat([ids_out[:, 1:], ids_out[:, :1]], 1), IGNORE_INDEX)
        assert torch.equal(batch.labels, want)
        assert torch.equal(prefix, prefix & real) and not (prefix[:, 1:] & ~prefix[:, :-1]).any()  # a leading run


def test_s_split_is_uniform():
    # T5's random_prefix_noise_mask: P uniform on [1, n - 1]; rows of n = 6 real tokens
    B, T = 6000, 8
    ids = torch.randint(*TEXT, (B, T), generator=gen(3))
    mask = torch.arange(T) < 6
    batch = UL2(V, rates=only(S_TASK))(ids, attention_mask=mask.expand(B, T), generator=gen(4))
    P = batch.attention_mask.sum(1) - 2  # [S2S], P tokens, EOS
    counts = torch.bincount(P, minlength=6).tolist()
    assert counts[0] == 0 and sum(counts[1:6]) == B
    assert chi2_pvalue(counts[1:6], [B / 5] * 5) > 1e-3


def test_seeded_and_pure():
    ids, mask = random_rows(5, 4, 30)
    a = UL2(V)(ids, attention_mask=mask, generator=gen(9))
    b = UL2(V)(ids, attention_mask=mask, generator=gen(9))
    c = UL2(V)(ids, attention_mask=mask, generator=gen(10))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.input_ids, c.input_ids)
    UL2(V)(ids, attention_mask=mask)  # generator=None: torch's default generator


def test_padding_guessed_from_pad_id():
    # without attention_mask, the trailing pad_id run is padding (as every objective here)
    ids, mask = random_rows(11, 5, 20)
    a = UL2(V)(ids, generator=gen(1))
    b = UL2(V)(ids, attention_mask=mask, generator=gen(1))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


def test_only_span_denoisers_and_only_s():
    ids, mask = random_rows(2, 6, 30)
    spans_only = UL2(V, use_prefix_lm_task=False, rates=(0.2, 0.2, 0.15, 0.15, 0.15, 0.15))
    batch = spans_only(ids, attention_mask=mask, generator=gen(0))
    assert S2S not in batch.input_ids[:, 0].tolist()
    assert batch.input_ids.shape[1] == 1 + max(span_corruption_lengths(30, r, mu)[0] for _, mu, r in DENOISERS)
    s_only = UL2(V, mean_noise_span_lengths=(), noise_densities=(), rates=(1.0,), layout="decoder")
    batch = s_only(ids, attention_mask=mask, generator=gen(0))
    assert batch.input_ids.shape[1] == 1 + 30 + 2 and (batch.input_ids[:, 0] == S2S).all()
    # a vocab without sentinels is fine when no span denoiser is drawn
    UL2(Vocab(size=10, pad_id=0, eos_id=1, s2s_id=2), mean_noise_span_lengths=(), noise_densities=(), rates=(1.0,))


# --------------------------------------------------------------------------- attention
def test_attention_encoder_decoder():
    b = UL2(EX_VOCAB)(EX_IDS, generator=gen(28))
    enc = attention_mask_4d(b, "self")[:, 0]  # (B, Te, Te): every real encoder token sees every real one
    eye = torch.eye(11, dtype=torch.bool)
    assert torch.equal(enc, (b.attention_mask[:, None, :].expand(3, 11, 11)) | eye)
    dec = attention_mask_4d(b, "decoder")[:, 0]  # (B, Td, Td): causal over real decoder tokens
    tril = torch.ones(10, 10, dtype=torch.bool).tril()
    assert torch.equal(dec, (b.decoder_attention_mask[:, None, :] & tril) | torch.eye(10, dtype=torch.bool))
    cross = attention_mask_4d(b, "cross")[:, 0]  # (B, Td, Te)
    assert torch.equal(cross, b.attention_mask[:, None, :].expand(3, 10, 11))


def test_attention_decoder_layout():
    # brute force: key j is visible to query i when real and (j <= i, or both in the prefix); padding sees itself
    ids, mask = random_rows(8, 5, 25)
    b = UL2(V, layout="decoder")(ids, attention_mask=mask, generator=gen(8))
    got = attention_mask_4d(b)[:, 0]
    B, W = b.input_ids.shape
    for r in range(B):
        P = int(b.prefix_mask[r].sum())
        for i in range(W):
            for j in range(W):
                want = bool(b.attention_mask[r, j]) and (j <= i or (i < P and j < P)) or i == j
                assert bool(got[r, i, j]) == want, (r, i, j)
        assert P >= 3  # paradigm token, at least one input token, EOS


# --------------------------------------------------------------------------- lengths
@pytest.mark.parametrize("seq_len", [8, 16, 64, 128, 512])
@pytest.mark.parametrize("layout", ["encoder_decoder", "decoder"])
def test_raw_length_fits_seq_len(seq_len, layout):
    objective = UL2(V, layout=layout)
    T = objective.raw_length(seq_len)
    assert max(objective.widths(T)) <= seq_len
    assert max(objective.widths(T + 1)) > seq_len  # the most raw tokens that fit
    if layout == "encoder_decoder" and seq_len >= 16:
        assert T == seq_len - 1  # S binds: a prefix of T - 1 tokens, EOS and the paradigm token (R, below 16)
    ids = torch.randint(*TEXT, (3, T), generator=gen(seq_len))
    batch = objective(ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), generator=gen(0))
    assert (batch.input_ids.shape[1], batch.labels.shape[1]) == objective.widths(T)


def test_raw_length_without_s_follows_t5_helper():
    # R only at 512: T5's random_spans_helper gives 568 raw tokens for 512 inputs; here 511 inputs + the paradigm token
    objective = UL2(V, mean_noise_span_lengths=(3.0,), noise_densities=(0.15,), use_prefix_lm_task=False, rates=(1.0,))
    T = objective.raw_length(512)
    assert objective.widths(T)[0] <= 512 < objective.widths(T + 1)[0]
    assert span_corruption_lengths(T, 0.15, 3.0)[0] == 511


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "vocab_fields, pattern",
    [
        ({"nlg_id": 3, "s2s_id": 4}, r"\[NLU\] \(Vocab\.nlu_id\)"),
        ({"nlu_id": 2}, r"\[NLG\] \(Vocab\.nlg_id\), \[S2S\] \(Vocab\.s2s_id\)"),
        ({"nlu_id": 2, "nlg_id": 3}, r"\[S2S\] \(Vocab\.s2s_id\)"),
    ],
)
def test_missing_paradigm_tokens(vocab_fields, pattern):
    vocab = Vocab(size=300, pad_id=PAD, eos_id=EOS, sentinel_ids=SENTINELS, **vocab_fields)
    with pytest.raises(ValueError, match=pattern):
        UL2(vocab)


def test_missing_paradigm_token_of_an_unused_denoiser_is_fine():
    vocab = Vocab(size=300, pad_id=PAD, eos_id=EOS, sentinel_ids=SENTINELS, nlu_id=NLU, nlg_id=NLG)
    UL2(vocab, rates=(0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0))


@pytest.mark.parametrize(
    "options, error, pattern",
    [
        ({"rates": (0.5, 0.5)}, ValueError, r"rates must have 7 entries, one per task .*got 2"),
        (
            {"rates": (0.3, 0.2, 0.1, 0.1, 0.1, 0.3, -0.1)},
            ValueError,
            r"rates\[6\] must be a finite float >= 0, got -0.1",
        ),
        ({"rates": (0.2,) * 7}, ValueError, r"rates must sum to 1.*sum 1.4"),
        ({"rates": (0.2, 0.2, 0.1, 0.1, 0.1, 0.1, "0.2")}, TypeError, r"rates\[6\] must be a finite float, got '0.2'"),
        ({"rates": (0.2, 0.2, 0.1, 0.1, 0.1, 0.1, float("nan"))}, TypeError, r"rates\[6\]"),
        ({"rates": 1.0}, TypeError, r"rates must be a tuple of floats, got 1.0"),
        ({"use_prefix_lm_task": False}, ValueError, r"rates must have 6 entries"),
        ({"noise_densities": (0.15, 0.15)}, ValueError, r"mean_noise_span_lengths has 6 entries and noise_densities 2"),
        (
            {"noise_densities": (0.15, 1.0, 0.5, 0.5, 0.15, 0.5)},
            ValueError,
            r"noise_densities\[1\] must lie in \(0, 1\), got 1.0",
        ),
        (
            {"mean_noise_span_lengths": (3.0, 0.5, 3.0, 8.0, 64.0, 64.0)},
            ValueError,
            r"mean_noise_span_lengths\[1\] must be a finite float >= 1, got 0.5",
        ),
        (
            {"mean_noise_span_lengths": (), "noise_densities": (), "use_prefix_lm_task": False, "rates": ()},
            ValueError,
            r"at least one denoiser",
        ),
        ({"layout": "prefix"}, ValueError, r"layout must be one of 'encoder_decoder', 'decoder', got 'prefix'"),
        ({"use_prefix_lm_task": 1}, TypeError, r"use_prefix_lm_task must be a bool, got 1"),
    ],
)
def test_bad_options(options, error, pattern):
    with pytest.raises(error, match=pattern):
        UL2(V, **options)


def test_lists_become_tuples():
    objective = UL2(V, rates=[0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.2], noise_densities=[0.15, 0.15, 0.5, 0.5, 0.15, 0.5])
    assert objective.rates == (0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.2) and isinstance(objective.noise_densities, tuple)
    hash(objective)


def test_vocab_requirements():
    with pytest.raises(ValueError, match=r"UL2 needs Vocab.eos_id"):
        UL2(Vocab(size=300, pad_id=PAD, sentinel_ids=SENTINELS, nlu_id=2, nlg_id=3, s2s_id=4))
    with pytest.raises(ValueError, match=r"need Vocab.sentinel_ids"):
        UL2(Vocab(size=300, pad_id=PAD, eos_id=EOS, nlu_id=2, nlg_id=3, s2s_id=4))
    with pytest.raises(TypeError, match=r"vocab must be a lmobjectives.Vocab"):
        UL2("vocab")  # type: ignore[arg-type]


def test_rows_too_short():
    ids = torch.tensor([[10, 11, 12], [13, 0, 0]])
    with pytest.raises(ValueError, match=r"row 1 of input_ids \(shape \(2, 3\)\) has 1 real token\(s\)"):
        UL2(V)(ids, generator=gen(0))
    # a denoiser that cannot corrupt a full row: 90 % noise in spans of one token leaves too few kept tokens
    dense = UL2(V, mean_noise_span_lengths=(1.0,), noise_densities=(0.9,), use_prefix_lm_task=False, rates=(1.0,))
    with pytest.raises(ValueError, match=r"rows of 10 raw tokens are too short for denoiser 0 \(\[NLG\] "):
        dense(torch.randint(*TEXT, (2, 10), generator=gen(0)), generator=gen(0))


def test_too_few_sentinels():
    vocab = Vocab(size=300, pad_id=PAD, eos_id=EOS, sentinel_ids=(299, 298, 297), nlu_id=2, nlg_id=3, s2s_id=4)
    ids = torch.randint(*TEXT, (2, 100), generator=gen(0))
    with pytest.raises(
        ValueError,
        match=r"denoiser 0 \(\[NLU\] .* makes 5 noise spans from rows of 100 raw tokens but "
        r"Vocab.sentinel_ids holds 3",
    ):
        UL2(vocab)(ids, generator=gen(0))
    with pytest.raises(ValueError, match=r"sentinel"):
        UL2(V).raw_length(1024)  # X (mu=3, r=0.5) makes 171 spans from 1023 tokens; T5 has 100 sentinels


def test_sentinel_in_text():
    ids = torch.randint(*TEXT, (1, 30), generator=gen(0))
    ids[0, 4] = SENTINELS[7]
    with pytest.raises(ValueError, match=r"input_ids\[0, 4\] = 292 is one of the sentinels"):
        UL2(V, rates=only(0))(ids, generator=gen(0))


@pytest.mark.parametrize("layout, least", [("encoder_decoder", 4), ("decoder", 7)])
def test_length_helper_errors(layout, least):
    with pytest.raises(ValueError, match=rf"seq_len must be an int >= {least}, got {least - 1}"):
        UL2(V, layout=layout).raw_length(least - 1)
    with pytest.raises(ValueError, match=r"raw_length must be an int >= 2, got 1"):
        UL2(V, layout=layout).widths(1)


def test_bad_tensors():
    with pytest.raises(TypeError, match=r"input_ids must hold integer token ids"):
        UL2(V)(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids"):
        UL2(V)(torch.full((2, 5), 7), attention_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"generator must be a torch.Generator"):
        UL2(V)(torch.full((2, 5), 7), generator=3)  # type: ignore[arg-type]


def test_options_have_help():
    # every option is a CLI flag whose help is the field's comment (recipe.options_of)
    from lmobjectives.recipes.recipe import Recipe, options_of

    options = options_of(Recipe(UL2, "UL2"))
    assert [o.name for o in options] == [
        "mean_noise_span_lengths",
        "noise_densities",
        "use_prefix_lm_task",
        "rates",
        "layout",
    ]
    assert all(o.help for o in options)
    assert [o.type for o in options][:2] == [tuple[float, ...]] * 2


# --------------------------------------------------------------------------- interior padding
def rows_with_holes(seed: int, B: int, T: int, hole_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ordinary tokens with holes in attention_mask anywhere (interior; row 0 also left-, the last row
    right-padded), at least 2 real tokens each."""
    g = gen(seed)
    ids = torch.randint(*TEXT, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) >= hole_rate
    mask[0, : T // 4] = False
    mask[-1, -T // 4 :] = False
    mask[:, T // 2] = mask[:, T // 2 + 1] = True
    return ids.masked_fill(~mask, PAD), mask


@pytest.mark.parametrize("task", range(S_TASK + 1))
@pytest.mark.parametrize("layout", ["encoder_decoder", "decoder"])
def test_interior_padding_counts_over_the_real_tokens(task, layout):
    # holes inside rows: every span denoiser makes T5's noise and span counts over the row's real tokens, in
    # order; the spans reconstruct the real tokens (a span crossing a hole stays one span)
    objective = UL2(V, rates=only(task), layout=layout)
    for seed in range(20):
        ids, mask = rows_with_holes(seed, 8, 64, 0.1 if seed % 2 else 0.3)
        batch = objective(ids, attention_mask=mask, generator=gen(seed))
        for b, (paradigm, inputs, targets) in enumerate(pieces(batch, layout)):
            n = int(mask[b].sum())
            original, spans = reconstruct(paradigm, inputs, targets)
            assert original == ids[b][mask[b]].tolist()
            if task < S_TASK:
                _, mu, r = DENOISERS[task]
                assert (len(targets) - spans - 1, spans) == t5_counts(n, r, mu), (seed, b)


def test_interior_padding_default_mixture_gives_only_denoiser_counts():
    # the default mixture: each span row's counts are those of a denoiser of its paradigm (issue: 57 % were not)
    for seed in range(20):
        ids, mask = rows_with_holes(seed, 16, 96, 0.1)
        batch = UL2(V)(ids, attention_mask=mask, generator=gen(seed))
        for b, (paradigm, inputs, targets) in enumerate(pieces(batch, "encoder_decoder")):
            original, spans = reconstruct(paradigm, inputs, targets)
            assert original == ids[b][mask[b]].tolist()
            if paradigm != S2S:
                n = int(mask[b].sum())
                allowed = {t5_counts(n, r, mu) for p, mu, r in DENOISERS if p == paradigm}
                assert (len(targets) - spans - 1, spans) in allowed, (seed, b)
