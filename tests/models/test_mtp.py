"""MultiTokenTransformer: the plain Transformer at n_future=1, the parallel heads' trunk and heads, DeepSeek-V3's
sequential modules (what each depth reads), documents, errors."""

from __future__ import annotations

import pytest
import torch

from lmobjectives import Batch, Vocab
from lmobjectives.models import Transformer, TransformerConfig
from lmobjectives.models.mtp import MTPOutput, MultiTokenTransformer
from lmobjectives.objectives.mtp import MultiTokenPrediction

CFG = dict(vocab_size=20, d_model=16, n_layers=2, n_heads=2, d_ff=32, n_token_types=0)


def _batch(ids: torch.Tensor) -> Batch:
    return Batch(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), causal=True)


def _ids(seed: int = 0, shape=(2, 9)) -> torch.Tensor:
    return torch.randint(3, 20, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("heads", ["parallel", "sequential"])
def test_one_future_token_is_the_plain_transformer(heads):
    config = TransformerConfig(**CFG)
    torch.manual_seed(0)
    plain = Transformer(config).eval()
    torch.manual_seed(0)
    mtp = MultiTokenTransformer(config, n_future=1, head_design=heads).eval()
    assert plain.state_dict().keys() == mtp.state_dict().keys()
    assert all(torch.equal(v, mtp.state_dict()[k]) for k, v in plain.state_dict().items())
    batch = _batch(_ids())
    out = mtp(batch)
    assert isinstance(out, MTPOutput) and out.sentence_logits is None and out.heads.shape == (2, 9, 1, 16)
    torch.testing.assert_close(out.hidden, plain(batch).hidden, rtol=0, atol=0)


def test_parallel_heads_share_the_trunk_norm_and_unembedding():
    config = TransformerConfig(**CFG)
    torch.manual_seed(0)
    base = Transformer(config)
    torch.manual_seed(0)
    model = MultiTokenTransformer(config, n_future=4)
    block = sum(p.numel() for p in base.blocks[0].parameters())
    assert model.num_parameters() == base.num_parameters() + 3 * block  # heads 2..4: one block each, nothing else
    assert model.head_block(0) is model.blocks[-1] and model.head_block(3) is model.extra_heads[2]
    batch = _batch(_ids())
    out = model(batch)
    trunk, attention = model.trunk(batch)
    for k in range(4):  # each head reads the trunk's output, not another head's
        torch.testing.assert_close(out.heads[:, :, k], model.head(k, trunk, attention))
    torch.testing.assert_close(out.hidden, out.heads[:, :, 0])
    with torch.no_grad():  # changing head 2 changes head 2 only
        model.extra_heads[0].mlp.proj.weight.add_(1.0)
    changed = model(batch).heads
    assert torch.equal(changed[:, :, [0, 2, 3]], out.heads[:, :, [0, 2, 3]].detach())
    assert not torch.allclose(changed[:, :, 1], out.heads[:, :, 1])


@pytest.mark.parametrize("heads", ["parallel", "sequential"])
def test_what_each_head_reads(heads):
    """Parallel: every head at position i sees tokens <= i. Sequential: depth k at i sees tokens <= i + k (the
    embedding of t_{i+k} is its input), and does read t_{i+k}."""
    torch.manual_seed(0)
    model = MultiTokenTransformer(TransformerConfig(**CFG), n_future=3, head_design=heads).eval()
    ids = _ids(shape=(1, 10))
    j = 6
    changed = ids.clone()
    changed[0, j] = 3 if ids[0, j] != 3 else 4
    a, b = model(_batch(ids)).heads, model(_batch(changed)).heads  # (1, T, 3, d)
    for k in range(3):
        reach = k if heads == "sequential" else 0  # how far ahead head k reads
        unchanged = j - reach  # positions < this never see token j
        torch.testing.assert_close(a[0, :unchanged, k], b[0, :unchanged, k], rtol=0, atol=0)
        assert not torch.allclose(a[0, unchanged, k], b[0, unchanged, k])


@pytest.mark.parametrize("heads", ["parallel", "sequential"])
@pytest.mark.parametrize("positions", ["alibi", "rope"])
def test_documents_stay_apart_in_every_head(heads, positions):
    torch.manual_seed(0)
    model = MultiTokenTransformer(TransformerConfig(**CFG, positions=positions), n_future=3, head_design=heads).eval()
    vocab = Vocab(size=20, eos_id=1)
    objective = MultiTokenPrediction(vocab, n_future=3, document_masking=True)
    ids = torch.tensor([[5, 6, 7, 8, 1, 9, 10, 11, 12, 13]])
    changed = ids.clone()
    changed[0, 2] = 14  # inside document 0
    a, b = model(objective(ids)).heads, model(objective(changed)).heads
    torch.testing.assert_close(a[0, 5:], b[0, 5:], rtol=0, atol=1e-6)  # document 1: every head unchanged
    assert not torch.allclose(a[0, 2], b[0, 2])


def test_errors():
    config = TransformerConfig(**CFG)
    for n in (0, -2, 1.0, True):
        with pytest.raises(ValueError, match=r"n_future must be a positive int, got"):
            MultiTokenTransformer(config, n_future=n)
    with pytest.raises(ValueError, match=r"head_design must be one of 'parallel', 'sequential', got 'both'"):
        MultiTokenTransformer(config, head_design="both")
    with pytest.raises(ValueError, match=r"n_sentence_classes must be 0, got 2"):
        MultiTokenTransformer(TransformerConfig(**CFG | {"n_sentence_classes": 2}))
    sequential = MultiTokenTransformer(config, head_design="sequential")
    with pytest.raises(ValueError, match=r"only the parallel heads have a separate trunk"):
        sequential.trunk(_batch(_ids()))
    with pytest.raises(ValueError, match=r"k must lie in \[0, 2\)"):
        MultiTokenTransformer(config, n_future=2).head_block(2)
    with pytest.raises(ValueError, match=r"exceeds TransformerConfig.max_seq_len"):
        MultiTokenTransformer(TransformerConfig(**CFG | {"max_seq_len": 4}))(_batch(_ids()))
