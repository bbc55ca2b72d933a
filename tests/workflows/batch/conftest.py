"""Fixtures of the batch tests: a folder with a start image, LoRAs and a scene file written in code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio.models.registry import resolve_model

TINY = {"width": 32, "height": 32, "frames": 1, "steps": 1}  # the fastest render the demo model makes


@pytest.fixture()
def scene_dir(tmp_path, start_image) -> Path:
    folder = tmp_path / "batch"
    (folder / "images").mkdir(parents=True)
    start_image.save(folder / "images" / "start.png")
    return folder


@pytest.fixture()
def write_scenes(scene_dir):
    """Write a scene file with ``scenes`` (and ``defaults``, TINY by default) into the scene folder."""

    def _write(scenes, defaults=None, name="scenes.json", **top) -> Path:
        doc = {
            "kind": "wan-lora-studio/scenes",
            "version": 1,
            "defaults": TINY if defaults is None else defaults,
            "scenes": scenes,
            **top,
        }
        path = scene_dir / name
        path.write_text(json.dumps(doc, indent=2))
        return path

    return _write


@pytest.fixture()
def demo_defaults() -> dict:
    return resolve_model("demo").defaults.settings_values()
