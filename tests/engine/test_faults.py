"""Faults during a render: each gives one clear error, leaves no output file, and the next render works."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from studio.errors import LoraFileError, OutOfMemory
from studio.service import Studio
from studio.stack.schema import RenderSettings, Stack, StackEntry

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = RenderSettings(prompt="x", width=32, height=32, frames=5, steps=4, seed=1)


@pytest.fixture()
def studio(settings):
    studio = Studio(settings)
    studio.manager.load_model("demo")
    return studio


def oom_at(point: str, times: int = 1):
    remaining = {"n": times}

    def hook(where: str) -> None:
        if where == point and remaining["n"] > 0:
            remaining["n"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return hook


@pytest.mark.parametrize("point", ["step", "lora_load", "decode"])
def test_out_of_memory_is_caught_and_the_next_render_works(studio, start_image, make_lora, point):
    stack = Stack(entries=[StackEntry.single(make_lora(), 0.7, 0.4)])
    pipe = studio.manager.pipe
    studio.manager.fault_hook = oom_at(point)
    with pytest.raises(
        OutOfMemory, match=r"ran out of memory rendering 5 frames at 32×32\. Try fewer frames"
    ):
        studio.render(start_image, SETTINGS, stack)
    assert not list(studio.settings.outputs_dir.glob("*"))
    saved = studio.render(start_image, SETTINGS, stack)
    assert saved.video.exists() and studio.manager.pipe is pipe and studio.manager.model_loads == 1
    assert sorted(r["weight"] for r in saved.record["loras"]) == [0.4, 0.7]


def test_oom_while_loading_leaves_no_half_loaded_adapter(studio, start_image, make_lora):
    a, b = make_lora("a.safetensors", seed=1), make_lora("b.safetensors", seed=2)
    studio.render(start_image, SETTINGS, Stack(entries=[StackEntry.single(a)]))
    studio.manager.fault_hook = oom_at("lora_load")
    with pytest.raises(OutOfMemory):
        studio.manager.apply_stack(Stack(entries=[StackEntry.single(a), StackEntry.single(b)]))
    transformer = studio.manager.pipe.transformer
    assert set(transformer.peft_config) == {
        key[1] for key in studio.manager._loras if key[0] == "transformer"
    }
    studio.manager.apply_stack(Stack(entries=[StackEntry.single(a), StackEntry.single(b)]))
    assert len(studio.manager.loaded_adapters()["transformer"]) == 2


def test_a_lora_deleted_between_adding_and_rendering(studio, start_image, make_lora):
    path = make_lora()
    stack = Stack(entries=[StackEntry.single(path, name="Style")])
    path.unlink()
    with pytest.raises(LoraFileError, match=r"Style: .*was not found"):
        studio.render(start_image, SETTINGS, stack)
    assert studio.render(start_image, SETTINGS, Stack()).video.exists()


FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from PIL import Image
    from studio.errors import OutputError
    from studio.service import Studio
    from studio.settings import Settings
    from studio.stack.schema import RenderSettings, Stack

    out = Path(sys.argv[1])
    studio = Studio(Settings(lora_dirs=(out,), outputs_dir=out / "outputs", cache_dir=Path(sys.argv[2]), model="demo"))
    studio.manager.load_model("demo")
    image = Image.new("RGB", (64, 64), (200, 30, 90))
    settings = RenderSettings(prompt="x", width=64, height=64, frames=17, steps=2, seed=3)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (6000, hard))  # the disk is "full" after 6 kB per file
    try:
        studio.render(image, settings, Stack())
        print("no error")
    except OutputError as exc:
        print("OutputError:", exc)
    print("left:", sorted(p.name for p in (out / "outputs").iterdir()))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed
    saved = studio.render(image, settings, Stack())
    print("next:", saved.video.name.endswith(".mp4"), saved.video.stat().st_size > 6000)
    """
)


def test_a_full_disk_while_writing_leaves_nothing_and_the_next_render_works(
    tmp_path, studio_cache, demo_model_dir
):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK_SCRIPT, str(tmp_path), str(studio_cache)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("OutputError: The video could not be written"), lines
    assert lines[1] == "left: []"
    assert lines[2] == "next: True True"
