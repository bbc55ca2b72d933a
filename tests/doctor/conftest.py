"""Fixtures of the stack doctor tests: one demo model per module, LoRA libraries written in code.

The manager is shared by a test module (loading the demo model once); each test gets its
own library folder (inside the manager's LoRA root) and its own doctor cache, so the
library a LoRA is compared with is exactly the files the test wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from studio.engine.manager import PipelineManager
from studio.loras.synthetic import write_lora
from studio.service import Studio
from studio.settings import Settings


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("doctor-loras")


@pytest.fixture(scope="module")
def manager(lora_root, studio_cache) -> PipelineManager:
    settings = Settings(
        lora_dirs=(lora_root,), outputs_dir=lora_root / "out", cache_dir=studio_cache, model="demo"
    )
    mgr = PipelineManager(settings, device="cpu")
    mgr.load_model("demo")
    return mgr


@pytest.fixture()
def library(lora_root, request) -> Path:
    """A fresh library folder for this test."""
    folder = lora_root / request.node.name.replace("[", "-").replace("]", "").replace("/", "-")
    folder.mkdir()
    return folder


@pytest.fixture()
def studio(manager, library, tmp_path) -> Studio:
    """The service over the shared model, with this test's library and its own caches."""
    settings = manager.settings.with_(lora_dirs=[library], cache_dir=tmp_path / "cache")
    return Studio(settings, manager=manager)


@pytest.fixture()
def write(library) -> Callable[..., Path]:
    def _write(name: str, tensors: dict[str, torch.Tensor]) -> Path:
        return write_lora(library / name, tensors)

    return _write
