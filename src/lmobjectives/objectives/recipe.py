"""How an objective is trained: the data it reads, the model it needs, the loss it computes.

Every registered objective has one :class:`Recipe` (its registry entry in
:data:`lmobjectives.objectives.OBJECTIVES`). The trainer and the CLI read
recipes and never an objective's name: adding an objective means its module,
its tests and one registry entry.

The objective's own dataclass fields are its options: :func:`options_of`
lists them with their types, defaults and the help text written as the
field's comment, which is what ``lmobj train --objective NAME --help`` shows.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

import torch

from .base import Batch

if TYPE_CHECKING:  # pragma: no cover
    from ..losses import LossOutput

__all__ = ["DataLayout", "ModelSpec", "Option", "Recipe", "StepLoss", "lm_step_loss", "options_of"]

DataLayout = Literal["blocks", "sentences", "documents", "conversations"]
"""What the trainer hands an objective at each step (see :mod:`lmobjectives.training.streams`):

- ``"blocks"``: ``objective(input_ids (B, T), attention_mask=..., generator=..., **extras)``, documents
  packed end to end with EOS between them (extras named by ``Recipe.block_extras``);
- ``"sentences"``: ``objective(sentences (S, L), document_ids=(S,), generator=...)``, one tokenised
  sentence per row for a window of documents; the trainer keeps ``batch_size`` of the rows returned;
- ``"documents"``: ``objective(texts: list[str], tokenizer=..., generator=...)``, raw document texts
  for a window of documents; the trainer keeps ``batch_size`` of the rows returned;
- ``"conversations"``: ``objective(input_ids (B, T), roles=..., attention_mask=..., document_ids=...,
  generator=...)``, chat conversations (``--data`` a JSONL file) tokenised with each token's role
  (:mod:`lmobjectives.sft`) and packed best-fit decreasing into rows, one conversation in one row.
"""

Architecture = str  # a key of lmobjectives.models.MODELS: "transformer", "encoder_decoder", ...


@dataclass(frozen=True)
class ModelSpec:
    """The model an objective needs; the run's sizes (width, depth, ...) come from the run's config."""

    architecture: Architecture = "transformer"  # "transformer" (encoder or decoder: the batch says) or "encoder_decoder"
    n_token_types: int = 0  # segment embeddings (2 for sentence pairs), 0 = none
    n_sentence_classes: int = 0  # classes of the [CLS] sentence head (2 for NSP/SOP), 0 = no head
    kwargs: dict[str, Any] = field(default_factory=dict)  # JSON values passed to MODELS[architecture](config, **kwargs)


@dataclass
class StepLoss:
    """What a recipe's loss returns for one batch."""

    total: torch.Tensor  # 0-dim, the quantity to backpropagate
    terms: dict[str, LossOutput]  # reported separately: metrics "<name>_loss", "<name>_accuracy" ("lm": "accuracy")
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # other 0-dim values, reported as their mean over steps
    weights: dict[str, float] = field(default_factory=dict)  # a term's weight in the reported "loss" (default 1), as in total


def lm_step_loss(objective: Any, model: torch.nn.Module, batch: Batch) -> StepLoss:
    """The default loss: cross-entropy at the labelled positions, plus the sentence head's loss when the batch
    has ``sentence_labels`` (NSP, SOP); total = their sum. Works for any model whose output has ``hidden``
    aligned with ``batch.labels`` and ``sentence_logits``, and which exposes ``output_weight``."""
    from ..losses import lm_loss, sentence_loss  # lazy: the loss pulls in the fused kernels

    out = model(batch)
    terms = {"lm": lm_loss(out.hidden, model.output_weight, batch.labels)}
    if batch.sentence_labels is not None and out.sentence_logits is not None:
        terms["sentence"] = sentence_loss(out.sentence_logits, batch.sentence_labels)
    total = terms["lm"].loss
    for name, term in terms.items():
        if name != "lm":
            total = total + term.loss
    return StepLoss(total=total, terms=terms)


def _no_names(objective: Any) -> tuple[str, ...]:
    return ()


def _same_length(objective: Any, seq_len: int) -> int:
    return seq_len


def _plain_model(objective: Any) -> ModelSpec:
    return ModelSpec()


