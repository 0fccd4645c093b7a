"""Each HF head's own loss on the collator's batch equals the loss computed from its hidden states through the
package's fused linear cross-entropy (:func:`lmobjectives.hf.loss_terms`): the names, the label conventions
(unshifted causal labels, NSP/SOP label values, T5's decoder inputs) and the heads' transforms are right."""

from __future__ import annotations

import pytest
import torch

from lmobjectives.hf import collator, loss_terms
from lmobjectives.hf.electra import discriminator_features, discriminator_loss, sample_replacements

F32 = dict(rtol=1e-5, atol=1e-5)


def _mean(term):
    return term.loss / term.num_tokens


def _pair_rows(documents):
    return [{"sentences": doc[:8]} for doc in documents()[:4]]


@pytest.mark.parametrize(
    "name, head, tok, options, rows",
    [
        pytest.param("mlm", "bert_mlm", "bert", {}, None, id="bert-mlm"),
        pytest.param("nsp", "bert_pretraining", "bert", {}, "pairs", id="bert-pretraining-mlm+nsp"),
        pytest.param("mlm", "bert_mlm", "bert", {"unit": "word"}, None, id="bert-mlm-whole-word"),
        pytest.param("sop", "albert_pretraining", "bert", {}, "pairs", id="albert-sop"),
        pytest.param("clm", "gpt2", "gpt", {}, None, id="gpt2-clm"),
        pytest.param("clm", "llama", "gpt", {}, None, id="llama-clm"),
        pytest.param("fim", "gpt2", "gpt", {}, None, id="gpt2-fim"),
        pytest.param("fim", "llama", "gpt", {}, None, id="llama-fim"),
        pytest.param("sft", "gpt2", "gpt", {}, "chat", id="gpt2-sft"),
        pytest.param("sft", "llama", "gpt", {}, "chat", id="llama-sft"),
        pytest.param("prefix_lm", "llama", "gpt", {}, None, id="llama-prefix-lm"),
        pytest.param("span_corruption", "t5", "t5", {}, None, id="t5-span-corruption"),
        pytest.param("ul2", "t5", "t5", {}, None, id="t5-ul2"),
        pytest.param("electra", "electra_generator", "bert", {}, None, id="electra-generator"),
        pytest.param("plm", "xlnet", "bert", {}, None, id="xlnet-plm"),
    ],
)
def test_the_heads_own_loss_equals_ours(name, head, tok, options, rows, request, build, corpus):
    tokenizer = request.getfixturevalue(f"{tok}_tokenizer")
    if rows == "pairs":
        rows, max_length = _pair_rows(corpus.documents), 48
    elif rows == "chat":
        rows = [
            {"messages": [{"role": "user", "content": t[:30]}, {"role": "assistant", "content": t[30:80]}]}
            for t in corpus.texts(6)
        ]
        max_length = 64
    else:
        rows, max_length = [{"text": t} for t in corpus.texts(6)], 40
    features = collator(name, tokenizer, max_length=max_length, seed=1, **options)(rows)
    model = build(head, tokenizer)
    theirs = model(**features).loss
    terms = loss_terms(model, features)
    ours = sum(_mean(t) for t in terms.values())
    torch.testing.assert_close(ours, theirs, **F32)
    # and the fallback through the model's own logits agrees too
    from lmobjectives.hf.heads import LOGITS

    torch.testing.assert_close(sum(_mean(t) for t in LOGITS(model, features).values()), theirs, **F32)


def test_the_electra_discriminator_loss_equals_hfs(bert_tokenizer, build, corpus):
    features = collator("electra", bert_tokenizer, max_length=40, seed=2)([{"text": t} for t in corpus.texts(6)])
    generator, discriminator = (
        build("electra_generator", bert_tokenizer),
        build("electra_discriminator", bert_tokenizer, seed=1),
    )
    sampled = sample_replacements(generator, features, torch.Generator().manual_seed(0))
    fake = discriminator_features(features, sampled)
    assert set(fake) == {"input_ids", "attention_mask", "labels"}
    assert fake["labels"].dtype == torch.long and set(fake["labels"].unique().tolist()) <= {0, 1}
    theirs = discriminator(**fake).loss
    torch.testing.assert_close(_mean(discriminator_loss(discriminator, fake)), theirs, **F32)


def _segments(features, row):
    """Segment A's and B's token ids of one ``[CLS] A [SEP] B [SEP]`` row."""
    ids, types, real = (
        features["input_ids"][row],
        features["token_type_ids"][row],
        features["attention_mask"][row].bool(),
    )
    body = real & (ids != 2) & (ids != 3)  # not [CLS], not [SEP]
    return ids[body & (types == 0)].tolist(), ids[body & (types == 1)].tolist()


def _contains(stream, part):
    return any(stream[i : i + len(part)] == part for i in range(len(stream) - len(part) + 1))


@pytest.mark.parametrize("name, key", [("nsp", "next_sentence_label"), ("sop", "sentence_order_label")])
def test_sentence_labels_keep_hfs_convention(bert_tokenizer, name, key, corpus):
    """NSP (BertForPreTraining): 0 = B continues A; SOP (AlbertForPreTraining): 0 = in order, 1 = swapped.
    Checked on the tokens: without masking or truncation, a label-0 pair is A then B in its document's stream."""
    rows = [{"sentences": doc[:4]} for doc in corpus.documents()[:8]]
    features = collator(name, bert_tokenizer, max_length=512, seed=3, mlm_probability=0.0, short_seq_prob=0.0)(rows)
    whole = features["attention_mask"].sum(-1) < 512  # pairs that were not truncated
    streams = [sum(bert_tokenizer(r["sentences"], add_special_tokens=False)["input_ids"], []) for r in rows]
    assert key in features and set(features) & {"next_sentence_label", "sentence_order_label"} == {key}
    labels = features[key].tolist()
    assert set(features[key][whole].tolist()) == {0, 1}
    for row, label in enumerate(labels):
        if not whole[row]:
            continue
        a, b = _segments(features, row)
        in_order = any(_contains(s, a + b) for s in streams)
        if label == 0:
            assert in_order, (row, a, b)
        elif name == "sop":
            assert any(_contains(s, b + a) for s in streams) and not in_order
        else:
            assert not in_order
