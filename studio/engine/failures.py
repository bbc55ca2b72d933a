"""What the manager says when the GPU runs out of memory or a LoRA does not load (and its quiet libraries)."""

from __future__ import annotations

from pathlib import Path

from studio.errors import LoraFileError, StudioError
from studio.stack.schema import RenderSettings


def quiet_libraries() -> None:
    """Silence the loading progress bars and chatty warnings of diffusers/transformers."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


def oom_advice(settings: RenderSettings) -> str:
    return (
        f"The GPU ran out of memory rendering {settings.frames} frames at {settings.width}×{settings.height}. "
        "Try fewer frames, a lower resolution, a memory mode with offloading, or VAE tiling; the model "
        "is still loaded and the next render can go ahead."
    )


def lora_load_error(path: Path, exc: Exception) -> StudioError:
    return LoraFileError(
        f"{path.name} could not be loaded into the model ({type(exc).__name__}: {exc}). "
        "It may be a LoRA for another model or a format the studio does not support."
    )
