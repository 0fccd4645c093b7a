"""Attention without a dense bias: the chunked pattern is attention_mask_4d's, and the outputs are the dense path's."""

from __future__ import annotations

import math

import pytest
import torch

from lmobjectives import IGNORE_INDEX, Batch, attention_mask_4d
from lmobjectives.models import ElectraModel, EncoderDecoder, MultiTokenTransformer, Transformer, TransformerConfig
from lmobjectives.models import attention as attention_module
from lmobjectives.models.attention import (
    AttentionImpl,
    alibi_bias,
    attend,
    attention_mask_rows,
    cross_attention_inputs,
    set_attention_impl,
)
from lmobjectives.models.transformer import alibi_slopes, apply_rope, self_attention_inputs

V, B, T, TD = 40, 3, 12, 9
POSITIONS = ["alibi", "rope"]
CHUNKS = [1, 4, 5, 12]  # rows per chunk: dividing T = 12, not dividing it, one chunk


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lengths_mask(lengths: list[int], n: int, *, left: bool = False) -> torch.Tensor:
    real = torch.arange(n)[None] < torch.tensor(lengths)[:, None]  # (B, n)
    return real.flip(-1) if left else real


def ids_of(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, n), generator=torch.Generator().manual_seed(seed))


def batch_of(causal: bool, **fields) -> Batch:
    ids = ids_of(T)
    fields.setdefault("attention_mask", torch.ones(B, T, dtype=torch.bool))
    return Batch(input_ids=ids, labels=torch.full_like(ids, IGNORE_INDEX), causal=causal, **fields)


def encoder_decoder_batch() -> Batch:
    enc_real = lengths_mask([12, 7, 0], T)  # row 2: no real encoder token (cross-attention sees every key)
    dec = ids_of(TD, seed=2)
    return batch_of(
        False, attention_mask=enc_real, decoder_input_ids=dec, decoder_attention_mask=lengths_mask([9, 4, 6], TD)
    )


DOCS = torch.tensor([[0] * 5 + [1] * 7, [0] * 3 + [1] * 3 + [2] * 6, [0] * 12])
RESTARTED = torch.tensor([[*range(5), *range(7)], [*range(3), *range(3), *range(6)], [*range(12)]])
PREFIX = lengths_mask([4, 1, 7], T)
INTERIOR = torch.ones(B, T, dtype=torch.bool)
INTERIOR[0, 3:5] = INTERIOR[1, 0] = INTERIOR[2, 7:] = False

SELF_PATTERNS = {  # name -> a batch; part "self"
    "causal": lambda: batch_of(True),
    "causal, right padding": lambda: batch_of(True, attention_mask=lengths_mask([12, 8, 3], T)),
    "causal, left padding": lambda: batch_of(True, attention_mask=lengths_mask([12, 8, 3], T, left=True)),
    "causal, interior padding": lambda: batch_of(True, attention_mask=INTERIOR),
    "causal, documents": lambda: batch_of(True, document_ids=DOCS, position_ids=RESTARTED),
    "causal, documents and padding": lambda: batch_of(
        True, document_ids=DOCS, attention_mask=lengths_mask([12, 10, 6], T)
    ),
    "prefix LM": lambda: batch_of(True, prefix_mask=PREFIX),
    "prefix LM, padding": lambda: batch_of(True, prefix_mask=PREFIX, attention_mask=lengths_mask([12, 8, 9], T)),
    "bidirectional": lambda: batch_of(False),
    "bidirectional, positions": lambda: batch_of(False, position_ids=RESTARTED),
    "bidirectional, padding": lambda: batch_of(False, attention_mask=lengths_mask([12, 8, 3], T)),
    "bidirectional, documents": lambda: batch_of(False, document_ids=DOCS),
    "permutation (XLNet)": lambda: batch_of(
        False, perm_mask=torch.rand(B, T, T, generator=torch.Generator().manual_seed(3)) < 0.5
    ),
}
PARTS = [(name, "self") for name in SELF_PATTERNS] + [("encoder-decoder", p) for p in ("self", "decoder", "cross")]


def pattern_batch(name: str) -> Batch:
    return encoder_decoder_batch() if name == "encoder-decoder" else SELF_PATTERNS[name]()


# -----------------------------------------------------------------------------
# the mask, a few rows at a time


@pytest.mark.parametrize("name, part", PARTS)
@pytest.mark.parametrize("rows", CHUNKS)
def test_mask_rows_concatenate_to_attention_mask_4d(name, part, rows):
    batch = pattern_batch(name)
    full = attention_mask_4d(batch, part)  # (B, 1, Tq, Tk)
    Tq, Tk = full.shape[-2:]
    chunks = [attention_mask_rows(batch, part, slice(s, s + rows)) for s in range(0, Tq, rows)]
    assert all(c.shape == (B, 1, min(rows, Tq - s), Tk) for c, s in zip(chunks, range(0, Tq, rows)))
    assert torch.equal(torch.cat(chunks, dim=2), full)
    keys = slice(2, Tk - 1)
    assert torch.equal(attention_mask_rows(batch, part, slice(1, 1 + rows), keys), full[:, :, 1 : 1 + rows, keys])


