"""An encoder-decoder variant of the small transformer (T5-style), for span corruption and UL2.

The encoder is the :class:`~lmobjectives.models.Transformer`'s stack of :class:`Block`\\ s run over
``input_ids``; each decoder block adds a cross-attention sub-layer (pre-norm, between self-attention
and the MLP) whose keys and values are the encoder's output. Both stacks share one token embedding,
which is also the LM head (:attr:`EncoderDecoder.output_weight`), as in T5. The three attention
patterns are data on the batch (:func:`lmobjectives.attention_mask_4d` with ``part="self"`` for the
encoder, ``"decoder"`` for the decoder's causal self-attention, ``"cross"`` for cross-attention),
so padding on either side never reaches a real position.

The output is the decoder's hidden states after the final norm, aligned with ``batch.labels``
``(B, Td)``, so the project's loss works unchanged:
``lm_loss(out.hidden, model.output_weight, batch.labels)``.

Deviations from T5 (Raffel et al. 2020), to stay comparable with the decoder-only and encoder-only
runs of the same :class:`TransformerConfig`:

- positions are ALiBi or RoPE in both self-attentions (T5: learned, bucketed relative biases);
  like T5, cross-attention has no positional term. The decoder's positions are ``0..Td-1``; the
  encoder's are ``batch.position_ids`` when set.
- LayerNorm with biases, GELU MLP and GPT-2 init, as :class:`Transformer` (T5: RMSNorm, ReLU, no
  biases). Residual projections are scaled by ``1/sqrt(n)`` with ``n`` the residual branches of
  their stack: ``2 * n_layers`` in the encoder, ``3 * n_layers`` in the decoder.
- the tied LM head is the embedding matrix as is; T5 also rescales the decoder output by
  ``d_model ** -0.5`` before it, which with our N(0, 0.02) embedding would only shrink the logits.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn

from ..batch import Batch
from .attention import DEFAULT_IMPL, cross_attention_inputs
from .transformer import Block, ModelOutput, TransformerConfig, alibi_slopes, init_weights, self_attention_inputs

__all__ = ["EncoderDecoder"]


class EncoderDecoder(nn.Module):
    """Shared token embedding, ``n_layers`` encoder blocks and ``n_layers`` decoder blocks, final norms.

    ``forward(batch)`` reads ``input_ids``, ``attention_mask`` (and ``document_ids``, ``prefix_mask``,
    ``position_ids``, ``token_type_ids`` when set) for the encoder, ``decoder_input_ids`` and
    ``decoder_attention_mask`` for the decoder; it never reads the labels. ``n_token_types`` adds
    segment embeddings to the encoder input; ``n_sentence_classes`` must be 0 (there is no [CLS]).

    >>> from lmobjectives import Batch
    >>> model = EncoderDecoder(TransformerConfig(vocab_size=20, d_model=16, n_heads=2, d_ff=32, n_token_types=0))
    >>> batch = Batch(input_ids=torch.zeros(2, 7, dtype=torch.long), labels=torch.zeros(2, 3, dtype=torch.long),
    ...               attention_mask=torch.ones(2, 7, dtype=torch.bool), causal=False,
    ...               decoder_input_ids=torch.zeros(2, 3, dtype=torch.long))
    >>> out = model(batch)
    >>> tuple(out.hidden.shape), out.sentence_logits, tuple(model.output_weight.shape)
    ((2, 3, 16), None, (20, 16))
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if config.n_sentence_classes:
            raise ValueError(
                f"EncoderDecoder has no sentence head: TransformerConfig.n_sentence_classes must be 0, "
                f"got {config.n_sentence_classes}"
            )
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)  # encoder input, decoder input, LM head
        self.type_emb = nn.Embedding(config.n_token_types, config.d_model) if config.n_token_types else None
        self.drop = nn.Dropout(config.dropout)
        self.encoder = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_enc = nn.LayerNorm(config.d_model)
        self.decoder = nn.ModuleList(Block(config, cross_attention=True) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        if config.positions == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_heads), persistent=False)
        self.attention_impl = DEFAULT_IMPL  # how attention runs, not what it computes (tests pick "dense")
        init_weights(self.tok_emb, n_residual=1)
        if self.type_emb is not None:
            init_weights(self.type_emb, n_residual=1)
        self.encoder.apply(partial(init_weights, n_residual=2 * config.n_layers))
        self.decoder.apply(partial(init_weights, n_residual=3 * config.n_layers))

    @property
    def output_weight(self) -> torch.Tensor:
        """The LM head's weight ``(V, d)``: the token embedding shared by encoder and decoder (tied)."""
        return self.tok_emb.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _slopes(self) -> torch.Tensor | None:
        return self.alibi_slopes if self.config.positions == "alibi" else None

    def encode(self, batch: Batch) -> torch.Tensor:
        """The encoder's output ``(B, T, d)`` after its final norm: the memory every decoder block attends to."""
        ids = batch.input_ids
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"encoder length {ids.shape[1]} exceeds TransformerConfig.max_seq_len={self.config.max_seq_len}"
            )
        x = self.tok_emb(ids)  # (B, T, d)
        if batch.token_type_ids is not None:
            if self.type_emb is None:
                raise ValueError("batch has token_type_ids but the model was built with n_token_types=0")
            x = x + self.type_emb(batch.token_type_ids)  # (B, T, d)
        x = self.drop(x)
        attention = self_attention_inputs(batch, self.config, self._slopes(), "self", self.attention_impl)
        for block in self.encoder:
            x = block(x, attention)  # (B, T, d)
        return self.ln_enc(x)  # (B, T, d)

    def decode(self, batch: Batch, memory: torch.Tensor) -> torch.Tensor:
        """The decoder's hidden states ``(B, Td, d)`` after the final norm, given the encoder's output."""
        _check_encoder_decoder(batch)
        ids = batch.decoder_input_ids  # (B, Td)
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(
                f"decoder length {ids.shape[1]} exceeds TransformerConfig.max_seq_len={self.config.max_seq_len}"
            )
        x = self.drop(self.tok_emb(ids))  # (B, Td, d)
        attention = self_attention_inputs(batch, self.config, self._slopes(), "decoder", self.attention_impl)
        cross = cross_attention_inputs(batch, self.attention_impl)  # no positions (as T5): every real encoder key
        for block in self.decoder:
            x = block(x, attention, memory=memory, cross_attention=cross)  # (B, Td, d)
        return self.ln_f(x)  # (B, Td, d)

    def forward(self, batch: Batch) -> ModelOutput:
        _check_encoder_decoder(batch)
        memory = self.encode(batch)  # (B, T, d)
        return ModelOutput(hidden=self.decode(batch, memory), sentence_logits=None)  # hidden: (B, Td, d)


def _check_encoder_decoder(batch: Batch) -> None:
    if batch.decoder_input_ids is None:
        raise ValueError(
            "EncoderDecoder needs an encoder-decoder batch, but batch.decoder_input_ids is None (a decoder-only or "
            "encoder batch); train such an objective with architecture 'transformer'"
        )
    B, T = batch.input_ids.shape
    Bd, Td = batch.decoder_input_ids.shape
    if Bd != B:
        raise ValueError(f"batch.decoder_input_ids has {Bd} rows but batch.input_ids has {B}")
    mask = batch.decoder_attention_mask
    if mask is not None and tuple(mask.shape) != (B, Td):
        raise ValueError(
            f"batch.decoder_attention_mask has shape {tuple(mask.shape)}, expected (B, Td) = {(B, Td)} "
            f"like decoder_input_ids"
        )
