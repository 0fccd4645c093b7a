"""The evaluations as named tasks (:data:`TASKS`) and :func:`evaluate`, which runs them on a run and returns an
:class:`EvalReport` (JSON and a terminal table). ``lmobj eval RUN_DIR`` is this module on the command line."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from .fill_in import fill_in
from .generation import generation
from .next_token import next_token
from .pll import pll
from .probe import probe
from .result import TaskResult
from .run import NotApplicable, Run
from .sentence_pairs import sentence_pairs

__all__ = ["TASKS", "EvalReport", "Task", "evaluate", "format_reports"]


def _always(run: Run) -> str | None:
    return None


def _needs_lm_head(run: Run) -> str | None:
    """Why the model's hidden states times its output matrix are no language model, or None. ELECTRA's forward is
    its discriminator (a replaced-token detector over the shared embedding); its generator is a separate network."""
    if hasattr(run.model, "replaced_logits"):
        return "the model's output is a replaced-token discriminator, not a language model (ELECTRA-style)"
    return None


def _needs_both_sides(why_not_causal: str) -> Callable[[Run], str | None]:
    """An ``applies`` for a task that needs a language model reading both sides; ``why_not_causal`` says why a
    causal model is left out."""

    def applies(run: Run) -> str | None:
        return _needs_lm_head(run) or (why_not_causal if run.reads == "causal" else None)

    return applies


def _needs_pair_head(run: Run) -> str | None:
    if getattr(getattr(run.model, "config", None), "n_sentence_classes", 0) != 2:
        return f"the model has no sentence-pair head ({run.config.objective!r} trains none)"
    return None


@dataclass(frozen=True)
class Task:
    """One evaluation: ``function(run, **options) -> TaskResult``; ``applies(run)`` is None or why it does not apply."""

    name: str  # the task's name (lmobj eval --tasks NAME)
    summary: str  # one line: what it measures
    function: Callable[..., TaskResult]  # (run, **options) -> TaskResult
    applies: Callable[[Run], str | None] = _always  # None, or why the task does not apply to this run


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("next_token", "next-token loss and bits per byte from the left context only", next_token, _needs_lm_head),
        Task(
            "fill_in",
            "hidden tokens restored from both contexts (causal models: candidate scoring)",
            fill_in,
            _needs_lm_head,
        ),
        Task(
            "fill_in_words",
            "whole words hidden (every token of a word), restored from both contexts",
            partial(fill_in, unit="word"),
            _needs_both_sides(
                "a causal model fills in by scoring the candidates of one token; a whole word has too many"
            ),
        ),
        Task(
            "pll",
            "pseudo-perplexity: each token masked in turn (Salazar et al. 2020)",
            pll,
            _needs_both_sides("a causal model reads one side only; its exact log-likelihood is next_token's loss"),
        ),
        Task(
            "sentence_pairs",
            "NSP and SOP accuracy of the sentence-pair head, balanced accuracy beside",
            sentence_pairs,
            _needs_pair_head,
        ),
        Task(
            "generation",
            "greedy and sampled continuations of held-out prompts: repetition, reference loss",
            generation,
            _needs_lm_head,
        ),
        Task("probe", "linear probe: which held-out document a sentence comes from", probe),
    )
}


@dataclass
class EvalReport:
    """The results of :func:`evaluate` on one run."""

    run: str  # the run's folder
    objective: str  # what it was trained with
    options: dict[str, Any]  # the objective's options
    step: int  # the checkpoint's step
    reads: str  # causal, bidirectional or encoder_decoder
    heldout: dict[str, Any]  # the held-out split: fraction and documents
    results: dict[str, TaskResult] = field(default_factory=dict)  # task name -> result
    seconds: dict[str, float] = field(default_factory=dict)  # task name -> wall-clock seconds

    def metrics(self) -> dict[str, float]:
        """Every number as ``{"<task>.<metric>": value}`` (tasks that do not apply left out)."""
        return {f"{name}.{k}": v for name, r in self.results.items() if r.applies for k, v in r.metrics.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "objective": self.objective,
            "options": self.options,
            "step": self.step,
            "reads": self.reads,
            "heldout": self.heldout,
            "seconds": self.seconds,
            "results": {name: r.to_json() for name, r in self.results.items()},
        }

    def table(self) -> str:
        """The results for a terminal: one line per task, then any warnings."""
        return format_reports([self])


def evaluate(
    run: Run,
    tasks: Sequence[str] | None = None,
    *,
    options: dict[str, dict[str, Any]] | None = None,
    strict: bool = False,
    progress: Callable[[str], None] | None = None,
) -> EvalReport:
    """Run ``tasks`` (default: all of :data:`TASKS`) on ``run``'s held-out data.

    ``options`` gives a task's keyword arguments by task name (``{"generation": {"reference": ref_run}}``). A task
    that does not apply gives a :class:`TaskResult` with ``applies=False`` and the reason; with ``strict`` it
    raises :class:`NotApplicable` instead, before anything runs (``lmobj eval --tasks`` names tasks that way).
    Unknown names, and a run with no held-out documents, raise ``ValueError``.
    """
    names = list(TASKS) if tasks is None else list(tasks)
    if unknown := [n for n in names if n not in TASKS]:
        raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}; valid tasks: {', '.join(TASKS)}")
    options = options or {}
    if unknown := [n for n in options if n not in TASKS]:
        raise ValueError(
            f"options for unknown task(s) {', '.join(map(repr, unknown))}; valid tasks: {', '.join(TASKS)}"
        )
    run.require_heldout()
    if strict:
        for name in names:
            if (reason := TASKS[name].applies(run)) is not None:
                raise NotApplicable(f"task {name!r} does not apply to {run.out_dir}: {reason}")
    report = EvalReport(
        run=str(run.out_dir),
        objective=run.config.objective,
        options=run.config.options,
        step=run.step,
        reads=run.reads,
        heldout={"fraction": run.config.heldout, "documents": len(run.heldout)},
    )
    for name in names:
        task = TASKS[name]
        if progress is not None:
            progress(name)
        started = time.perf_counter()
        reason = task.applies(run)
        if reason is None:
            try:
                result = task.function(run, **options.get(name, {}))
            except NotApplicable as e:
                if strict:
                    raise NotApplicable(f"task {name!r} does not apply to {run.out_dir}: {e}") from None
                result = TaskResult.not_applicable(name, str(e))
        else:
            result = TaskResult.not_applicable(name, reason)
        report.results[name] = result
        report.seconds[name] = round(time.perf_counter() - started, 3)
    return report


def _number(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.4g}"
    return str(value)


def format_reports(reports: Sequence[EvalReport]) -> str:
    """A plain-text table: a header per run, one line per task (its metrics), warnings and not-applicable reasons."""
    lines = []
    for report in reports:
        lines.append(
            f"{report.run}: {report.objective}, step {report.step}, reads {report.reads}; held out: "
            f"{report.heldout['documents']} documents (heldout={report.heldout['fraction']})"
        )
        width = max((len(n) for n in report.results), default=4)
        for name, result in report.results.items():
            if not result.applies:
                lines.append(f"  {name:<{width}}  not applicable: {result.reason}")
                continue
            parts = [f"{k} {_number(v)}" for k, v in result.metrics.items()]
            how = result.info.get("method") or result.info.get("procedure")
            lines.append(f"  {name:<{width}}  " + ", ".join(parts) + (f"  [{how}]" if how else ""))
            lines.extend(f"  {'':<{width}}  warning: {w}" for w in result.warnings)
    return "\n".join(lines)
