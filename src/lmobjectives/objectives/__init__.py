"""Training objectives: seeded, pure tensor transforms from token ids to a :class:`~lmobjectives.Batch`.

One module per objective; each is a frozen dataclass whose fields are its options and whose docstring holds
a worked example. How each is trained (its data layout, model and loss) is its recipe in
:mod:`lmobjectives.recipes`, whose ``get_objective(name, vocab=..., **options)`` builds one by name.
"""

from .clm import CausalLM
from .electra import ELECTRA
from .fim import FillInTheMiddle, fim_reassemble
from .mlm import MaskedLM
from .mtp import MultiTokenPrediction
from .nsp import NextSentencePrediction, SentenceOrderPrediction, SentencePairs
from .plm import PermutationLM
from .prefix_lm import PrefixLM, document_lengths, prefix_lm_batch
from .sft import SupervisedFineTuning
from .span_corruption import SpanCorruption, random_spans_noise_mask, span_corruption_lengths
from .spanbert import SpanBERT, span_boundary_targets
from .ul2 import UL2

__all__ = [
    "ELECTRA",
    "UL2",
    "CausalLM",
    "FillInTheMiddle",
    "MaskedLM",
    "MultiTokenPrediction",
    "NextSentencePrediction",
    "PermutationLM",
    "PrefixLM",
    "SentenceOrderPrediction",
    "SentencePairs",
    "SpanBERT",
    "SpanCorruption",
    "SupervisedFineTuning",
    "document_lengths",
    "fim_reassemble",
    "prefix_lm_batch",
    "random_spans_noise_mask",
    "span_boundary_targets",
    "span_corruption_lengths",
]
