"""Sentence-pair heads on held-out pairs of both kinds: NSP (is B the next segment or a random one?) and SOP
(are A and B in order or swapped?), whichever of the two the model was trained on.

The pairs: every pair BERT's (:class:`~lmobjectives.objectives.NextSentencePrediction`) and ALBERT's
(:class:`~lmobjectives.objectives.SentenceOrderPrediction`) procedures cut from the held-out documents, each
document once (:func:`pair_batches`), with the run's ``seq_len``, unmasked by default (``mlm_probability=0``:
the head is judged on the text, as in fine-tuning). A model trained on NSP is so tested on SOP and the
reverse (ALBERT's Table 4 cross-evaluation).

Beside the accuracy: the share of label 1, the majority label's share and the balanced accuracy (the mean
of the two labels' recalls; 0.5 for a model that always says one label). At short lengths NSP's labels are
far from even (a one-sentence chunk always takes a random B, faithful to BERT; with the byte tokenizer at
``seq_len`` 64, 92-95 % of the pairs are "random"), so a head that learned nothing shows a high accuracy;
a warning says so when one label exceeds 80 %. ``balanced=True`` scores an even subset instead (the
majority label's pairs subsampled, from a fixed seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from .._checks import check_choice
from ..batch import Batch
from ..constants import DEFAULT_SEED
from ..data.packing import sentence_table, tokenize_corpus
from ..recipes import OBJECTIVES
from ..training.streams import SentenceStream, derive_seed
from .result import TaskResult
from .run import NotApplicable, Run, _texts_as_documents, eval_generator

__all__ = ["pair_batches", "pair_kinds", "pair_metrics", "sentence_pairs"]

SKEW_WARNING = 0.8  # warn when one label holds more than this share of the pairs


def pair_kinds() -> list[str]:
    """The registry's sentence-pair objectives (data layout ``"sentences"``): the kinds of pairs to score.

    >>> pair_kinds()
    ['nsp', 'sop']
    """
    return [name for name, recipe in OBJECTIVES.items() if recipe.data == "sentences" and not recipe.untrainable]


def _label_meaning(kind: str) -> str:
    return OBJECTIVES[kind].objective.label_meaning


def pair_batches(
    run: Run, kind: str, *, documents: list | None = None, batch_size: int | None = None, mlm_probability: float = 0.0
) -> Iterator[Batch]:
    """Every sentence pair of ``kind`` (``"nsp"`` or ``"sop"``) of ``documents`` (default: the held-out ones),
    once, in batches of ``batch_size`` (default: the run's) pairs: the documents in order, windows of them as
    the training stream takes them (NSP's random B comes from another document of the window), each window's
    draws from a fixed seed."""
    check_choice(kind, "kind", pair_kinds())
    if documents is None:
        run.require_heldout()
        documents = run.heldout
    vocab = run.vocab
    objective = OBJECTIVES[kind].build(vocab, {"mlm_probability": mlm_probability}, seq_len=run.config.seq_len)
    table = sentence_table(
        tokenize_corpus(_texts_as_documents(documents), run.tokenizer),
        pad_id=vocab.pad_id,
        max_length=run.config.seq_len,
    )
    stream = SentenceStream(
        objective,
        table.input_ids,
        table.document_ids,
        batch_size=batch_size or run.config.batch_size,
        seed=derive_seed(DEFAULT_SEED, "pairs", kind),
    )
    yield from stream.one_pass()


def pair_metrics(
    predictions: torch.Tensor, labels: torch.Tensor, *, balanced: bool = False, generator: torch.Generator | None = None
) -> dict[str, float]:
    """Accuracy, balanced accuracy, the share of label 1 and the majority label's share of predictions ``(N,)``
    against labels ``(N,)`` in {0, 1}; ``balanced=True`` first subsamples the majority label to the minority's count.

    >>> m = pair_metrics(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 0]))
    >>> m["accuracy"], m["balanced_accuracy"], m["label_share"], m["majority_share"]
    (0.75, 0.5, 0.75, 0.75)
    """
    if predictions.shape != labels.shape or labels.dim() != 1:
        raise ValueError(
            f"predictions and labels must be (N,) alike, got {tuple(predictions.shape)} and {tuple(labels.shape)}"
        )
    if balanced:
        keep = _balanced_subset(labels, generator)
        predictions, labels = predictions[keep], labels[keep]
    n = labels.numel()
    hits = predictions == labels
    recalls = [int(hits[labels == c].sum()) / int((labels == c).sum()) for c in (0, 1) if bool((labels == c).any())]
    share = int(labels.sum()) / n if n else 0.0
    return {
        "accuracy": int(hits.sum()) / n if n else 0.0,
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else 0.0,
        "label_share": share,
        "majority_share": max(share, 1 - share) if n else 0.0,
        "pairs": n,
    }


def _balanced_subset(labels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    ones, zeros = (labels == 1).nonzero().flatten(), (labels == 0).nonzero().flatten()
    k = min(ones.numel(), zeros.numel())
    pick = [group[torch.randperm(group.numel(), generator=generator)[:k]] for group in (zeros, ones)]
    return torch.cat(pick).sort().values


@torch.no_grad()
def sentence_pairs(run: Run, *, balanced: bool = False, mlm_probability: float = 0.0) -> TaskResult:
    """The sentence head's accuracy on held-out NSP and SOP pairs (see the module docstring); not applicable to a
    model without a sentence-pair head."""
    classes = getattr(getattr(run.model, "config", None), "n_sentence_classes", 0)
    if classes != 2:
        raise NotApplicable(
            f"the model has no sentence-pair head ({run.config.objective!r} trains none); NSP/SOP "
            "accuracy needs a model trained with a sentence-pair objective"
        )
    kinds = pair_kinds()
    trained = next((k for k in kinds if isinstance(run.objective, OBJECTIVES[k].objective)), None)
    kinds.sort(key=lambda k: k != trained)  # the kind it was trained on first
    metrics: dict[str, float] = {}
    info: dict = {"trained_on": trained, "balanced": balanced, "mlm_probability": mlm_probability, "warnings": []}
    for kind in kinds:
        predictions, labels = [], []
        for batch in pair_batches(run, kind, mlm_probability=mlm_probability):
            logits = run.model(batch.to(run.device)).sentence_logits  # (B, 2)
            predictions.append(logits.argmax(-1).cpu())
            labels.append(batch.sentence_labels)
        if not labels:
            raise ValueError(f"the held-out documents of {run.out_dir} make no {kind} pair")
        m = pair_metrics(
            torch.cat(predictions), torch.cat(labels), balanced=balanced, generator=eval_generator("balanced", kind)
        )
        metrics[f"{kind}_balanced_accuracy"] = m["balanced_accuracy"]
        metrics[f"{kind}_accuracy"] = m["accuracy"]
        info[kind] = {**m, "labels": _label_meaning(kind)}
        if m["majority_share"] > SKEW_WARNING:
            label = int(m["label_share"] > 0.5)
            info["warnings"].append(
                f"{kind}: {m['majority_share']:.0%} of the {m['pairs']} held-out pairs have label {label} "
                f"({_label_meaning(kind)}): an accuracy near {m['majority_share']:.2f} is what always answering {label} "
                "scores; read the balanced accuracy (or pass balanced=True / --balanced)"
            )
    counts = ", ".join(
        f"{info[k]['pairs']} {k.upper()} pairs (standard error of an accuracy up to "
        f"±{0.5 / math.sqrt(max(info[k]['pairs'], 1)):.3f})"
        for k in kinds
    )
    info["procedure"] = f"the sentence head's argmax on every held-out pair as each objective builds them: {counts}"
    return TaskResult("sentence_pairs", metrics=metrics, info=info)
