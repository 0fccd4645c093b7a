"""The encoder-decoder model: attention patterns, tied weights, learning, and an unchanged Transformer."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lmobjectives import IGNORE_INDEX, Batch
from lmobjectives.losses import lm_loss
from lmobjectives.models import MODELS, EncoderDecoder, Transformer, TransformerConfig
from lmobjectives.models.attention import AttentionImpl
from lmobjectives.models.transformer import apply_rope, rope_cos_sin

POSITIONS = ["alibi", "rope"]
V = 50
D = 32


@pytest.fixture(autouse=True)
def one_thread():
    """These matrices are tiny: intra-op threads only add synchronisation, which costs 10x on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(positions: str = "alibi", **overrides) -> TransformerConfig:
    options = dict(vocab_size=V, d_model=D, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, n_token_types=0)
    return TransformerConfig(positions=positions, **{**options, **overrides})


def make_model(positions: str = "alibi", **overrides) -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(make_config(positions, **overrides)).double().eval()


def make_batch(ids, dec, *, mask=None, dec_mask=None, labels=None, **fields) -> Batch:
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
    labels = torch.full_like(dec, IGNORE_INDEX) if labels is None else labels
    return Batch(ids, labels, mask, False, decoder_input_ids=dec, decoder_attention_mask=dec_mask, **fields)


def random_ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def test_registered_and_output_shapes():
    assert MODELS["encoder_decoder"] is EncoderDecoder
    for positions in POSITIONS:
        model = make_model(positions)
        out = model(make_batch(random_ids(3, 11), random_ids(3, 5, seed=2)))
        assert out.hidden.shape == (3, 5, D)  # decoder positions, aligned with labels (B, Td)
        assert out.sentence_logits is None
        assert torch.isfinite(out.hidden).all()


@pytest.mark.parametrize("positions", POSITIONS)
def test_decoder_is_causal_and_reads_the_whole_encoder(positions):
    model = make_model(positions)
    ids, dec = random_ids(2, 9), random_ids(2, 7, seed=2)
    base = model(make_batch(ids, dec)).hidden
    for t in range(6):  # change decoder inputs t+1.. : outputs at <= t are unchanged, later ones change
        changed = dec.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % V
        out = model(make_batch(ids, changed)).hidden
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-12, rtol=0)
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % V  # the last encoder token reaches every decoder position
    out = model(make_batch(changed, dec)).hidden
    assert ((out - base).abs().amax(-1) > 1e-9).all()


@pytest.mark.parametrize("positions", POSITIONS)
def test_encoder_padding_is_invisible(positions):
    model = make_model(positions)
    ids, dec = random_ids(1, 10), random_ids(1, 6, seed=2)
    mask = torch.tensor([[True] * 7 + [False] * 3])
    other = ids.clone()
    other[0, 7:] = torch.tensor([3, 4, 5])  # different padding tokens
    a = model(make_batch(ids, dec, mask=mask)).hidden
    b = model(make_batch(other, dec, mask=mask)).hidden
    unpadded = model(make_batch(ids[:, :7], dec)).hidden
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    torch.testing.assert_close(a, unpadded, atol=1e-10, rtol=0)


@pytest.mark.parametrize("positions", POSITIONS)
def test_decoder_padding_does_not_affect_real_positions(positions):
    model = make_model(positions)
    ids, dec = random_ids(1, 8), random_ids(1, 7, seed=2)
    trailing = torch.tensor([[True] * 4 + [False] * 3])
    other = dec.clone()
    other[0, 4:] = torch.tensor([3, 4, 5])
    a = model(make_batch(ids, dec, dec_mask=trailing)).hidden
    b = model(make_batch(ids, other, dec_mask=trailing)).hidden
    alone = model(make_batch(ids, dec[:, :4])).hidden
    torch.testing.assert_close(a[:, :4], b[:, :4], atol=1e-12, rtol=0)
    torch.testing.assert_close(a[:, :4], alone, atol=1e-10, rtol=0)
    assert torch.isfinite(a).all()  # padding queries see themselves: no NaN
    leading = torch.tensor([[False, False, True, True, True, True, True]])  # keys 0, 1 are masked for every query
    c = model(make_batch(ids, dec, dec_mask=leading)).hidden
    other = dec.clone()
    other[0, :2] = (other[0, :2] + 1) % V
    d = model(make_batch(ids, other, dec_mask=leading)).hidden
    torch.testing.assert_close(c[:, 2:], d[:, 2:], atol=1e-12, rtol=0)


