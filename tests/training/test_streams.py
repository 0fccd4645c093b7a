"""Data order and corruption are pure functions of (seed, step)."""

from __future__ import annotations

import torch

from lmobjectives import Vocab, get_objective
from lmobjectives.training.streams import BlockStream, SentenceStream, derive_seed, epoch_indices

VOCAB = Vocab(size=20, pad_id=0, cls_id=1, sep_id=2, mask_id=3, eos_id=4)


def test_each_epoch_visits_every_example_once_in_a_new_order():
    n = 7
    idx = epoch_indices(seed=0, start=0, count=3 * n, n=n)
    epochs = idx.view(3, n)
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(n))
    assert not torch.equal(epochs[0], epochs[1])
    # any window is the same slice of that sequence, whatever came before
    torch.testing.assert_close(epoch_indices(0, 5, 10, n), idx[5:15])
    assert not torch.equal(epoch_indices(1, 0, n, n), epochs[0])  # another seed, another order


def test_derive_seed_separates_seed_and_step():
    assert derive_seed(0, "corrupt", 1) != derive_seed(1, "corrupt", 0)
    assert derive_seed(0, "corrupt", 1) == derive_seed(0, "corrupt", 1)
    assert 0 <= derive_seed(123, "x") < 2**63


def test_block_stream_is_a_function_of_the_step():
    ids = torch.randint(5, 20, (10, 6), generator=torch.Generator().manual_seed(0))
    stream = BlockStream(
        get_objective("mlm", vocab=VOCAB, probability=0.5),
        ids,
        {"attention_mask": torch.ones_like(ids, dtype=torch.bool)},
        batch_size=4,
        seed=3,
    )
    a, b, c = stream(2), stream(2), stream(3)
    torch.testing.assert_close(a.input_ids, b.input_ids)
    torch.testing.assert_close(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)
    assert stream.position(5) == {
        "unit": "block",
        "num_examples": 10,
        "fingerprint": stream.fingerprint,
        "next_example": 20,
        "epoch": 2,
        "dupe_factor": None,  # dynamic corruption
    }


def test_sentence_stream_is_a_function_of_the_step_and_keeps_at_most_batch_size_pairs():
    gen = torch.Generator().manual_seed(0)
    n_docs, per_doc = 6, 5
    ids = torch.randint(5, 20, (n_docs * per_doc, 4), generator=gen)
    ids[:, 3] = 0  # padding
    docs = torch.arange(n_docs).repeat_interleave(per_doc)
    stream = SentenceStream(get_objective("nsp", vocab=VOCAB, max_seq_length=12), ids, docs, batch_size=3, seed=0)
    assert 2 <= stream.docs_per_step <= n_docs
    a, b = stream(4), stream(4)
    assert a.input_ids.shape == (3, 12)
    assert a.sentence_labels.shape == (3,)
    torch.testing.assert_close(a.input_ids, b.input_ids)
    torch.testing.assert_close(a.sentence_labels, b.sentence_labels)
