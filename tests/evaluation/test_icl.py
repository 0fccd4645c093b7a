"""In-context learning probe: against a brute-force loop on a random model, an oracle that looks keys up, errors."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch

from lmobjectives.batch import Batch
from lmobjectives.data import ByteTokenizer
from lmobjectives.data.synthetic import KEY_SYMBOLS, VALUE_SYMBOLS, icl_sequences, parse_spec
from lmobjectives.evaluation.icl import (
    ICL_PRESETS,
    KINDS,
    format_table,
    frequency_baseline,
    kind_of_batch,
    probe_icl,
    probe_run,
    train_command,
)
from lmobjectives.evaluation.inspection import example_batch
from lmobjectives.models import Transformer, TransformerConfig

TOK = ByteTokenizer()


def random_model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=TOK.vocab.size, d_model=32, n_layers=2, n_heads=2, d_ff=64)).eval()


def brute_force(model, sequences, kind: str, context: str = "left"):
    """One hand-built row per (sequence, pair), run alone: (log_prob, correct) as nested lists."""
    log_probs, corrects = [], []
    for text in sequences.texts():
        ids = TOK.encode(text)
        lp_row, ok_row = [], []
        for p in range(len(ids) // 3 + 1):
            key_at, value = 3 * p, ids[3 * p + 1]
            if kind == "masked":
                row = list(ids) if context == "full" else ids[: key_at + 2]
                row[key_at + 1] = TOK.vocab.mask_id
                at = key_at + 1
            else:
                row, at = ids[: key_at + 1], key_at  # the left context up to the key, nothing after
            x = torch.tensor([row])
            real = torch.ones_like(x, dtype=torch.bool)
            batch = Batch(
                input_ids=x,
                labels=torch.zeros_like(x),
                attention_mask=real,
                causal=kind != "masked",
                prefix_mask=real if kind == "prefix" else None,
            )
            with torch.no_grad():
                logits = model(batch).hidden[0, at] @ model.output_weight.T
            lp = torch.log_softmax(logits.double(), -1)
            lp_row.append(float(lp[value]))
            ok_row.append(int(lp.argmax()) == value)
        log_probs.append(lp_row)
        corrects.append(ok_row)
    return torch.tensor(log_probs, dtype=torch.float64), torch.tensor(corrects)


@pytest.mark.parametrize(
    "kind, context", [("causal", "left"), ("prefix", "left"), ("masked", "left"), ("masked", "full")]
)
def test_probe_equals_brute_force_on_random_model(kind, context):
    model = random_model()
    sequences = icl_sequences(5, pairs=6, keys=3, values=10, seed=2)
    result = probe_icl(model, TOK, sequences, kind=kind, context=context, batch_size=2)  # several batches
    log_prob, correct = brute_force(model, sequences, kind, context)
    torch.testing.assert_close(result.log_prob, log_prob, rtol=0, atol=1e-5)
    assert torch.equal(result.correct, correct)
    assert torch.equal(result.occurrence, sequences.occurrence)


class LookupOracle(torch.nn.Module):
    """Predicts, at a key (or at [MASK] after a key), the token that followed the key's last earlier visible
    occurrence, else "0": perfect in-context learning from the left. Its hidden state is a scaled one-hot."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(TOK.vocab.size))
        self.keys = {ord(c) for c in KEY_SYMBOLS}

    @property
    def output_weight(self) -> torch.Tensor:
        return self.weight

    def forward(self, batch: Batch):
        B, T = batch.input_ids.shape
        hidden = torch.zeros(B, T, TOK.vocab.size)
        for b, row in enumerate(batch.input_ids.tolist()):
            for t in range(T):
                key_at = t - 1 if row[t] == TOK.vocab.mask_id else t
                guess = ord("0")
                if key_at >= 0 and row[key_at] in self.keys:
                    earlier = [s for s in range(key_at) if row[s] == row[key_at] and row[s + 1] != TOK.vocab.mask_id]
                    if earlier:
                        guess = row[earlier[-1] + 1]
                hidden[b, t, guess] = 30.0
        return SimpleNamespace(hidden=hidden)


@pytest.mark.parametrize("kind", KINDS)
def test_oracle_is_perfect_on_repeats_and_at_chance_on_first_keys(kind):
    sequences = icl_sequences(40, pairs=10, keys=4, values=10, seed=3)
    result = probe_icl(LookupOracle(), TOK, sequences, kind=kind, values=10)
    summary = result.summary()
    repeated = sequences.occurrence >= 2
    assert summary["repeated_accuracy"] == 1.0
    assert bool(result.correct[repeated].all())
    first_zero = (sequences.values[~repeated] == 0).double().mean()  # the oracle answers "0" to a new key
    assert summary["first_accuracy"] == pytest.approx(float(first_zero))
    assert summary["chance"] == 0.1
    assert summary["queries_by_occurrence"][0] == int((~repeated).sum())
    by_occ = result.accuracy_by_occurrence()
    assert by_occ[1:] == [1.0] * (len(by_occ) - 1)
    by_pair = result.accuracy_by_pair()
    assert by_pair[0] is None  # the first pair is never a repeat
    assert all(a == 1.0 for a in by_pair[1:] if a is not None)
    assert "occ1" in format_table({"oracle": result})


