"""The typed requests and results of the pipeline manager (what the UI, CLI and API hand it and get back)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from studio.loras.sources import FileIdentity
from studio.stack.schema import RenderSettings, Stack


class CancelToken:
    """Set by the UI/CLI to stop a render between denoising steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass(frozen=True)
class StepEvent:
    step: int  # 1-based
    total: int
    timestep: float
    expert: str  # "high" or "low"
    latents: Any = None  # a CPU copy, only when the request asks for it


@dataclass(frozen=True)
class RenderRequest:
    image: Any  # a PIL image (already loaded and checked by studio.media.images)
    settings: RenderSettings
    stack: Stack = field(default_factory=Stack)
    fuse: bool = False  # fuse the LoRAs into the weights for the render (fastest per step)
    decode: bool = True  # False: stop at latents (tests, comparisons of LoRA effects)
    capture_step_latents: bool = False


@dataclass
class LoadedLora:
    """One adapter in one expert."""

    adapter: str
    component: str
    identity: FileIdentity
    sha256: str


@dataclass
class RenderResult:
    settings: RenderSettings  # with the seed actually used
    latents: Any  # torch tensor on CPU
    frames: np.ndarray | None  # [F, H, W, 3] uint8, None when not decoded
    experts_per_step: list[str]
    loras: list[dict[str, Any]]
    timings: dict[str, float]
    model: dict[str, Any]
    notices: list[str] = field(default_factory=list)  # sentences for the user (compiled mode fallbacks, ...)
    lora_weights_per_step: list[dict[str, Any]] = field(default_factory=list)  # per LoRA and expert
    fused: dict[str, list[str]] = field(default_factory=dict)  # expert -> adapters fused for the render
    file_reads: int = 0  # LoRA files read to switch to this render's stack (0 for a weight-only change)


ProgressFn = Callable[[StepEvent], None]


def model_record(spec: Any, dtype: Any, *, compiled: bool = False) -> dict[str, Any]:
    """What a render record says about the model: which one, the dtype it computes in, compiled or not."""
    return {
        "name": spec.name,
        "repo_id": spec.repo_id,
        "label": spec.label,
        "demo": spec.is_demo,
        "dtype": str(dtype).removeprefix("torch."),  # the dtype the model was loaded (and computes) in
        "compiled": compiled,
    }
