"""UL2's mixture of denoisers (Tay et al. 2022, "UL2: Unifying Language Learning Paradigms").

Each example is corrupted by one denoiser drawn from a mixture, and a paradigm token names the
denoiser's family in front of the input: T5 span corruption with short spans and a low rate
(**R**, ``[NLU]``), with long spans or a high rate (**X**, ``[NLG]``), and a prefix LM (**S**,
``[S2S]``). The span denoisers are :func:`~.span_corruption.random_spans_noise_mask` with one
density and span length per row and :func:`~.span_corruption.noise_spans_to_inputs_targets`; the
decoder-only layout is :func:`~.prefix_lm.prefix_lm_batch`. Everything is vectorised over the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._checks import check_choice, check_finite_float, check_int, check_probability
from .._option import option
from ..batch import Batch, checked_tokens
from ..constants import IGNORE_INDEX, PARADIGM_TOKENS
from ..vocab import Vocab
from .prefix_lm import prefix_lm_batch
from .span_corruption import (
    LAYOUTS,
    noise_spans_to_inputs_targets,
    random_spans_noise_mask,
    raw_length_for_inputs,
    raw_length_for_total,
    span_corruption_lengths,
)

__all__ = ["UL2"]

_EXTREME_SPAN = 12.0  # UL2: a span denoiser is eXtreme with spans of >= 12 tokens ...
_EXTREME_DENSITY = 0.3  # ... or a corruption rate of >= 30 %; otherwise it is Regular
_RATES_TOLERANCE = 1e-6  # how far from 1 the rates may sum


def _floats(value: object, name: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of floats, got {value!r}")
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise TypeError(f"{name}[{i}] must be a finite float, got {v!r} (in {name}={value!r})")
    return tuple(float(v) for v in value)


@dataclass
class _Tables:
    """Per-task lookup tables on one device (task ``d``: span denoiser ``d``, or S as the last one)."""

    cum_rates: torch.Tensor  # (D,) float64, cumulative rates normalised to end at exactly 1
    density: torch.Tensor  # (D,) float64, r of each task (S: a placeholder, never used)
    mean_span: torch.Tensor  # (D,) float64, μ of each task (S: a placeholder, never used)
    paradigm: torch.Tensor  # (D,) long, paradigm token id of each task (pad_id for an unused task)
    sentinels: torch.Tensor  # (K,) long, Vocab.sentinel_ids


@dataclass(frozen=True)
class _Widths:
    """Widths of the pieces for rows of ``T`` raw tokens (the maxima over the denoisers in use)."""

    inputs: int  # corrupted inputs, EOS included, paradigm token excluded
    targets: int  # targets, EOS included
    row: int  # layout "decoder": paradigm + inputs + targets of the longest row


@dataclass(frozen=True)
class UL2:
    """UL2's mixture of denoisers: one denoiser per example, named by a paradigm token in front of its input.

    Each row draws one task with probability ``rates[k]``: the span-corruption denoisers
    ``(mean_noise_span_lengths[k], noise_densities[k])`` in order, then, with ``use_prefix_lm_task``, the S-denoiser
    (prefix LM) last. A span denoiser is **X** (``[NLG]``, ``Vocab.nlg_id``) when its spans are >= 12 tokens or its
    rate >= 30 %, else **R** (``[NLU]``, ``Vocab.nlu_id``); S gets ``[S2S]`` (``Vocab.s2s_id``). Defaults: the paper's
    six span denoisers and S; rates S 20 %, R 40 %, X 40 %, split equally within each family.

    Contract, per row of ``n >= 2`` real tokens (``attention_mask``, else those before the trailing ``pad_id`` run; a
    packed block is one example; padding may be anywhere in the row, and every denoiser works on the real tokens in
    order, so a hole in the mask never splits a span):

    * span denoiser (μ, r): T5 span corruption, ``noise = clip(round(n r), 1, n - 1)`` tokens in
      ``max(1, round(noise / μ))`` spans; inputs: the kept tokens with one sentinel per span, then EOS; targets: each
      span's sentinel and tokens, then EOS. S: a split ``P`` uniform on ``[1, n - 1]``; inputs: the first ``P``
      tokens, then EOS; targets: the rest, then EOS.
    * ``layout="encoder_decoder"``: ``input_ids`` = paradigm + inputs (``causal=False``), ``labels`` = targets
      (``IGNORE_INDEX`` on padding), ``decoder_input_ids`` = labels shifted right after ``pad_id``,
      ``decoder_attention_mask`` at the real targets. ``layout="decoder"``: one causal row paradigm + inputs + targets,
      paradigm and inputs the bidirectional ``prefix_mask``; the inputs' EOS predicts the first target.
    * Widths are static: the widest row that a denoiser with a nonzero rate makes from ``T = input_ids.shape[1]``
      tokens (:meth:`widths`; :meth:`raw_length` inverts them for a model input of ``seq_len``), never the draws'.
    * Draws from ``generator``, in order: one float64 uniform per row for its task, one per row for the S split (S in
      use), then :func:`random_spans_noise_mask`'s (a span denoiser in use).
    * ``ValueError`` / ``TypeError`` naming the argument: a paradigm token of a denoiser in use missing from the vocab;
      ``rates`` negative, of the wrong count or not summing to 1; densities outside (0, 1); span lengths below 1; a
      row too short for a denoiser in use; fewer ``Vocab.sentinel_ids`` than its spans; a sentinel in the input.

    Worked example (default mixture, seed 28; rows 0 and 1 have 10 real tokens, row 2 has 8). Row 0 draws R (3, 0.15):
    2 noise tokens in 1 span, ``18 19`` -> ``99``; row 1 draws X (3, 0.5): 5 noise tokens in 2 spans, ``22 23`` ->
    ``99`` and ``27 28 29`` -> ``98``; row 2 draws S with ``P = 4``. Widths for ``T = 10``: encoder 11, decoder 10;
    decoder layout 17 (X (3, 0.5): 1 + 8 + 8).

    >>> v = Vocab(size=100, pad_id=0, eos_id=1, sentinel_ids=(99, 98, 97), nlu_id=2, nlg_id=3, s2s_id=4)
    >>> x = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29],
    ...                   [30, 31, 32, 33, 34, 35, 36, 37, 0, 0]])
    >>> b = UL2(v)(x, generator=torch.Generator().manual_seed(28))
    >>> b.input_ids
    tensor([[ 2, 10, 11, 12, 13, 14, 15, 16, 17, 99,  1],
            [ 3, 20, 21, 99, 24, 25, 26, 98,  1,  0,  0],
            [ 4, 30, 31, 32, 33,  1,  0,  0,  0,  0,  0]])
    >>> b.labels
    tensor([[  99,   18,   19,    1, -100, -100, -100, -100, -100, -100],
            [  99,   22,   23,   98,   27,   28,   29,    1, -100, -100],
            [  34,   35,   36,   37,    1, -100, -100, -100, -100, -100]])
    >>> b.decoder_input_ids[1].tolist(), b.attention_mask.sum(1).tolist()
    ([0, 99, 22, 23, 98, 27, 28, 29, 1, 0], [11, 9, 6])
    >>> d = UL2(v, layout="decoder")(x, generator=torch.Generator().manual_seed(28))
    >>> d.input_ids
    tensor([[ 2, 10, 11, 12, 13, 14, 15, 16, 17, 99,  1, 99, 18, 19,  1,  0,  0],
            [ 3, 20, 21, 99, 24, 25, 26, 98,  1, 99, 22, 23, 98, 27, 28, 29,  1],
            [ 4, 30, 31, 32, 33,  1, 34, 35, 36, 37,  1,  0,  0,  0,  0,  0,  0]])
    >>> d.labels[2].tolist()[:11], d.prefix_mask.sum(1).tolist(), d.attention_mask.sum(1).tolist()
    ([-100, -100, -100, -100, -100, 34, 35, 36, 37, 1, -100], [11, 9, 6], [15, 17, 11])

    Reference: Tay et al. 2022, "UL2: Unifying Language Learning Paradigms", and its ``ul2_objective`` (T5's
    ``preprocessors.py``). Where this differs from them: ``docs/deviations.md``, rows "ul2 ...".
    """

    vocab: Vocab  # vocabulary: eos_id, pad_id, sentinel_ids and the paradigm ids nlu_id/nlg_id/s2s_id in use
    mean_noise_span_lengths: tuple[float, ...] = option(
        (3.0, 8.0, 3.0, 8.0, 64.0, 64.0), "span length μ per span denoiser"
    )
    noise_densities: tuple[float, ...] = option(
        (0.15, 0.15, 0.5, 0.5, 0.15, 0.5), "corruption rate r per span denoiser"
    )
    use_prefix_lm_task: bool = option(True, "add the S-denoiser (prefix LM, [S2S]) as the last task")
    rates: tuple[float, ...] = option((0.2, 0.2, 0.1, 0.1, 0.1, 0.1, 0.2), "probability of each task, S last; sum 1")
    layout: str = option("encoder_decoder", '"encoder_decoder" (UL2) or "decoder" (one row, prefix-LM attention)')
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # per-device lookup tables

    name = "ul2"

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocab):
            raise TypeError(f"UL2: vocab must be a lmobjectives.Vocab, got {type(self.vocab).__name__}")
        self.vocab.require("eos_id", "pad_id", who="UL2")
        mus = _floats(self.mean_noise_span_lengths, "mean_noise_span_lengths")
        densities = _floats(self.noise_densities, "noise_densities")
        if len(mus) != len(densities):
            raise ValueError(
                f"mean_noise_span_lengths has {len(mus)} entries and noise_densities {len(densities)}; give one "
                f"(mean span, density) pair per span denoiser, got {mus!r} and {densities!r}"
            )
        for i, mu in enumerate(mus):
            check_finite_float(mu, f"mean_noise_span_lengths[{i}]", low=1)  # a span holds a token
        for i, r in enumerate(densities):
            check_probability(r, f"noise_densities[{i}]", low_open=True, high_open=True)
        if not isinstance(self.use_prefix_lm_task, bool):
            raise TypeError(f"use_prefix_lm_task must be a bool, got {self.use_prefix_lm_task!r}")
        rates = _floats(self.rates, "rates")
        tasks = len(mus) + int(self.use_prefix_lm_task)
        if tasks == 0:
            raise ValueError("UL2 needs at least one denoiser: noise_densities is empty and use_prefix_lm_task=False")
        if len(rates) != tasks:
            what = f"{len(mus)} span denoiser(s)" + (" and the S-denoiser" if self.use_prefix_lm_task else "")
            raise ValueError(f"rates must have {tasks} entries, one per task ({what}), got {len(rates)}: {rates!r}")
        for i, r in enumerate(rates):
            check_finite_float(r, f"rates[{i}]", low=0)
        if abs(sum(rates) - 1) > _RATES_TOLERANCE:
            raise ValueError(f"rates must sum to 1, got {rates!r} (sum {sum(rates)!r})")
        check_choice(self.layout, "layout", LAYOUTS)
        object.__setattr__(self, "mean_noise_span_lengths", mus)
        object.__setattr__(self, "noise_densities", densities)
        object.__setattr__(self, "rates", rates)
        needed = {self._paradigm_field(k) for k in range(tasks) if rates[k] > 0}
        missing = [f for f in PARADIGM_TOKENS if f in needed and getattr(self.vocab, f) is None]
        if missing:
            names = ", ".join(f"{PARADIGM_TOKENS[f]} (Vocab.{f})" for f in missing)
            raise ValueError(
                f"UL2 needs the paradigm token(s) {names} for the denoisers it draws, but this vocab has None; "
                "reserve them in the tokenizer (constants.PARADIGM_TOKENS) or give those denoisers rate 0"
            )
        if self._span_tasks() and not self.vocab.sentinel_ids:
            raise ValueError(
                "UL2's span denoisers need Vocab.sentinel_ids (one per noise span); this vocab has none "
                "(reserve <extra_id_0>, <extra_id_1>, ... in the tokenizer)"
            )

    # ----------------------------------------------------------------------- the tasks
    def _paradigm_field(self, task: int) -> str:
        """The Vocab field of task ``task``'s paradigm token."""
        if task == len(self.noise_densities):
            return "s2s_id"
        extreme = self.mean_noise_span_lengths[task] >= _EXTREME_SPAN or self.noise_densities[task] >= _EXTREME_DENSITY
        return "nlg_id" if extreme else "nlu_id"

    def _span_tasks(self) -> list[int]:
        """Indices of the span denoisers with a nonzero rate."""
        return [k for k in range(len(self.noise_densities)) if self.rates[k] > 0]

    @property
    def _s_on(self) -> bool:
        return self.use_prefix_lm_task and self.rates[-1] > 0

    def _describe(self, task: int) -> str:
        return (
            f"denoiser {task} ({PARADIGM_TOKENS[self._paradigm_field(task)]} mean_noise_span_length="
            f"{self.mean_noise_span_lengths[task]!r}, noise_density={self.noise_densities[task]!r})"
        )

    # ----------------------------------------------------------------------- lengths
    def _widths(self, T: int) -> _Widths:
        """Widths for rows of ``T`` raw tokens; raises if a denoiser in use cannot corrupt ``T`` tokens or needs
        more sentinels than the vocab has."""
        pieces = []  # (inputs, targets) of a full row, per span denoiser in use
        for k in self._span_tasks():
            try:
                inputs, targets = span_corruption_lengths(T, self.noise_densities[k], self.mean_noise_span_lengths[k])
            except ValueError as e:
                raise ValueError(f"UL2: rows of {T} raw tokens are too short for {self._describe(k)}: {e}") from None
            spans = (inputs + targets - T - 2) // 2
            if spans > len(self.vocab.sentinel_ids):
                raise ValueError(
                    f"UL2: {self._describe(k)} makes {spans} noise spans from rows of {T} raw tokens but "
                    f"Vocab.sentinel_ids holds {len(self.vocab.sentinel_ids)} sentinels (one per span); reserve more "
                    "sentinels, use shorter rows (seq_len) or give that denoiser rate 0"
                )
            pieces.append((inputs, targets))
        rows = [i + t for i, t in pieces]
        if self._s_on:
            if T < 2:
                raise ValueError(f"UL2: rows of {T} raw token(s) are too short for the S-denoiser (needs >= 2)")
            pieces.append((T, T))  # a prefix (or a suffix) of up to T - 1 tokens, then EOS
            rows.append(T + 2)  # prefix, EOS, suffix, EOS
        return _Widths(inputs=max(i for i, _ in pieces), targets=max(t for _, t in pieces), row=1 + max(rows))

    def widths(self, raw_length: int) -> tuple[int, int]:
        """``(input_ids width, labels width)`` of the batch for rows of ``raw_length`` tokens: encoder and decoder
        widths (``"encoder_decoder"``), or the row width twice (``"decoder"``).

        >>> v = Vocab(size=200, pad_id=0, eos_id=1, sentinel_ids=tuple(range(100, 200)), nlu_id=2, nlg_id=3, s2s_id=4)
        >>> UL2(v).widths(511), UL2(v, layout="decoder").widths(381)
        ((512, 511), (510, 510))
        """
        check_int(raw_length, "raw_length", low=2)
        w = self._widths(raw_length)
        return (1 + w.inputs, w.targets) if self.layout == "encoder_decoder" else (w.row, w.row)

    def raw_length(self, seq_len: int) -> int:
        """Raw tokens per row (the block length) for a model input of at most ``seq_len`` tokens: the encoder's
        (``"encoder_decoder"``) or the whole row's (``"decoder"``), paradigm token included, for every denoiser in
        use. Per span denoiser it is T5's ``random_spans_helper`` (:func:`raw_length_for_inputs`, with its rule for
        density 0.5: targets no longer than inputs) or :func:`raw_length_for_total`; S allows ``seq_len - 1``
        (encoder) or ``seq_len - 3`` (decoder); the row length is the smallest of these.

        >>> v = Vocab(size=200, pad_id=0, eos_id=1, sentinel_ids=tuple(range(100, 200)), nlu_id=2, nlg_id=3, s2s_id=4)
        >>> UL2(v).raw_length(512), UL2(v, layout="decoder").raw_length(512)
        (511, 381)
        """
        # paradigm token, a kept token, a sentinel and EOS (layout "decoder": then a span and EOS)
        least = 4 if self.layout == "encoder_decoder" else 7
        check_int(seq_len, "seq_len", low=least)
        limits = []
        for k in self._span_tasks():
            d, mu = self.noise_densities[k], self.mean_noise_span_lengths[k]
            try:
                if self.layout == "encoder_decoder":
                    limits.append(raw_length_for_inputs(seq_len - 1, d, mu)[0])
                else:
                    limits.append(raw_length_for_total(seq_len - 1, d, mu))
            except ValueError as e:
                raise ValueError(f"UL2: seq_len={seq_len} is too short for {self._describe(k)}: {e}") from None
        if self._s_on:
            limits.append(seq_len - 1 if self.layout == "encoder_decoder" else seq_len - 3)
        T = min(limits)
        self._widths(T)  # raises if a denoiser needs more sentinels than the vocab has
        return T

    # ----------------------------------------------------------------------- the transform
    def _tables(self, device: torch.device) -> _Tables:
        key = str(device)
        if key not in self._cache:
            K, D = len(self.noise_densities), len(self.rates)
            cum = torch.tensor(self.rates, dtype=torch.float64, device=device).cumsum(0)
            paradigm = [getattr(self.vocab, self._paradigm_field(d)) for d in range(D)]
            self._cache[key] = _Tables(
                cum_rates=cum / cum[-1],  # ends at exactly 1: a uniform < 1 never lands past the last used task
                density=torch.tensor(self.noise_densities + (0.5,) * (D - K), dtype=torch.float64, device=device),
                mean_span=torch.tensor(
                    self.mean_noise_span_lengths + (1.0,) * (D - K), dtype=torch.float64, device=device
                ),
                paradigm=torch.tensor([self.vocab.pad_id if p is None else p for p in paradigm], device=device),
                sentinels=torch.tensor(self.vocab.sentinel_ids, dtype=torch.long, device=device),
            )
        return self._cache[key]

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Corrupt ``input_ids`` ``(B, T)``, one denoiser per row; ``attention_mask`` ``(B, T)``: the real tokens."""
        ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, T), (B, T)
        device = ids.device
        pad, eos = self.vocab.pad_id, self.vocab.eos_id
        B, T = ids.shape
        n = real.sum(1)  # (B,) real tokens per row
        if bool((n < 2).any()):  # host sync, on the argument check only
            b = int((n < 2).nonzero()[0, 0])
            raise ValueError(
                f"UL2: row {b} of input_ids (shape {tuple(ids.shape)}) has {int(n[b])} real token(s); every denoiser "
                "needs at least 2 (a span or a suffix to predict, and a token to keep)"
            )
        w = self._widths(T)
        tab = self._tables(device)
        K = len(self.noise_densities)
        u = torch.rand(B, generator=generator, device=device, dtype=torch.float64)  # (B,)
        task = torch.searchsorted(tab.cum_rates, u, right=True)  # (B,) P(task = d) = rates[d]
        is_s = task == K  # (B,) the S-denoiser (index K exists only with use_prefix_lm_task)
        rank = real.long().cumsum(1)  # (B, T) 1-based rank of each real token
        parts = []  # (inputs (B, Wi), inputs_length (B,), targets (B, Wt), targets_length (B,)) per family
        if self._s_on:
            u = torch.rand(B, generator=generator, device=device, dtype=torch.float64)  # (B,)
            P = torch.minimum(1 + (u * (n - 1)).floor().long(), n - 1)[:, None]  # (B, 1) uniform on [1, n - 1]
            prefix, suffix = real & (rank <= P), real & (rank > P)  # (B, T)
            inputs = torch.full((B, w.inputs + 1), pad, dtype=torch.long, device=device)  # column w.inputs: a bin
            inputs.scatter_(1, torch.where(prefix, rank - 1, w.inputs), ids)
            inputs.scatter_(1, P, eos)
            targets = torch.full((B, w.targets + 1), pad, dtype=torch.long, device=device)  # column w.targets: a bin
            targets.scatter_(1, torch.where(suffix, rank - 1 - P, w.targets), ids)
            targets.scatter_(1, n[:, None] - P, eos)
            parts.append((inputs[:, : w.inputs], P[:, 0] + 1, targets[:, : w.targets], n - P[:, 0] + 1))
        if self._span_tasks():
            lengths = torch.where(is_s, 2, n)  # (B,); an S row gets a 2-token placeholder draw, then no token
            compact = random_spans_noise_mask(
                lengths, tab.density[task], tab.mean_span[task], width=T, generator=generator
            )  # (B, T) over each row's real tokens
            span_real = real & ~is_s[:, None]  # (B, T)
            noise = span_real & compact.gather(1, (rank - 1).clamp(min=0))  # (B, T) back at the real tokens' places
            out = noise_spans_to_inputs_targets(
                ids,
                noise,
                span_real,
                tab.sentinels,
                eos_id=eos,
                pad_id=pad,
                inputs_width=w.inputs,
                targets_width=w.targets,
            )  # type: ignore[arg-type]
            parts.append((out.inputs, out.inputs_length, out.targets, out.targets_length))
        if len(parts) == 2:  # each row takes its family's pieces
            s_part, span_part = parts
            rows = [is_s if a.dim() == 1 else is_s[:, None] for a in s_part]
            parts = [tuple(torch.where(r, a, c) for r, a, c in zip(rows, s_part, span_part))]
        inputs, in_len, targets, tg_len = parts[0]  # (B, Wi), (B,), (B, Wt), (B,)
        paradigm = tab.paradigm[task][:, None]  # (B, 1)
        if self.layout == "encoder_decoder":
            targets_mask = torch.arange(w.targets, device=device) < tg_len[:, None]  # (B, Wt)
            return Batch(
                input_ids=torch.cat([paradigm, inputs], 1),  # (B, 1 + Wi)
                labels=targets.masked_fill(~targets_mask, IGNORE_INDEX),
                attention_mask=torch.arange(1 + w.inputs, device=device) < 1 + in_len[:, None],
                causal=False,
                has_targets=torch.ones(B, dtype=torch.bool, device=device),  # every row predicts its targets and EOS
                decoder_input_ids=torch.cat([torch.full_like(paradigm, pad), targets[:, :-1]], 1),  # (B, Wt)
                decoder_attention_mask=targets_mask,
            )
        W = w.row
        seq = torch.full((B, W + 1), pad, dtype=torch.long, device=device)  # paradigm, inputs, targets; column W: a bin
        seq[:, :1] = paradigm
        seq[:, 1 : 1 + w.inputs] = inputs  # w.inputs < W
        t = torch.arange(w.targets, device=device)
        seq.scatter_(1, torch.where(t < tg_len[:, None], 1 + in_len[:, None] + t, W), targets)
        total = 1 + in_len + tg_len  # (B,)
        return prefix_lm_batch(
            seq[:, :W], 1 + in_len, attention_mask=torch.arange(W, device=device) < total[:, None]
        )  # causal; the paradigm token and the inputs are the bidirectional prefix; labels on the targets
