"""The demo LoRAs: built in code for the demo model, labelled, written atomically, rebuilt when missing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from studio.loras.demo_loras import DEMO_LORAS, DEMO_LORAS_VERSION, DEMO_MARK, ensure_demo_loras
from studio.loras.inspect import inspect_lora
from studio.loras.safetensors_io import load_state_dict, read_header
from studio.loras.synthetic import make_lora_tensors, write_lora

FILES = {lora.file for lora in DEMO_LORAS}


def test_the_demo_loras_are_written_labelled_and_nothing_else(tmp_path):
    folder = ensure_demo_loras(tmp_path / "demo")
    assert {p.name for p in folder.iterdir()} == FILES  # no temporary file is left behind
    for lora in DEMO_LORAS:
        path = folder / lora.file
        assert path.name.startswith("demo-")
        meta = read_header(path).metadata
        assert meta[DEMO_MARK] == DEMO_LORAS_VERSION
        assert meta["modelspec.title"].startswith("Demo LoRA: ")
        assert "demo LoRA made by Wan LoRA Studio" in meta["modelspec.description"]
        info = inspect_lora(path, hash_file=False)
        assert info.base_model == "the demo model" and info.title == lora.title
        assert info.expert_hint == lora.expert


def test_a_missing_or_outdated_demo_lora_is_rebuilt_and_the_others_are_left_alone(
    tmp_path, demo_transformer_config
):
    folder = ensure_demo_loras(tmp_path / "demo")
    style, motion = folder / "demo-style.safetensors", folder / "demo-motion.safetensors"
    original = load_state_dict(style)
    style.unlink()
    write_lora(motion, make_lora_tensors(demo_transformer_config, seed=9))  # another recipe: no demo mark
    kept = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name not in (style.name, motion.name)}
    ensure_demo_loras(folder)
    again = load_state_dict(style)  # fixed seeds: the same tensors again
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in again)
    assert read_header(motion).metadata.get(DEMO_MARK) == DEMO_LORAS_VERSION
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.name in kept} == kept


def test_a_failed_write_leaves_neither_a_partial_file_nor_a_temporary_one(tmp_path, monkeypatch):
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        ensure_demo_loras(tmp_path / "demo")
    assert list((tmp_path / "demo").iterdir()) == []


@pytest.mark.slow
def test_each_demo_lora_visibly_changes_the_render_in_its_own_way(demo_model_dir, tmp_path, start_image):
    """Mean pixel change against the base render and between LoRAs, on a 0-255 scale."""
    from studio.engine.manager import PipelineManager, RenderRequest
    from studio.settings import Settings
    from studio.stack.schema import LoraSource, RenderSettings, Stack, StackEntry

    folder = ensure_demo_loras(tmp_path / "demo")
    settings = Settings(lora_dirs=(folder,), outputs_dir=tmp_path / "out", cache_dir=demo_model_dir.parent)
    manager = PipelineManager(settings)
    manager.load_model("demo")
    render = RenderSettings(prompt="a cat walks", width=32, height=32, frames=5, steps=4, seed=3)

    def frames(*entries):
        result = manager.render(
            RenderRequest(image=start_image, settings=render, stack=Stack(entries=list(entries)))
        )
        return np.asarray(result.frames, dtype=np.float32)

    def source(name):
        return LoraSource.local(str(folder / name))

    style = StackEntry(name="style", high=None, low=source("demo-style.safetensors"), weight_high=0.0)
    motion = StackEntry(
        name="motion", high=source("demo-motion.safetensors"), low=source("demo-motion.safetensors")
    )
    pair = StackEntry(
        name="pair",
        high=source("demo-pair_high_noise.safetensors"),
        low=source("demo-pair_low_noise.safetensors"),
    )
    base = frames()
    outs = {e.name: frames(e) for e in (style, motion, pair)}
    for name, out in outs.items():
        assert np.abs(out - base).mean() > 8, f"{name} barely changes the render"
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(outs[a] - outs[b]).mean() > 8, f"{a} and {b} look alike"
