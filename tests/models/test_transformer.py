"""The transformer runs as encoder or decoder from the batch's attention pattern."""

from __future__ import annotations

import math

import pytest
import torch

from lmobjectives import IGNORE_INDEX, Batch
from lmobjectives.losses import lm_loss
from lmobjectives.models import Transformer, TransformerConfig
from lmobjectives.models.transformer import alibi_slopes

POSITIONS = ["alibi", "rope"]
V = 50


def make_model(positions: str = "alibi", **overrides) -> Transformer:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, positions=positions, **overrides
    )
    return Transformer(config).double().eval()


def make_batch(
    ids: torch.Tensor, *, causal: bool, mask=None, document_ids=None, position_ids=None, token_type_ids=None
):
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
    labels = torch.full_like(ids, IGNORE_INDEX)
    return Batch(ids, labels, mask, causal, document_ids, position_ids, token_type_ids)


def random_ids(B: int = 2, T: int = 10) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("positions", POSITIONS)
def test_future_token_changes_past_only_in_encoder_mode(positions):
    model = make_model(positions)
    ids = random_ids()
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % V
    for causal in (True, False):
        a = model(make_batch(ids, causal=causal)).hidden
        b = model(make_batch(changed, causal=causal)).hidden
        past_equal = torch.allclose(a[:, :6], b[:, :6], atol=1e-12, rtol=0)
        assert past_equal == causal, f"causal={causal}: past hidden states {'changed' if causal else 'did not change'}"
        assert not torch.allclose(a[:, 6:], b[:, 6:])  # the changed position and later always see it


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("causal", [True, False])
def test_document_mask_blocks_cross_document_attention(positions, causal):
    model = make_model(positions)
    ids = random_ids(1, 8)
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    changed = ids.clone()
    changed[0, 1] = (changed[0, 1] + 1) % V  # in document 0
    a = model(make_batch(ids, causal=causal, document_ids=docs)).hidden
    b = model(make_batch(changed, causal=causal, document_ids=docs)).hidden
    torch.testing.assert_close(a[:, 3:], b[:, 3:], atol=1e-12, rtol=0)  # document 1 cannot see document 0
    assert not torch.allclose(a[:, :3], b[:, :3])


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("causal", [True, False])
def test_restarted_positions_make_a_packed_document_equal_to_it_alone(positions, causal):
    """With document masking and per-document positions, doc 1 in a pack == doc 1 run on its own."""
    model = make_model(positions)
    ids = random_ids(1, 8)
    docs = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    packed = model(make_batch(ids, causal=causal, document_ids=docs, position_ids=pos)).hidden
    alone = model(make_batch(ids[:, 3:], causal=causal)).hidden
    torch.testing.assert_close(packed[:, 3:], alone, atol=1e-10, rtol=0)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("causal", [True, False])
def test_padding_does_not_affect_real_positions(positions, causal):
    model = make_model(positions)
    ids = random_ids(1, 9)
    mask = torch.tensor([[True] * 6 + [False] * 3])
    other = ids.clone()
    other[0, 6:] = torch.tensor([3, 4, 5])  # different padding tokens
    a = model(make_batch(ids, causal=causal, mask=mask)).hidden
    b = model(make_batch(other, causal=causal, mask=mask)).hidden
    unpadded = model(make_batch(ids[:, :6], causal=causal)).hidden
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-12, rtol=0)
    torch.testing.assert_close(a[:, :6], unpadded, atol=1e-10, rtol=0)
    assert torch.isfinite(a).all()  # padding queries see themselves: no NaN


def test_rope_fast_path_equals_explicit_mask():
    model = make_model("rope")
    ids = random_ids()
    for causal in (True, False):
        fast = model(make_batch(ids, causal=causal)).hidden  # is_causal / no mask
        masked = model(make_batch(ids, causal=causal, document_ids=torch.zeros_like(ids))).hidden  # explicit mask
        torch.testing.assert_close(fast, masked, atol=1e-10, rtol=0)


def test_lm_head_is_tied_to_the_embedding():
    model = make_model()
    assert model.output_weight is model.tok_emb.weight
    assert model.output_weight.shape == (V, 32)
    ids = random_ids()
    batch = make_batch(ids, causal=True)
    batch.labels = ids.roll(-1, dims=1)
    out = model(batch)
    lm_loss(out.hidden, model.output_weight, batch.labels).loss.backward()
    assert model.tok_emb.weight.grad is not None and model.tok_emb.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in model.parameters()) == model.num_parameters()  # counted once


def test_initial_loss_is_near_uniform():
    model = make_model()
    ids = random_ids(4, 16)
    out = model(make_batch(ids, causal=True))
    loss = lm_loss(out.hidden, model.output_weight, ids.roll(-1, dims=1)).loss
    assert abs(loss.item() - math.log(V)) < 0.1


def test_sentence_head_shape_and_token_types():
    model = make_model(n_sentence_classes=2)
    ids = random_ids(3, 7)
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1]]).expand(3, 7)
    out = model(make_batch(ids, causal=False, token_type_ids=types))
    assert out.hidden.shape == (3, 7, 32)
    assert out.sentence_logits.shape == (3, 2)
    plain = model(make_batch(ids, causal=False)).hidden
    assert not torch.allclose(plain, out.hidden)  # token types are used
    assert make_model()(make_batch(ids, causal=False)).sentence_logits is None  # no head by default


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=1000, d_model=256, n_layers=8, d_ff=1024))
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].mlp.proj.weight.std().item() - 0.02 / 4) < 0.001
    assert abs(model.blocks[0].attn.proj.weight.std().item() - 0.02 / 4) < 0.001
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0


def test_alibi_slopes():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    six = alibi_slopes(6)  # 4 from the power of two below, then every other one of 8
    torch.testing.assert_close(six, torch.tensor([2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]))


def test_errors_are_clear():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="positions"):
        TransformerConfig(vocab_size=10, positions="learned")
    with pytest.raises(ValueError, match="vocab_size"):
        TransformerConfig(vocab_size=0)
    model = make_model(n_token_types=0)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(make_batch(torch.zeros(1, 65, dtype=torch.long), causal=True))
    with pytest.raises(ValueError, match="n_token_types=0"):
        model(
            make_batch(
                torch.zeros(1, 4, dtype=torch.long), causal=True, token_type_ids=torch.zeros(1, 4, dtype=torch.long)
            )
        )
