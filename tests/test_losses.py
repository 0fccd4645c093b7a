import pytest
import torch
import torch.nn.functional as F

from lmobjectives import IGNORE_INDEX
from lmobjectives.losses import lm_loss, sentence_loss


def _data(seed=0, B=3, T=7, d=16, V=41):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(V, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (B, T), generator=g)
    y[torch.rand(B, T, generator=g) < 0.4] = IGNORE_INDEX
    return h, w, y


@pytest.mark.parametrize("gather", [True, False])
@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_matches_cross_entropy(gather, impl):
    h, w, y = _data()
    out = lm_loss(h, w, y, gather_targets=gather, impl=impl)
    logits = h @ w.T
    ref = F.cross_entropy(logits.reshape(-1, w.shape[0]), y.reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ref)
    assert out.num_tokens.item() == int((y != IGNORE_INDEX).sum())
    ok = (logits.argmax(-1) == y) & (y != IGNORE_INDEX)
    assert out.num_correct.item() == int(ok.sum())
    gh, gw = torch.autograd.grad(out.loss, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    torch.testing.assert_close(gh, rh)
    torch.testing.assert_close(gw, rw)


def test_label_smoothing_and_z_loss():
    h, w, y = _data(1)
    out = lm_loss(h, w, y, label_smoothing=0.1, z_loss=1e-3)
    logits = (h @ w.T).reshape(-1, w.shape[0])
    flat = y.reshape(-1)
    valid = flat != IGNORE_INDEX
    ce = F.cross_entropy(logits, flat, ignore_index=IGNORE_INDEX, label_smoothing=0.1)
    z = 1e-3 * torch.logsumexp(logits[valid], -1).square().mean()
    torch.testing.assert_close(out.loss, ce + z)


def test_sum_reduction_accumulates_exactly():
    # two micro-batches: sum / total count == mean over the concatenation
    h, w, y = _data(2, B=4)
    parts = [lm_loss(h[i : i + 2], w, y[i : i + 2], reduction="sum") for i in (0, 2)]
    acc = sum(p.loss for p in parts) / sum(p.num_tokens for p in parts)
    torch.testing.assert_close(acc, lm_loss(h, w, y).loss)


@pytest.mark.parametrize("gather", [True, False])
def test_all_ignored_gives_zero_and_zero_grads(gather):
    h, w, y = _data(3)
    y[:] = IGNORE_INDEX
    out = lm_loss(h, w, y, gather_targets=gather)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.num_tokens.item() == 0
    assert torch.all(h.grad == 0) and torch.all(w.grad == 0)
    assert out.accuracy.item() == 0.0


def test_bad_arguments():
    h, w, y = _data()
    with pytest.raises(ValueError, match="reduction"):
        lm_loss(h, w, y, reduction="none")
    with pytest.raises(ValueError, match="labels"):
        lm_loss(h, w, y[:, :-1])
    with pytest.raises(ValueError, match="label_smoothing"):
        lm_loss(h, w, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="target values"):
        lm_loss(h, w, torch.full_like(y, 41))


def test_sentence_loss():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 0, IGNORE_INDEX])
    out = sentence_loss(logits, labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits[:2], labels[:2]))
    assert (out.num_tokens.item(), out.num_correct.item()) == (2, 1)


def test_sentence_loss_dtypes():
    # float64 logits are not rounded to float32; int32 labels work; float labels are refused
    logits = torch.tensor([[1.0, 1.0 + 1e-12], [0.5, -0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    out = sentence_loss(logits, labels.int())
    assert out.loss.dtype == torch.float64
    assert out.loss.item() == F.cross_entropy(logits, labels).item()
    with pytest.raises(TypeError, match="labels must hold integer class ids, got dtype torch.float32"):
        sentence_loss(logits, labels.float())


@pytest.mark.parametrize("impl", ["chunked", "reference"])
def test_num_targets_gathers_without_counting(impl):
    """With the count of labelled positions given (counted on the host), the gather has a static
    size (no nonzero, so no host sync on CUDA) and the same result; a wrong count is refused."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 7, 5, generator=g, requires_grad=True)
    w = torch.randn(11, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 11, (2, 7), generator=g)
    y[0, ::2] = IGNORE_INDEX
    count = int((y != IGNORE_INDEX).sum())
    ref = lm_loss(h, w, y, impl=impl)
    got = lm_loss(h, w, y, impl=impl, num_targets=count)
    assert torch.equal(got.loss, ref.loss) and got.num_tokens.item() == count
    assert torch.equal(got.num_correct, ref.num_correct)
    assert torch.equal(*(torch.autograd.grad(o.loss, h)[0] for o in (got, ref)))
    none = torch.full_like(y, IGNORE_INDEX)
    assert lm_loss(h, w, none, num_targets=0).loss.item() == 0.0
    with pytest.raises(RuntimeError, match="num_targets"):
        lm_loss(h, w, y, impl=impl, num_targets=count - 1)
    with pytest.raises(ValueError, match="num_targets"):
        lm_loss(h, w, y, num_targets=y.numel() + 1)
