"""Preset files: a named LoRA stack with optional render settings (versioned JSON).

A preset names a model, an ordered list of *entries* and, optionally, the render
settings it was made for. An entry is either a LoRA with a source per expert and a
weight per expert (like :class:`~studio.stack.StackEntry`), or an unfilled *slot*: a
place for a LoRA the user chooses (a style, a character, ...) with suggested weights
and a hint. :meth:`Preset.to_stack` turns the filled entries into a
:class:`~studio.stack.Stack` and returns the slots separately, each with the sentence
"choose a LoRA for this slot".

Only what a preset sets is applied; everything else keeps the model's defaults or the
user's current values. The schema is documented in ``presets/README.md``.

Paths: a local source is a path *relative to a LoRA folder*. An absolute path inside a
LoRA folder is made relative when a preset is read or saved; ``..``, an absolute path
outside the LoRA folders and a symbolic link that leads out of them are refused with a
sentence naming the field. A file that is simply not there is not an error (a preset
travels between machines): :func:`studio.loras.sources.missing_files` says so at render
time.

:class:`PresetStore` keeps the user's presets in one folder (atomic, never overwriting
without ``overwrite=True``) next to the read-only shipped presets in ``presets/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from studio.errors import OutputError, ValidationError
from studio.loras.sources import LORA_SUFFIX, inside_roots
from studio.media import write_json_atomic
from studio.stack import (
    MAX_WEIGHT,
    MIN_WEIGHT,
    LoraSource,
    RenderSettings,
    Stack,
    StackEntry,
    StrictModel,
    json_object,
    parse_model,
)

__all__ = [
    "PRESET_KIND",
    "PRESET_SCHEMA_VERSION",
    "SHIPPED_DIR",
    "SLOT_MESSAGE",
    "ImportResult",
    "Preset",
    "PresetEntry",
    "PresetExists",
    "PresetInfo",
    "PresetNotFound",
    "PresetReadOnly",
    "PresetSettings",
    "PresetSource",
    "PresetStack",
    "PresetStore",
    "Slot",
    "entry_summary",
    "load_preset",
    "parse_preset",
    "preset_from_data",
    "relative_source",
    "slugify",
]

PRESET_KIND = "wan-lora-studio/preset"
PRESET_SCHEMA_VERSION = 2
SLOT_MESSAGE = "choose a LoRA for this slot"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "presets"
MAX_PRESET_BYTES = 1024 * 1024
MAX_NAME = 100
STALE_PARTIAL_S = 300  # a temporary file this old in the store folder is a crashed save's leftover

Role = Literal["speed", "style", "character", "quality", "motion", "other"]
_RECORD_KIND = "wan-lora-studio/render"  # studio.outputs.RECORD_KIND (not imported: it pulls in the engine)
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SETTING_FIELDS = (
    "width",
    "height",
    "frames",
    "steps",
    "guidance",
    "guidance_low",
    "shift",
    "fps",
    "negative_prompt",
)
GUIDE_EXPERTS = {"high_noise": ("high",), "low_noise": ("low",), "both": ("high", "low")}


class PresetExists(ValidationError):
    """Saving would replace an existing preset: ask the user, then save with ``overwrite=True``."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        super().__init__(
            f"A preset named {name!r} already exists ({path.name}). Confirm to replace it, or choose another name."
        )


class PresetReadOnly(ValidationError):
    """A shipped preset cannot be changed, renamed or deleted (duplicate it instead)."""


class PresetNotFound(ValidationError):
    """No preset of that name (or file)."""


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
    if not text.lower().endswith(LORA_SUFFIX):
        raise ValueError(
            f"the {what} {text!r} is not a .safetensors file; the studio only loads .safetensors LoRAs"
        )
    return text


