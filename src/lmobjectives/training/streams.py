"""Training data as a pure function of ``(seed, step)``, so a resumed run sees exactly the same batches.

Every epoch visits the examples in a fresh order, ``randperm`` from a
generator seeded with ``(seed, epoch)``; step ``s`` takes the ``batch_size``
examples at positions ``[s * batch_size, (s + 1) * batch_size)`` of the
endless sequence of epochs. The objective's corruption (masking, random
sentence choice) draws from a generator seeded with ``(seed, step)``. Nothing
is carried from one step to the next, so resuming at step ``s`` needs only ``s``.

One stream per data layout of :class:`~lmobjectives.recipes.Recipe` (``recipe.data``):

- :class:`BlockStream` (``"blocks"``: clm, mlm, ...): documents packed end to
  end into blocks (``data.packing.pack_documents``: EOS between documents, the
  last block padded). Blocks are plain text windows, no [CLS]/[SEP]: the
  masked-LM loss does not need them, and sentence-pair objectives add them.
- :class:`SentenceStream` (``"sentences"``: nsp, sop): a table of tokenised
  sentences; each step hands a window of ``docs_per_step`` documents (in the
  epoch's order) to the objective, which builds sentence pairs, and keeps
  ``batch_size`` of them chosen at random (seeded from ``(seed, step)``; fewer
  if the window gave fewer). The objective returns pairs in document order,
  so "the first ``batch_size``" would fill most batches from the window's
  first document.
- :class:`DocumentStream` (``"documents"``): the same windows, as raw document
  texts plus the tokenizer, for objectives that cut text before tokenising (FIM).
- :class:`ConversationStream` (``"conversations"``: sft): chat conversations
  tokenised once with the role of every token (:func:`lmobjectives.data.pack_chat`),
  truncated to ``seq_len``, and packed best-fit decreasing into rows of
  ``seq_len`` (a conversation never spans two rows); rows are then drawn as
  blocks are. Conversations left with nothing to learn are dropped and
  counted, never kept silently (:attr:`ConversationStream.report`).

The held-out split is :mod:`lmobjectives.data.heldout`; the trainer lays out only the training side.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from functools import lru_cache
from typing import Any

import torch

from .._checks import check_positive_int
from ..batch import Batch, Objective
from ..data.packing import (
    pack_chat,
    pack_documents,
    sentence_table,
    tokenize_corpus,
    tokenize_corpus_words,
    tokenize_documents,
)
from ..recipes import Recipe

__all__ = [
    "BlockStream",
    "ConversationStream",
    "DocumentStream",
    "SentenceStream",
    "build_stream",
    "data_fingerprint",
    "derive_seed",
    "epoch_indices",
]


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from ``seed`` and a purpose/step, e.g. ``derive_seed(0, "corrupt", 12)``.

    Hashing (not ``seed + step``) keeps streams of different seeds from
    sliding onto each other (seed 0 at step 1 ≠ seed 1 at step 0).
    """
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "epoch", epoch)))