@settings(max_examples=15, deadline=None)
@given(
    enc_lengths=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    dec_lengths=st.lists(st.integers(1, 6), min_size=3, max_size=3),
    positions=st.sampled_from(POSITIONS),
    seed=st.integers(0, 2**16),
)
def test_padded_batch_equals_each_row_alone(enc_lengths, dec_lengths, positions, seed):
    """Rows are independent and padding (encoder or decoder) never changes a real position."""
    model = make_model(positions)
    B, T, Td = len(enc_lengths), max(enc_lengths), max(dec_lengths[: len(enc_lengths)])
    ids, dec = random_ids(B, T, seed), random_ids(B, Td, seed + 1)
    mask = torch.arange(T)[None] < torch.tensor(enc_lengths)[:, None]  # (B, T)
    dec_mask = torch.arange(Td)[None] < torch.tensor(dec_lengths[:B])[:, None]  # (B, Td)
    batched = model(make_batch(ids, dec, mask=mask, dec_mask=dec_mask)).hidden  # (B, Td, d)
    for b in range(B):
        n, m = enc_lengths[b], dec_lengths[b]
        alone = model(make_batch(ids[b : b + 1, :n], dec[b : b + 1, :m])).hidden
        torch.testing.assert_close(batched[b : b + 1, :m], alone, atol=1e-10, rtol=0)


