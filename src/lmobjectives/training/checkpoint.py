"""Checkpoints: model and AdamW state as safetensors, the trainer's position as a small JSON.

Layout of ``out/checkpoint/`` (``S`` = the step, zero-padded to 7 digits)::

    model-S.safetensors      # model.state_dict() (the tied LM head is the embedding, stored once)
    optimizer-S.safetensors  # "<param name>.exp_avg", "<param name>.exp_avg_sq", "<param name>.step"
    state.json               # step, tokens seen, best loss, elapsed time, data position, seeds

Saving is atomic: the new step's two weight files are written (each to a temporary name,
flushed to disk, renamed) next to the old ones, then ``state.json`` is replaced the same way,
which commits the new checkpoint, and only then are the old step's files deleted. A crash or a
second Ctrl-C at any moment leaves ``state.json`` naming a complete checkpoint: the old one or
the new one, never a mix. The safetensors files also carry the step in their metadata, checked
on load. The learning rate is a function of the step and every random draw is seeded from
``(seed, step)`` (see :mod:`.streams`), so no scheduler or generator state is stored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from ..models import MODELS, TransformerConfig

__all__ = ["load_checkpoint", "load_model", "save_checkpoint"]

STATE_FILE = "state.json"


def model_file(step: int) -> str:
    return f"model-{step:07d}.safetensors"


def optimizer_file(step: int) -> str:
    return f"optimizer-{step:07d}.safetensors"


def _commit(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk and rename it to ``path`` (atomic on POSIX and Windows)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable (POSIX; a no-op where a folder cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata={"format": "pt", "step": str(step)})
    _commit(tmp, path)


def optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten the optimizer's per-parameter state into ``{"<param>.<key>": tensor}``."""
    names = {p: name for name, p in model.named_parameters()}
    flat = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            flat[f"{names[param]}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return flat


def load_optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_tensors` (AdamW keeps ``step`` on the CPU, the moments on the parameter's device)."""
    params = dict(model.named_parameters())
    state: dict[str, dict[str, torch.Tensor]] = {}
    for flat_key, value in flat.items():
        name, key = flat_key.rsplit(".", 1)
        if name not in params:
            raise ValueError(f"optimizer checkpoint has state for unknown parameter {name!r}")
        state.setdefault(name, {})[key] = value if key == "step" else value.to(params[name].device)
    optimizer.state.clear()
    for name, entries in state.items():
        optimizer.state[params[name]] = entries


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write the checkpoint of ``state["step"]`` atomically (see the module docstring); returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    keep = {model_file(step), optimizer_file(step), STATE_FILE}
    _write_safetensors(model.state_dict(), directory / model_file(step), step)
    _write_safetensors(optimizer_tensors(model, optimizer), directory / optimizer_file(step), step)
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    _commit(tmp, directory / STATE_FILE)  # the commit point
    _fsync_directory(directory)
    for path in directory.iterdir():  # the previous step's files and leftovers of a crashed save
        if path.name not in keep and (path.suffix in (".safetensors", ".tmp")):
            path.unlink(missing_ok=True)
    return directory


def _file_step(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {}).get("step", -1))


def load_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load weights (and optimizer state) in place; returns the state JSON."""
    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text())
    step = int(state["step"])
    files = [directory / model_file(step)] + ([directory / optimizer_file(step)] if optimizer is not None else [])
    for path in files:
        if not path.exists():
            raise RuntimeError(f"{directory / STATE_FILE} says step {step} but {path} is missing")
        if _file_step(path) != step:
            raise RuntimeError(f"{path} is from step {_file_step(path)} but {directory / STATE_FILE} says step {step}")
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(files[0]), device=str(device)))
    if optimizer is not None:
        load_optimizer_tensors(model, optimizer, load_file(str(files[1])))
    return state


def load_model(out_dir: str | Path, device: str = "cpu") -> torch.nn.Module:
    """The trained model of a run folder (``out/config.json`` + ``out/checkpoint/``), in eval mode."""
    out_dir = Path(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    architecture = config.get("architecture", "transformer")  # runs saved before architectures existed
    model = MODELS[architecture](TransformerConfig(**config["model"]), **config.get("model_kwargs", {})).to(device)
    load_checkpoint(out_dir / "checkpoint", model)
    return model.eval()
