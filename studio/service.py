"""The studio as a service: what the UI and the API call.

It owns the :class:`~studio.engine.manager.PipelineManager` (the model) and the cancel
tokens of running renders, keyed by browser session, so one session's Cancel never stops
another's render. UI handlers stay thin: they turn widget values into typed requests and
call these methods.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.doctor.build import doctor_report, model_view
from studio.doctor.examine import Doctor, stack_loras
from studio.doctor.measure import measure_forward
from studio.doctor.report import DoctorReport
from studio.engine.manager import CancelToken, PipelineManager, RenderRequest, RenderResult, StepEvent
from studio.engine.memory import MemoryConfig, effective_mode
from studio.engine.split import Split
from studio.engine.zerogpu import gpu_seconds, on_gpu
from studio.errors import LoraFileError, OutOfMemory, without_server_paths
from studio.hub.client import HubClient
from studio.hub.resolve import HubContext, fit_of, is_repo_source, resolve_stack
from studio.loras.compat import Compat, check_compat
from studio.loras.demo_loras import ensure_demo_loras
from studio.loras.inspect import inspect_lora
from studio.loras.library import LibraryItem, LoraLibrary
from studio.loras.sources import FileIdentity, resolve_source
from studio.models.registry import REGISTRY, ModelSpec, cuda_available, local_weights, resolve_model
from studio.outputs.render_files import SavedRender, save_render
from studio.settings import Settings
from studio.stack.schema import RenderSettings, Stack, StackEntry
from studio.vram.estimate import estimate as estimate_vram
from studio.vram.types import Estimate, LoraLoad
from studio.workflows.presets.lset import RunSteps


def _render(manager: PipelineManager, request: RenderRequest, progress, cancel: CancelToken):
    return manager.render(request, progress=progress, cancel=cancel)


def _render_seconds(manager: PipelineManager, request: RenderRequest, *args) -> int:
    return gpu_seconds(manager.spec.name if manager.spec else "", request.settings)


def _estimate(
    spec: ModelSpec, settings: RenderSettings, memory: MemoryConfig, loras: list[LoraLoad]
) -> Estimate:
    if memory.compile:  # compiled mode: the LoRA room of each expert, whatever is loaded
        loras = _compiled_room(loras, memory.compile_lora_rank)
    return estimate_vram(
        spec,
        width=settings.width,
        height=settings.height,
        frames=settings.frames,
        mode=effective_mode(memory, is_demo=spec.is_demo),
        precision=memory.precision,
        loras=loras,
        cfg=settings.guidance > 1.0,
        vae_tiling=memory.vae_tiling,
    )


OVER_CARD_MARGIN = 1.05  # a render estimated this far above the card needs confirmation


class Studio:
    def __init__(self, settings: Settings, manager: PipelineManager | None = None) -> None:
        self.settings = settings
        self.manager = manager or PipelineManager(settings)
        self._tokens: dict[str, CancelToken] = {}
        self._tokens_lock = threading.Lock()
        self._render_ended = threading.Condition(self._tokens_lock)
        self._steps_run: dict[str, tuple[int, int]] = {}  # session -> (steps run, total) of its last render
        self.lora_library = LoraLibrary(settings.resolved_lora_dirs(), settings.cache_dir)
        self.hub = HubClient(cache_dir=settings.cache_dir)  # a token typed in the UI is passed per call
        self._items: list[LibraryItem] = []
        self._infos: dict = {}  # FileIdentity -> LoraInfo (header only), for estimates
        self._render_on_gpu = on_gpu(_render, duration=_render_seconds)
        self.doctor_engine = Doctor(settings.cache_dir)
        self._job = None  # the training run (studio.training.job.TrainingJob), one at a time
        self._job_lock = threading.Lock()

    # --------------------------------------------------------------- models
    @property
    def spec(self) -> ModelSpec:
        if self.manager.spec is None:
            self.manager.load_model(self.settings.model)
        return self.manager.spec

    def model_choices(self) -> list[tuple[str, str]]:
        choices = [(spec.label, name) for name, spec in REGISTRY.items()]
        current = self.manager.spec
        if current is not None and current.name not in REGISTRY:
            choices.append((current.label, current.name))
        return choices

    def model_status(self, name: str) -> tuple[str, bool]:
        """A sentence about model ``name`` and whether it can be loaded on this machine now."""
        spec = resolve_model(name)
        if spec.is_demo:
            return spec.note, True
        on_disk = local_weights(spec) is not None
        if not on_disk:
            return (
                f"The weights of {spec.label} are not on this machine: about "
                f"{spec.approx_download_bytes / 1e9:.0f} GB to download from {spec.repo_id}. {spec.note}",
                False,
            )
        if not cuda_available():
            return f"{spec.label} is on disk, but it needs an NVIDIA GPU and this machine has none.", False
        return f"{spec.label} is ready. {spec.note}", True

    def switch_model(self, name: str) -> ModelSpec:
        return self.manager.load_model(name)

    # -------------------------------------------------------------- library
    def library(self, *, refresh: bool = False, cached: bool = False) -> list[LibraryItem]:
        """LoRA files and pairs under the LoRA folders, then those downloaded from the Hub.

        With the demo model loaded (and ``settings.demo_loras``) the demo LoRAs come last among
        the local files, built first where missing; with another model they are left out.
        A rescan reads only new or changed files; ``cached`` returns the last scan's items
        (scanning once if there was none).
        """
        if cached and self._items:
            return list(self._items)
        demo = self.demo_loras_listed()
        if demo:
            with contextlib.suppress(OSError):  # a read-only cache: the library goes on without them
                ensure_demo_loras(self.settings.demo_lora_dir)
        local = self.lora_library.refresh() if refresh else self.lora_library.scan()
        if not demo:
            local = [item for item in local if not self.is_demo_item(item)]
        self._items = [*local, *self.hub.library_items()]
        return self._items

    def demo_loras_listed(self) -> bool:
        """Whether the library shows the demo LoRAs now (the demo model is loaded)."""
        return self.settings.demo_loras and self.spec.is_demo

    def is_demo_item(self, item: LibraryItem) -> bool:
        """Whether ``item`` is one of the demo LoRAs the studio built (in its own folder)."""
        return self.settings.demo_loras and Path(item.root) == self.settings.demo_lora_dir.resolve()

    def library_item(self, item_id: str) -> LibraryItem:
        item = next((i for i in self._items if i.id == item_id), None)
        if item is None:
            raise LoraFileError("That LoRA is no longer in the library; press Refresh.")
        return item

    def compat(self, item: LibraryItem) -> Compat:
        """The item's badge on the loaded model, from the file headers (the worse half of a pair)."""
        if item.error:
            return Compat(level="incompatible", percent=0.0, reason=item.error)
        config = dict(self.manager.transformer_config())
        badges = [check_compat(info, config, model_name=self.spec.label) for info in item.infos]
        order = {"incompatible": 0, "partial": 1, "compatible": 2}
        return min(badges, key=lambda c: (order[c.level], c.percent))

    def entry_for(self, item_id: str) -> tuple[StackEntry, Compat]:
        """A stack entry for a library item; refused when it would change nothing on the model."""
        item = self.library_item(item_id)
        compat = self.compat(item)
        if compat.level == "incompatible":
            raise LoraFileError(f"{item.label} cannot be added: {compat.reason}")
        return item.to_stack_entry(), compat

    # --------------------------------------------------------------- messages
    def public_folders(self) -> list[tuple[Path, str]]:
        """``(absolute folder, name to show)`` for the folders messages may mention."""

        def shown(configured: Path, resolved: Path) -> str:
            return str(configured) if not configured.is_absolute() else resolved.name

        folders: list[tuple[Path, str]] = []
        for configured in self.settings.lora_dirs:
            with contextlib.suppress(OSError, RuntimeError):
                folders.append((configured.expanduser().resolve(), shown(configured, configured.resolve())))
        if self.settings.demo_loras:
            folders.append((self.settings.demo_lora_dir.resolve(), "demo-loras"))
        for configured in (self.settings.outputs_dir, self.settings.presets_dir, self.settings.cache_dir):
            with contextlib.suppress(OSError, RuntimeError):
                folders.append((configured.expanduser().resolve(), shown(configured, configured.resolve())))
        with contextlib.suppress(OSError):
            folders.append((Path(os.getcwd()), "."))
        return folders

    def public_message(self, text: str) -> str:
        """``text`` as the browser may show it: files named relative to their LoRA folder, no server paths."""
        return without_server_paths(text, self.public_folders())

    # ----------------------------------------------------------------- memory
    def lora_loads(self, stack: Stack, *, fuse: bool = False) -> list[LoraLoad]:
        """What each active LoRA file adds to memory (from its header), for the estimator."""
        return list(self.lora_loads_by_path(stack, fuse=fuse).values())

    def lora_loads_by_path(self, stack: Stack, *, fuse: bool = False) -> dict[Path, LoraLoad]:
        """:meth:`lora_loads`, keyed by each file's resolved path."""
        experts_by_path: dict[Path, list[str]] = {}
        roots = self.settings.resolved_lora_dirs()
        for entry in stack.active():
            for expert in entry.applies_to():
                try:
                    path = resolve_source(entry.source(expert), roots)
                except LoraFileError:
                    continue  # the render will say so; the estimate counts what it can
                experts_by_path.setdefault(path, []).append(expert)
        loads = {}
        for path, experts in experts_by_path.items():
            info = self._header_info(path)
            if info is not None and (info.rank or info.ranks):
                loads[path] = LoraLoad.from_info(info, experts=tuple(dict.fromkeys(experts)), fused=fuse)
        return loads

    def _header_info(self, path: Path):
        key = FileIdentity.of(path)
        if key not in self._infos:
            try:
                self._infos[key] = inspect_lora(path, hash_file=False)
            except LoraFileError:
                self._infos[key] = None
        return self._infos[key]

    def model_spec(self, name: str | None = None) -> ModelSpec:
        """The spec of ``name`` (the loaded model when None or when it is the loaded one)."""
        if not name or (self.manager.spec is not None and name == self.manager.spec.name):
            return self.spec
        return resolve_model(name)

    def estimate(
        self,
        settings: RenderSettings,
        stack: Stack,
        memory: MemoryConfig,
        *,
        fuse: bool = False,
        model_name: str | None = None,
    ) -> Estimate:
        """Peak VRAM of a render (pure; nothing loads). ``model_name``: another model to plan for."""
        spec = self.model_spec(model_name)
        return _estimate(spec, settings, memory, self.lora_loads(stack, fuse=fuse))

    def check_fits(
        self,
        settings: RenderSettings,
        stack: Stack,
        memory: MemoryConfig,
        card_bytes: int,
        card_name: str,
        *,
        fuse: bool = False,
    ) -> None:
        """Refuse a render whose estimate exceeds the card by a clear margin (the caller may skip this)."""
        est = self.estimate(settings, stack, memory, fuse=fuse)
        if est.peak_vram_bytes > OVER_CARD_MARGIN * card_bytes:
            raise OutOfMemory(
                f"This render needs about {est.peak_vram_bytes / 1e9:.1f} GB of GPU memory but {card_name} has "
                f"{card_bytes / 1e9:.1f} GB, so it would run out of memory. Use Suggest (or `python -m studio "
                "vram --suggest`) for settings that fit, or render anyway (“Render even if it won't fit”, --force)."
            )

    # --------------------------------------------------------------- doctor
    def doctor(
        self,
        settings: RenderSettings,
        stack: Stack,
        memory: MemoryConfig | None = None,
        *,
        fuse: bool = False,
        measure: bool = False,
        read_library: bool = True,
    ) -> DoctorReport:
        """The stack doctor's report (see :mod:`studio.doctor`); never waits for a running render.

        ``measure`` also times a forward with and without the stack, which does need the model:
        call it from the GPU queue. Without ``read_library`` library files the doctor has not
        measured yet are left out of the comparison instead of being read.
        """
        memory = memory or self.manager.memory
        spec = self.spec
        report = doctor_report(
            self.doctor_engine,
            model_view(self.manager),
            stack_loras(stack, self.settings.resolved_lora_dirs(), self.manager.components()),
            self._doctor_reference(),
            read_reference=read_library,
            loads=self.lora_loads_by_path(stack, fuse=fuse),
            estimate_with=lambda loras: _estimate(spec, settings, memory, loras),
            model_spec=spec,
            settings=settings,
            experts=spec.experts,
            fuse=fuse,
            fp8=memory.precision == "fp8",
        )
        if measure and report.cost is not None:
            report.cost.measured = measure_forward(self.manager, stack, settings)
        return report

    def doctor_line(
        self,
        settings: RenderSettings,
        stack: Stack,
        memory: MemoryConfig | None = None,
        *,
        fuse: bool = False,
    ) -> str:
        """The doctor's summary for a render record; a finished render is never lost over it."""
        try:
            return self.doctor(settings, stack, memory, fuse=fuse, read_library=False).summary()
        except Exception as exc:  # the record says so instead; the video is still written
            return f"doctor: not available ({type(exc).__name__}: {exc})"

    def _doctor_reference(self) -> dict[str, list[FileIdentity]]:
        """Expert → the library files made for it (or for both) that fit the loaded model, by their headers."""
        experts = list(self.manager.components())
        config = dict(self.manager.transformer_config())
        out: dict[str, list[FileIdentity]] = {e: [] for e in experts}
        for item in self.library():
            if item.kind == "pair":
                parts = [(item.high_path, item.high_info, "high"), (item.low_path, item.low_info, "low")]
            else:
                parts = [(item.path, item.info, item.expert)]
            for path, info, meant_for in parts:
                if path is None or info is None or check_compat(info, config).level == "incompatible":
                    continue
                try:
                    identity = FileIdentity.of(Path(path))
                except OSError:
                    continue
                for expert in experts:
                    if meant_for is None or meant_for == expert or len(experts) == 1:
                        out[expert].append(identity)
        return out

    # --------------------------------------------------------------- render
    def hub_context(self) -> HubContext:
        """How Hub repo paths are resolved for the loaded model (its task, experts and transformer config)."""
        config = dict(self.manager.transformer_config())
        return HubContext(self.hub, fit_of(self.spec, config), cache_dir=self.settings.cache_dir)

    def resolve_stack(self, stack: Stack, *, fetch: bool = True) -> tuple[Stack, list[str]]:
        """``stack`` with its Hub repo paths (``owner/name`` as a LoRA path) picked, pinned and downloaded.

        A stack without such paths comes back as it is, with no Hub call.
        """
        roots = self.settings.resolved_lora_dirs()
        if not any(is_repo_source(s, roots) for e in stack.entries for s in (e.high, e.low)):
            return stack, []
        context = self.hub_context()
        return resolve_stack(self.hub, stack, roots=roots, fit=context.fit, fetch=fetch)

    def render(
        self,
        image: Any,
        settings: RenderSettings,
        stack: Stack,
        *,
        session: str = "cli",
        fuse: bool = False,
        memory: MemoryConfig | None = None,
        progress: Callable[[StepEvent], None] | None = None,
        video_path: Path | None = None,
    ) -> SavedRender:
        """Render and save; ``memory`` switches the memory mode first when it differs (may reload).

        ``video_path``: the exact MP4 to write (never overwritten), else a fresh name in the outputs folder.
        """
        return self.render_result(
            image,
            settings,
            stack,
            session=session,
            fuse=fuse,
            memory=memory,
            progress=progress,
            video_path=video_path,
        )[0]

    def render_result(
        self,
        image: Any,
        settings: RenderSettings,
        stack: Stack,
        *,
        session: str = "cli",
        fuse: bool = False,
        memory: MemoryConfig | None = None,
        progress: Callable[[StepEvent], None] | None = None,
        video_path: Path | None = None,
    ) -> tuple[SavedRender, RenderResult]:
        """:meth:`render`, also handing back the manager's result (the decoded frames, for the Python API)."""
        stack, _ = self.resolve_stack(stack)
        request = RenderRequest(image=image, settings=settings, stack=stack, fuse=fuse)
        result = self._run(request, session, memory, progress)
        line = self.doctor_line(settings, stack, memory, fuse=fuse)
        where = (
            {"video_path": video_path}
            if video_path is not None
            else {"outputs_dir": self.settings.outputs_dir}
        )
        return save_render(request, result, doctor=line, **where), result

    def render_request(
        self,
        request: RenderRequest,
        *,
        session: str = "cli",
        memory: MemoryConfig | None = None,
        progress: Callable[[StepEvent], None] | None = None,
    ) -> RenderResult:
        """Run ``request`` on the model, nothing saved (a batch saves it); :meth:`cancel` of ``session`` stops it.

        Hub repo paths in the stack are picked, pinned and downloaded first, as for :meth:`render`.
        """
        stack, _ = self.resolve_stack(request.stack)
        if stack is not request.stack:
            request = dataclasses.replace(request, stack=stack)
        return self._run(request, session, memory, progress)

    def _run(
        self,
        request: RenderRequest,
        session: str,
        memory: MemoryConfig | None,
        progress: Callable[[StepEvent], None] | None,
    ) -> RenderResult:
        if memory is not None and memory != self.manager.memory:
            self.manager.configure_memory(memory)
        token = CancelToken()
        with self._tokens_lock:
            self._tokens[session] = token
            self._steps_run[session] = (0, request.settings.steps)

        def on_step(event: StepEvent) -> None:
            self._steps_run[session] = (event.step, event.total)
            if progress is not None:
                progress(event)

        try:
            return self._render_on_gpu(self.manager, request, on_step, token)
        finally:
            with self._tokens_lock:
                if self._tokens.get(session) is token:
                    del self._tokens[session]
                self._render_ended.notify_all()

    def cancel(self, session: str, *, wait: float = 0.0) -> bool:
        """Cancel the running render of ``session``; False when it has none.

        With ``wait`` (seconds), return once that render has stopped (it stops between steps),
        so :meth:`steps_run` says where.
        """
        with self._tokens_lock:
            token = self._tokens.get(session)
            if token is None:
                return False
            token.cancel()
            if wait > 0:
                self._render_ended.wait_for(lambda: self._tokens.get(session) is not token, timeout=wait)
        return True

    # ------------------------------------------------------------- training
    def dataset_report(self, folder: str | Path, options):
        """The check report of a dataset folder for these training settings (nothing loads)."""
        from studio.training.dataset import check_dataset

        spec = self.model_spec(options.model)
        return check_dataset(
            folder, frames=options.frames, width=options.width, height=options.height,
            fps=spec.defaults.fps, resample_fps=options.resample_fps, trigger=options.trigger,
        )  # fmt: skip

    def training_estimate(self, options, memory: MemoryConfig):
        """Peak VRAM of a training run with these settings in this memory mode (pure)."""
        from studio.vram.training import estimate_training

        spec = self.model_spec(options.model)
        return estimate_training(
            spec, width=options.width, height=options.height, frames=options.frames, rank=options.rank,
            experts=options.trained_experts, batch=options.batch, module_kinds=options.target_modules,
            gradient_checkpointing=options.gradient_checkpointing,
            mode=effective_mode(memory, is_demo=spec.is_demo), precision=memory.precision,
        )  # fmt: skip

    def start_training(self, options=None, dataset=None, *, resume=None, overrides=None):
        """Start a run (or resume one) in the background; returns its TrainingJob at once."""
        from studio.engine.zerogpu import is_zerogpu
        from studio.errors import ValidationError
        from studio.training.job import TrainingJob

        if is_zerogpu():
            raise ValidationError(
                "Training needs a GPU held for the whole run, which a ZeroGPU Space does not give; train on a "
                "machine of your own, or write a musubi-tuner / diffusion-pipe config (--export-config)."
            )
        with self._job_lock:
            if self._job is not None and self._job.running:
                raise ValidationError(f"The run {self._job.snapshot().name} is training; stop it first.")
            job = TrainingJob(self.manager, options, dataset=dataset, resume=resume, overrides=overrides)
            self._job = job.start()
        return job

    def stop_training(self) -> bool:
        """Stop the running training run at its next step (it writes a checkpoint); False when none runs."""
        job = self._job
        if job is None or not job.running:
            return False
        job.stop()
        return True

    def training_snapshot(self):
        """The current (or last) run's progress, or None before the first run."""
        return None if self._job is None else self._job.snapshot()

    def training_runs(self) -> list:
        """Training runs on disk (newest first): resumable ones have a checkpoint."""
        from studio.errors import ValidationError
        from studio.training.state import load_run, runs_root

        roots = self.settings.resolved_lora_dirs()
        folder = runs_root(roots[0]) if roots else None
        runs = []
        for run_dir in sorted(folder.iterdir()) if folder and folder.is_dir() else []:
            try:
                runs.append((run_dir, load_run(run_dir)))
            except ValidationError:
                continue
        return sorted(runs, key=lambda r: r[1].updated, reverse=True)

    def steps_run(self, session: str) -> tuple[int, int] | None:
        """(steps run, total) of the session's last or running render, None when it has none."""
        return self._steps_run.get(session)

    def rendering(self, session: str) -> bool:
        """Whether ``session`` has a render running now."""
        with self._tokens_lock:
            return session in self._tokens

    # ------------------------------------------------------------ schedules
    def split(self, settings: RenderSettings) -> Split:
        """Which expert runs each step of a render with ``settings`` (real scheduler timesteps, no render)."""
        return self.manager.split(settings)

    def wan2gp_run(self, steps: int | None = None) -> RunSteps:
        """The run a Wan2GP ``.lset``'s per-step lists are laid out for: ``steps`` (default: the model's)
        and the loaded model's expert split for it."""
        defaults = self.spec.defaults

        def high_steps(count: int, shift: float | None) -> int:
            return self.split(RenderSettings(steps=count, shift=shift or defaults.shift)).high_count

        return RunSteps(steps or defaults.steps, high_steps)


def _compiled_room(loads: list[LoraLoad], rows: int) -> list[LoraLoad]:
    """Compiled mode's LoRA room per expert (studio.engine.compile): ``rows`` rows, or the stack's ranks
    rounded up to a multiple of 64 when they need more."""
    room = []
    for expert in ("high", "low"):
        need = sum(load.rank for load in loads if expert in load.experts)
        size = rows if need <= rows else -(-need // 64) * 64
        kinds = ("self_attn", "cross_attn", "ffn", "embeddings", "head")
        room.append(
            LoraLoad(rank=size, module_kinds=kinds, experts=(expert,), name="compiled-mode LoRA room")
        )
    return room
