"""Comparisons: the one-click renders share seed and image (identical latents for identical stacks,
different ones without a LoRA), the table of differences, and the labelled side-by-side MP4."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from studio.engine.manager import PipelineManager, RenderRequest
from studio.errors import ValidationError
from studio.media.probe import probe_video, read_frames, read_video_metadata
from studio.media.video import write_video
from studio.service import Studio
from studio.stack.schema import LoraSource, RenderSettings, Stack, StackEntry
from studio.workflows.compare import (
    comparison_requests,
    comparison_view,
    default_labels,
    diff_settings,
    run_comparison,
    side_by_side,
)

TINY = {"width": 32, "height": 32, "frames": 5, "steps": 2, "guidance": 1.0, "fps": 8}


@pytest.fixture()
def two_lora_stack(make_lora) -> Stack:
    style = make_lora("style.safetensors", seed=1, scale=0.5)
    motion = make_lora("motion.safetensors", seed=2, scale=0.5)
    return Stack(
        entries=[
            StackEntry.single(style, 1.0, 1.0, name="style", id="style"),
            StackEntry.single(motion, 0.8, 0.6, name="motion", id="motion"),
        ]
    )


def test_comparison_requests_share_one_seed_and_image(start_image, two_lora_stack):
    request = RenderRequest(
        image=start_image, settings=RenderSettings(prompt="x", **TINY), stack=two_lora_stack
    )
    baseline = comparison_requests(request, "baseline")
    assert [label for label, _ in baseline] == ["with the stack", "baseline (no LoRAs)"]
    loo = comparison_requests(request, "leave-one-out")
    assert [label for label, _ in loo] == ["full stack", "without style", "without motion"]
    assert [[e.id for e in r.stack.entries] for _, r in loo] == [["style", "motion"], ["motion"], ["style"]]
    sweep = comparison_requests(request, "sweep", entry_id="motion", expert="low", values=[0, 0.5, 1.0])
    assert [label for label, _ in sweep] == ["motion low 0", "motion low 0.5", "motion low 1"]
    assert [r.stack.entries[1].weight_low for _, r in sweep] == [0.0, 0.5, 1.0]
    assert {r.stack.entries[1].weight_high for _, r in sweep} == {0.8}
    for pairs in (baseline, loo, sweep):
        seeds = {r.settings.seed for _, r in pairs}
        assert len(seeds) == 1 and None not in seeds  # one seed drawn for all
        assert all(r.image is start_image for _, r in pairs)
        assert all(r.settings.model_copy(update={"seed": None}) == request.settings for _, r in pairs)


def test_comparison_requests_refuse_what_cannot_be_compared(start_image, two_lora_stack):
    empty = RenderRequest(image=start_image, settings=RenderSettings(**TINY, seed=1))
    with pytest.raises(ValidationError, match="no active LoRA"):
        comparison_requests(empty, "baseline")
    with pytest.raises(ValidationError, match="at least one active LoRA"):
        comparison_requests(empty, "leave-one-out")
    request = RenderRequest(image=start_image, settings=RenderSettings(**TINY, seed=1), stack=two_lora_stack)
    low_only = two_lora_stack.updated("motion", high=None, weight_high=0.0)
    with pytest.raises(ValidationError, match="has no high-noise file"):
        comparison_requests(
            RenderRequest(image=start_image, settings=request.settings, stack=low_only),
            "sweep",
            "motion",
            "high",
            [1],
        )
    with pytest.raises(ValidationError, match="outside the allowed weights"):
        comparison_requests(request, "sweep", "style", "both", [99])
    with pytest.raises(ValidationError, match="at least one weight"):
        comparison_requests(request, "sweep", "style", "both", [])
    with pytest.raises(ValidationError, match="no longer in the stack"):
        comparison_requests(request, "sweep", "gone", "both", [1])
    with pytest.raises(ValidationError, match="Unknown comparison"):
        comparison_requests(request, "everything")  # type: ignore[arg-type]


def test_comparison_renders_use_the_same_seed_and_only_the_stack_differs(
    settings, demo_model_dir, start_image, two_lora_stack
):
    manager = PipelineManager(settings, device="cpu")
    request = RenderRequest(
        image=start_image, settings=RenderSettings(prompt="a cat", **TINY), stack=two_lora_stack, decode=False
    )
    pairs = comparison_requests(request, "leave-one-out")
    results = {label: manager.render(r) for label, r in pairs}
    assert len({res.settings.seed for res in results.values()}) == 1
    seed = results["full stack"].settings.seed
    again = manager.render(
        RenderRequest(
            image=start_image,
            settings=RenderSettings(prompt="a cat", seed=seed, **TINY),
            stack=two_lora_stack,
            decode=False,
        )
    )
    assert torch.equal(again.latents, results["full stack"].latents)  # same seed, same stack: identical
    for label in ("without style", "without motion"):
        assert not torch.allclose(results[label].latents, results["full stack"].latents, atol=1e-5), label


def test_run_comparison_saves_renders_and_gives_the_view(
    settings, demo_model_dir, start_image, two_lora_stack
):
    studio = Studio(settings, PipelineManager(settings, device="cpu"))
    request = RenderRequest(
        image=start_image, settings=RenderSettings(prompt="a cat", **TINY), stack=two_lora_stack
    )
    view = run_comparison(studio, comparison_requests(request, "baseline"))
    assert view.labels == ["with the stack", "baseline (no LoRAs)"]
    assert all(v.is_file() and v.parent == settings.outputs_dir for v in view.videos)
    fields = [row.field for row in view.rows]
    assert fields == ["LoRA style (high / low)", "LoRA motion (high / low)"]  # the seed is the same
    assert view.table()[0] == ["LoRA style (high / low)", "1 / 1", "—"]
    out = side_by_side(view.videos, view.labels, settings.outputs_dir / "side.mp4")
    info = probe_video(out)
    assert (info.width, info.height, info.frames) == (32 + 4 + 32, 32, 5)


def record(steps=4, weight=0.8, seed=1, prompt="a cat"):
    return {
        "kind": "wan-lora-studio/render",
        "version": 1,
        "model": {"name": "demo", "label": "Demo model"},
        "settings": RenderSettings(
            prompt=prompt, steps=steps, seed=seed, **{k: v for k, v in TINY.items() if k != "steps"}
        ).model_dump(mode="json"),
        "stack": Stack(
            entries=[StackEntry.single("/l/style.safetensors", weight, 0.3, name="style", id="s")]
        ).model_dump(mode="json"),
        "fused": False,
        "start_image": {"file": "x.png", "sha256": "ab" * 32},
    }


def test_diff_settings_lists_only_what_differs():
    rows = diff_settings([record(), record(steps=8, weight=0.5)])
    assert [(r.field, r.values) for r in rows] == [
        ("steps", ["4", "8"]),
        ("LoRA style (high / low)", ["0.8 / 0.3", "0.5 / 0.3"]),
    ]
    assert diff_settings([record(), record()]) == []
    assert len(diff_settings([record(), record()], all_rows=True)) > 10
    third = record()
    third["stack"]["entries"] = []
    assert diff_settings([record(), third])[-1].values == ["0.8 / 0.3", "—"]
    assert default_labels([record(), record(steps=8, weight=0.5)]) == [
        "steps 4 · LoRA style 0.8 / 0.3",
        "steps 8 · LoRA style 0.5 / 0.3",
    ]
    hub = record()
    hub["stack"]["entries"][0]["high"] = LoraSource(repo="o/r", file="f.safetensors").model_dump()
    assert len(diff_settings([record(), hub])) == 2  # another file under the same name is another LoRA


def solid(path, color, frames, width, height, metadata=None):
    data = np.zeros((frames, height, width, 3), np.uint8)
    data[:] = color
    return write_video(data, path, fps=8, metadata=metadata or {})


def test_side_by_side_scales_labels_and_holds_the_last_frame(tmp_path):
    a = solid(tmp_path / "a.mp4", (200, 40, 40), 9, 32, 32)
    b = solid(tmp_path / "b.mp4", (40, 200, 40), 5, 48, 64)
    c = solid(tmp_path / "c.mp4", (40, 40, 200), 13, 64, 32)
    out = side_by_side([a, b, c], ["red", "green", "blue"], tmp_path / "side.mp4")
    info = probe_video(out)
    # Common height: the tallest (64); widths 64, 48, 128; two 4-pixel gaps.
    assert (info.width, info.height, info.frames, info.fps) == (64 + 4 + 48 + 4 + 128, 64, 13, 8.0)
    frames = read_frames(out)
    last = frames[-1].astype(int)
    assert (
        np.abs(last[40:, 10:60].mean(axis=(0, 1)) - (200, 40, 40)).max() < 12
    )  # red held after its 9 frames
    assert np.abs(last[40:, 72:112].mean(axis=(0, 1)) - (40, 200, 40)).max() < 12  # green held after 5
    # A dark label box sits over the top-left corner of each panel; the rest of the panel is untouched.
    for x0, color in ((0, (200, 40, 40)), (68, (40, 200, 40)), (120, (40, 40, 200))):
        labelled = np.abs(frames[0, 2:10, x0 + 2 : x0 + 14].astype(int) - color).mean()
        bare = np.abs(frames[0, 40:60, x0 + 2 : x0 + 14].astype(int) - color).mean()
        assert labelled > 40 and bare < 12, (x0, labelled, bare)
    assert read_video_metadata(out)["labels"] == ["red", "green", "blue"]


def test_side_by_side_refuses_bad_requests_and_never_overwrites(tmp_path):
    a = solid(tmp_path / "a.mp4", (10, 10, 10), 3, 16, 16)
    b = solid(tmp_path / "b.mp4", (90, 90, 90), 3, 16, 16)
    with pytest.raises(ValidationError, match="one label per video"):
        side_by_side([a, b], ["only one"], tmp_path / "s.mp4")
    with pytest.raises(ValidationError, match="between 2 and 8 videos"):
        side_by_side([a], ["a"], tmp_path / "s.mp4")
    with pytest.raises(ValidationError, match=r"must end in \.mp4"):
        side_by_side([a, b], ["a", "b"], tmp_path / "s.gif")
    with pytest.raises(ValidationError, match="already exists"):
        side_by_side([a, b], ["a", "b"], a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]


def test_comparison_view_reads_the_embedded_records(tmp_path):
    a = solid(tmp_path / "a.mp4", (10, 10, 10), 3, 16, 16, record(steps=4))
    b = solid(tmp_path / "b.mp4", (90, 90, 90), 3, 16, 16, record(steps=8))
    view = comparison_view([a, b])
    assert view.labels == ["steps 4", "steps 8"] and [r.field for r in view.rows] == ["steps"]
    assert json.dumps(view.table())
    with pytest.raises(ValidationError, match="between 2 and 8"):
        comparison_view([a])
