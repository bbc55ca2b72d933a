"""What a training run reports: events while it runs, a result (and the CLI's ``--json``) at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

EventKind = Literal["phase", "step", "val", "checkpoint", "sample", "done", "stopped"]


@dataclass(frozen=True)
class TrainEvent:
    kind: EventKind
    message: str
    step: int = 0
    total: int = 0
    expert: str | None = None
    loss: float | None = None
    eta_s: float | None = None
    path: str | None = None


def window_mean(values: list[float], *, last: bool) -> float | None:
    """The mean of the first (or last) tenth of ``values`` (at least one value): a steadier reading."""
    if not values:
        return None
    n = max(1, len(values) // 10)
    part = values[-n:] if last else values[:n]
    return sum(part) / len(part)


@dataclass
class TrainResult:
    run_dir: Path
    files: list[str]  # the exported pair; the last checkpoint's pair when the run was stopped
    checkpoints: list[str]
    stopped: bool
    steps: int
    loss: dict[str, list[float]]
    val_base: dict[str, float]
    val_trained: dict[str, float]
    seconds_per_step: float  # one optimizer step of one expert, recent average
    samples: list[str] = field(default_factory=list)

    @classmethod
    def from_run(cls, *, run_dir, record, progress, stopped: bool, step_times: list[float]) -> TrainResult:
        files = list(record.exported) or (record.checkpoints[-1].files if record.checkpoints else [])
        count = sum(len(v) for v in progress.loss.values())
        per_step = progress.train_seconds / count if count else 0.0
        if step_times:
            per_step = sum(step_times) / len(step_times)
        return cls(
            run_dir=Path(run_dir),
            files=files,
            checkpoints=[c.path for c in record.checkpoints],
            stopped=stopped,
            steps=progress.step,
            loss={k: list(v) for k, v in progress.loss.items()},
            val_base=dict(progress.val_base),
            val_trained={k: v[-1].loss for k, v in progress.val.items() if v},
            seconds_per_step=per_step,
            samples=[s.video for s in progress.samples],
        )

    def loss_first(self, expert: str | None = None) -> float | None:
        return self._window(expert, last=False)

    def loss_last(self, expert: str | None = None) -> float | None:
        return self._window(expert, last=True)

    def _window(self, expert: str | None, *, last: bool) -> float | None:
        experts = [expert] if expert else list(self.loss)
        values = [window_mean(self.loss.get(e, []), last=last) for e in experts]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    def summary(self) -> dict:
        """The CLI's ``--json``: files, the loss at the start and end, validation loss base vs trained."""
        return {
            "files": self.files,
            "loss_first": self.loss_first(),
            "loss_last": self.loss_last(),
            "val_loss": {
                e: {"base": self.val_base.get(e), "trained": self.val_trained.get(e)} for e in self.val_base
            },
            "loss": {e: {"first": self.loss_first(e), "last": self.loss_last(e)} for e in self.loss},
            "steps": self.steps,
            "seconds_per_step": round(self.seconds_per_step, 4),
            "stopped": self.stopped,
            "run": str(self.run_dir),
            "checkpoints": self.checkpoints,
            "samples": self.samples,
        }
