"""T5's span arithmetic: how many noise tokens and spans a row of ``length`` real tokens gets (in T5's float32),
how many raw tokens make a model input of a given length (``random_spans_helper``), and the noise mask itself
(``random_spans_noise_mask``, drawn for a whole batch at once, one length, density and mean span length per
row). The helpers of :mod:`lmobjectives.objectives.span_corruption` and :mod:`lmobjectives.objectives.ul2`."""

from __future__ import annotations

import math
import struct

import torch

from .._checks import check_generator, check_int, check_probability

__all__ = [
    "random_spans_noise_mask",
    "raw_length_for_inputs",
    "raw_length_for_total",
    "span_corruption_lengths",
]


# --------------------------------------------------------------------------- lengths
def _check_density(value: object, name: str = "noise_density") -> float:
    return check_probability(value, name, low_open=True, high_open=True)


def _check_mean_span(value: object, name: str = "mean_noise_span_length") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise TypeError(f"{name} must be a finite float >= 1, got {value!r}")
    if float(value) < 1:
        raise ValueError(f"{name} must be >= 1 (a span holds at least one token), got {value!r}")
    return float(value)


def _f32(x: float) -> float:
    """``x`` rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _counts(n: int, density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a row of ``n >= 2`` tokens, as T5's ``random_spans_noise_mask`` computes
    them: in TensorFlow float32 (``tf.cast(length, tf.float32) * noise_density``, then ``/ mean_noise_span_length``)
    and ``tf.round`` (half to even, as Python's ``round``). A float32 product or quotient computed in float64 and
    rounded to float32 is exact (float64 holds twice float32's precision plus 2 bits), so this equals TensorFlow's
    on every input; :func:`random_spans_noise_mask` computes the same in float32 tensors."""
    noise = min(max(int(round(_f32(_f32(n) * _f32(density)))), 1), n - 1)
    return noise, max(int(round(_f32(_f32(noise) / _f32(mean_span)))), 1)


def _too_short(n: int, density: float, mean_span: float, what: str) -> ValueError:
    if n < 2:
        return ValueError(
            f"{what} has {n} real token(s); span corruption needs at least 2 (one noise and one non-noise token)"
        )
    noise, spans = _counts(n, density, mean_span)
    return ValueError(
        f"{what} has {n} real tokens: noise_density={density!r} and mean_noise_span_length={mean_span!r} give "
        f"{noise} noise tokens in {spans} spans, but the {n - noise} non-noise tokens cannot make the {spans} "
        "non-empty non-noise spans that separate them; use longer rows, a lower noise_density or a longer "
        "mean_noise_span_length"
    )


