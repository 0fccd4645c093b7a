import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab, attention_mask_4d
from lmobjectives.batch import padding_mask
from lmobjectives.objectives.clm import documents_from_eos, positions_within_documents
from lmobjectives.objectives.prefix_lm import PrefixLM, document_lengths, prefix_lm_batch

T_, F_ = True, False
V = Vocab(size=10, pad_id=2, eos_id=2)  # the docstring's vocabulary: pad == eos
VP = Vocab(size=10, pad_id=0, eos_id=1)  # pad != eos: ordinary ids 2..9
X = torch.tensor([[7, 8, 9, 2, 5, 6, 2, 2]])


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- worked examples


def test_docstring_example():
    b = PrefixLM(V)(X, generator=gen(5))
    assert b.input_ids.tolist() == X.tolist()
    assert b.prefix_mask.tolist() == [[T_, T_, F_, F_, T_, F_, F_, F_]]
    assert b.labels.tolist() == [[-100, 9, 2, -100, 6, 2, -100, -100]]
    assert b.document_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    assert b.attention_mask.tolist() == [[T_, T_, T_, T_, T_, T_, T_, F_]]
    assert b.causal is True
    assert b.has_targets.tolist() == [True]
    assert attention_mask_4d(b)[0, 0].int().tolist() == [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
    ]
    # the same batch from the public builder with the splits the docstring names
    real = padding_mask(X, pad_id=2, eos_id=2)
    given_ = prefix_lm_batch(X, torch.tensor([[2, 1, 0]]), attention_mask=real, document_ids=documents_from_eos(X, 2))
    for name in ("input_ids", "labels", "attention_mask", "document_ids", "position_ids", "prefix_mask", "has_targets"):
        assert torch.equal(getattr(b, name), getattr(given_, name)), name


def test_prefix_lm_batch_docstring_example():
    b = prefix_lm_batch(
        torch.tensor([[7, 8, 9, 2, 5, 6]]),
        torch.tensor([[2, 1]]),
        attention_mask=torch.ones(1, 6, dtype=torch.bool),
        document_ids=torch.tensor([[0, 0, 0, 0, 1, 1]]),
    )
    assert b.prefix_mask.int().tolist() == [[1, 1, 0, 0, 1, 0]]
    assert b.labels.tolist() == [[-100, 9, 2, -100, 6, -100]]


def test_seqio_convention_last_prefix_token_predicts_first_target():
    # seqio PrefixLMFeatureConverter: inputs [9, 4, 6, 1], targets [3, 9, 1] -> the position reading 1 (the last
    # input) is in the bidirectional region and predicts 3; loss only on the targets
    x = torch.tensor([[9, 4, 6, 1, 3, 9, 1]])
    b = prefix_lm_batch(x, torch.tensor([4]), attention_mask=torch.ones_like(x, dtype=torch.bool))
    assert b.prefix_mask.int().tolist() == [[1, 1, 1, 1, 0, 0, 0]]
    assert b.labels.tolist() == [[-100, -100, -100, 3, 9, 1, -100]]
    assert b.document_ids is None and b.position_ids is None


def test_document_lengths_example():
    got = document_lengths(torch.tensor([[1, 1, 1, 1, 1, 0]]), torch.tensor([[0, 0, 0, 1, 1, 2]]))
    assert got.tolist() == [[3, 2, 0, 0, 0, 0]]
    assert document_lengths(torch.tensor([[0, 1, 1, 0]])).tolist() == [[2, 0, 0, 0]]


def test_prefix_counts_real_tokens_only():
    # left padding does not shift the split: P counts real tokens of the document
    x = torch.tensor([[0, 0, 5, 6, 7, 8]])
    real = torch.tensor([[F_, F_, T_, T_, T_, T_]])
    b = prefix_lm_batch(x, torch.tensor([2]), attention_mask=real)
    assert b.prefix_mask.tolist() == [[F_, F_, T_, T_, F_, F_]]
    assert b.labels.tolist() == [[-100, -100, -100, 7, 8, -100]]


