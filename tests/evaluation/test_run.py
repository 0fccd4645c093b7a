"""load_run round trip, the held-out split (disjoint, stable, never trained on), the run's batches."""

from __future__ import annotations

import json

import pytest
import torch

from lmobjectives.data.corpus import builtin_corpus
from lmobjectives.data.heldout import document_key, heldout_split, is_heldout
from lmobjectives.evaluation import heldout_batches, heldout_blocks, load_run, run_batches
from lmobjectives.training.run_folder import load_model


def test_load_run_round_trip(runs):
    run = runs("mlm")
    saved = json.loads((run.out_dir / "config.json").read_text())
    assert run.config.to_dict() | {"out": saved["train"]["out"]} == saved["train"] | {"resume": False}
    assert run.step == 4 and run.reads == "bidirectional" and not run.model.training
    reference = load_model(run.out_dir)
    for (name, a), (_, b) in zip(run.model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert run.tokenizer.vocab == run.objective.vocab
    assert saved["split"]["heldout_documents"] == len(run.heldout) > 0
    assert [runs(n).reads for n in ("clm", "nsp", "t5")] == ["causal", "bidirectional", "encoder_decoder"]


def test_load_run_errors(tmp_path):
    with pytest.raises(ValueError, match="is not an lmobj run"):
        load_run(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"format": "lmobjectives-run", "format_version": 1, "train": {"objective": "clm"}, "model": {}})
    )
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_run(tmp_path)


def test_heldout_split_is_disjoint_stable_and_per_document():
    corpus = builtin_corpus()
    train, held = heldout_split(corpus, 0.05)
    keys = {document_key(d) for d in held}
    assert not keys & {document_key(d) for d in train} and len(train) + len(held) == len(corpus)
    assert 4 <= len(held) <= 20  # 205 documents at 5 %: ~10 expected (measured: 11)
    assert heldout_split(corpus[::-1], 0.05)[1] == held[::-1]  # a document's side ignores the others
    assert set(map(document_key, heldout_split(corpus[:50], 0.05)[1])) == set(map(document_key, corpus[:50])) & keys
    resegmented = [[" ".join(d)] for d in held]  # the same text split into sentences differently
    assert all(is_heldout(d, 0.05) for d in resegmented)
    assert set(map(document_key, heldout_split(corpus, 0.02)[1])) <= keys  # a smaller fraction holds out a subset
    with pytest.raises(ValueError, match=r"heldout must lie in \[0, 1\), got 1.0"):
        heldout_split(corpus, 1.0)


def test_training_never_sees_a_heldout_document(runs):
    run = runs("clm")
    stream = run_batches(run)
    text = run.tokenizer.decode(stream.input_ids[stream.extras["attention_mask"]].tolist())
    sentences = [s for d in run.heldout for s in d if len(s) > 60]
    assert sentences and not any(s in text for s in sentences)
    assert all(s in text for d in run.documents[:5] for s in d)  # and the training documents are there
    batch = stream(0)
    assert batch.input_ids.shape == (run.config.batch_size, run.config.seq_len)


def test_heldout_batches_and_blocks(runs):
    run = runs("mlm")
    batches = heldout_batches(run)
    assert 0 < len(batches) <= run.config.eval_batches and batches[0].labels.shape == batches[0].input_ids.shape
    blocks = heldout_blocks(run, max_blocks=3)
    assert blocks.shape == (3, run.config.seq_len)
    assert torch.equal(blocks, heldout_blocks(runs("clm"), max_blocks=3))  # the same text whatever the objective
    first = run.tokenizer.decode(blocks[0].tolist())
    assert first.startswith(" ".join(run.heldout[0])[:20])
