"""`train(config)`: the training loop behind ``lmobj train``.

Nothing here knows an objective by name: the objective's registry entry
(:class:`~lmobjectives.objectives.Recipe`) says what data it reads, what
model it needs and how its loss is computed. One step: ``batch =
stream(step)`` (objective already applied), ``recipe.loss(objective, model,
batch)`` (by default the LM loss over the labelled positions, mean over this
batch's targets, plus the sentence head's loss where the batch has sentence
labels), AdamW with linear warm-up and cosine decay, gradient clipping.

Outputs in ``config.out``: ``config.json`` (``vars`` of the train and model
configs, and the held-out split), ``tokenizer/``, ``metrics.jsonl`` (one JSON line per
``log_every`` steps) and ``checkpoint/`` (see :mod:`.checkpoint`). Resuming
from a checkpoint reproduces the uninterrupted run's losses exactly: the data
and every random draw are functions of ``(seed, step)`` (:mod:`.streams`).
The first Ctrl-C lets the current step finish, saves a checkpoint and stops;
a second one aborts at once without saving. A NaN or infinite loss stops the run
(:class:`NonFiniteLossError`, naming the step and the term) at the next metrics line
or save, whichever comes first, and no checkpoint is saved after it.

Held-out data: the documents of :func:`lmobjectives.data.heldout_split` (``config.heldout``) are never laid out
for training (nor seen by a tokenizer trained here). Every ``config.eval_interval`` steps (and at the
last step) the metrics line of that step also holds ``eval_<key>`` for each key of the training
numbers (``eval_loss``, ``eval_accuracy``, ``eval_<term>_loss`` ...): the recipe's own loss, without
gradient and in eval mode (no dropout), over the same ``eval_batches`` held-out batches every time
(:func:`heldout_eval_batches`), each batch's random draws seeded from the run's seed. Evaluating
changes no training number: every training step reseeds what it draws.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..batch import Batch, Objective
from ..data.heldout import HELDOUT_SALT, heldout_split
from ..data.sources import data_texts, load_data
from ..data.tokenizers import load_tokenizer
from ..models import MODELS, TransformerConfig
from ..recipes import Recipe, StepLoss
from .checkpoint import checkpoint_steps, load_checkpoint, save_checkpoint
from .config import TrainConfig, resolve_device
from .run_folder import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    RESUMABLE_CHANGES,
    SAVED_BEFORE,
    TOKENIZER_DIR,
    RunConfig,
    RunLock,
    check_metrics_row,
    load_run_tokenizer,
    read_run_config,
    resolve_out,
    write_run_config,
)
from .streams import build_stream, derive_seed

__all__ = [
    "RESUMABLE_CHANGES",
    "NonFiniteLossError",
    "TrainResult",
    "check_single_process",
    "heldout_eval_batches",
    "heldout_metrics",
    "train",
]


class NonFiniteLossError(FloatingPointError):
    """Training stopped at a NaN or infinite loss (or weights); nothing after the last finite checkpoint was saved.

    ``step``: the first update whose loss was not finite (or after whose update the weights were not);
    ``term``: the loss term (``"lm"``, ``"sentence"``, ...) or the first weight tensor that was not finite;
    ``kept``: the newest checkpoint in the run folder (None if none was saved)."""

    def __init__(self, message: str, *, step: int | None, term: str, kept: int | None) -> None:
        super().__init__(message)
        self.step, self.term, self.kept = step, term, kept


@dataclass
class TrainResult:
    steps: int  # optimizer steps completed (including those of the runs this one resumed)
    first_loss: float  # loss of the first metrics line (over the first log_every steps)
    final_loss: float  # loss of the last metrics line
    best_loss: float  # lowest loss over the metrics lines
    tokens: int  # real (non-padding) input tokens seen
    elapsed_s: float  # training time, summed over resumptions
    interrupted: bool  # stopped early (Ctrl-C or stop_after); resume with resume=True
    out_dir: Path  # everything below lives here
    metrics_path: Path  # metrics.jsonl
    config_path: Path  # config.json
    tokenizer_dir: Path  # the tokenizer, saved with tok.save()
    checkpoint_dir: Path  # model and optimizer safetensors, state-S.json per kept step (see .checkpoint)
    last_metrics: dict[str, Any] | None = None  # the last metrics line (None if none was written)
    vocab_size: int = 0  # the tokenizer's vocabulary size (uniform-guess loss: ln vocab_size)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / max(self.elapsed_s, 1e-9)


# -----------------------------------------------------------------------------
# building blocks


def model_config_for(config: TrainConfig, recipe: Recipe, objective: Objective, vocab_size: int) -> TransformerConfig:
    """The model's sizes from the run, its heads from the recipe; it accepts the longest sequence the data can hold."""
    spec = recipe.model(objective)
    return TransformerConfig(
        vocab_size=vocab_size,
        d_model=config.d_model,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        d_ff=config.d_ff,
        dropout=config.dropout,
        max_seq_len=max(config.seq_len, recipe.block_length(objective, config.seq_len)),
        n_token_types=spec.n_token_types,
        positions=config.positions,  # type: ignore[arg-type]
        n_sentence_classes=spec.n_sentence_classes,
    )


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (embedding included, as in GPT-2), not on biases and norms."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), eps=1e-8)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Learning rate of update number ``step`` (1-based): linear warm-up, then cosine to ``lr * min_lr_ratio``."""
    if step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    min_lr = config.lr * config.min_lr_ratio
    return min_lr + 0.5 * (config.lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch,
    grad_clip: float,
    recipe: Recipe,
    objective: Objective,
) -> StepLoss:
    """One update on one batch; returns the recipe's loss terms (each a mean over this batch).

    The whole batch is one micro-batch, so the mean over its targets is the
    right normalisation (``Meter`` weights by ``num_tokens`` across steps). With
    gradient accumulation one would use ``reduction="sum"`` and divide by the
    total target count over the micro-batches instead.
    """
    step_loss = recipe.loss(objective, model, batch)
    optimizer.zero_grad(set_to_none=True)
    step_loss.total.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return step_loss


