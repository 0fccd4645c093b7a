"""Multi-token prediction: predict tokens t+1 ... t+N from tokens <= t (Gloeckle et al. 2024; DeepSeek-V3).

The objective builds the labels, one column per future token; the two head designs live in
:class:`lmobjectives.models.MultiTokenTransformer` and the losses in :mod:`lmobjectives.recipes.step_losses`
(``mtp_step_loss``, the recipe's loss, which picks ``parallel_heads_loss`` or ``sequential_modules_loss``).

Sources: F. Gloeckle, B. Y. Idrissi, B. Rozière, D. Lopez-Paz, G. Synnaeve, "Better & Faster Large Language
Models via Multi-token Prediction", ICML 2024 (arXiv:2404.19737), §2 and Fig. 2 (the memory-efficient
schedule); DeepSeek-AI, "DeepSeek-V3 Technical Report" (arXiv:2412.19437), §2.2 (MTP modules, Eqs. 21-25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .._checks import check_choice, check_like, check_positive_int
from .._option import option
from ..batch import Batch, checked_tokens
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from .clm import documents_from_eos, positions_within_documents

__all__ = [
    "MultiTokenPrediction",
    "head_term_name",
]

HeadDesign = Literal["parallel", "sequential"]


def head_term_name(k: int) -> str:
    """The :class:`StepLoss` term of the head that predicts token ``t + 1 + k``: ``"lm"`` for ``k = 0`` (so the
    trainer's ``accuracy`` stays next-token accuracy), then ``"head2"``, ``"head3"``, ... (``"headK"``
    predicts the token ``K`` positions ahead).

    >>> [head_term_name(k) for k in range(3)]
    ['lm', 'head2', 'head3']
    """
    return "lm" if k == 0 else f"head{k + 1}"


@dataclass(frozen=True)
class MultiTokenPrediction:
    """Multi-token prediction: ``labels[b, t, k]`` is the token at ``t + 1 + k``, for ``k < n_future``.

    The labels get one more axis than every other objective's: ``(B, T, n_future)``, and column ``k``
    is the target of the head that looks ``k + 1`` tokens ahead. A target is kept only when the tokens
    ``t, t+1, ..., t+1+k`` are all real (``attention_mask``, or the trailing run of ``vocab.pad_id``
    as in :class:`~lmobjectives.objectives.CausalLM`, so an EOS that equals the pad id is still
    learned) and belong to one document; else it is ``IGNORE_INDEX``. Past the end of the row and
    across a document boundary there is nothing to predict. Documents come from ``document_ids`` when
    given, else from EOS (which closes its document), else the row is one document.

    Worked example (``pad_id = eos_id = 2``, ``n_future = 2``; two packed documents ``7 8 9 EOS`` and
    ``4 EOS``, then padding)::

        input_ids        [[ 7,  8,  9,    2,    4,    2,    2]]
        labels[..., 0]   [[ 8,  9,  2, -100,    2, -100, -100]]   # t+1
        labels[..., 1]   [[ 9,  2, -100, -100, -100, -100, -100]]   # t+2
        attention_mask   [[ T,  T,  T,    T,    T,    T,    F]]
        document_ids     [[ 0,  0,  0,    0,    1,    1,    2]]   # document_masking=True
        position_ids     [[ 0,  1,  2,    3,    0,    1,    0]]   # document_masking=True

    >>> mtp = MultiTokenPrediction(Vocab(size=10, pad_id=2, eos_id=2), n_future=2)
    >>> mtp(torch.tensor([[7, 8, 9, 2, 4, 2, 2]])).labels[0].T
    tensor([[   8,    9,    2, -100,    2, -100, -100],
            [   9,    2, -100, -100, -100, -100, -100]])

    Column 0 is :class:`~lmobjectives.objectives.CausalLM`'s labels with ``document_masking=True``
    even when this objective's ``document_masking`` is False. **Deviation** (from CLM without document
    masking, and from the papers, which pack without saying what happens at a boundary): an EOS never
    predicts the next document's tokens, because the issue asks that no head predicts across a
    document. ``document_masking`` adds what CLM's adds: no attention across documents and positions
    that restart at each document.

    The other fields configure the model and the loss (they are the run's options, read by the
    recipe): ``head_design="parallel"`` is Gloeckle et al.'s ``n_future`` independent one-block heads on a
    shared trunk, loss ``Σ_k CE_k``, trained with the paper's memory-efficient schedule unless
    ``memory_efficient=False``; ``head_design="sequential"`` is DeepSeek-V3's ``D = n_future - 1`` chained
    MTP modules behind the full model, loss ``CE_main + mtp_weight / D · Σ_k CE_k``. Defaults:
    ``n_future=2`` is DeepSeek-V3's depth 1 and Gloeckle et al.'s best natural-language setting (they
    use 4 on code); ``mtp_weight=0.3`` is DeepSeek-V3's λ for its first 10T tokens (then 0.1).

    A batch with no target at all raises ``ValueError``, and so does ``n_future >= T`` (rows of ``T``
    tokens leave the farthest head no position with a target); rows without one are reported in
    ``has_targets`` (a row with a target for some head has one for the next-token head). No randomness:
    ``generator`` is accepted for a uniform interface.
    """

    vocab: Vocab  # vocabulary (eos_id marks document boundaries, pad_id padding)
    n_future: int = option(
        2, "tokens predicted at each position (t+1 ... t+n_future); 1 is plain next-token prediction"
    )
    head_design: HeadDesign = option(
        "parallel", "'parallel': Gloeckle et al.'s independent heads; 'sequential': DeepSeek-V3's chained modules"
    )
    document_masking: bool = option(False, "also no attention across documents, positions restarting per document")
    mtp_weight: float = option(
        0.3, "sequential heads: lambda, the weight of the mean loss of the extra depths (DeepSeek-V3)"
    )
    memory_efficient: bool = option(
        True, "parallel heads: one head's forward and backward at a time (Gloeckle et al. Fig. 2)"
    )

    name = "mtp"

    def __post_init__(self) -> None:
        check_positive_int(self.n_future, "n_future")
        check_choice(self.head_design, "head_design", ("parallel", "sequential"))
        for flag in ("document_masking", "memory_efficient"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        w = self.mtp_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"mtp_weight must be a finite number > 0, got {w!r}")

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        document_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        input_ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, T), (B, T)
        B, T = input_ids.shape
        if document_ids is not None:
            document_ids = check_like(document_ids, input_ids, "document_ids")  # (B, T)
        elif self.vocab.eos_id is not None:
            document_ids = documents_from_eos(input_ids, self.vocab.eos_id)  # (B, T)
        elif self.document_masking:
            self.vocab.require("eos_id", who="MultiTokenPrediction(document_masking=True) without document_ids")
        if self.n_future >= T:  # the head predicting t + n_future would have no position with a target
            raise ValueError(
                f"MultiTokenPrediction: n_future={self.n_future} needs rows of at least {self.n_future + 1} tokens "
                f"(the farthest head predicts the token {self.n_future} ahead), got input_ids of shape "
                f"{tuple(input_ids.shape)}; use " + (f"n_future <= {T - 1} or " if T > 1 else "") + "longer rows"
            )
        # link[b, t]: t -> t+1 stays inside real tokens of one document
        link = real[:, :-1] & real[:, 1:]  # (B, T-1)
        if document_ids is not None:
            link = link & (document_ids[:, :-1] == document_ids[:, 1:])
        labels = torch.full((B, T, self.n_future), IGNORE_INDEX, dtype=torch.long, device=input_ids.device)
        chain = link  # (B, T-1-k) at step k: the tokens t .. t+1+k are linked
        for k in range(min(self.n_future, T - 1)):  # a loop over the heads, vectorised over batch and time
            labels[:, : T - 1 - k, k] = torch.where(chain, input_ids[:, 1 + k :], IGNORE_INDEX)
            chain = chain[:, :-1] & link[:, k + 1 :]  # (B, T-2-k)
        has_targets = (labels[..., 0] != IGNORE_INDEX).any(-1)  # (B,)
        if not bool(has_targets.any()):  # host sync, as in CausalLM: never a silently all-ignored batch
            raise ValueError(
                f"MultiTokenPrediction: input_ids of shape {tuple(input_ids.shape)} has nothing to predict (no row "
                "holds two consecutive real tokens of one document); refusing to return a batch with no target"
            )
        position_ids = None
        if self.document_masking:
            position_ids = positions_within_documents(document_ids)  # type: ignore[arg-type]
        return Batch(
            input_ids=input_ids.clone(),
            labels=labels,
            attention_mask=real,
            causal=True,
            document_ids=document_ids if self.document_masking else None,
            position_ids=position_ids,
            has_targets=has_targets,
        )
