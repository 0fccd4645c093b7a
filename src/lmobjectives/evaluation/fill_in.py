"""Fill-in: held-out tokens hidden, both contexts visible; how well does the model restore them?

The positions (``unit="token"``, the ``fill_in`` task): each text token of the held-out blocks
(:func:`~.run.heldout_blocks`) with probability ``rate``, drawn once from a fixed seed (the same positions
for every run of the same corpus and tokenizer). ``unit="word"`` (the ``fill_in_words`` task) hides each
whole word of the tokenizer (:func:`~.run.heldout_word_ids`: with the byte tokenizer every byte of a word,
never the spaces between words) with probability ``rate``: what whole-word and span masking train for, and
harder than single tokens, since no piece of a hidden word is left to give it away. Scores are per hidden
token either way. How each kind of model fills them in (:data:`~.run.Reads`):

- ``bidirectional``: every selected position becomes ``[MASK]`` (always ``[MASK]``: no 80/10/10 at test
  time), one forward pass per batch of blocks; the loss and accuracy over the full vocabulary at the masked
  positions (``method="masked"``), what the masked-LM objective itself measures.
- ``encoder_decoder``: T5's format: each run of selected positions becomes one sentinel in the encoder
  input (UL2 runs get their R-denoiser's ``[NLU]`` in front), the decoder spells out each sentinel and its
  tokens; loss and accuracy over the vocabulary at the hidden tokens (``method="sentinels"``). A hidden
  token is predicted from both contexts and, as in T5's decoder, from the hidden tokens before it.
  One encoder input holds at most ``spans_per_input`` runs (default: the most sentinels one input of the
  run's own training batches holds, :func:`sentinel_budget`); a block with more runs is split into
  several inputs, each hiding its share of the runs and showing the others. Without the split, 15 % of
  single hidden tokens make about 16 runs in a 128-token block, while span corruption at its defaults
  trains on exactly 7 per input: sentinels 8 and up would be embeddings the model never trained
  (measured on the ``denoisers`` report's span-corruption run: accuracy 0.075 without the split).
- ``causal``: a left-to-right model has no way to read the right context at the hidden position, so it
  *scores candidates* (``method="candidates"``): for a position ``t``, the true token and the
  ``candidates - 1`` tokens the model finds likeliest from the left context alone are each put at ``t``, and
  each whole block is scored, ``log p(x_<t) + log p(c | x_<t) + log p(x_>t | x_<t, c)``; the model fills in
  the candidate with the highest score. The loss is the cross-entropy of that choice among the candidates
  (not over the vocabulary: it is not comparable with the other methods' loss), the accuracy is whether the
  true token scores highest (ties count as wrong). Each selected position is scored alone, the other
  positions showing their true tokens; ``max_positions`` of them (each costs ``candidates`` forward rows).
  Whole words are not scored this way (a word of ``k`` tokens has ``V^k`` candidates): ``unit="word"`` does
  not apply to a causal model.

How the candidates' scores are computed (``impl``, :data:`IMPLS`; both give the same scores to float rounding):

- ``"reference"``: each candidate's whole block through the model, ``log p(c | x_<t) + log p(x_>t | x_<t, c)``
  summed from the losses at positions ``t - 1 .. T - 2`` (``log p(x_<t)`` is the same for every candidate and
  left out: the choice among the candidates does not change).
- ``"cached"``: the left context runs once per block. Its keys and values (each layer's, positions ``< t``) are
  kept; ``log p(c | x_<t)`` of every candidate at once is the block's own next-token distribution at ``t - 1``;
  only the positions ``t .. T - 2`` run per candidate, many candidates of a position per forward
  (:data:`CANDIDATE_TOKENS` positions), their queries attending to the kept keys and to their own. With causal
  attention nothing before ``t`` depends on the candidate, so this is the same computation without its repeated
  part (and without the reference's ``16 x 256`` whole blocks per forward: a fraction of its peak memory). It
  runs the model's blocks itself (:func:`_stack_forward`), so it applies only to the plain causal stack
  (:func:`cache_unsupported`).
- ``"auto"`` (the default): ``"cached"`` where it applies, else ``"reference"``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._checks import check_choice, check_int, check_positive_int, check_probability
from ..constants import IGNORE_INDEX
from ..losses import lm_logits, lm_token_losses
from ..models import MultiTokenTransformer, Transformer
from ..models.attention import alibi_bias
from ..models.transformer import Block, SelfAttention, apply_rope, rope_cos_sin
from ..objectives.span_corruption import noise_spans_to_inputs_targets
from .result import TaskResult, encoder_decoder_batch, finite, plain_batch
from .run import (
    NotApplicable,
    Run,
    eval_generator,
    heldout_batches,
    heldout_blocks,
    heldout_word_ids,
    token_byte_lengths,
)

__all__ = ["IMPLS", "UNITS", "fill_in", "fill_in_positions", "sentinel_budget"]

UNITS = ("token", "word")
"""What ``fill_in`` hides: single tokens, or whole words."""

CANDIDATE_TOKENS = 8192  # the cached path: candidate positions per forward (bounds its memory; 2048-32768 ran
# about as fast on the demo's model, more than 32768 slower)

IMPLS = ("auto", "cached", "reference")
"""How a causal model's candidates are scored (see the module docstring): ``"cached"`` runs the left context once
per block, ``"reference"`` runs every candidate's whole block, ``"auto"`` is ``"cached"`` where it applies."""


