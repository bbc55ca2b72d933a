"""The History and Compare tabs: in a real browser (Chromium through Playwright) and at the Gradio level.

Browser tests share one app (module scope) and run in file order: two renders made in
the browser, restoring one from the history and one dropped MP4 whose LoRA was deleted,
the synchronized player, a Baseline comparison and the side-by-side export.
"""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from pagekit import ENTRY, choose, studio_page
from playwright.sync_api import expect

from studio.errors import StudioError
from studio.media.probe import probe_video
from studio.service import Studio
from studio.settings import Settings
from studio.stack.schema import RenderSettings, Stack, StackEntry
from studio.ui.compare_player import diff_html, file_url, head_html, message_html, player_html
from studio.ui.compare_tab import panel_labels, stack_entry_choices, sweep_values
from studio.ui.history_tab import MAX_DROP_BYTES, check_drop, opened_tab, resolve_render, restore_message
from studio.workflows.compare import DiffRow
from studio.workflows.history import Restored

SMALL = (("#width input", "32"), ("#height input", "32"), ("#frames input", "5"), ("#steps input", "2"))


# ----------------------------------------------------------------------------- Gradio level


def test_player_html_escapes_and_serves_through_the_file_route(tmp_path):
    video = tmp_path / "a b&c.mp4"
    html_text = player_html([video, tmp_path / "x.mp4"], ["<script>alert(1)</script>", 'q"uote'])
    assert "<script>alert" not in html_text and "&lt;script&gt;" in html_text
    assert "q&quot;uote" in html_text
    assert html_text.count("<video") == 2 and "data-compare-player" in html_text
    assert file_url(video) == "gradio_api/file=" + str(video.resolve()).replace(" ", "%20").replace(
        "&", "%26"
    )
    assert 'src="gradio_api/file=' in html_text and "%26" in html_text
    assert "<b>" not in message_html("<b>hi</b>")


def test_diff_table_escapes_every_cell():
    rows = [DiffRow("seed", ["1", "2"]), DiffRow("LoRA <i>x</i> (high / low)", ["1 / 1", "<b>off</b>"])]
    table = diff_html(rows, ["one", "<two>"])
    assert "<i>" not in table and "<b>" not in table and "&lt;two&gt;" in table
    assert table.count("<tr>") == 3
    assert "same settings" in diff_html([], ["a", "b"])


def test_head_html_holds_the_player_script():
    head = head_html()
    assert head.startswith("<script") and head.rstrip().endswith("</script>")
    assert "studioCompare" in head and head.count("</script>") == 1


def test_restore_inputs_are_checked(tmp_path):
    (tmp_path / "r.mp4").write_bytes(b"x")
    assert resolve_render(tmp_path, "r.mp4") == tmp_path / "r.mp4"
    for bad in ("../r.mp4", "", ".hidden.mp4", "gone.mp4", "a/b.mp4"):
        with pytest.raises(StudioError):
            resolve_render(tmp_path, bad)
    with pytest.raises(StudioError, match="neither an MP4"):
        check_drop(str(tmp_path / "notes.txt"))
    big = tmp_path / "big.mp4"
    with big.open("wb") as f:
        f.truncate(MAX_DROP_BYTES + 1)
    with pytest.raises(StudioError, match="MB"):
        check_drop(str(big))
    assert check_drop(str(tmp_path / "r.mp4")) == tmp_path / "r.mp4"


def test_panel_labels_name_seed_and_loras():
    records = [
        {"settings": {"seed": 1}, "stack": {"entries": []}},
        {"settings": {}, "stack": {"entries": "bad"}},
        {
            "settings": {"seed": 2},
            "stack": Stack(entries=[StackEntry.single("x" * 80 + ".safetensors")]).model_dump(),
        },
    ]
    labels = panel_labels(records)
    assert labels[:2] == ["A · seed 1 · no LoRAs", "B · seed ? · unreadable stack"]
    assert labels[2].startswith("C · seed 2 · xxx") and labels[2].endswith("…") and len(labels[2]) == 48


def test_restore_message_lists_missing_loras_and_another_model():
    studio = SimpleNamespace(spec=SimpleNamespace(name="demo", label="Demo model"))
    restored = Restored(
        settings=RenderSettings(seed=3), stack=Stack(), image=None, missing_loras=["gone (gone.safetensors)"],
        record={}, source="video", model="wan2.2-i2v-a14b",
    )  # fmt: skip
    message, kind = restore_message(studio, restored)
    assert kind == "warning"
    assert "(seed 3)" in message and "Missing on this machine: gone (gone.safetensors)." in message
    assert "They stay in the stack" in message and "used the model wan2.2-i2v-a14b" in message
    restored.missing_loras, restored.model, restored.image = [], "demo", object()
    assert restore_message(studio, restored) == (
        "Restored the render from the settings embedded in the video (seed 3).",
        "ok",
    )


