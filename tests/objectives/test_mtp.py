"""Multi-token prediction: labels (B, T, N), documents, the losses of both head designs, the memory-efficient
schedule's gradients, training through train(), bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import IGNORE_INDEX, Vocab, attention_mask_4d
from lmobjectives.models import MODELS, TransformerConfig
from lmobjectives.models.mtp import MultiTokenTransformer
from lmobjectives.objectives import CausalLM
from lmobjectives.objectives.mtp import MultiTokenPrediction, head_term_name
from lmobjectives.recipes import OBJECTIVES, ModelSpec, Recipe
from lmobjectives.recipes.step_losses import mtp_step_loss, parallel_heads_loss, sequential_modules_loss
from lmobjectives.training import TrainConfig, train

V = Vocab(size=10, pad_id=2, eos_id=2)
T, F_ = True, False
X = -100


def test_docstring_example():
    b = MultiTokenPrediction(V, n_future=2)(torch.tensor([[7, 8, 9, 2, 4, 2, 2]]))
    assert b.labels.shape == (1, 7, 2)
    assert b.labels[..., 0].tolist() == [[8, 9, 2, X, 2, X, X]]
    assert b.labels[..., 1].tolist() == [[9, 2, X, X, X, X, X]]
    assert b.attention_mask.tolist() == [[T, T, T, T, T, T, F_]]
    assert b.causal is True and b.document_ids is None and b.position_ids is None
    assert b.has_targets.tolist() == [True]


def test_docstring_example_with_document_masking():
    b = MultiTokenPrediction(V, n_future=2, document_masking=True)(torch.tensor([[7, 8, 9, 2, 4, 2, 2]]))
    assert b.labels[..., 0].tolist() == [[8, 9, 2, X, 2, X, X]]
    assert b.labels[..., 1].tolist() == [[9, 2, X, X, X, X, X]]
    assert b.document_ids.tolist() == [[0, 0, 0, 0, 1, 1, 2]]
    assert b.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 0]]
    m = attention_mask_4d(b)[0, 0]
    assert not m[4, 3] and m[5, 4] and not m[1, 2]  # doc 1 cannot see doc 0; causal


def test_three_heads_on_the_shortest_rows():
    vocab = Vocab(size=10)  # no pad, no EOS: the row is one document of real tokens
    b = MultiTokenPrediction(vocab, n_future=3)(torch.tensor([[5, 6, 7, 8]]))  # T = n_future + 1: one target for head 3
    assert b.labels[0].tolist() == [[6, 7, 8], [7, 8, X], [8, X, X], [X, X, X]]
    with pytest.raises(ValueError, match=r"n_future=6 needs rows of at least 7 tokens"):  # more heads than tokens
        MultiTokenPrediction(vocab, n_future=6)(torch.tensor([[5, 6, 7]]))


def test_explicit_document_ids_and_attention_mask_win():
    vocab = Vocab(size=10, eos_id=2)
    x = torch.tensor([[5, 6, 7, 8, 9, 9]])
    b = MultiTokenPrediction(vocab, n_future=2)(
        x, document_ids=torch.tensor([[0, 0, 1, 1, 1, 1]]), attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0]])
    )
    assert b.labels[0].tolist() == [[6, X], [X, X], [8, 9], [9, X], [X, X], [X, X]]
    assert b.document_ids is None  # labels respect documents; attention only with document_masking


def test_column_zero_is_causal_lm_with_document_masking():
    g = torch.Generator().manual_seed(0)
    vocab = Vocab(size=20, pad_id=0, eos_id=1)
    x = torch.randint(2, 20, (8, 30), generator=g)
    x[torch.rand(8, 30, generator=g) < 0.1] = 1
    x[3, 20:] = 0
    mtp = MultiTokenPrediction(vocab, n_future=4)(x)
    clm = CausalLM(vocab, document_masking=True)(x)
    assert torch.equal(mtp.labels[..., 0], clm.labels)
    assert torch.equal(mtp.attention_mask, clm.attention_mask) and torch.equal(mtp.has_targets, clm.has_targets)


def brute_force_labels(ids: list[list[int]], real: list[list[bool]], docs: list[list[int]], n: int) -> list:
    out = []
    for row, ok, doc in zip(ids, real, docs):
        lab = []
        for t in range(len(row)):
            per = []
            for k in range(n):
                j = t + 1 + k
                good = j < len(row) and all(ok[t : j + 1]) and doc[t] == doc[j]
                per.append(row[j] if good else X)
            lab.append(per)
        out.append(lab)
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),  # batch
    st.integers(1, 14),  # length
    st.integers(1, 5),  # n_future
    st.integers(0, 2**31 - 1),  # seed
    st.booleans(),  # document_masking
)
def test_labels_match_brute_force_and_never_cross_a_document(B, L, n, seed, document_masking):
    g = torch.Generator().manual_seed(seed)
    vocab = Vocab(size=12, pad_id=0, eos_id=1)
    x = torch.randint(1, 12, (B, L), generator=g)  # EOS (1) about every 11th token
    x[0, 0] = 5
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    real = torch.arange(L)[None] < lengths[:, None]  # (B, L), right padding
    try:
        b = MultiTokenPrediction(vocab, n_future=n, document_masking=document_masking)(x, attention_mask=real)
    except ValueError as e:
        assert "nothing to predict" in str(e) or (n >= L and f"n_future={n} needs rows of at least" in str(e))
        return
    docs = (x == 1).long().cumsum(-1) - (x == 1).long()
    assert b.labels.tolist() == brute_force_labels(x.tolist(), real.tolist(), docs.tolist(), n)
    # the properties, stated directly: every target is the real token 1+k ahead, in the same document
    bb, tt, kk = (b.labels != IGNORE_INDEX).nonzero(as_tuple=True)
    assert torch.equal(b.labels[bb, tt, kk], x[bb, tt + 1 + kk])
    assert torch.equal(docs[bb, tt], docs[bb, tt + 1 + kk]) and bool(real[bb, tt + 1 + kk].all())
    # a target for head k implies one for every nearer head
    valid = b.labels != IGNORE_INDEX
    assert bool((valid[..., 1:] <= valid[..., :-1]).all())


def test_does_not_edit_input():
    x = torch.tensor([[7, 8, 9, 2, 4, 2, 2]])
    m = torch.ones_like(x)
    before, mask_before = x.clone(), m.clone()
    b = MultiTokenPrediction(V, n_future=3, document_masking=True)(x, attention_mask=m)
    b.input_ids[0, 0] = 0
    b.attention_mask[0, 0] = False
    assert torch.equal(x, before) and torch.equal(m, mask_before)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2", None])
def test_n_future_must_be_a_positive_int(n):
    with pytest.raises(ValueError, match=r"n_future must be a positive int, got"):
        MultiTokenPrediction(V, n_future=n)


@pytest.mark.parametrize("w", [0, -0.1, float("nan"), float("inf"), True, "0.3"])
def test_mtp_weight_must_be_positive(w):
    with pytest.raises(ValueError, match=r"mtp_weight must be a finite number > 0, got"):
        MultiTokenPrediction(V, mtp_weight=w)


def test_other_bad_options_and_batches():
    with pytest.raises(ValueError, match=r"head_design must be one of 'parallel', 'sequential', got 'tree'"):
        MultiTokenPrediction(V, head_design="tree")
    with pytest.raises(TypeError, match=r"memory_efficient must be a bool, got 1"):
        MultiTokenPrediction(V, memory_efficient=1)
    with pytest.raises(ValueError, match=r"nothing to predict"):  # one real token per row
        MultiTokenPrediction(V)(
            torch.tensor([[7, 8, 9], [8, 9, 9]]), attention_mask=torch.tensor([[1, 0, 0], [1, 0, 0]])
        )
    with pytest.raises(ValueError, match=r"n_future=2 needs rows of at least 3 tokens"):
        MultiTokenPrediction(V)(torch.tensor([[7], [8]]))
    with pytest.raises(ValueError, match=r"nothing to predict"):  # every pair crosses a document
        MultiTokenPrediction(V)(torch.tensor([[2, 2, 2]]), attention_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"document_ids must have the shape of input_ids"):
        MultiTokenPrediction(V)(torch.tensor([[7, 8]]), document_ids=torch.tensor([[0, 0, 0]]))
    with pytest.raises(ValueError, match=r"eos_id"):
        MultiTokenPrediction(Vocab(size=10), document_masking=True)(torch.tensor([[7, 8]]))
    with pytest.raises(ValueError, match=r"input_ids holds id 10"):
        MultiTokenPrediction(V)(torch.tensor([[7, 10]]))


def test_the_losses_refuse_mismatched_models_and_labels():
    cfg = TransformerConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=16, n_token_types=0)
    b = MultiTokenPrediction(V, n_future=2)(torch.tensor([[7, 8, 9, 2]]))
    with pytest.raises(TypeError, match=r"needs a MultiTokenTransformer"):
        parallel_heads_loss(MODELS["transformer"](cfg), b)
    with pytest.raises(ValueError, match=r"batch.labels must be \(B, T, n_future=3\)"):
        parallel_heads_loss(MultiTokenTransformer(cfg, n_future=3), b)
    with pytest.raises(ValueError, match=r"sequential heads loss got a model with head_design='parallel'"):
        sequential_modules_loss(MultiTokenTransformer(cfg, n_future=2), b)


# ----------------------------------------------------------------------------- losses


def _model(heads: str, n: int, *, dtype=torch.float32, **cfg) -> MultiTokenTransformer:
    torch.manual_seed(0)
    config = dict(vocab_size=24, d_model=16, n_layers=2, n_heads=2, d_ff=32, n_token_types=0) | cfg
    return MultiTokenTransformer(TransformerConfig(**config), n_future=n, head_design=heads).to(dtype)


def _naive_shifted_ce(model: MultiTokenTransformer, ids: torch.Tensor) -> list[torch.Tensor]:
    """Textbook: run the model, logits of head k at positions :T-1-k against input_ids[:, 1+k:]."""
    from lmobjectives import Batch

    batch = Batch(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), causal=True)
    logits = model(batch).heads @ model.output_weight.T  # (B, T, N, V)
    T = ids.shape[1]
    return [
        F.cross_entropy(logits[:, : T - 1 - k, k].reshape(-1, logits.shape[-1]), ids[:, 1 + k :].reshape(-1))
        for k in range(model.n_future)
    ]


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_parallel_loss_is_the_sum_of_shifted_cross_entropies(memory_efficient):
    vocab = Vocab(size=24)  # no EOS, no padding: every row is one document
    ids = torch.randint(0, 24, (3, 11), generator=torch.Generator().manual_seed(1))
    model = _model("parallel", 3).eval()
    batch = MultiTokenPrediction(vocab, n_future=3)(ids)
    step = parallel_heads_loss(model, batch, memory_efficient=memory_efficient)
    naive = _naive_shifted_ce(model, ids)
    assert list(step.terms) == ["lm", "head2", "head3"]
    for k, ce in enumerate(naive):
        torch.testing.assert_close(step.terms[head_term_name(k)].loss, ce)
        assert int(step.terms[head_term_name(k)].num_tokens) == 3 * (10 - k)
    torch.testing.assert_close(step.total.detach(), sum(naive))


def test_sequential_loss_weights_the_extra_depths_by_lambda_over_d():
    vocab = Vocab(size=24)
    ids = torch.randint(0, 24, (3, 11), generator=torch.Generator().manual_seed(2))
    model = _model("sequential", 3).eval()
    step = sequential_modules_loss(model, MultiTokenPrediction(vocab, n_future=3)(ids), weight=0.3)
    main, d1, d2 = _naive_shifted_ce(model, ids)
    torch.testing.assert_close(step.total, main + 0.3 / 2 * (d1 + d2))
    torch.testing.assert_close(step.terms["head3"].loss, d2)
    torch.testing.assert_close(step.metrics["mtp_weighted_loss"], 0.3 / 2 * (d1 + d2))


def _gradients(model, batch, memory_efficient: bool) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # the same dropout draws in both schedules
    step = parallel_heads_loss(model, batch, memory_efficient=memory_efficient)
    step.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, {name: float(t.loss.detach()) for name, t in step.terms.items()} | {
        "total": float(step.total.detach())
    }


@pytest.mark.parametrize(
    "cfg, document_masking",
    [(dict(), False), (dict(positions="rope", dropout=0.1, n_layers=3), True), (dict(n_layers=1), True)],
)
def test_memory_efficient_schedule_gives_the_naive_gradients_float64(cfg, document_masking):
    vocab = Vocab(size=24, pad_id=0, eos_id=1)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(2, 24, (3, 13), generator=g)
    ids[0, 5] = ids[2, 8] = 1
    ids[1, 9:] = 0
    batch = MultiTokenPrediction(vocab, n_future=3, document_masking=document_masking)(ids)
    model = _model("parallel", 3, dtype=torch.float64, **cfg).train()
    naive, naive_losses = _gradients(model, batch, memory_efficient=False)
    efficient, efficient_losses = _gradients(model, batch, memory_efficient=True)
    assert set(naive) == set(efficient) == {n for n, _ in model.named_parameters()}
    for name in naive:
        torch.testing.assert_close(efficient[name], naive[name], rtol=1e-10, atol=1e-12, msg=name)
    assert efficient_losses == pytest.approx(naive_losses, rel=1e-12)


def test_memory_efficient_total_backpropagates_once_and_is_plain_without_grad():
    vocab = Vocab(size=24)
    batch = MultiTokenPrediction(vocab, n_future=2)(
        torch.randint(0, 24, (2, 6), generator=torch.Generator().manual_seed(4))
    )
    model = _model("parallel", 2)
    step = parallel_heads_loss(model, batch)
    step.total.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match=r"backpropagated once only"):
        step.total.backward()
    with torch.no_grad():
        evaluated = parallel_heads_loss(model, batch)
    assert not evaluated.total.requires_grad
    torch.testing.assert_close(evaluated.total, step.total.detach())


def test_recipe_loss_follows_the_options():
    vocab = Vocab(size=24)
    ids = torch.randint(0, 24, (2, 8), generator=torch.Generator().manual_seed(5))
    seq = MultiTokenPrediction(vocab, n_future=2, head_design="sequential", mtp_weight=0.5)
    step = mtp_step_loss(seq, _model("sequential", 2).eval(), seq(ids))
    torch.testing.assert_close(step.total, step.terms["lm"].loss + 0.5 * step.terms["head2"].loss)


# ----------------------------------------------------------------------------- training


def _recipe() -> Recipe:
    return Recipe(
        MultiTokenPrediction,
        "multi-token prediction",
        block_extras=lambda o: ("document_ids",) if o.document_masking else (),
        model=lambda o: ModelSpec(
            architecture="multi_token", kwargs={"n_future": o.n_future, "head_design": o.head_design}
        ),
        loss=mtp_step_loss,
    )


@pytest.mark.parametrize(
    "options", [{"n_future": 3}, {"n_future": 2, "head_design": "sequential", "document_masking": True}]
)
def test_trains_on_cpu_through_train(tmp_path, monkeypatch, options):
    monkeypatch.setitem(OBJECTIVES, "mtp", _recipe())
    monkeypatch.setitem(MODELS, "mtp", MultiTokenTransformer)
    config = TrainConfig(
        objective="mtp",
        options=options,
        out=str(tmp_path),
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_ff=64,
        seq_len=48,
        batch_size=8,
        steps=40,
        warmup_steps=4,
        lr=3e-3,
        log_every=10,
        save_every=0,
        progress=False,
    )
    result = train(config)
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    n = options["n_future"]
    names = ["lm"] + [f"head{k}" for k in range(2, n + 1)]
    accuracies = ["accuracy"] + [f"{name}_accuracy" for name in names[1:]]  # "lm": the trainer's next-token accuracy
    assert all(f"{name}_loss" in rows[-1] for name in names) and all(a in rows[-1] for a in accuracies)
    for name in names:  # every head learns
        assert math.isfinite(rows[-1][f"{name}_loss"]) and rows[-1][f"{name}_loss"] < rows[0][f"{name}_loss"] - 0.3
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert config_json["architecture"] == "multi_token" and config_json["model_kwargs"]["n_future"] == n


@pytest.mark.parametrize("n_future, T", [(3, 3), (6, 3), (200, 16), (2, 1)])
def test_n_future_must_be_below_the_row_length(n_future, T):
    # the far heads would have no position with a target: refused at call time, with the numbers
    obj = MultiTokenPrediction(Vocab(size=10), n_future=n_future)
    with pytest.raises(
        ValueError,
        match=rf"^MultiTokenPrediction: n_future={n_future} needs rows of at least "
        rf"{n_future + 1} tokens .*, got input_ids of shape \(1, {T}\)",
    ):
        obj(torch.arange(T)[None] % 10)
    assert obj(torch.arange(n_future + 1)[None] % 10).labels[0, 0, -1] == n_future % 10  # the farthest head's target
