"""Suggest: the fastest memory mode and precision that fit a card, lowering frames or size only when needed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from studio.models.shapes import (
    shapes_for,
)
from studio.vram.estimate import _validate, estimate
from studio.vram.types import GB, PHASE_LABELS, LoraLoad, MemoryMode, StoragePrecision, Suggestion

# ---------------------------------------------------------------------------
# Suggest
# ---------------------------------------------------------------------------

CANDIDATES: tuple[tuple[MemoryMode, StoragePrecision], ...] = (
    ("gpu", "bf16"),
    ("gpu", "fp8"),
    ("model-offload", "bf16"),
    ("model-offload", "fp8"),
    ("group-offload", "bf16"),
    ("group-offload", "fp8"),
    ("sequential", "bf16"),
    ("sequential", "fp8"),
)
MIN_FRAMES = 17

MODE_LABELS = {
    "gpu": "everything on the GPU",
    "model-offload": "model offload",
    "group-offload": "group offload",
    "sequential": "sequential offload",
}


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def _first_fit(shapes, card_bytes, width, height, frames, loras, cfg, vae_tiling, allow_tiling):
    tried = []
    for mode, precision in CANDIDATES:
        if any(lora.fused for lora in loras) and precision == "fp8":
            continue
        options = [vae_tiling] + ([True] if allow_tiling and not vae_tiling else [])
        for tiling in options:
            est = estimate(
                shapes, width=width, height=height, frames=frames, mode=mode, precision=precision,
                loras=loras, cfg=cfg, vae_tiling=tiling,
            )  # fmt: skip
            tried.append((mode, precision, tiling, est))
            if est.fits(card_bytes) == "fits":
                return (mode, precision, tiling, est), tried
    return None, tried


def _smaller_sizes(width: int, height: int, frames: int, multiple: int):
    """Fewer frames first (4k+1, down to 17), then ~10% smaller sides keeping the aspect."""
    f = frames
    while f > MIN_FRAMES:
        f = max(MIN_FRAMES, ((f - 1) * 3 // 4) // 4 * 4 + 1)
        yield width, height, f
    f = min(frames, MIN_FRAMES)
    scale = 1.0
    while True:
        scale *= 0.9
        w = max(multiple, int(width * scale) // multiple * multiple)
        h = max(multiple, int(height * scale) // multiple * multiple)
        yield w, h, f
        if w == multiple and h == multiple:
            return


def suggest(
    model: Any,
    card_bytes: int | float,
    *,
    width: int,
    height: int,
    frames: int,
    loras: Iterable[LoraLoad] = (),
    cfg: bool = True,
    vae_tiling: bool = False,
    allow_tiling: bool = True,
) -> Suggestion:
    """The fastest (mode, precision) whose estimate fits ``card_bytes`` with 10% to spare.

    Order: gpu bf16 > gpu fp8 > model-offload bf16 > model-offload fp8 > group-offload
    bf16 > group-offload fp8 > sequential bf16 > sequential fp8 (VAE tiling is switched
    on when that alone makes a setup fit). When nothing fits, frames are reduced (4k+1,
    down to 17), then both sides by ~10% steps (multiples of the model's size step,
    aspect kept), and the fastest setup that fits the smaller render is returned.
    """
    shapes = shapes_for(model)
    loras = list(loras)
    _validate(shapes, width, height, frames, "gpu", "bf16")
    found, tried = _first_fit(shapes, card_bytes, width, height, frames, loras, cfg, vae_tiling, allow_tiling)
    if found:
        mode, precision, tiling, est = found
        faster = tried[0][3] if tried[0][3] is not est else None
        reason = (
            f"{MODE_LABELS[mode][0].upper()}{MODE_LABELS[mode][1:]} in {precision}{' with VAE tiling' if tiling else ''} fits "
            f"{width}×{height}×{frames} on this {_gb(card_bytes)} card (peak {_gb(est.peak_vram_bytes)} "
            f"while {PHASE_LABELS[est.peak_phase]})"
        )
        if faster is not None:
            reason += f"; keeping everything on the GPU in bf16 would need {_gb(faster.peak_vram_bytes)}"
        reason += "."
        return Suggestion(
            mode, precision, width, height, frames, tiling, est, est.fits(card_bytes), reason, False
        )

    smallest = min((t[3] for t in tried), key=lambda e: e.peak_vram_bytes)
    cheapest = smallest
    fused = any(lora.fused for lora in loras)
    for w, h, f in _smaller_sizes(width, height, frames, shapes.size_multiple):
        cheapest = estimate(
            shapes, width=w, height=h, frames=f, mode="sequential", precision="bf16" if fused else "fp8",
            loras=loras, cfg=cfg, vae_tiling=True,
        )  # fmt: skip
        if cheapest.fits(card_bytes) != "fits":
            continue
        found, _ = _first_fit(shapes, card_bytes, w, h, f, loras, cfg, vae_tiling, allow_tiling)
        assert found is not None
        mode, precision, tiling, est = found
        reason = (
            f"Nothing fits {width}×{height}×{frames} on this {_gb(card_bytes)} card (the smallest setup "
            f"needs {_gb(smallest.peak_vram_bytes)}); {w}×{h}×{f} with {MODE_LABELS[mode]} in {precision}"
            f"{' and VAE tiling' if tiling else ''} peaks at {_gb(est.peak_vram_bytes)}."
        )
        return Suggestion(mode, precision, w, h, f, tiling, est, est.fits(card_bytes), reason, True)
    r = cheapest.request
    reason = (
        f"Nothing fits on this {_gb(card_bytes)} card, even {r['width']}×{r['height']}×{r['frames']} with "
        f"{MODE_LABELS[r['mode']]} in {r['precision']} and VAE tiling: that still needs "
        f"{_gb(cheapest.peak_vram_bytes)} (while {PHASE_LABELS[cheapest.peak_phase]})."
    )
    return Suggestion(r["mode"], r["precision"], r["width"], r["height"], r["frames"], r["vae_tiling"],
                      cheapest, cheapest.fits(card_bytes), reason, True)  # fmt: skip
