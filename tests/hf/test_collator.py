"""The collator's conventions: packed documents do not see each other (logits packed = alone) under eager and
SDPA attention, EOS is learned when pad == eos, missing columns are refused with the fix, draws are a function
of (seed, epoch, rows), and the names match what each HF head takes."""

from __future__ import annotations

import pytest
import torch

from lmobjectives.constants import IGNORE_INDEX
from lmobjectives.hf import collator
from lmobjectives.hf.features import shift_for_hf


def _docs(tokenizer, corpus):
    eos = tokenizer.eos_token_id
    a, b = (tokenizer(t, add_special_tokens=False)["input_ids"][:12] + [eos] for t in corpus.texts(2, 1))
    return a, b


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("packed_attention", ["mask", "position_ids"])
def test_a_packed_document_has_the_logits_it_has_alone(kind, attn, packed_attention, gpt_tokenizer, build, corpus):
    a, b = _docs(gpt_tokenizer, corpus)
    model = build(kind, gpt_tokenizer, attn=attn)
    rows = [{"input_ids": a + b}, {"input_ids": a}]  # a padded second row too
    features = collator("clm", gpt_tokenizer, document_masking=True, packed_attention=packed_attention)(rows)
    assert ("attention_mask" in features) == (packed_attention == "mask")
    assert features["position_ids"][0].tolist() == [*range(len(a)), *range(len(b))]
    with torch.no_grad():
        # use_cache=False, as in training: transformers detects packing from position_ids only without a cache
        packed = model(**{k: v for k, v in features.items() if k != "labels"}, use_cache=False).logits  # (2, T, V)
        alone_a = model(input_ids=torch.tensor([a])).logits[0]
        alone_b = model(input_ids=torch.tensor([b])).logits[0]
        leaky = model(input_ids=torch.tensor([a + b])).logits[0, len(a) :]  # the same row without document masking
    torch.testing.assert_close(packed[0, : len(a)], alone_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[0, len(a) :], alone_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[1, : len(a)], alone_a, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(leaky, alone_b, atol=1e-3)  # the check can fail: without masking b sees a


def test_labels_are_unshifted_and_eos_is_learned_when_pad_is_eos(gpt_tokenizer, corpus):
    a, b = _docs(gpt_tokenizer, corpus)
    assert gpt_tokenizer.pad_token_id == gpt_tokenizer.eos_token_id
    col = collator("clm", gpt_tokenizer)
    features = col([{"input_ids": a}, {"input_ids": b[:5]}])  # row 1 is padded with the EOS id
    labels, ids = features["labels"], features["input_ids"]
    assert torch.equal(labels[0, 1:], ids[0, 1:])  # HF's unshifted convention: labels = input_ids ...
    assert labels[0, 0] == IGNORE_INDEX  # ... except position 0, which nothing predicts
    assert labels[0, len(a) - 1] == gpt_tokenizer.eos_token_id  # the EOS is a target
    assert (labels[1, 5:] == IGNORE_INDEX).all() and features["attention_mask"][1, 5:].sum() == 0  # padding is not
    assert shift_for_hf(torch.tensor([[8, 2, 9, 2, -100, -100]])).tolist() == [[-100, 8, 2, 9, 2, -100]]


def test_an_attention_mask_column_holds_only_0_and_1(gpt_tokenizer, corpus):
    a, _ = _docs(gpt_tokenizer, corpus)
    with pytest.raises(ValueError, match=r"attention_mask must hold only 0 and 1 .*got 2"):
        collator("clm", gpt_tokenizer)([{"input_ids": a, "attention_mask": [1] * (len(a) - 1) + [2]}])


def test_text_rows_end_in_eos(gpt_tokenizer, corpus):
    features = collator("clm", gpt_tokenizer)([{"text": t} for t in corpus.texts(3, 1)])
    real = features["attention_mask"].bool()
    last = real.sum(-1) - 1
    assert (features["input_ids"][torch.arange(3), last] == gpt_tokenizer.eos_token_id).all()
    assert (features["labels"][torch.arange(3), last] == gpt_tokenizer.eos_token_id).all()


@pytest.mark.parametrize(
    "name, options, rows, column",
    [
        ("mlm", {}, [{"attention_mask": [1, 1]}], "input_ids"),
        ("mlm", {"unit": "word"}, [{"input_ids": [5, 6, 7]}], "word_ids"),
        ("nsp", {}, [{"document": 1}], "sentences"),
        ("fim", {}, [{"input_ids": [5, 6]}], "text"),
        ("sft", {}, [{"input_ids": [5, 6]}], "roles"),
        ("sft", {}, [{"labels": [5, 6]}], "messages"),
    ],
)
def test_a_dropped_column_is_refused_with_the_fix(name, options, rows, column, bert_tokenizer, gpt_tokenizer):
    tok = gpt_tokenizer if name in ("fim", "sft") else bert_tokenizer
    with pytest.raises(KeyError) as e:
        collator(name, tok, **options)(rows)
    message = str(e.value)
    assert f"no {column!r} column" in message and "remove_unused_columns=False" in message and "\n" not in message


def test_draws_are_a_function_of_seed_epoch_and_rows(bert_tokenizer, corpus):
    rows = [{"text": t} for t in corpus.texts(6)]
    one, two = collator("mlm", bert_tokenizer, seed=0), collator("mlm", bert_tokenizer, seed=0)
    assert torch.equal(one(rows)["labels"], two(rows)["labels"])  # another collator, another process: the same
    assert torch.equal(one(rows)["labels"], one(rows)["labels"])  # the call order does not matter
    assert not torch.equal(one(rows)["labels"], collator("mlm", bert_tokenizer, seed=1)(rows)["labels"])
    two.set_epoch(3)
    assert not torch.equal(one(rows)["labels"], two(rows)["labels"])


def test_objectives_without_a_hf_head_are_refused_in_one_line(gpt_tokenizer, corpus):
    with pytest.raises(ValueError, match="no Hugging Face head"):
        collator("mtp", gpt_tokenizer)([{"text": t} for t in corpus.texts(2)])


def test_xlnet_gets_perm_mask_and_target_mapping(bert_tokenizer, corpus):
    features = collator("plm", bert_tokenizer, max_length=32)([{"text": t} for t in corpus.texts(2)])
    assert {"perm_mask", "target_mapping", "labels"} <= set(features)
    assert features["perm_mask"].dtype == torch.float32 and features["perm_mask"].shape == (2, 32, 32)


def test_xlnets_query_stream_sees_what_perm_mask_allows(bert_tokenizer, corpus, build):
    """perm_mask's convention (1 = query i may not see key j) as XLNetLMHeadModel reads it: in a one-layer XLNet
    the query stream of a target changes with the token of a key it may see, never with one it may not."""
    features = collator("plm", bert_tokenizer, max_length=32, seed=4)([{"text": t} for t in corpus.texts(2)])
    model = build("xlnet", bert_tokenizer, n_layer=1)
    assert torch.equal(features["target_mapping"][0], torch.eye(32))  # prediction k is position k

    def query(ids):  # the query stream (B, P, d)
        return model.transformer(**{**features, "input_ids": ids}, use_mems=False)[0]

    base = query(features["input_ids"])
    real = features["attention_mask"][0].bool()
    checked = 0
    for i in (features["labels"][0] != -100).nonzero().flatten().tolist():
        hidden = (features["perm_mask"][0, i].bool() & real).nonzero().flatten().tolist()
        seen = (~features["perm_mask"][0, i].bool() & real).nonzero().flatten().tolist()
        for j, visible in ((hidden[0], False), (seen[-1], True)):
            ids = features["input_ids"].clone()
            ids[0, j] = 7 if ids[0, j] != 7 else 8
            moved = not torch.allclose(query(ids)[0, i], base[0, i], rtol=0, atol=1e-6)
            assert moved == visible, (i, j, visible)
        checked += 1
    assert checked >= 2


def test_decoder_layouts_get_room_for_their_last_target(t5_tokenizer, corpus):
    col = collator("span_corruption", t5_tokenizer, layout="decoder", max_length=40)
    rows = [{"text": t} for t in corpus.texts(3)]
    batch, features = col.batch(rows), col(rows)
    assert features["input_ids"].shape[1] == batch.input_ids.shape[1] + 1  # one padding position appended
    assert torch.equal(features["labels"][:, 1:], batch.labels)
    assert features["attention_mask"].shape[:2] == (3, 1)  # the prefix-LM pattern as a 4-D mask
