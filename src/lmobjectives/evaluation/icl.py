"""In-context learning probe: does a model look a key up in its own context?

Each probe sequence (:class:`~lmobjectives.data.synthetic.ICLSequences`, the ``synthetic:icl`` corpus)
pairs keys with values afresh, ``"t7 f1 t7 t7 f1 ..."``, and repeats keys. A repeated key's value can only
be known by finding the key's earlier occurrence and copying what followed it (an induction head); a first
occurrence's value is a uniform guess (chance ``1 / values``). :func:`probe_icl` asks the model for the
value of **every** pair from the **left context only**, and reports accuracy (argmax over the whole
vocabulary equals the value) and the log-probability of the value, by occurrence index of the key (1 =
first time, 2 = second, ...) and by position of the pair in the sequence.

How each kind of model is asked (``kind``), always without the pair's value or anything after it:

- ``"causal"`` (clm, fim): one causal forward pass over the whole sequence; the output at the key's
  position is the prediction (causal attention never reads the right), exactly as in training.
- ``"prefix"`` (prefix_lm): for pair ``p``, the tokens up to and including its key are the bidirectional
  prefix (``Batch.prefix_mask``) and the last prefix token's output predicts the first suffix token, the
  prefix-LM convention (seqio). One forward pass per pair position, batched over sequences.
- ``"masked"`` (mlm, spanbert): for pair ``p``, the tokens up to its key, then ``[MASK]`` in the value's
  place, bidirectional attention; the output at ``[MASK]`` is the prediction (the issue's procedure for a
  bidirectional model: append ``[MASK]`` after the left context). ``context="full"`` instead keeps the
  whole sequence with only that value masked, so a later occurrence of the key may give the value away:
  that measures fill-in, not in-context learning from the left, and is reported as such.

Sequences begin at a model input's first position, as in training on ``synthetic:icl`` with ``--seq-len
3 * pairs`` (each block is then exactly one sequence and its EOS). Keys, values and the space must each
be one token of the run's tokenizer (true of the byte tokenizer); :func:`probe_icl` checks it.

:data:`ICL_PRESETS` holds a CPU-sized and a GPU-sized training setup; ``python -m lmobjectives.evaluation.icl
--preset cpu`` trains clm, prefix_lm and mlm with it and prints the probe's table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._checks import check_choice, check_positive_int
from ..batch import Batch
from ..data.synthetic import (
    KEY_SYMBOLS,
    VALUE_SYMBOLS,
    ICLSequences,
    icl_sequences,
    parse_spec,
)
from .run import load_run, sample_batch

__all__ = [
    "ICL_PRESETS",
    "KINDS",
    "kind_of_batch",
    "ICLPreset",
    "ICLResult",
    "format_table",
    "main",
    "plot",
    "probe_icl",
    "probe_run",
    "train_command",
]

KINDS = ("causal", "prefix", "masked")
MIN_QUERIES_SHOWN = 20  # plot: an occurrence index asked fewer times than this is left out (too noisy)
"""How a model is asked for a value (see the module docstring)."""


@dataclass
class ICLResult:
    """What :func:`probe_icl` measured: one entry per (sequence, pair); summaries as methods."""

    kind: str  # how the model was asked: causal, prefix or masked
    context: str  # "left" (in-context learning) or "full" (masked only: the right context visible too)
    correct: torch.Tensor  # (N, P) bool: the argmax over the vocabulary is the pair's value
    log_prob: torch.Tensor  # (N, P) float64: log-probability (nats) of the pair's value
    occurrence: torch.Tensor  # (N, P) long: 1 = the key's first appearance in its sequence, 2 = second, ...
    values: int  # size of the value alphabet: chance accuracy on a first occurrence is 1 / values
    baseline: (
        torch.Tensor
    )  # (N, P) float64: expected accuracy of guessing the most frequent earlier value (no key lookup)

    def _mean(self, x: torch.Tensor, where: torch.Tensor) -> float | None:
        return float(x[where].double().mean()) if bool(where.any()) else None

    def accuracy_by_occurrence(self) -> list[float]:
        """Accuracy of the queries whose key appears for the ``o``-th time, at index ``o - 1``."""
        return [self._mean(self.correct, self.occurrence == o) for o in range(1, int(self.occurrence.max()) + 1)]  # type: ignore[misc]

    def accuracy_by_pair(self, *, repeated: bool = True) -> list[float | None]:
        """Accuracy at each pair position ``p`` over the repeated keys (``repeated=False``: first occurrences);
        ``None`` where there is no such query."""
        select = self.occurrence >= 2 if repeated else self.occurrence == 1  # (N, P)
        return [self._mean(self.correct[:, p], select[:, p]) for p in range(self.correct.shape[1])]

    def baseline_by_pair(self) -> list[float | None]:
        """:func:`frequency_baseline`'s accuracy at each pair position over the repeated keys (``None`` where none)."""
        select = self.occurrence >= 2  # (N, P)
        return [self._mean(self.baseline[:, p], select[:, p]) for p in range(self.baseline.shape[1])]

    def baseline_by_occurrence(self) -> list[float]:
        """:func:`frequency_baseline`'s accuracy by occurrence index: what needs no key lookup at all."""
        return [self._mean(self.baseline, self.occurrence == o) for o in range(1, int(self.occurrence.max()) + 1)]  # type: ignore[misc]

    def summary(self) -> dict[str, Any]:
        """The headline numbers (JSON-ready): accuracy and loss on repeated and first keys, by occurrence and position."""
        repeated, first = self.occurrence >= 2, self.occurrence == 1
        counts = torch.bincount(self.occurrence.flatten())[1:].tolist()
        return {
            "kind": self.kind,
            "context": self.context,
            "sequences": self.correct.shape[0],
            "pairs": self.correct.shape[1],
            "repeated_accuracy": self._mean(self.correct, repeated),
            "first_accuracy": self._mean(self.correct, first),
            "chance": 1.0 / self.values,
            "repeated_loss": None if not bool(repeated.any()) else -float(self.log_prob[repeated].mean()),
            "first_loss": -float(self.log_prob[first].mean()),
            "first_loss_floor": math.log(self.values),
            "repeated_baseline": self._mean(self.baseline, repeated),
            "accuracy_by_occurrence": self.accuracy_by_occurrence(),
            "baseline_by_occurrence": self.baseline_by_occurrence(),
            "queries_by_occurrence": counts,
            "repeated_accuracy_by_pair": self.accuracy_by_pair(),
            "repeated_baseline_by_pair": self.baseline_by_pair(),
        }


