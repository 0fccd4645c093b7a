"""A small pre-norm transformer that is an encoder or a decoder depending on the batch.

The attention pattern is data (:func:`lmobjectives.attention_mask_4d`): the
same weights run bidirectionally for MLM/NSP/SOP batches and causally for CLM
batches. Positions are relative (ALiBi by default, or RoPE), read from
``batch.position_ids`` when the objective sets them (CLM with document masking
restarts them at every document). There are no learned absolute positions: in
our trials they kept a 2-layer MLM encoder at the unigram loss for hundreds of
steps, where ALiBi learned at once.

The model returns hidden states after the final norm, not logits. The LM head
is tied to the token embedding and exposed as :attr:`Transformer.output_weight`,
so the loss is ``lm_loss(out.hidden, model.output_weight, batch.labels)`` and
a fused kernel can replace the vocabulary projection without touching the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_choice, check_int, check_positive_int, check_probability
from ..batch import Batch
from .attention import DEFAULT_IMPL, EVERY_KEY, AttentionImpl, AttentionInputs, attend, pattern_attention_inputs

__all__ = ["ModelOutput", "Transformer", "TransformerConfig", "alibi_slopes"]


@dataclass
class TransformerConfig:
    vocab_size: int  # rows of the (tied) embedding / output matrix, tokenizer.vocab.size
    d_model: int = 128  # width of the residual stream
    n_layers: int = 2  # number of transformer blocks
    n_heads: int = 4  # attention heads per block; d_model must be divisible by it
    d_ff: int = 512  # hidden width of the MLP in each block
    dropout: float = 0.0  # dropout on attention weights and residual branches (0 = off)
    max_seq_len: int = 512  # longest sequence forward() accepts
    n_token_types: int = 2  # segment (token-type) embeddings for sentence pairs; 0 = none
    positions: Literal["alibi", "rope"] = "alibi"  # relative position scheme
    n_sentence_classes: int = 0  # classes of the [CLS] sentence head (2 for NSP/SOP); 0 = no head

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            check_positive_int(getattr(self, name), f"TransformerConfig.{name}")
        for name in ("n_token_types", "n_sentence_classes"):
            check_int(getattr(self, name), f"TransformerConfig.{name}", low=0)
        if self.d_model % self.n_heads:
            raise ValueError(f"TransformerConfig: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError(f"TransformerConfig: RoPE needs an even head size, got {self.d_model // self.n_heads}")
        check_choice(self.positions, "TransformerConfig.positions", ("alibi", "rope"))
        check_probability(self.dropout, "TransformerConfig.dropout", high_open=True)


@dataclass
class ModelOutput:
    hidden: torch.Tensor  # (B, T, d) after the final norm; logits = hidden @ output_weight.T
    sentence_logits: torch.Tensor | None  # (B, n_sentence_classes) from the [CLS] pooler, None without a head


# -----------------------------------------------------------------------------
# relative positions


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (Press et al. 2022): a geometric sequence starting at 2^(-8/n).

    For a head count that is not a power of two, the paper's recipe takes the
    slopes of the next lower power of two and interleaves every other slope of
    the next higher one.

    >>> alibi_slopes(4)
    tensor([0.2500, 0.0625, 0.0156, 0.0039])
    """

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        lower = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes)


