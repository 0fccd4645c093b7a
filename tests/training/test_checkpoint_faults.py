"""Faults around a run's checkpoints, as a user meets them: a real full disk, an edited or deleted state file, a loss
that is not finite, the CPU out of memory, saves that must be byte for byte the same, an older step evaluated."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from lmobjectives.cli import EXIT_FAILURE, main
from lmobjectives.evaluation import load_run
from lmobjectives.models import Transformer, TransformerConfig
from lmobjectives.training import TrainConfig, train
from lmobjectives.training import checkpoint as checkpoint_module
from lmobjectives.training import trainer as trainer_module
from lmobjectives.training.checkpoint import (
    CONTENT_KEY,
    CheckpointError,
    checkpoint_steps,
    load_checkpoint,
    save_checkpoint,
)

TINY = "--d-model 32 --layers 1 --heads 2 --d-ff 64 --seq-len 32 --batch-size 4 --warmup-steps 1 --no-progress".split()
TINY_CONFIG = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=32, batch_size=4, warmup_steps=1, progress=False)
WALL_CLOCK = ("elapsed_s", CONTENT_KEY)  # state entries that differ between equal runs (the checksum covers elapsed_s)


def _lmobj(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmobjectives", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert lines and "Traceback" not in stderr, stderr
    return lines[-1]


def _model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(vocab_size=30, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for p in model.parameters():  # one update, so that the optimizer has state
        p.grad = torch.ones_like(p)
    optimizer.step()
    return model, optimizer


def _two_checkpoints(directory: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model, optimizer = _model_and_optimizer()
    save_checkpoint(directory, model, optimizer, {"step": 1, "tokens": 10240})
    save_checkpoint(directory, model, optimizer, {"step": 2, "tokens": 20480})
    return model, optimizer


def _load(directory: Path) -> tuple[dict, list[str]]:
    lines: list[str] = []
    model, optimizer = _model_and_optimizer(1)
    return load_checkpoint(directory, model, optimizer, report=lines.append), lines


# ----------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB file system (tmpfs), mounted for the test: root can mount one, others cannot."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a 3 MiB tmpfs needs root on POSIX (with mount)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (an unprivileged container?): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.slow
def test_a_real_full_disk_keeps_the_earlier_checkpoint_and_says_what_was_needed(small_disk):
    """The model (0.7 MB) and optimizer (1.4 MB) files of step 2 fit in 3 MiB; step 4's optimizer file does not."""
    out = small_disk / "run"
    args = [
        "train",
        "--steps",
        "4",
        "--save-every",
        "2",
        "--out",
        str(out),
        *TINY,
        "--d-model",
        "96",
        "--d-ff",
        "192",
        "--layers",
        "2",
    ]
    done = _lmobj(*args)
    assert done.returncode == EXIT_FAILURE, done.stderr
    line = _one_line(done.stderr)
    assert (
        "could not save the checkpoint of step 4" in line and "the disk is full; it needs about 2.0 MiB and" in line
    ), line
    assert "MiB are free. The checkpoint of step 2 is intact." in line
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "model-0000002.safetensors",
        "optimizer-0000002.safetensors",
        "state-0000002.json",
    ]  # nothing of step 4
    resumed = _lmobj(*args, "--resume")  # the disk is still full: the same line, the same checkpoint
    assert resumed.returncode == EXIT_FAILURE and "resuming" in resumed.stdout and "skipped" not in resumed.stdout
    assert _one_line(resumed.stderr) == line


def test_safetensors_own_writer_failing_on_a_full_disk_is_the_disk_full_case(tmp_path, monkeypatch):
    """Only safetensors' save_file is replaced: it writes part of its file and raises the error it raises on a full
    disk (a SafetensorError, which is not an OSError)."""
    model, optimizer = _model_and_optimizer()
    save_checkpoint(tmp_path, model, optimizer, {"step": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_save_file = checkpoint_module.save_file

    def full_disk_in_the_optimizer_file(tensors, filename, metadata=None):
        if "optimizer" in filename:
            Path(filename).write_bytes(b"partial")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        real_save_file(tensors, filename, metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk_in_the_optimizer_file)
    with pytest.raises(
        CheckpointError,
        match=r"step 2 .*: the disk is full; it needs about [\d.]+ MiB and [\d,.]+ MiB are "
        r"free\. The checkpoint of step 1 is intact\.",
    ):
        save_checkpoint(tmp_path, model, optimizer, {"step": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # step 2's model file is gone too

    def not_a_write_error(tensors, filename, metadata=None):
        raise SafetensorError("Some tensors share memory")

    monkeypatch.setattr(checkpoint_module, "save_file", not_a_write_error)
    with pytest.raises(SafetensorError, match="share memory"):  # not reported as a disk problem
        save_checkpoint(tmp_path, model, optimizer, {"step": 2})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ----------------------------------------------------------------------------- the state file


def _edit(path: Path, change) -> None:
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state, indent=2) + "\n")


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda d: _edit(d / "state-0000002.json", lambda s: s.update(tokens=37945)),
            "state-0000002.json was changed after",
        ),
        (lambda d: (d / "state-0000002.json").unlink(), "state-0000002.json is missing"),
        (
            lambda d: _edit(d / "state-0000002.json", lambda s: s["files"]["model-0000002.safetensors"].pop("bytes")),
            "state-0000002.json was changed after it was written",
        ),
        (
            lambda d: _edit(
                d / "state-0000002.json", lambda s: s["files"]["model-0000002.safetensors"].update(bytes="9")
            ),
            "state-0000002.json was changed after it was written",
        ),
    ],
    ids=["edited-tokens", "deleted", "no-bytes", "string-bytes"],
)
def test_an_edited_or_deleted_state_file_is_skipped_in_one_line(tmp_path, damage, expected):
    _two_checkpoints(tmp_path)
    damage(tmp_path)
    state, lines = _load(tmp_path)
    assert state == {"step": 1, "tokens": 10240}
    assert len(lines) == 1, lines
    assert lines[0].startswith(
        f"using the checkpoint of step 1, the newest intact one in {tmp_path}; skipped the damaged step 2: "
    )
    assert expected in lines[0]


