"""Flags generated from dataclass fields: a config's (``TrainConfig``, ``CompareConfig``) and an objective's options.

A config field ``batch_size: int = option(16, "sequences per step")`` becomes ``--batch-size BATCH_SIZE`` with
default 16, ``type=int`` and that help (:func:`add_field_flag`); the few flags whose name or parsing the
annotation does not give are in :data:`RENAMED` and :data:`AT_LEAST` here (the same for every command) and in
each command's own table. An objective's options become flags the same way, in a group of their own
(:func:`add_objective_options`), with ``option_``-prefixed destinations so that they never collide with a
command's flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

from ..recipes import OBJECTIVES, Option, Recipe, options_of
from ._common import int_at_least

__all__ = [
    "AT_LEAST",
    "RENAMED",
    "add_field_flag",
    "add_objective_options",
    "chosen_objective",
    "flag_name",
    "objective_options",
]

RENAMED = {"n_layers": "--layers", "n_heads": "--heads"}  # config fields whose flag is not --field-name

# int config fields whose flags take only integers >= the bound (the configs check their values again)
AT_LEAST: dict[str, int] = {
    **dict.fromkeys(
        (
            "steps",
            "batch_size",
            "seq_len",
            "d_model",
            "n_layers",
            "n_heads",
            "d_ff",
            "log_every",
            "eval_batches",
            "keep_checkpoints",
            "dupe_factor",
            "stop_after",
            "seeds",
        ),
        1,
    ),
    **dict.fromkeys(("warmup_steps", "save_every", "eval_every"), 0),
}


def flag_name(name: str) -> str:
    """The flag of field ``name``: ``--field-name``."""
    return "--" + name.replace("_", "-")


def _without_none(annotation: Any) -> Any:
    """``X`` for ``X | None`` (``Optional[X]``), else the annotation itself."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def add_field_flag(
    group: Any, field: dataclasses.Field, annotation: Any, *, more_help: str = "", **override: Any
) -> None:
    """Add the flag of config ``field`` (annotated ``annotation``) to ``group``.

    By default: ``--field-name`` (:data:`RENAMED`) with destination the field's name, the field's default,
    its help (``metadata["help"]``, then ``more_help``) and the type its annotation gives: ``X | None`` reads
    an X, ``tuple[X, ...]`` one or more X, an int of :data:`AT_LEAST` a bounded int, and a bool is a switch
    that flips the default (``--name`` when it is False, ``--no-name`` when it is True). ``override`` holds
    ``add_argument`` keywords on top of these (``names``: the flag's names, a positional's without dashes).
    """
    kind = _without_none(annotation)
    if kind is bool:
        names = [flag_name("no_" + field.name) if field.default else flag_name(field.name)]
        kwargs: dict[str, Any] = {"action": "store_false" if field.default else "store_true"}
    else:
        names = [RENAMED.get(field.name, flag_name(field.name))]
        kwargs = {"type": kind, "metavar": names[0].lstrip("-").replace("-", "_").upper()}
        if typing.get_origin(kind) is tuple:
            kwargs.update(type=typing.get_args(kind)[0], nargs="+")
        elif kind not in (int, float, str) and "type" not in override:
            raise TypeError(f"no flag for {field.name}: {annotation}; give its type in the command's table")
        if field.name in AT_LEAST:
            kwargs["type"] = int_at_least(AT_LEAST[field.name])
        if "choices" in override:
            del kwargs["metavar"]  # the usage line shows the choices
    kwargs.update(dest=field.name, default=field.default)
    kwargs["help"] = override.pop("help", None) or field.metadata["help"] + more_help
    names = override.pop("names", names)
    kwargs.update(override)
    if not names[0].startswith("-"):
        del kwargs["dest"]  # a positional's destination is its name
    group.add_argument(*names, **kwargs)


def _none_or(kind: type) -> Any:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


def _option_argument(option: Option) -> dict[str, Any]:
    """``add_argument`` keywords for an objective option, from its annotation."""
    kind, args = option.type, typing.get_args(option.type)
    origin = typing.get_origin(kind)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        return {"choices": list(args), "type": type(args[0])}
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return {"type": _none_or(inner), "metavar": f"{inner.__name__.upper()}|none"}
    metavar = option.name.upper()
    if origin is tuple:
        return {"type": args[0], "nargs": "+", "metavar": metavar}
    if kind in (int, float, str):
        return {"type": kind, "metavar": metavar}
    return {"type": json.loads, "metavar": "JSON"}


def add_objective_options(parser: argparse.ArgumentParser, name: str) -> None:
    """One flag per option of objective ``name`` (``--unit`` for the field ``unit``), in a group of its own."""
    recipe = OBJECTIVES[name]
    note = f"data only, lmobj train cannot train it: {recipe.untrainable}" if recipe.untrainable else None
    group = parser.add_argument_group(f"options of --objective {name} ({recipe.summary})", description=note)
    for option in options_of(recipe):
        group.add_argument(
            flag_name(option.name),
            dest=f"option_{option.name}",
            default=option.default,
            help=option.help or option.name,
            **_option_argument(option),
        )


def objective_options(args: argparse.Namespace, recipe: Recipe) -> dict[str, Any]:
    """The objective's options as parsed by the flags of :func:`add_objective_options`."""
    return {o.name: getattr(args, f"option_{o.name}") for o in options_of(recipe)}


def chosen_objective(argv: list[str], default: str) -> str:
    """The value of ``--objective`` in ``argv`` (before parsing: it decides which flags exist)."""
    for i, arg in enumerate(argv):
        if arg == "--objective" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--objective="):
            return arg.split("=", 1)[1]
    return default
