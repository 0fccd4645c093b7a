"""From tokenized documents to tensors: packed blocks (CLM / MLM / span objectives), sentence tables (NSP / SOP)
and packed chat conversations (SFT)."""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_int, check_positive_int, int_rows
from .chat import conversations_from_documents
from .chat_template import PROMPT, learned_mask, tokenize_conversation
from .corpus import Document
from .sources import is_document
from .tokenizers import Tokenizer

__all__ = [
    "PackedBlocks",
    "PackedConversations",
    "SentenceTable",
    "best_fit_decreasing",
    "pack_chat",
    "pack_conversations",
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
    word_ids: torch.Tensor | None = (
        None  # (S, L) long, word index of each token in its sentence, -1 = no word / padding
    )


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
    check_positive_int(block_size, "pack_documents: block_size")
    check_int(eos_id, "pack_documents: eos_id", low=0)
    check_int(pad_id, "pack_documents: pad_id", low=0)
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
    # inline, not check_int: None (a vocab without a pad id) is a ValueError here, not a TypeError
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"sentence_table: pad_id must be an int >= 0, got {pad_id!r}")
    check_positive_int(max_length, "sentence_table: max_length", allow_none=True)
    if isinstance(documents, (str, bytes, torch.Tensor)) or not isinstance(documents, Sequence):
        raise TypeError(f"sentence_table: documents must be a sequence of documents, got {type(documents).__name__}")
    rows: list[Sequence[int]] = []
    word_rows: list[Sequence[int]] = []
    owners: list[int] = []
    kept = 0
    if word_ids is not None and len(word_ids) != len(documents):
        raise ValueError(
            f"sentence_table: word_ids must have one entry per document ({len(documents)}), got {len(word_ids)}"
        )
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


def tokenize_corpus_words(
    docs: Sequence[Document], tok: Tokenizer
) -> tuple[list[list[list[int]]], list[list[list[int]]]]:
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


# ----------------------------------------------------------------------------- conversations


@dataclass
class PackedConversations:
    """Tokenised conversations packed into rows; a conversation never spans two rows."""

    input_ids: torch.Tensor  # (N, T) long, token ids, each row right-padded with pad_id
    roles: torch.Tensor  # (N, T) long, PROMPT / ASSISTANT / COMPLETION per token (PROMPT at padding)
    document_ids: torch.Tensor  # (N, T) long, slot of the conversation in its row: 0, 1, ...; padding: a fresh id
    attention_mask: torch.Tensor  # (N, T) bool, True at real tokens
    rows: list[list[int]]  # rows[r]: indices of the conversations in row r, in their order along the row


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of at most ``capacity``, best-fit decreasing: items longest first (ties: lower index first), each into
    the open bin it fills most tightly (ties: the earliest opened), or a new bin. ``bins[b]`` lists item indices
    in the order they were placed.

    >>> best_fit_decreasing([3, 6, 2, 4], 8)
    [[1, 2], [3, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (room left, bin), sorted: the first with room >= n is the best fit
    bins: list[list[int]] = []
    for i in order:  # one step per conversation (data preparation), never per token
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - n, b))
    return bins


