"""The run folder is safe: a user's folder is never taken for a run, one process writes to a run at a time, a
start-up stopped at any moment leaves a folder the same command reuses, ``--resume`` reads the run's own
settings, and a multi-process launch is refused. Each case as a user meets it: ``lmobj`` in a subprocess (two
real processes for the lock), or ``main`` in-process where a fault is injected at one exact moment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lmobjectives.cli import EXIT_INTERRUPTED, EXIT_USAGE, main
from lmobjectives.training import TrainConfig, is_run, train
from lmobjectives.training import trainer as trainer_module
from lmobjectives.training.checkpoint import checkpoint_steps
from lmobjectives.training.run_folder import CONFIG_FILE, LOCK_FILE, resolve_out, resume_config, run_problem

TINY = "--d-model 32 --layers 1 --heads 2 --d-ff 64 --seq-len 32 --batch-size 4 --warmup-steps 1 --no-progress --threads 1".split()
TINY_CONFIG = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=32, batch_size=4, warmup_steps=1, progress=False)
USERS_CONFIG = '{"train": {"lr": 0.1, "epochs": 3}, "model": {"layers": 12}}'  # a user's file, not ours


def lmobj(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmobjectives", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else {**os.environ, **env},
    )


def last_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert lines and "Traceback" not in proc.stderr, proc.stderr
    return lines[-1]


def steps_in_metrics(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- item 5: our runs carry a marker


def test_a_users_folder_whose_config_has_a_train_entry_is_never_written_to(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text(USERS_CONFIG)
    (mine / "metrics.jsonl").write_text("my numbers\n")
    for extra in ([], ["--resume"]):
        proc = lmobj("train", "--steps", "1", "--out", str(mine), *TINY, *extra)
        assert proc.returncode == EXIT_USAGE, proc.stderr
        assert "holds files that are not an lmobj run" in last_line(proc) and '"format"' in last_line(proc)
    evaluated = lmobj("eval", str(mine))
    assert evaluated.returncode == EXIT_USAGE and "is not an lmobj run" in last_line(evaluated)
    assert (mine / "config.json").read_text() == USERS_CONFIG and (mine / "metrics.jsonl").read_text() == "my numbers\n"
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "metrics.jsonl"]


def test_runs_carry_the_marker_and_older_runs_are_recognised_only_by_their_exact_layout(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**TINY_CONFIG, steps=2, out=str(out)))
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert (saved["format"], saved["format_version"]) == ("lmobjectives-run", 1) and is_run(out)

    def write(config: dict, folder: Path = out) -> Path:
        (folder / CONFIG_FILE).write_text(json.dumps(config))
        return folder

    legacy = {k: v for k, v in saved.items() if k not in ("format", "format_version")}
    assert is_run(write(legacy))  # a run written before the marker: exactly our layout, with its checkpoint
    assert train(TrainConfig(**TINY_CONFIG, steps=3, out=str(out), resume=True)).steps == 3
    assert json.loads((out / CONFIG_FILE).read_text())["format"] == "lmobjectives-run"  # resuming marks it

    not_ours = {
        "an unknown train field": {**legacy, "train": {**legacy["train"], "epochs": 3}},
        "a missing train field": {**legacy, "train": {k: v for k, v in legacy["train"].items() if k != "seed"}},
        "another model": {**legacy, "model": {**legacy["model"], "layers": 12}},
        "an unknown entry": {**legacy, "notes": "mine"},
        "another format": {**saved, "format": "my-runs"},
    }
    for what, config in not_ours.items():
        assert not is_run(write(config)), what
    newer = run_problem(write({**saved, "format_version": 2}))
    assert newer is not None and "newer lmobjectives" in newer
    no_checkpoint = tmp_path / "no-checkpoint"
    no_checkpoint.mkdir()
    assert not is_run(write(legacy, no_checkpoint))  # without a checkpoint a config.json alone proves nothing
    assert not is_run(write(json.loads(USERS_CONFIG), no_checkpoint))
    assert run_problem(write([1, 2], no_checkpoint)) == "config.json holds a JSON list, not an object"  # type: ignore[arg-type]
    (no_checkpoint / CONFIG_FILE).write_text("")
    assert run_problem(no_checkpoint) == "config.json is empty"


# ----------------------------------------------------------------------------- item 6: one writer per folder


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the first run did not get there"
        time.sleep(0.05)


def test_a_second_writer_is_refused_while_the_first_runs_and_a_killed_run_resumes(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmobjectives",
            "train",
            "--steps",
            "100000",
            "--log-every",
            "2",
            "--save-every",
            "4",
            *TINY,
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: bool(checkpoint_steps(out / "checkpoint")), first)
        for extra in ([], ["--resume"]):  # a fresh start and a resumption alike
            second = lmobj("train", "--steps", "2", *TINY, "--out", str(out), *extra)
            assert second.returncode == EXIT_USAGE, second.stderr
            line = last_line(second)
            assert f"--out {out} is in use by another lmobj train (PID {first.pid})" in line, line
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()  # kill -9: the OS releases its lock
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    step = checkpoint_steps(out / "checkpoint")[0]
    resumed = lmobj("train", "--out", str(out), "--resume", "--steps", str(step + 2), "--no-progress", "--threads", "1")
    assert resumed.returncode == 0, resumed.stderr
    assert steps_in_metrics(out)[-1] == step + 2 and checkpoint_steps(out / "checkpoint")[0] == step + 2


HOLD_THE_LOCK = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lmobjectives.training.run_folder import RunLock
    lock = RunLock()
    lock.claim(Path(sys.argv[1]), resume=False)
    print("locked", flush=True)
    time.sleep(120)
""")


