"""The logged loss and gradient norm of one ``transformers.Trainer`` step at gradient accumulation 1 / 2 / 4
(per-device batch 8 / 4 / 2, the same 8 rows with the same masks), stock Trainer against ObjectiveTrainer.

Heads: ``BertForMaskedLM`` (declares ``**kwargs`` but ignores ``num_items_in_batch``), and ``GPT2LMHeadModel``
(honours it); ELECTRA's joint generator + discriminator (``ElectraPair``), which only ObjectiveTrainer trains. Variants: the stock Trainer as it is; the stock Trainer with ``model.accepts_loss_kwargs =
False`` (Trainer then divides each micro-batch's mean by the accumulation steps: a mean of means);
``lmobjectives.hf.ObjectiveTrainer``. "exact" is the loss of the 8 rows as one batch (each term's mean over
all its targets), which every variant should log. Tiny random models built from local configs, a
WordPiece / byte-level BPE tokenizer trained on the built-in corpus; nothing is downloaded.

Run: ``python benchmarks/hf_loss_scale.py`` (writes ``benchmarks/results/hf_loss_scale.md``; ``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import PreTrainedTokenizerFast, Trainer, TrainingArguments

from lmobjectives.data import builtin_corpus, train_tokenizer
from lmobjectives.hf import ElectraPair, ObjectiveTrainer, collator, loss_terms

ROWS = 8  # the effective batch
SPLITS = ((8, 1), (4, 2), (2, 4))  # (per-device batch, accumulation)


def tokenizer(kind: str) -> PreTrainedTokenizerFast:
    corpus = [" ".join(doc) for doc in builtin_corpus()[:60]]
    raw = train_tokenizer(corpus, kind, vocab_size=1000).tokenizer
    if kind == "wordpiece":
        return PreTrainedTokenizerFast(
            tokenizer_object=raw,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            eos_token="[EOS]",
        )
    return PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[EOS]", eos_token="[EOS]", unk_token="[UNK]")


def model(kind: str, tok: PreTrainedTokenizerFast) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "ElectraPair":  # the generator 1/4 of the discriminator's width, one embedding module
        shape = dict(
            vocab_size=len(tok),
            embedding_size=64,
            num_hidden_layers=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=tok.pad_token_id,
        )
        discriminator = transformers.ElectraForPreTraining(
            transformers.ElectraConfig(**shape, hidden_size=64, num_attention_heads=2, intermediate_size=128)
        )
        generator = transformers.ElectraForMaskedLM(
            transformers.ElectraConfig(**shape, hidden_size=16, num_attention_heads=1, intermediate_size=32)
        )
        return ElectraPair(generator, discriminator)
    if kind == "BertForMaskedLM":
        cfg = transformers.BertConfig(
            vocab_size=len(tok),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            pad_token_id=tok.pad_token_id,
        )
        return transformers.BertForMaskedLM(cfg)
    cfg = transformers.GPT2Config(
        vocab_size=len(tok),
        n_embd=64,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    return transformers.GPT2LMHeadModel(cfg)


def rows(name: str, tok: PreTrainedTokenizerFast) -> list[dict[str, torch.Tensor]]:
    """The 8 rows as one collated batch (one corruption for every split), then one dict per row. Texts of
    different lengths: the micro-batches hold different numbers of targets."""
    texts = [" ".join(doc[:2])[: 40 + 25 * i] for i, doc in enumerate(builtin_corpus()[:ROWS])]
    features = collator(name, tok, max_length=64, seed=0)([{"text": t} for t in texts])
    return [{k: v[i] for k, v in features.items()} for i in range(ROWS)]


def stack(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in batch]) for k in batch[0]}


def exact_terms(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """The weighted loss ObjectiveTrainer should log for ``batch`` as one batch, and its first term's target count."""
    if isinstance(m, ElectraPair):
        terms, weights = m(**batch), m.term_weights
    else:
        terms, weights = loss_terms(m, batch), {}
    total = sum(weights.get(n, 1.0) * float(t.loss / t.num_tokens) for n, t in terms.items())
    return total, int(next(iter(terms.values())).num_tokens)


