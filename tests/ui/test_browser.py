"""The studio in a real browser (Debian's Chromium driven by Playwright) on loopback."""

from __future__ import annotations

import pytest
from pagekit import ENTRY, assert_not_blank, choose, studio_page
from playwright.sync_api import expect

from studio.service import Studio
from studio.settings import Settings

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory, studio_cache, demo_model_dir, demo_transformer_config, launch_studio):
    from studio.loras.synthetic import make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("browser-app")
    loras = root / "loras"
    write_lora(loras / "style.safetensors", make_lora_tensors(demo_transformer_config, seed=1, scale=0.3))
    write_lora(loras / "motion.safetensors", make_lora_tensors(demo_transformer_config, seed=2, scale=0.3))
    write_lora(loras / "speed_high_noise.safetensors", make_lora_tensors(demo_transformer_config, seed=3))
    write_lora(loras / "speed_low_noise.safetensors", make_lora_tensors(demo_transformer_config, seed=4))
    write_lora(
        loras / "anime.safetensors",
        make_lora_tensors(demo_transformer_config, seed=5),
        metadata={"modelspec.trigger_phrase": "anime style"},
    )
    from studio.loras.synthetic import WAN_14B_CONFIG

    write_lora(
        loras / "big14b.safetensors",
        make_lora_tensors(WAN_14B_CONFIG, rank=1, blocks=[0], modules=["attn1.to_q"]),
    )
    studio = Studio(
        Settings(lora_dirs=(loras,), outputs_dir=root / "outputs", cache_dir=studio_cache, model="demo")
    )
    studio.manager.load_model("demo")
    return launch_studio(studio)


@pytest.fixture()
def page(browser, studio_url):
    with studio_page(browser, studio_url) as page:
        yield page


def choose_in_library(page, label: str) -> None:
    choose(page, "#library", f"{label} · ")
    expect(page.locator("#library-card")).to_contain_text(label)


def pick_library_file(page, name: str) -> None:
    label = name.removesuffix(".safetensors")
    choose_in_library(page, label)
    page.click("#add-lora")
    page.wait_for_selector(f"#stack-status:has-text('Added {label}')")


def test_render_with_a_stack_in_the_browser(page, tmp_path, start_image, screenshots):
    assert page.locator("#model-banner").inner_text().startswith("Demo model.")
    image_path = tmp_path / "start.png"
    start_image.save(image_path)
    page.set_input_files("#start-image input[type=file]", str(image_path))
    page.fill("#prompt textarea", "a cat walking")
    for field, value in (
        ("#frames input", "9"),
        ("#steps input", "4"),
        ("#width input", "32"),
        ("#height input", "32"),
    ):
        page.fill(field, value)
    pick_library_file(page, "style.safetensors")
    pick_library_file(page, "motion.safetensors")
    expect(page.locator(ENTRY)).to_have_count(2)

    # Per-expert weights: type into the low-noise number box of the first entry.
    first = page.locator(ENTRY).first
    low_box = first.locator("[id^=low-] input[type=number]")
    low_box.fill("0.25")
    low_box.press("Enter")
    page.wait_for_timeout(500)

    # Reorder: move the second entry up, then remove the (new) second one.
    page.locator(ENTRY).nth(1).locator("[id^=up-]").click()
    expect(page.locator(ENTRY).first).to_contain_text("motion")
    page.locator(ENTRY).nth(1).locator("[id^=remove-]").click()
    expect(page.locator(ENTRY)).to_have_count(1)
    page.locator(ENTRY).first.locator("[id^=enabled-] input").check()

    page.click("#render")
    page.wait_for_selector("#render-status:has-text('Rendered 9 frames')", timeout=120_000)
    assert "motion (1/1)" in page.locator("#render-status").inner_text()
    duration = page.wait_for_function(
        "() => { const v = document.querySelector('#result-video video');"
        " return v && v.readyState >= 1 && v.duration > 0 ? v.duration : null; }",
        timeout=30_000,
    ).json_value()
    assert duration == pytest.approx(9 / 8, abs=0.2)  # the demo model renders at 8 fps
    shot = screenshots / "render.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_not_blank(shot)


def test_weights_typed_in_the_browser_reach_the_render(page, tmp_path, start_image):
    image_path = tmp_path / "start.png"
    start_image.save(image_path)
    page.set_input_files("#start-image input[type=file]", str(image_path))
    for field, value in (
        ("#frames input", "5"),
        ("#steps input", "2"),
        ("#width input", "32"),
        ("#height input", "32"),
    ):
        page.fill(field, value)
    pick_library_file(page, "style.safetensors")
    entry = page.locator(ENTRY).first
    for expert, value in (("high", "0.5"), ("low", "1.5")):
        box = entry.locator(f"[id^={expert}-] input[type=number]")
        box.fill(value)
        box.press("Enter")
    page.wait_for_timeout(500)
    page.click("#render")
    page.wait_for_selector("#render-status:has-text('Rendered 5 frames')", timeout=120_000)
    assert "style (0.5/1.5)" in page.locator("#render-status").inner_text()


def test_bad_settings_show_a_sentence(page, tmp_path, start_image):
    image_path = tmp_path / "start.png"
    start_image.save(image_path)
    page.set_input_files("#start-image input[type=file]", str(image_path))
    page.fill("#frames input", "10")
    page.click("#render")
    page.wait_for_selector("#render-status:has-text('4k+1')", timeout=30_000)
    assert "nearest allowed is 9" in page.locator("#render-status").inner_text()


def test_library_shows_pairs_badges_and_trigger_words(page, screenshots):
    choose_in_library(page, "speed")
    card = page.locator("#library-card")
    expect(card).to_contain_text("high + low pair")
    expect(card.locator(".lora-badge")).to_have_text("compatible")
    page.click("#add-lora")
    expect(page.locator(ENTRY)).to_have_count(1)
    expect(page.locator(ENTRY).first).to_contain_text("high: speed_high_noise.safetensors")
    expect(page.locator(ENTRY).first).to_contain_text("low: speed_low_noise.safetensors")

    choose_in_library(page, "big14b")
    expect(page.locator("#library-card .lora-badge")).to_have_text("incompatible")
    page.click("#add-lora")
    expect(page.locator("#stack-status")).to_contain_text("cannot be added")
    expect(page.locator(ENTRY)).to_have_count(1)

    choose_in_library(page, "anime")
    page.fill("#prompt textarea", "a girl dancing")
    page.click("#insert-triggers")
    expect(page.locator("#prompt textarea")).to_have_value("a girl dancing, anime style")
    shot = screenshots / "library.png"
    page.screenshot(path=str(shot), full_page=True)
    assert_not_blank(shot)
