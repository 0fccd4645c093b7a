"""Chat data for supervised fine-tuning: JSONL conversations, and a built-in set made from the reference manual.

A conversation is one JSON object per line, in either of the formats of :func:`lmobjectives.data.check_record`::

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
    {"prompt": "...", "completion": "..."}

:func:`builtin_chat` asks about each section of each topic of the Python reference manual that ships with
CPython (``pydoc_data``, the text behind :func:`~lmobjectives.data.corpus.builtin_corpus`) and answers
with the section's own sentences, so ``lmobj train --objective sft`` runs offline with nothing downloaded.
:func:`load_chat` picks the built-in set or a file from a string, as ``--data`` gives it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .chat_template import check_record
from .corpus import Document, _topic_documents, split_sentences

__all__ = [
    "Conversation",
    "builtin_chat",
    "chat_texts",
    "conversations_from_documents",
    "example_chat",
    "load_chat",
    "read_chat",
    "write_chat",
]

Conversation = dict[str, Any]
"""One record: ``{"messages": [...]}`` or ``{"prompt": ..., "completion": ...}``."""

ANSWER_CHARS = 300  # the built-in set's answers: whole sentences up to this many characters (at least one)


def read_chat(path: str | Path) -> list[Conversation]:
    """Conversations from a ``.jsonl`` file, one JSON object per line (blank lines skipped), each checked by
    :func:`lmobjectives.data.check_record`; a bad line raises ``ValueError`` naming the file and line."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"read_chat: path must be a str or Path, got {type(path).__name__}")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"read_chat: {str(file)!r} is not a file")
    if file.suffix != ".jsonl":
        raise ValueError(f"read_chat: {str(file)!r} has extension {file.suffix!r}; chat data is a .jsonl file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"read_chat: {file} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    records: list[Conversation] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{file}, line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"read_chat: {where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"read_chat: {where}: expected a JSON object, got {type(record).__name__}")
        try:
            check_record(record, "record")
        except (TypeError, ValueError) as e:
            raise ValueError(f"read_chat: {where}: {e}") from None
        records.append(record)
    if not records:
        raise ValueError(f"read_chat: {str(file)!r} holds no conversation")
    return records


def write_chat(records: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write conversations as JSONL (UTF-8, one object per line), e.g. ``write_chat(builtin_chat(), "chat.jsonl")``."""
    lines = [json.dumps(dict(r), ensure_ascii=False) for r in records]
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@functools.cache
def _builtin_chat() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    def answers(sentences: list[str]) -> list[str]:
        """Consecutive runs of whole sentences of at most ANSWER_CHARS characters (one sentence at least)."""
        out: list[str] = []
        for s in sentences:
            if out and len(out[-1]) + 1 + len(s) <= ANSWER_CHARS:
                out[-1] += " " + s
            else:
                out.append(s)
        return out

    records = []
    for name in sorted(topics):
        for k, paragraphs in enumerate(_topic_documents(topics[name])):
            sentences = [s for p in paragraphs for s in split_sentences(p) if len(s.split()) >= 3]
            if not sentences:
                continue
            first, *rest = answers(sentences)
            messages = [
                {"role": "user", "content": f"Explain {name}." if k == 0 else f"More on {name}."},
                {"role": "assistant", "content": first},
            ]
            if rest:
                messages += [{"role": "user", "content": "Go on."}, {"role": "assistant", "content": rest[0]}]
            records.append(json.dumps({"messages": messages}))
    return tuple(records)


def builtin_chat() -> list[Conversation]:
    """Conversations about the Python reference manual bundled with CPython, one per section of each topic.

    For each section of each ``pydoc_data`` topic with prose (the documents of
    :func:`~lmobjectives.data.corpus.builtin_corpus`, in the same order): the user asks ``"Explain
    {topic}."`` (first section) or ``"More on {topic}."`` (later ones), the assistant answers with the
    section's first sentences (whole sentences up to 300 characters), and, if the section goes on, the user
    says ``"Go on."`` and the assistant answers with the next sentences. Short user turns keep the
    conversations' answers inside small rows (``--seq-len 64`` with the byte tokenizer).

    Measured on CPython 3.11.7: 205 conversations (one per section), 178 of them with two turns. Deterministic
    for a given Python version; each call returns fresh dicts.

    >>> chat = builtin_chat()
    >>> chat[0]["messages"][0]
    {'role': 'user', 'content': 'Explain assert.'}
    """
    return [json.loads(r) for r in _builtin_chat()]


def conversations_from_documents(documents: Sequence[Document]) -> list[Conversation]:
    """Documents (lists of sentences) as one-turn conversations: the user says the first sentence, the
    assistant goes on with the rest of the document. Documents of one sentence make no conversation; a
    ``ValueError`` if none has two.

    >>> conversations_from_documents([["Hi there.", "How are you?", "Fine."], ["Alone."]])
    [{'messages': [{'role': 'user', 'content': 'Hi there.'}, {'role': 'assistant', 'content': 'How are you? Fine.'}]}]
    """
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError(f"documents must be a list of documents (lists of sentences), got {type(documents).__name__}")
    records = [
        {"messages": [{"role": "user", "content": doc[0]}, {"role": "assistant", "content": " ".join(doc[1:])}]}
        for doc in documents
        if len(doc) >= 2
    ]
    if not records:
        raise ValueError(
            f"documents: none of the {len(documents)} documents has two sentences (a prompt and an answer)"
        )
    return records


def example_chat() -> list[Conversation]:
    """Two tiny conversations, short enough for one row of 32 byte tokens in the built-in ChatML format."""
    return [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4."}]},
        {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hey!"}]},
    ]


def load_chat(spec: str | Path) -> list[Conversation]:
    """``"builtin"`` → :func:`builtin_chat`; anything else is a ``.jsonl`` path for :func:`read_chat`."""
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"load_chat: spec must be 'builtin' or a path, got {type(spec).__name__}")
    return builtin_chat() if spec == "builtin" else read_chat(spec)


def chat_texts(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every text of the conversations (message contents, prompts, completions), e.g. to train a tokenizer on.

    >>> chat_texts([{"prompt": "2+2=", "completion": "4"}, {"messages": [{"role": "user", "content": "Hi"}]}])
    ['2+2=', '4', 'Hi']
    """
    texts: list[str] = []
    for record in records:
        if "messages" in record:
            texts += [m["content"] for m in record["messages"]]
            continue
        for field in ("prompt", "completion"):
            value = record[field]
            texts += [value] if isinstance(value, str) else [m["content"] for m in value]
    return texts
