"""Same targets, different context: what a CLM, a prefix LM and an MLM predict from the left, or from both sides.

Usage (the guide's numbers; run folders from ``lmobj train --objective NAME --steps 300 --out runs/NAME``)::

    python docs/guide/measure_context.py --clm runs/clm --mlm runs/mlm --out docs/guide/results/context.json

(``--prefix-lm runs/prefix_lm`` adds the prefix LM's row; the committed results have none.)

Text: the docstrings of a fixed list of standard-library modules (``MODULES``), which the built-in corpus
(``pydoc_data.topics``, the language reference) does not contain, so no run has seen it. It is cut into
blocks of ``--block`` bytes; the targets are the tokens of each block's second half (positions ``block/2``
to ``block - 1``), the same targets for every model:

* ``clm_left``: the CLM, causal attention; position ``t - 1`` predicts token ``t`` from tokens ``< t``.
* ``prefix_lm_left``: the prefix LM with the first half as its bidirectional prefix, causal after it.
* ``mlm_left``: the MLM reads tokens ``< t`` followed by one ``[MASK]`` at ``t`` and nothing to its right
  (positions after ``t`` are padding, which no query attends to); it predicts token ``t`` at the mask.
* ``mlm_both``: the MLM with token ``t`` alone masked, both sides visible (its training task, fill-in).

Losses are in nats per target and bits per byte (the byte tokenizer: one token is one byte). Greedy
continuations of one prompt show what each model writes left to right (the MLM by appending ``[MASK]``
and taking its argmax, one token at a time). This script is the guide's evidence, not part of the
package; ``lmobj eval`` supersedes it when it lands.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

from lmobjectives import Batch
from lmobjectives.data import load_tokenizer
from lmobjectives.training import load_model

__all__ = ["MODULES", "main"]

MODULES = (
    "argparse",
    "json",
    "textwrap",
    "heapq",
    "bisect",
    "fractions",
    "statistics",
    "shlex",
    "difflib",
    "contextlib",
    "string",
    "secrets",
    "calendar",
    "fnmatch",
    "glob",
    "tempfile",
)
PROMPT = "The return value of a function is"  # greedy continuation prompt


def held_out_blocks(tokenizer, block: int, n_blocks: int) -> torch.Tensor:
    """``(n_blocks, block)`` token ids of the modules' docstrings, cut into consecutive blocks."""
    text = "\n\n".join(inspect.getdoc(__import__(name)) or "" for name in MODULES)
    ids = tokenizer.encode(text)
    n = min(n_blocks, len(ids) // block)
    return torch.tensor(ids[: n * block]).view(n, block)  # (N, T)


def _logits(model, batch: Batch) -> torch.Tensor:
    return model(batch).hidden @ model.output_weight.T  # (B, T, V)


@torch.no_grad()
def causal_losses(model, x: torch.Tensor, prefix: int | None) -> torch.Tensor:
    """Per-target loss of tokens ``x[:, T/2:]`` from the left (causal; ``prefix``: bidirectional first half)."""
    B, T = x.shape
    half = T // 2
    ones = torch.ones_like(x, dtype=torch.bool)  # (B, T)
    prefix_mask = None
    if prefix is not None:
        prefix_mask = torch.arange(T).expand(B, T) < prefix  # (B, T)
    batch = Batch(input_ids=x, labels=x, attention_mask=ones, causal=True, prefix_mask=prefix_mask)
    logits = _logits(model, batch)[:, half - 1 : T - 1]  # (B, T/2, V): position t-1 predicts t
    return F.cross_entropy(logits.flatten(0, 1), x[:, half:].flatten(), reduction="none")  # (B*T/2,)


@torch.no_grad()
def masked_losses(model, x: torch.Tensor, mask_id: int, right_context: bool, chunk: int = 256) -> torch.Tensor:
    """Per-target loss of tokens ``x[:, T/2:]`` at a single ``[MASK]``, with or without the right context."""
    B, T = x.shape
    half = T // 2
    targets = torch.arange(half, T)  # (T/2,)
    rows = x.repeat_interleave(half, dim=0)  # (B*T/2, T)
    where = targets.repeat(B)  # (B*T/2,) the masked position of each row
    target = rows[torch.arange(len(rows)), where]  # (B*T/2,)
    rows[torch.arange(len(rows)), where] = mask_id
    pos = torch.arange(T).expand(len(rows), T)  # (B*T/2, T)
    real = torch.ones_like(rows, dtype=torch.bool) if right_context else pos <= where[:, None]  # (B*T/2, T)
    out = []
    for i in range(0, len(rows), chunk):
        sl = slice(i, i + chunk)
        batch = Batch(input_ids=rows[sl], labels=rows[sl], attention_mask=real[sl], causal=False)
        logits = _logits(model, batch)  # (C, T, V)
        picked = logits[torch.arange(logits.shape[0]), where[sl]]  # (C, V)
        out.append(F.cross_entropy(picked, target[sl], reduction="none"))
    return torch.cat(out)


@torch.no_grad()
def greedy(model, tokenizer, prompt: str, n: int, mode: str) -> str:
    """``n`` greedy tokens after ``prompt``: ``mode`` "causal", "prefix" (the prompt is a bidirectional
    prefix) or "mask" (append [MASK], bidirectional)."""
    ids = tokenizer.encode(prompt)
    for _ in range(n):
        x = torch.tensor([ids + ([tokenizer.vocab.mask_id] if mode == "mask" else [])])  # (1, t)
        prefix = torch.arange(x.shape[1])[None] < len(tokenizer.encode(prompt)) if mode == "prefix" else None
        ones = torch.ones_like(x, dtype=torch.bool)
        batch = Batch(input_ids=x, labels=x, attention_mask=ones, causal=mode != "mask", prefix_mask=prefix)
        logits = _logits(model, batch)[0, -1]  # (V,)
        special = torch.tensor(sorted(tokenizer.vocab.special_ids))
        logits[special] = -math.inf  # continuations of plain text; EOS would end them
        ids.append(int(logits.argmax()))
    return tokenizer.decode(ids[len(tokenizer.encode(prompt)) :])


def _summary(losses: torch.Tensor) -> dict[str, float]:
    nats = losses.mean().item()
    return {"nats_per_target": round(nats, 4), "bits_per_byte": round(nats / math.log(2), 4), "targets": losses.numel()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clm", required=True)
    p.add_argument("--mlm", required=True)
    p.add_argument("--prefix-lm", default=None)
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--blocks", type=int, default=32)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer(Path(args.clm) / "tokenizer")
    x = held_out_blocks(tok, args.block, args.blocks)  # (N, T)
    clm, mlm = load_model(args.clm), load_model(args.mlm)
    result = {
        "python": platform.python_version(),
        "text": f"docstrings of {', '.join(MODULES)}; {x.shape[0]} blocks of {x.shape[1]} bytes, targets = second halves",
        "clm_left": _summary(causal_losses(clm, x, prefix=None)),
        "mlm_left": _summary(masked_losses(mlm, x, tok.vocab.mask_id, right_context=False)),
        "mlm_both": _summary(masked_losses(mlm, x, tok.vocab.mask_id, right_context=True)),
        "uniform_guess": {"nats_per_target": round(math.log(tok.vocab.size), 4)},
        "greedy_prompt": PROMPT,
        "greedy_clm": greedy(clm, tok, PROMPT, 60, "causal"),
        "greedy_mlm": greedy(mlm, tok, PROMPT, 60, "mask"),
    }
    if args.prefix_lm:
        plm = load_model(args.prefix_lm)
        result["prefix_lm_left"] = _summary(causal_losses(plm, x, prefix=args.block // 2))
        result["greedy_prefix_lm"] = greedy(plm, tok, PROMPT, 60, "prefix")
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
