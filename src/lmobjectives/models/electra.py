"""ELECTRA's two networks (Clark et al. 2020): a small masked-LM generator and a replaced-token discriminator.

Both are the package's pre-norm transformer (:mod:`.transformer`), run bidirectionally (the batch says
so). They share the token embedding, as ELECTRA's released code does (``untied_generator_embeddings =
False``: one ``electra/embeddings`` table read by both models):

* the **discriminator** is a :class:`~.transformer.Transformer` of the run's size; it owns the token
  (and token-type) embedding. Its replaced-token head is ELECTRA's ``discriminator_predictions``:
  ``dense(d, d) -> GELU -> dense(d, 1)``, one logit per token (> 0: "replaced").
* the **generator** has the same depth, width ``round(d_model * generator_size)`` (ELECTRA's
  ``generator_hidden_size = 0.25``), an MLP ``d_ff`` scaled alike (ELECTRA: ``4 * hidden`` in both) and
  the discriminator's head size (ELECTRA: 64 everywhere, ``num_attention_heads = hidden // 64``). It reads
  the shared embedding through its own ``embeddings_project`` (a dense layer ``d -> d_gen``, ELECTRA's
  ``embeddings_project`` for an embedding narrower or wider than the model), and predicts through
  ELECTRA's ``get_token_logits``: ``dense(d_gen, d) -> GELU -> LayerNorm``, then logits
  ``h @ E.T + output_bias`` with the shared embedding ``E``.

The shared embedding is one parameter (``discriminator.tok_emb``): the generator never registers it,
so ``state_dict`` holds it once and the generator's MLM loss and the discriminator's loss both update it.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_probability
from ..batch import Batch
from .attention import DEFAULT_IMPL
from .transformer import (
    Block,
    ModelOutput,
    Transformer,
    TransformerConfig,
    alibi_slopes,
    init_weights,
    self_attention_inputs,
)

__all__ = ["ElectraGenerator", "ElectraModel", "generator_config"]


def generator_config(config: TransformerConfig, generator_size: float) -> TransformerConfig:
    """The generator's :class:`TransformerConfig` for a discriminator of ``config`` (ELECTRA's ``get_generator_config``).

    Width ``round(d_model * generator_size)``, the same depth, ``d_ff`` scaled by the same ratio, the
    discriminator's head size (heads: the largest count ``<= width // head_size`` that divides the width,
    with an even head size under RoPE; at least 1), no token-type table or sentence head of its own.

    >>> c = generator_config(TransformerConfig(vocab_size=10, d_model=128, n_heads=4, d_ff=512), 0.25)
    >>> (c.d_model, c.n_layers, c.n_heads, c.d_ff)
    (32, 2, 1, 128)
    """
    check_probability(generator_size, "generator_size (generator width / discriminator width)", low_open=True)
    width = round(config.d_model * generator_size)
    if width < 1:
        raise ValueError(
            f"generator_size={generator_size!r} gives a generator width of round({config.d_model} * "
            f"{generator_size!r}) = {width}; use a larger generator_size or d_model"
        )
    head_size = config.d_model // config.n_heads
    n_heads = max(1, width // head_size)
    while n_heads > 1 and (width % n_heads or (config.positions == "rope" and (width // n_heads) % 2)):
        n_heads -= 1  # a few steps at most: head counts are small
    if config.positions == "rope" and width % 2:
        raise ValueError(
            f"generator_size={generator_size!r} gives an odd generator width {width}, which RoPE cannot "
            "rotate (it needs an even head size); choose a generator_size giving an even width"
        )
    d_ff = max(1, round(config.d_ff * width / config.d_model))
    return replace(config, d_model=width, n_heads=n_heads, d_ff=d_ff, n_token_types=0, n_sentence_classes=0)


class ElectraGenerator(nn.Module):
    """The generator's stack and MLM head; it reads embeddings ``(B, T, embedding_size)`` it does not own."""

    def __init__(self, config: TransformerConfig, embedding_size: int) -> None:
        super().__init__()
        self.config = config
        width = config.d_model
        self.embeddings_project = nn.Linear(embedding_size, width) if embedding_size != width else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(width)
        self.head_dense = nn.Linear(width, embedding_size)  # ELECTRA get_token_logits: dense -> GELU -> LayerNorm
        self.head_norm = nn.LayerNorm(embedding_size)
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))  # ELECTRA's output_bias, (V,)
        if config.positions == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_heads), persistent=False)
        self.attention_impl = DEFAULT_IMPL  # how attention runs, not what it computes (tests pick "dense")
        self.apply(partial(init_weights, n_residual=2 * config.n_layers))

    def forward(self, batch: Batch, embeddings: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(B, T, d_gen)`` after the final norm, from the shared ``embeddings`` of ``batch.input_ids``."""
        T = batch.input_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds TransformerConfig.max_seq_len={self.config.max_seq_len}")
        x = embeddings if self.embeddings_project is None else self.embeddings_project(embeddings)  # (B, T, d_gen)
        x = self.drop(x)
        slopes = self.alibi_slopes if self.config.positions == "alibi" else None
        attention = self_attention_inputs(batch, self.config, slopes, impl=self.attention_impl)
        for block in self.blocks:
            x = block(x, attention)  # (B, T, d_gen)
        return self.ln_f(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(..., d_gen) -> (..., embedding_size)``: what multiplies the shared embedding into logits."""
        return self.head_norm(F.gelu(self.head_dense(hidden), approximate="tanh"))


class ElectraModel(nn.Module):
    """ELECTRA's generator and discriminator with one token embedding (see the module docstring).

    ``forward(batch)`` is the discriminator's :class:`ModelOutput` (the network ELECTRA keeps for
    fine-tuning); :meth:`replaced_logits` is its replaced-token head; :meth:`generator_hidden` and
    ``generator.head`` give the generator's predictions, with :attr:`output_weight` and
    ``generator.output_bias`` as its output layer. The loss is
    :func:`lmobjectives.recipes.step_losses.electra_loss`.
    """

    def __init__(self, config: TransformerConfig, generator_size: float = 0.25) -> None:
        super().__init__()
        gen_config = generator_config(config, generator_size)  # checks generator_size first
        self.config = config
        self.generator_size = generator_size
        self.discriminator = Transformer(config)
        self.generator = ElectraGenerator(gen_config, embedding_size=config.d_model)
        self.discriminator_dense = nn.Linear(config.d_model, config.d_model)  # ELECTRA discriminator_predictions
        self.discriminator_out = nn.Linear(config.d_model, 1)
        init_weights(self.discriminator_dense, 1)
        init_weights(self.discriminator_out, 1)

    @property
    def output_weight(self) -> torch.Tensor:
        """The shared token embedding ``(V, d)``: the generator's output matrix (and the discriminator's input)."""
        return self.discriminator.tok_emb.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, batch: Batch) -> torch.Tensor:
        """The shared embedding of ``batch.input_ids`` (plus token types, if any): ``(B, T, d)``."""
        x = self.discriminator.tok_emb(batch.input_ids)  # (B, T, d)
        if batch.token_type_ids is not None:
            if self.discriminator.type_emb is None:
                raise ValueError("batch has token_type_ids but the model was built with n_token_types=0")
            x = x + self.discriminator.type_emb(batch.token_type_ids)
        return x

    def generator_hidden(self, batch: Batch) -> torch.Tensor:
        """The generator's hidden states ``(B, T, d_gen)`` on ``batch`` (its masked input)."""
        if batch.decoder_input_ids is not None:
            raise ValueError(
                "ElectraModel got an encoder-decoder batch (decoder_input_ids is set); ELECTRA is one stack"
            )
        return self.generator(batch, self.embed(batch))

    def forward(self, batch: Batch) -> ModelOutput:
        """The discriminator on ``batch`` (its corrupted input): hidden ``(B, T, d)`` after the final norm."""
        return self.discriminator(batch)

    def replaced_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The replaced-token head: ``(..., d) -> (...)`` logits, > 0 meaning "replaced"."""
        return self.discriminator_out(F.gelu(self.discriminator_dense(hidden), approximate="tanh")).squeeze(-1)
