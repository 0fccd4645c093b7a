"""The comparisons ``lmobj compare --preset NAME`` runs: named sets of objectives with the evaluations that
answer a question, and their training sizes. Objective specs are those of
:func:`lmobjectives.compare.parse_objective` (``"mlm:unit=word"``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """A named comparison: the objectives, the evaluations that answer its question, and training sizes."""

    name: str  # what --preset takes
    question: str  # the question the comparison answers, one sentence (the report's opening line)
    objectives: tuple[str, ...]  # objective specs (see parse_objective)
    tasks: tuple[str, ...] | None = None  # evaluation tasks; None: every task that applies to a run
    task_options: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # keyword arguments per task (CompareConfig's)
    settings: dict[str, Any] = field(default_factory=dict)  # CompareConfig fields the preset sets (steps, seeds, ...)
    expect: str = ""  # what the original papers found, for the report to hold the numbers against


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "demo",
            "Bidirectional or unidirectional: what does each objective teach a model to do?",
            ("clm", "mlm"),
            tasks=("next_token", "fill_in", "pll"),
            task_options={"fill_in": {"candidates": "all", "max_positions": 32}},
            settings={"steps": 400, "seeds": 2},
            expect=(
                "A causal LM predicts the next token from the left context; a masked LM fills a gap from both sides in "
                "one forward pass. The MLM should lose clearly at next-token prediction (why BERT-style models are "
                "awkward for generation). At filling in, a CLM can still use the right context, but only by scoring "
                "every candidate token with the whole sequence (here all 256 byte values: 256 forward passes per gap); "
                "the MLM reads it in one pass (fill_in masks 15 % of the tokens at once, its training condition; pll "
                "masks one token at a time, the same condition as the CLM's scoring)."
            ),
        ),
        Preset(
            "clm-vs-mlm",
            "CLM vs MLM on every evaluation that applies to both.",
            ("clm", "mlm"),
            task_options={"fill_in": {"candidates": "all", "max_positions": 64}},
            settings={"steps": 1500, "seeds": 3},
            expect="As demo, with longer training, three seeds and every evaluation (generation, probe, PLL).",
        ),
        Preset(
            "nsp-vs-sop",
            "Does sentence-order prediction teach what next-sentence prediction does not (ALBERT, Table 4)?",
            ("nsp", "sop"),
            tasks=("sentence_pairs", "fill_in"),
            settings={"steps": 1500, "seeds": 3},
            expect=(
                "ALBERT: a model trained with NSP scores near chance on SOP (52 %), while one trained with SOP also "
                "solves NSP well (78.9 %): NSP is mostly solved by topic, SOP needs coherence."
            ),
        ),
        Preset(
            "masking",
            "Which masking strategy: unit (token, whole word, span), rate (15 % vs 40 %), 80/10/10 vs 100 % [MASK]?",
            (
                "mlm",
                "mlm:unit=word",
                "mlm:unit=span",
                "mlm:probability=0.4",
                "mlm:mask_fraction=1.0,random_fraction=0.0",
            ),
            settings={"steps": 1500, "seeds": 2},
            expect=(
                "Wettig et al. 2022: 40 % masking matches or beats 15 % for large models; SpanBERT: span masking helps "
                "span tasks; BERT: 80/10/10 narrows the gap between pre-training ([MASK]) and fine-tuning inputs."
            ),
        ),
        Preset(
            "denoisers",
            "T5 span corruption, prefix LM and UL2's mixture of denoisers on the same budget.",
            ("span_corruption", "prefix_lm", "ul2"),
            settings={"steps": 1500, "seeds": 2},
            expect="UL2: the mixture matches span corruption on fill-in tasks and the prefix LM on generation.",
        ),
        Preset(
            "electra-vs-mlm",
            "ELECTRA's replaced-token detection vs MLM at the same number of input tokens.",
            ("mlm", "electra"),
            settings={"steps": 1500, "seeds": 2},
            expect=(
                "ELECTRA: learning from every token makes the discriminator more sample-efficient than MLM at equal "
                "compute (its generator adds about a quarter of the compute per token)."
            ),
        ),
    ]
}
