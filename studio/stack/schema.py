"""Typed LoRA stack and render settings, with a versioned JSON form.

A *stack* is an ordered list of entries. Each entry names the LoRA file it puts on
each expert of Wan2.2 A14B (``high`` = the high-noise expert ``transformer``,
``low`` = the low-noise expert ``transformer_2``): the same file on both, one file
per expert (a *pair*), or a file on one expert only. Each expert has its own
weight; a weight of 0 means the LoRA is not applied to that expert. An expert may
have a *schedule* instead (``schedule_high`` / ``schedule_low``, e.g. ``"1>0"`` or
``"0.8@0-50%"``, see :mod:`studio.stack.schedule`): then it gives the weight at each
step of the run and the plain weight is only the slider's value.

The order matters to the user (it is how they think about the stack) but not to
the maths: LoRA deltas add up.

Validation here is about the values themselves. Whether the files exist is checked
by :func:`studio.loras.sources.missing_files`, because a stack read from a preset on another machine is
still a valid stack.
"""

from __future__ import annotations

import json
import random
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from studio.errors import ValidationError
from studio.stack import schedule as sched
from studio.stack.schedule import SCHEDULE_TYPES, Schedule, ScheduleError, ScheduleModel

STACK_SCHEMA_VERSION = 1
SETTINGS_SCHEMA_VERSION = 1

MIN_WEIGHT = -10.0
MAX_WEIGHT = 10.0
MAX_FRAMES = 241
MIN_SIZE = 16
MAX_SIZE = 2048
MAX_STEPS = 200
MAX_SEED = 2**32 - 1

Expert = Literal["high", "low"]
EXPERTS: tuple[Expert, Expert] = ("high", "low")
EXPERT_NAMES = {"high": "high-noise", "low": "low-noise"}


class StrictModel(BaseModel):
    """Base for files users may edit by hand: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class LoraSource(StrictModel):
    """Where a LoRA file comes from: a local path, or a file of a Hub repo.

    ``path`` is absolute or relative to one of the LoRA folders. A Hub source names
    ``repo`` + ``file`` (+ ``revision``); it is resolved to the local Hub cache.
    ``sha256`` is recorded when known, so a render can be reproduced exactly.
    """

    path: str | None = None
    repo: str | None = None
    file: str | None = None
    revision: str | None = None
    sha256: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> LoraSource:
        if self.path is not None and (self.repo is not None or self.file is not None):
            raise ValueError("give either a local 'path' or a Hub 'repo' and 'file', not both")
        if self.path is None and (self.repo is None or self.file is None):
            raise ValueError("a LoRA source needs a 'path', or a Hub 'repo' and 'file'")
        if self.path is not None and not self.path.strip():
            raise ValueError("the LoRA path is empty")
        return self

    @property
    def is_hub(self) -> bool:
        return self.repo is not None

    def label(self) -> str:
        if self.is_hub:
            return f"{self.repo}/{self.file}"
        return str(self.path)

    @classmethod
    def local(cls, path: str | Path) -> LoraSource:
        return cls(path=str(path))


def read_schedules(data: Any) -> Any:
    """Parse an entry's ``schedule_high``/``schedule_low`` (a model's before-validator), so an error names the
    entry and the expert: ``the high-noise schedule of LoRA 'style': '1>' is not a ramp ...``."""
    if not isinstance(data, dict):
        return data
    for expert in EXPERTS:
        key = f"schedule_{expert}"
        value = data.get(key)
        if value is None or isinstance(value, SCHEDULE_TYPES):
            continue
        try:
            data = {**data, key: sched.parse(value)}
        except ScheduleError as exc:
            name = data.get("name") or "this LoRA"
            raise ValueError(f"the {EXPERT_NAMES[expert]} schedule of LoRA {name!r}: {exc}") from None
    return data


ENTRY_ID_PATTERN = r"^[A-Za-z0-9_-]{1,32}$"


def new_entry_id() -> str:
    """A fresh id for a stack or preset entry (8 hex digits)."""
    return secrets.token_hex(4)


class StackEntry(StrictModel):
    """One LoRA in the stack, with a source and a weight per expert."""

    id: str = Field(default_factory=new_entry_id, pattern=ENTRY_ID_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    high: LoraSource | None = None
    low: LoraSource | None = None
    weight_high: float = 1.0
    weight_low: float = 1.0
    schedule_high: Schedule | None = None  # the weight per step, instead of weight_high
    schedule_low: Schedule | None = None
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _read_schedules(cls, data: Any) -> Any:
        return read_schedules(data)

    @field_validator("weight_high", "weight_low")
    @classmethod
    def _sane_weight(cls, value: float) -> float:
        return check_weight(value)

    @model_validator(mode="after")
    def _has_a_source(self) -> StackEntry:
        if self.high is None and self.low is None:
            raise ValueError("the entry needs a LoRA file for at least one expert")
        return self

    def source(self, expert: Expert) -> LoraSource | None:
        return self.high if expert == "high" else self.low

    def weight(self, expert: Expert) -> float:
        return self.weight_high if expert == "high" else self.weight_low

    def schedule(self, expert: Expert) -> ScheduleModel:
        """The expert's schedule: the one given, or its plain weight as a constant."""
        given = self.schedule_high if expert == "high" else self.schedule_low
        return given if given is not None else sched.Constant(value=self.weight(expert))

    def is_scheduled(self, expert: Expert) -> bool:
        return not sched.is_constant(self.schedule(expert))

    def first_weight(self, expert: Expert) -> float:
        return sched.first_weight(self.schedule(expert))

    def step_weights(self, expert: Expert, steps: int) -> tuple[float, ...]:
        """The weight at each of the run's ``steps`` steps; a sentence naming the entry and expert if it does not fit."""
        try:
            return sched.weights(self.schedule(expert), steps)
        except ScheduleError as exc:
            raise ValidationError(
                f"The {EXPERT_NAMES[expert]} schedule of LoRA {self.name!r}: {exc}."
            ) from None

    def weight_text(self, expert: Expert) -> str:
        """The expert's weight or schedule as text (``0.8``, ``1>0``)."""
        return sched.text(self.schedule(expert))

    @property
    def is_pair(self) -> bool:
        return self.high is not None and self.low is not None and self.high != self.low

    def applies_to(self) -> list[Expert]:
        """The experts this entry changes: a source there and a non-zero weight."""
        if not self.enabled:
            return []
        return [e for e in EXPERTS if self.source(e) is not None and sched.can_apply(self.schedule(e))]

    @classmethod
    def single(cls, path: str | Path, weight_high: float = 1.0, weight_low: float | None = None, **kw: Any):
        """One file on both experts; a weight of 0 leaves that expert without it."""
        weight_low = weight_high if weight_low is None else weight_low
        source = LoraSource.local(path)
        return cls(
            name=kw.pop("name", Path(path).stem),
            high=source if weight_high != 0 else None,
            low=source if weight_low != 0 else None,
            weight_high=weight_high,
            weight_low=weight_low,
            **kw,
        )

    @classmethod
    def pair(cls, high_path: str | Path, low_path: str | Path, weight_high=1.0, weight_low=1.0, **kw: Any):
        """A high-noise file and a low-noise file used as one entry."""
        return cls(
            name=kw.pop("name", Path(high_path).stem),
            high=LoraSource.local(high_path),
            low=LoraSource.local(low_path),
            weight_high=weight_high,
            weight_low=weight_low,
            **kw,
        )


