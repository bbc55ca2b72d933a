"""The studio service: model status for the selector, library listing, per-session cancel."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from studio.errors import RenderCancelled
from studio.service import Studio
from studio.stack.schema import RenderSettings, Stack

FAST = RenderSettings(prompt="x", width=32, height=32, frames=5, steps=200, seed=1)


@pytest.fixture()
def studio(settings):
    studio = Studio(settings)
    studio.manager.load_model("demo")
    return studio


def test_a_real_model_without_weights_offers_the_download(studio, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    message, loadable = studio.model_status("wan2.2-i2v-a14b")
    assert not loadable
    assert (
        "not on this machine" in message
        and "69 GB" in message
        and "Wan-AI/Wan2.2-I2V-A14B-Diffusers" in message
    )
    message, loadable = studio.model_status("demo")
    assert loadable and "random weights" in message


def test_library_lists_files_and_pairs_with_a_badge(studio, make_lora, lora_dir):
    (lora_dir / "sub").mkdir()
    make_lora("sub/b.safetensors")
    make_lora("a.safetensors")
    make_lora("speed_high_noise.safetensors", seed=1)
    make_lora("speed_low_noise.safetensors", seed=2)
    (lora_dir / "notes.txt").write_text("not a lora")
    items = {item.label: item for item in studio.library()}
    assert set(items) == {"a", "b", "speed"}
    assert items["b"].rel_path == "sub/b.safetensors"
    assert items["speed"].kind == "pair"
    assert all(studio.compat(item).level == "compatible" for item in items.values())
    entry, _ = studio.entry_for(items["speed"].id)
    assert entry.is_pair and entry.high.path.endswith("speed_high_noise.safetensors")


def test_an_incompatible_lora_cannot_be_added(studio, lora_dir):
    from studio.errors import LoraFileError
    from studio.loras.synthetic import WAN_14B_CONFIG, make_lora_tensors, write_lora

    write_lora(
        lora_dir / "big.safetensors",
        make_lora_tensors(WAN_14B_CONFIG, rank=1, blocks=[0], modules=["attn1.to_q"]),
    )
    (item,) = studio.library()
    assert studio.compat(item).level == "incompatible"
    with pytest.raises(LoraFileError, match=r"cannot be added: .*14B"):
        studio.entry_for(item.id)


def test_cancel_only_stops_the_callers_render(studio, start_image):
    started = threading.Event()
    outcome = {}

    def run():
        try:
            studio.render(start_image, FAST, Stack(), session="alice", progress=lambda e: started.set())
            outcome["alice"] = "finished"
        except RenderCancelled:
            outcome["alice"] = "cancelled"

    assert not studio.rendering("alice") and studio.steps_run("alice") is None
    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(60)
    assert studio.rendering("alice") and not studio.rendering("bob")
    assert studio.cancel("bob") is False  # bob has nothing running: alice's render goes on
    assert studio.cancel("alice", wait=60) is True  # returns once the render has stopped
    assert not studio.rendering("alice")
    done, total = studio.steps_run("alice")  # where it stopped, for the timeline
    assert total == 200 and 1 <= done < 200
    thread.join(60)
    assert outcome == {"alice": "cancelled"}
    assert not list(studio.settings.outputs_dir.glob("*.mp4"))
    saved = studio.render(start_image, FAST.model_copy(update={"steps": 2}), Stack(), session="alice")
    assert saved.video.exists()


def test_a_render_that_would_not_fit_the_card_is_refused_with_advice(studio):
    from studio.engine.memory import MemoryConfig
    from studio.errors import OutOfMemory

    settings = RenderSettings(width=64, height=64, frames=17)
    studio.check_fits(settings, Stack(), MemoryConfig(), 80 * 10**9, "an 80 GB card")  # fits: no error
    with pytest.raises(
        OutOfMemory, match=r"needs about 0\.8 GB of GPU memory but a tiny card has 0\.5 GB.*Suggest"
    ):
        studio.check_fits(settings, Stack(), MemoryConfig(), 5 * 10**8, "a tiny card")


def test_estimates_count_the_stack_and_can_plan_for_another_model(studio, make_lora):
    from studio.engine.memory import MemoryConfig
    from studio.stack.schema import StackEntry

    settings = RenderSettings(width=832, height=480, frames=81, guidance=3.5)
    plain = studio.estimate(settings, Stack(), MemoryConfig(), model_name="wan2.2-i2v-a14b")
    assert 25e9 < plain.peak_vram_bytes < 60e9  # one A14B expert resident with model offload
    path = make_lora("a.safetensors")
    with_lora = studio.estimate(settings, Stack(entries=[StackEntry.single(path)]), MemoryConfig())
    without = studio.estimate(settings, Stack(), MemoryConfig())
    assert with_lora.peak_vram_bytes > without.peak_vram_bytes


def test_lora_badges_do_not_wait_for_a_running_render(studio, start_image, make_lora):
    make_lora("a.safetensors")
    started, done = threading.Event(), threading.Event()

    def run():
        slow = FAST.model_copy(update={"steps": 200, "width": 128, "height": 128, "frames": 17})
        with contextlib.suppress(RenderCancelled):
            studio.render(start_image, slow, Stack(), session="r", progress=lambda e: started.set())
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(60)
    (item,) = studio.library()
    t0 = time.monotonic()
    assert studio.compat(item).level == "compatible"  # answered while the render holds the model's lock
    assert time.monotonic() - t0 < 1.0 and not done.is_set()
    studio.cancel("r")
    thread.join(60)


# ----------------------------------------------------------------- the demo LoRAs
def test_with_the_demo_model_the_library_offers_the_demo_loras(settings, make_lora):
    make_lora("mine.safetensors")
    studio = Studio(settings.with_(demo_loras=True))
    studio.manager.load_model("demo")
    items = studio.library()
    assert [i.label for i in items] == ["mine", "demo-motion", "demo-pair", "demo-style"]  # the user's first
    by_label = {i.label: i for i in items}
    assert [studio.is_demo_item(i) for i in items] == [False, True, True, True]
    assert (by_label["demo-style"].kind, by_label["demo-style"].expert) == ("single", "low")
    assert (by_label["demo-motion"].kind, by_label["demo-motion"].expert) == ("single", None)
    assert by_label["demo-pair"].kind == "pair"
    assert all(studio.compat(i).level == "compatible" for i in items)
    assert Path(by_label["demo-pair"].root) == settings.demo_lora_dir.resolve()
    assert not settings.demo_lora_dir.resolve().is_relative_to(settings.lora_dirs[0].resolve())
    entry, _ = studio.entry_for(by_label["demo-style"].id)
    assert (
        entry.high is None and entry.weight_high == 0.0 and entry.low.path.endswith("demo-style.safetensors")
    )


def test_without_the_demo_model_or_the_setting_the_demo_loras_stay_out(
    settings, make_lora, demo_model_dir, tmp_path
):
    import shutil

    make_lora("mine.safetensors")
    off = Studio(settings)  # demo_loras is off unless asked for (Settings.from_env turns it on)
    off.manager.load_model("demo")
    assert [i.label for i in off.library()] == ["mine"]

    real_like = tmp_path / "pipeline"
    shutil.copytree(demo_model_dir, real_like)
    (real_like / "studio_demo.json").unlink()  # now a local folder model, not the demo
    studio = Studio(settings.with_(demo_loras=True))
    studio.manager.load_model(str(real_like))
    assert not studio.spec.is_demo and not studio.demo_loras_listed()
    assert [i.label for i in studio.library()] == ["mine"]


def test_settings_from_env_build_the_demo_loras_unless_told_not_to(tmp_path):
    from studio.settings import Settings

    on = Settings.from_env({"STUDIO_CACHE": str(tmp_path)})
    assert on.demo_loras and on.demo_lora_dir == tmp_path / "demo-loras"
    assert on.demo_lora_dir.resolve() in on.resolved_lora_dirs()
    off = Settings.from_env({"STUDIO_CACHE": str(tmp_path), "STUDIO_DEMO_LORAS": "0"})
    assert not off.demo_loras and off.demo_lora_dir.resolve() not in off.resolved_lora_dirs()


# ----------------------------------------------------------------- messages without server paths
def test_public_messages_name_files_relative_to_their_lora_folder(studio, settings, lora_dir, make_lora):
    from studio.errors import LoraFileError
    from studio.loras.sources import resolve_local

    (lora_dir / "sub").mkdir()
    path = make_lora("sub/gone.safetensors")
    path.unlink()
    with pytest.raises(LoraFileError) as exc:
        resolve_local(str(path), settings.resolved_lora_dirs())
    assert str(lora_dir) in str(exc.value)  # the CLI keeps the full path
    shown = studio.public_message(str(exc.value))
    assert "'sub/gone.safetensors'" in shown
    assert str(lora_dir.parent) not in shown and "/" + lora_dir.parent.name not in shown
    outside = studio.public_message(f"{settings.outputs_dir.resolve()}/x.mp4 and /opt/secret/place/y.json")
    assert outside == "x.mp4 and y.json"


def test_the_compiled_estimate_counts_the_lora_room_of_both_experts(studio, make_lora):
    """Compiled mode holds its LoRA room in both experts whatever is loaded (within 5% of the real buffers)."""
    import torch
    from diffusers import WanTransformer3DModel

    from studio.engine import lora_slots
    from studio.engine.memory import MemoryConfig
    from studio.models.shapes import A14B_TRANSFORMER
    from studio.stack.schema import StackEntry

    with torch.device("meta"):
        model = WanTransformer3DModel(**A14B_TRANSFORMER).to(torch.bfloat16)
    room = lora_slots.install(model, rows=128, slots=8).nbytes()
    settings = RenderSettings(prompt="x", width=832, height=480, frames=81, steps=4, guidance=1.0)
    a14b = dict(model_name="wan2.2-i2v-a14b")
    compiled = studio.estimate(settings, Stack(), MemoryConfig(mode="gpu", compile=True), **a14b)
    for expert in ("high", "low"):
        assert abs(compiled.breakdown[f"lora_weights_{expert}"] / room - 1) < 0.05
    plain = studio.estimate(settings, Stack(), MemoryConfig(mode="gpu"), **a14b)
    assert "lora_weights_high" not in plain.breakdown or plain.breakdown["lora_weights_high"] == 0
    # a stack bigger than the room: the estimate grows the room as the manager does (to 64-row steps)
    big = Stack(entries=[StackEntry.single(make_lora("big.safetensors", rank=150), 1.0, 0.0)])
    grown = studio.estimate(settings, big, MemoryConfig(mode="gpu", compile=True), **a14b)
    assert grown.phases["denoise_high"]["lora_weights_high"] == pytest.approx(
        compiled.phases["denoise_high"]["lora_weights_high"] * 192 / 128, rel=1e-9
    )
    assert grown.breakdown["lora_weights_low"] == compiled.breakdown["lora_weights_low"]
