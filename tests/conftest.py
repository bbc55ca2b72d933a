"""Shared fixtures: the demo model built once per run, LoRA folders and images made in code.

Nothing here reaches the network: the Hub client is switched offline for every test
that does not start its own loopback Hub.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.settings import Settings


@pytest.fixture(scope="session")
def studio_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("studio-cache")


@pytest.fixture(scope="session")
def demo_model_dir(studio_cache) -> Path:
    from studio.models.demo import ensure_demo_model

    return ensure_demo_model(studio_cache)


@pytest.fixture(scope="session")
def demo_transformer_config(demo_model_dir) -> dict:
    return json.loads((demo_model_dir / "transformer" / "config.json").read_text())


@pytest.fixture()
def lora_dir(tmp_path) -> Path:
    path = tmp_path / "loras"
    path.mkdir()
    return path


@pytest.fixture()
def settings(lora_dir, studio_cache, tmp_path) -> Settings:
    return Settings(
        lora_dirs=(lora_dir,), outputs_dir=tmp_path / "outputs", cache_dir=studio_cache, model="demo"
    )


@pytest.fixture()
def make_lora(lora_dir, demo_transformer_config):
    """Write a synthetic LoRA fitting the demo model into the LoRA folder; returns its path."""
    from studio.loras.synthetic import make_lora_tensors, write_lora

    def _make(name: str = "style.safetensors", *, seed: int = 0, scale: float = 0.3, **kwargs) -> Path:
        tensors = make_lora_tensors(demo_transformer_config, seed=seed, scale=scale, **kwargs)
        return write_lora(lora_dir / name, tensors)

    return _make


@pytest.fixture(scope="session")
def start_image() -> Image.Image:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


from fakehub.fixtures import fake_hub, guide_hub, loopback_only  # noqa: E402, F401  (the loopback Hub, for every Hub test)