class Stack(StrictModel):
    """An ordered list of LoRA entries."""

    version: Literal[1] = STACK_SCHEMA_VERSION
    entries: list[StackEntry] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _unique_ids(self) -> Stack:
        ids = [e.id for e in self.entries]
        if len(ids) != len(set(ids)):
            raise ValueError("two stack entries share an id; give each entry its own id")
        return self

    def index(self, entry_id: str) -> int:
        for i, entry in enumerate(self.entries):
            if entry.id == entry_id:
                return i
        raise ValidationError("That LoRA is no longer in the stack; refresh the page.")

    def added(self, entry: StackEntry) -> Stack:
        return Stack(entries=[*self.entries, entry])

    def removed(self, entry_id: str) -> Stack:
        i = self.index(entry_id)
        return Stack(entries=self.entries[:i] + self.entries[i + 1 :])

    def moved(self, entry_id: str, delta: int) -> Stack:
        """The entry moved ``delta`` places (negative = up), clamped to the ends."""
        entries = list(self.entries)
        i = self.index(entry_id)
        j = max(0, min(len(entries) - 1, i + delta))
        entries.insert(j, entries.pop(i))
        return Stack(entries=entries)

    def updated(self, entry_id: str, **changes: Any) -> Stack:
        """The entry with ``changes`` applied (validated: a bad weight raises our ValidationError)."""
        entries = list(self.entries)
        i = self.index(entry_id)
        data = {**entries[i].model_dump(), **changes}
        entries[i] = parse_model(StackEntry, data, "stack entry")
        return Stack(entries=entries)

    def active(self) -> list[StackEntry]:
        return [e for e in self.entries if e.applies_to()]

    def summary(self) -> str:
        parts = []
        for e in self.active():
            parts.append(f"{e.name} ({e.weight_text('high')}/{e.weight_text('low')})")
        return ", ".join(parts) if parts else "no LoRAs"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> Stack:
        return parse_model(cls, text, "stack")


