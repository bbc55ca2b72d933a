"""The Train tab: its form logic at the Gradio level, and a whole run in a real browser (check, start,
live loss plot, samples, Compare checkpoints)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from studio.errors import ValidationError
from studio.service import Studio
from studio.settings import Settings
from studio.ui import train_form as form

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from trainkit import write_clip

FORM = dict(
    name="ui", experts="both", steps=4, rank=4, alpha=None, lr=0.02, batch=1, grad_accum=1, seed=3, frames=9,
    width=32, height=32, boundary=0.875, shift=5.0, target_modules=["self_attn", "cross_attn", "ffn"],
    hflip=False, random_crop=False, gradient_checkpointing=True, save_every=0, sample_every=2, sample_steps=2,
    holdout=0, trigger="", sample_prompt="", sample_image=None,
)  # fmt: skip


# ----------------------------------------------------------------------------- Gradio level


def test_options_from_the_form_and_their_errors():
    options = form.options_from_form("demo", FORM)
    assert (options.name, options.steps, options.rank, options.alpha, options.sample_prompt) == (
        "ui",
        4,
        4,
        None,
        None,
    )
    assert options.lora_alpha == 4.0 and options.boundary == 0.875
    blank = form.options_from_form("demo", {**FORM, "alpha": 0, "sample_steps": 0})  # what empty Numbers send
    assert blank.alpha is None and blank.sample_steps is None
    with pytest.raises(ValidationError, match="frames"):
        form.options_from_form("demo", {**FORM, "frames": 8})
    with pytest.raises(ValidationError, match="name"):
        form.options_from_form("demo", {**FORM, "name": "../evil"})


def test_dataset_folders_stay_inside_the_dataset_roots(tmp_path, monkeypatch):
    settings = Settings(cache_dir=tmp_path / "cache")
    inside = tmp_path / "mine" / "clips"
    inside.mkdir(parents=True)
    monkeypatch.setenv("STUDIO_DATASETS", str(tmp_path / "mine"))
    assert form.dataset_folder(str(inside), settings) == inside.resolve()
    assert form.dataset_folder("clips", settings) == inside.resolve()
    for outside in ("/etc", str(tmp_path), "../../etc", str(inside / ".." / "..")):
        with pytest.raises(ValidationError, match="inside the dataset folders"):
            form.dataset_folder(outside, settings)
    with pytest.raises(ValidationError, match="Type a dataset folder"):
        form.dataset_folder("  ", settings)


def test_uploads_keep_clips_images_and_captions_only(tmp_path):
    settings = Settings(cache_dir=tmp_path / "cache")
    src = tmp_path / "src"
    src.mkdir()
    clip = write_clip(src, "wave.mp4", "a wave")
    evil = src / "run.sh"
    evil.write_text("rm -rf /")
    folder = form.save_uploads([str(clip), str(clip.with_suffix(".txt")), str(evil)], settings)
    assert sorted(p.name for p in folder.iterdir()) == ["wave.mp4", "wave.txt"]
    assert folder.is_relative_to(form.dataset_roots(settings)[-1])
    with pytest.raises(ValidationError, match="None of the uploaded files"):
        form.save_uploads([str(evil)], settings)


def test_plot_rows_samples_and_status_from_a_snapshot():
    snap = SimpleNamespace(
        loss={"high": [(1, 1.5), (2, 1.2)], "low": [(1, 1.7)]}, val={"high": [(0, 1.6)]},
        samples=[(2, "/out/a.mp4"), (4, "/out/b.mp4")], status="finished", step=4, total=4, eta_s=0.0,
        running=False, files=["/l/ui_high_noise.safetensors", "/l/ui_low_noise.safetensors"], name="ui",
        message="Exported", error=None,
    )  # fmt: skip
    rows = form.loss_table(snap)
    assert {"step": 2, "loss": 1.2, "series": "high-noise"} in rows
    assert {"step": 0, "loss": 1.6, "series": "high-noise validation"} in rows and len(rows) == 4
    assert form.sample_choices(snap) == [("step 2", "a.mp4"), ("step 4", "b.mp4")]
    text, kind = form.status_text(snap)
    assert kind == "ok" and "ui_high_noise.safetensors" in text and "step 4/4" in text


# ----------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def env(tmp_path_factory, studio_cache, demo_model_dir, launch_studio):
    root = tmp_path_factory.mktemp("train-tab")
    clips = root / "datasets" / "waves"
    clips.mkdir(parents=True)
    write_clip(clips, "wave.mp4", "a red wave moving")
    patch = pytest.MonkeyPatch()
    patch.setenv("STUDIO_DATASETS", str(root / "datasets"))
    settings = Settings(
        lora_dirs=(root / "loras",), outputs_dir=root / "outputs", cache_dir=studio_cache, model="demo"
    )
    studio = Studio(settings)
    yield {"url": launch_studio(studio), "root": root, "clips": clips, "studio": studio}
    patch.undo()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.timeout(900)  # a whole (tiny) run, two sample renders and the comparison on a shared CPU
def test_a_whole_run_in_the_train_tab(browser, env, screenshot):
    context = browser.new_context(viewport={"width": 1500, "height": 1400})
    page = context.new_page()
    try:
        page.goto(env["url"])
        page.wait_for_selector("#render")
        page.click("button[role=tab]:has-text('Train')")
        page.fill("#train-dataset textarea", "waves")
        page.click("#train-check")
        expect(page.locator("#train-report textarea")).to_have_value(
            _contains("wave.mp4: 9 frames"), timeout=60_000
        )
        for field, value in (("#train-name textarea", "ui"), ("#train-steps input", "2"), ("#train-rank input", "4"),
                             ("#train-frames input", "9"), ("#train-width input", "32"),
                             ("#train-height input", "32"), ("#train-sample-every input", "1"),
                             ("#train-sample-steps input", "2"), ("#train-lr input", "0.02")):  # fmt: skip
            page.fill(field, value)
            page.locator(field).press("Tab")
        expect(page.locator("#train-vram")).to_contain_text("Training needs about", timeout=30_000)
        page.click("#train-start")
        expect(page.locator("#train-status")).to_contain_text("finished", timeout=300_000)
        expect(page.locator("#train-status")).to_contain_text("ui_high_noise.safetensors")
        expect(page.locator("#train-loss")).to_contain_text("high-noise validation", timeout=30_000)
        expect(page.locator("#train-checkpoints label")).to_have_count(2, timeout=30_000)
        expect(page.locator("#train-sample video")).to_have_count(1)
        screenshot(page, "train-tab-finished")
        page.click("#train-compare")
        expect(page.locator("#compare-player video")).to_have_count(2, timeout=30_000)
        expect(page.locator("#compare-diff")).to_contain_text("ui step 1")
        screenshot(page, "train-compare-checkpoints")
    finally:
        context.close()
    assert (env["root"] / "loras" / "ui_low_noise.safetensors").is_file()


def _contains(text: str):
    import re

    return re.compile(re.escape(text))


def test_new_samples_are_ticked_unless_two_or_more_are_chosen():
    from studio.ui.train_tab import _keep_chosen

    assert _keep_chosen(["a.mp4"], ["a.mp4", "b.mp4"]) == ["a.mp4", "b.mp4"]  # one early tick
    assert _keep_chosen(["a.mp4", "c.mp4"], ["a.mp4", "b.mp4", "c.mp4"]) == ["a.mp4", "c.mp4"]
    assert _keep_chosen(None, ["a.mp4", "b.mp4", "c.mp4"]) == ["b.mp4", "c.mp4"]