def pack_conversations(
    input_ids: Sequence[Sequence[int]], roles: Sequence[Sequence[int]], row_length: int, *, pad_id: int
) -> PackedConversations:
    """Pack tokenised conversations into rows of ``row_length`` tokens, best-fit decreasing.

    Best-fit decreasing (as TRL's ``packing_strategy="bfd"``) fills rows far better than first-come packing
    (few rows hold only a short conversation) and, unlike cutting a stream into blocks, never splits a
    conversation. Each conversation must fit a row (truncate longer ones first). Within a row, conversations
    take document ids 0, 1, 2, ... in the order they were placed; padding gets the next id (never a
    conversation's), ``attention_mask`` False, role :data:`PROMPT`.

    Worked example (``row_length=8``, ``pad_id=0``; lengths 3, 6, 2, 4; conversation ``c`` holds tokens
    ``10c, 10c+1, ...`` and ends in EOS = 2)::

        conversations   [10 11 2]  [20 21 22 23 24 2]  [30 2]  [40 41 42 2]
        best fit        6 -> row 0 (room 2); 4 -> row 1 (room 4); 3 -> row 1 (room 1); 2 -> row 0 (room 0)
        input_ids       [[20, 21, 22, 23, 24,  2, 30,  2],
                         [40, 41, 42,  2, 10, 11,  2,  0]]
        document_ids    [[ 0,  0,  0,  0,  0,  0,  1,  1],
                         [ 0,  0,  0,  0,  1,  1,  1,  2]]
        rows            [[1, 2], [3, 0]]

    >>> convs = [[10, 11, 2], [20, 21, 22, 23, 24, 2], [30, 2], [40, 41, 42, 2]]
    >>> packed = pack_conversations(convs, [[0] * len(c) for c in convs], 8, pad_id=0)
    >>> packed.input_ids
    tensor([[20, 21, 22, 23, 24,  2, 30,  2],
            [40, 41, 42,  2, 10, 11,  2,  0]])
    """
    check_positive_int(row_length, "pack_conversations: row_length")
    check_int(pad_id, "pack_conversations: pad_id", low=0)
    tokens, lengths = int_rows(input_ids, "pack_conversations: input_ids")  # (n,), (C,)
    role_values, role_lengths = int_rows(roles, "pack_conversations: roles")  # (n,), (C,)
    C = lengths.numel()
    if C == 0:
        raise ValueError("pack_conversations: input_ids is empty; need at least one conversation")
    if not torch.equal(lengths, role_lengths):
        bad = int((lengths != role_lengths).nonzero()[0]) if role_lengths.numel() == C else None
        raise ValueError(
            "pack_conversations: roles must have one entry per token of each conversation; "
            + (
                f"conversation {bad} has {int(lengths[bad])} tokens and {int(role_lengths[bad])} roles"
                if bad is not None
                else f"got {C} conversations and {role_lengths.numel()} role lists"
            )
        )
    if int(lengths.min()) == 0:
        raise ValueError(f"pack_conversations: conversation {int((lengths == 0).nonzero()[0])} has no token")
    if int(lengths.max()) > row_length:
        i = int(lengths.argmax())
        raise ValueError(
            f"pack_conversations: conversation {i} has {int(lengths[i])} tokens, more than row_length={row_length}; "
            "truncate conversations to the row length before packing"
        )
    rows = best_fit_decreasing(lengths.tolist(), row_length)
    N = len(rows)
    placed = torch.tensor([i for row in rows for i in row], dtype=torch.long)  # (C,) conversations, row by row
    row_of = torch.repeat_interleave(torch.arange(N), torch.tensor([len(r) for r in rows]))  # (C,) in placed order
    placed_lengths = lengths[placed]  # (C,)
    starts = placed_lengths.cumsum(0) - placed_lengths  # (C,) start of each conversation if the rows were one stream
    first_of_row = torch.searchsorted(row_of, row_of)  # (C,) placed index of the first conversation of its row
    offset, row, doc = (torch.empty(C, dtype=torch.long) for _ in range(3))  # (C,) each, by conversation index
    offset[placed] = starts - starts[first_of_row]  # first column of each conversation in its row
    row[placed] = row_of
    doc[placed] = torch.arange(C) - first_of_row  # slot within its row: 0, 1, ...

    conv_of_token = torch.repeat_interleave(torch.arange(C), lengths)  # (n,)
    first = lengths.cumsum(0) - lengths  # (C,) index of each conversation's first token in `tokens`
    column = offset[conv_of_token] + torch.arange(tokens.numel()) - first[conv_of_token]  # (n,)
    flat_index = row[conv_of_token] * row_length + column  # (n,)

    slots_per_row = torch.bincount(row_of, minlength=N)  # (N,) padding takes the next document id
    out_ids = torch.full((N * row_length,), pad_id, dtype=torch.long)
    out_roles = torch.full((N * row_length,), PROMPT, dtype=torch.long)
    out_docs = slots_per_row.repeat_interleave(row_length)  # (N*T,)
    real = torch.zeros(N * row_length, dtype=torch.bool)
    out_ids[flat_index] = tokens
    out_roles[flat_index] = role_values
    out_docs[flat_index] = doc[conv_of_token]
    real[flat_index] = True
    shape = (N, row_length)
    return PackedConversations(
        input_ids=out_ids.view(shape),
        roles=out_roles.view(shape),
        document_ids=out_docs.view(shape),
        attention_mask=real.view(shape),
        rows=rows,
    )


