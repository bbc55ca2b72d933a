"""Helpers of the stack doctor tests (LoRA tensors made in code, stacks)."""

from __future__ import annotations

from pathlib import Path

import torch

from studio.loras.synthetic import make_lora_tensors
from studio.models.demo import TRANSFORMER_CONFIG
from studio.stack.schema import RenderSettings, Stack, StackEntry

TINY = RenderSettings(prompt="x", width=32, height=32, frames=5, steps=4, guidance=1.0, seed=1)


def lora_tensors(seed: int = 0, scale: float = 0.1, **kw) -> dict[str, torch.Tensor]:
    return make_lora_tensors(dict(TRANSFORMER_CONFIG), seed=seed, scale=scale, **kw)


_CHANGE_ENDINGS = ("lora_B.weight", "lora_up.weight", "lora_B.bias", ".diff", ".diff_b")


def scaled_up(tensors: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """The same LoRA with ΔW and Δb times ``factor`` (up factors, biases and diffs scaled)."""
    return {k: v * factor if k.endswith(_CHANGE_ENDINGS) else v for k, v in tensors.items()}


def single(path: Path, high: float = 1.0, low: float | None = None, name: str | None = None) -> StackEntry:
    return StackEntry.single(path, high, low, name=name or path.stem)


def stack_of(*entries: StackEntry) -> Stack:
    return Stack(entries=list(entries))
