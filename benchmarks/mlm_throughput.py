"""Throughput of MaskedLM against HF ``DataCollatorForLanguageModeling`` on one batch.

Same batch for everyone: 256 x 512 ids over a 30 522-id BERT-like vocabulary
([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103), each row
``[CLS] a... [SEP] b... [SEP]`` then padding (row lengths uniform in [256, 512]),
words of 1-4 sub-tokens (a word starts at a token with probability 0.75).

HF paths timed (all on the same tensors; HF builds its own special-token mask
unless told otherwise):

* ``hf_collator``: ``collator(examples)`` on a list of 256 dicts of unpadded
  ``input_ids`` lists: what a HF training loop calls (pads, then masks).
* ``hf_mask_tokens``: ``collator.torch_mask_tokens(input_ids.clone())``: the
  fastest HF path given what our transform is given (ids; padding is [PAD]).
  HF then builds the special-token mask with a Python loop over rows.
* ``hf_mask_tokens_stm``: the same with a precomputed ``special_tokens_mask``
  (from ``return_special_tokens_mask=True`` at tokenisation): HF's masking
  arithmetic alone, a lower bound for any HF path.
* ``hf_wwm_mask_tokens``: ``whole_word_mask=True``; HF needs
  ``offset_mapping`` (word boundaries = gaps between character offsets) and
  ``special_tokens_mask``, both precomputed and not timed; the padded batch
  cannot go through ``collator(examples)`` (``tokenizer.pad`` does not pad
  ``offset_mapping``), so ``torch_mask_tokens`` is HF's only wwm path here.
  HF forces ``mask_replace_prob=1`` for wwm; ``ours_word_mask_only`` matches it.

Our transform is timed end to end (argument checks, padding from
``attention_mask``, special-token lookup, selection, replacement, labels).
Paths are timed round-robin (every round times every path once, ours
``--ours-calls`` times), so that all see the same machine load; medians
over the rounds. Tokens/s counts all B*T positions (padding included) for
everyone.

``--baseline REV`` also times the exact word/span/n-gram paths with the
selection strategies of ``src/lmobjectives/objectives/_masking.py`` at git
revision REV (``old_*``), in the same rounds, so that old / new / HF ratios
come from the same machine load.

Run: ``python benchmarks/mlm_throughput.py`` (writes benchmarks/results/mlm_throughput.{json,md}).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path

import torch
from _harness import time_interleaved  # benchmarks/_harness.py (the script's folder is on sys.path)

from lmobjectives import Vocab, get_objective
from lmobjectives.data.tokenizers import word_ids_from_starts

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
BASELINE_PATHS = ("ours_word_exact", "ours_span", "ours_span_exact", "ours_ngram_exact")  # timed again as old_*
VOCAB_SIZE, PAD, UNK, CLS, SEP, MASK = 30522, 0, 100, 101, 102, 103


def make_batch(B: int, T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(999, VOCAB_SIZE, (B, T), generator=g)  # ordinary ids (BERT's start at 999)
    lens = torch.randint(T // 2, T + 1, (B,), generator=g)  # (B,) real tokens per row
    t = torch.arange(T)
    ids[:, 0] = CLS
    ids[t[None] == (lens // 2)[:, None]] = SEP
    ids[t[None] == (lens - 1)[:, None]] = SEP
    real = t[None] < lens[:, None]  # (B, T)
    ids = torch.where(real, ids, PAD)
    ordinary = real & (ids != CLS) & (ids != SEP)
    word_ids = word_ids_from_starts(torch.rand(B, T, generator=g) < 0.75, ordinary)  # (B, T)
    return ids, real, lens, word_ids


def hf_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    names = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    names += [f"w{i}" for i in range(VOCAB_SIZE - len(names))]
    raw = Tokenizer(WordLevel({w: i for i, w in enumerate(names)}, unk_token="[UNK]"))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    assert len(tok) == VOCAB_SIZE and (tok.pad_token_id, tok.mask_token_id) == (PAD, MASK)
    return tok


def offsets_from_word_ids(word_ids: torch.Tensor) -> torch.Tensor:
    """Character offsets (B, T, 2) whose gaps mark word starts; (0, 0) for special/padding (HF convention)."""
    in_word = word_ids >= 0
    prev = torch.cat([torch.full_like(word_ids[:, :1], -1), word_ids[:, :-1]], dim=1)
    starts = in_word & (word_ids != prev)
    begin = torch.arange(word_ids.shape[1]) + starts.long().cumsum(-1)  # one blank char before each word
    offs = torch.stack([begin, begin + 1], dim=-1)
    return torch.where(in_word[..., None], offs, 0)


def baseline_masking(rev: str):
    """The module ``objectives/_masking.py`` as it was at git revision ``rev`` (its relative imports resolve)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/lmobjectives/objectives/_masking.py"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = "lmobjectives.objectives._masking_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "lmobjectives.objectives"
    sys.modules[name] = module
    exec(compile(source, f"{rev}:_masking.py", "exec"), module.__dict__)
    return module


