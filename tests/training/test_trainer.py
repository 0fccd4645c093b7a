"""End-to-end training on the built-in corpus: the loss drops, and resuming is exact."""

from __future__ import annotations

import json
import math
import os
import re
import signal

import pytest
import torch

from lmobjectives.training import TrainConfig, load_model, train
from lmobjectives.training import streams as streams_module
from lmobjectives.training.trainer import learning_rate

UNIGRAM_BYTE_ENTROPY = 3.15  # nats, of the built-in corpus's bytes: a model below this uses context

# a tiny model and short sequences: one step is a few milliseconds on 2 CPU cores
TINY = dict(
    d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=32, batch_size=4, progress=False, log_every=1, save_every=0
)


def losses(path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("objective, below", [("clm", 2.6), ("mlm", 2.9)])
def test_loss_drops_below_the_unigram_entropy(tmp_path, objective, below):
    """200 steps of a d=64 model (~200k tokens, ~5 s on 2 idle cores): the model clearly uses context."""
    config = TrainConfig(
        objective=objective,
        steps=200,
        d_model=64,
        d_ff=256,
        seq_len=64,
        batch_size=16,
        warmup_steps=10,
        lr=3e-3,
        log_every=10,
        save_every=0,
        progress=False,
        out=str(tmp_path),
    )
    result = train(config)
    first, last = losses(result.metrics_path)[0], losses(result.metrics_path)[-1]
    assert result.steps == 200 and not result.interrupted
    assert first > 4.5  # mean over the first 10 steps, from ln(263) = 5.57
    assert last < below < UNIGRAM_BYTE_ENTROPY, (first, last)


@pytest.mark.parametrize(
    "objective, options",
    [
        (
            "clm",
            dict(dropout=0.1, options=dict(document_masking=True)),
        ),  # dropout: the global RNG is re-seeded per step
        ("mlm", dict(options=dict(unit="span"))),  # word ids from packing, span corruption
        ("sop", dict(seq_len=48)),  # sentence pairs from a window of documents
    ],
)
def test_resume_reproduces_the_uninterrupted_run(tmp_path, objective, options):
    base = dict(TINY, objective=objective, steps=8, warmup_steps=2, **options)
    straight = train(TrainConfig(**base, out=str(tmp_path / "straight")))
    first = train(TrainConfig(**base, out=str(tmp_path / "resumed"), stop_after=4))
    assert first.interrupted and first.steps == 4
    second = train(TrainConfig(**base, out=str(tmp_path / "resumed"), resume=True))
    assert second.steps == 8 and not second.interrupted
    expected = losses(straight.metrics_path)
    assert len(expected) == 8
    assert losses(second.metrics_path) == expected  # bit for bit: same data, same draws, same state
    assert second.tokens == straight.tokens


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_exactly(tmp_path, monkeypatch):
    base = dict(TINY, objective="clm", steps=6, warmup_steps=2)
    expected = losses(train(TrainConfig(**base, out=str(tmp_path / "straight"))).metrics_path)

    original = streams_module.BlockStream.__call__

    def interrupt_at_step_2(self, step):
        if step == 2:  # 0-based data position of update 3
            os.kill(os.getpid(), signal.SIGINT)  # as the user pressing Ctrl-C
        return original(self, step)

    monkeypatch.setattr(streams_module.BlockStream, "__call__", interrupt_at_step_2)
    stopped = train(TrainConfig(**base, out=str(tmp_path / "run")))
    assert stopped.interrupted and stopped.steps == 3  # the step in flight finished, then it stopped
    state = json.loads((tmp_path / "run" / "checkpoint" / "state-0000003.json").read_text())
    assert state["step"] == 3
    monkeypatch.setattr(streams_module.BlockStream, "__call__", original)
    resumed = train(TrainConfig(**base, out=str(tmp_path / "run"), resume=True))
    assert losses(resumed.metrics_path) == expected


def _rows_without_wall_clock(path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in path.read_text().splitlines()
    ]


def test_resume_after_a_crash_keeps_every_step_in_the_metrics(tmp_path, monkeypatch):
    """Killed after a periodic checkpoint that falls inside a metrics window: the resumed metrics.jsonl equals the
    uninterrupted run's line for line (the checkpoint holds the open window), a half-written line is dropped."""
    base = dict(TINY, objective="clm", steps=8, warmup_steps=2, log_every=4, save_every=3)
    straight = train(TrainConfig(**base, out=str(tmp_path / "straight")))
    assert [r["step"] for r in _rows_without_wall_clock(straight.metrics_path)] == [4, 8]  # windows by step number

    original = streams_module.BlockStream.__call__

    def crash_at_update_5(self, step):
        if step == 4:
            raise RuntimeError("killed")
        return original(self, step)

    monkeypatch.setattr(streams_module.BlockStream, "__call__", crash_at_update_5)
    with pytest.raises(RuntimeError, match="killed"):
        train(TrainConfig(**base, out=str(tmp_path / "run")))
    monkeypatch.setattr(streams_module.BlockStream, "__call__", original)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [4]  # checkpoint at 3
    with open(metrics, "a") as f:
        f.write('{"step": 5, "lo')  # cut short by the crash
    resumed = train(TrainConfig(**base, out=str(tmp_path / "run"), resume=True))
    assert _rows_without_wall_clock(resumed.metrics_path) == _rows_without_wall_clock(straight.metrics_path)


@pytest.mark.parametrize("stop", [1, 5, 6, 7])
def test_metrics_of_a_run_stopped_inside_a_window_equal_the_uninterrupted_runs(tmp_path, stop):
    """Stopped at a step that is no multiple of log_every, then resumed: every metrics line and field is the
    uninterrupted run's, the wall-clock rate tokens_per_s aside."""
    base = dict(TINY, objective="mlm", steps=9, warmup_steps=2, log_every=4)
    straight = train(TrainConfig(**base, out=str(tmp_path / "straight")))
    train(TrainConfig(**base, out=str(tmp_path / "run"), stop_after=stop))
    resumed = train(TrainConfig(**base, out=str(tmp_path / "run"), resume=True))
    expected = _rows_without_wall_clock(straight.metrics_path)
    assert [r["step"] for r in expected] == [4, 8, 9]
    assert _rows_without_wall_clock(resumed.metrics_path) == expected


def test_outputs(tmp_path):
    result = train(TrainConfig(**dict(TINY, objective="nsp", seq_len=48, steps=3, warmup_steps=1), out=str(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint",
        "config.json",
        "lmobj.lock",
        "metrics.jsonl",
        "tokenizer",
    ]
    config = json.loads(result.config_path.read_text())
    assert config["train"]["objective"] == "nsp" and config["model"]["n_sentence_classes"] == 2
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "lm_loss", "sentence_loss", "accuracy", "sentence_accuracy", "tokens", "tokens_per_s", "lr"):
        assert key in rows[0]
    assert rows[0]["loss"] == pytest.approx(rows[0]["lm_loss"] + rows[0]["sentence_loss"])
    assert rows[-1]["tokens"] == result.tokens > 0
    model = load_model(tmp_path)
    assert model.config.n_sentence_classes == 2 and not model.training


def test_leaves_the_callers_global_rng_alone(tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    train(TrainConfig(**dict(TINY, objective="clm", steps=2, warmup_steps=1), out=str(tmp_path)))
    assert torch.equal(torch.rand(3), expected)


def test_refuses_to_overwrite_a_run_and_checks_resumed_settings(tmp_path):
    base = dict(TINY, objective="clm", steps=2, warmup_steps=1, out=str(tmp_path))
    train(TrainConfig(**base))
    with pytest.raises(FileExistsError, match="resume"):
        train(TrainConfig(**base))
    with pytest.raises(ValueError, match="lr: 0.002 -> 0.1"):
        train(TrainConfig(**dict(base, lr=0.1), resume=True))
    done = train(TrainConfig(**base, resume=True))  # already complete: nothing to do
    assert done.steps == 2 and len(losses(done.metrics_path)) == 2


def test_learning_rate_schedule():
    config = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert learning_rate(1, config) == pytest.approx(0.1)
    assert learning_rate(10, config) == pytest.approx(1.0)
    assert learning_rate(55, config) == pytest.approx(0.55)  # half-way down the cosine
    assert learning_rate(100, config) == pytest.approx(0.1)
    assert all(learning_rate(s, config) >= learning_rate(s + 1, config) for s in range(10, 100))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(objective="gpt"), "unknown objective 'gpt'; choose one of: clm, mlm, "),  # and the rest of the registry
        (dict(steps=0), "steps must be a positive int"),
        (dict(lr=-1.0), "lr must be a positive number"),
        (dict(lr=math.nan), "lr must be a positive number"),
        (
            dict(objective="clm", options={"unit": "word"}),
            "unknown option(s) 'unit' for objective 'clm'; valid options: document_masking",
        ),
        (
            dict(objective="mlm", options={"document_masking": True}),
            "unknown option(s) 'document_masking' for objective 'mlm'",
        ),
        (dict(objective="mlm", options={"unit": {1, 2}}), "options of objective 'mlm' must be JSON values"),
        (dict(d_model=30, n_heads=4), "divisible"),
    ],
)
def test_bad_config_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**bad)


