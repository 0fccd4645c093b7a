"""ELECTRA: the masking (counts, 85 % [MASK] / 15 % kept, no random ids), the discriminator's labels, the loss
against a loop-by-loop version, and training through ``train()`` with the recipe registered in memory."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab
from lmobjectives.batch import Batch
from lmobjectives.models import MODELS, TransformerConfig
from lmobjectives.models.electra import ElectraModel
from lmobjectives.objectives.electra import ELECTRA, gumbel_max_sample, replace_masked
from lmobjectives.recipes import OBJECTIVES, ModelSpec, Recipe, options_of
from lmobjectives.recipes.step_losses import electra_loss
from lmobjectives.training import TrainConfig, load_model, train

V = Vocab(size=10, pad_id=0, cls_id=1, sep_id=2, mask_id=3)  # ordinary ids 4..9
VB = Vocab(size=40, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4, eos_id=5)  # ordinary ids 6..39
T_, F_ = True, False

# The registry entry proposed for objectives/__init__.py (registered here in memory only).
RECIPE = Recipe(
    ELECTRA,
    "ELECTRA (Clark et al. 2020): a small MLM generator fills masked tokens, the discriminator detects replaced ones",
    model=lambda o: ModelSpec(architecture="generator_discriminator", kwargs={"generator_size": o.generator_size}),
    loss=electra_loss,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi2_pvalue(observed, expected):
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    half = torch.tensor([(len(observed) - 1) / 2, stat / 2], dtype=torch.float64)
    return float(torch.special.gammaincc(half[0], half[1]))


def random_rows(B: int, T: int, seed: int, vocab: Vocab = VB) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids with [CLS] first, a [SEP], sprinkled [UNK], then padding to a random length per row."""
    g = gen(seed)
    ids = torch.randint(6, vocab.size, (B, T), generator=g)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    real = torch.arange(T)[None] < lens[:, None]
    ids = torch.where(torch.rand(B, T, generator=g) < 0.05, vocab.unk_id, ids)
    ids[:, 0] = vocab.cls_id
    ids[torch.arange(T)[None] == (lens - 1)[:, None]] = vocab.sep_id
    return torch.where(real, ids, vocab.pad_id), real


# ----------------------------------------------------------------------------- worked examples


def test_docstring_seeded_example():
    x = torch.tensor([[1, 4, 5, 6, 7, 8, 9, 2], [1, 7, 8, 9, 2, 0, 0, 0]])
    before = x.clone()
    b = ELECTRA(V, probability=0.5)(x, generator=gen(2))
    assert b.input_ids.tolist() == [[1, 3, 5, 6, 7, 8, 3, 2], [1, 3, 8, 3, 2, 0, 0, 0]]
    assert b.labels.tolist() == [[-100, 4, -100, 6, -100, -100, 9, -100], [-100, 7, -100, 9, -100, -100, -100, -100]]
    assert b.attention_mask.tolist() == [[T_] * 8, [T_] * 5 + [F_] * 3]
    assert b.causal is False and b.has_targets.tolist() == [True, True]
    assert torch.equal(x, before)  # the caller's tensor is untouched


def test_replace_masked_worked_example():
    batch = Batch(
        input_ids=torch.tensor([[1, 5, 6, 7, 3, 2]]),
        labels=torch.tensor([[-100, -100, 6, -100, 8, -100]]),
        attention_mask=torch.ones(1, 6, dtype=torch.bool),
        causal=False,
    )
    fake, replaced = replace_masked(batch, torch.tensor([6, 9]))
    assert fake.tolist() == [[1, 5, 6, 7, 9, 2]]
    assert replaced.tolist() == [[F_, F_, F_, F_, T_, F_]]  # position 2: sampled 6 == original 6 -> original


