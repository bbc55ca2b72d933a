"""Cuts, augmentation variants and the latent/text caches, on the demo pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from trainkit import write_clip

from studio.training.dataset import check_dataset
from studio.training.encode import MAX_SEQUENCE_LENGTH, encode_clip, encode_items
from studio.training.frames import Variant, cut_frame, load_frames, variants_for


def test_variants_are_fixed_per_item_and_seed(tmp_path):
    write_clip(tmp_path, "a.mp4", "a wave")
    item = check_dataset(tmp_path, frames=9, width=32, height=32, fps=8).usable[0]
    plain = variants_for(item, hflip=False, random_crop=False, crops=3, seed=0)
    assert plain == [Variant()]
    both = variants_for(item, hflip=True, random_crop=True, crops=3, seed=0)
    assert len(both) == 8 and len({v.label for v in both}) == 8
    assert both == variants_for(item, hflip=True, random_crop=True, crops=3, seed=0)
    assert both != variants_for(item, hflip=True, random_crop=True, crops=3, seed=1)
    assert all(0.8 <= v.crop[0] <= 1.0 for v in both if v.crop)


def test_flip_mirrors_and_crops_keep_the_bucket_size():
    pixels = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    image = Image.fromarray(pixels)
    plain = np.asarray(cut_frame(image, 32, 16, Variant()))
    flipped = np.asarray(cut_frame(image, 32, 16, Variant(flip=True)))
    assert plain.shape == flipped.shape == (16, 32, 3)
    assert np.array_equal(flipped, plain[:, ::-1])
    cropped = cut_frame(image, 32, 16, Variant(crop=(0.8, 0.0, 1.0)))
    assert cropped.size == (32, 16)


@pytest.mark.slow
def test_latents_and_text_are_encoded_once_and_cached(tmp_path, train_manager):
    folder = tmp_path / "data"
    folder.mkdir()
    write_clip(folder, "a.mp4", "a red wave")
    write_clip(folder, "b.mp4", "a red wave", phase=2.0)
    items = check_dataset(folder, frames=9, width=32, height=32, fps=8).usable
    cache = tmp_path / "cache"
    first = encode_items(train_manager, items, cache_dir=cache, model_name="demo", hflip=True)
    assert [(e.name, e.variant) for e in first.examples] == [
        ("a.mp4", "plain"), ("a.mp4", "flip"), ("b.mp4", "plain"), ("b.mp4", "flip"),
    ]  # fmt: skip
    assert list(first.text) == ["a red wave"]  # one caption, encoded once
    assert first.text["a red wave"].shape == (MAX_SEQUENCE_LENGTH, 32)
    example = first.examples[0]
    assert example.latents.shape == (16, 3, 4, 4) and example.condition.shape == (20, 3, 4, 4)
    assert first.buckets() == {"32x32x9": [0, 1, 2, 3]}
    assert not torch.equal(first.examples[0].latents, first.examples[1].latents)
    assert len(list((cache / "latents").iterdir())) == 4 and len(list((cache / "text").iterdir())) == 1
    # Everything comes back from the cache, equal to the bit.
    calls = []
    original = train_manager.pipe.vae.encode
    train_manager.pipe.vae.encode = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        again = encode_items(train_manager, items, cache_dir=cache, model_name="demo", hflip=True)
    finally:
        train_manager.pipe.vae.encode = original
    assert calls == []
    for a, b in zip(first.examples, again.examples, strict=True):
        assert torch.equal(a.latents, b.latents) and torch.equal(a.condition, b.condition)


@pytest.mark.slow
def test_the_condition_is_what_the_pipeline_builds_from_the_first_frame(tmp_path, train_manager):
    write_clip(tmp_path, "a.mp4", "a red wave")
    item = check_dataset(tmp_path, frames=9, width=32, height=32, fps=8).usable[0]
    frames = load_frames(item, Variant())
    with train_manager.exclusive() as pipe:
        latents, condition = encode_clip(pipe, frames, 32, 32)
        image = pipe.video_processor.preprocess(frames[0], height=32, width=32).to(torch.float32)
        _, expected = pipe.prepare_latents(image, 1, 16, 32, 32, 9, torch.float32, "cpu", None, None)
    assert torch.equal(condition, expected[0])
    assert torch.equal(condition[:4, 0], torch.ones(4, 4, 4)) and torch.equal(
        condition[:4, 1:], torch.zeros(4, 2, 4, 4)
    )
    # The first latent frame of the clip is the condition's image latent (the same first frame).
    assert torch.allclose(condition[4:, 0], latents[:, 0], atol=1e-5)