class PresetSource(LoraSource):
    """A :class:`~studio.stack.LoraSource` as a preset file may hold it (checked more strictly).

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


def _new_entry_id() -> str:
    return secrets.token_hex(4)


def _check_weight(value: float) -> float:
    if value != value or not (MIN_WEIGHT <= value <= MAX_WEIGHT):
        raise ValueError(f"a LoRA weight must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g}")
    return value


class PresetEntry(StrictModel):
    """One entry of a preset: a LoRA (a source on at least one expert) or an unfilled slot."""

    id: str = Field(default_factory=_new_entry_id, pattern=r"^[A-Za-z0-9_-]{1,32}$")
    name: str = Field(min_length=1, max_length=200)
    role: Role | None = None
    high: PresetSource | None = None
    low: PresetSource | None = None
    weight_high: float = 1.0
    weight_low: float = 1.0
    enabled: bool = True
    hint: str = Field(default="", max_length=1000)
    range_high: tuple[float, float] | None = None
    range_low: tuple[float, float] | None = None

    @field_validator("weight_high", "weight_low")
    @classmethod
    def _sane_weight(cls, value: float) -> float:
        return _check_weight(value)

    @field_validator("range_high", "range_low")
    @classmethod
    def _sane_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is None:
            return value
        low, high = (_check_weight(v) for v in value)
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
            enabled=self.enabled,
        )

    def filled(self, high: LoraSource, low: LoraSource | None = None) -> PresetEntry:
        """This slot with a LoRA chosen: one file on the experts it weights, or a high/low pair."""
        high_source, low_source = _slot_sources(self.weight_high, self.weight_low, high, low)
        data = self.model_dump()
        data["high"] = high_source.model_dump() if high_source else None
        data["low"] = low_source.model_dump() if low_source else None
        return parse_model(PresetEntry, _jsonable(data), f"entry {self.name!r}")


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


def _jsonable(data: Any) -> Any:
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
        return parse_preset(_jsonable(data), roots=roots, what="preset")


# ----------------------------------------------------------------------------- paths


def _lexical(path: Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))


def _relative_to_roots(path: Path, roots: Sequence[Path]) -> str | None:
    """``path`` relative to the first LoRA folder that holds it (lexically, then resolved), else None."""
    candidates = [_lexical(path)]
    with contextlib.suppress(OSError, RuntimeError):
        candidates.append(path.expanduser().resolve())
    for candidate in candidates:
        for root in roots:
            for base in (_lexical(Path(root)), Path(root).expanduser().resolve()):
                if candidate.is_relative_to(base) and candidate != base:
                    return candidate.relative_to(base).as_posix()
    return None


def relative_source(source: LoraSource, roots: Sequence[Path], field_name: str = "path") -> LoraSource:
    """``source`` with an absolute local path inside a LoRA folder made relative to it.

    An absolute path outside every LoRA folder raises ``ValidationError`` naming ``field_name``.
    Hub sources and relative paths are returned as they are.
    """
    if source.is_hub or source.path is None:
        return source
    given = Path(source.path).expanduser()
    if not given.is_absolute():
        return source
    relative = _relative_to_roots(given, roots)
    if relative is None or not inside_roots(given, roots):
        folders = ", ".join(str(r) for r in roots) or "(none configured)"
        raise ValidationError(
            f"Invalid preset: {field_name}: {source.path!r} is outside the LoRA folders ({folders}); "
            "put the file in a LoRA folder first."
        )
    return source.model_copy(update={"path": relative})


def _relativize_raw(data: dict[str, Any], roots: Sequence[Path]) -> None:
    """Make absolute paths inside the LoRA folders relative, in the raw dict, before validation."""
    entries = data.get("entries")
    if not roots or not isinstance(entries, list):
        return
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        for expert in ("high", "low"):
            source = entry.get(expert)
            if isinstance(source, dict) and isinstance(source.get("path"), str):
                text = source["path"].strip()
                if "\x00" in text:
                    continue
                given = Path(text).expanduser()
                if given.is_absolute() and inside_roots(given, roots):
                    relative = _relative_to_roots(given, roots)
                    if relative is not None:
                        source["path"] = relative


def _check_links(preset: Preset, roots: Sequence[Path], what: str) -> None:
    """A relative path must not lead out of the LoRA folders through a symbolic link."""
    problems = []
    for i, entry in enumerate(preset.entries):
        for expert in ("high", "low"):
            source = getattr(entry, expert)
            if source is None or source.path is None:
                continue
            for root in roots:
                candidate = Path(root) / source.path
                if (candidate.is_symlink() or candidate.exists()) and not inside_roots(candidate, roots):
                    problems.append(
                        f"entries.{i}.{expert}.path: {source.path!r} leads out of the LoRA folders "
                        "through a symbolic link"
                    )
                    break
    if problems:
        raise ValidationError(f"Invalid {what}: " + "; ".join(problems) + ".")


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
    _relativize_raw(data, roots)
    preset = parse_model(Preset, data, what)
    if roots:
        _check_links(preset, roots, what)
    return preset


def _read_text(path: Path) -> str:
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
    return parse_preset(_read_text(path), roots=roots, what=f"preset {path.name}")


# ----------------------------------------------------------------------------- imports


class GuideLora(StrictModel):
    """One item of the guide's list form: ``{"path", "name", "weight", "applies_to"}``."""

    path: str = Field(min_length=1, max_length=4096)
    name: str | None = Field(default=None, max_length=200)
    weight: float = 1.0
    applies_to: Literal["high_noise", "low_noise", "both"] = "both"

    @field_validator("weight")
    @classmethod
    def _sane_weight(cls, value: float) -> float:
        return _check_weight(value)


