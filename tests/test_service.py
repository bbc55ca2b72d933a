"""The studio service: model status for the selector, library listing, per-session cancel."""

from __future__ import annotations

import threading

import pytest

from studio.errors import RenderCancelled
from studio.service import Studio
from studio.stack import RenderSettings, Stack

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


def test_library_lists_files_relative_to_their_folder(studio, make_lora, lora_dir):
    (lora_dir / "sub").mkdir()
    make_lora("sub/b.safetensors")
    make_lora("a.safetensors")
    (lora_dir / "notes.txt").write_text("not a lora")
    assert [item.label for item in studio.library()] == ["a.safetensors", "sub/b.safetensors"]


def test_cancel_only_stops_the_callers_render(studio, start_image):
    started = threading.Event()
    outcome = {}

    def run():
        try:
            studio.render(start_image, FAST, Stack(), session="alice", progress=lambda e: started.set())
            outcome["alice"] = "finished"
        except RenderCancelled:
            outcome["alice"] = "cancelled"

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(60)
    assert studio.cancel("bob") is False  # bob has nothing running: alice's render goes on
    assert studio.cancel("alice") is True
    thread.join(60)
    assert outcome == {"alice": "cancelled"}
    assert not list(studio.settings.outputs_dir.glob("*.mp4"))
    saved = studio.render(start_image, FAST.model_copy(update={"steps": 2}), Stack(), session="alice")
    assert saved.video.exists()
