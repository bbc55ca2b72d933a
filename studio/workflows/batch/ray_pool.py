"""Fan a batch out over several GPUs (or CPU workers) with Ray: one actor per worker, one pipeline each.

Each :class:`SceneWorker` actor holds its own :class:`~studio.engine.manager.PipelineManager`
(the model loaded once, LoRA stacks switched as diffs) and asks Ray for one GPU
(``num_gpus=1``) when the cluster has GPUs, else one CPU. :class:`RayPool` is a backend of
:class:`~studio.workflows.batch.runner.BatchRunner`: it hands each job to an idle worker and
returns the worker's :class:`~studio.engine.manager.RenderResult`; the driver writes the files,
exactly as for a render in this process. A worker that dies mid-scene (a crash, a killed
process, a lost node) surfaces as ``RayActorError``: its scene goes back to the queue, a new
worker takes its place, and the other workers carry on.

Ray is optional (``pip install ray``). ``address=None`` starts a local Ray on this machine (or
joins the cluster in ``RAY_ADDRESS``); ``"ray://head:10001"`` joins an existing cluster, where
every node needs the studio installed and the same LoRA folders and model cache paths.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from studio.engine.manager import RenderRequest, StepEvent
from studio.engine.memory import MemoryConfig
from studio.errors import RenderCancelled, StudioError, ValidationError
from studio.settings import Settings
from studio.workflows.batch.runner import Outcome

__all__ = ["INSTALL_HINT", "RayPool", "SceneWorker", "import_ray"]

INSTALL_HINT = (
    "Rendering with several workers needs Ray, which is not installed here: run "
    "`pip install 'ray>=2.60'` (it comes with requirements-dev.txt) and try again, or leave out --workers."
)
WAIT_S = 0.2  # how often a waiting driver checks for a cancel


def import_ray():
    try:
        import ray
    except ImportError:
        raise ValidationError(INSTALL_HINT) from None
    return ray


class SceneWorker:
    """A Ray actor's body: one pipeline manager, rendering one request at a time."""

    def __init__(
        self, settings: Settings, model: str | None, memory: MemoryConfig | None, threads: int | None
    ) -> None:
        import torch

        from studio.engine.manager import CancelToken, PipelineManager

        if threads:
            torch.set_num_threads(threads)
        self.manager = PipelineManager(settings, memory=memory)
        self.manager.load_model(model)
        self._token = CancelToken()

    def ready(self) -> dict[str, Any]:
        import socket

        import torch

        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": self.manager.device,
            "threads": torch.get_num_threads(),
        }

    def render(self, request: RenderRequest) -> dict[str, Any]:
        """The result, or the failure's sentence (a failing scene does not kill the worker)."""
        from studio.engine.manager import CancelToken

        self._token = token = CancelToken()
        try:
            return {"result": self.manager.render(request, cancel=token)}
        except RenderCancelled as exc:
            return {"cancelled": str(exc)}
        except StudioError as exc:
            return {"error": str(exc)}
        except Exception as exc:
            return {"error": f"The render failed unexpectedly ({type(exc).__name__}: {exc})."}

    def cancel(self) -> None:
        """Stop the running render between two steps (runs beside it: the actor has two threads)."""
        self._token.cancel()


@dataclass
class _Worker:
    actor: Any
    name: str
    info: dict[str, Any]
    task: Any = None  # the ObjectRef of its running render
    job_id: str | None = None


