"""The run folder's config.json: one writer, one reader, the model built from it."""

from __future__ import annotations

import json

import pytest

from lmobjectives.models import ElectraModel, MultiTokenTransformer, Transformer
from lmobjectives.training import RunConfig, build_model, is_run, read_run_config
from lmobjectives.training.run_folder import CONFIG_FILE, write_run_config

MODEL = {"vocab_size": 40, "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_seq_len": 16}
MARKER = {"format": "lmobjectives-run", "format_version": 1}  # what marks a config.json as a run's


def test_what_is_written_is_read_back(tmp_path):
    run = RunConfig(train={"objective": "clm", "steps": 3, "heldout": 0.1}, model=MODEL, split={"documents": 5})
    path = write_run_config(tmp_path, run)
    assert path == tmp_path / CONFIG_FILE and is_run(tmp_path)
    assert read_run_config(tmp_path) == run
    config = read_run_config(tmp_path).train_config(out=str(tmp_path))
    assert (config.objective, config.steps, config.heldout, config.out) == ("clm", 3, 0.1, str(tmp_path))
    assert isinstance(build_model(run), Transformer)


def test_a_run_saved_before_a_field_existed_gets_its_value_then(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**MARKER, "train": {"objective": "clm"}, "model": MODEL}))
    saved = read_run_config(tmp_path)
    assert saved.architecture == "transformer" and saved.train_config().heldout == 0.0  # all documents trained on


@pytest.mark.parametrize(("old", "cls"), [("electra", ElectraModel), ("mtp", MultiTokenTransformer)])
def test_runs_saved_with_the_old_architecture_names_still_load(tmp_path, old, cls):
    (tmp_path / CONFIG_FILE).write_text(
        json.dumps({**MARKER, "train": {"objective": "clm"}, "model": MODEL, "architecture": old})
    )
    assert isinstance(build_model(read_run_config(tmp_path)), cls)


def test_a_folder_that_is_not_a_run_is_named(tmp_path):
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"lr": 0.1}))
    with pytest.raises(ValueError, match="is not an lmobj run"):
        read_run_config(tmp_path)
