"""``collator(name, tokenizer, **options)``: a registered objective as a ``transformers.Trainer`` data collator.

The collator reads the rows the recipe's data layout needs (:data:`~lmobjectives.recipes.recipe.DataLayout`),
calls the registered objective on them with a seeded generator, and renames the :class:`~lmobjectives.Batch`
to the names and conventions of Hugging Face heads (:func:`lmobjectives.hf.features.hf_features`). It never
re-implements a corruption. Importing this module does not import ``transformers``: any tokenizer with the
``transformers`` interface (``__call__``, ``encode``, the special-token ids) works.

Columns read from each row (``datasets`` rows are dicts):

===================  ==========================================================================================
layout               columns
===================  ==========================================================================================
``blocks``           ``input_ids`` (list of ints) or ``text``; optional ``attention_mask``, ``document_ids``;
                     ``word_ids`` where the objective masks whole words (derived from ``text``)
``sentences``        one row per document: ``sentences`` (list of str), ``text`` (split into sentences), or
                     ``input_ids`` (one list of ints per sentence, then ``word_ids`` alike for whole words)
``documents``        ``text`` (the objective cuts the text before tokenising it)
``conversations``    ``messages`` (a chat, or ``prompt`` + ``completion``), or ``input_ids`` + ``roles``
===================  ==========================================================================================

Trainer's ``remove_unused_columns=True`` (the default) drops every column the model's ``forward`` does not
take (``text``, ``sentences``, ``word_ids``, ``messages``, ``roles``): a missing column is refused in one
line that names it and the fix, ``TrainingArguments(remove_unused_columns=False)``.

Randomness: each call draws from a generator seeded by ``(seed, epoch, the rows' contents)``: the same rows in
the same epoch get the same corruption whatever the call order, the number of dataloader workers or a resume
that skips batches (``skip_first_batches`` never calls the collator). ``set_epoch(epoch)`` moves to a new
epoch's draws (:class:`~lmobjectives.hf.ObjectiveTrainer` calls it at each epoch start); identical rows in
one epoch share their draws.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._checks import check_choice, check_int, check_like
from ..batch import Batch
from ..data.chat_template import tokenize_conversation
from ..data.corpus import split_sentences
from ..data.packing import sentence_table
from ..recipes import OBJECTIVES, Recipe
from ..training.streams import data_fingerprint, derive_seed
from ..vocab import Vocab
from .features import PackedAttention, hf_features

__all__ = ["ObjectiveCollator", "collator"]

_FIX = "TrainingArguments(remove_unused_columns=False) keeps the dataset's columns"


class MissingColumnError(KeyError):
    """A row lacks a column the objective needs (one line: the column, and the fix)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _missing(column: str, why: str) -> MissingColumnError:
    return MissingColumnError(
        f"the rows have no {column!r} column ({why}); if your dataset has it, Trainer dropped it: {_FIX}"
    )


def _ints(value: Any) -> list[int]:
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)


class _NoSpecials:
    """A transformers tokenizer seen as ``encode(text) -> ids`` without added special tokens (what the
    objectives that cut text before tokenising expect: no BOS in the middle of a row)."""

    def __init__(self, tokenizer: Any, vocab: Vocab) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Ids and each token's first character (a fast tokenizer's offset mapping)."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [start for start, _ in enc["offset_mapping"]]


