"""Bad input on the command line, as a user meets it: one line naming the flag (or the file) and the value, exit 2.

The ICL probe's flags, a damaged run folder (config.json, metrics.jsonl, tokenizer/), ``--debug`` after any command,
abbreviated flags (refused, with the full name), a data-only objective, a ``--seq-len`` too short for an
objective, and ``--out``'s missing parent folders (created, by every command).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lmobjectives import cli
from lmobjectives.cli import EXIT_USAGE
from lmobjectives.cli._flags import flag_name
from lmobjectives.recipes import OBJECTIVES, options_of

TINY = "--d-model 32 --layers 1 --heads 2 --d-ff 64 --seq-len 32 --batch-size 4 --warmup-steps 1 --no-progress".split()
TRAINABLE = [name for name, recipe in OBJECTIVES.items() if not recipe.untrainable]
DATA_ONLY = [name for name, recipe in OBJECTIVES.items() if recipe.untrainable]


def run_module(module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout)


def lmobj(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_module("lmobjectives", *args, timeout=timeout)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The error line of a refused command line (exit 2, no traceback)."""
    assert done.returncode == EXIT_USAGE, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def flat(text: str) -> str:
    """``text`` with its line wrapping undone (help output)."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished two-step run (clm, tiny model), to be copied and damaged."""
    out = tmp_path_factory.mktemp("run") / "run"
    done = lmobj("train", "--steps", "2", "--log-every", "1", "--out", str(out), *TINY)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def damaged(run_dir, tmp_path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(run_dir, copy)
    return copy


# --------------------------------------------------------------------------- python -m lmobjectives.evaluation.icl


@pytest.mark.parametrize(
    "args, message",
    [
        # --steps 0 used to run the preset's 4,000 steps; with --out an empty folder each case would train
        (["--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
        (["--steps", "-3"], "argument --steps: must be a positive integer, got '-3'"),
        (["--threads", "0"], "argument --threads: must be a positive integer, got '0'"),
        (["--objectives", "bogus"], "argument --objectives: unknown objective 'bogus'"),
        (["--objectives", "clm,,mlm"], "argument --objectives: unknown objective ''"),
        *[
            (
                ["--objectives", f"clm,{name}"],
                f"argument --objectives: {name} cannot be trained (data only), nor probed: "
                + OBJECTIVES[name].untrainable,
            )
            for name in DATA_ONLY
        ],
        (
            ["--probe-only"],
            "argument --probe-only: no trained run (no checkpoint) in {out}/clm, {out}/prefix_lm, {out}/mlm",
        ),
    ],
)
def test_icl_flags_are_one_line_errors(tmp_path, args, message):
    out = str(tmp_path / "icl")
    line = one_line_error(run_module("lmobjectives.evaluation.icl", *args, "--out", out))
    assert line.startswith("python -m lmobjectives.evaluation.icl: error: ")
    assert message.format(out=out) in line
    assert not (tmp_path / "icl").exists()  # nothing trained, nothing written


# --------------------------------------------------------------------------- a damaged run


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "(config.json is empty)"),
        ("[]", "(config.json holds a JSON list, not an object)"),
        ('{"train": ', "(config.json is not JSON: Expecting value: line 1 column 11"),
    ],
)
def test_a_damaged_config_json_says_what_is_wrong(damaged, text, problem):
    (damaged / "config.json").write_text(text)
    line = one_line_error(lmobj("eval", str(damaged), "--tasks", "next_token"))
    assert line.startswith(f"lmobj eval: error: {damaged} is not an lmobj run {problem}"), line


def test_a_deleted_tokenizer_folder_is_named_by_eval_and_by_resume(damaged):
    shutil.rmtree(damaged / "tokenizer")
    expected = f"{damaged} is a damaged run: its tokenizer folder {damaged / 'tokenizer'} is missing"
    assert expected in one_line_error(lmobj("eval", str(damaged), "--tasks", "next_token"))
    assert expected in one_line_error(lmobj("train", "--steps", "3", "--out", str(damaged), "--resume", *TINY))


def test_a_metrics_line_without_a_step_is_named_on_resume_and_nothing_is_dropped(damaged):
    metrics = damaged / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"loss": 1.0}\n')
    before = metrics.read_bytes()
    line = one_line_error(lmobj("train", "--steps", "3", "--log-every", "1", "--out", str(damaged), "--resume", *TINY))
    assert f'{metrics} line 3 is not a metrics line of lmobj train (no integer "step"): {{"loss": 1.0}}' in line
    assert metrics.read_bytes() == before


def test_compare_reads_a_run_curve_with_the_same_check(tmp_path):
    from lmobjectives.compare.runner import _curve  # noqa: PLC0415 (the reader of a run's curve for the report)

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "tokens": 8, "loss": 2.0}\n{"step": "2", "tokens": 16, "loss": 1.5}\n')
    with pytest.raises(
        ValueError, match=r'metrics.jsonl line 2 is not a metrics line of lmobj train \(no integer "step"\)'
    ):
        _curve(metrics)
    metrics.write_text('{"step": 1, "tokens": 8, "loss": 2.0}\n{"step": 2\n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2 is not JSON"):
        _curve(metrics)


# --------------------------------------------------------------------------- --debug, abbreviations


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--debug", "--steps", "1", "--data", "{tmp}/missing.txt", "--out", "{tmp}/run"],
        ["eval", "--debug", "{tmp}"],
        [
            "compare",
            "clm",
            "--debug",
            "--data",
            "{tmp}/missing.txt",
            "--steps",
            "1",
            "--out",
            "{tmp}/cmp",
            "--no-progress",
        ],
    ],
)
def test_debug_after_the_command_shows_the_traceback(tmp_path, args):
    done = lmobj(*(a.format(tmp=tmp_path) for a in args))
    assert done.returncode != 0 and "Traceback (most recent call last)" in done.stderr, done.stderr[-2000:]
    assert "unrecognized arguments" not in done.stderr


