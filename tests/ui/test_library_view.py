"""The library table's rows and its filter (no browser)."""

from __future__ import annotations

from studio.loras.compat import Compat
from studio.loras.library import LoraLibrary
from studio.ui.library_view import TABLE_HEADERS, details_html, filter_rows, table_row

OK = Compat(level="compatible", percent=100.0, reason="Every module lands.")


def test_rows_say_name_layout_base_experts_rank_size_badge_and_file(make_lora, lora_dir, studio_cache):
    (lora_dir / "sub").mkdir()
    make_lora("sub/style.safetensors", rank=8)
    make_lora("speed_high_noise.safetensors", rank=4, seed=1)
    make_lora("speed_low_noise.safetensors", rank=16, seed=2)
    items = {i.label: i for i in LoraLibrary([lora_dir], studio_cache).scan()}
    style = dict(zip(TABLE_HEADERS, table_row(items["style"], OK), strict=True))
    size = (lora_dir / "sub/style.safetensors").stat().st_size
    assert style == {
        "Name": "style", "Layout": items["style"].info.layout_label, "Base model": "the demo model",
        "Experts": "both experts", "Rank": 8, "Size (kB)": round(size / 1e3, 1), "Badge": "compatible",
        "File": "sub/style.safetensors",
    }  # fmt: skip
    pair = dict(
        zip(
            TABLE_HEADERS,
            table_row(items["speed"], Compat(level="partial", percent=62.4, reason="r")),
            strict=True,
        )
    )
    assert pair["Experts"] == "high + low pair" and pair["Rank"] == 16 and pair["Badge"] == "partial 62%"
    assert pair["File"] == "speed_high_noise.safetensors + speed_low_noise.safetensors"


def test_the_filter_keeps_rows_holding_every_word_in_any_column():
    rows = [
        (
            ["demo-style", "diffusers / PEFT", "the demo model", "low-noise only", 4, 6.4, "compatible", "a"],
            "1",
        ),
        (["big", "musubi", "Wan 14B", "both experts", 32, 9000.0, "incompatible", "b"], "2"),
        (["speed", "lightx2v", "Wan 14B", "high + low pair", 64, 600.0, "compatible", "c"], "3"),
    ]
    assert [i for _, i in filter_rows(rows, "")] == ["1", "2", "3"]
    assert [i for _, i in filter_rows(rows, "14b")] == ["2", "3"]
    assert [i for _, i in filter_rows(rows, "14B COMPATIBLE")] == ["2", "3"]  # "incompatible" holds it too
    assert [i for _, i in filter_rows(rows, "pair 64")] == ["3"]
    assert filter_rows(rows, "nothing-like-this") == []


def test_the_card_labels_a_demo_file(make_lora, lora_dir, studio_cache):
    make_lora("x.safetensors")
    (item,) = LoraLibrary([lora_dir], studio_cache).scan()
    assert "lora-badge-demo" not in details_html(item, OK)
    card = details_html(item, OK, demo=True)
    assert "lora-badge-demo" in card and "A demo file the studio built" in card