def reference_forward(model: EncoderDecoder, batch: Batch) -> torch.Tensor:
    """The model written out naively: explicit masks from their definitions, softmax attention, no SDPA."""
    cfg = model.config
    nh, hs = cfg.n_heads, cfg.d_model // cfg.n_heads

    def attend(attn, x, memory, allowed, pos_q, pos_k):  # x (B, Tq, d), memory (B, Tk, d), allowed (B, Tq, Tk)
        C = cfg.d_model
        W, bias = attn.qkv.weight, attn.qkv.bias
        q = (x @ W[:C].T + bias[:C]).unflatten(-1, (nh, hs)).transpose(1, 2)  # (B, nh, Tq, hs)
        k = (memory @ W[C : 2 * C].T + bias[C : 2 * C]).unflatten(-1, (nh, hs)).transpose(1, 2)
        v = (memory @ W[2 * C :].T + bias[2 * C :]).unflatten(-1, (nh, hs)).transpose(1, 2)
        scores_bias = torch.zeros(())
        if pos_q is not None and cfg.positions == "rope":
            q, k = apply_rope(q, *rope_cos_sin(pos_q, hs)), apply_rope(k, *rope_cos_sin(pos_k, hs))
        elif pos_q is not None:
            slopes = torch.tensor([2.0 ** (-8 * (h + 1) / nh) for h in range(nh)], dtype=x.dtype)
            scores_bias = -slopes[:, None, None] * (pos_q[0][:, None] - pos_k[0][None, :]).abs()  # (nh, Tq, Tk)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hs) + scores_bias  # (B, nh, Tq, Tk)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        y = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)  # (B, Tq, d)
        return attn.proj(y)

    B, T = batch.input_ids.shape
    Td = batch.decoder_input_ids.shape[1]
    enc_real, dec_real = batch.attention_mask, batch.decoder_attention_mask
    enc_allowed = torch.zeros(B, T, T, dtype=torch.bool)
    dec_allowed = torch.zeros(B, Td, Td, dtype=torch.bool)
    cross_allowed = torch.zeros(B, Td, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                enc_allowed[b, i, j] = bool(enc_real[b, j]) or i == j
        for i in range(Td):
            for j in range(Td):
                dec_allowed[b, i, j] = (j <= i and bool(dec_real[b, j])) or i == j
            for j in range(T):
                cross_allowed[b, i, j] = bool(enc_real[b, j])
    pos_e, pos_d = torch.arange(T)[None], torch.arange(Td)[None]
    x = model.tok_emb(batch.input_ids)
    for block in model.encoder:
        h = block.ln_1(x)
        x = x + attend(block.attn, h, h, enc_allowed, pos_e, pos_e)
        x = x + block.mlp(block.ln_2(x))
    memory = model.ln_enc(x)
    x = model.tok_emb(batch.decoder_input_ids)
    for block in model.decoder:
        h = block.ln_1(x)
        x = x + attend(block.attn, h, h, dec_allowed, pos_d, pos_d)
        x = x + attend(block.cross_attn, block.ln_cross(x), memory, cross_allowed, None, None)
        x = x + block.mlp(block.ln_2(x))
    return model.ln_f(x)


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("impl", [AttentionImpl(), AttentionImpl("dense"), AttentionImpl(chunk_rows=2)])
def test_matches_a_naive_reference(positions, impl):
    model = make_model(positions, n_heads=2)
    model.attention_impl = impl
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move every parameter off its init (norms at 1 and 0 would hide a swapped norm)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    ids, dec = random_ids(2, 6), random_ids(2, 5, seed=2)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    dec_mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    with torch.no_grad():
        for m, dm in ((mask, dec_mask), (torch.ones_like(mask), torch.ones_like(dec_mask))):  # masked and fast paths
            batch = make_batch(ids, dec, mask=m, dec_mask=dm)
            torch.testing.assert_close(model(batch).hidden, reference_forward(model, batch), atol=1e-10, rtol=0)


def test_one_embedding_is_encoder_and_decoder_input_and_lm_head():
    model = make_model()
    assert model.output_weight is model.tok_emb.weight
    assert model.output_weight.shape == (V, D)
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert embeddings == [model.tok_emb]  # no separate decoder embedding or LM head
    assert sum(k.endswith("emb.weight") for k in model.state_dict()) == 1  # stored once
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    ids, dec, labels = torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]]), torch.tensor([[6, 7]])
    lm_loss(model(make_batch(ids, dec, labels=labels)).hidden, model.output_weight, labels).loss.backward()
    row_has_grad = model.tok_emb.weight.grad.abs().sum(-1) > 0  # (V,)
    # encoder inputs 1-3, decoder inputs 4-5, and every row as a class of the LM head
    assert row_has_grad.all()
    model.zero_grad()
    hidden = model(make_batch(ids, dec)).hidden
    probe = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0), dtype=hidden.dtype)  # (B, Td, d)
    (hidden * probe).sum().backward()  # (a plain sum of a LayerNorm's output has no gradient)
    # without the LM head, only the rows read as inputs have a gradient: by the encoder and by the decoder
    assert (model.tok_emb.weight.grad.abs().sum(-1) > 0).nonzero().flatten().tolist() == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("positions", POSITIONS)
