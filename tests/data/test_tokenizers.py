"""Tokenizers: byte tokenizer (exact ids), trained BPE / WordPiece, save / load round trips."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives.data import ByteTokenizer, HFTokenizer, Tokenizer, builtin_corpus, load_tokenizer, train_tokenizer
from lmobjectives.vocab import Vocab

needs_hf = pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None, reason="needs lmobjectives[hf]")


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return [s for doc in builtin_corpus() for s in doc][:300]


@pytest.fixture(scope="module", params=[pytest.param("bpe", marks=needs_hf), pytest.param("wordpiece", marks=needs_hf)])
def trained(request, sentences) -> HFTokenizer:
    return train_tokenizer(sentences, request.param, vocab_size=400)


# --------------------------------------------------------------------------- byte tokenizer


def test_byte_vocab_and_specials():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.vocab == Vocab(
        size=263, pad_id=256, unk_id=257, cls_id=258, sep_id=259, mask_id=260, bos_id=261, eos_id=262
    )
    assert (ByteTokenizer.PAD, ByteTokenizer.EOS, ByteTokenizer.SIZE) == (256, 262, 263)
    assert tok.decode([104, 105, 256, 257, 258, 259, 260, 261, 262]) == "hi[PAD][UNK][CLS][SEP][MASK][BOS][EOS]"


def test_byte_round_trip_non_ascii():
    tok = ByteTokenizer()
    text = "Grüße, 世界! 🎉\ttab\nnew line"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert max(ids) < 256
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.decode([0xFF, 104]) == "\ufffdh"  # invalid UTF-8 is replaced, not an error


def test_byte_word_ids_literal():
    tok = ByteTokenizer()
    assert tok.encode_words("ab cd") == ([97, 98, 32, 99, 100], [0, 0, -1, 1, 1])
    assert tok.encode_words("  é x\n") == ([32, 32, 195, 169, 32, 120, 10], [-1, -1, 0, 0, -1, 1, -1])
    assert tok.encode_words("") == ([], [])
    batch = torch.tensor([[97, 32, 98, 256, 99], [260, 97, 97, 262, 256]])
    assert tok.word_ids(batch).tolist() == [[0, -1, 1, -1, 2], [-1, 0, 0, -1, -1]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.sampled_from(list("ab é\t\n世")), max_size=30), min_size=1, max_size=4))
def test_byte_word_ids_vectorised_matches_encode_words(texts):
    tok = ByteTokenizer()
    encoded = [tok.encode_words(t) for t in texts]
    T = max(1, max(len(ids) for ids, _ in encoded))
    batch = torch.full((len(texts), T), ByteTokenizer.PAD)
    expected = torch.full((len(texts), T), -1)
    for row, (ids, words) in enumerate(encoded):
        batch[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        expected[row, : len(words)] = torch.tensor(words, dtype=torch.long)
    assert torch.equal(tok.word_ids(batch), expected)
    for t, (_, words) in zip(texts, encoded):  # word count = whitespace-separated words
        assert max(words, default=-1) + 1 == len(t.split())


def test_byte_errors():
    tok = ByteTokenizer()
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="263"):
        tok.word_ids(torch.tensor([[263]]))
    with pytest.raises(ValueError, match="shape"):
        tok.word_ids(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="-1"):
        tok.decode([-1])


def test_byte_save_load(tmp_path):
    ByteTokenizer().save(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "lmobjectives_tokenizer.json").read_text())["type"] == "byte"
    assert isinstance(load_tokenizer(str(tmp_path / "tok")), ByteTokenizer)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)


# --------------------------------------------------------------------------- trained HF tokenizers


def test_trained_vocab_has_every_special(trained):
    vocab = trained.vocab
    assert vocab == Vocab(size=vocab.size, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4, bos_id=5, eos_id=6)
    assert 300 < vocab.size <= 400
    assert trained.tokenizer.token_to_id("[MASK]") == 4


def test_trained_is_deterministic(trained, sentences):
    kind = "bpe" if "BPE" in repr(trained) else "wordpiece"
    again = train_tokenizer(iter(sentences), kind, vocab_size=400)
    assert again.tokenizer.to_str() == trained.tokenizer.to_str()


def test_trained_encode_adds_no_specials_and_round_trips(trained):
    text = "The object is returned by a function call."
    ids, words = trained.encode_words(text)
    assert ids == trained.encode(text)
    assert not set(ids) & set(trained.vocab.special_ids)
    assert len(words) == len(ids)
    assert words[0] == 0 and all(b - a in (0, 1) for a, b in zip(words, words[1:]))  # numbered 0, 1, 2, ...
    assert trained.decode(ids) == text  # both decoders restore this (ASCII, single-spaced) text


@needs_hf
def test_trained_word_ids_group_whole_words():
    hf = train_tokenizer(["the cat sat on the mat.", "cats and hats"] * 10, "wordpiece", vocab_size=29)
    ids, words = hf.encode_words("the cats.")
    assert [hf.tokenizer.id_to_token(i) for i in ids] == ["the", "cat", "##s", "."]
    assert words == [0, 1, 1, 2]


def test_trained_save_load_round_trip(trained, tmp_path):
    trained.save(tmp_path / "model")
    for spec in (str(tmp_path / "model"), str(tmp_path / "model" / "tokenizer.json")):
        loaded = load_tokenizer(spec)
        assert isinstance(loaded, HFTokenizer)
        assert loaded.vocab == trained.vocab
        assert loaded.encode_words("Objects are abstractions.") == trained.encode_words("Objects are abstractions.")


@needs_hf
def test_load_tokenizer_trains_from_spec(sentences):
    tok = load_tokenizer("wordpiece:300", texts=sentences)
    assert isinstance(tok, HFTokenizer) and tok.vocab.size <= 300
    with pytest.raises(ValueError, match="texts"):
        load_tokenizer("bpe:300")


def test_vocab_from_transformers_tokenizer(trained):
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=trained.tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )
    assert Vocab.from_tokenizer(fast) == trained.vocab


@needs_hf
def test_train_and_load_errors(tmp_path, sentences):
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(sentences, "unigram", 300)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="263"):
        train_tokenizer(sentences, "bpe", 100)
    with pytest.raises(ValueError, match="empty"):
        train_tokenizer([], "wordpiece", 300)
    with pytest.raises(TypeError, match="item 1"):
        train_tokenizer(["ok", 3], "bpe", 300)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="'byte'"):
        load_tokenizer("sentencepiece:100")
    with pytest.raises(ValueError, match="holds no tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_vocab_reads_t5_sentinels_paradigm_and_fim_tokens_from_a_tokenizer():
    tk = pytest.importorskip("tokenizers")
    tok = tk.Tokenizer(tk.models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    # added out of order on purpose: sentinel_ids follow the number in <extra_id_N>, not the id
    tok.add_special_tokens(["<extra_id_1>", "[NLG]", "<extra_id_0>", "<|fim_middle|>", "<extra_id_2>", "<extra_id_9>"])
    vocab = Vocab.from_tokenizer(tok)
    ids = {t: tok.token_to_id(t) for t in ("<extra_id_0>", "<extra_id_1>", "<extra_id_2>", "<extra_id_9>", "[NLG]")}
    assert vocab.sentinel_ids == (ids["<extra_id_0>"], ids["<extra_id_1>"], ids["<extra_id_2>"])  # stops at a gap
    assert (vocab.nlg_id, vocab.nlu_id, vocab.fim_middle_id) == (ids["[NLG]"], None, tok.token_to_id("<|fim_middle|>"))
    assert vocab.extra_special_ids == (ids["<extra_id_9>"],)  # reserved, but not a sentinel in order
    assert set(vocab.sentinel_ids) <= set(vocab.special_ids)


def test_extra_special_tokens_are_reserved_saved_and_added_where_missing(tmp_path):
    extra = ("<extra_id_0>", "<extra_id_1>", "[S2S]")
    byte = load_tokenizer("byte", extra_special_tokens=extra)
    assert (byte.vocab.size, byte.vocab.sentinel_ids, byte.vocab.s2s_id) == (266, (263, 264), 265)
    assert byte.decode([104, 263, 265]) == "h<extra_id_0>[S2S]"
    byte.save(tmp_path / "byte")
    again = load_tokenizer(str(tmp_path / "byte"))
    assert again.vocab == byte.vocab
    grown = load_tokenizer(
        str(tmp_path / "byte"), extra_special_tokens=("<|fim_prefix|>",)
    )  # appended after the saved ones
    assert (grown.vocab.size, grown.vocab.fim_prefix_id, grown.vocab.sentinel_ids) == (267, 266, (263, 264))
    with pytest.raises(ValueError, match="repeats built-in special tokens"):
        ByteTokenizer(("[MASK]",))
    pytest.importorskip("tokenizers")
    texts = ["the cat sat on the mat", "a dog and a cat"] * 5
    bpe = load_tokenizer("bpe:300", texts=texts, extra_special_tokens=extra)
    assert bpe.vocab.sentinel_ids == (7, 8) and bpe.vocab.s2s_id == 9  # right after the seven built-in specials
    bpe.save(tmp_path / "bpe")
    plain = load_tokenizer(str(tmp_path / "bpe" / "tokenizer.json"), extra_special_tokens=("<extra_id_2>",))
    assert plain.vocab.sentinel_ids == (7, 8, bpe.vocab.size)  # a loaded tokenizer gets what it lacks, at the end