def test_mask_rows_refuses_what_attention_mask_4d_refuses():
    with pytest.raises(ValueError, match="needs an encoder-decoder batch"):
        attention_mask_rows(batch_of(True), "decoder", slice(0, 2))
    with pytest.raises(ValueError, match="part must be"):
        attention_mask_rows(encoder_decoder_batch(), "both", slice(0, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step 1"):
        attention_mask_rows(batch_of(True), "self", slice(0, 6, 2))


def test_alibi_bias_rows_are_the_full_bias_rows():
    slopes = alibi_slopes(4)
    full = -slopes[None, :, None, None] * (RESTARTED[:, :, None] - RESTARTED[:, None, :]).abs()[:, None].float()
    assert torch.equal(alibi_bias(RESTARTED, slopes), full)
    assert torch.equal(alibi_bias(RESTARTED, slopes, slice(5, 9), slice(3, 12)), full[:, :, 5:9, 3:12])


# -----------------------------------------------------------------------------
# one attention call against a float64 brute force from attention_mask_4d


def brute_force(q, k, v, allowed, bias):  # q (B, nh, Tq, hs), k, v (B, nh, Tk, hs), allowed (B, 1, Tq, Tk)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias  # (B, nh, Tq, Tk)
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize("name, part", PARTS)
@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize(
    "impl", [AttentionImpl("dense"), AttentionImpl(), *(AttentionImpl(chunk_rows=c) for c in CHUNKS)]
)
def test_attention_equals_a_float64_brute_force(name, part, positions, impl):
    config = TransformerConfig(vocab_size=V, d_model=32, n_heads=4, positions=positions)
    batch = pattern_batch(name)
    nh, hs = config.n_heads, config.d_model // config.n_heads
    slopes = alibi_slopes(nh).double() if positions == "alibi" else None
    if part == "cross":
        inputs = cross_attention_inputs(batch, impl)
    else:
        inputs = self_attention_inputs(batch, config, slopes, part, impl)
    Tq, Tk = attention_mask_4d(batch, part).shape[-2:]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, nh, n, hs, generator=g, dtype=torch.float64) for n in (Tq, Tk, Tk))
    bias = torch.zeros(())
    if part != "cross":  # cross-attention has no positions
        pos = (
            batch.position_ids if part == "self" and batch.position_ids is not None else torch.arange(Tq).expand(B, Tq)
        )
        if positions == "alibi":
            bias = (
                -slopes[None, :, None, None] * (pos[:, None, :, None] - pos[:, None, None, :]).abs()
            )  # (B, nh, Tq, Tk)
        else:
            q, k = apply_rope(q, *inputs.rope), apply_rope(k, *inputs.rope)
    expected = brute_force(q, k, v, attention_mask_4d(batch, part), bias)
    torch.testing.assert_close(attend(q, k, v, inputs), expected, atol=1e-12, rtol=1e-12)


def test_which_path_each_pattern_takes():
    rope = TransformerConfig(vocab_size=V, d_model=32, n_heads=4, positions="rope")
    alibi = TransformerConfig(vocab_size=V, d_model=32, n_heads=4)
    slopes = alibi_slopes(4)
    chunked = AttentionImpl(chunk_rows=5)
    plain_causal = self_attention_inputs(batch_of(True), rope, None, impl=chunked)
    assert plain_causal.is_causal and plain_causal.mask is None and plain_causal.rows is None  # SDPA's causal mask
    plain = self_attention_inputs(batch_of(False), rope, None, impl=chunked)
    assert not plain.is_causal and plain.mask is None and plain.rows is None  # no mask at all
    for config, s in ((rope, None), (alibi, slopes)):
        documents = self_attention_inputs(SELF_PATTERNS["causal, documents"](), config, s, impl=chunked)
        assert documents.mask is None and documents.rows is not None and documents.rows.chunk_rows == 5
        short = self_attention_inputs(SELF_PATTERNS["causal, documents"](), config, s)  # the default budget: one chunk
        assert short.rows is None and short.mask.shape[-2:] == (T, T)  # built once, shared by every layer
        xlnet = self_attention_inputs(SELF_PATTERNS["permutation (XLNet)"](), config, s, impl=chunked)
        assert xlnet.rows is None and xlnet.mask.shape[-2:] == (T, T)  # perm_mask is (B, T, T) itself: dense
    cross = cross_attention_inputs(encoder_decoder_batch(), AttentionImpl())
    assert cross.mask.shape == (B, 1, 1, T)  # keys only, broadcast over the decoder's queries
    assert cross_attention_inputs(encoder_decoder_batch(), AttentionImpl("dense")).mask.shape == (B, 1, TD, T)


