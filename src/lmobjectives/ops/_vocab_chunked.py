"""Vocabulary-chunked linear cross-entropy: cuBLAS GEMMs over chunks of classes, small epilogues.

The vocabulary (the rows of ``weight``) is cut into chunks of ``C`` classes. For each chunk the
logits ``(N, C)`` come from one ``torch.mm`` in the input dtype (cuBLAS: float32 accumulation
inside the GEMM), and an epilogue -- a Triton kernel (``_vocab_chunked_kernels``) on CUDA and
under ``TRITON_INTERPRET=1``, the same math in plain torch otherwise -- reads the chunk once:

* forward: folds the chunk into per-token running max, sum of exponentials, target logit, logit
  sum and argmax (an online log-sum-exp over chunks). Saves ``input``, ``weight``, ``bias``,
  ``target`` and ``lse`` (``N`` floats), never logits.
* backward: recomputes the chunk's logits (GEMM), turns them in place into
  ``dlogits`` (see :mod:`lmobjectives.ops._chunked` for the formula), then
  ``dweight[chunk] = dlogits.T @ input`` straight into the chunk's rows of the gradient (the
  chunks partition those rows, so nothing is accumulated across chunks and the GEMM's float32
  accumulator is rounded once), ``dbias[chunk] = dlogits.sum(0)`` in float32, and
  ``dinput += dlogits @ weight[chunk]`` into a float32 accumulator. Only the gradients that are
  needed are computed.

Cost: four GEMMs of ``2 N d V`` FLOPs each (forward logits; backward logits, dweight, dinput),
i.e. 4/3 of the three-GEMM floor, with exact gradients (nothing is skipped) -- plus, when the
``dinput`` accumulator borrows ``dweight`` rows (below), one more logits GEMM over those
``~N`` classes, a fraction ``N / V`` of a GEMM. Memory traffic besides the GEMM operands: each
logits element is written and read about seven times in bf16 over forward and backward (~14
bytes per logit), and the float32 ``dinput`` accumulator is read and written once per chunk
(``8 N d`` bytes per chunk). No host synchronisation (besides the one-time probe below, which
never runs inside CUDA-graph capture).

Memory: one ``(N, C)`` logits chunk in the input dtype, ``C`` a multiple of 128 chosen so that
the chunk plus ``_TOKEN_BYTES`` per token of ``(N,)`` vectors fit in 64 MiB (``chunk_size``
overrides ``C``), plus the gradients themselves. ``dinput`` must be summed over all chunks in
float32: summing in bf16 rounds once per chunk and costs about ``sqrt(#chunks)`` times the
single-rounding error (one bf16 rounding is ~1.7e-3 relative, so 32 chunks would miss a 3e-3
goal). Accumulating a block of rows at a time in float32 is no way out: a row block's
``dinput`` needs that block's ``dlogits`` for every class, i.e. a second sweep over the
vocabulary in token order (a fifth GEMM, and ``dweight`` would then be summed across row
blocks). A float32 accumulator is ``4 N d`` bytes against the ``2 N d`` of the bf16 gradient;
the extra ``2 N d`` is found in memory that exists anyway:

* rows ``[0, N/2)`` of the accumulator live in the storage of the bf16 ``dinput`` gradient
  itself (``N d`` bf16 elements hold ``N/2 * d`` floats) and are cast down in place at the end,
  front to back (a bf16 row never lands on a float32 row that has not been read yet);
* rows ``[N/2, N)`` live in the last ``~N`` rows of the bf16 ``dweight`` gradient, which are not
  written until the accumulator is done: those classes' chunks contribute to ``dinput`` (and
  ``dbias``) in the main loop, and their ``dweight`` rows are written afterwards, recomputing
  their logits (a fifth GEMM over ``N`` of the ``V`` classes; the cast's temporary lives in
  the idle chunk buffer meanwhile).

So with half-precision inputs that need both ``dinput`` and ``dweight`` and ``V >= N``, the peak
extra memory is the gradients + 64 MiB. Otherwise (frozen weight, ``V < N``, or
``borrow_dweight=False``) the second half is a separate float32 ``(N/2, d)`` buffer: gradients
+ 64 MiB + ``2 N d`` bytes. float32/float64 inputs accumulate into the gradient itself.

Benchmark shapes (bf16), default chunks::

    N x d x V             C    chunk    recomputed (borrowed rows)   without borrowing
    8192 x 4096 x 128256  3968 62 MiB   8192 classes, 6.4 % of a GEMM   +64 MiB more
    8192 x 2304 x 256000  3968 62 MiB   8192 classes, 3.2 % of a GEMM   +36 MiB more
    32768 x 4096 x 128256  896 56 MiB  32768 classes, 26 % of a GEMM   +256 MiB more

All three meet "gradients + 64 MiB" with borrowing; none does without it.

The ``dinput`` GEMM accumulates into float32 with ``torch.addmm(acc, dz, w, out_dtype=float32,
out=acc)`` where the installed torch supports it on the device (recent torch on CUDA; detected
once with a tiny probe, never inside CUDA-graph capture); elsewhere (CPU, older torch) with
float32 copies of the operands, which gives the same result (products of half-precision values
are exact in float32) at the cost of temporary memory.

On CPU the GEMMs also run in the input dtype (the epilogues in float32): this path exists there
for tests and as the fallback, not for speed (use ``impl="chunked"`` on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from lmobjectives.ops._common import TRITON_AVAILABLE, LossOptions, accumulation_dtype

__all__ = [
    "backward_grads",
    "default_epilogue",
    "default_vocab_chunk",
    "dinput_accumulation",
    "forward_stats",
]

_CHUNK_BYTES = 64 * 2**20
"""Target size of one ``(N, C)`` logits chunk in the input dtype: the "+64 MiB" memory goal."""
_CHUNK_MULTIPLE = 128
"""Default chunks are a multiple of this many classes (a whole number of GEMM tiles)."""
_TOKEN_BYTES = 64
"""Bytes per token of the ``(N,)`` vectors alive next to the chunk (running statistics, lse,
row scales, masks; about 40 in fact), kept inside the ``_CHUNK_BYTES`` budget."""
_HALF = (torch.float16, torch.bfloat16)


def default_vocab_chunk(num_tokens: int, vocab_size: int, dtype: torch.dtype) -> int:
    """Classes per chunk: the largest multiple of 128 whose ``(N, C)`` chunk in ``dtype`` plus
    ``_TOKEN_BYTES`` per token fits in ``_CHUNK_BYTES`` (at least 128), at most ``vocab_size``.

    >>> default_vocab_chunk(8192, 128256, torch.bfloat16), default_vocab_chunk(32768, 128256,
    ...     torch.bfloat16)
    (3968, 896)
    """
    tokens = max(1, num_tokens)
    budget = _CHUNK_BYTES - _TOKEN_BYTES * tokens
    chunk = max(1, budget // (tokens * torch.finfo(dtype).bits // 8) // _CHUNK_MULTIPLE)
    chunk *= _CHUNK_MULTIPLE
    return min(chunk, vocab_size)


def _split(start: int, end: int, size: int) -> list[tuple[int, int]]:
    """``[start, end)`` cut into consecutive ranges of ``size`` (the last one may be shorter)."""
    return [(s, min(s + size, end)) for s in range(start, end, size)]


# --------------------------------------------------------------------------- epilogue choice


def default_epilogue(device: torch.device, dtype: torch.dtype) -> str:
    """``"triton"`` on CUDA (or any device under ``TRITON_INTERPRET=1``) for half/float32 inputs
    when Triton is importable; ``"torch"`` otherwise (float64 included)."""
    triton_device = device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"
    if triton_device and dtype != torch.float64 and TRITON_AVAILABLE:
        return "triton"
    return "torch"


# --------------------------------------------------------------------------- dinput accumulation


_PROBED: dict[tuple[str, int | None, torch.dtype], bool] = {}
"""Results of the one-time probe per (device type, device index, dtype)."""


def _probe_fused_fp32_addmm(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        a = torch.ones(2, 3, dtype=dtype, device=device)
        b = torch.full((3, 2), 0.25, dtype=dtype, device=device)
        acc = torch.full((2, 2), 256.0, dtype=torch.float32, device=device)
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
        # 256.75 is exact in float32; a half-precision detour would round it to 256 or 257/258.
        return acc.dtype == torch.float32 and bool((acc == 256.75).all())
    except (RuntimeError, TypeError, ValueError):  # NotImplementedError is a RuntimeError
        return False


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _fused_fp32_addmm(device: torch.device, dtype: torch.dtype) -> bool:
    """Does ``torch.addmm(acc, a, b, out_dtype=float32, out=acc)`` accumulate half-precision
    products into a float32 ``acc`` on this device? One tiny probe per device and dtype, run on
    first use (the forward calls this too, so an eager warm-up step runs it). The probe reads
    its result back (a host synchronisation), which CUDA-graph capture forbids: while the
    current stream is capturing and the answer is not known yet, no probe runs and the answer
    is False (the float32-copies fallback: the same sums, more temporary memory), not cached."""
    key = (device.type, device.index, dtype)
    if key not in _PROBED:
        if _capturing(device):
            return False
        _PROBED[key] = _probe_fused_fp32_addmm(device, dtype)
    return _PROBED[key]


def dinput_accumulation(device: torch.device, dtype: torch.dtype) -> str:
    """How ``dinput`` is accumulated for inputs of ``dtype`` on ``device`` (for reports):
    ``"in the gradient"`` (float32/float64), ``"addmm out_dtype=float32"`` (fused, no
    temporaries) or ``"float32 operand copies"`` (fallback)."""
    if dtype not in _HALF:
        return "in the gradient"
    if _fused_fp32_addmm(device, dtype):
        return "addmm out_dtype=float32"
    return "float32 operand copies"


class _DinputAccumulator:
    """``dinput = sum over chunks of dz_c @ W_c`` with float32 (float64) accumulation, placed as
    described in the module docstring. ``rows`` of the accumulator are kept as up to two parts
    ``(row_start, row_end, float tensor)``."""

    def __init__(
        self,
        num_tokens: int,
        dim: int,
        dtype: torch.dtype,
        device: torch.device,
        borrowed: Tensor | None,
    ) -> None:
        """``borrowed``: a float32 ``(N - N//2, d)`` view of not-yet-written ``dweight`` rows to
        hold the second half, or None to allocate it (half-precision ``dtype`` only)."""
        n, d = num_tokens, dim
        self.out = torch.empty(n, d, dtype=dtype, device=device)  # (N, d) the gradient
        self.dtype = dtype
        if dtype not in _HALF:
            self.parts = [(0, n, self.out)]
            self.fused = False
        else:
            h = n // 2
            lo = self.out.view(-1)[: 2 * h * d].view(torch.float32).view(h, d)  # (h, d)
            hi = borrowed
            if hi is None:
                hi = torch.empty(n - h, d, dtype=torch.float32, device=device)  # (N - h, d)
            self.parts = [(0, h, lo), (h, n, hi)]
            self.fused = _fused_fp32_addmm(device, dtype)
        for _, _, part in self.parts:
            part.zero_()

    def add(self, dz: Tensor, w: Tensor) -> None:
        """``acc += dz @ w`` for ``dz`` ``(N, C)``, ``w`` ``(C, d)``."""
        for start, end, part in self.parts:
            if end == start:
                continue
            a = dz[start:end]
            if part.dtype == dz.dtype:
                part.addmm_(a, w)
            elif self.fused:
                torch.addmm(part, a, w, out_dtype=torch.float32, out=part)
            else:
                part.addmm_(a.to(part.dtype), w.to(part.dtype))

    def finish(self, scratch: Tensor) -> Tensor:
        """Cast down to the input dtype (in place) and return the ``(N, d)`` gradient; after
        this the borrowed rows are free. ``scratch``: idle memory in the input dtype (the chunk
        buffer) for the cast's temporary; the cast runs in blocks of its size."""
        if self.dtype not in _HALF:
            return self.out
        (_, h, lo), (_, n, hi) = self.parts
        d = self.out.shape[1]
        block = max(1, scratch.numel() // max(1, d))
        if scratch.numel() < d:
            scratch = torch.empty(d, dtype=self.dtype, device=self.out.device)
        # bf16 rows [s, e) overwrite bytes of float32 rows [s/2, e/2), all read already or in
        # this block (read into the temporary first).
        for s in range(0, h, block):
            e = min(s + block, h)
            tmp = scratch[: (e - s) * d].view(e - s, d)
            tmp.copy_(lo[s:e])
            self.out[s:e].copy_(tmp)
        # bf16 rows [h, N) overwrite float32 rows [h/2, N/2) of ``lo``: cast above.
        if n > h:
            self.out[h:n].copy_(hi)
        return self.out


def _borrow_rows(num_tokens: int, vocab_size: int) -> int | None:
    """First ``dweight`` row of the region that can hold the accumulator's second half
    (``N - N//2`` float32 rows = ``2 * (N - N//2)`` half rows), a multiple of 8 so that the view
    is 16-byte aligned; None if the vocabulary is too small."""
    rows = 2 * (num_tokens - num_tokens // 2)
    start = (vocab_size - rows) // 8 * 8
    return start if start >= 0 and rows > 0 else None


# --------------------------------------------------------------------------- epilogues


@dataclass
class _State:
    """Per-token running statistics over the chunks seen so far, all ``(N,)``."""

    max: Tensor
    sumexp: Tensor
    z_target: Tensor
    z_sum: Tensor | None
    argmax: Tensor | None

    def as_tuple(self):
        return self.max, self.sumexp, self.z_target, self.z_sum, self.argmax


def _capped(logits: Tensor, bias: Tensor | None, softcap: float | None, dtype: torch.dtype):
    """``(z, tanh)`` in ``dtype``: ``logits + bias``, capped (``tanh`` None without cap)."""
    z = logits.to(dtype)
    if bias is not None:
        z = z + bias.to(dtype)
    if softcap is None:
        return z, None
    th = torch.tanh(z / softcap)
    return softcap * th, th


def _exp_diff(old: Tensor, new: Tensor) -> Tensor:
    """``exp(old - new)``, with ``-inf - -inf`` read as 1 (not NaN)."""
    return torch.where(old == new, torch.ones_like(old), torch.exp(old - new))


def _forward_epilogue_torch(logits, bias, target, v_offset, state: _State, *, softcap) -> None:
    """Torch version of ``_vocab_chunked_kernels.forward_epilogue`` (same math)."""
    c = logits.shape[1]
    z, _ = _capped(logits, bias, softcap, state.max.dtype)  # (N, C)
    c_max = z.amax(1)  # (N,)
    c_sum = torch.exp(z - c_max.unsqueeze(1)).sum(1)  # (N,)
    new_max = torch.maximum(state.max, c_max)
    state.sumexp.copy_(state.sumexp * _exp_diff(state.max, new_max) + c_sum * _exp_diff(c_max, new_max))
    col = target - v_offset  # (N,)
    hit = (col >= 0) & (col < c)
    picked = z.gather(1, col.clamp(0, c - 1).unsqueeze(1)).squeeze(1)
    state.z_target.add_(torch.where(hit, picked, torch.zeros_like(picked)))
    if state.z_sum is not None:
        state.z_sum.add_(z.sum(1))
    if state.argmax is not None:
        state.argmax.copy_(torch.where(c_max > state.max, z.argmax(1) + v_offset, state.argmax))
    state.max.copy_(new_max)


def _backward_epilogue_torch(
    logits,
    bias,
    target,
    v_offset,
    lse,
    row_scale,
    *,
    softcap,
    label_smoothing,
    z_loss,
    vocab_size,
) -> None:
    """Torch version of ``_vocab_chunked_kernels.backward_epilogue`` (same math)."""
    c = logits.shape[1]
    z, th = _capped(logits, bias, softcap, lse.dtype)  # (N, C)
    coef_a = row_scale * (1.0 + 2.0 * z_loss * lse)  # (N,)
    dz = torch.exp(z - lse.unsqueeze(1)).mul_(coef_a.unsqueeze(1))  # (N, C)
    cols = torch.arange(v_offset, v_offset + c, device=logits.device)  # (C,)
    one_hot = cols.unsqueeze(0) == target.unsqueeze(1)  # (N, C)
    dz.sub_(torch.where(one_hot, (row_scale * (1.0 - label_smoothing)).unsqueeze(1), 0.0))
    if label_smoothing > 0.0:
        dz.sub_((row_scale * (label_smoothing / vocab_size)).unsqueeze(1))
    if th is not None:
        dz.mul_(1.0 - th.square())
    dz = torch.where((row_scale != 0).unsqueeze(1), dz, torch.zeros_like(dz))
    logits.copy_(dz)


# --------------------------------------------------------------------------- the problem


class _Problem:
    """Tensors, options and the chunk buffer shared by every chunk of one pass."""

    def __init__(self, x, weight, bias, target, options: LossOptions, *, chunk, epilogue) -> None:
        self.x, self.weight, self.bias, self.target = x, weight, bias, target
        self.num_tokens, self.vocab_size = x.shape[0], weight.shape[0]
        self.options = options
        self.chunk = chunk
        self.epilogue = epilogue
        self.acc_dtype = accumulation_dtype(x.dtype)
        # One (N, C) chunk, reused; chunk i views its first N * C_i elements.
        self.buffer = torch.empty(self.num_tokens * min(chunk, self.vocab_size), dtype=x.dtype, device=x.device)
        if epilogue == "triton":
            from lmobjectives.ops import _vocab_chunked_kernels as kernels

            self.kernels = kernels

    def logits(self, v0: int, v1: int) -> Tensor:
        """``input @ weight[v0:v1].T`` into the buffer, ``(N, v1 - v0)`` (no bias)."""
        out = self.buffer[: self.num_tokens * (v1 - v0)].view(self.num_tokens, v1 - v0)
        return torch.mm(self.x, self.weight[v0:v1].t(), out=out)

    def bias_chunk(self, v0: int, v1: int) -> Tensor | None:
        return None if self.bias is None else self.bias[v0:v1]

    def fold(self, v0: int, v1: int, state: _State) -> None:
        logits = self.logits(v0, v1)
        if self.epilogue == "triton":
            self.kernels.forward_epilogue(
                logits,
                self.bias_chunk(v0, v1),
                self.target,
                v0,
                state.as_tuple(),
                softcap=self.options.softcap,
            )
        else:
            _forward_epilogue_torch(
                logits,
                self.bias_chunk(v0, v1),
                self.target,
                v0,
                state,
                softcap=self.options.softcap,
            )

    def dlogits(self, v0: int, v1: int, lse, row_scale) -> Tensor:
        """``(N, v1 - v0)`` dlogits in the input dtype (in the buffer)."""
        logits = self.logits(v0, v1)
        o = self.options
        kw = dict(softcap=o.softcap, label_smoothing=o.label_smoothing, z_loss=o.z_loss, vocab_size=self.vocab_size)
        if self.epilogue == "triton":
            self.kernels.backward_epilogue(logits, self.bias_chunk(v0, v1), self.target, v0, lse, row_scale, **kw)
        else:
            _backward_epilogue_torch(logits, self.bias_chunk(v0, v1), self.target, v0, lse, row_scale, **kw)
        return logits


def forward_stats(
    x: Tensor,  # (N, d)
    weight: Tensor,  # (V, d)
    bias: Tensor | None,  # (V,)
    target: Tensor,  # (N,) int64
    options: LossOptions,
    *,
    need_argmax: bool,
    chunk: int,
    epilogue: str,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Per-token ``(lse, z_target, z_sum, argmax)``, each ``(N,)`` (``z_sum`` None without
    label smoothing, ``argmax`` None unless asked for), over chunks of ``chunk`` classes."""
    problem = _Problem(x, weight, bias, target, options, chunk=chunk, epilogue=epilogue)
    n, device, acc = problem.num_tokens, x.device, problem.acc_dtype
    if x.dtype in _HALF:
        _fused_fp32_addmm(device, x.dtype)  # the backward's probe, outside any backward capture
    state = _State(
        max=torch.full((n,), float("-inf"), dtype=acc, device=device),
        sumexp=torch.zeros(n, dtype=acc, device=device),
        z_target=torch.zeros(n, dtype=acc, device=device),
        z_sum=torch.zeros(n, dtype=acc, device=device) if options.label_smoothing > 0 else None,
        argmax=torch.zeros(n, dtype=torch.int64, device=device) if need_argmax else None,
    )
    for v0, v1 in _split(0, problem.vocab_size, problem.chunk):
        problem.fold(v0, v1, state)
    lse = state.max + state.sumexp.log()  # (N,)
    return lse, state.z_target, state.z_sum, state.argmax


def backward_grads(
    x: Tensor,  # (N, d)
    weight: Tensor,  # (V, d)
    bias: Tensor | None,  # (V,)
    target: Tensor,  # (N,) int64
    lse: Tensor,  # (N,) from forward_stats
    row_scale: Tensor,  # (N,) d(loss)/d(token loss), 0 at ignored tokens
    options: LossOptions,
    *,
    need: tuple[bool, bool, bool],
    chunk: int,
    epilogue: str,
    borrow: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(dinput, dweight, dbias)`` in the parameters' dtypes (None where not ``need``)."""
    problem = _Problem(x, weight, bias, target, options, chunk=chunk, epilogue=epilogue)
    (n, d), v = x.shape, problem.vocab_size
    need_dx, need_dw, need_db = need
    dw = torch.empty(v, d, dtype=weight.dtype, device=x.device) if need_dw else None  # (V, d)
    db = torch.empty(v, dtype=problem.acc_dtype, device=x.device) if need_db else None  # (V,)

    # Rows [split, V) of dweight host the dinput accumulator's second half (see module doc).
    split = v
    borrowed = None
    if need_dx and need_dw and borrow and x.dtype in _HALF:
        start = _borrow_rows(n, v)
        if start is not None:
            split = start
            rows = n - n // 2
            borrowed = dw.view(-1)[start * d : (start + 2 * rows) * d].view(torch.float32)
            borrowed = borrowed.view(rows, d)  # (N - N//2, d) float32
    acc = _DinputAccumulator(n, d, x.dtype, x.device, borrowed) if need_dx else None

    main = _split(0, split, problem.chunk)
    tail = _split(split, v, problem.chunk)  # dweight deferred until dinput is done
    for v0, v1 in main + tail:
        dz = problem.dlogits(v0, v1, lse, row_scale)  # (N, C)
        if db is not None:
            torch.sum(dz, 0, dtype=db.dtype, out=db[v0:v1])
        if dw is not None and v1 <= split:
            torch.mm(dz.t(), x, out=dw[v0:v1])
        if acc is not None:
            acc.add(dz, weight[v0:v1])
    dx = acc.finish(scratch=problem.buffer) if acc is not None else None
    if dw is not None:
        for v0, v1 in tail:  # the borrowed rows are free now
            dz = problem.dlogits(v0, v1, lse, row_scale)
            torch.mm(dz.t(), x, out=dw[v0:v1])
    return dx, dw, None if db is None else db.to(bias.dtype)
