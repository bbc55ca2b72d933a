"""Comparing renders: what differs, one-click comparison renders, and a side-by-side MP4.

- :func:`diff_settings` lists the settings and LoRA weights that differ between two or
  more render records (a table for the UI);
- :func:`comparison_requests` builds the renders of a one-click comparison from the
  current request, all with the same seed and start image: ``"baseline"`` (the stack and
  no LoRAs), ``"leave-one-out"`` (the stack, then the stack minus each LoRA in turn) and
  ``"sweep"`` (one LoRA's high-, low- or both weights over a list of values);
- :func:`side_by_side` writes one MP4 with the videos next to each other, scaled to a
  common height, a label over each panel, shorter videos holding their last frame;
- :func:`comparison_view` gives the UI what its synchronized player needs (the videos,
  their labels and the table of differences).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from studio.errors import ValidationError
from studio.media.probe import probe_video, read_frames
from studio.media.video import write_video
from studio.stack.schema import MAX_WEIGHT, MIN_WEIGHT, RenderSettings, Stack, StackEntry
from studio.workflows.history import load_record

__all__ = [
    "COMPARISON_KIND",
    "ComparisonView",
    "DiffRow",
    "comparison_requests",
    "comparison_view",
    "default_labels",
    "diff_settings",
    "run_comparison",
    "side_by_side",
]

COMPARISON_KIND = "wan-lora-studio/comparison"
MAX_PANELS = 8
MAX_COMPARISON_RENDERS = 9
MAX_OUTPUT_WIDTH = 3840
MAX_OUTPUT_HEIGHT = 1080
ComparisonKind = Literal["baseline", "leave-one-out", "sweep"]
SweepExpert = Literal["high", "low", "both"]


# ----------------------------------------------------------------------------- differences


@dataclass(frozen=True)
class DiffRow:
    """One row of the comparison table: a setting and its value in each render."""

    field: str
    values: list[str]


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _as_record(item: dict[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    return load_record(item)[0]


def _settings_rows(record: dict[str, Any]) -> dict[str, str]:
    s = record.get("settings") or {}
    model = record.get("model")
    guidance = s.get("guidance")
    low = s.get("guidance_low")
    rows = {
        "model": _fmt(model.get("label") or model.get("name") if isinstance(model, dict) else model),
        "prompt": _fmt(s.get("prompt")),
        "negative prompt": _fmt(s.get("negative_prompt")),
        "size": f"{s.get('width')}×{s.get('height')}",
        "frames": _fmt(s.get("frames")),
        "fps": _fmt(s.get("fps")),
        "steps": _fmt(s.get("steps")),
        "guidance (high-noise)": _fmt(guidance),
        "guidance (low-noise)": _fmt(guidance if low is None else low),
        "shift": _fmt(s.get("shift")),
        "seed": _fmt(s.get("seed")),
        "fused LoRAs": _fmt(record.get("fused")),
        "start image": _fmt(((record.get("start_image") or {}).get("sha256") or "")[:12] or None),
    }
    return rows


def _lora_key(entry: dict[str, Any]) -> tuple[str, str, str]:
    def label(source: Any) -> str:
        if not isinstance(source, dict):
            return ""
        if source.get("repo"):
            return f"{source.get('repo')}/{source.get('file')}"
        return Path(str(source.get("path") or "")).name

    return (str(entry.get("name") or "?"), label(entry.get("high")), label(entry.get("low")))


def _lora_value(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "—"
    if entry.get("enabled") is False:
        return "off"
    high = _fmt(entry.get("weight_high")) if entry.get("high") else "—"
    low = _fmt(entry.get("weight_low")) if entry.get("low") else "—"
    return f"{high} / {low}"


def diff_settings(records: Sequence[dict[str, Any] | str | Path], *, all_rows: bool = False) -> list[DiffRow]:
    """The settings and LoRA weights (``high / low``) that differ between ``records``.

    ``records`` are render records (sidecar dicts) or paths of renders (MP4 or sidecar).
    With ``all_rows`` every row is returned, also those that are the same everywhere.
    """
    loaded = [_as_record(r) for r in records]
    if not loaded:
        return []
    per_record = [_settings_rows(r) for r in loaded]
    rows = [DiffRow(name, [rows[name] for rows in per_record]) for name in per_record[0]]
    keys: list[tuple[str, str, str]] = []
    by_record: list[dict[tuple[str, str, str], dict[str, Any]]] = []
    for record in loaded:
        entries = {}
        for entry in (record.get("stack") or {}).get("entries") or []:
            if isinstance(entry, dict):
                key = _lora_key(entry)
                entries.setdefault(key, entry)
                if key not in keys:
                    keys.append(key)
        by_record.append(entries)
    names = [k[0] for k in keys]
    for key in keys:
        label = key[0] if names.count(key[0]) == 1 else f"{key[0]} ({key[1] or key[2]})"
        rows.append(
            DiffRow(f"LoRA {label} (high / low)", [_lora_value(entries.get(key)) for entries in by_record])
        )
    if all_rows:
        return rows
    return [row for row in rows if len(set(row.values)) > 1]


def default_labels(
    records: Sequence[dict[str, Any] | str | Path],
    names: Sequence[str] | None = None,
    *,
    max_length: int = 48,
) -> list[str]:
    """A short label per render from what differs (e.g. "steps 4 · LoRA style 0.8 / 0.3"), else its name."""
    loaded = [_as_record(r) for r in records]
    names = list(names) if names is not None else [f"render {i + 1}" for i in range(len(loaded))]
    rows = [r for r in diff_settings(loaded) if r.field not in {"prompt", "negative prompt", "start image"}]
    labels = []
    for i, name in enumerate(names):
        parts = [f"{row.field.replace(' (high / low)', '')} {row.values[i]}" for row in rows[:2]]
        text = " · ".join(parts) or name
        labels.append(text if len(text) <= max_length else text[: max_length - 1] + "…")
    return labels


# ----------------------------------------------------------------------------- comparison renders


def _replace(request: Any, **changes: Any) -> Any:
    return dataclasses.replace(request, **changes)


def _sweep_values(values: Sequence[float]) -> list[float]:
    cleaned = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValidationError(f"The sweep value {value!r} is not a number.") from None
        if number != number or not (MIN_WEIGHT <= number <= MAX_WEIGHT):
            raise ValidationError(
                f"The sweep value {number:g} is outside the allowed weights ({MIN_WEIGHT:g} to {MAX_WEIGHT:g})."
            )
        if number not in cleaned:
            cleaned.append(number)
    if not cleaned:
        raise ValidationError("Give at least one weight to sweep over, e.g. 0, 0.5, 1.0.")
    if len(cleaned) > MAX_COMPARISON_RENDERS:
        raise ValidationError(f"A sweep renders at most {MAX_COMPARISON_RENDERS} weights; give fewer values.")
    return cleaned


def comparison_requests(
    request: Any,
    kind: ComparisonKind = "baseline",
    entry_id: str | None = None,
    expert: SweepExpert = "both",
    values: Sequence[float] = (),
) -> list[tuple[str, Any]]:
    """The renders of a one-click comparison as ``(label, RenderRequest)`` pairs.

    All share ``request``'s image and one seed (``request``'s, or one drawn now when it
    has none), so only the stack differs:

    - ``"baseline"``: the stack as it is, and no LoRAs;
    - ``"leave-one-out"``: the stack, then the stack without each active LoRA in turn;
    - ``"sweep"``: entry ``entry_id`` with its ``expert`` weight(s) (``"high"``, ``"low"``
      or ``"both"``) set to each of ``values``.
    """
    settings: RenderSettings = request.settings.with_seed()
    base = _replace(request, settings=settings)
    stack: Stack = request.stack
    if kind == "baseline":
        if not stack.active():
            raise ValidationError(
                "The stack has no active LoRA, so a baseline comparison would show the same video twice."
            )
        return [("with the stack", base), ("baseline (no LoRAs)", _replace(base, stack=Stack()))]
    if kind == "leave-one-out":
        active = stack.active()
        if not active:
            raise ValidationError("Leave-one-out needs at least one active LoRA in the stack.")
        if len(active) + 1 > MAX_COMPARISON_RENDERS:
            raise ValidationError(
                f"Leave-one-out renders the stack plus one render per LoRA, at most {MAX_COMPARISON_RENDERS}; "
                "disable some LoRAs first."
            )
        pairs = [("full stack", base)]
        for entry in active:
            pairs.append((f"without {entry.name}", _replace(base, stack=stack.removed(entry.id))))
        return _unique_labels(pairs)
    if kind == "sweep":
        if entry_id is None:
            raise ValidationError("Choose the LoRA whose weight to sweep.")
        entry: StackEntry = stack.entries[stack.index(entry_id)]
        experts = ("high", "low") if expert == "both" else (expert,)
        if expert not in ("high", "low", "both"):
            raise ValidationError(f"Sweep the 'high', 'low' or 'both' weights, not {expert!r}.")
        for e in experts:
            if entry.source(e) is None:
                word = "high-noise" if e == "high" else "low-noise"
                raise ValidationError(
                    f"{entry.name} has no {word} file, so its {word} weight has no effect; sweep the other expert."
                )
        pairs = []
        for value in _sweep_values(values):
            changes: dict[str, Any] = {f"weight_{e}": value for e in experts}
            changes["enabled"] = True
            which = "" if expert == "both" else f" {expert}"
            pairs.append(
                (f"{entry.name}{which} {value:g}", _replace(base, stack=stack.updated(entry_id, **changes)))
            )
        return _unique_labels(pairs)
    raise ValidationError(f"Unknown comparison {kind!r}; choose baseline, leave-one-out or sweep.")


def _unique_labels(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    seen: dict[str, int] = {}
    out = []
    for label, request in pairs:
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label} ({seen[label]})", request))
    return out


@dataclass(frozen=True)
class ComparisonView:
    """What the UI's synchronized player and table show."""

    videos: list[Path]
    labels: list[str]
    rows: list[DiffRow]
    records: list[dict[str, Any]]

    def table(self) -> list[list[str]]:
        """The differences as rows for a ``gr.Dataframe`` (header: ["setting", *labels])."""
        return [[row.field, *row.values] for row in self.rows]


