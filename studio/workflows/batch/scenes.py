"""The scene file: a versioned JSON list of scenes, each with its own start image, prompt and LoRAs.

.. code-block:: json

    {"kind": "wan-lora-studio/scenes", "version": 1,
     "model": "demo",
     "defaults": {"steps": 4, "guidance": 1.0, "frames": 33},
     "scenes": [
       {"name": "intro", "image": "images/street.png", "prompt": "a woman walks",
        "loras": [{"path": "style.safetensors", "weight": 0.8, "applies_to": "both"}],
        "settings": {"frames": 49}, "seed": 42, "repeat": 2},
       {"name": "close-up", "image": "images/face.png", "prompt": "she smiles", "preset": "Fast anime"}]}

- ``loras`` is the guide's list form (``path``, ``name``, ``weight``, ``applies_to``), read by the
  same parser as a preset import (:func:`studio.workflows.presets.preset_from_data`); a ``schedule`` on an
  item is passed on to the stack entry where the stack supports per-step schedules.
  ``preset`` names a preset (or a preset file next to the scene file) instead.
- ``settings`` (and ``defaults``) take the render settings a preset can set (width, height,
  frames, steps, guidance, guidance_low, shift, fps, negative_prompt). A scene's value beats
  its preset's, which beats the file's defaults, which beat the model's defaults.
- ``image`` is relative to the scene file. LoRA paths are relative to a LoRA folder (the scene
  file's folder counts as one).
- ``seed``: without one, a seed is drawn on the first run and kept in the batch state, so a
  re-run renders the same video. ``repeat``: renders the scene N times with seeds seed, seed+1, …

Unknown fields are errors (``extra="forbid"``), and every error names the scene and the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from studio.errors import ValidationError
from studio.media.images import load_start_image
from studio.stack.schema import MAX_SEED, RenderSettings, Stack, StrictModel, check_seed
from studio.workflows.batch.jobs import Batch, Job, file_sha256, fingerprint, job_id
from studio.workflows.presets.formats import GuideLora, preset_from_data
from studio.workflows.presets.paths import relative_source
from studio.workflows.presets.schema import PresetSettings, load_preset
from studio.workflows.presets.store import PresetStore

__all__ = [
    "SCENES_KIND",
    "SCENES_VERSION",
    "Scene",
    "SceneFile",
    "items_from_stack",
    "load_batch",
    "load_scene_file",
    "parse_scene_file",
    "resolve_scenes",
]

SCENES_KIND = "wan-lora-studio/scenes"
SCENES_VERSION = 1
MAX_SCENES = 1000
MAX_REPEAT = 100
MAX_FILE_BYTES = 8 * 1024 * 1024


class Scene(StrictModel):
    name: str = Field(min_length=1, max_length=100)
    image: str = Field(min_length=1, max_length=4096)
    prompt: str = Field(default="", max_length=10_000)
    loras: list[dict[str, Any]] | None = Field(default=None, max_length=64)
    preset: str | None = Field(default=None, min_length=1, max_length=500)
    settings: PresetSettings = Field(default_factory=PresetSettings)
    seed: int | None = None
    repeat: int = Field(default=1, ge=1, le=MAX_REPEAT)

    @field_validator("name")
    @classmethod
    def _clean_name(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the scene name is empty")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        return check_seed(value)

    @model_validator(mode="after")
    def _one_stack(self) -> Scene:
        if self.loras is not None and self.preset is not None:
            raise ValueError("give either 'loras' or 'preset', not both")
        return self


class SceneFile(StrictModel):
    kind: Literal["wan-lora-studio/scenes"] = SCENES_KIND
    version: Literal[1] = SCENES_VERSION
    model: str | None = Field(default=None, max_length=500)
    defaults: PresetSettings = Field(default_factory=PresetSettings)
    scenes: list[Scene] = Field(default_factory=list, max_length=MAX_SCENES)

    @model_validator(mode="after")
    def _unique_names(self) -> SceneFile:
        seen: set[str] = set()
        for scene in self.scenes:
            key = scene.name.casefold()
            if key in seen:
                raise ValueError(f"two scenes are named {scene.name!r}; give each scene its own name")
            seen.add(key)
        return self

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude_none=True)
        for scene in data["scenes"]:
            if not scene.get("settings"):
                scene.pop("settings", None)
            if scene.get("repeat") == 1:
                scene.pop("repeat")
        if not data.get("defaults"):
            data.pop("defaults", None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------- reading


def _scene_label(raw: Any, index: int) -> str:
    name = None
    if isinstance(raw, dict) and isinstance(raw.get("scenes"), list) and index < len(raw["scenes"]):
        item = raw["scenes"][index]
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            name = item["name"]
    return f"scene {index + 1} ({name!r})" if name else f"scene {index + 1}"


def clean_message(item: dict[str, Any]) -> str:
    if item["type"] == "extra_forbidden":
        return "is not a known field (check its spelling)"
    if item["type"] == "missing":
        return "is required"
    message = item["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    return message


def _describe(exc: PydanticValidationError, raw: Any, what: str) -> str:
    problems = []
    for item in exc.errors():
        loc = list(item["loc"])
        if len(loc) >= 2 and loc[0] == "scenes" and isinstance(loc[1], int):
            where = _scene_label(raw, loc[1])
            field_name = ".".join(str(p) for p in loc[2:])
            problems.append(
                f"{where}: {field_name}: {clean_message(item)}"
                if field_name
                else f"{where}: {clean_message(item)}"
            )
        else:
            field_name = ".".join(str(p) for p in loc) or "file"
            problems.append(f"{field_name}: {clean_message(item)}")
    return f"Invalid {what}: " + "; ".join(problems) + "."


def parse_scene_file(data: str | dict[str, Any], *, what: str = "scene file") -> SceneFile:
    """Validate JSON text or a parsed object into a :class:`SceneFile` (our ValidationError on problems)."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"The {what} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
            ) from None
    if not isinstance(data, dict):
        raise ValidationError(f"The {what} must be a JSON object with kind, version and scenes.")
    if data.get("kind") != SCENES_KIND:
        raise ValidationError(
            f"The {what} is not a scene file: its kind must be {SCENES_KIND!r} (got {data.get('kind')!r})."
        )
    if data.get("version", SCENES_VERSION) != SCENES_VERSION:
        raise ValidationError(
            f"The {what} has version {data.get('version')!r}; this studio reads version {SCENES_VERSION}. "
            "Update the studio or write the file in version 1."
        )
    try:
        return SceneFile.model_validate(data)
    except PydanticValidationError as exc:
        raise ValidationError(_describe(exc, data, what)) from None