def with_baseline(objective, module):
    """A copy of ``objective`` (a MaskedLM) whose selection strategy is ``module``'s class of the same name."""

    def rebuilt(x):
        if not dataclasses.is_dataclass(x):
            return x
        fields = {f.name: rebuilt(getattr(x, f.name)) for f in dataclasses.fields(x) if f.init}
        return getattr(module, type(x).__name__)(**fields)

    copy = dataclasses.replace(objective)
    object.__setattr__(copy, "_select", rebuilt(objective._strategy()))
    return copy


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--rounds", type=int, default=20, help="timed rounds; each times every path")
    ap.add_argument("--ours-calls", type=int, default=3, help="calls of each of our paths per round (HF: 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    ap.add_argument("--baseline", default=None, help="git revision whose _masking.py is timed as old_* (e.g. 8698f40)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import DataCollatorForLanguageModeling

    B, T = args.batch, args.length
    ids, real, lens, word_ids = make_batch(B, T, seed=0)
    vocab = Vocab(size=VOCAB_SIZE, pad_id=PAD, unk_id=UNK, cls_id=CLS, sep_id=SEP, mask_id=MASK)
    g = torch.Generator().manual_seed(0)
    tok = hf_tokenizer()
    col = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random replacement not supported with whole word masking"
        col_wwm = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, whole_word_mask=True, seed=0)
    stm = torch.tensor([tok.get_special_tokens_mask(r, already_has_special_tokens=True) for r in ids.tolist()])
    assert torch.equal(stm.bool(), ~(real & (ids != CLS) & (ids != SEP)))
    offsets = offsets_from_word_ids(word_ids)
    examples = [{"input_ids": row[: int(n)].tolist()} for row, n in zip(ids, lens)]

    ours = {
        "ours_token": (get_objective("mlm", vocab=vocab), {}),
        "ours_token_exact": (get_objective("mlm", vocab=vocab, selection="exact"), {}),
        "ours_word": (get_objective("mlm", vocab=vocab, unit="word"), {"word_ids": word_ids}),
        "ours_word_mask_only": (
            get_objective("mlm", vocab=vocab, unit="word", mask_fraction=1.0, random_fraction=0.0),
            {"word_ids": word_ids},
        ),
        "ours_span": (get_objective("mlm", vocab=vocab, unit="span"), {"word_ids": word_ids}),
        "ours_span_exact": (get_objective("mlm", vocab=vocab, unit="span", selection="exact"), {"word_ids": word_ids}),
        "ours_word_exact": (get_objective("mlm", vocab=vocab, unit="word", selection="exact"), {"word_ids": word_ids}),
        "ours_ngram_exact": (
            get_objective("mlm", vocab=vocab, unit="ngram", selection="exact"),
            {"word_ids": word_ids},
        ),
        "ours_token_unigram": (
            get_objective("mlm", vocab=vocab, random_ids="unigram").with_unigram_counts(
                torch.bincount(ids[real], minlength=VOCAB_SIZE)
            ),
            {},
        ),
    }
    if args.baseline:
        module = baseline_masking(args.baseline)
        ours.update(
            {"old" + name[4:]: (with_baseline(ours[name][0], module), ours[name][1]) for name in BASELINE_PATHS}
        )
    hf = {
        "hf_collator": lambda: col(examples),
        "hf_mask_tokens": lambda: col.torch_mask_tokens(ids.clone()),
        "hf_mask_tokens_stm": lambda: col.torch_mask_tokens(ids.clone(), special_tokens_mask=stm),
        "hf_wwm_mask_tokens": lambda: col_wwm.torch_mask_tokens(
            ids.clone(), special_tokens_mask=stm, offset_mapping=offsets
        ),
    }

    # sanity: everyone masks about 15 % of the maskable tokens
    n_maskable = int((~stm.bool()).sum())
    rates, at_budget = {}, {}
    budget = torch.clamp(torch.round((~stm.bool()).sum(-1).double() * 0.15).long(), min=1)  # (B,) BERT's k
    for name, (obj, extras) in ours.items():
        got = (obj(ids, attention_mask=real, generator=g, **extras).labels != -100).sum(-1)  # (B,)
        rates[name] = int(got.sum()) / n_maskable
        at_budget[name] = float((got == budget).double().mean())
    rates["hf_mask_tokens"] = int((col.torch_mask_tokens(ids.clone())[1] != -100).sum()) / n_maskable
    rates["hf_wwm_mask_tokens"] = (
        int((col_wwm.torch_mask_tokens(ids.clone(), special_tokens_mask=stm, offset_mapping=offsets)[1] != -100).sum())
        / n_maskable
    )

    load_before = os.getloadavg()
    paths = {
        name: (lambda obj=obj, extras=extras: obj(ids, attention_mask=real, generator=g, **extras))
        for name, (obj, extras) in ours.items()
    }
    paths.update(hf)
    calls = {name: args.ours_calls if name in ours else 1 for name in paths}
    results = time_interleaved(paths, calls, args.warmup, args.rounds)
    load_after = os.getloadavg()
    for name, r in results.items():
        r["tokens_per_s"] = B * T / (r["median_ms"] / 1e3)
        r["tokens_per_s_range"] = [B * T / (r["max_ms"] / 1e3), B * T / (r["min_ms"] / 1e3)]
        r["selection_rate"] = rates.get(name)
        r["rows_at_budget"] = at_budget.get(name)

    def ratio(a, b):
        return results[b]["median_ms"] / results[a]["median_ms"]

    ratios = {
        "token_vs_hf_collator": ratio("ours_token", "hf_collator"),
        "token_vs_hf_mask_tokens": ratio("ours_token", "hf_mask_tokens"),
        "token_vs_hf_mask_tokens_stm": ratio("ours_token", "hf_mask_tokens_stm"),
        "word_vs_hf_wwm": ratio("ours_word", "hf_wwm_mask_tokens"),
        "word_mask_only_vs_hf_wwm": ratio("ours_word_mask_only", "hf_wwm_mask_tokens"),
        "word_exact_vs_hf_wwm": ratio("ours_word_exact", "hf_wwm_mask_tokens"),
        "span_vs_hf_wwm": ratio("ours_span", "hf_wwm_mask_tokens"),
        "ngram_exact_vs_hf_wwm": ratio("ours_ngram_exact", "hf_wwm_mask_tokens"),
        "span_exact_vs_hf_wwm": ratio("ours_span_exact", "hf_wwm_mask_tokens"),
    }
    if args.baseline:
        for name in BASELINE_PATHS:
            old = "old" + name[4:]
            ratios[f"{name[5:]}_new_vs_old"] = ratio(name, old)
            ratios[f"{name[5:]}_old_vs_hf_wwm"] = ratio(old, "hf_wwm_mask_tokens")
    import tokenizers
    import transformers

    report = {
        "baseline": args.baseline,
        "command": "python "
        + " ".join([os.path.relpath(__file__, Path.cwd())] + sys.argv[1:] if argv is None else [__file__] + argv),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "batch": {
            "B": B,
            "T": T,
            "vocab_size": VOCAB_SIZE,
            "real_tokens": int(real.sum()),
            "maskable_tokens": n_maskable,
        },
        "results": results,
        "ratios": ratios,
    }
    report["goals"] = {
        "token >= 30x hf_collator": ratios["token_vs_hf_collator"] >= 30,
        "token >= 30x hf_mask_tokens": ratios["token_vs_hf_mask_tokens"] >= 30,
        "token >= 30x hf_mask_tokens_stm": ratios["token_vs_hf_mask_tokens_stm"] >= 30,
        "word >= 10x hf_wwm_mask_tokens": ratios["word_vs_hf_wwm"] >= 10,
        "exact word/span/ngram >= 3x hf_wwm_mask_tokens": min(
            ratios[k]
            for k in ("word_exact_vs_hf_wwm", "span_vs_hf_wwm", "span_exact_vs_hf_wwm", "ngram_exact_vs_hf_wwm")
        )
        >= 3,
    }
    print(json.dumps(report, indent=2))
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "mlm_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "mlm_throughput.md").write_text(markdown(report))
    return report