@pytest.mark.parametrize("record", [{"sha256": "0" * 64}, {"bytes": "9", "sha256": "0" * 64}, "a string"])
def test_a_state_file_without_its_own_checksum_is_still_checked_entry_by_entry(tmp_path, record):
    """A state file written before it held its own checksum: read, said so, and its file records checked (no
    format-string error on a missing or string "bytes")."""
    _two_checkpoints(tmp_path)
    for step in (1, 2):
        _edit(tmp_path / f"state-000000{step}.json", lambda s: s.pop(CONTENT_KEY))
    _edit(tmp_path / "state-0000002.json", lambda s: s["files"].update({"model-0000002.safetensors": record}))
    state, lines = _load(tmp_path)
    assert state == {"step": 1, "tokens": 10240} and len(lines) == 1
    assert (
        "skipped the damaged step 2: state-0000002.json records no size and checksum of model-0000002.safetensors"
        in lines[0]
    )
    assert (
        "state-0000001.json has no checksum of its own (an older version wrote it): its entries are not verified"
        in lines[0]
    )


def test_the_state_file_checksum_is_over_its_entries_and_an_intact_newest_is_silent(tmp_path):
    _two_checkpoints(tmp_path)
    text = (tmp_path / "state-0000002.json").read_text()
    state = json.loads(text)
    canonical = json.dumps({k: v for k, v in state.items() if k != CONTENT_KEY}, sort_keys=True, separators=(",", ":"))
    assert state[CONTENT_KEY] == hashlib.sha256(canonical.encode()).hexdigest()
    (tmp_path / "state-0000002.json").write_text(json.dumps(state))  # the same entries, another layout: still intact
    assert _load(tmp_path) == ({"step": 2, "tokens": 20480}, [])


def test_a_resumed_run_with_an_edited_state_file_resumes_from_the_step_before_and_records_the_truth(tmp_path, capsys):
    base = dict(TINY_CONFIG, objective="clm", steps=8, log_every=2, save_every=2)
    straight = train(TrainConfig(**base, out=str(tmp_path / "straight")))
    train(TrainConfig(**base, out=str(tmp_path / "run"), stop_after=6))
    state_6 = tmp_path / "run" / "checkpoint" / "state-0000006.json"
    _edit(state_6, lambda s: s.update(tokens=s["tokens"] + 17465, best_loss=0.001))
    capsys.readouterr()
    resumed = train(TrainConfig(**base, out=str(tmp_path / "run"), resume=True))
    out = capsys.readouterr().out
    assert (
        "using the checkpoint of step 4" in out and "skipped the damaged step 6: state-0000006.json was changed" in out
    )
    assert (resumed.tokens, resumed.best_loss) == (straight.tokens, straight.best_loss)


# ----------------------------------------------------------------------------- a loss that is not finite


def test_a_loss_that_is_not_finite_stops_the_run_and_keeps_the_last_checkpoint_before_it(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        ["train", "--steps", "30", "--lr", "1e9", "--save-every", "1", "--log-every", "5", "--out", str(out), *TINY]
    )
    assert code == EXIT_FAILURE
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("lmobj train: error: training stopped: the loss is not finite at step 2 (the lm loss is nan")
    assert "the checkpoint of step 1 is kept and nothing after it was saved: lower --lr (1e+09) in a new run" in line
    assert checkpoint_steps(out / "checkpoint") == [1]
    assert (out / "metrics.jsonl").read_text() == ""  # the window holding step 2 is never written


