"""lmobj quiz: the question set loads, every path it links exists, topics filter, output is deterministic."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lmobjectives import OBJECTIVES
from lmobjectives.cli import main, quiz
from lmobjectives.cli.quiz import TOPICS, Question, ask, load_questions, render, select

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "guide"
QUESTIONS = load_questions()


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", path.read_text(encoding="utf-8"), re.M)}


def _defines(path: Path, name: str) -> bool:
    pattern = rf"^\s*(def|class) {re.escape(name)}\b|^{re.escape(name)}\s*(:[^=]*)?="
    return re.search(pattern, path.read_text(encoding="utf-8"), re.M) is not None


def test_questions_load_with_unique_ids_and_cover_every_topic():
    assert len(QUESTIONS) >= 30
    assert len({q.id for q in QUESTIONS}) == len(QUESTIONS)
    for topic in TOPICS:
        assert sum(q.topic == topic for q in QUESTIONS) >= 3, topic
    assert all(q.code or q.evidence for q in QUESTIONS)


@pytest.mark.parametrize("q", QUESTIONS, ids=lambda q: q.id)
def test_every_linked_path_exists(q: Question):
    for link in q.code:
        path, _, name = link.partition("::")
        assert (ROOT / path).is_file(), f"{q.id}: {path} does not exist"
        if name:
            assert _defines(ROOT / path, name), f"{q.id}: {path} defines no {name!r}"
    for link in q.evidence:
        path, _, anchor = link.partition("#")
        path, _, name = path.partition("::")
        assert (ROOT / path).is_file(), f"{q.id}: {path} does not exist"
        if name:
            assert _defines(ROOT / path, name), f"{q.id}: {path} defines no {name!r}"
        if anchor:
            assert anchor in _anchors(ROOT / path), f"{q.id}: {path} has no heading with anchor #{anchor}"


@pytest.mark.parametrize("topic", list(TOPICS))
def test_each_topic_filter_selects_exactly_its_questions(topic):
    chosen = select(QUESTIONS, [topic])
    assert chosen and all(q.topic == topic for q in chosen)
    assert [q.id for q in chosen] == [q.id for q in QUESTIONS if q.topic == topic]


def test_several_topics_and_no_topic():
    both = select(QUESTIONS, ["electra", "mtp"])
    assert {q.topic for q in both} == {"electra", "mtp"}
    assert select(QUESTIONS, None) == select(QUESTIONS, []) == QUESTIONS


def test_unknown_topic_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown topic\(s\) 'bert'.*valid topics: mlm-vs-clm"):
        select(QUESTIONS, ["bert"])


def test_shuffle_is_a_permutation_fixed_by_the_seed():
    a = select(QUESTIONS, shuffle=True, seed=3)
    assert a == select(QUESTIONS, shuffle=True, seed=3)
    assert sorted(q.id for q in a) == sorted(q.id for q in QUESTIONS)
    assert a != QUESTIONS and a != select(QUESTIONS, shuffle=True, seed=4)


def test_non_interactive_output_is_every_question_and_answer_in_order():
    qs = select(QUESTIONS, ["sft"])
    out = io.StringIO()
    assert ask(qs, stdin=io.StringIO(""), stdout=out, interactive=False) == len(qs)
    text = out.getvalue()
    assert text == render(qs)
    positions = [text.index(f"Q: {q.question}") for q in qs]
    assert positions == sorted(positions)
    for q in qs:
        assert f"A: {q.answer}" in text and ", ".join(q.code) in text


def test_interactive_reveals_on_enter_and_quits_on_q():
    qs = select(QUESTIONS, ["prefix-lm"])
    out = io.StringIO()
    shown = ask(qs, stdin=io.StringIO("\n\n\nq\n"), stdout=out, interactive=True)  # answer 1, next, answer 2, quit
    text = out.getvalue()
    assert shown == 2
    assert f"A: {qs[0].answer}" in text and f"A: {qs[1].answer}" in text
    assert f"Q: {qs[2].question}" not in text
    out = io.StringIO()
    assert ask(qs, stdin=io.StringIO(""), stdout=out, interactive=True) == 1  # end of input: stop, no answer
    assert "A: " not in out.getvalue()


def test_cli_quiz_is_deterministic_without_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal
    outputs = []
    for _ in range(2):
        assert main(["quiz", "--topic", "masking", "--topic", "electra", "--shuffle", "--seed", "7"]) == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == render(select(QUESTIONS, ["masking", "electra"], shuffle=True, seed=7))


def test_cli_list_and_bad_topic(capsys):
    assert main(["quiz", "--list", "--topic", "losses"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(select(QUESTIONS, ["losses"])) and all(line.startswith("losses-") for line in lines)
    with pytest.raises(SystemExit) as e:
        main(["quiz", "--topic", "bert"])
    assert e.value.code == 2
    assert "invalid choice: 'bert'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"expected one or more \[\[question\]\]"),
        ('[[question]]\nid = "a"\ntopic = "nope"\nquestion = "q"\nanswer = "a"\n', r"topic 'nope' is not one of"),
        ('[[question]]\nid = "a"\ntopic = "mtp"\nquestion = ""\nanswer = "a"\n', r"'question' must be a non-empty"),
        (
            '[[question]]\nid = "a"\ntopic = "mtp"\nquestion = "q"\nanswer = "a"\ncode = "x.py"\n',
            r"'code' must be a list",
        ),
        (
            '[[question]]\nid = "a"\ntopic = "mtp"\nquestion = "q"\nanswer = "a"\nhint = "h"\n',
            r"unknown key\(s\) 'hint'",
        ),
        ('[[question]]\nid = "a"\ntopic = "mtp"\nquestion = "q"\nanswer = "a"\n' * 2, r"duplicate id 'a'"),
        ("[[question]\n", r"not valid TOML"),
    ],
)
def test_bad_question_files_are_refused(tmp_path, text, match):
    path = tmp_path / "q.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_questions(path)


def test_question_file_is_package_data():
    """The set is read through importlib.resources, so it must ship inside the package (pyproject package-data)."""
    assert (Path(quiz.__file__).parent / quiz.QUESTIONS_FILE).is_file()


def test_guide_has_a_section_and_a_small_picture_per_objective():
    anchors = _anchors(GUIDE / "objectives.md")
    for name in OBJECTIVES:
        assert name in anchors, f"docs/guide/objectives.md has no '## {name}' section"
        picture = GUIDE / "img" / f"{name}.png"
        assert picture.is_file() and picture.stat().st_size < 150_000, picture


@pytest.mark.slow
def test_quiz_runs_as_a_command_with_stdin_not_a_terminal():
    done = subprocess.run(
        [sys.executable, "-m", "lmobjectives", "quiz", "--topic", "mtp"],
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == render(select(QUESTIONS, ["mtp"]))