NOTES = {
    "ours_token": "MaskedLM() defaults: Bernoulli 0.15, 80/10/10, from (ids, attention_mask)",
    "ours_token_exact": "selection='exact' (BERT: round(0.15 n) per row)",
    "ours_word": "unit='word' (whole-word, 80/10/10 per token), word_ids given",
    "ours_word_mask_only": "unit='word', mask_fraction=1 (what HF wwm does)",
    "ours_span": "unit='span' (SpanBERT), Binomial budget",
    "ours_span_exact": "unit='span', selection='exact'",
    "ours_word_exact": "unit='word', selection='exact' (BERT wwm: skip a word that overflows, go on)",
    "ours_ngram_exact": "unit='ngram', selection='exact' (ALBERT n-grams, n <= 3, P(n) ~ 1/n)",
    "ours_token_unigram": "token defaults, random ids from unigram counts (SpanBERT)",
    "old_word_exact": "ours_word_exact with the --baseline revision's selection strategies",
    "old_span": "ours_span with the --baseline revision's selection strategies",
    "old_span_exact": "ours_span_exact with the --baseline revision's selection strategies",
    "old_ngram_exact": "ours_ngram_exact with the --baseline revision's selection strategies",
    "hf_collator": "collator(list of 256 dicts of unpadded id lists): pad + mask, HF's usual call",
    "hf_mask_tokens": "collator.torch_mask_tokens(ids.clone()): fastest HF path given only the ids",
    "hf_mask_tokens_stm": "... plus a precomputed special_tokens_mask (not timed): HF masking arithmetic only",
    "hf_wwm_mask_tokens": "whole_word_mask=True, precomputed offset_mapping + special_tokens_mask (not timed)",
}


