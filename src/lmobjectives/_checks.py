"""Argument checks shared by objectives, losses and the data pipeline. Each raises with the argument's name and value."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from itertools import chain

import torch

from .vocab import Vocab


def check_token_ids(x: object, vocab: Vocab, name: str = "input_ids") -> torch.Tensor:
    """Check a padded batch of token ids: an integer ``[B, T]`` tensor with ids in ``[0, vocab.size)``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, T], got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have rank 2 [B, T], got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); need at least one token in one sequence")
    lo, hi = (int(v) for v in torch.aminmax(x))
    if lo < 0 or hi >= vocab.size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name} holds id {bad}, outside [0, {vocab.size}) (vocab.size={vocab.size})")
    return x.long()


def check_like(x: object, ref: torch.Tensor, name: str, *, dtype: str = "int") -> torch.Tensor:
    """Check an extra per-token tensor (word ids, document ids, mask) has the shape of ``ref``.

    Returns a new tensor (never ``x`` itself), so a :class:`Batch` does not alias the caller's tensors.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {tuple(ref.shape)}, got {type(x).__name__}")
    if tuple(x.shape) != tuple(ref.shape):
        raise ValueError(f"{name} must have the shape of input_ids {tuple(ref.shape)}, got {tuple(x.shape)}")
    if dtype == "bool":
        if x.dtype != torch.bool and (x.dtype.is_floating_point or x.dtype.is_complex):
            raise TypeError(f"{name} must be a bool (or 0/1 integer) tensor, got dtype {x.dtype}")
        if x.dtype != torch.bool:  # an integer mask: 0 and 1 only (2 or -1 would silently read as True)
            other = (x != 0) & (x != 1)
            if bool(other.any()):  # host sync, on integer masks only
                where = [int(i) for i in other.nonzero()[0]]
                raise ValueError(
                    f"{name} must hold only 0 and 1 (or be a bool tensor), got {int(x[tuple(where)])} at {where}"
                )
        return x.to(device=ref.device, dtype=torch.bool, copy=True)
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {x.dtype}")
    return x.to(device=ref.device, dtype=torch.long, copy=True)


def check_probability(value: object, name: str, *, low_open: bool = False, high_open: bool = False) -> float:
    """Check a float in [0, 1] (ends optionally open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise TypeError(f"{name} must be a float in [0, 1], got {value!r}")
    v = float(value)
    if v < 0 or v > 1 or (low_open and v == 0) or (high_open and v == 1):
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise ValueError(f"{name} must lie in {lo}0, 1{hi}, got {value!r}")
    return v


def check_positive_int(value: object, name: str, *, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_generator(generator: object, device: torch.device) -> torch.Generator | None:
    """A generator is optional but, when given, must live on the tensors' device type."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device.type!r} but input_ids is on {device.type!r}; "
            f"create it with torch.Generator(device={device.type!r})"
        )
    return generator


def int_rows(rows: object, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate a sequence of integer lists (or 1-d tensors): ``(total,)`` long values and ``(len(rows),)``
    long lengths; a ``TypeError`` naming ``name`` for anything else.

    >>> int_rows([[7, 8], [], [9]], "documents")
    (tensor([7, 8, 9]), tensor([2, 0, 1]))
    """
    if isinstance(rows, (str, bytes, torch.Tensor)) or not isinstance(rows, Sequence):
        raise TypeError(f"{name} must be a sequence of integer sequences, got {type(rows).__name__}")
    rows = [r.tolist() if isinstance(r, torch.Tensor) else r for r in rows]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)  # (R,)
    try:  # array('q') takes ints only and is several times faster than torch.tensor on a long list
        flat = array("q", chain.from_iterable(rows))
    except TypeError as e:
        raise TypeError(f"{name} must hold Python ints ({e})") from None
    values = torch.frombuffer(flat, dtype=torch.long) if len(flat) else torch.zeros(0, dtype=torch.long)  # (total,)
    return values, lengths


def check_choice(value: object, name: str, choices: Sequence[object]) -> object:
    """Check ``value`` is one of ``choices``; returns it.

    >>> check_choice("word", "unit", ("token", "word"))
    'word'
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_int(
    value: object, name: str, *, low: int | None = None, high: int | None = None, allow_none: bool = False
) -> int | None:
    """Check an int (a bool is not one) in ``[low, high]`` (each end optional, both inclusive), or None with
    ``allow_none``: a ``TypeError`` for another type, a ``ValueError`` out of range.

    >>> check_int(3, "num_targets", low=0, high=2)
    Traceback (most recent call last):
    ValueError: num_targets must be an int in [0, 2], got 3
    """
    if value is None and allow_none:
        return None
    what = "an int"
    if low is not None and high is not None:
        what += f" in [{low}, {high}]"
    elif low is not None:
        what += f" >= {low}"
    elif high is not None:
        what += f" <= {high}"
    if allow_none:
        what = "None or " + what
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return value


def check_finite_float(
    value: object, name: str, *, low: float | None = None, low_open: bool = False, allow_none: bool = False
) -> float | None:
    """Check a finite float (an int counts, a bool does not) ``>= low`` (``> low`` with ``low_open``; no bound
    without ``low``), or None with ``allow_none``; returns it as a float. A ``TypeError`` for another type, a
    ``ValueError`` for NaN, an infinity or a value below the bound.

    >>> check_finite_float(0, "softcap", low=0, low_open=True, allow_none=True)
    Traceback (most recent call last):
    ValueError: softcap must be None or a finite float > 0, got 0
    """
    if value is None and allow_none:
        return None
    what = "a finite float" if low is None else f"a finite float {'>' if low_open else '>='} {low:g}"
    if allow_none:
        what = "None or " + what
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low)):
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return v