def rope_cos_sin(
    position_ids: torch.Tensor, head_size: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding angles (Su et al. 2021) for each position, each ``(B, 1, T, hs/2)``."""
    inv_freq = base ** (-torch.arange(0, head_size, 2, device=position_ids.device, dtype=torch.float32) / head_size)
    angles = position_ids[:, None, :, None].float() * inv_freq  # (B, 1, T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs ``(x[..., i], x[..., i + hs/2])`` of ``x`` ``(B, nh, T, hs)`` by the angles."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def self_attention_inputs(
    batch: Batch,
    config: TransformerConfig,
    slopes: torch.Tensor | None,
    part: Literal["self", "decoder"] = "self",
    impl: AttentionImpl = DEFAULT_IMPL,
) -> AttentionInputs:
    """The attention inputs of the self-attention over ``input_ids`` (``part="self"``: the whole
    :class:`Transformer`, or an encoder) or over ``decoder_input_ids`` (``part="decoder"``: causal, positions
    ``0..Td-1``). The pattern is :func:`lmobjectives.attention_mask_4d`'s, never built whole (see
    :mod:`lmobjectives.models.attention`): without padding or other structure, RoPE runs SDPA's own causal mask
    (or none); everything else runs by chunks of query rows, unless ``impl`` says ``"dense"``.
    """
    ids = batch.input_ids if part == "self" else batch.decoder_input_ids
    position_ids = batch.position_ids if part == "self" else None
    if position_ids is None:
        position_ids = torch.arange(ids.shape[1], device=ids.device)[None]  # (1, T), shared by every row
    rope = rope_cos_sin(position_ids, config.d_model // config.n_heads) if config.positions == "rope" else None
    return pattern_attention_inputs(
        batch, part, n_heads=config.n_heads, slopes=slopes, position_ids=position_ids, rope=rope, impl=impl
    )


# -----------------------------------------------------------------------------
# blocks


class SelfAttention(nn.Module):
    """Multi-head attention; with ``memory`` it is cross-attention (queries from ``x``, keys and values
    from ``memory``, the same ``qkv`` weight split in its query and key/value rows)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.proj.is_residual_projection = True  # scaled init, see init_weights

    def forward(self, x: torch.Tensor, attention: AttentionInputs, memory: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        if memory is None:
            q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        else:
            q = F.linear(x, self.qkv.weight[:C], self.qkv.bias[:C])  # (B, T, C)
            k, v = F.linear(memory, self.qkv.weight[C:], self.qkv.bias[C:]).split(C, dim=2)  # (B, S, C) each
        S = k.shape[1]  # keys: T for self-attention, the memory's length for cross-attention
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, S, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, S, hs)
        v = v.view(B, S, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, S, hs)
        if attention.rope is not None:
            q, k = apply_rope(q, *attention.rope), apply_rope(k, *attention.rope)
        y = attend(q, k, v, attention, dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, config.d_ff)
        self.proj = nn.Linear(config.d_ff, config.d_model)
        self.proj.is_residual_projection = True  # scaled init, see init_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

    With ``cross_attention=True`` (a decoder block of :class:`~lmobjectives.models.EncoderDecoder`) a
    cross-attention sub-layer ``x + cross_attn(ln(x), memory)`` sits between the two, as in T5.
    """

    def __init__(self, config: TransformerConfig, cross_attention: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        if cross_attention:
            self.ln_cross = nn.LayerNorm(config.d_model)
            self.cross_attn = SelfAttention(config)
        else:
            self.ln_cross = self.cross_attn = None
        self.ln_2 = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d)
        attention: AttentionInputs,  # the self-attention's pattern and positions
        memory: torch.Tensor | None = None,  # (B, S, d): the encoder's output, for cross-attention
        cross_attention: AttentionInputs = EVERY_KEY,  # which memory keys each query sees
    ) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), attention))
        if self.cross_attn is not None:
            if memory is None:
                raise ValueError("a cross-attention Block needs memory (the encoder's output)")
            x = x + self.drop(self.cross_attn(self.ln_cross(x), cross_attention, memory=memory))
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x  # (B, T, d)


def init_weights(module: nn.Module, n_residual: int) -> None:
    """GPT-2 init: N(0, 0.02), zero biases, residual projections scaled by 1/sqrt(n_residual), the number
    of residual branches that add into the stream (2 per block: attention and MLP)."""
    if isinstance(module, nn.Linear):
        std = 0.02 / math.sqrt(n_residual) if getattr(module, "is_residual_projection", False) else 0.02
        nn.init.normal_(module.weight, mean=0.0, std=std)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


# -----------------------------------------------------------------------------
# the model


class Transformer(nn.Module):
    """Token (+ token-type) embedding, ``n_layers`` pre-norm blocks, final LayerNorm, optional [CLS] head.

    ``forward(batch)`` reads ``input_ids``, the attention pattern (``causal``,
    ``attention_mask``, ``document_ids``, ``prefix_mask``, ``perm_mask``), ``position_ids`` and
    ``token_type_ids`` from a :class:`~lmobjectives.Batch`; it never reads the labels. It refuses an
    encoder-decoder batch (``decoder_input_ids`` set): that is
    :class:`~lmobjectives.models.EncoderDecoder`'s.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.type_emb = nn.Embedding(config.n_token_types, config.d_model) if config.n_token_types else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        if config.n_sentence_classes:  # BERT pooler: tanh(dense(h[CLS])) -> classifier
            self.pooler = nn.Linear(config.d_model, config.d_model)
            self.sentence_head = nn.Linear(config.d_model, config.n_sentence_classes)
        else:
            self.pooler = self.sentence_head = None
        if config.positions == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(config.n_heads), persistent=False)
        self.attention_impl = DEFAULT_IMPL  # how attention runs, not what it computes (tests pick "dense")
        self.apply(partial(init_weights, n_residual=2 * config.n_layers))

    @property
    def output_weight(self) -> torch.Tensor:
        """The LM head's weight ``(V, d)``: the token embedding itself (tied)."""
        return self.tok_emb.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, batch: Batch) -> tuple[torch.Tensor, AttentionInputs]:
        """The input of the first block ``(B, T, d)`` (token and segment embeddings, dropout) and the attention
        inputs; :class:`~lmobjectives.models.mtp.MultiTokenTransformer`'s heads start from it too."""
        if batch.decoder_input_ids is not None:
            raise ValueError(
                f"{type(self).__name__} got an encoder-decoder batch (decoder_input_ids is set) and would ignore its "
                "decoder half; train it with architecture 'encoder_decoder' (lmobjectives.models.EncoderDecoder)"
            )
        T = batch.input_ids.shape[1]
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds TransformerConfig.max_seq_len={self.config.max_seq_len}")
        x = self.tok_emb(batch.input_ids)  # (B, T, d)
        if batch.token_type_ids is not None:
            if self.type_emb is None:
                raise ValueError("batch has token_type_ids but the model was built with n_token_types=0")
            x = x + self.type_emb(batch.token_type_ids)  # (B, T, d)
        slopes = self.alibi_slopes if self.config.positions == "alibi" else None
        return self.drop(x), self_attention_inputs(batch, self.config, slopes, impl=self.attention_impl)

    def forward(self, batch: Batch) -> ModelOutput:
        x, attention = self._embed(batch)  # (B, T, d)
        for block in self.blocks:
            x = block(x, attention)  # (B, T, d)
        hidden = self.ln_f(x)  # (B, T, d)
        sentence_logits = None
        if self.sentence_head is not None:
            pooled = torch.tanh(self.pooler(hidden[:, 0]))  # (B, d), the [CLS] position
            sentence_logits = self.sentence_head(pooled)  # (B, n_sentence_classes)
        return ModelOutput(hidden=hidden, sentence_logits=sentence_logits)
