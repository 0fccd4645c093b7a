"""The run folder that ``lmobj train`` writes, and its ``config.json``: the one place that knows their layout.

A run folder holds ``config.json`` (:class:`RunConfig`: the training config, the model's architecture and
sizes, the held-out split), ``metrics.jsonl``, ``tokenizer/``, ``checkpoint/``
(:mod:`lmobjectives.training.checkpoint`) and ``lmobj.lock`` (:class:`RunLock`). :func:`write_run_config` and
:func:`read_run_config` are the writer and the reader of ``config.json``; :func:`build_model` makes a run's
model from it and :func:`load_model` loads its trained weights.

What makes a folder a run of ours (:func:`run_problem`, :func:`is_run`): a ``config.json`` whose ``"format"``
is :data:`RUN_FORMAT`, never a guess from a user's file. A run written before that marker existed is one only
when its layout is exactly ours (:func:`_legacy_problem`). A folder is written to by one process at a time
(:class:`RunLock`), and a run's start-up writes ``config.json`` first (after the lock file), so a start-up
stopped at any moment leaves either a run (without a checkpoint: started over, or resumed from step 0) or a
folder holding only start-up leftovers (:data:`STARTUP_LEFTOVERS`), which counts as empty.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..data.tokenizers import load_tokenizer
from ..models import MODELS, TransformerConfig
from ..recipes import LEGACY_ARCHITECTURES
from .checkpoint import checkpoint_steps, load_checkpoint, weight_steps
from .config import TrainConfig

try:
    import fcntl
except ImportError:  # Windows: no flock; a run folder is then not locked
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "INVOCATION_FIELDS",
    "LOCK_FILE",
    "METRICS_FILE",
    "RESUMABLE_CHANGES",
    "RUN_FORMAT",
    "RUN_FORMAT_VERSION",
    "SAVED_BEFORE",
    "TOKENIZER_DIR",
    "RunConfig",
    "RunLock",
    "build_model",
    "check_metrics_row",
    "is_run",
    "load_model",
    "load_run_tokenizer",
    "lock_owner",
    "read_run_config",
    "resolve_out",
    "resume_config",
    "run_problem",
    "write_run_config",
]

CONFIG_FILE = "config.json"  # RunConfig as JSON, with the marker RUN_FORMAT
METRICS_FILE = "metrics.jsonl"  # one JSON line per --log-every steps (and per held-out evaluation)
TOKENIZER_DIR = "tokenizer"  # the run's tokenizer, saved with tokenizer.save()
CHECKPOINT_DIR = "checkpoint"  # model and optimizer safetensors, state-S.json per kept step
LOCK_FILE = "lmobj.lock"  # flock-ed by the one process writing the run (RunLock); holds its PID; never deleted
RUN_FORMAT = "lmobjectives-run"  # config.json's "format": what marks a folder as a run of ours
RUN_FORMAT_VERSION = 1  # config.json's "format_version"; a run with a newer one is refused, not misread
STARTUP_LEFTOVERS = (LOCK_FILE, CONFIG_FILE + ".tmp")  # all that a start-up stopped before config.json leaves
SAVED_BEFORE = {"heldout": 0.0}  # fields a run saved before they existed had, in effect: all documents trained on

# TrainConfig fields that may differ between a run and its resumption. None changes the losses except
# steps, which stretches the cosine schedule (allowed, with a note); log_every only regroups the metrics lines.
RESUMABLE_CHANGES = (
    "device",
    "log_every",
    "save_every",
    "keep_checkpoints",
    "resume",
    "stop_after",
    "progress",
    "out",
    "steps",
    "eval_every",
    "eval_batches",
)
# of those, the ones that describe one invocation rather than the run: resume_config never takes them from config.json
INVOCATION_FIELDS = ("device", "resume", "stop_after", "progress", "out")

# runs written before the marker: the TrainConfig fields every one of them has, and fields TrainConfig has since lost
_LEGACY_TRAIN_FIELDS = frozenset(
    "objective data tokenizer out steps batch_size seq_len lr warmup_steps min_lr_ratio weight_decay grad_clip seed "
    "device d_model n_layers n_heads d_ff dropout positions log_every save_every resume stop_after progress".split()
)
_LEGACY_REMOVED_FIELDS = frozenset({"mlm_unit", "mlm_probability", "document_masking"})
_LEGACY_KEYS = frozenset({"train", "model", "architecture", "model_kwargs", "split"})  # config.json's keys then


@dataclass
class RunConfig:
    """What ``config.json`` holds."""

    train: dict[str, Any]  # TrainConfig.to_dict() with the resolved "out"
    model: dict[str, Any]  # the TransformerConfig's fields
    architecture: str = (
        "transformer"  # key of lmobjectives.models.MODELS (runs saved before architectures: transformer)
    )
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # JSON values passed to MODELS[architecture]
    split: dict[str, Any] = field(default_factory=dict)  # the held-out split: document counts, salt, rule

    def train_config(self, **changes: Any) -> TrainConfig:
        """The run's :class:`TrainConfig` (fields it saved before they existed: :data:`SAVED_BEFORE`; fields it
        saved that no longer exist are left out), with ``changes`` applied."""
        known = {f.name for f in fields(TrainConfig)}
        saved = {**SAVED_BEFORE, **{k: v for k, v in self.train.items() if k in known}}
        return TrainConfig(**{**saved, **changes})


def write_run_config(out: str | Path, run: RunConfig) -> Path:
    """Write ``out/config.json`` with the marker :data:`RUN_FORMAT`, atomically (a temporary file flushed to disk,
    then renamed: a reader sees the old file or the new one, never a part); returns its path."""
    path = Path(out) / CONFIG_FILE
    record = {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "train": run.train,
        "architecture": run.architecture,
        "model": run.model,
        "model_kwargs": run.model_kwargs,
        "split": run.split,
    }
    tmp = path.with_name(CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_run_config(out: str | Path) -> RunConfig:
    """``out/config.json`` of a run; a ``ValueError`` in one line, saying what is wrong, when ``out`` is not a run.

    >>> read_run_config("/nonexistent")
    Traceback (most recent call last):
    ...
    ValueError: /nonexistent is not an lmobj run (no config.json)
    """
    problem = run_problem(out)
    if problem is not None:
        raise ValueError(f"{out} is not an lmobj run ({problem})")
    saved = json.loads((Path(out) / CONFIG_FILE).read_text())
    architecture = saved.get("architecture", "transformer")
    return RunConfig(
        train=saved["train"],
        model=saved["model"],
        architecture=LEGACY_ARCHITECTURES.get(architecture, architecture),
        model_kwargs=saved.get("model_kwargs", {}),
        split=saved.get("split", {}),
    )


def build_model(run: RunConfig) -> torch.nn.Module:
    """A freshly initialised model of the run's architecture and sizes (torch's global RNG draws the weights)."""
    return MODELS[run.architecture](TransformerConfig(**run.model), **run.model_kwargs)


def load_model(out_dir: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The trained model of a run folder (newest intact checkpoint), in eval mode, on ``device``."""
    model = build_model(read_run_config(out_dir)).to(device)
    load_checkpoint(Path(out_dir) / CHECKPOINT_DIR, model)
    return model.eval()


