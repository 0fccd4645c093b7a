"""Resume: a 6-step ObjectiveTrainer run that saves a checkpoint at step 3, resumed from it by a new Trainer, logs
the same losses at steps 4-6 and ends with the same weights as the uninterrupted run. The collator draws its masks
from (seed, epoch, rows), so the batches Trainer skips on resume (it never calls the collator for them) change
nothing, and the epoch boundary at step 4 (8 rows, batch 2) sets the same epoch's draws in both runs."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
pytest.importorskip("safetensors")

from lmobjectives.hf import ElectraPair, ObjectiveTrainer, collator  # noqa: E402


def _args(out, **extra):
    return transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=6,
        learning_rate=3e-3,
        optim="adamw_torch",
        lr_scheduler_type="linear",
        warmup_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        save_strategy="steps",
        save_steps=3,
        **extra,
    )


def _model(name, build, tokenizer):
    if name == "electra":
        return ElectraPair(build("electra_generator", tokenizer), build("electra_discriminator", tokenizer, seed=1))
    return build("bert_mlm", tokenizer)


def _logged(trainer, keys):
    return {log["step"]: {k: log[k] for k in keys} for log in trainer.state.log_history if "loss" in log}


@pytest.mark.parametrize("name, terms", [("mlm", ["lm_loss"]), ("electra", ["generator_loss", "discriminator_loss"])])
def test_a_resumed_run_logs_the_same_losses(name, terms, tmp_path, build, corpus, bert_tokenizer):
    rows = [{"text": t} for t in corpus.texts(8)]
    keys = ["loss", *terms]

    whole = ObjectiveTrainer(
        model=_model(name, build, bert_tokenizer),
        args=_args(tmp_path / "whole"),
        train_dataset=rows,
        data_collator=collator(name, bert_tokenizer, max_length=40, seed=3),
    )
    whole.train()
    expected = _logged(whole, keys)
    assert sorted(expected) == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "whole" / "checkpoint-3").is_dir()

    resumed = ObjectiveTrainer(
        model=_model(name, build, bert_tokenizer),
        args=_args(tmp_path / "resumed"),
        train_dataset=rows,
        data_collator=collator(name, bert_tokenizer, max_length=40, seed=3),
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-3"))
    got = _logged(resumed, keys)  # steps 1-3 come from the checkpoint's trainer_state.json, 4-6 from this run
    assert resumed.state.global_step == 6 and sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], abs=1e-4), step  # Trainer rounds to 4 places
        for term in terms:
            assert got[step][term] == pytest.approx(expected[step][term], rel=1e-5, abs=1e-6), (step, term)
    assert resumed.data_collator.epoch == 1  # steps 5 and 6 are epoch 1
    final = dict(resumed.model.named_parameters())
    for n, p in whole.model.named_parameters():
        torch.testing.assert_close(final[n], p, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
