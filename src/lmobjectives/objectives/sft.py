"""Prompt-masked supervised fine-tuning (SFT): causal LM on chat conversations, loss on the answers only.

A conversation is tokenised part by part (:func:`lmobjectives.data.tokenize_conversation`), which gives
every token a *role*: :data:`PROMPT` (system, user and tool messages, the chat template's headers and
separators), :data:`ASSISTANT` (an assistant turn and its end-of-turn token) or :data:`COMPLETION` (the
final assistant turn, or the completion of a prompt/completion pair, and its end-of-turn / EOS token).
Many conversations are packed into each row, best-fit decreasing (:func:`lmobjectives.data.pack_conversations`), with
document ids so that no token attends across conversations and positions restart at each one.
:class:`SupervisedFineTuning` turns a packed batch into next-token labels on the learned tokens only, and
:func:`lmobjectives.recipes.step_losses.sft_step_loss` normalises the loss per token or per conversation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_choice, check_like
from .._option import option
from ..batch import Batch, checked_tokens
from ..constants import IGNORE_INDEX
from ..data.chat_template import ASSISTANT, COMPLETION, PROMPT, TRAIN_ON, learned_mask
from ..vocab import Vocab
from .clm import CausalLM

__all__ = [
    "NORMALIZATIONS",
    "SupervisedFineTuning",
]

NORMALIZATIONS = ("token", "sequence")  # how sft_step_loss averages the per-token losses


# ----------------------------------------------------------------------------- packing


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
    uniform interface. ``normalize`` is read by :func:`lmobjectives.recipes.step_losses.sft_step_loss`, which the trainer calls.
    """

    vocab: Vocab  # vocabulary (pad_id / eos_id only for the uniform token checks)
    train_on: str = option(
        "assistant",
        'tokens learned: "assistant" (every assistant turn + its end-of-turn) | "completion" (final turn only) | "all"',
    )
    normalize: str = option(
        "token",
        'loss normalisation: "token" (mean over the batch\'s target tokens) | "sequence" (mean over conversations)',
    )

    name = "sft"

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocab):
            raise TypeError(
                f"SupervisedFineTuning: vocab must be a lmobjectives.Vocab, got {type(self.vocab).__name__}"
            )
        check_choice(self.train_on, "train_on", TRAIN_ON)
        check_choice(self.normalize, "normalize", NORMALIZATIONS)

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
                "2 final assistant turn), as lmobjectives.data.tokenize_conversation and pack_conversations give them"
            )
        roles = check_like(roles, ids, "roles")  # (B, T)
        if roles.numel() and (int(roles.min()) < PROMPT or int(roles.max()) > COMPLETION):
            raise ValueError(
                f"roles must hold {PROMPT}, {ASSISTANT} or {COMPLETION}, got values in "
                f"[{int(roles.min())}, {int(roles.max())}]"
            )
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