class RayPool:
    """A batch backend of ``workers`` Ray actors (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        *,
        model: str | None = None,
        memory: MemoryConfig | None = None,
        address: str | None = None,
        threads: int | None = None,
        init_kwargs: dict[str, Any] | None = None,
        max_replacements: int | None = None,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValidationError(f"--workers must be at least 1 (got {workers}).")
        self.ray = import_ray()
        self.settings = settings
        self.wanted = workers
        self.model = model
        self.memory = memory
        self.address = address
        self.threads = threads
        self.init_kwargs = dict(init_kwargs or {})
        self.replacements_left = max_replacements if max_replacements is not None else workers + 2
        self.on_note = on_note
        self.workers: list[_Worker] = []
        self._started_ray = False
        self._options: dict[str, Any] = {}
        self._count = 0
        self._actor_class = None
        self._cancelled = False

    # ------------------------------------------------------------------ lifecycle
    def _note(self, text: str) -> None:
        if self.on_note is not None:
            self.on_note(text)

    def start(self) -> None:
        self._cancelled = False
        if self.workers:
            for worker in self.workers:  # renders a cancelled run left behind: let them end
                if worker.task is not None:
                    self.ray.wait([worker.task])
                    worker.task = worker.job_id = None
            return
        ray = self.ray
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "logging_level": "WARNING", **self.init_kwargs}
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local Ray"
                raise ValidationError(
                    f"Ray could not be started at {where} ({exc}); check the address."
                ) from None
            self._started_ray = True
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus >= 1:
            self._options = {"num_gpus": 1, "num_cpus": 1}
            count = min(self.wanted, gpus)
            if count < self.wanted:
                self._note(f"the cluster has {gpus} GPU(s): starting {count} worker(s), one per GPU")
        else:
            self._options = {"num_cpus": 1, "num_gpus": 0}
            count = min(self.wanted, max(1, cpus))
            if count < self.wanted:
                self._note(f"the cluster has {cpus} CPU(s) and no GPU: starting {count} CPU worker(s)")
        threads = self.threads or (max(1, (os.cpu_count() or 1) // count) if gpus < 1 else None)
        self.threads = threads
        pending = [self._spawn() for _ in range(count)]
        for worker in pending:
            self._wait_ready(worker)
        self.workers = pending

    def _spawn(self) -> _Worker:
        ray = self.ray
        self._count += 1
        if self._actor_class is None:
            self._actor_class = ray.remote(SceneWorker)
        options = {"max_restarts": 0, "max_task_retries": 0, "max_concurrency": 2, **self._options}
        actor = self._actor_class.options(**options).remote(
            self.settings, self.model, self.memory, self.threads
        )
        return _Worker(actor=actor, name=f"worker {self._count}", info={})

    def _wait_ready(self, worker: _Worker) -> None:
        try:
            worker.info = self.ray.get(worker.actor.ready.remote())
        except self.ray.exceptions.RayActorError as exc:
            raise ValidationError(f"A Ray worker could not load the model: {_cause(exc)}") from None
        worker.name = (
            f"{worker.name} (pid {worker.info['pid']} on {worker.info['host']}, {worker.info['device']})"
        )

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):  # already dead
                self.ray.kill(worker.actor)
        self.workers = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ backend
    def idle(self) -> bool:
        return any(w.task is None for w in self.workers)

    def submit(self, job_id: str, request: RenderRequest, progress: Callable[[StepEvent], None]) -> str:
        worker = next(w for w in self.workers if w.task is None)
        worker.task = worker.actor.render.remote(request)
        worker.job_id = job_id
        return worker.name

    def next_outcome(self, cancelled: Callable[[], bool]) -> Outcome | None:
        ray = self.ray
        busy = {w.task: w for w in self.workers if w.task is not None}
        while busy:
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=WAIT_S)
            if ready:
                break
            if self._cancelled or cancelled():
                raise RenderCancelled("The batch was cancelled; finished scenes are kept, re-run to go on.")
        else:
            return None
        worker = busy[ready[0]]
        job_id, worker.task, worker.job_id = worker.job_id, None, None
        assert job_id is not None
        try:
            reply = ray.get(ready[0])
        except ray.exceptions.RayActorError as exc:
            reason = f"{worker.name} died: {_cause(exc)}"
            self._replace(worker)
            return Outcome(job_id, lost=reason, worker=worker.name)
        except ray.exceptions.RayError as exc:
            return Outcome(
                job_id, error=f"The render failed on {worker.name} ({_cause(exc)}).", worker=worker.name
            )
        if "cancelled" in reply:
            raise RenderCancelled(reply["cancelled"])
        if "error" in reply:
            return Outcome(job_id, error=reply["error"], worker=worker.name)
        return Outcome(job_id, result=reply["result"], worker=worker.name)

    def _replace(self, dead: _Worker) -> None:
        self.workers.remove(dead)
        if self.replacements_left <= 0:
            if not self.workers:
                raise StudioError(
                    "Every Ray worker died and no more are started; the unfinished scenes stay pending. "
                    "Check the workers' logs (out of memory?) and run the batch again."
                )
            self._note(f"{dead.name} died; going on with {len(self.workers)} worker(s)")
            return
        self.replacements_left -= 1
        worker = self._spawn()
        self._wait_ready(worker)
        self.workers.append(worker)
        self._note(f"{dead.name} died; {worker.name} took its place")

    def cancel(self) -> None:
        """Ask the running renders to stop between two steps (:meth:`close` kills the workers)."""
        self._cancelled = True
        for worker in self.workers:
            if worker.task is not None:
                with contextlib.suppress(Exception):  # a dead worker has nothing to cancel
                    worker.actor.cancel.remote()

    def worker_pids(self) -> list[int]:
        return [int(w.info["pid"]) for w in self.workers]


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    for line in text:
        line = line.strip()
        if line and not line.startswith("Traceback"):
            return line[:300]
    return type(exc).__name__
