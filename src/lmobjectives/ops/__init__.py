"""Fused operators. ``import lmobjectives.ops`` works without Triton (an optional extra).

Public API:

* :func:`linear_cross_entropy` -- loss of ``input @ weight.T`` without the ``(N, V)`` logits.
* :func:`linear_cross_entropy_with_stats` -- the same plus per-token log-sum-exp and accuracy.
* :func:`linear_cross_entropy_vocab_parallel` -- the same with the weight sharded by
  vocabulary rows over a ``torch.distributed`` process group.
"""

from lmobjectives.ops.linear_cross_entropy import (
    Impl,
    LinearCrossEntropyOutput,
    linear_cross_entropy,
    linear_cross_entropy_with_stats,
)
from lmobjectives.ops.tensor_parallel import linear_cross_entropy_vocab_parallel

__all__ = [
    "Impl",
    "LinearCrossEntropyOutput",
    "linear_cross_entropy",
    "linear_cross_entropy_vocab_parallel",
    "linear_cross_entropy_with_stats",
]
