"""Saving a render: MP4 + sidecar + start image, the same record in both, no partial files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from studio.engine.manager import RenderRequest, RenderResult
from studio.errors import OutputError
from studio.media.probe import probe_video, read_video_metadata
from studio.outputs.render_files import save_render
from studio.stack.schema import RenderSettings, Stack, StackEntry


@pytest.fixture()
def rendered(start_image):
    settings = RenderSettings(
        prompt="a cat / walks: fast", width=32, height=32, frames=9, steps=4, seed=9, fps=8
    )
    request = RenderRequest(
        image=start_image, settings=settings, stack=Stack(entries=[StackEntry.single("a.safetensors")])
    )
    frames = np.random.default_rng(0).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    result = RenderResult(
        settings=settings, latents=torch.zeros(1), frames=frames, experts_per_step=["high", "high", "low", "low"],
        loras=[{"expert": "high", "file": "a.safetensors", "sha256": "0" * 64, "weight": 1.0}],
        timings={"total_s": 1.23456}, model={"name": "demo"},
    )  # fmt: skip
    return request, result


def test_render_is_saved_with_a_unique_name_and_the_same_record_twice(tmp_path, rendered):
    request, result = rendered
    first = save_render(request, result, outputs_dir=tmp_path)
    second = save_render(request, result, outputs_dir=tmp_path)
    assert first.video != second.video and first.video.parent == tmp_path
    assert "a-cat-walks-fast" in first.video.name
    assert probe_video(first.video).frames == 9
    sidecar = json.loads(first.sidecar.read_text())
    assert read_video_metadata(first.video) == sidecar == first.record
    assert sidecar["settings"]["seed"] == 9 and sidecar["stack"]["entries"][0]["name"] == "a"
    assert sidecar["start_image"]["file"] == first.start_image.name and first.start_image.exists()
    assert sidecar["versions"]["torch"] and sidecar["timings"]["total_s"] == 1.2346


def test_an_existing_file_of_the_set_stops_the_save_before_anything_is_written(tmp_path, rendered):
    request, result = rendered
    (tmp_path / "out.json").write_text("mine")
    with pytest.raises(OutputError, match="already exists"):
        save_render(request, result, video_path=tmp_path / "out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    assert (tmp_path / "out.json").read_text() == "mine"


def test_a_failure_after_the_video_removes_what_was_written(tmp_path, rendered):
    request, result = rendered
    cmyk = RenderRequest(
        image=request.image.convert("CMYK"), settings=request.settings
    )  # PNG can't store CMYK
    with pytest.raises(OutputError, match="could not be saved as a PNG"):
        save_render(cmyk, result, video_path=tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []
