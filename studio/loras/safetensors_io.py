"""Reading LoRA files safely.

Only ``.safetensors`` files are read; nothing here can unpickle. The state dict is
handed to diffusers as tensors we read ourselves, never as a path (diffusers would
fall back to pickle for other file types).
"""

from __future__ import annotations

from pathlib import Path

import torch

from studio.errors import LoraFileError

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle"}


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read all tensors of a LoRA file into CPU memory."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise LoraFileError(
            f"{path.name} is a pickle file, which can run code when loaded; the studio only loads "
            ".safetensors files. Convert it with safetensors' convert script or ask its author for one."
        )
    if path.suffix.lower() != ".safetensors":
        raise LoraFileError(
            f"{path.name} is not a .safetensors file; the studio only loads .safetensors LoRAs."
        )
    try:
        return load_file(str(path), device="cpu")
    except FileNotFoundError:
        raise LoraFileError(f"The LoRA file {path} does not exist; add it again from the library.") from None
    except Exception as exc:
        raise LoraFileError(f"{path.name} could not be read as a safetensors file ({exc}).") from None
