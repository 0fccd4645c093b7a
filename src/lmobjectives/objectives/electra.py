"""ELECTRA (Clark et al. 2020, "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators").

A small masked-LM **generator** fills the masked positions with tokens sampled from its own
distribution; a **discriminator** sees the result and tells, for every real token, whether it was
replaced. The discriminator learns from every token, not only the 15 % that are masked.

Three pieces, each checkable on its own:

* :class:`ELECTRA`, the objective: ELECTRA's dynamic masking of the input (``pretrain_helpers.mask``
  of the released code), a :class:`~lmobjectives.objectives.mlm.MaskedLM` with exact counts, 85 %
  ``[MASK]`` and 15 % unchanged. Its :class:`~lmobjectives.Batch` is the generator's: ``input_ids``
  masked, ``labels`` the originals at the masked positions.
* :func:`replace_masked`: the discriminator's input and labels from that batch and the generator's
  samples (``_get_fake_data`` of the released code).
* :func:`lmobjectives.recipes.step_losses.electra_loss`, the recipe's loss: generator MLM +
  ``discriminator_weight`` x sigmoid BCE.

The model is :class:`lmobjectives.models.electra.ElectraModel` (registry architecture ``"generator_discriminator"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._checks import check_positive_int, check_probability
from .._option import option
from ..batch import Batch
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from .mlm import MaskedLM

__all__ = ["ELECTRA", "gumbel_max_sample", "replace_masked"]

MASK_FRACTION = 0.85  # ELECTRA's mask(): a masked position gets [MASK] with probability 0.85, else stays as it was


@dataclass(frozen=True)
class ELECTRA:
    """ELECTRA's masking for the generator; the options of the generator and the loss ride along.

    Masking, as ``pretrain_helpers.mask`` of the released code (google-research/electra): each row
    gets exactly ``k = max(1, min(max_predictions, round(n * probability)))`` masked positions
    (``tf.round`` and ``torch.round`` both round halves to even), chosen uniformly among its
    maskable tokens; each masked position becomes ``[MASK]`` with probability 0.85 and keeps its
    token otherwise, never a random token (BERT's 10 % random replacement is gone: the generator
    supplies the replacements). This is :class:`~.mlm.MaskedLM` with ``selection="exact"``,
    ``mask_fraction=0.85``, ``random_fraction=0.0``, whose budget is the formula above. Labels are
    the original ids at the masked positions, ``IGNORE_INDEX`` elsewhere; the discriminator's input
    is rebuilt from them (:func:`replace_masked`), so the batch carries nothing else. Masking is
    dynamic (a new mask per call), drawn only from ``generator``.

    *Deviations* from the released code, each small:

    * ``n`` counts a row's **maskable** tokens (real and not special, as ``MaskedLM``); ELECTRA counts
      every real token, [CLS] and [SEP] included (``reduce_sum(input_mask)``), then never masks
      [CLS], [SEP] or [MASK]. ELECTRA may mask other special tokens ([UNK]); we mask none.
    * the ``k`` positions are **distinct**: ELECTRA draws its ``k`` positions with replacement
      (``tf.random.categorical``), so repeated draws collapse and a row gets up to ``k`` distinct
      masked positions (at ``n = 128``, ``k = 19``: about 1.3 fewer on average), a repeated
      position counting twice in the MLM loss (the paper's notation, ``m_i ~ unif{1, n}`` for
      ``i = 1..k``, draws them independently too). Distinct positions give the exact count per
      row that BERT's data pipeline (``create_pretraining_data.py``) gives.
    * ``max_predictions`` defaults to no cap; ELECTRA's is ``int((p + 0.005) * max_seq_length)``
      (19 at its length 128, where ``round(0.15 n) <= 19`` for every ``n <= 128``: no cap at all).

    ``generator_size`` and ``discriminator_weight`` do not change the batch: the model reads the
    first (``ModelSpec.kwargs``), :func:`lmobjectives.recipes.step_losses.electra_loss` the second. Both are ELECTRA's defaults
    (``generator_hidden_size = 0.25``, ``disc_weight = 50``).

    Seeded example (vocab size 10: pad 0, CLS 1, SEP 2, MASK 3; ordinary ids 4..9;
    ``probability=0.5``, ``generator=torch.Generator().manual_seed(2)``): row 0 has 6 maskable
    tokens, so 3 are masked; row 1 has 3 ([CLS], [SEP] and padding are not maskable), so round(1.5) = 2::

        input_ids      [[   1,    4,    5,    6,    7,    8,    9,    2],
                        [   1,    7,    8,    9,    2,    0,    0,    0]]
        -> input_ids   [[   1,    3,    5,    6,    7,    8,    3,    2],     (row 0: 6 masked, left as it was)
                        [   1,    3,    8,    3,    2,    0,    0,    0]]
        -> labels      [[-100,    4, -100,    6, -100, -100,    9, -100],
                        [-100,    7, -100,    9, -100, -100, -100, -100]]
    """

    vocab: Vocab  # vocabulary: mask_id is required; special ids are never masked
    probability: float = option(
        0.15, "share of each row's maskable tokens masked for the generator (ELECTRA's mask_prob)"
    )
    max_predictions: int | None = option(
        None, "cap on masked tokens per row (ELECTRA's max_predictions_per_seq); None = none"
    )
    generator_size: float = option(
        0.25, "generator width / discriminator width, in (0, 1]; same depth, shared embedding"
    )
    discriminator_weight: float = option(
        50.0, "lambda: loss = generator MLM + lambda * discriminator BCE (ELECTRA: 50)"
    )
    _masking: MaskedLM = field(init=False, repr=False, compare=False)  # the MaskedLM doing the masking

    name = "electra"

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocab):
            raise TypeError(f"ELECTRA: vocab must be a lmobjectives.Vocab, got {type(self.vocab).__name__}")
        self.vocab.require("mask_id", who="ELECTRA")
        object.__setattr__(self, "probability", check_probability(self.probability, "probability", low_open=True))
        check_positive_int(self.max_predictions, "max_predictions", allow_none=True)
        g = check_probability(self.generator_size, "generator_size (ELECTRA: 0.25 to 0.33)", low_open=True)
        object.__setattr__(self, "generator_size", g)
        w = self.discriminator_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise TypeError(f"discriminator_weight must be a finite float > 0, got {w!r}")
        if w <= 0:
            raise ValueError(f"discriminator_weight must be > 0 (ELECTRA: 50), got {w!r}")
        object.__setattr__(self, "discriminator_weight", float(w))
        masking = MaskedLM(
            self.vocab,
            probability=self.probability,
            mask_fraction=MASK_FRACTION,
            random_fraction=0.0,
            selection="exact",
            max_predictions=self.max_predictions,
        )
        object.__setattr__(self, "_masking", masking)

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Mask ``input_ids`` ``(B, T)`` for the generator; ``attention_mask`` ``(B, T)`` marks real tokens
        (default: not trailing padding). A batch with nothing maskable raises ``ValueError``."""
        return self._masking(input_ids, attention_mask=attention_mask, generator=generator)


