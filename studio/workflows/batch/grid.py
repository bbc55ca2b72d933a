"""A weight grid: two axes over one request, rendered as a batch and composed into one labelled video.

Each axis is a LoRA's weight (on the high-noise expert, the low-noise one, or both), a seed
list, or a step count, e.g. ``style 0.4 / 0.7 / 1.0`` (rows) × ``character 0.8 / 1.0 / 1.2``
(columns). Every cell shares the start image and the seed (unless an axis is the seed), so
only the axes differ. The cells are jobs of a :class:`~studio.workflows.batch.jobs.Batch`
(resumable like any batch); :func:`compose_grid` lays their videos out as rows × columns with
the column values over the columns, the row values left of the rows and each axis' title,
and writes one MP4.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, field_validator

from studio.errors import ValidationError
from studio.media.probe import read_frames
from studio.media.video import write_video
from studio.stack.schema import (
    MAX_SEED,
    MAX_STEPS,
    MAX_WEIGHT,
    MIN_WEIGHT,
    RenderSettings,
    Stack,
    StrictModel,
)
from studio.workflows.batch.jobs import Batch, Job, file_sha256, fingerprint

__all__ = [
    "GRID_KIND",
    "GridAxis",
    "GridLayout",
    "compose_grid",
    "grid_batch",
    "grid_canvas",
    "grid_layout",
    "grid_video",
    "parse_axis",
]

GRID_KIND = "wan-lora-studio/grid"
MAX_AXIS_VALUES = 8
MIN_CELL_HEIGHT = 128  # tiny renders are scaled up (nearest) so the labels stay readable
MAX_WIDTH, MAX_HEIGHT = 3840, 2160
GAP = 4
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
TITLE = (255, 210, 90)
EMPTY_CELL = (60, 60, 60)

AxisKind = Literal["weight", "seed", "steps"]
Expert = Literal["high", "low", "both"]
_EXPERT_WORDS = {"high": "high-noise", "low": "low-noise", "both": "both experts"}


class GridAxis(StrictModel):
    """One axis: ``kind`` weight (of LoRA ``lora``, on ``expert``), seed or steps, and its values."""

    kind: AxisKind
    values: list[float] = Field(min_length=1, max_length=MAX_AXIS_VALUES)
    lora: str | None = Field(default=None, max_length=200)  # entry name or id (weight axes)
    expert: Expert = "both"

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[float]) -> list[float]:
        if len(set(values)) != len(values):
            raise ValueError("each value of an axis must be different")
        return values

    def check(self, stack: Stack) -> None:
        """Raise our ValidationError when the axis does not fit the stack or its values are out of range."""
        if self.kind == "weight":
            entry = self._entry(stack)
            experts = ("high", "low") if self.expert == "both" else (self.expert,)
            for e in experts:
                if entry.source(e) is None:
                    word = _EXPERT_WORDS[e]
                    raise ValidationError(
                        f"{entry.name} has no {word} file, so its {word} weight cannot be varied; use the other expert."
                    )
            for v in self.values:
                if not (MIN_WEIGHT <= v <= MAX_WEIGHT):
                    raise ValidationError(
                        f"The weight {v:g} is outside the allowed weights ({MIN_WEIGHT:g} to {MAX_WEIGHT:g})."
                    )
        elif self.kind == "seed":
            for v in self.values:
                if v != int(v) or not (0 <= v <= MAX_SEED):
                    raise ValidationError(f"The seed {v:g} is not a whole number from 0 to {MAX_SEED}.")
        else:
            for v in self.values:
                if v != int(v) or not (1 <= v <= MAX_STEPS):
                    raise ValidationError(
                        f"The step count {v:g} is not a whole number from 1 to {MAX_STEPS}."
                    )

    def _entry(self, stack: Stack):
        if not self.lora:
            raise ValidationError("A weight axis needs the LoRA whose weight it varies.")
        for entry in stack.entries:
            if self.lora in (entry.id, entry.name):
                return entry
        names = ", ".join(e.name for e in stack.entries) or "the stack is empty"
        raise ValidationError(f"There is no LoRA {self.lora!r} in the stack ({names}).")

    def title(self, stack: Stack) -> str:
        if self.kind == "weight":
            return f"{self._entry(stack).name} weight ({_EXPERT_WORDS[self.expert]})"
        return "seed" if self.kind == "seed" else "steps"

    def label(self, value: float) -> str:
        return f"{value:g}" if self.kind == "weight" else str(int(value))

    def apply(self, settings: RenderSettings, stack: Stack, value: float) -> tuple[RenderSettings, Stack]:
        if self.kind == "seed":
            return settings.model_copy(update={"seed": int(value)}), stack
        if self.kind == "steps":
            return settings.model_copy(update={"steps": int(value)}), stack
        entry = self._entry(stack)
        experts = ("high", "low") if self.expert == "both" else (self.expert,)
        changes: dict[str, Any] = {f"weight_{e}": float(value) for e in experts}
        return settings, stack.updated(entry.id, enabled=True, **changes)


_AXIS_RE = re.compile(r"^\s*(?P<name>[^=@]+?)\s*(?:@\s*(?P<expert>high|low|both)\s*)?=\s*(?P<values>.+)$")


def parse_axis(text: str) -> GridAxis:
    """``seed=1,2,3``, ``steps=4,8``, or ``LORA[@high|@low|@both]=0.4,0.7,1.0`` (LORA: the entry's name)."""
    match = _AXIS_RE.match(text)
    if not match:
        raise ValidationError(
            f"The axis {text!r} is not understood; write seed=1,2,3, steps=4,8 or NAME=0.4,0.7,1.0 "
            "(NAME@high=… or NAME@low=… for one expert)."
        )
    name, expert = match["name"].strip(), match["expert"]
    try:
        values = [float(v) for v in match["values"].split(",") if v.strip()]
    except ValueError:
        raise ValidationError(f"The axis {text!r} has a value that is not a number.") from None
    kind: AxisKind = "weight"
    if name.lower() in ("seed", "steps") and expert is None:
        kind = name.lower()  # type: ignore[assignment]
    name = name.removeprefix("lora:")
    data: dict[str, Any] = {"kind": kind, "values": values}
    if kind == "weight":
        data.update(lora=name, expert=expert or "both")
    from studio.stack.schema import parse_model

    return parse_model(GridAxis, data, f"axis {text!r}")


def grid_batch(
    image: Path,
    settings: RenderSettings,
    stack: Stack,
    rows: GridAxis,
    cols: GridAxis,
    *,
    model: str | None = None,
    fuse: bool = False,
) -> Batch:
    """The grid's cells as a batch: one job per (row, column), all with ``image`` and one seed."""
    rows.check(stack)
    cols.check(stack)
    if (rows.kind == cols.kind and rows.kind != "weight") or (
        rows.kind == cols.kind == "weight" and rows._entry(stack).id == cols._entry(stack).id
    ):
        raise ValidationError("The two axes vary the same thing; choose different axes for rows and columns.")
    image = Path(image).resolve()
    image_sha = file_sha256(image)
    base = (
        settings
        if settings.seed is not None
        else settings.model_copy(update={"seed": _derived_seed(settings, stack, image_sha, rows, cols)})
    )
    jobs = []
    for r, row_value in enumerate(rows.values):
        for c, col_value in enumerate(cols.values):
            cell_settings, cell_stack = rows.apply(base, stack, row_value)
            cell_settings, cell_stack = cols.apply(cell_settings, cell_stack, col_value)
            labels = {"row": rows.label(row_value), "col": cols.label(col_value)}
            jobs.append(
                Job(
                    id=f"r{r + 1}c{c + 1}",
                    scene=f"{rows.title(stack)} {labels['row']} × {cols.title(stack)} {labels['col']}",
                    index=r * len(cols.values) + c,
                    repeat=0,
                    image=image,
                    settings=cell_settings,
                    stack=cell_stack,
                    fingerprint=fingerprint(cell_settings, cell_stack, image_sha, model, fuse),
                    fuse=fuse,
                    labels=labels,
                )
            )
    notes = (f"rows: {rows.title(stack)}", f"columns: {cols.title(stack)}")
    return Batch(jobs=tuple(jobs), model=model, notes=notes, kind="grid")


def _derived_seed(
    settings: RenderSettings, stack: Stack, image_sha: str, rows: GridAxis, cols: GridAxis
) -> int:
    """One seed for every cell when none is given, the same on a re-run of the same grid (so it resumes)."""
    key = "|".join(
        (fingerprint(settings, stack, image_sha, None, False), rows.model_dump_json(), cols.model_dump_json())
    )
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % (MAX_SEED + 1)


# ----------------------------------------------------------------------------- composing


@dataclass(frozen=True)
class GridLayout:
    """Where everything goes in the grid video (pixels)."""

    rows: int
    cols: int
    cell_w: int
    cell_h: int
    left: int  # width of the row-label band
    top: int  # height of the title + column-label band
    gap: int
    width: int
    height: int
    font_size: int

    def cell_origin(self, r: int, c: int) -> tuple[int, int]:
        return self.left + c * (self.cell_w + self.gap), self.top + r * (self.cell_h + self.gap)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _text_width(text: str, font) -> int:
    left, _, right, _ = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)
    return math.ceil(right - left)


