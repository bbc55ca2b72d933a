"""Other formats that become presets: the guide's list of LoRA dicts and a render record (sidecar); and a
preset written back in the guide's list form.

A guide path that is not a file on this machine and looks like a Hub repo (``owner/name``, or
``owner/name/file.safetensors``) is resolved with :mod:`studio.hub.resolve`: the file that fits the entry's
``applies_to`` (and its ``name``) is picked and pinned to the commit and the file's sha256, without downloading
it (the preset then offers to download exactly the missing files). Offline, with the repo not in the cache,
the path is kept as written (a note says so) and resolved when the preset is rendered.

A Wan2GP ``.lset`` / settings file becomes a preset with the same weight per step (:mod:`studio.workflows.presets.lset`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, field_validator

from studio.errors import LoraFileError, ValidationError
from studio.hub.common import HubError
from studio.hub.resolve import HubContext, HubUnavailable, choose, local_file, parse_repo_path
from studio.loras.sources import inside_roots
from studio.stack import schedule as S
from studio.stack.schedule import Schedule
from studio.stack.schema import (
    RenderSettings,
    Stack,
    StrictModel,
    check_weight,
    parse_model,
)
from studio.workflows.presets.lset import RunSteps, is_lset, lset_entries
from studio.workflows.presets.paths import _relative_to_roots, relative_source
from studio.workflows.presets.schema import (
    GUIDE_EXPERTS,
    RENDER_RECORD_KIND,
    Preset,
    PresetSettings,
    jsonable,
    parse_preset,
)

# ----------------------------------------------------------------------------- imports


class GuideLora(StrictModel):
    """One item of the guide's list form: ``{"path", "name", "weight", "applies_to"}`` and an optional
    ``schedule`` (e.g. ``"1>0"``, see :mod:`studio.stack.schedule`) for the experts it applies to."""

    path: str = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, max_length=200)
    weight: float = 1.0
    applies_to: Literal["high_noise", "low_noise", "both", "high", "low"] = "both"
    schedule: Schedule | None = None

    @field_validator("weight")
    @classmethod
    def _sane_weight(cls, value: float) -> float:
        return check_weight(value)


@dataclass(frozen=True)
class ImportResult:
    preset: Preset
    format: Literal["preset", "guide-list", "render-record", "wan2gp"]
    notes: list[str] = field(default_factory=list)


def _guide_path(text: str, roots: Sequence[Path], loc: str, notes: list[str]) -> str:
    """A guide path → a path relative to a LoRA folder (see :func:`preset_from_data`)."""
    text = text.strip()
    if "\x00" in text:
        raise ValidationError(f"Invalid LoRA list: {loc}: the path contains a NUL character.")
    given = Path(text).expanduser()
    if given.is_absolute():
        if roots and inside_roots(given, roots):
            relative = _relative_to_roots(given, roots)
            if relative is not None:
                return relative
        notes.append(
            f"{text} is outside the LoRA folders; the preset looks for {given.name} in the LoRA folders instead."
        )
        return given.name
    if ".." in PurePosixPath(text.replace("\\", "/")).parts:
        raise ValidationError(
            f"Invalid LoRA list: {loc}: {text!r} goes up with '..'; a preset's paths must stay inside the LoRA folders."
        )
    text = text.replace("\\", "/")
    if roots and not any((Path(r) / text).exists() for r in roots):
        name = PurePosixPath(text).name
        if name != text and any((Path(r) / name).exists() for r in roots):
            notes.append(
                f"{text} was not found in the LoRA folders, but {name} was; the preset uses that file."
            )
            return name
    return text


def _hub_entry(lora: GuideLora, hub: HubContext | None, loc: str, notes: list[str]) -> dict[str, Any] | None:
    """The entry's sources for a guide path that is a Hub repo (``None``: not one)."""
    try:
        repo_path = parse_repo_path(lora.path)
    except LoraFileError as exc:
        raise ValidationError(f"Invalid LoRA list: {loc}: {exc}") from None
    if repo_path is None:
        return None
    experts = GUIDE_EXPERTS[lora.applies_to]
    hub = hub or HubContext()
    try:
        choice = choose(hub.client(), repo_path, experts, name=lora.name, fit=hub.fit, token=hub.token)
    except HubUnavailable as exc:
        notes.append(f"{exc} The preset keeps {lora.path} as written; it is resolved when you render it.")
        return {e: {"path": lora.path} for e in experts}
    except (LoraFileError, HubError) as exc:
        raise ValidationError(f"Invalid LoRA list: {loc}: {exc}") from None
    notes.extend(choice.notes)
    return {e: choice.source(e).model_dump(exclude_none=True) for e in experts}


