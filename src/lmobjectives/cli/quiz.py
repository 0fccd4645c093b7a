"""``lmobj quiz``: active recall on language-modelling objectives, one question at a time.

The questions are data: ``quiz.toml`` next to this module (package data), its ``[topics]`` table
(:data:`TOPICS`: each topic and what it covers) and one ``[[question]]`` table per question, each with
an ``id``, a ``topic`` (a key of :data:`TOPICS`), the ``question``, the ``answer``, and the
repository paths that back the answer: ``code`` (``path`` or ``path::name``, where ``name`` is a
function, class or constant defined in that file) and ``evidence`` (measured results and the guide,
``path`` or ``path#heading-anchor``). Paths are relative to the repository root; the tests check that
every one exists.

On a terminal :func:`ask` shows a question, reveals the answer on Enter and goes on to the next one
(``q`` stops). When stdin is not a terminal it prints every question with its answer, in order, so
``lmobj quiz --topic nsp-sop > notes.txt`` is a study sheet and the output is the same on every run
(with ``--shuffle``, the same for the same ``--seed``).

>>> qs = select(load_questions(), topics=["losses"])
>>> sorted({q.topic for q in qs})
['losses']
>>> [q.id for q in select(qs, shuffle=True, seed=1)] == [q.id for q in select(qs, shuffle=True, seed=1)]
True
"""

from __future__ import annotations

import argparse
import random
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

from ._common import EXIT_INTERRUPTED

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "HELP",
    "QUESTIONS_FILE",
    "TOPICS",
    "Question",
    "add_arguments",
    "ask",
    "load_questions",
    "render",
    "render_list",
    "run",
    "select",
]

HELP = "active recall: questions on the objectives, one at a time, the answer on Enter"
DESCRIPTION = (
    "Ask questions on language-modelling objectives (MLM vs CLM, NSP/SOP, masking, span corruption, prefix "
    "LM, denoisers, ELECTRA, MTP, SFT, the losses); each answer names the code and the measured evidence in "
    "the repository. On a terminal: one question at a time, Enter shows the answer, q quits. Otherwise "
    "(stdin not a terminal) every question is printed with its answer."
)
EPILOG = "examples: lmobj quiz --topic nsp-sop;  lmobj quiz --shuffle --seed 3;  lmobj quiz --list"

QUESTIONS_FILE = "quiz.toml"  # the question set, package data of lmobjectives.cli


def _package_text() -> str:
    return resources.files(__package__).joinpath(QUESTIONS_FILE).read_text(encoding="utf-8")


def _load_topics() -> dict[str, str]:
    """The ``[topics]`` table of the package's ``quiz.toml``: each topic and what it covers, in file order."""
    topics = tomllib.loads(_package_text()).get("topics")
    if not isinstance(topics, dict) or not topics or not all(isinstance(v, str) and v for v in topics.values()):
        raise ValueError(f'{QUESTIONS_FILE}: expected a [topics] table of topic = "what it covers", got {topics!r}')
    return topics


TOPICS: dict[str, str] = _load_topics()  # the values of --topic (data, as the questions are)


@dataclass(frozen=True)
class Question:
    """One question of the set, with the repository paths that back its answer."""

    id: str  # unique, e.g. "mlm-vs-clm-1"
    topic: str  # a key of TOPICS
    question: str  # what is asked
    answer: str  # what a good answer says
    code: tuple[str, ...] = ()  # "path" or "path::name" of the code that implements the answer
    evidence: tuple[str, ...] = ()  # "path" or "path#anchor" of a measured result or the guide's section


