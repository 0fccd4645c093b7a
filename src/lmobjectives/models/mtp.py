"""The small transformer with multi-token prediction heads: Gloeckle et al.'s parallel heads or DeepSeek-V3's
sequential MTP modules. Trained with the ``mtp`` objective (:mod:`lmobjectives.objectives.mtp`).

``head_design="parallel"`` (Gloeckle et al. 2024, §2, and their released model code): the shared trunk is
the :class:`~lmobjectives.models.Transformer`'s blocks except the last; head 1 (next token) is the last
block, heads 2..N are ``N - 1`` extra blocks of the same shape, each reading the trunk's output; all
heads share the final norm and the unembedding (the tied embedding, :attr:`output_weight`). With
``n_future=1`` the model is exactly the plain :class:`Transformer` (same parameters, same outputs).
The paper's memory-efficient training schedule needs the trunk and the heads separately:
:meth:`MultiTokenTransformer.trunk` and :meth:`MultiTokenTransformer.head`.

``head_design="sequential"`` (DeepSeek-V3 report §2.2, Eqs. 21-23): the full model predicts the next token;
then ``D = N - 1`` MTP modules run in a chain. Module ``k`` combines, at position ``i``, the previous
depth's representation ``h^{k-1}_i`` (``h^0`` is the main model's final hidden state) and the embedding
of the token ``t_{i+k}``, each RMSNorm'd, by a linear projection ``M_k`` of their concatenation
``[RMSNorm(h); RMSNorm(Emb(t_{i+k}))]`` (``2d -> d``, no bias), then one transformer block with the
main model's attention pattern; its output, after the module's own final norm, goes through the shared
output head and predicts ``t_{i+k+1}``. The embedding and the output head are the main model's.
Departures: rows keep their length ``T`` (the report's depth ``k`` runs over ``T - k`` positions; the
last ``k`` here read a filler token and carry no target, and causal attention keeps them from the
others); the module's final norm is a LayerNorm like the main model's ``ln_f`` (DeepSeek-V3 uses
RMSNorm everywhere), one per module as in DeepSeek-V3's released weights (``shared_head.norm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_choice, check_positive_int
from ..batch import Batch
from .transformer import (
    AttentionInputs,
    Block,
    ModelOutput,
    Transformer,
    TransformerConfig,
    init_weights,
)

__all__ = ["MTPModule", "MTPOutput", "MultiTokenTransformer"]


@dataclass
class MTPOutput(ModelOutput):
    heads: (
        torch.Tensor
    )  # (B, T, N, d): head k's hidden state after its final norm, predicting t+1+k; [:, :, 0] is hidden


class MTPModule(nn.Module):
    """One DeepSeek-V3 MTP module: ``block(M [RMSNorm(h); RMSNorm(e)])``, plus its final norm for the output head."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        d = config.d_model
        self.hnorm = nn.RMSNorm(d)  # the previous depth's representation
        self.enorm = nn.RMSNorm(d)  # the embedding of the token k ahead
        self.proj = nn.Linear(2 * d, d, bias=False)  # M_k
        self.block = Block(config)
        self.norm = nn.LayerNorm(d)  # before the shared output head
        nn.init.normal_(self.proj.weight, mean=0.0, std=0.02)
        self.block.apply(partial(init_weights, n_residual=2 * config.n_layers))

    def forward(self, previous: torch.Tensor, embedded: torch.Tensor, attention: AttentionInputs) -> torch.Tensor:
        """``previous`` and ``embedded`` ``(B, T, d)``; returns this depth's representation ``(B, T, d)`` (before
        :attr:`norm`), the next module's ``previous``."""
        x = self.proj(torch.cat([self.hnorm(previous), self.enorm(embedded)], dim=-1))  # (B, T, d)
        return self.block(x, attention)