def load_run_tokenizer(out: str | Path) -> Any:
    """The tokenizer a run saved in ``out/tokenizer``; a one-line ``FileNotFoundError`` when that folder is missing
    or empty, a ``ValueError`` naming it when what it holds cannot be loaded."""
    folder = Path(out) / TOKENIZER_DIR
    if not folder.is_dir() or not any(folder.iterdir()):
        state = "missing" if not folder.exists() else "empty" if folder.is_dir() else "not a folder"
        raise FileNotFoundError(
            f"{out} is a damaged run: its tokenizer folder {folder} is {state} (lmobj train saves "
            "the run's tokenizer there); the run cannot be read without it"
        )
    try:
        return load_tokenizer(str(folder))
    except ValueError as e:
        raise ValueError(f"{out} is a damaged run: its tokenizer folder {folder} cannot be loaded: {e}") from None


def check_metrics_row(row: Any, path: str | Path, number: int, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """``row``, line ``number`` (from 1) of the metrics file ``path``, when it is a metrics line of ``lmobj train``:
    a JSON object with an integer ``"step"`` (and ``keys``); else a one-line ``ValueError`` naming the file and line.

    >>> check_metrics_row({"loss": 1.0}, "run/metrics.jsonl", 3)
    Traceback (most recent call last):
    ...
    ValueError: run/metrics.jsonl line 3 is not a metrics line of lmobj train (no integer "step"): {"loss": 1.0}
    """
    step = row.get("step") if isinstance(row, dict) else None
    missing = [] if isinstance(step, int) and not isinstance(step, bool) else ['integer "step"']
    missing += [f'"{key}"' for key in keys if not isinstance(row, dict) or key not in row]
    if missing:
        text = json.dumps(row)
        raise ValueError(
            f"{path} line {number} is not a metrics line of lmobj train (no {', no '.join(missing)}): "
            f"{text if len(text) <= 80 else text[:77] + '...'}"
        )
    return row


def is_run(path: str | Path) -> bool:
    """Whether ``path`` is the output folder of an ``lmobj train`` run: its ``config.json`` carries our marker
    (``"format": "lmobjectives-run"``), or it is a run written before the marker (:func:`run_problem`)."""
    return run_problem(path) is None


def run_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a run of ours, in a few words (``"no config.json"``, ``"config.json is not JSON
    (...)"``, ...), or None when it is one: its ``config.json`` is a JSON object whose ``"format"`` is
    :data:`RUN_FORMAT` and whose ``"format_version"`` this version reads. A ``config.json`` without a
    ``"format"`` is a run only when it is laid out exactly as a run written before the marker
    (:func:`_legacy_problem`)."""
    path = Path(path)
    try:
        text = (path / CONFIG_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return f"no {CONFIG_FILE}"
    except (OSError, UnicodeError) as e:
        return f"{CONFIG_FILE} cannot be read: {getattr(e, 'strerror', None) or e}"
    try:
        saved = json.loads(text)
    except ValueError as e:
        return f"{CONFIG_FILE} is not JSON: {e}" if text.strip() else f"{CONFIG_FILE} is empty"
    if not isinstance(saved, dict):
        return f"{CONFIG_FILE} holds a JSON {type(saved).__name__}, not an object"
    if "format" not in saved:
        return _legacy_problem(path, saved)
    if saved["format"] != RUN_FORMAT:
        return f'{CONFIG_FILE} has "format": {json.dumps(saved["format"])}, not "{RUN_FORMAT}"'
    version = saved.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return f'{CONFIG_FILE} has no valid "format_version" (got {json.dumps(version)})'
    if version > RUN_FORMAT_VERSION:
        return (
            f'{CONFIG_FILE} has "format_version": {version}, written by a newer lmobjectives (this one reads '
            f"up to {RUN_FORMAT_VERSION}): upgrade lmobjectives"
        )
    for key in ("train", "model"):
        if not isinstance(saved.get(key), dict):
            return f'{CONFIG_FILE} is damaged: its "{key}" entry is not an object'
    return None


def _legacy_problem(path: Path, saved: dict[str, Any]) -> str | None:
    """A ``config.json`` without a marker: None when ``path`` is exactly a run written before the marker existed.

    Exactly means: ``config.json``'s keys are among those a run wrote then (``train``, ``model``, ``architecture``,
    ``model_kwargs``, ``split``); ``train`` holds every field all TrainConfigs had and only fields TrainConfig has
    or had; ``model`` holds exactly the fields of :class:`~lmobjectives.models.TransformerConfig`; and
    ``checkpoint/`` holds a committed ``state-S.json``. A folder without a checkpoint is never one (nothing in
    it is worth keeping as a run, and a user's folder is never started over); resuming a legacy run writes the
    marker.
    """
    train, model = saved.get("train"), saved.get("model")
    known_train = {f.name for f in fields(TrainConfig)} | _LEGACY_REMOVED_FIELDS
    if (
        set(saved) <= _LEGACY_KEYS
        and isinstance(train, dict)
        and isinstance(model, dict)
        and _LEGACY_TRAIN_FIELDS <= set(train) <= known_train
        and set(model) == {f.name for f in fields(TransformerConfig)}
        and checkpoint_steps(path / CHECKPOINT_DIR)
    ):
        return None
    problem = f'{CONFIG_FILE} has no "format": "{RUN_FORMAT}" marker'
    if "train" in saved:  # looks like a run, but is not laid out exactly as one written before the marker
        problem += (
            f", and is not laid out as an older lmobj run (TrainConfig's fields in \"train\", the model's "
            f'in "model", a {CHECKPOINT_DIR}/ with a state file)'
        )
    return problem


def _is_empty(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but what a start-up stopped before writing config.json leaves."""
    return all(p.name in STARTUP_LEFTOVERS for p in folder.iterdir())


def _checked_folder(out: Path) -> list[int]:
    """The checkpoint steps of ``out`` (newest first; empty for a new or empty folder or a run without one); a
    ``FileExistsError`` in one line when ``out`` is a file or a folder holding anything but a run of ours."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose another --out")
    if out.is_dir() and not _is_empty(out):
        problem = run_problem(out)
        if problem is not None:
            raise FileExistsError(
                f"--out {out} holds files that are not an lmobj run ({problem}); refusing to write there: choose a "
                "new or empty folder"
            )
    steps = checkpoint_steps(out / CHECKPOINT_DIR)
    if not steps and (orphans := weight_steps(out / CHECKPOINT_DIR)):
        raise FileExistsError(
            f"--out {out} holds the weights of step {orphans[0]} but no state file for any step (deleted, or every "
            f"save was cut short): nothing can resume from it, and starting over would delete them; move "
            f"{out / CHECKPOINT_DIR} away to start over, or choose another --out"
        )
    return steps


def _already_a_run(out: Path, steps: list[int]) -> FileExistsError:
    return FileExistsError(
        f"{out} already holds a run with a checkpoint (step {steps[0]}); pass --resume (resume=True) to continue it, "
        "or choose another --out"
    )


def resolve_out(config: TrainConfig) -> Path:
    """The output folder; never one holding files that are not a run of ours, nor one another process writes to.

    An explicit ``out`` must be new, empty, or a run (which ``resume`` continues; without it, only a run
    that saved no checkpoint may be started over), and not in use by another run (:class:`RunLock`). The
    default, ``runs/<objective>``, becomes ``runs/<objective>-2``, ``-3``, ... when it already holds a run with a
    checkpoint, or a run in progress, and ``resume`` is off. Nothing is written: :meth:`RunLock.claim` checks
    again, under the lock, before the start-up writes anything.
    """
    if config.out is not None:
        out = Path(config.out)
        candidates = [out]
    else:
        base = Path("runs") / config.objective
        candidates = [base] if config.resume else [base, *(base.with_name(f"{base.name}-{i}") for i in range(2, 1000))]
    for out in candidates:
        steps = _checked_folder(out)
        owner = lock_owner(out)
        if owner is not None:
            if config.out is None and not config.resume:
                continue
            raise FileExistsError(_in_use(out, owner))
        if config.resume or not steps:
            return out
        if config.out is not None:
            raise _already_a_run(out, steps)
    raise FileExistsError(f"runs/{config.objective} and its numbered variants up to -999 all hold runs; pass --out")


def _in_use(out: Path, owner: str) -> str:
    return f"--out {out} is in use by another lmobj train ({owner}): one run writes to a folder at a time; wait for it to end or choose another --out"


def _owner(lock: Path) -> str:
    """``"PID N"`` of the process whose PID the lock file holds."""
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "PID not yet written"


def lock_owner(out: str | Path) -> str | None:
    """``"PID N"`` of the process that holds ``out``'s lock (:class:`RunLock`), or None when none does."""
    path = Path(out) / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _owner(path)
    finally:
        os.close(fd)  # releases the lock this probe took
    return None


class RunLock:
    """The one writer of a run folder: an exclusive ``flock`` on ``OUT/lmobj.lock`` (which holds the owner's PID),
    taken by :meth:`claim` and held until :meth:`release` (``with RunLock() as lock: ...``). The OS releases it
    when the process ends, however it ends, so a killed run can be resumed at once. The file is never deleted
    (deleting a lock file lets two processes lock two files of the same name). Without ``fcntl`` (Windows), no
    lock is taken."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def claim(self, out: Path, *, resume: bool) -> list[int]:
        """Create ``out`` if needed, lock it, and check it again under the lock (another process may have written
        a run there since :func:`resolve_out` looked); returns its checkpoint steps, newest first. A
        ``FileExistsError`` in one line when another process holds the lock (naming its PID), when ``out`` is no
        longer new, empty or a run, or when it now holds a checkpoint and ``resume`` is off."""
        _checked_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        if fcntl is not None:
            path = out / LOCK_FILE
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FileExistsError(_in_use(out, _owner(path))) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
        steps = _checked_folder(out)
        if steps and not resume:
            raise _already_a_run(out, steps)
        return steps

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def resume_config(out: str | Path, *, flag: Callable[[str], str] | None = None, **changes: Any) -> TrainConfig:
    """The :class:`TrainConfig` that continues the run in ``out``: the run's own settings (its ``config.json``)
    with ``changes`` applied, ``resume=True`` and ``out`` set. What ``lmobj train --out OUT --resume`` trains.

    A change that differs from the run's setting is a ``ValueError`` naming it and both values, unless the field
    is one of :data:`RESUMABLE_CHANGES` (``steps``, ``log_every``, ...); ``options`` may name only some of the
    objective's options. The fields of :data:`INVOCATION_FIELDS` (``device``, ``stop_after``, ``progress``) are
    this call's, never the run's: a run stopped by ``stop_after=4`` resumes to its last step. ``flag`` names a
    field or an option in messages (the command line passes its flags' names).
    """
    out = Path(out)
    name = flag or (lambda field_name: field_name)
    run = read_run_config(out)
    saved = run.train_config()
    if "objective" in changes and changes["objective"] != saved.objective:
        raise ValueError(_differ(out, [(name("objective"), saved.objective, changes["objective"])], name))
    given_options = dict(changes.pop("options", None) or {})
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.name in INVOCATION_FIELDS}
    config = TrainConfig(
        **{
            **saved.to_dict(),
            **defaults,
            **changes,
            "options": {**saved.options, **given_options},
            "resume": True,
            "out": str(out),
        }
    )
    now, then = config.to_dict(), saved.to_dict()
    differences = [(name(k), then[k], now[k]) for k in changes if k not in RESUMABLE_CHANGES and now[k] != then[k]]
    differences += [
        (name(k), saved.options[k], config.options[k]) for k in given_options if config.options[k] != saved.options[k]
    ]
    if differences:
        raise ValueError(_differ(out, differences, name))
    return config


def _differ(out: Path, differences: list[tuple[str, Any, Any]], name: Callable[[str], str]) -> str:
    def show(value: Any) -> str:
        return value if isinstance(value, str) else repr(value)

    listed = "; ".join(
        f"{what} {show(new)}, but the run was trained with {what} {show(old)}" for what, old, new in differences
    )
    changeable = ", ".join(name(k) for k in RESUMABLE_CHANGES if k not in ("resume", "out"))
    return (
        f"cannot resume {out}: {listed} (a resumed run keeps its settings; only {changeable} may differ: leave "
        "the setting out to keep the run's value, or choose another --out for a new run)"
    )
