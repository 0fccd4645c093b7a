"""Permutation language modelling data (XLNet, Yang et al. 2019), as Hugging Face's
``DataCollatorForPermutationLanguageModeling`` builds it: span targets, ``perm_mask``, ``target_mapping``.

XLNet is the historical alternative to masked LM: instead of predicting
corrupted tokens from an uncorrupted context (BERT), it predicts the targets
autoregressively in a random *factorisation order*, so targets also condition
on each other. The data below says which tokens are targets and, through
``perm_mask``, which key each query may see under the sampled order. Training
on it needs XLNet's two-stream attention (a content stream and a query
stream); this package's transformer has one stream, so ``plm`` is a data-only
objective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_positive_int, check_probability
from .._option import option
from ..batch import Batch, checked_tokens
from ..constants import IGNORE_INDEX
from ..vocab import Vocab

__all__ = ["PermutationLM"]


@dataclass(frozen=True)
class PermutationLM:
    """XLNet permutation-LM data: span targets and a random factorisation order as ``perm_mask``.

    Hugging Face's ``DataCollatorForPermutationLanguageModeling`` (``torch_mask_tokens``), vectorised over the batch:
    the data of XLNet's two-stream attention, which the package's one-stream transformer does not train on.

    Contract: ``__call__(input_ids (B, L), *, attention_mask=None, generator=None)``, ``L`` even; padding is
    ``~attention_mask`` (default: the trailing ``pad_id`` run). Per row:

    1. **Targets.** Windows from ``cur = 0``: span length ``s`` uniform on ``1..max_span_length``, window
       ``c = int(s / plm_probability)``, tokens ``[cur + o, cur + o + s)`` (cut at ``L``) with ``o`` uniform on
       ``0..c - s``, then ``cur += c``, until ``cur >= L``. Special (``Vocab.special_ids``) and padding tokens are
       dropped; the rest are the targets: ``mask_id`` in ``input_ids``, their ids in ``labels`` (``IGNORE_INDEX``
       elsewhere). The target rate is ``E[s] / E[c]`` (1/6 with the defaults), up to a row's cut last window.
    2. **Order.** ``sigma``, a uniform permutation of ``0..L/2 - 1``: token ``t`` has rank ``sigma[t]`` in the first
       half, ``L/2 + sigma[t - L/2]`` in the second; ordinary non-targets get rank -1 (they come first).
    3. **perm_mask** ``(B, L, L)`` bool, True (query ``i`` may not see key ``j``) iff ``j`` is a target and
       ``rank[i] <= rank[j]``: a non-target key is visible to every query, a target only to queries ranked after it;
       special and padding queries keep their rank. Among targets, "i sees j" is a strict order (no cycle).
       ``target_mapping`` ``(B, L, L)`` float32 is the identity (labels are position-aligned); ``causal=False``.
    4. ``perm_mask`` is XLNet's query stream; :func:`~lmobjectives.batch.attention_mask_4d` also lets every query see
       itself, which is the content stream.

    Draws, all from ``generator``, in this order (``K = ceil(L / int(1 / plm_probability))`` windows):
    ``span = torch.randint(1, max_span_length + 1, (B, K))``, ``u = torch.rand(B, K, dtype=float64)`` with
    ``o = floor(u * (c - s + 1))``, ``sigma = torch.rand(B, L // 2, dtype=float64).argsort(dim=-1, stable=True)``;
    drawn again while no row has a target. An odd ``L`` or a batch with no ordinary token raises ``ValueError``.

    Worked example (vocab size 10, pad 0, CLS 1, SEP 2, MASK 3; defaults; seed 3). The draws: ``span = [[2, 4]]``,
    ``u = [[0.2867, 0.7729]]``, so the first window (``c = 12``) selects ``[3, 5)`` and the second starts at 12, past
    the row; ``sigma = [[0, 3, 2, 1]]``, so ``rank = [[0, -1, -1, 1, 4, -1, 6, 5]]`` (CLS 0, SEP 6, PAD 5). Target 3
    is hidden from the queries ranked <= 1 (CLS, the ordinary tokens and itself), target 4 from those ranked <= 4
    (also target 3); SEP (6) and PAD (5) see both:

    >>> vocab = Vocab(size=10, pad_id=0, cls_id=1, sep_id=2, mask_id=3)
    >>> b = PermutationLM(vocab)(torch.tensor([[1, 5, 6, 7, 8, 9, 2, 0]]), generator=torch.Generator().manual_seed(3))
    >>> b.input_ids
    tensor([[1, 5, 6, 3, 3, 9, 2, 0]])
    >>> b.labels
    tensor([[-100, -100, -100,    7,    8, -100, -100, -100]])
    >>> b.perm_mask[0].int()
    tensor([[0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 1, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.int32)
    >>> from lmobjectives import attention_mask_4d
    >>> attention_mask_4d(b)[0, 0, 3:5].int()   # content stream: targets 3 and 4 also see themselves
    tensor([[1, 1, 1, 1, 0, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.int32)

    Reference: Yang et al. 2019, "XLNet: Generalized Autoregressive Pretraining for Language Understanding". Where this
    differs from HF and from XLNet's ``data_utils.py``: ``docs/deviations.md``, rows "plm ...".
    """

    vocab: Vocab  # vocabulary: mask_id is required; special ids and padding are never targets
    plm_probability: float = option(1 / 6, "span length / window length (XLNet mask_beta / mask_alpha = 1/6)")
    max_span_length: int = option(5, "span lengths are uniform on 1..max_span_length (XLNet max_gram = 5)")

    name = "plm"

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocab):
            raise TypeError(f"PermutationLM: vocab must be a lmobjectives.Vocab, got {type(self.vocab).__name__}")
        self.vocab.require("mask_id", who="PermutationLM")
        p = check_probability(self.plm_probability, "plm_probability", low_open=True)
        object.__setattr__(self, "plm_probability", p)
        check_positive_int(self.max_span_length, "max_span_length")
        if self.max_span_length / p > 2**53:
            raise ValueError(
                f"PermutationLM: max_span_length / plm_probability must be <= 2**53 (the longest window), got "
                f"max_span_length={self.max_span_length!r}, plm_probability={p!r}"
            )

    # ---------------------------------------------------------------- draws
    def _context_lengths(self, device: torch.device) -> torch.Tensor:
        """``(max_span_length + 1,)`` long: ``int(s / plm_probability)`` for ``s = 0..max_span_length``.

        Python float arithmetic, exactly HF's; a table instead of a tensor division, which CUDA computes
        as a multiplication by the reciprocal (not always the same float).
        """
        table = [int(s / self.plm_probability) for s in range(self.max_span_length + 1)]
        return torch.tensor(table, dtype=torch.long, device=device)

    def _max_spans(self, length: int) -> int:
        """``K``: the most windows a row of ``length`` tokens can use (every window is ``>= int(1 / p)`` long)."""
        return math.ceil(length / int(1 / self.plm_probability))

    def _draw(self, B: int, L: int, generator, device):
        """All random draws of one attempt, in this order (the documented draw protocol)."""
        K = self._max_spans(L)
        span = torch.randint(1, self.max_span_length + 1, (B, K), generator=generator, device=device)  # (B, K)
        offset_u = torch.rand(B, K, generator=generator, device=device, dtype=torch.float64)  # (B, K)
        order_u = torch.rand(B, L // 2, generator=generator, device=device, dtype=torch.float64)  # (B, L/2)
        sigma = order_u.argsort(dim=-1, stable=True)  # (B, L/2) a uniform random permutation per row
        return span, offset_u, sigma

    def _selected(self, span: torch.Tensor, offset_u: torch.Tensor, L: int) -> torch.Tensor:
        """Tokens covered by the spans, ``(B, L)`` bool, before special tokens and padding are dropped."""
        B, K = span.shape
        context = self._context_lengths(span.device)[span]  # (B, K) window lengths
        window = context.cumsum(-1) - context  # (B, K) window starts (cur_len before each draw)
        offset = (offset_u * (context - span + 1)).floor().long()  # (B, K) uniform on 0..c - s
        start = (window + offset).clamp(max=L)  # (B, K); windows starting at or after L select nothing
        end = (window + offset + span).clamp(max=L)  # (B, K) exclusive
        # spans lie in disjoint windows: +1 at each start, -1 at each end, a running sum is 1 inside a span
        edges = torch.zeros(B, L + 1, dtype=torch.long, device=span.device)
        edges.scatter_add_(1, start, torch.ones_like(start)).scatter_add_(1, end, -torch.ones_like(end))
        return edges.cumsum(-1)[:, :L] > 0  # (B, L)

    # ---------------------------------------------------------------- call
    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Build XLNet data from ``input_ids`` ``(B, L)``, ``L`` even; ``attention_mask`` ``(B, L)`` marks real
        tokens (default: not trailing padding)."""
        input_ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, L), (B, L)
        device = input_ids.device
        B, L = input_ids.shape
        if L % 2:
            raise ValueError(
                f"PermutationLM: input_ids must have an even length (the factorisation order permutes the two "
                f"halves together, as XLNet's perm_size = L/2), got length {L} (shape {tuple(input_ids.shape)})"
            )
        special = self.vocab.special_mask(device)[input_ids]  # (B, L)
        ordinary = real & ~special  # (B, L) tokens that may be targets ("non-functional" in XLNet)
        if not bool(ordinary.any()):
            raise ValueError(
                "PermutationLM: the batch has nothing to predict (every token is padding or special); "
                "refusing to return a batch with no target"
            )
        while True:  # a batch whose spans all missed the ordinary tokens is drawn again (see the docstring)
            span, offset_u, sigma = self._draw(B, L, generator, device)
            target = self._selected(span, offset_u, L) & ordinary  # (B, L)
            if bool(target.any()):
                break
        half = L // 2
        rank = torch.cat([sigma, sigma + half], dim=1)  # (B, L) position of each token in the order
        rank = torch.where(ordinary & ~target, -1, rank)  # context tokens come first
        perm_mask = (rank[:, :, None] <= rank[:, None, :]) & target[:, None, :]  # (B, Lq, Lk)
        target_mapping = torch.eye(L, device=device).repeat(B, 1, 1)  # (B, L, L) float32
        return Batch(
            input_ids=torch.where(target, self.vocab.mask_id, input_ids),
            labels=torch.where(target, input_ids, IGNORE_INDEX),
            attention_mask=real,
            causal=False,
            has_targets=target.any(-1),
            perm_mask=perm_mask,
            target_mapping=target_mapping,
        )
