"""Training fixtures: datasets of real MP4s and PNGs written in code, and one trained demo run.

The trained run (both experts, a few dozen steps on one clip and one still) is made once
per test session and shared by the trainer, export and render tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trainkit import base_options, write_clip, write_image

from studio.settings import Settings


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The demo model's steps are tiny: one thread is many times faster than two fighting for a CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def train_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="session")
def train_dataset(train_root) -> Path:
    folder = train_root / "dataset"
    folder.mkdir()
    write_clip(folder, "wave.mp4", "a red wave moving")
    write_image(folder, "still.png", "a blue wave")
    return folder


@pytest.fixture(scope="session")
def train_settings(train_root, studio_cache) -> Settings:
    (train_root / "loras").mkdir()
    return Settings(
        lora_dirs=(train_root / "loras",),
        outputs_dir=train_root / "outputs",
        cache_dir=studio_cache,
        model="demo",
    )


@pytest.fixture(scope="session")
def train_manager(train_settings):
    from studio.engine.manager import PipelineManager

    manager = PipelineManager(train_settings, device="cpu")
    manager.load_model("demo")
    return manager


class TrainedRun:
    def __init__(self, trainer, result, events, grads):
        self.trainer, self.result, self.events, self.grads = trainer, result, events, grads


@pytest.fixture(scope="session")
def trained(train_manager, train_dataset) -> TrainedRun:
    """The shared run; every step records which experts' LoRA received a gradient."""
    from studio.training.trainer import Trainer

    events, grads = [], []
    trainer = Trainer(train_manager, base_options(), dataset=train_dataset, on_event=events.append)

    def record(expert, by_expert):
        grads.append(
            {
                "stepped": expert,
                "has_grad": {
                    e: any(g is not None and bool(g.abs().sum() > 0) for g in values.values())
                    for e, values in by_expert.items()
                },
                "none": {e: all(g is None for g in values.values()) for e, values in by_expert.items()},
            }
        )

    trainer.grad_hook = record
    result = trainer.run()
    return TrainedRun(trainer, result, events, grads)