def test_default_loss_reaches_every_parameter(positions):
    model = make_model(positions).float().train()
    ids, dec = random_ids(2, 8), random_ids(2, 6, seed=2)
    labels = random_ids(2, 6, seed=3)
    labels[1, 4:] = IGNORE_INDEX
    mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    batch = make_batch(ids, dec, mask=mask, dec_mask=labels != IGNORE_INDEX, labels=labels)
    loss = lm_loss(model(batch).hidden, model.output_weight, batch.labels).loss
    assert abs(loss.item() - math.log(V)) < 0.1  # near uniform at init
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_keys_and_safetensors_round_trip(tmp_path):
    model = make_model("rope", n_layers=1)
    assert list(model.state_dict()) == [
        "tok_emb.weight",
        *[f"encoder.0.{k}" for k in ("ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias")],
        *[f"encoder.0.{k}" for k in ("attn.proj.weight", "attn.proj.bias", "ln_2.weight", "ln_2.bias")],
        *[f"encoder.0.mlp.{k}" for k in ("fc.weight", "fc.bias", "proj.weight", "proj.bias")],
        "ln_enc.weight",
        "ln_enc.bias",
        *[f"decoder.0.{k}" for k in ("ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias")],
        *[f"decoder.0.{k}" for k in ("attn.proj.weight", "attn.proj.bias", "ln_cross.weight", "ln_cross.bias")],
        *[f"decoder.0.cross_attn.{k}" for k in ("qkv.weight", "qkv.bias", "proj.weight", "proj.bias")],
        *[f"decoder.0.{k}" for k in ("ln_2.weight", "ln_2.bias")],
        *[f"decoder.0.mlp.{k}" for k in ("fc.weight", "fc.bias", "proj.weight", "proj.bias")],
        "ln_f.weight",
        "ln_f.bias",
    ]
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    torch.manual_seed(1)
    fresh = EncoderDecoder(make_config("rope", n_layers=1)).double().eval()
    batch = make_batch(random_ids(2, 5), random_ids(2, 4, seed=2))
    assert not torch.allclose(fresh(batch).hidden, model(batch).hidden)
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    assert torch.equal(fresh(batch).hidden, model(batch).hidden)


def test_init_scales_residual_projections_by_stack():
    torch.manual_seed(0)
    model = EncoderDecoder(TransformerConfig(vocab_size=1000, d_model=256, n_layers=6, d_ff=1024))
    assert abs(model.tok_emb.weight.std().item() - 0.02) < 0.002
    assert abs(model.decoder[0].cross_attn.qkv.weight.std().item() - 0.02) < 0.002
    assert abs(model.encoder[0].mlp.proj.weight.std().item() - 0.02 / math.sqrt(12)) < 0.0005  # 2 per block
    assert abs(model.decoder[0].cross_attn.proj.weight.std().item() - 0.02 / math.sqrt(18)) < 0.0005  # 3 per block
    assert model.decoder[0].cross_attn.qkv.bias.abs().sum() == 0


