"""From tokenized documents to tensors: packed blocks (CLM / MLM / span objectives) and sentence tables (NSP / SOP)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._checks import int_rows
from .corpus import Document
from .tokenizers import Tokenizer

__all__ = [
    "PackedBlocks",
    "SentenceTable",
    "pack_documents",
    "sentence_table",
    "tokenize_corpus",
    "tokenize_corpus_words",
    "tokenize_documents",
]


@dataclass
class PackedBlocks:
    """Documents laid end to end, each closed by EOS, cut into equal blocks."""

    input_ids: torch.Tensor  # (N, T) long, token ids; the last block may end in padding
    document_ids: torch.Tensor  # (N, T) long, index of the document each token belongs to (EOS included)
    attention_mask: torch.Tensor  # (N, T) bool, True at real tokens, False at padding
    word_ids: torch.Tensor | None = None  # (N, T) long, word index unique across the stream; -1 = no word


@dataclass
class SentenceTable:
    """Tokenized sentences, one per row, grouped by document: the input of NSP / SOP."""

    input_ids: torch.Tensor  # (S, L) long, sentence tokens, right-padded with pad_id
    lengths: torch.Tensor  # (S,) long, number of real tokens of each row (>= 1)
    document_ids: torch.Tensor  # (S,) long, document of each row: 0, 1, 2, ... non-decreasing, no gaps
    word_ids: torch.Tensor | None = None  # (S, L) long, word index of each token in its sentence, -1 = no word / padding


def _check_id(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def pack_documents(
    documents: Sequence[Sequence[int]],
    block_size: int,
    eos_id: int,
    *,
    pad_id: int,
    word_ids: Sequence[Sequence[int]] | None = None,
    drop_last: bool = False,
) -> PackedBlocks:
    """Concatenate documents, each followed by ``eos_id``, and cut the stream into blocks of ``block_size``.

    Document ids count the documents (0, 1, 2, ...); the EOS closing a
    document belongs to it. Word ids (optional, one per token, -1 for no
    word, counted from 0 within each document as :meth:`Tokenizer.encode_words`
    gives them) are shifted by the number of words of the documents before, so
    a word id names one word of the whole stream; EOS gets -1. The final,
    partial block is padded with ``pad_id`` (``attention_mask`` False,
    document id ``len(documents)``, a fresh id, word id -1), or dropped when
    ``drop_last``. An empty document still contributes its EOS.

    Worked example (``eos_id=2``, ``pad_id=0``, ``block_size=4``)::

        documents       [[7, 8, 9], [5]]           word_ids [[0, 0, 1], [0]]
        stream          7 8 9 EOS 5 EOS
        input_ids       [[7, 8, 9, 2], [5, 2, 0, 0]]
        document_ids    [[0, 0, 0, 0], [1, 1, 2, 2]]
        attention_mask  [[T, T, T, T], [T, T, F, F]]
        word_ids        [[0, 0, 1, -1], [2, -1, -1, -1]]

    >>> pack_documents([[7, 8, 9], [5]], 4, eos_id=2, pad_id=0).document_ids
    tensor([[0, 0, 0, 0],
            [1, 1, 2, 2]])
    """
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"pack_documents: block_size must be a positive int, got {block_size!r}")
    _check_id(eos_id, "pack_documents: eos_id")
    _check_id(pad_id, "pack_documents: pad_id")
    tokens, lengths = int_rows(documents, "pack_documents: documents")  # (n,), (D,)
    D = lengths.numel()
    if D == 0:
        raise ValueError("pack_documents: documents is empty")
    if tokens.numel() and int(tokens.min()) < 0:
        raise ValueError(f"pack_documents: documents hold a negative token id {int(tokens.min())}")
    doc_of_token = torch.repeat_interleave(torch.arange(D), lengths)  # (n,) document of each token
    # each earlier document added one EOS, so token k moves right by its document index
    position = torch.arange(tokens.numel()) + doc_of_token  # (n,) place in the stream
    S = tokens.numel() + D  # stream length, EOS included
    stream = torch.full((S,), eos_id, dtype=torch.long)  # (S,)
    stream[position] = tokens
    doc_of_position = torch.repeat_interleave(torch.arange(D), lengths + 1)  # (S,)

    words = None
    if word_ids is not None:
        w, w_lengths = int_rows(word_ids, "pack_documents: word_ids")  # (n,), (D,)
        if w_lengths.numel() != D or not torch.equal(w_lengths, lengths):
            raise ValueError(
                "pack_documents: word_ids must have one entry per token of each document; lengths differ "
                f"(documents: {lengths.tolist()[:8]}..., word_ids: {w_lengths.tolist()[:8]}...)"
            )
        if w.numel() and int(w.min()) < -1:
            raise ValueError(f"pack_documents: word_ids must be >= -1, got {int(w.min())}")
        # words per document = largest word id + 1, so shifted ids never collide
        per_doc = torch.full((D,), -1, dtype=torch.long).scatter_reduce(0, doc_of_token, w, "amax") + 1  # (D,)
        offset = per_doc.cumsum(0) - per_doc  # (D,) words in earlier documents
        shifted = torch.where(w >= 0, w + offset[doc_of_token], w)  # (n,)
        words = torch.full((S,), -1, dtype=torch.long)  # (S,) EOS: -1
        words[position] = shifted

    n_blocks = S // block_size if drop_last else -(-S // block_size)
    if n_blocks == 0:
        raise ValueError(
            f"pack_documents: the stream has {S} tokens (EOS included), fewer than block_size={block_size}, "
            "and drop_last=True leaves no block"
        )
    total = n_blocks * block_size
    real = torch.ones(total, dtype=torch.bool)  # (N*T,)
    real[S:] = False

    def blocks(values: torch.Tensor, fill: int) -> torch.Tensor:
        out = torch.full((total,), fill, dtype=torch.long)
        keep = min(S, total)
        out[:keep] = values[:keep]
        return out.view(n_blocks, block_size)  # (N, T)

    return PackedBlocks(
        input_ids=blocks(stream, pad_id),
        document_ids=blocks(doc_of_position, D),
        attention_mask=real.view(n_blocks, block_size),
        word_ids=None if words is None else blocks(words, -1),
    )


def sentence_table(
    documents: Sequence[Sequence[Sequence[int]]],
    pad_id: int,
    max_length: int | None = None,
    *,
    word_ids: Sequence[Sequence[Sequence[int]]] | None = None,
) -> SentenceTable:
    """One row per tokenized sentence, right-padded, with the index of its document.

    Sentences longer than ``max_length`` are cut to their first ``max_length``
    tokens; empty sentences are dropped, then documents with no sentence left,
    and the remaining documents are numbered 0, 1, 2, ... in order.

    Worked example (``pad_id=0``, ``max_length=3``)::

        documents     [[[5, 6], [7, 8, 9, 10]], [[]], [[11]]]
        input_ids     [[5, 6, 0], [7, 8, 9], [11, 0, 0]]
        lengths       [2, 3, 1]
        document_ids  [0, 0, 1]        # the second document had no token

    >>> sentence_table([[[5, 6], [7, 8, 9, 10]], [[]], [[11]]], pad_id=0, max_length=3).input_ids
    tensor([[ 5,  6,  0],
            [ 7,  8,  9],
            [11,  0,  0]])
    """
    _check_id(pad_id, "sentence_table: pad_id")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0):
        raise ValueError(f"sentence_table: max_length must be a positive int or None, got {max_length!r}")
    if isinstance(documents, (str, bytes, torch.Tensor)) or not isinstance(documents, Sequence):
        raise TypeError(f"sentence_table: documents must be a sequence of documents, got {type(documents).__name__}")
    rows: list[Sequence[int]] = []
    word_rows: list[Sequence[int]] = []
    owners: list[int] = []
    kept = 0
    if word_ids is not None and len(word_ids) != len(documents):
        raise ValueError(f"sentence_table: word_ids must have one entry per document ({len(documents)}), got {len(word_ids)}")
    for d, document in enumerate(documents):  # a loop over documents and sentences, never over tokens
        sentences = [s[:max_length] for s in document if len(s) > 0]
        if word_ids is not None:
            word_rows.extend(w[:max_length] for s, w in zip(document, word_ids[d]) if len(s) > 0)
        if sentences:
            rows.extend(sentences)
            owners.extend([kept] * len(sentences))
            kept += 1
    if not rows:
        raise ValueError("sentence_table: no sentence has a token (documents empty or all sentences empty)")
    tokens, lengths = int_rows(rows, "sentence_table: documents")  # (n,), (S,)
    L = int(lengths.max())
    real = torch.arange(L)[None, :] < lengths[:, None]  # (S, L)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (S, L)
    input_ids[real] = tokens  # row-major order matches the concatenation
    words = None
    if word_ids is not None:
        w, w_lengths = int_rows(word_rows, "sentence_table: word_ids")
        if not torch.equal(w_lengths, lengths):
            raise ValueError("sentence_table: word_ids must have one entry per token of each sentence; lengths differ")
        words = torch.full((len(rows), L), -1, dtype=torch.long)  # (S, L)
        words[real] = w
    return SentenceTable(
        input_ids=input_ids, lengths=lengths, document_ids=torch.tensor(owners, dtype=torch.long), word_ids=words
    )


def _check_docs(docs: object, tok: object, who: str, method: str) -> None:
    if not isinstance(docs, Sequence) or isinstance(docs, str):
        raise TypeError(f"{who}: docs must be a list of documents (lists of sentences), got {type(docs).__name__}")
    if isinstance(tok, (str, bytes)) or not callable(getattr(tok, method, None)):
        raise TypeError(
            f"{who}: tok must be a Tokenizer with .{method}() (ByteTokenizer, HFTokenizer; see load_tokenizer), "
            f"got {type(tok).__name__} {str(tok)[:60]!r}"
        )


def tokenize_corpus(docs: Sequence[Document], tok: Tokenizer) -> list[list[list[int]]]:
    """Token ids of every sentence of every document: the input of :func:`sentence_table`.

    >>> from lmobjectives.data.tokenizers import ByteTokenizer
    >>> tokenize_corpus([["Hi.", "Yo!"]], ByteTokenizer())
    [[[72, 105, 46], [89, 111, 33]]]
    """
    _check_docs(docs, tok, "tokenize_corpus", "encode")
    return [[tok.encode(sentence) for sentence in doc] for doc in docs]


def tokenize_corpus_words(docs: Sequence[Document], tok: Tokenizer) -> tuple[list[list[list[int]]], list[list[list[int]]]]:
    """:func:`tokenize_corpus` plus each sentence's word ids (``Tokenizer.encode_words``): ``sentence_table``'s inputs.

    >>> from lmobjectives.data.tokenizers import ByteTokenizer
    >>> tokenize_corpus_words([["Hi yo."]], ByteTokenizer())
    ([[[72, 105, 32, 121, 111, 46]]], [[[0, 0, -1, 1, 1, 1]]])
    """
    _check_docs(docs, tok, "tokenize_corpus_words", "encode_words")
    pairs = [[tok.encode_words(sentence) for sentence in doc] for doc in docs]
    return [[ids for ids, _ in doc] for doc in pairs], [[words for _, words in doc] for doc in pairs]


def tokenize_documents(
    docs: Sequence[Document], tok: Tokenizer, *, with_words: bool = False
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Token ids of each document (its sentences joined by one space), and optionally their word ids.

    Returns ``(ids, word_ids)``: ``word_ids`` is ``None`` unless ``with_words``,
    else one list per document as :meth:`Tokenizer.encode_words` gives it.
    The two lists feed :func:`pack_documents` directly.

    >>> from lmobjectives.data.tokenizers import ByteTokenizer
    >>> tokenize_documents([["Hi.", "Yo!"]], ByteTokenizer(), with_words=True)
    ([[72, 105, 46, 32, 89, 111, 33]], [[0, 0, 0, -1, 1, 1, 1]])
    """
    _check_docs(docs, tok, "tokenize_documents", "encode_words" if with_words else "encode")
    texts = [" ".join(doc) for doc in docs]
    if not with_words:
        return [tok.encode(text) for text in texts], None
    pairs = [tok.encode_words(text) for text in texts]
    return [ids for ids, _ in pairs], [words for _, words in pairs]
