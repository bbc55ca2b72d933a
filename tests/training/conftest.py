"""Training fixtures: datasets of real MP4s and PNGs written in code, and one trained demo run.

The trained run (both experts, a few dozen steps on one clip and one still) is made once
per test session and shared by the trainer, export and render tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studio.settings import Settings

CLIP_FRAMES, CLIP_SIZE, CLIP_FPS = 9, 32, 8


def wave_frames(
    frames: int = CLIP_FRAMES, width: int = CLIP_SIZE, height: int = CLIP_SIZE, phase: float = 0.0
):
    """A smooth coloured wave drifting to the right: [F, H, W, 3] uint8."""
    x = np.linspace(0.0, 1.0, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]
    out = []
    for f in range(frames):
        channels = [0.5 + 0.5 * np.sin(6 * x + 0.7 * f + c + phase + 2 * y * c) for c in range(3)]
        out.append(np.stack(channels, -1))
    return (np.clip(np.stack(out), 0, 1) * 255).astype(np.uint8)


def write_clip(folder: Path, name: str, caption: str | None, *, fps: int = CLIP_FPS, **kw) -> Path:
    from studio.media import write_video

    path = write_video(wave_frames(**kw), folder / name, fps=fps, metadata={})
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def write_image(folder: Path, name: str, caption: str | None, size=(40, 32)) -> Path:
    path = folder / name
    Image.fromarray(wave_frames(1, *size, phase=1.0)[0]).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


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


def base_options(**changes):
    from studio.training.options import TrainOptions

    values = dict(
        name="wave", steps=40, rank=8, lr=2e-2, frames=9, width=32, height=32, save_every=20, seed=3
    )
    values.update(changes)
    return TrainOptions(**values)


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