def test_prefix_length_bounds_zero_and_full():
    x = torch.tensor([[5, 6, 7], [5, 6, 7]])
    b = prefix_lm_batch(x, torch.tensor([0, 3]), attention_mask=torch.ones(2, 3, dtype=torch.bool))
    assert b.labels.tolist() == [[6, 7, -100], [-100, -100, -100]]  # P = 0: causal LM; P = L: no target
    assert b.prefix_mask.tolist() == [[F_, F_, F_], [T_, T_, T_]]
    assert b.has_targets.tolist() == [True, False]  # the builder reports, PrefixLM refuses a batch with none


# ----------------------------------------------------------------------------- brute force


def brute_force(ids, real, docs, prefix_of_doc, with_documents):
    """Plain-Python prefix LM for one row: (prefix, labels, mask T x T, positions) from first principles."""
    T = len(ids)
    run = [0] * T  # index of the document along the row
    for t in range(1, T):
        run[t] = run[t - 1] + (docs[t] != docs[t - 1])
    rank, seen = [0] * T, {}
    for t in range(T):
        rank[t] = seen.get(run[t], 0)
        seen[run[t]] = rank[t] + real[t]
    prefix = [real[t] and rank[t] < prefix_of_doc[run[t]] for t in range(T)]
    suffix = [real[t] and rank[t] >= prefix_of_doc[run[t]] for t in range(T)]
    labels = [IGNORE_INDEX] * T
    for t in range(T - 1):
        if real[t] and suffix[t + 1] and docs[t] == docs[t + 1]:
            labels[t] = ids[t + 1]
    mask = [
        [i == j or (real[j] and docs[i] == docs[j] and (j <= i or (prefix[i] and prefix[j]))) for j in range(T)]
        for i in range(T)
    ]
    positions = None
    if with_documents:
        positions = [0] * T  # restart at each new document
        for t in range(1, T):
            positions[t] = positions[t - 1] + 1 if run[t] == run[t - 1] else 0
    return prefix, labels, mask, positions, seen  # seen: real tokens per document (its length L)


def reachable(mask):
    """Transitive closure of one-layer visibility: what a query can depend on through any number of layers."""
    r = mask.clone()
    while True:
        nxt = r | ((r.int() @ mask.int()) > 0)
        if torch.equal(nxt, r):
            return r
        r = nxt


def check_against_brute_force(b, ids, real, docs_py, prefixes, with_documents):
    B, T = ids.shape
    m4 = attention_mask_4d(b)
    assert m4.shape == (B, 1, T, T)
    for r in range(B):
        prefix, labels, mask, positions, _ = brute_force(
            ids[r].tolist(), real[r].tolist(), docs_py[r], prefixes[r], with_documents
        )
        assert b.prefix_mask[r].tolist() == prefix
        assert b.labels[r].tolist() == labels
        assert m4[r, 0].tolist() == mask
        if with_documents:
            assert b.position_ids[r].tolist() == positions
        # no leak: a labelled position depends (through any depth) on no later token, its target included
        reach = reachable(m4[r, 0])
        for t in range(T):
            if labels[t] != IGNORE_INDEX:
                assert not reach[t, t + 1 :].any()
    assert b.has_targets.tolist() == [bool((row != IGNORE_INDEX).any()) for row in b.labels]


@st.composite
def rows(draw, max_rows=4, max_len=14):
    """A batch of ids over 2..9 with EOS (1) sprinkled in, trailing padding (0) per row."""
    B = draw(st.integers(1, max_rows))
    T = draw(st.integers(1, max_len))
    ids, real = [], []
    for _ in range(B):
        n = draw(st.integers(0, T))
        row = draw(st.lists(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9]), min_size=n, max_size=n))
        ids.append(row + [0] * (T - n))
        real.append([True] * n + [False] * (T - n))
    return torch.tensor(ids), torch.tensor(real)


def packed_document_ids(ids, real):
    """What pack_documents gives: EOS closes a document, padding gets a fresh id; ids count across rows."""
    docs = documents_from_eos(ids, eos_id=1)  # (B, T)
    offset = torch.arange(ids.shape[0])[:, None] * 100
    return torch.where(real, docs, docs.max() + 1) + offset