def test_without_out_a_run_in_progress_sends_the_next_one_to_a_numbered_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, "runs/clm"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert resolve_out(TrainConfig(objective="clm")) == Path("runs/clm-2")
        with pytest.raises(FileExistsError, match=rf"in use by another lmobj train \(PID {holder.pid}\)"):
            resolve_out(TrainConfig(objective="clm", resume=True))
    finally:
        holder.kill()
        holder.communicate(timeout=60)
    assert resolve_out(TrainConfig(objective="clm")) == Path("runs/clm")  # released when the holder died


# ----------------------------------------------------------------------------- item 8: a start-up stopped anywhere


@pytest.mark.parametrize("moment", ["before config.json", "while saving the tokenizer", "before the model"])
def test_ctrl_c_at_any_moment_of_the_start_up_leaves_a_folder_the_same_command_reuses(tmp_path, monkeypatch, moment):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    from lmobjectives.data.tokenizers import ByteTokenizer

    real_save = ByteTokenizer.save

    def save_then_ctrl_c(self, directory):
        real_save(self, directory)
        raise KeyboardInterrupt

    point = {
        "before config.json": (trainer_module, "write_run_config", ctrl_c),
        "while saving the tokenizer": (ByteTokenizer, "save", save_then_ctrl_c),
        "before the model": (trainer_module, "make_optimizer", ctrl_c),
    }[moment]
    command = ["train", "--steps", "2", "--objective", "mlm", "--unit", "word", *TINY]
    for extra in ([], ["--resume"]):
        out = tmp_path / f"run{len(extra)}"
        with monkeypatch.context() as patch:
            patch.setattr(*point)
            assert main([*command, "--out", str(out)]) == EXIT_INTERRUPTED
        assert out.is_dir() and not checkpoint_steps(out / "checkpoint")
        assert main([*command, "--out", str(out), *extra]) == 0  # the same command, or the same with --resume
        assert (
            steps_in_metrics(out) == [2]
            and json.loads((out / CONFIG_FILE).read_text())["train"]["options"]["unit"] == "word"
        )


