import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab, attention_mask_4d, get_objective
from lmobjectives.batch import padding_mask
from lmobjectives.losses import lm_loss
from lmobjectives.objectives.clm import documents_from_eos, positions_within_documents

V = Vocab(size=10, pad_id=2, eos_id=2)
T, F_ = True, False


def test_docstring_example_without_document_masking():
    b = get_objective("clm", vocab=V)(torch.tensor([[7, 8, 2, 9, 2, 2]]))
    assert b.labels.tolist() == [[8, 2, 9, 2, -100, -100]]
    assert b.attention_mask.tolist() == [[T, T, T, T, T, F_]]
    assert b.causal is True
    assert b.position_ids is None and b.document_ids is None


def test_docstring_example_with_document_masking():
    b = get_objective("clm", vocab=V, document_masking=True)(torch.tensor([[7, 8, 2, 9, 2, 2]]))
    assert b.labels.tolist() == [[8, 2, -100, 2, -100, -100]]
    assert b.document_ids.tolist() == [[0, 0, 0, 1, 1, 2]]
    assert b.position_ids.tolist() == [[0, 1, 2, 0, 1, 0]]


def test_eos_is_learned_when_pad_equals_eos():
    # the HF habit labels[input_ids == pad_id] = -100 would drop this EOS label
    b = get_objective("clm", vocab=V)(torch.tensor([[5, 6, 2, 2], [5, 6, 7, 2]]))
    assert b.labels.tolist() == [[6, 2, -100, -100], [6, 7, 2, -100]]


def test_explicit_attention_mask_wins():
    m = torch.tensor([[1, 1, 1, 0]])
    b = get_objective("clm", vocab=V)(torch.tensor([[5, 6, 7, 7]]), attention_mask=m)
    assert b.labels.tolist() == [[6, 7, -100, -100]]


def test_document_masking_blocks_cross_document_attention():
    b = get_objective("clm", vocab=V, document_masking=True)(torch.tensor([[7, 8, 2, 9, 2, 2]]))
    m = attention_mask_4d(b)[0, 0]
    assert m[3, 2].item() is False  # doc 1 cannot see doc 0
    assert m[4, 3].item() is True
    assert m[1, 2].item() is False  # causal


def test_helpers():
    assert documents_from_eos(torch.tensor([[7, 8, 2, 9, 2, 4]]), 2).tolist() == [[0, 0, 0, 1, 1, 2]]
    assert positions_within_documents(torch.tensor([[0, 0, 0, 1, 1, 2]])).tolist() == [[0, 1, 2, 0, 1, 0]]
    assert padding_mask(torch.tensor([[5, 2, 6, 2, 2]]), 2, 2).tolist() == [[T, T, T, T, F_]]


def test_does_not_edit_input():
    x = torch.tensor([[7, 8, 2, 9, 2, 2]])
    before = x.clone()
    b = get_objective("clm", vocab=V)(x)
    b.input_ids[0, 0] = 0
    assert torch.equal(x, before)