@settings(max_examples=80, deadline=None)
@given(batch=rows(), mode=st.sampled_from(["packed", "eos", "row"]), seed=st.integers(0, 2**31))
def test_objective_against_brute_force(batch, mode, seed):
    ids, real = batch
    extras = {"attention_mask": real}
    if mode == "packed":
        extras["document_ids"] = packed_document_ids(ids, real)
    objective = PrefixLM(VP, document_masking=mode != "row")
    docs = packed_document_ids(ids, real) if mode == "packed" else documents_from_eos(ids, 1)
    docs_py = docs.tolist() if mode != "row" else [[0] * ids.shape[1] for _ in range(ids.shape[0])]
    # every document of >= 2 real tokens must have a target, so the batch fails exactly when none has two
    lengths = [brute_force(i, r, d, [0] * len(i), False)[4] for i, r, d in zip(ids.tolist(), real.tolist(), docs_py)]
    if all(L < 2 for row in lengths for L in row.values()):
        with pytest.raises(ValueError, match="nothing to predict"):
            objective(ids, generator=gen(seed), **extras)
        return
    b = objective(ids, generator=gen(seed), **extras)
    # read each document's split from the batch, check its range, then rebuild everything from it
    prefixes = []
    for r in range(ids.shape[0]):
        run = torch.cat([torch.zeros(1, dtype=torch.long), (torch.tensor(docs_py[r]).diff() != 0).long().cumsum(0)])
        split = {}
        for k, L in lengths[r].items():
            P = int(b.prefix_mask[r][run == k].sum())
            assert (1 <= P <= L - 1) if L >= 2 else P == L
            split[k] = P
        prefixes.append(split)
    check_against_brute_force(b, ids, real, docs_py, prefixes, mode != "row")
    if mode != "row":
        assert torch.equal(b.position_ids, positions_within_documents(docs))


@settings(max_examples=80, deadline=None)
@given(batch=rows(), with_documents=st.booleans(), holes=st.booleans(), data=st.data())
def test_builder_against_brute_force(batch, with_documents, holes, data):
    ids, real = batch
    if holes:  # padding anywhere, not only at the end: the split still counts real tokens
        real = torch.tensor(
            data.draw(
                st.lists(
                    st.lists(st.booleans(), min_size=ids.shape[1], max_size=ids.shape[1]),
                    min_size=ids.shape[0],
                    max_size=ids.shape[0],
                )
            )
        )
    docs = packed_document_ids(ids, torch.ones_like(real)) if with_documents else None
    docs_py = docs.tolist() if with_documents else [[0] * ids.shape[1] for _ in range(ids.shape[0])]
    lengths = document_lengths(real, docs)  # (B, T)
    P = torch.tensor([[data.draw(st.integers(0, int(L))) for L in row] for row in lengths.tolist()])
    b = prefix_lm_batch(ids, P, attention_mask=real, document_ids=docs)
    prefixes = [dict(enumerate(row)) for row in P.tolist()]
    check_against_brute_force(b, ids, real, docs_py, prefixes, with_documents)
    # lengths agree with the brute force, and with trailing padding each document has L - P targets
    for r in range(ids.shape[0]):
        seen = brute_force(ids[r].tolist(), real[r].tolist(), docs_py[r], prefixes[r], False)[4]
        assert [seen.get(k, 0) for k in range(ids.shape[1])] == lengths[r].tolist()


def test_labels_only_on_suffix_and_counts():
    # 200 rows of three documents each (lengths 4, 6, 3 incl. EOS) and 3 padding tokens
    row = [5, 6, 7, 1, 5, 6, 7, 8, 9, 1, 8, 9, 1, 0, 0, 0]
    x = torch.tensor([row] * 200)
    real = x != 0
    b = PrefixLM(VP)(x, attention_mask=real, generator=gen(1))
    labelled = b.labels != IGNORE_INDEX  # (B, T)
    # a label at t predicts t + 1, which is never a prefix token, never padding, never in another document
    assert not (labelled[:, :-1] & b.prefix_mask[:, 1:]).any()
    assert not (labelled[:, :-1] & ~real[:, 1:]).any()
    assert not labelled[:, 3].any() and not labelled[:, 9].any() and not labelled[:, 12:].any()
    assert torch.equal(b.labels[:, :-1][labelled[:, :-1]], x[:, 1:][labelled[:, :-1]])
    for start, end in ((0, 4), (4, 10), (10, 13)):
        P = b.prefix_mask[:, start:end].sum(-1)
        assert torch.equal(labelled[:, start:end].sum(-1), (end - start) - P)  # every suffix token is a target
        # the prefix is a run at the start of the document
        assert torch.equal(b.prefix_mask[:, start:end], torch.arange(end - start)[None] < P[:, None])


