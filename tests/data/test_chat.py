"""Chat data: JSONL conversations (read, write, errors with file and line), the built-in chat set, documents as
conversations, and the trainer's conversations layout (tokenised, truncated, dropped-and-counted, packed)."""

from __future__ import annotations

import json

import pytest
import torch

from lmobjectives.constants import IGNORE_INDEX
from lmobjectives.data.chat import (
    builtin_chat,
    chat_texts,
    conversations_from_documents,
    example_chat,
    load_chat,
    read_chat,
    write_chat,
)
from lmobjectives.data.chat_template import CHAT_TOKENS, tokenize_conversation
from lmobjectives.data.corpus import builtin_corpus
from lmobjectives.data.sources import data_texts, load_data
from lmobjectives.data.tokenizers import ByteTokenizer
from lmobjectives.objectives.sft import SupervisedFineTuning
from lmobjectives.recipes import Recipe
from lmobjectives.recipes.step_losses import sft_step_loss
from lmobjectives.training.streams import ConversationStream, build_stream

RECIPE = Recipe(SupervisedFineTuning, "sft", data="conversations", special_tokens=CHAT_TOKENS, loss=sft_step_loss)
TOK = ByteTokenizer(extra_special_tokens=CHAT_TOKENS)
CHAT = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
    {"prompt": "2+2=", "completion": "4"},
    {
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Héllo"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye."},
        ]
    },
]


def test_write_then_read_round_trips(tmp_path):
    path = tmp_path / "chat.jsonl"
    write_chat(CHAT, path)
    assert path.read_text(encoding="utf-8").count("\n") == 3 and "Héllo" in path.read_text(encoding="utf-8")
    assert read_chat(path) == CHAT
    assert load_chat(str(path)) == CHAT


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", r"line 2: not valid JSON"),
        ("[1, 2]", r"line 2: expected a JSON object, got list"),
        ('{"text": "hi"}', r"line 2: record must have a 'messages' list or 'prompt' and 'completion' fields"),
        (
            '{"messages": [{"role": "bot", "content": "x"}]}',
            r"line 2: record\['messages'\]\[0\]\['role'\] must be one of .*, got 'bot'",
        ),
        ('{"messages": [{"role": "user", "content": "x"}]}', r"line 2: record\['messages'\] has no assistant turn"),
    ],
)
def test_bad_lines_are_named_with_file_and_line(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(CHAT[0]) + "\n" + line + "\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"read_chat: .*bad.jsonl, {match}"):
        read_chat(path)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        read_chat(tmp_path / "missing.jsonl")
    (tmp_path / "a.txt").write_text("Hello.")
    with pytest.raises(ValueError, match=r"has extension '.txt'; chat data is a .jsonl file"):
        read_chat(tmp_path / "a.txt")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="holds no conversation"):
        read_chat(tmp_path / "empty.jsonl")
    with pytest.raises(TypeError, match="spec must be 'builtin' or a path"):
        load_chat(3)  # type: ignore[arg-type]


def test_builtin_chat_asks_about_each_section_of_the_manual():
    chat = builtin_chat()
    sections = builtin_corpus()
    assert len(chat) == len(sections)  # one conversation per section (document) of the built-in corpus
    for record, sentences in zip(chat, sections):
        messages = record["messages"]
        assert [m["role"] for m in messages] in (["user", "assistant"], ["user", "assistant"] * 2)
        assert messages[0]["content"].startswith(("Explain ", "More on "))
        answers = " ".join(m["content"] for m in messages[1::2])
        assert " ".join(sentences).startswith(answers)  # the section's own sentences, in order
        for m in messages[1::2]:  # whole sentences up to 300 characters, or one longer sentence
            assert len(m["content"]) <= 300 or m["content"] in sentences
    assert sum(len(r["messages"]) == 4 for r in chat) > 0.8 * len(
        chat
    )  # most sections go on (CPython 3.11: 178 of 205)
    assert chat[0]["messages"][0] == {"role": "user", "content": "Explain assert."}
    assert builtin_chat() == chat and builtin_chat() is not chat  # deterministic, fresh lists
    assert load_chat("builtin") == chat


def test_conversations_from_documents_and_texts():
    records = conversations_from_documents([["A b c.", "D e f.", "G h."], ["Alone."]])
    assert records == [
        {"messages": [{"role": "user", "content": "A b c."}, {"role": "assistant", "content": "D e f. G h."}]}
    ]
    with pytest.raises(ValueError, match="none of the 1 documents has two sentences"):
        conversations_from_documents([["Alone."]])
    assert chat_texts(CHAT) == ["Hi", "Yo", "2+2=", "4", "Be kind.", "Héllo", "Hi!", "Bye", "Bye."]
    assert data_texts(CHAT) == chat_texts(CHAT) and data_texts([["A.", "B."]]) == ["A.", "B."]