def _from_guide_list(
    items: list[Any], *, roots: Sequence[Path], name: str, hub: HubContext | None = None
) -> ImportResult:
    notes: list[str] = []
    entries = []
    if not items:
        raise ValidationError("The LoRA list is empty; there is nothing to import.")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(
                f"Invalid LoRA list: [{i}]: each item must be an object with path, name, weight and applies_to."
            )
        lora = parse_model(GuideLora, item, f"LoRA list item [{i}]")
        experts = GUIDE_EXPERTS[lora.applies_to]
        sources = (
            None if local_file(lora.path.strip(), roots) else _hub_entry(lora, hub, f"[{i}].path", notes)
        )
        if sources is None:
            path = _guide_path(lora.path, roots, f"[{i}].path", notes)
            sources = {expert: {"path": path} for expert in experts}
            default_name = PurePosixPath(path).stem
        else:
            default_name = PurePosixPath(next(iter(sources.values())).get("file") or lora.path).stem
        entry: dict[str, Any] = {
            "id": f"lora{i + 1}",
            "name": lora.name or default_name,
            "weight_high": lora.weight if "high" in experts else 0.0,
            "weight_low": lora.weight if "low" in experts else 0.0,
            **sources,
        }
        if lora.schedule is not None:
            entry.update({f"schedule_{expert}": item["schedule"] for expert in experts})
        entries.append(entry)
    data = {"name": name, "description": "Imported from a LoRA list.", "entries": entries}
    return ImportResult(parse_preset(data, roots=roots, what="imported LoRA list"), "guide-list", notes)


def _guide_path_of(source) -> str:
    """A source as the guide writes a path: a local path, or ``owner/name/file.safetensors`` on the Hub."""
    return f"{source.repo}/{source.file}" if source.repo else str(source.path)


def to_guide_list(preset: Preset) -> tuple[list[dict[str, Any]], list[str]]:
    """The preset in the guide's list form (``path``, ``name``, ``weight``, ``applies_to``, ``schedule``) and notes.

    One file on both experts at one weight is one item (``both``); a pair, or one file at two weights, is
    an item per expert (``high_noise``, ``low_noise``). Slots, entries switched off and weights of 0 have
    no place in the list (a note names them); Hub files are written ``owner/name/file.safetensors``, which
    imports back to the same file (at the repo's current commit).
    """
    items: list[dict[str, Any]] = []
    notes: list[str] = []
    for entry in preset.entries:
        if entry.is_slot or not entry.enabled:
            why = "an open slot" if entry.is_slot else "switched off"
            notes.append(f"{entry.name} is {why}, so the list leaves it out.")
            continue
        parts = [
            (expert, source, weight, schedule)
            for expert, source, weight, schedule in (
                ("high_noise", entry.high, entry.weight_high, entry.schedule_high),
                ("low_noise", entry.low, entry.weight_low, entry.schedule_low),
            )
            if source is not None and (weight != 0 if schedule is None else S.can_apply(schedule))
        ]
        if len(parts) == 2 and parts[0][1:] == parts[1][1:]:
            parts = [("both", *parts[0][1:])]
        for applies_to, source, weight, schedule in parts:
            item = {
                "path": _guide_path_of(source),
                "name": entry.name,
                "weight": weight,
                "applies_to": applies_to,
            }
            if schedule is not None:
                item["schedule"] = S.text(schedule)
            items.append(item)
    if any(s is not None and s.revision for e in preset.entries for s in (e.high, e.low)):
        notes.append(
            "The list form has no place for a commit: its Hub files import at the repo's current commit."
        )
    return items, notes


