"""The Hub tab in a real browser, against the loopback fake Hugging Face Hub."""

from __future__ import annotations

import pytest
from pagekit import ENTRY, choose
from playwright.sync_api import expect
from safetensors.torch import save

from studio.loras.synthetic import WAN_14B_CONFIG, make_lora_tensors
from studio.models.demo import TRANSFORMER_CONFIG
from studio.service import Studio
from studio.settings import Settings

pytestmark = pytest.mark.browser
REPO = "alice/wan22-orbit-lora"


def lora_bytes(config, seed, **kw) -> bytes:
    return save({k: v.contiguous() for k, v in make_lora_tensors(config, seed=seed, **kw).items()})


def test_search_inspect_download_and_add_from_the_hub(
    fake_hub, browser, launch_studio, tmp_path, studio_cache, demo_model_dir, screenshot
):
    fake_hub.add_repo(
        REPO,
        {
            "orbit_high_noise.safetensors": lora_bytes(TRANSFORMER_CONFIG, 1),
            "orbit_low_noise.safetensors": lora_bytes(TRANSFORMER_CONFIG, 2),
            "orbit_14b.safetensors": lora_bytes(
                WAN_14B_CONFIG, 3, rank=1, blocks=[0], modules=["attn1.to_q"]
            ),
            "README.md": "---\ninstance_prompt: orbit shot\ntags: [lora]\n---\nA camera orbit for Wan 2.2 I2V.\n",
        },
        tags=["lora", "base_model:adapter:Wan-AI/Wan2.2-I2V-A14B", "image-to-video"],
        downloads=321,
    )
    settings = Settings(
        lora_dirs=(tmp_path / "loras",), outputs_dir=tmp_path / "outputs", cache_dir=tmp_path / "cache",
        model=str(demo_model_dir),
    )  # fmt: skip
    studio = Studio(settings)
    studio.manager.load_model(str(demo_model_dir))
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    page.goto(launch_studio(studio))
    page.wait_for_selector("#render")

    page.get_by_role("tab", name="Hub").click()
    page.fill("#hub-query textarea", "orbit")
    page.click("#hub-search")
    expect(page.locator("#hub-results")).to_contain_text(REPO)
    expect(page.locator("#hub-results")).to_contain_text("orbit shot")  # trigger words from the card
    page.click("#hub-files")
    files = page.locator("#hub-files-view")
    expect(files).to_contain_text("high + low pair")
    expect(files.locator(".lora-badge-compatible")).to_have_count(1)
    expect(files.locator(".lora-badge-incompatible")).to_have_count(1)
    assert not fake_hub.requests_for("*.safetensors", method="GET", host="cdn") or all(
        r.range for r in fake_hub.requests_for("*.safetensors", method="GET", host="cdn")
    )  # only headers were read so far

    choose(page, "#hub-item", "orbit_14b [incompatible]")
    page.click("#hub-download")
    expect(page.locator("#hub-status")).to_contain_text("would change nothing")

    choose(page, "#hub-item", "orbit [compatible]")
    page.click("#hub-download")
    expect(page.locator("#hub-status")).to_contain_text("Downloaded orbit", timeout=30_000)
    page.click("#hub-add")
    expect(page.locator("#hub-status")).to_contain_text("Added orbit")
    page.get_by_role("tab", name="Studio").click()
    expect(page.locator(ENTRY)).to_have_count(1)
    expect(page.locator(ENTRY).first).to_contain_text("orbit_high_noise.safetensors")
    expect(page.locator(ENTRY).first).to_contain_text("orbit_low_noise.safetensors")
    screenshot(page, "hub")
    page.close()
