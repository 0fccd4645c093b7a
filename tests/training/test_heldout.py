"""The held-out split in training: eval_every lines in metrics.jsonl, exact resume with them, nothing else changed."""

from __future__ import annotations

import json

import pytest

from lmobjectives.evaluation import heldout_batches, load_run
from lmobjectives.training import TrainConfig, train
from lmobjectives.training.trainer import heldout_metrics

TINY = dict(
    d_model=32,
    n_layers=1,
    n_heads=2,
    d_ff=64,
    seq_len=32,
    batch_size=4,
    progress=False,
    log_every=1,
    save_every=0,
    steps=5,
    warmup_steps=1,
    eval_batches=3,
)


def rows(path):
    return [
        {k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in path.read_text().splitlines()
    ]


def test_eval_lines_hold_the_recipes_heldout_loss_and_change_no_training_number(tmp_path):
    with_eval = train(TrainConfig(objective="nsp", eval_every=2, out=str(tmp_path / "a"), **TINY))
    without = train(TrainConfig(objective="nsp", eval_every=0, out=str(tmp_path / "b"), **TINY))
    a, b = rows(with_eval.metrics_path), rows(without.metrics_path)
    assert [sorted(k for k in r if k.startswith("eval_")) != [] for r in a] == [
        False,
        True,
        False,
        True,
        True,
    ]  # 2, 4, last
    assert sorted(k for k in a[1] if k.startswith("eval_")) == [
        "eval_accuracy",
        "eval_lm_loss",
        "eval_loss",
        "eval_sentence_accuracy",
        "eval_sentence_loss",
    ]
    assert a[1]["eval_loss"] == pytest.approx(a[1]["eval_lm_loss"] + a[1]["eval_sentence_loss"])
    assert [{k: v for k, v in r.items() if not k.startswith("eval_")} for r in a] == b
    run = load_run(tmp_path / "a")  # the last line's numbers, recomputed from the checkpoint and the public batches
    again = heldout_metrics(run.model, run.recipe, run.objective, heldout_batches(run), seed=run.config.seed)
    assert again == pytest.approx({k: v for k, v in a[-1].items() if k.startswith("eval_")}, rel=1e-5)


@pytest.mark.parametrize("stop", [1, 3])
def test_resumed_run_writes_the_same_eval_lines(tmp_path, stop):
    base = dict(TINY, objective="mlm", steps=6, log_every=2, eval_every=2)
    straight = train(TrainConfig(**base, out=str(tmp_path / "straight")))
    train(TrainConfig(**base, out=str(tmp_path / "run"), stop_after=stop))
    resumed = train(TrainConfig(**base, out=str(tmp_path / "run"), resume=True))
    expected = rows(straight.metrics_path)
    assert [r["step"] for r in expected] == [2, 4, 6] and all("eval_loss" in r for r in expected)
    assert rows(resumed.metrics_path) == expected


def test_the_split_is_recorded_and_checked_on_resume(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(objective="clm", out=str(out), stop_after=2, **TINY))
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["heldout"] == 0.05 and saved["split"]["documents"] == 205
    with pytest.raises(ValueError, match=r"heldout: 0.05 -> 0.1"):
        train(TrainConfig(objective="clm", out=str(out), resume=True, **dict(TINY, heldout=0.1)))
    done = train(TrainConfig(objective="clm", out=str(out), resume=True, **dict(TINY, eval_every=0)))  # eval: resumable
    assert done.steps == 5


def test_a_run_saved_before_the_split_resumes_as_one_without_heldout(tmp_path):
    out = tmp_path / "old"
    train(TrainConfig(objective="clm", out=str(out), stop_after=2, **dict(TINY, heldout=0.0)))
    config = json.loads((out / "config.json").read_text())
    for key in ("heldout", "eval_every", "eval_batches"):
        del config["train"][key]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"heldout: 0.0 -> 0.05"):
        train(TrainConfig(objective="clm", out=str(out), resume=True, **TINY))
    assert train(TrainConfig(objective="clm", out=str(out), resume=True, **dict(TINY, heldout=0.0))).steps == 5


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(heldout=1.0), "heldout must be a fraction in [0, 1)"),
        (dict(heldout=-0.1), "heldout must be a fraction"),
        (dict(log_every=10, eval_every=15), "eval_every=15 must be a multiple of log_every=10"),
        (dict(eval_every=-1), "eval_every must be an int >= 0"),
        (dict(eval_batches=0), "eval_batches must be a positive int"),
    ],
)
def test_bad_split_settings_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**bad)


def test_eval_interval_defaults_to_ten_metrics_lines_when_documents_are_held_out():
    assert TrainConfig(log_every=5).eval_interval == 50
    assert TrainConfig(log_every=5, heldout=0.0).eval_interval == 0
    assert TrainConfig(log_every=5, eval_every=0).eval_interval == 0