def test_example_chat_fits_a_row_of_32_byte_tokens():
    assert all(len(tokenize_conversation(r, TOK).input_ids) <= 32 for r in example_chat())


def test_load_data_picks_the_layout():
    from lmobjectives.recipes import OBJECTIVES

    assert load_data("builtin", RECIPE.data) == builtin_chat()
    assert load_data("builtin", OBJECTIVES["clm"].data) == builtin_corpus()


# ----------------------------------------------------------------------------- the conversations layout


def test_stream_packs_whole_conversations_and_reports():
    objective = SupervisedFineTuning(TOK.vocab)
    stream = build_stream(RECIPE, objective, CHAT, TOK, seq_len=64, batch_size=2, seed=0)
    assert isinstance(stream, ConversationStream)
    lengths = [len(tokenize_conversation(r, TOK).input_ids) for r in CHAT]  # the third is cut to 64
    assert lengths == [25, 6, 76]
    assert stream.report == {
        "conversations": 3,
        "kept": 3,
        "truncated": 1,
        "no_target": 0,
        "with_merges": 0,
        "boundary_merges": 0,
    }
    assert stream.num_examples == 2  # 64 | 25 + 6
    assert sorted(stream.extras["attention_mask"].sum(-1).tolist()) == [31, 64]
    position = stream.position(0)
    assert position["truncated"] == 1 and position["kept"] == 3 and position["fingerprint"] == stream.fingerprint
    batch = stream(0)
    assert batch.labels.shape == (2, 64) and (batch.labels != IGNORE_INDEX).any(-1).all()
    again = build_stream(RECIPE, objective, CHAT, TOK, seq_len=64, batch_size=2, seed=0)
    assert again.fingerprint == stream.fingerprint and torch.equal(again(3).labels, stream(3).labels)


def test_conversations_with_nothing_to_learn_are_dropped_and_counted():
    objective = SupervisedFineTuning(TOK.vocab, train_on="completion")
    long_prompt = {"messages": [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "Sure."}]}
    with pytest.warns(
        UserWarning,
        match=r"1 of 3 conversations have no learned token within seq_len=32 "
        r"\(train_on='completion'; conversations truncated to seq_len: 1\) and are dropped",
    ):
        stream = build_stream(RECIPE, objective, [long_prompt, *example_chat()], TOK, seq_len=32, batch_size=1, seed=0)
    assert stream.report["no_target"] == 1 and stream.report["kept"] == 2
    with pytest.raises(ValueError, match=r"no conversation has a learned token within seq_len=16"):
        build_stream(RECIPE, objective, example_chat(), TOK, seq_len=16, batch_size=1, seed=0)


def test_bad_conversations_are_named_by_index():
    with pytest.raises(ValueError, match=r"conversation 1: messages\[0\]\['role'\] must be one of .*, got 'bot'"):
        build_stream(
            RECIPE,
            SupervisedFineTuning(TOK.vocab),
            [CHAT[0], [{"role": "bot", "content": "x"}]],
            TOK,
            seq_len=64,
            batch_size=1,
            seed=0,
        )


def test_documents_become_conversations_in_the_stream():
    documents = [["Hi there.", "Yo."], ["Why?", "Because."]]
    stream = build_stream(RECIPE, SupervisedFineTuning(TOK.vocab), documents, TOK, seq_len=64, batch_size=1, seed=0)
    assert stream.report["kept"] == 2
    text = TOK.decode(stream.input_ids[stream.extras["attention_mask"]].tolist())
    assert "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\nBecause.<|im_end|>\n" in text


def test_merges_across_a_boundary_are_reported_by_the_stream():
    tokenizers = pytest.importorskip("tokenizers")
    from lmobjectives.data.tokenizers import HFTokenizer

    chars = sorted(set("user\nHi assistant\nSure"))
    vocab = {c: i for i, c in enumerate(chars)}
    vocab["\nS"] = len(vocab)  # the ChatML header's newline merges with an answer starting with "S"
    inner = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[("\n", "S")]))
    inner.add_special_tokens(["[PAD]", *CHAT_TOKENS])
    tok = HFTokenizer(inner)
    chats = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": a}] for a in ("Sure", "Hi")]
    with pytest.warns(
        UserWarning,
        match=r"1 of 2 conversations tokenise differently as a whole than part by part "
        r"\(1 part boundaries merged",
    ):
        stream = build_stream(RECIPE, SupervisedFineTuning(tok.vocab), chats, tok, seq_len=64, batch_size=1, seed=0)
    assert stream.report["with_merges"] == 1 and stream.report["boundary_merges"] == 1
    batch = stream(0)
    learned = batch.input_ids[0, 1:][batch.labels[0, :-1] != IGNORE_INDEX].tolist()
    assert tok.decode(learned).replace(" ", "") in ("Sure<|im_end|>Hi<|im_end|>", "Hi<|im_end|>Sure<|im_end|>")
