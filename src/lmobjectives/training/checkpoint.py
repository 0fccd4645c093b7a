"""Checkpoints: model and AdamW state as safetensors, the trainer's position as a small JSON.

Layout of ``out/checkpoint/``::

    model.safetensors      # model.state_dict() (the tied LM head is the embedding, stored once)
    optimizer.safetensors  # "<param name>.exp_avg", "<param name>.exp_avg_sq", "<param name>.step"
    state.json             # step, tokens seen, best loss, elapsed time, data position, seeds

Each file is written to a temporary name and renamed, ``state.json`` last,
and all three carry the step, so a crash while saving is detected on load
instead of resuming from a mix of two checkpoints. The learning rate is a
function of the step and every random draw is seeded from ``(seed, step)``
(see :mod:`.streams`), so no scheduler or generator state is stored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file

from ..models import Transformer, TransformerConfig

__all__ = ["load_checkpoint", "load_model", "save_checkpoint"]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path, step: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata={"format": "pt", "step": str(step)})
    os.replace(tmp, path)


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
    """Write the three files for ``state["step"]``; returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    _write_safetensors(model.state_dict(), directory / MODEL_FILE, step)
    _write_safetensors(optimizer_tensors(model, optimizer), directory / OPTIMIZER_FILE, step)
    tmp = directory / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, directory / STATE_FILE)
    return directory


def _file_step(path: Path) -> int:
    with safe_open(str(path), framework="pt") as f:
        return int((f.metadata() or {}).get("step", -1))


def load_checkpoint(directory: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load weights (and optimizer state) in place; returns the state JSON."""
    directory = Path(directory)
    state = json.loads((directory / STATE_FILE).read_text())
    files = [directory / MODEL_FILE] + ([directory / OPTIMIZER_FILE] if optimizer is not None else [])
    for path in files:
        if _file_step(path) != state["step"]:
            raise RuntimeError(
                f"{path} is from step {_file_step(path)} but {directory / STATE_FILE} says step {state['step']}: "
                "the checkpoint was only partly written (interrupted while saving?)"
            )
    device = next(model.parameters()).device
    model.load_state_dict(load_file(str(directory / MODEL_FILE), device=str(device)))
    if optimizer is not None:
        load_optimizer_tensors(model, optimizer, load_file(str(directory / OPTIMIZER_FILE)))
    return state


def load_model(out_dir: str | Path, device: str = "cpu") -> Transformer:
    """The trained model of a run folder (``out/config.json`` + ``out/checkpoint/model.safetensors``), in eval mode."""
    out_dir = Path(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    model = Transformer(TransformerConfig(**config["model"])).to(device)
    model.load_state_dict(load_file(str(out_dir / "checkpoint" / MODEL_FILE), device=device))
    return model.eval()
