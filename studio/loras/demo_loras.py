"""Demo LoRAs for the demo model, built in code, so a fresh clone's library is not empty.

Four small ``.safetensors`` files that fit the demo model's transformer: a style LoRA for
the low-noise expert only, a motion LoRA for both experts, and a high/low pair. Their
weights are random (fixed seeds) and strong enough that each visibly changes the demo
render in its own way. They are labelled as demo files: the names start with ``demo-`` and
the header says so (``modelspec.title``, ``modelspec.description``, ``studio.demo``).

They live in a folder of their own, :attr:`studio.settings.Settings.demo_lora_dir` (in the
studio's cache, never the user's ``./loras``), which the library lists only while the demo
model is loaded. Each file is written atomically (a hidden temporary name, then
``os.replace``) and rebuilt when it is missing or was made by another version of this
recipe.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import LoraFileError
from studio.loras.safetensors_io import read_header

DEMO_LORAS_VERSION = "1"  # bump when a recipe below changes: older files are rebuilt
DEMO_MARK = "studio.demo"  # header key; its value is DEMO_LORAS_VERSION


@dataclass(frozen=True)
class DemoLora:
    file: str
    title: str
    expert: str | None  # "high" / "low": the header says which expert it is for; None = both
    options: Mapping[str, Any] = field(default_factory=dict)  # make_lora_tensors keyword arguments

    def metadata(self) -> dict[str, str]:
        meta = {
            "modelspec.title": self.title,
            "modelspec.description": (
                "A demo LoRA made by Wan LoRA Studio for its offline demo model: random weights with a "
                "fixed seed, not a real style. Use it to try the stack, weights and comparisons."
            ),
            "modelspec.architecture": "wan-lora-studio-demo",
            DEMO_MARK: DEMO_LORAS_VERSION,
        }
        if self.expert:
            meta["studio.expert"] = self.expert
        return meta


# Each one also changes the output head (proj_out), where the demo model shows a LoRA most clearly.
_HEAD = ["proj_out"]
DEMO_LORAS: tuple[DemoLora, ...] = (
    DemoLora(
        "demo-style.safetensors",
        "Demo LoRA: style, for the low-noise expert only",
        expert="low",
        options=dict(seed=101, rank=4, scale=3.0, modules=["ffn.net.0.proj", "ffn.net.2"], top_level=_HEAD),
    ),
    DemoLora(
        "demo-motion.safetensors",
        "Demo LoRA: motion, for both experts",
        expert=None,
        options=dict(
            seed=202, rank=8, scale=2.0, modules=["attn1.to_q", "attn1.to_k", "attn1.to_v"], top_level=_HEAD
        ),
    ),
    DemoLora(
        "demo-pair_high_noise.safetensors",
        "Demo LoRA: a high/low pair, high-noise half",
        expert="high",
        options=dict(seed=303, rank=4, scale=3.0, modules=["attn2.to_v", "attn2.to_out.0"], top_level=_HEAD),
    ),
    DemoLora(
        "demo-pair_low_noise.safetensors",
        "Demo LoRA: a high/low pair, low-noise half",
        expert="low",
        options=dict(seed=304, rank=4, scale=3.0, modules=["attn2.to_v", "attn2.to_out.0"], top_level=_HEAD),
    ),
)


def is_current(path: Path) -> bool:
    """Whether ``path`` is a demo LoRA written by this version of the recipes."""
    try:
        return read_header(path).metadata.get(DEMO_MARK) == DEMO_LORAS_VERSION
    except (LoraFileError, OSError):
        return False


def ensure_demo_loras(folder: Path, transformer_config: Mapping[str, Any] | None = None) -> Path:
    """Write the demo LoRAs into ``folder`` where missing or outdated; returns ``folder``.

    ``transformer_config``: the demo model's transformer config (the built-in one by default).
    """
    folder = Path(folder)
    missing = [lora for lora in DEMO_LORAS if not is_current(folder / lora.file)]
    if not missing:
        return folder
    from studio.loras.synthetic import make_lora_tensors
    from studio.models.demo import TRANSFORMER_CONFIG

    config = dict(TRANSFORMER_CONFIG if transformer_config is None else transformer_config)
    folder.mkdir(parents=True, exist_ok=True)
    for lora in missing:
        _write_atomic(folder / lora.file, make_lora_tensors(config, **lora.options), lora.metadata())
    return folder


def _write_atomic(path: Path, tensors, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
