"""Evaluating trained runs on held-out data, whatever objective trained them: ``lmobj eval RUN_DIR``.

>>> from lmobjectives.evaluation import load_run, evaluate  # doctest: +SKIP
>>> run = load_run("runs/clm")                               # doctest: +SKIP
>>> report = evaluate(run, ["next_token", "fill_in"])        # doctest: +SKIP
>>> print(report.table())                                    # doctest: +SKIP

:func:`load_run` gives a :class:`Run` (config, tokenizer, recipe, objective, model in eval mode, the corpus
split into training and held-out documents, and how the model reads text: ``run.reads``). The tasks
(:data:`TASKS`, one module each) read only held-out documents (``TrainConfig.heldout``: a hash of each
document's words decides, see :func:`lmobjectives.training.streams.heldout_split`):

- :func:`next_token`: next-token loss and bits per byte from the left context only;
- :func:`fill_in`: hidden tokens restored from both contexts (task ``fill_in``), or hidden whole words
  (``unit="word"``, task ``fill_in_words``);
- :func:`pll`: pseudo-log-likelihood and pseudo-perplexity (Salazar et al. 2020);
- :func:`sentence_pairs`: NSP and SOP accuracy of a sentence-pair head, with label shares and balanced accuracy;
- :func:`generation`: greedy and sampled continuations of held-out prompts;
- :func:`probe`: a linear probe on mean-pooled hidden states.

Each returns a :class:`TaskResult`; :func:`evaluate` runs several and returns an :class:`EvalReport`.
The run's own data: :func:`run_batches` (the exact training batches), :func:`heldout_batches` (those of its
``eval_*`` metrics), :func:`heldout_blocks` (held-out text as token blocks) and :func:`heldout_word_ids`
(their words), :func:`pair_batches` (every held-out sentence pair once).
"""

from .fill_in import fill_in
from .generation import continue_prompts, generation, repetition_rate
from .next_token import next_token, next_token_losses
from .pll import pll, pseudo_log_likelihoods
from .probe import fit_linear_probe, probe
from .result import TaskResult
from .run import (
    NotApplicable,
    Reads,
    Run,
    heldout_batches,
    heldout_blocks,
    heldout_word_ids,
    load_run,
    run_batches,
    token_byte_lengths,
)
from .sentence_pairs import pair_batches, pair_metrics, sentence_pairs
from .tasks import TASKS, EvalReport, Task, evaluate, format_reports

__all__ = [
    "TASKS",
    "EvalReport",
    "NotApplicable",
    "Reads",
    "Run",
    "Task",
    "TaskResult",
    "continue_prompts",
    "evaluate",
    "fill_in",
    "fit_linear_probe",
    "format_reports",
    "generation",
    "heldout_batches",
    "heldout_blocks",
    "heldout_word_ids",
    "load_run",
    "next_token",
    "next_token_losses",
    "pair_batches",
    "pair_metrics",
    "pll",
    "probe",
    "pseudo_log_likelihoods",
    "repetition_rate",
    "run_batches",
    "sentence_pairs",
    "token_byte_lengths",
]