def _even_up(value: int) -> int:
    return value + (value % 2)


def grid_layout(
    rows: int, cols: int, frame_w: int, frame_h: int, row_labels: Sequence[str], row_title: str
) -> GridLayout:
    """Cell size (tiny renders scaled up, big grids scaled down), label bands and the video size."""
    scale = max(1, math.ceil(MIN_CELL_HEIGHT / frame_h))
    cell_w, cell_h = frame_w * scale, frame_h * scale
    font_size = max(12, min(32, cell_h // 8))
    font = _font(font_size)
    pad = max(4, font_size // 2)
    line = font_size + pad
    top = 2 * line + pad
    left = max(_text_width(t, font) for t in [*row_labels, row_title]) + 2 * pad
    for _ in range(2):  # shrink the cells until the video fits the largest size encoders take
        width = left + cols * cell_w + (cols - 1) * GAP
        height = top + rows * cell_h + (rows - 1) * GAP
        if width <= MAX_WIDTH and height <= MAX_HEIGHT:
            break
        shrink = min(
            (MAX_WIDTH - left - (cols - 1) * GAP) / (cols * cell_w),
            (MAX_HEIGHT - top - (rows - 1) * GAP) / (rows * cell_h),
        )
        cell_w, cell_h = max(2, int(cell_w * shrink) // 2 * 2), max(2, int(cell_h * shrink) // 2 * 2)
    width = _even_up(left + cols * cell_w + (cols - 1) * GAP)
    height = _even_up(top + rows * cell_h + (rows - 1) * GAP)
    return GridLayout(rows, cols, cell_w, cell_h, left, top, GAP, width, height, font_size)


def _scaled(frames: np.ndarray, w: int, h: int) -> np.ndarray:
    if frames.shape[1] == h and frames.shape[2] == w:
        return frames
    if h % frames.shape[1] == 0 and w % frames.shape[2] == 0 and h // frames.shape[1] == w // frames.shape[2]:
        k = h // frames.shape[1]
        return frames.repeat(k, axis=1).repeat(k, axis=2)  # nearest: a tiny render stays crisp
    out = np.empty((frames.shape[0], h, w, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        out[i] = np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.LANCZOS))
    return out


def _label_band(layout: GridLayout, row_title: str, col_title: str, row_labels, col_labels) -> np.ndarray:
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font(layout.font_size)
    pad = max(4, layout.font_size // 2)
    line = layout.font_size + pad
    draw.text((layout.left, pad // 2), col_title, font=font, fill=TITLE)
    draw.text((pad, line + pad // 2), row_title, font=font, fill=TITLE)
    for c, label in enumerate(col_labels):
        x, _ = layout.cell_origin(0, c)
        tw = _text_width(label, font)
        draw.text((x + max(0, (layout.cell_w - tw) // 2), line + pad // 2), label, font=font, fill=TEXT)
    for r, label in enumerate(row_labels):
        _, y = layout.cell_origin(r, 0)
        draw.text((pad, y + max(0, (layout.cell_h - layout.font_size) // 2)), label, font=font, fill=TEXT)
    return np.asarray(canvas, dtype=np.uint8)


def grid_canvas(
    cells: Sequence[Sequence[np.ndarray | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    row_title: str,
    col_title: str,
) -> tuple[np.ndarray, GridLayout]:
    """The grid's frames ``[F, H, W, 3]``: each cell's frames (None: a grey tile) under the labels.

    Shorter cells hold their last frame until the longest ends.
    """
    rows, cols = len(cells), len(cells[0]) if cells else 0
    if rows < 1 or cols < 1 or any(len(row) != cols for row in cells):
        raise ValidationError("A grid needs at least one row and one column of the same length.")
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValidationError("A grid needs one label per row and one per column.")
    present = [f for row in cells for f in row if f is not None]
    if not present:
        raise ValidationError("No cell of the grid was rendered, so there is no grid video to write.")
    frame_h, frame_w = present[0].shape[1:3]
    layout = grid_layout(rows, cols, frame_w, frame_h, row_labels, row_title)
    frames = max(f.shape[0] for f in present)
    base = _label_band(layout, row_title, col_title, row_labels, col_labels)
    canvas = np.repeat(base[None], frames, axis=0)
    for r in range(rows):
        for c in range(cols):
            x, y = layout.cell_origin(r, c)
            cell = cells[r][c]
            region = canvas[:, y : y + layout.cell_h, x : x + layout.cell_w]
            if cell is None:
                region[:] = EMPTY_CELL
                continue
            scaled = _scaled(cell, layout.cell_w, layout.cell_h)
            region[: scaled.shape[0]] = scaled
            region[scaled.shape[0] :] = scaled[-1]
    return canvas, layout


def compose_grid(
    cells: Sequence[Sequence[np.ndarray | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    row_title: str,
    col_title: str,
    out: str | Path,
    *,
    fps: int,
    metadata: dict[str, Any] | None = None,
) -> tuple[Path, GridLayout]:
    """Write :func:`grid_canvas` as one MP4 at ``out`` (never overwriting); the labels go in its metadata too."""
    canvas, layout = grid_canvas(cells, row_labels, col_labels, row_title, col_title)
    data = {
        "kind": GRID_KIND,
        "version": 1,
        "rows": {"title": row_title, "labels": list(row_labels)},
        "columns": {"title": col_title, "labels": list(col_labels)},
        **(metadata or {}),
    }
    return write_video(canvas, out, fps=fps, metadata=data), layout


def _free_name(folder: Path, stem: str) -> Path:
    path = folder / f"{stem}.mp4"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}.mp4"
        n += 1
    return path


def grid_video(
    batch: Batch, summary: Any, rows: GridAxis, cols: GridAxis, stack: Stack, out: str | Path | None = None
) -> tuple[Path, GridLayout]:
    """The grid video of a finished grid batch (``summary``: its :class:`~studio.workflows.batch.runner.BatchSummary`)."""
    jobs = {job.id: job for job in summary.state.jobs}
    grid: list[list[np.ndarray | None]] = []
    names: list[list[str | None]] = []
    fps = batch.jobs[0].settings.fps
    for r in range(len(rows.values)):
        row, row_names = [], []
        for c in range(len(cols.values)):
            state = jobs[f"r{r + 1}c{c + 1}"]
            if state.status == "done" and state.video:
                row.append(read_frames(summary.out_dir / state.video))
                row_names.append(state.video)
            else:
                row.append(None)
                row_names.append(None)
        grid.append(row)
        names.append(row_names)
    out_path = Path(out) if out is not None else _free_name(summary.out_dir, "grid")
    return compose_grid(
        grid,
        [rows.label(v) for v in rows.values],
        [cols.label(v) for v in cols.values],
        rows.title(stack),
        cols.title(stack),
        out_path,
        fps=fps,
        metadata={"videos": names},
    )


def run_grid(
    image: Path,
    settings: RenderSettings,
    stack: Stack,
    rows: GridAxis,
    cols: GridAxis,
    out_dir: str | Path,
    backend: Any,
    *,
    model: str | None = None,
    fuse: bool = False,
    video: str | Path | None = None,
    on_event: Any = None,
) -> tuple[Path | None, GridLayout | None, Any]:
    """Render the grid as a batch into ``out_dir`` on ``backend`` and compose its video (None if no cell rendered)."""
    from studio.workflows.batch.runner import run_batch

    batch = grid_batch(image, settings, stack, rows, cols, model=model, fuse=fuse)
    summary = run_batch(batch, out_dir, backend, on_event=on_event)
    if not summary.videos():
        return None, None, summary
    path, layout = grid_video(batch, summary, rows, cols, stack, video)
    return path, layout, summary
