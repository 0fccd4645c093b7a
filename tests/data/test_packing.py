"""Packing documents into blocks, sentence tables, and tokenizing corpora."""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives.data import (
    ByteTokenizer,
    PackedBlocks,
    SentenceTable,
    builtin_corpus,
    pack_documents,
    sentence_table,
    tokenize_corpus,
    tokenize_documents,
)

EOS, PAD = 2, 0

# --------------------------------------------------------------------------- pack_documents


def test_pack_documents_worked_example():
    out = pack_documents([[7, 8, 9], [5]], 4, eos_id=EOS, pad_id=PAD, word_ids=[[0, 0, 1], [0]])
    assert isinstance(out, PackedBlocks)
    assert out.input_ids.tolist() == [[7, 8, 9, 2], [5, 2, 0, 0]]
    assert out.document_ids.tolist() == [[0, 0, 0, 0], [1, 1, 2, 2]]
    assert out.attention_mask.tolist() == [[True, True, True, True], [True, True, False, False]]
    assert out.word_ids is not None and out.word_ids.tolist() == [[0, 0, 1, -1], [2, -1, -1, -1]]
    assert out.input_ids.dtype == out.document_ids.dtype == out.word_ids.dtype == torch.long
    assert out.attention_mask.dtype == torch.bool


def test_pack_documents_exact_fit_drop_last_and_empty_document():
    out = pack_documents([[7, 8, 9], [5]], 3, eos_id=EOS, pad_id=PAD)
    assert out.input_ids.tolist() == [[7, 8, 9], [2, 5, 2]]
    assert out.document_ids.tolist() == [[0, 0, 0], [0, 1, 1]]
    assert out.attention_mask.all() and out.word_ids is None
    dropped = pack_documents([[7, 8, 9], [5]], 4, eos_id=EOS, pad_id=PAD, drop_last=True)
    assert dropped.input_ids.tolist() == [[7, 8, 9, 2]] and dropped.attention_mask.all()
    # an empty document still has its EOS; word ids skip documents without words
    out = pack_documents([[], [4, 4], []], 5, eos_id=EOS, pad_id=PAD, word_ids=[[], [0, -1], []])
    assert out.input_ids.tolist() == [[2, 4, 4, 2, 2]]
    assert out.document_ids.tolist() == [[0, 1, 1, 1, 2]]
    assert out.word_ids.tolist() == [[-1, 0, -1, -1, -1]]  # type: ignore[union-attr]


def test_pack_documents_accepts_tensors_and_pad_equal_to_eos():
    out = pack_documents([torch.tensor([7, 8]), [9]], 3, eos_id=EOS, pad_id=EOS)
    assert out.input_ids.tolist() == [[7, 8, 2], [9, 2, 2]]
    assert out.attention_mask.tolist() == [[True, True, True], [True, True, False]]


def test_pack_documents_errors():
    with pytest.raises(ValueError, match="block_size"):
        pack_documents([[1]], 0, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="eos_id"):
        pack_documents([[1]], 4, eos_id=-1, pad_id=PAD)
    with pytest.raises(ValueError, match="empty"):
        pack_documents([], 4, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="drop_last"):
        pack_documents([[1]], 4, eos_id=EOS, pad_id=PAD, drop_last=True)
    with pytest.raises(ValueError, match="word_ids"):
        pack_documents([[1, 2]], 4, eos_id=EOS, pad_id=PAD, word_ids=[[0]])
    with pytest.raises(TypeError, match="ints"):
        pack_documents([[1.5]], 4, eos_id=EOS, pad_id=PAD)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="negative"):
        pack_documents([[-3]], 4, eos_id=EOS, pad_id=PAD)


documents_strategy = st.lists(st.lists(st.integers(3, 20), max_size=9), min_size=1, max_size=8)