def epoch_indices(seed: int, start: int, count: int, n: int) -> torch.Tensor:
    """Indices ``(count,)`` into ``n`` examples at positions ``start .. start+count-1`` of the epoch sequence.

    Position ``i`` is example ``order_e[i % n]`` with ``e = i // n`` and
    ``order_e`` the seeded permutation of epoch ``e``.
    """
    positions = torch.arange(start, start + count)
    epochs, offsets = positions // n, positions % n
    out = torch.empty(count, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        here = epochs == epoch
        out[here] = _epoch_order(seed, epoch, n)[offsets[here]]
    return out


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """A short SHA-256 of the tensors' contents, to tell on resume whether the data changed."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str((t.dtype, tuple(t.shape))).encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def corruption_generator(seed: int, step: int) -> torch.Generator:
    """The generator an objective draws from at ``step`` (0-based data position)."""
    return torch.Generator().manual_seed(derive_seed(seed, "corrupt", step))


class BlockStream:
    """Packed blocks ``(N, T)`` and their per-token extras; ``stream(step)`` is the step's :class:`Batch`."""

    def __init__(
        self,
        objective: Objective,
        input_ids: torch.Tensor,
        extras: dict[str, torch.Tensor],
        *,
        batch_size: int,
        seed: int,
        dupe_factor: int | None = None,
    ):
        check_positive_int(dupe_factor, "dupe_factor (static masking; None: dynamic)", allow_none=True)
        self.objective = objective
        self.input_ids = input_ids  # (N, T) long
        self.extras = extras  # name -> (N, T) tensor passed to the objective (attention_mask, document_ids, word_ids)
        self.batch_size = batch_size
        self.seed = seed
        self.dupe_factor = dupe_factor  # None: a fresh corruption every step (RoBERTa); N: N fixed ones, cycled (BERT)
        self._static_cache: dict[int, Batch] = {}
        self.fingerprint = data_fingerprint(input_ids, *extras.values())  # checked on resume

    @property
    def num_examples(self) -> int:
        return self.input_ids.shape[0]

    def __call__(self, step: int) -> Batch:
        idx = epoch_indices(self.seed, step * self.batch_size, self.batch_size, self.num_examples)  # (B,)
        if self.dupe_factor is not None:
            return self._static_rows(step, idx)
        extras = {name: value[idx] for name, value in self.extras.items()}
        return self.objective(self.input_ids[idx], generator=corruption_generator(self.seed, step), **extras)

    def one_pass(self, batch_size: int | None = None) -> Iterator[Batch]:
        """Every block once, in table order, ``batch_size`` (default: the stream's) blocks per batch; the
        corruption of the batch starting at block ``i`` draws from a generator seeded by ``(seed, "one_pass", i)``."""
        size = self.batch_size if batch_size is None else batch_size
        for start in range(0, self.num_examples, size):
            rows = slice(start, start + size)
            extras = {name: value[rows] for name, value in self.extras.items()}
            g = torch.Generator().manual_seed(derive_seed(self.seed, "one_pass", start))
            yield self.objective(self.input_ids[rows], generator=g, **extras)

    def _static(self, copy: int) -> Batch:
        """Copy ``copy`` of the corrupted data set: the objective over every block, drawn once (BERT's dupe_factor).

        Blocks are corrupted in chunks of ``_STATIC_CHUNK`` rows, each from a generator seeded by
        ``(seed, "static", copy, chunk)``, so a block's corruption depends only on the seed, the copy and
        where the block lies, never on the step. At most two copies are kept in memory.
        """
        if copy not in self._static_cache:
            parts = []
            for c, start in enumerate(range(0, self.num_examples, _STATIC_CHUNK)):
                rows = slice(start, start + _STATIC_CHUNK)
                g = torch.Generator().manual_seed(derive_seed(self.seed, "static", copy, c))
                extras = {name: value[rows] for name, value in self.extras.items()}
                parts.append(self.objective(self.input_ids[rows], generator=g, **extras))
            while len(self._static_cache) >= 2:
                self._static_cache.pop(next(iter(self._static_cache)))
            self._static_cache[copy] = _concat_rows(parts)
        return self._static_cache[copy]

    def _static_rows(self, step: int, idx: torch.Tensor) -> Batch:
        """The rows ``idx`` of the copy of each position's epoch (``epoch % dupe_factor``): each block cycles
        through its ``dupe_factor`` fixed corruptions, one per epoch, as BERT's duplicated data did over training."""
        positions = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        copies = (positions // self.num_examples) % self.dupe_factor  # (B,)
        parts, order = [], []
        for copy in copies.unique().tolist():  # at most two (a step can straddle an epoch boundary)
            here = (copies == copy).nonzero().flatten()
            parts.append(_select_rows(self._static(copy), idx[here]))
            order.append(here)
        batch = _concat_rows(parts)
        return _select_rows(batch, torch.cat(order).argsort())

    def position(self, step: int) -> dict[str, Any]:
        """Where the stream stands before ``step`` (for the checkpoint's JSON; resuming needs only the step)."""
        start = step * self.batch_size
        return {
            "unit": "block",
            "num_examples": self.num_examples,
            "fingerprint": self.fingerprint,
            "next_example": start,
            "epoch": start // self.num_examples,
            "dupe_factor": self.dupe_factor,
        }


_STATIC_CHUNK = 256  # blocks corrupted per objective call when static masking precomputes a copy


class _WindowStream:
    """A window of ``docs_per_step`` documents per step (in the epoch's order) -> the objective's rows -> keep
    ``batch_size`` of them at random. Subclasses say how a window becomes rows (:meth:`_rows`)."""

    num_documents: int

    def __init__(self, objective: Objective, *, batch_size: int, seed: int, docs_per_step: int | None) -> None:
        self.objective = objective
        self.batch_size = batch_size
        self.seed = seed
        if self.num_documents < 2:
            raise ValueError(
                f"{objective.name} needs at least 2 documents to draw examples from, got {self.num_documents}"
            )
        self.docs_per_step = docs_per_step if docs_per_step is not None else self._estimate_docs_per_step()

    @property
    def num_examples(self) -> int:
        return self.num_documents

    def _rows(self, docs: torch.Tensor, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def _estimate_docs_per_step(self) -> int:
        """Documents per window for ~3 x batch_size rows on average (one seeded probe), so nearly every
        window has batch_size rows although document lengths vary a lot (built-in corpus: 1 to 173 sentences)."""
        probe = min(self.num_documents, max(8, 4 * self.batch_size))
        docs = epoch_indices(self.seed, 0, probe, self.num_documents)
        rows = self._rows(docs, torch.Generator().manual_seed(derive_seed(self.seed, "probe"))).input_ids.shape[0]
        per_doc = max(rows, 1) / probe
        return min(self.num_documents, max(2, math.ceil(3 * self.batch_size / per_doc)))

    def one_pass(self, batch_size: int | None = None) -> Iterator[Batch]:
        """Every row the objective makes from the documents, each window of ``docs_per_step`` documents taken
        once in table order (a last window of one document joins the one before; no subsampling), cut into
        batches of ``batch_size`` (default: the stream's) rows.
        Window ``w``'s draws come from a generator seeded by ``(seed, "one_pass", w)``; a window that gives no
        row is skipped. Sentence pairs: every pair of every document once (NSP's random B from the window)."""
        size = self.batch_size if batch_size is None else batch_size
        bounds = [*range(0, self.num_documents, self.docs_per_step), self.num_documents]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < 2:  # a last window of one document joins the one before
            del bounds[-2]
        for w, (start, stop) in enumerate(zip(bounds, bounds[1:])):
            docs = torch.arange(start, stop)  # (D',)
            batch = self._rows(docs, torch.Generator().manual_seed(derive_seed(self.seed, "one_pass", w)))
            n = batch.input_ids.shape[0]
            for first in range(0, n, size):
                yield _select_rows(batch, torch.arange(first, min(first + size, n)))

    def __call__(self, step: int) -> Batch:
        docs = epoch_indices(self.seed, step * self.docs_per_step, self.docs_per_step, self.num_documents)  # (D',)
        generator = corruption_generator(self.seed, step)
        batch = self._rows(docs, generator)
        keep = torch.randperm(batch.input_ids.shape[0], generator=generator)[: self.batch_size]  # (<= B,)
        return _select_rows(batch, keep.sort().values)

    def position(self, step: int) -> dict[str, Any]:
        start = step * self.docs_per_step
        return {
            "unit": "document",
            "num_examples": self.num_documents,
            "fingerprint": self.fingerprint,
            "docs_per_step": self.docs_per_step,
            "next_example": start,
            "epoch": start // self.num_documents,
        }


class SentenceStream(_WindowStream):
    """Sentences ``(S, L)`` grouped by document; ``stream(step)`` pairs a window of documents (nsp, sop)."""

    def __init__(
        self,
        objective: Objective,
        input_ids: torch.Tensor,
        document_ids: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        docs_per_step: int | None = None,
        word_ids: torch.Tensor | None = None,
    ):
        self.input_ids = input_ids  # (S, L) long, padded sentences
        self.word_ids = word_ids  # (S, L) long or None: each sentence's word ids, for whole-word units
        # rows of each document, in table order: document d owns rows order[offsets[d]:offsets[d+1]]
        _, doc_index = torch.unique(document_ids, return_inverse=True)  # (S,) in 0..D-1
        self.order = torch.argsort(doc_index, stable=True)  # (S,)
        counts = torch.bincount(doc_index)  # (D,)
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])  # (D+1,)
        self.num_documents = self.offsets.numel() - 1
        self.fingerprint = data_fingerprint(
            input_ids, self.order, self.offsets, *([] if word_ids is None else [word_ids])
        )
        super().__init__(objective, batch_size=batch_size, seed=seed, docs_per_step=docs_per_step)

    def _rows(self, docs: torch.Tensor, generator: torch.Generator) -> Batch:
        rows = torch.cat([self.order[self.offsets[d] : self.offsets[d + 1]] for d in docs.tolist()])  # (S',)
        sizes = (self.offsets[docs + 1] - self.offsets[docs]).tolist()
        window_ids = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))  # (S',) 0.. per window slot
        extras = {} if self.word_ids is None else {"word_ids": self.word_ids[rows]}
        return self.objective(self.input_ids[rows], document_ids=window_ids, generator=generator, **extras)


