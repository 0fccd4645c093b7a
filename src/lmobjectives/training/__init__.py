"""Training: `TrainConfig` + `train(config) -> TrainResult`, the API behind ``lmobj train``; the run folder it
writes (:mod:`.run_folder`) and the model it leaves there (:func:`load_model`)."""

from .config import TrainConfig, resolve_device
from .run_folder import RunConfig, build_model, is_run, load_model, read_run_config, resume_config
from .trainer import TrainResult, train

__all__ = [
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "is_run",
    "load_model",
    "read_run_config",
    "resolve_device",
    "resume_config",
    "train",
]
