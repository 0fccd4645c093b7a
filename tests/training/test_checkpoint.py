"""Checkpoints are safetensors files that restore model and AdamW state exactly."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lmobjectives import Batch
from lmobjectives.losses import lm_loss
from lmobjectives.models import Transformer, TransformerConfig
from lmobjectives.training import checkpoint as checkpoint_module
from lmobjectives.training.checkpoint import CheckpointError, checkpoint_steps, load_checkpoint, save_checkpoint


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
        "model-0000001.safetensors",
        "optimizer-0000001.safetensors",
        "state-0000001.json",
    ]
    with safe_open(str(tmp_path / "model-0000001.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())
        assert "output_weight" not in f.keys()  # the tied head is the embedding, stored once
        assert f.metadata() == {"format": "pt"}  # one entry: safetensors writes several in a varying order
    with safe_open(str(tmp_path / "optimizer-0000001.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert {"tok_emb.weight.exp_avg", "tok_emb.weight.exp_avg_sq", "tok_emb.weight.step"} <= keys
    state = json.loads((tmp_path / "state-0000001.json").read_text())
    assert state["step"] == 1
    for name in ("model-0000001.safetensors", "optimizer-0000001.safetensors"):
        data = (tmp_path / name).read_bytes()
        assert state["files"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_the_newest_checkpoints_are_kept(tmp_path):
    model, opt = _model_and_optimizer(0)
    for step in range(1, 5):
        _step(model, opt, step)
        save_checkpoint(tmp_path, model, opt, {"step": step}, keep=2)
    assert checkpoint_steps(tmp_path) == [4, 3]
    assert len(list(tmp_path.iterdir())) == 6  # two complete checkpoints, nothing else
    with pytest.raises(ValueError, match="keep must be a positive int, got 0"):
        save_checkpoint(tmp_path, model, opt, {"step": 5}, keep=0)


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
        "model-0000001.safetensors",
        "model-0000002.safetensors",
        "optimizer-0000001.safetensors",
        "optimizer-0000002.safetensors",
        "state-0000001.json",
        "state-0000002.json",
    ]


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(path):  # same size, other content
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: _truncate(d / "model-0000002.safetensors"), "model-0000002.safetensors has"),
        (lambda d: (d / "optimizer-0000002.safetensors").write_bytes(b""), "optimizer-0000002.safetensors has 0 bytes"),
        (lambda d: (d / "model-0000002.safetensors").unlink(), "model-0000002.safetensors is missing"),
        (lambda d: _flip_a_byte(d / "optimizer-0000002.safetensors"), "does not match its checksum"),
        (lambda d: _truncate(d / "state-0000002.json"), "state-0000002.json cannot be read"),
        (lambda d: (d / "state-0000002.json").write_text("{}"), "it does not describe step 2"),
    ],
)
def test_a_damaged_newest_checkpoint_is_reported_and_the_previous_one_loaded(tmp_path, damage, expected):
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 0)
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, opt, 1)
    save_checkpoint(tmp_path, model, opt, {"step": 2})
    damage(tmp_path)
    lines: list[str] = []
    other, other_opt = _model_and_optimizer(1)
    assert load_checkpoint(tmp_path, other, other_opt, report=lines.append) == {"step": 1}
    assert all(torch.equal(other.state_dict()[k], v) for k, v in saved.items())
    assert len(lines) == 1 and lines[0].startswith(
        f"using the checkpoint of step 1, the newest intact one in {tmp_path}"
    )
    assert "skipped the damaged step 2: " in lines[0] and expected in lines[0]
    _truncate(tmp_path / "model-0000001.safetensors")  # now nothing is intact
    with pytest.raises(CheckpointError, match="no intact checkpoint .*step 2: .*; step 1: model-0000001"):
        load_checkpoint(tmp_path, other, other_opt)


def test_a_full_disk_keeps_every_earlier_checkpoint_and_says_what_was_needed(tmp_path, monkeypatch):
    model, opt = _model_and_optimizer(0)
    _step(model, opt, 0)
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save_file = checkpoint_module.save_file

    def disk_full_on_the_optimizer(tensors, filename, metadata=None):
        if "optimizer" in filename:
            Path(filename).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        real_save_file(tensors, filename, metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", disk_full_on_the_optimizer)
    _step(model, opt, 1)
    with pytest.raises(
        CheckpointError,
        match=r"step 2 .*the disk is full; it needs about [\d.]+ MiB .* The checkpoint of step 1 is intact",
    ):
        save_checkpoint(tmp_path, model, opt, {"step": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing of step 2 is left behind


def test_no_checkpoint_is_a_clear_error(tmp_path):
    model, opt = _model_and_optimizer(0)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        load_checkpoint(tmp_path, model, opt)
