"""A newcomer's first minute (fresh clone: no LoRA files, no renders, no network), in a real browser.

The page opens without an error in any tab, the library holds the demo LoRAs, and the README's
quick start (a render with a demo LoRA, then its comparison with the base) works click by click.
"""

from __future__ import annotations

import pytest
from pagekit import (
    ENTRY,
    LIBRARY_ROWS,
    library_names,
    library_row,
    pick_in_library_table,
    red_texts,
    studio_page,
)
from playwright.sync_api import expect

from studio.service import Studio
from studio.settings import Settings

pytestmark = pytest.mark.browser
WAIT = 30_000  # ms for the server's answer (the test machine may be busy)
TABS = ("studio", "hub", "history", "compare")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, studio_cache, demo_model_dir, launch_studio):
    """The studio as `make run` starts it in a fresh clone: no ./loras, no outputs, demo LoRAs on."""
    root = tmp_path_factory.mktemp("fresh-clone")
    settings = Settings.from_env(
        {"STUDIO_CACHE": str(studio_cache)}, outputs_dir=root / "outputs", presets_dir=root / "user_presets"
    ).with_(lora_dirs=[root / "loras"])
    assert settings.demo_loras and not (root / "loras").exists()
    studio = Studio(settings)
    studio.manager.load_model("demo")
    return studio, launch_studio(studio)


@pytest.fixture()
def page(browser, fresh):
    with studio_page(browser, fresh[1]) as page:
        # the page's load events answer first
        expect(page.locator(LIBRARY_ROWS)).to_have_count(3, timeout=60_000)
        yield page


def open_tab(page, name: str) -> None:
    page.click(f"#tab-{name}-button")
    page.wait_for_selector(f"#tab-{name}", state="visible")


def test_the_page_opens_with_no_error_in_any_tab(page, screenshot):
    expect(page.locator("#vram-view")).to_contain_text("Peak VRAM")  # the last panel to fill in
    page.wait_for_timeout(1500)  # every load event has answered
    for tab in TABS:
        open_tab(page, tab)
        page.wait_for_timeout(700)
        assert red_texts(page) == [], f"the {tab} tab shows an error"
        screenshot(page, f"first-minute-{tab}")
    # the preset panel's export button has nothing to export yet, and says nothing about it
    open_tab(page, "studio")
    expect(page.locator("#presets-status")).to_have_text("", timeout=WAIT)
    expect(page.locator("#export-preset")).to_be_disabled()


def test_the_library_holds_the_demo_loras_labelled_as_demo_files(page):
    assert library_names(page) == ["demo-motion", "demo-pair", "demo-style"]
    row = library_row(page, "demo-pair")
    expect(row).to_contain_text("high + low pair", timeout=WAIT)
    expect(row).to_contain_text("the demo model", timeout=WAIT)
    expect(row).to_contain_text("compatible", timeout=WAIT)
    pick_in_library_table(page, "demo-style")
    card = page.locator("#library-card")
    expect(card.locator(".lora-badge-demo")).to_have_text("demo", timeout=WAIT)
    expect(card).to_contain_text("Demo LoRA: style, for the low-noise expert only", timeout=WAIT)
    expect(card).to_contain_text("A demo file the studio built for the demo model", timeout=WAIT)
    expect(card).to_contain_text("low-noise only", timeout=WAIT)
    page.click("#add-lora")
    expect(page.locator("#stack-status")).to_contain_text("Added demo-style on low-noise", timeout=WAIT)


@pytest.mark.slow
def test_the_readme_quick_start_renders_with_a_demo_lora_and_compares_with_the_base(
    page, fresh, tmp_path, start_image
):
    """Exactly the clicks of README.md's quick start, with the demo model's default settings."""
    picture = tmp_path / "my-picture.png"
    start_image.save(picture)
    # 1. Start image: drop any picture.  2. Prompt.
    page.set_input_files("#start-image input[type=file]", str(picture))
    page.fill("#prompt textarea", "a cat walks")
    # 3. LoRA library: click the row demo-motion, then Add to stack.
    pick_in_library_table(page, "demo-motion")
    page.click("#add-lora")
    expect(page.locator("#stack-status")).to_contain_text("Added demo-motion on both experts", timeout=30_000)
    expect(page.locator(ENTRY)).to_have_count(1, timeout=30_000)
    # 4. Render.
    page.click("#render")
    status = page.locator("#render-status")
    expect(status).to_contain_text("Rendered", timeout=180_000)
    expect(status).to_contain_text("demo-motion (1/1)", timeout=WAIT)
    page.wait_for_function(
        "() => { const v = document.querySelector('#result-video video'); return v && v.duration > 0; }"
    )
    # 5. Compare tab: Baseline (no LoRAs).
    open_tab(page, "compare")
    page.click("#compare-baseline")
    expect(page.locator("#compare-status")).to_contain_text("Baseline: rendered 2 videos", timeout=300_000)
    expect(page.locator("#compare-player .compare-label")).to_have_text(
        ["with the stack", "baseline (no LoRAs)"]
    )
    page.wait_for_function(
        "() => { const vs = [...document.querySelectorAll('#compare-player video')];"
        " return vs.length === 2 && vs.every(v => v.readyState >= 2 && v.duration > 0); }",
        timeout=30_000,
    )
    expect(page.locator("#compare-diff table")).to_contain_text("demo-motion", timeout=WAIT)
    assert red_texts(page) == []
    records = sorted(p.name for p in fresh[0].settings.outputs_dir.glob("*.json"))
    assert len(records) == 3  # the render and the two of the comparison