def test_weights_that_are_not_finite_after_a_finite_loss_are_never_saved(tmp_path):
    model, optimizer = _model_and_optimizer()
    with torch.no_grad():
        model.tok_emb.weight[3, 1] = float("inf")
    config = TrainConfig(**TINY_CONFIG, objective="clm", out=str(tmp_path / "run"))
    with pytest.raises(
        trainer_module.NonFiniteLossError,
        match=r"the weight tok_emb\.weight is not finite after the update of "
        r"step 7, whose loss was finite .*; no checkpoint was saved",
    ):
        trainer_module._stop_if_not_finite(trainer_module.Meter(), config, tmp_path / "none", 7, model, optimizer)
    with torch.no_grad():
        model.tok_emb.weight[3, 1] = 0.0
        optimizer.state[model.tok_emb.weight]["exp_avg_sq"][0, 0] = float("nan")
    with pytest.raises(
        trainer_module.NonFiniteLossError, match=r"the optimizer's tok_emb\.weight\.exp_avg_sq is not finite"
    ):
        trainer_module._stop_if_not_finite(trainer_module.Meter(), config, tmp_path / "none", 7, model, optimizer)
    optimizer.state[model.tok_emb.weight]["exp_avg_sq"][0, 0] = 0.0
    trainer_module._stop_if_not_finite(
        trainer_module.Meter(), config, tmp_path / "none", 7, model, optimizer
    )  # all finite


# ----------------------------------------------------------------------------- out of memory on the CPU


def _address_space(limit: int):
    def set_limit() -> None:  # in the child only: its allocations beyond `limit` bytes fail
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return set_limit


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS bounds the address space on Linux")
def test_the_cpu_allocator_running_out_of_memory_names_the_flags_that_set_the_memory(tmp_path):
    """A real allocation failure of torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory"), at once and
    touching no memory: the child may map 3 GiB, and its first feed-forward matrix (16,384 x 262,144) needs 16 GiB."""
    done = _lmobj(
        "train",
        "--steps",
        "1",
        "--d-model",
        "16384",
        "--d-ff",
        "262144",
        "--no-progress",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
        preexec_fn=_address_space(3 * 2**30),
        timeout=120,
    )
    assert done.returncode == EXIT_FAILURE, done.stderr
    line = _one_line(done.stderr)
    assert line.startswith("lmobj train: error: out of memory (RuntimeError)"), line
    assert "--batch-size (16)" in line and "--seq-len (128)" in line and "--d-model (16384)" in line


# ----------------------------------------------------------------------------- byte for byte


def test_two_saves_of_the_same_state_are_byte_identical(tmp_path):
    model, optimizer = _model_and_optimizer()
    state = {"step": 3, "tokens": 99, "window": {"sums": {"lm": [1.5, 2.0, 1.0]}, "weights": {}}, "best_loss": 0.25}
    files = []
    for i in range(10):  # safetensors' metadata order changes between maps: ten saves would not all agree
        save_checkpoint(tmp_path / str(i), model, optimizer, state)
        files.append({p.name: p.read_bytes() for p in (tmp_path / str(i)).iterdir()})
    assert all(f == files[0] for f in files)


def test_a_resumed_run_ends_with_the_uninterrupted_run_checkpoint_byte_for_byte(tmp_path):
    base = dict(TINY_CONFIG, objective="mlm", steps=8, log_every=2, save_every=3)
    straight = train(TrainConfig(**base, out=str(tmp_path / "straight")))
    train(TrainConfig(**base, out=str(tmp_path / "run"), stop_after=5))
    resumed = train(TrainConfig(**base, out=str(tmp_path / "run"), resume=True))
    for name in ("model-0000008.safetensors", "optimizer-0000008.safetensors"):
        assert (resumed.checkpoint_dir / name).read_bytes() == (straight.checkpoint_dir / name).read_bytes(), name

    def state(run) -> dict:
        entries = json.loads((run.checkpoint_dir / "state-0000008.json").read_text())
        entries["window"].pop("seconds")
        return {k: v for k, v in entries.items() if k not in WALL_CLOCK}

    assert state(resumed) == state(straight)


# ----------------------------------------------------------------------------- lmobj eval


@pytest.mark.slow
def test_eval_says_which_step_it_evaluates_when_the_newest_checkpoint_is_damaged(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**TINY_CONFIG, objective="clm", steps=6, log_every=2, save_every=2, out=str(out)))
    model_6 = out / "checkpoint" / "model-0000006.safetensors"
    model_6.write_bytes(model_6.read_bytes()[:1000])
    with pytest.warns(
        UserWarning,
        match=f"evaluating {out}: using the checkpoint of step 4, the newest intact one .*; skipped "
        f"the damaged step 6: model-0000006.safetensors has 1,000 bytes",
    ):
        assert load_run(out).step == 4
    done = _lmobj("eval", str(out), "--tasks", "next_token")
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if line.startswith("lmobj: warning: ")]
    assert (
        len(warned) == 1 and "using the checkpoint of step 4" in warned[0] and "skipped the damaged step 6" in warned[0]
    )
