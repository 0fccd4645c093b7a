"""Constants shared by every module. Each is defined here and only here."""

IGNORE_INDEX: int = -100
"""Label value meaning "no loss at this position" (the PyTorch / HF convention)."""

DEFAULT_SEED: int = 0
"""Seed used by the CLI and the trainer when none is given."""
