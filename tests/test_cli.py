"""``lmobj``: help, a tiny end-to-end run, Ctrl-C, and clear errors for bad arguments."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from lmobjectives import cli as cli_module
from lmobjectives.cli import EXIT_INTERRUPTED, build_parser, main

TINY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--d-ff", "64", "--seq-len", "32", "--batch-size", "4",
        "--warmup-steps", "1", "--no-progress"]  # fmt: skip


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmobjectives", *args], capture_output=True, text=True, timeout=timeout)


def test_help_describes_every_flag_with_its_default(capsys):
    top = run_cli("--help")
    assert top.returncode == 0 and "train" in top.stdout
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    for action in train_parser._actions:
        assert action.help, f"{action.option_strings} has no help"
        for flag in action.option_strings:
            assert flag in text
    for shown in ("(default: 1000)", "(default: clm)", "(default: builtin)", "(default: byte)", "(default: alibi)"):
        assert shown in text


def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--objective", "mlm", "--unit", "word", "--steps", "3", "--log-every", "1",
                 "--out", str(out), *TINY]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    for path in (out / "metrics.jsonl", out / "config.json", out / "tokenizer", out / "checkpoint"):
        assert path.exists() and str(path) in printed  # the summary says where everything is
    assert "done: 3 steps" in printed
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "model-0000003.safetensors", "optimizer-0000003.safetensors", "state-0000003.json"
    ]
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["objective"] == "mlm" and config["options"]["unit"] == "word" and config["n_layers"] == 1
    assert config["options"]["probability"] == 0.15  # every option is recorded, defaults included
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_stop_after_then_resume_via_the_console_entry_point(tmp_path):
    out = str(tmp_path / "run")
    first = run_cli("train", "--steps", "4", "--stop-after", "2", "--log-every", "1", "--out", out, *TINY)
    assert first.returncode == 0, first.stderr
    assert "stopped at step 2 of 4" in first.stdout
    second = run_cli("train", "--steps", "4", "--log-every", "1", "--out", out, "--resume", *TINY)
    assert second.returncode == 0, second.stderr
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmobjectives", "train", "--steps", "100000", "--log-every", "1", "--out", str(out), *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "Ctrl-C" in stderr and "--resume" in stdout
    state = json.loads(max((out / "checkpoint").glob("state-*.json")).read_text())
    assert state["step"] >= 2
    assert json.loads(metrics.read_text().splitlines()[-1])["step"] <= state["step"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
        (["--steps", "ten"], "argument --steps: expected a positive integer, got 'ten'"),
        (["--objective", "gpt"], "argument --objective: invalid choice: 'gpt'"),
        (["--objective", "clm", "--unit", "word"], "unrecognized arguments: --unit word"),  # an mlm option
        (["--objective", "mlm", "--document-masking"], "unrecognized arguments: --document-masking"),
        (["--objective", "mlm", "--probability", "high"], "argument --probability: invalid float value: 'high'"),
        (["--objective", "mlm", "--unit", "word", "--max-predictions", "x"], "argument --max-predictions: invalid int value"),
        (["--d-model", "30"], "d_model=30 must be divisible by n_heads=4"),
        (["--lr", "0"], "lr must be a positive number"),
    ],
)
def test_bad_arguments_are_clear_errors(capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: lmobj train" in err and message in err


def test_errors_found_while_training_are_reported_without_a_traceback(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--steps", "1", "--out", out, *TINY]) == 0
    assert main(["train", "--steps", "1", "--out", out, *TINY]) == 2  # would overwrite the run
    assert "already holds a run with a checkpoint (step 1); pass --resume" in capsys.readouterr().err
    assert main(["train", "--steps", "1", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "b"), *TINY]) == 2
    assert "lmobj train: error:" in capsys.readouterr().err


def test_ctrl_c_outside_the_training_loop_exits_130_without_a_traceback(tmp_path, capsys, monkeypatch):
    def interrupted_while_loading(config):
        raise KeyboardInterrupt  # Ctrl-C while the corpus loads, or a second Ctrl-C while training

    monkeypatch.setattr(cli_module, "train", interrupted_while_loading)
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "run"), *TINY]) == EXIT_INTERRUPTED
    assert "lmobj train: interrupted" in capsys.readouterr().err