# The render settings a model's defaults give (besides the prompt and seed), in the editor's widget order.
MODEL_SETTING_FIELDS = (
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


def check_weight(value: float) -> float:
    """A LoRA weight of a stack entry or a preset entry."""
    if value != value or not (MIN_WEIGHT <= value <= MAX_WEIGHT):
        raise ValueError(f"a LoRA weight must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g}")
    return value


def check_seed(value: int | None) -> int | None:
    """A seed field's check (None: draw one at render time), shared by every file that holds a seed."""
    if value is not None and not (0 <= value <= MAX_SEED):
        raise ValueError(f"seed must be between 0 and {MAX_SEED} (got {value})")
    return value


def check_size(value: int) -> int:
    """A width or height: a multiple of 16 the model takes (render settings, training options)."""
    if value % 16 or not (MIN_SIZE <= value <= MAX_SIZE):
        raise ValueError(f"must be a multiple of 16 between {MIN_SIZE} and {MAX_SIZE} (got {value})")
    return value


def check_frames(value: int) -> int:
    """A frame count: 4k+1 up to MAX_FRAMES, as the VAE's time compression needs."""
    if value < 1 or value > MAX_FRAMES or (value - 1) % 4:
        nearest = max(1, min(MAX_FRAMES, round((value - 1) / 4) * 4 + 1))
        raise ValueError(
            f"must be 4k+1 (1, 5, 9, ... {MAX_FRAMES}); got {value}, the nearest allowed is {nearest}"
        )
    return value


class RenderSettings(StrictModel):
    """What to render, apart from the start image and the stack."""

    version: Literal[1] = SETTINGS_SCHEMA_VERSION
    prompt: str = Field(default="", max_length=10_000)
    negative_prompt: str = Field(default="", max_length=10_000)
    width: int = 832
    height: int = 480
    frames: int = 81
    steps: int = 40
    guidance: float = 3.5
    guidance_low: float | None = None
    shift: float = 5.0
    seed: int | None = None
    fps: int = Field(default=16, ge=1, le=120)
    high_steps: int | None = None  # the first K steps on the high-noise expert (None: the model's boundary)

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int) -> int:
        return check_size(value)

    @field_validator("frames")
    @classmethod
    def _frames(cls, value: int) -> int:
        return check_frames(value)

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if not (1 <= value <= MAX_STEPS):
            raise ValueError(f"must be between 1 and {MAX_STEPS} (got {value})")
        return value

    @field_validator("guidance", "guidance_low")
    @classmethod
    def _guidance(cls, value: float | None) -> float | None:
        if value is not None and (value != value or not (0.0 <= value <= 30.0)):
            raise ValueError(f"guidance must be between 0 and 30 (got {value})")
        return value

    @field_validator("shift")
    @classmethod
    def _shift(cls, value: float) -> float:
        if value != value or not (0.1 <= value <= 30.0):
            raise ValueError(f"shift must be between 0.1 and 30 (got {value})")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        return check_seed(value)

    @model_validator(mode="after")
    def _high_steps(self) -> RenderSettings:
        if self.high_steps is not None and not (0 <= self.high_steps <= self.steps):
            raise ValueError(
                f"high-noise steps must be between 0 and the step count {self.steps} (got {self.high_steps})"
            )
        return self

    def with_seed(self) -> RenderSettings:
        """A copy with a concrete seed, drawn at random if none was given."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": random.randint(0, MAX_SEED)})

    @property
    def effective_guidance_low(self) -> float:
        return self.guidance if self.guidance_low is None else self.guidance_low

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> RenderSettings:
        return parse_model(cls, text, "render settings")


def describe_validation_error(error: PydanticValidationError, what: str) -> str:
    """One sentence per problem, naming the field, e.g. 'frames: must be 4k+1 ...'."""
    problems = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or what
        msg = item["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
        if item["type"] == "extra_forbidden":
            msg = "is not a known field (check its spelling)"
        problems.append(f"{loc}: {msg}")
    return f"Invalid {what}: " + "; ".join(problems) + "."


def json_object(data: str | dict[str, Any], what: str, *, expected: str = "a JSON object") -> dict[str, Any]:
    """JSON text (or an already parsed value) that must be an object; our ValidationError otherwise."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"The {what} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})."
            ) from None
    if not isinstance(data, dict):
        raise ValidationError(f"The {what} must be {expected}.")
    return data


def parse_model(model: type[BaseModel], data: str | dict[str, Any], what: str):
    """Validate JSON text or a dict into ``model``, raising our ValidationError."""
    data = json_object(data, what)
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        raise ValidationError(describe_validation_error(exc, what)) from None


def build(model: type[BaseModel], what: str, **values: Any):
    """Construct ``model`` from keyword values, raising our ValidationError."""
    return parse_model(model, values, what)
