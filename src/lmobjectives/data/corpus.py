"""Text corpora as lists of documents, a document being a list of sentences.

Two sources: :func:`builtin_corpus`, English prose taken from the Python
reference manual that ships with every CPython (so tests, examples and the CLI
run offline with nothing downloaded), and :func:`read_corpus` for your own
``.txt`` / ``.jsonl`` files. :func:`lmobjectives.data.sources.load_corpus` picks one from a string.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from pathlib import Path

__all__ = ["Document", "builtin_corpus", "read_corpus", "split_sentences"]

Document = list[str]
"""A document: its sentences, in order (whitespace-normalised, non-empty)."""

# --------------------------------------------------------------------------- sentences

# Words after which a full stop never ends a sentence (compared lower-case, without the final dot).
_ABBREVIATIONS = frozenset(
    {"e.g", "i.e", "cf", "vs", "viz", "approx", "resp", "mr", "mrs", "ms", "dr", "prof", "st", "no", "fig", "al"}
)
# A candidate boundary: terminal punctuation, optional closing quotes/brackets, whitespace, then
# something that can start a sentence (optional opening quote/bracket, then a capital or a digit,
# or a double quote as in '"None" is ...').
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]*[A-Z0-9]|[\"“])")
_LAST_WORD = re.compile(r"(\S+)$")


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences with a small rule-based splitter.

    Whitespace is normalised first (runs of spaces and newlines become one
    space). A sentence ends at ``.``, ``!`` or ``?`` (plus any closing quotes
    or brackets) followed by whitespace and a capital letter, a digit or an
    opening quote, except after the abbreviations ``e.g.``, ``i.e.``,
    ``cf.``, ``vs.``, ``viz.``, titles such as ``Dr.``, and single-letter
    initials (``J. Smith``). ``etc.`` is an ordinary word: it ends a sentence
    exactly when a capital letter follows. Decimal numbers (``3.8``) and
    dotted names (``str.format()``) never split, as no whitespace follows the
    dot.

    >>> split_sentences("Lists are mutable, e.g. via append. Tuples are not!  See 3.8 notes.")
    ['Lists are mutable, e.g. via append.', 'Tuples are not!', 'See 3.8 notes.']
    >>> split_sentences("Use ints, floats, etc. for numbers.   It works.")
    ['Use ints, floats, etc. for numbers.', 'It works.']
    >>> split_sentences("  ")
    []
    """
    if not isinstance(text, str):
        raise TypeError(f"split_sentences: text must be a str, got {type(text).__name__}")
    text = " ".join(text.split())
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        before = _LAST_WORD.search(text, start, match.start() + 1)  # the word carrying the punctuation
        word = before.group(1).lstrip("\"'“‘([").rstrip(".!?\"'”’)]").lower() if before else ""
        if text[match.start()] == "." and (word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
            continue
        sentences.append(text[start : match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


# --------------------------------------------------------------------------- builtin corpus

_UNDERLINE = re.compile(r"^([*=\-~^\"'`#+.])\1{2,}$")  # a section-heading underline
_TABLE_LINE = re.compile(r"^[+|=\-\s]{3,}$|^[+|]")  # grid / simple table borders and rows
_CODE_START = (">>>", "...", "#", "$ ")  # interactive sessions, comments, shell prompts
_BULLET = re.compile(r"^(?:[*\-•]|\d+\.|#\.|\(\d+\)|\[\d+\])\s+")  # list / footnote markers
_FOOTNOTE_REF = re.compile(r"\s*\[\d+\]")  # " [3]" footnote references inside prose
_WORDISH = re.compile(r"^[\"'“‘(*]*[A-Za-z][A-Za-z’'\-]*[\"'”’)*]*[.,;:!?]?[\"'”’)]*$")
_ENDS_SENTENCE = re.compile(r"[.!?][\"'”’)\]]*$")
_LABELS = frozenset(
    {"note:", "notes:", "warning:", "caution:", "attention:", "important:", "tip:", "hint:", "see also:"}
)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_prose(text: str) -> bool:
    """A whitespace-normalised block reads as prose: ends like a sentence, mostly words."""
    tokens = text.split()
    if len(tokens) < 4 or not (_ENDS_SENTENCE.search(text) or text.endswith(":")):
        return False
    wordish = sum(1 for t in tokens if _WORDISH.match(t))
    return wordish >= 0.6 * len(tokens)


def _topic_documents(text: str) -> list[list[str]]:
    """Prose paragraphs of one ``pydoc`` topic, grouped into one list per section."""
    sections: list[list[str]] = [[]]
    prev_text = ""  # normalised text of the previous block (any kind)
    prev_indent = 0  # indentation of the previous block's content
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.split("\n") if line.strip()]
        if not lines:
            continue
        if len(lines) == 2 and _UNDERLINE.match(lines[1].strip()):  # a heading starts a new document
            sections.append([])
            prev_text, prev_indent = "", 0
            continue
        indent = min(_indent(line) for line in lines)
        stripped = [line.strip() for line in lines]
        flat = " ".join(" ".join(stripped).split())
        # a literal block: indented under a paragraph that introduces it ("... is equivalent to" / "...:")
        # (a term of a definition list - "str.lower()", "p expression", "object.__dict__" - is no such paragraph)
        introduces = (
            prev_text[:1].isupper() and not _ENDS_SENTENCE.search(prev_text) and not prev_text.endswith((")", "]"))
        )
        literal = indent > prev_indent and introduces and prev_text.lower() not in _LABELS
        codeish = any(
            s.startswith(_CODE_START) or "::=" in s or _TABLE_LINE.match(s) or _UNDERLINE.match(s) for s in stripped
        )
        if not literal:  # content indentation of this block (a list item's text sits after its marker)
            marker = _BULLET.match(stripped[0])
            prev_indent = _indent(lines[1]) if len(lines) > 1 else indent + (marker.end() if marker else 0)
            prev_text = _BULLET.sub("", flat)
        if literal or codeish:
            continue
        prose = _FOOTNOTE_REF.sub("", _BULLET.sub("", flat))
        if _is_prose(prose):
            sections[-1].append(prose)
    return [s for s in sections if s]


@functools.cache
def _builtin_corpus() -> tuple[tuple[str, ...], ...]:
    from pydoc_data.topics import topics

    documents = []
    for name in sorted(topics):
        for paragraphs in _topic_documents(topics[name]):
            sentences = [s for p in paragraphs for s in split_sentences(p) if len(s.split()) >= 3]
            if sentences:
                documents.append(tuple(sentences))
    return tuple(documents)


def builtin_corpus() -> list[Document]:
    """English prose from the Python reference manual bundled with CPython.

    Source: ``pydoc_data.topics.topics`` (the text behind ``help("if")``),
    topics in sorted order. Each section of a topic (text under one heading)
    is one document. Only prose is kept: headings, grammar rules, tables,
    interactive sessions (``>>>``), literal code blocks (indented under the
    paragraph that introduces them) and fragments that do not end like a
    sentence are dropped; list markers and footnote references are removed;
    whitespace is normalised and the text is split with
    :func:`split_sentences`, keeping sentences of three words or more (which
    drops leftovers such as "For example:" whose example was code). Deterministic for a given Python version; nothing
    is downloaded.

    Measured on CPython 3.11.7 (79 topics): 205 documents, 3,076 sentences
    (15 per document on average, 199 documents with two or more), 336,854
    characters in sentences, 340,806 UTF-8 bytes once each document's
    sentences are joined by spaces. Other Python versions ship slightly
    different text. Built in about 0.3 s, then cached (each call returns
    fresh lists).

    >>> docs = builtin_corpus()
    >>> docs[0][0]
    'Assert statements are a convenient way to insert debugging assertions into a program:'
    """
    return [list(d) for d in _builtin_corpus()]


# --------------------------------------------------------------------------- files

_SUFFIXES = (".txt", ".jsonl")


def _read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; a ``ValueError`` naming the file, line and column where it is not UTF-8."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"read_corpus: cannot read {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(
            f"read_corpus: {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at line {line}, column {column}); "
            "convert it to UTF-8, or skip such files (--skip-bad-files, skip_bad_files=True)"
        ) from None


def _read_txt(path: Path) -> list[Document]:
    text = _read_text(path)
    documents = [split_sentences(chunk) for chunk in re.split(r"\n[ \t]*\n", text)]
    return [d for d in documents if d]


def _read_jsonl(path: Path) -> list[Document]:
    documents = []
    for lineno, line in enumerate(_read_text(path).split("\n"), start=1):  # not splitlines: U+2028 may sit in a string
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"read_corpus: {path}, line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(
                f'read_corpus: {path}, line {lineno}: expected an object with a string "text" field, '
                f"got {line.strip()[:80]!r}"
            )
        sentences = split_sentences(record["text"])
        if sentences:
            documents.append(sentences)
    return documents


def read_corpus(path: str | Path, *, skip_bad_files: bool = False) -> list[Document]:
    """Read documents from a ``.txt`` file, a ``.jsonl`` file or a folder of them.

    - ``.txt``: documents are separated by blank lines; each is split into
      sentences with :func:`split_sentences`.
    - ``.jsonl``: one JSON object per line with a string ``"text"`` field, one
      document per line (blank lines are skipped; a malformed line raises
      ``ValueError`` naming the file and line number).
    - a folder: every ``.txt`` / ``.jsonl`` file below it, recursively, in
      sorted order of their relative paths.

    Documents with no sentence are dropped. Raises ``ValueError`` naming the
    path if it does not exist, has another extension, or yields no document,
    and naming the file (and line) of a file that cannot be read or is not
    UTF-8; with ``skip_bad_files`` such a file is skipped with a warning that
    names it instead.

    For a file ``a.txt`` holding ``"One. Two.\\n\\nThree."``,
    ``read_corpus("a.txt") == [["One.", "Two."], ["Three."]]``.
    """
    if not isinstance(path, (str, Path)):
        raise TypeError(f"read_corpus: path must be a str or Path, got {type(path).__name__}")
    root = Path(path)
    if not root.exists():
        raise ValueError(f"read_corpus: {str(root)!r} does not exist")
    if root.is_dir():
        files = sorted(
            (p for p in root.rglob("*") if p.is_file() and p.suffix in _SUFFIXES),
            key=lambda p: p.relative_to(root).as_posix(),
        )
        if not files:
            raise ValueError(f"read_corpus: folder {str(root)!r} holds no .txt or .jsonl file")
    elif root.suffix in _SUFFIXES:
        files = [root]
    else:
        raise ValueError(f"read_corpus: {str(root)!r} has extension {root.suffix!r}; expected .txt, .jsonl or a folder")
    documents: list[Document] = []
    for file in files:
        try:
            documents.extend(_read_txt(file) if file.suffix == ".txt" else _read_jsonl(file))
        except ValueError as e:
            if not (skip_bad_files and ("not UTF-8" in str(e) or "cannot read" in str(e))):
                raise
            warnings.warn(f"skipping {file}: {str(e).split(': ', 1)[1]}", stacklevel=2)
    if not documents:
        raise ValueError(f"read_corpus: {str(root)!r} holds no text (no non-empty document)")
    return documents
