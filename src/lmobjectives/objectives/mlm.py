# placeholder until the MLM implementation lands (being written now)
from dataclasses import dataclass
from ..vocab import Vocab


@dataclass(frozen=True)
class MaskedLM:
    vocab: Vocab
