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

from .._option import option
from ..constants import DEFAULT_SEED
from ..recipes import DEFAULT_OBJECTIVE, OBJECTIVES, Recipe

__all__ = ["POSITIONS", "TrainConfig", "resolve_device"]

POSITIONS = ("alibi", "rope")


@dataclass
class TrainConfig:
    # every field but options is a flag of lmobj train (--field-name); its help is the flag's --help text
    # what to train
    objective: str = option(DEFAULT_OBJECTIVE, "training objective")  # a name of lmobjectives.OBJECTIVES
    options: dict[str, Any] = field(
        default_factory=dict
    )  # the objective's options (its dataclass fields); unset = default
    data: str = option(
        "builtin",
        "corpus: 'builtin' (English prose shipped with Python, nothing downloaded), a .txt / .jsonl file or folder of "
        "them, or a seeded synthetic corpus: synthetic:markov (known entropy rate), synthetic:topics (documents with "
        "distinct topics), synthetic:icl (in-context key-value sequences), e.g. synthetic:markov?docs=500&seed=0; for "
        "chat objectives (sft's layout) a .jsonl of {'messages': [...]} or {'prompt', 'completion'} records",
    )  # see data.corpus.load_corpus
    skip_bad_files: bool = option(
        False, "skip data files that are not UTF-8 or cannot be read (each named in a warning) instead of stopping"
    )
    tokenizer: str = option(
        "byte",
        "'byte' (UTF-8 bytes + 7 specials), 'bpe:N' / 'wordpiece:N' (train N tokens on the corpus), or the path of a "
        "saved tokenizer",
    )
    heldout: float = option(
        0.05,
        "fraction of the documents held out of training for evaluation (lmobj eval, --eval-every), chosen by a hash "
        "of each document's words: the same split for every objective and seed; 0 = none",
    )
    out: str | None = option(
        None, "output folder for metrics.jsonl, config.json, tokenizer/ and checkpoint/ (default: runs/<objective>)"
    )  # None: runs/<objective>, or runs/<objective>-2, -3, ... if that holds a run
    # optimisation
    steps: int = option(
        1000, "optimizer steps (also the length of the cosine schedule)"
    )  # clm: ~1.5 min on 2 CPU cores
    batch_size: int = option(16, "sequences per step (blocks, sentence pairs, ...)")
    seq_len: int = option(
        128, "tokens per model input (block size, pair length, encoder input length)"
    )  # the recipe says which
    lr: float = option(2e-3, "peak learning rate of AdamW")
    warmup_steps: int = option(30, "steps of linear warm-up before the cosine decay")  # from lr/warmup_steps to lr
    min_lr_ratio: float = option(0.1, "final learning rate as a fraction of --lr")
    weight_decay: float = option(0.1, "AdamW weight decay (matrices only)")  # decoupled; not norms, biases
    grad_clip: float = option(1.0, "clip the gradient norm to this (0 = off)")  # the global norm
    seed: int = option(DEFAULT_SEED, "seed of the init, the data order and every random draw")
    dupe_factor: int | None = option(
        None,
        "static corruption (BERT): N fixed corruptions per block, one per epoch in turn; default: a fresh one every "
        "step (RoBERTa's dynamic masking)",
    )  # None: dynamic
    device: str = option("auto", "'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:N'")
    # model (see models.TransformerConfig)
    d_model: int = option(128, "width of the residual stream")
    n_layers: int = option(2, "transformer blocks")
    n_heads: int = option(4, "attention heads (must divide --d-model)")
    d_ff: int = option(512, "hidden width of each block's MLP")
    dropout: float = option(0.0, "dropout rate in the model")  # 0 = off
    positions: str = option("alibi", "relative position scheme")  # one of POSITIONS
    # bookkeeping
    log_every: int = option(10, "write a metrics line every N steps (mean over them)")
    eval_every: int | None = option(
        None,
        "add the loss on held-out batches (eval_loss, eval_accuracy, ...) to the metrics line every N steps (a multiple "
        "of --log-every) and at the end; default: 10 x --log-every when documents are held out; 0 = never",
    )  # None: the default (eval_interval)
    eval_batches: int = option(
        8, "held-out batches per evaluation (the same ones every time)"
    )  # fewer if there are fewer
    save_every: int = option(200, "checkpoint every N steps, and always at the end and on Ctrl-C (0 = only then)")
    keep_checkpoints: int = option(2, "complete checkpoints kept; a damaged newest one falls back on the next")
    resume: bool = option(
        False,
        "continue the run in --out from its checkpoint, reproducing the uninterrupted run exactly (starts fresh if "
        "there is no checkpoint yet)",
    )
    stop_after: int | None = option(
        None, "stop with a checkpoint after this step, as if interrupted (continue later with --resume)"
    )
    progress: bool = option(
        True, "no progress bar (metrics.jsonl and the summary are still written)"
    )  # --no-progress's help

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        if self.recipe.untrainable:
            raise ValueError(
                f"objective {self.objective!r} cannot be trained by lmobjectives: {self.recipe.untrainable}"
            )
        self.options = self._full_options(self.options)
        for name in (
            "steps",
            "batch_size",
            "seq_len",
            "log_every",
            "d_model",
            "n_layers",
            "n_heads",
            "d_ff",
            "keep_checkpoints",
        ):
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