class Meter:
    """Sums over the steps of the current metrics window; token-weighted means on :meth:`read`.

    Each loss term ``name`` of the recipe gives ``<name>_loss`` and ``<name>_accuracy`` (the LM term's
    accuracy is ``accuracy``); ``loss`` is the sum of the terms' means, each times its weight in the
    trained total (``StepLoss.weights``, 1 by default); each of the recipe's other metrics is its mean over
    the steps. Windows end at multiples of ``log_every`` (and at the last step), whatever
    the process: a checkpoint stores the open window (:meth:`state`), so an interrupted and resumed run
    writes the same lines as an uninterrupted one (``tokens_per_s``, a wall-clock rate, aside).
    """

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.reset()
        if state:
            self.steps, self.tokens, self.seconds = state["steps"], state["tokens"], state["seconds"]
            self.sums = {k: list(v) for k, v in state["sums"].items()}
            self.metric_sums = dict(state["metric_sums"])
            self.weights = dict(state.get("weights", {}))

    def reset(self) -> None:
        self.steps = 0
        self.sums: dict[str, list[float]] = {}  # term -> [loss * count, count, correct]
        self.metric_sums: dict[str, float] = {}  # other metric -> sum over steps
        self.weights: dict[str, float] = {}  # term -> its weight in "loss" (StepLoss.weights; 1 by default)
        self.pending: list[
            tuple[int | None, dict[str, torch.Tensor], dict[str, torch.Tensor]]
        ] = []  # steps not yet summed
        self.non_finite: tuple[int | None, str, float] | None = (
            None  # the first (step, term, loss) not finite, once summed
        )
        self.tokens = 0
        self.seconds = 0.0  # time spent in this window by earlier processes (resumed runs)
        self.started = time.perf_counter()

    def state(self) -> dict[str, Any]:
        """The open window, for the checkpoint (JSON)."""
        self._flush()
        seconds = self.seconds + time.perf_counter() - self.started
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "seconds": seconds,
            "sums": self.sums,
            "metric_sums": self.metric_sums,
            "weights": self.weights,
        }

    def add(self, step_loss: StepLoss, tokens: int, step: int | None = None) -> None:
        """Record a step without a host sync: its values stay on the device until the window is read."""
        self.steps += 1
        self.weights.update(step_loss.weights)
        terms = {
            name: torch.stack([t.loss.detach().double() * t.num_tokens, t.num_tokens.double(), t.num_correct.double()])
            for name, t in step_loss.terms.items()
        }  # name -> (3,) float64 on the device
        metrics = {name: torch.as_tensor(v).detach().double() for name, v in step_loss.metrics.items()}
        self.pending.append((step, terms, metrics))
        self.tokens += tokens

    def first_non_finite(self) -> tuple[int | None, str, float] | None:
        """``(step, term, loss)`` of the first step of this window whose loss term is NaN or infinite, else None.

        Read from the values the window brings to the host anyway (no extra sync per step)."""
        self._flush()
        return self.non_finite

    def _flush(self) -> None:
        """Add the pending steps to the sums, in step order (the same float64 arithmetic as reading each step)."""
        for step, terms, metrics in self.pending:
            for name, values in terms.items():
                acc = self.sums.setdefault(name, [0.0, 0.0, 0.0])
                values = values.tolist()
                if self.non_finite is None and not math.isfinite(values[0]):  # loss * count: NaN for a NaN loss
                    self.non_finite = (step, name, values[0] / values[1] if values[1] else values[0])
                for i, v in enumerate(values):
                    acc[i] += v
            for name, value in metrics.items():
                self.metric_sums[name] = self.metric_sums.get(name, 0.0) + value.item()
        self.pending = []

    def read(self) -> dict[str, Any]:
        self._flush()
        seconds = self.seconds + time.perf_counter() - self.started
        row: dict[str, Any] = {"loss": 0.0}
        for name, (total, count, correct) in self.sums.items():
            mean = total / max(count, 1)
            row["loss"] += self.weights.get(name, 1.0) * mean
            row[f"{name}_loss"] = mean
            row["accuracy" if name == "lm" else f"{name}_accuracy"] = correct / max(count, 1)
        row.update({name: total / max(self.steps, 1) for name, total in self.metric_sums.items()})
        row["tokens_per_s"] = self.tokens / max(seconds, 1e-9)
        return row


