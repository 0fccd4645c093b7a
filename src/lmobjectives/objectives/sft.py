"""Prompt-masked supervised fine-tuning (SFT): causal LM on chat conversations, loss on the answers only.

A conversation is tokenised part by part (:func:`lmobjectives.sft.tokenize_conversation`), which gives
every token a *role*: :data:`PROMPT` (system, user and tool messages, the chat template's headers and
separators), :data:`ASSISTANT` (an assistant turn and its end-of-turn token) or :data:`COMPLETION` (the
final assistant turn, or the completion of a prompt/completion pair, and its end-of-turn / EOS token).
Many conversations are packed into each row, best-fit decreasing (:func:`pack_conversations`), with
document ids so that no token attends across conversations and positions restart at each one.
:class:`SupervisedFineTuning` turns a packed batch into next-token labels on the learned tokens only, and
:func:`sft_step_loss` normalises the loss per token or per conversation.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_like, int_rows
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from .base import Batch, checked_tokens
from .clm import CausalLM
from .recipe import StepLoss

__all__ = [
    "ASSISTANT",
    "COMPLETION",
    "NORMALIZATIONS",
    "PROMPT",
    "TRAIN_ON",
    "PackedConversations",
    "SupervisedFineTuning",
    "best_fit_decreasing",
    "learned_mask",
    "pack_conversations",
    "sft_step_loss",
]

PROMPT, ASSISTANT, COMPLETION = 0, 1, 2  # token roles: context, an assistant turn, the final assistant turn
TRAIN_ON = ("assistant", "completion", "all")  # which roles are learned (see learned_mask)
NORMALIZATIONS = ("token", "sequence")  # how sft_step_loss averages the per-token losses


def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]


def learned_mask(roles: torch.Tensor, train_on: str, real: torch.Tensor | None = None) -> torch.Tensor:
    """Which tokens the model learns to produce, from their roles: bool, the shape of ``roles``.

    ``train_on="assistant"``: every assistant turn (role :data:`ASSISTANT` or :data:`COMPLETION`);
    ``"completion"``: the final assistant turn / the completion only (:data:`COMPLETION`); ``"all"``:
    every real token (``real``, default all), prompts and template included, as plain CLM on the
    rendered text would.

    >>> learned_mask(torch.tensor([0, 1, 1, 0, 2, 2]), "assistant").int()
    tensor([0, 1, 1, 0, 1, 1], dtype=torch.int32)
    >>> learned_mask(torch.tensor([0, 1, 1, 0, 2, 2]), "completion").int()
    tensor([0, 0, 0, 0, 1, 1], dtype=torch.int32)
    """
    _check_choice(train_on, "train_on", TRAIN_ON)
    if train_on == "assistant":
        return roles >= ASSISTANT
    if train_on == "completion":
        return roles == COMPLETION
    return torch.ones_like(roles, dtype=torch.bool) if real is None else real.clone()


# ----------------------------------------------------------------------------- packing


@dataclass
class PackedConversations:
    """Tokenised conversations packed into rows; a conversation never spans two rows."""

    input_ids: torch.Tensor  # (N, T) long, token ids, each row right-padded with pad_id
    roles: torch.Tensor  # (N, T) long, PROMPT / ASSISTANT / COMPLETION per token (PROMPT at padding)
    document_ids: torch.Tensor  # (N, T) long, slot of the conversation in its row: 0, 1, ...; padding: a fresh id
    attention_mask: torch.Tensor  # (N, T) bool, True at real tokens
    rows: list[list[int]]  # rows[r]: indices of the conversations in row r, in their order along the row


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of at most ``capacity``, best-fit decreasing: items longest first (ties: lower index first), each into
    the open bin it fills most tightly (ties: the earliest opened), or a new bin. ``bins[b]`` lists item indices
    in the order they were placed.

    >>> best_fit_decreasing([3, 6, 2, 4], 8)
    [[1, 2], [3, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (room left, bin), sorted: the first with room >= n is the best fit
    bins: list[list[int]] = []
    for i in order:  # one step per conversation (data preparation), never per token
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (room - n, b))
    return bins


def pack_conversations(
    input_ids: Sequence[Sequence[int]], roles: Sequence[Sequence[int]], row_length: int, *, pad_id: int
) -> PackedConversations:
    """Pack tokenised conversations into rows of ``row_length`` tokens, best-fit decreasing.

    Best-fit decreasing (as TRL's ``packing_strategy="bfd"``) fills rows far better than first-come packing
    (few rows hold only a short conversation) and, unlike cutting a stream into blocks, never splits a
    conversation. Each conversation must fit a row (truncate longer ones first). Within a row, conversations
    take document ids 0, 1, 2, ... in the order they were placed; padding gets the next id (never a
    conversation's), ``attention_mask`` False, role :data:`PROMPT`.

    Worked example (``row_length=8``, ``pad_id=0``; lengths 3, 6, 2, 4; conversation ``c`` holds tokens
    ``10c, 10c+1, ...`` and ends in EOS = 2)::

        conversations   [10 11 2]  [20 21 22 23 24 2]  [30 2]  [40 41 42 2]
        best fit        6 -> row 0 (room 2); 4 -> row 1 (room 4); 3 -> row 1 (room 1); 2 -> row 0 (room 0)
        input_ids       [[20, 21, 22, 23, 24,  2, 30,  2],
                         [40, 41, 42,  2, 10, 11,  2,  0]]
        document_ids    [[ 0,  0,  0,  0,  0,  0,  1,  1],
                         [ 0,  0,  0,  0,  1,  1,  1,  2]]
        rows            [[1, 2], [3, 0]]

    >>> convs = [[10, 11, 2], [20, 21, 22, 23, 24, 2], [30, 2], [40, 41, 42, 2]]
    >>> packed = pack_conversations(convs, [[0] * len(c) for c in convs], 8, pad_id=0)
    >>> packed.input_ids
    tensor([[20, 21, 22, 23, 24,  2, 30,  2],
            [40, 41, 42,  2, 10, 11,  2,  0]])
    """
    if isinstance(row_length, bool) or not isinstance(row_length, int) or row_length <= 0:
        raise ValueError(f"pack_conversations: row_length must be a positive int, got {row_length!r}")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise ValueError(f"pack_conversations: pad_id must be a non-negative int, got {pad_id!r}")
    tokens, lengths = int_rows(input_ids, "pack_conversations: input_ids")  # (n,), (C,)
    role_values, role_lengths = int_rows(roles, "pack_conversations: roles")  # (n,), (C,)
    C = lengths.numel()
    if C == 0:
        raise ValueError("pack_conversations: input_ids is empty; need at least one conversation")
    if not torch.equal(lengths, role_lengths):
        bad = int((lengths != role_lengths).nonzero()[0]) if role_lengths.numel() == C else None
        raise ValueError(
            "pack_conversations: roles must have one entry per token of each conversation; "
            + (f"conversation {bad} has {int(lengths[bad])} tokens and {int(role_lengths[bad])} roles"
               if bad is not None else f"got {C} conversations and {role_lengths.numel()} role lists")
        )  # fmt: skip
    if int(lengths.min()) == 0:
        raise ValueError(f"pack_conversations: conversation {int((lengths == 0).nonzero()[0])} has no token")
    if int(lengths.max()) > row_length:
        i = int(lengths.argmax())
        raise ValueError(
            f"pack_conversations: conversation {i} has {int(lengths[i])} tokens, more than row_length={row_length}; "
            "truncate conversations to the row length before packing"
        )
    rows = best_fit_decreasing(lengths.tolist(), row_length)
    N = len(rows)
    placed = torch.tensor([i for row in rows for i in row], dtype=torch.long)  # (C,) conversations, row by row
    row_of = torch.repeat_interleave(torch.arange(N), torch.tensor([len(r) for r in rows]))  # (C,) in placed order
    placed_lengths = lengths[placed]  # (C,)
    starts = placed_lengths.cumsum(0) - placed_lengths  # (C,) start of each conversation if the rows were one stream
    first_of_row = torch.searchsorted(row_of, row_of)  # (C,) placed index of the first conversation of its row
    offset, row, doc = (torch.empty(C, dtype=torch.long) for _ in range(3))  # (C,) each, by conversation index
    offset[placed] = starts - starts[first_of_row]  # first column of each conversation in its row
    row[placed] = row_of
    doc[placed] = torch.arange(C) - first_of_row  # slot within its row: 0, 1, ...

    conv_of_token = torch.repeat_interleave(torch.arange(C), lengths)  # (n,)
    first = lengths.cumsum(0) - lengths  # (C,) index of each conversation's first token in `tokens`
    column = offset[conv_of_token] + torch.arange(tokens.numel()) - first[conv_of_token]  # (n,)
    flat_index = row[conv_of_token] * row_length + column  # (n,)

    slots_per_row = torch.bincount(row_of, minlength=N)  # (N,) padding takes the next document id
    out_ids = torch.full((N * row_length,), pad_id, dtype=torch.long)
    out_roles = torch.full((N * row_length,), PROMPT, dtype=torch.long)
    out_docs = slots_per_row.repeat_interleave(row_length)  # (N*T,)
    real = torch.zeros(N * row_length, dtype=torch.bool)
    out_ids[flat_index] = tokens
    out_roles[flat_index] = role_values
    out_docs[flat_index] = doc[conv_of_token]
    real[flat_index] = True
    shape = (N, row_length)
    return PackedConversations(
        input_ids=out_ids.view(shape),
        roles=out_roles.view(shape),
        document_ids=out_docs.view(shape),
        attention_mask=real.view(shape),
        rows=rows,
    )


# ----------------------------------------------------------------------------- the objective


@dataclass(frozen=True)
class SupervisedFineTuning:
    """Prompt-masked SFT on packed conversations: next-token prediction, loss on the learned tokens only.

    Labels are :class:`CausalLM`'s with ``document_masking=True`` (the one shift of the library: ``labels[t]
    = input_ids[t + 1]``, no target across conversations or into padding, positions restarting at each
    conversation), kept only where the *target* token ``t + 1`` is learned (:func:`learned_mask` of its
    role and ``train_on``). So the model is trained to write each assistant turn and its end-of-turn /
    EOS token from everything before it in the same conversation, never to predict the prompt.

    The end-of-turn token is a label even when ``pad_id == eos_id``: padding is read from
    ``attention_mask`` (the packed rows give it), never from the pad id, and the token after a
    conversation's last one is never its target (another conversation or padding).

    Worked example (``pad_id = eos_id = 2``; roles 0 = prompt, 1 = assistant turn, 2 = final assistant
    turn; a two-turn conversation ``5 | 7 EOS | 6 | 8 EOS`` and a one-turn one ``9 | 4 EOS`` in one row,
    then one padding token)::

        input_ids        [[5, 7, 2, 6, 8, 2,    9, 4, 2,    2]]
        roles            [[0, 1, 1, 0, 2, 2,    0, 2, 2,    0]]
        document_ids     [[0, 0, 0, 0, 0, 0,    1, 1, 1,    2]]
        attention_mask   [[T, T, T, T, T, T,    T, T, T,    F]]
        labels           [[7, 2, -100, 8, 2, -100, 4, 2, -100, -100]]          # train_on="assistant"
        labels           [[-100, -100, -100, 8, 2, -100, 4, 2, -100, -100]]    # train_on="completion"
        labels           [[7, 2, 6, 8, 2, -100, 4, 2, -100, -100]]             # train_on="all"
        position_ids     [[0, 1, 2, 3, 4, 5,    0, 1, 2,    0]]

    ``document_ids=None`` makes each row one conversation. A batch with no learned target raises
    ``ValueError``; ``has_targets`` flags rows without one. No randomness: ``generator`` is accepted for a
    uniform interface. ``normalize`` is read by :func:`sft_step_loss`, which the trainer calls.
    """

    vocab: Vocab  # vocabulary (pad_id / eos_id only for the uniform token checks)
    train_on: str = "assistant"  # tokens learned: "assistant" (every assistant turn + its end-of-turn) | "completion" (final turn only) | "all"
    normalize: str = "token"  # loss normalisation: "token" (mean over the batch's target tokens) | "sequence" (mean over conversations)

    name = "sft"

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocab):
            raise TypeError(f"SupervisedFineTuning: vocab must be a lmobjectives.Vocab, got {type(self.vocab).__name__}")
        _check_choice(self.train_on, "train_on", TRAIN_ON)
        _check_choice(self.normalize, "normalize", NORMALIZATIONS)

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        roles: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, T), (B, T)
        if roles is None:
            raise ValueError(
                "SupervisedFineTuning needs roles (B, T): the role of every token (0 prompt, 1 assistant turn, "
                "2 final assistant turn), as lmobjectives.sft.tokenize_conversation and pack_conversations give them"
            )
        roles = check_like(roles, ids, "roles")  # (B, T)
        if roles.numel() and (int(roles.min()) < PROMPT or int(roles.max()) > COMPLETION):
            raise ValueError(f"roles must hold {PROMPT}, {ASSISTANT} or {COMPLETION}, got values in "
                             f"[{int(roles.min())}, {int(roles.max())}]")  # fmt: skip
        if document_ids is None:
            document_ids = torch.zeros_like(ids)  # (B, T) one conversation per row
        clm = CausalLM(self.vocab, document_masking=True)(ids, attention_mask=real, document_ids=document_ids)
        learned = learned_mask(roles, self.train_on, real)  # (B, T) the tokens the model learns to write
        labels = clm.labels.clone()  # (B, T) already shifted (CausalLM is the one place that shifts)
        labels[:, :-1].masked_fill_(~learned[:, 1:], IGNORE_INDEX)  # keep a target only where it is learned
        has_targets = (labels != IGNORE_INDEX).any(-1)  # (B,)
        if not bool(has_targets.any()):  # host sync, as in CausalLM: never a silently all-ignored batch
            raise ValueError(
                f"SupervisedFineTuning(train_on={self.train_on!r}): input_ids of shape {tuple(ids.shape)} has no "
                "learned target (no learned token follows another token of its conversation); refusing to return a "
                "batch with no target"
            )
        return Batch(
            input_ids=clm.input_ids,
            labels=labels,
            attention_mask=clm.attention_mask,
            causal=True,
            document_ids=clm.document_ids,
            position_ids=clm.position_ids,
            has_targets=has_targets,
        )


def sft_step_loss(objective: Any, model: torch.nn.Module, batch: Batch) -> StepLoss:
    """The SFT loss of one batch, normalised as ``objective.normalize`` says.

    - ``"token"`` (default): the mean cross-entropy over every target token of the batch, as
      :func:`~lmobjectives.objectives.recipe.lm_step_loss`. A conversation weighs as much as its number of
      answer tokens: long answers dominate the gradient.
    - ``"sequence"``: the mean over the batch's conversations (``document_ids`` within each row) of each
      conversation's mean token loss. Every conversation weighs the same, so a one-line answer counts as
      much as a page; each token of a short answer weighs more than one of a long answer. With equal answer
      lengths the two are equal.

    Both values are reported (``token_mean_loss``, ``sequence_mean_loss``) with the number of conversations
    that had a target (``conversations``); the ``lm`` term, and so the total, is the chosen one.
    """
    from ..losses import LossOutput  # lazy: the loss pulls in the fused kernels
    from ..ops import linear_cross_entropy_with_stats

    out = model(batch)
    labels = batch.labels  # (B, T)
    T = labels.shape[1]
    keep = (labels != IGNORE_INDEX).nonzero(as_tuple=True)  # ((M,), (M,)) the target positions
    stats = linear_cross_entropy_with_stats(out.hidden[keep], model.output_weight, labels[keep], reduction="none")
    per_token = stats.loss  # (M,) differentiable
    docs = batch.document_ids if batch.document_ids is not None else torch.zeros_like(labels)  # (B, T)
    conversation = keep[0] * (T + 1) + docs[keep]  # (M,) one key per (row, conversation); doc ids are < T + 1
    _, which, sizes = torch.unique(conversation, return_inverse=True, return_counts=True)  # (M,), (C,)
    n_conversations = sizes.numel()
    weights = 1.0 / (sizes[which].to(per_token.dtype) * max(n_conversations, 1))  # (M,) sums to 1 over targets
    count = torch.tensor(per_token.numel(), device=labels.device)
    token_mean = per_token.sum() / count.clamp(min=1)
    sequence_mean = (per_token * weights).sum()
    loss = sequence_mean if objective.normalize == "sequence" else token_mean
    term = LossOutput(loss=loss, num_tokens=count, num_correct=stats.correct.sum())
    metrics = {
        "token_mean_loss": token_mean.detach(),
        "sequence_mean_loss": sequence_mean.detach(),
        "conversations": torch.tensor(float(n_conversations)),
    }
    return StepLoss(total=loss, terms={"lm": term}, metrics=metrics)