class DocumentStream(_WindowStream):
    """Raw document texts; ``stream(step)`` hands a window of them and the tokenizer to the objective (fim)."""

    def __init__(
        self,
        objective: Objective,
        texts: list[str],
        tokenizer: Any,
        *,
        batch_size: int,
        seed: int,
        docs_per_step: int | None = None,
    ):
        self.texts = texts  # one string per document
        self.tokenizer = tokenizer  # handed to the objective, which tokenises after cutting the text
        self.num_documents = len(texts)
        encoded = torch.frombuffer(bytearray("\x00".join(texts).encode("utf-8")), dtype=torch.uint8)
        self.fingerprint = data_fingerprint(encoded)  # checked on resume
        super().__init__(objective, batch_size=batch_size, seed=seed, docs_per_step=docs_per_step)

    def _rows(self, docs: torch.Tensor, generator: torch.Generator) -> Batch:
        return self.objective([self.texts[d] for d in docs.tolist()], tokenizer=self.tokenizer, generator=generator)


class ConversationStream(BlockStream):
    """Packed conversations ``(N, T)`` with their roles and document ids; ``stream(step)`` is the step's batch.

    Built by :meth:`from_conversations`; :attr:`report` counts what happened to the conversations (also in
    :meth:`position`, which the trainer prints when it starts).
    """

    def __init__(
        self,
        objective: Objective,
        input_ids: torch.Tensor,
        extras: dict[str, torch.Tensor],
        report: dict[str, int],
        *,
        batch_size: int,
        seed: int,
    ):
        super().__init__(objective, input_ids, extras, batch_size=batch_size, seed=seed)
        self.report = report  # conversations: read, kept, truncated, no_target (dropped), with_merges, boundary_merges

    @classmethod
    def from_conversations(
        cls,
        objective: Objective,
        conversations: Sequence[Any],
        tokenizer: Any,
        *,
        seq_len: int,
        batch_size: int,
        seed: int,
    ) -> ConversationStream:
        """The conversations tokenised and packed by :func:`~lmobjectives.data.packing.pack_chat` under the
        objective's ``train_on``, drawn as blocks are."""
        packed, report = pack_chat(
            conversations, tokenizer, seq_len=seq_len, train_on=getattr(objective, "train_on", "assistant")
        )
        extras = {"attention_mask": packed.attention_mask, "document_ids": packed.document_ids, "roles": packed.roles}
        return cls(objective, packed.input_ids, extras, report, batch_size=batch_size, seed=seed)

    def position(self, step: int) -> dict[str, Any]:
        return {**super().position(step), "unit": "row of conversations", **self.report}


