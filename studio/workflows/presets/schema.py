"""The preset schema (version 2, documented in ``presets/README.md``): a named LoRA stack with optional
render settings, its migration from version 1, and reading one preset file.

A preset names a model, an ordered list of *entries* and, optionally, the render settings it was made
for. An entry is either a LoRA with a source per expert and a weight per expert (like
:class:`~studio.stack.schema.StackEntry`), or an unfilled *slot*: a place for a LoRA the user chooses
(a style, a character, ...) with suggested weights and a hint. :meth:`Preset.to_stack` turns the
filled entries into a :class:`~studio.stack.schema.Stack` and returns the slots separately, each with
the sentence "choose a LoRA for this slot". Only what a preset sets is applied; everything else keeps
the model's defaults or the user's current values.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from studio.errors import ValidationError
from studio.loras.sources import LORA_SUFFIX
from studio.stack.schedule import Schedule
from studio.stack.schema import (
    ENTRY_ID_PATTERN,
    MODEL_SETTING_FIELDS,
    LoraSource,
    RenderSettings,
    Stack,
    StackEntry,
    StrictModel,
    check_weight,
    json_object,
    new_entry_id,
    parse_model,
    read_schedules,
)
from studio.workflows.presets.errors import PresetNotFound
from studio.workflows.presets.paths import check_links, relative_source, relativize_raw

PRESET_KIND = "wan-lora-studio/preset"
PRESET_SCHEMA_VERSION = 2
SLOT_MESSAGE = "choose a LoRA for this slot"
SHIPPED_DIR = Path(__file__).resolve().parents[3] / "presets"
MAX_PRESET_BYTES = 1024 * 1024
MAX_NAME = 100
STALE_PARTIAL_S = 300  # a temporary file this old in the store folder is a crashed save's leftover

Role = Literal["speed", "style", "character", "quality", "motion", "other"]
RENDER_RECORD_KIND = (
    "wan-lora-studio/render"  # studio.outputs.render_files.RECORD_KIND (not imported: it pulls in the engine)
)
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# the render settings a preset may set
_SETTING_FIELDS = (*MODEL_SETTING_FIELDS, "high_steps")
GUIDE_EXPERTS = {
    "high_noise": ("high",),
    "low_noise": ("low",),
    "both": ("high", "low"),
    "high": ("high",),
    "low": ("low",),
}


# ----------------------------------------------------------------------------- schema


def _check_relative(text: str, what: str) -> str:
    if "\x00" in text:
        raise ValueError(f"the {what} contains a NUL character")
    if "\\" in text:
        raise ValueError(f"use '/' to separate folders in the {what}, not '\\'")
    pure = PurePosixPath(text)
    if pure.is_absolute() or text.startswith("~"):
        raise ValueError(
            f"the {what} {text!r} is absolute; a preset names LoRA files relative to a LoRA folder "
            "(absolute paths are only accepted inside the LoRA folders, where they are made relative)"
        )
    if ".." in pure.parts:
        raise ValueError(
            f"the {what} {text!r} goes up with '..'; a preset's paths must stay inside the LoRA folders"
        )
    if what == "path" and not text.lower().endswith(LORA_SUFFIX) and _REPO_RE.match(text):
        return text  # a Hub repo written as a path: its file is picked when the preset is rendered
    if not text.lower().endswith(LORA_SUFFIX):
        raise ValueError(
            f"the {what} {text!r} is not a .safetensors file; the studio only loads .safetensors LoRAs"
        )
    return text


class PresetSource(LoraSource):
    """A :class:`~studio.stack.schema.LoraSource` as a preset file may hold it (checked more strictly).

    ``path`` is relative to a LoRA folder (no ``..``, not absolute); a Hub source has a
    ``owner/name`` repo, a relative ``file`` and, when known, the file's lowercase hex ``sha256``.
    """

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        return _check_relative(value.strip(), "path")

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str | None) -> str | None:
        if value is not None and (not _REPO_RE.match(value) or ".." in value):
            raise ValueError(f"{value!r} is not a Hub repository id; write it as 'owner/name'")
        return value

    @field_validator("file")
    @classmethod
    def _file(cls, value: str | None) -> str | None:
        return value if value is None else _check_relative(value, "file")

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        if value is not None and (not _REVISION_RE.match(value) or ".." in value):
            raise ValueError(f"{value!r} is not a Hub revision; give a branch, tag or commit hash")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        if value is None:
            return value
        value = value.strip().lower()
        if not _SHA_RE.match(value):
            raise ValueError("must be the file's sha256: 64 hexadecimal digits")
        return value

    def to_source(self) -> LoraSource:
        return LoraSource.model_validate(self.model_dump())

    @classmethod
    def from_source(cls, source: LoraSource) -> PresetSource:
        return cls.model_validate(source.model_dump())


class PresetEntry(StrictModel):
    """One entry of a preset: a LoRA (a source on at least one expert) or an unfilled slot."""

    id: str = Field(default_factory=new_entry_id, pattern=ENTRY_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    role: Role | None = None
    high: PresetSource | None = None
    low: PresetSource | None = None
    weight_high: float = 1.0
    weight_low: float = 1.0
    schedule_high: Schedule | None = (
        None  # weights per step instead of weight_high (see studio.stack.schedule)
    )
    schedule_low: Schedule | None = None
    enabled: bool = True
    hint: str = Field(default="", max_length=1000)
    range_high: tuple[float, float] | None = None
    range_low: tuple[float, float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_schedules(cls, data: Any) -> Any:
        return read_schedules(data)

    @field_validator("weight_high", "weight_low")
    @classmethod
    def _sane_weight(cls, value: float) -> float:
        return check_weight(value)

    @field_validator("range_high", "range_low")
    @classmethod
    def _sane_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is None:
            return value
        low, high = (check_weight(v) for v in value)
        if low > high:
            raise ValueError(f"the suggested range must go from low to high (got {low:g} to {high:g})")
        return (low, high)

    @model_validator(mode="after")
    def _weights_for_a_slot(self) -> PresetEntry:
        if self.is_slot and self.weight_high == 0 and self.weight_low == 0:
            raise ValueError("a slot needs a non-zero weight on at least one expert")
        return self

    @property
    def is_slot(self) -> bool:
        return self.high is None and self.low is None

    def to_stack_entry(self) -> StackEntry:
        if self.is_slot:
            raise ValidationError(f"{self.name}: {SLOT_MESSAGE}.")
        return StackEntry(
            id=self.id,
            name=self.name,
            high=self.high.to_source() if self.high else None,
            low=self.low.to_source() if self.low else None,
            weight_high=self.weight_high,
            weight_low=self.weight_low,
            schedule_high=self.schedule_high,
            schedule_low=self.schedule_low,
            enabled=self.enabled,
        )

    def filled(self, high: LoraSource, low: LoraSource | None = None) -> PresetEntry:
        """This slot with a LoRA chosen: one file on the experts it weights, or a high/low pair."""
        high_source, low_source = _slot_sources(self.weight_high, self.weight_low, high, low)
        data = self.model_dump()
        data["high"] = high_source.model_dump() if high_source else None
        data["low"] = low_source.model_dump() if low_source else None
        return parse_model(PresetEntry, jsonable(data), f"entry {self.name!r}")


def _as_source(value: str | Path | LoraSource) -> LoraSource:
    if isinstance(value, LoraSource):
        return value
    return LoraSource.local(value)


def _slot_sources(
    weight_high: float,
    weight_low: float,
    high: str | Path | LoraSource,
    low: str | Path | LoraSource | None,
) -> tuple[LoraSource | None, LoraSource | None]:
    """(high, low) sources for a slot: a pair as given, or one file on each expert the slot weights."""
    high_source = _as_source(high)
    if low is not None:
        return high_source, _as_source(low)
    both = weight_high == 0 and weight_low == 0
    return (
        high_source if (weight_high != 0 or both) else None,
        high_source if (weight_low != 0 or both) else None,
    )


def jsonable(data: Any) -> Any:
    return json.loads(
        json.dumps(data, default=lambda o: o.model_dump() if hasattr(o, "model_dump") else str(o))
    )


class PresetSettings(StrictModel):
    """The render settings a preset sets; ``None`` (or absent) leaves the user's value.

    It reads like a mapping of the values it sets (``dict.update(preset.settings)`` and
    ``{**preset.settings}`` give only those), so callers can merge it over their defaults.
    """

    width: int | None = None
    height: int | None = None
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    guidance_low: float | None = None
    shift: float | None = None
    fps: int | None = None
    negative_prompt: str | None = None
    high_steps: int | None = (
        None  # the first K steps on the high-noise expert (the preset's steps must allow it)
    )

    @field_validator(*_SETTING_FIELDS)
    @classmethod
    def _valid_as_render_setting(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        try:
            RenderSettings.model_validate({info.field_name: value})
        except PydanticValidationError as exc:
            message = exc.errors()[0]["msg"]
            raise ValueError(message.removeprefix("Value error, ")) from None
        return value

    # --- read-only mapping of the values set
    def keys(self) -> list[str]:
        return [name for name in _SETTING_FIELDS if getattr(self, name) is not None]

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())

    def values_set(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.keys()}

    @classmethod
    def from_render_settings(
        cls, settings: RenderSettings, fields: Sequence[str] = ("steps", "guidance", "guidance_low", "shift")
    ) -> PresetSettings:
        """The given fields of ``settings`` (by default the recipe part: steps, guidance, shift)."""
        unknown = sorted(set(fields) - set(_SETTING_FIELDS))
        if unknown:
            raise ValidationError(f"A preset cannot store the setting(s) {', '.join(unknown)}.")
        values = {name: getattr(settings, name) for name in fields}
        if "guidance_low" in values and values["guidance_low"] is None:
            values["guidance_low"] = settings.effective_guidance_low
        return cls(**values)


@dataclass(frozen=True)
class Slot:
    """An unfilled preset entry, as the editor shows it ("choose a LoRA for this slot")."""

    entry_id: str
    name: str
    role: str | None
    weight_high: float
    weight_low: float
    hint: str
    range_high: tuple[float, float] | None
    range_low: tuple[float, float] | None
    position: int  # index among the preset's entries
    message: str = SLOT_MESSAGE

    def fill(
        self,
        high: str | Path | LoraSource,
        low: str | Path | LoraSource | None = None,
        *,
        name: str | None = None,
    ) -> StackEntry:
        """The stack entry for this slot once the user picked a file (or a high/low pair).

        One file goes on each expert the slot weights (e.g. a quality slot: low only); a
        pair puts ``high`` on the high-noise and ``low`` on the low-noise expert.
        """
        high_source, low_source = _slot_sources(self.weight_high, self.weight_low, high, low)
        chosen = high_source or low_source
        assert chosen is not None
        default_name = PurePosixPath(chosen.file if chosen.is_hub else str(chosen.path)).stem
        return StackEntry(
            id=self.entry_id,
            name=name or default_name or self.name,
            high=high_source,
            low=low_source,
            weight_high=self.weight_high,
            weight_low=self.weight_low,
        )


@dataclass(frozen=True)
class PresetStack:
    """A preset as the editor uses it: the stack of filled entries and the slots still open."""

    stack: Stack
    slots: list[Slot] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.slots

    def messages(self) -> list[str]:
        return [f"{slot.name}: {SLOT_MESSAGE}." for slot in self.slots]


class Preset(StrictModel):
    kind: Literal["wan-lora-studio/preset"] = PRESET_KIND
    version: Literal[2] = PRESET_SCHEMA_VERSION
    name: str = Field(min_length=1, max_length=MAX_NAME)
    description: str = Field(default="", max_length=5000)
    model: str | None = Field(default=None, max_length=500)
    entries: list[PresetEntry] = Field(default_factory=list, max_length=64)
    settings: PresetSettings = Field(default_factory=PresetSettings)

    @field_validator("name")
    @classmethod
    def _clean_name(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value:
            raise ValueError("the preset name is empty")
        if any(unicodedata.category(c).startswith("C") for c in value):
            raise ValueError("the preset name contains control characters")
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> Preset:
        ids = [e.id for e in self.entries]
        if len(ids) != len(set(ids)):
            raise ValueError("two entries share an id; give each entry its own id")
        return self

    # --------------------------------------------------------------- as the editor uses it
    def to_stack(self) -> PresetStack:
        entries, slots = [], []
        for i, entry in enumerate(self.entries):
            if entry.is_slot:
                slots.append(
                    Slot(
                        entry_id=entry.id,
                        name=entry.name,
                        role=entry.role,
                        weight_high=entry.weight_high,
                        weight_low=entry.weight_low,
                        hint=entry.hint,
                        range_high=entry.range_high,
                        range_low=entry.range_low,
                        position=i,
                    )
                )
            else:
                entries.append(entry.to_stack_entry())
        return PresetStack(stack=Stack(entries=entries), slots=slots)

    @property
    def stack(self) -> Stack:
        """The filled entries as a stack (slots left out; see :meth:`to_stack`)."""
        return self.to_stack().stack

    @property
    def slots(self) -> list[Slot]:
        return self.to_stack().slots

    def apply_settings(self, base: RenderSettings) -> RenderSettings:
        """``base`` with the settings this preset sets."""
        return RenderSettings.model_validate({**base.model_dump(), **self.settings.values_set()})

    def fill_slot(
        self,
        entry_id: str,
        high: str | Path | LoraSource,
        low: str | Path | LoraSource | None = None,
        *,
        roots: Sequence[Path] = (),
    ) -> Preset:
        """This preset with slot ``entry_id`` filled (absolute paths made relative to ``roots``)."""
        entries = list(self.entries)
        for i, entry in enumerate(entries):
            if entry.id == entry_id:
                high_source = relative_source(_as_source(high), roots, f"entries.{i}.high.path")
                low_source = relative_source(_as_source(low), roots, f"entries.{i}.low.path") if low else None
                entries[i] = entry.filled(high_source, low_source)
                return parse_preset(
                    {**self.to_dict(), "entries": [e.model_dump(mode="json") for e in entries]}, roots=roots
                )
        raise ValidationError("That slot is no longer in the preset; reload it.")

    def renamed(self, name: str) -> Preset:
        return parse_model(Preset, {**self.to_dict(), "name": name}, "preset")

    # --------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        """The file form: unset (None) values are left out, so a hand edit stays short."""
        data = self.model_dump(mode="json", exclude_none=True)
        for entry in data["entries"]:
            for key, default in (("role", None), ("hint", ""), ("enabled", True)):
                if entry.get(key, default) == default:
                    entry.pop(key, None)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_stack(
        cls,
        name: str,
        stack: Stack,
        *,
        roots: Sequence[Path] = (),
        settings: RenderSettings | PresetSettings | None = None,
        description: str = "",
        model: str | None = None,
        slots: Sequence[Slot] = (),
    ) -> Preset:
        """A preset from the editor's stack: local paths made relative to their LoRA folder.

        Slots still open in the editor are kept as slots at their positions. A
        ``RenderSettings`` contributes its recipe part (steps, guidance, shift).
        """
        entries: list[dict[str, Any]] = []
        for i, entry in enumerate(stack.entries):
            data = entry.model_dump(mode="json")
            for expert in ("high", "low"):
                source = getattr(entry, expert)
                if source is not None:
                    data[expert] = relative_source(source, roots, f"entries.{i}.{expert}.path").model_dump()
            entries.append(data)
        for slot in sorted(slots, key=lambda s: s.position):
            slot_data = {
                "id": slot.entry_id,
                "name": slot.name,
                "role": slot.role,
                "weight_high": slot.weight_high,
                "weight_low": slot.weight_low,
                "hint": slot.hint,
                "range_high": slot.range_high,
                "range_low": slot.range_low,
            }
            entries.insert(min(slot.position, len(entries)), slot_data)
        if isinstance(settings, RenderSettings):
            settings = PresetSettings.from_render_settings(settings)
        data = {
            "name": name,
            "description": description,
            "model": model,
            "entries": entries,
            "settings": settings.values_set() if settings is not None else {},
        }
        return parse_preset(jsonable(data), roots=roots, what="preset")


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (``stack`` + ``settings`` dict) → version 2 (``entries`` + typed ``settings``)."""
    if data.get("version") != 1:
        return data
    data = dict(data)
    stack = data.pop("stack", None) or {}
    if isinstance(stack, dict):
        data["entries"] = stack.get("entries", [])
    else:
        data["entries"] = stack
    data["version"] = PRESET_SCHEMA_VERSION
    return data


