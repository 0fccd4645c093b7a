"""The run folder that ``lmobj train`` writes, and its ``config.json``: the one place that knows their layout.

A run folder holds ``config.json`` (:class:`RunConfig`: the training config, the model's architecture and
sizes, the held-out split), ``metrics.jsonl``, ``tokenizer/`` and ``checkpoint/``
(:mod:`lmobjectives.training.checkpoint`). :func:`write_run_config` and :func:`read_run_config` are the
writer and the reader of ``config.json``; :func:`build_model` makes a run's model from it and
:func:`load_model` loads its trained weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..models import MODELS, TransformerConfig
from ..recipes import LEGACY_ARCHITECTURES
from .checkpoint import checkpoint_steps, load_checkpoint
from .config import TrainConfig

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "METRICS_FILE",
    "SAVED_BEFORE",
    "TOKENIZER_DIR",
    "RunConfig",
    "build_model",
    "is_run",
    "load_model",
    "read_run_config",
    "resolve_out",
    "write_run_config",
]

CONFIG_FILE = "config.json"  # RunConfig as JSON
METRICS_FILE = "metrics.jsonl"  # one JSON line per --log-every steps (and per held-out evaluation)
TOKENIZER_DIR = "tokenizer"  # the run's tokenizer, saved with tokenizer.save()
CHECKPOINT_DIR = "checkpoint"  # model and optimizer safetensors, state-S.json per kept step
SAVED_BEFORE = {"heldout": 0.0}  # fields a run saved before they existed had, in effect: all documents trained on


@dataclass
class RunConfig:
    """What ``config.json`` holds."""

    train: dict[str, Any]  # TrainConfig.to_dict() with the resolved "out"
    model: dict[str, Any]  # the TransformerConfig's fields
    architecture: str = "transformer"  # key of lmobjectives.models.MODELS (runs saved before architectures: transformer)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # JSON values passed to MODELS[architecture]
    split: dict[str, Any] = field(default_factory=dict)  # the held-out split: document counts, salt, rule

    def train_config(self, **changes: Any) -> TrainConfig:
        """The run's :class:`TrainConfig` (fields it saved before they existed: :data:`SAVED_BEFORE`; fields it
        saved that no longer exist are left out), with ``changes`` applied."""
        known = {f.name for f in fields(TrainConfig)}
        saved = {**SAVED_BEFORE, **{k: v for k, v in self.train.items() if k in known}}
        return TrainConfig(**{**saved, **changes})


def write_run_config(out: str | Path, run: RunConfig) -> Path:
    """Write ``out/config.json``; returns its path."""
    path = Path(out) / CONFIG_FILE
    record = {"train": run.train, "architecture": run.architecture, "model": run.model,
              "model_kwargs": run.model_kwargs, "split": run.split}  # fmt: skip
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_run_config(out: str | Path) -> RunConfig:
    """``out/config.json`` of a run; a ``ValueError`` in one line when ``out`` is not a run.

    >>> read_run_config("/nonexistent")
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent is not an lmobj run (no config.json with a "train" entry)
    """
    if not is_run(out):
        raise ValueError(f'{out} is not an lmobj run (no {CONFIG_FILE} with a "train" entry)')
    saved = json.loads((Path(out) / CONFIG_FILE).read_text())
    architecture = saved.get("architecture", "transformer")
    return RunConfig(train=saved["train"], model=saved["model"], architecture=LEGACY_ARCHITECTURES.get(architecture, architecture),
                     model_kwargs=saved.get("model_kwargs", {}), split=saved.get("split", {}))  # fmt: skip


def build_model(run: RunConfig) -> torch.nn.Module:
    """A freshly initialised model of the run's architecture and sizes (torch's global RNG draws the weights)."""
    return MODELS[run.architecture](TransformerConfig(**run.model), **run.model_kwargs)


def load_model(out_dir: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model of a run folder (newest intact checkpoint), in eval mode, on ``device``."""
    model = build_model(read_run_config(out_dir)).to(device)
    load_checkpoint(Path(out_dir) / CHECKPOINT_DIR, model)
    return model.eval()


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is the output folder of an ``lmobj train`` run (its ``config.json`` has a ``"train"`` entry)."""
    try:
        return "train" in json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError, TypeError):
        return False


def resolve_out(config: TrainConfig) -> Path:
    """The output folder; never one holding files that are not a run of ours.

    An explicit ``out`` must be new, empty, or a run (which ``resume`` continues; without it, only a run
    that saved no checkpoint may be started over). The default, ``runs/<objective>``, becomes
    ``runs/<objective>-2``, ``-3``, ... when it already holds a run with a checkpoint and ``resume`` is off.
    """
    if config.out is not None:
        out = Path(config.out)
        candidates = [out]
    else:
        base = Path("runs") / config.objective
        candidates = [base] if config.resume else [base, *(base.with_name(f"{base.name}-{i}") for i in range(2, 1000))]
    for out in candidates:
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out")
        if out.is_dir() and any(out.iterdir()) and not is_run(out):
            raise FileExistsError(
                f"--out {out} holds files that are not an lmobj run (no config.json of a run); refusing to write "
                "there: choose a new or empty folder"
            )
        if config.resume or not checkpoint_steps(out / "checkpoint"):
            return out
        if config.out is not None:
            raise FileExistsError(
                f"{out} already holds a run with a checkpoint (step {checkpoint_steps(out / 'checkpoint')[0]}); pass "
                "--resume (resume=True) to continue it, or choose another --out"
            )
    raise FileExistsError(f"runs/{config.objective} and its numbered variants up to -999 all hold runs; pass --out")
