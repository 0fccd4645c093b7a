"""ObjectiveTrainer: the loss and the gradient of one optimizer step do not depend on how its 8 rows are split
into micro-batches (8/1, 4/2, 2/4), and equal each term's exact mean over the 8 rows (ELECTRA's generator +
50 x discriminator too); a short training run's loss falls; a collator's epoch follows Trainer's."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from lmobjectives.hf import ElectraPair, ObjectiveTrainer, collator, loss_terms  # noqa: E402


def _args(tmp_path, batch, accumulation, **extra):
    defaults = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1.0,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    return transformers.TrainingArguments(**{**defaults, **extra})


def _model(build, kind, tokenizer):
    """``build``'s model, or for ``"electra_pair"`` a generator and a discriminator sharing their embeddings."""
    if kind == "electra_pair":
        return ElectraPair(build("electra_generator", tokenizer), build("electra_discriminator", tokenizer, seed=1))
    return build(kind, tokenizer)


def _exact(model, features):
    """Each term's mean over the whole batch, and the weighted total the trainer should log."""
    terms = model(**features) if isinstance(model, ElectraPair) else loss_terms(model, features)
    weights = model.term_weights if isinstance(model, ElectraPair) else {}
    means = {name: (t.loss / t.num_tokens).item() for name, t in terms.items()}
    return means, sum(weights.get(name, 1.0) * m for name, m in means.items())


def _split(features):
    """One feature dict per row (the collator's batch, corrupted once, so every split sees the same masks)."""
    n = 8
    return [{k: v[i] for k, v in features.items()} for i in range(n)]


def _stack(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _setups(corpus, bert_tokenizer, t5_tokenizer):
    texts = [{"text": t} for t in corpus.texts(8)]
    short = [{"text": t[: 20 + 9 * i]} for i, t in enumerate(corpus.texts(8, 1))]  # rows of different lengths
    pairs = [{"sentences": doc[:6]} for doc in corpus.documents()[:6]]
    return {
        "mlm": ("bert_mlm", bert_tokenizer, collator("mlm", bert_tokenizer, max_length=40, seed=5)(texts)),
        "mlm+nsp": (
            "bert_pretraining",
            bert_tokenizer,
            collator("nsp", bert_tokenizer, max_length=40, seed=5, mlm_selection="bernoulli", max_predictions=None)(
                pairs
            ),
        ),
        "span_corruption": (
            "t5",
            t5_tokenizer,
            collator("span_corruption", t5_tokenizer, max_length=64, seed=5)(short),
        ),
        "electra": ("electra_pair", bert_tokenizer, collator("electra", bert_tokenizer, max_length=40, seed=5)(short)),
    }


@pytest.mark.parametrize("setup", ["mlm", "mlm+nsp", "span_corruption", "electra"])
def test_one_step_is_the_same_at_any_accumulation(setup, tmp_path, build, corpus, bert_tokenizer, t5_tokenizer):
    kind, tokenizer, features = _setups(corpus, bert_tokenizer, t5_tokenizer)[setup]
    rows = _split(features)
    whole = _stack(rows)
    reference = _model(build, kind, tokenizer)
    exact, total = _exact(reference, whole)
    counts = {}
    for b in range(8):  # micro-batches with different numbers of targets: where a mean of means would be biased
        single = _stack(rows[b : b + 1])
        terms = reference(**single) if kind == "electra_pair" else loss_terms(reference, single)
        for name, t in terms.items():
            counts.setdefault(name, []).append(int(t.num_tokens))
    assert any(len(set(c)) > 1 for c in counts.values())
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    results = []
    for batch, accumulation in ((8, 1), (4, 2), (2, 4)):
        model = _model(build, kind, tokenizer)
        trainer = ObjectiveTrainer(
            model=model,
            args=_args(tmp_path / f"{batch}", batch, accumulation),
            train_dataset=rows,
            data_collator=_stack,
        )
        trainer.train()
        log = trainer.state.log_history[0]
        steps = {n: (before[n] - p.detach()) for n, p in model.named_parameters()}  # = lr * grad, lr = 1
        results.append((log, steps))
        assert log["loss"] == pytest.approx(total, abs=1e-4)  # Trainer rounds its loss to 4 places
        for name, value in exact.items():
            assert log[f"{name}_loss"] == pytest.approx(value, abs=1e-5)
    (_, first), *others = results
    for _, steps in others:
        for n in first:
            torch.testing.assert_close(steps[n], first[n], rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


def test_the_collator_follows_trainers_epoch(tmp_path, build, corpus, bert_tokenizer):
    col = collator("mlm", bert_tokenizer, max_length=32, seed=1)
    rows = [{"text": t} for t in corpus.texts(4)]
    first = col(rows)
    assert torch.equal(col(rows)["input_ids"], first["input_ids"])  # a function of (seed, epoch, rows)
    col.set_epoch(1)
    assert not torch.equal(col(rows)["input_ids"], first["input_ids"])
    trainer = ObjectiveTrainer(
        model=build("bert_mlm", bert_tokenizer),
        data_collator=col,
        train_dataset=rows,
        args=_args(tmp_path, 2, 1, max_steps=4, num_train_epochs=2),
    )
    trainer.train()
    assert col.epoch == 1  # 4 rows, batch 2: steps 2 and 3 are epoch 1


@pytest.mark.parametrize(
    "name, kind, tok, max_length, rows",
    [
        ("nsp", "bert_pretraining", "bert", 48, "pairs"),
        ("clm", "llama", "gpt", 48, "texts"),
        ("span_corruption", "t5", "t5", 48, "texts"),
        ("electra", "electra_pair", "bert", 48, "texts"),
    ],
)
def test_twenty_steps_of_trainer_train_lower_the_loss(
    name, kind, tok, max_length, rows, tmp_path, build, corpus, request
):
    tokenizer = request.getfixturevalue(f"{tok}_tokenizer")
    data = (
        [{"sentences": d[:6]} for d in corpus.documents()[:40]]
        if rows == "pairs"
        else [{"text": t} for t in corpus.texts(40)]
    )
    model = _model(build, kind, tokenizer)
    model.train()
    args = _args(
        tmp_path,
        4 if rows == "pairs" else 8,
        2,
        max_steps=20,
        learning_rate=3e-3,
        optim="adamw_torch",
        logging_steps=5,
        num_train_epochs=100,
    )
    trainer = ObjectiveTrainer(
        model=model, args=args, train_dataset=data, data_collator=collator(name, tokenizer, max_length=max_length)
    )
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and losses[-1] < 0.9 * losses[0], losses
    if name == "electra":  # both terms learn: the generator's MLM and the discriminator's BCE
        for term in ("generator_loss", "discriminator_loss"):
            values = [log[term] for log in trainer.state.log_history if term in log]
            assert values[-1] < 0.95 * values[0], (term, values)
