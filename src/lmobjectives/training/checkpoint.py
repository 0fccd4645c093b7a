"""Checkpoints: model and AdamW state as safetensors, the trainer's position as a small JSON, the last K kept.

Layout of ``out/checkpoint/`` (``S`` = the step, zero-padded to 7 digits)::

    model-S.safetensors      # model.state_dict() (the tied LM head is the embedding, stored once)
    optimizer-S.safetensors  # "<param name>.exp_avg", "<param name>.exp_avg_sq", "<param name>.step"
    state-S.json             # step, tokens seen, losses, elapsed time, data position, the metrics window,
                             # the size and SHA-256 of the two weight files, and "content_sha256": the
                             # SHA-256 of the canonical JSON of every other entry (sorted keys, no spaces)

Saving is atomic: the step's two weight files are written (each to a temporary name, flushed to
disk, renamed), then ``state-S.json`` the same way, which commits the checkpoint; only then are
checkpoints older than the ``keep`` newest deleted. A crash, a full disk or a second Ctrl-C at any
moment leaves every earlier checkpoint whole. Loading takes the newest checkpoint whose state file
matches its own checksum and whose files have the sizes and checksums it recorded, and says in one
line which one it used and why each newer one was skipped (a weight file without its state file
counts as a skipped checkpoint). Equal states give byte-identical files: the weight files' header
holds one metadata entry (safetensors keeps metadata in a hash map whose order changes from process
to process) and its tensors sorted by safetensors; nothing holds a timestamp but the wall-clock
entries of the state file. The learning rate is a function of the step and every random draw is
seeded from ``(seed, step)`` (see :mod:`.streams`), so no scheduler or generator state is stored.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._checks import check_positive_int

__all__ = ["CheckpointError", "checkpoint_steps", "load_checkpoint", "save_checkpoint", "weight_steps"]

KEEP_CHECKPOINTS = 2  # complete checkpoints kept by default: the newest and one to fall back on
_STATE = re.compile(r"^state-(\d{7})\.json$")
_WEIGHTS = re.compile(r"^(?:model|optimizer)-(\d{7})\.safetensors$")
CONTENT_KEY = "content_sha256"  # the state file's checksum of its own entries (see _content_sha256)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or none could be read back intact."""


def model_file(step: int) -> str:
    return f"model-{step:07d}.safetensors"


def optimizer_file(step: int) -> str:
    return f"optimizer-{step:07d}.safetensors"


def state_file(step: int) -> str:
    return f"state-{step:07d}.json"


def checkpoint_steps(directory: str | Path) -> list[int]:
    """Steps with a committed state file in ``directory``, newest first (empty if there is none)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = [int(m.group(1)) for p in directory.iterdir() if (m := _STATE.match(p.name))]
    return sorted(steps, reverse=True)


def weight_steps(directory: str | Path) -> list[int]:
    """Steps with a weights or optimizer file in ``directory``, newest first, whether or not their state file exists."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted({int(m.group(1)) for p in directory.iterdir() if (m := _WEIGHTS.match(p.name))}, reverse=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_sha256(entries: dict[str, Any]) -> str:
    """SHA-256 of ``entries`` as canonical JSON (sorted keys, no spaces, ASCII): the same for the dict written
    and the dict read back, whatever the file's layout (floats are written as ``repr``, which reads back exactly)."""
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


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


def _write_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """Write ``tensors`` atomically; returns the file's record (size and checksum) for the state file."""
    tmp = path.with_name(path.name + ".tmp")
    # one metadata entry: safetensors writes its metadata in a hash map's order, which varies between processes,
    # so a second entry would make equal saves differ byte for byte (the step is in the file name and the state)
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    _commit(tmp, path)
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten the optimizer's per-parameter state into ``{"<param>.<key>": tensor}``."""
    names = {p: name for name, p in model.named_parameters()}
    flat = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            flat[f"{names[param]}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return flat


def load_optimizer_tensors(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]
) -> None:
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


def _write_failure(error: BaseException) -> str | None:
    """What went wrong when ``error`` is a failed write ("the disk is full", "writing failed (...)"), else None.

    Python's writes raise ``OSError``; safetensors' own writer raises ``SafetensorError`` ("Error while
    serializing: I/O error: No space left on device (os error 28)"), which is not an ``OSError``."""
    if isinstance(error, OSError):
        return "the disk is full" if error.errno == errno.ENOSPC else f"writing failed ({error.strerror or error})"
    text = str(error)
    if isinstance(error, SafetensorError) and "I/O error" in text:
        full = f"os error {errno.ENOSPC})" in text or os.strerror(errno.ENOSPC) in text
        return "the disk is full" if full else f"writing failed ({text.split('I/O error: ', 1)[-1]})"
    return None


def _intact(steps: list[int]) -> str:
    """The sentence naming the intact checkpoints: ``The checkpoints of steps 6, 4 are intact.``"""
    if len(steps) == 1:
        return f"The checkpoint of step {steps[0]} is intact."
    return f"The checkpoints of steps {', '.join(map(str, steps))} are intact."


