# placeholder until the NSP/SOP implementation lands (being written now)
from dataclasses import dataclass
from ..vocab import Vocab


@dataclass(frozen=True)
class NextSentencePrediction:
    vocab: Vocab


@dataclass(frozen=True)
class SentenceOrderPrediction:
    vocab: Vocab
