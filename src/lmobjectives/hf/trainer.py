"""``ObjectiveTrainer``: ``transformers.Trainer`` whose loss is each term's mean over the whole optimizer step.

With gradient accumulation, the stock Trainer either divides each micro-batch's mean by the number of
micro-batches (a mean of means: biased when micro-batches hold different numbers of targets) or, for heads
that take ``num_items_in_batch``, divides by a global count of ``labels`` only; heads that declare
``**kwargs`` but ignore it (``BertForMaskedLM``, ``BertForPreTraining``, ``T5ForConditionalGeneration``,
``ElectraForPreTraining`` in transformers 5.25) get their loss multiplied by the accumulation factor
(``benchmarks/results/hf_loss_scale.md``). Here, overriding public hooks only:

- :meth:`ObjectiveTrainer.get_batch_samples` counts the targets of every loss term (``"lm"``: the
  labels the head scores; ``"sentence"``: NSP/SOP labels) over the accumulation window's micro-batches,
  summed over processes (an all-reduce when distributed);
- :meth:`ObjectiveTrainer.compute_loss` computes each term as a sum (:func:`lmobjectives.hf.loss_terms`:
  the fused linear cross-entropy on the body's hidden states after the head's transform, target rows
  only) and divides it by that window count: the micro-batches' losses add up to the step's exact mean
  per term, ``loss = sum_t weight_t * sum_t / N_t``. ``loss_is_scaled_for_ga = True`` tells Trainer not to
  divide again; the loss is multiplied by the number of processes, which DDP's gradient averaging undoes.

ELECTRA: a :class:`lmobjectives.hf.ElectraPair` (generator + discriminator, one embedding module) is trained
as one model: its ``forward`` gives the ``generator`` and ``discriminator`` terms (fused, even under DDP),
weighed by its ``term_weights`` (the discriminator's 50) unless ``term_weights`` here says otherwise.

In evaluation (``model.training`` False) each batch is normalised by its own counts. Each term's mean is
logged as ``<term>_loss`` beside Trainer's ``loss``.

Under DDP (a wrapped model) the terms come from the wrapped model's own forward (its ``logits``), so that
DDP's gradient hooks run; the normalisation is the same, only the fused projection is lost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..objectives.electra import ELECTRA
from .electra import ElectraPair
from .heads import LOGITS, loss_terms, target_counts

__all__ = ["ObjectiveTrainer"]


class _EpochCallback(TrainerCallback):
    """Tells the collator the epoch before its dataloader iterator is made (its draws depend on it)."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.collator.set_epoch(int(state.epoch or 0))


class ObjectiveTrainer(Trainer):
    """``Trainer`` with the per-term, per-window loss (see the module docstring).

    ``term_weights``: a weight per term name (default 1 each: BERT's ``MLM + NSP``; an ``ElectraPair``'s own). ``impl``: the fused
    cross-entropy's implementation (:func:`lmobjectives.ops.linear_cross_entropy`).
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the window's counts itself

    def __init__(
        self, *args: Any, term_weights: Mapping[str, float] | None = None, impl: str = "auto", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.term_weights = dict(term_weights or {})
        self.impl = impl
        self._window_counts: dict[str, torch.Tensor] | None = None
        self._logged_terms: dict[str, torch.Tensor] = {}
        self._windows_since_log = 0
        self._check_electra_weight()
        if callable(getattr(self.data_collator, "set_epoch", None)):
            self.add_callback(_EpochCallback(self.data_collator))

    def _check_electra_weight(self) -> None:
        """Refuse an ``electra`` collator whose ``discriminator_weight`` was set and differs from the pair's: the
        pair's weight is the one trained with (the collator's option does not change the batch)."""
        pair = self.accelerator.unwrap_model(self.model)
        option = getattr(getattr(self.data_collator, "objective", None), "discriminator_weight", None)
        if (
            isinstance(pair, ElectraPair)
            and option is not None
            and option != ELECTRA.discriminator_weight
            and option != pair.discriminator_weight
        ):
            raise ValueError(
                f"the electra collator has discriminator_weight={option:g} but the ElectraPair "
                f"{pair.discriminator_weight:g}; the pair's is trained with: ElectraPair(..., discriminator_weight={option:g})"
            )

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        """Trainer's window of micro-batches, and each loss term's target count over it (and the processes)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        model = self.accelerator.unwrap_model(self.model)
        totals: dict[str, torch.Tensor] = {}
        for batch in batch_samples:
            counts_of = model.target_counts(batch) if isinstance(model, ElectraPair) else target_counts(model, batch)
            for name, count in counts_of.items():
                totals[name] = totals.get(name, 0) + count
        names = sorted(totals)
        if names:
            counts = torch.stack([totals[n].to(device=device, dtype=torch.long) for n in names])  # (terms,)
            if self.accelerator.num_processes > 1:
                counts = self.accelerator.reduce(counts, reduction="sum")
            self._window_counts = dict(zip(names, counts))
        else:
            self._window_counts = None
        self._windows_since_log += 1
        return batch_samples, num_items_in_batch

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        unwrapped = self.accelerator.unwrap_model(model)
        weights = dict(unwrapped.term_weights) if isinstance(unwrapped, ElectraPair) else {}
        weights.update(self.term_weights)
        if isinstance(unwrapped, ElectraPair):  # its forward is the fused path, wrapped (DDP) or not
            terms = model(**inputs)
        elif unwrapped is model:
            terms = loss_terms(model, inputs, impl=self.impl)
        else:  # DDP & co.: through the wrapper's forward, so that its gradient hooks run
            terms = LOGITS(model, inputs, reference=unwrapped)
        if not terms:
            raise ValueError(f"the batch has no target ({', '.join(inputs)}); ObjectiveTrainer needs labels")
        window = model.training and self._window_counts is not None
        scale = self.accelerator.num_processes if window else 1
        loss = None
        for name, term in terms.items():
            count = self._window_counts.get(name) if window else None  # type: ignore[union-attr]
            if count is None:
                count = term.num_tokens
            mean = term.loss / count.clamp(min=1).to(term.loss.dtype)  # this micro-batch's share of the mean
            if window:
                done = mean.detach() * scale
                self._logged_terms[name] = self._logged_terms.get(name, 0) + done
            weighted = weights.get(name, 1.0) * mean
            loss = weighted if loss is None else loss + weighted
        loss = loss * scale  # type: ignore[operator]
        return (loss, {"loss": loss.detach()}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Trainer's logs plus ``<term>_loss``: each term's mean over the steps since the last log."""
        if "loss" in logs and self._logged_terms and self._windows_since_log:
            for name, value in self._logged_terms.items():
                if self.accelerator.num_processes > 1:
                    value = self.accelerator.reduce(value.reshape(1), reduction="mean")[0]
                logs[f"{name}_loss"] = round(float(value) / self._windows_since_log, 6)
            self._logged_terms, self._windows_since_log = {}, 0
        super().log(logs, *args, **kwargs)