def test_replace_masked_wants_one_sample_per_masked_position():
    batch = ELECTRA(V, probability=0.5)(torch.tensor([[1, 4, 5, 6, 7, 2]]), generator=gen(0))
    with pytest.raises(ValueError, match="sampled must hold one token per masked position"):
        replace_masked(batch, torch.tensor([4]))


# ----------------------------------------------------------------------------- masking


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 4),
    T=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
    p=st.sampled_from([0.05, 0.15, 0.25, 0.5, 1.0]),
    cap=st.sampled_from([None, 1, 3, 19]),
)
def test_masking_is_electras(B, T, seed, p, cap):
    """Exactly max(1, min(N, round(n p))) masked tokens per row with a maskable token; each is [MASK] or its
    own token (never a random one); labels are the originals there; nothing else changes; specials never masked."""
    ids, real = random_rows(B, T, seed)
    maskable = real & ~VB.special_mask()[ids]
    if not maskable.any():
        with pytest.raises(ValueError, match="nothing to mask"):
            ELECTRA(VB, probability=p, max_predictions=cap)(ids, attention_mask=real, generator=gen(seed))
        return
    b = ELECTRA(VB, probability=p, max_predictions=cap)(ids, attention_mask=real, generator=gen(seed))
    masked = b.labels != IGNORE_INDEX
    for row in range(B):
        n = int(maskable[row].sum())
        k = max(1, min(cap or n, round(n * p))) if n else 0  # ELECTRA's num_to_predict, over maskable tokens
        assert int(masked[row].sum()) == k
    assert not (masked & ~maskable).any()
    assert torch.equal(b.labels[masked], ids[masked])
    assert torch.equal(b.input_ids[~masked], ids[~masked])
    assert ((b.input_ids[masked] == VB.mask_id) | (b.input_ids[masked] == ids[masked])).all()


def test_mask_share_and_positions_are_uniform():
    """85 % of the masked positions become [MASK] (binomial), and every position of a row is picked alike."""
    B, T = 4000, 20
    ids = torch.randint(6, VB.size, (B, T), generator=gen(1))
    b = ELECTRA(VB)(ids, generator=gen(2))  # n = 20 -> k = round(3.0) = 3 per row
    masked = b.labels != IGNORE_INDEX
    assert masked.sum(-1).eq(3).all()
    n, as_mask = int(masked.sum()), int((b.input_ids == VB.mask_id).sum())
    assert abs(as_mask - 0.85 * n) < 4 * math.sqrt(n * 0.85 * 0.15)
    per_position = masked.sum(0).tolist()
    assert chi2_pvalue(per_position, [n / T] * T) > 1e-3


def test_masking_is_seeded_and_dynamic():
    ids, real = random_rows(8, 30, 0)
    o = ELECTRA(VB)
    a, b = o(ids, attention_mask=real, generator=gen(5)), o(ids, attention_mask=real, generator=gen(5))
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    c = o(ids, attention_mask=real, generator=gen(6))
    assert not torch.equal(a.labels, c.labels)


# ----------------------------------------------------------------------------- sampling


def test_gumbel_max_samples_the_softmax():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = (probs.log() + 2.0).expand(20000, 4)  # a shift changes nothing
    counts = torch.bincount(gumbel_max_sample(logits, gen(0)), minlength=4).tolist()
    assert chi2_pvalue(counts, (probs * 20000).tolist()) > 1e-3
    assert torch.equal(gumbel_max_sample(logits, gen(3)), gumbel_max_sample(logits, gen(3)))


# ----------------------------------------------------------------------------- the loss


def tiny_model(vocab_size: int, dtype=torch.float64, generator_size: float = 0.25, **overrides) -> ElectraModel:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=vocab_size, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=64, n_token_types=0, **overrides
    )
    return ElectraModel(config, generator_size=generator_size).to(dtype)