def gumbel_max_sample(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logits`` ``(M, V)``, from ``softmax(logits)`` by the Gumbel-max trick: ``(M,)`` long.

    ``argmax(logits + g)`` with ``g = -log(-log(u))``, ``u`` float32 uniforms on ``[0, 1)`` from ``generator``
    (None: torch's default generator). ``u = 0`` gives ``g = -inf`` (that entry is never picked, an
    event of probability ``2**-24`` per entry). ELECTRA's ``sample_from_softmax`` adds ``1e-9`` inside
    both logarithms; we do not need to. No gradient flows through the sample.

    >>> gumbel_max_sample(torch.tensor([[0.0, -math.inf, -math.inf], [-math.inf, -math.inf, 5.0]]))
    tensor([0, 2])
    """
    with torch.no_grad():
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)  # (M, V)
        work = torch.promote_types(logits.dtype, torch.float32)  # fp32 at least; float64 stays float64
        gumbel = -torch.log(-torch.log(u.to(work)))  # (M, V)
        return (logits.to(work) + gumbel).argmax(-1)  # (M,)


def replace_masked(batch: Batch, sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's input ``(B, T)`` and its labels ``is_replaced`` ``(B, T)`` bool.

    ``batch`` is the generator's (masked ``input_ids``, ``labels`` = originals at the masked
    positions); ``sampled`` ``(M,)`` holds the generator's token for each masked position in
    row-major order (``labels != IGNORE_INDEX``). Every masked position gets its sample, those that
    kept their token for the generator included (ELECTRA's ``_get_fake_data``: unmask, then scatter
    the samples); the rest is the original input. ``is_replaced`` is True where the discriminator's
    token differs from the original: a sample equal to the original is labelled original.

    Worked example (originals ``1 5 6 7 8 2``; positions 2 and 4 masked, 4 shown as ``[MASK]`` = 3,
    2 left as it was; the generator samples 6 at position 2, the original, and 9 at position 4)::

        input_ids     [[   1,    5,    6,    7,    3,    2]]
        labels        [[-100, -100,    6, -100,    8, -100]]
        sampled       [6, 9]
        -> input      [[   1,    5,    6,    7,    9,    2]]
        -> replaced   [[   F,    F,    F,    F,    T,    F]]
    """
    masked = batch.labels != IGNORE_INDEX  # (B, T)
    flat = masked.flatten().nonzero().squeeze(-1)  # (M,) row-major
    if sampled.shape != flat.shape:
        raise ValueError(
            f"sampled must hold one token per masked position, shape {tuple(flat.shape)}, got {tuple(sampled.shape)}"
        )
    original = torch.where(masked, batch.labels, batch.input_ids)  # (B, T)
    fake = original.flatten().index_put((flat,), sampled.to(original.dtype)).view_as(original)  # (B, T)
    return fake, fake != original