@dataclass(frozen=True)
class Recipe:
    """How ``lmobj train`` trains one objective. Only ``objective`` and ``summary`` are required."""

    objective: type  # the objective's frozen dataclass; its init fields other than `vocab` are its options
    summary: str  # one line: what the objective is (for `lmobj train --help`, `lmobj inspect`, the README)
    data: DataLayout = "blocks"  # what the trainer hands the objective each step (see DataLayout)
    length_option: str | None = None  # the option the run's --seq-len sets (not a CLI flag), e.g. NSP's max_seq_length
    block_length: Callable[[Any, int], int] = _same_length  # blocks: raw tokens per block for a model input of seq_len
    block_extras: Callable[[Any], tuple[str, ...]] = _no_names  # blocks, sentences: extras it reads: "document_ids", "word_ids"
    special_tokens: tuple[str, ...] = ()  # tokens the run's tokenizer must reserve (sentinels, paradigm, FIM tokens)
    model: Callable[[Any], ModelSpec] = _plain_model  # the architecture and heads the objective needs
    loss: Callable[[Any, torch.nn.Module, Batch], StepLoss] = lm_step_loss  # (objective, model, batch) -> StepLoss
    untrainable: str | None = None  # why `lmobj train` cannot train it (data-only objectives), or None

    @property
    def name(self) -> str:
        """The objective's registry name (its class's ``name``)."""
        return self.objective.name

    def full_options(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every option, ``given`` over the defaults, in field order; an unknown name is a ``ValueError``.

        >>> from lmobjectives.objectives import OBJECTIVES
        >>> OBJECTIVES["clm"].full_options({"document_masking": True})
        {'document_masking': True}
        """
        if given is None:
            given = {}
        if not isinstance(given, Mapping):
            raise TypeError(f"options must be a dict of the objective's options, got {type(given).__name__}")
        known = {o.name: o.default for o in options_of(self)}
        if unknown := sorted(set(given) - set(known)):
            raise ValueError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for objective {self.name!r}; "
                f"valid options: {', '.join(known) or 'none'}"
            )
        return {**known, **given}

    def build(self, vocab: Any, options: Mapping[str, Any] | None = None, *, seq_len: int | None = None) -> Any:
        """The objective with ``options`` (JSON lists become tuples); ``seq_len`` sets the ``length_option``.

        Errors from the objective's own checks come back as ``ValueError`` naming the objective (and, where
        ``seq_len`` set an option, which).
        """
        built = {k: tuple(v) if isinstance(v, list) else v for k, v in self.full_options(options).items()}
        if self.length_option is not None:
            if seq_len is None:
                raise ValueError(f"objective {self.name!r} needs seq_len (it sets its {self.length_option})")
            built[self.length_option] = seq_len
        try:
            return self.objective(vocab=vocab, **built)
        except (TypeError, ValueError) as e:
            where = f" (--seq-len {seq_len} sets its {self.length_option})" if self.length_option else ""
            raise ValueError(f"objective {self.name!r}{where}: {e}") from None


@dataclass(frozen=True)
class Option:
    """One option of an objective: a field of its dataclass."""

    name: str  # field name, e.g. "unit" (CLI flag: --unit)
    type: Any  # resolved annotation, e.g. str, float, int | None, tuple[float, ...]
    default: Any  # the field's default
    help: str  # the field's comment in the class body


_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+?)\s*$")


@lru_cache(maxsize=None)
def _field_comments(cls: type) -> dict[str, str]:
    """``{field: comment}`` read from the class body (``name: type = default  # comment``), bases included."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            if match := _FIELD_COMMENT.match(line):
                comments[match.group(1)] = match.group(2)
    return comments


def options_of(recipe: Recipe) -> list[Option]:
    """The options a user sets: the objective's init fields except ``vocab`` and the run-set ``length_option``.

    >>> from lmobjectives.objectives import OBJECTIVES
    >>> [(o.name, o.default) for o in options_of(OBJECTIVES["clm"])]
    [('document_masking', False)]
    """
    cls = recipe.objective
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in ("vocab", recipe.length_option):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Option(name=f.name, type=hints[f.name], default=default, help=comments.get(f.name, "")))
    return out