@settings(max_examples=100, deadline=None)
@given(documents=documents_strategy, block_size=st.integers(1, 10), drop_last=st.booleans(), seed=st.integers(0, 2**16))
def test_pack_documents_invariants(documents, block_size, drop_last, seed):
    rng = torch.Generator().manual_seed(seed)
    # word ids as a tokenizer gives them: -1 or a non-decreasing run 0, 1, 2, ...
    word_ids = []
    for doc in documents:
        starts = torch.rand(len(doc), generator=rng) < 0.5
        blank = torch.rand(len(doc), generator=rng) < 0.2
        words = (starts.long().cumsum(0) - 1).clamp(min=0)
        word_ids.append(torch.where(blank, -1, words).tolist())
    stream_length = sum(len(d) + 1 for d in documents)
    if drop_last and stream_length < block_size:
        with pytest.raises(ValueError, match="drop_last"):
            pack_documents(documents, block_size, EOS, pad_id=PAD, word_ids=word_ids, drop_last=True)
        return
    out = pack_documents(documents, block_size, EOS, pad_id=PAD, word_ids=word_ids, drop_last=drop_last)
    N, T = out.input_ids.shape
    assert T == block_size
    assert N == (stream_length // block_size if drop_last else -(-stream_length // block_size))
    real = out.attention_mask.flatten()
    assert real.tolist() == sorted(real.tolist(), reverse=True)  # padding only at the very end
    tokens = out.input_ids.flatten()[real].tolist()
    docs = out.document_ids.flatten()[real]
    words = out.word_ids.flatten()[real]  # type: ignore[union-attr]
    assert (out.input_ids.flatten()[~real] == PAD).all()
    assert (out.document_ids.flatten()[~real] == len(documents)).all()
    assert (out.word_ids.flatten()[~real] == -1).all()  # type: ignore[union-attr]
    # splitting the real tokens at EOS gives back the documents (all of them without drop_last)
    expected_stream = [t for d in documents for t in [*d, EOS]][: len(tokens)]
    assert tokens == expected_stream
    if not drop_last:
        assert len(tokens) == stream_length
    # document ids: the running index, constant up to and including each EOS
    is_eos = torch.tensor(tokens) == EOS
    assert torch.equal(docs, is_eos.long().cumsum(0) - is_eos.long())
    # word ids: -1 at EOS, original ids shifted by the words of earlier documents
    expected_words, offset = [], 0
    for w in word_ids:
        expected_words += [x + offset if x >= 0 else -1 for x in w] + [-1]
        offset += max(w, default=-1) + 1
    assert words.tolist() == expected_words[: len(tokens)]


# --------------------------------------------------------------------------- sentence_table


def test_sentence_table_worked_example():
    out = sentence_table([[[5, 6], [7, 8, 9, 10]], [[]], [[11]]], pad_id=0, max_length=3)
    assert isinstance(out, SentenceTable)
    assert out.input_ids.tolist() == [[5, 6, 0], [7, 8, 9], [11, 0, 0]]
    assert out.lengths.tolist() == [2, 3, 1]
    assert out.document_ids.tolist() == [0, 0, 1]
    untruncated = sentence_table([[[5, 6], [7, 8, 9, 10]], [[11]]], pad_id=1)
    assert untruncated.input_ids.tolist() == [[5, 6, 1, 1], [7, 8, 9, 10], [11, 1, 1, 1]]
    assert untruncated.lengths.tolist() == [2, 4, 1]


@settings(max_examples=80, deadline=None)
@given(
    documents=st.lists(st.lists(st.lists(st.integers(1, 9), max_size=6), max_size=4), min_size=1, max_size=6),
    max_length=st.one_of(st.none(), st.integers(1, 5)),
)
def test_sentence_table_invariants(documents, max_length):
    kept = [[s[:max_length] for s in d if s] for d in documents]
    kept = [d for d in kept if d]
    if not kept:
        with pytest.raises(ValueError, match="no sentence"):
            sentence_table(documents, pad_id=0, max_length=max_length)
        return
    out = sentence_table(documents, pad_id=0, max_length=max_length)
    rows = [s for d in kept for s in d]
    assert [row[:n] for row, n in zip(out.input_ids.tolist(), out.lengths.tolist())] == rows
    assert out.document_ids.tolist() == [i for i, d in enumerate(kept) for _ in d]
    assert out.input_ids.shape[1] == max(len(r) for r in rows)


def test_sentence_table_errors():
    with pytest.raises(ValueError, match="max_length"):
        sentence_table([[[1]]], pad_id=0, max_length=0)
    with pytest.raises(ValueError, match="pad_id"):
        sentence_table([[[1]]], pad_id=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no sentence"):
        sentence_table([[[]], []], pad_id=0)


# --------------------------------------------------------------------------- tokenizing


def test_tokenize_documents_and_corpus_literal():
    tok = ByteTokenizer()
    docs = [["Hi there.", "Yo!"], ["Ok."]]
    ids, words = tokenize_documents(docs, tok, with_words=True)
    assert ids == [list(b"Hi there. Yo!"), list(b"Ok.")]
    assert words == [[0, 0, -1, 1, 1, 1, 1, 1, 1, -1, 2, 2, 2], [0, 0, 0]]
    assert tokenize_documents(docs, tok) == (ids, None)
    assert tokenize_corpus(docs, tok) == [[list(b"Hi there."), list(b"Yo!")], [list(b"Ok.")]]
    with pytest.raises(TypeError, match="tok"):
        tokenize_documents(docs, "byte")  # type: ignore[arg-type]


def test_builtin_corpus_end_to_end_is_fast():
    tok = ByteTokenizer()
    docs = builtin_corpus()
    start = time.perf_counter()
    ids, words = tokenize_documents(docs, tok, with_words=True)
    blocks = pack_documents(ids, 128, tok.vocab.eos_id, pad_id=tok.vocab.pad_id, word_ids=words)
    table = sentence_table(tokenize_corpus(docs, tok), tok.vocab.pad_id, max_length=64)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"tokenizing and packing the builtin corpus took {elapsed:.1f}s"
    assert blocks.input_ids.shape[1] == 128 and int(blocks.input_ids.max()) < tok.vocab.size
    assert int((blocks.input_ids == tok.vocab.eos_id).sum()) == len(docs)
    assert table.input_ids.shape == (sum(len(d) for d in docs), 64)
    assert int(table.document_ids[-1]) == len(docs) - 1
    # the vectorised word ids agree with the per-text ones on packed blocks, inside each document
    derived = tok.word_ids(blocks.input_ids)  # (N, T) counted per row
    assert torch.equal(derived >= 0, blocks.word_ids >= 0)  # type: ignore[operator]