@dataclasses.dataclass
class ObjectiveCollator:
    """``list[dict] -> dict[str, Tensor]`` for ``Trainer(data_collator=...)``; build it with :func:`collator`."""

    recipe: Recipe  # the registered objective's recipe: its data layout says which columns are read
    objective: Any  # the objective, built from the recipe with the collator's options
    tokenizer: Any  # the transformers tokenizer the ids come from
    vocab: Vocab  # Vocab.from_tokenizer(tokenizer)
    seed: int = 0  # with the epoch and the rows' contents, seeds every call's generator
    max_length: int | None = None  # text rows are cut to this many tokens; sentence pairs' length
    packed_attention: PackedAttention = "mask"  # how rows of several documents keep them apart (features.hf_features)
    mask_dtype: torch.dtype = torch.float32  # dtype of a 4-D additive attention mask (the model's compute dtype)
    epoch: int = 0  # set_epoch() changes it

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's corruptions (as ``DistributedSampler.set_epoch`` does for the order)."""
        self.epoch = check_int(epoch, "epoch", low=0)  # type: ignore[assignment]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return hf_features(self.batch(rows), self.objective, self.packed_attention, self.mask_dtype)

    def batch(self, rows: Sequence[Mapping[str, Any]]) -> Batch:
        """The objective's :class:`~lmobjectives.Batch` for ``rows`` (before the renaming to HF's names)."""
        if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or not rows:
            raise TypeError(f"the collator takes a non-empty list of rows (dicts), got {type(rows).__name__}")
        layout = self.recipe.data
        if layout == "sentences":
            return self._sentences(rows)
        if layout == "documents":
            return self._documents(rows)
        if layout == "conversations":
            return self._conversations(rows)
        return self._blocks(rows)

    # ----------------------------------------------------------------------------------------- layouts

    def _generator(self, *contents: torch.Tensor | str) -> torch.Generator:
        parts = [c if isinstance(c, str) else data_fingerprint(c) for c in contents]
        return torch.Generator().manual_seed(derive_seed(self.seed, "hf", self.epoch, *parts))

    def _pad(self, seqs: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad ``seqs`` to the longest: ``(values (B, T) long, real (B, T) bool)``."""
        T = max(len(s) for s in seqs)
        if T == 0:
            raise ValueError("every row is empty: nothing to train on")
        values = torch.full((len(seqs), T), fill, dtype=torch.long)
        real = torch.zeros(len(seqs), T, dtype=torch.bool)
        for i, s in enumerate(seqs):
            values[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            real[i, : len(s)] = True
        return values, real

    @property
    def _fill(self) -> int:
        """The id padding is written with (the attention mask, never this id, says what is padding)."""
        v = self.vocab
        return next(i for i in (v.pad_id, v.eos_id, 0) if i is not None)

    def _encode(self, texts: list[str], *, words: bool) -> tuple[list[list[int]], list[list[int]] | None]:
        """Token ids (the tokenizer's own special tokens, then EOS closing each text where the tokenizer has
        one and did not add it: documents end in EOS, as packed blocks do) and, with ``words``, word ids."""
        enc = self.tokenizer(
            texts, add_special_tokens=True, truncation=self.max_length is not None, max_length=self.max_length
        )
        ids = [list(x) for x in enc["input_ids"]]
        word_ids = None
        if words:
            if not callable(getattr(enc, "word_ids", None)):
                raise ValueError(
                    "whole-word masking from text needs a fast tokenizer (word_ids()); pass a 'word_ids' column"
                )
            word_ids = []
            for i in range(len(texts)):
                seen: dict[int, int] = {}
                word_ids.append([-1 if w is None else seen.setdefault(w, len(seen)) for w in enc.word_ids(i)])
        eos = self.vocab.eos_id
        if eos is not None and eos not in (self.vocab.sep_id, self.vocab.cls_id):
            room = self.max_length
            for i, row in enumerate(ids):
                if row and row[-1] == eos:
                    continue
                if room is not None and len(row) >= room:
                    row[-1] = eos
                    if word_ids is not None:
                        word_ids[i][-1] = -1
                else:
                    row.append(eos)
                    if word_ids is not None:
                        word_ids[i].append(-1)
        return ids, word_ids

    def _blocks(self, rows: Sequence[Mapping[str, Any]]) -> Batch:
        wanted = self.recipe.block_extras(self.objective)
        needs_words = "word_ids" in wanted
        if "input_ids" in rows[0]:
            ids = [_ints(r["input_ids"]) for r in rows]
            real_lists = [_ints(r["attention_mask"]) for r in rows] if "attention_mask" in rows[0] else None
            words = None
            if needs_words:
                if "word_ids" not in rows[0]:
                    raise _missing(
                        "word_ids",
                        f"{self.recipe.name} with these options masks whole words: the word "
                        "index of each token, -1 off words; or give 'text' rows, whose words come from the tokenizer",
                    )
                words = [_ints(r["word_ids"]) for r in rows]
        elif "text" in rows[0]:
            ids, words = self._encode([str(r["text"]) for r in rows], words=needs_words)
            real_lists = None
        else:
            raise _missing("input_ids", "or 'text': the tokens to train on")
        input_ids, real = self._pad(ids, self._fill)
        if real_lists is not None:
            given, _ = self._pad(real_lists, 0)
            real = real & check_like(given, real, "attention_mask", dtype="bool")  # 0/1 only
        extras: dict[str, torch.Tensor] = {}
        if words is not None:
            extras["word_ids"] = self._pad(words, -1)[0]
        if "document_ids" in wanted and "document_ids" in rows[0]:  # else the objective derives them from EOS
            extras["document_ids"] = self._pad([_ints(r["document_ids"]) for r in rows], -1)[0]
        generator = self._generator(input_ids, real, *extras.values())
        return self.objective(input_ids, attention_mask=real, generator=generator, **extras)

    def _sentences(self, rows: Sequence[Mapping[str, Any]]) -> Batch:
        needs_words = "word_ids" in self.recipe.block_extras(self.objective)
        docs: list[list[list[int]]] = []
        doc_words: list[list[list[int]]] | None = [] if needs_words else None
        for r in rows:
            if "input_ids" in r:
                docs.append([_ints(s) for s in r["input_ids"]])
                if doc_words is not None:
                    if "word_ids" not in r:
                        raise _missing(
                            "word_ids",
                            f"{self.recipe.name} with these options masks whole words: one list "
                            "per sentence, like input_ids; or give 'sentences' rows",
                        )
                    doc_words.append([_ints(s) for s in r["word_ids"]])
                continue
            if "sentences" in r:
                sentences = [str(s) for s in r["sentences"]]
            elif "text" in r:
                sentences = split_sentences(str(r["text"]))
            else:
                raise _missing("sentences", "or 'text' or 'input_ids': one row per document, its sentences in order")
            if not sentences:
                continue
            enc = self.tokenizer(sentences, add_special_tokens=False)
            docs.append([list(x) for x in enc["input_ids"]])
            if doc_words is not None:
                doc_words.append([[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(sentences))])
        self.vocab.require("pad_id", who=f"the {self.recipe.name} collator")
        table = sentence_table(docs, self.vocab.pad_id, self.max_length, word_ids=doc_words)  # type: ignore[arg-type]
        real = torch.arange(table.input_ids.shape[1])[None] < table.lengths[:, None]
        extras = {} if table.word_ids is None else {"word_ids": table.word_ids}
        generator = self._generator(table.input_ids, table.document_ids)
        return self.objective(
            table.input_ids, document_ids=table.document_ids, attention_mask=real, generator=generator, **extras
        )

    def _documents(self, rows: Sequence[Mapping[str, Any]]) -> Batch:
        if "text" not in rows[0]:
            raise _missing("text", f"{self.recipe.name} cuts each document's text before tokenising it")
        texts = [str(r["text"]) for r in rows]
        generator = self._generator("\x00".join(texts))
        return self.objective(texts, tokenizer=_NoSpecials(self.tokenizer, self.vocab), generator=generator)

    def _conversations(self, rows: Sequence[Mapping[str, Any]]) -> Batch:
        if "input_ids" in rows[0]:
            if "roles" not in rows[0]:
                raise _missing("roles", "the role of each token: 0 prompt, 1 assistant turn, 2 final assistant turn")
            ids = [_ints(r["input_ids"]) for r in rows]
            roles = [_ints(r["roles"]) for r in rows]
        else:
            ids, roles = [], []
            for r in rows:
                record = r.get("messages") if "messages" in r else r if "prompt" in r else None
                if record is None:
                    raise _missing(
                        "messages", "or 'prompt' + 'completion', or 'input_ids' + 'roles': one conversation per row"
                    )
                out = tokenize_conversation(
                    record, self.tokenizer, train_on=getattr(self.objective, "train_on", "assistant")
                )
                cut = self.max_length if self.max_length is not None else len(out.input_ids)
                ids.append(out.input_ids[:cut])
                roles.append(out.roles[:cut])
        input_ids, real = self._pad(ids, self._fill)
        role_table = self._pad(roles, 0)[0]
        generator = self._generator(input_ids, real, role_table)
        return self.objective(input_ids, roles=role_table, attention_mask=real, generator=generator)


def collator(
    name: str,
    tokenizer: Any,
    *,
    seed: int = 0,
    max_length: int | None = None,
    packed_attention: PackedAttention = "mask",
    mask_dtype: torch.dtype = torch.float32,
    **options: Any,
) -> ObjectiveCollator:
    """The registered objective ``name`` with ``options`` (its dataclass fields) as a ``Trainer`` data collator.

    ``tokenizer`` is a ``transformers`` tokenizer; the objective's :class:`~lmobjectives.Vocab` is read from it
    (``Vocab.from_tokenizer``). ``max_length`` cuts text rows (and sets the length option of objectives that
    have one: the sentence pairs' ``max_seq_length``, FIM's ``seq_len``). ``packed_attention`` and
    ``mask_dtype``: how a row of several documents is kept apart (see :func:`lmobjectives.hf.hf_features`).

    >>> from lmobjectives.hf.collator import collator
    >>> collator("nonesuch", tokenizer=None)
    Traceback (most recent call last):
    ValueError: unknown objective name 'nonesuch'; valid names: clm, electra, fim, mlm, mtp, nsp, plm, prefix_lm, sft, sop, span_corruption, spanbert, ul2
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective name {name!r}; valid names: {', '.join(sorted(OBJECTIVES))}")
    check_choice(packed_attention, "packed_attention", ("mask", "position_ids"))
    check_int(max_length, "max_length", low=2, allow_none=True)
    recipe = OBJECTIVES[name]
    vocab = Vocab.from_tokenizer(tokenizer)
    seq_len = max_length
    if recipe.length_option is not None:
        if seq_len is None:
            seq_len = options.pop(recipe.length_option, None)
        else:
            options.pop(recipe.length_option, None)
        if seq_len is None:
            field = next(f for f in dataclasses.fields(recipe.objective) if f.name == recipe.length_option)
            seq_len = field.default
    objective = recipe.build(vocab, options, seq_len=seq_len)
    return ObjectiveCollator(
        recipe,
        objective,
        tokenizer,
        vocab,
        seed=seed,
        max_length=max_length,
        packed_attention=packed_attention,
        mask_dtype=mask_dtype,
    )