def _on_cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    *,
    keep: int = KEEP_CHECKPOINTS,
) -> Path:
    """Write the checkpoint of ``state["step"]`` atomically and keep the ``keep`` newest (see the module docstring).

    A full disk (or any other write error, Python's or safetensors') removes this step's partial files and raises
    :class:`CheckpointError` saying how many bytes the checkpoint needed and which checkpoints are intact; any
    other exception (a Ctrl-C) removes them too and propagates.
    """
    check_positive_int(keep, "keep")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    weights = {
        model_file(step): _on_cpu(model.state_dict()),
        optimizer_file(step): _on_cpu(optimizer_tensors(model, optimizer)),
    }
    written = [model_file(step), optimizer_file(step), state_file(step)]
    existed = {name for name in written if (directory / name).exists()}  # a re-save of a committed step
    try:
        files = {name: _write_safetensors(tensors, directory / name) for name, tensors in weights.items()}
        content = json.loads(json.dumps({**state, "files": files}))  # as it will read back (tuples as lists, ...)
        tmp = directory / (state_file(step) + ".tmp")
        tmp.write_text(json.dumps({**content, CONTENT_KEY: _content_sha256(content)}, indent=2) + "\n")
        _commit(tmp, directory / state_file(step))  # the commit point
    except BaseException as e:  # a write error, a Ctrl-C, ...: never a half-written checkpoint
        for name in written:  # this step's new files, whole or partial
            if name not in existed:
                (directory / name).unlink(missing_ok=True)
            (directory / (name + ".tmp")).unlink(missing_ok=True)
        what = _write_failure(e)
        if what is None:
            raise
        needed = sum(t.numel() * t.element_size() for tensors in weights.values() for t in tensors.values())
        free = shutil.disk_usage(directory).free
        intact = checkpoint_steps(directory)
        raise CheckpointError(
            f"could not save the checkpoint of step {step} in {directory}: {what}; it needs about "
            f"{needed / 2**20:,.1f} MiB and {free / 2**20:,.1f} MiB are free. "
            + (_intact(intact) if intact else "No earlier checkpoint exists.")
        ) from None
    _fsync_directory(directory)
    kept = set(checkpoint_steps(directory)[:keep])
    for path in directory.iterdir():  # older checkpoints, and leftovers of a crashed save
        m = re.match(r"^(?:model|optimizer|state)-(\d{7})\.", path.name)
        if path.name.endswith(".tmp") or (m and int(m.group(1)) not in kept):
            path.unlink(missing_ok=True)
    return directory


def _read_state(directory: Path, step: int) -> tuple[dict[str, Any] | None, str | None]:
    """``(state, None)`` for a state file that reads and matches its own checksum, else ``(None, why not)``.

    A state file without a checksum of its own (written before it had one) is returned as it is, with
    ``state[CONTENT_KEY]`` None."""
    name = state_file(step)
    try:
        state = json.loads((directory / name).read_text())
    except FileNotFoundError:
        return None, f"{name} is missing (deleted, or its save was cut short)"
    except (OSError, ValueError) as e:
        return None, f"{name} cannot be read ({e})"
    if not isinstance(state, dict) or state.get("step") != step:
        return None, f"{name} cannot be read (it does not describe step {step})"
    recorded = state.pop(CONTENT_KEY, None)
    if recorded is not None and recorded != _content_sha256(state):
        return None, f"{name} was changed after it was written (its entries do not match its checksum)"
    state[CONTENT_KEY] = recorded
    return state, None


def _damage(directory: Path, step: int, state: dict[str, Any], names: list[str]) -> str | None:
    """Why the checkpoint of ``step`` cannot be loaded, or None if its files are intact."""
    files = state.get("files")
    if not isinstance(files, dict):
        return f"{state_file(step)} records no file checksums"
    for name in names:
        path, record = directory / name, files.get(name)
        if (
            not isinstance(record, dict)
            or type(record.get("bytes")) is not int
            or not isinstance(record.get("sha256"), str)
        ):
            return f"{state_file(step)} records no size and checksum of {name}"
        if not path.is_file():
            return f"{name} is missing"
        if (size := path.stat().st_size) != record["bytes"]:
            return f"{name} has {size:,} bytes, {record['bytes']:,} were written"
        if _sha256(path) != record["sha256"]:
            return f"{name} does not match its checksum"
    return None


def load_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load the newest intact checkpoint in place (weights, and the optimizer state if given); returns its state.

    A newer checkpoint that is damaged (a weight file missing, truncated or changed; a state file missing, not
    JSON, or changed after it was written) is skipped, and one line to ``report`` says which checkpoint was used
    and why each newer one was skipped (nothing is reported when the newest is intact). Raises
    :class:`CheckpointError` when none is intact, and ``FileNotFoundError`` when there is none.
    """
    directory = Path(directory)
    steps = checkpoint_steps(directory)
    weight_steps = (
        {int(m.group(1)) for p in directory.iterdir() if (m := _WEIGHTS.match(p.name))} if directory.is_dir() else set()
    )
    if not steps and not weight_steps:
        raise FileNotFoundError(f"no checkpoint in {directory} (no state-NNNNNNN.json)")
    problems = []
    for step in sorted(weight_steps | set(steps), reverse=True):  # a weight file without its state file: skipped too
        names = [model_file(step)] + ([optimizer_file(step)] if optimizer is not None else [])
        state, problem = _read_state(directory, step)
        if state is not None:
            problem = _damage(directory, step, state, names)
        if problem is not None:
            problems.append(f"step {step}: {problem}")
            continue
        device = next(model.parameters()).device
        model.load_state_dict(load_file(str(directory / names[0]), device=str(device)))
        if optimizer is not None:
            load_optimizer_tensors(model, optimizer, load_file(str(directory / names[1])))
        state.pop("files")
        notes = [f"skipped the damaged {'; '.join(problems)}"] if problems else []
        if state.pop(CONTENT_KEY) is None:
            notes.append(
                f"{state_file(step)} has no checksum of its own (an older version wrote it): its entries are not verified"
            )
        if notes and report is not None:
            report(f"using the checkpoint of step {step}, the newest intact one in {directory}; " + "; ".join(notes))
        return state
    raise CheckpointError(f"no intact checkpoint in {directory}: " + "; ".join(problems))