@pytest.mark.parametrize("positions", ["alibi", "rope"])
def test_model_honours_the_prefix(positions):
    # end to end with the package's transformer, on the batch its fast path would take (no padding, no documents):
    # a labelled output never depends on a later token; the first prefix output depends on the last prefix token
    import dataclasses

    from lmobjectives.models import Transformer, TransformerConfig

    x = torch.randint(2, 10, (1, 10), generator=gen(0))
    b = prefix_lm_batch(x, torch.tensor([5]), attention_mask=torch.ones_like(x, dtype=torch.bool))
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=10, d_model=16, n_heads=2, d_ff=32, n_token_types=0, positions=positions)
    model = Transformer(config)
    with torch.no_grad():
        h = model(b).hidden  # (1, T, d)
        for t in (b.labels[0] != IGNORE_INDEX).nonzero()[:, 0].tolist():
            changed = x.clone()
            changed[0, t + 1 :] = (changed[0, t + 1 :] - 1) % 8 + 2  # every later token differs
            assert torch.equal(model(dataclasses.replace(b, input_ids=changed)).hidden[0, t], h[0, t])
        changed = x.clone()
        changed[0, 4] = (changed[0, 4] - 1) % 8 + 2
        assert not torch.allclose(model(dataclasses.replace(b, input_ids=changed)).hidden[0, 0], h[0, 0])


def test_on_device_equals_the_builder_on_cpu(device):
    # the draw uses the device's generator; given the drawn splits, the batch equals the CPU builder's
    x = torch.tensor([row for row in ([5, 6, 7, 1, 5, 6, 7, 8, 9, 1, 8, 9, 1, 0, 0, 0],) * 3])
    real = x != 0
    docs = packed_document_ids(x, real)
    b = PrefixLM(VP)(
        x.to(device),
        attention_mask=real.to(device),
        document_ids=docs.to(device),
        generator=torch.Generator(device=device).manual_seed(0),
    )
    assert b.labels.device.type == device.type and b.prefix_mask.device.type == device.type
    splits = torch.stack([b.prefix_mask[:, s:e].sum(-1).cpu() for s, e in ((0, 4), (4, 10), (10, 13), (13, 16))], 1)
    ref = prefix_lm_batch(x, splits, attention_mask=real, document_ids=docs)
    for name in ("labels", "prefix_mask", "position_ids", "document_ids", "attention_mask", "has_targets"):
        assert torch.equal(getattr(b, name).cpu(), getattr(ref, name)), name


# ----------------------------------------------------------------------------- distribution


# chi-square critical values at p = 0.001 (tables), by degrees of freedom
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12, 9: 27.88}


def chi_square(counts):
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum())


def test_split_uniform_in_one_to_length():
    # one document per row, L = 6 real tokens (2 padding): P uniform on {1, ..., 5}
    n = 6000
    x = torch.tensor([[3, 4, 5, 6, 7, 8, 0, 0]]).repeat(n, 1)
    b = PrefixLM(VP, document_masking=False)(x, generator=gen(0))
    P = b.prefix_mask.sum(-1)
    counts = torch.bincount(P, minlength=6).double()
    assert counts[0] == 0 and counts.numel() == 6
    assert chi_square(counts[1:]) < CHI2_999[4]


def test_splits_of_packed_documents_are_uniform_and_independent():
    # documents of L = 3 and L = 5 in one row: the pair (P1, P2) is uniform on {1, 2} x {1, ..., 4}
    n = 8000
    x = torch.tensor([[5, 6, 1, 7, 8, 9, 4, 1]]).repeat(n, 1)
    b = PrefixLM(VP)(x, generator=gen(2))
    P1, P2 = b.prefix_mask[:, :3].sum(-1), b.prefix_mask[:, 3:].sum(-1)
    assert set(P1.tolist()) == {1, 2} and set(P2.tolist()) == {1, 2, 3, 4}
    joint = torch.bincount((P1 - 1) * 4 + (P2 - 1), minlength=8).double()
    assert chi_square(joint) < CHI2_999[7]