def comparison_view(videos: Sequence[str | Path], labels: Sequence[str] | None = None) -> ComparisonView:
    """2 to 4 (up to 8) renders side by side: their records, labels and the table of differences."""
    paths = [Path(v) for v in videos]
    if not 2 <= len(paths) <= MAX_PANELS:
        raise ValidationError(f"Choose between 2 and {MAX_PANELS} renders to compare (got {len(paths)}).")
    records = [load_record(p)[0] for p in paths]
    if labels is None or not any(labels):
        labels = default_labels(records, [p.stem for p in paths])
    return ComparisonView(videos=paths, labels=list(labels), rows=diff_settings(records), records=records)


def run_comparison(
    studio: Any,
    pairs: Sequence[tuple[str, Any]],
    *,
    session: str = "compare",
    progress: Callable[..., None] | None = None,
) -> ComparisonView:
    """Render each comparison request with ``studio`` (a :class:`~studio.service.Studio`) and return the view.

    Renders run one after another through the studio's one pipeline manager; a cancel
    of ``session`` stops the current render and the rest.
    """
    videos, labels = [], []
    for label, request in pairs:
        saved = studio.render(
            request.image,
            request.settings,
            request.stack,
            session=session,
            fuse=request.fuse,
            progress=progress,
        )
        videos.append(saved.video)
        labels.append(label)
    return comparison_view(videos, labels)


