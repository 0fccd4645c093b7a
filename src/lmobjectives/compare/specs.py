"""What a comparison trains: objective specs written ``NAME:option=value,...`` and the named presets.

An objective spec is a registered objective's name, optionally followed by ``:`` and its options as
``key=value`` pairs separated by commas, e.g. ``mlm:unit=word,probability=0.4``. Keys are the objective's
dataclass fields (``lmobj train --objective NAME --help`` lists them; ``-`` may stand for ``_``); values are
parsed by the field's type: ``true``/``false`` for switches, ``none`` for an optional value left unset, and
a tuple's items separated by commas (``ul2:noise_densities=0.15,0.5,rates=0.5,0.5``: a comma followed by
``key=`` starts the next option).

>>> spec = parse_objective("mlm:unit=word,probability=0.4")
>>> spec.objective, spec.options
('mlm', {'unit': 'word', 'probability': 0.4})
>>> parse_objective("ul2:noise_densities=0.15,0.5,use_prefix_lm_task=false").options
{'noise_densities': [0.15, 0.5], 'use_prefix_lm_task': False}
>>> parse_objective("mlm:unit=word").slug
'mlm-unit=word'
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .._checks import check_choice
from ..recipes import OBJECTIVES, Option, options_of
from ..recipes.presets import PRESETS, Preset

__all__ = ["PRESETS", "Preset", "RunSpec", "parse_objective"]

_NEXT_OPTION = re.compile(r",(?=\s*[A-Za-z_][\w-]*\s*=)")  # a comma that starts the next key=value
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")  # characters kept out of folder names


@dataclass(frozen=True)
class RunSpec:
    """One objective of a comparison: its label as written, its registry name and the options it sets."""

    label: str  # the spec as the user wrote it (the report's row name), e.g. "mlm:unit=word"
    objective: str  # a name of lmobjectives.OBJECTIVES
    options: dict[str, Any] = field(default_factory=dict)  # the options set (the others keep their defaults)

    @property
    def slug(self) -> str:
        """A folder name for the spec's runs: ``:`` and ``,`` become ``-``, other odd characters ``_``."""
        return _UNSAFE.sub("_", self.label.replace(":", "-").replace(",", "-")).strip("._") or self.objective


def parse_objective(text: str) -> RunSpec:
    """The :class:`RunSpec` of ``"NAME"`` or ``"NAME:key=value,key=value"`` (see the module docstring).

    Unknown objectives and options, and values of the wrong type, are a ``ValueError`` naming them; the
    values' ranges are checked when the objective is built.
    """
    if not isinstance(text, str):
        raise TypeError(f"an objective spec must be a string like 'mlm:unit=word', got {type(text).__name__}")
    label = text.strip()
    name, _, rest = label.partition(":")
    name = name.strip()
    trainable = [n for n, r in OBJECTIVES.items() if not r.untrainable]
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r} in {text!r}; choose one of: {', '.join(trainable)}")
    recipe = OBJECTIVES[name]
    if recipe.untrainable:
        raise ValueError(f"objective {name!r} cannot be trained, so it cannot be compared: {recipe.untrainable}")
    known = {o.name: o for o in options_of(recipe)}
    options: dict[str, Any] = {}
    for part in _NEXT_OPTION.split(rest) if rest.strip() else []:
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ValueError(f"objective spec {text!r}: expected key=value after ':', got {part!r}")
        if key not in known:
            raise ValueError(
                f"objective spec {text!r}: unknown option {key!r} of {name}; its options are: {', '.join(known) or 'none'}"
            )
        if key in options:
            raise ValueError(f"objective spec {text!r}: option {key!r} given twice")
        options[key] = _parse_value(known[key], value.strip(), text)
    return RunSpec(label=label, objective=name, options=options)


def _parse_value(option: Option, text: str, spec: str) -> Any:
    """``text`` as a value of ``option``'s annotated type (tuples as JSON lists)."""
    kind, args = option.type, typing.get_args(option.type)
    origin = typing.get_origin(kind)
    where = f"objective spec {spec!r}: option {option.name}"
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if text.lower() == "none":
            return None
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        if text.lower() in ("true", "yes", "1", "on"):
            return True
        if text.lower() in ("false", "no", "0", "off"):
            return False
        raise ValueError(f"{where} is a switch: true or false, got {text!r}")
    if origin is typing.Literal:
        by_text = {str(choice): choice for choice in args}
        return by_text[check_choice(text, where, tuple(by_text))]
    if origin is tuple:
        item = args[0]
        return [_scalar(item, part.strip(), where) for part in text.split(",")]
    return _scalar(kind, text, where)


def _scalar(kind: Any, text: str, where: str) -> Any:
    if kind not in (int, float, str):
        raise ValueError(f"{where} has a type ({kind}) that an objective spec cannot write; use the Python API")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{where} takes {'an' if kind is int else 'a'} {kind.__name__}, got {text!r}") from None
