"""``lmobj``: help, a tiny end-to-end run, Ctrl-C, clear errors for bad arguments, and flags made from config fields."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest

from lmobjectives import cli as cli_module
from lmobjectives.cli import EXIT_INTERRUPTED, EXIT_USAGE, build_parser, main
from lmobjectives.cli import compare as compare_command
from lmobjectives.cli import train as train_command
from lmobjectives.compare import CompareConfig
from lmobjectives.training import TrainConfig

TINY = "--d-model 32 --layers 1 --heads 2 --d-ff 64 --seq-len 32 --batch-size 4 --warmup-steps 1 --no-progress".split()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmobjectives", *args], capture_output=True, text=True, timeout=timeout
    )


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
    assert (
        main(
            [
                "train",
                "--objective",
                "mlm",
                "--unit",
                "word",
                "--steps",
                "3",
                "--log-every",
                "1",
                "--out",
                str(out),
                *TINY,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    for path in (out / "metrics.jsonl", out / "config.json", out / "tokenizer", out / "checkpoint"):
        assert path.exists() and str(path) in printed  # the summary says where everything is
    assert "done: 3 steps" in printed
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [
        "model-0000003.safetensors",
        "optimizer-0000003.safetensors",
        "state-0000003.json",
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
    cmd = [
        sys.executable,
        "-m",
        "lmobjectives",
        "train",
        "--steps",
        "100000",
        "--log-every",
        "1",
        "--out",
        str(out),
        *TINY,
    ]
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
        (
            ["--objective", "mlm", "--unit", "word", "--max-predictions", "x"],
            "argument --max-predictions: invalid int value",
        ),
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
    assert (
        main(["train", "--steps", "1", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "b"), *TINY]) == 2
    )
    assert "lmobj train: error:" in capsys.readouterr().err


def test_ctrl_c_outside_the_training_loop_exits_130_without_a_traceback(tmp_path, capsys, monkeypatch):
    def interrupted_while_loading(config):
        raise KeyboardInterrupt  # Ctrl-C while the corpus loads, or a second Ctrl-C while training

    monkeypatch.setattr(train_command, "train", interrupted_while_loading)
    assert main(["train", "--steps", "1", "--out", str(tmp_path / "run"), *TINY]) == EXIT_INTERRUPTED
    assert "lmobj train: interrupted" in capsys.readouterr().err


def _subparser(name: str):
    return build_parser()._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]


def test_every_command_is_a_module_with_its_arguments_and_run():
    assert list(cli_module.COMMANDS) == list(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for name, module in cli_module.COMMANDS.items():
        assert module.__name__ == f"lmobjectives.cli.{name}"
        assert callable(module.add_arguments) and callable(module.run) and module.HELP and module.DESCRIPTION


def test_every_train_config_field_is_a_flag_with_its_default_and_help():
    actions = {a.dest: a for a in _subparser("train")._actions}
    for field in dataclasses.fields(TrainConfig):
        if field.name in train_command.NOT_FLAGS:
            assert field.name not in actions
            continue
        action = actions[field.name]
        assert action.default == field.default and field.metadata["help"] in action.help, field.name
    args = build_parser().parse_args(
        ["train", "--layers", "3", "--heads", "2", "--no-progress", "--resume", "--dupe-factor", "2"]
    )
    config = train_command.config_from_args(args)
    assert (config.n_layers, config.n_heads, config.progress, config.resume, config.dupe_factor) == (
        3,
        2,
        False,
        True,
        2,
    )
    assert (
        dataclasses.replace(config, n_layers=2, n_heads=4, progress=True, resume=False, dupe_factor=None)
        == TrainConfig()
    )


def test_compare_flags_are_the_config_fields_with_help_and_reach_the_config(monkeypatch):
    flags = {n for names in compare_command.GROUPS.values() for n in names if not n.startswith("--")}
    for field in dataclasses.fields(CompareConfig):
        with_help = "help" in field.metadata
        assert (field.name in flags) == (with_help or field.name == "threads"), field.name  # --threads: every command's
        assert (field.name in compare_command.NOT_FLAGS) == (field.name not in flags), field.name
    seen = []

    def interrupted(config):
        seen.append(config)
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_command, "compare", interrupted)
    argv = [
        "compare",
        "clm",
        "mlm",
        "--steps",
        "7",
        "--scale",
        "0.5",
        "--layers",
        "1",
        "--heads",
        "2",
        "--d-model",
        "32",
        "--tasks",
        "next_token",
        "--seeds",
        "2",
        "--seed",
        "5",
        "--no-progress",
    ]
    assert main(argv) == EXIT_INTERRUPTED
    (config,) = seen
    assert (config.objectives, config.steps, config.n_layers, config.n_heads, config.d_model, config.tasks) == (
        ("clm", "mlm"),
        4,
        1,
        2,
        32,
        ("next_token",),
    )
    assert (config.seeds, config.seed, config.progress, config.batch_size) == (2, 5, False, CompareConfig.batch_size)
    assert config.command == "lmobj " + " ".join(a for a in argv if a != "--no-progress")


@pytest.mark.parametrize("scale", ["0", "-1", "nan", "inf"])
def test_compare_refuses_a_scale_that_is_not_a_positive_number(capsys, scale):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "clm", "--scale", scale])
    assert exit_.value.code == EXIT_USAGE and "--scale must be a finite float > 0" in capsys.readouterr().err


def test_version_answers_without_importing_torch():
    code = "import sys; from lmobjectives.__main__ import main; assert main(['--version']) == 0; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"lmobj (lmobjectives) {__import__('lmobjectives').__version__}", "False"]