def test_rows_of_different_lengths_each_uniform():
    n = 4000
    lengths = torch.arange(n) % 4 + 2  # L in {2, 3, 4, 5}
    x = torch.full((n, 6), 3)
    real = torch.arange(6)[None] < lengths[:, None]
    b = PrefixLM(VP, document_masking=False)(x, attention_mask=real, generator=gen(3))
    P = b.prefix_mask.sum(-1)
    assert (P >= 1).all() and (P <= lengths - 1).all()
    for L in (3, 4, 5):
        counts = torch.bincount(P[lengths == L], minlength=L)[1:L].double()
        assert chi_square(counts) < CHI2_999[L - 2]
    assert (P[lengths == 2] == 1).all()


def test_seeded_and_pure():
    x = torch.randint(2, 10, (4, 20), generator=gen(0))
    x[:, 7] = 1
    before = x.clone()
    a = PrefixLM(VP)(x, generator=gen(11))
    c = PrefixLM(VP)(x, generator=gen(11))
    assert torch.equal(a.prefix_mask, c.prefix_mask) and torch.equal(a.labels, c.labels)
    assert torch.equal(x, before)
    draws = {tuple(PrefixLM(VP)(x, generator=gen(s)).prefix_mask.sum(-1).tolist()) for s in range(10)}
    assert len(draws) > 1
    # default generator when none is given
    torch.manual_seed(4)
    d = PrefixLM(VP)(x)
    torch.manual_seed(4)
    assert torch.equal(PrefixLM(VP)(x).prefix_mask, d.prefix_mask)


def test_batch_does_not_alias_caller_tensors():
    mask = torch.tensor([[T_, T_, T_, T_, T_, T_, T_, F_]])
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2]])
    b = PrefixLM(V)(X, attention_mask=mask, document_ids=docs, generator=gen(0))
    b.attention_mask[0, 0] = False
    b.document_ids[0, 0] = 5
    b.input_ids[0, 0] = 0
    assert mask[0, 0].item() is True and docs[0, 0].item() == 0 and X[0, 0].item() == 7


def test_pad_equal_eos_keeps_the_real_eos_as_target():
    # pad == eos, no attention_mask: the first EOS of the trailing run is real and the last target
    b = PrefixLM(V, document_masking=False)(torch.tensor([[5, 6, 2, 2, 2]]), generator=gen(0))
    assert b.attention_mask.tolist() == [[T_, T_, T_, F_, F_]]
    assert b.labels[0, 1].item() == 2