def test_a_bad_option_value_is_refused_by_the_objective_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="objective 'mlm': .*unit.*'words'"):
        train(TrainConfig(**dict(TINY, objective="mlm", options={"unit": "words"}, out=str(tmp_path / "run"))))
    with pytest.raises(ValueError, match=r"objective 'nsp' \(--seq-len 4 sets its max_seq_length\): .*max_seq_length"):
        train(TrainConfig(**dict(TINY, objective="nsp", seq_len=4, out=str(tmp_path / "run"))))
    assert not (tmp_path / "run").exists()


def test_bad_device_and_data_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="device"):
        train(TrainConfig(**dict(TINY, steps=1, device="tpu", out=str(tmp_path / "a"))))
    with pytest.raises((ValueError, FileNotFoundError)):
        train(TrainConfig(**dict(TINY, steps=1, data=str(tmp_path / "missing.txt"), out=str(tmp_path / "b"))))


def test_resume_refuses_data_that_changed_in_place(tmp_path):
    # same file, same number of documents and blocks, different text: resuming would silently train on other data
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The first document has a sentence. And another one.\n\nA second document follows here.\n")
    base = dict(
        TINY, objective="clm", steps=4, stop_after=2, warmup_steps=1, data=str(corpus), out=str(tmp_path / "run")
    )
    train(TrainConfig(**base))
    corpus.write_text("The first document has a sentence! And another one.\n\nA second document follows here.\n")
    with pytest.raises(ValueError, match="data changed.*fingerprint"):
        train(TrainConfig(**base, resume=True))