def test_summary_by_hand():
    sequences = icl_sequences(1, pairs=5, keys=2, values=10, seed=0)  # "t7 f1 t7 t7 f1": occurrences 1 1 2 3 2
    result = probe_icl(LookupOracle(), TOK, sequences, kind="causal", values=10)
    assert result.occurrence.tolist() == [[1, 1, 2, 3, 2]]
    assert result.correct.tolist() == [[False, False, True, True, True]]  # 7 and 1 are not "0"
    assert result.accuracy_by_occurrence() == [0.0, 1.0, 1.0]
    assert result.accuracy_by_pair() == [None, None, 1.0, 1.0, 1.0]
    assert result.baseline_by_pair() == [None, None, 0.5, 1.0, 0.0]  # frequency_baseline: 0.1 0 0.5 1 0


def test_errors():
    model, sequences = random_model(), icl_sequences(2, pairs=3, seed=0)
    with pytest.raises(ValueError, match="kind must be one of"):
        probe_icl(model, TOK, sequences, kind="encoder")
    with pytest.raises(ValueError, match="context='full' applies to kind='masked' only"):
        probe_icl(model, TOK, sequences, kind="causal", context="full")
    with pytest.raises(ValueError, match="batch_size"):
        probe_icl(model, TOK, sequences, kind="causal", batch_size=0)
    with pytest.raises(TypeError, match="ICLSequences"):
        probe_icl(model, TOK, ["a1 b2"], kind="causal")
    two_bytes = SimpleNamespace(encode=lambda text: [1, 2], vocab=TOK.vocab)
    with pytest.raises(ValueError, match="one token per key, value and space"):
        probe_icl(model, two_bytes, sequences, kind="causal")


def test_presets():
    for preset in ICL_PRESETS.values():
        kind, params = parse_spec(preset.data)
        assert kind == "icl" and preset.seq_len == 3 * params["pairs"]
        assert params["values"] <= len(VALUE_SYMBOLS)
    args = train_command("cpu", "mlm", "runs/x")
    assert args[args.index("--seq-len") + 1] == str(ICL_PRESETS["cpu"].seq_len)


def test_probe_run_on_a_trained_run(tmp_path):
    from lmobjectives.training import TrainConfig, train

    out = tmp_path / "run"
    train(
        TrainConfig(
            objective="clm",
            data="synthetic:icl?docs=64&pairs=4&keys=2",
            seq_len=12,
            steps=2,
            batch_size=4,
            d_model=16,
            n_layers=1,
            n_heads=2,
            d_ff=32,
            out=str(out),
            progress=False,
            log_every=1,
        )
    )
    result = probe_run(out, n=10)
    assert result.kind == "causal" and result.correct.shape == (10, 4)
    with pytest.raises(ValueError, match="training data's seed"):
        probe_run(out, n=10, seed=0)


@pytest.mark.parametrize(
    ("name", "options", "kind"),
    [
        ("clm", {}, "causal"),
        ("fim", {}, "causal"),
        ("prefix_lm", {}, "prefix"),
        ("mlm", {}, "masked"),
        ("sop", {}, "masked"),
        ("span_corruption", {"layout": "decoder"}, "prefix"),
    ],
)
def test_the_kind_comes_from_the_batch_the_run_trained_on(name, options, kind):
    batch = example_batch(name, options=options, seq_len=48).batch
    assert kind_of_batch(batch) == kind


def test_an_encoder_decoder_batch_has_no_kind():
    batch = example_batch("span_corruption", "The cat sat on the mat. It purred.", seq_len=32).batch
    with pytest.raises(ValueError, match="encoder-decoder"):
        kind_of_batch(batch)


def test_frequency_baseline_equals_a_loop():
    sequences = icl_sequences(60, pairs=12, keys=5, values=4, seed=9)
    expected = []
    for row in sequences.values.tolist():
        out = []
        for p, value in enumerate(row):
            counts = Counter(row[:p])
            if not counts:
                out.append(1 / 4)
                continue
            top = max(counts.values())
            modes = [v for v, c in counts.items() if c == top]
            out.append((value in modes) / len(modes))
        expected.append(out)
    torch.testing.assert_close(frequency_baseline(sequences, 4), torch.tensor(expected, dtype=torch.float64))
    result = probe_icl(LookupOracle(), TOK, sequences, kind="causal", values=4)
    assert torch.equal(result.baseline, frequency_baseline(sequences, 4))
    assert "freq-guess" in format_table({"oracle": result})


@pytest.mark.slow
def test_main_trains_probes_and_writes_the_results(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from lmobjectives.evaluation.icl import main

    out, results = tmp_path / "runs", tmp_path / "results"
    assert (
        main(
            ["--objectives", "clm,mlm", "--out", str(out), "--results", str(results), "--steps", "2", "--threads", "1"]
        )
        == 0
    )
    table = (results / "icl.txt").read_text()
    assert table in capsys.readouterr().out  # printed too (after the training's own lines)
    summaries = json.loads((results / "icl.json").read_text())
    assert set(summaries) == {"clm", "mlm", "mlm:full"}
    assert f"{summaries['clm']['repeated_accuracy']:.3f}" in table.splitlines()[2]
    assert (results / "icl.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "clm" / "config.json").read_text())["train"]["seed"] == 0
    assert main(["--objectives", "clm", "--out", str(out), "--probe-only"]) == 0  # the trained run is probed again
    assert json.loads((out / "icl.json").read_text())["clm"] == summaries["clm"]
