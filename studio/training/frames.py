"""The pixels of one dataset item as the trainer sees them: cut, resized, maybe mirrored or cropped.

Augmentation makes *variants* of each item, fixed per item and seed (so their latents can be
cached once): the plain cut, its mirror image (``hflip``) and ``crops`` random crops
(``random_crop``) covering 80–100 % of the largest window with the bucket's aspect ratio.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from studio.training.dataset import DatasetItem

MIN_CROP = 0.8


@dataclass(frozen=True)
class Variant:
    flip: bool = False
    crop: tuple[float, float, float] | None = None  # (scale, x, y): window size and position, 0..1

    @property
    def label(self) -> str:
        parts = []
        if self.crop is not None:
            parts.append("crop({:.3f},{:.3f},{:.3f})".format(*self.crop))
        if self.flip:
            parts.append("flip")
        return "+".join(parts) or "plain"


def variants_for(
    item: DatasetItem, *, hflip: bool, random_crop: bool, crops: int, seed: int
) -> list[Variant]:
    """The plain cut first, then the augmented ones (the same for the same item and seed)."""
    out = [Variant()]
    if random_crop:
        digest = hashlib.sha256(f"{seed}:{item.name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        for _ in range(crops):
            scale, x, y = rng.uniform(MIN_CROP, 1.0), rng.uniform(0, 1), rng.uniform(0, 1)
            out.append(Variant(crop=(round(float(scale), 3), round(float(x), 3), round(float(y), 3))))
    if hflip:
        out += [Variant(flip=True, crop=v.crop) for v in list(out)]
    return out


def _window(width: int, height: int, out_w: int, out_h: int, variant: Variant) -> tuple[int, int, int, int]:
    """The source rectangle (left, top, right, bottom) with the output's aspect ratio."""
    if width * out_h > height * out_w:
        win_w, win_h = height * out_w / out_h, float(height)
    else:
        win_w, win_h = float(width), width * out_h / out_w
    scale, fx, fy = variant.crop if variant.crop is not None else (1.0, 0.5, 0.5)
    win_w, win_h = max(1, round(win_w * scale)), max(1, round(win_h * scale))
    left = round((width - win_w) * fx)
    top = round((height - win_h) * fy)
    return left, top, left + win_w, top + win_h


def cut_frame(image: Image.Image, out_w: int, out_h: int, variant: Variant) -> Image.Image:
    if variant.crop is None:
        from studio.media.images import fit_image

        frame = fit_image(image, out_w, out_h)  # exactly what a render does to its start image
    else:
        box = _window(image.width, image.height, out_w, out_h, variant)
        frame = image.crop(box).resize((out_w, out_h), Image.Resampling.LANCZOS)
    return frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if variant.flip else frame


def source_frames(item: DatasetItem) -> list[Image.Image]:
    """The item's frames that the cut uses, as RGB images at their original size."""
    from studio.media.images import load_start_image
    from studio.media.probe import read_frames

    assert item.cut is not None
    if item.kind == "image":
        return [load_start_image(item.path)]
    array = read_frames(item.path)
    last = array.shape[0] - 1
    return [Image.fromarray(array[min(i, last)]) for i in item.cut.indices]


def load_frames(
    item: DatasetItem, variant: Variant, frames: list[Image.Image] | None = None
) -> list[Image.Image]:
    """The item's training frames for ``variant``, at its bucket size."""
    assert item.cut is not None
    frames = frames if frames is not None else source_frames(item)
    return [cut_frame(f, item.cut.width, item.cut.height, variant) for f in frames]
