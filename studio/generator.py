"""The public Python API: the guide's ``generator`` object, on the same engine the UI uses.

::

    from studio import Generator

    generator = Generator(model="demo")  # or "wan2.2-i2v-a14b", or a folder with a diffusers Wan pipeline
    generator.load_specialized_lora("lightx2v/Wan2.2-Distill-Loras", "lightx2v_high", 1.0, applies_to="high_noise")
    generator.load_specialized_lora("lightx2v/Wan2.2-Distill-Loras", "lightx2v_low", 1.0, applies_to="low_noise")
    video = generator.generate_video("start.png", "a cat walks", steps=4, guidance=1.0, shift=5.0)
    video.path, video.record, video.frames  # the MP4, its JSON sidecar as a dict, uint8 [F, H, W, 3]

:class:`Generator` is a thin face over :class:`studio.service.Studio` and its
:class:`~studio.engine.manager.PipelineManager`: it keeps the LoRA stack and hands it to the manager, which
applies only the difference (a new file is read once and loaded only into its expert(s), a weight change
sets scales and reads no file, a removed LoRA is deleted; the model is never reloaded). LoRA paths are
``.safetensors`` files or Hub repos (``owner/name``, ``owner/name/file.safetensors``), picked and pinned by
:mod:`studio.hub.resolve`. Every error is a :class:`studio.errors.StudioError` whose message says what to do.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from studio.engine.manager import PipelineManager
from studio.engine.memory import MODES, MemoryConfig
from studio.errors import StudioError, ValidationError
from studio.hub.pick import experts_for
from studio.hub.resolve import parse_repo_path, resolve_entry
from studio.loras.sources import resolve_source
from studio.media.images import load_start_image
from studio.service import Studio
from studio.settings import Settings, parse_dtype
from studio.stack import schedule as S
from studio.stack.schema import MAX_WEIGHT, MIN_WEIGHT, RenderSettings, Stack, StackEntry, build, parse_model
from studio.workflows.presets.formats import GuideLora, preset_from_data
from studio.workflows.presets.store import PresetStore

SETTINGS = (
    "frames", "steps", "width", "height", "seed", "guidance", "guidance_low", "shift", "fps", "negative_prompt",
    "high_steps",
)  # fmt: skip
EXPERT_WORDS = {"high": "high_noise", "low": "low_noise"}


@dataclass(frozen=True)
class Video:
    """One rendered video: the MP4, its render record (the JSON sidecar's dict) and its frames."""

    path: Path
    record: dict[str, Any]
    frames: np.ndarray  # uint8 [F, H, W, 3]
    sidecar: Path
    start_image: Path


def _memory(memory: MemoryConfig | str | Mapping | None) -> MemoryConfig:
    if memory is None or isinstance(memory, MemoryConfig):
        return memory or MemoryConfig()
    if isinstance(memory, str):
        return MemoryConfig(mode=memory)  # type: ignore[arg-type]
    if isinstance(memory, Mapping):
        unknown = set(memory) - {"mode", "precision", "vae_tiling", "compile", "compile_lora_rank"}
        if unknown:
            raise ValidationError(
                f"memory takes mode, precision, vae_tiling, compile and compile_lora_rank; "
                f"{', '.join(sorted(unknown))} is not one of them."
            )
        return MemoryConfig(**memory)
    raise ValidationError(f"memory must be a mode ({', '.join(MODES)}), a dict or a MemoryConfig.")


def _weight(value: Any, what: str = "lora_weight") -> tuple[float, str | None]:
    """(weight, schedule text or None): a number, or a schedule (``"1>0"``, ``"0.8@0-50%"``, a per-step list)."""
    if isinstance(value, str | list | tuple):
        try:
            schedule = S.parse(value)
        except S.ScheduleError as exc:
            raise ValidationError(f"{what}: {exc}.") from None
        if S.is_constant(schedule):
            return schedule.value, None
        return S.peak(schedule), S.text(schedule)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if not ok or not MIN_WEIGHT <= value <= MAX_WEIGHT:
        raise ValidationError(
            f"{what} must be a number between {MIN_WEIGHT:g} and {MAX_WEIGHT:g} (0 = off); got {value!r}. "
            "A schedule such as '1>0' or '0.8@0-50%' works too."
        )
    return float(value), None


def _scheduled(entry: StackEntry, schedule: str | None, experts) -> StackEntry:
    """``entry`` with ``schedule`` on each of ``experts`` it has a file for (None: plain weights)."""
    data = entry.model_dump()
    for expert in experts:
        if entry.source(expert) is not None:
            data[f"schedule_{expert}"] = schedule
    return parse_model(StackEntry, data, f"LoRA {entry.name!r}")


def _name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200:
        raise ValidationError("adapter_name must be a name of 1 to 200 characters, e.g. 'anime_style'.")
    return name.strip()


class Generator:
    """The guide's ``generator``: LoRAs per expert on a Wan2.2 model, and videos from start images.

    ``model`` is ``"demo"`` (the offline random-weight model), a registry name (``wan2.2-i2v-a14b``,
    ``wan2.2-ti2v-5b``) or a folder holding a diffusers Wan pipeline. ``lora_dirs`` are the LoRA folders
    (a file elsewhere is accepted too: its folder is added), ``outputs_dir`` is where videos go, ``memory`` a
    memory mode (``"auto"``, ``"gpu"``, ``"model-offload"`` …), a dict of mode/precision/vae_tiling or a
    :class:`~studio.engine.memory.MemoryConfig`; ``dtype`` the weights' dtype (default: the model's, float32
    on the CPU); ``device`` ``"cuda"`` or ``"cpu"`` (default: CUDA when present); ``compile=True`` compiled
    mode (:mod:`studio.engine.compile`: the first render compiles the experts' blocks, later LoRA changes,
    weights and schedules never recompile; a new size or frame count recompiles once).
    """

    def __init__(
        self,
        model: str | Path = "demo",
        *,
        lora_dirs: Iterable[str | Path] | None = None,
        outputs_dir: str | Path | None = None,
        memory: MemoryConfig | str | Mapping | None = None,
        dtype: str | None = None,
        device: str | None = None,
        compile: bool = False,
        cache_dir: str | Path | None = None,
        presets_dir: str | Path | None = None,
    ) -> None:
        settings = Settings.from_env(
            model=str(model),
            lora_dirs=[Path(p).expanduser() for p in lora_dirs] if lora_dirs is not None else None,
            outputs_dir=outputs_dir,
            cache_dir=cache_dir,
            presets_dir=presets_dir,
            dtype=parse_dtype(dtype),
        )
        memory_config = _memory(memory)
        if compile:
            memory_config = replace(memory_config, compile=True)
        manager = PipelineManager(settings, device=device, memory=memory_config)
        self._studio = Studio(settings, manager)
        manager.load_model(settings.model)
        self._stack = Stack()
        self.notes: list[str] = []  # what the last load noticed (a Hub file picked by its name, …)

    # ------------------------------------------------------------------------------------------ info
    @property
    def studio(self) -> Studio:
        """The service behind this generator (the same one the UI uses)."""
        return self._studio

    @property
    def manager(self) -> PipelineManager:
        return self._studio.manager

    @property
    def stack(self) -> Stack:
        """The LoRA stack as loaded."""
        return self._stack

    def loras(self) -> dict[str, list[dict[str, Any]]]:
        """What is loaded, per expert: ``{"high_noise": [{name, weight, source, file, sha256}], "low_noise": …}``

        A LoRA at weight 0 is listed with its weight (it stays loaded, so turning it up reads no file).

        ``source`` is the local path or ``owner/name/file@commit``; ``file`` the file on this machine.
        """
        out: dict[str, list[dict[str, Any]]] = {"high_noise": [], "low_noise": []}
        roots = self._studio.settings.resolved_lora_dirs()
        hashes = {r["file"]: r["sha256"] for r in self.manager.lora_records()}
        for entry in self._stack.entries:
            for expert in (e for e in ("high", "low") if entry.source(e) is not None):
                source = entry.source(expert)
                assert source is not None
                label = f"{source.label()}@{source.revision[:7]}" if source.revision else source.label()
                try:
                    file = str(resolve_source(source, roots))
                except StudioError:
                    file = None
                out[EXPERT_WORDS[expert]].append(
                    {
                        "name": entry.name,
                        "weight": entry.weight(expert),
                        "schedule": entry.weight_text(expert) if entry.is_scheduled(expert) else None,
                        "source": label,
                        "file": file,
                        "sha256": source.sha256 or hashes.get(file),
                    }
                )
        return out

    # ------------------------------------------------------------------------------------------ LoRAs
    def load_specialized_lora(
        self,
        lora_path: str | Path,
        adapter_name: str,
        lora_weight: float | str | list[float] = 1.0,
        applies_to: str = "both",
    ) -> None:
        """Load one LoRA onto ``applies_to`` (``"both"``, ``"high_noise"``, ``"low_noise"``; also high/low).

        ``lora_path`` is a ``.safetensors`` file or a Hub repo (the file that fits is picked, pinned and
        downloaded; ``both`` takes a high/low pair onto the two experts). A LoRA already loaded under
        ``adapter_name`` is replaced. Only this LoRA is read; the model is not reloaded. ``lora_weight`` is a
        number or a schedule over the run's steps (``"1>0"``, ``"1>0 cosine"``, ``"0.8@0-50%"``, ``"1@1-2"``,
        ``[1, 1, 0.5, 0]``; see :mod:`studio.stack.schedule`), set between steps on the expert that runs each.
        """
        experts = experts_for(applies_to)
        weight, schedule = _weight(lora_weight)
        entry = _scheduled(self._entry(lora_path, _name(adapter_name), weight, experts), schedule, experts)
        self._apply(self._with([entry]))

    def load_multiple_loras(self, configs: Iterable[Mapping[str, Any]] | str | Path) -> None:
        """Load several LoRAs in one step (read once each, applied as one diff).

        ``configs`` is the guide's list of dicts (``path``; ``name``, ``weight`` = 1.0 and ``applies_to`` =
        ``"both"`` optional), a preset name, or a file: a preset, a guide list or a render's JSON sidecar.
        LoRAs already loaded under the same names are replaced; the others stay.
        """
        if isinstance(configs, str | Path):
            entries = self._preset_entries(configs)
        else:
            entries = []
            for i, item in enumerate(configs):
                if not isinstance(item, Mapping):
                    raise ValidationError(
                        f"LoRA [{i}] must be a dict with path (and name, weight, applies_to); got {item!r}."
                    )
                item = dict(item)
                if isinstance(item.get("path"), Path):
                    item["path"] = str(item["path"])
                lora = parse_model(GuideLora, item, f"LoRA [{i}]")
                name = lora.name or _default_name(lora.path)
                experts = experts_for(lora.applies_to)
                schedule = None if lora.schedule is None else S.text(lora.schedule)
                entries.append(
                    _scheduled(self._entry(lora.path, name, lora.weight, experts), schedule, experts)
                )
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ValidationError(
                f"Two LoRAs share the name {next(n for n in names if names.count(n) > 1)!r}; give each its own name."
            )
        self._apply(self._with(entries))

    def unload_loras(self) -> None:
        """Remove every LoRA: the model is back to its base weights (the next render is the base render)."""
        self._apply(Stack())

    def set_lora_weight(self, name: str, weight: float | str | list[float], applies_to: str = "both") -> None:
        """Change a loaded LoRA's weight or schedule on ``applies_to``; only scales change (no file is read)."""
        experts = experts_for(applies_to)
        weight, schedule = _weight(weight, "weight")
        entries = list(self._stack.entries)
        index = next((i for i, e in enumerate(entries) if e.name == name), None)
        if index is None:
            loaded = ", ".join(repr(e.name) for e in entries) or "none"
            raise ValidationError(f"No LoRA named {name!r} is loaded (loaded: {loaded}); load it first.")
        entry = entries[index]
        targets = [e for e in experts if entry.source(e) is not None]
        if not targets:
            where = EXPERT_WORDS["high" if entry.high is not None else "low"]
            raise ValidationError(
                f"{name} is only on the {where} expert; set its weight with applies_to={where!r}."
            )
        data = entry.model_dump()
        data.update({f"weight_{e}": weight for e in targets})
        data.update({f"schedule_{e}": schedule for e in targets})
        entries[index] = parse_model(StackEntry, data, f"LoRA {name!r}")
        self._apply(Stack(entries=entries))

    # ------------------------------------------------------------------------------------------ videos
    def generate_video(self, image: Any, prompt: str, **settings: Any) -> Video:
        """Render a video from ``image`` (a path, a PIL image or an array) with the loaded LoRAs.

        ``settings`` by name: frames, steps, width, height, seed, guidance, guidance_low, shift, fps,
        negative_prompt, high_steps (the first K steps on the high-noise expert), and ``fuse`` (fold the
        LoRAs into the weights for the render); the others keep the model's defaults. The MP4, its JSON sidecar and the start image go to ``outputs_dir``.
        """
        fuse = bool(settings.pop("fuse", False))
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ValidationError(
                f"generate_video does not know the setting(s) {', '.join(unknown)}; use "
                f"{', '.join(SETTINGS)} or fuse."
            )
        if not isinstance(prompt, str):
            raise ValidationError("prompt must be text, e.g. 'a cat walks through the snow'.")
        values = self._studio.spec.defaults.settings_values()
        values.update(settings)
        values["prompt"] = prompt
        render_settings = build(RenderSettings, "render settings", **values)
        start = load_start_image(str(image) if isinstance(image, Path) else image)
        saved, result = self._studio.render_result(start, render_settings, self._stack, fuse=fuse)
        assert result.frames is not None
        return Video(
            path=saved.video,
            record=saved.record,
            frames=result.frames,
            sidecar=saved.sidecar,
            start_image=saved.start_image,
        )

    # ------------------------------------------------------------------------------------------ internals
    def _entry(self, path: str | Path, name: str, weight: float, experts) -> StackEntry:
        text = str(path).strip() if isinstance(path, str | Path) else ""
        if not text:
            raise ValidationError("lora_path must be a .safetensors file or a Hub repo (owner/name).")
        given = Path(text).expanduser()
        if given.is_file():  # the caller's own file: its folder becomes one of this generator's LoRA folders
            given = given.resolve()
            self._add_root(given.parent)
            text = str(given)
        studio = self._studio
        context = studio.hub_context()
        entry, notes = resolve_entry(
            studio.hub,
            text,
            name=name,
            weight_high=weight,
            weight_low=weight,
            experts=experts,
            roots=studio.settings.resolved_lora_dirs(),
            fit=context.fit,
        )
        self.notes = notes
        return entry

    def _preset_entries(self, preset: str | Path) -> list[StackEntry]:
        studio = self._studio
        roots = studio.settings.resolved_lora_dirs()
        path = Path(preset).expanduser()
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValidationError(
                    f"{path.name} is not a readable JSON preset or LoRA list ({exc})."
                ) from None
            self._add_root(path.resolve().parent)
            roots = studio.settings.resolved_lora_dirs()
            found = preset_from_data(
                data, roots=roots, default_name=path.stem, hub=studio.hub_context()
            ).preset
        else:
            found = PresetStore.for_settings(studio.settings, hub=studio.hub_context()).load(str(preset))
        split = found.to_stack()
        if split.slots:
            self.notes = split.messages()
        stack, notes = studio.resolve_stack(split.stack)
        missing = studio.hub.missing(stack)
        if missing:
            studio.hub.download_sources(missing)
        self.notes = [*self.notes, *notes]
        return list(stack.entries)

    def _add_root(self, folder: Path) -> None:
        settings = self._studio.settings
        if folder in settings.resolved_lora_dirs():
            return
        settings = settings.with_(lora_dirs=[*settings.lora_dirs, folder])
        self._studio.settings = settings
        self._studio.manager.settings = settings

    def _with(self, entries: list[StackEntry]) -> Stack:
        """The stack with ``entries`` replacing those of the same name (in place) or added at the end."""
        by_name = {e.name: e for e in entries}
        kept = [by_name.pop(old.name, old) for old in self._stack.entries]
        return Stack(entries=[*kept, *by_name.values()])

    def _apply(self, stack: Stack) -> None:
        self._studio.manager.apply_stack(stack)
        self._stack = stack

    def __repr__(self) -> str:
        spec = self._studio.manager.spec
        return (
            f"Generator(model={spec.name if spec else None!r}, loras={[e.name for e in self._stack.entries]})"
        )


def _default_name(path: str) -> str:
    try:
        repo = parse_repo_path(path)
    except StudioError:
        repo = None
    if repo is not None and repo.file is None:
        return repo.repo.split("/")[1]
    return PurePosixPath(path.replace("\\", "/")).name.removesuffix(".safetensors") or path
