"""What ``--data`` names: the built-in corpus, a synthetic corpus, your files, or chat conversations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .chat import chat_texts, load_chat
from .corpus import Document, builtin_corpus, read_corpus
from .synthetic import synthetic_corpus

__all__ = ["data_texts", "is_document", "load_corpus", "load_data"]


def load_corpus(spec: str, *, skip_bad_files: bool = False) -> list[Document]:
    """The documents named by ``spec`` (the ``--data`` flag of ``lmobj train``):

    - ``"builtin"``: :func:`builtin_corpus`, English prose shipped with CPython;
    - ``"synthetic:KIND"`` or ``"synthetic:KIND?key=value&key=value"``: a seeded synthetic corpus of
      :mod:`lmobjectives.data.synthetic`, built in memory, nothing read or downloaded. ``KIND`` is
      ``markov`` (one word-level Markov chain, known entropy: ``MarkovSource.entropy``), ``topics``
      (several such chains, one per document: NSP's topic shortcut) or ``icl`` (in-context learning
      sequences ``"t7 f1 t7 t7 f1 ..."``: ``lmobjectives.evaluation.icl``). Values are integers; unnamed parameters
      take their defaults (``data.synthetic.SPEC_DEFAULTS``), e.g. ``synthetic:markov?docs=500&seed=0``,
      ``synthetic:topics?topics=4``, ``synthetic:icl?pairs=32&keys=8&values=10``;
    - anything else: a path for :func:`read_corpus` (a ``.txt`` / ``.jsonl`` file or a folder).

    >>> len(load_corpus("synthetic:markov?docs=3"))
    3
    """
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"load_corpus: spec must be 'builtin', 'synthetic:...' or a path, got {type(spec).__name__}")
    if spec == "builtin":
        return builtin_corpus()
    if isinstance(spec, str) and spec.startswith("synthetic:"):
        return synthetic_corpus(spec)
    return read_corpus(spec, skip_bad_files=skip_bad_files)


def is_document(item: object) -> bool:
    """A corpus document (a list of sentences), as opposed to a conversation record or a list of messages."""
    return isinstance(item, Sequence) and not isinstance(item, (str, Mapping)) and all(isinstance(s, str) for s in item)


def load_data(spec: str, layout: str, **corpus_options: Any) -> list[Any]:
    """What a run of data layout ``layout`` (a recipe's ``data``) trains on, read from ``spec`` (``--data``):
    chat conversations (:func:`~lmobjectives.data.chat.load_chat`: ``"builtin"`` or a ``.jsonl`` file) for
    the ``"conversations"`` layout, else the corpus's documents (:func:`load_corpus`, given
    ``corpus_options``).

    >>> len(load_data("synthetic:markov?docs=3", "blocks"))
    3
    """
    if layout == "conversations":
        return load_chat(spec)
    return load_corpus(spec, **corpus_options)


def data_texts(data: Sequence[Any]) -> list[str]:
    """The texts of :func:`load_data`'s result (sentences, or message contents), e.g. to train a tokenizer on."""
    if data and not all(is_document(d) for d in data):
        return chat_texts(data)
    return [s for doc in data for s in doc]