def frequency_baseline(sequences: ICLSequences, values: int) -> torch.Tensor:
    """``(N, P)`` expected accuracy of a guess that ignores the key: the most frequent value among the
    earlier pairs of the sequence (ties split evenly; no earlier pair: chance ``1 / values``).

    A key seen ``o - 1`` times has left its value ``o - 1`` times in the context, so this guess improves
    with the occurrence index without any key -> value lookup; a model above it at occurrence 2 (one earlier
    sighting of the key) uses the key. Example: values ``7 1 7 7 1`` give ``0.1`` (nothing
    before), ``0`` (7 is the guess), ``0.5`` (7 and 1 tie), ``1`` (7 leads), ``0`` (7 leads, the value is 1).

    >>> seqs = ICLSequences(keys=torch.tensor([[19, 5, 19, 19, 5]]), values=torch.tensor([[7, 1, 7, 7, 1]]))
    >>> frequency_baseline(seqs, values=10).tolist()
    [[0.1, 0.0, 0.5, 1.0, 0.0]]
    """
    v = sequences.values  # (N, P)
    n, P = v.shape
    onehot = torch.zeros(n, P, values, dtype=torch.long).scatter_(2, v[..., None], 1)  # (N, P, values)
    before = onehot.cumsum(1) - onehot  # (N, P, values): counts of each value in the earlier pairs
    top = before.max(-1, keepdim=True).values  # (N, P, 1)
    modes = (before == top).sum(-1).double()  # (N, P) number of tied most frequent values
    hit = (before.gather(-1, v[..., None]) == top).squeeze(-1)  # (N, P) the true value is one of them
    return torch.where(top.squeeze(-1) > 0, hit.double() / modes, torch.full((n, P), 1.0 / values, dtype=torch.float64))


