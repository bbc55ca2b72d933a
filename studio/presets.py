"""Preset files: a named LoRA stack with optional render settings (versioned JSON).

Only what a preset sets is applied; everything else keeps the model's defaults or the
user's current values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from studio.errors import ValidationError
from studio.stack import RenderSettings, Stack, StrictModel, parse_model

PRESET_SCHEMA_VERSION = 1
_SETTING_FIELDS = set(RenderSettings.model_fields) - {"version"}


class Preset(StrictModel):
    version: Literal[1] = PRESET_SCHEMA_VERSION
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=5000)
    model: str | None = None
    stack: Stack = Field(default_factory=Stack)
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - _SETTING_FIELDS)
        if unknown:
            raise ValueError(f"unknown render setting(s) {', '.join(unknown)}")
        RenderSettings.model_validate(value)  # each value must be valid on its own
        return value

    def apply_settings(self, base: RenderSettings) -> RenderSettings:
        return RenderSettings.model_validate({**base.model_dump(), **self.settings})


def load_preset(path: str | Path) -> Preset:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValidationError(f"The preset file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"The preset file {path} cannot be read ({exc}).") from None
    return parse_model(Preset, text, f"preset {path.name}")