def _strings(entry: dict, key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: {key!r} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def load_questions(path: str | Path | None = None) -> list[Question]:
    """The questions of ``path`` (default: the package's ``quiz.toml``), in file order, checked."""
    if path is None:
        text, source = _package_text(), QUESTIONS_FILE
    else:
        text, source = Path(path).read_text(encoding="utf-8"), str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source}: not valid TOML: {e}") from None
    entries = data.get("question")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{source}: expected one or more [[question]] tables")
    questions, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{source}: question {i + 1} ({entry.get('id', 'no id')!r})"
        for key in ("id", "topic", "question", "answer"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ValueError(f"{where}: {key!r} must be a non-empty string, got {entry.get(key)!r}")
        unknown = sorted(set(entry) - {"id", "topic", "question", "answer", "code", "evidence"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
        if entry["topic"] not in TOPICS:
            raise ValueError(f"{where}: topic {entry['topic']!r} is not one of {', '.join(TOPICS)}")
        if entry["id"] in seen:
            raise ValueError(f"{where}: duplicate id {entry['id']!r}")
        seen.add(entry["id"])
        questions.append(
            Question(
                id=entry["id"],
                topic=entry["topic"],
                question=entry["question"].strip(),
                answer=entry["answer"].strip(),
                code=_strings(entry, "code", where),
                evidence=_strings(entry, "evidence", where),
            )
        )
    return questions


def select(
    questions: Sequence[Question], topics: Sequence[str] | None = None, *, shuffle: bool = False, seed: int = 0
) -> list[Question]:
    """The questions on ``topics`` (None or empty: all), in file order or shuffled by ``seed``."""
    topics = list(topics or [])
    unknown = [t for t in topics if t not in TOPICS]
    if unknown:
        raise ValueError(f"unknown topic(s) {', '.join(map(repr, unknown))}; valid topics: {', '.join(TOPICS)}")
    chosen = [q for q in questions if not topics or q.topic in topics]
    if shuffle:
        random.Random(seed).shuffle(chosen)  # a private generator: the same order for the same seed
    return chosen


def _question_text(q: Question, index: int, total: int) -> str:
    return f"[{index}/{total}] {q.topic} ({q.id})\nQ: {q.question}\n"


def _answer_text(q: Question) -> str:
    lines = [f"A: {q.answer}"]
    if q.code:
        lines.append("code: " + ", ".join(q.code))
    if q.evidence:
        lines.append("evidence: " + ", ".join(q.evidence))
    return "\n".join(lines) + "\n"


def render(questions: Sequence[Question]) -> str:
    """Every question followed by its answer, as ``lmobj quiz`` prints them when stdin is not a terminal."""
    total = len(questions)
    return "\n".join(_question_text(q, i, total) + _answer_text(q) for i, q in enumerate(questions, 1))


def render_list(questions: Sequence[Question]) -> str:
    """One line per question: id, topic and question (``lmobj quiz --list``)."""
    return "".join(f"{q.id:<22} {q.topic:<16} {' '.join(q.question.split())}\n" for q in questions)


def ask(
    questions: Sequence[Question],
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    interactive: bool | None = None,
) -> int:
    """Ask ``questions``: on a terminal one at a time, the answer on Enter (``q`` quits); else print them all.

    ``interactive=None`` asks ``stdin.isatty()``. Returns the number of questions shown.
    """
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    if interactive is None:
        interactive = stdin.isatty()
    if not interactive:
        stdout.write(render(questions))
        return len(questions)

    def wait(prompt: str) -> bool:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input: stop as if "q"
            stdout.write("\n")
            return False
        return line.strip().lower() not in ("q", "quit")

    total = len(questions)
    for i, q in enumerate(questions, 1):
        stdout.write(("\n" if i > 1 else "") + _question_text(q, i, total))
        if not wait("(Enter: show the answer, q: quit) "):
            return i
        stdout.write(_answer_text(q))
        if i < total and not wait("(Enter: next question, q: quit) "):
            return i
    return total


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``lmobj quiz``."""
    parser.add_argument(
        "--topic",
        action="append",
        choices=list(TOPICS),
        default=None,
        metavar="TOPIC",
        help="ask only about this topic (repeat for several); topics: "
        + "; ".join(f"{k} ({v})" for k, v in TOPICS.items()),
    )
    parser.add_argument("--shuffle", action="store_true", help="ask in a random order (see --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle's order")
    parser.add_argument("--list", action="store_true", help="list the questions (id, topic, question) and exit")


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """``lmobj quiz`` with the parsed flags of :func:`add_arguments`; returns the exit status."""
    stdout = sys.stdout if stdout is None else stdout
    try:
        questions = select(load_questions(), args.topic, shuffle=args.shuffle, seed=args.seed)
        if args.list:
            stdout.write(render_list(questions))
            return 0
        ask(questions, stdin=stdin, stdout=stdout)
    except KeyboardInterrupt:  # Ctrl-C while waiting for Enter
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
