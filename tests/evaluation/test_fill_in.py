"""Cached candidate scoring for causal models (fill_in's ``impl="cached"``) against the reference, which runs every
candidate's whole block: the same scores to float rounding, the same metrics, and a clear refusal where the cache
does not reproduce the model."""

from __future__ import annotations

import copy
import dataclasses
import importlib

import pytest
import torch

from lmobjectives.evaluation import fill_in, heldout_blocks
from lmobjectives.evaluation.fill_in import _stack_forward, cache_unsupported, candidate_scores
from lmobjectives.evaluation.result import plain_batch
from lmobjectives.models import MultiTokenTransformer, Transformer, TransformerConfig

from .conftest import make_run


@pytest.fixture(scope="module")
def causal_runs(runs, tmp_path_factory):
    """name -> a causal Run: ALiBi (the default), RoPE, and multi-token heads (next-token output scored)."""
    return {
        "alibi": runs("clm"),
        "rope": make_run(tmp_path_factory.mktemp("clm_rope"), "clm", positions="rope"),
        "mtp": make_run(tmp_path_factory.mktemp("mtp"), "mtp"),
    }


def double(run):
    """The run with a float64 copy of its model: the error-free reference the float32 paths are measured against."""
    return dataclasses.replace(run, model=copy.deepcopy(run.model).double())


def positions_and_candidates(run, k: int = 5, seed: int = 0):
    """Positions of two held-out blocks, the first (1) and the last (T - 1) among them, and ``k`` candidates each
    (the true token first, the rest drawn), as fill_in lays them out."""
    blocks = heldout_blocks(run, max_blocks=2)  # (N, T)
    T = blocks.shape[1]
    g = torch.Generator().manual_seed(seed)
    rows = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    first = torch.cat(
        [torch.tensor([1]), torch.randint(2, T - 1, (2,), generator=g).sort().values, torch.tensor([T - 1])]
    )
    cols = torch.cat([first, torch.randint(1, T, (3,), generator=g).sort().values])  # block 0: 4 positions, block 1: 3
    others = torch.randint(0, 256, (rows.numel(), k - 1), generator=g)
    cand = torch.cat([blocks[rows, cols][:, None], others], 1)  # (P, K)
    return blocks, rows, cols, cand


@pytest.mark.parametrize("positions", ["alibi", "rope"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stack_forward_after_kept_keys_is_the_model_forward(positions, dtype):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=20, d_model=16, n_heads=2, d_ff=32, positions=positions)).eval()
    model = model.to(dtype)
    ids = torch.randint(0, 20, (3, 11))
    ids[:, :4] = ids[0, :4]  # one left context, three continuations
    with torch.no_grad():
        full = model(plain_batch(ids, None, causal=True)).hidden  # (3, 11, d)
        whole, _ = _stack_forward(model, ids)
        _, past = _stack_forward(model, ids[:1, :4])  # keys and values of positions 0..3
        after, _ = _stack_forward(model, ids[:, 4:], past)  # positions 4..10
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole, full, **tol)
    torch.testing.assert_close(after, full[:, 4:], **tol)
    assert len(past) == model.config.n_layers and past[0][0].shape == (1, 2, 4, 8)


@pytest.mark.parametrize("name", ["alibi", "rope", "mtp"])
def test_cached_scores_are_the_reference_scores(causal_runs, name):
    run = causal_runs[name]
    assert cache_unsupported(run.model) is None
    blocks, rows, cols, cand = positions_and_candidates(run)
    cached = candidate_scores(run, blocks, rows, cols, cand, impl="cached")  # (P, K)
    reference = candidate_scores(run, blocks, rows, cols, cand, impl="reference", batch_size=3)
    exact = candidate_scores(double(run), blocks, rows, cols, cand, impl="reference").double()
    assert cached.dtype == reference.dtype == torch.float32 and cached.shape == cand.shape
    assert torch.equal(candidate_scores(run, blocks, rows, cols, cand), cached)  # "auto" is "cached" here
    # error budget: the cached scores err from float64 no more than the reference's float32 computation does
    budget = (reference.double() - exact).abs().max().item()
    assert (cached.double() - exact).abs().max().item() <= 2 * budget + 1e-5 * exact.abs().max().item()
    torch.testing.assert_close(cached, reference, rtol=1e-5, atol=1e-4)
    assert (cols == 1).any() and (cols == blocks.shape[1] - 1).any()  # the first position and the last (no suffix)


def test_cached_scores_do_not_depend_on_how_many_candidates_share_a_forward(causal_runs, monkeypatch):
    run = causal_runs["alibi"]
    blocks, rows, cols, cand = positions_and_candidates(run, k=9)
    whole = candidate_scores(run, blocks, rows, cols, cand, impl="cached")
    monkeypatch.setattr(importlib.import_module("lmobjectives.evaluation.fill_in"), "CANDIDATE_TOKENS", 40)
    torch.testing.assert_close(candidate_scores(run, blocks, rows, cols, cand, impl="cached"), whole)  # 1-9 a forward


@pytest.mark.parametrize("name", ["alibi", "rope"])
def test_fill_in_metrics_are_the_same_for_every_impl(causal_runs, name):
    run = causal_runs[name]
    every = int((~run.vocab.special_mask()).sum())  # candidates="all", as the demo preset asks
    results = {
        impl: fill_in(run, max_blocks=2, candidates=every, max_positions=6, impl=impl)
        for impl in ("auto", "cached", "reference")
    }
    ref = results["reference"]
    for impl in ("auto", "cached"):
        assert results[impl].metrics["loss"] == pytest.approx(ref.metrics["loss"], rel=1e-5)
        assert results[impl].metrics["accuracy"] == ref.metrics["accuracy"]
        assert results[impl].info == ref.info


def test_cache_refuses_a_model_it_does_not_reproduce(causal_runs):
    run = causal_runs["alibi"]

    class Other(Transformer):  # a forward of its own: the cache cannot know it
        pass

    other = Other(run.model.config)
    assert "not the plain causal transformer stack" in cache_unsupported(other)
    assert "training mode" in cache_unsupported(copy.deepcopy(run.model).train())
    assert cache_unsupported(MultiTokenTransformer(run.model.config).eval()) is None
    blocks, rows, cols, cand = positions_and_candidates(run, k=3)
    with pytest.raises(ValueError, match="impl='cached' does not apply to this model: Other"):
        candidate_scores(dataclasses.replace(run, model=other.eval()), blocks, rows, cols, cand, impl="cached")
    unsupported = dataclasses.replace(run, model=Other(run.model.config).eval())
    unsupported.model.load_state_dict(run.model.state_dict())
    assert torch.equal(
        candidate_scores(unsupported, blocks, rows, cols, cand),  # "auto" falls back to the reference
        candidate_scores(run, blocks, rows, cols, cand, impl="reference"),
    )
    with pytest.raises(ValueError, match="impl must be one of 'auto', 'cached', 'reference', got 'kv'"):
        fill_in(run, max_blocks=2, candidates=3, max_positions=2, impl="kv")
