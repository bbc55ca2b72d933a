"""The memory panel's bar: the host RAM figure says how much of it the fuse backups take."""

from __future__ import annotations

from studio.models.shapes import A14B
from studio.ui.vram_panel import bar_html
from studio.vram.estimate import estimate
from studio.vram.types import LoraLoad


def test_the_host_ram_figure_names_the_fuse_backups():
    kw = dict(width=832, height=480, frames=81, mode="model-offload")
    with_lora = estimate(A14B, loras=[LoraLoad(rank=64)], **kw)
    backups = with_lora.ram_breakdown["fuse_backups"]
    html = bar_html(with_lora, None, "")
    assert f"<span id='vram-fuse-backups'>{backups / 1e9:.1f} GB</span> fuse backups" in html
    assert f"host RAM {with_lora.peak_ram_bytes / 1e9:.1f} GB" in html
    assert "fuse backups" not in bar_html(estimate(A14B, **kw), None, "")