def test_every_command_takes_debug_before_or_after_it():
    for command in cli.COMMANDS:
        parser = cli.build_parser()
        rest = ["run"] if command == "eval" else []
        assert parser.parse_args([command, *rest]).debug is False
        assert parser.parse_args(["--debug", command, *rest]).debug is True
        assert parser.parse_args([command, "--debug", *rest]).debug is True


def test_abbreviated_flags_are_refused_with_the_full_name():
    line = one_line_error(lmobj("train", "--obj", "mlm", "--unit", "word", "--steps", "1"))
    assert (
        "unrecognized arguments: --obj mlm --unit word (flags are typed in full, not abbreviated: --obj is --objective?)"
        in line
    )
    line = one_line_error(lmobj("inspect", "--objective", "mlm", "--prob", "0.3"))
    assert "--prob is --probability?" in line
    subparsers = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert cli.build_parser().allow_abbrev is False and all(not p.allow_abbrev for p in subparsers.values())


# --------------------------------------------------------------------------- a data-only objective


@pytest.mark.parametrize("name", DATA_ONLY)
def test_a_data_only_objective_says_why_it_cannot_be_trained_and_has_help(name):
    line = one_line_error(lmobj("train", "--objective", name, "--steps", "1"))
    assert f"argument --objective: {name} cannot be trained (data only): {OBJECTIVES[name].untrainable}" in line
    shown = lmobj("train", "--objective", name, "--help")
    assert shown.returncode == 0, shown.stderr
    text = flat(shown.stdout)
    assert f"options of --objective {name}" in text and OBJECTIVES[name].untrainable in text
    for option in options_of(OBJECTIVES[name]):
        assert flag_name(option.name) in text


# --------------------------------------------------------------------------- --seq-len too short


@pytest.mark.parametrize("seq_len", ["1", "2"])
@pytest.mark.parametrize("name", TRAINABLE)
def test_a_seq_len_too_short_for_the_objective_names_seq_len(tmp_path, capsys, name, seq_len):
    tiny = ["--d-model", "32", "--layers", "1", "--heads", "2", "--d-ff", "64", "--batch-size", "2", "--no-progress"]
    commands = {
        "train": [
            "train",
            "--objective",
            name,
            "--seq-len",
            seq_len,
            "--steps",
            "1",
            "--out",
            str(tmp_path / "run"),
            *tiny,
        ],
        "inspect": ["inspect", "--objective", name, "--seq-len", seq_len, "--out", str(tmp_path / "x.png")],
    }
    for command, argv in commands.items():
        try:
            status = cli.main(argv)
        except SystemExit as e:  # a usage error
            status = e.code
        err = capsys.readouterr().err
        if status != 0:
            assert status == EXIT_USAGE and "--seq-len" in err.strip().splitlines()[-1], (command, err)


# --------------------------------------------------------------------------- --out


def test_every_out_creates_missing_parent_folders_and_says_so(run_dir, tmp_path):
    subparsers = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, parser in subparsers.items():
        for action in parser._actions:
            if "--out" in action.option_strings:
                assert "missing parent folders are created" in flat(action.help), name
    picture = tmp_path / "a" / "b" / "c.png"
    done = lmobj("inspect", "--out", str(picture))
    assert done.returncode == 0 and picture.exists(), done.stderr
    results = tmp_path / "x" / "y" / "eval.json"
    done = lmobj("eval", str(run_dir), "--tasks", "next_token", "--out", str(results))
    assert done.returncode == 0, done.stderr
    assert json.loads(results.read_text())["results"]["next_token"]["applies"] is True
    run = tmp_path / "p" / "q" / "run"
    done = lmobj("train", "--steps", "1", "--out", str(run), *TINY)
    assert done.returncode == 0 and (run / "config.json").exists(), done.stderr


# --------------------------------------------------------------------------- the neighbours: flags of other commands


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "{run}", "--threads", "0"], "argument --threads: must be a positive integer, got '0'"),
        (["compare", "clm", "--threads", "0"], "argument --threads: must be a positive integer, got '0'"),
        (["compare", "clm", "--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
        (["compare", "clm", "--steps", "-3"], "argument --steps: must be a positive integer, got '-3'"),
        (["compare", "clm", "--seeds", "0"], "argument --seeds: must be a positive integer, got '0'"),
        (["train", "--threads", "0"], "argument --threads: must be a positive integer, got '0'"),
        (["inspect", "--seq-len", "0"], "argument --seq-len: must be a positive integer, got '0'"),
    ],
)
def test_the_same_flags_of_other_commands_are_refused_alike(run_dir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main([a.format(run=run_dir) for a in args])
    assert exit_.value.code == EXIT_USAGE
    assert re.search(re.escape(message), capsys.readouterr().err)