def test_int_and_uint8_inputs():
    b = PrefixLM(VP, document_masking=False)(
        torch.tensor([[7, 8, 9, 9]], dtype=torch.int32),
        attention_mask=torch.tensor([[1, 1, 1, 0]], dtype=torch.uint8),
        generator=gen(0),
    )
    assert b.input_ids.dtype == torch.long and b.attention_mask.dtype == torch.bool
    assert b.labels[0, 2:].tolist() == [-100, -100]


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (torch.tensor([[1.0, 2.0]]), TypeError, "dtype"),
        (torch.tensor([1, 2]), ValueError, "rank 2"),
        (torch.zeros(0, 3, dtype=torch.long), ValueError, "empty"),
        (torch.tensor([[1, 10]]), ValueError, "id 10"),
        ([[1, 2]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(bad, exc, words):
    with pytest.raises(exc, match=words):
        PrefixLM(V)(bad)


@pytest.mark.parametrize(
    "x, options, extras",
    [
        (torch.tensor([[5], [6]]), {}, {}),  # T = 1
        (torch.tensor([[2, 2, 2]]), {}, {}),  # pad == eos: one real token
        (torch.tensor([[5, 6, 7]]), {}, {"document_ids": torch.tensor([[0, 1, 2]])}),  # documents of one token
        (torch.tensor([[2, 2, 2, 2]]), {}, {"attention_mask": torch.ones(1, 4, dtype=torch.bool)}),  # 4 EOS-only docs
    ],
)
def test_nothing_to_predict_is_an_error(x, options, extras):
    with pytest.raises(ValueError, match=rf"input_ids of shape \({x.shape[0]}, {x.shape[1]}\) has nothing to predict"):
        PrefixLM(V, **options)(x, generator=gen(0), **extras)


def test_document_ids_without_document_masking_is_an_error():
    with pytest.raises(ValueError, match="document_masking"):
        PrefixLM(V, document_masking=False)(torch.tensor([[3, 4]]), document_ids=torch.tensor([[0, 0]]))


def test_document_masking_needs_eos_without_document_ids():
    with pytest.raises(ValueError, match="eos_id"):
        PrefixLM(Vocab(size=10, pad_id=0))(torch.tensor([[3, 4, 5]]))
    # with document ids given, no EOS is needed
    no_eos = PrefixLM(Vocab(size=10, pad_id=0))
    b = no_eos(torch.tensor([[3, 4, 5]]), document_ids=torch.tensor([[4, 4, 4]]), generator=gen(0))
    assert b.has_targets.tolist() == [True]


def test_split_document_id_runs_are_an_error():
    with pytest.raises(ValueError, match="row 1 .* two separate runs"):
        PrefixLM(V)(torch.tensor([[3, 4, 5], [3, 4, 5]]), document_ids=torch.tensor([[0, 0, 1], [0, 1, 0]]))
    # ids need not be increasing, only contiguous
    PrefixLM(V)(torch.tensor([[3, 4, 5, 6]]), document_ids=torch.tensor([[7, 7, 3, 3]]), generator=gen(0))


def test_bad_generator():
    with pytest.raises(TypeError, match="generator"):
        PrefixLM(V)(X, generator=0)


ONES = torch.ones(2, 4, dtype=torch.bool)
IDS = torch.tensor([[3, 4, 5, 6], [3, 4, 5, 6]])
DOCS = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "prefix, docs, exc, words",
    [
        ([1, 2], None, TypeError, "prefix_lengths must be a torch.Tensor"),
        (torch.tensor([1.0, 2.0]), None, TypeError, "integer tensor"),
        (torch.tensor([True, False]), None, TypeError, "integer tensor"),
        (torch.tensor([1, 2, 3]), None, ValueError, r"shape \(2,\) or \(2, D\)"),
        (torch.tensor([1, 2]), DOCS, ValueError, r"shape \(2, D\), one column per document"),
        (torch.zeros(2, 0, dtype=torch.long), None, ValueError, "shape"),
        (torch.tensor([[1], [1]]), DOCS, ValueError, "1 column.* 2 documents"),
        (torch.tensor([-1, 2]), None, ValueError, ">= 0, got -1"),
        (torch.tensor([1, 5]), None, ValueError, r"prefix_lengths\[1, 0\] = 5 exceeds the 4 real tokens"),
        (
            torch.tensor([[1, 3], [1, 0]]),
            DOCS,
            ValueError,
            r"prefix_lengths\[0, 1\] = 3 exceeds the 2 real tokens of doc",
        ),
    ],
)
def test_prefix_lm_batch_bad_prefix_lengths(prefix, docs, exc, words):
    with pytest.raises(exc, match=words):
        prefix_lm_batch(IDS, prefix, attention_mask=ONES, document_ids=docs)


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"input_ids": [[1, 2]]}, TypeError, "input_ids must be a torch.Tensor"),
        ({"input_ids": torch.tensor([[1.0]])}, TypeError, "input_ids must hold integer"),
        ({"input_ids": torch.tensor([1, 2])}, ValueError, "input_ids must be a non-empty"),
        ({"attention_mask": torch.ones(2, 3, dtype=torch.bool)}, ValueError, "attention_mask must have the shape"),
        ({"attention_mask": torch.ones(2, 4)}, TypeError, "attention_mask must be a bool"),
        ({"document_ids": torch.zeros(2, 4)}, TypeError, "document_ids must be an integer"),
    ],
)
def test_prefix_lm_batch_bad_arguments(kwargs, exc, words):
    args = {"input_ids": IDS, "prefix_lengths": torch.tensor([1, 1]), "attention_mask": ONES, "document_ids": None}
    args.update(kwargs)
    with pytest.raises(exc, match=words):
        prefix_lm_batch(args.pop("input_ids"), args.pop("prefix_lengths"), **args)


def test_document_lengths_bad_arguments():
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        document_lengths([[1, 1]])
    with pytest.raises(ValueError, match="rank 2"):
        document_lengths(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="document_ids must have the shape"):
        document_lengths(ONES, torch.zeros(2, 3, dtype=torch.long))
