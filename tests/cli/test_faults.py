"""Nothing lost, nothing cryptic: `lmobj` under bad input, damaged files and interruptions (fault injection)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmobjectives import cli as cli_module
from lmobjectives.cli import EXIT_FAILURE, EXIT_USAGE, main
from lmobjectives.cli import train as train_command
from lmobjectives.training import TrainConfig, train

TINY = "--d-model 32 --layers 1 --heads 2 --d-ff 64 --seq-len 32 --batch-size 4 --warmup-steps 1 --no-progress".split()
TINY_CONFIG = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=32, batch_size=4, warmup_steps=1, progress=False)


def rows(path: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock rate (the one field a resumed run cannot reproduce)."""
    return [
        {k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in path.read_text().splitlines()
    ]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def test_a_folder_that_is_not_a_run_is_never_written_to(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "metrics.jsonl").write_text("my numbers\n")
    assert main(["train", "--steps", "1", "--out", str(mine), *TINY]) == EXIT_USAGE
    assert "holds files that are not an lmobj run" in one_line_error(capsys)
    assert (mine / "config.json").read_text() == '{"my": "settings"}' and (
        mine / "metrics.jsonl"
    ).read_text() == "my numbers\n"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["train", "--steps", "1", "--out", str(a_file), *TINY]) == EXIT_USAGE
    assert "is a file, not a folder" in one_line_error(capsys)


def test_the_default_out_gets_a_fresh_name_instead_of_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--objective", "mlm", "--steps", "1", *TINY]) == 0
    assert main(["train", "--objective", "mlm", "--steps", "1", *TINY]) == 0  # the README's second example
    assert (tmp_path / "runs" / "mlm" / "checkpoint").is_dir() and (tmp_path / "runs" / "mlm-2" / "checkpoint").is_dir()
    assert "runs/mlm-2/metrics.jsonl" in capsys.readouterr().out


def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "new"), "--resume", *TINY]) == 0
    assert "has no checkpoint yet: starting from step 0" in capsys.readouterr().out


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_and_loses_nothing(tmp_path, capsys):
    base = dict(TINY_CONFIG, objective="clm", steps=8, log_every=2, save_every=2)
    straight = train(TrainConfig(**base, out=str(tmp_path / "straight")))
    train(TrainConfig(**base, out=str(tmp_path / "run"), stop_after=6))
    checkpoint = tmp_path / "run" / "checkpoint"
    assert sorted(p.name for p in checkpoint.glob("state-*.json")) == ["state-0000004.json", "state-0000006.json"]
    (checkpoint / "model-0000006.safetensors").write_bytes(b"")  # e.g. the disk filled up behind our back
    capsys.readouterr()
    resumed = train(TrainConfig(**base, out=str(tmp_path / "run"), resume=True))
    out = capsys.readouterr().out
    assert "using the checkpoint of step 4, the newest intact one" in out  # one line: what was used, and why
    assert "skipped the damaged step 6: model-0000006.safetensors has 0 bytes" in out
    assert rows(resumed.metrics_path) == rows(straight.metrics_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_a_read_only_output_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["train", "--steps", "1", "--out", str(folder / "run"), *TINY]) == EXIT_FAILURE
        assert "Permission denied" in one_line_error(capsys)
    finally:
        folder.chmod(0o700)


def test_an_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    """As a read-only file system answers (also when the tests run as root, who may write anywhere)."""

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system", str(tmp_path / "run"))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "run"), *TINY]) == EXIT_FAILURE
    line = one_line_error(capsys)
    assert "Read-only file system" in line and str(tmp_path / "run") in line and "--debug" in line
    with pytest.raises(OSError, match="Read-only"):  # --debug: the traceback
        main(["--debug", "train", "--steps", "1", "--out", str(tmp_path / "run"), *TINY])


def test_out_of_memory_names_the_flags_that_set_the_memory(tmp_path, capsys, monkeypatch):
    def oom(config):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_command, "train", oom)
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "run"), *TINY]) == EXIT_FAILURE
    line = one_line_error(capsys)
    assert (
        "out of memory" in line and "--batch-size (4)" in line and "--seq-len (32)" in line and "--d-model (32)" in line
    )


