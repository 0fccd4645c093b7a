"""ObjectiveTrainer in 2 real processes (torch.multiprocessing spawn, gloo on CPU, Trainer's own DDP through
accelerate), for mlm, mlm + nsp, T5 span corruption and ELECTRA: one optimizer step over a global batch of 8 rows logs the loss and each term's mean, and applies
the update, of the same step in 1 process, at per-device batch / accumulation 4/1 and 2/2. Each loss term is
divided by its count all-reduced over the processes, and the loss multiplied by the number of processes, which
DDP's gradient averaging undoes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from lmobjectives.hf import ElectraPair, ObjectiveTrainer, collator  # noqa: E402

WORLD_SIZE = 2
SPLITS = ((4, 1), (2, 2))  # per-device batch, accumulation: 2 processes x 4 x 1 = 2 x 2 x 2 = 8 rows a step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(out: Path, batch: int, accumulation: int, **extra) -> transformers.TrainingArguments:
    return transformers.TrainingArguments(
        output_dir=str(out),
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
        **extra,
    )


def _stack(rows):
    """The data collator: the rows are single rows of one collated batch (the masks are drawn once)."""
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def _step(model, rows, out: Path, batch: int, accumulation: int, **extra):
    """One ObjectiveTrainer step: its first log and the parameters' change (= the gradient, lr 1, SGD)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = ObjectiveTrainer(
        model=model, args=_args(out, batch, accumulation, **extra), train_dataset=rows, data_collator=_stack
    )
    trainer.train()
    log = {k: v for k, v in trainer.state.log_history[0].items() if k.endswith("loss")}
    return log, {n: before[n] - p.detach() for n, p in model.named_parameters()}


def _worker(rank: int, port: int, folder: str) -> None:
    """One rank: Trainer's DDP over gloo from a torchrun-like environment (accelerate reads it: MULTI_CPU)."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        LOCAL_WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    path = Path(folder)
    cases = torch.load(path / "cases.pt", weights_only=False)  # {name: (model, rows)}, the same on every rank
    results = {}
    for name, (model, rows) in cases.items():
        for batch, accumulation in SPLITS:
            fresh = {k: v.clone() for k, v in model.state_dict().items()}
            results[name, batch] = _step(
                model, rows, path / f"{name}-{batch}-{rank}", batch, accumulation, ddp_backend="gloo"
            )
            model.load_state_dict(fresh)
    import torch.distributed as dist

    results["world_size"] = dist.get_world_size()
    torch.save(results, path / f"rank{rank}.pt")


def _rows(features):
    return [{k: v[i] for k, v in features.items()} for i in range(8)]


@pytest.mark.slow
def test_two_processes_step_as_one(tmp_path, build, corpus, bert_tokenizer, t5_tokenizer):
    texts = [{"text": t[: 30 + 12 * i]} for i, t in enumerate(corpus.texts(8))]  # different numbers of targets
    pairs = [{"sentences": doc[:6]} for doc in corpus.documents()[:6]]
    nsp = collator("nsp", bert_tokenizer, max_length=40, seed=5, mlm_selection="bernoulli", max_predictions=None)
    cases = {
        "mlm": (
            build("bert_mlm", bert_tokenizer),
            _rows(collator("mlm", bert_tokenizer, max_length=40, seed=5)(texts)),
        ),
        "mlm+nsp": (build("bert_pretraining", bert_tokenizer), _rows(nsp(pairs))),
        "span_corruption": (
            build("t5", t5_tokenizer),
            _rows(collator("span_corruption", t5_tokenizer, max_length=64, seed=5)(texts)),
        ),
        "electra": (
            ElectraPair(
                build("electra_generator", bert_tokenizer), build("electra_discriminator", bert_tokenizer, seed=1)
            ),
            _rows(collator("electra", bert_tokenizer, max_length=40, seed=5)(texts)),
        ),
    }
    torch.save(cases, tmp_path / "cases.pt")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    assert ranks[0]["world_size"] == WORLD_SIZE  # really two processes
    for name, (model, rows) in cases.items():
        log, step = _step(model, rows, tmp_path / f"{name}-one", 8, 1)  # 1 process, the same 8 rows in one step
        assert len(log) >= 2  # loss and each <term>_loss
        for batch, _ in SPLITS:
            for rank in ranks:
                theirs, their_step = rank[name, batch]
                assert theirs.keys() == log.keys()
                for key, value in log.items():
                    assert theirs[key] == pytest.approx(value, rel=1e-5, abs=1e-4), (name, batch, key)
                for n in step:
                    where = f"{name}, per-device batch {batch}: {n}"
                    torch.testing.assert_close(
                        their_step[n], step[n], rtol=1e-4, atol=1e-6, msg=lambda m, where=where: f"{where}: {m}"
                    )
