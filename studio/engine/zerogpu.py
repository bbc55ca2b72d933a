"""Hugging Face ZeroGPU support: the GPU work runs under ``spaces.GPU`` when on such a Space.

On ZeroGPU every decorated call runs in a short-lived forked worker that holds the GPU
for at most ``duration`` seconds, so:

- the duration is estimated from the model, resolution, frames and steps of each call;
- the LoRA stack is applied inside each call (the manager diffs against the parent
  process's state, which the worker never changes, so every call loads what it needs);
- only CPU tensors, numpy arrays and PIL images cross the boundary.

Elsewhere (``spaces`` not installed, or not a ZeroGPU Space) the decorator is a no-op.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

# Seconds per denoising step of one forward pass at the reference size (480×832×81 frames,
# 32,760 tokens) on one ZeroGPU slice (H200 class). A14B: the official 1×H100 figure of
# 328 s for 40 CFG steps with offloading is ~4 s per forward; 5B is ~3× cheaper per token.
_SECONDS_PER_FORWARD = {"wan2.2-i2v-a14b": 4.0, "wan2.2-ti2v-5b": 1.3}
_REFERENCE_TOKENS = 21 * (480 // 16) * (832 // 16)
_OVERHEAD_S = 45  # moving weights on the GPU, LoRA loading, text encoding, VAE decode
MIN_S, MAX_S = 60, 900


def is_zerogpu() -> bool:
    return bool(os.environ.get("SPACES_ZERO_GPU"))


def gpu_seconds(model_name: str, settings) -> int:
    """The GPU time to ask for: generous enough for the call, bounded for the queue."""
    per_forward = _SECONDS_PER_FORWARD.get(model_name, 4.0)
    tokens = ((settings.frames - 1) // 4 + 1) * (settings.height // 16) * (settings.width // 16)
    forwards = settings.steps * (2 if settings.guidance > 1.0 else 1)
    seconds = _OVERHEAD_S + 1.25 * forwards * per_forward * tokens / _REFERENCE_TOKENS
    return int(max(MIN_S, min(MAX_S, seconds)))


def on_gpu(fn: Callable[..., Any], duration: Callable[..., int]) -> Callable[..., Any]:
    """``fn`` wrapped with ``spaces.GPU(duration=duration)`` on ZeroGPU, else ``fn`` itself."""
    if not is_zerogpu():
        return fn
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=duration)(fn)
