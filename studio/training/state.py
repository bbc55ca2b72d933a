"""A training run on disk: ``run.json`` and self-contained, atomically written checkpoints.

::

    <first LoRA folder>/.training/<NAME>/        (hidden from the library, reachable by stacks)
        run.json                                  what the run is, its status, checkpoints, samples
        checkpoints/step-000500/
            NAME_high_noise.safetensors           the pair at that step, in the exported layout
            NAME_low_noise.safetensors
            state.safetensors                     float32 LoRA factors, optimizer moments, RNG state
            state.json                            the loss curves and counters up to that step

A checkpoint folder is written under a temporary name, flushed, and renamed into place,
so a crash leaves either the whole checkpoint or none; :func:`latest_checkpoint` only
sees complete ones. ``run.json`` is replaced atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, Field

from studio.errors import OutputError, ValidationError
from studio.training.options import TrainOptions

RUN_KIND = "wan-lora-studio/training-run"
RUN_VERSION = 1
RUNS_DIRNAME = ".training"
CHECKPOINT_PREFIX = "step-"
Status = Literal["preparing", "running", "stopped", "finished", "failed"]


class ValPoint(BaseModel):
    step: int
    loss: float


class SampleRecord(BaseModel):
    step: int
    video: str
    sidecar: str


class Progress(BaseModel):
    """Everything that grows while the run trains (saved in each checkpoint, so resume continues it)."""

    step: int = 0  # optimizer steps done by each trained expert
    loss: dict[str, list[float]] = Field(default_factory=dict)  # expert -> loss per step
    val: dict[str, list[ValPoint]] = Field(default_factory=dict)  # expert -> validation loss at steps
    val_base: dict[str, float] = Field(default_factory=dict)  # expert -> validation loss without the LoRA
    samples: list[SampleRecord] = Field(default_factory=list)
    train_seconds: float = 0.0  # time spent in optimizer steps


class CheckpointInfo(BaseModel):
    step: int
    path: str
    files: list[str]  # the LoRA files in it


class RunRecord(BaseModel):
    kind: Literal["wan-lora-studio/training-run"] = RUN_KIND
    version: Literal[1] = RUN_VERSION
    name: str
    options: TrainOptions
    dataset: str
    dataset_fingerprint: str
    train_items: list[str]
    val_items: list[str]
    status: Status = "preparing"
    progress: Progress = Field(default_factory=Progress)
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    exported: list[str] = Field(default_factory=list)
    error: str | None = None
    created: str = Field(default_factory=lambda: _now())
    updated: str = Field(default_factory=lambda: _now())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def runs_root(lora_dir: Path) -> Path:
    return Path(lora_dir) / RUNS_DIRNAME


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def save_run(run_dir: Path, record: RunRecord) -> None:
    from studio.media.files import write_json_atomic

    record.updated = _now()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "run.json", record.model_dump(mode="json"), overwrite=True)


def load_run(run_dir: Path) -> RunRecord:
    path = Path(run_dir) / "run.json"
    try:
        return RunRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValidationError(
            f"{run_dir} is not a training run (it has no run.json). Give the run's folder or one of its "
            "checkpoints (…/.training/NAME/checkpoints/step-…)."
        ) from None
    except (OSError, ValueError) as exc:
        raise ValidationError(
            f"{path} could not be read ({exc}); the run cannot be resumed from it."
        ) from None


def find_run(path: Path) -> tuple[Path, Path | None]:
    """(run folder, checkpoint folder or None) for a path to either."""
    path = Path(path).expanduser().resolve()
    if (path / "state.safetensors").is_file() and path.parent.name == "checkpoints":
        return path.parent.parent, path
    if (path / "run.json").is_file():
        return path, latest_checkpoint(path)
    raise ValidationError(
        f"{path} is neither a training run folder nor one of its checkpoints; give …/.training/NAME or "
        "…/.training/NAME/checkpoints/step-…."
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    done = sorted(
        p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / "state.json").is_file()
    )
    return done[-1] if done else None


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_checkpoint(
    run_dir: Path,
    step: int,
    *,
    loras: dict[str, bytes],
    state: dict[str, torch.Tensor],
    progress: Progress,
    extra: dict,
) -> Path:
    """Write checkpoint ``step`` atomically (a complete one of that step is kept as it is)."""
    from safetensors.torch import save

    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / checkpoint_name(step)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=folder))
    try:
        for name, data in loras.items():
            (staging / name).write_bytes(data)
        (staging / "state.safetensors").write_bytes(save({k: v.contiguous() for k, v in state.items()}))
        payload = {"progress": progress.model_dump(mode="json"), **extra}
        (staging / "state.json").write_text(json.dumps(payload), encoding="utf-8")
        for child in staging.iterdir():
            _fsync(child)
        if not (final / "state.json").is_file():  # the same step saved twice holds the same state
            shutil.rmtree(final, ignore_errors=True)
            os.rename(staging, final)
            _fsync(folder)
    except OSError as exc:
        raise OutputError(
            f"The checkpoint could not be written to {final} ({exc.strerror or exc}); free some disk space. "
            "Training stopped; the previous checkpoint is intact."
        ) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], Progress, dict]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(Path(path) / "state.safetensors")
        payload = json.loads((Path(path) / "state.json").read_text(encoding="utf-8"))
        progress = Progress.model_validate(payload.pop("progress"))
    except (OSError, ValueError, KeyError) as exc:
        raise ValidationError(
            f"The checkpoint {path} could not be read ({exc}); resume from an earlier one."
        ) from None
    return tensors, progress, payload


def clean_partials(run_dir: Path) -> None:
    """Remove half-written checkpoint folders a crash left behind."""
    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for child in folder.iterdir():
            if child.name.startswith(".") and ".partial-" in child.name:
                shutil.rmtree(child, ignore_errors=True)
