"""Hub repo ids as LoRA paths on the command line and in the API: the guide's lists import (pinned) and export
back, ``render --lora REPO:HIGH:LOW`` picks the file per expert, the ``/render`` handler resolves a stack's
repo paths. The guide's repos are served by the loopback fake Hub."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fakehub.guide_repos import LIGHTX2V, LIGHTX2V_FILES, REWARD, REWARD_FILES

from studio.cli.main import main
from studio.loras.synthetic import write_layout
from studio.models.demo import TRANSFORMER_CONFIG
from studio.workflows.presets.schema import load_preset

I2V_HIGH, I2V_LOW = LIGHTX2V_FILES[("i2v", "high")], LIGHTX2V_FILES[("i2v", "low")]
HPS_LOW, MPS_LOW = REWARD_FILES[("hps", "low")], REWARD_FILES[("mps", "low")]
# The guide's "Fast Anime Production" stack, as its list form writes it.
FAST_ANIME = [
    {"path": LIGHTX2V, "name": "lightx2v_high", "weight": 1.0, "applies_to": "high_noise"},
    {"path": LIGHTX2V, "name": "lightx2v_low", "weight": 1.0, "applies_to": "low_noise"},
    {"path": "anime_style.safetensors", "name": "anime_style", "weight": 0.8, "applies_to": "both"},
    {"path": REWARD, "name": "hpsv2_quality", "weight": 0.3, "applies_to": "low_noise"},
]


@pytest.fixture()
def env(tmp_path, guide_hub, demo_model_dir, monkeypatch):
    loras = tmp_path / "loras"
    write_layout(loras / "anime_style.safetensors", dict(TRANSFORMER_CONFIG), "original", seed=3)
    cache = tmp_path / "studio-cache"
    cache.mkdir()
    (cache / demo_model_dir.name).symlink_to(demo_model_dir)
    monkeypatch.setenv("STUDIO_PRESETS", str(tmp_path / "user-presets"))
    monkeypatch.setenv("STUDIO_LORA_DIRS", str(loras))
    monkeypatch.setenv("STUDIO_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    return guide_hub


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def sha(hub, repo, file) -> str:
    return hashlib.sha256(hub.guide_files[repo][file]).hexdigest()


def test_the_guides_stack_imports_pinned_and_exports_back(env, capsys, tmp_path):
    hub = env
    listing = tmp_path / "fast_anime_production.json"
    listing.write_text(json.dumps(FAST_ANIME))
    code, out, err = run(capsys, "presets", "import", str(listing))
    assert code == 0, err
    assert "imported 'fast anime production' (guide-list)" in out
    preset = load_preset(tmp_path / "user-presets" / "fast-anime-production.json")
    high, low, anime, quality = preset.entries
    repo_sha = hub.repo(LIGHTX2V).sha
    assert (high.high.repo, high.high.file, high.high.revision) == (LIGHTX2V, I2V_HIGH, repo_sha)
    assert high.high.sha256 == sha(hub, LIGHTX2V, I2V_HIGH) and high.low is None and high.weight_low == 0
    assert low.low.file == I2V_LOW and low.high is None
    assert anime.high.path == anime.low.path == "anime_style.safetensors"
    assert quality.low.file == HPS_LOW and quality.weight_low == 0.3  # the name picked HPS2.1, not MPS
    assert not list(hub.env.cache_dir.rglob(I2V_HIGH))  # pinned (headers read remotely), not downloaded

    exported = tmp_path / "back.json"
    code, out, err = run(
        capsys, "presets", "export", "fast anime production", "--out", str(exported), "--format", "guide"
    )
    assert code == 0, err
    assert json.loads(exported.read_text()) == [
        {
            "path": f"{LIGHTX2V}/{I2V_HIGH}",
            "name": "lightx2v_high",
            "weight": 1.0,
            "applies_to": "high_noise",
        },
        {"path": f"{LIGHTX2V}/{I2V_LOW}", "name": "lightx2v_low", "weight": 1.0, "applies_to": "low_noise"},
        {"path": "anime_style.safetensors", "name": "anime_style", "weight": 0.8, "applies_to": "both"},
        {"path": f"{REWARD}/{HPS_LOW}", "name": "hpsv2_quality", "weight": 0.3, "applies_to": "low_noise"},
    ]
    assert "no place for a commit" in err
    code, _, err = run(capsys, "presets", "import", str(exported), "--name", "Again")
    assert code == 0, err
    again = load_preset(tmp_path / "user-presets" / "again.json")
    assert [e.model_dump() for e in again.entries] == [
        {**e.model_dump(), "id": a.id} for e, a in zip(preset.entries, again.entries, strict=True)
    ]


def test_an_ambiguous_or_placeholder_list_is_refused_and_writes_nothing(env, capsys, tmp_path):
    hub = env
    for items, expected in (
        ([{"path": REWARD, "name": "quality", "applies_to": "low_noise"}], f"2 files of {REWARD} fit"),
        ([{"path": "lightx2v/...", "applies_to": "high_noise"}], "is a placeholder, not a LoRA"),
    ):
        listing = tmp_path / "list.json"
        listing.write_text(json.dumps(items))
        hub.clear_requests()
        code, _, err = run(capsys, "presets", "import", str(listing))
        assert (
            code == 2 and err.startswith("error: list.json: Invalid LoRA list: [0].path:") and expected in err
        )
        assert not (tmp_path / "user-presets" / "list.json").exists()
    assert hub.requests == []  # the placeholder asked nothing


def test_render_lora_takes_a_repo(env, capsys, tmp_path, start_image):
    hub = env
    image = tmp_path / "start.png"
    start_image.save(image)
    out = tmp_path / "clip.mp4"
    tiny = ["--width", "32", "--height", "32", "--frames", "5", "--steps", "2", "--seed", "1"]
    code, _, err = run(
        capsys, "render", "--image", str(image), "--prompt", "a cat", "--model", "demo",
        "--lora", f"{LIGHTX2V}:1:0.5", "--lora", f"{REWARD}/{MPS_LOW}:0:0.4", *tiny, "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(out.with_suffix(".json").read_text())
    assert sorted((r["expert"], Path(r["file"]).name, r["weight"]) for r in record["loras"]) == [
        ("high", I2V_HIGH, 1.0),
        ("low", MPS_LOW, 0.4),
        ("low", I2V_LOW, 0.5),
    ]
    speed = record["stack"]["entries"][0]
    assert speed["high"]["revision"] == hub.repo(LIGHTX2V).sha and speed["high"]["sha256"] == sha(
        hub, LIGHTX2V, I2V_HIGH
    )

    for lora, expected in (
        (f"{REWARD}:0:1", f"2 files of {REWARD} fit the low-noise expert"),
        ("lightx2v/...:1", "is a placeholder, not a LoRA"),
        ("gone.safetensors:1", "the file gone.safetensors does not exist (and it is not a Hub repo"),
    ):
        code, _, err = run(
            capsys, "render", "--image", str(image), "--prompt", "a cat", "--model", "demo", "--lora", lora,
            *tiny, "--out", str(tmp_path / "nope.mp4"),
        )  # fmt: skip
        assert code == 2 and err.startswith("error: ") and expected in err, err
        assert not (tmp_path / "nope.mp4").exists()


def test_the_render_api_resolves_a_stacks_repo_paths(env, tmp_path, start_image):
    from studio.engine.manager import PipelineManager
    from studio.service import Studio
    from studio.settings import Settings
    from studio.ui import handlers as h

    image = tmp_path / "start.png"
    start_image.save(image)
    studio = Studio(Settings.from_env(model="demo", outputs_dir=tmp_path / "out"))
    studio.manager = PipelineManager(studio.settings, device="cpu")
    stack = {
        "entries": [
            {"name": "speed", "high": {"path": LIGHTX2V}, "low": {"path": LIGHTX2V}},
            {"name": "hpsv2_quality", "low": {"path": REWARD}, "weight_high": 0, "weight_low": 0.5},
        ]
    }
    settings_json = json.dumps({"width": 32, "height": 32, "frames": 5, "steps": 2, "seed": 2})
    video, record = h.render_api(
        studio, None, str(image), "a cat", settings_json, json.dumps(stack), lambda *a, **k: None
    )
    assert Path(video).is_file()
    assert sorted((r["expert"], Path(r["file"]).name) for r in record["loras"]) == [
        ("high", I2V_HIGH),
        ("low", HPS_LOW),
        ("low", I2V_LOW),
    ]  # (sorted: "Wan2.2-Fun…" before "wan2.2_i2v…")
    import gradio as gr

    bad = {"entries": [{"name": "quality", "low": {"path": REWARD}, "weight_high": 0}]}
    with pytest.raises(gr.Error, match=f"quality: 2 files of {REWARD} fit"):
        h.render_api(studio, None, str(image), "a cat", settings_json, json.dumps(bad), lambda *a, **k: None)