def pack_chat(
    conversations: Sequence[Any], tokenizer: Any, *, seq_len: int, train_on: str = "assistant"
) -> tuple[PackedConversations, dict[str, int]]:
    """Tokenise (:func:`~lmobjectives.data.chat_template.tokenize_conversation`), truncate to ``seq_len``
    (keeping the start, as TRL does), drop and count the conversations with no learned target left under
    ``train_on``, pack the rest best-fit decreasing into rows of ``seq_len`` (:func:`pack_conversations`).

    ``conversations``: records (``{"messages": ...}``, ``{"prompt", "completion"}``, lists of messages) or
    documents (lists of sentences, made into conversations by
    :func:`~lmobjectives.data.chat.conversations_from_documents`). Returns the packed rows and a report:
    ``conversations`` read, ``kept``, ``truncated``, ``no_target`` (dropped, with a warning), ``with_merges``
    and ``boundary_merges`` (part boundaries the tokenizer merged; their parts' tokens are kept, with a warning).
    """
    if conversations and all(is_document(c) for c in conversations):
        conversations = conversations_from_documents(conversations)
    ids, roles = [], []
    report = {
        "conversations": len(conversations),
        "kept": 0,
        "truncated": 0,
        "no_target": 0,
        "with_merges": 0,
        "boundary_merges": 0,
    }
    for k, record in enumerate(conversations):  # tokenisation is Python: one call per conversation
        try:
            tokens = tokenize_conversation(record, tokenizer, train_on=train_on)
        except (TypeError, ValueError) as e:
            raise ValueError(f"conversation {k}: {e}") from None
        report["with_merges"] += tokens.boundary_merges > 0
        report["boundary_merges"] += tokens.boundary_merges
        report["truncated"] += len(tokens.input_ids) > seq_len
        conv_roles = torch.tensor(tokens.roles[:seq_len], dtype=torch.long)  # (L,)
        if not bool(learned_mask(conv_roles, train_on)[1:].any()):  # the first token is never a target
            report["no_target"] += 1
            continue
        ids.append(tokens.input_ids[:seq_len])
        roles.append(tokens.roles[:seq_len])
    report["kept"] = len(ids)
    if not ids:
        raise ValueError(
            f"no conversation has a learned token within seq_len={seq_len} (train_on={train_on!r}): all "
            f"{report['conversations']} have their answers cut off ({report['truncated']} truncated) or none; "
            "use a longer --seq-len"
        )
    if report["no_target"]:
        warnings.warn(
            f"{report['no_target']} of {report['conversations']} conversations have no learned token within "
            f"seq_len={seq_len} (train_on={train_on!r}; conversations truncated to seq_len: {report['truncated']}) and "
            "are dropped",
            stacklevel=3,
        )
    if report["with_merges"]:
        warnings.warn(
            f"{report['with_merges']} of {report['conversations']} conversations tokenise differently as a whole "
            f"than part by part ({report['boundary_merges']} part boundaries merged by the tokenizer); their "
            "parts' tokens are kept, so every label is exact",
            stacklevel=3,
        )
    pad_id = tokenizer.vocab.pad_id if tokenizer.vocab.pad_id is not None else 0
    return pack_conversations(ids, roles, seq_len, pad_id=pad_id), report