def brute_force_loss(objective: ELECTRA, model: ElectraModel, batch: Batch, seed: int):
    """ELECTRA's loss one position at a time: full logits per masked position, the same uniforms (row-major
    masked positions x vocabulary, float32), labels by comparison, BCE by its formula."""
    W, bias = model.output_weight, model.generator.output_bias
    hidden = model.generator_hidden(batch)
    B, T = batch.input_ids.shape
    positions = [(i, t) for i in range(B) for t in range(T) if batch.labels[i, t] != IGNORE_INDEX]
    u = torch.rand((len(positions), W.shape[0]), generator=gen(seed), dtype=torch.float32).double()
    original, fake = batch.input_ids.clone(), batch.input_ids.clone()
    nll, hits = [], 0
    for k, (i, t) in enumerate(positions):
        logits = model.generator.head(hidden[i, t]) @ W.T + bias  # (V,)
        y = int(batch.labels[i, t])
        nll.append(-torch.log_softmax(logits, -1)[y])
        hits += int(logits.argmax()) == y
        original[i, t] = y
        fake[i, t] = int(torch.argmax(logits - torch.log(-torch.log(u[k]))))
    z = model.replaced_logits(model(replace(batch, input_ids=fake)).hidden)  # (B, T)
    bce, correct, n_real, n_rep, n_pred, tp = [], 0, 0, 0, 0, 0
    for i in range(B):
        for t in range(T):
            if not batch.attention_mask[i, t]:
                continue
            y = float(fake[i, t] != original[i, t])
            bce.append(-(y * F.logsigmoid(z[i, t]) + (1 - y) * F.logsigmoid(-z[i, t])))
            pred = float(z[i, t] > 0)
            correct += pred == y
            n_real, n_rep, n_pred, tp = n_real + 1, n_rep + y, n_pred + pred, tp + pred * y
    gen_loss, disc_loss = torch.stack(nll).mean(), torch.stack(bce).mean()
    return {
        "total": gen_loss + objective.discriminator_weight * disc_loss,
        "generator": (gen_loss, len(positions), hits),
        "discriminator": (disc_loss, n_real, correct),
        "replaced_fraction": n_rep / n_real,
        "discriminator_precision": tp / n_pred if n_pred else 0.0,
        "discriminator_recall": tp / n_rep if n_rep else 0.0,
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_matches_brute_force(seed):
    ids, real = random_rows(3, 24, seed)
    objective = ELECTRA(VB, probability=0.3, discriminator_weight=7.0)
    batch = objective(ids, attention_mask=real, generator=gen(seed))
    model = tiny_model(VB.size)
    with torch.no_grad():  # a generator far from uniform
        model.generator.output_bias.copy_(torch.randn(VB.size, generator=gen(9), dtype=torch.float64) * 3)
    ours = electra_loss(objective, model, batch, generator=gen(100 + seed))
    ref = brute_force_loss(objective, model, batch, seed=100 + seed)
    torch.testing.assert_close(ours.total, ref["total"], rtol=1e-9, atol=1e-9)
    assert ours.weights == {"discriminator": 7.0}  # the reported loss is the trained total
    for name in ("generator", "discriminator"):
        loss, count, correct = ref[name]
        torch.testing.assert_close(ours.terms[name].loss, loss, rtol=1e-9, atol=1e-9)
        assert (int(ours.terms[name].num_tokens), int(ours.terms[name].num_correct)) == (count, correct)
    for name in ("replaced_fraction", "discriminator_precision", "discriminator_recall"):
        assert float(ours.metrics[name]) == pytest.approx(ref[name], abs=1e-6)
    assert 0 < float(ours.metrics["replaced_fraction"])


def test_samples_equal_to_the_original_are_labelled_original():
    """A generator that always samples token 7 on rows of 7s replaces nothing; one that samples 8 replaces every
    masked position, the 15 % left unchanged for the generator included (ELECTRA unmasks, then scatters)."""
    ids = torch.full((4, 20), 7)
    ids[:, 0] = VB.cls_id
    objective = ELECTRA(VB, probability=0.5)
    batch = objective(ids, generator=gen(0))
    n_masked, n_real = int((batch.labels != IGNORE_INDEX).sum()), int(batch.attention_mask.sum())
    assert (batch.input_ids == 7).logical_and(batch.labels != IGNORE_INDEX).any()  # some masked tokens were kept
    model = tiny_model(VB.size)
    for token, replaced in ((7, 0), (8, n_masked)):
        with torch.no_grad():
            model.generator.output_bias.zero_()
            model.generator.output_bias[token] = 1e4
        out = electra_loss(objective, model, batch, generator=gen(1))
        assert float(out.metrics["replaced_fraction"]) == pytest.approx(replaced / n_real)


def test_no_gradient_through_the_sample():
    """The discriminator's loss reaches the shared embedding but none of the generator's own weights."""
    ids, real = random_rows(3, 24, 0)
    objective = ELECTRA(VB)
    model = tiny_model(VB.size, dtype=torch.float32)
    out = electra_loss(objective, model, objective(ids, attention_mask=real, generator=gen(0)), generator=gen(1))
    out.terms["discriminator"].loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.generator.parameters())
    assert model.output_weight.grad is not None and model.output_weight.grad.any()


