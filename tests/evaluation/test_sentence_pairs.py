"""NSP/SOP evaluation: every held-out pair once, label shares, balanced accuracy, the skew warning."""

from __future__ import annotations

import pytest
import torch

from lmobjectives.evaluation import NotApplicable, pair_batches, pair_metrics, sentence_pairs


def test_pair_metrics_worked_example():
    m = pair_metrics(torch.tensor([1, 1, 1, 1, 0]), torch.tensor([1, 1, 1, 0, 0]))
    assert m == {"accuracy": 0.8, "balanced_accuracy": 0.75, "label_share": 0.6, "majority_share": 0.6, "pairs": 5}


def test_balanced_subset_has_even_labels():
    labels = torch.tensor([1] * 9 + [0] * 3)
    m = pair_metrics(
        torch.ones(12, dtype=torch.long), labels, balanced=True, generator=torch.Generator().manual_seed(0)
    )
    assert m["pairs"] == 6 and m["label_share"] == 0.5 and m["accuracy"] == 0.5 == m["balanced_accuracy"]


def test_pairs_cover_every_heldout_document_once(runs):
    run = runs("nsp")
    for kind in ("nsp", "sop"):
        batches = list(pair_batches(run, kind, batch_size=5))
        assert all(b.input_ids.shape[0] <= 5 for b in batches)
        assert all(b.sentence_labels is not None for b in batches)
        again = list(pair_batches(run, kind, batch_size=5))  # fixed seeds: the same pairs every time
        assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(batches, again))
    # one pass over every document: NSP gives at least one pair per held-out document with a sentence
    pairs = sum(b.input_ids.shape[0] for b in pair_batches(run, "nsp"))
    assert pairs >= len(run.heldout)


def test_both_kinds_with_shares_and_a_warning_when_one_label_dominates(runs):
    result = sentence_pairs(runs("nsp"))
    assert list(result.metrics)[0] == "nsp_balanced_accuracy" and result.info["trained_on"] == "nsp"
    for kind in ("nsp", "sop"):
        info = result.info[kind]
        assert info["pairs"] > 0 and info["majority_share"] == max(info["label_share"], 1 - info["label_share"])
        assert result.metrics[f"{kind}_accuracy"] == info["accuracy"]
        se = 0.5 / info["pairs"] ** 0.5
        assert (
            f"{info['pairs']} {kind.upper()} pairs (standard error of an accuracy up to ±{se:.3f})"
            in result.info["procedure"]
        )
    skewed = [k for k in ("nsp", "sop") if result.info[k]["majority_share"] > 0.8]
    assert len(result.warnings) == len(skewed) and all("balanced accuracy" in w for w in result.warnings)
    assert "nsp" in skewed  # at seq_len 32 almost every chunk is one sentence, which always takes a random B
    balanced = sentence_pairs(runs("nsp"), balanced=True)
    assert balanced.info["nsp"]["label_share"] == 0.5 and not balanced.warnings


def test_not_applicable_without_a_sentence_head(runs):
    with pytest.raises(NotApplicable, match="no sentence-pair head"):
        sentence_pairs(runs("mlm"))
