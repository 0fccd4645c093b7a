"""The objective registry drives training: options as flags, a toy objective registered in one entry trains,
and the four original objectives train exactly as they did before recipes existed (no objective name outside
objectives/ and recipes/: tests/test_layers.py)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lmobjectives import cli
from lmobjectives.models import MODELS, Transformer
from lmobjectives.objectives import CausalLM
from lmobjectives.recipes import OBJECTIVES, ModelSpec, Recipe, StepLoss, options_of
from lmobjectives.recipes.step_losses import lm_step_loss
from lmobjectives.training import TrainConfig, load_model, train

# heldout=0: the recorded sequences were trained on the whole corpus, before held-out splits existed
TINY = dict(
    d_model=32,
    n_layers=1,
    n_heads=2,
    d_ff=64,
    seq_len=48,
    batch_size=4,
    progress=False,
    log_every=1,
    heldout=0.0,
    save_every=0,
    steps=5,
    warmup_steps=2,
)

# Recorded with the trainer of commit 609cc29, before recipes (it branched on objective names; the options were
# TrainConfig fields mlm_unit, mlm_probability, document_masking). Same seed -> same loss sequence.
BEFORE_RECIPES = [
    ("clm", {}, {}, [5.599142551422119, 5.530305862426758, 5.42200231552124, 5.314528942108154, 5.291618347167969]),
    (
        "clm",
        {"document_masking": True},
        {"dropout": 0.1},
        [5.594451427459717, 5.533883094787598, 5.433900356292725, 5.326625823974609, 5.306727886199951],
    ),
    ("mlm", {}, {}, [5.5433478355407715, 5.39036750793457, 5.432692050933838, 5.25860071182251, 5.306469440460205]),
    (
        "mlm",
        {"unit": "word"},
        {},
        [5.536727428436279, 5.417936325073242, 5.392628192901611, 5.423043251037598, 5.304230213165283],
    ),
    # recorded after the span-budget fix of issue 8 (the span draws changed on purpose; before: 5.5872, 5.3783, ...)
    (
        "mlm",
        {"unit": "span", "probability": 0.3},
        {},
        [5.411902904510498, 5.519618988037109, 5.394956588745117, 5.2183332443237305, 5.324472427368164],
    ),
    ("nsp", {}, {}, [6.207322478294373, 6.1631960272789, 5.996039509773254, 5.996058940887451, 5.9397013783454895]),
    ("sop", {}, {}, [6.280241966247559, 6.194966435432434, 6.092446863651276, 6.09791499376297, 6.093025267124176]),
]


def losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("objective, options, run, expected", BEFORE_RECIPES)
def test_the_original_objectives_train_as_before_recipes(tmp_path, objective, options, run, expected):
    result = train(TrainConfig(objective=objective, options=options, out=str(tmp_path), **TINY, **run))
    # bit-identical on the machine that recorded them; the tolerance only absorbs float summation order elsewhere
    assert losses(result.metrics_path) == pytest.approx(expected, rel=1e-6, abs=0)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_option_is_a_documented_flag_that_collides_with_no_run_flag(name, capsys):
    recipe = OBJECTIVES[name]
    options = options_of(recipe)
    assert all(o.help for o in options), [o.name for o in options if not o.help]
    run_flags = {
        flag
        for action in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions  # type: ignore[union-attr]
        for flag in action.option_strings
        if not action.dest.startswith("option_")
    }
    flags = {"--" + o.name.replace("_", "-") for o in options}
    assert not flags & run_flags
    if recipe.untrainable:
        return
    with pytest.raises(SystemExit):
        cli.main(["train", "--objective", name, "--help"])
    text = capsys.readouterr().out
    for option in options:
        assert "--" + option.name.replace("_", "-") in text
        assert " ".join(option.help.split())[:30] in " ".join(text.split())


def test_flags_become_options_with_their_types():
    args = cli.build_parser("mlm").parse_args(
        ["train", "--objective", "mlm", "--unit", "word", "--probability", "0.4", "--max-predictions", "none"]
    )
    options = cli._flags.objective_options(args, OBJECTIVES["mlm"])
    assert (options["unit"], options["probability"], options["max_predictions"]) == ("word", 0.4, None)
    args = cli.build_parser("clm").parse_args(["train", "--document-masking"])
    assert cli._flags.objective_options(args, OBJECTIVES["clm"]) == {"document_masking": True}


def test_resume_checks_the_options(tmp_path):
    base = dict(TINY, objective="mlm", steps=4, stop_after=2, out=str(tmp_path / "run"))
    train(TrainConfig(**base, options={"unit": "word"}))
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["options"] == {o.name: o.default for o in options_of(OBJECTIVES["mlm"])} | {"unit": "word"}
    with pytest.raises(ValueError, match=r"options: .*'unit': 'word'.*'unit': 'span'"):
        train(TrainConfig(**base, options={"unit": "span"}, resume=True))


@dataclass(frozen=True)
class _WeightedCLM(CausalLM):
    """A test objective: CLM data, but the loss adds a second, scaled copy of itself as its own term."""

    weight: float = 0.5  # scale of the second term


def _weighted_loss(objective, model, batch) -> StepLoss:
    base = lm_step_loss(objective, model, batch)
    twice = base.terms["lm"]
    scaled = type(twice)(loss=objective.weight * twice.loss, num_tokens=twice.num_tokens, num_correct=twice.num_correct)
    targets = twice.num_tokens.float()
    plain = {"lm": twice, "echo": scaled}
    return StepLoss(
        total=base.total + scaled.loss + twice.loss, terms=plain, metrics={"targets": targets}, weights={"lm": 2.0}
    )


class _TaggedTransformer(Transformer):
    """A test architecture with a constructor argument of its own (a ModelSpec kwarg)."""

    def __init__(self, config, tag: str):
        super().__init__(config)
        self.tag = tag


def test_a_new_objective_plugs_in_with_one_registry_entry(tmp_path, monkeypatch):
    recipe = Recipe(
        _WeightedCLM,
        "test: CLM with a second term",
        loss=_weighted_loss,
        model=lambda o: ModelSpec(architecture="tagged", kwargs={"tag": f"w={o.weight}"}),
    )
    monkeypatch.setitem(OBJECTIVES, "weighted_clm", recipe)
    monkeypatch.setitem(MODELS, "tagged", _TaggedTransformer)
    result = train(TrainConfig(objective="weighted_clm", options={"weight": 0.25}, out=str(tmp_path), **TINY))
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert all(r["echo_loss"] == pytest.approx(0.25 * r["lm_loss"]) for r in rows)
    assert all(r["loss"] == pytest.approx(2.25 * r["lm_loss"]) for r in rows)  # weights: lm counts twice in the total
    assert all(r["targets"] == 4 * 47 for r in rows)  # the metric's mean over the steps (log_every=1: one step)
    assert torch.isfinite(torch.tensor([r["loss"] for r in rows])).all()
    model = load_model(tmp_path)  # the architecture and its kwargs come back from config.json
    assert isinstance(model, _TaggedTransformer) and model.tag == "w=0.25"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, r in OBJECTIVES.items() if not r.untrainable))
def test_every_trainable_objective_learns_on_the_builtin_corpus(tmp_path, name):
    """60 steps of a tiny model on the built-in corpus: the mean loss of the last 20 steps is clearly below the
    first 20's (each objective's own loss: the lm term plus any other term of its recipe)."""
    config = TrainConfig(
        objective=name,
        out=str(tmp_path),
        d_model=48,
        n_layers=1,
        n_heads=2,
        d_ff=96,
        seq_len=64,
        batch_size=8,
        steps=60,
        warmup_steps=5,
        lr=3e-3,
        log_every=20,
        save_every=0,
        progress=False,
    )
    result = train(config)
    first, *_, last = losses(result.metrics_path)
    assert math.isfinite(last) and last < first - 0.3, (first, last)