def test_global_rng_by_default():
    """Without a generator the sample draws from torch's global RNG, which the trainer seeds per step."""
    ids, real = random_rows(3, 24, 0)
    objective = ELECTRA(VB)
    model = tiny_model(VB.size)
    batch = objective(ids, attention_mask=real, generator=gen(0))
    torch.manual_seed(123)
    a = electra_loss(objective, model, batch).total
    torch.manual_seed(123)
    b = electra_loss(objective, model, batch).total
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "options, error, match",
    [
        (
            {"generator_size": 2.0},
            ValueError,
            r"generator_size \(ELECTRA: 0.25 to 0.33\) must lie in \(0, 1\], got 2.0",
        ),
        ({"generator_size": 1.01}, ValueError, "generator_size"),
        ({"generator_size": 0.0}, ValueError, "generator_size"),
        ({"generator_size": -0.25}, ValueError, "generator_size"),
        ({"generator_size": float("nan")}, TypeError, "generator_size"),
        ({"generator_size": "small"}, TypeError, "generator_size"),
        ({"discriminator_weight": 0.0}, ValueError, r"discriminator_weight must be > 0.*got 0.0"),
        ({"discriminator_weight": -50}, ValueError, "discriminator_weight"),
        ({"discriminator_weight": float("inf")}, TypeError, "discriminator_weight"),
        ({"discriminator_weight": True}, TypeError, "discriminator_weight"),
        ({"probability": 0.0}, ValueError, "probability"),
        ({"probability": 1.5}, ValueError, "probability"),
        ({"max_predictions": 0}, ValueError, "max_predictions"),
    ],
)
def test_bad_options(options, error, match):
    with pytest.raises(error, match=match):
        ELECTRA(VB, **options)


def test_bad_vocab_and_input():
    with pytest.raises(ValueError, match="mask_id"):
        ELECTRA(Vocab(size=10, pad_id=0))
    with pytest.raises(TypeError, match="vocab"):
        ELECTRA(10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nothing to mask"):
        ELECTRA(VB)(torch.tensor([[VB.cls_id, VB.sep_id, 0]]))
    with pytest.raises(ValueError, match="outside"):
        ELECTRA(VB)(torch.tensor([[6, 7, 99]]))


def test_a_generator_larger_than_the_discriminator_is_refused_by_the_recipe():
    with pytest.raises(ValueError, match=r"objective 'electra'.*generator_size"):
        RECIPE.build(VB, {"generator_size": 1.5})


def test_options_are_documented():
    options = {o.name: o for o in options_of(RECIPE)}
    assert list(options) == ["probability", "max_predictions", "generator_size", "discriminator_weight"]
    assert all(o.help for o in options.values())
    assert (
        options["probability"].default,
        options["generator_size"].default,
        options["discriminator_weight"].default,
    ) == (0.15, 0.25, 50.0)


# ----------------------------------------------------------------------------- training


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "electra", RECIPE)
    monkeypatch.setitem(MODELS, "electra", ElectraModel)


