"""Training: `TrainConfig` + `train(config) -> TrainResult`, the API behind ``lmobj train``."""

from .checkpoint import load_model
from .config import TrainConfig
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_model", "train"]
