"""Attention over a batch's pattern without a dense ``(B, heads, T, T)`` bias or mask.

The pattern is data on the batch (:func:`lmobjectives.attention_mask_4d` is its one truth, for tests and
pictures). The model never needs all of it at once:

- plainly causal (no padding, documents, prefix or permutation) with RoPE: SDPA's own ``is_causal``, no mask;
  unpadded bidirectional with RoPE: no mask at all;
- every other pattern (ALiBi, or RoPE with padding, documents or a prefix) is built ``C`` query rows at a
  time by :func:`attention_mask_rows` (and :func:`alibi_bias` for those rows) from the batch's compact
  ``(B, T)`` fields, so one chunk's mask is ``(B, heads, C, Tk)`` and ``C`` is bounded by a byte budget
  (:class:`AttentionImpl`); in a causal pattern a chunk reads only the keys up to its last query (or the end
  of the longest prefix). When one chunk covers every query (short rows), it is built once per forward and
  shared by every layer: exactly the dense computation;
- cross-attention masks keys only: ``(B, 1, 1, T)``, broadcast over the decoder's queries;
- XLNet's ``perm_mask`` is itself ``(B, T, T)``: that pattern keeps the dense mask.

During training each chunk runs under activation checkpointing, so autograd keeps no chunk's mask or
scores: the backward rebuilds them, one chunk at a time.

``AttentionImpl(name="dense")`` is the reference: the whole ``(B, heads, T, T)`` bias or mask of
:func:`attention_mask_4d`, once per forward, as before this module existed.

FlexAttention (``torch.nn.attention.flex_attention``) is not used: in eager mode on the CPU it materialises the
full score matrix (torch 2.13 warns so, and a ``B=8, T=2048`` call peaks at 2.1 GB, see
``benchmarks/results/attention_memory.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .._checks import check_choice, check_positive_int
from ..batch import Batch, attention_mask_4d, attention_mask_rows

__all__ = [
    "DEFAULT_IMPL",
    "EVERY_KEY",
    "AttentionImpl",
    "AttentionInputs",
    "alibi_bias",
    "attend",
    "attention_mask_rows",
    "cross_attention_inputs",
    "pattern_attention_inputs",
    "set_attention_impl",
]

DEFAULT_CHUNK_BYTES = 64 * 2**20  # one chunk's (B, heads, C, Tk) float32 bias or scores: 64 MiB


@dataclass(frozen=True)
class AttentionImpl:
    """How one stack computes its attention; every choice computes the same attention (to float rounding).

    A model keeps one as ``model.attention_impl`` (:func:`set_attention_impl` sets it on every stack of a model).
    """

    name: Literal["chunked", "dense"] = "chunked"  # "dense": the whole bias/mask of attention_mask_4d (the reference)
    chunk_rows: int | None = None  # query rows per chunk; None: as many as fit in chunk_bytes
    chunk_bytes: int = (
        DEFAULT_CHUNK_BYTES  # budget of one chunk's (B, heads, C, Tk) float32 bias, when chunk_rows is None
    )

    def __post_init__(self) -> None:
        check_choice(self.name, "AttentionImpl.name", ("chunked", "dense"))
        check_positive_int(self.chunk_rows, "AttentionImpl.chunk_rows", allow_none=True)
        check_positive_int(self.chunk_bytes, "AttentionImpl.chunk_bytes")

    def rows_per_chunk(self, batch_size: int, n_heads: int, n_keys: int) -> int:
        """Query rows per chunk for a ``(batch_size, n_heads, ·, n_keys)`` attention: ``chunk_rows``, or the most
        that fit ``chunk_bytes``, rounded down to a multiple of 64 from 64 on."""
        if self.chunk_rows is not None:
            return self.chunk_rows
        rows = max(1, self.chunk_bytes // (4 * batch_size * n_heads * n_keys))
        return rows - rows % 64 if rows >= 64 else rows


DEFAULT_IMPL = AttentionImpl()


def set_attention_impl(model: torch.nn.Module, impl: AttentionImpl) -> None:
    """Set ``impl`` on every stack of ``model`` (each module with an ``attention_impl``, e.g. ELECTRA's two)."""
    for module in model.modules():
        if hasattr(module, "attention_impl"):
            module.attention_impl = impl


# -----------------------------------------------------------------------------
# the pattern, a few query rows at a time


def alibi_bias(
    position_ids: torch.Tensor, slopes: torch.Tensor, rows: slice = slice(None), keys: slice = slice(None)
) -> torch.Tensor:
    """Additive attention bias ``-slope * |pos_q - pos_k|`` of the query ``rows`` and ``keys``: ``(B, nh, C, K)``.

    Symmetric in query and key, so it serves the encoder too; in a decoder the causal mask removes the keys
    after the query anyway.

    >>> alibi_bias(torch.arange(4)[None], torch.tensor([0.5]), rows=slice(2, 4))[0, 0]
    tensor([[-1.0000, -0.5000, -0.0000, -0.5000],
            [-1.5000, -1.0000, -0.5000, -0.0000]])
    """
    distance = (position_ids[:, rows, None] - position_ids[:, None, keys]).abs()  # (B, C, K)
    return -slopes[None, :, None, None] * distance[:, None].to(slopes.dtype)  # (B, nh, C, K)


# -----------------------------------------------------------------------------
# what one stack's attention calls share


@dataclass(frozen=True)
class _RowPattern:
    """A pattern built ``chunk_rows`` query rows at a time (see :meth:`mask`)."""

    batch: Batch
    part: Literal["self", "decoder"]
    slopes: torch.Tensor | None  # (nh,) ALiBi slopes; None: a bool mask (RoPE)
    position_ids: torch.Tensor  # (B or 1, T) positions for ALiBi
    masked: bool  # False: every key is allowed (an ALiBi bias alone)
    causal_keys: int | None  # causal: a query before this many keys sees no key after itself; None: not causal
    chunk_rows: int

    def key_stop(self, stop: int, n_keys: int) -> int:
        """Keys the query rows ``[·, stop)`` may see lie before this index."""
        return n_keys if self.causal_keys is None else max(stop, self.causal_keys)

    def mask(self, rows: slice, keys: slice) -> torch.Tensor:
        """The rows' bool mask ``(B, 1, C, K)`` (True: may attend), or their ALiBi bias ``(B, nh, C, K)``, -inf where
        masked."""
        allowed = attention_mask_rows(self.batch, self.part, rows, keys) if self.masked else None
        if self.slopes is None:
            return allowed
        bias = alibi_bias(self.position_ids, self.slopes, rows, keys)  # (B or 1, nh, C, K)
        if allowed is None:
            return bias
        if bias.shape[0] == allowed.shape[0]:  # a fresh tensor of the result's shape: mask it in place
            return bias.masked_fill_(~allowed, float("-inf"))
        return bias.masked_fill(~allowed, float("-inf"))  # (B, nh, C, K)


@dataclass(frozen=True)
class AttentionInputs:
    """What every attention call of one stack needs, built once per forward (:func:`pattern_attention_inputs`).

    Either a whole ``mask`` (or none, with SDPA's ``is_causal``) shared by every layer, or ``rows``: the pattern,
    built one chunk of query rows at a time inside each attention call.
    """

    mask: torch.Tensor | None = None  # broadcastable to (B, nh, Tq, Tk): bool (True: attend) or additive float
    is_causal: bool = False  # SDPA's own causal mask (with mask None)
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # RoPE cos, sin (B or 1, 1, T, hs/2); None: no rotation
    rows: _RowPattern | None = None  # the pattern by chunks of query rows; mask is None then


EVERY_KEY = AttentionInputs()  # no mask, no positions: every query sees every key (cross-attention without padding)


def pattern_attention_inputs(
    batch: Batch,
    part: Literal["self", "decoder"],
    *,
    n_heads: int,
    slopes: torch.Tensor | None,
    position_ids: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None,
    impl: AttentionImpl,
) -> AttentionInputs:
    """The self-attention inputs of ``part``'s pattern with ALiBi ``slopes`` (None with ``rope``) over ``position_ids``
    ``(B or 1, T)``."""
    if part == "self":
        ids, causal = batch.input_ids, batch.causal
        plain = (  # no padding, documents, prefix or permutation: causality (if any) is the whole pattern
            batch.document_ids is None
            and batch.prefix_mask is None
            and batch.perm_mask is None
            and bool(batch.attention_mask.all())
        )
    else:
        ids, causal = batch.decoder_input_ids, True
        plain = batch.decoder_attention_mask is None or bool(batch.decoder_attention_mask.all())
    if rope is not None and plain:  # SDPA's own causal mask, or none at all
        return AttentionInputs(is_causal=causal, rope=rope)
    B, T = ids.shape
    if impl.name == "dense" or (part == "self" and batch.perm_mask is not None):  # the whole (B, ·, T, T) pattern
        if rope is not None:
            return AttentionInputs(mask=attention_mask_4d(batch, part), rope=rope)  # (B, 1, T, T) bool
        bias = alibi_bias(position_ids, slopes)  # (B or 1, nh, T, T)
        if plain and not causal:
            return AttentionInputs(mask=bias)
        allowed = attention_mask_4d(batch, part)  # (B, 1, T, T); the diagonal is always allowed, so no row is empty
        return AttentionInputs(mask=bias.masked_fill(~allowed, float("-inf")))  # (B, nh, T, T)
    causal_keys = None
    if causal:  # the prefix is bidirectional: its queries see keys up to the end of the longest prefix
        prefix = batch.prefix_mask if part == "self" else None
        causal_keys = 0 if prefix is None or not bool(prefix.any()) else int(prefix.any(0).nonzero().max()) + 1
    pattern = _RowPattern(
        batch=batch,
        part=part,
        slopes=slopes,
        position_ids=position_ids,
        masked=not (plain and not causal),
        causal_keys=causal_keys,
        chunk_rows=impl.rows_per_chunk(B, n_heads, T),
    )
    if pattern.chunk_rows >= T:  # one chunk: build it once for every layer
        return AttentionInputs(mask=pattern.mask(slice(None), slice(None)), rope=rope)
    return AttentionInputs(rope=rope, rows=pattern)


def cross_attention_inputs(batch: Batch, impl: AttentionImpl) -> AttentionInputs:
    """Cross-attention (no positions, as T5): every decoder query sees every real encoder key (all keys in a row
    without a real one). A key mask ``(B, 1, 1, T)``, or the dense ``(B, 1, Td, T)`` of :func:`attention_mask_4d`."""
    if bool(batch.attention_mask.all()):
        return EVERY_KEY
    if impl.name == "dense":
        return AttentionInputs(mask=attention_mask_4d(batch, part="cross"))  # (B, 1, Td, T) bool
    return AttentionInputs(mask=attention_mask_rows(batch, "cross", rows=slice(0, 1)))  # (B, 1, 1, T) bool


# -----------------------------------------------------------------------------
# the attention call


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: AttentionInputs, dropout_p: float = 0.0
) -> torch.Tensor:
    """SDPA of ``q`` ``(B, nh, Tq, hs)`` over ``k``, ``v`` ``(B, nh, Tk, hs)`` with the pattern of ``inputs``
    (RoPE, if any, already applied); ``(B, nh, Tq, hs)``."""
    pattern = inputs.rows
    if pattern is None:
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=inputs.mask, is_causal=inputs.is_causal, dropout_p=dropout_p
        )
    Tq, Tk = q.shape[2], k.shape[2]
    save_memory = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    chunks = []
    for start in range(0, Tq, pattern.chunk_rows):
        stop = min(start + pattern.chunk_rows, Tq)
        key_stop = pattern.key_stop(stop, Tk)
        args = (pattern, start, stop, dropout_p, q[:, :, start:stop], k[:, :, :key_stop], v[:, :, :key_stop])
        if save_memory:  # the backward rebuilds this chunk's mask and scores instead of keeping them
            chunks.append(checkpoint(_attend_rows, *args, use_reentrant=False))
        else:
            chunks.append(_attend_rows(*args))
    return torch.cat(chunks, dim=2)  # (B, nh, Tq, hs)


def _attend_rows(
    pattern: _RowPattern, start: int, stop: int, dropout_p: float, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    mask = pattern.mask(slice(start, stop), slice(0, k.shape[2]))  # (B, 1 or nh, C, K)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)  # (B, nh, C, hs)
