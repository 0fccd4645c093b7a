"""Models used to train and compare objectives. :data:`MODELS` maps a :class:`~lmobjectives.recipes.ModelSpec`
architecture name to the model class; each takes a :class:`TransformerConfig`."""

from .electra import ElectraModel
from .encoder_decoder import EncoderDecoder
from .mtp import MTPOutput, MultiTokenTransformer
from .sbo import TransformerWithSBO
from .transformer import ModelOutput, Transformer, TransformerConfig

MODELS: dict[str, type] = {
    "transformer": Transformer,  # one stack; encoder or decoder as the batch's attention pattern says
    "encoder_decoder": EncoderDecoder,  # T5-style: encoder, decoder with cross-attention, shared embedding
    "transformer_sbo": TransformerWithSBO,  # Transformer + SpanBERT's span boundary head (SBO)
    "generator_discriminator": ElectraModel,  # ELECTRA: a narrower MLM generator and a replaced-token discriminator sharing the embedding
    "multi_token": MultiTokenTransformer,  # Transformer + multi-token heads: parallel (Gloeckle et al.) or sequential (DeepSeek-V3)
}

__all__ = [
    "MODELS",
    "ElectraModel",
    "EncoderDecoder",
    "MTPOutput",
    "ModelOutput",
    "MultiTokenTransformer",
    "Transformer",
    "TransformerConfig",
    "TransformerWithSBO",
]
