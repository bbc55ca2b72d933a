"""The studio as a service: what the UI and the API call.

It owns the :class:`~studio.engine.manager.PipelineManager` (the model) and the cancel
tokens of running renders, keyed by browser session, so one session's Cancel never stops
another's render. UI handlers stay thin: they turn widget values into typed requests and
call these methods.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.engine.manager import CancelToken, PipelineManager, RenderRequest, StepEvent
from studio.engine.memory import MemoryConfig, effective_mode
from studio.engine.zerogpu import gpu_seconds, on_gpu
from studio.errors import LoraFileError, OutOfMemory
from studio.hub.client import HubClient
from studio.loras.compat import Compat, check_compat
from studio.loras.inspect import inspect_lora
from studio.loras.library import LibraryItem, LoraLibrary
from studio.loras.sources import FileIdentity, resolve_source
from studio.models.registry import REGISTRY, ModelSpec, cuda_available, local_weights, resolve_model
from studio.outputs.render_files import SavedRender, save_render
from studio.settings import Settings
from studio.stack.schema import RenderSettings, Stack, StackEntry
from studio.vram.estimate import estimate as estimate_vram
from studio.vram.types import Estimate, LoraLoad


def _render(manager: PipelineManager, request: RenderRequest, progress, cancel: CancelToken):
    return manager.render(request, progress=progress, cancel=cancel)


def _render_seconds(manager: PipelineManager, request: RenderRequest, *args) -> int:
    return gpu_seconds(manager.spec.name if manager.spec else "", request.settings)


OVER_CARD_MARGIN = 1.05  # a render estimated this far above the card needs confirmation


class Studio:
    def __init__(self, settings: Settings, manager: PipelineManager | None = None) -> None:
        self.settings = settings
        self.manager = manager or PipelineManager(settings)
        self._tokens: dict[str, CancelToken] = {}
        self._tokens_lock = threading.Lock()
        self.lora_library = LoraLibrary(settings.resolved_lora_dirs(), settings.cache_dir)
        self.hub = HubClient(cache_dir=settings.cache_dir)  # a token typed in the UI is passed per call
        self._items: list[LibraryItem] = []
        self._infos: dict = {}  # FileIdentity -> LoraInfo (header only), for estimates
        self._render_on_gpu = on_gpu(_render, duration=_render_seconds)
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
    def library(self, *, refresh: bool = False) -> list[LibraryItem]:
        """LoRA files and pairs under the LoRA folders, then those downloaded from the Hub.

        A rescan reads only new or changed files.
        """
        local = self.lora_library.refresh() if refresh else self.lora_library.scan()
        self._items = [*local, *self.hub.library_items()]
        return self._items

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

    # ----------------------------------------------------------------- memory
    def lora_loads(self, stack: Stack, *, fuse: bool = False) -> list[LoraLoad]:
        """What each active LoRA file adds to memory (from its header), for the estimator."""
        experts_by_path: dict[Path, list[str]] = {}
        roots = self.settings.resolved_lora_dirs()
        for entry in stack.active():
            for expert in entry.applies_to():
                try:
                    path = resolve_source(entry.source(expert), roots)
                except LoraFileError:
                    continue  # the render will say so; the estimate counts what it can
                experts_by_path.setdefault(path, []).append(expert)
        loads = []
        for path, experts in experts_by_path.items():
            info = self._header_info(path)
            if info is not None and (info.rank or info.ranks):
                loads.append(LoraLoad.from_info(info, experts=tuple(dict.fromkeys(experts)), fused=fuse))
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
        return estimate_vram(
            spec,
            width=settings.width,
            height=settings.height,
            frames=settings.frames,
            mode=effective_mode(memory, is_demo=spec.is_demo),
            precision=memory.precision,
            loras=self.lora_loads(stack, fuse=fuse),
            cfg=settings.guidance > 1.0,
            vae_tiling=memory.vae_tiling,
        )

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

    # --------------------------------------------------------------- render
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
    ) -> SavedRender:
        """Render and save; ``memory`` switches the memory mode first when it differs (may reload)."""
        if memory is not None and memory != self.manager.memory:
            self.manager.configure_memory(memory)
        token = CancelToken()
        with self._tokens_lock:
            self._tokens[session] = token
        try:
            request = RenderRequest(image=image, settings=settings, stack=stack, fuse=fuse)
            result = self._render_on_gpu(self.manager, request, progress, token)
            return save_render(request, result, outputs_dir=self.settings.outputs_dir)
        finally:
            with self._tokens_lock:
                if self._tokens.get(session) is token:
                    del self._tokens[session]

    def cancel(self, session: str) -> bool:
        """Cancel the running render of ``session``; False when it has none."""
        with self._tokens_lock:
            token = self._tokens.get(session)
        if token is None:
            return False
        token.cancel()
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
