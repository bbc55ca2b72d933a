"""The headless CLI, run as a real subprocess for the render path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studio.cli.common import parse_lora_arg
from studio.cli.main import main
from studio.media.probe import probe_video, read_video_metadata

ROOT = Path(__file__).resolve().parents[2]


def run_cli(args, *, cwd, cache):
    env = {**os.environ, "STUDIO_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240)  # fmt: skip


@pytest.fixture()
def start_png(tmp_path, start_image):
    path = tmp_path / "start.png"
    start_image.save(path)
    return path


def test_cli_renders_a_9_frame_mp4_with_sidecar(tmp_path, studio_cache, demo_model_dir, start_png, make_lora):
    lora = make_lora("style.safetensors")
    out = tmp_path / "renders" / "cat.mp4"
    proc = run_cli(
        ["render", "--image", str(start_png), "--prompt", "a cat walking", "--model", "demo", "--lora",
         f"{lora}:0.8:0.3", "--frames", "9", "--steps", "4", "--width", "32", "--height", "32", "--seed", "11",
         "--dtype", "bf16", "--out", str(out)],
        cwd=tmp_path, cache=studio_cache,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "demo model" in proc.stderr and "step 4/4" in proc.stderr
    info = probe_video(out)
    assert (info.frames, info.width, info.height) == (9, 32, 32)
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["settings"]["seed"] == 11 and sidecar["settings"]["frames"] == 9
    assert sidecar["model"]["name"] == "demo" and sidecar["model"]["dtype"] == "bfloat16"
    assert {(r["expert"], r["weight"]) for r in sidecar["loras"]} == {("high", 0.8), ("low", 0.3)}
    assert all(len(r["sha256"]) == 64 for r in sidecar["loras"])
    assert sidecar["versions"]["diffusers"] and "denoise_s" in sidecar["timings"]
    assert read_video_metadata(out) == sidecar
    assert out.with_suffix(".start.png").exists()

    again = run_cli(["render", "--image", str(start_png), "--prompt", "x", "--out", str(out)],
                    cwd=tmp_path, cache=studio_cache)  # fmt: skip
    assert again.returncode == 2 and "already exists" in again.stderr
    assert read_video_metadata(out) == sidecar  # untouched


def test_cli_demo_model_prints_its_folder(tmp_path, studio_cache, demo_model_dir):
    proc = run_cli(["demo-model"], cwd=tmp_path, cache=studio_cache)
    assert proc.returncode == 0
    assert Path(proc.stdout.strip()) == demo_model_dir.resolve()
    assert (Path(proc.stdout.strip()) / "transformer" / "config.json").exists()


def exit_code(args) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # argparse errors
        return exc.code


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["render", "--prompt", "x", "--out", "o.mp4"], "required: --image"),
        (["render", "--image", "missing.png", "--prompt", "x", "--out", "o.mp4"], "was not found"),
        (["render", "--image", "{img}", "--prompt", "x", "--frames", "10", "--out", "o.mp4"], "4k+1"),
        (
            ["render", "--image", "{img}", "--prompt", "x", "--width", "50", "--out", "o.mp4"],
            "multiple of 16",
        ),
        (["render", "--image", "{img}", "--prompt", "x", "--out", "o.avi"], "must end in .mp4"),
        (
            ["render", "--image", "{img}", "--prompt", "x", "--lora", "nope.safetensors", "--out", "o.mp4"],
            "does not exist",
        ),
        (
            ["render", "--image", "{img}", "--prompt", "x", "--model", "wan9", "--out", "o.mp4"],
            "Unknown model",
        ),
        (
            ["render", "--image", "{img}", "--prompt", "x", "--frames", "abc", "--out", "o.mp4"],
            "invalid int value",
        ),
        (
            ["render", "--image", "{img}", "--prompt", "x", "--dtype", "fp64", "--out", "o.mp4"],
            "Unknown dtype",
        ),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    args, words, tmp_path, start_png, studio_cache, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STUDIO_CACHE", str(studio_cache))
    code = exit_code([a.replace("{img}", str(start_png)) for a in args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert words in err and err.startswith("error:")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("o.*"))


def test_lora_argument_forms():
    assert parse_lora_arg("a.safetensors") == (Path("a.safetensors"), 1.0, 1.0)
    assert parse_lora_arg("a.safetensors:0.5") == (Path("a.safetensors"), 0.5, 0.5)
    assert parse_lora_arg("a.safetensors:3:1.5") == (Path("a.safetensors"), 3.0, 1.5)
    assert parse_lora_arg("dir:x/a.safetensors:1:0") == (Path("dir:x/a.safetensors"), 1.0, 0.0)


@pytest.mark.slow  # a CPU inductor compile of the demo block (shared with tests/engine/test_compile.py's cache)
def test_cli_compiled_render_says_it_compiled(tmp_path, studio_cache, demo_model_dir, start_png, make_lora):
    lora = make_lora("style.safetensors")
    out = tmp_path / "compiled.mp4"
    proc = run_cli(
        ["render", "--image", str(start_png), "--prompt", "a cat walking", "--model", "demo", "--lora",
         f"{lora}:1.0:0.5", "--frames", "5", "--steps", "4", "--width", "32", "--height", "32", "--seed", "3",
         "--compile", "--compile-lora-rank", "16", "--out", str(out)],
        cwd=tmp_path, cache=studio_cache,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"]["compiled"] is True
    assert any("Compiled the transformer blocks" in n for n in sidecar["notices"])
    assert "note: Compiled the transformer blocks" in proc.stderr


def test_cli_refuses_an_empty_lora_room(tmp_path, studio_cache, start_png):
    proc = run_cli(
        ["render", "--image", str(start_png), "--prompt", "x", "--model", "demo", "--compile",
         "--compile-lora-rank", "0", "--out", str(tmp_path / "x.mp4")],
        cwd=tmp_path, cache=studio_cache,
    )  # fmt: skip
    assert proc.returncode == 2 and "LoRA room of compiled mode must be 1 to 4096 rows" in proc.stderr
    assert not (tmp_path / "x.mp4").exists()
