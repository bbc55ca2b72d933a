"""The batch loop: render every job that is not done, one state change at a time, on a backend.

A *backend* renders requests and hands back outcomes; the loop (:class:`BatchRunner`) owns the
state and writes every file, so a render from a pool of workers is saved exactly like one made
in this process:

- :class:`InProcess` renders through the studio's service and its one pipeline manager, so
  between scenes only the stack diff is applied (no model reload; a weight-only change reads
  no LoRA file — the count is in each render's record and in the batch state);
- :class:`~studio.workflows.batch.ray_pool.RayPool` renders on Ray actors, one pipeline each.

A job that fails (a bad LoRA, out of memory, ...) is marked failed with its sentence and the
batch goes on; a job whose worker died goes back to the queue; a cancel puts the running
jobs back to pending and raises :class:`~studio.errors.RenderCancelled`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from studio.engine.manager import RenderRequest, RenderResult, StepEvent
from studio.errors import RenderCancelled, StudioError
from studio.media.images import load_start_image
from studio.outputs.render_files import save_render
from studio.workflows.batch.jobs import Batch, Job
from studio.workflows.batch.state import BatchState, StateFile, batch_lock

__all__ = ["BatchEvent", "BatchRunner", "BatchSummary", "InProcess", "Outcome", "run_batch"]

MAX_LOSSES = 2  # a job whose worker died this many times is failed instead of queued again

EventKind = Literal["start", "step", "done", "failed", "requeued"]


@dataclass(frozen=True)
class Outcome:
    """What a backend hands back for one job: a result, a failure sentence, or 'lost' (its worker died)."""

    job_id: str
    result: RenderResult | None = None
    error: str | None = None
    lost: str | None = None
    worker: str | None = None


class Backend(Protocol):
    def start(self) -> None: ...
    def idle(self) -> bool: ...
    def submit(self, job_id: str, request: RenderRequest, progress: Callable[[StepEvent], None]) -> str: ...
    def next_outcome(self, cancelled: Callable[[], bool]) -> Outcome | None: ...
    def cancel(self) -> None: ...


@dataclass(frozen=True)
class BatchEvent:
    """Progress of a batch: one job started, stepped, finished, failed or went back to the queue."""

    kind: EventKind
    job_id: str
    scene: str
    position: int  # 1-based among the batch's jobs
    total: int
    done: int
    failed: int
    step: int = 0
    steps: int = 0
    message: str = ""
    seconds: float = 0.0
    worker: str | None = None

    def line(self) -> str:
        """One line for a terminal, e.g. ``[2/4] forest: done in 3.1 s (1 LoRA file read) · 2 done, 0 failed``."""
        head = f"[{self.position}/{self.total}] {self.scene}"
        overall = f"{self.done} done, {self.failed} failed of {self.total}"
        where = f" on {self.worker}" if self.worker else ""
        if self.kind == "start":
            return f"{head}: rendering{where} · {overall}"
        if self.kind == "step":
            return f"{head}: step {self.step}/{self.steps}"
        if self.kind == "done":
            return f"{head}: done in {self.seconds:.1f} s ({self.message}) · {overall}"
        if self.kind == "failed":
            return f"{head}: failed: {self.message} · {overall}"
        return f"{head}: back in the queue ({self.message}) · {overall}"


@dataclass(frozen=True)
class BatchSummary:
    out_dir: Path
    state: BatchState
    rendered: list[str] = field(default_factory=list)  # job ids rendered by this run

    @property
    def counts(self) -> dict[str, int]:
        return self.state.counts()

    @property
    def complete(self) -> bool:
        return all(job.status == "done" for job in self.state.jobs)

    def videos(self) -> list[Path]:
        return [self.out_dir / job.video for job in self.state.jobs if job.status == "done" and job.video]


class InProcess:
    """Renders one job at a time through the studio's service (one pipeline manager)."""

    def __init__(self, studio: Any, *, session: str = "batch", memory: Any = None) -> None:
        self.studio = studio
        self.session = session
        self.memory = memory
        self._job: tuple[str, RenderRequest, Callable[[StepEvent], None]] | None = None
        self._cancelled = threading.Event()

    def start(self) -> None:
        self._cancelled.clear()
        _ = self.studio.spec  # loads the model once, before the first scene

    def idle(self) -> bool:
        return self._job is None

    def submit(self, job_id: str, request: RenderRequest, progress: Callable[[StepEvent], None]) -> str:
        self._job = (job_id, request, progress)
        return "this process"

    def next_outcome(self, cancelled: Callable[[], bool]) -> Outcome | None:
        assert self._job is not None
        job_id, request, progress = self._job
        self._job = None
        if self._cancelled.is_set():
            raise RenderCancelled("The batch was cancelled; finished scenes are kept, re-run to go on.")
        try:
            result = self.studio.render_request(
                request, session=self.session, memory=self.memory, progress=progress
            )
        except RenderCancelled:
            raise
        except StudioError as exc:
            return Outcome(job_id, error=str(exc))
        except Exception as exc:  # a bug or a library failure: this scene fails, the batch goes on
            return Outcome(job_id, error=f"The render failed unexpectedly ({type(exc).__name__}: {exc}).")
        return Outcome(job_id, result=result)

    def cancel(self) -> None:
        """Stop the running render between two steps, and do not start another."""
        self._cancelled.set()
        self.studio.cancel(self.session)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class BatchRunner:
    """Renders what is not done of ``batch`` into ``out_dir`` on ``backend``; see the module doc."""

    def __init__(
        self,
        batch: Batch,
        out_dir: str | Path,
        backend: Backend,
        *,
        on_event: Callable[[BatchEvent], None] | None = None,
        max_losses: int = MAX_LOSSES,
    ) -> None:
        self.batch = batch
        self.out_dir = Path(out_dir)
        self.backend = backend
        self.on_event = on_event
        self.max_losses = max_losses
        self._cancel = threading.Event()
        self._images: dict[Path, Any] = {}
        self._positions = {job.id: i + 1 for i, job in enumerate(batch.jobs)}
        self._losses: dict[str, int] = {}
        self.state_file: StateFile | None = None

    def cancel(self) -> None:
        """Stop soon (from another thread or a signal handler): running jobs go back to pending."""
        self._cancel.set()
        self.backend.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> BatchSummary:
        with batch_lock(self.out_dir):
            self.state_file = StateFile.open(self.out_dir, self.batch)
            return self._run(self.state_file)

    # ------------------------------------------------------------------ internals
    def _emit(self, kind: EventKind, job_id: str, **extra: Any) -> None:
        if self.on_event is None:
            return
        assert self.state_file is not None
        counts = self.state_file.state.counts()
        job = self.state_file.state.job(job_id)
        self.on_event(
            BatchEvent(
                kind=kind,
                job_id=job_id,
                scene=job.scene,
                position=self._positions[job_id],
                total=len(self.batch.jobs),
                done=counts["done"],
                failed=counts["failed"],
                **extra,
            )
        )

    def _request(self, job: Job, seed: int) -> RenderRequest:
        if job.image not in self._images:
            self._images[job.image] = load_start_image(job.image)
        settings = job.settings.model_copy(update={"seed": seed})
        return RenderRequest(image=self._images[job.image], settings=settings, stack=job.stack, fuse=job.fuse)

    def _run(self, sf: StateFile) -> BatchSummary:
        queue = deque(job.id for job in sf.state.todo())
        in_flight: dict[str, RenderRequest] = {}
        rendered: list[str] = []
        if queue:
            self.backend.start()
        try:
            while queue or in_flight:
                if self.cancelled:
                    raise RenderCancelled(
                        "The batch was cancelled; finished scenes are kept, re-run to go on."
                    )
                while queue and self.backend.idle():
                    job_id = queue.popleft()
                    job = self.batch.job(job_id)
                    try:
                        request = self._request(job, sf.state.job(job_id).seed)
                    except StudioError as exc:
                        sf.mark_failed(job_id, str(exc))
                        self._emit("failed", job_id, message=str(exc))
                        continue
                    worker = self.backend.submit(job_id, request, self._progress(job_id))
                    sf.mark_running(job_id, worker)
                    in_flight[job_id] = request
                    self._emit("start", job_id, worker=worker)
                if not in_flight:
                    continue
                outcome = self.backend.next_outcome(lambda: self.cancelled)
                if outcome is None:  # cancelled while waiting
                    continue
                request = in_flight.pop(outcome.job_id)
                if self._finish(sf, outcome, request, queue):
                    rendered.append(outcome.job_id)
        except BaseException:
            self.backend.cancel()
            for job_id in in_flight:
                sf.mark_pending(job_id, "interrupted")
            raise
        return BatchSummary(self.out_dir, sf.state.model_copy(deep=True), rendered)

    def _progress(self, job_id: str) -> Callable[[StepEvent], None]:
        def progress(event: StepEvent) -> None:
            self._emit("step", job_id, step=event.step, steps=event.total)

        return progress

    def _finish(self, sf: StateFile, outcome: Outcome, request: RenderRequest, queue: deque) -> bool:
        job_id = outcome.job_id
        if outcome.lost is not None:
            losses = self._losses[job_id] = self._losses.get(job_id, 0) + 1
            if losses > self.max_losses:
                message = f"Its worker died {losses} times while rendering it ({outcome.lost})."
                sf.mark_failed(job_id, message)
                self._emit("failed", job_id, message=message)
            else:
                sf.mark_pending(job_id, outcome.lost)
                queue.appendleft(job_id)
                self._emit("requeued", job_id, message=outcome.lost)
            return False
        if outcome.error is not None or outcome.result is None:
            message = outcome.error or "The render gave no result."
            sf.mark_failed(job_id, message)
            self._emit("failed", job_id, message=message)
            return False
        started = time.perf_counter()
        try:
            saved = save_render(request, outcome.result, video_path=sf.video_path(job_id))
        except StudioError as exc:
            if self.cancelled:
                raise RenderCancelled() from None
            sf.mark_failed(job_id, str(exc))
            self._emit("failed", job_id, message=str(exc))
            return False
        seconds = outcome.result.timings.get("total_s", 0.0) + time.perf_counter() - started
        sf.mark_done(
            job_id,
            video=saved.video,
            sidecar=saved.sidecar,
            start_image=saved.start_image,
            file_reads=outcome.result.file_reads,
            seconds=seconds,
        )
        reads = _plural(outcome.result.file_reads, "LoRA file") + " read"
        self._emit("done", job_id, seconds=seconds, message=reads, worker=outcome.worker)
        return True


def run_batch(
    batch: Batch,
    out_dir: str | Path,
    backend: Backend,
    *,
    on_event: Callable[[BatchEvent], None] | None = None,
) -> BatchSummary:
    """Render what is not done of ``batch`` into ``out_dir`` (see :class:`BatchRunner`)."""
    return BatchRunner(batch, out_dir, backend, on_event=on_event).run()
