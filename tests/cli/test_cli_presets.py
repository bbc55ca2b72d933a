"""The presets and compare commands of the CLI, and `render --preset` with the preset schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from studio.cli.main import main
from studio.media.probe import probe_video
from studio.media.video import write_video
from studio.workflows.presets.schema import load_preset

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def env(tmp_path, lora_dir, monkeypatch):
    monkeypatch.setenv("STUDIO_PRESETS", str(tmp_path / "user-presets"))
    monkeypatch.setenv("STUDIO_LORA_DIRS", str(lora_dir))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "user-presets"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_presets_list_json_prints_name_file_and_entries(env, capsys):
    code, out, _ = run(capsys, "presets", "list", "--json")
    assert code == 0
    listed = {item["name"]: item for item in json.loads(out)}
    speed = listed["Speed: lightx2v 4-step"]
    assert speed["shipped"] and Path(speed["file"]).name == "speed-lightx2v-4-step.json"
    assert [(e["name"], e["weight_high"], e["weight_low"]) for e in speed["entries"]] == [
        ("lightx2v 4-step (speed)", 1.0, 1.0)
    ]
    assert listed["Fast anime"]["slots"] == 1
    code, out, _ = run(capsys, "presets", "list")
    assert code == 0 and "Fast anime  [shipped, fast-anime.json]" in out


def test_import_show_and_export(env, capsys, tmp_path):
    guide = tmp_path / "guide_list.json"
    guide.write_text(
        json.dumps(
            [
                {
                    "path": "speed_high.safetensors",
                    "name": "speed high",
                    "weight": 1.0,
                    "applies_to": "high_noise",
                },
                {
                    "path": "/elsewhere/anime.safetensors",
                    "name": "anime",
                    "weight": 0.8,
                    "applies_to": "both",
                },
            ]
        )
    )
    code, out, err = run(capsys, "presets", "import", str(guide), "--name", "From the guide")
    assert code == 0 and "imported 'From the guide' (guide-list)" in out
    assert "is outside the LoRA folders" in err
    assert (env / "from-the-guide.json").is_file()
    code, _, err = run(capsys, "presets", "import", str(guide), "--name", "From the guide")
    assert code == 2 and err.startswith("error: ") and "already exists" in err and err.count("\n") == 1
    assert run(capsys, "presets", "import", str(guide), "--name", "From the guide", "--overwrite")[0] == 0

    code, out, _ = run(capsys, "presets", "show", "from the guide", "--json")
    assert code == 0 and json.loads(out)["entries"][1]["high"] == {"path": "anime.safetensors"}
    code, out, _ = run(capsys, "presets", "show", "Fast anime")
    assert code == 0 and "Style (0.8 / 0.8) slot: choose a LoRA for this slot" in out

    out_file = tmp_path / "exported.json"
    code, out, _ = run(capsys, "presets", "export", "Fast anime", "--out", str(out_file))
    assert code == 0 and load_preset(out_file).name == "Fast anime"
    code, _, err = run(capsys, "presets", "export", "Fast anime", "--out", str(out_file))
    assert code == 2 and "already exists" in err


def test_a_broken_import_names_the_field_and_writes_nothing(env, capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"name": "Bad", "entries": [{"name": "x", "high": {"path": "../../etc/x.safetensors"}}]})
    )
    code, _, err = run(capsys, "presets", "import", str(bad))
    assert code == 2
    assert (
        err.startswith("error: bad.json: Invalid preset: entries.0.high.path: ")
        and "goes up with '..'" in err
    )
    assert not env.exists() or list(env.iterdir()) == []
    code, _, err = run(capsys, "presets", "show", "no such preset")
    assert code == 2 and err.startswith("error: There is no preset named")


def clip(path, value, metadata=None):
    return write_video(np.full((5, 32, 32, 3), value, np.uint8), path, fps=8, metadata=metadata or {})


def test_compare_writes_the_labelled_side_by_side_file(tmp_path):
    a = clip(tmp_path / "a.mp4", 30)
    b = clip(tmp_path / "b.mp4", 220)
    out = tmp_path / "side.mp4"
    cmd = [sys.executable, "-m", "studio", "compare", str(a), str(b), "--out", str(out),
           "--label", "dark", "--label", "light"]  # fmt: skip
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=environ)
    assert proc.returncode == 0, proc.stderr
    info = probe_video(out)
    assert (info.width, info.height, info.frames) == (68, 32, 5)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=environ)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "already exists" in again.stderr


def test_compare_checks_its_arguments(tmp_path, capsys):
    a = clip(tmp_path / "a.mp4", 30)
    code, _, err = run(
        capsys, "compare", str(a), str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "s.mp4")
    )
    assert code == 2 and "was not found" in err
    code, _, err = run(capsys, "compare", str(a), str(a), "--label", "one", "--out", str(tmp_path / "s.mp4"))
    assert code == 2 and "one --label per video" in err
    code, _, _ = run(capsys, "compare", str(a), str(a), "--out", str(tmp_path / "s.mp4"))
    assert code == 0 and probe_video(tmp_path / "s.mp4").width == 68  # labels from the file names


def test_render_with_a_preset_file(
    tmp_path, studio_cache, demo_model_dir, start_image, make_lora, monkeypatch, capsys
):

    make_lora("style.safetensors")
    preset = (
        tmp_path / "loras" / "tiny.json"
    )  # next to the LoRA: the CLI adds the preset's folder as a LoRA folder
    preset.write_text(
        json.dumps(
            {
                "name": "Tiny",
                "model": "demo",
                "entries": [
                    {
                        "id": "s",
                        "name": "style",
                        "high": {"path": "style.safetensors"},
                        "weight_high": 0.7,
                        "weight_low": 0,
                    },
                    {
                        "id": "slot",
                        "name": "Character",
                        "role": "character",
                        "weight_high": 1.0,
                        "weight_low": 1.0,
                    },
                ],
                "settings": {"width": 32, "height": 32, "frames": 5, "steps": 2, "guidance": 1.0},
            }
        )
    )
    image = tmp_path / "start.png"
    start_image.save(image)
    monkeypatch.setenv("STUDIO_CACHE", str(studio_cache))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "clip.mp4"
    code = main(["render", "--image", str(image), "--prompt", "a cat", "--preset", str(preset), "--seed", "3",
                        "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert (sidecar["settings"]["steps"], sidecar["settings"]["frames"], sidecar["settings"]["guidance"]) == (
        2,
        5,
        1.0,
    )
    assert [(r["expert"], r["weight"]) for r in sidecar["loras"]] == [("high", 0.7)]
    assert [e["name"] for e in sidecar["stack"]["entries"]] == ["style"]  # the open slot is not rendered