@dataclass(frozen=True)
class ImportResult:
    preset: Preset
    format: Literal["preset", "guide-list", "render-record"]
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


def _from_guide_list(items: list[Any], *, roots: Sequence[Path], name: str) -> ImportResult:
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
        path = _guide_path(lora.path, roots, f"[{i}].path", notes)
        experts = GUIDE_EXPERTS[lora.applies_to]
        entry: dict[str, Any] = {
            "id": f"lora{i + 1}",
            "name": lora.name or PurePosixPath(path).stem,
            "weight_high": lora.weight if "high" in experts else 0.0,
            "weight_low": lora.weight if "low" in experts else 0.0,
        }
        for expert in experts:
            entry[expert] = {"path": path}
        entries.append(entry)
    data = {"name": name, "description": "Imported from a LoRA list.", "entries": entries}
    return ImportResult(parse_preset(data, roots=roots, what="imported LoRA list"), "guide-list", notes)


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
            settings, ("width", "height", "frames", "steps", "guidance", "guidance_low", "shift", "fps")
        ).values_set(),
    }
    return ImportResult(
        parse_preset(_jsonable(data), roots=roots, what="render's preset"), "render-record", notes
    )


def preset_from_data(
    data: Any, *, roots: Sequence[Path] = (), default_name: str = "Imported preset", name: str | None = None
) -> ImportResult:
    """Anything the studio imports as a preset, validated fully.

    - our schema (an object with ``name`` and ``entries``; version 1 files are converted);
    - the guide's list form, a JSON list of ``{"path", "name", "weight", "applies_to"}``
      (``applies_to`` ``"high_noise"``, ``"low_noise"`` or ``"both"``), also wrapped as
      ``{"loras": [...]}``. An absolute path inside a LoRA folder is made relative; one
      outside them is replaced by its file name (looked up in the LoRA folders; a note says so);
    - a render's sidecar (``kind: wan-lora-studio/render``): its stack and settings.

    ``name`` overrides the preset's name (for a list, the default is ``default_name``).
    """
    if isinstance(data, list):
        return _from_guide_list(data, roots=roots, name=name or default_name)
    if isinstance(data, dict):
        if data.get("kind") == _RECORD_KIND:
            return _from_record(data, roots=roots, name=name or default_name)
        if "loras" in data and "entries" not in data and "stack" not in data:
            if not isinstance(data["loras"], list):
                raise ValidationError("Invalid LoRA list: loras: must be a list of LoRAs.")
            list_name = (
                name or (data.get("name") if isinstance(data.get("name"), str) else None) or default_name
            )
            return _from_guide_list(data["loras"], roots=roots, name=list_name)
        if name is not None:
            data = {**data, "name": name}
        return ImportResult(parse_preset(data, roots=roots), "preset")
    raise ValidationError(
        "The file is neither a preset (a JSON object with name and entries) nor a LoRA list (a JSON list)."
    )


# ----------------------------------------------------------------------------- store


_SLUG_MAX = 60


