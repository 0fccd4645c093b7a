"""Hugging Face integration: every registered objective as a ``transformers.Trainer`` data collator, and a
Trainer whose loss is right under gradient accumulation and across processes.

- :func:`collator` (``lmobjectives.hf.collator``): ``list[dict] -> dict[str, Tensor]`` under HF's names;
- :func:`loss_terms` / :func:`target_counts` (``heads``): each loss term from a model's body through the
  fused linear cross-entropy, as a sum with its count;
- :class:`ObjectiveTrainer` (``trainer``): ``transformers.Trainer`` with each term normalised by its own
  global count over the accumulation window;
- :class:`ElectraPair` (``electra``): ELECTRA's generator and discriminator with shared embeddings, trained
  jointly by ``ObjectiveTrainer``; the discriminator's batch and loss for ``ElectraForPreTraining``.

``import lmobjectives`` never imports this package; this package needs ``pip install -e ".[hf]"``.
"""

from importlib import import_module
from typing import Any

from .collator import ObjectiveCollator, collator
from .electra import ElectraPair, discriminator_features, discriminator_loss, sample_replacements
from .features import hf_features
from .heads import Head, head_of, loss_terms, target_counts

__all__ = [
    "ElectraPair",
    "Head",
    "ObjectiveCollator",
    "ObjectiveTrainer",
    "collator",
    "discriminator_features",
    "discriminator_loss",
    "head_of",
    "hf_features",
    "loss_terms",
    "sample_replacements",
    "target_counts",
]


def __getattr__(name: str) -> Any:
    if name == "ObjectiveTrainer":  # imports transformers.Trainer (and accelerate): only when asked for
        value = import_module(".trainer", __name__).ObjectiveTrainer
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmobjectives.hf' has no attribute {name!r}")