def parse_preset(data: str | dict[str, Any], *, roots: Sequence[Path] = (), what: str = "preset") -> Preset:
    """Validate our preset schema (JSON text or dict) fully; nothing is returned half-read.

    With ``roots`` (the LoRA folders) absolute paths inside them are made relative, and
    symbolic links out of them are refused. Errors are ``ValidationError`` sentences that
    name the field, e.g. ``entries.0.weight_high: a LoRA weight must be between -10 and 10``.
    """
    data = json_object(data, what, expected="a JSON object with a name and entries")
    data = _migrate(json.loads(json.dumps(data)))  # a deep copy: the caller's dict is left alone
    roots = [Path(r) for r in roots]
    relativize_raw(data, roots)
    preset = parse_model(Preset, data, what)
    if roots:
        check_links(preset.entries, roots, what)
    return preset


def read_preset_text(path: Path) -> str:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise PresetNotFound(f"The preset file {path} does not exist.") from None
    except OSError as exc:
        raise ValidationError(f"The preset file {path} cannot be read ({exc.strerror or exc}).") from None
    if not path.is_file():
        raise ValidationError(f"{path} is not a file; choose a preset .json file.")
    if size > MAX_PRESET_BYTES:
        raise ValidationError(
            f"The preset file {path.name} is {size / 1e6:.1f} MB; a preset is at most {MAX_PRESET_BYTES // 1024} KiB."
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValidationError(
            f"The preset file {path.name} is not UTF-8 text; save it as UTF-8 JSON."
        ) from None
    except OSError as exc:
        raise ValidationError(f"The preset file {path} cannot be read ({exc.strerror or exc}).") from None


def load_preset(path: str | Path, roots: Sequence[Path] = ()) -> Preset:
    """Read and validate one preset file (our schema; see :func:`preset_from_data` for imports)."""
    path = Path(path).expanduser()
    return parse_preset(read_preset_text(path), roots=roots, what=f"preset {path.name}")