TINY = dict(
    d_model=48,
    n_layers=1,
    n_heads=2,
    d_ff=96,
    seq_len=64,
    batch_size=8,
    warmup_steps=5,
    lr=3e-3,
    save_every=0,
    progress=False,
)


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_trains_through_train(tmp_path, registered):
    result = train(TrainConfig(objective="electra", out=str(tmp_path), steps=40, log_every=10, **TINY))
    metrics = rows(result.metrics_path)
    first, last = metrics[0], metrics[-1]
    for key in (
        "generator_loss",
        "generator_accuracy",
        "discriminator_loss",
        "discriminator_accuracy",
        "replaced_fraction",
        "discriminator_precision",
        "discriminator_recall",
    ):
        assert all(math.isfinite(r[key]) for r in metrics), key
    assert all(r["loss"] == pytest.approx(r["generator_loss"] + 50 * r["discriminator_loss"]) for r in metrics)
    assert last["loss"] < first["loss"] - 0.5
    assert last["generator_loss"] < first["generator_loss"] - 0.5
    assert last["discriminator_loss"] < first["discriminator_loss"]
    assert 0.05 < last["replaced_fraction"] < 0.15  # at most the 15 % masked; fewer as the generator learns
    model = load_model(tmp_path)  # the architecture and generator_size come back from config.json
    assert isinstance(model, ElectraModel) and model.generator.config.d_model == 12


def test_resume_reproduces_the_samples(tmp_path, registered):
    """The samples draw from the global RNG that the trainer seeds per step: a resumed run logs the same numbers."""
    base = dict(TINY, objective="electra", steps=6, log_every=1)
    whole = rows(train(TrainConfig(out=str(tmp_path / "a"), **base)).metrics_path)
    train(TrainConfig(out=str(tmp_path / "b"), stop_after=3, **base))
    resumed = rows(train(TrainConfig(out=str(tmp_path / "b"), resume=True, **base)).metrics_path)
    drop = ("tokens_per_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in whole
    ]


@pytest.mark.slow
def test_the_discriminator_beats_the_all_original_baseline(tmp_path, registered):
    """500 steps on text made of four words, generator_size=0.125: the discriminator's accuracy over the last 100
    steps beats always answering "original" (1 - replaced_fraction), with precision > 0.5 on "replaced", and its
    BCE beats the best constant guess (the entropy of the replaced fraction). Measured over seeds 0-5: accuracy
    0.893-0.907 against 0.889-0.892, BCE 0.22-0.31 against 0.34-0.35, precision 0.57-0.65, recall 0.12-0.38.
    With the default generator_size=0.25 the generator catches up sooner and one seed in four tied the baseline
    at 400 steps; on the built-in corpus (bytes) a model this small stays at the baseline for 1000 steps."""
    rng = random.Random(0)
    words = ["cat", "dog", "sun", "moon"]
    corpus = tmp_path / "words.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(25))}) + "\n" for _ in range(200))
    )
    config = TrainConfig(
        objective="electra",
        options={"generator_size": 0.125},
        data=str(corpus),
        out=str(tmp_path / "run"),
        steps=500,
        log_every=100,
        **{**TINY, "d_model": 64, "n_heads": 8, "d_ff": 128, "lr": 5e-3},
    )
    last = rows(train(config).metrics_path)[-1]
    p = last["replaced_fraction"]
    assert last["discriminator_accuracy"] > 1 - p, last
    assert last["discriminator_precision"] > 0.5 and last["discriminator_recall"] > 0.05, last
    assert last["discriminator_loss"] < -(p * math.log(p) + (1 - p) * math.log(1 - p)) - 0.03, last