def test_data_files_are_named_in_read_errors_and_can_be_skipped(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.txt").write_text("A first sentence here. And a second one.\n\nAnother document follows.\n")
    (data / "bad.txt").write_bytes(b"Fine line.\nThen \xd0 a broken byte.\n")
    (data / "broken.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    assert main(["train", "--steps", "1", "--data", str(data), "--out", str(tmp_path / "a"), *TINY]) == EXIT_USAGE
    line = one_line_error(capsys)
    assert f"{data / 'bad.txt'} is not UTF-8 text (byte 0xd0 at line 2, column 6)" in line
    (data / "broken.jsonl").unlink()
    argv = ["train", "--steps", "1", "--data", str(data), "--skip-bad-files", "--out", str(tmp_path / "b"), *TINY]
    with pytest.warns(UserWarning, match=f"skipping {data / 'bad.txt'}: .*not UTF-8"):
        assert main(argv) == 0
    (data / "broken.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n')
    assert main([*argv[: -len(TINY) - 2], "--out", str(tmp_path / "c"), *TINY]) == EXIT_USAGE
    assert f'{data / "broken.jsonl"}, line 2: expected an object with a string "text" field' in one_line_error(capsys)


def test_tokenizer_sizes_that_cannot_be_honoured_are_refused_and_shortfalls_said(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    assert (
        main(["train", "--steps", "1", "--tokenizer", "wordpiece:10", "--out", str(tmp_path / "a"), *TINY])
        == EXIT_USAGE
    )
    assert "wordpiece:10 cannot be honoured" in one_line_error(capsys)
    with pytest.warns(UserWarning, match="train_tokenizer: asked for bpe:99999, the corpus gives"):
        assert main(["train", "--steps", "1", "--tokenizer", "bpe:99999", "--out", str(tmp_path / "b"), *TINY]) == 0
    assert cli_module._one_line_warning("a problem", UserWarning, "x.py", 3) == "lmobj: warning: a problem\n"


def test_a_missing_tokenizers_package_is_one_line_with_advice_that_works(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if it were not installed
    assert (
        main(["train", "--steps", "1", "--tokenizer", "bpe:300", "--out", str(tmp_path / "a"), *TINY]) == EXIT_FAILURE
    )
    line = one_line_error(capsys)
    assert "pip install tokenizers" in line and 'pip install -e ".[hf]"' in line and "lmobjectives[hf]" not in line


def test_version_and_summary(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("lmobj (lmobjectives) ")
    assert (
        main(
            [
                "train",
                "--objective",
                "sop",
                "--steps",
                "2",
                "--seq-len",
                "48",
                "--out",
                str(tmp_path / "r"),
                *TINY[:6],
                "--batch-size",
                "4",
                "--warmup-steps",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "a uniform guess over the 263-token vocabulary scores 5.5722 nats per target" in out
    assert "sentence_loss" in out and "sentence_accuracy" in out and "accuracy" in out


def _wait_for_lines(path: Path, count: int, proc: subprocess.Popen, deadline: float) -> None:
    while not (path.exists() and path.read_text().count("\n") >= count):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not get there"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_a_signal_at_any_step_then_resume_reproduces_the_uninterrupted_run(tmp_path, sig):
    args = ["train", "--steps", "24", "--log-every", "3", "--save-every", "4", *TINY]
    straight = subprocess.run(
        [sys.executable, "-m", "lmobjectives", *args, "--out", str(tmp_path / "straight")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmobjectives", *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_lines(out / "metrics.jsonl", 3, proc, time.monotonic() + 120)  # somewhere after step 9
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGKILL)
    resumed = subprocess.run(
        [sys.executable, "-m", "lmobjectives", *args, "--out", str(out), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert rows(out / "metrics.jsonl") == rows(tmp_path / "straight" / "metrics.jsonl")
