"""ELECTRA's model: a narrower generator of the same depth sharing the discriminator's token embedding, and the
discriminator's per-token replaced head."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from lmobjectives import IGNORE_INDEX, Batch
from lmobjectives.models import Transformer, TransformerConfig
from lmobjectives.models.electra import ElectraModel, generator_config

V = 50


def config(**overrides) -> TransformerConfig:
    base = dict(vocab_size=V, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_seq_len=32, n_token_types=0)
    return TransformerConfig(**{**base, **overrides})


def make_model(generator_size: float = 0.25, **overrides) -> ElectraModel:
    torch.manual_seed(0)
    return ElectraModel(config(**overrides), generator_size=generator_size).double().eval()


def make_batch(ids: torch.Tensor, mask: torch.Tensor | None = None, token_type_ids=None) -> Batch:
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
    return Batch(ids, torch.full_like(ids, IGNORE_INDEX), mask, False, token_type_ids=token_type_ids)


def random_ids(B: int = 2, T: int = 12) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "overrides, size, expected",
    [
        (dict(d_model=64, n_heads=4, d_ff=256), 0.25, (16, 2, 1, 64)),  # head size 16 -> 1 head
        (dict(d_model=256, n_heads=4, d_ff=1024), 0.25, (64, 2, 1, 256)),  # ELECTRA-Small: 256 -> 64, 1 head of 64
        (dict(d_model=768, n_heads=12, d_ff=3072), 1 / 3, (256, 2, 4, 1024)),  # ELECTRA-Base: 768 -> 256, 4 heads
        (dict(d_model=64, n_heads=8, d_ff=128), 0.5, (32, 2, 4, 64)),
        (dict(d_model=96, n_heads=8, d_ff=192), 0.25, (24, 2, 2, 48)),  # head size 12 -> 2 heads
        (dict(d_model=64, n_heads=4, d_ff=256), 1.0, (64, 2, 4, 256)),  # the discriminator's own sizes
    ],
)
def test_generator_config(overrides, size, expected):
    c = generator_config(config(**overrides), size)
    assert (c.d_model, c.n_layers, c.n_heads, c.d_ff) == expected
    assert c.d_model % c.n_heads == 0 and c.n_token_types == 0 and c.n_sentence_classes == 0


def test_generator_config_with_rope_keeps_an_even_head_size():
    c = generator_config(config(d_model=96, n_heads=4, positions="rope"), 0.25)  # width 24, head size 24 -> 1 head
    assert (c.d_model, c.n_heads) == (24, 1)
    c = generator_config(config(d_model=120, n_heads=20, positions="rope"), 0.5)  # width 60, head size 6 -> 10 heads
    assert (c.d_model // c.n_heads) % 2 == 0
    with pytest.raises(ValueError, match="odd generator width"):
        generator_config(config(d_model=100, n_heads=2, positions="rope"), 0.25)  # width 25


@pytest.mark.parametrize(
    "size, error",
    [
        (1.5, ValueError),
        (2, ValueError),
        (0.0, ValueError),
        (-1.0, ValueError),
        (float("nan"), TypeError),
        (True, TypeError),
        ("big", TypeError),
    ],
)
def test_a_generator_larger_than_the_discriminator_is_refused(size, error):
    with pytest.raises(error, match="generator_size"):
        ElectraModel(config(), generator_size=size)


def test_a_generator_too_narrow_to_exist_is_refused():
    with pytest.raises(ValueError, match=r"generator width of round\(64 \* 0.001\) = 0"):
        ElectraModel(config(), generator_size=0.001)


def test_shared_token_embedding_is_one_parameter():
    model = make_model()
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert embeddings == [model.discriminator.tok_emb]
    assert model.output_weight is model.discriminator.tok_emb.weight
    names = [n for n, p in model.named_parameters() if p is model.output_weight]
    assert names == ["discriminator.tok_emb.weight"]
    assert model.generator.embeddings_project.weight.shape == (16, 64)  # ELECTRA's embeddings_project: d -> d_gen
    assert model.generator.head_dense.weight.shape == (64, 16)  # ELECTRA's get_token_logits: d_gen -> d
    assert model.generator.output_bias.shape == (V,)
    assert make_model(generator_size=1.0).generator.embeddings_project is None  # same width: nothing to project


def test_the_generator_is_smaller_and_as_deep():
    model = make_model()
    gen = sum(p.numel() for p in model.generator.parameters())
    disc = sum(p.numel() for p in model.discriminator.parameters())
    assert gen < disc / 4
    assert len(model.generator.blocks) == len(model.discriminator.blocks) == 2
    assert model.num_parameters() == len(torch.cat([p.flatten() for p in model.parameters()]))


def test_both_losses_reach_the_shared_embedding():
    model = make_model()
    batch = make_batch(random_ids())
    model.generator.head(model.generator_hidden(batch)).sum().backward()
    from_generator = model.output_weight.grad.clone()
    model.zero_grad()
    model.replaced_logits(model(batch).hidden).sum().backward()
    assert from_generator.any() and model.output_weight.grad.any()


def test_forward_is_the_discriminator_and_the_head_is_electras():
    model = make_model()
    batch = make_batch(random_ids(), mask=torch.tensor([[True] * 12, [True] * 9 + [False] * 3]))
    plain = Transformer(config()).double().eval()
    plain.load_state_dict(model.discriminator.state_dict())
    hidden = model(batch).hidden
    torch.testing.assert_close(hidden, plain(batch).hidden)
    logits = model.replaced_logits(hidden)  # (B, T)
    assert logits.shape == (2, 12)
    dense, out = model.discriminator_dense, model.discriminator_out
    assert (dense.in_features, dense.out_features, out.in_features, out.out_features) == (64, 64, 64, 1)
    by_hand = (nn.functional.gelu(hidden @ dense.weight.T + dense.bias, approximate="tanh") @ out.weight.T + out.bias)[
        ..., 0
    ]
    torch.testing.assert_close(logits, by_hand)


def test_the_generator_is_bidirectional_and_respects_padding():
    model = make_model()
    ids = random_ids()
    changed = ids.clone()
    changed[:, 8] = (changed[:, 8] + 1) % V
    a, b = model.generator_hidden(make_batch(ids)), model.generator_hidden(make_batch(changed))
    assert not torch.allclose(a[:, :8], b[:, :8])  # earlier positions see a later token
    mask = torch.tensor([[True] * 8 + [False] * 4] * 2)
    a, b = model.generator_hidden(make_batch(ids, mask)), model.generator_hidden(make_batch(changed, mask))
    torch.testing.assert_close(a[:, :8], b[:, :8])  # ... but not a padding one


def test_token_types_are_shared_too():
    model = make_model(n_token_types=2)
    ids = random_ids()
    types = torch.zeros_like(ids)
    types[:, 6:] = 1
    a, b = model.generator_hidden(make_batch(ids)), model.generator_hidden(make_batch(ids, token_type_ids=types))
    assert not torch.allclose(a, b)
    assert not any("type_emb" in n for n, _ in model.generator.named_parameters())
    with pytest.raises(ValueError, match="n_token_types=0"):
        make_model().generator_hidden(make_batch(ids, token_type_ids=types))


def test_bad_batches():
    model = make_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model.generator_hidden(make_batch(torch.zeros(1, 40, dtype=torch.long)))
    batch = make_batch(random_ids())
    batch.decoder_input_ids = random_ids()
    with pytest.raises(ValueError, match="encoder-decoder"):
        model.generator_hidden(batch)


def test_state_dict_saves_as_safetensors(tmp_path):
    """The shared embedding is stored once, so safetensors (which refuses aliased tensors) saves and reloads it."""
    model = make_model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    other = ElectraModel(config(), generator_size=0.25).double()
    other.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    batch = make_batch(random_ids())
    torch.testing.assert_close(other.eval().generator_hidden(batch), model.generator_hidden(batch))
