"""Plain PyTorch linear cross-entropy: the test oracle and the readable statement of the math.

It materialises the full ``(N, V)`` logits, so it is only meant for small problems, for tests
(call it with float64 tensors to get the oracle) and as documentation. Autograd differentiates
it, so it doubles as the gradient oracle.

Per token ``i`` with target ``t_i`` (see :func:`lmobjectives.ops.linear_cross_entropy` for the
full statement)::

    logits = input @ weight.T + bias                     # (N, V)
    z      = softcap * tanh(logits / softcap)            # or logits when softcap is None
    lse_i  = log(sum_v exp(z_iv))
    loss_i = (1 - eps) * (lse_i - z_i,t_i) + eps * (lse_i - mean_v z_iv) + lam * lse_i**2

and ``loss_i = 0`` where ``t_i == ignore_index``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lmobjectives.ops._common import LossOptions

__all__ = ["reference_linear_cross_entropy"]


def reference_linear_cross_entropy(
    input: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    options: LossOptions,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(loss, lse, argmax)`` computed the naive way.

    Args:
        input: ``(N, d)`` hidden states.
        weight: ``(V, d)`` classifier weight.
        target: ``(N,)`` int64 class indices, ``ignore_index`` for positions without loss.
        bias: ``(V,)`` or None.
        options: ``ignore_index``, ``reduction``, ``label_smoothing``, ``z_loss``, ``softcap``.

    Returns:
        loss: scalar for ``"mean"``/``"sum"``, ``(N,)`` for ``"none"``; float32, or float64
            for float64 inputs. Differentiable through autograd.
        lse: ``(N,)`` log-sum-exp of the (capped) logits, detached.
        argmax: ``(N,)`` int64 index of the largest logit, detached.

    The logits are computed in the input dtype (like ``F.linear``) and the loss math runs in
    float32 (float64 for float64 inputs), which is what "the naive same-dtype computation" in
    the tests means.
    """
    eps, lam, softcap = options.label_smoothing, options.z_loss, options.softcap
    acc_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    logits = input @ weight.T  # (N, V), input dtype
    if bias is not None:
        logits = logits + bias
    z = logits.to(acc_dtype)  # (N, V)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    vocab_size = z.shape[-1]

    valid = target != options.ignore_index  # (N,)
    safe_target = torch.where(valid, target, torch.zeros_like(target))  # (N,)
    lse = torch.logsumexp(z, dim=-1)  # (N,)
    z_target = z.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)  # (N,)
    token_loss = (1.0 - eps) * (lse - z_target)
    if eps > 0.0:
        token_loss = token_loss + eps * (lse - z.sum(-1) / vocab_size)
    if lam > 0.0:
        token_loss = token_loss + lam * lse.square()
    token_loss = torch.where(valid, token_loss, torch.zeros_like(token_loss))  # (N,)

    if options.reduction == "none":
        loss = token_loss
    elif options.reduction == "sum":
        loss = token_loss.sum()
    else:  # "mean" over non-ignored tokens; 0 when every token is ignored
        loss = token_loss.sum() / valid.sum().clamp_min(1).to(acc_dtype)
    return loss, lse.detach(), z.detach().argmax(-1)
