"""``compare(CompareConfig(...))``: train each objective at an equal budget, evaluate each run, write a report.

The budget is the same for every run: ``steps`` optimizer steps of ``batch_size`` model inputs of
``seq_len`` tokens, i.e. ``steps * batch_size * seq_len`` input positions (the report also gives the real,
non-padding tokens each run read, which differ a little: sentence pairs are padded). Not FLOPs: a run whose
model does more per token (ELECTRA's generator, an encoder-decoder's decoder) gets more compute; the report
lists each model's parameter count so that the difference can be read.

The report folder ``out`` holds ``compare.json`` (the settings, written first and checked on every later
call), ``runs/<objective spec>/seed-<S>/`` (each an ``lmobj train`` output folder, trained with
``resume=True``: an interrupted comparison continues where it stopped, a finished run is reused with its
cached evaluation ``compare-run.json``), and the report written by :mod:`.report`.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._option import option
from ..constants import DEFAULT_SEED
from ..data.tokenizers import load_tokenizer
from ..training import TrainConfig, train
from ..training.run_folder import check_metrics_row
from ..training.trainer import check_single_process
from .specs import PRESETS, RunSpec, parse_objective

__all__ = ["CompareConfig", "CompareResult", "compare", "evaluate_run"]

_TRAIN = {f.name: f.default for f in fields(TrainConfig)}
SETTINGS_FILE = "compare.json"  # the comparison's settings, in the report folder
RUN_FILE = "compare-run.json"  # in each run folder: its training summary and evaluation, once both are done
FORMAT = 1  # version of compare.json and compare-run.json; a change makes old folders refuse to continue

# CompareConfig fields that may change between calls on the same folder (they change no number)
UNCHECKED = ("out", "device", "threads", "progress", "command")


@dataclass
class CompareConfig:
    # the fields with help (option) are flags of lmobj compare (lmobjectives.cli.compare); the help is the flag's
    objectives: tuple[str, ...] = option(
        (),
        "objective specs NAME or NAME:option=value,option=value (e.g. clm mlm:unit=word,probability=0.4); with "
        "--preset, they replace the preset's objectives",
    )  # e.g. ("clm", "mlm:unit=word,probability=0.4")
    tasks: tuple[str, ...] | None = option(
        None,
        "evaluations (default: the preset's, else every one; those that do not apply to a run are shown as not "
        "applicable)",
    )  # names of lmobjectives.evaluation.TASKS; None: every one that applies
    task_options: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # keyword arguments per task; candidates="all": every token
    preset: str | None = None  # the preset this comparison came from (its question goes in the report), if any
    out: str | None = option(
        None, "report folder, also holding the runs (default: reports/<preset>); a rerun continues it"
    )  # None: reports/<preset> (reports/compare without a preset)
    # what every run shares: the data and the budget
    data: str = option(_TRAIN["data"], "corpus of every run")  # see lmobjectives.data.corpus.load_corpus
    tokenizer: str = option(_TRAIN["tokenizer"], "tokenizer of every run")  # "byte", "bpe:N", ...
    heldout: float = _TRAIN["heldout"]  # fraction of documents held out of training; every evaluation reads only them
    steps: int = option(
        _TRAIN["steps"], "optimizer steps per run"
    )  # the budget is steps * batch_size * seq_len input tokens
    batch_size: int = option(_TRAIN["batch_size"], "inputs per step")
    seq_len: int = option(_TRAIN["seq_len"], "tokens per input")
    lr: float = option(_TRAIN["lr"], "peak learning rate")  # AdamW, warm-up then cosine
    warmup_steps: int = _TRAIN["warmup_steps"]  # linear warm-up steps
    d_model: int = option(_TRAIN["d_model"], "model width")  # the same model size for every objective
    n_layers: int = option(_TRAIN["n_layers"], "transformer blocks")
    n_heads: int = option(_TRAIN["n_heads"], "attention heads")
    d_ff: int = option(_TRAIN["d_ff"], "MLP hidden width")
    seeds: int = option(1, "runs per objective, seeds --seed, --seed + 1, ...; the report shows the spread")
    seed: int = option(DEFAULT_SEED, "the first seed")
    log_every: int = _TRAIN["log_every"]  # training-loss points per run in the plots: one per log_every steps
    # how to run (may change between calls on the same folder)
    device: str = option(_TRAIN["device"], "'auto', 'cpu', 'cuda', 'cuda:N'")  # torch device of every run
    threads: int | None = (
        None  # torch CPU threads while comparing (None: torch's default); the flag is every command's --threads
    )
    progress: bool = option(
        True, "no progress bar or lines (the table and report are still written)"
    )  # --no-progress's help
    command: str | None = None  # the command line that made the comparison, for the report

    def __post_init__(self) -> None:
        if isinstance(self.objectives, str):
            raise TypeError("objectives must be a sequence of objective specs, not one string")
        self.objectives = tuple(self.objectives)
        if len(self.objectives) < 1:
            raise ValueError(
                "a comparison needs at least one objective spec (objectives=(NAME or NAME:OPTION=VALUE, ...)) or a preset"
            )
        if self.tasks is not None:
            self.tasks = tuple(self.tasks)
            if not self.tasks:
                raise ValueError("tasks must name at least one evaluation task, or be None for every one that applies")
            from ..evaluation import TASKS

            if unknown := [t for t in self.tasks if t not in TASKS]:
                raise ValueError(
                    f"unknown evaluation task(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(TASKS)}"
                )
        if not isinstance(self.task_options, dict) or not all(isinstance(v, dict) for v in self.task_options.values()):
            raise TypeError(
                f"task_options must map task names to dicts of keyword arguments, got {self.task_options!r}"
            )
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
        for name in ("seeds", "steps", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads <= 0
        ):
            raise ValueError(f"threads must be a positive int or None, got {self.threads!r}")
        specs = self.specs  # parses every spec: unknown objectives and options fail here
        labels = [s.label for s in specs]
        if len(set(labels)) < len(labels) or len({s.slug for s in specs}) < len(specs):
            raise ValueError(f"objective specs must differ: {', '.join(labels)}")
        for spec in specs:
            train_config = self.train_config(spec, self.seed)  # checks the shared settings and the option names
            recipe = train_config.recipe  # the option values, checked now rather than after the first runs
            vocab = load_tokenizer("byte", extra_special_tokens=recipe.special_tokens).vocab
            try:
                recipe.build(vocab, train_config.options, seq_len=self.seq_len)
            except ValueError as e:
                raise ValueError(f"objective spec {spec.label!r}: {e}") from None

    @classmethod
    def from_preset(cls, name: str, *, scale: float = 1.0, **overrides: Any) -> CompareConfig:
        """The preset's comparison, with ``overrides`` (any field) on top; ``scale`` multiplies its steps
        (at least 1; e.g. 0.05 for a smoke test), applied after the overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        preset = PRESETS[name]
        values: dict[str, Any] = {
            "objectives": preset.objectives,
            "tasks": preset.tasks,
            "task_options": preset.task_options,
            "preset": name,
            **preset.settings,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        values["steps"] = max(1, round(values.get("steps", _TRAIN["steps"]) * scale))
        return cls(**values)

    @property
    def specs(self) -> list[RunSpec]:
        return [parse_objective(text) for text in self.objectives]

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path("reports") / (self.preset or "compare")

    @property
    def eval_every(self) -> int:
        """Held-out loss of each run's own objective about ten times per run (a multiple of ``log_every``)."""
        return max(1, self.steps // (10 * self.log_every)) * self.log_every

    def train_config(self, spec: RunSpec, seed: int, out: Path | None = None) -> TrainConfig:
        """The ``TrainConfig`` of ``spec``'s run with ``seed`` (writing to ``out``)."""
        return TrainConfig(
            objective=spec.objective,
            options=spec.options,
            data=self.data,
            tokenizer=self.tokenizer,
            heldout=self.heldout,
            out=None if out is None else str(out),
            steps=self.steps,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            lr=self.lr,
            warmup_steps=min(self.warmup_steps, self.steps),
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            d_ff=self.d_ff,
            seed=seed,
            device=self.device,
            log_every=self.log_every,
            eval_every=self.eval_every,
            save_every=max(self.log_every, self.steps // 4 // self.log_every * self.log_every),
            keep_checkpoints=1,
            resume=True,
            progress=False,
        )

    def settings(self) -> dict[str, Any]:
        """What ``compare.json`` records and a later call must match: every field but :data:`UNCHECKED`, with
        each objective's full options."""
        values = {k: v for k, v in asdict(self).items() if k not in UNCHECKED}
        values["objectives"] = [
            {"label": s.label, "objective": s.objective, "options": self.train_config(s, self.seed).options}
            for s in self.specs
        ]
        values["tasks"] = list(self.tasks) if self.tasks is not None else None
        return json.loads(json.dumps(values))


@dataclass
class CompareResult:
    out_dir: Path  # the report folder
    results: dict[str, Any]  # what results.json holds (see lmobjectives.compare.report)
    files: dict[str, Path] = field(default_factory=dict)  # the report's files by kind: "md", "html", "json", plots
    complete: bool = True  # False: interrupted; call compare again with the same settings to continue


def compare(config: CompareConfig) -> CompareResult:
    """Train and evaluate every objective spec of ``config`` with every seed, then write the report.

    Runs already in the folder are continued or reused; a folder made with other settings is refused
    (``ValueError`` listing the differences). Returns an incomplete result, with nothing more written, when
    a run was interrupted (Ctrl-C during training saves a checkpoint first).
    """
    from .report import (  # matplotlib is imported only when the report is written
        summarise,
        write_report,
    )

    check_single_process("lmobj compare")  # before anything is written: under torchrun every rank would write
    out = config.out_dir
    _claim(out, config)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    specs, seeds = config.specs, config.seed_list
    jobs = [(spec, seed) for spec in specs for seed in seeds]
    progress = _Progress(len(jobs) * config.steps, config.progress)
    runs = []
    try:
        for index, (spec, seed) in enumerate(jobs):
            run = _one_run(config, spec, seed, out / "runs" / spec.slug / f"seed-{seed}", progress, index, len(jobs))
            if run is None:
                progress.close()
                return CompareResult(out, {}, complete=False)
            runs.append(run)
    finally:
        progress.close()
        torch.set_num_threads(threads)
    results = summarise(config, runs, elapsed_s=time.perf_counter() - started)
    files = write_report(results, out)
    return CompareResult(out, results, files)


def _claim(out: Path, config: CompareConfig) -> None:
    """Write ``compare.json`` in a new or empty folder; check it against ``config`` in an existing comparison."""
    settings = {"format": FORMAT, **config.settings()}
    path = out / SETTINGS_FILE
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} cannot be read ({e}); choose another out folder") from None
        if saved != settings:
            keys = sorted(set(saved) | set(settings))
            changed = "; ".join(
                f"{k}: {json.dumps(saved.get(k))} then, {json.dumps(settings.get(k))} now"
                for k in keys
                if saved.get(k) != settings.get(k)
            )
            raise ValueError(
                f"{out} holds a comparison made with other settings ({changed}); rerun it with the same settings to "
                "continue it, or choose another out folder (--out)"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} exists and is not a comparison (no {SETTINGS_FILE}); choose a new or empty folder (--out)"
        )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def _one_run(
    config: CompareConfig, spec: RunSpec, seed: int, run_dir: Path, progress: _Progress, index: int, total: int
) -> dict[str, Any] | None:
    """Train (or continue) and evaluate one run; its record, or None when the training was interrupted."""
    name = f"[{index + 1}/{total}] {spec.label} seed {seed}"
    cached = _read_cached(run_dir, config)
    if cached is not None:
        progress.skip(config.steps, f"{name}: reused ({run_dir})")
        return cached
    train_config = config.train_config(spec, seed, run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run_dir.parent / f"seed-{seed}.log"
    progress.start(name, run_dir / "metrics.jsonl")
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        result = train(train_config)
    progress.stop()
    for message in dict.fromkeys(str(w.message) for w in caught):
        progress.write(f"{name}: warning: {message}")
    if result.interrupted:
        progress.write(f"{name}: interrupted at step {result.steps}; run the same command again to continue")
        return None
    progress.note(f"{name}: trained in {result.elapsed_s:.0f} s; evaluating")
    eval_started = time.perf_counter()
    evaluation, params = evaluate_run(run_dir, config.tasks, device=config.device, options=config.task_options)
    eval_s = time.perf_counter() - eval_started
    progress.note(f"{name}: evaluated in {eval_s:.0f} s")
    record = {
        "label": spec.label,
        "objective": spec.objective,
        "options": train_config.options,
        "seed": seed,
        "dir": str(run_dir),
        "steps": result.steps,
        "tokens": result.tokens,
        "input_positions": config.steps * config.batch_size * config.seq_len,
        "parameters": params,
        "train_s": result.elapsed_s,
        "eval_s": eval_s,
        "vocab_size": result.vocab_size,
        "curve": _curve(result.metrics_path),
        "evaluation": evaluation,
    }
    (run_dir / RUN_FILE).write_text(
        json.dumps({"format": FORMAT, "tasks": _task_list(config), **record}, indent=2) + "\n"
    )
    return record


def _task_list(config: CompareConfig) -> dict[str, Any]:
    """What a run's cached evaluation must have been made with: the tasks (``tasks=None`` spelled out, so that a
    task added to the library later is evaluated on a cached run too) and their options."""
    from ..evaluation import TASKS

    tasks = list(config.tasks) if config.tasks is not None else list(TASKS)
    return {"tasks": tasks, "options": json.loads(json.dumps(config.task_options))}


def _read_cached(run_dir: Path, config: CompareConfig) -> dict[str, Any] | None:
    """The run's record if it finished all its steps and was evaluated with the same tasks, else None."""
    try:
        saved = json.loads((run_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if (
        saved.pop("format", None) != FORMAT
        or saved.pop("tasks", None) != _task_list(config)
        or saved.get("steps") != config.steps
    ):
        return None
    return saved


def _curve(metrics_path: Path) -> list[dict[str, float]]:
    """Each metrics line's step, tokens, training loss and (where evaluated) held-out loss of the run's own objective."""
    rows = []
    for number, line in enumerate(metrics_path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{metrics_path} line {number} is not JSON ({e})") from None
        row = check_metrics_row(row, metrics_path, number, keys=("tokens", "loss"))
        point = {"step": row["step"], "tokens": row["tokens"], "loss": row["loss"]}
        if "eval_loss" in row:
            point["eval_loss"] = row["eval_loss"]
        rows.append(point)
    return rows


def evaluate_run(
    run_dir: str | Path,
    tasks: tuple[str, ...] | None,
    *,
    device: str = "cpu",
    options: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], int]:
    """``({task: TaskResult.to_json()}, parameter count)`` of the run in ``run_dir``: the one place where the
    comparison calls :mod:`lmobjectives.evaluation`. ``tasks=None``: every task of ``TASKS``; a task that does
    not apply to the run, or fails on it (e.g. too little held-out text for a probe), comes back with
    ``"applies": False`` and the reason, so one task cannot lose the other runs' work. ``options``: keyword
    arguments per task; ``{"fill_in": {"candidates": "all"}}`` makes a causal model score every non-special token
    of its vocabulary at each hidden position (the exact conditional ``p(x_t | every other token)``, so its
    accuracy and loss are over the vocabulary as a masked model's are)."""
    from ..evaluation import TASKS, evaluate, load_run

    names = list(tasks) if tasks is not None else list(TASKS)
    if unknown := [n for n in names if n not in TASKS]:
        raise ValueError(f"unknown evaluation task(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(TASKS)}")
    run = load_run(run_dir, device=device)
    results = {}
    every_token = int((~run.vocab.special_mask()).sum())
    for name in names:
        kwargs = {
            k: every_token if (k, v) == ("candidates", "all") else v for k, v in (options or {}).get(name, {}).items()
        }
        try:
            report = evaluate(run, [name], options={name: kwargs} if kwargs else None)
        except ValueError as e:
            results[name] = {"task": name, "applies": False, "reason": f"failed: {e}"}
        else:
            results[name] = report.results[name].to_json()
    return results, sum(p.numel() for p in run.model.parameters())


class _Progress:
    """One bar over every run's steps on a terminal (it follows each run's metrics.jsonl); one line per event elsewhere."""

    def __init__(self, total_steps: int, enabled: bool) -> None:
        self.tty = enabled and sys.stderr.isatty()
        self.plain = enabled and not self.tty
        self.bar = tqdm(total=total_steps, desc="compare", unit="step", disable=not self.tty, dynamic_ncols=True)
        self.base = 0  # steps of the runs before the current one
        self.watch: threading.Thread | None = None
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def skip(self, steps: int, text: str) -> None:
        self.base += steps
        self._set(self.base)
        self.note(text)

    def start(self, text: str, metrics: Path) -> None:
        self.note(f"{text}: training")
        self.bar.set_description(text.split("] ", 1)[-1][:40])
        self.stopping.clear()
        self.watch = threading.Thread(target=self._follow, args=(metrics,), daemon=True)
        self.watch.start()

    def stop(self) -> None:
        self.stopping.set()
        if self.watch is not None:
            self.watch.join()
            self.watch = None

    def _follow(self, metrics: Path) -> None:
        step = 0
        while not self.stopping.wait(0.5):
            step = max(step, _last_step(metrics))
            self._set(self.base + step)
        self.base += max(step, _last_step(metrics))
        self._set(self.base)

    def _set(self, n: int) -> None:
        with self.lock:
            if n > self.bar.n:
                self.bar.update(n - self.bar.n)

    def note(self, text: str) -> None:
        if self.plain:
            print(f"compare {text}", file=sys.stderr, flush=True)
        elif self.tty:
            self.bar.set_postfix_str(text.rsplit(": ", 1)[-1])

    def write(self, text: str) -> None:
        if self.tty:
            self.bar.write(f"compare {text}", file=sys.stderr)
        else:
            print(f"compare {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.stop()
        self.bar.close()


def _last_step(metrics: Path) -> int:
    try:
        with open(metrics, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0