# ----------------------------------------------------------------------------- side by side


def _even(value: float) -> int:
    return max(2, round(value / 2.0) * 2)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _label_overlay(label: str, width: int, height: int, font_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, alpha) arrays of a label box for a panel of ``width``×``height``."""
    font = _font(font_size)
    pad = max(2, font_size // 3)
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    text = label
    max_text = width - 3 * pad
    while text and draw.textlength(text, font=font) > max_text:
        text = text[:-2] + "…" if len(text) > 2 else ""
    if text:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        box = (pad, pad, pad + (right - left) + 2 * pad, pad + (bottom - top) + 2 * pad)
        draw.rectangle(box, fill=(0, 0, 0, 170))
        draw.text((2 * pad - left, 2 * pad - top), text, font=font, fill=(255, 255, 255, 255))
    array = np.asarray(layer, dtype=np.float32) / 255.0
    return array[..., :3] * 255.0, array[..., 3:4]


def _resize_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS))
    return out


def side_by_side(
    videos: Sequence[str | Path],
    labels: Sequence[str],
    out: str | Path,
    *,
    height: int | None = None,
    gap: int = 4,
) -> Path:
    """Write the videos next to each other, each with its label, as one MP4 at ``out``.

    Panels are scaled to a common height (``height``, else the tallest video's, within
    1080 and a total width of 3840), shorter videos hold their last frame until the
    longest ends, and the frame rate is the first video's. ``out`` is written atomically
    and never over an existing file.
    """
    paths = [Path(v).expanduser() for v in videos]
    out = Path(out).expanduser()
    if not 2 <= len(paths) <= MAX_PANELS:
        raise ValidationError(
            f"Give between 2 and {MAX_PANELS} videos to put side by side (got {len(paths)})."
        )
    if len(labels) != len(paths):
        raise ValidationError(f"Give one label per video ({len(paths)} videos, {len(labels)} labels).")
    if out.suffix.lower() != ".mp4":
        raise ValidationError(f"The side-by-side file must end in .mp4; {out.name} does not.")
    if out.exists():
        raise ValidationError(f"{out} already exists; choose another name (nothing is ever overwritten).")
    if not out.parent.is_dir():
        raise ValidationError(f"The folder {out.parent} does not exist; create it or choose another.")
    if gap < 0 or gap % 2:
        raise ValidationError("The gap between panels must be an even number of pixels.")
    fps = probe_video(paths[0]).fps
    fps = min(240, max(1, round(fps))) if fps and math.isfinite(fps) else 16
    clips = [read_frames(p) for p in paths]
    target = _even(height if height else max(c.shape[1] for c in clips))
    target = min(target, MAX_OUTPUT_HEIGHT) if not height else target
    widths = [c.shape[2] * target / c.shape[1] for c in clips]
    total = sum(widths) + gap * (len(clips) - 1)
    if total > MAX_OUTPUT_WIDTH and not height:
        target = _even(target * (MAX_OUTPUT_WIDTH - gap * (len(clips) - 1)) / sum(widths))
    panel_widths = [_even(c.shape[2] * target / c.shape[1]) for c in clips]
    panels = [_resize_frames(c, w, target) for c, w in zip(clips, panel_widths, strict=True)]
    del clips
    font_size = max(8, min(32, target // 14))
    overlays = [
        _label_overlay(str(label), w, target, font_size)
        for label, w in zip(labels, panel_widths, strict=True)
    ]
    count = max(p.shape[0] for p in panels)
    width = sum(panel_widths) + gap * (len(panels) - 1)
    canvas = np.zeros((count, target, width, 3), dtype=np.uint8)
    x = 0
    for panel, (rgb, alpha), w in zip(panels, overlays, panel_widths, strict=True):
        n = panel.shape[0]
        canvas[:n, :, x : x + w] = panel
        canvas[n:, :, x : x + w] = panel[-1]  # hold the last frame
        ys, xs = np.nonzero(alpha[..., 0] > 0)
        if ys.size:
            y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
            a = alpha[y0:y1, x0:x1]
            box = canvas[:, y0:y1, x + x0 : x + x1].astype(np.float32)
            box = box * (1.0 - a) + rgb[y0:y1, x0:x1] * a
            canvas[:, y0:y1, x + x0 : x + x1] = np.clip(np.rint(box), 0, 255).astype(np.uint8)
        x += w + gap
    metadata = {
        "kind": COMPARISON_KIND,
        "version": 1,
        "videos": [p.name for p in paths],
        "labels": [str(label) for label in labels],
    }
    return write_video(canvas, out, fps=fps, metadata=metadata)
