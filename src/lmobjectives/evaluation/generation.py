"""Continuations of held-out prompts, greedy and sampled, with simple measures of what comes out.

Prompts: the first ``prompt_tokens`` tokens of each held-out document that has ``prompt_tokens + length``
tokens or more (the start of a manual section, say), at most ``max_prompts`` of them; the document's next
``length`` tokens are the true continuation. Each model writes ``length`` tokens after the prompt, one at a
time, special tokens excluded (so every run writes the same amount of text), the context cut to the last
tokens the model accepts:

- ``causal``: the output at the last position gives the next token;
- ``bidirectional``: the context followed by one ``[MASK]``, whose output gives the token that replaces it
  (the procedure of :mod:`.next_token`; the way BERT can be made to write, and why it writes badly);
- ``encoder_decoder``: the prompt in the encoder (in the run's format, as :mod:`.next_token`), the
  continuation from the decoder.

Greedy takes the argmax; sampled draws from the softmax at ``temperature`` (a fixed seed). Measures:
``repetition``, the share of the continuation's token ``n``-grams (``n = 4``) that repeat an earlier one of
the same continuation, next to the true continuations' own share; and with a ``reference`` run (a causal
model, e.g. a CLM trained longer), the bits per byte of each continuation under it given the prompt
(texts re-tokenised with the reference's tokenizer), next to the true continuation's.
"""

from __future__ import annotations

import math

import torch

from ..constants import IGNORE_INDEX
from ..data.packing import tokenize_documents
from ..losses import lm_logits, lm_token_losses
from .result import TaskResult, encoder_decoder_batch, finite, plain_batch
from .run import Run, _texts_as_documents, eval_generator

__all__ = ["continue_prompts", "generation", "heldout_prompts", "repetition_rate"]


def heldout_prompts(run: Run, prompt_tokens: int, length: int, max_prompts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompts (B, prompt_tokens), true continuations (B, length))`` from the held-out documents' starts."""
    run.require_heldout()
    ids, _ = tokenize_documents(_texts_as_documents(run.heldout), run.tokenizer)
    rows = [doc[: prompt_tokens + length] for doc in ids if len(doc) >= prompt_tokens + length][:max_prompts]
    if not rows:
        raise ValueError(
            f"no held-out document of {run.out_dir} has {prompt_tokens + length} tokens; use shorter prompts"
        )
    x = torch.tensor(rows)
    return x[:, :prompt_tokens], x[:, prompt_tokens:]


