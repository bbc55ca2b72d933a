"""A library of many files, the History grid, and messages without server paths, in a real browser."""

from __future__ import annotations

import re

import pytest
from pagekit import LIBRARY_ROWS, library_names, library_row, pick_in_library_table, studio_page
from playwright.sync_api import expect

from studio.service import Studio
from studio.settings import Settings
from studio.stack.schema import LoraSource, RenderSettings, Stack, StackEntry

pytestmark = pytest.mark.browser
WAIT = 30_000  # ms for the server's answer (the test machine may be busy)
FILTER = "#library-filter textarea, #library-filter input"
RANKS = {"anime-a": 4, "anime-b": 16, "anime-c": 8, "city": 32, "forest": 2}


@pytest.fixture(scope="module")
def env(tmp_path_factory, studio_cache, demo_model_dir, demo_transformer_config, start_image, launch_studio):
    from studio.loras.synthetic import WAN_14B_CONFIG, make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("library-app")
    loras = root / "loras"
    for index in range(20):  # enough files that a dropdown of long labels would be hard to scan
        write_lora(
            loras / f"filler-{index:02d}.safetensors",
            make_lora_tensors(demo_transformer_config, seed=index, rank=1 + index % 3),
        )
    for name, rank in RANKS.items():
        write_lora(
            loras / "sub" / f"{name}.safetensors",
            make_lora_tensors(demo_transformer_config, seed=rank, rank=rank),
        )
    write_lora(
        loras / "big14b.safetensors",
        make_lora_tensors(WAN_14B_CONFIG, rank=1, blocks=[0], modules=["attn1.to_q"]),
    )
    (loras / "sub" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    studio = Studio(
        Settings(lora_dirs=(loras,), outputs_dir=root / "outputs", cache_dir=studio_cache, model="demo")
    )
    studio.manager.load_model("demo")
    style = LoraSource.local(str(loras / "sub" / "anime-a.safetensors"))
    for seed in (21, 22, 23):  # three renders for the History tab
        studio.render(
            start_image,
            RenderSettings(prompt="a fox", width=32, height=32, frames=5, steps=2, seed=seed),
            Stack(entries=[StackEntry(name="anime-a", high=style, low=style, weight_low=0.5)]),
        )
    start_image.save(root / "start.png")
    return {"root": root, "loras": loras, "url": launch_studio(studio)}


@pytest.fixture()
def page(browser, env):
    with studio_page(browser, env["url"]) as page:
        expect(page.locator("#library-count")).to_contain_text("27 LoRAs", timeout=60_000)
        yield page


def sort_column(page, index: int, order: str) -> None:
    header = page.locator(f"#library-table [data-testid=header-{index}]")
    header.hover()  # the column's ⋮ menu button shows on hover
    header.locator(".cell-menu-button").click()
    page.locator("button", has_text=f"Sort {order}").click()


def test_the_table_filters_sorts_and_a_row_picks_the_lora_for_add(page, screenshot):
    page.fill(FILTER, "anime")
    expect(page.locator("#library-count")).to_contain_text("3 of 27 LoRAs match “anime”", timeout=WAIT)
    expect(page.locator(LIBRARY_ROWS)).to_have_count(3, timeout=WAIT)
    assert library_names(page) == ["anime-a", "anime-b", "anime-c"]
    expect(library_row(page, "anime-b")).to_contain_text("sub/anime-b.safetensors", timeout=WAIT)

    sort_column(page, 4, "descending")  # Rank
    expect(page.locator(f"{LIBRARY_ROWS}[data-index='0']")).to_contain_text("anime-b", timeout=WAIT)
    assert library_names(page) == ["anime-b", "anime-c", "anime-a"]
    pick_in_library_table(page, "anime-c")  # a row that moved: the pick follows the row, not its old place
    card = page.locator("#library-card")
    expect(card).to_contain_text("anime-c", timeout=WAIT)
    expect(card).to_contain_text("8 / ")  # rank / alpha
    page.click("#add-lora")
    expect(page.locator("#stack-status")).to_contain_text("Added anime-c on both experts", timeout=WAIT)
    screenshot(page, "library-table")

    page.fill(FILTER, "incompatible 14B")
    expect(page.locator(LIBRARY_ROWS)).to_have_count(1, timeout=WAIT)
    assert library_names(page) == ["big14b"]
    page.fill(FILTER, "")
    expect(page.locator("#library-count")).to_contain_text("27 LoRAs.", timeout=WAIT)


def test_messages_name_files_relative_to_their_lora_folder(page, env):
    root = str(env["root"])
    page.fill(FILTER, "broken")  # the table shows only the rows in view: filter to reach one
    pick_in_library_table(page, "broken")
    card = page.locator("#library-card")
    expect(card).to_contain_text("sub/broken.safetensors", timeout=WAIT)
    assert root not in card.inner_text() and "/tmp" not in card.inner_text()

    gone = env["loras"] / "sub" / "gone.safetensors"
    gone.write_bytes((env["loras"] / "sub" / "forest.safetensors").read_bytes())
    page.click("#refresh-library")
    page.fill(FILTER, "gone")
    expect(page.locator("#library-count")).to_contain_text("1 of 28 LoRAs", timeout=WAIT)
    pick_in_library_table(page, "gone")
    page.click("#add-lora")
    expect(page.locator("#stack-status")).to_contain_text("Added gone", timeout=WAIT)
    gone.unlink()
    page.set_input_files("#start-image input[type=file]", str(env["root"] / "start.png"))
    for field, value in (
        ("#frames input", "5"),
        ("#steps input", "2"),
        ("#width input", "32"),
        ("#height input", "32"),
    ):
        page.fill(field, value)
    page.click("#render")
    status = page.locator("#render-status .studio-status-error")
    expect(status).to_contain_text("sub/gone.safetensors", timeout=60_000)
    text = status.inner_text()
    assert root not in text and not re.search(r"(^|[\s'(])/[\w.-]+/", text), text
    page.click("#refresh-library")  # the file is gone, and so is its row
    expect(page.locator("#library-count")).to_contain_text("0 of 27 LoRAs", timeout=WAIT)


def test_history_shows_a_grid_of_thumbnails_with_captions(page, screenshot):
    page.click("#tab-history-button")
    items = page.locator("#history-gallery .thumbnail-item")
    expect(items).to_have_count(3, timeout=WAIT)
    gallery = page.locator("#history-gallery .grid-container").bounding_box()
    boxes = [items.nth(i).bounding_box() for i in range(3)]
    assert all(b["width"] < 0.4 * gallery["width"] for b in boxes), (boxes, gallery)  # not stretched
    assert len({round(b["y"]) for b in boxes}) == 1  # one row
    for i, seed in enumerate((23, 22, 21)):  # newest first
        item = items.nth(i)
        picture = item.locator("img").bounding_box()
        caption = item.locator(".caption-label")
        assert caption.bounding_box()["y"] >= picture["y"] + picture["height"] - 1  # below, not over it
        assert picture["height"] > 60
        expect(caption).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), timeout=WAIT)
        expect(caption).to_contain_text("anime-a (1/0.5)", timeout=WAIT)
        expect(caption).to_contain_text(f"seed {seed}", timeout=WAIT)
    screenshot(page, "history-grid")
