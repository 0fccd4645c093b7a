"""Checkpoints are safetensors files that restore model and AdamW state exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from lmobjectives import Batch
from lmobjectives.losses import lm_loss
from lmobjectives.models import Transformer, TransformerConfig
from lmobjectives.training import checkpoint as checkpoint_module
from lmobjectives.training.checkpoint import load_checkpoint, save_checkpoint


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=30, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=8))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _step(model, optimizer, seed: int) -> float:
    ids = torch.randint(0, 30, (2, 8), generator=torch.Generator().manual_seed(seed))
    batch = Batch(ids, ids.roll(-1, 1), torch.ones_like(ids, dtype=torch.bool), True)
    loss = lm_loss(model(batch).hidden, model.output_weight, batch.labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def test_round_trip_restores_model_and_optimizer_exactly(tmp_path):
    model, opt = _model_and_optimizer(0)
    for s in range(3):
        _step(model, opt, s)
    save_checkpoint(tmp_path, model, opt, {"step": 3, "note": "x"})
    expected = [_step(model, opt, s) for s in range(3, 6)]

    other, other_opt = _model_and_optimizer(1)  # different init
    state = load_checkpoint(tmp_path, other, other_opt)
    assert state == {"step": 3, "note": "x"}
    assert [_step(other, other_opt, s) for s in range(3, 6)] == expected


def test_files_are_safetensors_with_named_optimizer_state(tmp_path):
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 0)
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model-0000001.safetensors", "optimizer-0000001.safetensors", "state.json"
    ]
    with safe_open(str(tmp_path / "model-0000001.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())
        assert "output_weight" not in f.keys()  # the tied head is the embedding, stored once
        assert f.metadata()["step"] == "1"
    with safe_open(str(tmp_path / "optimizer-0000001.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"tok_emb.weight.exp_avg", "tok_emb.weight.exp_avg_sq", "tok_emb.weight.step"} <= keys
    assert json.loads((tmp_path / "state.json").read_text()) == {"step": 1}


def test_a_crash_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 0)
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, opt, 1)

    real_save_file = checkpoint_module.save_file

    def crash_on_the_optimizer_file(tensors, filename, metadata=None):
        if "optimizer" in filename:  # the model file of step 2 is already in place
            real_save_file(dict(list(tensors.items())[:1]), filename, metadata)  # a partial temporary file
            raise KeyboardInterrupt
        real_save_file(tensors, filename, metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", crash_on_the_optimizer_file)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, opt, {"step": 2})
    monkeypatch.undo()

    other, other_opt = _model_and_optimizer(1)
    assert load_checkpoint(tmp_path, other, other_opt) == {"step": 1}  # the old checkpoint, whole
    assert all(torch.equal(other.state_dict()[k], v) for k, v in saved.items())
    save_checkpoint(tmp_path, model, opt, {"step": 2})  # the next save cleans up the leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model-0000002.safetensors", "optimizer-0000002.safetensors", "state.json"
    ]


def test_a_tampered_checkpoint_is_detected(tmp_path):
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 0)
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    (tmp_path / "state.json").write_text(json.dumps({"step": 2}))
    with pytest.raises(RuntimeError, match="says step 2 but .*model-0000002.safetensors is missing"):
        load_checkpoint(tmp_path, model, opt)
    (tmp_path / "model-0000001.safetensors").rename(tmp_path / "model-0000002.safetensors")
    (tmp_path / "optimizer-0000001.safetensors").rename(tmp_path / "optimizer-0000002.safetensors")
    with pytest.raises(RuntimeError, match="is from step 1 but .* says step 2"):
        load_checkpoint(tmp_path, model, opt)