def heldout_eval_batches(
    recipe: Recipe, objective: Objective, documents: list[Any], tokenizer: Any, config: TrainConfig
) -> list[Batch]:
    """The fixed held-out batches of the run's evaluations: the held-out documents laid out as the training data,
    the first ``config.eval_batches`` batches of one pass over them in corpus order (:meth:`BlockStream.one_pass`,
    draws seeded from ``derive_seed(config.seed, "heldout")``). ``objective`` should be the training stream's
    (with any corpus counts bound from the training data). Empty when there is no held-out document."""
    if not documents:
        return []
    stream = build_stream(
        recipe,
        objective,
        documents,
        tokenizer,
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        seed=derive_seed(config.seed, "heldout"),
    )
    return [b for b in itertools.islice(stream.one_pass(), config.eval_batches) if b.input_ids.shape[0]]


def heldout_metrics(
    model: torch.nn.Module,
    recipe: Recipe,
    objective: Objective,
    batches: list[Batch],
    *,
    seed: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The recipe's loss over ``batches`` without gradient, in eval mode: ``{"eval_loss": ..., "eval_accuracy":
    ..., "eval_<term>_loss": ...}`` (the keys of a metrics line, token-weighted over the batches as
    :class:`Meter` does, prefixed with ``eval_``). Batch ``i``'s draws in the loss (if any) are seeded from
    ``(seed, "eval", i)``; the model's mode and the global RNG are restored."""
    meter = Meter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            for i, batch in enumerate(batches):
                torch.manual_seed(derive_seed(seed, "eval", i))
                batch = batch.to(device)
                meter.add(recipe.loss(objective, model, batch), int(batch.attention_mask.sum()))
    finally:
        model.train(was_training)
    row = meter.read()
    row.pop("tokens_per_s")
    return {f"eval_{name}": value for name, value in row.items()}


