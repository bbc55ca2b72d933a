"""A training run in a background thread, with a snapshot the UI polls.

The Train tab must not hold a Gradio queue slot for the length of a run (renders share the
GPU queue), so Start launches a :class:`TrainingJob` and returns at once; the run itself
takes the model one step at a time (see :mod:`studio.training.trainer`). The job turns the
trainer's events into a :class:`JobSnapshot` (status, loss curves, validation points,
samples, checkpoints, ETA, the last lines of its log) that a timer in the page reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.training.results import TrainEvent, TrainResult
from studio.training.trainer import StopToken, Trainer

LOG_LINES = 30


@dataclass(frozen=True)
class JobSnapshot:
    name: str
    status: str  # starting, running, stopping, stopped, finished, failed
    message: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    loss: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    val: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    samples: list[tuple[int, str]] = field(default_factory=list)  # (step, video path)
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    run_dir: str | None = None
    error: str | None = None
    log: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.status in ("starting", "running", "stopping")


class TrainingJob:
    def __init__(
        self, manager, options=None, *, dataset=None, resume=None, overrides=None, name: str = ""
    ) -> None:
        self._lock = threading.Lock()
        self._snapshot = JobSnapshot(
            name=name or (options.name if options else Path(str(resume)).name), status="starting"
        )
        self.stop_token = StopToken()
        self.trainer = Trainer(
            manager, options, dataset=dataset, resume=resume, overrides=overrides, on_event=self._on_event
        )
        self.result: TrainResult | None = None
        self._thread = threading.Thread(target=self._run, name=f"training-{self._snapshot.name}", daemon=True)
        self.listeners: list[Callable[[TrainEvent], None]] = []

    # ------------------------------------------------------------------ control
    def start(self) -> TrainingJob:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_token.stop()
        self._update(status="stopping", message="Stopping at the next step; a checkpoint is written.")

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return self._snapshot

    @property
    def running(self) -> bool:
        return self._thread.is_alive() or self.snapshot().status == "starting"

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            self.result = self.trainer.run(self.stop_token)
        except StudioError as exc:
            self._update(status="failed", error=str(exc), message=str(exc))
            return
        except Exception as exc:  # a bug or a library failure: shown, the app keeps serving
            self._update(
                status="failed", error=f"{type(exc).__name__}: {exc}", message=f"Training failed: {exc}"
            )
            return
        result = self.result
        self._update(
            status="stopped" if result.stopped else "finished",
            files=list(result.files),
            summary=result.summary(),
            run_dir=str(result.run_dir),
        )

    def _update(self, **changes) -> None:
        with self._lock:
            self._snapshot = replace(self._snapshot, **changes)

    def _on_event(self, event: TrainEvent) -> None:
        with self._lock:
            s = self._snapshot
            changes: dict[str, Any] = {"message": event.message}
            if s.status == "starting":
                changes["status"] = "running"
            if s.run_dir is None and self.trainer.run_dir is not None:
                changes["run_dir"] = str(self.trainer.run_dir)
            if event.kind == "step":
                loss = {k: list(v) for k, v in s.loss.items()}
                loss.setdefault(event.expert, []).append((event.step, event.loss))
                changes.update(loss=loss, step=event.step, total=event.total, eta_s=event.eta_s)
            elif event.kind == "phase" and event.step and not s.loss:  # resumed: the curve so far
                changes["loss"] = {
                    k: list(enumerate(v, start=1)) for k, v in self.trainer.progress.loss.items()
                }
                changes["step"] = event.step
            if event.kind in ("val", "checkpoint", "sample", "phase"):
                progress = self.trainer.progress
                changes["val"] = {k: [(p.step, p.loss) for p in v] for k, v in progress.val.items()}
                changes["samples"] = [(x.step, x.video) for x in progress.samples]
            if event.kind == "checkpoint" and event.path:
                changes["checkpoints"] = [*s.checkpoints, (event.step, event.path)]
            if event.kind != "step":
                changes["log"] = [*s.log, event.message.splitlines()[0]][-LOG_LINES:]
            self._snapshot = replace(s, **changes)
        for listener in list(self.listeners):
            listener(event)
