"""The pipeline manager: the one object that owns the loaded Wan pipeline.

Everything that touches the model goes through here, under one lock:

- ``load_model`` loads a pipeline (switching models unloads the old one first);
- ``apply_stack`` makes the loaded LoRA adapters match a :class:`~studio.stack.schema.Stack`
  as a *diff*: a changed weight only sets adapter scales, a new file is read once and
  loaded only into the expert(s) it applies to, a removed one is deleted, and the base
  model is never reloaded;
- ``render`` runs a :class:`RenderRequest` with per-step progress and cooperative cancel; LoRA
  schedules get each step's weights between steps (:mod:`studio.engine.step_weights`): what stays
  constant on an expert may be fused, what changes stays unfused.

In compiled mode (``MemoryConfig.compile``, :mod:`studio.engine.compile`) the same diff
copies factors into fixed-size LoRA room in compiled blocks: no LoRA change recompiles.

The UI and CLI never hold model state; they build requests and call these methods.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from studio.engine import lora_ops, lora_slots
from studio.engine.compile import CompiledMode, NotCompilable, check_compile
from studio.engine.decode import decode_latents
from studio.engine.failures import is_oom, lora_load_error, oom_advice, quiet_libraries
from studio.engine.memory import (
    MemoryConfig,
    apply_memory,
    check_device,
    fuse_refusal,
    keep_lora_in_compute_dtype,
    lora_compute_dtype,
    set_vae_tiling,
)
from studio.engine.norms import ModuleNorm, pipeline_norms
from studio.engine.plan import AdapterPlan, StepContext, plan_stack
from studio.engine.requests import (  # the manager's public types, re-exported
    CancelToken,
    LoadedLora,
    ProgressFn,
    RenderRequest,
    RenderResult,
    StepEvent,
    model_record,
)
from studio.engine.sharing import SharedModel
from studio.engine.split import Split, make_scheduler, pipeline_boundary, split_for
from studio.engine.step_weights import StepApplier, StepWeights, fuse_pays_off, lora_records
from studio.engine.turns import ModelLock
from studio.errors import ModelError, OutOfMemory, RenderCancelled, StudioError, ValidationError
from studio.loras.match import MatchReport, read_lora
from studio.models.registry import ModelSpec, pipeline_source, resolve_model
from studio.settings import Settings
from studio.stack.schema import RenderSettings, Stack

COMPONENT_OF = {"high": "transformer", "low": "transformer_2"}


class PipelineManager(SharedModel):
    def __init__(
        self, settings: Settings, *, device: str | None = None, memory: MemoryConfig | None = None
    ) -> None:
        quiet_libraries()
        self.settings = settings
        self._lock = ModelLock()  # renders go before background work (training steps)
        self._device = device
        self.pipe = None
        self.spec: ModelSpec | None = None
        self._loras: dict[tuple[str, str], LoadedLora] = {}  # (component, adapter) -> loaded
        self._weights: dict[str, dict[str, float]] = {}  # component -> adapter -> active weight
        self._fused: dict[str, dict[str, float]] = {}  # component -> adapter -> weight it is fused with
        self._shift: float | None = None
        self.memory = memory or MemoryConfig()
        self._transformer_config: dict[str, Any] | None = None
        self._scheduler_config: dict[str, Any] | None = None
        self.base_norms: dict[str, dict[str, ModuleNorm]] = {}  # component -> ‖W‖² per Linear, at load
        self._compile = CompiledMode()
        self.reports: dict[Path, MatchReport] = {}  # match report of each loaded file
        self._held: str | None = None  # the adapters `exclusive` activated, until the next stack
        self.training: str | None = None  # the training run whose adapters are in the model
        # Counters that tests and benchmarks read.
        self.lora_file_reads = 0
        self.model_loads = 0
        # Test hook: called with "lora_load", "step" or "decode"; tests raise faults from it.
        self.fault_hook: Callable[[str], None] | None = None

    # ----------------------------------------------------------------- model
    @property
    def device(self) -> str:
        if self._device is None:
            import torch

            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        return self._device

    def load_dtype(self, spec: ModelSpec):
        """The torch dtype models load in: ``settings.dtype``, else the model's on a GPU and float32 on the CPU."""
        import torch

        name = self.settings.dtype or (spec.dtype if self.device != "cpu" else "float32")
        return getattr(torch, name)

    def load_model(self, name_or_folder: str | None = None) -> ModelSpec:
        """Load a model by registry name or folder; a no-op when it is already loaded."""
        from studio.models.registry import default_model_name

        spec = resolve_model(name_or_folder or default_model_name(self.settings))
        with self._lock:
            if self.spec is not None and self.spec.name == spec.name and self.pipe is not None:
                return spec
            self._refuse_while_training()
            self.unload()
            source = pipeline_source(spec, self.settings)
            self.pipe = self._from_pretrained(spec, source)
            self.spec = spec
            self._transformer_config = dict(self.pipe.transformer.config)
            self._scheduler_config = dict(self.pipe.scheduler.config)
            self.model_loads += 1
            return spec

    def _from_pretrained(self, spec: ModelSpec, source: Path):
        from diffusers import WanImageToVideoPipeline

        dtype = self.load_dtype(spec)
        try:
            pipe = WanImageToVideoPipeline.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(
                f"The model in {source} could not be loaded ({exc}). If it was downloaded partially, "
                "download it again."
            ) from None
        pipe.set_progress_bar_config(disable=True)
        # The stack doctor's base-weight norms: read now, before any LoRA or offload hook changes them.
        self.base_norms = pipeline_norms(pipe, "cuda" if self.device == "cuda" else None)
        apply_memory(pipe, self.memory, device=self.device, is_demo=spec.is_demo)
        return pipe

    def configure_memory(self, memory: MemoryConfig) -> bool:
        """Set the memory mode; True when it reloaded the model (placement or precision changed; not compile)."""
        check_device(memory, self.device)
        check_compile(memory, self.device, self.spec)
        with self._lock:
            if self.pipe is not None and memory.needs_reload_from(self.memory):
                self._refuse_while_training()
            previous, self.memory = self.memory, memory
            if self.pipe is None:
                return False
            if not memory.needs_reload_from(previous):
                set_vae_tiling(self.pipe, memory.vae_tiling)
                return False
            name = self.spec.name
            self.unload()
            self.load_model(name)
            return True

    def unload(self) -> None:
        with self._lock:
            self.pipe = None
            self.spec = None
            self._transformer_config = None
            self.base_norms = {}
            self._loras.clear()
            self._weights.clear()
            self._fused = {}
            self._shift = None
            self._compile.reset()
            self._held = None
            lora_ops.release_memory()

    def _require_model(self) -> None:
        if self.pipe is None:
            self.load_model()

    def transformer_config(self) -> dict[str, Any]:
        """The loaded model's transformer config (what LoRA compatibility is checked against).

        Kept from load time, so the UI can check LoRAs while a render holds the lock.
        """
        config = self._transformer_config
        if config is None:
            with self._lock:
                self._require_model()
                config = self._transformer_config
        return dict(config)

    def split(self, settings: RenderSettings) -> Split:
        """Which expert runs each step of a render with ``settings`` (the real scheduler timesteps; kept from
        load time, so the UI's timeline does not wait for a running render)."""
        if self._scheduler_config is None:
            with self._lock:
                self._require_model()
        return split_for(self._scheduler_config, self.spec, settings)

    def components(self) -> dict[str, str]:
        """Expert → pipeline component name for the loaded model."""
        assert self.spec is not None
        if self.spec.experts == 2:
            return dict(COMPONENT_OF)
        return {"high": "transformer"}

    # ----------------------------------------------------------------- LoRAs
    def loaded_adapters(self) -> dict[str, list[str]]:
        """Component → adapter names currently loaded (for tests and the UI)."""
        out: dict[str, list[str]] = {}
        for component, adapter in self._loras:
            out.setdefault(component, []).append(adapter)
        return out

    def active_weights(self) -> dict[str, dict[str, float]]:
        return {c: dict(w) for c, w in self._weights.items()}

    def apply_stack(
        self,
        stack: Stack,
        *,
        fuse: bool = False,
        keep_fused: bool = False,
        context: StepContext | None = None,
    ) -> AdapterPlan:
        """Make the loaded adapters and their weights match ``stack`` (a diff, see module doc).

        ``fuse``: fuse what stays constant (scheduled LoRAs stay unfused); ``keep_fused``: what is fused
        stays fused while constant; ``context``: the render's expert per step, for schedules (without it
        a schedule stands at its first step's weight). Unfused weights change by scales only.
        """
        with self._lock:
            self._require_model()
            plan = self._plan(stack, context)
            if self._sync_compiled(plan):  # into or out of compiled mode: every LoRA loads again
                plan = self._plan(stack, context)
            if self._compile.active:  # the LoRAs run in the compiled blocks' room, never fused
                fuse = keep_fused = False
            if fuse and (refusal := fuse_refusal(self.memory)):
                raise ValidationError(refusal)
            constant = self._fusable(plan, context) if fuse or keep_fused else {}
            if fuse:
                wanted = constant
            elif keep_fused and all(
                constant.get(c, {}).get(a) == w for c, ws in self._fused.items() for a, w in ws.items()
            ):
                wanted = {c: dict(ws) for c, ws in self._fused.items()}
            else:
                wanted = {}
            if not plan.to_load and not plan.to_delete and wanted == self._fused:
                if plan.weights != self._weights or self._held is not None:
                    self._set_weights(plan.weights)  # scales only; fused adapters keep theirs
                return plan
            try:
                with self._oom_guard("loading the LoRAs"):
                    if self._fused:
                        self._unfuse()
                    self._delete(plan.to_delete)
                    self._load(plan)
                    self._set_weights(plan.weights)
                    if wanted:
                        self._fuse(wanted)
            except NotCompilable as exc:  # that file's stacks run uncompiled: load it all again
                self._compile.refuse(exc, exc.identity.path.name)
                return self.apply_stack(stack, fuse=fuse, keep_fused=keep_fused, context=context)
            return plan

    def _fusable(self, plan: AdapterPlan, context: StepContext | None) -> dict[str, dict[str, float]]:
        """Active adapters constant on every step of their expert (component → weights): what may fuse."""
        if context is None:
            return {c: dict(w) for c, w in plan.weights.items() if w}
        return StepWeights(context.experts, self.components(), plan.step_weights).fusable(
            plan.weights, self.pipe
        )

    def _plan(self, stack: Stack, context: StepContext | None = None) -> AdapterPlan:
        return plan_stack(
            stack,
            roots=self.settings.resolved_lora_dirs(),
            components=self.components(),
            loaded={key: lora.identity for key, lora in self._loras.items()},
            context=context,
        )

    def _sync_compiled(self, plan: AdapterPlan) -> bool:
        """Prepare or release the experts to match compiled mode (dropping all LoRAs); True if changed."""
        kept = {lora.identity for key, lora in self._loras.items() if key not in plan.to_delete}
        on = self.memory.compile and self.training is None  # a training run needs peft layers
        wanted = self._compile.wanted(on, set(plan.to_load) | kept)
        if wanted == self._compile.active:
            return False
        self._set_compiled(wanted)
        return True

    def _set_compiled(self, wanted: bool) -> None:
        if wanted:
            check_compile(self.memory, self.device, self.spec)
        if self._fused:
            self._unfuse()
        self._delete(list(self._loras))
        self._weights = {}
        models = [getattr(self.pipe, c) for c in self.components().values()]
        self._compile.switch(models, wanted, rows=self.memory.compile_lora_rank, dtype_of=lora_compute_dtype)
        lora_ops.release_memory()

    @contextlib.contextmanager
    def _oom_guard(self, doing: str, settings: RenderSettings | None = None):
        """Turn an out-of-memory error into OutOfMemory (with advice), keeping the model usable."""
        import torch

        try:
            yield
        except torch.OutOfMemoryError:
            self._recover_from_oom()
            advice = (
                oom_advice(settings)
                if settings is not None
                else (
                    f"The GPU ran out of memory {doing}. Remove a LoRA, or choose a memory mode with offloading; "
                    "the model is still loaded."
                )
            )
            raise OutOfMemory(advice) from None

    def _delete(self, keys) -> None:
        by_component: dict[str, list[str]] = {}
        for component, adapter in keys:
            by_component.setdefault(component, []).append(adapter)
            self._loras.pop((component, adapter), None)
        for component, adapters in by_component.items():
            model = getattr(self.pipe, component)
            if not self._compile.delete(model, adapters):  # compiled: rows zeroed, the graph stays
                # Leaves no tensor behind; layers left without adapters run at full speed again.
                lora_ops.delete_adapters(model, adapters)

    def _load(self, plan: AdapterPlan) -> None:
        """Read each new file once, check it fits the model, load it into its expert(s)."""
        expert_of = {c: e for e, c in self.components().items()}
        for identity, targets in plan.to_load.items():
            lora_file = read_lora(identity.path, cache_dir=self.settings.cache_dir)
            self.lora_file_reads += 1
            for component, adapter in targets:  # a two-expert file gives each expert its own half
                prepared = lora_file.prepare(getattr(self.pipe, component), expert_of[component])
                self.reports[identity.path] = prepared.report
                try:
                    self._fault("lora_load")
                    self._load_adapter(component, adapter, prepared)
                    keep_lora_in_compute_dtype(getattr(self.pipe, component), adapter)
                except lora_slots.NotHotswappable as exc:
                    self._discard_partial(component, adapter)
                    raise NotCompilable(identity, str(exc)) from None
                except BaseException as exc:
                    self._discard_partial(component, adapter)
                    if isinstance(exc, StudioError) or not isinstance(exc, Exception) or is_oom(exc):
                        raise
                    raise lora_load_error(identity.path, exc) from None
                self._loras[(component, adapter)] = LoadedLora(
                    adapter, component, identity, prepared.info.sha256
                )
            del lora_file

    def _load_adapter(self, component: str, adapter: str, prepared) -> None:
        """The fast path (the file's tensors become the adapter); diffusers' loader for what it can't do."""
        model = getattr(self.pipe, component)
        if self._compile.load(model, prepared.state_dict, adapter):  # compiled: into the LoRA room
            return
        try:
            if self.memory.mode == "sequential":  # accelerate hooks on every leaf: diffusers lifts them
                raise lora_ops.UnsupportedLora("sequential offload")
            lora_ops.load_adapter(model, prepared.state_dict, adapter)
        except lora_ops.UnsupportedLora:
            with warnings.catch_warnings():
                # peft warns on each extra adapter in a model; several adapters is the point here.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                self.pipe.load_lora_weights(
                    prepared.state_dict,
                    adapter_name=adapter,
                    load_into_transformer_2=component == "transformer_2",
                    **prepared.load_kwargs,
                )
            lora_ops.enable_fast_forward(model)
        keep_lora_in_compute_dtype(model, adapter)

    def _discard_partial(self, component: str, adapter: str) -> None:
        """Remove what a failed load left of ``adapter`` in ``component`` (so a retry can load it)."""
        model = getattr(self.pipe, component)
        if self._compile.delete(model, [adapter]):
            return
        if adapter in (getattr(model, "peft_config", None) or {}) or adapter in lora_ops.adapter_names(model):
            lora_ops.delete_adapters(model, [adapter])

    def _set_weights(self, weights: dict[str, dict[str, float]]) -> None:
        for component in self.components().values():
            model = getattr(self.pipe, component)
            wanted = weights.get(component, {})
            if not (getattr(model, "peft_config", None) or lora_slots.bank_of(model)):  # no adapter, no room
                continue
            lora_ops.set_adapter_weights(model, wanted)  # sets scales directly; {} turns LoRA off
        self._weights = {c: dict(w) for c, w in weights.items() if w}
        self._held = None

    def _fuse(self, targets: dict[str, dict[str, float]] | None = None) -> None:
        """Fuse ``targets`` (component → adapters at their current weights); None: the whole active stack."""
        targets = {c: dict(w) for c, w in (targets or self._weights).items() if w}
        for component, weights in targets.items():  # one matmul per module for the adapters fused together
            lora_ops.fuse(getattr(self.pipe, component), adapter_names=list(weights))
        self._fused = targets

    def _unfuse(self) -> None:
        for component in self._fused:
            lora_ops.unfuse(getattr(self.pipe, component))
        self._fused = {}

    def fuse_pays_off(self, settings: RenderSettings, targets=None, split: Split | None = None) -> bool:
        """Whether fusing ``targets`` (component → weights; default: the active stack) beats running it unfused
        for this render (:func:`studio.engine.step_weights.fuse_pays_off`)."""
        targets = self._weights if targets is None else targets
        if not any(targets.values()) or self._compile.active:
            return False
        return fuse_pays_off(self.pipe, self.components(), settings, targets, split or self.split(settings))

    def lora_records(self, scheduled: dict[str, set[str]] | None = None) -> list[dict[str, Any]]:
        """What the active adapters are, for sidecars: file, sha256, expert, weight (at the expert's first step)."""
        return lora_records(self.components(), self._weights, self._loras, self._fused, scheduled or {})

    @contextlib.contextmanager
    def holding(self, stack: Stack):
        """The pipeline under the render lock with ``stack`` applied unfused (the doctor's Measure)."""
        with self._lock:
            self.apply_stack(stack)
            yield self.pipe

    # ---------------------------------------------------------------- render
    def render(
        self,
        request: RenderRequest,
        *,
        progress: ProgressFn | None = None,
        cancel: CancelToken | None = None,
    ) -> RenderResult:
        """Render ``request``; raises RenderCancelled, OutOfMemory or another StudioError.

        An out-of-memory error anywhere in the render (loading LoRAs, a denoising step,
        the VAE decode) is caught here: memory is freed, the model stays loaded and usable,
        and the error says which setting to lower.
        """
        import torch

        cancel = cancel or CancelToken()
        with self._lock.priority():
            self._compile.notices = []
            try:
                try:
                    return self._render(request, progress, cancel)
                except Exception as exc:
                    if not self._compile.failed(exc):  # compiling failed: compiled mode off, render again
                        raise
                    return self._render(request, progress, cancel)
            except (torch.OutOfMemoryError, OutOfMemory):
                self._recover_from_oom()
                raise OutOfMemory(oom_advice(request.settings)) from None
            finally:
                if self.pipe is not None:
                    self.pipe._interrupt = False

    def _fault(self, point: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(point)

    def _render(
        self, request: RenderRequest, progress: ProgressFn | None, cancel: CancelToken
    ) -> RenderResult:
        import torch

        from studio.media.images import fit_image

        self._require_model()
        spec = self.spec
        settings = request.settings.with_seed()
        self._check_settings(settings)
        if cancel.cancelled:
            raise RenderCancelled()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self._set_shift(settings.shift)
        split = self.split(settings)
        context = StepContext(split.experts)
        auto = not request.fuse and fuse_refusal(self.memory) is None
        reads_before = self.lora_file_reads
        plan = self.apply_stack(request.stack, fuse=request.fuse, keep_fused=auto, context=context)
        if auto and not self._fused and not self._compile.active:
            constant = self._fusable(plan, context)
            if constant and self.fuse_pays_off(settings, constant, split):
                with self._oom_guard("fusing the LoRAs"):
                    self._fuse(constant)
        steps_plan = StepWeights(split.experts, self.components(), plan.step_weights)
        records = self.lora_records(steps_plan.scheduled())
        fused = {e: sorted(self._fused[c]) for e, c in self.components().items() if self._fused.get(c)}
        timings["apply_stack_s"] = time.perf_counter() - t0
        self._compile.start_render(request.fuse)
        if cancel.cancelled:
            raise RenderCancelled()
        image = fit_image(request.image, settings.width, settings.height)
        experts: list[str] = []
        boundary = (split.boundary_ratio or 0.0) * self.pipe.scheduler.config.num_train_timesteps
        two_experts = split.boundary_ratio is not None
        applier = StepApplier(self.pipe, steps_plan, self._weights)
        applier.before_step(0)  # step 1's weights are the plan's: this only records them

        def on_step(pipe, i, t, kwargs):
            expert = "high" if (not two_experts or float(t) >= boundary) else "low"
            experts.append(expert)
            self._fault("step")
            if progress is not None:
                latents = (
                    kwargs["latents"].detach().float().cpu().clone() if request.capture_step_latents else None
                )
                progress(StepEvent(i + 1, settings.steps, float(t), expert, latents))
            if cancel.cancelled:
                pipe._interrupt = True
            elif i + 1 < settings.steps:
                applier.before_step(i + 1)  # the next step's weights, on the expert that runs it
            return {}

        generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        t1 = time.perf_counter()
        with pipeline_boundary(self.pipe, split.boundary_ratio):  # a set number of high-noise steps
            out = self.pipe(
                image=image,
                prompt=settings.prompt,
                negative_prompt=settings.negative_prompt or None,
                height=settings.height,
                width=settings.width,
                num_frames=settings.frames,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                guidance_scale_2=settings.effective_guidance_low if two_experts else None,
                generator=generator,
                output_type="latent",
                callback_on_step_end=on_step,
                return_dict=True,
            )
        timings["denoise_s"] = time.perf_counter() - t1
        self._compile.end_denoise()
        if cancel.cancelled:
            raise RenderCancelled(steps_done=len(experts), total=settings.steps)
        latents = out.frames
        frames = None
        if request.decode:
            t2 = time.perf_counter()
            frames = self.decode(latents)
            timings["decode_s"] = time.perf_counter() - t2
        timings["total_s"] = time.perf_counter() - t0
        return RenderResult(
            settings=settings,
            latents=latents.detach().float().cpu(),
            frames=frames,
            experts_per_step=experts,
            loras=records,
            timings=timings,
            model=model_record(spec, self.load_dtype(spec), compiled=self._compile.active),
            notices=list(self._compile.notices),
            lora_weights_per_step=applier.record(
                {c: e for e, c in self.components().items()},
                {key: str(lora.identity.path) for key, lora in self._loras.items()},
            ),
            fused=fused,
            file_reads=self.lora_file_reads - reads_before,
        )

    def decode(self, latents) -> np.ndarray:
        """Latents → uint8 frames [F, H, W, 3], exactly as the pipeline would decode them."""
        self._fault("decode")
        return decode_latents(self.pipe, latents)

    def _set_shift(self, shift: float) -> None:
        if self._shift == shift:
            return
        self.pipe.scheduler = make_scheduler(self.pipe.scheduler.config, shift)
        self._shift = shift

    def _check_settings(self, settings: RenderSettings) -> None:
        multiple = self.spec.size_multiple
        if settings.width % multiple or settings.height % multiple:
            raise ValidationError(
                f"{self.spec.label} needs width and height in multiples of {multiple}; "
                f"{settings.width}×{settings.height} is not. Try "
                f"{settings.width // multiple * multiple or multiple}×{settings.height // multiple * multiple or multiple}."
            )

    def _recover_from_oom(self) -> None:
        if self.pipe is not None:
            self.pipe._interrupt = False
            if self._fused:  # weights may hold a half-applied fuse: put the model back
                self._unfuse()
            self.pipe.maybe_free_model_hooks()
        lora_ops.release_memory()  # gc, the CUDA cache and glibc's free pages
