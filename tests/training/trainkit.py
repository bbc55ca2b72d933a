"""Helpers shared by the training tests (imported as ``trainkit``: tests/training is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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
    from studio.media.video import write_video

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


def base_options(**changes):
    from studio.training.options import TrainOptions

    values = dict(
        name="wave", steps=40, rank=8, lr=2e-2, frames=9, width=32, height=32, save_every=20, seed=3
    )
    values.update(changes)
    return TrainOptions(**values)
