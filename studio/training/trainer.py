"""Training a LoRA pair in-process, on the studio's own loaded pipeline.

:class:`Trainer` takes the model from the :class:`~studio.engine.manager.PipelineManager`
(the one the renders use), adds a training adapter to each trained expert and runs the
Wan flow-matching objective (:mod:`studio.training.objective`) on cached latents
(:mod:`studio.training.encode`). The two experts alternate, one optimizer step each per
round, each on timesteps of its own side of the boundary, with its own AdamW.

Sharing the model with renders: every optimizer step (and every clip encoded) holds the
model through ``manager.exclusive()``, which waits while a render is queued and activates
only the training adapter; renders re-apply their own stack. A render therefore waits at
most one training step, and a long run never blocks the render queue.

Runs are resumable and crash-safe (:mod:`studio.training.state`): ``stop`` (the UI's Stop,
Ctrl-C in the CLI) ends the run at the next step with a checkpoint; resuming one restores
the LoRA, the optimizer moments, the random generator and the loss curves, so the curve
continues exactly as if the run had never stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from studio.errors import OutOfMemory, StudioError, ValidationError
from studio.training import adapter, export, state
from studio.training.dataset import DatasetItem, check_dataset
from studio.training.encode import Encoded, encode_items
from studio.training.evaluate import sample_render, validation_examples, validation_loss
from studio.training.objective import flow_loss, sample_timesteps
from studio.training.options import TrainOptions, resolve
from studio.training.results import TrainEvent, TrainResult

_ETA_WINDOW = 20
# Settings a resumed run may change (the rest would make it another run).
RESUMABLE = frozenset(
    {
        "steps",
        "save_every",
        "sample_every",
        "sample_image",
        "sample_prompt",
        "sample_steps",
        "val_every",
        "overwrite",
    }
)


class StopToken:
    """Set by the UI's Stop or the CLI's Ctrl-C; the run stops at the next step with a checkpoint."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def stop(self) -> None:
        self._event.set()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()


@dataclass
class _Expert:
    name: str  # "high" / "low"
    component: str  # "transformer" / "transformer_2"
    params: list[tuple[str, torch.nn.Parameter]] = field(default_factory=list)
    optimizer: Any = None


