"""Render history: the gallery from the sidecars, thumbnails, and restoring a render from its
sidecar or from an MP4's embedded metadata (with the LoRAs missing on this machine)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from studio.engine.manager import RenderRequest, RenderResult
from studio.errors import ValidationError
from studio.media.images import image_sha256
from studio.media.video import write_video
from studio.outputs.render_files import save_render
from studio.stack.schema import LoraSource, RenderSettings, Stack, StackEntry
from studio.workflows.history import History, load_record


def fake_render(start_image, outputs, stack: Stack, *, seed=11, steps=4, prompt="a cat walks"):
    """Save a render the way the studio does (real MP4 + sidecar + start image), without the model."""
    settings = RenderSettings(
        prompt=prompt, width=32, height=32, frames=9, steps=steps, guidance=1.0, seed=seed, fps=8
    )
    frames = np.random.default_rng(seed).integers(0, 255, (9, 32, 32, 3), dtype=np.uint8)
    loras = []
    for entry in stack.active():
        for expert in entry.applies_to():
            loras.append({"expert": expert, "file": str(entry.source(expert).path), "sha256": "0" * 64,
                          "weight": entry.weight(expert)})  # fmt: skip
    result = RenderResult(
        settings=settings, latents=torch.zeros(1), frames=frames, experts_per_step=["high", "low"] * 2,
        loras=loras, timings={"total_s": 2.5}, model={"name": "demo", "label": "Demo model"},
    )  # fmt: skip
    request = RenderRequest(image=start_image, settings=settings, stack=stack)
    return save_render(request, result, outputs_dir=outputs)


@pytest.fixture()
def style_stack(make_lora):
    path = make_lora("style.safetensors")
    return Stack(entries=[StackEntry.single(path, 0.8, 0.3, name="style")])


def test_entries_are_listed_newest_first_with_a_cached_thumbnail(tmp_path, start_image, style_stack):
    outputs = tmp_path / "outputs"
    first = fake_render(start_image, outputs, style_stack, seed=1)
    second = fake_render(start_image, outputs, Stack(), seed=2)
    # Make the order unambiguous (both were saved within the same second).
    for saved, created in ((first, "2025-01-01T10:00:00+00:00"), (second, "2025-01-02T10:00:00+00:00")):
        record = json.loads(saved.sidecar.read_text())
        record["created"] = created
        saved.sidecar.write_text(json.dumps(record))
    (outputs / "notes.json").write_text('{"not": "a render"}')  # ignored
    history = History(outputs, [])
    entries = history.entries()
    assert [e.video for e in entries] == [second.video, first.video]
    newest, oldest = entries
    assert (newest.seed, newest.stack_summary, oldest.stack_summary) == (2, "no LoRAs", "style (0.8/0.3)")
    assert newest.model == "Demo model" and newest.render_seconds == 2.5 and newest.video_seconds == 9 / 8
    assert newest.start_image == second.start_image
    assert newest.thumbnail == second.video.with_suffix(".thumb.png") and newest.thumbnail.is_file()
    caption = oldest.caption()
    assert "Demo model" in caption and "style (0.8/0.3)" in caption and "seed 1" in caption
    made = newest.thumbnail.stat().st_mtime_ns
    assert history.entries()[0].thumbnail.stat().st_mtime_ns == made  # extracted once, then cached
    assert [p for p in outputs.iterdir() if ".partial-" in p.name] == []
    assert [caption for _, caption in history.gallery()] == [e.caption() for e in entries]


def test_restore_from_the_sidecar_gives_image_prompt_settings_and_stack(
    tmp_path, start_image, style_stack, lora_dir
):
    saved = fake_render(start_image, tmp_path / "outputs", style_stack, seed=123, steps=6)
    history = History(tmp_path / "outputs", [lora_dir])
    for path in (saved.sidecar, saved.video):  # the sidecar, or the MP4 with its sidecar beside it
        restored = history.restore(path)
        assert restored.source == "sidecar"
        assert restored.settings.model_dump(mode="json") == saved.record["settings"]
        assert (restored.settings.seed, restored.settings.steps, restored.settings.prompt) == (
            123,
            6,
            "a cat walks",
        )
        assert restored.stack == style_stack
        assert image_sha256(restored.image) == image_sha256(start_image)
        assert restored.missing_loras == [] and restored.model == "demo"
        assert "seed 123" in restored.message()


def test_a_dropped_mp4_alone_restores_from_its_metadata_and_names_missing_loras(
    tmp_path, start_image, style_stack, lora_dir
):
    saved = fake_render(start_image, tmp_path / "outputs", style_stack, seed=7)
    dropped = tmp_path / "upload" / "clip.mp4"  # e.g. Gradio's upload folder: no sidecar, no PNG
    dropped.parent.mkdir()
    shutil.copy(saved.video, dropped)
    (lora_dir / "style.safetensors").unlink()  # the LoRA is not on "this machine"
    restored = History(tmp_path / "outputs", [lora_dir]).restore(dropped)
    assert restored.source == "video"
    assert restored.record == json.loads(saved.sidecar.read_text())
    assert restored.settings.seed == 7 and restored.stack == style_stack
    assert restored.missing_loras == [f"style ({style_stack.entries[0].high.path})"]
    assert restored.image is not None and restored.image.size == (32, 32)  # the video's first frame
    assert any("first frame is used instead" in note for note in restored.notes)
    assert "Missing on this machine: style" in restored.message()


def test_a_lora_moved_to_another_folder_is_found_by_name(tmp_path, start_image, style_stack, lora_dir):
    saved = fake_render(start_image, tmp_path / "outputs", style_stack)
    elsewhere = tmp_path / "other-machine-loras"
    elsewhere.mkdir()
    shutil.move(lora_dir / "style.safetensors", elsewhere / "style.safetensors")
    restored = History(tmp_path / "outputs", [elsewhere]).restore(saved.video)
    assert restored.missing_loras == []
    entry = restored.stack.entries[0]
    assert entry.high.path == entry.low.path == str(elsewhere / "style.safetensors")
    assert any("was found at" in note for note in restored.notes)
    # The recorded sha256 ("0"*64 in these fake records) differs from the real file: said so.
    assert any("its sha256 differs" in note for note in restored.notes)


def test_hub_loras_not_downloaded_are_missing(tmp_path, start_image):
    hub = StackEntry(
        name="speed", high=LoraSource(repo="lightx2v/Wan2.2-Distill-Loras", file="not-here.safetensors")
    )
    saved = fake_render(start_image, tmp_path / "outputs", Stack(entries=[hub]))
    restored = History(tmp_path / "outputs", []).restore(saved.sidecar)
    assert restored.missing_loras == ["speed (lightx2v/Wan2.2-Distill-Loras/not-here.safetensors)"]


def test_files_that_are_not_studio_renders_are_refused(tmp_path, start_image):
    other = write_video(np.zeros((3, 16, 16, 3), np.uint8), tmp_path / "other.mp4", fps=8, metadata={"x": 1})
    history = History(tmp_path, [])
    with pytest.raises(ValidationError, match="holds no studio render settings"):
        history.restore(other)
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(ValidationError, match=r"not valid JSON \(line 1"):
        history.restore(tmp_path / "broken.json")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValidationError, match="neither a video nor a settings file"):
        history.restore(tmp_path / "notes.txt")
    newer = {"kind": "wan-lora-studio/render", "version": 99}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(ValidationError, match="newer version of the studio"):
        load_record(tmp_path / "newer.json")


def test_a_start_image_name_that_leaves_the_folder_is_ignored(tmp_path, start_image, style_stack):
    saved = fake_render(start_image, tmp_path / "outputs", style_stack)
    secret = tmp_path / "secret.png"
    start_image.rotate(90).save(secret)
    record = json.loads(saved.sidecar.read_text())
    record["start_image"]["file"] = "../secret.png"
    saved.sidecar.write_text(json.dumps(record))
    restored = History(tmp_path / "outputs", []).restore(saved.sidecar)
    assert restored.image.size == (32, 32)  # the video's first frame, not the rotated secret.png
    assert any("first frame is used instead" in note for note in restored.notes)
