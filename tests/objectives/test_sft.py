"""SupervisedFineTuning (sft): worked examples, packing (best-fit decreasing, isolation, restarts), labels only on
learned tokens with the end of turn learned when pad == eos, per-token vs per-sequence loss, training on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lmobjectives import Vocab, attention_mask_4d
from lmobjectives.constants import IGNORE_INDEX
from lmobjectives.data.chat_template import (
    ASSISTANT,
    CHAT_TOKENS,
    COMPLETION,
    PROMPT,
    learned_mask,
    tokenize_conversation,
)
from lmobjectives.data.packing import best_fit_decreasing, pack_conversations
from lmobjectives.data.tokenizers import ByteTokenizer
from lmobjectives.models import Transformer, TransformerConfig
from lmobjectives.objectives.sft import SupervisedFineTuning
from lmobjectives.recipes.step_losses import sft_step_loss

N = IGNORE_INDEX
VOCAB = Vocab(size=10, pad_id=2, eos_id=2)  # pad == eos


def worked_example(train_on: str = "assistant"):
    input_ids = torch.tensor([[5, 7, 2, 6, 8, 2, 9, 4, 2, 2]])
    roles = torch.tensor([[0, 1, 1, 0, 2, 2, 0, 2, 2, 0]])
    document_ids = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1, 2]])
    attention_mask = torch.tensor([[True] * 9 + [False]])
    return SupervisedFineTuning(VOCAB, train_on=train_on)(
        input_ids, roles=roles, attention_mask=attention_mask, document_ids=document_ids
    )


# ----------------------------------------------------------------------------- worked examples (the docstrings')


@pytest.mark.parametrize(
    "train_on, labels",
    [
        ("assistant", [7, 2, N, 8, 2, N, 4, 2, N, N]),
        ("completion", [N, N, N, 8, 2, N, 4, 2, N, N]),
        ("all", [7, 2, 6, 8, 2, N, 4, 2, N, N]),
    ],
)
def test_worked_example(train_on, labels):
    batch = worked_example(train_on)
    assert batch.labels.tolist() == [labels]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 0]]
    assert batch.document_ids.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 1, 2]]
    assert batch.attention_mask.tolist() == [[True] * 9 + [False]]
    assert batch.causal and batch.has_targets.tolist() == [True]


def test_pack_worked_example():
    convs = [[10, 11, 2], [20, 21, 22, 23, 24, 2], [30, 2], [40, 41, 42, 2]]
    roles = [[0, 1, 1], [0, 0, 0, 1, 1, 1], [0, 2], [0, 0, 2, 2]]
    packed = pack_conversations(convs, roles, 8, pad_id=0)
    assert packed.input_ids.tolist() == [[20, 21, 22, 23, 24, 2, 30, 2], [40, 41, 42, 2, 10, 11, 2, 0]]
    assert packed.document_ids.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1, 2]]
    assert packed.roles.tolist() == [[0, 0, 0, 1, 1, 1, 0, 2], [0, 0, 2, 2, 0, 1, 1, 0]]
    assert packed.attention_mask.tolist() == [[True] * 8, [True] * 7 + [False]]
    assert packed.rows == [[1, 2], [3, 0]]
    assert best_fit_decreasing([3, 6, 2, 4], 8) == [[1, 2], [3, 0]]


def test_best_fit_picks_the_tightest_row_not_the_first():
    # 7 -> row 0 (room 3); 5 -> row 1 (room 5); 4 -> row 1 (room 1); 1 fits both rows: best fit takes row 1's
    # room of 1 (first fit would take row 0), which leaves row 0's room of 3 for a later item
    assert best_fit_decreasing([7, 5, 4, 1], 10) == [[0], [1, 2, 3]]
    assert best_fit_decreasing([2, 2, 2], 4) == [[0, 1], [2]]  # ties: the lower index first, the earliest row


def test_learned_mask_of_roles():
    roles = torch.tensor([[PROMPT, ASSISTANT, COMPLETION]])
    assert learned_mask(roles, "assistant").tolist() == [[False, True, True]]
    assert learned_mask(roles, "completion").tolist() == [[False, False, True]]
    assert learned_mask(roles, "all", torch.tensor([[True, True, False]])).tolist() == [[True, True, False]]


# ----------------------------------------------------------------------------- packing isolation, restarts, EOS


def _packed_chat(seq_len: int = 64):
    tok = ByteTokenizer(extra_special_tokens=CHAT_TOKENS)
    chats = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        for q, a in [("Hi", "Yo"), ("2+2?", "4"), ("Why?", "Because."), ("Ok", "Sure, fine.")]
    ]
    tokens = [tokenize_conversation(c, tok) for c in chats]
    packed = pack_conversations(
        [t.input_ids for t in tokens], [t.roles for t in tokens], seq_len, pad_id=tok.vocab.pad_id
    )
    return tok, tokens, packed


def test_packing_isolation_no_attention_across_conversations_and_positions_restart():
    tok, tokens, packed = _packed_chat()
    assert packed.input_ids.shape[0] < len(tokens)  # several conversations share a row
    batch = SupervisedFineTuning(tok.vocab)(
        packed.input_ids, roles=packed.roles, attention_mask=packed.attention_mask, document_ids=packed.document_ids
    )
    mask = attention_mask_4d(batch)[:, 0]  # (B, T, T)
    docs, real = packed.document_ids, packed.attention_mask
    same = docs[:, :, None] == docs[:, None, :]
    causal = torch.ones_like(mask[0]).tril()
    both_real = real[:, :, None] & real[:, None, :]
    assert torch.equal(mask & both_real, same & causal & both_real)  # exactly: own conversation, causal
    assert not (mask & ~same & real[:, :, None]).any()  # no real query sees another conversation
    for r, row in enumerate(packed.rows):  # positions restart at each conversation
        start = 0
        for c in row:
            n = len(tokens[c].input_ids)
            assert batch.position_ids[r, start : start + n].tolist() == list(range(n))
            assert batch.input_ids[r, start : start + n].tolist() == tokens[c].input_ids
            start += n
    # every label is the next token of the same conversation, and a learned one
    b, t = (batch.labels != IGNORE_INDEX).nonzero(as_tuple=True)
    assert torch.equal(batch.labels[b, t], batch.input_ids[b, t + 1])
    assert (docs[b, t] == docs[b, t + 1]).all() and (packed.roles[b, t + 1] >= ASSISTANT).all()


def test_end_of_turn_is_learned_when_pad_equals_eos():
    # rows padded with the end-of-turn id itself: every turn's end is still a target, padding never
    eot = 2
    convs = [[5, 7, 8, eot], [6, 9, eot]]
    roles = [[0, 2, 2, 2], [0, 2, 2]]
    packed = pack_conversations(convs, roles, 6, pad_id=eot)  # two rows, each padded with EOS
    assert packed.input_ids.tolist() == [[5, 7, 8, 2, 2, 2], [6, 9, 2, 2, 2, 2]]
    batch = SupervisedFineTuning(VOCAB)(
        packed.input_ids, roles=packed.roles, attention_mask=packed.attention_mask, document_ids=packed.document_ids
    )
    assert batch.labels.tolist() == [[7, 8, 2, N, N, N], [9, 2, N, N, N, N]]
    # without an attention_mask the trailing EOS run is padding except its first token: the same labels
    guessed = SupervisedFineTuning(VOCAB)(packed.input_ids, roles=packed.roles, document_ids=packed.document_ids)
    assert guessed.labels.tolist() == batch.labels.tolist()


# ----------------------------------------------------------------------------- invariants (hypothesis)


@st.composite
def conversations(draw):
    n = draw(st.integers(1, 12))
    row_length = draw(st.integers(2, 16))
    lengths = draw(st.lists(st.integers(1, row_length), min_size=n, max_size=n))
    ids = [draw(st.lists(st.integers(3, 9), min_size=k, max_size=k)) for k in lengths]
    roles = [draw(st.lists(st.integers(0, 2), min_size=k, max_size=k)) for k in lengths]
    return ids, roles, row_length


@settings(max_examples=60, deadline=None)
@given(conversations(), st.sampled_from(["assistant", "completion", "all"]))
def test_packing_and_labels_invariants(data, train_on):
    ids, roles, T = data
    packed = pack_conversations(ids, roles, T, pad_id=0)
    # each conversation lies whole and contiguous in exactly one row, in the row's order
    assert sorted(i for row in packed.rows for i in row) == list(range(len(ids)))
    for r, row in enumerate(packed.rows):
        flat = [t for c in row for t in ids[c]]
        assert len(flat) <= T
        assert packed.input_ids[r, : len(flat)].tolist() == flat
        assert packed.roles[r, : len(flat)].tolist() == [x for c in row for x in roles[c]]
        assert packed.attention_mask[r].tolist() == [True] * len(flat) + [False] * (T - len(flat))
        assert packed.document_ids[r].tolist() == [s for s, c in enumerate(row) for _ in ids[c]] + [len(row)] * (
            T - len(flat)
        )
    fills = sorted(int(m.sum()) for m in packed.attention_mask)
    assert len(fills) < 2 or fills[0] + fills[1] > T  # best fit: no two rows would fit in one
    assert len(packed.rows) >= math.ceil(sum(map(len, ids)) / T)
    try:
        batch = SupervisedFineTuning(VOCAB, train_on=train_on)(
            packed.input_ids, roles=packed.roles, attention_mask=packed.attention_mask, document_ids=packed.document_ids
        )
    except ValueError as e:
        assert "no learned target" in str(e) or "nothing to predict" in str(e)
        return
    # a label exactly where the next token is a learned token of the same conversation
    expected = torch.full_like(packed.input_ids, IGNORE_INDEX)
    learned = learned_mask(packed.roles, train_on, packed.attention_mask)
    same = (packed.document_ids[:, 1:] == packed.document_ids[:, :-1]) & packed.attention_mask[:, 1:]
    keep = same & learned[:, 1:] & packed.attention_mask[:, :-1]
    expected[:, :-1] = torch.where(keep, packed.input_ids[:, 1:], IGNORE_INDEX)
    assert torch.equal(batch.labels, expected)


def test_the_objective_does_not_touch_its_inputs():
    input_ids = torch.tensor([[5, 7, 2, 6, 8, 2]])
    roles = torch.tensor([[0, 1, 1, 0, 2, 2]])
    docs = torch.zeros_like(input_ids)
    copies = [t.clone() for t in (input_ids, roles, docs)]
    batch = SupervisedFineTuning(VOCAB)(input_ids, roles=roles, document_ids=docs)
    assert all(torch.equal(a, b) for a, b in zip((input_ids, roles, docs), copies))
    assert batch.input_ids.data_ptr() != input_ids.data_ptr()


# ----------------------------------------------------------------------------- loss normalisation


def _tiny_model(vocab_size: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(
        TransformerConfig(vocab_size=vocab_size, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=16)
    )


def test_per_token_and_per_sequence_losses_against_a_brute_force():
    # a long answer (4 targets) and a short one (1 target) in row 0, a third conversation (2 targets) in row 1
    input_ids = torch.tensor([[5, 6, 7, 8, 9, 2, 3, 4, 2], [3, 5, 2, 2, 2, 2, 2, 2, 2]])
    roles = torch.tensor([[0, 1, 1, 1, 1, 0, 0, 2, 0], [0, 2, 2, 0, 0, 0, 0, 0, 0]])
    docs = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1, 1]])
    real = torch.tensor([[True] * 9, [True] * 3 + [False] * 6])
    model = _tiny_model(10)
    losses = {}
    for normalize in ("token", "sequence"):
        objective = SupervisedFineTuning(VOCAB, normalize=normalize)
        batch = objective(input_ids, roles=roles, attention_mask=real, document_ids=docs)
        losses[normalize] = sft_step_loss(objective, model, batch)
    logits = model(batch).hidden @ model.output_weight.T  # (B, T, V)
    per = F.cross_entropy(logits.transpose(1, 2), batch.labels.clamp(min=0), reduction="none")  # (B, T)
    b, t = (batch.labels != IGNORE_INDEX).nonzero(as_tuple=True)
    assert [(int(i), int(j)) for i, j in zip(b, t)] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 6), (1, 0), (1, 1)]
    token = per[b, t].mean()
    sequence = (per[0, 0:4].mean() + per[0, 6] + per[1, 0:2].mean()) / 3
    torch.testing.assert_close(losses["token"].total, token)
    torch.testing.assert_close(losses["sequence"].total, sequence)
    assert not torch.isclose(token, sequence)  # unequal answer lengths: the two differ
    for out in losses.values():
        torch.testing.assert_close(out.metrics["token_mean_loss"], token.detach())
        torch.testing.assert_close(out.metrics["sequence_mean_loss"], sequence.detach())
        assert out.metrics["conversations"].item() == 3 and out.terms["lm"].num_tokens.item() == 7


def test_per_sequence_equals_per_token_with_equal_answer_lengths():
    input_ids = torch.tensor([[5, 6, 7, 2, 3, 4, 8, 2]])
    roles = torch.tensor([[0, 2, 2, 2, 0, 2, 2, 2]])
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1]])
    model = _tiny_model(10)
    totals = [
        sft_step_loss(o, model, o(input_ids, roles=roles, document_ids=docs)).total
        for o in (SupervisedFineTuning(VOCAB), SupervisedFineTuning(VOCAB, normalize="sequence"))
    ]
    torch.testing.assert_close(totals[0], totals[1])


# ----------------------------------------------------------------------------- errors


def test_bad_options_and_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"train_on must be one of 'assistant', 'completion', 'all', got 'user'"):
        SupervisedFineTuning(VOCAB, train_on="user")
    with pytest.raises(ValueError, match=r"normalize must be one of 'token', 'sequence', got 'batch'"):
        SupervisedFineTuning(VOCAB, normalize="batch")
    with pytest.raises(TypeError, match="vocab must be a lmobjectives.Vocab"):
        SupervisedFineTuning("vocab")  # type: ignore[arg-type]
    objective = SupervisedFineTuning(VOCAB)
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match=r"needs roles \(B, T\)"):
        objective(ids)
    with pytest.raises(ValueError, match=r"roles must hold 0, 1 or 2, got values in \[0, 3\]"):
        objective(ids, roles=torch.tensor([[0, 3, 1]]))
    with pytest.raises(ValueError, match=r"roles must have the shape of input_ids"):
        objective(ids, roles=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"has no learned target"):
        objective(ids, roles=torch.tensor([[1, 0, 0]]))  # the only learned token is the first: nothing predicts it
    with pytest.raises(ValueError, match="outside"):
        objective(torch.tensor([[5, 60]]), roles=torch.tensor([[0, 1]]))


def test_pack_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"conversation 1 has 5 tokens, more than row_length=4; truncate"):
        pack_conversations([[1], [1, 2, 3, 4, 5]], [[0], [0] * 5], 4, pad_id=0)
    with pytest.raises(ValueError, match=r"conversation 0 has 2 tokens and 1 roles"):
        pack_conversations([[1, 2]], [[0]], 4, pad_id=0)
    with pytest.raises(ValueError, match=r"conversation 0 has no token"):
        pack_conversations([[]], [[]], 4, pad_id=0)
    with pytest.raises(ValueError, match="input_ids is empty"):
        pack_conversations([], [], 4, pad_id=0)
    with pytest.raises(ValueError, match="row_length must be a positive int, got 0"):
        pack_conversations([[1]], [[0]], 0, pad_id=0)


# ----------------------------------------------------------------------------- trains on CPU


def test_trains_on_cpu_the_loss_falls():
    tok, _, packed = _packed_chat(seq_len=40)
    objective = SupervisedFineTuning(tok.vocab)
    batch = objective(
        packed.input_ids, roles=packed.roles, attention_mask=packed.attention_mask, document_ids=packed.document_ids
    )
    torch.manual_seed(0)
    model = Transformer(
        TransformerConfig(vocab_size=tok.vocab.size, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=40)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = sft_step_loss(objective, model, batch).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])  # the answers are learnt by heart