def build_stream(
    recipe: Recipe,
    objective: Objective,
    documents: list[Any],
    tokenizer: Any,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    dupe_factor: int | None = None,
) -> BlockStream | SentenceStream | DocumentStream | ConversationStream:
    """The step -> batch function of a run: the corpus tokenised once and laid out as ``recipe.data`` says.

    ``stream(step)`` is exactly the batch ``lmobj train`` trains on at data position ``step`` (0-based) with
    this ``seed`` and ``batch_size``; :mod:`lmobjectives.evaluation.inspection` draws its example from it too.
    ``documents`` are lists of sentences (:func:`lmobjectives.data.load_data`); for the ``"conversations"`` layout, chat records
    or such documents (see :meth:`ConversationStream.from_conversations`).
    """
    if dupe_factor is not None and recipe.data != "blocks":
        raise ValueError(
            f"dupe_factor={dupe_factor!r} (static masking) applies to objectives on packed blocks; "
            f"{recipe.name!r} reads {recipe.data!r}"
        )
    vocab = tokenizer.vocab
    wanted = recipe.block_extras(objective)
    if recipe.data == "conversations":
        return ConversationStream.from_conversations(
            objective, documents, tokenizer, seq_len=seq_len, batch_size=batch_size, seed=seed
        )
    if recipe.data == "sentences":
        if "word_ids" in wanted:
            ids, words = tokenize_corpus_words(documents, tokenizer)
        else:
            ids, words = tokenize_corpus(documents, tokenizer), None
        table = sentence_table(ids, pad_id=vocab.pad_id, max_length=seq_len, word_ids=words)
        real = torch.arange(table.input_ids.shape[1])[None] < table.lengths[:, None]
        objective = _bind_corpus_counts(objective, table.input_ids[real], vocab.size)
        return SentenceStream(
            objective, table.input_ids, table.document_ids, batch_size=batch_size, seed=seed, word_ids=table.word_ids
        )
    if recipe.data == "documents":
        texts = [" ".join(doc) for doc in documents]
        return DocumentStream(objective, texts, tokenizer, batch_size=batch_size, seed=seed)
    token_docs, word_docs = tokenize_documents(documents, tokenizer, with_words="word_ids" in wanted)
    # a seq_len too short for the objective is said here, naming --seq-len, not at the first step: its block length
    # (span corruption's raw length, ...), then its first batch (a block of 1 token has nothing to predict for clm)
    where = f"objective {recipe.name!r} (--seq-len {seq_len}"
    try:
        length = recipe.block_length(objective, seq_len)
    except ValueError as e:
        raise ValueError(f"{where} sets its block length): {e}") from None
    packed = pack_documents(token_docs, length, vocab.eos_id, pad_id=vocab.pad_id, word_ids=word_docs)
    extras = {"attention_mask": packed.attention_mask}
    extras.update({name: getattr(packed, name) for name in wanted})
    objective = _bind_corpus_counts(objective, packed.input_ids[packed.attention_mask], vocab.size)
    first = slice(0, batch_size)
    try:  # drawn from a generator of its own: the stream's batches are unchanged
        if packed.input_ids.shape[0]:
            objective(
                packed.input_ids[first],
                generator=torch.Generator().manual_seed(seed),
                **{name: value[first] for name, value in extras.items()},
            )
    except ValueError as e:
        raise ValueError(f"{where}: blocks of {length} token{'s' if length != 1 else ''}): {e}") from None
    return BlockStream(objective, packed.input_ids, extras, batch_size=batch_size, seed=seed, dupe_factor=dupe_factor)


def _bind_corpus_counts(objective: Objective, tokens: torch.Tensor, vocab_size: int) -> Objective:
    """The objective with the corpus' token counts bound, if it asks for them (random ids from the unigram
    distribution, SpanBERT); else the objective itself."""
    if getattr(objective, "needs_unigram_counts", False):
        return objective.with_unigram_counts(torch.bincount(tokens, minlength=vocab_size))  # type: ignore[attr-defined]
    return objective


def _select_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """``batch`` restricted to ``rows`` (every tensor field has the batch as its first dim)."""
    sliced = {f.name: v[rows] for f in fields(batch) if isinstance(v := getattr(batch, f.name), torch.Tensor)}
    return replace(batch, **sliced)


def _concat_rows(parts: list[Batch]) -> Batch:
    """The batches' rows one after the other (same fields set in each; non-tensor fields from the first)."""
    if len(parts) == 1:
        return parts[0]
    joined = {
        f.name: torch.cat([getattr(p, f.name) for p in parts])
        for f in fields(parts[0])
        if isinstance(getattr(parts[0], f.name), torch.Tensor)
    }
    return replace(parts[0], **joined)