def _from_record(record: dict[str, Any], *, roots: Sequence[Path], name: str) -> ImportResult:
    """A render's sidecar → a preset with its stack and its recipe settings."""
    notes: list[str] = []
    stack = parse_model(Stack, record.get("stack") or {}, "render's stack")
    settings = parse_model(RenderSettings, record.get("settings") or {}, "render's settings")
    entries = []
    for i, entry in enumerate(stack.entries):
        data = entry.model_dump(mode="json")
        for expert in ("high", "low"):
            source = getattr(entry, expert)
            if source is None or source.is_hub:
                continue
            try:
                data[expert] = relative_source(source, roots, f"entries.{i}.{expert}.path").model_dump()
            except ValidationError:
                given = Path(str(source.path))
                notes.append(
                    f"{given} is outside the LoRA folders; the preset looks for {given.name} there instead."
                )
                data[expert] = {**source.model_dump(), "path": given.name}
        entries.append(data)
    model = (record.get("model") or {}).get("name") if isinstance(record.get("model"), dict) else None
    data = {
        "name": name,
        "description": f"From the render of {record.get('created', 'an earlier date')}.",
        "model": model,
        "entries": entries,
        "settings": PresetSettings.from_render_settings(
            settings,
            ("width", "height", "frames", "steps", "guidance", "guidance_low", "shift", "fps", "high_steps"),
        ).values_set(),
    }
    return ImportResult(
        parse_preset(jsonable(data), roots=roots, what="render's preset"), "render-record", notes
    )


def _from_lset(
    data: dict[str, Any], *, roots: Sequence[Path], name: str, run: RunSteps | None
) -> ImportResult:
    """A Wan2GP ``.lset`` (or settings file) → a preset with the same weight at every step."""
    found = lset_entries(data, run=run)
    notes = list(found.notes)
    for i, entry in enumerate(found.entries):
        for expert in ("high", "low"):
            source = entry.get(expert)
            if source is not None and "repo" not in source:
                entry[expert] = {"path": _guide_path(source["file"], roots, f"loras[{i}]", notes)}
    description = "Imported from Wan2GP." + (f" Its prompt: {found.prompt}" if found.prompt else "")
    data = {
        "name": name,
        "description": description[:5000],
        "entries": found.entries,
        "settings": found.settings,
    }
    return ImportResult(
        parse_preset(jsonable(data), roots=roots, what="imported Wan2GP file"), "wan2gp", notes
    )


def preset_from_data(
    data: Any,
    *,
    roots: Sequence[Path] = (),
    default_name: str = "Imported preset",
    name: str | None = None,
    hub: HubContext | None = None,
    run: RunSteps | None = None,
) -> ImportResult:
    """Anything the studio imports as a preset, validated fully.

    - our schema (an object with ``name`` and ``entries``; version 1 files are converted);
    - the guide's list form, a JSON list of ``{"path", "name", "weight", "applies_to"}``
      (``applies_to`` ``"high_noise"``, ``"low_noise"`` or ``"both"``), also wrapped as
      ``{"loras": [...]}``. An absolute path inside a LoRA folder is made relative; one
      outside them is replaced by its file name (looked up in the LoRA folders; a note says so);
    - a render's sidecar (``kind: wan-lora-studio/render``): its stack and settings;
    - a Wan2GP ``.lset`` or settings file (``loras`` + ``loras_mult``/``loras_multipliers``):
      the same weight per step and expert; ``run`` lays out lists that change within the run.

    ``name`` overrides the preset's name (for a list, the default is ``default_name``). ``hub`` resolves
    the list's Hub repo paths (default: a client on the default cache, fitting an I2V model).
    """
    if isinstance(data, list):
        return _from_guide_list(data, roots=roots, name=name or default_name, hub=hub)
    if isinstance(data, dict):
        if data.get("kind") == RENDER_RECORD_KIND:
            return _from_record(data, roots=roots, name=name or default_name)
        if is_lset(data):
            return _from_lset(data, roots=roots, name=name or default_name, run=run)
        if "loras" in data and "entries" not in data and "stack" not in data:
            if not isinstance(data["loras"], list):
                raise ValidationError("Invalid LoRA list: loras: must be a list of LoRAs.")
            list_name = (
                name or (data.get("name") if isinstance(data.get("name"), str) else None) or default_name
            )
            return _from_guide_list(data["loras"], roots=roots, name=list_name, hub=hub)
        if name is not None:
            data = {**data, "name": name}
        return ImportResult(parse_preset(data, roots=roots), "preset")
    raise ValidationError(
        "The file is neither a preset (a JSON object with name and entries) nor a LoRA list (a JSON list)."
    )