def test_small_helpers():
    assert sweep_values("0, 0.5;1.0  2") == ["0", "0.5", "1.0", "2"]
    stack = Stack(entries=[StackEntry.single("style.safetensors", 1.0)])
    assert stack_entry_choices(stack.model_dump(mode="json")) == [("style", stack.entries[0].id)]
    assert stack_entry_choices({"entries": "bad"}) == []

    class Evt:
        def __init__(self, value, index):
            self.value, self.index = value, index

    assert opened_tab(Evt("History", 1), "history", "History")
    assert not opened_tab(Evt("Compare", 2), "history", "History")
    assert not opened_tab(None, "history", "History")


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def env(tmp_path_factory, studio_cache, demo_model_dir, demo_transformer_config, launch_studio):
    from studio.loras.synthetic import make_lora_tensors, write_lora

    root = tmp_path_factory.mktemp("history-compare")
    loras = root / "loras"
    write_lora(loras / "style.safetensors", make_lora_tensors(demo_transformer_config, seed=1, scale=0.3))
    write_lora(loras / "gone.safetensors", make_lora_tensors(demo_transformer_config, seed=2, scale=0.3))
    studio = Studio(
        Settings(lora_dirs=(loras,), outputs_dir=root / "outputs", cache_dir=studio_cache, model="demo")
    )
    studio.manager.load_model("demo")
    url = launch_studio(studio)
    return {"url": url, "root": root, "loras": loras, "studio": studio}


@pytest.fixture()
def page(browser, env):
    with studio_page(browser, env["url"], accept_downloads=True) as page:
        yield page


@pytest.fixture(scope="module")
def start_png(tmp_path_factory, start_image):
    path = tmp_path_factory.mktemp("start") / "start.png"
    start_image.save(path)
    return path


