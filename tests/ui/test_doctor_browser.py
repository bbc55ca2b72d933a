"""Browser test of the Doctor panel: flags as badges on the stack entries, the suggestion, Measure."""

from __future__ import annotations

import pytest
from pagekit import ENTRY, choose, studio_page
from playwright.sync_api import expect

from studio.service import Studio
from studio.settings import Settings

pytestmark = pytest.mark.browser
WAIT = 30_000  # the doctor runs in its own queue; on a busy CPU an update can take seconds


@pytest.fixture(scope="module")
def env(tmp_path_factory, studio_cache, demo_model_dir, demo_transformer_config, launch_studio):
    from studio.loras.synthetic import make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("doctor-ui")
    loras = root / "loras"
    base = make_lora_tensors(demo_transformer_config, seed=1, scale=0.1)

    def scaled(factor):
        return {k: v * factor if "lora_B" in k else v for k, v in base.items()}

    write_lora(loras / "style.safetensors", base)
    write_lora(loras / "anti.safetensors", scaled(-1.0))
    write_lora(loras / "big.safetensors", scaled(5.0))
    write_lora(loras / "other.safetensors", make_lora_tensors(demo_transformer_config, seed=2, scale=0.1))
    settings = Settings(
        lora_dirs=(loras,), outputs_dir=root / "outputs", cache_dir=root / "cache", presets_dir=root / "presets",
        model="demo",
    )  # fmt: skip
    studio = Studio(settings)
    studio.manager.load_model("demo")
    return {"url": launch_studio(studio), "studio": studio}


@pytest.fixture()
def page(browser, env):
    with studio_page(browser, env["url"], height=1200) as page:
        yield page


def add(page, label: str, count: int) -> None:
    choose(page, "#library", f"{label} · ")
    page.click("#add-lora")
    expect(page.locator(ENTRY)).to_have_count(count, timeout=WAIT)


def set_weights(entry, value: str) -> None:
    for expert in ("high", "low"):
        box = entry.locator(f"[id^={expert}-] input[type=number]")
        box.fill(value)
        box.press("Enter")


def test_doctor_panel_flags_badges_suggestion_and_measure(page, screenshot):
    expect(page.locator("#doctor-empty")).to_be_visible(timeout=WAIT)
    add(page, "style", 1)
    expect(page.locator("#doctor-ok")).to_have_text("No problems found.", timeout=WAIT)
    add(page, "anti", 2)
    expect(page.locator("#doctor-problems")).to_contain_text(
        "style + anti (high): conflict (cos -1.00)", timeout=WAIT
    )
    expect(page.locator(f"{ENTRY} .doctor-badge-conflict")).to_have_count(
        2, timeout=WAIT
    )  # a badge on each entry

    add(page, "big", 3)  # the same change ×5: strong, redundant with style, a conflict with anti
    big = page.locator(ENTRY).nth(2)
    expect(big.locator(".doctor-badge-strong")).to_have_count(1, timeout=WAIT)
    expect(big.locator(".doctor-badge-redundant")).to_have_count(1, timeout=WAIT)
    row = page.locator("#doctor-loras tr.doctor-lora", has_text="big").first
    expect(row.locator(".doctor-suggested")).to_have_text("0.2", timeout=WAIT)  # the library median over ×5
    screenshot(page, "doctor-flags")

    set_weights(big, "0.2")  # following the hint (it is never applied by itself)
    expect(big.locator(".doctor-badge-strong")).to_have_count(0, timeout=WAIT)
    expect(big.locator(".doctor-badge-redundant")).to_have_count(1, timeout=WAIT)
    expect(row.locator(".doctor-effect")).to_have_text(
        page.locator("#doctor-loras tr.doctor-lora", has_text="style")
        .first.locator(".doctor-effect")
        .inner_text()
    )

    page.locator(ENTRY).nth(1).locator("[id^=enabled-] input").uncheck()  # anti off: no conflict left
    expect(page.locator(f"{ENTRY} .doctor-badge-conflict")).to_have_count(0, timeout=WAIT)

    page.click("#doctor-measure")
    expect(page.locator("#doctor-measured")).to_contain_text("ms per forward", timeout=WAIT * 2)
    expect(page.locator("#doctor-measured li")).to_have_count(
        2, timeout=WAIT
    )  # style and big are on both experts
    screenshot(page, "doctor-measured")
