"""The batch state: done / pending / failed per job, written atomically next to the outputs on every change.

``DIR/batch-state.json`` lists every job of the batch with its status, the seed it renders
with, the file stem of its outputs and, once done, the files it produced and how many LoRA
files switching to it read. It is replaced in one step on every change (readers see the old
or the new state, never half of one), so after a crash, a SIGKILL or a power loss the next
run knows exactly what is finished:

- a *done* job whose files are still there and whose scene is unchanged stays done;
- a job that was *running* (the process died mid-render) or *failed* is rendered again; the
  files a half-finished attempt may have published under its stem, and the temporary files of
  the atomic writers, are removed first, so no partial file survives;
- a done job whose scene was edited since is rendered again under a new stem (the old video
  is kept: nothing is overwritten).

A lock file (``DIR/.batch.lock``, ``flock``) keeps two runs from writing one folder at once;
the kernel releases it when a process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic import ValidationError as PydanticValidationError

from studio.errors import OutputError, ValidationError
from studio.media.files import write_json_atomic
from studio.stack.schema import MAX_SEED, StrictModel
from studio.workflows.batch.jobs import Batch

__all__ = ["STATE_FILE", "BatchState", "JobState", "StateFile", "batch_lock"]

STATE_KIND = "wan-lora-studio/batch-state"
STATE_VERSION = 1
STATE_FILE = "batch-state.json"
LOCK_FILE = ".batch.lock"
OUTPUT_SUFFIXES = (".mp4", ".json", ".start.png")
Status = Literal["pending", "running", "done", "failed"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class JobState(StrictModel):
    id: str
    scene: str
    fingerprint: str
    stem: str
    seed: int = Field(ge=0, le=MAX_SEED)
    status: Status = "pending"
    attempts: int = 0
    error: str | None = None
    video: str | None = None
    sidecar: str | None = None
    start_image: str | None = None
    file_reads: int | None = None
    seconds: float | None = None
    worker: str | None = None
    started: str | None = None
    finished: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    def outputs(self) -> list[str]:
        return [name for name in (self.video, self.sidecar, self.start_image) if name]


class BatchState(StrictModel):
    kind: Literal["wan-lora-studio/batch-state"] = STATE_KIND
    version: Literal[1] = STATE_VERSION
    batch: str = "scenes"
    source: str | None = None
    model: str | None = None
    created: str = Field(default_factory=_now)
    updated: str = Field(default_factory=_now)
    jobs: list[JobState] = Field(default_factory=list)

    def job(self, job_id: str) -> JobState:
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(job_id)

    def counts(self) -> dict[str, int]:
        counts = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        for job in self.jobs:
            counts[job.status] += 1
        return counts

    def todo(self) -> list[JobState]:
        """The jobs a run renders: everything not done (failed ones are tried again)."""
        return [job for job in self.jobs if job.status != "done"]


class StateFile:
    """The state of the batch in ``out_dir``, kept in memory and written on every change."""

    def __init__(self, out_dir: Path, state: BatchState) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / STATE_FILE
        self.state = state

    # ------------------------------------------------------------------ reading
    @staticmethod
    def read(out_dir: Path) -> BatchState | None:
        path = Path(out_dir) / STATE_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise OutputError(f"The batch state {path} cannot be read ({exc.strerror or exc}).") from None
        try:
            return BatchState.model_validate(json.loads(text))
        except (json.JSONDecodeError, PydanticValidationError, UnicodeDecodeError):
            raise ValidationError(
                f"The batch state {path} is damaged. Move it away to render the whole batch again into "
                f"{path.parent} (finished videos are never overwritten), or choose another --out folder."
            ) from None

    @classmethod
    def open(cls, out_dir: Path, batch: Batch) -> StateFile:
        """The state for ``batch`` in ``out_dir``: the saved one reconciled with the batch, or a new one.

        Writes it (so the seeds drawn now are kept) and removes what interrupted attempts left.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = _reconcile(cls.read(out_dir), batch, out_dir)
        state_file = cls(out_dir, state)
        state_file.sweep()
        state_file.save()
        return state_file

    # ------------------------------------------------------------------ writing
    def save(self) -> None:
        self.state.updated = _now()
        write_json_atomic(self.path, self.state.model_dump(mode="json"), overwrite=True)

    def update(self, job_id: str, **changes) -> JobState:
        job = self.state.job(job_id)
        for key, value in changes.items():
            setattr(job, key, value)
        self.save()
        return job

    def mark_running(self, job_id: str, worker: str | None = None) -> JobState:
        job = self.state.job(job_id)
        return self.update(
            job_id, status="running", attempts=job.attempts + 1, started=_now(), worker=worker, error=None
        )

    def mark_done(
        self, job_id: str, *, video: Path, sidecar: Path, start_image: Path, file_reads: int, seconds: float
    ):
        return self.update(
            job_id,
            status="done",
            video=video.name,
            sidecar=sidecar.name,
            start_image=start_image.name,
            file_reads=file_reads,
            seconds=round(seconds, 3),
            finished=_now(),
            error=None,
        )

    def mark_failed(self, job_id: str, message: str) -> JobState:
        return self.update(job_id, status="failed", error=message, finished=_now())

    def mark_pending(self, job_id: str, message: str | None = None) -> JobState:
        """Back in the queue (cancelled, or its worker died): what it may have left is removed."""
        job = self.update(job_id, status="pending", error=message, worker=None)
        self._remove_leftovers(job)
        return job

    # ------------------------------------------------------------------ cleaning
    def sweep(self) -> None:
        """Remove the temporary files of interrupted writes and the outputs of unfinished jobs."""
        for path in self.out_dir.glob(f".{STATE_FILE}.partial-*"):
            with contextlib.suppress(OSError):
                path.unlink()
        for job in self.state.jobs:
            if job.status != "done":
                self._remove_leftovers(job)

    def _remove_leftovers(self, job: JobState) -> None:
        for suffix in OUTPUT_SUFFIXES:
            with contextlib.suppress(FileNotFoundError):
                (self.out_dir / f"{job.stem}{suffix}").unlink()
        for path in self.out_dir.glob(f".{job.stem}.*.partial-*"):
            with contextlib.suppress(OSError):
                path.unlink()

    def video_path(self, job_id: str) -> Path:
        return self.out_dir / f"{self.state.job(job_id).stem}.mp4"


