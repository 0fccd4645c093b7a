"""Each evaluation against a brute-force computation on the same tiny model: one row, one position at a time."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lmobjectives.evaluation import (
    NotApplicable,
    continue_prompts,
    evaluate,
    fill_in,
    fit_linear_probe,
    generation,
    heldout_blocks,
    heldout_word_ids,
    next_token,
    next_token_losses,
    pll,
    probe,
    pseudo_log_likelihoods,
    repetition_rate,
)
from lmobjectives.evaluation.fill_in import fill_in_positions, sentinel_budget, split_runs
from lmobjectives.evaluation.result import encoder_decoder_batch, plain_batch
from lmobjectives.evaluation.run import heldout_batches


def log_probs(run, batch, position):
    """log softmax over the vocabulary of the output at ``position`` of a one-row batch, computed directly."""
    with torch.no_grad():
        hidden = run.model(batch).hidden[0, position]
        return torch.log_softmax(hidden @ run.model.output_weight.T, -1)


@pytest.mark.parametrize("name", ["clm", "mlm", "t5", "ul2"])
def test_next_token_equals_one_prefix_at_a_time(runs, name):
    run = runs(name)
    blocks = heldout_blocks(run, max_blocks=2)
    start = 20
    loss, _ = next_token_losses(run, blocks, start)
    vocab = run.vocab
    for b in range(2):
        for t in range(start, blocks.shape[1]):
            x = blocks[b]
            if run.reads == "causal":
                expected = -log_probs(run, plain_batch(x[None, :t], None, causal=True), t - 1)[x[t]]
            elif run.reads == "bidirectional":
                ids = torch.cat([x[:t], torch.tensor([vocab.mask_id])])[None]
                expected = -log_probs(run, plain_batch(ids, None, causal=False), t)[x[t]]
            else:  # the decoder has produced x_start .. x_{t-1} after the encoder read x_<start
                if vocab.s2s_id is not None:
                    enc = torch.cat([torch.tensor([vocab.s2s_id]), x[:start], torch.tensor([vocab.eos_id])])
                    dec = torch.cat([torch.tensor([vocab.pad_id]), x[start:t]])
                else:
                    enc = torch.cat([x[:start], torch.tensor([vocab.sentinel_ids[0], vocab.eos_id])])
                    dec = torch.cat([torch.tensor([vocab.pad_id, vocab.sentinel_ids[0]]), x[start:t]])
                batch = encoder_decoder_batch(enc[None], dec[None], torch.zeros_like(dec)[None])
                expected = -log_probs(run, batch, dec.numel() - 1)[x[t]]
            assert loss[b, t] == pytest.approx(float(expected), abs=1e-4), (b, t)
        assert (loss[b, :start] == 0).all()


def test_bits_per_byte_is_the_summed_loss_over_bytes(runs):
    run = runs("clm")
    result = next_token(run, max_blocks=3)
    blocks = heldout_blocks(run, max_blocks=3)
    loss, _ = next_token_losses(run, blocks, 16)
    text = blocks[:, 16:] < 256  # byte tokenizer: one byte per text token, EOS excluded
    assert result.info["targets"] == result.info["bytes"] == int(text.sum())
    assert result.metrics["bits_per_byte"] == pytest.approx(
        float(loss[:, 16:][text].sum()) / math.log(2) / int(text.sum()), rel=1e-5
    )
    assert result.metrics["perplexity"] == pytest.approx(math.exp(result.metrics["loss"]), rel=1e-6)


@pytest.mark.parametrize("name", ["mlm", "t5", "ul2"])
def test_pll_equals_masking_each_position_alone(runs, name):
    run = runs(name)
    blocks = heldout_blocks(run, 24, max_blocks=1)
    logp, _ = pseudo_log_likelihoods(run, blocks, rows=7)  # rows that do not divide the block: chunking is exact
    vocab = run.vocab
    x = blocks[0]
    for t in range(x.numel()):
        if x[t] >= 256:  # special tokens are neither masked nor scored
            assert logp[0, t] == 0
            continue
        ids = x.clone()
        if run.reads == "bidirectional":
            ids[t] = vocab.mask_id
            expected = log_probs(run, plain_batch(ids[None], None, causal=False), t)[x[t]]
        else:
            ids[t] = vocab.sentinel_ids[0]
            enc = torch.cat(
                ([torch.tensor([vocab.nlu_id])] if vocab.nlu_id is not None else [])
                + [ids, torch.tensor([vocab.eos_id])]
            )
            dec = torch.tensor([vocab.pad_id, vocab.sentinel_ids[0]])
            expected = log_probs(run, encoder_decoder_batch(enc[None], dec[None], dec[None]), 1)[x[t]]
        assert logp[0, t] == pytest.approx(float(expected), abs=1e-4)
    result = pll(run, max_blocks=1)
    assert result.metrics["pseudo_perplexity"] == pytest.approx(math.exp(-result.metrics["pll_per_token"]), rel=1e-6)


def test_pll_does_not_apply_to_a_causal_model(runs):
    with pytest.raises(NotApplicable, match="causal"):
        pll(runs("clm"))


def test_heldout_word_ids_are_the_runs_of_non_space_bytes(runs):
    run = runs("mlm")  # byte tokenizer: a word is a maximal run of bytes other than the space
    blocks, words = heldout_blocks(run, max_blocks=4), heldout_word_ids(run, max_blocks=4)
    is_word = (blocks != ord(" ")) & (blocks < 256)
    assert torch.equal(words >= 0, is_word)
    same = words[:, 1:] == words[:, :-1]
    assert torch.equal(same & is_word[:, 1:], is_word[:, 1:] & is_word[:, :-1])  # one id per run, a new id per run


def test_fill_in_words_hides_whole_words_at_the_rate(runs):
    run = runs("mlm")
    blocks, words = heldout_blocks(run), heldout_word_ids(run)
    hidden = fill_in_positions(run, blocks, 0.3, words)
    ids = words[words >= 0].unique()
    hidden_words = {int(w) for w in words[hidden].unique()}
    for w in ids.tolist():  # every token of a word is hidden, or none is
        assert bool(hidden[words == w].all()) == (w in hidden_words) and bool(hidden[words == w].any()) == (
            w in hidden_words
        )
    assert not hidden[words < 0].any()
    n, share = ids.numel(), len(hidden_words) / ids.numel()
    assert abs(share - 0.3) < 4 * (0.3 * 0.7 / n) ** 0.5, (share, n)


@pytest.mark.parametrize("task", ["fill_in", "fill_in_words"])
def test_fill_in_of_a_masked_model_equals_the_full_vocabulary_loss(runs, task):
    run = runs("mlm")
    rate = 0.15 if task == "fill_in" else 0.3
    result = evaluate(run, [task], options={task: {"max_blocks": 2, "rate": rate}}).results[task]
    blocks = heldout_blocks(run, max_blocks=2)
    words = heldout_word_ids(run, max_blocks=2) if task == "fill_in_words" else None
    hidden_at = fill_in_positions(run, blocks, rate, words)
    ids = blocks.masked_fill(hidden_at, run.vocab.mask_id)
    losses, hits = [], []
    for b in range(2):
        for t in hidden_at[b].nonzero().flatten().tolist():
            lp = log_probs(run, plain_batch(ids[b : b + 1], None, causal=False), t)
            losses.append(-float(lp[blocks[b, t]]))
            hits.append(int(lp.argmax()) == int(blocks[b, t]))
    assert result.task == task and result.info["unit"] == ("token" if task == "fill_in" else "word")
    assert result.info["method"] == "masked" and result.info["hidden_tokens"] == len(losses) > 0
    assert result.metrics["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert result.metrics["accuracy"] == pytest.approx(sum(hits) / len(hits))


def test_fill_in_words_does_not_apply_to_a_causal_model(runs):
    assert not evaluate(runs("clm"), ["fill_in_words"]).results["fill_in_words"].applies
    with pytest.raises(NotApplicable, match="whole word"):
        fill_in(runs("clm"), unit="word")
    with pytest.raises(ValueError, match="unit must be one of"):
        fill_in(runs("mlm"), unit="span")
    assert (
        evaluate(runs("t5"), ["fill_in_words"], options={"fill_in_words": {"max_blocks": 2}})
        .results["fill_in_words"]
        .applies
    )


def test_fill_in_positions_are_the_same_for_every_run_and_avoid_special_tokens(runs):
    a, b = runs("clm"), runs("mlm")
    blocks = heldout_blocks(a, max_blocks=4)
    assert torch.equal(fill_in_positions(a, blocks, 0.15), fill_in_positions(b, blocks, 0.15))
    assert not fill_in_positions(a, blocks, 0.5)[blocks >= 256].any()
    assert fill_in_positions(a, blocks, 0.15).float().mean() == pytest.approx(0.15, abs=0.06)


def test_fill_in_of_a_causal_model_scores_candidates_by_the_whole_sequence(runs):
    run = runs("clm")
    result = fill_in(run, max_blocks=2, candidates=4, max_positions=3)
    assert result.info["method"] == "candidates" and result.info["hidden_tokens"] == 3
    blocks = heldout_blocks(run, max_blocks=2)
    hidden_at = fill_in_positions(run, blocks, 0.15)
    hidden_at[:, 0] = False
    rows, cols = hidden_at.nonzero(as_tuple=True)
    logps, hits = [], []
    for b, t in zip(rows[:3].tolist(), cols[:3].tolist()):
        x = blocks[b]
        left = log_probs(run, plain_batch(x[None, :t], None, causal=True), t - 1)
        left[x[t]] = -math.inf
        left[256:] = -math.inf
        candidates = [int(x[t])] + left.topk(3).indices.tolist()
        scores = []
        for c in candidates:
            y = x.clone()
            y[t] = c
            with torch.no_grad():
                lp = torch.log_softmax(
                    run.model(plain_batch(y[None], None, causal=True)).hidden[0] @ run.model.output_weight.T, -1
                )
            scores.append(float(sum(lp[j - 1, y[j]] for j in range(t, len(y)))))
        logps.append(torch.log_softmax(torch.tensor(scores, dtype=torch.float64), 0)[0].item())
        hits.append(scores[0] > max(scores[1:]))
    assert result.metrics["loss"] == pytest.approx(-sum(logps) / 3, rel=1e-4)
    assert result.metrics["accuracy"] == pytest.approx(sum(hits) / 3)


@pytest.mark.parametrize("name", ["t5", "ul2"])
def test_fill_in_of_an_encoder_decoder_reads_the_sentinel_format(runs, name):
    run = runs(name)
    result = fill_in(run, max_blocks=2)
    assert result.info["method"] == "sentinels" and result.info["hidden_tokens"] > 0
    assert result.info["spans_per_input"] == sentinel_budget(run) >= 1
    assert 0 <= result.metrics["accuracy"] <= 1 and result.metrics["loss"] > 0


def test_sentinel_budget_is_what_training_inputs_hold(runs):
    run = runs("t5")  # span corruption at its defaults: round(raw * 0.15 / 3) spans in every input
    raw = run.objective.raw_length(run.config.seq_len)
    counts = {
        int(torch.isin(b.input_ids, torch.tensor(run.vocab.sentinel_ids)).sum(1).max()) for b in heldout_batches(run)
    }
    assert sentinel_budget(run) == max(counts)
    assert sentinel_budget(run) == max(1, round(min(max(round(raw * 0.15), 1), raw - 1) / 3))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fill_in_of_an_encoder_decoder_equals_each_group_of_runs_alone(runs, k):
    """Brute force: each block's hidden runs, ``k`` at a time in order, written out by hand in T5's format."""
    run = runs("t5")
    vocab = run.vocab
    result = fill_in(run, max_blocks=2, spans_per_input=k)
    blocks = heldout_blocks(run, max_blocks=2)[:, : run.model.config.max_seq_len - 1]
    hidden = fill_in_positions(run, heldout_blocks(run, max_blocks=2), 0.15)[:, : blocks.shape[1]]
    losses, hits, inputs = [], [], 0
    for x, m in zip(blocks, hidden):
        spans, t = [], 0
        while t < len(x):
            if m[t]:
                end = t
                while end < len(x) and m[end]:
                    end += 1
                spans.append((t, end))
                t = end
            else:
                t += 1
        for first in range(0, len(spans), k):
            group = spans[first : first + k]
            enc, dec, at, cursor = [], [vocab.pad_id], [], 0
            for i, (a, b) in enumerate(group):
                enc += x[cursor:a].tolist() + [vocab.sentinel_ids[i]]
                dec.append(vocab.sentinel_ids[i])
                for token in x[a:b].tolist():
                    at.append((len(dec) - 1, token))
                    dec.append(token)
                cursor = b
            enc += x[cursor:].tolist() + [vocab.eos_id]
            batch = encoder_decoder_batch(torch.tensor([enc]), torch.tensor([dec]), torch.tensor([dec]))
            for position, token in at:
                lp = log_probs(run, batch, position)
                losses.append(-float(lp[token]))
                hits.append(int(lp.argmax()) == token)
            inputs += 1
    assert result.info["hidden_tokens"] == len(losses) and result.info["encoder_inputs"] == inputs
    assert result.metrics["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4)
    assert result.metrics["accuracy"] == pytest.approx(sum(hits) / len(hits))


def test_split_runs_keeps_each_hidden_position_once():
    m = torch.rand(6, 40, generator=torch.Generator().manual_seed(0)) < 0.3
    for k in (1, 2, 5, 100):
        rows, split = split_runs(m, k)
        total = torch.zeros_like(m, dtype=torch.long).index_add_(0, rows, split.long())
        assert torch.equal(total, m.long())
        starts = split & ~F.pad(split[:, :-1], (1, 0))
        assert int(starts.sum(1).max()) <= k
    with pytest.raises(ValueError, match="spans_per_input must be a positive int, got 0"):
        split_runs(m, 0)


@pytest.mark.parametrize("name", ["clm", "mlm", "t5"])
def test_greedy_continuation_is_the_argmax_one_token_at_a_time(runs, name):
    run = runs(name)
    prompt = heldout_blocks(run, max_blocks=2)[:, :10]
    got = continue_prompts(run, prompt, 4)
    vocab = run.vocab
    for b in range(2):
        context = prompt[b].tolist()
        for k in range(4):
            if run.reads == "causal":
                lp = log_probs(run, plain_batch(torch.tensor([context]), None, causal=True), len(context) - 1)
            elif run.reads == "bidirectional":
                lp = log_probs(
                    run, plain_batch(torch.tensor([context + [vocab.mask_id]]), None, causal=False), len(context)
                )
            else:
                written = context[10:]
                enc = torch.tensor([context[:10] + [vocab.sentinel_ids[0], vocab.eos_id]])
                dec = torch.tensor([[vocab.pad_id, vocab.sentinel_ids[0]] + written])
                lp = log_probs(run, encoder_decoder_batch(enc, dec, dec), dec.shape[1] - 1)
            lp[256:] = -math.inf  # special tokens are never written
            assert int(got[b, k]) == int(lp.argmax())
            context.append(int(lp.argmax()))


def test_generation_measures_and_reference(runs):
    run, reference = runs("mlm"), runs("clm")
    result = generation(run, reference=reference, prompt_tokens=12, length=8, max_prompts=3)
    for key in (
        "greedy_repetition",
        "sampled_repetition",
        "true_repetition",
        "greedy_reference_bits_per_byte",
        "true_reference_bits_per_byte",
    ):
        assert key in result.metrics
    assert len(result.info["examples"]) == 3 and all(len(e["greedy"]) == 8 for e in result.info["examples"])
    again = generation(run, prompt_tokens=12, length=8, max_prompts=3)  # sampled with a fixed seed: reproducible
    assert again.metrics["sampled_repetition"] == result.metrics["sampled_repetition"]
    with pytest.raises(ValueError, match="causal"):
        generation(reference, reference=run)


def test_repetition_rate():
    assert repetition_rate(torch.tensor([[1, 2, 3, 4, 5]]), n=2) == 0.0
    assert repetition_rate(torch.tensor([[7, 7, 7, 7, 7]]), n=2) == pytest.approx(0.75)
    assert repetition_rate(torch.tensor([[1, 2, 1, 2, 1, 2], [1, 2, 3, 4, 5, 6]]), n=2) == pytest.approx(0.3)


def test_linear_probe_separates_separable_classes():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 5, generator=g) * 4
    y = torch.arange(60) % 3
    x = centres[y] + torch.randn(60, 5, generator=g)
    predicted = fit_linear_probe(x[:30], y[:30], x[30:])
    assert (predicted == y[30:]).float().mean() > 0.9


def test_probe_reports_its_references(runs):
    result = probe(runs("clm"))
    info = result.info
    assert info["classes"] >= 2 and info["train_sentences"] > 0 and info["test_sentences"] > 0
    assert (
        0 <= result.metrics["majority_accuracy"] <= 1
        and result.metrics["majority_accuracy"] >= info["chance_accuracy"] - 1e-9
    )


def test_evaluate_marks_what_does_not_apply_and_refuses_unknown_names(runs):
    report = evaluate(runs("clm"), ["pll", "sentence_pairs", "next_token"])
    assert not report.results["pll"].applies and not report.results["sentence_pairs"].applies
    assert "next_token.bits_per_byte" in report.metrics() and "pll" in report.table()
    with pytest.raises(ValueError, match="unknown task.*'nope'.*valid tasks: next_token"):
        evaluate(runs("clm"), ["nope"])
    with pytest.raises(NotApplicable, match="pll.*does not apply"):
        evaluate(runs("clm"), ["pll"], strict=True)


def test_lm_token_losses_equal_cross_entropy_and_reduce_to_lm_loss():
    from lmobjectives.losses import lm_loss, lm_token_losses

    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 5, 8, generator=g), torch.randn(11, 8, generator=g)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, 1] = -100
    out = lm_token_losses(hidden, weight, labels)
    expected = F.cross_entropy((hidden @ weight.T).transpose(1, 2), labels.clamp(min=0), reduction="none")
    torch.testing.assert_close(out.loss, torch.where(labels >= 0, expected, 0.0))
    assert out.mask.sum() == 9 and not out.correct[0, 1]
    torch.testing.assert_close(out.reduce().loss, lm_loss(hidden, weight, labels).loss)
