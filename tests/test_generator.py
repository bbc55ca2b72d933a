"""The public Python API (``from studio import Generator``) on the demo model, with the guide's Hub repos served
by the loopback fake Hub: the README's guide snippets run as written, which file lands on which expert,
``unload_loras()`` giving back the base render bit for bit, and every refusal."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fakehub import FakeHub, HubEnv
from fakehub.guide_repos import LIGHTX2V, LIGHTX2V_FILES, REWARD, REWARD_FILES, add_guide_repos

from studio.errors import LoraFileError, StudioError, ValidationError
from studio.loras.synthetic import write_layout
from studio.models.demo import TRANSFORMER_CONFIG

ROOT = Path(__file__).resolve().parents[1]
I2V_HIGH, I2V_LOW = LIGHTX2V_FILES[("i2v", "high")], LIGHTX2V_FILES[("i2v", "low")]
HPS_LOW, MPS_LOW = REWARD_FILES[("hps", "low")], REWARD_FILES[("mps", "low")]
TINY = {"width": 32, "height": 32, "frames": 5, "steps": 4, "guidance": 1.0}  # as the README's demo_size
# The local LoRAs the README's snippets name, each in another trainer's layout.
LOCAL = {
    "anime_style": "original",
    "my_character": "peft_wan",
    "cinematic_style": "diffsynth",
    "realistic_style": "musubi",
}


def readme_blocks() -> list[str]:
    """The ```python blocks of the README's "Python API" section, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def world(tmp_path_factory, demo_model_dir):
    """A working folder with the README's LoRAs and start image, a studio cache holding the demo model, and
    the fake Hub with the guide's repos; the working directory is switched to it for the module."""
    home = tmp_path_factory.mktemp("generator")
    loras = home / "loras"
    for seed, (name, layout) in enumerate(LOCAL.items(), start=1):
        write_layout(loras / f"{name}.safetensors", dict(TRANSFORMER_CONFIG), layout, seed=seed, scale=0.3)
    rng = np.random.default_rng(3)
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)).save(home / "start.png")
    cache = home / "studio-cache"
    cache.mkdir()
    (cache / demo_model_dir.name).symlink_to(demo_model_dir)  # the demo model, built once per session
    with FakeHub() as hub, HubEnv(hub.url, home / "hf-home") as env, pytest.MonkeyPatch.context() as mp:
        hub.env = env
        hub.guide_files = add_guide_repos(hub)
        mp.chdir(home)
        mp.setenv("STUDIO_CACHE", str(cache))
        mp.delenv("STUDIO_LORA_DIRS", raising=False)
        yield hub, home


@pytest.fixture(scope="module")
def generator(world):
    from studio import Generator

    return Generator(model="demo", lora_dirs=["loras"], outputs_dir="outputs")


@pytest.fixture(autouse=True)
def _clean(generator):
    generator.unload_loras()
    yield
    generator.unload_loras()


def on_experts(video) -> dict[str, dict[str, float]]:
    """expert -> {file name: weight} of what really ran (the render record)."""
    out: dict[str, dict[str, float]] = {"high": {}, "low": {}}
    for lora in video.record["loras"]:
        out[lora["expert"]][Path(lora["file"]).name] = lora["weight"]
    return out


def sha(hub, repo, file) -> str:
    return hashlib.sha256(hub.guide_files[repo][file]).hexdigest()


# ----------------------------------------------------------------------------------------------- imports


def test_importing_studio_stays_light():
    code = (
        "import sys, studio; print(sorted(m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
    import studio
    from studio.generator import Generator, Video

    assert studio.Generator is Generator and studio.Video is Video
    with pytest.raises(AttributeError):
        _ = studio.NoSuchThing


# ----------------------------------------------------------------------------------------------- the guide


@pytest.mark.slow
def test_the_readme_guide_snippets_run_as_written(world, generator):
    """Every block of the README's Python API section, in order, on the demo model; after each, what landed."""
    hub, _ = world
    blocks = readme_blocks()
    assert len(blocks) == 9
    loads = generator.manager.model_loads
    ns: dict = {}
    reads = []

    def run(i: int) -> None:
        reads.append(ns["generator"].manager.lora_file_reads if "generator" in ns else 0)
        exec(compile(blocks[i], f"README block {i}", "exec"), ns)

    # setup: a generator of its own, on the same demo model
    run(0)
    g = ns["generator"]
    manager = g.manager
    assert g.manager.spec.name == "demo" and ns["demo_size"] == TINY
    base = g.generate_video("start.png", "a dancer on a stage", seed=6, **TINY)  # the base render

    run(1)  # one LoRA on both experts
    video = ns["video"]
    assert on_experts(video) == {
        "high": {"anime_style.safetensors": 0.8},
        "low": {"anime_style.safetensors": 0.8},
    }
    assert video.frames.shape == (5, 32, 32, 3) and video.frames.dtype == np.uint8
    assert video.record == json.loads(video.sidecar.read_text()) and video.path.suffix == ".mp4"
    assert [(x["name"], x["weight"]) for x in g.loras()["low_noise"]] == [("anime_style", 0.8)]

    run(2)  # a character config
    assert {k: [(x["name"], x["weight"]) for x in v] for k, v in g.loras().items()} == {
        "high_noise": [("my_character", 1.0)],
        "low_noise": [("my_character", 1.0)],
    }

    run(3)  # fast anime: the lightx2v I2V pair from the repo + the anime style
    video = ns["video"]
    assert on_experts(video) == {
        "high": {I2V_HIGH: 1.0, "anime_style.safetensors": 0.8},
        "low": {I2V_LOW: 1.0, "anime_style.safetensors": 0.8},
    }
    speed_high, speed_low = video.record["stack"]["entries"][:2]
    repo_sha = hub.repo(LIGHTX2V).sha
    assert speed_high["high"] == {
        "path": None,
        "repo": LIGHTX2V,
        "file": I2V_HIGH,
        "revision": repo_sha,
        "sha256": sha(hub, LIGHTX2V, I2V_HIGH),
    }
    assert speed_high["low"] is None and speed_low["low"]["file"] == I2V_LOW and speed_low["high"] is None
    lora_sha = {Path(x["file"]).name: x["sha256"] for x in video.record["loras"]}
    assert lora_sha[I2V_HIGH] == sha(hub, LIGHTX2V, I2V_HIGH)  # what was loaded is the pinned file

    run(4)  # cinematic character: + character, cinematic, and HPS2.1 (by its name) on the low-noise expert
    assert on_experts(ns["video"]) == {
        "high": {I2V_HIGH: 1.0, "my_character.safetensors": 1.0, "cinematic_style.safetensors": 0.8},
        "low": {
            I2V_LOW: 1.0,
            "my_character.safetensors": 1.0,
            "cinematic_style.safetensors": 0.8,
            HPS_LOW: 0.4,
        },
    }

    run(5)  # instagram influencer, portrait
    video = ns["video"]
    assert on_experts(video) == {
        "high": {I2V_HIGH: 1.0, "my_character.safetensors": 1.05, "realistic_style.safetensors": 0.75},
        "low": {
            I2V_LOW: 1.0,
            "my_character.safetensors": 1.05,
            "realistic_style.safetensors": 0.75,
            HPS_LOW: 0.3,
        },
    }
    assert video.frames.shape == (5, 32, 16, 3)

    run(6)  # the quality LoRA alone
    assert on_experts(ns["video"]) == {"high": {}, "low": {HPS_LOW: 0.5}}

    run(7)  # interpolation: only scales change, no file is read, the model is not reloaded
    reads_before_loop = manager.lora_file_reads
    frames = ns["frames"]
    assert reads_before_loop == reads[-1] + 2  # the two styles, read once each
    assert not np.array_equal(frames[0], frames[2]) and not np.array_equal(frames[0], frames[1])
    assert [(x["name"], x["weight"]) for x in g.loras()["high_noise"]] == [
        ("anime_style", 0.0),
        ("cinematic", 1.0),
    ]

    run(8)  # swapping styles: one file read per style; then back to the base model
    assert manager.lora_file_reads == reads[-1] + 3
    assert manager.loaded_adapters() == {} and g.loras() == {"high_noise": [], "low_noise": []}
    again = g.generate_video("start.png", "a dancer on a stage", seed=6, **TINY)
    assert np.array_equal(again.frames, base.frames)  # unload_loras() gives back the base render, bit for bit
    assert again.record["loras"] == []
    assert generator.manager.model_loads == loads and g.manager.model_loads == 1


def test_which_file_lands_on_which_expert(world, generator):
    hub, _ = world
    generator.load_specialized_lora(LIGHTX2V, "speed", 1.0, applies_to="both")  # both: the I2V pair
    loaded = generator.manager._loras.values()
    files = {
        c: {Path(x.identity.path).name for x in loaded if x.component == c}
        for c in ("transformer", "transformer_2")
    }
    assert files == {"transformer": {I2V_HIGH}, "transformer_2": {I2V_LOW}}
    loras = generator.loras()
    assert loras["high_noise"][0]["source"] == f"{LIGHTX2V}/{I2V_HIGH}@{hub.repo(LIGHTX2V).sha[:7]}"
    assert loras["low_noise"][0]["sha256"] == sha(hub, LIGHTX2V, I2V_LOW)
    generator.load_specialized_lora(f"{REWARD}/{MPS_LOW}", "mps", 0.2, applies_to="low")  # one named file
    assert [x["name"] for x in generator.loras()["low_noise"]] == ["speed", "mps"]
    assert generator.loras()["low_noise"][1]["file"].endswith(MPS_LOW)


def test_a_weight_change_reads_no_file_and_reloads_nothing(world, generator):
    generator.load_specialized_lora("loras/anime_style.safetensors", "anime", 1.0)
    manager = generator.manager
    reads, loads = manager.lora_file_reads, manager.model_loads
    generator.set_lora_weight("anime", 0.25, applies_to="low_noise")
    generator.set_lora_weight("anime", -0.5, applies_to="high")
    assert (manager.lora_file_reads, manager.model_loads) == (reads, loads)
    assert manager.active_weights() == {
        "transformer": {next(iter(manager.active_weights()["transformer"])): -0.5},
        "transformer_2": {next(iter(manager.active_weights()["transformer_2"])): 0.25},
    }
    generator.load_specialized_lora("loras/anime_style.safetensors", "anime", 0.7)  # same name: replaced
    assert manager.lora_file_reads == reads  # the same file: nothing to read again
    assert [x["weight"] for x in generator.loras()["high_noise"]] == [0.7]


def test_a_preset_file_and_a_preset_name_load_as_stacks(world, generator):
    _, home = world
    preset = home / "guide-stack.json"
    preset.write_text(
        json.dumps(
            [
                {"path": LIGHTX2V, "name": "lightx2v_low", "applies_to": "low_noise"},
                {"path": "loras/anime_style.safetensors", "name": "anime", "weight": 0.6},
            ]
        )
    )
    generator.load_multiple_loras(preset)
    assert [(x["name"], Path(x["file"]).name) for x in generator.loras()["low_noise"]] == [
        ("lightx2v_low", I2V_LOW),
        ("anime", "anime_style.safetensors"),
    ]
    generator.unload_loras()
    ours = {
        "name": "Reward only",
        "entries": [{"id": "q", "name": "hpsv2_quality", "low": {"path": REWARD}, "weight_high": 0, "weight_low": 0.5}],
    }  # fmt: skip
    (home / "user_presets").mkdir(exist_ok=True)
    (home / "user_presets" / "reward-only.json").write_text(json.dumps(ours))
    generator.load_multiple_loras("Reward only")  # by name, from the presets folder; the repo path picked
    assert [Path(x["file"]).name for x in generator.loras()["low_noise"]] == [HPS_LOW]


# ----------------------------------------------------------------------------------------------- refusals


def test_every_refusal_is_a_sentence(world, generator):
    hub, _ = world
    cases = [
        (lambda: generator.load_specialized_lora("loras/anime_style.safetensors", "a", 1.0, "middle"),
         ValidationError, r"^applies_to must be 'both', 'high_noise' or 'low_noise' \(or 'high' / 'low'\); got 'middle'\.$"),
        (lambda: generator.load_specialized_lora("loras/anime_style.safetensors", "", 1.0),
         ValidationError, "adapter_name must be a name"),
        (lambda: generator.load_specialized_lora("loras/anime_style.safetensors", "a", 99.0),
         ValidationError, r"lora_weight must be a number between -10 and 10 \(0 = off\); got 99\.0\."),
        (lambda: generator.load_specialized_lora("loras/gone.safetensors", "a"),
         LoraFileError, r"neither a \.safetensors file on this machine .* nor a Hub repo"),
        (lambda: generator.load_specialized_lora("nowhere/gone", "a"), LoraFileError,
         r"'nowhere/gone' is not a \.safetensors file on this machine, and nowhere/gone was not found on the Hugging Face Hub"),
        (lambda: generator.load_specialized_lora(REWARD, "quality", applies_to="low_noise"),
         LoraFileError, rf"2 files of {REWARD} fit the low-noise expert .*{HPS_LOW}.*{MPS_LOW}.*e\.g\. {REWARD}/"),
        (lambda: generator.load_multiple_loras([{"path": "loras/anime_style.safetensors", "wieght": 1}]),
         ValidationError, r"LoRA \[0\]: wieght: is not a known field"),
        (lambda: generator.load_multiple_loras(["loras/anime_style.safetensors"]),
         ValidationError, r"LoRA \[0\] must be a dict with path"),
        (lambda: generator.load_multiple_loras("No such preset"), ValidationError, "There is no preset named"),
        (lambda: generator.set_lora_weight("ghost", 1.0), ValidationError, r"No LoRA named 'ghost' is loaded"),
        (lambda: generator.generate_video("start.png", "x", strength=2), ValidationError,
         r"generate_video does not know the setting\(s\) strength; use frames, steps"),
        (lambda: generator.generate_video("start.png", "x", frames=6, steps=2), ValidationError,
         "frames: must be 4k\\+1"),
        (lambda: generator.generate_video("missing.png", "x", **TINY), ValidationError,
         "The start image missing.png was not found"),
    ]  # fmt: skip
    for call, kind, pattern in cases:
        with pytest.raises(kind, match=pattern) as caught:
            call()
        message = str(caught.value)
        assert message.endswith(".") and len(message.split()) >= 6, message  # a sentence, not a traceback
    assert generator.stack.entries == []  # nothing was half-loaded

    hub.clear_requests()
    with pytest.raises(LoraFileError, match="is a placeholder, not a LoRA"):
        generator.load_specialized_lora("lightx2v/...", "speed", applies_to="high_noise")
    assert hub.requests == []  # a placeholder makes no Hub call

    (Path("loras") / "evil.safetensors").write_bytes(b"\x80\x04\x95" + b"\xff" * 64)
    with pytest.raises(LoraFileError, match="pickle"):
        generator.load_specialized_lora("loras/evil.safetensors", "evil")
    only_low = generator
    only_low.load_specialized_lora("loras/anime_style.safetensors", "anime", 1.0, applies_to="low_noise")
    with pytest.raises(
        ValidationError,
        match=r"anime is only on the low_noise expert; set its weight with applies_to='low_noise'",
    ):
        only_low.set_lora_weight("anime", 0.5, applies_to="high_noise")


def test_bad_constructor_arguments(world):
    from studio import Generator

    with pytest.raises(ValidationError, match=r"Unknown dtype 'int8': choose float32, bfloat16 or float16"):
        Generator(dtype="int8")
    with pytest.raises(ValidationError, match="Unknown memory mode 'turbo'"):
        Generator(memory="turbo")
    with pytest.raises(
        ValidationError,
        match="memory takes mode, precision, vae_tiling, compile and compile_lora_rank; speed is not",
    ):
        Generator(memory={"speed": 1})
    with pytest.raises(ValidationError, match="LoRA room of compiled mode must be 1 to 4096 rows"):
        Generator(memory={"compile": True, "compile_lora_rank": 0})
    with pytest.raises(StudioError, match="nope"):
        Generator(model="nope")


def test_compile_turns_compiled_mode_on_with_the_memory_mode_kept(world):
    from studio import Generator

    generator = Generator(model="demo", memory={"mode": "auto", "vae_tiling": True}, compile=True)
    memory = generator.manager.memory
    assert (memory.compile, memory.mode, memory.vae_tiling, memory.compile_lora_rank) == (
        True,
        "auto",
        True,
        128,
    )
    assert (
        Generator(
            model="demo", memory={"compile": True, "compile_lora_rank": 64}
        ).manager.memory.compile_lora_rank
        == 64
    )


def test_offline_with_the_file_in_the_cache_works(world, generator):
    hub, _ = world
    generator.load_specialized_lora(LIGHTX2V, "speed", applies_to="high_noise")  # downloads it (online)
    generator.unload_loras()
    hub.env.switch(offline=True)
    try:
        hub.clear_requests()
        generator.load_specialized_lora(LIGHTX2V, "speed", applies_to="high_noise")
        assert [Path(x["file"]).name for x in generator.loras()["high_noise"]] == [I2V_HIGH]
        assert any("Hugging Face cache" in n for n in generator.notes) and hub.requests == []
        generator.unload_loras()
        with pytest.raises(
            LoraFileError, match=r"someone/never-here is not in the Hugging Face cache\. Go online"
        ):
            generator.load_specialized_lora("someone/never-here", "x", applies_to="low_noise")
    finally:
        hub.env.switch(offline=False)


@pytest.mark.slow
def test_bf16_loads_and_unloads_back_to_the_base_render(world):
    from studio import Generator

    g = Generator(model="demo", lora_dirs=["loras"], outputs_dir="outputs-bf16", dtype="bf16")
    import torch

    assert g.manager.pipe.transformer.dtype == torch.bfloat16
    base = g.generate_video("start.png", "a cat", seed=9, **TINY)
    g.load_multiple_loras(
        [
            {"path": "loras/anime_style.safetensors", "name": "anime", "weight": 0.9},
            {"path": LIGHTX2V, "name": "speed_low", "applies_to": "low_noise"},
        ]
    )
    styled = g.generate_video("start.png", "a cat", seed=9, **TINY)
    assert not np.array_equal(styled.frames, base.frames)
    g.unload_loras()
    assert np.array_equal(g.generate_video("start.png", "a cat", seed=9, **TINY).frames, base.frames)
    assert os.path.isdir("outputs-bf16")


def test_unload_after_a_fused_render_gives_back_the_base_render(world, generator):
    base = generator.generate_video("start.png", "a fox", seed=11, **TINY)
    generator.load_multiple_loras(
        [
            {"path": "loras/anime_style.safetensors", "name": "anime", "weight": 0.9},
            {"path": LIGHTX2V, "name": "speed_high", "applies_to": "high_noise"},
        ]
    )
    fused = generator.generate_video("start.png", "a fox", seed=11, fuse=True, **TINY)
    assert fused.record["fused"] is True and not np.array_equal(fused.frames, base.frames)
    generator.unload_loras()
    again = generator.generate_video("start.png", "a fox", seed=11, **TINY)
    assert np.array_equal(again.frames, base.frames)  # bit for bit, also after fusing


def test_weights_take_schedules_and_the_record_holds_each_steps_weight(world, generator):
    generator.load_specialized_lora("loras/anime_style.safetensors", "anime", "1>0", applies_to="high_noise")
    generator.load_multiple_loras(
        [
            {
                "path": "loras/my_character.safetensors",
                "name": "char",
                "applies_to": "both",
                "schedule": "0.5@3-4",
            }
        ]
    )
    assert generator.loras()["high_noise"][0]["schedule"] == "1>0"
    video = generator.generate_video("start.png", "a cat", **TINY, high_steps=2, seed=5)
    rows = {(Path(r["file"]).name, r["expert"]): r["weights"] for r in video.record["lora_weights_per_step"]}
    assert video.record["experts_per_step"] == ["high", "high", "low", "low"]
    assert rows[("anime_style.safetensors", "high")] == [1.0, pytest.approx(2 / 3), None, None]
    assert rows[("my_character.safetensors", "low")] == [None, None, 0.5, 0.5]
    assert ("my_character.safetensors", "high") not in rows  # 0 on both high-noise steps: never loaded there
    reads = generator.manager.lora_file_reads
    generator.set_lora_weight("anime", [1, 0.5, 0.25, 0], applies_to="high_noise")
    assert generator.manager.lora_file_reads == reads
    with pytest.raises(ValidationError, match=r"^weight: '1>' is not a ramp"):
        generator.set_lora_weight("anime", "1>")