def test_causal_chunks_read_keys_up_to_their_last_query_or_the_prefix_end():
    config = TransformerConfig(vocab_size=V, d_model=32, n_heads=4)
    impl = AttentionImpl(chunk_rows=4)
    causal = self_attention_inputs(
        batch_of(True, attention_mask=lengths_mask([12, 8, 3], T)), config, alibi_slopes(4), impl=impl
    )
    assert [causal.rows.key_stop(stop, T) for stop in (4, 8, 12)] == [4, 8, 12]
    prefix = self_attention_inputs(
        SELF_PATTERNS["prefix LM"](), config, alibi_slopes(4), impl=impl
    )  # longest prefix: 7
    assert [prefix.rows.key_stop(stop, T) for stop in (4, 8, 12)] == [7, 8, 12]
    bidirectional = self_attention_inputs(SELF_PATTERNS["bidirectional, padding"](), config, alibi_slopes(4), impl=impl)
    assert [bidirectional.rows.key_stop(stop, T) for stop in (4, 8, 12)] == [12, 12, 12]


def test_rows_per_chunk_follow_the_byte_budget():
    assert AttentionImpl(chunk_rows=7).rows_per_chunk(8, 4, 4096) == 7
    assert AttentionImpl().rows_per_chunk(8, 4, 4096) == 128  # 64 MiB / (8 * 4 * 4096 * 4 bytes)
    assert AttentionImpl(chunk_bytes=100 * 8 * 4 * 4096 * 4).rows_per_chunk(8, 4, 4096) == 64  # a multiple of 64
    assert AttentionImpl(chunk_bytes=10 * 8 * 4 * 4096 * 4).rows_per_chunk(8, 4, 4096) == 10
    assert AttentionImpl(chunk_bytes=1).rows_per_chunk(8, 4, 4096) == 1
    with pytest.raises(ValueError, match="AttentionImpl.name"):
        AttentionImpl("flash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_rows"):
        AttentionImpl(chunk_rows=0)


# -----------------------------------------------------------------------------
# whole models: chunked == dense, outputs and gradients


def models(positions: str):
    config = TransformerConfig(
        vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, positions=positions, n_token_types=0
    )
    torch.manual_seed(0)
    yield "transformer", Transformer(config)
    torch.manual_seed(0)
    yield "mtp sequential", MultiTokenTransformer(config, n_future=2, head_design="sequential")
    torch.manual_seed(0)
    yield "electra", ElectraModel(config, generator_size=0.5)
    torch.manual_seed(0)
    yield "encoder-decoder", EncoderDecoder(config)


def run(name: str, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    if name == "electra":
        return torch.cat([model(batch).hidden, model.generator_hidden(batch)], dim=-1)
    if name == "mtp sequential":
        return model(batch).heads.flatten(-2)
    return model(batch).hidden


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize(
    "pattern", ["causal, documents and padding", "prefix LM, padding", "bidirectional, padding", "causal, left padding"]
)
def test_models_chunked_equal_dense_with_gradients(positions, pattern):
    for name, model in models(positions):
        model = model.double()
        batch = encoder_decoder_batch() if name == "encoder-decoder" else SELF_PATTERNS[pattern]()
        results = []
        for impl in (AttentionImpl("dense"), AttentionImpl(chunk_rows=5), AttentionImpl(chunk_rows=4)):
            set_attention_impl(model, impl)
            model.zero_grad()
            out = run(name, model, batch)
            (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
            results.append(
                (out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            )
        (dense, dense_grads), *chunked = results
        for out, grads in chunked:
            torch.testing.assert_close(out, dense, atol=1e-12, rtol=1e-12, msg=name)
            assert grads.keys() == dense_grads.keys()
            for n in grads:
                torch.testing.assert_close(grads[n], dense_grads[n], atol=1e-11, rtol=1e-10, msg=f"{name}: {n}")


def test_chunked_never_builds_a_dense_mask(monkeypatch):
    """Forward and backward build no (·, T, T) mask: attention_mask_4d is never called, no mask has more rows than a chunk."""
    built = []
    rows_of = attention_module.attention_mask_rows

    def recording(batch, part="self", rows=slice(None), keys=slice(None)):
        mask = rows_of(batch, part, rows, keys)
        built.append(mask.shape[-2])
        return mask

    def refuse(*args, **kwargs):
        raise AssertionError("attention_mask_4d called on the chunked path")

    monkeypatch.setattr(attention_module, "attention_mask_rows", recording)
    monkeypatch.setattr(attention_module, "attention_mask_4d", refuse)
    for positions in POSITIONS:
        for name, model in models(positions):
            set_attention_impl(model, AttentionImpl(chunk_rows=4))
            batch = (
                encoder_decoder_batch()
                if name == "encoder-decoder"
                else SELF_PATTERNS["causal, documents and padding"]()
            )
            model.train()
            run(name, model, batch).sum().backward()
    assert built and max(built) <= 4


def test_dropout_runs_on_every_path():
    config = TransformerConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.5)
    torch.manual_seed(0)
    model = Transformer(config).train()
    batch = SELF_PATTERNS["causal, documents"]()
    for impl in (AttentionImpl("dense"), AttentionImpl(chunk_rows=5)):
        set_attention_impl(model, impl)
        out = model(batch).hidden
        out.sum().backward()
        assert torch.isfinite(out).all()