def _free_stem(out_dir: Path, base: str, taken: set[str]) -> str:
    for n in range(2, 10_000):
        stem = f"{base}-v{n}"
        if stem not in taken and not any((out_dir / f"{stem}{s}").exists() for s in OUTPUT_SUFFIXES):
            return stem
    raise OutputError(f"No free file name for {base} in {out_dir}; clean up the folder.")


def _outputs_present(job: JobState, out_dir: Path) -> bool:
    return bool(job.outputs()) and all((out_dir / name).is_file() for name in job.outputs())


def _reconcile(previous: BatchState | None, batch: Batch, out_dir: Path) -> BatchState:
    old = {job.id: job for job in previous.jobs} if previous is not None else {}
    taken = {job.stem for job in old.values()}
    jobs = []
    for job in batch.jobs:
        before = old.get(job.id)
        seed = job.settings.seed
        if before is not None and before.fingerprint == job.fingerprint:
            if before.status == "done" and _outputs_present(before, out_dir):
                jobs.append(before)
                continue
            # unfinished, failed, or its files were removed: render again, with the same seed and stem
            jobs.append(
                before.model_copy(
                    update={"status": "pending", "video": None, "sidecar": None, "start_image": None}
                )
            )
            continue
        if before is not None and before.status != "done":
            stem = before.stem  # what its files hold is its own unfinished attempt
        elif before is not None or _any_output(out_dir, job.id):
            stem = _free_stem(out_dir, job.id, taken)  # keep the earlier video: nothing is overwritten
        else:
            stem = job.id
        taken.add(stem)
        jobs.append(
            JobState(
                id=job.id,
                scene=job.scene,
                fingerprint=job.fingerprint,
                stem=stem,
                seed=seed if seed is not None else random.randint(0, MAX_SEED),
                labels=dict(job.labels),
            )
        )
    source = str(batch.source) if batch.source else None
    created = previous.created if previous is not None else _now()
    return BatchState(batch=batch.kind, source=source, model=batch.model, created=created, jobs=jobs)


def _any_output(out_dir: Path, stem: str) -> bool:
    return any((out_dir / f"{stem}{s}").exists() for s in OUTPUT_SUFFIXES)


@contextlib.contextmanager
def batch_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``DIR/.batch.lock`` for a run; another run of the same folder is refused with a sentence."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValidationError(
                f"Another batch is rendering into {out_dir} right now; wait for it or choose another --out folder."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.time():.0f}\n".encode())
        yield
    finally:
        os.close(fd)
