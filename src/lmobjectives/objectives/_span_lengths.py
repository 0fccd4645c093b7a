"""Length laws of masked-LM spans: SpanBERT's truncated geometric and ALBERT's 1/n n-gram law.

Both turn uniforms into lengths by the inverse CDF, so a caller draws the uniforms itself (one
``torch.rand`` for all candidates) and the lengths are a pure function of them.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ngram_cdf", "ngram_lengths", "truncated_geometric"]


def truncated_geometric(u: torch.Tensor, p: float, n: int | torch.Tensor) -> torch.Tensor:
    """Inverse CDF of Geometric(p) on ``{1, ..., n}`` (renormalised, not clipped): uniforms -> long.

    ``P(L = l) = p (1-p)^(l-1) / (1 - (1-p)^n)``. With p = 0.2, n = 10 the mean is 3.80.

    >>> truncated_geometric(torch.tensor([0.0, 0.5, 0.99]), 0.2, 10).tolist()
    [1, 3, 10]
    """
    if p >= 1.0:
        return torch.ones_like(u, dtype=torch.long)
    q = 1.0 - p
    n_t = torch.as_tensor(n, dtype=u.dtype, device=u.device)
    tail = 1.0 - torch.pow(torch.as_tensor(q, dtype=u.dtype, device=u.device), n_t)  # P(L <= n) before renormalising
    length = torch.ceil(torch.log1p(-u * tail) / math.log(q))  # same shape as u
    return torch.minimum(length.clamp(min=1), n_t.clamp(min=1)).long()


def ngram_cdf(max_ngram: int, device: torch.device) -> torch.Tensor:
    """Cumulative ALBERT n-gram law ``P(n) = (1/n) / sum_{k <= max_ngram} (1/k)`` on ``1..max_ngram``.

    Returns (max_ngram,) float32 on ``device``.

    >>> [round(11 * c, 4) for c in ngram_cdf(3, torch.device("cpu")).tolist()]  # P(n) = 6/11, 3/11, 2/11
    [6.0, 9.0, 11.0]
    """
    p = 1.0 / torch.arange(1, max_ngram + 1, dtype=torch.float64)  # (max_ngram,)
    return (p / p.sum()).cumsum(0).to(device=device, dtype=torch.float32)


def ngram_lengths(u: torch.Tensor, cdf: torch.Tensor) -> torch.Tensor:
    """N-gram lengths in ``1..len(cdf)`` from uniforms ``u`` (any shape) by the inverse of ``cdf`` (:func:`ngram_cdf`).

    >>> ngram_lengths(torch.tensor([0.0, 0.6, 0.9]), ngram_cdf(3, torch.device("cpu"))).tolist()
    [1, 2, 3]
    """
    m = cdf.numel()
    return torch.searchsorted(cdf, u.contiguous(), right=True).clamp(max=m - 1) + 1  # same shape as u
