"""Pseudo-log-likelihood and pseudo-perplexity of a masked model (Salazar et al. 2020, "Masked Language Model
Scoring").

``PLL(W) = sum_t log P(w_t | W \\ w_t)``: each token masked in turn, all the others visible. Here ``W`` is a
held-out block (:func:`~.run.heldout_blocks`), special tokens (the EOS between documents) neither masked nor
scored; ``PPPL = exp(-sum PLL / N)`` over the ``N`` scored tokens of all blocks (the paper's corpus-level
pseudo-perplexity). Batched as in the paper: a block of ``T`` tokens becomes ``T`` copies, copy ``t`` with
position ``t`` masked, all copies scored in one forward pass (per ``rows`` copies).

Encoder-decoder runs: position ``t`` becomes the sentinel ``<extra_id_0>`` in the encoder input (after UL2's
``[NLU]``), and the decoder, having produced ``<extra_id_0>``, scores ``w_t``: T5's own format for a one-token
span. Causal runs: not applicable (their exact log-likelihood is :mod:`.next_token`'s).
"""

from __future__ import annotations

import math

import torch

from ..constants import IGNORE_INDEX
from ..losses import lm_token_losses
from .result import TaskResult, encoder_decoder_batch, finite, plain_batch
from .run import NotApplicable, Run, heldout_blocks, token_byte_lengths

__all__ = ["pll", "pseudo_log_likelihoods"]


def pseudo_log_likelihoods(run: Run, blocks: torch.Tensor, *, rows: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """``log P(w_t | W \\ w_t)`` ``(N, T)`` (0 at special tokens) and whether ``w_t`` is the argmax there."""
    if run.reads == "causal":
        raise NotApplicable(
            "pseudo-log-likelihood masks one token and reads both sides; a causal model cannot "
            "(its exact log-likelihood is next_token's loss)"
        )
    N, T = blocks.shape
    scored = ~run.vocab.special_mask()[blocks]  # (N, T)
    which, where = scored.nonzero(as_tuple=True)  # one copy per scored token
    logp = torch.zeros(N, T)
    correct = torch.zeros(N, T, dtype=torch.bool)
    weight = run.model.output_weight
    for first in range(0, which.numel(), rows):
        b, t = which[first : first + rows], where[first : first + rows]  # (r,), (r,)
        x = blocks[b]  # (r, T)
        r = b.numel()
        if run.reads == "bidirectional":
            ids = x.clone()
            ids[torch.arange(r), t] = run.vocab.mask_id
            hidden = run.forward_hidden(plain_batch(ids, None, causal=False))[torch.arange(r), t]  # (r, d)
            labels = x[torch.arange(r), t]
        else:
            batch = _sentinel_rows(run, x, t)
            hidden = run.forward_hidden(batch)[:, 1]  # (r, d): the decoder position after <extra_id_0>
            labels = batch.labels[:, 1]
        with torch.no_grad():
            out = lm_token_losses(hidden, weight, labels.to(run.device))
        logp[b, t] = -out.loss.float().cpu()
        correct[b, t] = out.correct.cpu()
    return logp, correct


def _sentinel_rows(run: Run, x: torch.Tensor, t: torch.Tensor):
    """Encoder: ``x`` with ``x[t]`` replaced by ``<extra_id_0>``, then EOS (UL2: ``[NLU]`` first); decoder:
    ``[pad, <extra_id_0>]``, labels ``[ignored, x[t]]``."""
    vocab = run.vocab
    r = x.shape[0]
    sentinel = vocab.sentinel_ids[0]
    ids = x.clone()
    ids[torch.arange(r), t] = sentinel
    parts = [ids, torch.full((r, 1), vocab.eos_id)]
    if vocab.nlu_id is not None:
        parts.insert(0, torch.full((r, 1), vocab.nlu_id))
    decoder = torch.tensor([[vocab.pad_id, sentinel]]).repeat(r, 1)
    labels = torch.stack([torch.full((r,), IGNORE_INDEX), x[torch.arange(r), t]], 1)
    return encoder_decoder_batch(torch.cat(parts, 1), decoder, labels)


@torch.no_grad()
def pll(run: Run, *, max_blocks: int = 8, rows: int = 128) -> TaskResult:
    """Pseudo-perplexity over ``max_blocks`` held-out blocks (see the module docstring)."""
    if run.reads == "causal":
        pseudo_log_likelihoods(run, torch.zeros(1, 1, dtype=torch.long))  # raises NotApplicable
    length = run.config.seq_len
    if run.reads == "encoder_decoder":
        length = min(length, run.model.config.max_seq_len - 1 - (run.vocab.nlu_id is not None))
    blocks = heldout_blocks(run, length, max_blocks)
    logp, correct = pseudo_log_likelihoods(run, blocks, rows=rows)
    scored = ~run.vocab.special_mask()[blocks]
    n = int(scored.sum())
    total = float(logp[scored].double().sum())  # the corpus PLL, <= 0
    size = int(token_byte_lengths(run.tokenizer)[blocks][scored].sum())
    return TaskResult(
        "pll",
        metrics={
            "pseudo_perplexity": finite(math.exp(min(-total / max(n, 1), 700))),
            "pll_per_token": finite(total / max(n, 1)),
            "pseudo_bits_per_byte": finite(-total / math.log(2) / max(size, 1)),
            "accuracy": float(correct[scored].float().mean()) if n else 0.0,
        },
        info={
            "blocks": blocks.shape[0],
            "block_length": length,
            "tokens": n,
            "bytes": size,
            "forward_rows": n,
            "reference": "Salazar et al. 2020",
        },
    )