class StopOnCtrlC:
    """First Ctrl-C: set :attr:`requested` (the loop saves and stops after the current step). Second: abort."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(
            "\nCtrl-C: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort without saving)",
            file=sys.stderr,
        )

    def __enter__(self) -> StopOnCtrlC:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _check_resumable(saved: dict[str, Any], config: TrainConfig, out: Path) -> None:
    saved = {**SAVED_BEFORE, **saved}
    current = config.to_dict()
    changed = {k: (saved.get(k), v) for k, v in current.items() if k not in RESUMABLE_CHANGES and saved.get(k) != v}
    if changed:
        diff = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(
            f"cannot resume {out}: the run was made with different settings ({diff}); run_folder.resume_config(out, ...) "
            "builds the config of a resumption from the run's own settings"
        )
    if saved.get("steps") != config.steps:
        tqdm.write(
            f"note: steps changed {saved.get('steps')} -> {config.steps}; the cosine schedule stretches accordingly"
        )


def _keep_metrics_up_to(path: Path, step: int) -> None:
    """Drop metrics lines written after the checkpoint we resume from (and a last line cut short by a crash).

    The checkpoint holds the window open at its step (:meth:`Meter.state`), so the kept lines and the
    restored window together cover exactly steps ``1..step``.
    """
    if not path.exists():
        return
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash, necessarily after the checkpoint
            continue
        if check_metrics_row(row, path, number)["step"] <= step:  # a line of another shape: refused, nothing dropped
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


# -----------------------------------------------------------------------------
# the loop


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.objective`` on ``config.data``; see the module docstring for what is written where.

    The model's initialisation and dropout draw from torch's global RNG, seeded from
    ``config.seed`` (dropout again at every step, so that a resumed run draws what the
    uninterrupted one did); the caller's global RNG state is restored on return.

    One process trains: under ``torchrun`` (``WORLD_SIZE`` > 1) nothing is done (a ``ValueError``). The run
    folder is locked for the run's life (:class:`~.run_folder.RunLock`); ``config.json`` is its first file, so
    a start-up stopped at any moment leaves a folder that the same call reuses.
    """
    check_single_process()
    device = resolve_device(config.device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), RunLock() as lock:
        return _train(config, device, lock)


def check_single_process(command: str = "lmobj train") -> None:
    """A ``ValueError`` in one line when this process is one of several (``WORLD_SIZE`` > 1, as ``torchrun`` sets):
    each would train its own copy into the same folder."""
    world = os.environ.get("WORLD_SIZE")
    if world is None or world.strip() in ("", "1"):
        return
    rank = os.environ.get("RANK", "?")
    raise ValueError(
        f"WORLD_SIZE={world} (rank {rank}): {command} trains in one process; multi-process training (torchrun "
        "--nproc-per-node N > 1) is not supported yet, and each process would train its own copy into the same "
        "--out: run it without torchrun (or with --nproc-per-node 1)"
    )