def records(env) -> list[dict]:
    """The render records in the outputs folder, newest file first."""
    sidecars = sorted(
        (env["root"] / "outputs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True
    )
    return [json.loads(p.read_text()) for p in sidecars]


def set_up_editor(page, start_png, prompt: str, seed: int) -> None:
    page.set_input_files("#start-image input[type=file]", str(start_png))
    page.fill("#prompt textarea", prompt)
    for field, value in (*SMALL, ("#seed input", str(seed))):
        page.fill(field, value)


def add_lora(page, label: str) -> None:
    choose(page, "#library", f"{label} · ")
    page.click("#add-lora")
    page.wait_for_selector(f"#stack-status:has-text('Added {label}')")


def open_tab(page, name: str) -> None:
    page.click(f"#tab-{name}-button")
    page.wait_for_selector(f"#tab-{name}", state="visible")


def gallery_items(page):
    return page.locator("#history-gallery .thumbnail-item")


@pytest.mark.browser
def test_history_lists_renders_and_clicking_one_restores_it(page, env, start_png, screenshot):
    set_up_editor(page, start_png, "a red fox", 11)
    add_lora(page, "style")
    page.click("#render")
    page.wait_for_selector("#render-status:has-text('Rendered 5 frames')", timeout=60_000)
    page.fill("#prompt textarea", "a blue bird")
    page.fill("#seed input", "22")
    page.locator(ENTRY).first.locator("[id^=remove-]").click()
    expect(page.locator(ENTRY)).to_have_count(0)
    page.click("#render")
    page.wait_for_selector("#render-status:has-text('seed 22')", timeout=60_000)

    open_tab(page, "history")
    expect(gallery_items(page)).to_have_count(2)
    expect(page.locator("#history-count")).to_contain_text("2 renders")
    expect(gallery_items(page).filter(has_text="seed 11")).to_contain_text("style (1/1)")
    screenshot(page, "history")

    gallery_items(page).filter(has_text="seed 11").click()
    page.wait_for_selector("#tab-studio", state="visible")
    expect(page.locator("#prompt textarea")).to_have_value("a red fox")
    expect(page.locator("#seed input")).to_have_value("11")
    expect(page.locator("#width input")).to_have_value("32")
    expect(page.locator(ENTRY)).to_have_count(1)
    expect(page.locator(ENTRY).first).to_contain_text("style")
    expect(page.locator("#render-status")).to_contain_text(
        "Restored the render from its settings file (seed 11)"
    )
    expect(page.locator("#start-image img")).to_have_count(1)
    screenshot(page, "studio-restored")


@pytest.mark.browser
def test_dropping_an_mp4_restores_it_and_lists_the_missing_lora(page, env, start_image, tmp_path):
    lora = env["loras"] / "gone.safetensors"
    stack = Stack(entries=[StackEntry.single(lora, 0.6, 0.4)])
    settings = RenderSettings(
        prompt="a dropped render", width=32, height=32, frames=5, steps=2, seed=33, fps=8
    )
    saved = env["studio"].render(start_image, settings, stack, session="test")
    dropped = tmp_path / "dropped.mp4"  # alone: restored from the record embedded in the MP4
    shutil.copy(saved.video, dropped)
    lora.unlink()

    open_tab(page, "history")
    page.set_input_files("#history-drop input[type=file]", str(dropped))
    page.wait_for_selector("#tab-studio", state="visible", timeout=30_000)
    status = page.locator("#render-status")
    expect(status).to_contain_text("settings embedded in the video (seed 33)")
    expect(status).to_contain_text("Missing on this machine: gone")
    expect(status.locator(".studio-status-warning")).to_have_count(1)
    expect(page.locator("#prompt textarea")).to_have_value("a dropped render")
    expect(page.locator("#seed input")).to_have_value("33")
    expect(page.locator(ENTRY)).to_have_count(1)  # the missing LoRA stays in the stack
    expect(page.locator(ENTRY).first).to_contain_text("gone")

    # A JSON file that is not a render's settings gets a sentence, and the editor is left as it is.
    other = tmp_path / "notes.json"
    other.write_text('{"hello": "<b>world</b>"}')
    open_tab(page, "history")
    page.set_input_files("#history-drop input[type=file]", str(other))
    expect(page.locator("#history-status .studio-status-error")).to_contain_text(
        "holds no studio render settings"
    )
    expect(page.locator("#tab-history")).to_be_visible()
    expect(page.locator("#prompt textarea")).to_have_value("a dropped render")


def wait_videos(page, count: int) -> None:
    expect(page.locator("#compare-player video")).to_have_count(count)
    page.wait_for_function(
        "n => { const vs = [...document.querySelectorAll('#compare-player video')];"
        " return vs.length === n && vs.every(v => v.readyState >= 2 && v.duration > 0); }",
        arg=count,
        timeout=20_000,
    )


TIMES = "() => [...document.querySelectorAll('#compare-player video')].map(v => [v.currentTime, v.paused])"


@pytest.mark.browser
def test_compare_plays_two_renders_in_sync_with_a_table_of_differences(page, env, screenshot):
    open_tab(page, "compare")
    choices = page.locator("#compare-choices label")
    expect(choices).to_have_count(3)
    choices.filter(has_text="seed 11").locator("input").check()
    choices.filter(has_text="seed 22").locator("input").check()
    wait_videos(page, 2)
    table = page.locator("#compare-diff table")
    expect(table.locator("tbody th", has_text="seed")).to_have_count(1)
    expect(table).to_contain_text("prompt")
    expect(table.locator("tbody tr", has_text="LoRA style")).to_contain_text("1 / 1")

    labels = page.locator("#compare-player .compare-label")
    expect(labels).to_have_count(2)
    texts = labels.all_inner_texts()
    assert [t.split(" · ")[0] for t in texts] == ["A", "B"]
    assert sorted(t.split(" · ", 1)[1] for t in texts) == ["seed 11 · style (1/1)", "seed 22 · no LoRAs"]

    # One play button for both: at half speed a 5-frame clip lasts 1.25 s, so no loop happens while sampling.
    page.select_option("#compare-player select[data-compare-action=rate]", "0.5")
    page.click("#compare-player [data-compare-action=toggle]")
    expect(page.locator("#compare-player .compare-play")).to_contain_text("Pause")
    samples = []
    for _ in range(5):
        page.wait_for_timeout(100)
        samples.append(page.evaluate(TIMES))
    assert samples[-1][0][0] > samples[0][0][0] + 0.1, samples  # the videos advance
    for (t1, p1), (t2, p2) in samples:
        assert not p1 and not p2, samples
        assert abs(t1 - t2) < 0.1, samples  # at the same moment of both videos

    page.click("#compare-player [data-compare-action=toggle]")
    expect(page.locator("#compare-player .compare-play")).to_contain_text("Play")
    paused = page.evaluate(TIMES)
    page.wait_for_timeout(300)
    assert page.evaluate(TIMES) == paused
    (t1, p1), (t2, p2) = paused
    assert p1 and p2 and abs(t1 - t2) < 0.02

    # One scrub slider for all videos.
    page.locator("#compare-player .compare-scrub").evaluate(
        "el => { el.value = 500; el.dispatchEvent(new Event('input', {bubbles: true})); }"
    )
    page.wait_for_timeout(200)
    (t1, _), (t2, _) = page.evaluate(TIMES)
    assert t1 == pytest.approx(5 / 8 / 2, abs=0.05) and t2 == pytest.approx(t1, abs=0.01)

    screenshot(page, "compare")


@pytest.mark.browser
def test_baseline_comparison_renders_with_one_seed_and_exports_side_by_side(
    page, env, start_png, screenshot, tmp_path
):
    before = len(records(env))
    set_up_editor(page, start_png, "a comparison", 44)
    open_tab(page, "compare")
    page.click("#compare-baseline")
    status = page.locator("#compare-status")
    expect(status.locator(".studio-status-error")).to_contain_text("no active LoRA")

    open_tab(page, "studio")
    add_lora(page, "style")
    open_tab(page, "compare")
    page.click("#compare-baseline")
    expect(status).to_contain_text("Baseline: rendered 2 videos with seed 44", timeout=60_000)
    wait_videos(page, 2)
    labels = page.locator("#compare-player .compare-label")
    expect(labels).to_have_text(["with the stack", "baseline (no LoRAs)"])
    new = records(env)[:2]
    assert len(records(env)) == before + 2
    assert {r["settings"]["seed"] for r in new} == {44}
    assert sorted(len(r["stack"]["entries"]) for r in new) == [0, 1]
    expect(page.locator("#compare-diff table")).to_contain_text("LoRA style")
    expect(page.locator("#compare-diff table tbody th", has_text="seed")).to_have_count(0)
    expect(page.locator("#compare-choices input:checked")).to_have_count(2)

    # A weight sweep of the stack's one LoRA (chosen for us), same seed.
    expect(page.locator("#compare-sweep-entry input")).to_have_value("style")
    page.fill("#compare-sweep-values input", "0, 1.5")
    page.click("#compare-sweep")
    expect(status).to_contain_text("Weight sweep: rendered 2 videos with seed 44", timeout=60_000)
    wait_videos(page, 2)
    expect(labels).to_have_text(["style 0", "style 1.5"])
    expect(page.locator("#compare-diff table tbody tr", has_text="LoRA style")).to_contain_text("1.5 / 1.5")

    # Leave-one-out: the stack, then the stack without each LoRA.
    page.click("#compare-loo")
    expect(status).to_contain_text("Leave-one-out: rendered 2 videos with seed 44", timeout=60_000)
    expect(labels).to_have_text(["full stack", "without style"])

    # They are all in the history too.
    open_tab(page, "history")
    expect(gallery_items(page)).to_have_count(before + 6)
    expect(gallery_items(page).filter(has_text="seed 44")).to_have_count(6)

    # At most four renders chosen by hand: a fifth is refused with a sentence.
    open_tab(page, "compare")
    boxes = page.locator("#compare-choices label input")
    expect(boxes).to_have_count(before + 6)
    checked = page.locator("#compare-choices input:checked")
    unchecked = page.locator("#compare-choices label input:not(:checked)")
    while (n := checked.count()) < 4:
        unchecked.first.check()
        expect(checked).to_have_count(n + 1)
        expect(page.locator("#compare-player video")).to_have_count(n + 1)
    wait_videos(page, 4)
    unchecked.first.click()  # the server unticks it again at once
    expect(status).to_contain_text("at most 4 renders")
    expect(checked).to_have_count(4)
    expect(page.locator("#compare-player video")).to_have_count(4)

    # Export: one MP4, the panels next to each other (32 px each, 4 px gaps), as many frames as the videos.
    page.click("#compare-export")
    expect(status).to_contain_text("Exported 4 videos side by side", timeout=30_000)
    download = page.locator("#compare-download")
    expect(download).to_be_visible()
    with page.expect_download() as info:
        download.click()
    path = tmp_path / "side-by-side.mp4"
    info.value.save_as(path)
    video = probe_video(path)
    assert (video.width, video.height, video.frames) == (4 * 32 + 3 * 4, 32, 5)
    screenshot(page, "compare-four")
