"""SpanBERT's span boundary objective (SBO) head, and the transformer that carries it.

Joshi et al. (2020), section 3.2: each token ``x_i`` of a masked span ``(x_s, ..., x_e)`` is
predicted from the encoder outputs at the two boundary tokens ``x_{s-1}``, ``x_{e+1}`` and a
relative position embedding ``p_{i-s+1}``::

    h0 = [x_{s-1}; x_{e+1}; p_{i-s+1}]
    h1 = LayerNorm(GeLU(W1 h0))
    y  = LayerNorm(GeLU(W2 h1))

``y`` is scored against the (tied) token embedding, plus the head's own output bias, as in
SpanBERT's ``BertPairTargetPredictionHead``. The targets (which token, which boundaries, which
offset) come from :func:`lmobjectives.objectives.spanbert.span_boundary_targets`.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_positive_int
from .transformer import Transformer, TransformerConfig, init_weights

__all__ = ["SpanBoundaryHead", "TransformerWithSBO"]


class SpanBoundaryHead(nn.Module):
    """Two-layer feed-forward with GeLU and LayerNorm over ``[left; right; position]`` -> ``(M, d_model)``."""

    def __init__(self, d_model: int, vocab_size: int, max_pair_targets: int = 15, position_size: int | None = None):
        super().__init__()
        for name, value in (("d_model", d_model), ("vocab_size", vocab_size), ("max_pair_targets", max_pair_targets)):
            check_positive_int(value, f"SpanBoundaryHead: {name}")
        check_positive_int(position_size, "SpanBoundaryHead: position_size", allow_none=True)
        if position_size is None:
            position_size = d_model
        self.max_pair_targets = max_pair_targets
        self.position = nn.Embedding(max_pair_targets, position_size)  # p_1 .. p_max (offset 0 .. max-1)
        self.fc1 = nn.Linear(2 * d_model + position_size, d_model)
        self.ln1 = nn.LayerNorm(d_model)
        self.fc2 = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.bias = nn.Parameter(torch.zeros(vocab_size))  # output bias over the tied embedding (SpanBERT's)

    def forward(
        self,
        hidden: torch.Tensor,  # (B, T, d) encoder output
        rows: torch.Tensor,  # (M,) long, row of each target
        left: torch.Tensor,  # (M,) long, position of the left boundary token (s - 1)
        right: torch.Tensor,  # (M,) long, position of the right boundary token (e + 1)
        offset: torch.Tensor,  # (M,) long, i - s in 0 .. max_pair_targets - 1
    ) -> torch.Tensor:
        B, T, _ = hidden.shape
        if offset.numel():
            lo, hi = int(offset.min()), int(offset.max())
            if lo < 0 or hi >= self.max_pair_targets:
                raise ValueError(
                    f"SpanBoundaryHead: offset must lie in [0, max_pair_targets={self.max_pair_targets}), got {lo}..{hi}"
                )
            for name, pos in (("left", left), ("right", right)):
                if int(pos.min()) < 0 or int(pos.max()) >= T:
                    raise ValueError(
                        f"SpanBoundaryHead: {name} positions must lie in [0, {T}), got {pos.min()}..{pos.max()}"
                    )
        h0 = torch.cat([hidden[rows, left], hidden[rows, right], self.position(offset)], dim=-1)  # (M, 2d + p)
        h1 = self.ln1(F.gelu(self.fc1(h0)))  # (M, d)
        return self.ln2(F.gelu(self.fc2(h1)))  # (M, d)


class TransformerWithSBO(Transformer):
    """:class:`Transformer` plus a :class:`SpanBoundaryHead` (``self.sbo``) for SpanBERT.

    ``forward`` is the transformer's (hidden states, no SBO work); the loss calls ``self.sbo`` on
    the hidden states with the batch's span boundary targets.
    """

    def __init__(self, config: TransformerConfig, max_pair_targets: int = 15, position_size: int | None = None):
        super().__init__(config)
        self.sbo = SpanBoundaryHead(config.d_model, config.vocab_size, max_pair_targets, position_size)
        self.sbo.apply(partial(init_weights, n_residual=2 * config.n_layers))
