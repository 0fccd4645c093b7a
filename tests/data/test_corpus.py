"""Corpora: sentence splitting, the builtin (pydoc) corpus, reading .txt / .jsonl / folders."""

from __future__ import annotations

import json
import re

import pytest

from lmobjectives.data import builtin_corpus, load_corpus, read_corpus, split_sentences

# --------------------------------------------------------------------------- split_sentences


@pytest.mark.parametrize(
    "text, expected",
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Use e.g. lists, i.e. mutable ones. Done.", ["Use e.g. lists, i.e. mutable ones.", "Done."]),
        (
            "Ints, floats, etc. are numbers. Strings, etc. Next one.",
            ["Ints, floats, etc. are numbers.", "Strings, etc.", "Next one."],
        ),
        ("See str.format() and 3.8 notes. New\n  line   here.", ["See str.format() and 3.8 notes.", "New line here."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ('It ends. "None" is a value.', ["It ends.", '"None" is a value.']),
        ("Written by J. Smith et al. in 1999.", ["Written by J. Smith et al. in 1999."]),
        ("(A remark.) Another.", ["(A remark.)", "Another."]),
        ("", []),
        (" \n\t ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_split_sentences_type_error():
    with pytest.raises(TypeError, match="text"):
        split_sentences(["not", "a", "str"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- builtin corpus


@pytest.fixture(scope="module")
def corpus():
    return builtin_corpus()


def test_builtin_corpus_size_and_shape(corpus):
    n_sentences = sum(len(d) for d in corpus)
    n_chars = sum(len(s) for d in corpus for s in d)
    # the reference manual changes a little between Python versions: loose bounds
    assert 150 <= len(corpus) <= 400
    assert 2_000 <= n_sentences <= 8_000
    assert 200_000 <= n_chars <= 800_000
    assert all(isinstance(d, list) and d for d in corpus)
    assert all(isinstance(s, str) and s == " ".join(s.split()) and len(s.split()) >= 3 for d in corpus for s in d)
    assert sum(len(d) >= 2 for d in corpus) >= 0.8 * len(corpus)  # most documents can give NSP pairs


def test_builtin_corpus_is_deterministic_and_fresh(corpus):
    again = builtin_corpus()
    assert again == corpus
    again[0].append("mutated")
    assert builtin_corpus()[0] != again[0]  # callers get their own lists


def test_builtin_corpus_is_prose(corpus):
    sentences = [s for d in corpus for s in d]
    assert not [s for s in sentences if s.startswith((">>>", "...", "#"))]
    assert not [s for s in sentences if "::=" in s or "+---" in s or "====" in s]
    assert not [s for s in sentences if re.match(r"^(def|class) \w+\(.*\):|^(import|from) [\w.]+( import \w+)?$", s)]
    # most sentences look like sentences: a capital (or quote / marker) first, terminal punctuation last
    shaped = [s for s in sentences if re.match(r"^[\"'“(*A-Z0-9]", s) and re.search(r"[.!?:][\"'”)*]*$", s)]
    assert len(shaped) >= 0.95 * len(sentences)
    # the text is English: common words are frequent
    words = " ".join(sentences).lower().split()
    assert sum(w in {"the", "a", "is", "of", "to", "and"} for w in words) >= 0.1 * len(words)


def test_load_corpus_builtin(corpus):
    assert load_corpus("builtin") == corpus


# --------------------------------------------------------------------------- files


def test_read_txt(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("One. Two\nwraps here.\n\n\n  \nThree!\n\n", encoding="utf-8")
    assert read_corpus(path) == [["One.", "Two wraps here."], ["Three!"]]
    assert read_corpus(str(path)) == load_corpus(str(path))


def test_read_jsonl(tmp_path):
    path = tmp_path / "b.jsonl"
    lines = [
        json.dumps({"text": "Alpha. Beta.", "id": 1}),
        "",
        json.dumps({"text": "Gamma é."}),
        json.dumps({"text": " "}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_corpus(path) == [["Alpha.", "Beta."], ["Gamma é."]]


def test_read_folder_sorted_and_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("Bee.", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "Ay."}) + "\n", encoding="utf-8")
    (tmp_path / "sub" / "c.txt").write_text("Sea.", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("Not read.", encoding="utf-8")
    assert read_corpus(tmp_path) == [["Ay."], ["Bee."], ["Sea."]]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"txt": "x"}', 'line 2: expected an object with a string "text"'),
        ('["x"]', "line 2"),
    ],
)
def test_read_jsonl_bad_line_names_it(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "Fine."}) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        read_corpus(path)
    assert "bad.jsonl" in str(info.value)


def test_read_corpus_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_corpus(tmp_path / "missing.txt")
    (tmp_path / "x.csv").write_text("a,b", encoding="utf-8")
    with pytest.raises(ValueError, match=r"x\.csv.*extension '\.csv'"):
        read_corpus(tmp_path / "x.csv")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt.*no text"):
        read_corpus(tmp_path / "empty.txt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="holds no .txt or .jsonl"):
        read_corpus(tmp_path / "nothing")
    with pytest.raises(TypeError, match="path"):
        read_corpus(3)  # type: ignore[arg-type]
