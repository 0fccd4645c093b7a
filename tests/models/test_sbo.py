import pytest
import torch
import torch.nn.functional as F

from lmobjectives.models.sbo import SpanBoundaryHead, TransformerWithSBO
from lmobjectives.models.transformer import TransformerConfig


def test_head_is_the_papers_two_layer_ffn():
    torch.manual_seed(0)
    head = SpanBoundaryHead(d_model=8, vocab_size=20, max_pair_targets=5, position_size=3)
    hidden = torch.randn(2, 7, 8)
    rows, left, right, offset = torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([4, 6]), torch.tensor([0, 4])
    y = head(hidden, rows, left, right, offset)
    h0 = torch.cat([hidden[rows, left], hidden[rows, right], head.position.weight[offset]], -1)
    h1 = F.layer_norm(F.gelu(h0 @ head.fc1.weight.T + head.fc1.bias), (8,), head.ln1.weight, head.ln1.bias)
    want = F.layer_norm(F.gelu(h1 @ head.fc2.weight.T + head.fc2.bias), (8,), head.ln2.weight, head.ln2.bias)
    torch.testing.assert_close(y, want)
    assert y.shape == (2, 8) and head.bias.shape == (20,)
    assert head(hidden, *(torch.zeros(0, dtype=torch.long),) * 4).shape == (0, 8)


def test_head_errors():
    head = SpanBoundaryHead(d_model=8, vocab_size=20, max_pair_targets=5)
    hidden = torch.randn(1, 7, 8)
    one = torch.tensor([0])
    with pytest.raises(ValueError, match=r"offset must lie in \[0, max_pair_targets=5\), got 5..5"):
        head(hidden, one, one, torch.tensor([3]), torch.tensor([5]))
    with pytest.raises(ValueError, match=r"right positions must lie in \[0, 7\)"):
        head(hidden, one, one, torch.tensor([7]), one)
    with pytest.raises(ValueError, match="max_pair_targets must be a positive int, got 0"):
        SpanBoundaryHead(d_model=8, vocab_size=20, max_pair_targets=0)
    with pytest.raises(ValueError, match="position_size must be a positive int, got 0"):
        SpanBoundaryHead(d_model=8, vocab_size=20, position_size=0)


def test_model_carries_the_head_and_is_a_transformer():
    config = TransformerConfig(vocab_size=30, d_model=16, n_layers=1, n_heads=2, d_ff=32)
    model = TransformerWithSBO(config, max_pair_targets=7, position_size=4)
    assert model.sbo.max_pair_targets == 7 and model.sbo.position.weight.shape == (7, 4)
    assert model.sbo.fc1.in_features == 2 * 16 + 4
    assert float(model.sbo.fc1.weight.std()) == pytest.approx(0.02, rel=0.2)  # the transformer's init