def _single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        raise ValueError(
            f"probe_icl: {text!r} is {len(ids)} tokens of this tokenizer; the probe needs one token "
            "per key, value and space (use the byte tokenizer, --tokenizer byte)"
        )
    return ids[0]


def _token_ids(sequences: ICLSequences, tokenizer: Any) -> torch.Tensor:
    """``(N, 3P - 1)`` token ids of the sequences, checked against the tokenizer on the whole text."""
    keys, values = sequences.keys, sequences.values  # (N, P)
    n, P = keys.shape
    key_ids = torch.tensor([_single_token(tokenizer, c) for c in KEY_SYMBOLS])  # (26,)
    value_ids = torch.tensor([_single_token(tokenizer, c) for c in VALUE_SYMBOLS])  # (36,)
    ids = torch.full((n, 3 * P), _single_token(tokenizer, " "), dtype=torch.long)  # (N, 3P)
    ids[:, 0::3] = key_ids[keys]
    ids[:, 1::3] = value_ids[values]
    ids = ids[:, : 3 * P - 1]  # (N, 3P - 1), no space after the last value
    for i, text in enumerate(sequences.texts()[:8]):
        if tokenizer.encode(text) != ids[i].tolist():
            raise ValueError(
                "probe_icl: the tokenizer does not split the sequences into one token per key, value "
                "and space (merges across them); use the byte tokenizer"
            )
    return ids


