"""How an objective is trained: the data it reads, the model it needs, the loss it computes.

Every registered objective has one :class:`Recipe` (its registry entry in
:data:`lmobjectives.recipes.OBJECTIVES`). The trainer and the CLI read
recipes and never an objective's name: adding an objective means its module,
its tests and one registry entry.

The objective's own dataclass fields are its options: :func:`options_of`
lists them with their types, defaults and help texts (each field's ``metadata["help"]``), which is what
``lmobj train --objective NAME --help`` shows.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..batch import Batch
from .step_losses import StepLoss, lm_step_loss

__all__ = ["DataLayout", "ModelSpec", "Option", "Recipe", "options_of"]

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
  (:func:`lmobjectives.data.pack_chat`) and packed best-fit decreasing into rows, one conversation in one row.
"""

Architecture = str  # a key of lmobjectives.models.MODELS: "transformer", "encoder_decoder", ...


@dataclass(frozen=True)
class ModelSpec:
    """The model an objective needs; the run's sizes (width, depth, ...) come from the run's config."""

    architecture: Architecture = (
        "transformer"  # "transformer" (encoder or decoder: the batch says) or "encoder_decoder"
    )
    n_token_types: int = 0  # segment embeddings (2 for sentence pairs), 0 = none
    n_sentence_classes: int = 0  # classes of the [CLS] sentence head (2 for NSP/SOP), 0 = no head
    kwargs: dict[str, Any] = field(default_factory=dict)  # JSON values passed to MODELS[architecture](config, **kwargs)


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
    block_extras: Callable[[Any], tuple[str, ...]] = (
        _no_names  # blocks, sentences: extras it reads: "document_ids", "word_ids"
    )
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

        >>> from lmobjectives.recipes import OBJECTIVES
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
    help: str  # the field's help text (its metadata["help"], set by lmobjectives._option.option)


def options_of(recipe: Recipe) -> list[Option]:
    """The options a user sets: the objective's init fields except ``vocab`` and the run-set ``length_option``.

    >>> from lmobjectives.recipes import OBJECTIVES
    >>> [(o.name, o.default) for o in options_of(OBJECTIVES["clm"])]
    [('document_masking', False)]
    """
    cls = recipe.objective
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init or f.name in ("vocab", recipe.length_option):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(Option(name=f.name, type=hints[f.name], default=default, help=f.metadata.get("help", "")))
    return out