def test_clm_loss_equals_cross_entropy_on_shifted_logits(device):
    g = torch.Generator().manual_seed(0)
    vocab = Vocab(size=50, pad_id=0, eos_id=1)
    x = torch.randint(3, 50, (4, 12), generator=g)
    x[1, 8:] = 0  # padding
    x[2, 5] = 1  # an EOS inside
    b = get_objective("clm", vocab=vocab)(x.to(device))
    hidden = torch.randn(4, 12, 16, generator=g).to(device)
    weight = torch.randn(50, 16, generator=g).to(device)
    logits = hidden @ weight.T  # (B, T, V)
    # the textbook form: logits[:, :-1] predict input_ids[:, 1:], padding ignored
    target = x[:, 1:].clone().to(device)
    target[1, 7:] = IGNORE_INDEX
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 50), target.reshape(-1), ignore_index=IGNORE_INDEX)
    out = lm_loss(hidden, weight, b.labels)
    torch.testing.assert_close(out.loss, ref)
    assert out.num_tokens.item() == int((target != IGNORE_INDEX).sum())


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    doc_mask=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_properties(lengths, doc_mask, seed):
    g = torch.Generator().manual_seed(seed)
    T_ = max(lengths)
    vocab = Vocab(size=20, pad_id=0, eos_id=1)
    x = torch.randint(1, 20, (len(lengths), T_), generator=g)
    mask = torch.arange(T_)[None] < torch.tensor(lengths)[:, None]
    x = torch.where(mask, x, 0)
    clm = get_objective("clm", vocab=vocab, document_masking=doc_mask)
    # a target wherever this and the next token are real (and, with document masking, this one is not EOS)
    expected = mask[:, :-1] & mask[:, 1:] & ((x[:, :-1] != 1) if doc_mask else True)
    if not expected.any():
        with pytest.raises(ValueError, match="nothing to predict"):
            clm(x, attention_mask=mask)
        return
    b = clm(x, attention_mask=mask)
    lab = b.labels
    has = lab != IGNORE_INDEX
    # every label is the next input token, and only from real to real tokens
    assert torch.equal(lab[:, :-1][has[:, :-1]], x[:, 1:][has[:, :-1]])
    assert not has[:, -1].any()
    assert int(has.sum(-1).max()) <= T_ - 1
    assert (has.sum(-1) <= (torch.tensor(lengths) - 1)).all()
    if not doc_mask:
        assert torch.equal(has.sum(-1), torch.tensor(lengths) - 1)
    else:
        # no target crosses an EOS boundary
        assert not (has[:, :-1] & (x[:, :-1] == 1)).any()
    assert torch.equal(has[:, :-1], expected)
    assert torch.equal(b.has_targets, has.any(-1))


@pytest.mark.parametrize(
    "bad, exc, words",
    [
        (torch.tensor([[1.0, 2.0]]), TypeError, "dtype"),
        (torch.tensor([1, 2]), ValueError, "rank 2"),
        (torch.zeros(0, 3, dtype=torch.long), ValueError, "empty"),
        (torch.tensor([[1, 10]]), ValueError, "id 10"),
        (torch.tensor([[-1, 3]]), ValueError, "id -1"),
        ([[1, 2]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_input(bad, exc, words):
    with pytest.raises(exc, match=words):
        get_objective("clm", vocab=V)(bad)


def test_document_ids_without_document_masking_is_an_error():
    with pytest.raises(ValueError, match="document_masking"):
        get_objective("clm", vocab=V)(torch.tensor([[3, 4]]), document_ids=torch.tensor([[0, 0]]))


@pytest.mark.parametrize(
    "x, options, extras",
    [
        (torch.tensor([[5], [6]]), {}, {}),  # T = 1: no next token
        (torch.tensor([[2, 2, 2], [2, 2, 2]]), {}, {}),  # pad == eos: only the first EOS of a row is real
        (torch.tensor([[5, 6, 7]]), {"document_masking": True}, {"document_ids": torch.tensor([[0, 1, 2]])}),
    ],
)
def test_nothing_to_predict_is_an_error(x, options, extras):
    # README: a batch with nothing to predict is an error, not a silent all-ignored batch (as MaskedLM)
    with pytest.raises(ValueError, match=rf"input_ids of shape \({x.shape[0]}, {x.shape[1]}\) has nothing to predict"):
        get_objective("clm", vocab=V, **options)(x, **extras)


def test_batch_does_not_alias_caller_tensors():
    x = torch.tensor([[7, 8, 2, 9, 2, 2]])
    mask = torch.tensor([[T, T, T, T, T, F_]])
    docs = torch.tensor([[0, 0, 0, 1, 1, 2]])
    b = get_objective("clm", vocab=V, document_masking=True)(x, attention_mask=mask, document_ids=docs)
    b.attention_mask[0, 0] = False
    b.document_ids[0, 0] = 5
    assert mask[0, 0].item() is True and docs[0, 0].item() == 0


def test_int_and_uint8_inputs():
    b = get_objective("clm", vocab=V)(
        torch.tensor([[7, 8, 9, 9]], dtype=torch.int32), attention_mask=torch.tensor([[1, 1, 1, 0]], dtype=torch.uint8)
    )
    assert b.input_ids.dtype == torch.long and b.attention_mask.dtype == torch.bool
    assert b.labels.tolist() == [[8, 9, -100, -100]]
