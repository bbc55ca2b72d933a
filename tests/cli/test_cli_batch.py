"""``python -m studio batch`` and ``grid``: exit statuses, progress lines, the joined video and the grid video."""

from __future__ import annotations

import json

import pytest

from studio.cli.main import main
from studio.media.probe import probe_video, read_video_metadata

TINY = {"width": 32, "height": 32, "frames": 5, "steps": 1, "fps": 8}


@pytest.fixture()
def here(tmp_path, monkeypatch, studio_cache, demo_model_dir):
    monkeypatch.setenv("STUDIO_CACHE", str(studio_cache))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def scene_file(folder, scenes, start_image, defaults=TINY):
    start_image.save(folder / "start.png")
    path = folder / "scenes.json"
    doc = {
        "kind": "wan-lora-studio/scenes",
        "version": 1,
        "model": "demo",
        "defaults": defaults,
        "scenes": scenes,
    }
    path.write_text(json.dumps(doc))
    return path


def test_batch_renders_every_scene_and_joins_them(here, start_image, make_lora, lora_dir, capsys):
    make_lora("style.safetensors")
    scenes = [
        {
            "name": "a",
            "image": "start.png",
            "prompt": "one",
            "seed": 1,
            "loras": [{"path": "style.safetensors"}],
        },
        {"name": "b", "image": "start.png", "prompt": "two", "seed": 2, "settings": {"frames": 1}},
    ]
    path = scene_file(here, scenes, start_image)
    joined = here / "all.mp4"
    args = ["batch", str(path), "--out", "out", "--lora-dir", str(lora_dir), "--concat", str(joined)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[1/2] a: rendering on this process · 0 done, 0 failed of 2" in captured.err
    assert (
        "[2/2] b: done in" in captured.err and "(0 LoRA files read) · 2 done, 0 failed of 2" in captured.err
    )
    assert "2 of 2 scenes done, 0 failed" in captured.out
    assert probe_video(joined).frames == 6
    parts = json.loads(joined.with_suffix(".json").read_text())
    assert [(p["scene"], p["first_frame"], p["frames"], p["seed"]) for p in parts["parts"]] == [
        ("a", 0, 5, 1),
        ("b", 5, 1, 2),
    ]
    assert parts["parts"][1]["start_s"] == 5 / 8 and parts["missing"] == []
    assert read_video_metadata(joined)["parts"][0]["video"] == "01-a.mp4"
    assert main(args[:-2]) == 0  # again: nothing left to render
    assert ": rendering" not in capsys.readouterr().err


def test_a_bad_scene_file_exits_2_naming_the_scene(here, start_image, capsys):
    path = scene_file(here, [{"name": "a", "image": "start.png", "setings": {}}], start_image)
    assert main(["batch", str(path), "--out", "out"]) == 2
    assert "scene 1 ('a'): setings: is not a known field" in capsys.readouterr().err
    assert not (here / "out").exists()


def test_a_failed_scene_exits_1_and_is_listed(here, start_image, capsys):
    scenes = [
        {"name": "ok", "image": "start.png", "seed": 1},
        {"name": "broken", "image": "start.png", "loras": [{"path": "missing.safetensors", "name": "Gone"}]},
    ]
    assert main(["batch", str(scene_file(here, scenes, start_image)), "--out", "out"]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 scenes done, 1 failed" in out and "failed: broken: Gone: " in out


def test_grid_renders_the_cells_and_one_video(here, start_image, make_lora, capsys):
    lora = make_lora("style.safetensors")
    start_image.save(here / "start.png")
    args = ["grid", "--image", "start.png", "--prompt", "grid", "--model", "demo", "--lora", str(lora),
            "--rows", "style=0,1", "--cols", "seed=3,4", "--out", "grid", "--width", "32", "--height", "32",
            "--frames", "1", "--steps", "1"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "4 of 4 scenes done" in out and "wrote grid/grid.mp4 (2 × 2 cells" in out
    meta = read_video_metadata(here / "grid" / "grid.mp4")
    assert meta["rows"] == {"title": "style weight (both experts)", "labels": ["0", "1"]}
    assert meta["columns"] == {"title": "seed", "labels": ["3", "4"]}
    assert main([*args[:-8], "--rows", "nope=1", "--cols", "seed=1", *args[-8:]]) == 2
    assert "There is no LoRA 'nope' in the stack (style)" in capsys.readouterr().err