def span_corruption_lengths(
    raw_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """``(inputs_length, targets_length)``, EOS included, of a row of ``raw_length`` tokens (exact).

    ``noise = clip(round(raw_length * noise_density), 1, raw_length - 1)`` tokens in
    ``spans = max(1, round(noise / mean_noise_span_length))`` spans; the inputs keep the
    ``raw_length - noise`` other tokens plus one sentinel per span and EOS, the targets hold the
    noise tokens, one sentinel per span and EOS.

    >>> span_corruption_lengths(568)
    (512, 114)
    """
    n = check_int(raw_length, "raw_length", low=2)
    d, mu = _check_density(noise_density), _check_mean_span(mean_noise_span_length)
    noise, spans = _counts(n, d, mu)
    if spans > n - noise:
        raise _too_short(n, d, mu, f"raw_length={n}")
    return n - noise + spans + 1, noise + spans + 1


def _inputs_length(n: int, d: float, mu: float) -> int:
    noise, spans = _counts(n, d, mu)
    return n - noise + spans + 1


def raw_length_for_inputs(
    inputs_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """``(raw_length, targets_length)``: the most raw tokens whose corrupted inputs (EOS included) fit in
    ``inputs_length``, and the length of their targets.

    T5's ``random_spans_helper`` (and Hugging Face's ``compute_input_and_target_lengths``), including
    its rule for ``noise_density == 0.5``: when the targets would come out longer than the inputs, one
    raw token fewer. *Deviation*: the targets length returned is the exact one of that raw length
    (:func:`span_corruption_lengths`); T5 subtracts 1, which can exceed it by one.

    >>> raw_length_for_inputs(512, 0.15, 3.0)
    (568, 114)
    """
    target = check_int(inputs_length, "inputs_length", low=3)
    d, mu = _check_density(noise_density), _check_mean_span(mean_noise_span_length)
    n = max(target - 1, 2)  # inputs(n) <= n + 1: a start that fits
    while _inputs_length(n + 1, d, mu) <= target:  # inputs(n) never decreases with n
        n += 1
    inputs, targets = span_corruption_lengths(n, d, mu)
    if d == 0.5 and targets > inputs and n > 2:  # T5's "minor hack": targets no longer than inputs
        n -= 1
    return n, span_corruption_lengths(n, d, mu)[1]


def raw_length_for_total(total_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> int:
    """The most raw tokens whose inputs and targets together (EOS on each) fit in ``total_length``: the
    decoder-only layout's length helper (inputs + targets = ``raw + 2 * spans + 2``).

    >>> raw_length_for_total(626), span_corruption_lengths(568)
    (568, (512, 114))
    """
    total = check_int(total_length, "total_length", low=6)
    d, mu = _check_density(noise_density), _check_mean_span(mean_noise_span_length)
    n = total - 4  # spans >= 1
    while n > 2 and n + 2 * _counts(n, d, mu)[1] + 2 > total:  # the total never decreases with n
        n -= 1
    span_corruption_lengths(n, d, mu)  # raises if the density cannot be met at this length
    return n


# --------------------------------------------------------------------------- noise mask
def _per_row(value: object, B: int, name: str, device: torch.device) -> torch.Tensor:
    """A float or a ``(B,)`` tensor as a float64 ``(B,)`` tensor on ``device``."""
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.shape[0] != B:
            raise ValueError(
                f"{name} must be a float or a tensor of shape (B,) = ({B},), got shape {tuple(value.shape)}"
            )
        if value.dtype == torch.bool or value.dtype.is_complex:
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        return value.to(device=device, dtype=torch.float64)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a tensor of shape (B,), got {type(value).__name__}")
    return torch.full((B,), float(value), dtype=torch.float64, device=device)


def _candidates(gaps: torch.Tensor, cuts: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(p, R)`` of the candidate draw in :func:`_random_cuts`: a Bernoulli(``p``) candidate rate per row
    with ``cuts + 4 sqrt(cuts) + 8`` candidates expected (fewer than ``cuts`` in roughly 1e-4 of rows or
    less: those are redrawn), and ``R`` draws per row, 6 standard deviations more than a row needs."""
    k = cuts.double()
    p = ((k + 4 * k.sqrt() + 8) / gaps.double().clamp(min=1)).clamp(max=1.0)  # (B,)
    mean = gaps.double() * p
    return p, int((mean + 6 * (mean * (1 - p)).sqrt() + 16).max().ceil())


def _random_cuts(gaps: torch.Tensor, cuts: torch.Tensor, k: int, generator) -> torch.Tensor:
    """A uniform random ``cuts[b]``-subset of ``{0, ..., gaps[b] - 1}`` per row: ``(B, k)`` sorted, padded
    with ``gaps[b]`` (``k = max(cuts)``).

    The subset is the ``cuts`` gaps with the smallest of i.i.d. uniform keys. When ``cuts`` is small
    against ``gaps`` (T5's non-noise tokens: 27 of 482), keys are drawn only for candidates: a
    Bernoulli(``p``) subset (geometric jumps, ``R`` uniforms per row instead of ``gaps``) holding at
    least ``cuts`` gaps, else redrawn (acceptance depends only on the count). Its law is exchangeable,
    so the ``cuts`` candidates with the smallest keys are again a uniform ``cuts``-subset: the same law,
    with half the draws and a ``topk`` over ~115 instead of ~480 keys per row (T5 at 568 tokens).
    """
    B = gaps.shape[0]
    device = gaps.device
    end = gaps[:, None]  # (B, 1)
    wide = int(gaps.max())
    p, R = _candidates(gaps, cuts)
    if R >= wide:  # every gap is a candidate
        pos = torch.arange(wide, device=device).expand(B, wide)  # (B, G)
        inside = pos < end
    else:
        log_q = torch.log1p(-p)[:, None]  # (B, 1); -inf where p = 1: every gap, one by one
        step = torch.arange(R, device=device, dtype=torch.float64)  # (R,)

        def draw(rows: torch.Tensor) -> torch.Tensor:  # (len(rows), R) candidate positions, increasing
            u = torch.rand(rows.shape[0], R, generator=generator, device=device, dtype=torch.float64)
            return (torch.log1p(-u) / log_q[rows]).floor_().cumsum_(1).add_(step).long()  # sum of Geometric(p) - 1

        pos = draw(torch.arange(B, device=device))  # (B, R)
        while True:  # keep a row only if it holds >= cuts candidates and its draws ran past its end
            inside = pos < end  # (B, R)
            bad = (inside.sum(1) < cuts) | inside[:, -1]  # (B,)
            if not bool(bad.any()):
                break
            rows = bad.nonzero().flatten()
            pos[rows] = draw(rows)
    keys = torch.rand(pos.shape, generator=generator, device=device, dtype=torch.float64)  # (B, R or G)
    keys.masked_fill_(~inside, 2.0)  # past a row's end: never chosen
    # k - cuts placeholders with key -1 come first, so the k smallest keys are a row's cuts smallest and them
    slot = torch.arange(k, device=device)
    keys = torch.cat([keys, torch.where(slot < k - cuts[:, None], -1.0, 2.0)], 1)  # (B, R + k)
    pos = torch.cat([pos, end.expand(B, k)], 1)  # (B, R + k): a placeholder stands for the row's end
    chosen = pos.gather(1, keys.topk(k, dim=1, largest=False, sorted=False).indices)  # (B, k)
    return chosen.sort(1).values  # (B, k)


def _segment_starts(items: torch.Tensor, segments: torch.Tensor, k: int, generator) -> torch.Tensor:
    """Split ``items[b]`` items into ``segments[b]`` non-empty segments, uniformly over all such splits.

    T5's ``_random_segmentation``: the segments start after a uniform random subset of ``segments - 1``
    of the ``items - 1`` gaps between items (T5 shuffles a 0/1 vector; here :func:`_random_cuts`).
    Returns ``(B, k + 2)``, ``k = max(segments) - 1``: column ``s`` is the first item of segment ``s``,
    and ``items[b]`` from column ``segments[b]`` on.
    """
    end = items[:, None]  # (B, 1)
    zero = torch.zeros_like(end)
    if k == 0:
        return torch.cat([zero, end], 1)  # (B, 2)
    cut = _random_cuts(items - 1, segments - 1, k, generator) + 1  # (B, k), padded with items
    return torch.cat([zero, cut, end], 1)  # (B, k + 2)


def _fixed_cuts(B: int, gaps: int, cuts: int, generator, device: torch.device) -> torch.Tensor:
    """A uniform random ``cuts``-subset of ``{0, ..., gaps - 1}`` per row, the same counts for every row:
    ``(B, cuts)`` long, sorted.

    The subset is the first ``cuts`` distinct values of a row of i.i.d. uniform draws (in draw order):
    the draws' law is invariant under any permutation of the values, so that subset's is too, i.e. it is
    uniform. Rows whose ``R`` draws hold fewer than ``cuts`` distinct values (``R`` is 6 standard
    deviations above the coupon collector's mean) are redrawn, which keeps the law. When ``cuts`` is
    more than half of ``gaps``, the ``gaps - cuts`` gaps left out are drawn instead. No sort and no
    ``topk``: the draws' first occurrences go into a ``(B, gaps)`` table, and the chosen gaps are read
    off it in order with one boolean index (each row holds exactly ``cuts``).
    """
    pick = min(cuts, gaps - cuts)  # draw the smaller side
    every = torch.arange(gaps, device=device).expand(B, gaps)  # (B, G)
    if pick == 0:
        return every[:, :cuts]  # nothing or every gap
    i = torch.arange(pick, dtype=torch.float64)
    mean, var = float((gaps / (gaps - i)).sum()), float((gaps * i / (gaps - i) ** 2).sum())
    R = int(math.ceil(mean + 6 * math.sqrt(var) + 8))  # draws per row
    small = torch.int16 if R < 2**15 else torch.int32  # a smaller table: less memory traffic
    step = torch.arange(R, device=device, dtype=small).expand(B, R)  # (B, R)
    draws = torch.randint(0, gaps, (B, R), generator=generator, device=device)  # (B, R)
    first = torch.full((B, gaps), R, dtype=small, device=device)  # (B, G): first draw of each gap, R if none
    while True:
        first.scatter_reduce_(1, draws, step, "amin")
        new = first.gather(1, draws) == step  # (B, R) the draw is its value's first
        seen = new.cumsum(1)  # (B, R) distinct values so far
        bad = seen[:, -1] < pick  # (B,)
        if not bool(bad.any()):
            break
        rows = bad.nonzero().flatten()
        first[rows] = R
        draws[rows] = torch.randint(0, gaps, (rows.numel(), R), generator=generator, device=device)
    reach = (seen < pick).sum(1, keepdim=True, dtype=small)  # (B, 1) the draw that brings the pick-th distinct value
    chosen = first <= reach  # (B, G) exactly `pick` per row
    return every[chosen if pick == cuts else ~chosen].view(B, cuts)  # (B, cuts)


def _fixed_segment_starts(B: int, items: int, segments: int, generator, device: torch.device) -> torch.Tensor:
    """:func:`_segment_starts` with the same ``items`` and ``segments`` in every row: ``(B, segments + 1)``
    long, column ``s`` the first item of segment ``s``, the last column ``items``."""
    cut = _fixed_cuts(B, items - 1, segments - 1, generator, device) + 1  # (B, segments - 1)
    zero = torch.zeros(B, 1, dtype=torch.long, device=device)
    return torch.cat([zero, cut, torch.full_like(zero, items)], 1)  # (B, segments + 1)


def random_spans_noise_mask(
    lengths: torch.Tensor,
    noise_density: float | torch.Tensor = 0.15,
    mean_noise_span_length: float | torch.Tensor = 3.0,
    *,
    width: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """T5's ``random_spans_noise_mask`` for a batch: ``(B, width)`` bool, True at noise tokens.

    Row ``b`` covers its first ``lengths[b]`` positions (False after them) with
    ``noise = clip(round(lengths[b] * noise_density[b]), 1, lengths[b] - 1)`` noise tokens in
    ``spans = max(1, round(noise / mean_noise_span_length[b]))`` spans. The noise tokens and the
    other tokens are each split into ``spans`` non-empty segments, uniformly at random and
    independently; the segments alternate, starting with non-noise (so every row **ends** with noise,
    as in T5 without ``random_roll``). Every mask with these counts is equally likely.

    ``noise_density`` and ``mean_noise_span_length`` are floats or ``(B,)`` tensors (one denoiser
    per row, UL2); ``lengths`` is a ``(B,)`` integer tensor, ``width`` defaults to its maximum.
    The counts are T5's arithmetic exactly: float32 products and quotients, rounded half to even
    (``tf.round``). No Python loop over rows:
    each segmentation is one ``topk`` over random keys for the whole batch (``_random_cuts``).
    Raises ``ValueError`` for a row shorter than 2 tokens or one whose non-noise tokens are fewer
    than its spans (too short for the density and span length).

    Row 0: 8 tokens, 4 noise in 2 spans; row 1: 5 tokens, 2 noise in 2 one-token spans:

    >>> random_spans_noise_mask(torch.tensor([8, 5]), torch.tensor([0.5, 0.4]), torch.tensor([2.0, 1.0]),
    ...                         generator=torch.Generator().manual_seed(0)).int()
    tensor([[0, 1, 1, 1, 0, 0, 0, 1],
            [0, 1, 0, 0, 1, 0, 0, 0]], dtype=torch.int32)
    """
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1 or lengths.shape[0] == 0:
        raise TypeError(f"lengths must be a non-empty (B,) integer tensor, got {lengths!r}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor, got dtype {lengths.dtype}")
    device = lengths.device
    check_generator(generator, device)
    B = lengths.shape[0]
    n = lengths.long()  # (B,)
    d = _per_row(noise_density, B, "noise_density", device)  # (B,) float64
    mu = _per_row(mean_noise_span_length, B, "mean_noise_span_length", device)  # (B,) float64
    if not bool(((d > 0) & (d < 1)).all()):
        bad = int((~((d > 0) & (d < 1))).nonzero()[0, 0])
        raise ValueError(f"noise_density must lie in (0, 1), got {float(d[bad])!r} (row {bad})")
    if not bool(((mu >= 1) & mu.isfinite()).all()):
        bad = int((~((mu >= 1) & mu.isfinite())).nonzero()[0, 0])
        raise ValueError(f"mean_noise_span_length must be a finite float >= 1, got {float(mu[bad])!r} (row {bad})")
    longest = int(n.max())
    width = longest if width is None else check_int(width, "width", low=1)
    if longest > width:
        raise ValueError(f"lengths holds {longest}, more than width={width}")
    f32 = torch.float32  # T5's arithmetic: float32 products and quotients, round half to even (as _counts)
    noise = torch.minimum((n.to(f32) * d.to(f32)).round().long().clamp(min=1), n - 1)  # (B,)
    spans = (noise.to(f32) / mu.to(f32)).round().long().clamp(min=1)  # (B,)
    bad = (n < 2) | (spans > n - noise)  # (B,)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise _too_short(int(n[b]), float(d[b]), float(mu[b]), f"row {b}")
    k = int(spans.max()) - 1
    noise_starts = _segment_starts(noise, spans, k, generator)  # (B, k + 2)
    other_starts = _segment_starts(n - noise, spans, k, generator)  # (B, k + 2)
    # noise span s starts after non-noise segments 0..s and noise segments 0..s-1; unused spans give n, n
    begin = other_starts[:, 1:] + noise_starts[:, :-1]  # (B, k + 1)
    end = other_starts[:, 1:] + noise_starts[:, 1:]  # (B, k + 1)
    delta = torch.zeros(B, width + 1, dtype=torch.int32, device=device)  # (B, width + 1)
    delta.scatter_add_(1, begin, torch.ones_like(begin, dtype=torch.int32))
    delta.scatter_add_(1, end, torch.full_like(begin, -1, dtype=torch.int32))
    return delta.cumsum(1, dtype=torch.int32)[:, :width] > 0  # (B, width)