class Trainer:
    def __init__(
        self,
        manager,
        options: TrainOptions | None = None,
        *,
        dataset: str | Path | None = None,
        resume: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
        on_event: Callable[[TrainEvent], None] | None = None,
    ) -> None:
        """A new run (``options`` + ``dataset``) or a resumed one (``resume``: its folder or a checkpoint).

        A resumed run keeps its settings; ``overrides`` may change only :data:`RESUMABLE` ones
        (e.g. more ``steps``), and ``dataset`` may point at the same clips in another place.
        """
        if resume is None and (options is None or dataset is None):
            raise ValidationError("Give a dataset folder and the training settings, or a run to resume.")
        self.manager = manager
        self.options = options
        self.overrides = dict(overrides or {})
        self.dataset_dir = Path(dataset).expanduser() if dataset is not None else None
        self.resume_from = Path(resume) if resume is not None else None
        self.on_event = on_event
        self.grad_hook: Callable[[str, dict[str, dict[str, torch.Tensor | None]]], None] | None = None
        self.timesteps: dict[str, list[float]] = {}  # every timestep trained on, per expert
        self.progress = state.Progress()
        self.run_dir: Path | None = None
        self.record: state.RunRecord | None = None
        self._experts: list[_Expert] = []
        self._generator = torch.Generator()
        self._updating = False
        self._step_times: list[float] = []
        self._device = None
        self._mode = "gpu"

    # ------------------------------------------------------------------ events
    def _emit(self, kind: str, message: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event(TrainEvent(kind=kind, message=message, **fields))

    # ------------------------------------------------------------------ setup
    def _lora_dir(self) -> Path:
        roots = self.manager.settings.resolved_lora_dirs()
        if not roots:
            raise ValidationError(
                "No LoRA folder is configured; add one with --lora-dir so the pair has a home."
            )
        return roots[0]

    def _load_model(self):
        from studio.engine.memory import effective_mode

        spec = self.manager.load_model(self.options.model)
        self._mode = effective_mode(self.manager.memory, is_demo=spec.is_demo)
        if self._mode not in ("gpu", "model-offload"):
            raise ValidationError(
                f"Training runs with the gpu or model-offload memory mode, not {self._mode} (backward needs the "
                "weights that this mode moves away); switch the memory mode, then start again."
            )
        if spec.experts != 2 or spec.boundary_ratio is None:
            raise ValidationError(
                f"Training in the studio needs a two-expert Wan2.2 I2V model (A14B or the demo); {spec.label} "
                "has one. Use --export-config musubi or diffusion-pipe to train it with those tools."
            )
        return spec

    def _resume_setup(self) -> tuple[Path, Path | None]:
        run_dir, checkpoint = state.find_run(self.resume_from)
        record = state.load_run(run_dir)
        if checkpoint is None:
            raise ValidationError(
                f"The run in {run_dir} has no checkpoint yet, so there is nothing to resume."
            )
        stored = record.options.model_dump()
        locked = sorted(k for k, v in self.overrides.items() if k not in RESUMABLE and stored.get(k, v) != v)
        if locked:
            raise ValidationError(
                f"The run {record.name} was trained with other settings ({', '.join(locked)}); a resumed run keeps "
                "them. Leave them as they were, or start a new run with another --name."
            )
        free = {k: v for k, v in self.overrides.items() if k in RESUMABLE}
        self.options = TrainOptions.model_validate({**stored, **free})
        self.dataset_dir = self.dataset_dir or Path(record.dataset)
        self.record = record
        return run_dir, checkpoint

    def _datasets(self, spec) -> tuple[list[DatasetItem], list[DatasetItem], str]:
        o = self.options
        kw = dict(
            frames=o.frames,
            width=o.width,
            height=o.height,
            fps=spec.defaults.fps,
            resample_fps=o.resample_fps,
        )
        report = check_dataset(self.dataset_dir, trigger=o.trigger, **kw)
        usable = report.require_usable()
        train, val = usable, []
        if o.holdout:
            if o.holdout >= len(usable):
                raise ValidationError(
                    f"Holding out {o.holdout} of {len(usable)} usable items leaves nothing to train on; "
                    "hold out fewer or add clips."
                )
            train, val = usable[: -o.holdout], usable[-o.holdout :]
        if o.val_dir:
            val = check_dataset(o.val_dir, trigger=o.trigger, **kw).require_usable()
        self._emit("phase", report.text())
        return train, val, report.fingerprint()

    def _new_run_dir(self) -> Path:
        run_dir = state.runs_root(self._lora_dir()) / self.options.name
        if (run_dir / "run.json").exists():
            raise ValidationError(
                f"A training run named {self.options.name} exists already ({run_dir}); resume it with "
                f"--resume {run_dir}, choose another --name, or delete that folder."
            )
        return run_dir

    def _check_export_free(self) -> None:
        if self.options.overwrite:
            return
        folder = self._lora_dir()
        taken = [
            export.file_name(self.options.name, e)
            for e in self.options.trained_experts
            if (folder / export.file_name(self.options.name, e)).exists()
        ]
        if taken:
            raise ValidationError(
                f"{', '.join(taken)} already exist(s) in {folder}; choose another --name or pass --overwrite."
            )

    def _attach(self) -> None:
        o = self.options
        init = torch.Generator().manual_seed(o.seed)
        components = self.manager.components()
        self._experts = []
        with self.manager.exclusive() as pipe:
            self._device = pipe._execution_device  # walks every module: once per run, not per step
            for name in o.trained_experts:
                model = getattr(pipe, components[name])
                adapter.attach(
                    model, rank=o.rank, alpha=o.lora_alpha, target_regex=o.target_regex(), generator=init
                )
                if o.gradient_checkpointing:
                    model.enable_gradient_checkpointing()
                expert = _Expert(name, components[name], adapter.parameters(model))
                expert.optimizer = torch.optim.AdamW(
                    [p for _, p in expert.params], lr=o.lr, weight_decay=o.weight_decay
                )
                self._experts.append(expert)
        self.manager.training = o.name
        self._generator.manual_seed(o.seed + 1)

    def _detach(self) -> None:
        if not self._experts:
            return
        with self.manager.exclusive() as pipe:
            for expert in self._experts:
                adapter.detach(getattr(pipe, expert.component))
        self._experts = []
        self.manager.training = None

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"rng": self._generator.get_state()}
        with self.manager.exclusive() as pipe:
            for e in self._experts:
                for name, value in adapter.tensors(getattr(pipe, e.component)).items():
                    tensors[f"{e.name}/lora/{name}"] = value
                for index, slot in e.optimizer.state_dict()["state"].items():
                    for key, value in slot.items():
                        tensors[f"{e.name}/opt/{index}/{key}"] = torch.as_tensor(value).detach().cpu().clone()
        return tensors

    def _restore(self, checkpoint: Path) -> None:
        tensors, progress, _ = state.read_checkpoint(checkpoint)
        self._generator.set_state(tensors["rng"])
        with self.manager.exclusive() as pipe:
            for e in self._experts:
                lead = f"{e.name}/lora/"
                values = {k[len(lead) :]: v for k, v in tensors.items() if k.startswith(lead)}
                adapter.load_tensors(getattr(pipe, e.component), values)
                sd = e.optimizer.state_dict()
                slots: dict[int, dict[str, torch.Tensor]] = {}
                lead = f"{e.name}/opt/"
                for key, value in tensors.items():
                    if key.startswith(lead):
                        index, name = key[len(lead) :].split("/", 1)
                        slots.setdefault(int(index), {})[name] = value
                sd["state"] = slots
                e.optimizer.load_state_dict(sd)
        self.progress = progress
        self._emit("phase", f"Resumed from {checkpoint.name} at step {progress.step}.", step=progress.step)

    def _lora_files(self, step: int) -> dict[str, bytes]:
        o, spec = self.options, self.manager.spec
        dtype = export.DTYPES.get(o.save_dtype) or self.manager.load_dtype(spec)  # auto: the model's
        files = {}
        with self.manager.exclusive() as pipe:
            for e in self._experts:
                model = getattr(pipe, e.component)
                meta = export.metadata(
                    name=o.name, expert=e.name, base_model=spec.repo_id or spec.name, boundary=o.boundary,
                    rank=o.rank, alpha=o.lora_alpha, steps=step, trigger=o.trigger,
                    dataset_size=len(self.record.train_items), shift=o.shift, lr=o.lr,
                    target_modules=list(o.target_modules),
                )  # fmt: skip
                files[export.file_name(o.name, e.name)] = export.lora_bytes(
                    export.state_dict(model, dtype=dtype), meta
                )
        return files

    def _checkpoint(self, step: int) -> Path:
        files = self._lora_files(step)
        path = state.write_checkpoint(
            self.run_dir, step, loras=files, state=self._state_tensors(), progress=self.progress,
            extra={"options": self.options.model_dump(mode="json")},
        )  # fmt: skip
        if all(c.step != step for c in self.record.checkpoints):
            info = state.CheckpointInfo(step=step, path=str(path), files=[str(path / n) for n in files])
            self.record.checkpoints.append(info)
        self._save_record()
        self._emit("checkpoint", f"Checkpoint at step {step}: {path}", step=step, path=str(path))
        return path

    def _save_record(self, status: str | None = None) -> None:
        if status is not None:
            self.record.status = status
        self.record.progress = self.progress
        state.save_run(self.run_dir, self.record)

    # ------------------------------------------------------------------ steps
    def _draw(self, encoded: Encoded, buckets: dict[str, list[int]]) -> list[int]:
        first = int(torch.randint(len(encoded.examples), (1,), generator=self._generator))
        pool = buckets[encoded.examples[first].bucket]
        rest = torch.randint(len(pool), (self.options.batch - 1,), generator=self._generator).tolist()
        return [first, *(pool[i] for i in rest)]

    def optimizer_step(self, expert: _Expert, encoded: Encoded, buckets: dict[str, list[int]]) -> float:
        """One optimizer step of ``expert`` (``grad_accum`` micro-batches); returns the mean loss."""
        o = self.options
        total = 0.0
        with self.manager.exclusive({expert.component: {adapter.ADAPTER: 1.0}}) as pipe:
            model = getattr(pipe, expert.component)
            device = self._device
            for _ in range(o.grad_accum):
                picks = [encoded.examples[i] for i in self._draw(encoded, buckets)]
                x0 = torch.stack([e.latents for e in picks])
                noise = torch.randn(x0.shape, generator=self._generator)
                t = sample_timesteps(len(picks), expert.name, o.boundary, o.shift, self._generator)
                self.timesteps.setdefault(expert.name, []).extend(t.tolist())
                condition = torch.stack([e.condition for e in picks])
                text = torch.stack([encoded.text[e.caption] for e in picks])
                loss = flow_loss(
                    model,
                    x0.to(device),
                    condition.to(device),
                    text.to(device),
                    noise.to(device),
                    t.to(device),
                )
                (loss / o.grad_accum).backward()
                total += float(loss.detach())
            if self.grad_hook is not None:
                self.grad_hook(expert.name, self._grads(pipe))
            self._updating = True
            params = [p for _, p in expert.params]
            if o.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm)
            expert.optimizer.step()
            expert.optimizer.zero_grad(set_to_none=True)
            self._updating = False
            if self._mode == "model-offload" and len(self._experts) > 1:
                pipe.maybe_free_model_hooks()  # one expert on the GPU at a time (the VRAM estimate counts it so)
        return total / o.grad_accum

    def _grads(self, pipe) -> dict[str, dict[str, torch.Tensor | None]]:
        out = {}
        for name, component in self.manager.components().items():
            model = getattr(pipe, component)
            out[name] = {
                n: (None if p.grad is None else p.grad.detach().clone()) for n, p in adapter.parameters(model)
            }
        return out

    def _validate(self, val: list, text: dict, *, base: bool) -> dict[str, float]:
        o = self.options
        out = {}
        for e in self._experts:
            active = {} if base else {e.component: {adapter.ADAPTER: 1.0}}
            with self.manager.exclusive(active) as pipe:
                out[e.name] = validation_loss(
                    getattr(pipe, e.component), val, text, expert=e.name, boundary=o.boundary, shift=o.shift,
                    timesteps=o.val_timesteps, seed=o.seed, device=self._device,
                )  # fmt: skip
        return out

    def _record_val(self, step: int, values: dict[str, float]) -> None:
        for expert, loss in values.items():
            points = self.progress.val.setdefault(expert, [])
            if not points or points[-1].step != step:
                points.append(state.ValPoint(step=step, loss=loss))
        text = ", ".join(f"{k} {v:.4f}" for k, v in values.items())
        self._emit("val", f"Validation loss at step {step}: {text}", step=step)

    def _sample(self, step: int, checkpoint: Path, first: DatasetItem) -> None:
        from studio.media.images import load_start_image
        from studio.stack.schema import RenderSettings
        from studio.training.frames import Variant, load_frames

        o, spec = self.options, self.manager.spec
        try:
            image = load_start_image(o.sample_image) if o.sample_image else load_frames(first, Variant())[0]
            settings = RenderSettings(
                prompt=o.sample_prompt or first.caption, width=first.cut.width, height=first.cut.height,
                frames=first.cut.frames, steps=o.sample_steps or spec.defaults.steps, guidance=spec.defaults.guidance,
                guidance_low=spec.defaults.guidance_low, shift=o.shift, seed=o.seed, fps=spec.defaults.fps,
                negative_prompt=spec.defaults.negative_prompt,
            )  # fmt: skip
            files = {e.name: str(checkpoint / export.file_name(o.name, e.name)) for e in self._experts}
            saved = sample_render(
                self.manager, image=image, settings=settings, files=files, label=f"{o.name} step {step}",
                outputs_dir=self.manager.settings.outputs_dir,
            )  # fmt: skip
        except StudioError as exc:
            self._emit("sample", f"The sample at step {step} could not be rendered: {exc}", step=step)
            return
        self.progress.samples.append(
            state.SampleRecord(step=step, video=str(saved.video), sidecar=str(saved.sidecar))
        )
        self._save_record()
        self._emit("sample", f"Sample at step {step}: {saved.video}", step=step, path=str(saved.video))

    # ------------------------------------------------------------------ the run
    def run(self, stop: StopToken | None = None) -> TrainResult:
        """Train (or resume) to ``options.steps``; returns what was made. Raises StudioError on bad input."""
        stop = stop or StopToken()
        checkpoint = None
        if self.resume_from is not None:
            self.run_dir, checkpoint = self._resume_setup()
            state.clean_partials(self.run_dir)
        else:
            self.run_dir = self._new_run_dir()
        spec = self._load_model()
        self.options = resolve(self.options, boundary=spec.boundary_ratio, shift=spec.defaults.shift)
        self._check_export_free()
        train_items, val_items, fingerprint = self._datasets(spec)
        if self.record is not None and self.record.dataset_fingerprint != fingerprint:
            raise ValidationError(
                f"The dataset {self.dataset_dir} changed since the run started (files, captions or cuts differ), "
                "so resuming would not continue the same run. Restore it, or start a new run."
            )
        self.record = self.record or state.RunRecord(
            name=self.options.name, options=self.options, dataset=str(self.dataset_dir.resolve()),
            dataset_fingerprint=fingerprint, train_items=[i.name for i in train_items],
            val_items=[i.name for i in val_items],
        )  # fmt: skip
        self.record.options = self.options
        self._save_record("preparing")
        try:
            return self._run(stop, train_items, val_items, checkpoint)
        except torch.OutOfMemoryError:
            self._fail("out of memory")
            o = self.options
            raise OutOfMemory(
                f"The GPU ran out of memory training at {o.width}×{o.height}×{o.frames} with batch {o.batch}. Lower "
                "the frames, size or batch, keep gradient checkpointing on, or pick an offloading memory mode; "
                f"resume from the last checkpoint with --resume {self.run_dir}."
            ) from None
        except KeyboardInterrupt:
            if not self._updating and self._experts:
                self._checkpoint(self.progress.step)
            self._save_record("stopped")
            raise
        except BaseException as exc:
            self._fail(str(exc))
            raise
        finally:
            self._detach()

    def _fail(self, why: str) -> None:
        self.record.error = why
        self._save_record("failed")

    def _encode(self, items, *, augment: bool) -> Encoded:
        o = self.options
        return encode_items(
            self.manager, items, cache_dir=self.manager.settings.cache_dir / "training" / o.model.replace("/", "_"),
            model_name=self.manager.spec.name, hflip=augment and o.hflip, random_crop=augment and o.random_crop,
            crops=o.crops, seed=o.seed, progress=lambda i, n, name: self._emit("phase", f"Encoding {name} ({i}/{n})"),
        )  # fmt: skip

    def prepare_steps(self) -> tuple[Encoded, dict[str, list[int]]]:
        """Load the model, encode the dataset and attach the adapters, without a run folder or loop.

        For benchmarks and tests that drive :meth:`optimizer_step` themselves; call :meth:`close` after.
        """
        spec = self._load_model()
        self.options = resolve(self.options, boundary=spec.boundary_ratio, shift=spec.defaults.shift)
        train_items, _, _ = self._datasets(spec)
        train = self._encode(train_items, augment=True)
        self._attach()
        return train, train.buckets()

    @property
    def experts(self) -> list[_Expert]:
        return list(self._experts)

    def close(self) -> None:
        """Take the training adapters out of the model (a run does this itself when it ends)."""
        self._detach()

    def _run(self, stop, train_items, val_items, checkpoint) -> TrainResult:
        o = self.options
        train, val = self._encode(train_items, augment=True), self._encode(val_items, augment=False)
        buckets = train.buckets()
        val_examples, val_text = validation_examples(val, train)
        self._attach()
        if checkpoint is not None:
            self._restore(checkpoint)
        if not self.progress.val_base:  # a new run: the untrained adapter (B = 0) is the base model
            self.progress.val_base = self._validate(val_examples, val_text, base=True)
            self._record_val(0, self.progress.val_base)
        self._save_record("running")
        total = o.steps
        self._emit(
            "phase", f"Training {', '.join(o.trained_experts)} for {total} steps (boundary {o.boundary:g})."
        )
        while self.progress.step < total:
            if stop.stopped:
                path = self._checkpoint(self.progress.step)
                self._save_record("stopped")
                self._emit("stopped", f"Stopped at step {self.progress.step}; resume with --resume {path}.")
                return self._result(stopped=True)
            step = self.progress.step + 1
            for expert in self._experts:
                started = time.perf_counter()
                loss = self.optimizer_step(expert, train, buckets)
                elapsed = time.perf_counter() - started
                self._step_times = ([*self._step_times, elapsed])[-_ETA_WINDOW * len(self._experts) :]
                self.progress.train_seconds += elapsed
                self.progress.loss.setdefault(expert.name, []).append(loss)
                eta = (total - step) * len(self._experts) * sum(self._step_times) / len(self._step_times)
                self._emit(
                    "step", f"step {step}/{total} {expert.name} loss {loss:.4f}", step=step, total=total,
                    expert=expert.name, loss=loss, eta_s=eta,
                )  # fmt: skip
            self.progress.step = step
            if o.val_every and step % o.val_every == 0 and step < total:
                self._record_val(step, self._validate(val_examples, val_text, base=False))
            sample_now = o.sample_every and step % o.sample_every == 0
            if (o.save_every and step % o.save_every == 0) or sample_now or step == total:
                if step == total:
                    self._record_val(step, self._validate(val_examples, val_text, base=False))
                path = self._checkpoint(step)
                if sample_now:
                    self._sample(step, path, train_items[0])
        files = self._lora_files(self.progress.step)
        written = export.publish(files, self._lora_dir(), overwrite=o.overwrite)
        self.record.exported = [str(p) for p in written]
        self._save_record("finished")
        self._emit("done", "Exported " + ", ".join(p.name for p in written), path=str(written[0]))
        return self._result(stopped=False)

    def _result(self, *, stopped: bool) -> TrainResult:
        return TrainResult.from_run(
            run_dir=self.run_dir, record=self.record, progress=self.progress, stopped=stopped,
            step_times=self._step_times,
        )  # fmt: skip