def _outputs(model: torch.nn.Module, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``(R, V)`` of the model's output at ``positions`` ``(R,)`` of each row."""
    hidden = model(batch).hidden  # (R, T, d)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    logits = hidden[rows, positions] @ model.output_weight.T  # (R, V)
    return torch.log_softmax(logits.double(), -1)


@torch.no_grad()
def probe_icl(
    model: torch.nn.Module,
    tokenizer: Any,
    sequences: ICLSequences,
    *,
    kind: str,
    context: str = "left",
    values: int | None = None,
    batch_size: int = 256,
) -> ICLResult:
    """Ask ``model`` for the value of every pair of ``sequences`` (see the module docstring for ``kind``).

    ``model`` is any of the package's models for a :class:`~lmobjectives.Batch` (``model(batch).hidden``
    ``(B, T, d)``, ``model.output_weight`` ``(V, d)``), e.g. ``lmobjectives.training.load_model(out)``.
    ``values`` is the size of the value alphabet the sequences draw from (chance = 1 / values; default:
    the largest value seen + 1). Forward passes are batched over ``batch_size`` sequences: one per batch
    for ``causal``, one per pair position and batch otherwise.
    """
    check_choice(kind, "probe_icl: kind", KINDS)
    check_choice(context, "probe_icl: context", ("left", "full"))
    if context == "full" and kind != "masked":
        raise ValueError(f"probe_icl: context='full' applies to kind='masked' only (a {kind} model reads the left)")
    if not isinstance(sequences, ICLSequences):
        raise TypeError(
            f"probe_icl: sequences must be ICLSequences (data.synthetic.icl_sequences), got {type(sequences).__name__}"
        )
    check_positive_int(batch_size, "probe_icl: batch_size")
    n, P = sequences.keys.shape
    values = int(sequences.values.max()) + 1 if values is None else values
    if kind == "masked" and tokenizer.vocab.mask_id is None:
        raise ValueError("probe_icl: kind='masked' needs a tokenizer with a [MASK] token")
    device = next(model.parameters()).device
    ids = _token_ids(sequences, tokenizer).to(device)  # (N, L)
    value_ids = ids[:, 1::3]  # (N, P) the answers
    was_training = model.training
    model.eval()
    log_prob = torch.empty(n, P, dtype=torch.float64)
    correct = torch.empty(n, P, dtype=torch.bool)
    try:
        for lo in range(0, n, batch_size):
            rows = ids[lo : lo + batch_size]  # (b, L)
            answers = value_ids[lo : lo + batch_size]  # (b, P)
            b = rows.shape[0]
            if kind == "causal":
                batch = Batch(
                    input_ids=rows,
                    labels=torch.zeros_like(rows),
                    causal=True,
                    attention_mask=torch.ones_like(rows, dtype=torch.bool),
                )
                hidden = model(batch).hidden  # (b, L, d)
                logits = hidden[:, 0::3] @ model.output_weight.T  # (b, P, V): outputs at the keys
                lp = torch.log_softmax(logits.double(), -1)  # (b, P, V)
                log_prob[lo : lo + b] = lp.gather(-1, answers[..., None]).squeeze(-1).cpu()
                correct[lo : lo + b] = (lp.argmax(-1) == answers).cpu()
                continue
            for p in range(P):  # a small constant: one forward pass per pair position
                key_at = 3 * p
                if kind == "prefix":
                    x = rows[:, : key_at + 1]  # (b, 3p + 1): the left context, up to the key
                    real = torch.ones_like(x, dtype=torch.bool)
                    batch = Batch(
                        input_ids=x, labels=torch.zeros_like(x), attention_mask=real, causal=True, prefix_mask=real
                    )
                    at = key_at
                else:
                    x = rows.clone() if context == "full" else rows[:, : key_at + 2].clone()  # (b, T)
                    x[:, key_at + 1] = tokenizer.vocab.mask_id
                    batch = Batch(
                        input_ids=x,
                        labels=torch.zeros_like(x),
                        causal=False,
                        attention_mask=torch.ones_like(x, dtype=torch.bool),
                    )
                    at = key_at + 1
                lp = _outputs(model, batch, torch.full((b,), at, device=device))  # (b, V)
                log_prob[lo : lo + b, p] = lp.gather(-1, answers[:, p : p + 1]).squeeze(-1).cpu()
                correct[lo : lo + b, p] = (lp.argmax(-1) == answers[:, p]).cpu()
    finally:
        model.train(was_training)
    return ICLResult(
        kind=kind,
        context=context,
        correct=correct,
        log_prob=log_prob,
        occurrence=sequences.occurrence,
        values=values,
        baseline=frequency_baseline(sequences, values),
    )


def kind_of_batch(batch: Batch) -> str:
    """How a model trained on ``batch`` is asked (one of :data:`KINDS`): ``"masked"`` when it attends both ways,
    ``"prefix"`` when a causal row has a bidirectional prefix, else ``"causal"``; an encoder-decoder batch is a
    ``ValueError`` (the probe asks one stack).

    >>> t = torch.zeros(1, 3, dtype=torch.long)
    >>> kind_of_batch(Batch(input_ids=t, labels=t, attention_mask=t.bool(), causal=True))
    'causal'
    """
    if batch.decoder_input_ids is not None:
        raise ValueError("the ICL probe asks one stack; an encoder-decoder run has no kind (pass kind= to force one)")
    if not batch.causal:
        return "masked"
    return "prefix" if batch.prefix_mask is not None else "causal"


def probe_run(
    out_dir: str | Path,
    *,
    n: int = 512,
    seed: int = 1,
    kind: str | None = None,
    context: str = "left",
    data: str | None = None,
    device: str = "cpu",
) -> ICLResult:
    """:func:`probe_icl` on the model of a run folder, with ``n`` fresh sequences.

    The sequences follow the run's ``synthetic:icl`` data spec (``pairs``, ``keys``, ``values``; or ``data``
    if given) with ``seed`` (default 1; training's default data seed is 0, so these are sequences it never
    saw). ``kind`` defaults to how the run's model reads its training batches (:func:`kind_of_batch`).
    """
    run = load_run(out_dir, device=device)
    if kind is None:
        kind = kind_of_batch(sample_batch(run))
    config = run.config
    spec = data if data is not None else config.data
    name, params = parse_spec(spec) if isinstance(spec, str) and spec.startswith("synthetic:") else (None, {})
    if name != "icl":
        raise ValueError(
            f"probe_run: the run trained on {spec!r}; pass data='synthetic:icl?...' to say which sequences to probe"
        )
    if seed == params["seed"] and data is None:
        raise ValueError(f"probe_run: seed={seed} is the training data's seed; probe with another seed")
    sequences = icl_sequences(n, pairs=params["pairs"], keys=params["keys"], values=params["values"], seed=seed)
    model, tokenizer = run.model, run.tokenizer
    return probe_icl(model, tokenizer, sequences, kind=kind, context=context, values=params["values"])


# --------------------------------------------------------------------------- presets and the comparison


@dataclass(frozen=True)
class ICLPreset:
    """A training setup for the probe: data, model size and budget (one sequence per block)."""

    data: str  # --data: the synthetic:icl spec
    steps: int  # optimizer steps
    batch_size: int  # sequences per step
    d_model: int  # residual width
    n_layers: int  # transformer blocks
    n_heads: int  # attention heads
    d_ff: int  # MLP width
    lr: float = 2e-3  # peak learning rate
    probe_sequences: int = 512  # fresh sequences the probe asks about
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-objective options, e.g. {"mlm": {...}}

    @property
    def seq_len(self) -> int:
        """``3 * pairs``: a sequence (3 * pairs - 1 tokens) and its EOS fill one block exactly."""
        return 3 * parse_spec(self.data)[1]["pairs"]


ICL_PRESETS: dict[str, ICLPreset] = {
    # 0.43 M parameters; 4000 steps of 32 x 48 tokens: about 11 minutes per objective with one thread on a
    # busy 2-core machine (three objectives in parallel). Measured (one seed, 512 fresh sequences): clm finds
    # keys (accuracy at a key's 2nd occurrence 0.55 vs 0.23 for the frequency guess, onset between steps 2000
    # and 3000); prefix_lm and mlm stay at the frequency guess. At d_model=64 (0.12 M) none does in 3000 steps.
    "cpu": ICLPreset(
        data="synthetic:icl?docs=8192&pairs=16&keys=6&values=10",
        steps=4000,
        batch_size=32,
        d_model=128,
        n_layers=2,
        n_heads=4,
        d_ff=512,
    ),
    # the same task, longer sequences, more keys, a 25 M-parameter model (not yet run: no GPU in this session)
    "gpu": ICLPreset(
        data="synthetic:icl?docs=65536&pairs=64&keys=16&values=26",
        steps=4000,
        batch_size=128,
        d_model=512,
        n_layers=8,
        n_heads=8,
        d_ff=2048,
        lr=1e-3,
        probe_sequences=2048,
    ),
}
"""Training setups: ``cpu`` shows the comparison on a laptop, ``gpu`` is the same at a larger size."""


def train_command(preset: str, objective: str, out: str | Path) -> list[str]:
    """The ``lmobj train`` arguments that train ``objective`` with ``preset``."""
    p = ICL_PRESETS[preset]
    args = [
        "--objective",
        objective,
        "--data",
        p.data,
        "--seq-len",
        str(p.seq_len),
        "--steps",
        str(p.steps),
        "--batch-size",
        str(p.batch_size),
        "--d-model",
        str(p.d_model),
        "--layers",
        str(p.n_layers),
        "--heads",
        str(p.n_heads),
        "--d-ff",
        str(p.d_ff),
        "--lr",
        str(p.lr),
        "--out",
        str(out),
    ]
    return args


def format_table(results: dict[str, ICLResult]) -> str:
    """A text table: per run, accuracy on first vs repeated keys, and by occurrence index; the last rows are
    :func:`frequency_baseline` and chance (the runs must have been probed on the same sequences)."""
    max_occ = max(len(r.accuracy_by_occurrence()) for r in results.values())
    shown = min(max_occ, 6)
    head = f"{'run':<12} {'kind':<7} {'first':>6} {'repeat':>6} {'loss1':>6} {'lossR':>6}  " + " ".join(
        f"{'occ' + str(o):>5}" for o in range(1, shown + 1)
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        s = r.summary()
        occ = s["accuracy_by_occurrence"]
        cells = " ".join(
            f"{occ[o]:>5.2f}" if o < len(occ) and occ[o] is not None else f"{'-':>5}" for o in range(shown)
        )
        lines.append(
            f"{name:<12} {r.kind:<7} {s['first_accuracy']:>6.3f} {s['repeated_accuracy']:>6.3f} "
            f"{s['first_loss']:>6.3f} {s['repeated_loss']:>6.3f}  {cells}"
        )
    base = next(iter(results.values()))
    b = base.summary()
    cells = " ".join(f"{x:>5.2f}" for x in b["baseline_by_occurrence"][:shown])
    lines.append(f"{'freq-guess':<12} {'-':<7} {'-':>6} {b['repeated_baseline']:>6.3f} {'-':>6} {'-':>6}  {cells}")
    lines.append(
        f"chance on a first occurrence: {1 / next(iter(results.values())).values:.3f} "
        f"(loss floor {math.log(next(iter(results.values())).values):.3f}); floor on a repeat: 1.000 (loss 0)"
    )
    return "\n".join(lines)


def plot(summaries: dict[str, dict[str, Any]], path: str | Path) -> None:
    """Write ``path`` (PNG): accuracy by occurrence index of the key, one line per run of ``summaries``
    (:meth:`ICLResult.summary` of runs probed on the same sequences) with the frequency guess and chance,
    and, beside it, accuracy on repeated keys by pair position. Needs matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    by_occurrence, by_pair = fig.subplots(1, 2)
    first = next(iter(summaries.values()))
    shown = sum(1 for q in first["queries_by_occurrence"] if q >= MIN_QUERIES_SHOWN)  # occurrences with enough queries
    for name, s in summaries.items():
        occ = s["accuracy_by_occurrence"][:shown]
        by_occurrence.plot(range(1, len(occ) + 1), occ, marker="o", label=f"{name} ({s['kind']}, {s['context']})")
        pairs = s["repeated_accuracy_by_pair"]
        by_pair.plot(
            [p + 1 for p, a in enumerate(pairs) if a is not None],
            [a for a in pairs if a is not None],
            marker=".",
            label=name,
        )
    base = first["baseline_by_occurrence"][:shown]
    by_occurrence.plot(range(1, len(base) + 1), base, color="grey", linestyle="--", label="frequency guess (no lookup)")
    base = first["repeated_baseline_by_pair"]
    by_pair.plot(
        [p + 1 for p, a in enumerate(base) if a is not None],
        [a for a in base if a is not None],
        color="grey",
        linestyle="--",
        label="frequency guess (no lookup)",
    )
    for ax in (by_occurrence, by_pair):
        ax.axhline(first["chance"], color="grey", linestyle=":", label="chance")
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy of the value (argmax)")
    by_occurrence.set_xlabel("occurrence of the key in its sequence (1 = first time)")
    by_occurrence.set_title(
        f"value of a key, from the left context only (occurrences with ≥ {MIN_QUERIES_SHOWN} queries)", fontsize=9
    )
    by_pair.set_xlabel("pair position in the sequence")
    by_pair.set_title("repeated keys, by position")
    by_occurrence.legend(fontsize=7)
    by_pair.legend(fontsize=7)
    fig.savefig(path, dpi=110)


def _positive_int(text: str) -> int:
    """An argparse ``type=`` for an integer >= 1, with the words of ``lmobj``'s (``--steps 0`` is refused, not "the preset's")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m lmobjectives.evaluation.icl``: train each objective with a preset (unless trained), probe, print the table."""
    # bad flags are one line naming the flag and its value, exit 2 (argparse's); flags are typed in full, as lmobj's
    parser = argparse.ArgumentParser(
        prog="python -m lmobjectives.evaluation.icl", description=main.__doc__, allow_abbrev=False
    )
    parser.add_argument("--preset", choices=sorted(ICL_PRESETS), default="cpu")
    parser.add_argument("--objectives", default="clm,prefix_lm,mlm", help="comma-separated objectives to compare")
    parser.add_argument("--out", default="runs/icl", help="folder for the runs (OUT/OBJECTIVE) and icl.json")
    parser.add_argument("--probe-only", action="store_true", help="probe existing runs, train nothing")
    parser.add_argument("--steps", type=_positive_int, default=None, help="override the preset's steps")
    parser.add_argument(
        "--results", default=None, help="folder for icl.json, icl.txt (the table) and icl.png (default: OUT)"
    )
    parser.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed (initialisation, data order); the corpus and the probe's sequences stay the same",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error instead of one line")
    args = parser.parse_args(argv)
    from ..recipes import OBJECTIVES
    from ..training import TrainConfig, train
    from ..training.checkpoint import checkpoint_steps
    from ..training.run_folder import CHECKPOINT_DIR

    objectives = args.objectives.split(",")
    for objective in objectives:
        if objective not in OBJECTIVES:
            parser.error(
                f"argument --objectives: unknown objective {objective!r} in {args.objectives!r}; "
                f"choose from: {', '.join(n for n, r in OBJECTIVES.items() if not r.untrainable)} (comma-separated)"
            )
        if why := OBJECTIVES[objective].untrainable:
            parser.error(f"argument --objectives: {objective} cannot be trained (data only), nor probed: {why}")
    out = Path(args.out)
    trained = {objective: bool(checkpoint_steps(out / objective / CHECKPOINT_DIR)) for objective in objectives}
    if args.probe_only and not all(trained.values()):
        missing = ", ".join(str(out / o) for o, done in trained.items() if not done)
        parser.error(
            f"argument --probe-only: no trained run (no checkpoint) in {missing}; run without --probe-only "
            f"to train it, or give the --out ({args.out!r}) or --objectives that hold the runs"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = ICL_PRESETS[args.preset]
    results: dict[str, ICLResult] = {}
    try:
        for objective in objectives:
            run = out / objective
            if not trained[objective]:
                train(
                    TrainConfig(
                        objective=objective,
                        data=preset.data,
                        seq_len=preset.seq_len,
                        steps=args.steps if args.steps is not None else preset.steps,
                        batch_size=preset.batch_size,
                        d_model=preset.d_model,
                        n_layers=preset.n_layers,
                        n_heads=preset.n_heads,
                        d_ff=preset.d_ff,
                        lr=preset.lr,
                        options=preset.options.get(objective, {}),
                        seed=args.seed,
                        out=str(run),
                        progress=False,
                    )
                )
            results[objective] = probe_run(run, n=preset.probe_sequences)
            if results[objective].kind == "masked":  # also asked with both sides of the value visible
                results[objective + ":full"] = probe_run(run, n=preset.probe_sequences, context="full")
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # input the run or the probe refuses
        if args.debug:
            raise
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    table = format_table(results)
    print(table)
    where = Path(args.results) if args.results else out
    where.mkdir(parents=True, exist_ok=True)
    summaries = {k: r.summary() for k, r in results.items()}
    (where / "icl.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (where / "icl.txt").write_text(table + "\n")
    written = ["icl.json", "icl.txt"]
    try:
        plot(summaries, where / "icl.png")
        written.append("icl.png")
    except ImportError as e:
        print(f"no plot: {e}", file=sys.stderr)
    print(f"wrote {', '.join(str(where / w) for w in written)}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
