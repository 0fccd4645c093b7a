"""lmobjectives: language-model training objectives, faithful to their papers, vectorised and seeded."""

from .constants import IGNORE_INDEX
from .objectives import OBJECTIVES, Batch, attention_mask_4d, get_objective
from .vocab import Vocab

__all__ = ["IGNORE_INDEX", "OBJECTIVES", "Batch", "Vocab", "attention_mask_4d", "get_objective"]

__version__ = "0.1.0"
