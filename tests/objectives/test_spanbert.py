import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab
from lmobjectives.models.sbo import TransformerWithSBO
from lmobjectives.models.transformer import Transformer, TransformerConfig
from lmobjectives.objectives.mlm import MaskedLM
from lmobjectives.objectives.spanbert import SpanBERT, span_boundary_targets
from lmobjectives.recipes.step_losses import spanbert_loss

V = Vocab(size=10, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
X = torch.tensor([[1, 4, 5, 6, 7, 8, 9, 4, 5, 6, 2, 0, 0]])
W = torch.tensor([[-1, 0, 0, 1, 2, 2, 2, 3, 4, 4, -1, -1, -1]])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_docstring_example():
    obj = SpanBERT(vocab=V, probability=0.5, mask_fraction=1.0, random_fraction=0.0)
    b = obj(X, word_ids=W, generator=gen(0))
    assert b.input_ids.tolist() == [[1, 4, 5, 6, 3, 3, 3, 3, 5, 6, 2, 0, 0]]
    assert b.labels.tolist() == [[-100, -100, -100, -100, 7, 8, 9, 4, -100, -100, -100, -100, -100]]
    t = obj.targets(b)
    assert t.positions.tolist() == [4, 5, 6, 7] and t.left.tolist() == [3] * 4 and t.right.tolist() == [8] * 4
    assert t.offset.tolist() == [0, 1, 2, 3] and t.labels.tolist() == [7, 8, 9, 4] and t.rows.tolist() == [0] * 4


def test_targets_docstring_example():
    y = torch.tensor([[-100, 11, 12, -100, 14, -100, 16, 17]])
    t = span_boundary_targets(y, torch.tensor([[True] * 7 + [False]]))
    assert (t.positions.tolist(), t.left.tolist(), t.right.tolist(), t.offset.tolist()) == (
        [1, 2, 4], [0, 0, 3], [3, 3, 5], [0, 1, 0])  # fmt: skip


def test_is_masked_lm_with_span_units():
    ids = torch.randint(4, 10, (8, 40), generator=gen(1))
    wid = torch.arange(40).expand(8, 40) // 2
    a = SpanBERT(vocab=V)(ids, word_ids=wid, generator=gen(2))
    b = MaskedLM(vocab=V, unit="span", selection="exact")(ids, word_ids=wid, generator=gen(2))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


def brute_targets(labels, real, max_pair_targets):
    out = []
    B, T = labels.shape
    for r in range(B):
        t = 0
        while t < T:
            if labels[r, t] == IGNORE_INDEX:
                t += 1
                continue
            s = t
            while t + 1 < T and labels[r, t + 1] != IGNORE_INDEX:
                t += 1
            e = t
            if s - 1 >= 0 and e + 1 < T and real[r, s - 1] and real[r, e + 1]:
                for i in range(s, min(e + 1, s + max_pair_targets)):
                    out.append((r, i, s - 1, e + 1, i - s, int(labels[r, i])))
            t += 1
    return out


@settings(max_examples=80, deadline=None)
@given(
    B=st.integers(1, 4),
    T=st.integers(1, 20),
    p=st.floats(0.0, 1.0),
    m=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_targets_match_a_brute_force_scan(B, T, p, m, seed):
    g = gen(seed)
    labels = torch.where(torch.rand(B, T, generator=g) < p, torch.randint(0, 9, (B, T), generator=g), IGNORE_INDEX)
    real = torch.arange(T)[None] < torch.randint(0, T + 1, (B, 1), generator=g)
    t = span_boundary_targets(labels, real, m)
    got = list(zip(*(x.tolist() for x in t)))
    assert got == brute_targets(labels, real, m)


def test_max_pair_targets_truncates_long_spans():
    y = torch.tensor([[-100] + list(range(4, 9)) + [-100]])
    t = span_boundary_targets(y, torch.ones(1, 7, dtype=torch.bool), max_pair_targets=3)
    assert t.offset.tolist() == [0, 1, 2] and t.positions.tolist() == [1, 2, 3]


def tiny_model(max_pair_targets=15):
    config = TransformerConfig(vocab_size=10, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=64)
    torch.manual_seed(0)
    return TransformerWithSBO(config, max_pair_targets=max_pair_targets)


def test_loss_is_mlm_plus_sbo_and_trains_the_head():
    obj = SpanBERT(vocab=V, probability=0.3)
    ids = torch.randint(4, 10, (4, 30), generator=gen(3))
    wid = torch.arange(30).expand(4, 30)
    batch = obj(ids, word_ids=wid, generator=gen(4))
    model = tiny_model()
    out = spanbert_loss(obj, model, batch)
    assert set(out.terms) == {"lm", "sbo"}
    torch.testing.assert_close(out.total, out.terms["lm"].loss + out.terms["sbo"].loss)
    assert int(out.terms["sbo"].num_tokens) == obj.targets(batch).labels.numel() > 0
    out.total.backward()
    assert model.sbo.fc1.weight.grad.abs().sum() > 0 and model.sbo.position.weight.grad.abs().sum() > 0


def test_no_span_between_boundaries_gives_zero_sbo_loss():
    obj = SpanBERT(vocab=V, probability=1.0)  # everything masked: no boundary token inside the row
    ids = torch.randint(4, 10, (2, 6), generator=gen(5))
    batch = obj(ids, word_ids=torch.arange(6).expand(2, 6), generator=gen(6))
    out = spanbert_loss(obj, tiny_model(), batch)
    assert float(out.terms["sbo"].loss.detach()) == 0.0 and int(out.terms["sbo"].num_tokens) == 0
    assert torch.isfinite(out.total)


def test_errors():
    with pytest.raises(ValueError, match="max_pair_targets must be a positive int, got 0"):
        SpanBERT(vocab=V, max_pair_targets=0)
    with pytest.raises(ValueError, match="SpanBERT needs word_ids"):
        SpanBERT(vocab=V)(X)
    obj = SpanBERT(vocab=V)
    batch = obj(X, word_ids=W, generator=gen())
    config = TransformerConfig(vocab_size=10, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    with pytest.raises(TypeError, match="spanbert_loss needs a model with a span boundary head.*got Transformer"):
        spanbert_loss(obj, Transformer(config), batch)
    with pytest.raises(ValueError, match="max_pair_targets=4 position embeddings, fewer than.*15"):
        spanbert_loss(obj, tiny_model(max_pair_targets=4), batch)
    with pytest.raises(ValueError, match="max_pair_targets must be a positive int"):
        span_boundary_targets(batch.labels, batch.attention_mask, 0)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        span_boundary_targets(batch.labels, batch.attention_mask[:, :3])
    with pytest.raises(ValueError, match="random_ids"):
        SpanBERT(vocab=V, random_ids="zipf")


def test_unigram_counts_pass_through():
    obj = SpanBERT(vocab=V, probability=1.0, mask_fraction=0.0, random_fraction=1.0, random_ids="unigram")
    assert obj.needs_unigram_counts
    counts = torch.zeros(10)
    counts[7] = 1.0
    bound = obj.with_unigram_counts(counts)
    assert not bound.needs_unigram_counts and bound == obj
    b = bound(X, word_ids=W, generator=gen())
    assert set(b.input_ids[b.labels != IGNORE_INDEX].tolist()) == {7}


def bert_rows(seed, B, T):
    """[CLS] words [SEP] words [SEP] [PAD]...: two segments, right padding; word ids as in the recipe."""
    g = gen(seed)
    ids = torch.randint(4, 10, (B, T), generator=g)
    wid = torch.arange(T).expand(B, T).clone()
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    t = torch.arange(T)
    real = t < lengths[:, None]
    middle = torch.randint(2, T // 2, (B, 1), generator=g)
    ids = torch.where(t == 0, 1, ids)  # [CLS]
    ids = torch.where((t == middle) | (t == lengths[:, None] - 1), 2, ids)  # [SEP]s
    ids = ids.masked_fill(~real, 0)
    wid = torch.where(real & (ids > 3), wid, -1)
    return ids, wid, real


@pytest.mark.parametrize("T", [16, 64])
def test_sbo_boundaries_are_never_special_tokens_or_padding(T):
    # SpanBERT masks inside the sentence (before [CLS]/[SEP] are added) and gives pair targets only to spans
    # whose two outer tokens lie in the sentence: a boundary is never [CLS], [SEP] or padding
    obj = SpanBERT(vocab=V, probability=0.3)
    special = V.special_mask()
    seen = 0
    for seed in range(40):
        ids, wid, real = bert_rows(seed, 8, T)
        b = obj(ids, attention_mask=real, word_ids=wid, generator=gen(seed))
        t = obj.targets(b)
        seen += t.labels.numel()
        for side in (t.left, t.right):
            assert not special[b.input_ids[t.rows, side]].any() and bool(real[t.rows, side].all())
        # ... and every span whose boundaries are ordinary real tokens still gets its targets
        scan = brute_targets(b.labels, real & ~special[ids], obj.max_pair_targets)
        assert list(zip(*(x.tolist() for x in t))) == scan
    assert seen > 0


def test_special_boundaries_argument():
    # span_boundary_targets(..., special=): positions that may not be boundaries even though they are real
    y = torch.tensor([[-100, 11, 12, -100, 14, -100, 16, -100]])
    real = torch.ones(1, 8, dtype=torch.bool)
    special = torch.tensor([[True, False, False, False, False, False, False, True]])  # [CLS] ... [SEP]
    t = span_boundary_targets(y, real, special=special)
    assert t.positions.tolist() == [4] and (t.left.tolist(), t.right.tolist()) == ([3], [5])
    with pytest.raises(ValueError, match="special must have the shape"):
        span_boundary_targets(y, real, special=special[:, :3])
