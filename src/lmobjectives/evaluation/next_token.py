"""Next-token loss and bits per byte from the left context only, for a model trained with any objective.

Data: the held-out text as plain blocks of ``seq_len`` tokens (:func:`~.run.heldout_blocks`, the same for
every run of the same corpus and tokenizer). Targets: every position ``t >= start`` of a block
(``start = seq_len // 2`` by default, so every target has at least that much context and every kind of model
is scored on the same targets), except special tokens (the EOS between documents); position ``t`` is
predicted from the tokens ``< t`` of its block and nothing else. How each kind of model reads
(:data:`~.run.Reads`):

- ``causal``: one forward pass per block, causal attention; the output at ``t - 1`` predicts ``t``.
- ``bidirectional`` (masked LMs): the left context ``x_0 .. x_{t-1}`` followed by one ``[MASK]`` at
  position ``t``, and nothing after it (no token to the right exists, so none can be attended to); the
  output at the ``[MASK]`` predicts ``x_t``. One row per target, batched over blocks: rows for the same
  ``t`` have the same width ``t + 1``, no padding.
- ``encoder_decoder``: the encoder reads the left context ``x_0 .. x_{s-1}`` (``s = start``) and the decoder
  produces ``x_s, x_{s+1}, ...`` causally, so ``x_t`` is predicted from ``x_{<t}`` only. The encoder input is
  the format the run was trained on: with UL2's paradigm tokens, its S-denoiser (``[S2S] x_<s EOS``, the
  decoder predicts the continuation); else T5's span corruption with one final noise span
  (``x_<s <extra_id_0> EOS``, the decoder predicts ``<extra_id_0>`` (not scored), then the span).

Bits per byte: the summed loss in bits over the targets divided by their UTF-8 bytes
(:func:`~.run.token_byte_lengths`), which makes runs with different tokenizers comparable.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_int
from ..constants import IGNORE_INDEX
from ..losses import lm_token_losses
from .result import TaskResult, encoder_decoder_batch, finite, plain_batch
from .run import Run, heldout_blocks, token_byte_lengths

__all__ = ["next_token", "next_token_losses"]


def next_token_losses(
    run: Run, blocks: torch.Tensor, start: int, *, batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-target loss (nats) and argmax hits ``(N, T)`` for the blocks ``(N, T)``, at the positions ``t >= start``
    (0 and False elsewhere), each from the left context only, as the module docstring describes."""
    N, T = blocks.shape
    check_int(start, f"start (for blocks of {T} tokens)", low=1, high=T - 1)
    loss = torch.zeros(N, T)
    correct = torch.zeros(N, T, dtype=torch.bool)
    weight = run.model.output_weight
    for first in range(0, N, batch_size):
        x = blocks[first : first + batch_size]  # (b, T)
        rows = slice(first, first + x.shape[0])
        if run.reads == "causal":
            labels = torch.full_like(x, IGNORE_INDEX)
            labels[:, start - 1 : -1] = x[:, start:]  # the output at t - 1 predicts x_t
            hidden = run.forward_hidden(plain_batch(x, None, causal=True))  # (b, T, d)
            out = _token_losses(hidden, weight, labels.to(run.device))
            loss[rows, start:], correct[rows, start:] = out[0][:, start - 1 : -1], out[1][:, start - 1 : -1]
        elif run.reads == "bidirectional":
            mask_id = _mask_id(run)
            for t in range(start, T):
                ids = x[:, : t + 1].clone()  # (b, t + 1)
                ids[:, t] = mask_id
                hidden = run.forward_hidden(plain_batch(ids, None, causal=False))[:, t]  # (b, d)
                out = _token_losses(hidden, weight, x[:, t].to(run.device))
                loss[rows, t], correct[rows, t] = out
        else:
            batch, offset = _encoder_decoder_rows(run, x, start)
            hidden = run.forward_hidden(batch)  # (b, Td, d)
            out = _token_losses(hidden, weight, batch.labels.to(run.device))
            loss[rows, start:], correct[rows, start:] = out[0][:, offset:], out[1][:, offset:]
    return loss, correct


def _token_losses(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = lm_token_losses(hidden, weight, labels)
    return out.loss.float().cpu(), out.correct.cpu()


def _mask_id(run: Run) -> int:
    if run.vocab.mask_id is None:
        raise ValueError(f"{run.out_dir}: the tokenizer has no [MASK] token, which a bidirectional model needs here")
    return run.vocab.mask_id


def _encoder_decoder_rows(run: Run, x: torch.Tensor, start: int) -> tuple:
    """The encoder-decoder batch for left context ``x[:, :start]`` and targets ``x[:, start:]``; returns
    ``(batch, offset)`` with ``offset`` the decoder position of the first target."""
    vocab = run.vocab
    b = x.shape[0]
    eos = torch.full((b, 1), vocab.eos_id)
    pad = torch.full((b, 1), vocab.pad_id)
    if vocab.s2s_id is not None:  # UL2's S-denoiser: [S2S] prefix EOS -> the continuation
        encoder = torch.cat([torch.full((b, 1), vocab.s2s_id), x[:, :start], eos], 1)
        decoder = torch.cat([pad, x[:, start:-1]], 1)
        labels = x[:, start:].clone()
        return encoder_decoder_batch(encoder, decoder, labels), 0
    sentinel = torch.full((b, 1), vocab.sentinel_ids[0])  # T5: one noise span at the end
    encoder = torch.cat([x[:, :start], sentinel, eos], 1)
    decoder = torch.cat([pad, sentinel, x[:, start:-1]], 1)
    labels = torch.cat([torch.full((b, 1), IGNORE_INDEX), x[:, start:]], 1)
    return encoder_decoder_batch(encoder, decoder, labels), 1


@torch.no_grad()
def next_token(run: Run, *, start: int | None = None, max_blocks: int = 32, batch_size: int = 16) -> TaskResult:
    """Next-token loss, accuracy, perplexity and bits per byte on held-out blocks, from the left context only
    (see the module docstring for each kind of model). ``start``: first target position (default
    ``seq_len // 2``); ``max_blocks``: held-out blocks scored (each gives ``seq_len - start`` targets)."""
    length = run.config.seq_len
    start = length // 2 if start is None else start
    blocks = heldout_blocks(run, length, max_blocks)  # (N, T)
    loss, correct = next_token_losses(run, blocks, start, batch_size=batch_size)
    nbytes = token_byte_lengths(run.tokenizer)[blocks]  # (N, T)
    scored = torch.zeros_like(correct)
    scored[:, start:] = True
    scored &= ~run.vocab.special_mask()[blocks]  # the EOS between documents is not text
    n = int(scored.sum())
    total = float(loss[scored].double().sum())
    size = int(nbytes[scored].sum())
    procedure = {
        "causal": "causal attention over the block",
        "bidirectional": "left context + [MASK] at the target, nothing to its right",
        "encoder_decoder": "left context in the encoder, the rest decoded causally",
    }[run.reads]
    return TaskResult(
        "next_token",
        metrics={
            "bits_per_byte": finite(total / math.log(2) / max(size, 1)),
            "loss": finite(total / max(n, 1)),
            "perplexity": finite(math.exp(min(total / max(n, 1), 700))),
            "accuracy": float(correct[scored].float().mean()) if n else 0.0,
        },
        info={
            "procedure": procedure,
            "blocks": blocks.shape[0],
            "block_length": length,
            "first_target": start,
            "targets": n,
            "bytes": size,
        },
    )