def test_learns_to_reverse_a_sequence():
    """Reverse 4 distinct tokens. Without the encoder the best loss is the mean of ln(15 - t), about 2.58."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=16, d_model=32, n_layers=1, d_ff=128, n_token_types=0, positions="rope")
    model = EncoderDecoder(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        src = torch.rand(32, 15, generator=generator).argsort(1)[:, :4] + 1  # (32, 4) distinct tokens in 1..15
        labels = src.flip(1)  # (32, 4)
        dec = torch.cat([torch.zeros(32, 1, dtype=torch.long), labels[:, :-1]], dim=1)  # start token 0, shifted right
        batch = Batch(src, labels, torch.ones_like(src, dtype=torch.bool), False, decoder_input_ids=dec)
        loss = lm_loss(model(batch).hidden, model.output_weight, batch.labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    no_encoder_floor = sum(math.log(15 - t) for t in range(4)) / 4
    assert losses[0] > 2.7  # ~ln(16) at init
    assert sum(losses[-10:]) / 10 < no_encoder_floor - 0.6, losses[-10:]


def test_errors_are_clear():
    model = make_model()
    ids = random_ids(2, 5)
    with pytest.raises(ValueError, match="decoder_input_ids is None"):
        model(Batch(ids, ids, torch.ones_like(ids, dtype=torch.bool), False))
    with pytest.raises(ValueError, match="encoder_decoder"):
        Transformer(make_config())(make_batch(ids, ids))
    with pytest.raises(ValueError, match="n_sentence_classes"):
        EncoderDecoder(make_config(n_sentence_classes=2))
    with pytest.raises(ValueError, match="encoder length 65"):
        model(make_batch(random_ids(1, 65), random_ids(1, 3)))
    with pytest.raises(ValueError, match="decoder length 65"):
        model(make_batch(random_ids(1, 3), random_ids(1, 65)))
    with pytest.raises(ValueError, match="3 rows"):
        model(make_batch(ids, random_ids(3, 4)))
    with pytest.raises(ValueError, match="decoder_attention_mask has shape"):
        model(make_batch(ids, random_ids(2, 4), dec_mask=torch.ones(2, 5, dtype=torch.bool)))
    with pytest.raises(ValueError, match="n_token_types=0"):
        model(make_batch(ids, ids, token_type_ids=torch.zeros_like(ids)))


# -----------------------------------------------------------------------------
# Transformer: refactored to share its blocks, it must compute exactly what it did before


def transformer_fingerprint(positions: str) -> tuple[float, float, float, float, float]:
    """A weighted sum of the seeded parameters in creation order, then of the output on a fixed batch."""
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=V,
        d_model=D,
        n_layers=2,
        n_heads=4,
        d_ff=64,
        max_seq_len=64,
        positions=positions,
        n_sentence_classes=2,
    )
    model = Transformer(config)
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])  # (P,)
    params = (flat * torch.linspace(-1.0, 1.0, flat.numel(), dtype=torch.float64)).sum().item()
    model = model.double().eval()
    ids = random_ids(2, 9)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    sums = []
    for causal in (True, False):
        out = model(Batch(ids, torch.full_like(ids, IGNORE_INDEX), mask, causal))
        weights = torch.linspace(-1.0, 1.0, out.hidden.numel(), dtype=torch.float64).view_as(out.hidden)
        sums += [(out.hidden * weights).sum().item(), out.sentence_logits.sum().item()]
    return (params, *sums)


# recorded with the Transformer of commit 82c6b51, before the encoder-decoder refactor
RECORDED = {
    "alibi": (5.034546102926969, -1.2065645755391365, 0.03734158918949079, -1.0532872710739034, 0.03728834258118955),
    "rope": (5.034546102926969, -1.151974578151485, 0.03734158918949079, -1.027726345406354, 0.03744704081904787),
}


@pytest.mark.parametrize("positions", POSITIONS)
def test_transformer_is_unchanged(positions):
    assert transformer_fingerprint(positions) == pytest.approx(RECORDED[positions], rel=1e-9, abs=1e-12)


def test_transformer_state_dict_keys_are_unchanged():
    model = Transformer(TransformerConfig(vocab_size=V, d_model=D, n_layers=2, n_sentence_classes=2))
    block = ["ln_1.weight", "ln_1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias"]
    block += ["ln_2.weight", "ln_2.bias", "mlp.fc.weight", "mlp.fc.bias", "mlp.proj.weight", "mlp.proj.bias"]
    assert list(model.state_dict()) == [
        "tok_emb.weight",
        "type_emb.weight",
        *[f"blocks.{i}.{k}" for i in range(2) for k in block],
        "ln_f.weight",
        "ln_f.bias",
        "pooler.weight",
        "pooler.bias",
        "sentence_head.weight",
        "sentence_head.bias",
    ]


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("causal", [True, False])
def test_transformer_honours_prefix_and_permutation_masks_without_padding(positions, causal):
    """The fast path (no padding) must not skip a prefix_mask or a perm_mask: it equals the masked path."""
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=V, d_model=D, n_layers=2, n_heads=4, d_ff=64, positions=positions)
    model = Transformer(config).double().eval()
    ids = random_ids(2, 6)
    ones = torch.ones_like(ids, dtype=torch.bool)
    prefix = torch.arange(6)[None].expand(2, 6) < torch.tensor([[3], [2]])  # (B, T)
    perm = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(0)) < 0.4  # (B, T, T)
    for extra in ({"prefix_mask": prefix}, {"perm_mask": perm}):
        labels = torch.full_like(ids, IGNORE_INDEX)
        fast = model(Batch(ids, labels, ones, causal, **extra)).hidden
        masked = model(Batch(ids, labels, ones, causal, document_ids=torch.zeros_like(ids), **extra)).hidden
        torch.testing.assert_close(fast, masked, atol=1e-10, rtol=0)
