"""Models that consume a :class:`~lmobjectives.Batch` and return hidden states (the loss is separate)."""

from .transformer import ModelOutput, Transformer, TransformerConfig

__all__ = ["ModelOutput", "Transformer", "TransformerConfig"]