def fill_in_positions(
    run: Run, blocks: torch.Tensor, rate: float, word_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """The hidden positions ``(N, T)`` bool, drawn from a fixed seed (the same positions for the same blocks,
    whatever the run): each text token (not a special one) with probability ``rate``; with ``word_ids``
    ``(N, T)`` (:func:`~.run.heldout_word_ids`), each word with probability ``rate``, all its tokens at once."""
    check_probability(rate, "rate", low_open=True, high_open=True)
    text = ~run.vocab.special_mask()[blocks]  # (N, T)
    if word_ids is None:
        draw = torch.rand(blocks.shape, generator=eval_generator("fill_in", rate))  # (N, T)
        return (draw < rate) & text
    draw = torch.rand(int(word_ids.max()) + 2, generator=eval_generator("fill_in_words", rate))  # (W + 1,)
    return (word_ids >= 0) & (draw[word_ids.clamp(min=0)] < rate) & text


def sentinel_budget(run: Run) -> int:
    """The most sentinels one encoder input of the run's held-out batches holds, corrupted as its training
    corrupts them (:func:`~.run.heldout_batches`): the sentinels the model has learnt to read (at least 1)."""
    sentinels = torch.tensor(run.vocab.sentinel_ids)
    counts = [int(torch.isin(batch.input_ids, sentinels).sum(1).max()) for batch in heldout_batches(run)]
    return max(counts + [1])


def split_runs(hidden_at: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each row's runs of hidden positions into groups of at most ``k`` runs, in order: returns the
    source row of each new row ``(M,)`` and its hidden positions ``(M, T)``; every hidden position lies in
    exactly one new row, and rows without one are left out.

    >>> rows, hidden = split_runs(torch.tensor([[1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 1]]).bool(), 2)
    >>> rows.tolist(), hidden.int().tolist()
    ([0, 0, 1], [[1, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1]])
    """
    check_positive_int(k, "spans_per_input")
    N, T = hidden_at.shape
    starts = hidden_at & ~torch.nn.functional.pad(hidden_at[:, :-1], (1, 0))  # (N, T): first position of a run
    group = torch.where(hidden_at, (starts.cumsum(1) - 1) // k, -1)  # (N, T): the group of each hidden position
    G = max(int(group.max()) + 1, 1)
    split = group[:, None, :] == torch.arange(G)[None, :, None]  # (N, G, T)
    keep = split.any(2).reshape(-1)  # (N * G,)
    return torch.arange(N).repeat_interleave(G)[keep], split.reshape(N * G, T)[keep]


@torch.no_grad()
def fill_in(
    run: Run,
    *,
    rate: float = 0.15,
    max_blocks: int = 32,
    candidates: int = 16,
    max_positions: int = 64,
    batch_size: int = 16,
    spans_per_input: int | None = None,
    unit: str = "token",
    impl: str = "auto",
) -> TaskResult:
    """Fill-in loss and accuracy at ``rate`` of the held-out tokens, or words (see the module docstring);
    ``impl`` (:data:`IMPLS`) says how a causal model's candidates are scored, and changes no number."""
    check_choice(unit, "unit", UNITS)
    check_choice(impl, "impl", IMPLS)
    if unit == "word" and run.reads == "causal":
        raise NotApplicable("a causal model fills in by scoring candidates for one token; a whole word has too many")
    blocks = heldout_blocks(run, max_blocks=max_blocks)  # (N, T)
    words = heldout_word_ids(run, max_blocks=max_blocks) if unit == "word" else None  # (N, T)
    hidden_at = fill_in_positions(run, blocks, rate, words)  # (N, T)
    if run.reads == "causal":
        return _candidates(run, blocks, hidden_at, candidates, max_positions, batch_size, rate, impl)
    n_blocks, info = blocks.shape[0], {}
    if run.reads == "encoder_decoder":
        blocks, hidden_at = _fit_encoder(run, blocks, hidden_at)
        k = sentinel_budget(run) if spans_per_input is None else spans_per_input
        source, hidden_at = split_runs(hidden_at, k)  # (M,), (M, T)
        blocks = blocks[source]  # (M, T)
        info = {"spans_per_input": k, "encoder_inputs": blocks.shape[0]}
    loss = torch.zeros(blocks.shape)
    correct = torch.zeros(blocks.shape, dtype=torch.bool)
    weight = run.model.output_weight
    for first in range(0, blocks.shape[0], batch_size):
        x, m = blocks[first : first + batch_size], hidden_at[first : first + batch_size]
        rows = slice(first, first + x.shape[0])
        if run.reads == "bidirectional":
            if run.vocab.mask_id is None:
                raise ValueError(f"{run.out_dir}: the tokenizer has no [MASK] token")
            hidden = run.forward_hidden(plain_batch(x.masked_fill(m, run.vocab.mask_id), None, causal=False))
            with torch.no_grad():
                out = lm_token_losses(hidden, weight, torch.where(m, x, IGNORE_INDEX).to(run.device))
            loss[rows], correct[rows] = out.loss.float().cpu(), out.correct.cpu()
        else:
            batch, where = _sentinel_batch(run, x, m)
            with torch.no_grad():
                out = lm_token_losses(run.forward_hidden(batch), weight, batch.labels.to(run.device))
            loss[rows] = loss[rows].index_put((where[0], where[1]), out.loss.float().cpu()[where[2], where[3]])
            correct[rows] = correct[rows].index_put((where[0], where[1]), out.correct.cpu()[where[2], where[3]])
    n = int(hidden_at.sum())
    total = float(loss[hidden_at].double().sum())
    size = int(token_byte_lengths(run.tokenizer)[blocks][hidden_at].sum())
    method = "masked" if run.reads == "bidirectional" else "sentinels"
    return TaskResult(
        "fill_in" if unit == "token" else "fill_in_words",
        metrics={
            "accuracy": float(correct[hidden_at].float().mean()) if n else 0.0,
            "loss": finite(total / max(n, 1)),
            "bits_per_byte": finite(total / math.log(2) / max(size, 1)),
        },
        info={
            "method": method,
            "unit": unit,
            "rate": rate,
            "hidden_tokens": n,
            "blocks": n_blocks,
            "block_length": blocks.shape[1],
            **info,
        },
    )


def _fit_encoder(run: Run, blocks: torch.Tensor, hidden_at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks cut so that the encoder input (a sentinel per hidden token at worst, EOS, a paradigm token)
    fits the model."""
    room = run.model.config.max_seq_len - 1 - (run.vocab.nlu_id is not None)
    return blocks[:, :room], hidden_at[:, :room]


def _sentinel_batch(run: Run, x: torch.Tensor, m: torch.Tensor):
    """T5's inputs and targets for hidden positions ``m``; returns the batch and where each hidden token's
    target sits: ``(row, column in x, row, column in the labels)``."""
    vocab = run.vocab
    real = torch.ones_like(m)
    out = noise_spans_to_inputs_targets(x, m, real, vocab.sentinel_ids, eos_id=vocab.eos_id, pad_id=vocab.pad_id)
    encoder, encoder_mask = out.inputs, out.inputs_mask
    if vocab.nlu_id is not None:  # UL2: the R-denoiser's paradigm token in front
        encoder = torch.cat([torch.full((x.shape[0], 1), vocab.nlu_id), encoder], 1)
        encoder_mask = torch.cat([torch.ones(x.shape[0], 1, dtype=torch.bool), encoder_mask], 1)
    targets = out.targets  # (b, Wt): per span its sentinel then its tokens, then EOS
    is_token = out.targets_mask & ~vocab.special_mask()[targets]  # the hidden tokens (sentinels and EOS aside)
    labels = torch.where(out.targets_mask, targets, IGNORE_INDEX)
    decoder = torch.cat([torch.full((x.shape[0], 1), vocab.pad_id), targets[:, :-1]], 1)
    batch = encoder_decoder_batch(encoder, decoder, labels, encoder_mask, out.targets_mask)
    # the k-th hidden token of a row is the k-th non-special target of that row (spans keep their order)
    rows_x, cols_x = m.nonzero(as_tuple=True)
    rows_t, cols_t = is_token.nonzero(as_tuple=True)
    return batch, (rows_x, cols_x, rows_t, cols_t)


def _candidates(
    run: Run,
    blocks: torch.Tensor,
    hidden_at: torch.Tensor,
    k: int,
    max_positions: int,
    batch_size: int,
    rate: float,
    impl: str,
) -> TaskResult:
    """Candidate scoring for a causal model (see the module docstring)."""
    check_int(k, "candidates", low=2)
    hidden_at = hidden_at.clone()
    hidden_at[:, 0] = False  # position 0 has no left context to propose candidates from
    rows, cols = hidden_at.nonzero(as_tuple=True)
    rows, cols = rows[:max_positions], cols[:max_positions]
    P = rows.numel()
    if P == 0:
        raise ValueError("no position to fill in: the held-out blocks are too short or too few")
    special = run.vocab.special_mask()
    # candidates: the true token first, then the likeliest others from the left context
    logits = _left_logits(run, blocks, rows, cols, batch_size)  # (P, V)
    left = torch.log_softmax(logits, dim=-1)  # (P, V): log p(c | x_<t) of every token c
    truth = blocks[rows, cols]  # (P,)
    logits[torch.arange(P), truth] = -math.inf
    logits[:, special] = -math.inf
    cand = torch.cat([truth[:, None], logits.topk(k - 1, dim=-1).indices], 1)  # (P, K)
    scores = candidate_scores(run, blocks, rows, cols, cand, batch_size=batch_size, impl=impl, left=left)  # (P, K)
    logp = torch.log_softmax(scores.double(), dim=-1)[:, 0]  # (P,)
    correct = scores[:, 0] > scores[:, 1:].max(1).values  # (P,) ties count as wrong
    return TaskResult(
        "fill_in",
        metrics={"accuracy": float(correct.float().mean()), "loss": finite(-logp.mean())},
        info={
            "method": "candidates",
            "candidates": k,
            "rate": rate,
            "hidden_tokens": P,
            "blocks": blocks.shape[0],
            "block_length": blocks.shape[1],
            "chance_accuracy": 1 / k,
            "note": "loss over the candidates, not the vocabulary; each position scored alone",
        },
    )


def _left_logits(
    run: Run, blocks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``(P, V)`` on the CPU: the causal model's logits for position ``cols[p]`` of block ``rows[p]`` from its left
    context (the block's own output at ``cols[p] - 1``), ``batch_size`` blocks per forward."""
    hidden = torch.cat(
        [
            run.forward_hidden(plain_batch(blocks[i : i + batch_size], None, causal=True)).cpu()
            for i in range(0, blocks.shape[0], batch_size)
        ]
    )  # (N, T, d)
    return lm_logits(hidden[rows, cols - 1], run.model.output_weight.detach().cpu())  # (P, V)


def candidate_scores(
    run: Run,
    blocks: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    cand: torch.Tensor,
    *,
    batch_size: int = 16,
    impl: str = "auto",
    left: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(P, K)``: for each position ``(rows[p], cols[p])`` of ``blocks`` ``(N, T)`` (``cols >= 1``) and each of its
    candidates ``cand[p]``, ``log p(c | x_<t) + log p(x_>t | x_<t, c)`` under the causal ``run``'s model, float32.
    ``impl``: :data:`IMPLS` (the same scores to float rounding). ``left`` ``(P, V)``: ``log p(· | x_<t)`` at each
    position when the caller has it (the cached path reads the candidates' own term from it)."""
    check_choice(impl, "impl", IMPLS)
    reason = cache_unsupported(run.model)
    if impl == "cached" and reason is not None:
        raise ValueError(f"impl='cached' does not apply to this model: {reason}")
    if impl == "reference" or reason is not None:
        return _reference_scores(run, blocks, rows, cols, cand, batch_size)
    return _cached_scores(run, blocks, rows, cols, cand, batch_size, left)


def _reference_scores(
    run: Run, blocks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, cand: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """:func:`candidate_scores` by running every candidate's whole block, ``batch_size`` positions per forward."""
    weight = run.model.output_weight
    (P, k), T = cand.shape, blocks.shape[1]
    scores = torch.empty(P, k)
    for first in range(0, P, max(1, batch_size)):
        p = torch.arange(first, min(first + batch_size, P))
        ids = blocks[rows[p]][:, None, :].repeat(1, k, 1)  # (p, K, T)
        ids.scatter_(2, cols[p][:, None, None].expand(-1, k, 1), cand[p][:, :, None])
        ids = ids.reshape(-1, T)  # (p*K, T)
        labels = torch.full_like(ids, IGNORE_INDEX)
        after = torch.arange(T)[None] >= cols[p].repeat_interleave(k)[:, None]  # (p*K, T): positions t .. T-1
        labels[:, :-1] = torch.where(after[:, 1:], ids[:, 1:], IGNORE_INDEX)  # the output at j - 1 predicts j >= t
        out = lm_token_losses(run.forward_hidden(plain_batch(ids, None, causal=True)), weight, labels.to(run.device))
        scores[p] = -out.loss.float().cpu().sum(1).reshape(-1, k)  # log p of the block from t on
    return scores


def _cached_scores(
    run: Run,
    blocks: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    cand: torch.Tensor,
    batch_size: int,
    left: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`candidate_scores` from each block's left context, run once (see the module docstring)."""
    model, device = run.model, run.device
    weight = model.output_weight
    (P, k), T = cand.shape, blocks.shape[1]
    if left is None:
        left = torch.log_softmax(_left_logits(run, blocks, rows, cols, batch_size), dim=-1)  # (P, V)
    scores = left.float().gather(1, cand)  # (P, K): log p(c | x_<t)
    cache_row, cache = None, None
    for p in range(P):
        b, t = int(rows[p]), int(cols[p])
        if t == T - 1:  # the last position: nothing after it to score
            continue
        if b != cache_row:  # the block's keys and values, positions 0 .. T - 2 (positions come row by row)
            _, cache = _stack_forward(model, blocks[b : b + 1, : T - 1].to(device))
            cache_row = b
        past = [(key[:, :, :t], value[:, :, :t]) for key, value in cache]  # (1, nh, t, hs) each
        S = T - 1 - t  # positions t .. T - 2 run per candidate
        step = max(1, CANDIDATE_TOKENS // S)  # candidates per forward
        for first in range(0, k, step):
            c = cand[p, first : first + step]  # (k',)
            ids = blocks[b, t : T - 1].repeat(c.numel(), 1)  # (k', S)
            ids[:, 0] = c
            hidden, _ = _stack_forward(model, ids.to(device), past, keep=False)  # (k', S, d)
            labels = blocks[b, t + 1 :].expand(c.numel(), -1)  # (k', S): the output at j predicts j + 1
            out = lm_token_losses(hidden, weight, labels.to(device))
            scores[p, first : first + step] += -out.loss.float().cpu().sum(1)  # log p(x_>t | x_<t, c)
    return scores


def cache_unsupported(model: torch.nn.Module) -> str | None:
    """Why :func:`_stack_forward` cannot stand in for ``model``'s forward, or None: it reproduces the plain
    :class:`~lmobjectives.models.Transformer` stack (also the next-token output of a
    :class:`~lmobjectives.models.MultiTokenTransformer`) in eval mode, and nothing else."""
    if type(model) not in (Transformer, MultiTokenTransformer):
        return f"{type(model).__name__} is not the plain causal transformer stack"
    if model.training:
        return "the model is in training mode (dropout)"
    if any(type(b) is not Block or type(b.attn) is not SelfAttention or b.cross_attn is not None for b in model.blocks):
        return "a block is not the plain self-attention block"
    return None


def _stack_forward(
    model: Transformer,
    ids: torch.Tensor,
    past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    keep: bool = True,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The causal stack of ``model`` (see :func:`cache_unsupported`) on ``ids`` ``(B, S)`` at positions
    ``L .. L + S - 1``, after ``L`` positions whose keys and values per layer are ``past`` (each ``(1, nh, L, hs)``,
    shared by every row): the hidden states after the final norm ``(B, S, d)``, as ``model(batch).hidden`` of the
    whole rows gives them at these positions, and the ``S`` positions' own keys and values per layer
    (``(B, nh, S, hs)`` each, RoPE applied; none with ``keep=False``). The blocks' computation as
    :class:`~lmobjectives.models.Transformer` does it, with the earlier positions' keys in front."""
    config = model.config
    B, S = ids.shape
    L = 0 if past is None else past[0][0].shape[2]
    C, nh = config.d_model, config.n_heads
    positions = torch.arange(L + S, device=ids.device)  # (L + S,)
    allowed = positions[None, :] <= positions[L:, None]  # (S, L + S): causal
    if config.positions == "alibi":
        mask = alibi_bias(positions[None], model.alibi_slopes, rows=slice(L, L + S))  # (1, nh, S, L + S)
        mask = mask.masked_fill(~allowed, float("-inf"))
        rope = None
    else:
        mask, rope = allowed, rope_cos_sin(positions[None, L:], C // nh)  # (S, L + S); (1, 1, S, hs/2) each
    x = model.tok_emb(ids)  # (B, S, d)
    present = []
    for i, block in enumerate(model.blocks):
        q, key, value = block.attn.qkv(block.ln_1(x)).split(C, dim=2)  # (B, S, C) each
        q, key, value = (z.view(B, S, nh, C // nh).transpose(1, 2) for z in (q, key, value))  # (B, nh, S, hs)
        if rope is not None:
            q, key = apply_rope(q, *rope), apply_rope(key, *rope)
        if keep:
            present.append((key, value))
        if past is not None:  # the earlier positions' keys and values in front: (B, nh, L + S, hs)
            key = torch.cat([past[i][0].expand(B, -1, -1, -1), key], dim=2)
            value = torch.cat([past[i][1].expand(B, -1, -1, -1), value], dim=2)
        y = F.scaled_dot_product_attention(q, key, value, attn_mask=mask)  # (B, nh, S, hs)
        x = x + block.attn.proj(y.transpose(1, 2).reshape(B, S, C))
        x = x + block.mlp(block.ln_2(x))
    return model.ln_f(x), present
