"""`TrainConfig`: the generic knobs of a training run, one field each, plus the objective's options as one mapping.

The objective's options are the fields of its dataclass (see
:func:`lmobjectives.recipes.options_of`); ``TrainConfig.options`` holds
every one of them, defaults filled in, so ``config.json`` records exactly
what was trained and ``--resume`` can check it. Nothing here knows any
objective by name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from ..constants import DEFAULT_SEED
from ..recipes import DEFAULT_OBJECTIVE, OBJECTIVES, Recipe

__all__ = ["POSITIONS", "TrainConfig", "resolve_device"]

POSITIONS = ("alibi", "rope")


@dataclass
class TrainConfig:
    # what to train
    objective: str = DEFAULT_OBJECTIVE  # training objective: a name of lmobjectives.OBJECTIVES
    options: dict[str, Any] = field(default_factory=dict)  # the objective's options (its dataclass fields); unset = default
    data: str = "builtin"  # corpus: "builtin", "synthetic:KIND?key=value&..." (markov, topics, icl; see data.corpus.load_corpus) or a path
    skip_bad_files: bool = False  # skip (with a warning naming them) data files that are not UTF-8 or cannot be read
    tokenizer: str = "byte"  # "byte", "bpe:N", "wordpiece:N" (trained on the corpus) or a saved tokenizer's path
    heldout: float = 0.05  # fraction of documents held out of training for evaluation, chosen by a hash of their text (0 = none)
    out: str | None = None  # output folder; None: runs/<objective>, or runs/<objective>-2, -3, ... if that holds a run
    # optimisation
    steps: int = 1000  # optimizer steps in the whole run (also the length of the cosine schedule); clm: ~1.5 min on 2 CPU cores
    batch_size: int = 16  # sequences (blocks, sentence pairs, ...) per step
    seq_len: int = 128  # tokens per model input: block size, pair length, encoder input length (the recipe says)
    lr: float = 2e-3  # peak learning rate (AdamW)
    warmup_steps: int = 30  # linear warm-up from lr/warmup_steps to lr, then cosine decay
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # AdamW decoupled weight decay, on matrices only (not norms, biases)
    grad_clip: float = 1.0  # clip the global gradient norm to this; 0 = no clipping
    seed: int = DEFAULT_SEED  # seeds the init, the data order and every corruption / dropout draw
    dupe_factor: int | None = None  # None: dynamic corruption, fresh every step (RoBERTa); N: N fixed ones per block, cycled by epoch (BERT)
    device: str = "auto"  # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    # model (see models.TransformerConfig)
    d_model: int = 128  # width of the residual stream
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # attention heads
    d_ff: int = 512  # MLP hidden width
    dropout: float = 0.0  # dropout in the model (0 = off)
    positions: str = "alibi"  # relative positions: "alibi" or "rope"
    # bookkeeping
    log_every: int = 10  # write a metrics line (mean over the last log_every steps) every this many steps
    eval_every: int | None = None  # held-out loss every N steps (a multiple of log_every) in that step's metrics line; None: 10 x log_every; 0: never
    eval_batches: int = 8  # held-out batches per evaluation (fixed ones; fewer if the held-out data has fewer)
    save_every: int = 200  # write a checkpoint every this many steps (and always at the end); 0 = only at the end
    keep_checkpoints: int = 2  # complete checkpoints kept (the newest and older ones to fall back on if it is damaged)
    resume: bool = False  # continue from out/checkpoint (exactly: same data, same corruption, same losses)
    stop_after: int | None = None  # stop (with a checkpoint) after this step, as if interrupted; resume later
    progress: bool = True  # show a live progress bar on stderr

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if self.recipe.untrainable:
            raise ValueError(f"objective {self.objective!r} cannot be trained by lmobjectives: {self.recipe.untrainable}")
        self.options = self._full_options(self.options)
        for name in ("steps", "batch_size", "seq_len", "log_every", "d_model", "n_layers", "n_heads", "d_ff", "keep_checkpoints"):
            _positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.stop_after is not None:
            _positive_int("stop_after", self.stop_after)
        _positive_int("eval_batches", self.eval_batches)
        if isinstance(self.heldout, bool) or not _finite(self.heldout) or not 0 <= self.heldout < 1:
            raise ValueError(f"heldout must be a fraction in [0, 1), got {self.heldout!r}")
        if self.eval_every is not None:
            if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
                raise ValueError(f"eval_every must be an int >= 0 (0 = never) or None, got {self.eval_every!r}")
            if self.eval_every % self.log_every:
                raise ValueError(
                    f"eval_every={self.eval_every} must be a multiple of log_every={self.log_every} (the held-out "
                    "numbers go in that step's metrics line), or 0 to turn evaluation off"
                )
        if self.dupe_factor is not None:
            _positive_int("dupe_factor", self.dupe_factor)
        if not _finite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not _finite(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not _finite(self.grad_clip) or self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip!r}")
        if not _finite(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")

    @property
    def eval_interval(self) -> int:
        """Steps between held-out evaluations (0: none): ``eval_every``, by default ``10 * log_every`` when
        documents are held out."""
        if self.eval_every is not None:
            return self.eval_every
        return 10 * self.log_every if self.heldout > 0 else 0

    @property
    def recipe(self) -> Recipe:
        """The registry entry of :attr:`objective`: its data layout, model and loss."""
        return OBJECTIVES[self.objective]

    def _full_options(self, given: object) -> dict[str, Any]:
        """Every option of the objective, JSON-normalised: what config.json holds, so a resumed run compares like
        with like (tuples become lists). Values are checked by the objective when the trainer builds it (some
        checks need the vocabulary)."""
        full = self.recipe.full_options(given)  # type: ignore[arg-type]
        try:
            return json.loads(json.dumps(full))
        except (TypeError, ValueError) as e:
            raise ValueError(f"options of objective {self.objective!r} must be JSON values ({e}): {full!r}") from None

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device``: ``"auto"`` is CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"device {name!r} is not a valid torch device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for CUDA but torch.cuda.is_available() is False; use --device cpu")
    return device
