"""Tiny trained runs shared by the evaluation tests (a few steps each: the tests compare the evaluations with
brute-force computations on the same model, so the models need not be good)."""

from __future__ import annotations

import contextlib
import io

import pytest

from lmobjectives.evaluation import load_run
from lmobjectives.training import TrainConfig, train

TINY = dict(
    d_model=32,
    n_layers=1,
    n_heads=2,
    d_ff=64,
    seq_len=32,
    batch_size=4,
    progress=False,
    log_every=2,
    save_every=0,
    steps=4,
    warmup_steps=1,
)


def make_run(directory, objective: str, **overrides):
    with contextlib.redirect_stdout(io.StringIO()):
        train(TrainConfig(objective=objective, out=str(directory), **{**TINY, **overrides}))
    return load_run(directory)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """name -> Run, trained on first use."""
    made: dict = {}
    specs = {
        "clm": ("clm", {}),
        "mlm": ("mlm", {}),
        "nsp": ("nsp", {}),
        "t5": ("span_corruption", {}),
        "ul2": ("ul2", {}),
    }

    def get(name: str):
        if name not in made:
            objective, options = specs[name]
            made[name] = make_run(tmp_path_factory.mktemp(name), objective, options=options)
        return made[name]

    return get
