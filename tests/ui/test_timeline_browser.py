"""The Studio tab's timeline and schedule editor in a real browser (Chromium through Playwright)."""

from __future__ import annotations

import json
import re

import pytest
from pagekit import ENTRY, choose, studio_page
from playwright.sync_api import expect

from studio.service import Studio
from studio.settings import Settings

pytestmark = pytest.mark.browser

PLOT = "document.querySelector('#timeline .js-plotly-plot')"
FIGURE = (
    f"() => {{ const g = {PLOT}; if (!g || !g.layout) return null; return JSON.stringify({{"
    "bands: g.layout.shapes.filter(s => s.type === 'rect').map(s => [s.name, s.x0, s.x1]),"
    "lines: Object.fromEntries(g.data.map(d => [d.name, d.y])),"
    "runs: Object.fromEntries(g.data.filter(d => d.yaxis === 'y2').map(d => [d.name, d.x])),"
    "title: g.layout.title.text }); }"
)


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory, studio_cache, demo_model_dir, demo_transformer_config, launch_studio):
    from studio.loras.synthetic import make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("timeline-app")
    loras = root / "loras"
    write_lora(loras / "style.safetensors", make_lora_tensors(demo_transformer_config, seed=1, scale=0.3))
    studio = Studio(
        Settings(lora_dirs=(loras,), outputs_dir=root / "outputs", cache_dir=studio_cache, model="demo")
    )
    studio.manager.load_model("demo")
    return launch_studio(studio)


@pytest.fixture()
def page(browser, studio_url):
    with studio_page(browser, studio_url) as page:
        yield page


def wait_figure(page, check, timeout=30_000):
    """The plot's figure once ``check(figure)`` holds (the plot redraws after each edit)."""
    last = {}

    def ready():
        text = page.evaluate(FIGURE)
        if text:
            last["fig"] = json.loads(text)
            return check(last["fig"])
        return False

    page.wait_for_function("() => true")  # let pending events run
    deadline = timeout / 250
    for _ in range(int(deadline)):
        if ready():
            return last["fig"]
        page.wait_for_timeout(250)
    raise AssertionError(f"the timeline never got there; last figure: {last.get('fig')}")


def set_number(page, selector: str, value: str) -> None:
    page.fill(f"{selector} input", value)
    page.press(f"{selector} input", "Enter")


def test_the_timeline_shows_the_expert_band_and_follows_steps_and_schedules(page, tmp_path, start_image):
    # demo defaults: 6 steps at shift 5 → t = 999, 961, 909 | 833, 714, 501 around the boundary 875
    fig = wait_figure(page, lambda f: len(f["bands"]) == 2)
    assert fig["bands"] == [["band-high", 0.5, 3.5], ["band-low", 3.5, 6.5]]
    assert fig["title"] == "3 high-noise + 3 low-noise steps"

    for selector, value in (("#steps", "4"), ("#frames", "9"), ("#width", "32"), ("#height", "32")):
        set_number(page, selector, value)
    fig = wait_figure(page, lambda f: f["bands"][-1][2] == 4.5)  # the band moved with the step count
    assert fig["bands"] == [["band-high", 0.5, 2.5], ["band-low", 2.5, 4.5]]

    choose(page, "#library", "style · ")
    expect(page.locator("#library-card")).to_contain_text("style", timeout=30_000)
    page.click("#add-lora")
    page.wait_for_selector("#stack-status:has-text('Added style')", timeout=60_000)
    expect(page.locator(ENTRY)).to_have_count(1, timeout=30_000)
    wait_figure(page, lambda f: f["lines"].get("style · high-noise") == [1, 1, None, None])

    box = page.locator("[id^=schedule-high-] input, [id^=schedule-high-] textarea").first
    box.fill("1>0")
    box.press("Enter")
    fig = wait_figure(page, lambda f: f["lines"].get("style · high-noise (schedule)", [None])[-1] == 0)
    assert fig["lines"]["style · high-noise"][:2] == [1, pytest.approx(2 / 3)]
    expect(page.locator("[id^=kind-high-] input")).to_have_value("ramp")

    # the kind dropdown fills a template from the slider's weight
    choose(page, "[id^=kind-low-]", "range")
    expect(box.page.locator("[id^=schedule-low-] input, [id^=schedule-low-] textarea").first).to_have_value(
        "1@0-50%"
    )
    wait_figure(page, lambda f: f["lines"].get("style · low-noise (schedule)") == [1, 1, 0, 0])

    box.fill("1,1,1")
    box.press("Enter")
    expect(page.locator("#timeline-status")).to_contain_text(  # checked against the steps, live
        "The high-noise schedule of LoRA 'style': the per-step list has 3 weights but the render has 4 steps"
    )
    box.fill("1>")
    box.press("Enter")
    expect(page.locator("#stack-status")).to_contain_text(
        "The high-noise schedule of LoRA 'style': '1>' is not a ramp"
    )

    box.fill("1@1-2")
    box.press("Enter")
    set_number(page, "#high-steps", "1")
    fig = wait_figure(page, lambda f: f["bands"][0] == ["band-high", 0.5, 1.5])
    assert "set by high-noise steps" in fig["title"]

    image_path = tmp_path / "start.png"
    start_image.save(image_path)
    page.set_input_files("#start-image input[type=file]", str(image_path))
    page.click("#render")
    page.wait_for_selector("#render-status:has-text('Rendered 9 frames')", timeout=240_000)
    fig = wait_figure(page, lambda f: "steps run" in f["runs"])
    assert fig["runs"]["steps run"] == [1, 2, 3, 4]


def test_a_cancelled_render_shows_where_it_stopped(page, tmp_path, start_image):
    # long enough (~16 s here, 80 ms a step) that it cannot end before the click on a fast machine
    for selector, value in (("#steps", "200"), ("#frames", "81"), ("#width", "128"), ("#height", "128")):
        set_number(page, selector, value)
    wait_figure(page, lambda f: f["bands"][-1][2] == 200.5)
    image_path = tmp_path / "start.png"
    start_image.save(image_path)
    page.set_input_files("#start-image input[type=file]", str(image_path))
    page.click("#render")
    # the progress text shows over the first output (the video), as in test_panels_browser
    expect(page.locator("#result-video")).to_contain_text(re.compile(r"Step \d+/200"), timeout=240_000)
    page.click("#cancel")
    expect(page.locator("#render-status")).to_contain_text("Render cancelled after step", timeout=120_000)
    fig = wait_figure(page, lambda f: "cancelled here" in f["runs"])
    stopped = fig["runs"]["cancelled here"]
    assert stopped[0] == 1 and len(stopped) < 200
    status = page.locator("#render-status").inner_text()
    assert f"after step {len(stopped)} of 200" in status