def test_sigint_during_a_real_start_up_leaves_a_folder_the_same_command_reuses(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "lmobjectives", "train", "--steps", "2", *TINY, "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "tokenizer").exists(), proc)  # the start-up has written its first files
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    again = lmobj(*command[3:], *(["--resume"] if checkpoint_steps(out / "checkpoint") else []))
    assert again.returncode == 0, again.stderr  # started over (or resumed, where Ctrl-C came after the start-up)
    assert steps_in_metrics(out)[-1] == 2


# ----------------------------------------------------------------------------- item 9: --resume reads the run


def test_resume_takes_the_runs_own_settings_and_refuses_flags_that_differ(tmp_path):
    pytest.importorskip("tokenizers")
    out = str(tmp_path / "mlm-span")
    first = lmobj(
        "train",
        "--objective",
        "mlm",
        "--unit",
        "span",
        "--tokenizer",
        "wordpiece:300",
        "--lr",
        "0.01",
        "--steps",
        "6",
        "--stop-after",
        "2",
        "--log-every",
        "1",
        *TINY,
        "--out",
        out,
    )
    assert first.returncode == 0, first.stderr  # stopped where --stop-after asked
    # the README's command: no --unit, --tokenizer, --lr or model sizes repeated
    for flags, wrong in [
        (["--unit", "word"], "--unit word, but the run was trained with --unit span"),
        (["--lr", "0.002"], "--lr 0.002, but the run was trained with --lr 0.01"),  # the default, typed
        (["--objective", "clm"], "--objective clm, but the run was trained with --objective mlm"),
    ]:
        refused = lmobj("train", "--objective", "mlm", "--out", out, "--resume", *flags)
        assert refused.returncode == EXIT_USAGE and wrong in last_line(refused), refused.stderr
    resumed = lmobj(
        "train",
        "--objective",
        "mlm",
        "--out",
        out,
        "--resume",
        "--stop-after",
        "4",
        "--unit",
        "span",
        "--no-progress",
        "--threads",
        "1",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (
        lmobj("train", "--out", out, "--resume", "--no-progress", "--threads", "1").returncode == 0
    )  # to its last step
    assert steps_in_metrics(Path(out)) == [1, 2, 3, 4, 5, 6]
    saved = json.loads((Path(out) / CONFIG_FILE).read_text())["train"]
    assert (saved["options"]["unit"], saved["tokenizer"], saved["lr"], saved["d_model"]) == (
        "span",
        "wordpiece:300",
        0.01,
        32,
    )
    longer = lmobj("train", "--out", out, "--resume", "--steps", "7", "--no-progress", "--threads", "1")
    assert (longer.returncode, steps_in_metrics(Path(out))[-1]) == (0, 7), longer.stderr[-3000:]  # --steps may change


def test_resume_config_is_the_python_api_of_the_same(tmp_path):
    out = tmp_path / "run"
    base = dict(TINY_CONFIG, objective="mlm", options={"unit": "word"}, lr=0.01, steps=4, log_every=1)
    train(TrainConfig(**base, stop_after=2, out=str(out)))
    config = resume_config(out, progress=False)
    assert config == TrainConfig(**base, out=str(out), resume=True)  # stop_after is the call's, not the run's
    assert resume_config(out, steps=6, options={"unit": "word"}).steps == 6
    with pytest.raises(ValueError, match="unit span, but the run was trained with unit word"):
        resume_config(out, options={"unit": "span"})
    with pytest.raises(ValueError, match="cannot resume .*lr 0.002, but the run was trained with lr 0.01"):
        resume_config(out, lr=0.002)
    with pytest.raises(ValueError, match="resume_config"):  # a full TrainConfig that differs says where to look
        train(TrainConfig(**dict(base, lr=0.002), out=str(out), resume=True))
    assert train(resume_config(out, progress=False)).steps == 4 and steps_in_metrics(out) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- item 14: one process


def test_a_multi_process_launch_is_refused_before_the_folder_is_touched(tmp_path):
    out = tmp_path / "run"
    for rank in ("0", "1"):
        proc = lmobj(
            "train", "--steps", "1", *TINY, "--out", str(out), env={"WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": rank}
        )
        assert proc.returncode == EXIT_USAGE, proc.stderr
        assert last_line(proc).startswith(
            f"lmobj train: error: WORLD_SIZE=2 (rank {rank}): lmobj train trains in one process"
        )
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert lmobj("train", "--steps", "1", *TINY, "--out", str(out), env={"WORLD_SIZE": "1"}).returncode == 0
    assert (out / LOCK_FILE).exists()


def test_weights_without_any_state_file_are_never_deleted_by_a_new_start(tmp_path):
    """A run whose only checkpoint lost its state file (killed mid-save, or the file deleted): neither ``--resume``
    nor a fresh start may wipe its weights and metrics; both are refused in one line, nothing changed."""
    out = tmp_path / "run"
    assert (
        lmobj("train", "--objective", "clm", "--steps", "2", "--save-every", "2", *TINY, "--out", str(out)).returncode
        == 0
    )
    (state,) = (out / "checkpoint").glob("state-*.json")
    state.unlink()
    before = {p.name: p.read_bytes() for p in sorted((out / "checkpoint").iterdir())}
    metrics = (out / "metrics.jsonl").read_text()
    for extra in (["--resume"], []):
        proc = lmobj("train", "--objective", "clm", "--steps", "2", *TINY, "--out", str(out), *extra)
        assert proc.returncode == EXIT_USAGE, proc.stderr
        assert "holds the weights of step 2 but no state file" in last_line(proc)
    assert {p.name: p.read_bytes() for p in sorted((out / "checkpoint").iterdir())} == before
    assert (out / "metrics.jsonl").read_text() == metrics