def _train(config: TrainConfig, device: torch.device, lock: RunLock) -> TrainResult:
    out = resolve_out(config)
    checkpoint_dir, metrics_path, config_path, tokenizer_dir = (
        out / CHECKPOINT_DIR,
        out / METRICS_FILE,
        out / CONFIG_FILE,
        out / TOKENIZER_DIR,
    )
    resuming = config.resume and bool(checkpoint_steps(checkpoint_dir))
    if config.resume and not resuming:
        tqdm.write(f"note: --resume, but {out} has no checkpoint yet: starting from step 0")
    if resuming:
        _check_resumable(read_run_config(out).train, config, out)
    tqdm.write(f"train config: {json.dumps({**config.to_dict(), 'out': str(out)})}")

    # everything that can be refused is checked before anything is written: the corpus, the tokenizer (trained on
    # it unless loaded), the objective, the step -> batch stream, the held-out batches, the model's config
    recipe = config.recipe
    corpus = load_data(config.data, recipe.data, skip_bad_files=config.skip_bad_files)
    documents, heldout_documents = heldout_split(corpus, config.heldout)  # training never sees the held-out side
    if resuming:
        tokenizer = load_run_tokenizer(out)
    else:  # with the special tokens the objective needs (sentinels, ...), trained on the training side only
        texts = data_texts(documents)
        tokenizer = load_tokenizer(config.tokenizer, texts=texts, extra_special_tokens=recipe.special_tokens)
    objective = recipe.build(tokenizer.vocab, config.options, seq_len=config.seq_len)
    stream = build_stream(
        recipe,
        objective,
        documents,
        tokenizer,
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        seed=config.seed,
        dupe_factor=config.dupe_factor,
    )
    eval_interval = config.eval_interval
    eval_batches: list[Batch] = []
    if eval_interval:
        try:
            eval_batches = heldout_eval_batches(recipe, stream.objective, heldout_documents, tokenizer, config)
        except ValueError as e:  # too few held-out documents for this layout (e.g. one, for sentence pairs)
            tqdm.write(
                f"note: no held-out evaluation: the {len(heldout_documents)} held-out documents make no batch ({e})"
            )
        else:
            if not eval_batches:
                tqdm.write(
                    f"note: no held-out evaluation: heldout={config.heldout} holds out none of the {len(corpus)} documents"
                )

    spec = recipe.model(objective)
    model_config = model_config_for(config, recipe, objective, tokenizer.vocab.size)
    tqdm.write(f"model config: {json.dumps(vars(model_config))}")
    split = {
        "documents": len(corpus),
        "heldout_documents": len(heldout_documents),
        "salt": HELDOUT_SALT,
        "rule": "held out iff sha256(salt, words of the document) / 2**256 < heldout (data.heldout.heldout_split)",
    }
    if config.heldout:
        note = f"held-out split: {len(heldout_documents)} of {len(corpus)} documents (heldout={config.heldout})"
        if eval_batches:
            note += f"; {len(eval_batches)} held-out batches evaluated every {eval_interval} steps and at the end"
        tqdm.write(note)
    run_config = RunConfig(
        train={**config.to_dict(), "out": str(out)},
        model=vars(model_config),
        architecture=spec.architecture,
        model_kwargs=spec.kwargs,
        split=split,
    )

    # the folder: locked for the run's life, checked again under the lock, config.json (the marker) written first
    if bool(lock.claim(out, resume=config.resume)) != resuming:
        raise FileExistsError(
            f"{out} changed while this run was starting (another lmobj train wrote a checkpoint); run the command again"
        )
    write_run_config(out, run_config)
    if not resuming:  # a start-up stopped earlier may have left a tokenizer of other settings
        shutil.rmtree(tokenizer_dir, ignore_errors=True)
        tokenizer.save(str(tokenizer_dir))

    # model and optimizer
    torch.manual_seed(config.seed)
    model = MODELS[spec.architecture](model_config, **spec.kwargs).to(device)
    optimizer = make_optimizer(model, config)
    tqdm.write(f"model: {model.num_parameters():,} parameters on {device}; data: {stream.position(0)}")

    state: dict[str, Any] = {
        "step": 0,
        "tokens": 0,
        "elapsed_s": 0.0,
        "first_loss": None,
        "final_loss": None,
        "best_loss": None,
    }
    if resuming:
        state = load_checkpoint(checkpoint_dir, model, optimizer, report=tqdm.write)
        then, now = state["data"], stream.position(state["step"])
        if (then["num_examples"], then.get("fingerprint")) != (now["num_examples"], now["fingerprint"]):
            raise ValueError(
                f"cannot resume {out}: the data changed since the checkpoint "
                f"({then['num_examples']} examples, fingerprint {then.get('fingerprint')} then; "
                f"{now['num_examples']} examples, fingerprint {now['fingerprint']} now)"
            )
        _keep_metrics_up_to(metrics_path, state["step"])
        tqdm.write(f"resuming {out} at step {state['step']}")
    else:
        metrics_path.write_text("")

    meter = Meter(state.pop("window", None))
    saved_step = state["step"] if resuming else None

    def save() -> None:
        nonlocal saved_step
        if state["step"] == saved_step:  # nothing new since the checkpoint we resumed from
            return
        window = meter.state()
        _stop_if_not_finite(
            meter, config, checkpoint_dir, state["step"], model, optimizer
        )  # never a non-finite checkpoint
        state["data"] = stream.position(state["step"])
        state["seeds"] = {
            "seed": config.seed,
            "rule": "data order, corruption and dropout at step s are seeded from (seed, s)",
        }
        save_checkpoint(checkpoint_dir, model, optimizer, {**state, "window": window}, keep=config.keep_checkpoints)
        saved_step = state["step"]

    start_step = state["step"]
    end_step = min(config.steps, config.stop_after or config.steps)
    bar = ProgressBar(config, start_step)
    model.train()
    started = time.perf_counter()
    interrupted = False
    with StopOnCtrlC() as ctrl_c, open(metrics_path, "a") as metrics_file:
        for step in range(start_step + 1, end_step + 1):  # step = number of the update, 1-based
            cpu_batch = stream(step - 1)  # data position step - 1
            tokens = int(cpu_batch.attention_mask.sum())  # counted on the host: no device sync
            batch = cpu_batch.to(device)
            torch.manual_seed(derive_seed(config.seed, "dropout", step))  # dropout draws from the global RNG
            lr = learning_rate(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr

            step_loss = train_step(model, optimizer, batch, config.grad_clip, recipe, objective)
            stopping = ctrl_c.requested  # read once: Ctrl-C may arrive at any moment
            meter.add(step_loss, tokens, step)
            state["step"], state["tokens"] = step, state["tokens"] + tokens
            if step % config.log_every == 0 or step == config.steps:  # windows by step number, not by process
                _stop_if_not_finite(meter, config, checkpoint_dir, step)  # the window's values reach the host here
                evaluated = {}
                if eval_batches and (step % eval_interval == 0 or step == config.steps):
                    eval_started = time.perf_counter()
                    evaluated = heldout_metrics(model, recipe, objective, eval_batches, seed=config.seed, device=device)
                    meter.started += time.perf_counter() - eval_started  # the window's rate counts training only
                row = {"step": step, **meter.read(), "tokens": state["tokens"], "lr": lr, **evaluated}
                metrics_file.write(json.dumps(row) + "\n")
                metrics_file.flush()
                meter.reset()
                state["first_loss"] = row["loss"] if state["first_loss"] is None else state["first_loss"]
                state["final_loss"] = row["loss"]
                state["best_loss"] = row["loss"] if state["best_loss"] is None else min(state["best_loss"], row["loss"])
                bar.log(row)
            bar.update(step)
            if stopping:
                interrupted = True
                break
            if config.save_every and step % config.save_every == 0 and step != end_step:
                state["elapsed_s"] += time.perf_counter() - started
                started = time.perf_counter()
                save()
        bar.close()
        state["elapsed_s"] += time.perf_counter() - started
        interrupted = interrupted or state["step"] < config.steps
        save()

    result = TrainResult(
        steps=state["step"],
        first_loss=state["first_loss"] if state["first_loss"] is not None else float("nan"),
        final_loss=state["final_loss"] if state["final_loss"] is not None else float("nan"),
        best_loss=state["best_loss"] if state["best_loss"] is not None else float("nan"),
        tokens=state["tokens"],
        elapsed_s=state["elapsed_s"],
        interrupted=interrupted,
        out_dir=out,
        metrics_path=metrics_path,
        config_path=config_path,
        tokenizer_dir=tokenizer_dir,
        checkpoint_dir=checkpoint_dir,
        last_metrics=_last_metrics(metrics_path),
        vocab_size=tokenizer.vocab.size,
    )
    print_summary(result, config)
    return result


def _stop_if_not_finite(
    meter: Meter,
    config: TrainConfig,
    checkpoint_dir: Path,
    step: int,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> None:
    """Raise :class:`NonFiniteLossError` at the first NaN or infinite loss of the open window; given ``model``
    (before each save), also when a weight or an optimizer moment is not finite after update ``step``.

    The losses are checked when the window brings them to the host (each metrics line and each save), so
    the check costs no extra sync per step; a run stops at most ``log_every`` steps after the first
    non-finite loss, and no checkpoint holds a state after one."""
    found = meter.first_non_finite()
    if found is not None:
        at, term, value = found
        what = f"the loss is not finite at step {at} (the {term} loss is {value}, at learning rate {learning_rate(at or step, config):.3g})"
    elif model is not None and (term := _first_non_finite_tensor(model, optimizer)) is not None:
        at = step
        what = f"{term} is not finite after the update of step {step}, whose loss was finite (learning rate {learning_rate(step, config):.3g})"
    else:
        return
    kept = checkpoint_steps(checkpoint_dir)
    where = (
        f"the checkpoint of step {kept[0]} is kept and nothing after it was saved"
        if kept
        else "no checkpoint was saved"
    )
    raise NonFiniteLossError(f"training stopped: {what}; {where}", step=at, term=term, kept=kept[0] if kept else None)


def _first_non_finite_tensor(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> str | None:
    """The name of the first weight (``"tok_emb.weight"``) or optimizer moment (``"the optimizer's tok_emb.weight.exp_avg"``)
    holding a NaN or an infinity, else None; one host sync per device when all are finite.

    A tensor whose sum is finite holds no NaN nor infinity, so the sums (one read of each tensor, no
    temporary of its size) decide; only a sum that is not finite (or that overflows) is looked at closely."""
    names = {p: name for name, p in model.named_parameters()}
    tensors = {f"the weight {name}": p.detach() for name, p in model.named_parameters()}
    for param, entries in optimizer.state.items() if optimizer is not None else []:
        tensors.update(
            {
                f"the optimizer's {names[param]}.{key}": v
                for key, v in entries.items()
                if isinstance(v, torch.Tensor) and v.is_floating_point()
            }
        )
    sums: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors.values():
        sums.setdefault(t.device, []).append(t.sum(dtype=torch.float32))
    if all(bool(torch.stack(s).isfinite().all()) for s in sums.values()):
        return None
    return next((name for name, t in tensors.items() if not bool(torch.isfinite(t).all())), None)


def _last_metrics(path: Path) -> dict[str, Any] | None:
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else None


class ProgressBar:
    """tqdm on a terminal; elsewhere (a log file, CI) a plain line per metrics line instead of carriage returns."""

    def __init__(self, config: TrainConfig, start_step: int) -> None:
        self.tty = config.progress and sys.stderr.isatty()
        self.plain = config.progress and not self.tty
        self.total = config.steps
        self.bar = tqdm(
            total=config.steps,
            initial=start_step,
            desc=config.objective,
            unit="step",
            disable=not self.tty,
            dynamic_ncols=True,
        )
        self.step = start_step

    def update(self, step: int) -> None:
        self.bar.update(step - self.step)
        self.step = step

    def log(self, row: dict[str, Any]) -> None:
        if self.tty:
            self.bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:,.0f}", lr=f"{row['lr']:.2e}")
        elif self.plain:
            print(
                f"step {row['step']}/{self.total}: loss {row['loss']:.4f}, {row['tokens_per_s']:,.0f} tokens/s, "
                f"lr {row['lr']:.2e}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        self.bar.close()


def print_summary(result: TrainResult, config: TrainConfig, file=None) -> None:
    file = file or sys.stdout
    status = (
        f"stopped at step {result.steps} of {config.steps} (continue with --resume)"
        if result.interrupted
        else f"done: {result.steps} steps"
    )
    print(
        f"\n{status} in {result.elapsed_s:.1f} s, {result.tokens:,} tokens ({result.tokens_per_s:,.0f} tokens/s)",
        file=file,
    )
    print(
        f"loss: {result.first_loss:.4f} (first log) -> {result.final_loss:.4f} (last), best {result.best_loss:.4f}; "
        f"the trained total: each term's mean (nats per target) times its weight",
        file=file,
    )
    if result.vocab_size:
        print(
            f"reference: a uniform guess over the {result.vocab_size:,}-token vocabulary scores "
            f"{math.log(result.vocab_size):.4f} nats per target in a cross-entropy term",
            file=file,
        )
    last = result.last_metrics
    if last is not None:
        skip = {"step", "loss", "tokens", "tokens_per_s", "lr"}
        parts = [f"{k} {v:.4f}" for k, v in last.items() if k not in skip and isinstance(v, (int, float))]
        print(f"last metrics line (step {last['step']}): {', '.join(parts)}", file=file)
    print("outputs:", file=file)
    for name, path in [
        ("metrics", result.metrics_path),
        ("config", result.config_path),
        ("tokenizer", result.tokenizer_dir),
        ("checkpoint", result.checkpoint_dir),
    ]:
        print(f"  {name:<11} {path}", file=file)
