"""The settings of a training run: typed, versioned, stored with the run (``run.json``).

Everything has a default except the run's name; values that depend on the model (the
expert boundary, the flow shift) stay ``None`` until :func:`resolve` fills them in from
the loaded model, so the file says what the run actually used.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from studio.stack.schema import StrictModel, check_frames, check_size

OPTIONS_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ExpertChoice = Literal["both", "high", "low"]
ModuleGroup = Literal["self_attn", "cross_attn", "ffn"]
MODULE_GROUPS: tuple[ModuleGroup, ...] = ("self_attn", "cross_attn", "ffn")

# diffusers module names (inside each transformer block) of each group.
GROUP_MODULES: dict[str, tuple[str, ...]] = {
    "self_attn": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"),
    "cross_attn": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
    "ffn": ("ffn.net.0.proj", "ffn.net.2"),
}


class TrainOptions(StrictModel):
    """One training run. ``steps`` counts optimizer steps per trained expert."""

    version: Literal[1] = OPTIONS_VERSION
    name: str
    model: str = "demo"
    experts: ExpertChoice = "both"
    boundary: float | None = None  # None: the model's own (0.9 for Wan2.2 I2V A14B)
    shift: float | None = None  # None: the model's flow shift
    rank: int = Field(default=16, ge=1, le=256)
    alpha: float | None = None  # None: the rank (scale 1)
    lr: float = Field(default=1e-4, gt=0, le=1.0)
    weight_decay: float = Field(default=0.01, ge=0, le=1.0)
    max_grad_norm: float = Field(default=1.0, ge=0)  # 0: no clipping
    steps: int = Field(default=1000, ge=1, le=1_000_000)
    batch: int = Field(default=1, ge=1, le=64)
    grad_accum: int = Field(default=1, ge=1, le=256)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    target_modules: list[ModuleGroup] = Field(default_factory=lambda: list(MODULE_GROUPS), min_length=1)
    frames: int = 33
    width: int = 832
    height: int = 480
    hflip: bool = False  # also train on the mirrored clips
    random_crop: bool = False  # also train on random crops (``crops`` of them per clip)
    crops: int = Field(default=3, ge=1, le=16)
    resample_fps: bool = True  # take frames at the model's frame rate from faster clips
    gradient_checkpointing: bool = True
    save_every: int = Field(default=0, ge=0)  # 0: only at the end (and on Stop)
    sample_every: int = Field(default=0, ge=0)  # 0: no samples while training
    sample_image: str | None = None  # None: the first frame of the first clip
    sample_prompt: str | None = None  # None: the first clip's caption
    sample_steps: int | None = Field(default=None, ge=1, le=200)  # None: the model's default
    val_every: int = Field(default=0, ge=0)  # 0: validation loss at the start and the end only
    val_timesteps: int = Field(default=4, ge=1, le=64)  # fixed timesteps per expert and clip
    holdout: int = Field(default=0, ge=0)  # the last N dataset items become validation clips
    val_dir: str | None = None  # or a folder of validation clips
    trigger: str = Field(default="", max_length=100)
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the model's dtype
    overwrite: bool = False  # replace an exported pair of the same name in the LoRA folder

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(
                "use 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit "
                f"(got {value!r})"
            )
        return value

    @field_validator("frames")
    @classmethod
    def _frames(cls, value: int) -> int:
        return check_frames(value)

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int) -> int:
        return check_size(value)

    @field_validator("boundary")
    @classmethod
    def _boundary(cls, value: float | None) -> float | None:
        if value is not None and not (0.0 < value < 1.0):
            raise ValueError(f"must be between 0 and 1, e.g. 0.9 for Wan2.2 I2V (got {value})")
        return value

    @field_validator("shift")
    @classmethod
    def _shift(cls, value: float | None) -> float | None:
        if value is not None and not (0.1 <= value <= 30.0):
            raise ValueError(f"must be between 0.1 and 30 (got {value})")
        return value

    @field_validator("target_modules")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _sources(self) -> TrainOptions:
        if self.holdout and self.val_dir:
            raise ValueError("set aside validation clips with 'holdout' or give 'val_dir', not both")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def trained_experts(self) -> list[str]:
        return ["high", "low"] if self.experts == "both" else [self.experts]

    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def module_names(self) -> list[str]:
        """The diffusers module names inside a block that get a LoRA."""
        return [m for group in self.target_modules for m in GROUP_MODULES[group]]

    def target_regex(self) -> str:
        """A peft ``target_modules`` regex: those modules in every transformer block, nothing else."""
        names = "|".join(re.escape(m) for m in self.module_names())
        return rf"^blocks\.\d+\.({names})$"


def resolve(options: TrainOptions, *, boundary: float | None, shift: float) -> TrainOptions:
    """``options`` with the model's boundary and shift filled in where they were left unset."""
    return options.model_copy(
        update={
            "boundary": options.boundary if options.boundary is not None else boundary,
            "shift": options.shift if options.shift is not None else shift,
        }
    )


def model_defaults(spec) -> dict[str, int]:
    """Training frames and size when none are given: the model's render size, at most 33 frames."""
    return {
        "frames": min(spec.defaults.frames, 33),
        "width": spec.defaults.width,
        "height": spec.defaults.height,
    }
