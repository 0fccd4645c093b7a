"""Static masking (BERT's dupe_factor) on the block stream: each block cycles through dupe_factor fixed corruptions."""

import pytest
import torch

from lmobjectives import Vocab, get_objective
from lmobjectives.recipes import OBJECTIVES
from lmobjectives.training.streams import BlockStream, build_stream

V = Vocab(size=40, pad_id=0, cls_id=1, sep_id=2, mask_id=3, eos_id=4)


def stream(dupe_factor, n=10, batch_size=4):
    ids = torch.randint(5, 40, (n, 16), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids, dtype=torch.bool)
    return BlockStream(
        get_objective("mlm", vocab=V, probability=0.3),
        ids,
        {"attention_mask": mask},
        batch_size=batch_size,
        seed=1,
        dupe_factor=dupe_factor,
    )


def by_example(s, steps):
    """{(example, epoch): labels row} over the first ``steps`` steps."""
    from lmobjectives.training.streams import epoch_indices

    seen = {}
    for step in range(steps):
        idx = epoch_indices(s.seed, step * s.batch_size, s.batch_size, s.num_examples)
        b = s(step)
        for i, (e, row) in enumerate(zip(idx.tolist(), b.labels)):
            epoch = (step * s.batch_size + i) // s.num_examples
            seen[(e, epoch)] = row
    return seen


def test_each_block_cycles_through_dupe_factor_masks():
    s = stream(dupe_factor=2)
    seen = by_example(s, steps=15)  # 60 positions = 6 epochs of 10 blocks; steps straddle epoch boundaries
    for e in range(10):
        rows = [seen[(e, epoch)] for epoch in range(6)]
        assert torch.equal(rows[0], rows[2]) and torch.equal(rows[2], rows[4])
        assert torch.equal(rows[1], rows[3]) and torch.equal(rows[3], rows[5])
    assert any(not torch.equal(seen[(e, 0)], seen[(e, 1)]) for e in range(10))
    # pure function of (seed, step): a fresh stream gives the same batch at any step
    assert torch.equal(stream(dupe_factor=2)(7).input_ids, s(7).input_ids)


def test_dynamic_is_unchanged_and_changes_every_epoch():
    s = stream(dupe_factor=None)
    seen = by_example(s, steps=10)
    assert sum(not torch.equal(seen[(e, 0)], seen[(e, 2)]) for e in range(10)) >= 8


def test_bad_dupe_factor():
    with pytest.raises(
        ValueError, match=r"dupe_factor \(static masking; None: dynamic\) must be a positive int, got 0"
    ):
        stream(dupe_factor=0)
    with pytest.raises(
        ValueError, match="dupe_factor=2 .*applies to objectives on packed blocks; 'nsp' reads 'sentences'"
    ):
        build_stream(OBJECTIVES["nsp"], None, [["a b."]], None, seq_len=8, batch_size=2, seed=0, dupe_factor=2)