def one_step(kind: str, tok, data, variant: str, batch: int, accumulation: int, out: str) -> dict[str, float]:
    m = model(kind, tok)
    if variant == "stock, accepts_loss_kwargs=False":
        m.accepts_loss_kwargs = False
    args = TrainingArguments(
        output_dir=out,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1e-3,
        optim="sgd",
        lr_scheduler_type="constant",
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
    )
    cls = ObjectiveTrainer if variant == "ObjectiveTrainer" else Trainer
    trainer = cls(model=m, args=args, train_dataset=data, data_collator=stack)
    trainer.train()
    log = trainer.state.log_history[0]
    return {"loss": log["loss"], "grad_norm": log["grad_norm"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "hf_loss_scale.md")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    a = parser.parse_args()
    torch.set_num_threads(a.threads)
    transformers.logging.set_verbosity_error()
    load_before = os.getloadavg()
    start = time.perf_counter()
    lines = []
    stock = ("stock", "stock, accepts_loss_kwargs=False", "ObjectiveTrainer")
    heads = (
        ("BertForMaskedLM", "wordpiece", "mlm", stock),
        ("GPT2LMHeadModel", "bpe", "clm", stock),
        ("ElectraPair", "wordpiece", "electra", ("ObjectiveTrainer",)),  # no stock Trainer path trains the pair
    )
    for kind, tok_kind, name, variants in heads:
        tok = tokenizer(tok_kind)
        data = rows(name, tok)
        whole = stack(data)
        reference = model(kind, tok)
        exact, _ = exact_terms(reference, whole)
        per_micro = {
            b: [exact_terms(reference, stack(data[i : i + b]))[1] for i in range(0, ROWS, b)] for b, _ in SPLITS
        }
        what = "generator MLM + 50 x discriminator BCE" if kind == "ElectraPair" else "each term's mean"
        lines.append(f"\n### {kind} ({name} collator; exact loss of the 8 rows, {what}: {exact:.4f})\n")
        counted = "Generator targets (masked tokens)" if kind == "ElectraPair" else "Targets"
        lines.append(f"{counted} per micro-batch: " + "; ".join(f"batch {b}: {per_micro[b]}" for b, _ in SPLITS) + "\n")
        lines.append(
            "| variant | loss at accumulation 1 / 2 / 4 | loss / exact | grad norm at 1 / 2 / 4 | grad norm / accumulation 1 |"
        )
        lines.append("|---|---|---|---|---|")
        for variant in variants:
            with tempfile.TemporaryDirectory() as tmp:
                got = [one_step(kind, tok, data, variant, b, g, tmp) for b, g in SPLITS]
            losses = " / ".join(f"{r['loss']:.4f}" for r in got)
            ratios = " / ".join(f"{r['loss'] / exact:.3f}" for r in got)
            norms = " / ".join(f"{r['grad_norm']:.4f}" for r in got)
            norm_ratios = " / ".join(f"{r['grad_norm'] / got[0]['grad_norm']:.3f}" for r in got)
            lines.append(f"| {variant} | {losses} | {ratios} | {norms} | {norm_ratios} |")
            print(kind, variant, losses, norms, flush=True)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    header = [
        "# Trainer loss scale under gradient accumulation: stock Trainer vs ObjectiveTrainer",
        "",
        f"Command: `python benchmarks/hf_loss_scale.py{'' if a.threads == 1 else f' --threads {a.threads}'}`",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.platform()}), torch threads {a.threads}, "
        f"load average before/after {load_before[0]:.2f}/{load_after[0]:.2f}; wall time {wall:.0f} s. The numbers are "
        "losses and norms, not timings: load does not change them.",
        f"Versions: Python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}.",
        "",
        "One optimizer step on the same 8 rows with the same masks (collated once), split into micro-batches of "
        "8 / 4 / 2 with gradient accumulation 1 / 2 / 4 (effective batch 8 each time); SGD, lr 1e-3; dropout off. "
        "`loss` is Trainer's logged loss, `grad norm` its logged norm before clipping. "
        "An accumulation-invariant trainer logs the exact loss and the same norm at every split (ratios 1.000).",
        "At random initialisation every token's loss is close to ln V, so a mean of micro-batch means is barely "
        "biased in the logged loss; the gradient norm shows the bias of `accepts_loss_kwargs=False`.",
    ]
    a.out.write_text("\n".join(header + lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