def markdown(r: dict) -> str:
    m, v, b = r["machine"], r["versions"], r["batch"]
    lines = [
        "# MaskedLM throughput vs HF DataCollatorForLanguageModeling",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Machine: {m['cpus']} CPU cores ({m['processor']}, {m['platform']}), torch threads {m['torch_threads']}, "
        f"load average before/after {m['load_average_before'][0]:.2f}/{m['load_average_after'][0]:.2f} "
        "(the machine is shared; a load above the core count inflates every number).",
        (
            "**Measured under load** (1-minute load average above the core count): absolute times here are not "
            "what a quiet machine gives and are no headline; compare ratios, which come from the same rounds."
            if max(m["load_average_before"][0], m["load_average_after"][0]) > (m["cpus"] or 1)
            else "The machine was quiet (load average below the core count)."
        ),
        (
            f"Baseline (`old_*`): the selection strategies of `_masking.py` at git revision `{r['baseline']}`, timed in "
            "the same rounds."
            if r.get("baseline")
            else "No baseline revision timed."
        ),
        (
            f"Torch ran on {m['torch_threads']} of {m['cpus']} cores (`--threads`): on a shared, oversubscribed "
            "machine OpenMP threads that wait for a busy core inflate every torch op many times over. "
            "The HF paths are Python-bound and single-threaded either way."
            if m["torch_threads"] < (m["cpus"] or 1)
            else "Torch used its default thread count."
        ),
        f"Versions: Python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, tokenizers {v['tokenizers']}.",
        f"Batch: {b['B']} x {b['T']} ids, vocab {b['vocab_size']}, {b['real_tokens']} real tokens, "
        f"{b['maskable_tokens']} maskable. Tokens/s counts all B*T positions. Paths timed round-robin; median and "
        "range (min-max) per call. Rows at budget: share of rows with exactly BERT's round(0.15 n) targets "
        "(meaningful for the exact and budgeted paths; Bernoulli paths vary by design).",
        "",
        "| path | median ms | range ms | calls | tokens/s (median) | tokens/s (range) | selected / maskable "
        "| rows at budget | what |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, x in r["results"].items():
        rate = "" if x["selection_rate"] is None else f"{x['selection_rate']:.4f}"
        fill = "" if x.get("rows_at_budget") is None else f"{x['rows_at_budget']:.3f}"
        lo, hi = x["tokens_per_s_range"]
        lines.append(
            f"| {name} | {x['median_ms']:.2f} | {x['min_ms']:.2f}-{x['max_ms']:.2f} | {x['calls']} | "
            f"{x['tokens_per_s']:.3g} | {lo:.3g}-{hi:.3g} | {rate} | {fill} | {NOTES.get(name, '')} |"
        )
    lines += ["", "| speed-up (HF median / ours median) | x |", "|---|---:|"]
    lines += [f"| {k} | {x:.1f} |" for k, x in r["ratios"].items()]
    lines += ["", "Goals: " + ", ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in r["goals"].items()), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
