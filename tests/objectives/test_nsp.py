import dataclasses

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab, get_objective
from lmobjectives.losses import lm_loss, sentence_loss
from lmobjectives.objectives.nsp import NextSentencePrediction, SentenceOrderPrediction

V = Vocab(size=40, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
CLS, SEP, PAD = 1, 2, 0

# NSP docstring, first example: chunks of exactly two sentences
X_DET = torch.tensor([[10, 11, 12], [13, 14, 0], [15, 16, 17], [18, 0, 0], [20, 21, 0], [22, 23, 0]])
D_DET = torch.tensor([0, 0, 0, 0, 1, 1])
# docstring seeded example: three documents
X_SEED = torch.tensor([[10, 11, 0], [12, 0, 0], [13, 14, 0], [20, 21, 22], [23, 0, 0], [30, 0, 0], [31, 32, 0]])
D_SEED = torch.tensor([0, 0, 0, 1, 1, 2, 2])


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_corpus(sentence_lengths: list[list[int]], device="cpu", width: int | None = None):
    """Sentence rows whose tokens are all distinct (token = 4 + its index in the stream), right-padded."""
    rows, docs, k = [], [], 4
    for d, doc in enumerate(sentence_lengths):
        for n in doc:
            rows.append(list(range(k, k + n)))
            docs.append(d)
            k += n
    L = width or max(len(r) for r in rows)
    x = torch.tensor([r + [PAD] * (L - len(r)) for r in rows], device=device)
    return x, torch.tensor(docs, device=device), Vocab(size=k, pad_id=0, cls_id=1, sep_id=2, mask_id=3)


# ----------------------------------------------------------------------------- worked examples


def test_docstring_nsp_deterministic():
    nsp = NextSentencePrediction(V, max_seq_length=8, short_seq_prob=0, random_next_prob=0, mlm_probability=0)
    b = nsp.build_pairs(X_DET, document_ids=D_DET)
    assert b.input_ids.tolist() == [
        [1, 10, 11, 12, 2, 13, 14, 2],
        [1, 15, 16, 17, 2, 18, 2, 0],
        [1, 20, 21, 2, 22, 23, 2, 0],
    ]
    assert b.token_type_ids.tolist() == [
        [0, 0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
    ]
    assert b.sentence_labels.tolist() == [0, 0, 0]
    assert b.attention_mask.tolist() == [[True] * 8, [True] * 7 + [False], [True] * 7 + [False]]
    assert b.causal is False
    assert (b.labels == IGNORE_INDEX).all()
    assert b.has_targets.tolist() == [True, True, True]


def test_docstring_nsp_seeded():
    nsp = NextSentencePrediction(V, max_seq_length=7, mlm_probability=0)
    b = nsp(X_SEED, document_ids=D_SEED, generator=gen(0))
    assert b.input_ids.tolist() == [
        [1, 10, 11, 2, 13, 14, 2],
        [1, 20, 21, 2, 13, 14, 2],
        [1, 23, 2, 30, 31, 32, 2],
        [1, 30, 2, 13, 14, 2, 0],
        [1, 31, 32, 2, 20, 21, 2],
    ]
    assert b.token_type_ids.tolist() == [
        [0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1],
    ]
    assert b.sentence_labels.tolist() == [0, 1, 1, 1, 1]
    plan = nsp.pairs(X_SEED, document_ids=D_SEED, generator=gen(0))
    assert plan.target_length.tolist() == [4, 4, 4, 3, 3]  # document 2 drew a short target
    assert plan.document.tolist() == [0, 1, 1, 2, 2]
    assert plan.first.tolist() == [[0, 1], [3, 4], [4, 5], [5, 6], [6, 7]]
    assert plan.second.tolist() == [[1, 3], [2, 3], [5, 7], [2, 3], [3, 4]]
    assert plan.first_trim.tolist() == [[0, 0], [0, 1], [0, 0], [0, 0], [0, 0]]
    assert plan.second_trim.tolist() == [[1, 0], [0, 0], [0, 0], [0, 0], [0, 1]]


def test_docstring_sop_deterministic():
    sop = SentenceOrderPrediction(V, max_seq_length=8, short_seq_prob=0, swap_prob=1, mlm_probability=0)
    b = sop.build_pairs(X_DET, document_ids=D_DET)
    assert b.input_ids.tolist() == [
        [1, 13, 14, 2, 10, 11, 12, 2],
        [1, 18, 2, 15, 16, 17, 2, 0],
        [1, 22, 23, 2, 20, 21, 2, 0],
    ]
    assert b.token_type_ids.tolist() == [
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
    ]
    assert b.sentence_labels.tolist() == [1, 1, 1]
    in_order = dataclasses.replace(sop, swap_prob=0.0).build_pairs(X_DET, document_ids=D_DET)
    assert in_order.input_ids.tolist() == [
        [1, 10, 11, 12, 2, 13, 14, 2],
        [1, 15, 16, 17, 2, 18, 2, 0],
        [1, 20, 21, 2, 22, 23, 2, 0],
    ]
    assert in_order.sentence_labels.tolist() == [0, 0, 0]


def test_docstring_sop_seeded():
    b = SentenceOrderPrediction(V, max_seq_length=7, mlm_probability=0)(X_SEED, document_ids=D_SEED, generator=gen(0))
    assert b.input_ids.tolist() == [
        [1, 10, 11, 2, 12, 13, 2],
        [1, 23, 2, 20, 21, 22, 2],
        [1, 31, 32, 2, 30, 2, 0],
    ]
    assert b.sentence_labels.tolist() == [0, 1, 1]


# ----------------------------------------------------------------------------- MLM on the pairs


@pytest.mark.parametrize("cls", [NextSentencePrediction, SentenceOrderPrediction])
def test_mlm_is_applied_to_the_built_pairs(cls):
    x, d, vocab = make_corpus([[5, 7, 3, 9, 4], [6, 6, 2], [8, 3, 5, 5]])
    obj = cls(vocab, max_seq_length=24)  # defaults: 15 %, exact, max_predictions=20
    plain = obj.build_pairs(x, document_ids=d, generator=gen(3))
    b = obj(x, document_ids=d, generator=gen(3))  # same draws for the pairs, then MLM
    assert torch.equal(b.sentence_labels, plain.sentence_labels)
    assert torch.equal(b.token_type_ids, plain.token_type_ids)
    assert torch.equal(b.attention_mask, plain.attention_mask)
    target = b.labels != IGNORE_INDEX
    assert torch.equal(b.labels[target], plain.input_ids[target])  # labels are the original tokens
    assert torch.equal(b.input_ids[~target], plain.input_ids[~target])  # nothing else changed
    ordinary = plain.attention_mask & (plain.input_ids > 3)
    assert not (target & ~ordinary).any()  # never [CLS], [SEP] or padding
    n = ordinary.sum(-1)
    expected = torch.clamp(torch.round(n * 0.15), min=1).clamp(max=20)  # BERT's count, over maskable tokens
    assert target.sum(-1).tolist() == expected.long().tolist()


def test_mlm_probability_zero_turns_masking_off():
    nsp = NextSentencePrediction(V, max_seq_length=7, mlm_probability=0)
    b = nsp(X_SEED, document_ids=D_SEED, generator=gen(0))
    assert torch.equal(b.input_ids, nsp.build_pairs(X_SEED, document_ids=D_SEED, generator=gen(0)).input_ids)
    assert (b.labels == IGNORE_INDEX).all() and b.has_targets.all()  # the sentence label is still a target


def test_joint_loss_is_mlm_plus_sentence_loss():
    x, d, vocab = make_corpus([[5, 7, 3], [6, 6, 2], [8, 3, 5, 5]])
    b = get_objective("nsp", vocab=vocab, max_seq_length=16)(x, document_ids=d, generator=gen(1))
    g = gen(2)
    hidden = torch.randn(*b.input_ids.shape, 8, generator=g)  # (N, T, H) a stand-in encoder output
    weight = torch.randn(vocab.size, 8, generator=g)
    nsp_logits = torch.randn(b.input_ids.shape[0], 2, generator=g)  # (N, 2) from the pooled [CLS]
    loss = lm_loss(hidden, weight, b.labels).loss + sentence_loss(nsp_logits, b.sentence_labels).loss
    logits = hidden @ weight.T
    ref = F.cross_entropy(logits.reshape(-1, vocab.size), b.labels.reshape(-1), ignore_index=IGNORE_INDEX)
    ref = ref + F.cross_entropy(nsp_logits, b.sentence_labels)
    torch.testing.assert_close(loss, ref)


# ----------------------------------------------------------------------------- statistics


def test_nsp_random_next_rate():
    # documents of two sentences that fit one chunk: the first pair of each document is "random"
    # with probability random_next_prob (the put-back sentence then forms a lone chunk, always random)
    x, d, vocab = make_corpus([[3, 4]] * 3000)
    for p in (0.5, 0.2):
        nsp = NextSentencePrediction(vocab, max_seq_length=16, short_seq_prob=0, random_next_prob=p, mlm_probability=0)
        plan = nsp.pairs(x, document_ids=d, generator=gen(0))
        first_of_doc = torch.ones_like(plan.document, dtype=torch.bool)
        first_of_doc[1:] = plan.document[1:] != plan.document[:-1]
        rate = plan.sentence_labels[first_of_doc].float().mean().item()
        assert abs(rate - p) < 0.04, (p, rate)  # std 0.009
        # a random pair puts the second sentence back: it comes as a second, random pair
        assert plan.document.numel() == 3000 + plan.sentence_labels[first_of_doc].sum().item()


def test_short_target_rate_and_range():
    x, d, vocab = make_corpus([[2, 3]] * 4000)
    M = 20 - 3
    nsp = NextSentencePrediction(vocab, max_seq_length=20, mlm_probability=0)
    plan = nsp.pairs(x, document_ids=d, generator=gen(1))
    first_of_doc = torch.ones_like(plan.document, dtype=torch.bool)
    first_of_doc[1:] = plan.document[1:] != plan.document[:-1]
    target = plan.target_length[first_of_doc]  # one per document
    assert target.numel() == 4000
    assert int(target.min()) >= 2 and int(target.max()) == M
    short = target[target < M]
    # P(target < M) = 0.1 * (M - 2) / (M - 1): a short draw may land on M itself
    assert abs(short.numel() / 4000 - 0.1 * (M - 2) / (M - 1)) < 0.02
    assert abs(short.float().mean().item() - (2 + M - 1) / 2) < 1.0  # uniform on [2, M-1] given < M
    assert set(short.tolist()) == set(range(2, M))
    # every pair of a document shares its target (BERT draws it once per document)
    assert torch.equal(plan.target_length, target[plan.document])


def test_sop_swap_rate_and_segments_are_adjacent():
    x, d, vocab = make_corpus([[3, 4, 2, 5, 1, 6]] * 800)
    sop = SentenceOrderPrediction(vocab, max_seq_length=14, mlm_probability=0)
    plan = sop.pairs(x, document_ids=d, generator=gen(2))
    rate = plan.sentence_labels.float().mean().item()
    assert abs(rate - 0.5) < 0.04, rate
    swapped = plan.sentence_labels == 1
    assert torch.equal(plan.first[~swapped, 1], plan.second[~swapped, 0])  # A then B, in the document
    assert torch.equal(plan.second[swapped, 1], plan.first[swapped, 0])  # B then A: swapped
    doc = d[plan.first[:, 0]]
    assert torch.equal(doc, d[plan.second[:, 0]]) and torch.equal(doc, d[plan.second[:, 1] - 1])


@pytest.mark.parametrize("docs", [[[3, 4, 2, 5], [6, 1, 2], [2, 2, 2, 2, 2], [7]] * 200, [[2, 3, 1] * 300] * 3])
def test_nsp_label_means_what_it_says(docs):
    x, d, vocab = make_corpus(docs)
    D = len(docs)
    nsp = NextSentencePrediction(vocab, max_seq_length=12, mlm_probability=0)
    plan = nsp.pairs(x, document_ids=d, generator=gen(4))
    actual = plan.sentence_labels == 0
    # label 0: B starts right after A, in the same document
    assert torch.equal(plan.first[actual, 1], plan.second[actual, 0])
    assert torch.equal(d[plan.second[actual, 1] - 1], d[plan.first[actual, 0]])
    # label 1: B comes from another document, and stays inside it
    rnd = ~actual
    source, own = d[plan.second[rnd, 0]], d[plan.first[rnd, 0]]
    assert (source != own).all()
    assert torch.equal(source, d[plan.second[rnd, 1] - 1])
    # the other document is uniform over the D - 1 others: source - own - 1 (mod D) is uniform on 0..D-2
    offset = torch.bincount((source - own - 1) % D, minlength=D).float() / rnd.sum()
    assert offset[D - 1] == 0
    assert (offset[: D - 1] - 1 / (D - 1)).abs().max() < 4 * (1 / rnd.sum().item()) ** 0.5, offset


def test_truncation_front_back_is_fair():
    # one long sentence pair per document: A = 12, B = 12 tokens, M = 10 -> 7 cuts each side
    x, d, vocab = make_corpus([[12, 12]] * 2000)
    nsp = NextSentencePrediction(vocab, max_seq_length=13, short_seq_prob=0, random_next_prob=0, mlm_probability=0)
    plan = nsp.pairs(x, document_ids=d, generator=gen(5))
    assert (plan.first_trim.sum(-1) == 7).all() and (plan.second_trim.sum(-1) == 7).all()
    front = torch.cat([plan.first_trim[:, 0], plan.second_trim[:, 0]]).float()
    assert abs(front.mean().item() - 3.5) < 0.1  # Binomial(7, 1/2)
    assert abs(front.var().item() - 1.75) < 0.2


# ----------------------------------------------------------------------------- invariants


def reference_truncate(la: int, lb: int, M: int) -> tuple[int, int]:
    """BERT's truncate_seq_pair, lengths only (which side loses each token)."""
    while la + lb > M:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


corpora = st.lists(st.lists(st.integers(1, 7), min_size=1, max_size=5), min_size=2, max_size=5)


@settings(max_examples=60, deadline=None)
@given(corpora, st.integers(5, 18), st.floats(0, 1), st.floats(0, 1), st.integers(0, 2**31), st.booleans())
def test_pair_invariants(lengths, max_seq_length, short_p, pair_p, seed, sop):
    x, d, vocab = make_corpus(lengths)
    x_before, d_before = x.clone(), d.clone()
    if sop:
        obj = SentenceOrderPrediction(vocab, max_seq_length=max_seq_length, short_seq_prob=short_p, swap_prob=pair_p)
    else:
        obj = NextSentencePrediction(
            vocab, max_seq_length=max_seq_length, short_seq_prob=short_p, random_next_prob=pair_p
        )
    M = max_seq_length - 3
    try:
        plan = obj.pairs(x, document_ids=d, generator=gen(seed))
    except ValueError as e:  # SOP: every chunk was a lone sentence (lone documents, or sentences >= target)
        assert sop and "single sentence" in str(e)
        assume(False)
    b = obj.build_pairs(x, document_ids=d, generator=gen(seed))
    masked = obj(x, document_ids=d, generator=gen(seed))
    assert torch.equal(x, x_before) and torch.equal(d, d_before)  # caller's tensors untouched
    again = obj(x, document_ids=d, generator=gen(seed))
    assert torch.equal(masked.input_ids, again.input_ids) and torch.equal(masked.labels, again.labels)

    N, T = b.input_ids.shape
    assert T == max_seq_length and N == plan.document.numel() >= 1
    ids, tt, am = b.input_ids, b.token_type_ids, b.attention_mask
    assert (ids[:, 0] == CLS).all() and ((ids == CLS).sum(-1) == 1).all()
    assert ((ids == SEP).sum(-1) == 2).all()
    # token flat stream: token id - 4 is its index, so a contiguous run is a run of consecutive ids
    lens = torch.tensor([n for doc in lengths for n in doc])
    C = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    for i in range(N):
        row = ids[i].tolist()
        s1 = row.index(SEP)
        s2 = row.index(SEP, s1 + 1)
        a, bb = row[1:s1], row[s1 + 1 : s2]
        assert 1 <= len(a) and 1 <= len(bb) and len(a) + len(bb) <= M
        assert am[i].tolist() == [True] * (s2 + 1) + [False] * (T - s2 - 1)
        assert tt[i].tolist() == [0] * (s1 + 1) + [1] * (s2 - s1) + [0] * (T - s2 - 1)
        assert row[s2 + 1 :] == [PAD] * (T - s2 - 1)
        for seg, (start, stop), (front, back) in (
            (a, plan.first[i].tolist(), plan.first_trim[i].tolist()),
            (bb, plan.second[i].tolist(), plan.second_trim[i].tolist()),
        ):
            assert start < stop and d[start] == d[stop - 1]  # whole sentences of one document
            full = list(range(4 + int(C[start]), 4 + int(C[stop])))
            assert seg == full[front : len(full) - back]
        la = int(C[plan.first[i, 1]] - C[plan.first[i, 0]])
        lb = int(C[plan.second[i, 1]] - C[plan.second[i, 0]])
        assert (len(a), len(bb)) == reference_truncate(la, lb, M)
    # chunks: per document, A ranges and the in-document B ranges tile the document's sentences
    own_b = plan.sentence_labels == 0 if not sop else torch.ones(N, dtype=torch.bool)
    used = torch.zeros(len(lens), dtype=torch.long)
    for i in range(N):
        for (start, stop), own in ((plan.first[i].tolist(), True), (plan.second[i].tolist(), bool(own_b[i]))):
            if own:
                used[start:stop] += 1
    assert used.max() <= 1  # no sentence is used twice as "own" text
    if not sop:
        assert (used == 1).all()  # NSP uses every sentence (put-back sentences come again)
    else:
        single = torch.tensor([len(doc) == 1 for doc in lengths])[d]
        assert (used[single] == 0).all()  # a lone sentence never makes an SOP pair
    # MLM: only ordinary tokens are targets; labels are the unmasked tokens
    tgt = masked.labels != IGNORE_INDEX
    assert not (tgt & ~(am & (ids > 3))).any()
    assert torch.equal(masked.labels[tgt], ids[tgt])


def test_same_seed_same_batch_other_seed_other_batch():
    x, d, vocab = make_corpus([[5, 7, 3, 9, 4], [6, 6, 2], [8, 3, 5, 5], [4, 4, 4, 4]])
    nsp = NextSentencePrediction(vocab, max_seq_length=16)
    one, two = nsp(x, document_ids=d, generator=gen(7)), nsp(x, document_ids=d, generator=gen(7))
    for f in ("input_ids", "labels", "token_type_ids", "attention_mask", "sentence_labels"):
        assert torch.equal(getattr(one, f), getattr(two, f))
    others = [nsp(x, document_ids=d, generator=gen(s)).input_ids for s in range(8, 12)]
    assert any(o.shape != one.input_ids.shape or not torch.equal(o, one.input_ids) for o in others)


def test_does_not_read_global_rng():
    x, d, vocab = make_corpus([[5, 7, 3], [6, 6, 2], [8, 3, 5, 5]])
    nsp = NextSentencePrediction(vocab, max_seq_length=12)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    nsp(x, document_ids=d, generator=gen(1))
    assert torch.equal(torch.get_rng_state(), state)


def test_explicit_attention_mask():
    # a token the mask calls padding never appears, even when it is not pad_id
    x = X_DET.clone()
    m = x != PAD
    nsp = NextSentencePrediction(V, max_seq_length=8, short_seq_prob=0, random_next_prob=0, mlm_probability=0)
    same = nsp.build_pairs(x, document_ids=D_DET, attention_mask=m)
    assert torch.equal(same.input_ids, nsp.build_pairs(x, document_ids=D_DET).input_ids)
    m[0, 2] = False  # sentence 0 is now [10, 11]
    b = dataclasses.replace(nsp, max_seq_length=7).build_pairs(x, document_ids=D_DET, attention_mask=m)
    assert b.input_ids.tolist() == [
        [1, 10, 11, 2, 13, 14, 2],
        [1, 15, 16, 17, 2, 18, 2],
        [1, 20, 21, 2, 22, 23, 2],
    ]


def test_runs_on_device(device):
    x, d, vocab = make_corpus([[5, 7, 3, 9, 4], [6, 6, 2], [8, 3, 5, 5]], device=device)
    g = torch.Generator(device=device).manual_seed(0)
    for cls in (NextSentencePrediction, SentenceOrderPrediction):
        b = cls(vocab, max_seq_length=16)(x, document_ids=d, generator=g)
        assert b.input_ids.device.type == device.type and b.sentence_labels.device.type == device.type
        assert ((b.input_ids == SEP).sum(-1) == 2).all()


def test_large_input_is_fast():
    import time

    g = gen(0)
    S, L = 20000, 24
    lens = torch.randint(1, L + 1, (S,), generator=g)
    x = torch.randint(4, 1000, (S, L), generator=g) * (torch.arange(L) < lens[:, None])
    d = torch.arange(S) // 10  # 2000 documents of 10 sentences
    vocab = Vocab(size=1000, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
    t0 = time.perf_counter()
    b = NextSentencePrediction(vocab)(x, document_ids=d, generator=g)
    assert time.perf_counter() - t0 < 10.0
    assert b.input_ids.shape[1] == 128 and b.input_ids.shape[0] >= 2000


# ----------------------------------------------------------------------------- bad input


def test_single_document_is_rejected_by_nsp():
    x, d, vocab = make_corpus([[3, 4, 5]])
    with pytest.raises(ValueError, match="document_ids.*single document"):
        NextSentencePrediction(vocab)(x, document_ids=d)
    SentenceOrderPrediction(vocab, mlm_probability=0)(x, document_ids=d)  # SOP needs no other document


def test_bad_document_ids():
    nsp = NextSentencePrediction(V)
    with pytest.raises(ValueError, match="needs document_ids"):
        nsp(X_DET)
    with pytest.raises(ValueError, match=r"non-decreasing.*document_ids\[4\]=0 < document_ids\[3\]=1"):
        nsp(X_DET, document_ids=torch.tensor([0, 0, 0, 1, 0, 1]))
    with pytest.raises(ValueError, match=r"document_ids must have shape \(6,\).*\(5,\)"):
        nsp(X_DET, document_ids=D_DET[:5])
    with pytest.raises(TypeError, match="document_ids.*float"):
        nsp(X_DET, document_ids=D_DET.float())
    with pytest.raises(TypeError, match="document_ids"):
        nsp(X_DET, document_ids=[0, 0, 0, 0, 1, 1])


def test_bad_input_ids_and_mask():
    nsp = NextSentencePrediction(V)
    with pytest.raises(ValueError, match="row 1 has no real token"):
        nsp(torch.tensor([[10, 11], [0, 0], [12, 0]]), document_ids=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"input_ids\[0, 1\] = 2 is \[CLS\] or \[SEP\]"):
        nsp(torch.tensor([[10, 2], [11, 0], [12, 0]]), document_ids=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="attention_mask"):
        nsp(X_DET, document_ids=D_DET, attention_mask=torch.ones(6, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="input_ids holds id 99"):
        nsp(torch.tensor([[99], [10]]), document_ids=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="generator"):
        nsp(X_DET, document_ids=D_DET, generator=0)


def test_sop_without_two_sentence_chunk():
    x, d, vocab = make_corpus([[3], [4], [5]])
    with pytest.raises(ValueError, match="single sentence"):
        SentenceOrderPrediction(vocab)(x, document_ids=d)


def test_bad_options():
    with pytest.raises(ValueError, match="max_seq_length must be an int >= 5.*got 4"):
        NextSentencePrediction(V, max_seq_length=4)
    with pytest.raises(TypeError, match="max_seq_length must be an int"):
        SentenceOrderPrediction(V, max_seq_length=128.0)
    with pytest.raises(ValueError, match="short_seq_prob"):
        NextSentencePrediction(V, short_seq_prob=1.5)
    with pytest.raises(ValueError, match="random_next_prob"):
        NextSentencePrediction(V, random_next_prob=-0.1)
    with pytest.raises(ValueError, match="swap_prob"):
        SentenceOrderPrediction(V, swap_prob=2)
    with pytest.raises(ValueError, match="mlm_selection"):
        NextSentencePrediction(V, mlm_selection="all")
    with pytest.raises(ValueError, match="max_predictions"):
        NextSentencePrediction(V, max_predictions=0)
    with pytest.raises(ValueError, match="cls_id"):
        NextSentencePrediction(Vocab(size=40, pad_id=0, sep_id=2, mask_id=3))
    with pytest.raises(ValueError, match="mask_id"):
        NextSentencePrediction(Vocab(size=40, pad_id=0, cls_id=1, sep_id=2))
    NextSentencePrediction(Vocab(size=40, pad_id=0, cls_id=1, sep_id=2), mlm_probability=0)  # no MLM, no [MASK]
    with pytest.raises(TypeError, match="vocab"):
        NextSentencePrediction(vocab=40)


def test_registry():
    nsp = get_objective("nsp", vocab=V, max_seq_length=64, random_next_prob=0.3)
    assert isinstance(nsp, NextSentencePrediction) and nsp.name == "nsp" and nsp.max_seq_length == 64
    sop = get_objective("sop", vocab=V, swap_prob=0.4, mlm_selection="bernoulli", max_predictions=None)
    assert isinstance(sop, SentenceOrderPrediction) and sop.name == "sop"
    with pytest.raises(ValueError, match="unknown option.*'swap_prob'.*random_next_prob"):
        get_objective("nsp", vocab=V, swap_prob=0.5)
    assert nsp == get_objective("nsp", vocab=V, max_seq_length=64, random_next_prob=0.3)


@pytest.mark.parametrize("cls", [NextSentencePrediction, SentenceOrderPrediction])
def test_bernoulli_masking_needs_max_predictions_none(cls):
    # the default max_predictions=20 belongs to "exact"; the error names this objective's options
    with pytest.raises(
        ValueError, match=rf"{cls.__name__}: max_predictions=20 .*mlm_selection='bernoulli' pass max_predictions=None"
    ):
        cls(V, mlm_selection="bernoulli")
    cls(V, mlm_selection="bernoulli", max_predictions=None)
    cls(V, mlm_selection="bernoulli", mlm_probability=0)  # no MLM, nothing to cap


# ----------------------------------------------------------------------------- whole-word units on the pairs


def words_for(x: torch.Tensor, word_len: int = 2) -> torch.Tensor:
    """Per-sentence word ids: words of ``word_len`` tokens, counted from 0 in every sentence, -1 on padding."""
    t = torch.arange(x.shape[1]).expand_as(x)
    return torch.where(x != PAD, t // word_len, -1)


@pytest.mark.parametrize("unit", ["word", "span", "ngram"])
@pytest.mark.parametrize("cls", [NextSentencePrediction, SentenceOrderPrediction])
def test_whole_word_units_mask_whole_words_of_the_pairs(cls, unit):
    x, d, vocab = make_corpus([[5, 7, 3, 9, 4], [6, 6, 2], [8, 3, 5, 5]])
    wid = words_for(x)
    obj = cls(vocab, max_seq_length=24, unit=unit, mlm_probability=0.3)
    plain = obj.build_pairs(x, document_ids=d, generator=gen(3))
    b = obj(x, document_ids=d, word_ids=wid, generator=gen(3))
    assert torch.equal(b.sentence_labels, plain.sentence_labels)  # the pairs are drawn first, as for tokens
    target = b.labels != IGNORE_INDEX
    assert torch.equal(b.labels[target], plain.input_ids[target])
    assert not (target & ~(plain.attention_mask & (plain.input_ids > 3))).any()
    # tokens are 4 + their stream index and words are pairs of tokens from each sentence start:
    # a word = the tokens of one sentence with the same (index in sentence) // 2
    sentence_of = torch.repeat_interleave(torch.arange(x.shape[0]), (x != PAD).sum(-1))  # stream index -> sentence
    index_in = torch.cat([torch.arange(int(n)) for n in (x != PAD).sum(-1)])
    for r in range(b.input_ids.shape[0]):
        for t in range(b.input_ids.shape[1]):
            tok = int(plain.input_ids[r, t])
            if tok <= 3:
                continue
            s, i = int(sentence_of[tok - 4]), int(index_in[tok - 4])
            mates = [
                t2
                for t2 in range(b.input_ids.shape[1])
                if int(plain.input_ids[r, t2]) > 3
                and int(sentence_of[int(plain.input_ids[r, t2]) - 4]) == s
                and int(index_in[int(plain.input_ids[r, t2]) - 4]) // 2 == i // 2
            ]
            assert all(bool(target[r, m]) == bool(target[r, t]) for m in mates)


def test_words_never_run_from_one_sentence_into_the_next():
    # two one-word sentences in segment A: both have word id 0, yet they are two words
    x = torch.tensor([[10, 11], [12, 13], [14, 15], [16, 17]])
    d = torch.tensor([0, 0, 0, 0])
    wid = torch.zeros_like(x)
    sop = SentenceOrderPrediction(
        V, max_seq_length=16, short_seq_prob=0, swap_prob=0, unit="word", mlm_selection="exact", mlm_probability=0.25
    )
    b = sop(x, document_ids=d, word_ids=wid, generator=gen(0))
    target = b.labels != IGNORE_INDEX
    assert target.sum() == 2  # budget round(8 * 0.25) = 2 tokens = one two-token word, not a four-token "word"
    hit = b.labels[target].tolist()
    assert hit in ([10, 11], [12, 13], [14, 15], [16, 17])


def test_token_unit_is_the_default_and_unchanged():
    nsp = NextSentencePrediction(V, max_seq_length=7)
    assert nsp.unit == "token"
    a = nsp(X_SEED, document_ids=D_SEED, generator=gen(0))
    b = NextSentencePrediction(V, max_seq_length=7, unit="token")(X_SEED, document_ids=D_SEED, generator=gen(0))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)


def test_unit_errors():
    with pytest.raises(ValueError, match=r"unit must be one of .*got 'phrase'"):
        SentenceOrderPrediction(V, unit="phrase")
    sop = SentenceOrderPrediction(V, max_seq_length=8, unit="word")
    with pytest.raises(ValueError, match="unit='word' needs word_ids"):
        sop(X_DET, document_ids=D_DET)
    with pytest.raises(ValueError, match="word_ids was given but unit='token'"):
        SentenceOrderPrediction(V, max_seq_length=8)(X_DET, document_ids=D_DET, word_ids=words_for(X_DET))
    with pytest.raises(ValueError, match="word_ids must have the shape"):
        sop(X_DET, document_ids=D_DET, word_ids=words_for(X_DET)[:, :2])
    with pytest.raises(ValueError, match="word_ids must be >= -1"):
        sop(X_DET, document_ids=D_DET, word_ids=words_for(X_DET) - 3)
    # a span/ngram budget may be capped under "bernoulli"
    SentenceOrderPrediction(V, unit="span", mlm_selection="bernoulli", max_predictions=20)
    with pytest.raises(ValueError, match="max_predictions=20 caps"):
        SentenceOrderPrediction(V, unit="word", mlm_selection="bernoulli", max_predictions=20)