def repetition_rate(ids: torch.Tensor, n: int = 4) -> float:
    """Share of the ``n``-grams of each row of ``ids`` ``(B, L)`` that already occurred earlier in the row
    (mean over rows with at least one ``n``-gram).

    >>> repetition_rate(torch.tensor([[1, 2, 1, 2, 1, 2]]), n=2)  # 12 21 12 21 12: the last three repeat
    0.6
    """
    rates = []
    for row in ids.tolist():
        grams = [tuple(row[i : i + n]) for i in range(len(row) - n + 1)]
        if grams:
            rates.append(1 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


@torch.no_grad()
def continue_prompts(
    run: Run,
    prompts: torch.Tensor,
    length: int,
    *,
    sample: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``length`` tokens ``(B, length)`` written after each prompt ``(B, P)`` (see the module docstring)."""
    vocab = run.vocab
    weight = run.model.output_weight
    banned = vocab.special_mask()
    limit = run.model.config.max_seq_len
    out = torch.empty(prompts.shape[0], 0, dtype=torch.long)
    for _ in range(length):
        context = torch.cat([prompts, out], 1)
        if run.reads == "causal":
            context = context[:, -limit:]
            hidden = run.forward_hidden(plain_batch(context, None, causal=True))[:, -1]
        elif run.reads == "bidirectional":
            context = torch.cat([context[:, -(limit - 1) :], torch.full((context.shape[0], 1), vocab.mask_id)], 1)
            hidden = run.forward_hidden(plain_batch(context, None, causal=False))[:, -1]
        else:
            hidden = run.forward_hidden(_encoder_decoder_prompt(run, prompts, out))[:, -1]
        logits = lm_logits(hidden, weight).cpu().masked_fill(banned, -math.inf)  # (B, V)
        if sample:
            token = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)  # (B, 1)
        else:
            token = logits.argmax(-1, keepdim=True)
        out = torch.cat([out, token], 1)
    return out


def _encoder_decoder_prompt(run: Run, prompts: torch.Tensor, written: torch.Tensor):
    vocab = run.vocab
    B = prompts.shape[0]
    room = run.model.config.max_seq_len - 2
    p = prompts[:, -room:]
    eos, pad = torch.full((B, 1), vocab.eos_id), torch.full((B, 1), vocab.pad_id)
    if vocab.s2s_id is not None:
        encoder = torch.cat([torch.full((B, 1), vocab.s2s_id), p, eos], 1)
        decoder = torch.cat([pad, written], 1)
    else:
        sentinel = torch.full((B, 1), vocab.sentinel_ids[0])
        encoder = torch.cat([p, sentinel, eos], 1)
        decoder = torch.cat([pad, sentinel, written], 1)
    decoder = decoder[:, -run.model.config.max_seq_len :]
    return encoder_decoder_batch(encoder, decoder, torch.full_like(decoder, IGNORE_INDEX))


def _reference_bits_per_byte(reference: Run, run: Run, prompts: torch.Tensor, continuations: torch.Tensor) -> float:
    """Bits per byte of the continuations under the reference model, each given its prompt (as text)."""
    total, size = 0.0, 0
    tok = reference.tokenizer
    limit = reference.model.config.max_seq_len
    for prompt, cont in zip(prompts.tolist(), continuations.tolist()):
        prompt_text, cont_text = run.tokenizer.decode(prompt), run.tokenizer.decode(cont)
        p_ids, c_ids = tok.encode(prompt_text), tok.encode(cont_text)
        ids = torch.tensor([(p_ids + c_ids)[-limit:]])
        n = min(len(c_ids), ids.shape[1] - 1)
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[0, -n - 1 : -1] = ids[0, -n:]
        hidden = reference.forward_hidden(plain_batch(ids, None, causal=True))
        with torch.no_grad():
            total += float(
                lm_token_losses(hidden, reference.model.output_weight, labels.to(reference.device)).loss.sum()
            )
        size += len(cont_text.encode("utf-8"))
    return total / math.log(2) / max(size, 1)


@torch.no_grad()
def generation(
    run: Run,
    *,
    reference: Run | None = None,
    prompt_tokens: int = 32,
    length: int = 32,
    max_prompts: int = 8,
    temperature: float = 1.0,
    n: int = 4,
    examples: int = 3,
) -> TaskResult:
    """Greedy and sampled continuations of held-out prompts and their measures (see the module docstring)."""
    if reference is not None and reference.reads != "causal":
        raise ValueError(
            f"the reference run {reference.out_dir} must be a causal model (e.g. a CLM run), not {reference.reads}"
        )
    prompts, truth = heldout_prompts(run, prompt_tokens, length, max_prompts)
    greedy = continue_prompts(run, prompts, length)
    sampled = continue_prompts(
        run, prompts, length, sample=True, temperature=temperature, generator=eval_generator("generation", temperature)
    )
    metrics = {
        "greedy_repetition": repetition_rate(greedy, n),
        "sampled_repetition": repetition_rate(sampled, n),
        "true_repetition": repetition_rate(truth, n),
    }
    if reference is not None:
        for name, ids in (("greedy", greedy), ("sampled", sampled), ("true", truth)):
            metrics[f"{name}_reference_bits_per_byte"] = finite(_reference_bits_per_byte(reference, run, prompts, ids))
    decode = run.tokenizer.decode
    shown = [
        {"prompt": decode(p), "true": decode(t), "greedy": decode(g), "sampled": decode(s)}
        for p, t, g, s in zip(prompts.tolist(), truth.tolist(), greedy.tolist(), sampled.tolist())
    ][:examples]
    return TaskResult(
        "generation",
        metrics=metrics,
        info={
            "procedure": f"{prompts.shape[0]} held-out prompts of {prompt_tokens} tokens, {length} tokens written "
            f"greedily and sampled at temperature {temperature}; repetition = repeated {n}-grams",
            "prompts": prompts.shape[0],
            "prompt_tokens": prompt_tokens,
            "length": length,
            "temperature": temperature,
            "ngram": n,
            "reference": str(reference.out_dir) if reference is not None else None,
            "examples": shown,
        },
    )
