"""``lmobj eval``: a table on the terminal, JSON in a file, one-line errors; --threads and the split's flags."""

from __future__ import annotations

import json

import pytest
import torch

from lmobjectives import cli


def test_eval_prints_a_table_and_writes_json(runs, tmp_path, capsys):
    run = runs("mlm")
    out = tmp_path / "eval.json"
    assert (
        cli.main(["eval", str(run.out_dir), "--tasks", "next_token", "pll", "--out", str(out), "--threads", "1"]) == 0
    )
    text = capsys.readouterr().out
    assert "next_token" in text and "bits_per_byte" in text and "pseudo_perplexity" in text and str(out) in text
    data = json.loads(out.read_text())
    assert (
        data["objective"] == "mlm"
        and data["reads"] == "bidirectional"
        and list(data["results"]) == ["next_token", "pll"]
    )
    assert data["results"]["pll"]["metrics"]["pseudo_perplexity"] > 1
    assert data["heldout"]["documents"] == len(run.heldout)


def test_eval_defaults_to_every_task_and_shows_what_does_not_apply(runs, capsys):
    run = runs("clm")
    assert cli.main(["eval", str(run.out_dir), "--reference", str(run.out_dir)]) == 0
    text = capsys.readouterr().out
    assert "pll             not applicable" in text and "sentence_pairs  not applicable" in text
    data = json.loads((run.out_dir / "eval.json").read_text())
    assert data["results"]["generation"]["metrics"]["true_reference_bits_per_byte"] > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["eval", "{tmp}"], "is not an lmobj run"),
        (["eval", "{clm}", "--tasks", "nope"], "unknown task(s) 'nope'; valid tasks: next_token"),
        (["eval", "{clm}", "--tasks", "pll"], "task 'pll' does not apply"),
        (["eval", "{clm}", "--tasks", "sentence_pairs"], "no sentence-pair head"),
        (["eval", "{clm}", "--tasks", "generation", "--reference", "{mlm}"], "must be a causal model"),
    ],
)
def test_bad_input_is_one_line(runs, tmp_path, capsys, args, message):
    paths = {"tmp": str(tmp_path), "clm": str(runs("clm").out_dir), "mlm": str(runs("mlm").out_dir)}
    assert cli.main([a.format(**paths) for a in args]) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lmobj eval: error: ") and message in err[-1]


def test_train_flags_for_the_split_and_threads(tmp_path):
    args = cli.build_parser().parse_args(
        ["train", "--heldout", "0.1", "--eval-every", "20", "--eval-batches", "3", "--threads", "1"]
    )
    config = cli.train.config_from_args(args)
    assert (config.heldout, config.eval_every, config.eval_batches) == (0.1, 20, 3) and args.threads == 1
    threads = torch.get_num_threads()
    try:
        out = tmp_path / "run"
        assert (
            cli.main(
                [
                    "train",
                    "--steps",
                    "1",
                    "--d-model",
                    "16",
                    "--heads",
                    "2",
                    "--d-ff",
                    "32",
                    "--layers",
                    "1",
                    "--seq-len",
                    "16",
                    "--batch-size",
                    "2",
                    "--threads",
                    "1",
                    "--no-progress",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
