"""The Batch tab in a real browser: scenes from the editor, reorder/duplicate/remove, run with results,
the queue and its results back after a restart of the app; and the weight grid in the Compare tab."""

from __future__ import annotations

import pytest
from pagekit import choose
from playwright.sync_api import expect

from studio.service import Studio
from studio.settings import Settings

# these handlers write files; on a shared 2-core machine that takes seconds
expect.set_options(timeout=20_000)

SMALL = (("#width input", "32"), ("#height input", "32"), ("#frames input", "1"), ("#steps input", "1"))


@pytest.fixture(scope="module")
def env(tmp_path_factory, studio_cache, demo_model_dir, demo_transformer_config, start_image):
    from studio.loras.synthetic import make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("batch-ui")
    loras = root / "loras"
    write_lora(loras / "style.safetensors", make_lora_tensors(demo_transformer_config, seed=1, scale=0.3))
    start_image.save(root / "start.png")
    settings = Settings(
        lora_dirs=(loras,), outputs_dir=root / "outputs", cache_dir=studio_cache, model="demo"
    )
    return {"root": root, "settings": settings, "start": root / "start.png"}


def open_page(browser, url):
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#render")
    return context, page


def open_tab(page, name: str) -> None:
    page.click(f"#tab-{name}-button")
    page.wait_for_selector(f"#tab-{name}", state="visible")


def rows(page):
    return page.locator("#batch-queue [role=row]:has([role=gridcell])")


def add_scene(page, prompt: str, seed: int, count: int) -> None:
    open_tab(page, "studio")
    page.fill("#prompt textarea", prompt)
    page.fill("#seed input", str(seed))
    open_tab(page, "batch")
    page.click("#batch-add")
    expect(rows(page).filter(has_text=prompt)).to_have_count(1, timeout=30_000)  # a loaded machine is slow
    expect(rows(page)).to_have_count(count)
    expect(page.locator("#batch-status")).to_contain_text("Added the editor as a scene")


@pytest.mark.browser
def test_a_queue_of_scenes_runs_and_comes_back_after_a_restart(browser, env, launch_studio, screenshot):
    studio = Studio(env["settings"])
    studio.manager.load_model("demo")
    context, page = open_page(browser, launch_studio(studio))
    page.set_input_files("#start-image input[type=file]", str(env["start"]))
    for field, value in SMALL:
        page.fill(field, value)
    choose(page, "#library", "style · ")
    page.click("#add-lora")
    page.wait_for_selector("#stack-status:has-text('Added style')")

    add_scene(page, "first", 1, 1)
    add_scene(page, "second", 2, 2)
    choose(page, "#batch-scene", "2. second")
    page.click("#batch-up")
    expect(rows(page).nth(0)).to_contain_text("second")
    page.click("#batch-duplicate")
    expect(rows(page)).to_have_count(3)
    expect(rows(page).nth(1)).to_contain_text("second copy")
    page.click("#batch-remove")
    expect(rows(page)).to_have_count(2)
    expect(rows(page).nth(1)).to_contain_text("first")

    page.click("#batch-run")
    expect(page.locator("#batch-status")).to_contain_text(
        "2 of 2 scenes done (2 rendered now)", timeout=120_000
    )
    results = page.locator("#batch-results .thumbnail-item")
    expect(results).to_have_count(2)
    expect(results.filter(has_text="second · seed 2")).to_contain_text("style (1/1)")
    expect(rows(page).nth(0)).to_contain_text("1 done")
    screenshot(page, "batch-tab")
    page.click("#batch-export")
    expect(page.locator("#batch-download")).to_be_visible()
    context.close()

    # A new app on the same folders (a restart): the queue and its results are back.
    restarted = Studio(env["settings"])
    context, page = open_page(browser, launch_studio(restarted))
    open_tab(page, "batch")
    expect(rows(page)).to_have_count(2)
    expect(rows(page).nth(0)).to_contain_text("second")
    expect(page.locator("#batch-results .thumbnail-item")).to_have_count(2)
    page.click("#batch-run")  # nothing left to render
    expect(page.locator("#batch-status")).to_contain_text(
        "2 of 2 scenes done (0 rendered now)", timeout=60_000
    )
    context.close()


@pytest.mark.browser
def test_the_weight_grid_renders_one_labelled_video(browser, env, launch_studio):
    from studio.media.probe import probe_video

    studio = Studio(env["settings"])
    studio.manager.load_model("demo")
    context, page = open_page(browser, launch_studio(studio))
    page.set_input_files("#start-image input[type=file]", str(env["start"]))
    for field, value in SMALL:
        page.fill(field, value)
    page.fill("#seed input", "3")
    choose(page, "#library", "style · ")
    page.click("#add-lora")
    page.wait_for_selector("#stack-status:has-text('Added style')")
    open_tab(page, "compare")
    page.click("#grid-panel button:has-text('Weight grid from the editor')")
    page.fill("#grid-rows-values input, #grid-rows-values textarea", "0, 1")
    page.fill("#grid-cols-values input, #grid-cols-values textarea", "3, 4")
    page.click("#grid-render")
    expect(page.locator("#grid-status")).to_contain_text("Rendered a 2 × 2 grid", timeout=120_000)
    expect(page.locator("#grid-download")).to_be_visible()
    grids = sorted((env["root"] / "outputs" / "grids").glob("*/grid.mp4"))
    assert len(grids) == 1
    info = probe_video(grids[0])
    assert info.height > 2 * 128 and info.width > 2 * 128  # two 128-px cells each way, plus the labels
    context.close()