def load_scene_file(path: str | Path) -> SceneFile:
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValidationError(
                f"The scene file {path.name} is larger than {MAX_FILE_BYTES // 2**20} MB; split it into smaller batches."
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError(f"The scene file {path} was not found; check the path.") from None
    except UnicodeDecodeError:
        raise ValidationError(
            f"The scene file {path.name} is not UTF-8 text; save it as UTF-8 JSON."
        ) from None
    except IsADirectoryError:
        raise ValidationError(f"{path} is a folder; give the scene file (a .json file).") from None
    except OSError as exc:
        raise ValidationError(f"The scene file {path} cannot be read ({exc.strerror or exc}).") from None
    return parse_scene_file(text, what=f"scene file {path.name}")


# ----------------------------------------------------------------------------- resolving


def _stack_from_items(
    items: list[dict[str, Any]], roots: Sequence[Path], where: str
) -> tuple[Stack, list[str]]:
    """The guide-style items as a stack, read by the preset import's parser (schedules included, where it has them)."""
    if not items:
        return Stack(), []
    if "schedule" not in GuideLora.model_fields:  # a studio without per-step schedules
        for k, item in enumerate(items):
            if isinstance(item, dict) and item.get("schedule") is not None:
                raise ValidationError(
                    f"{where}: loras.{k}.schedule: per-step schedules are not supported by this version of the "
                    "studio; remove the field (the LoRA then keeps its weight for every step)."
                )
        items = [{k: v for k, v in i.items() if k != "schedule"} if isinstance(i, dict) else i for i in items]
    try:
        result = preset_from_data(items, roots=roots, name="scene")
        stack = result.preset.to_stack().stack
    except ValidationError as exc:
        raise ValidationError(f"{where}: loras: {exc}") from None
    return stack, [f"{where}: {note}" for note in result.notes]


def _preset_stack(name: str, base_dir: Path, roots: Sequence[Path], presets: PresetStore | None, where: str):
    candidate = (base_dir / name) if not Path(name).is_absolute() else Path(name)
    try:
        if name.lower().endswith(".json") and candidate.is_file():
            preset = load_preset(candidate, roots=roots)
        elif presets is not None:
            preset = presets.load(name)
        else:
            raise ValidationError(f"There is no preset named {name!r}.")
    except ValidationError as exc:
        raise ValidationError(f"{where}: preset: {exc}") from None
    resolved = preset.to_stack()
    if not resolved.complete:
        raise ValidationError(
            f"{where}: preset: {preset.name!r} has open slots ({'; '.join(resolved.messages())}); "
            "fill them and save the preset, or list the LoRAs in 'loras'."
        )
    return resolved.stack, preset.settings.values_set()


def _settings(values: dict[str, Any], where: str) -> RenderSettings:
    try:
        return RenderSettings.model_validate(values)
    except PydanticValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {clean_message(e)}" for e in exc.errors()]
        raise ValidationError(f"{where}: settings: " + "; ".join(problems) + ".") from None


def resolve_scenes(
    scene_file: SceneFile,
    base_dir: Path,
    *,
    model_defaults: dict[str, Any],
    roots: Sequence[Path] = (),
    presets: PresetStore | None = None,
    model: str | None = None,
    source: Path | None = None,
) -> Batch:
    """The scene file's jobs, each with its image checked, its stack and its settings validated."""
    if not scene_file.scenes:
        raise ValidationError("The scene file has no scenes; add at least one to 'scenes'.")
    base_dir = Path(base_dir)
    model = model or scene_file.model
    jobs: list[Job] = []
    notes: list[str] = []
    image_shas: dict[Path, str] = {}
    for i, scene in enumerate(scene_file.scenes):
        where = f"scene {i + 1} ({scene.name!r})"
        image = Path(scene.image).expanduser()
        image = (image if image.is_absolute() else base_dir / image).resolve()
        if image not in image_shas:
            if not image.is_file():
                raise ValidationError(
                    f"{where}: image: {image} was not found (paths are relative to the scene file)."
                )
            try:
                load_start_image(image)
            except ValidationError as exc:
                raise ValidationError(f"{where}: image: {exc}") from None
            image_shas[image] = file_sha256(image)
        values = {**model_defaults, **scene_file.defaults.values_set()}
        if scene.preset is not None:
            stack, preset_values = _preset_stack(scene.preset, base_dir, roots, presets, where)
            values.update(preset_values)
        else:
            stack, scene_notes = _stack_from_items(scene.loras or [], roots, where)
            notes.extend(scene_notes)
        values.update(scene.settings.values_set())
        values.update(prompt=scene.prompt, seed=None)
        base = _settings(values, where)
        for k in range(scene.repeat):
            seed = None if scene.seed is None else (scene.seed + k) % (MAX_SEED + 1)
            settings = base.model_copy(update={"seed": seed})
            jobs.append(
                Job(
                    id=job_id(i, scene.name, k, scene.repeat),
                    scene=scene.name,
                    index=i,
                    repeat=k,
                    image=image,
                    settings=settings,
                    stack=stack,
                    fingerprint=fingerprint(settings, stack, image_shas[image], model, False),
                )
            )
    ids = [job.id for job in jobs]
    if len(set(ids)) != len(ids):  # e.g. "Intro!" and "intro?" give the same file stem
        raise ValidationError(
            "Two scenes give the same file name; rename one of them (letters and digits differ)."
        )
    return Batch(jobs=tuple(jobs), model=model, source=source, notes=tuple(notes))


def load_batch(
    path: str | Path,
    *,
    model_defaults: dict[str, Any],
    roots: Sequence[Path] = (),
    presets: PresetStore | None = None,
    model: str | None = None,
) -> Batch:
    """Read a scene file and resolve it (the file's folder is a LoRA folder too)."""
    path = Path(path).expanduser().resolve()
    scene_file = load_scene_file(path)
    roots = [*roots, path.parent]
    return resolve_scenes(
        scene_file,
        path.parent,
        model_defaults=model_defaults,
        roots=roots,
        presets=presets,
        model=model,
        source=path,
    )


# ----------------------------------------------------------------------------- writing


def items_from_stack(stack: Stack, roots: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """A stack as guide-style items: one per file and weight (a pair, unequal weights or schedules give two).

    Like :func:`studio.workflows.presets.formats.to_guide_list` (Hub files as ``owner/name/file``), plus each
    expert's per-step schedule where the stack has them.
    """
    items: list[dict[str, Any]] = []
    for entry in stack.active():
        experts = entry.applies_to()
        sources = {e: entry.source(e) for e in experts}
        dumped = entry.model_dump(mode="json")
        schedules = {
            e: dumped.get(f"schedule_{e}") for e in experts
        }  # per-step schedules, where the stack has them
        same = (
            len(experts) == 2
            and sources["high"] == sources["low"]
            and entry.weight_high == entry.weight_low
            and schedules["high"] == schedules["low"]
        )
        groups = (
            [("both", "high")]
            if same
            else [("high_noise" if e == "high" else "low_noise", e) for e in experts]
        )
        for applies_to, expert in groups:
            source = sources[expert]
            path = f"{source.repo}/{source.file}" if source.is_hub else relative_source(source, roots).path
            item = {
                "path": path,
                "name": entry.name,
                "weight": entry.weight(expert),
                "applies_to": applies_to,
            }
            if schedules[expert] is not None:
                item["schedule"] = schedules[expert]
            items.append(item)
    return items