def slugify(name: str) -> str:
    """A safe file stem for a preset name: lowercase ASCII letters, digits and dashes."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:_SLUG_MAX].rstrip("-")
    if not text:
        text = "preset-" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]
    return text


@dataclass(frozen=True)
class PresetInfo:
    """One preset as a list shows it; ``error`` is set (and the rest partly empty) for a broken file."""

    name: str
    file: Path
    shipped: bool
    description: str = ""
    model: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    slots: int = 0
    error: str | None = None

    @property
    def label(self) -> str:
        suffix = " (shipped)" if self.shipped else ""
        return f"{self.name}{suffix}" if self.error is None else f"{self.file.name} (broken)"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": str(self.file),
            "shipped": self.shipped,
            "description": self.description,
            "model": self.model,
            "entries": self.entries,
            "slots": self.slots,
            "error": self.error,
        }


def entry_summary(entry: PresetEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "name": entry.name,
        "role": entry.role,
        "slot": entry.is_slot,
        "high": entry.high.label() if entry.high else None,
        "low": entry.low.label() if entry.low else None,
        "weight_high": entry.weight_high,
        "weight_low": entry.weight_low,
        "enabled": entry.enabled,
    }


class PresetStore:
    """The user's presets (one JSON file each in ``user_dir``) and the shipped ones (read-only).

    Every UI action is one call: :meth:`list`, :meth:`load`, :meth:`save` (raises
    :class:`PresetExists` unless ``overwrite=True``), :meth:`rename`, :meth:`duplicate`,
    :meth:`delete`, :meth:`import_file`, :meth:`export`. File names are derived from the
    names (:func:`slugify`) and always lie directly in ``user_dir``. ``roots`` are the LoRA
    folders that local paths are checked against.
    """

    def __init__(
        self,
        user_dir: str | Path,
        shipped_dir: str | Path | None = SHIPPED_DIR,
        *,
        roots: Sequence[Path] = (),
    ) -> None:
        self.user_dir = Path(user_dir).expanduser()
        self.shipped_dir = Path(shipped_dir).expanduser() if shipped_dir is not None else None
        self.roots = [Path(r) for r in roots]
        self.sweep_partials()

    @classmethod
    def for_settings(cls, settings, user_dir: str | Path | None = None) -> PresetStore:
        """The store for a :class:`~studio.settings.Settings` (user presets in ``settings.presets_dir``)."""
        return cls(user_dir or settings.presets_dir, SHIPPED_DIR, roots=settings.resolved_lora_dirs())

    # ------------------------------------------------------------------ housekeeping
    def sweep_partials(self, max_age_s: float = STALE_PARTIAL_S) -> list[Path]:
        """Remove temporary files left in the user folder by a save that crashed (older than ``max_age_s``)."""
        removed = []
        if not self.user_dir.is_dir():
            return removed
        now = time.time()
        for path in self.user_dir.glob(".*.json.partial-*"):
            with contextlib.suppress(OSError):
                if now - path.lstat().st_mtime >= max_age_s:
                    path.unlink()
                    removed.append(path)
        return removed

    def _user_file(self, name: str) -> Path:
        path = self.user_dir / f"{slugify(name)}.json"
        if path.parent != self.user_dir:  # cannot happen with slugify; kept as a guard
            raise ValidationError("That preset name cannot be used as a file name; choose another.")
        return path

    def _files(self) -> Iterator[tuple[Path, bool]]:
        if self.shipped_dir is not None and self.shipped_dir.is_dir():
            for path in sorted(self.shipped_dir.glob("*.json")):
                yield path, True
        if self.user_dir.is_dir():
            for path in sorted(self.user_dir.glob("*.json")):
                if not path.name.startswith("."):
                    yield path, False

    def _read(self, path: Path) -> Preset:
        return load_preset(path, roots=self.roots)

    # ------------------------------------------------------------------ listing
    def list(self) -> list[PresetInfo]:
        """Every preset, shipped first, then the user's (by name). Broken files are listed with their error."""
        shipped, user = [], []
        for path, is_shipped in self._files():
            try:
                preset = self._read(path)
            except ValidationError as exc:
                info = PresetInfo(name=path.stem, file=path, shipped=is_shipped, error=str(exc))
            else:
                info = PresetInfo(
                    name=preset.name,
                    file=path,
                    shipped=is_shipped,
                    description=preset.description,
                    model=preset.model,
                    entries=[entry_summary(e) for e in preset.entries],
                    slots=sum(1 for e in preset.entries if e.is_slot),
                )
            (shipped if is_shipped else user).append(info)
        user.sort(key=lambda i: i.name.casefold())
        return shipped + user

    def names(self) -> list[str]:
        return [info.name for info in self.list() if info.error is None]

    def _find(self, name: str) -> tuple[Path, bool, Preset] | None:
        wanted = " ".join(name.split()).casefold()
        by_slug = None
        for path, is_shipped in self._files():
            try:
                preset = self._read(path)
            except ValidationError:
                continue
            if preset.name.casefold() == wanted:
                return path, is_shipped, preset
            if by_slug is None and path.stem == slugify(name) and not is_shipped:
                by_slug = (path, is_shipped, preset)
        return by_slug

    def is_shipped(self, name: str) -> bool:
        found = self._find(name)
        return found is not None and found[1]

    # ------------------------------------------------------------------ reading
    def load(self, name_or_file: str | Path) -> Preset:
        """A preset by name, or by the path of a ``.json`` file inside the store's folders."""
        text = str(name_or_file)
        if isinstance(name_or_file, Path) or text.lower().endswith(".json"):
            path = Path(name_or_file).expanduser()
            folders = [self.user_dir, *([self.shipped_dir] if self.shipped_dir is not None else [])]
            candidates = [path] if path.is_absolute() else [path, *(folder / path for folder in folders)]
            for candidate in candidates:
                if candidate.is_file() and inside_roots(candidate, folders):
                    return self._read(candidate)
            raise PresetNotFound(
                f"There is no preset file {text} among the presets; import it first (or give its name)."
            )
        found = self._find(text)
        if found is None:
            raise PresetNotFound(f"There is no preset named {text!r}; choose one from the preset list.")
        return found[2]

    def load_file(self, path: str | Path) -> Preset:
        """A preset file from anywhere (the CLI's ``--preset FILE``), without adding it to the store."""
        return self._read(Path(path).expanduser())

    # ------------------------------------------------------------------ writing
    def _check_writable_name(self, name: str) -> None:
        found = self._find(name)
        if found is not None and found[1]:
            raise PresetReadOnly(
                f"{found[2].name!r} is a shipped preset and cannot be replaced; save under another name."
            )

    def save(self, preset: Preset, *, overwrite: bool = False) -> Path:
        """Write ``preset`` to the user folder atomically and return its file.

        Raises :class:`PresetExists` when a preset of that name (or file name) exists and
        ``overwrite`` is False, :class:`PresetReadOnly` for a shipped preset's name. Local
        paths are checked against the LoRA folders first; nothing is written on an error.
        """
        preset = parse_preset(preset.to_dict(), roots=self.roots, what=f"preset {preset.name!r}")
        self._check_writable_name(preset.name)
        path = self._user_file(preset.name)
        found = self._find(preset.name)
        if not overwrite:
            if found is not None:
                raise PresetExists(found[2].name, found[0])
            if path.exists():
                raise PresetExists(self._name_in(path) or preset.name, path)
        self.user_dir.mkdir(parents=True, exist_ok=True)
        try:
            write_json_atomic(path, preset.to_dict(), overwrite=overwrite)
        except OutputError as exc:
            if not overwrite and path.exists():
                raise PresetExists(preset.name, path) from None
            raise ValidationError(f"The preset {preset.name!r} could not be saved: {exc}") from None
        if found is not None and found[0] != path and not found[1]:
            # The replaced preset lived in a differently named file (hand-made): remove it, so
            # one name is one preset.
            with contextlib.suppress(FileNotFoundError):
                found[0].unlink()
        return path

    def _name_in(self, path: Path) -> str | None:
        try:
            return self._read(path).name
        except ValidationError:
            return None

    def save_stack(
        self,
        name: str,
        stack: Stack,
        *,
        settings: RenderSettings | PresetSettings | None = None,
        description: str = "",
        model: str | None = None,
        slots: Sequence[Slot] = (),
        overwrite: bool = False,
    ) -> Path:
        """The editor's "Save preset": one call from the stack (and optional settings) to a file."""
        preset = Preset.from_stack(
            name,
            stack,
            roots=self.roots,
            settings=settings,
            description=description,
            model=model,
            slots=slots,
        )
        return self.save(preset, overwrite=overwrite)

    def _user_preset(self, name: str) -> tuple[Path, Preset]:
        found = self._find(name)
        if found is None:
            raise PresetNotFound(f"There is no preset named {name!r}; choose one from the preset list.")
        path, is_shipped, preset = found
        if is_shipped:
            raise PresetReadOnly(
                f"{preset.name!r} is a shipped preset and cannot be changed; duplicate it to make your own copy."
            )
        return path, preset

    def rename(self, name: str, new_name: str, *, overwrite: bool = False) -> Path:
        """Give a user preset another name (and file). The old file goes only after the new one is written."""
        path, preset = self._user_preset(name)
        renamed = preset.renamed(new_name)
        new_path = self._user_file(renamed.name)
        if new_path == path:  # same file (e.g. only the case changed): replace in place
            self._check_writable_name(renamed.name)
            write_json_atomic(
                path, parse_preset(renamed.to_dict(), roots=self.roots).to_dict(), overwrite=True
            )
            return path
        written = self.save(renamed, overwrite=overwrite)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return written

    def duplicate(self, name: str, new_name: str | None = None) -> Path:
        """A user copy of any preset (shipped ones included), named ``new_name`` or "NAME (copy)"."""
        found = self._find(name)
        if found is None:
            raise PresetNotFound(f"There is no preset named {name!r}; choose one from the preset list.")
        preset = found[2]
        if new_name is None:
            taken = {n.casefold() for n in self.names()}
            base = f"{preset.name} (copy)"
            new_name, n = base, 2
            while new_name.casefold() in taken or self._user_file(new_name).exists():
                new_name, n = f"{preset.name} (copy {n})", n + 1
        return self.save(preset.renamed(new_name))

    def delete(self, name: str) -> Path:
        """Delete a user preset (shipped presets are read-only); returns the removed file."""
        path, _ = self._user_preset(name)
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ValidationError(
                f"The preset file {path.name} could not be deleted ({exc.strerror or exc})."
            ) from None
        return path

    def import_file(
        self, path: str | Path, *, name: str | None = None, overwrite: bool = False
    ) -> ImportResult:
        """Import an uploaded file (our schema, the guide's list, or a render sidecar) into the user folder.

        The file is validated fully before anything is written; an existing preset of the
        same name raises :class:`PresetExists` unless ``overwrite``.
        """
        path = Path(path).expanduser()
        text = _read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"The file {path.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
            ) from None
        default_name = " ".join(re.sub(r"[_-]+", " ", path.stem).split()) or "Imported preset"
        try:
            result = preset_from_data(data, roots=self.roots, default_name=default_name, name=name)
        except ValidationError as exc:
            raise ValidationError(f"{path.name}: {exc}") from None
        self.save(result.preset, overwrite=overwrite)
        return result

    def export(self, name: str, dest: str | Path | None = None, *, overwrite: bool = False) -> Path:
        """The file to download for preset ``name``.

        Without ``dest`` this is the preset's own file (user or shipped). With ``dest`` (a
        folder, or a ``.json`` file name) a normalised copy is written there atomically,
        never over an existing file unless ``overwrite``.
        """
        found = self._find(name)
        if found is None:
            raise PresetNotFound(f"There is no preset named {name!r}; choose one from the preset list.")
        path, _, preset = found
        if dest is None:
            return path
        dest = Path(dest).expanduser()
        target = dest / f"{slugify(preset.name)}.json" if dest.is_dir() else dest
        if target.suffix.lower() != ".json":
            raise ValidationError(f"Export to a .json file; {target.name} is not one.")
        if not target.parent.is_dir():
            raise ValidationError(f"The folder {target.parent} does not exist; create it or choose another.")
        try:
            return write_json_atomic(target, preset.to_dict(), overwrite=overwrite)
        except OutputError as exc:
            raise ValidationError(str(exc)) from None
