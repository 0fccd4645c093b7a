"""Span corruption (T5, Raffel et al. 2020): random spans become sentinels; the model predicts the spans.

The noise mask is T5's ``random_spans_noise_mask`` (google-research/text-to-text-transfer-transformer,
``t5/data/preprocessors.py``) drawn for a whole batch at once, with one length, noise density and mean
span length per row (so that UL2 can mix denoisers in one batch, see :func:`random_spans_noise_mask`);
:func:`noise_spans_to_inputs_targets` turns any noise mask into inputs and targets with sentinels.
The length helpers (in :mod:`._noise_spans`, exported here) say how many raw tokens to draw so that the model
input has a given length (T5's ``random_spans_helper``, Hugging Face's ``compute_input_and_target_lengths``).
:class:`SpanCorruption` builds batches whose rows all have one length directly at fixed shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._checks import check_choice, check_int, check_like
from .._option import option
from ..batch import Batch, checked_tokens
from ..constants import IGNORE_INDEX
from ..vocab import Vocab
from ._noise_spans import (
    _check_density,
    _check_mean_span,
    _counts,
    _fixed_segment_starts,
    _too_short,
    random_spans_noise_mask,
    raw_length_for_inputs,
    raw_length_for_total,
    span_corruption_lengths,
)

__all__ = [
    "SpanCorruption",
    "SpanInputsTargets",
    "noise_spans_to_inputs_targets",
    "random_spans_noise_mask",
    "raw_length_for_inputs",
    "raw_length_for_total",
    "span_corruption_lengths",
]

LAYOUTS = ("encoder_decoder", "decoder")


# --------------------------------------------------------------------------- inputs and targets
@dataclass
class SpanInputsTargets:
    """Inputs and targets of span corruption, each right-padded to a fixed width."""

    inputs: torch.Tensor  # (B, Wi) long: non-noise tokens, one sentinel per noise span, EOS, then pad_id
    inputs_mask: torch.Tensor  # (B, Wi) bool: True up to and including the EOS
    targets: torch.Tensor  # (B, Wt) long: per noise span its sentinel then its tokens, EOS, then pad_id
    targets_mask: torch.Tensor  # (B, Wt) bool: True up to and including the EOS
    inputs_length: torch.Tensor  # (B,) long: real tokens of each inputs row
    targets_length: torch.Tensor  # (B,) long: real tokens of each targets row


def _check_no_sentinels(input_ids: torch.Tensor, real: torch.Tensor, sentinels: torch.Tensor) -> None:
    """Raise if a real token of ``input_ids`` is a sentinel (it could not be told from an inserted one)."""
    lo, hi = int(sentinels.min()), int(sentinels.max())
    least, most = (int(v) for v in torch.aminmax(input_ids))
    if most < lo or least > hi:  # every id outside the sentinels' range (T5: they end the vocabulary)
        return
    hit = real & (input_ids >= lo) & (input_ids <= hi)  # (B, T); exact when the ids are a range
    if hi - lo + 1 != sentinels.numel() and bool(hit.any()):
        hit = hit & torch.isin(input_ids, sentinels)
    if bool(hit.any()):
        b, t = (int(i) for i in hit.nonzero()[0])
        raise ValueError(
            f"input_ids[{b}, {t}] = {int(input_ids[b, t])} is one of the sentinels (Vocab.sentinel_ids); a sentinel "
            "in the text could not be told apart from the ones span corruption inserts"
        )


def _too_few_sentinels(row: int, spans: int, sentinels: int) -> ValueError:
    return ValueError(
        f"row {row} has {spans} noise spans but Vocab.sentinel_ids holds {sentinels} sentinels (one per span "
        "is needed); reserve more sentinels or use longer spans / a lower noise density"
    )


def _fixed_inputs_targets(
    ids: torch.Tensor,
    n: int,
    d: float,
    mu: float,
    sentinels: torch.Tensor,
    eos_id: int,
    pad_id: int,
    widths: tuple[int, int],
    generator,
) -> SpanInputsTargets:
    """Span corruption of rows whose real tokens are the first ``n`` of every row (the same count for
    all): T5's mask (:func:`random_spans_noise_mask`'s law) and its inputs and targets
    (:func:`noise_spans_to_inputs_targets`) built directly from the span lengths, at fixed shapes.

    Every row has ``N`` noise tokens in ``S`` spans and ``M = n - N`` other tokens, each split into
    ``S`` non-empty segments uniformly (:func:`_fixed_segment_starts`). In the inputs, sentinel ``s``
    sits after ``s + 1`` non-noise segments and ``s`` sentinels; each later input token is read from
    ``ids`` at its position plus the noise tokens skipped so far (one scatter of the jumps, one
    cumsum, one gather). The targets likewise, with the roles swapped. Rows are padded to ``widths``.
    """
    B, device = ids.shape[0], ids.device
    N, S = _counts(n, d, mu)
    if n < 2 or S > n - N:
        raise _too_short(n, d, mu, "row 0")
    if S > sentinels.numel():
        raise _too_few_sentinels(0, S, sentinels.numel())
    M = n - N
    noise_starts = _fixed_segment_starts(B, N, S, generator, device)  # (B, S + 1)
    other_starts = _fixed_segment_starts(B, M, S, generator, device)  # (B, S + 1)
    span = torch.arange(S, device=device)  # (S,)
    names = sentinels[:S].expand(B, S)  # (B, S)

    def build(length: int, at: torch.Tensor, skipped: torch.Tensor, width: int) -> torch.Tensor:
        # at (B, S): sentinel positions; skipped (B, S): tokens of the other kind after each sentinel
        jump = torch.zeros(B, length, dtype=torch.long, device=device)  # (B, length)
        jump.scatter_(1, at + 1, skipped - 1)  # at + 1 < length: the last column is the EOS
        src = jump.cumsum_(1).add_(torch.arange(length, device=device))  # (B, length) position in ids
        src[:, -1] = 0  # EOS: read anything
        out = ids.gather(1, src)  # (B, length)
        out.scatter_(1, at, names)
        out[:, -1] = eos_id
        if width > length:  # shorter rows than the widths are for
            out = torch.nn.functional.pad(out, (0, width - length), value=pad_id)
        return out  # (B, width)

    Wi, Wt = widths
    inputs = build(M + S + 1, other_starts[:, 1:] + span, noise_starts.diff(1), Wi)  # (B, Wi)
    targets = build(N + S + 1, noise_starts[:, :-1] + span, other_starts.diff(1), Wt)  # (B, Wt)
    in_len = torch.full((B,), M + S + 1, dtype=torch.long, device=device)  # (B,)
    tg_len = torch.full((B,), N + S + 1, dtype=torch.long, device=device)  # (B,)
    return SpanInputsTargets(
        inputs=inputs,
        inputs_mask=(torch.arange(Wi, device=device) < M + S + 1).expand(B, Wi).clone(),
        targets=targets,
        targets_mask=(torch.arange(Wt, device=device) < N + S + 1).expand(B, Wt).clone(),
        inputs_length=in_len,
        targets_length=tg_len,
    )


def noise_spans_to_inputs_targets(
    input_ids: torch.Tensor,
    noise_mask: torch.Tensor,
    real: torch.Tensor,
    sentinel_ids: tuple[int, ...] | list[int] | torch.Tensor,
    *,
    eos_id: int,
    pad_id: int,
    inputs_width: int | None = None,
    targets_width: int | None = None,
) -> SpanInputsTargets:
    """Replace each noise span (maximal run of noise tokens) by one sentinel in the inputs; the targets
    are, per span in order, its sentinel then its tokens; EOS ends both. Span ``k`` of a row gets
    ``sentinel_ids[k]``.

    Works for any noise mask (``noise_mask & real`` is used; ``real`` ``(B, T)`` marks the tokens that
    exist, anywhere in the row: spans are runs of noise among the real tokens in order, so padding inside
    a row neither splits a span nor ends one, second example). For a mask that starts with a non-noise
    token and ends with noise, as every :func:`random_spans_noise_mask` row does, the targets are exactly T5's
    ``nonnoise_span_to_unique_sentinel``; for other masks T5 gives the targets' sentinels to the
    non-noise runs, which then no longer match the inputs' (a mask starting with noise), while here
    a sentinel always names the same span in both. A row without noise gets its tokens and EOS as
    inputs and EOS alone as targets. Widths default to the longest row (a host sync); a row longer
    than a given width raises. Raises if a real token is a sentinel or if a row has more spans than
    there are sentinels.

    >>> out = noise_spans_to_inputs_targets(torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[0, 1, 1, 0, 1]]).bool(),
    ...                                     torch.ones(1, 5, dtype=torch.bool), (99, 98), eos_id=1, pad_id=0)
    >>> out.inputs, out.targets
    (tensor([[ 5, 99,  8, 98,  1]]), tensor([[99,  6,  7, 98,  9,  1]]))
    >>> out = noise_spans_to_inputs_targets(torch.tensor([[5, 6, 0, 7, 8]]), torch.tensor([[0, 1, 0, 1, 0]]).bool(),
    ...                                     torch.tensor([[1, 1, 0, 1, 1]]).bool(), (99, 98), eos_id=1, pad_id=0)
    >>> out.inputs, out.targets
    (tensor([[ 5, 99,  8,  1]]), tensor([[99,  6,  7,  1]]))
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise TypeError(f"input_ids must be a (B, T) integer tensor, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    ids = input_ids.long()  # (B, T)
    B, T = ids.shape
    device = ids.device
    real = check_like(real, ids, "real", dtype="bool")  # (B, T)
    noise = check_like(noise_mask, ids, "noise_mask", dtype="bool") & real  # (B, T)
    sentinels = torch.as_tensor(sentinel_ids, dtype=torch.long, device=device).flatten()  # (K,)
    if sentinels.numel():
        _check_no_sentinels(ids, real, sentinels)
    # a span is a run of noise among the real tokens: padding inside a row does not split it
    t = torch.arange(T, device=device)
    last_real = torch.where(real, t, -1).cummax(1).values  # (B, T) the last real position <= t
    before = torch.cat([torch.full_like(last_real[:, :1], -1), last_real[:, :-1]], 1)  # (B, T) ... < t
    prev = noise.gather(1, before.clamp(min=0)) & (before >= 0)  # (B, T) the previous real token is noise
    first = noise & ~prev  # (B, T) first token of a span
    keep = real & ~(noise & prev)  # (B, T) tokens the inputs keep (a span's first token becomes its sentinel)
    n_spans = first.sum(1)  # (B,)
    in_len = keep.sum(1) + 1  # (B,) kept tokens + EOS
    tg_len = noise.sum(1) + n_spans + 1  # (B,) noise tokens + sentinels + EOS
    most, longest_in, longest_tg = (int(v) for v in torch.stack([n_spans.max(), in_len.max(), tg_len.max()]))
    if most > sentinels.numel():
        raise _too_few_sentinels(int(n_spans.argmax()), most, sentinels.numel())
    widths = []
    for name, width, longest, lengths in (
        ("inputs_width", inputs_width, longest_in, in_len),
        ("targets_width", targets_width, longest_tg, tg_len),
    ):
        if width is None:
            width = longest
        elif check_int(width, name, low=1) < longest:
            raise ValueError(f"row {int(lengths.argmax())} needs {longest} tokens, more than {name}={width}")
        widths.append(width)
    Wi, Wt = widths
    # each span's first token becomes its sentinel: span k of a row gets sentinels[k]
    in_order = torch.arange(most, device=device) < n_spans[:, None]  # (B, most)
    vals = ids.masked_scatter(first, sentinels[:most].expand(B, most)[in_order])  # (B, T)
    inputs = torch.full((B, Wi), pad_id, dtype=torch.long, device=device)
    inputs.masked_scatter_(torch.arange(Wi, device=device) < in_len[:, None] - 1, torch.masked_select(vals, keep))
    inputs.scatter_(1, (in_len - 1)[:, None], eos_id)
    # targets: at each noise token, its span's sentinel first if it starts the span, then the token
    pairs = torch.masked_select(torch.stack([vals, ids], 2), torch.stack([first, noise], 2))  # (sum of tg_len - 1,)
    targets = torch.full((B, Wt), pad_id, dtype=torch.long, device=device)
    targets.masked_scatter_(torch.arange(Wt, device=device) < tg_len[:, None] - 1, pairs)
    targets.scatter_(1, (tg_len - 1)[:, None], eos_id)
    return SpanInputsTargets(
        inputs=inputs,
        inputs_mask=torch.arange(Wi, device=device) < in_len[:, None],
        targets=targets,
        targets_mask=torch.arange(Wt, device=device) < tg_len[:, None],
        inputs_length=in_len,
        targets_length=tg_len,
    )


# --------------------------------------------------------------------------- the objective
@dataclass(frozen=True)
class SpanCorruption:
    """T5's span corruption: spans of ~15 % of the tokens become sentinels; predict the spans.

    Each row's real tokens (``attention_mask``; without one, those before the trailing ``pad_id``
    run) get a :func:`random_spans_noise_mask`: ``noise = clip(round(n * noise_density), 1, n - 1)``
    noise tokens in ``max(1, round(noise / mean_noise_span_length))`` spans, every such mask equally
    likely, interleaved starting with non-noise. Each noise span becomes one sentinel in the inputs;
    the targets are each span's sentinel followed by its tokens; EOS ends both
    (:func:`noise_spans_to_inputs_targets`). Span ``k`` gets ``Vocab.sentinel_ids[k]`` (T5 counts
    down from the end of its vocabulary; here the order is the vocab's). A packed block (documents
    joined by EOS) is one row: spans are drawn over the whole row and may cross documents, as in T5,
    which concatenates documents before splitting them into 568-token rows. Rows may be padded
    anywhere, left, right or inside (each uses its own length; spans are counted and cut over the
    row's real tokens in order, as if the padding were not there); outputs are padded to the widths of a full row of length ``T``
    (:func:`span_corruption_lengths`), so shapes are static: a full 568-token row gives 512 input and
    114 target tokens. When every row has the same number of real tokens, first (no padding, the usual
    packed block), every row has the same noise and span counts and the batch is built at fixed shapes
    without a mask (``_fixed_inputs_targets``: same law, different draws from the generator than the
    general path, which :func:`random_spans_noise_mask` and :func:`noise_spans_to_inputs_targets` take).

    Layouts (``layout=``):

    * ``"encoder_decoder"`` (T5): the Hugging Face names, ready for ``T5ForConditionalGeneration``:
      ``input_ids`` / ``attention_mask`` for the encoder (``causal=False``), ``labels`` ``(B, Wt)`` =
      the targets (``IGNORE_INDEX`` on padding), ``decoder_input_ids`` = labels shifted right with the
      decoder start token ``pad_id`` (T5's ``decoder_start_token_id`` is its pad id 0),
      ``decoder_attention_mask`` True at real decoder positions.
    * ``"decoder"`` (decoder-only prefix LM), seqio's ``PrefixLMFeatureConverter`` convention: the row
      is inputs then targets, ``Wi + Wt`` wide; ``labels`` is that sequence at the targets' positions
      (seqio's ``decoder_target_tokens`` where ``decoder_loss_weights``), ``input_ids`` the sequence
      shifted right with ``pad_id`` first (``decoder_input_tokens``: seqio starts with 0), so the
      position before each target token predicts it; ``prefix_mask`` (``decoder_causal_attention``)
      is True on the start token and the inputs (``len(inputs) + 1`` positions: the last of them
      reads the inputs' EOS and predicts the first target), which see each other both ways;
      ``causal=True``.

    ``raw_length(seq_len)`` is the block length to draw for a model input of ``seq_len`` tokens:
    encoder inputs (:func:`raw_length_for_inputs`, T5's ``random_spans_helper``: 568 for 512) or
    inputs plus targets for the decoder layout (:func:`raw_length_for_total`).

    Worked example (``Vocab(size=100, pad_id=0, eos_id=1, sentinel_ids=(99, 98, 97))``,
    ``noise_density=0.3, mean_noise_span_length=1.5``, ``generator=torch.Generator().manual_seed(3)``;
    row 0 has 10 tokens: 3 noise in 2 spans; row 1 has 8 real tokens: 2 noise in 1 span)::

        input_ids        [[10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
                          [20, 21, 22, 23, 24, 25, 26, 27,  0,  0]]
        attention_mask   [[ T,  T,  T,  T,  T,  T,  T,  T,  T,  T],
                          [ T,  T,  T,  T,  T,  T,  T,  T,  F,  F]]
        noise            [[ 0,  0,  0,  1,  0,  0,  0,  0,  1,  1],
                          [ 0,  0,  0,  0,  0,  0,  1,  1,  0,  0]]

        layout="encoder_decoder"
        -> input_ids              [[10, 11, 12, 99, 14, 15, 16, 17, 98,  1],
                                   [20, 21, 22, 23, 24, 25, 99,  1,  0,  0]]
        -> attention_mask         [[ T,  T,  T,  T,  T,  T,  T,  T,  T,  T],
                                   [ T,  T,  T,  T,  T,  T,  T,  T,  F,  F]]
        -> labels                 [[99, 13, 98, 18,   19,    1],
                                   [99, 26, 27,  1, -100, -100]]
        -> decoder_input_ids      [[ 0, 99, 13, 98,   18,   19],
                                   [ 0, 99, 26, 27,    1,    0]]
        -> decoder_attention_mask [[ T,  T,  T,  T,    T,    T],
                                   [ T,  T,  T,  T,    F,    F]]

        layout="decoder" (16 wide; same draw)
        -> input_ids    [[ 0, 10, 11, 12, 99, 14, 15, 16, 17, 98,  1, 99, 13, 98,   18,   19],
                         [ 0, 20, 21, 22, 23, 24, 25, 99,  1, 99, 26, 27,  1,  0,    0,    0]]
        -> labels       [[-100 x 10,                              99, 13, 98, 18,   19,    1],
                         [-100 x 8,                       99, 26, 27,  1, -100, -100, -100, -100]]
        -> prefix_mask  True at positions 0..10 (row 0) and 0..8 (row 1)
        -> attention_mask True at positions 0..15 (row 0) and 0..11 (row 1)

    Bad input raises: a row too short for the density and span length, ``noise_density`` outside
    (0, 1), ``mean_noise_span_length < 1``, fewer ``Vocab.sentinel_ids`` than spans, a sentinel id
    among the real input tokens. *Deviations* from T5: rows of fewer than 2 tokens are refused (T5
    pads them to 2 and may return no noise); ``noise_density=0`` is refused (T5 returns no noise);
    no ``random_roll`` (T5's default is off).
    """

    vocab: Vocab  # vocabulary: eos_id, pad_id (padding and decoder start) and sentinel_ids are required
    noise_density: float = option(0.15, "fraction of each row's tokens that are corrupted, in (0, 1) (T5: 0.15)")
    mean_noise_span_length: float = option(3.0, "mean length in tokens of a corrupted span, >= 1 (T5: 3)")
    layout: str = option("encoder_decoder", '"encoder_decoder" (T5) or "decoder" (inputs then targets, prefix LM)')
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # per-device sentinel ids

    name = "span_corruption"

    def __post_init__(self) -> None:
        if not isinstance(self.vocab, Vocab):
            raise TypeError(f"SpanCorruption: vocab must be a lmobjectives.Vocab, got {type(self.vocab).__name__}")
        self.vocab.require("eos_id", "pad_id", who="SpanCorruption")
        if not self.vocab.sentinel_ids:
            raise ValueError(
                "SpanCorruption needs Vocab.sentinel_ids (one per noise span); this vocab has none "
                "(reserve <extra_id_0>, <extra_id_1>, ... in the tokenizer)"
            )
        object.__setattr__(self, "noise_density", _check_density(self.noise_density))
        object.__setattr__(self, "mean_noise_span_length", _check_mean_span(self.mean_noise_span_length))
        check_choice(self.layout, "layout", LAYOUTS)

    def lengths(self, raw_length: int) -> tuple[int, int]:
        """``(inputs width, targets width)`` for rows of ``raw_length`` tokens (:func:`span_corruption_lengths`)."""
        return span_corruption_lengths(raw_length, self.noise_density, self.mean_noise_span_length)

    def raw_length(self, seq_len: int) -> int:
        """Raw tokens per row for a model input of ``seq_len`` tokens: the encoder's inputs
        (``"encoder_decoder"``) or inputs + targets (``"decoder"``)."""
        if self.layout == "encoder_decoder":
            return raw_length_for_inputs(seq_len, self.noise_density, self.mean_noise_span_length)[0]
        return raw_length_for_total(seq_len, self.noise_density, self.mean_noise_span_length)

    def _sentinels(self, device: torch.device) -> torch.Tensor:
        key = str(device)
        if key not in self._cache:
            self._cache[key] = torch.tensor(self.vocab.sentinel_ids, dtype=torch.long, device=device)
        return self._cache[key]

    def __call__(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Batch:
        """Corrupt ``input_ids`` ``(B, T)``; ``attention_mask`` ``(B, T)`` marks the real tokens."""
        ids, real = checked_tokens(input_ids, self.vocab, attention_mask, generator)  # (B, T), (B, T)
        device = ids.device
        pad, eos = self.vocab.pad_id, self.vocab.eos_id
        B, T = ids.shape
        d, mu = self.noise_density, self.mean_noise_span_length
        if T < 2:
            raise _too_short(T, d, mu, f"input_ids of shape {tuple(ids.shape)}")
        noise, spans = _counts(T, d, mu)
        Wi, Wt = T - noise + spans + 1, noise + spans + 1  # a full row's lengths bound every row's
        sentinels = self._sentinels(device)
        n = T if bool(real.all()) else None  # no padding: the fast path
        lengths = None
        if n is None and bool((real[:, 1:] <= real[:, :-1]).all()):  # real tokens first in every row
            lengths = real.sum(1)  # (B,)
            if bool((lengths == lengths[0]).all()):  # ... and as many in every row: the fast path
                n = int(lengths[0])
        if n is not None:  # fixed counts: inputs and targets at fixed shapes, no mask
            _check_no_sentinels(ids, real, sentinels)
            out = _fixed_inputs_targets(ids, n, d, mu, sentinels, eos, pad, (Wi, Wt), generator)
        else:
            if lengths is not None:  # the draw is in place
                noise_mask = random_spans_noise_mask(lengths, d, mu, width=T, generator=generator)  # (B, T)
            else:
                rank = real.cumsum(1)  # (B, T) 1-based rank of each real token
                compact = random_spans_noise_mask(rank[:, -1], d, mu, width=T, generator=generator)  # real tokens
                noise_mask = real & compact.gather(1, (rank - 1).clamp(min=0))  # (B, T) back at their places
            out = noise_spans_to_inputs_targets(
                ids, noise_mask, real, sentinels, eos_id=eos, pad_id=pad, inputs_width=Wi, targets_width=Wt
            )  # type: ignore[arg-type]
        has_targets = torch.ones(B, dtype=torch.bool, device=device)  # every row predicts its spans and EOS
        if self.layout == "encoder_decoder":
            labels = out.targets.masked_fill(~out.targets_mask, IGNORE_INDEX)  # (B, Wt)
            start = torch.full((B, 1), pad, dtype=torch.long, device=device)  # T5: decoder start = pad id
            return Batch(
                input_ids=out.inputs,
                labels=labels,
                attention_mask=out.inputs_mask,
                causal=False,
                has_targets=has_targets,
                decoder_input_ids=torch.cat([start, out.targets[:, :-1]], 1),  # (B, Wt); padding is pad_id
                decoder_attention_mask=out.targets_mask,
            )
        W = Wi + Wt
        i_len, t_len = out.inputs_length[:, None], out.targets_length[:, None]  # (B, 1)
        seq = torch.full((B, W + 1), pad, dtype=torch.long, device=device)  # inputs then targets; column W: a bin
        seq[:, :Wi] = out.inputs
        t = torch.arange(Wt, device=device)
        seq.scatter_(1, torch.where(out.targets_mask, i_len + t, W), out.targets)
        seq = seq[:, :W]  # (B, W)
        pos = torch.arange(W, device=device)
        is_target = (pos >= i_len) & (pos < i_len + t_len)  # (B, W)
        return Batch(
            input_ids=torch.cat([torch.full((B, 1), pad, dtype=torch.long, device=device), seq[:, :-1]], 1),
            labels=torch.where(is_target, seq, IGNORE_INDEX),
            attention_mask=pos < i_len + t_len,
            causal=True,
            has_targets=has_targets,
            prefix_mask=pos <= i_len,
        )