class MultiTokenTransformer(Transformer):
    """:class:`Transformer` with ``n_future`` prediction heads, ``head_design="parallel"`` or ``"sequential"`` (see the
    module docstring). ``forward(batch)`` returns :class:`MTPOutput`: ``hidden`` ``(B, T, d)`` is the
    next-token head's (what a plain LM loss, or generation, reads) and ``heads`` ``(B, T, N, d)`` stacks
    every head's, aligned with the ``mtp`` objective's labels ``(B, T, N)``.

    >>> from lmobjectives import Batch
    >>> model = MultiTokenTransformer(TransformerConfig(vocab_size=20, d_model=16, n_heads=2, d_ff=32), n_future=3)
    >>> ids = torch.zeros(2, 5, dtype=torch.long)
    >>> out = model(Batch(input_ids=ids, labels=ids, attention_mask=ids == 0, causal=True))
    >>> tuple(out.hidden.shape), tuple(out.heads.shape)
    ((2, 5, 16), (2, 5, 3, 16))
    """

    def __init__(self, config: TransformerConfig, n_future: int = 2, head_design: str = "parallel") -> None:
        super().__init__(config)  # first, so that the shared parameters draw what a Transformer's would
        check_positive_int(n_future, "MultiTokenTransformer: n_future")
        check_choice(head_design, "MultiTokenTransformer: head_design", ("parallel", "sequential"))
        if config.n_sentence_classes:
            raise ValueError(
                f"MultiTokenTransformer has no sentence head: TransformerConfig.n_sentence_classes must be 0, "
                f"got {config.n_sentence_classes}"
            )
        self.n_future = n_future
        self.head_design = head_design
        if head_design == "parallel":  # heads 2..N; head 1 is the last of self.blocks
            self.extra_heads = nn.ModuleList(Block(config) for _ in range(n_future - 1))
            self.extra_heads.apply(partial(init_weights, n_residual=2 * config.n_layers))
        else:  # depths 1..D
            self.mtp_modules = nn.ModuleList(MTPModule(config) for _ in range(n_future - 1))

    # ------------------------------------------------------------------ parallel heads

    def trunk(self, batch: Batch) -> tuple[torch.Tensor, AttentionInputs]:
        """Parallel heads: the shared trunk's output ``(B, T, d)`` (every block but the last) and the attention
        inputs the heads need."""
        if self.head_design != "parallel":
            raise ValueError("MultiTokenTransformer.trunk: only the parallel heads have a separate trunk")
        x, attention = self._embed(batch)
        for block in self.blocks[:-1]:
            x = block(x, attention)  # (B, T, d)
        return x, attention

    def head_block(self, k: int) -> Block:
        """Parallel heads: the block of head ``k`` (0-based; head 0 predicts ``t+1`` and is the last trunk block)."""
        if self.head_design != "parallel" or not 0 <= k < self.n_future:
            raise ValueError(f"head_block: k must lie in [0, {self.n_future}) for parallel heads, got {k!r}")
        return self.blocks[-1] if k == 0 else self.extra_heads[k - 1]

    def head(self, k: int, trunk: torch.Tensor, attention: AttentionInputs) -> torch.Tensor:
        """Parallel heads: head ``k``'s hidden state ``(B, T, d)`` after the shared final norm."""
        return self.ln_f(self.head_block(k)(trunk, attention))

    # ------------------------------------------------------------------ both

    def forward(self, batch: Batch) -> MTPOutput:
        if self.head_design == "parallel":
            trunk, attention = self.trunk(batch)
            heads = torch.stack([self.head(k, trunk, attention) for k in range(self.n_future)], dim=2)  # (B, T, N, d)
            return MTPOutput(hidden=heads[:, :, 0], sentence_logits=None, heads=heads)
        x, attention = self._embed(batch)
        for block in self.blocks:
            x = block(x, attention)  # (B, T, d)
        hidden = self.ln_f(x)  # (B, T, d): h^0
        outputs, previous = [hidden], hidden
        ids = batch.input_ids  # (B, T)
        for k, module in enumerate(self.mtp_modules, start=1):
            ahead = F.pad(ids[:, k:], (0, min(k, ids.shape[1])), value=0)  # (B, T): t_{i+k}; a filler past the end
            previous = module(previous, self.tok_emb(ahead), attention)  # (B, T, d): h^k
            outputs.append(module.norm(previous))
        return MTPOutput(hidden=hidden, sentence_logits=None, heads=torch.stack(outputs, dim=2))  # (B, T, N, d)
