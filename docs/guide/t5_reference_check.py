"""Is span corruption's plateau our encoder-decoder's, or T5's? Hugging Face's T5 trained on the same batches.

Usage (the guide's numbers; RUN is any ``span_corruption`` run, e.g. one of ``lmobj compare --preset denoisers``)::

    python docs/guide/t5_reference_check.py --run docs/reports/denoisers/runs/span_corruption/seed-0 \\
        --steps 1500 --out docs/guide/results/t5_reference_check.json

``T5ForConditionalGeneration`` of the run's size (d_model, layers, heads, d_ff; T5's own relative position
buckets, RMSNorm, ReLU) is trained from scratch on exactly the run's training batches
(:func:`lmobjectives.evaluation.run_batches`) with the trainer's optimiser and schedule for the run's settings
(``make_optimizer``, ``learning_rate``, gradient clipping), and both models are scored the same way on the
run's held-out batches: teacher-forced accuracy and loss at the span tokens (sentinels and EOS aside).
This script is the guide's evidence, not part of the package; it needs ``transformers``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch


def span_token_scores(logits_of, batches, special) -> tuple[float, float]:
    """Accuracy and mean loss (nats) at the non-special labels of ``batches``; ``logits_of(batch)`` -> (B, Td, V)."""
    hits = n = 0
    loss = 0.0
    with torch.no_grad():
        for b in batches:
            logits = logits_of(b)  # (B, Td, V)
            labels = b.labels  # (B, Td)
            spans = (labels >= 0) & ~special[labels.clamp(min=0)]  # (B, Td)
            logp = logits.float().log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]  # (B, Td)
            hits += int((logits.argmax(-1) == labels)[spans].sum())
            n += int(spans.sum())
            loss -= float(logp[spans].sum())
    return hits / n, loss / n


def main() -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    from lmobjectives.evaluation import heldout_batches, load_run, run_batches
    from lmobjectives.training.trainer import learning_rate, make_optimizer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a span_corruption run folder")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the run's)")
    parser.add_argument("--every", type=int, default=250, help="score both models every this many steps")
    parser.add_argument("--out", default=None, help="write the scores here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    run = load_run(args.run)
    c, m, vocab = run.config, run.model.config, run.vocab
    steps = args.steps or c.steps
    special = vocab.special_mask()
    heldout = heldout_batches(run)
    ours = span_token_scores(lambda b: run.forward_hidden(b) @ run.model.output_weight.T, heldout, special)

    torch.manual_seed(c.seed)
    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=vocab.size,
            d_model=m.d_model,
            d_kv=m.d_model // m.n_heads,
            d_ff=m.d_ff,
            num_layers=m.n_layers,
            num_heads=m.n_heads,
            dropout_rate=0.0,
            pad_token_id=vocab.pad_id,
            eos_token_id=vocab.eos_id,
            decoder_start_token_id=vocab.pad_id,
        )
    )
    config = replace(c, steps=steps)
    opt = make_optimizer(t5, config)  # the trainer's AdamW and learning-rate schedule
    stream = run_batches(run)

    def t5_logits(b):
        return t5(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            decoder_input_ids=b.decoder_input_ids,
            decoder_attention_mask=b.decoder_attention_mask,
        ).logits

    curve, started = [], time.perf_counter()
    for step in range(steps):
        b = stream(step)
        out = t5(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            decoder_input_ids=b.decoder_input_ids,
            decoder_attention_mask=b.decoder_attention_mask,
            labels=b.labels,
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(t5.parameters(), config.grad_clip)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step + 1, config)
        opt.step()
        opt.zero_grad()
        if (step + 1) % args.every == 0 or step + 1 == steps:
            t5.eval()
            accuracy, loss = span_token_scores(t5_logits, heldout, special)
            t5.train()
            curve.append({"step": step + 1, "accuracy": accuracy, "loss": loss})
            print(
                f"HF T5 step {step + 1}: held-out span-token accuracy {accuracy:.3f}, loss {loss:.3f} nats "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    result = {
        "run": args.run,
        "run_step": run.step,
        "ours": {"accuracy": ours[0], "loss": ours[1]},
        "hf_t5": curve,
        "hf_t5_parameters": sum(p.numel() for p in t5.parameters()),
        "our_parameters": sum(p.numel() for p in run.model.parameters()),
        "held_out_batches": len(heldout),
    }
    print(
        f"ours (step {run.step}): accuracy {ours[0]:.3f}, loss {ours[1]:.3f}; HF T5 (step {steps}): "
        f"accuracy {curve[-1]['accuracy']:.3f}, loss {curve[-1]['loss']:.3f}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
