"""Browser tests of the Studio tab's panels: VRAM estimate, cancel, presets, and the Hub tab."""

from __future__ import annotations

import re

import pytest
from pagekit import ENTRY, choose, studio_page
from playwright.sync_api import expect

from studio.service import Studio
from studio.settings import Settings

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def env(tmp_path_factory, studio_cache, demo_model_dir, demo_transformer_config, launch_studio):
    from studio.loras.synthetic import make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("panels")
    loras = root / "loras"
    write_lora(loras / "style.safetensors", make_lora_tensors(demo_transformer_config, seed=1, rank=8))
    settings = Settings(
        lora_dirs=(loras,), outputs_dir=root / "outputs", cache_dir=studio_cache, presets_dir=root / "presets",
        model="demo",
    )  # fmt: skip
    studio = Studio(settings)
    studio.manager.load_model("demo")
    return {"url": launch_studio(studio), "root": root, "studio": studio}


@pytest.fixture()
def page(browser, env):
    with studio_page(browser, env["url"]) as page:
        yield page


def add_style(page) -> None:
    choose(page, "#library", "style · ")
    page.click("#add-lora")
    expect(page.locator(ENTRY)).to_have_count(1)


def expected_peak(studio, mode: str, *, compile: bool = False) -> str:
    """The panel's figure for A14B at 832×480×81 with the demo's other defaults, from the estimator itself."""
    from studio.engine.memory import MemoryConfig
    from studio.stack.schema import RenderSettings, Stack

    settings = RenderSettings(
        **{**studio.spec.defaults.settings_values(), "width": 832, "height": 480, "frames": 81}
    )
    memory = MemoryConfig(mode=mode, compile=compile)
    est = studio.estimate(settings, Stack(), memory, model_name="wan2.2-i2v-a14b")
    return f"{est.peak_vram_bytes / 1e9:.2f} GB"


def test_vram_panel_reacts_to_settings_mode_and_stack(page, env, screenshot):
    expect(page.locator("#vram-view")).to_contain_text("Peak VRAM")
    expect(page.locator("#gpu-view")).to_contain_text("no NVIDIA GPU detected")
    choose(page, "#model-choice", "Wan2.2 I2V A14B")
    choose(page, "#card", "24 GB")
    for field, value in (("#width input", "832"), ("#height input", "480"), ("#frames input", "81")):
        page.fill(field, value)
    page.press("#frames input", "Tab")
    offload = expected_peak(env["studio"], "model-offload")  # what "auto" means for a real model
    expect(page.locator("#vram-peak")).to_have_text(offload)
    expect(page.locator("#vram-verdict")).to_have_text("won't fit")
    choose(page, "#memory-mode", "sequential")
    sequential = expected_peak(env["studio"], "sequential")
    expect(page.locator("#vram-peak")).to_have_text(sequential)
    assert float(sequential.split()[0]) < float(offload.split()[0])
    page.click("#suggest")
    expect(page.locator("#suggest-status")).to_contain_text("fits")
    expect(page.locator("#vram-verdict")).to_have_text(re.compile("fits|tight"))
    screenshot(page, "vram-panel")


def test_compiled_mode_says_what_recompiles_and_counts_its_lora_room(page, env):
    expect(page.locator("#compiled-mode")).to_contain_text("LoRA changes, weights, schedules")
    expect(page.locator("#compiled-mode")).to_contain_text("a new size or frame count recompiles once")
    choose(page, "#model-choice", "Wan2.2 I2V A14B")
    for field, value in (("#width input", "832"), ("#height input", "480"), ("#frames input", "81")):
        page.fill(field, value)
    page.press("#frames input", "Tab")
    plain = expected_peak(env["studio"], "model-offload")
    expect(page.locator("#vram-peak")).to_have_text(plain)
    page.check("#compiled-mode input")
    compiled = expected_peak(env["studio"], "model-offload", compile=True)
    expect(page.locator("#vram-peak")).to_have_text(compiled)
    assert float(compiled.split()[0]) > float(plain.split()[0])  # the room of 128 LoRA rows per expert
    page.uncheck("#compiled-mode input")
    expect(page.locator("#vram-peak")).to_have_text(plain)


def test_a_render_can_be_cancelled_midway_and_the_next_one_works(page, tmp_path, start_image, env):
    path = tmp_path / "start.png"
    start_image.save(path)
    page.set_input_files("#start-image input[type=file]", str(path))
    for field, value in (
        ("#width input", "128"),
        ("#height input", "128"),
        ("#frames input", "81"),
        (
            "#steps input",
            "200",
        ),  # ~16 s here (80 ms a step): it cannot end before the click on a fast machine
    ):
        page.fill(field, value)
    page.click("#render")
    expect(page.locator("#result-video")).to_contain_text(re.compile(r"Step \d+/200"), timeout=60_000)
    page.click("#cancel")
    expect(page.locator("#render-status")).to_contain_text("cancelled", timeout=30_000)
    assert not list((env["root"] / "outputs").glob("*.mp4"))  # nothing written for the cancelled render
    page.fill("#steps input", "2")
    page.click("#render")
    expect(page.locator("#render-status")).to_contain_text("Rendered 81 frames", timeout=60_000)


def test_save_a_preset_and_load_it_back(page, env, screenshot):
    add_style(page)
    entry = page.locator(ENTRY).first
    box = entry.locator("[id^=low-] input[type=number]")
    box.fill("0.35")
    box.press("Enter")
    page.fill("#steps input", "7")
    page.fill("#preset-name textarea", "My style")
    page.click("#save-preset")
    expect(page.locator("#presets-status")).to_contain_text("Saved preset My style")
    page.click("#save-preset")  # the same name again: needs confirmation
    expect(page.locator("#presets-status")).to_contain_text("Replace a preset with this name")
    assert (env["root"] / "presets").is_dir()

    entry.locator("[id^=remove-]").click()
    expect(page.locator(ENTRY)).to_have_count(0)
    page.fill("#steps input", "3")
    choose(page, "#preset-choice", "My style")
    page.click("#load-preset")
    expect(page.locator("#presets-status")).to_contain_text("Loaded preset My style")
    expect(page.locator(ENTRY)).to_have_count(1)
    expect(page.locator(ENTRY).first.locator("[id^=low-] input[type=number]")).to_have_value("0.35")
    expect(page.locator("#steps input")).to_have_value("7")
    screenshot(page, "presets")


def test_a_shipped_preset_shows_its_open_slot_and_recipe(page):
    choose(page, "#preset-choice", "Fast anime")
    page.click("#load-preset")
    expect(page.locator("#preset-slots")).to_contain_text("choose a LoRA for this slot")
    expect(page.locator("#recipe")).to_contain_text("speed LoRA")
    expect(page.locator("#download-missing")).to_be_visible()
    page.fill("#steps input", "40")
    page.press("#steps input", "Tab")
    expect(page.locator("#recipe")).to_contain_text("40 steps")
    page.click("#apply-recipe")
    expect(page.locator("#steps input")).to_have_value("4")
    choose(page, "#library", "style · ")
    page.click("#fill-slot")
    expect(page.locator(ENTRY)).to_have_count(2)
    expect(page.locator("#preset-slots")).to_be_empty()
