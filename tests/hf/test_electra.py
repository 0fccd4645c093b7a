"""ElectraPair: ELECTRA's generator and discriminator as two HF models with one embedding module. Its terms are
the HF heads' own losses, its samples do not depend on how rows are batched, and its state dict saves each shared
tensor once and loads back strictly (the joint training through ObjectiveTrainer is in test_trainer.py)."""

from __future__ import annotations

import pytest
import torch

safetensors_torch = pytest.importorskip("safetensors.torch")

from lmobjectives.hf import ElectraPair, collator, discriminator_features  # noqa: E402

F32 = dict(rtol=1e-5, atol=1e-5)


def _pair(build, tokenizer, **options):
    return ElectraPair(
        build("electra_generator", tokenizer), build("electra_discriminator", tokenizer, seed=1), **options
    )


def _features(tokenizer, corpus, n=6):
    rows = [{"text": t[: 30 + 12 * i]} for i, t in enumerate(corpus.texts(n))]  # rows of different lengths
    return collator("electra", tokenizer, max_length=40, seed=2)(rows)


def test_the_pair_shares_one_embedding_module(build, bert_tokenizer):
    generator, discriminator = (
        build("electra_generator", bert_tokenizer),
        build("electra_discriminator", bert_tokenizer),
    )
    own = sum(p.numel() for p in generator.electra.embeddings.parameters())
    separate = sum(p.numel() for p in generator.parameters()) + sum(p.numel() for p in discriminator.parameters())
    pair = ElectraPair(generator, discriminator)
    shared = discriminator.electra.embeddings
    assert generator.electra.embeddings is shared  # token, position, token-type tables and their LayerNorm
    assert generator.generator_lm_head.weight is shared.word_embeddings.weight  # the output layer stays tied
    assert generator.config.hidden_size < discriminator.config.hidden_size  # narrower, same depth
    assert sum(p.numel() for p in pair.parameters()) == separate - own  # each shared parameter once
    assert pair.term_weights == {"generator": 1.0, "discriminator": 50.0}  # ELECTRA's disc_weight


def test_the_pair_refuses_models_that_cannot_share(build, bert_tokenizer):
    with pytest.raises(ValueError, match="embedding_size is 32, the discriminator's 16"):
        ElectraPair(
            build("electra_generator", bert_tokenizer, embedding_size=32),
            build("electra_discriminator", bert_tokenizer),
        )
    with pytest.raises(TypeError, match="ElectraForPreTraining discriminator, got ElectraForMaskedLM"):
        ElectraPair(build("electra_generator", bert_tokenizer), build("electra_generator", bert_tokenizer))
    with pytest.raises(ValueError, match="discriminator_weight"):
        _pair(build, bert_tokenizer, discriminator_weight=0)


def test_the_pairs_terms_are_the_hf_heads_own_losses(build, bert_tokenizer, corpus):
    features = _features(bert_tokenizer, corpus)
    pair = _pair(build, bert_tokenizer)
    terms = pair(**features)
    counts = pair.target_counts(features)
    assert set(terms) == set(counts) == {"generator", "discriminator"}
    for name, term in terms.items():
        assert int(term.num_tokens) == int(counts[name])
    assert int(counts["generator"]) == int((features["labels"] != -100).sum())
    assert int(counts["discriminator"]) == int(features["attention_mask"].sum())  # real tokens, [CLS] [SEP] too
    torch.testing.assert_close(
        terms["generator"].loss / terms["generator"].num_tokens, pair.generator(**features).loss, **F32
    )
    fake = discriminator_features(features, pair.sample(features))
    assert bool(fake["labels"].any())  # some samples differ from the original token
    torch.testing.assert_close(
        terms["discriminator"].loss / terms["discriminator"].num_tokens, pair.discriminator(**fake).loss, **F32
    )


def test_a_rows_samples_do_not_depend_on_its_batch(build, bert_tokenizer, corpus):
    """The Gumbel noise of a row is seeded by the row (its real tokens and labels) and the pair's seed: split into
    micro-batches, processes or resumed, a row draws the same replacements."""
    features = _features(bert_tokenizer, corpus)
    pair = _pair(build, bert_tokenizer)
    whole = pair.sample(features)
    parts = torch.cat([pair.sample({k: v[i : i + 2] for k, v in features.items()}) for i in range(0, 6, 2)])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    assert not torch.equal(_pair(build, bert_tokenizer, seed=1).sample(features), whole)


def test_the_state_dict_holds_each_shared_tensor_once(build, bert_tokenizer, corpus, tmp_path):
    pair = _pair(build, bert_tokenizer)
    state = pair.state_dict()
    assert not [k for k in state if k.startswith("generator.electra.embeddings.")]
    assert "generator.generator_lm_head.weight" not in state and "generator.generator_lm_head.bias" in state
    safetensors_torch.save_file(state, tmp_path / "pair.safetensors")  # refuses tensors that share memory
    fresh = ElectraPair(
        build("electra_generator", bert_tokenizer, seed=3), build("electra_discriminator", bert_tokenizer, seed=4)
    )
    fresh.load_state_dict(safetensors_torch.load_file(tmp_path / "pair.safetensors"))  # strict
    assert fresh.generator.electra.embeddings is fresh.discriminator.electra.embeddings
    features = _features(bert_tokenizer, corpus, 4)
    for name, term in pair(**features).items():
        torch.testing.assert_close(fresh(**features)[name].loss, term.loss, **F32)


def test_the_trainer_refuses_a_collator_weight_the_pair_does_not_train_with(build, bert_tokenizer, tmp_path):
    from transformers import TrainingArguments

    from lmobjectives.hf import ObjectiveTrainer

    args = TrainingArguments(str(tmp_path), report_to=[], use_cpu=True, remove_unused_columns=False)
    col = collator("electra", bert_tokenizer, discriminator_weight=30.0)
    with pytest.raises(ValueError, match=r"discriminator_weight=30 but the ElectraPair 50"):
        ObjectiveTrainer(
            model=_pair(build, bert_tokenizer), args=args, train_dataset=[{"text": "a"}], data_collator=col
        )
    ObjectiveTrainer(
        model=_pair(build, bert_tokenizer, discriminator_weight=30.0),
        args=args,
        train_dataset=[{"text": "a"}],
        data_collator=col,
    )
