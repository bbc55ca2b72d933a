"""Wan LoRA Studio: Wan2.2 image-to-video with stacked LoRAs.

``from studio import Generator`` is the Python API (:mod:`studio.generator`). It is imported on first use,
so ``import studio`` stays light (no torch, no diffusers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Generator", "Video", "__version__"]

if TYPE_CHECKING:
    from studio.generator import Generator, Video


def __getattr__(name: str) -> Any:
    if name in ("Generator", "Video"):
        from studio import generator

        return getattr(generator, name)
    raise AttributeError(f"module 'studio' has no attribute {name!r}")
