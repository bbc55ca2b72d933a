"""The weight grid: axes, the cells as a batch (one image, one seed), the layout, labels and the MP4's size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from studio.errors import ValidationError
from studio.media.probe import probe_video, read_video_metadata
from studio.service import Studio
from studio.stack.schema import RenderSettings, Stack, StackEntry
from studio.workflows.batch.grid import (
    BACKGROUND,
    EMPTY_CELL,
    GAP,
    MAX_WIDTH,
    TEXT,
    TITLE,
    GridAxis,
    compose_grid,
    grid_batch,
    grid_canvas,
    grid_layout,
    grid_video,
    parse_axis,
)
from studio.workflows.batch.runner import InProcess, run_batch


@pytest.mark.parametrize(
    ("text", "axis"),
    [
        ("seed=1,2,3", {"kind": "seed", "values": [1, 2, 3]}),
        ("steps = 4, 8", {"kind": "steps", "values": [4, 8]}),
        (
            "style=0.4,0.7,1.0",
            {"kind": "weight", "lora": "style", "expert": "both", "values": [0.4, 0.7, 1.0]},
        ),
        ("char@low=0.8,1.2", {"kind": "weight", "lora": "char", "expert": "low", "values": [0.8, 1.2]}),
        ("lora:seed=0.5", {"kind": "weight", "lora": "seed", "expert": "both", "values": [0.5]}),
    ],
)
def test_axes_from_the_command_line(text, axis):
    assert parse_axis(text) == GridAxis(**axis)


@pytest.mark.parametrize(
    ("text", "message"),
    [("style", "is not understood"), ("seed=1,x", "not a number"), ("seed=1,1", "must be different")],
)
def test_bad_axes_are_sentences(text, message):
    with pytest.raises(ValidationError, match=message):
        parse_axis(text)


def _stack(tmp_path):
    a, b = tmp_path / "style.safetensors", tmp_path / "char.safetensors"
    return Stack(
        entries=[StackEntry.single(a, 1.0, name="style"), StackEntry.single(b, 0.0, 1.0, name="char")]
    )


def test_the_cells_share_the_image_and_one_seed_and_differ_only_in_the_axes(tmp_path, start_image):
    start_image.save(tmp_path / "start.png")
    settings = RenderSettings(prompt="p", width=32, height=32, frames=1, steps=2)
    stack = _stack(tmp_path)
    rows, cols = parse_axis("style=0.4,0.7,1.0"), parse_axis("char@low=0.8,1.2")
    batch = grid_batch(tmp_path / "start.png", settings, stack, rows, cols, model="demo")
    assert [j.id for j in batch.jobs] == ["r1c1", "r1c2", "r2c1", "r2c2", "r3c1", "r3c2"]
    assert len({j.settings.seed for j in batch.jobs}) == 1 and batch.jobs[0].settings.seed is not None
    assert {j.image for j in batch.jobs} == {(tmp_path / "start.png").resolve()}
    weights = [
        (j.stack.entries[0].weight_high, j.stack.entries[0].weight_low, j.stack.entries[1].weight_low)
        for j in batch.jobs
    ]
    assert weights == [
        (0.4, 0.4, 0.8),
        (0.4, 0.4, 1.2),
        (0.7, 0.7, 0.8),
        (0.7, 0.7, 1.2),
        (1.0, 1.0, 0.8),
        (1.0, 1.0, 1.2),
    ]
    assert batch.jobs[3].labels == {"row": "0.7", "col": "1.2"}
    assert batch.jobs[3].scene == "style weight (both experts) 0.7 × char weight (low-noise) 1.2"
    # The same grid again gets the same seed (so a re-run resumes), a seed axis varies only the seed.
    again = grid_batch(tmp_path / "start.png", settings, stack, rows, cols, model="demo")
    assert [j.fingerprint for j in again.jobs] == [j.fingerprint for j in batch.jobs]
    seeds = grid_batch(
        tmp_path / "start.png", settings, stack, parse_axis("seed=5,6"), parse_axis("steps=1,3")
    )
    assert [(j.settings.seed, j.settings.steps) for j in seeds.jobs] == [(5, 1), (5, 3), (6, 1), (6, 3)]


@pytest.mark.parametrize(
    ("rows", "cols", "message"),
    [
        ("style=0.4", "style@high=1.0", "vary the same thing"),
        ("seed=1", "seed=2", "vary the same thing"),
        ("nope=0.4", "seed=1", "There is no LoRA 'nope' in the stack"),
        ("char@high=0.4", "seed=1", "char has no high-noise file"),
        ("style=11", "seed=1", "outside the allowed weights"),
        ("steps=0.5", "seed=1", "not a whole number"),
    ],
)
def test_axes_that_do_not_fit_the_stack(tmp_path, start_image, rows, cols, message):
    start_image.save(tmp_path / "start.png")
    with pytest.raises(ValidationError, match=message):
        grid_batch(
            tmp_path / "start.png", RenderSettings(), _stack(tmp_path), parse_axis(rows), parse_axis(cols)
        )


def test_layout_scales_tiny_cells_up_and_big_grids_down():
    layout = grid_layout(2, 3, 32, 32, ["0.4", "1.0"], "style weight")
    assert (layout.cell_w, layout.cell_h) == (128, 128)  # 32 px renders are shown 4× (nearest)
    assert layout.width == layout.left + 3 * 128 + 2 * GAP + (layout.left + 3 * 128 + 2 * GAP) % 2
    assert layout.height == layout.top + 2 * 128 + GAP + (layout.top + 2 * 128 + GAP) % 2
    assert layout.width % 2 == 0 and layout.height % 2 == 0
    assert layout.cell_origin(1, 2) == (layout.left + 2 * (128 + GAP), layout.top + 128 + GAP)
    big = grid_layout(8, 8, 832, 480, [str(i) for i in range(8)], "seed")
    assert big.width <= MAX_WIDTH and big.cell_w * 480 == pytest.approx(big.cell_h * 832, rel=0.02)


def test_the_canvas_puts_each_cell_in_place_under_its_labels():
    colours = [[(200, 30, 30), (30, 200, 30)], [(30, 30, 200), None]]
    cells = [
        [
            np.full((3 if c == 0 else 1, 32, 48, 3), col, np.uint8) if col else None
            for c, col in enumerate(row)
        ]
        for row in colours
    ]
    canvas, layout = grid_canvas(
        cells, ["row one", "row two"], ["left", "right"], "rows axis", "columns axis"
    )
    assert canvas.shape == (3, layout.height, layout.width, 3)
    assert (layout.cell_w, layout.cell_h) == (192, 128)
    for r in range(2):
        for c in range(2):
            x, y = layout.cell_origin(r, c)
            region = canvas[:, y : y + layout.cell_h, x : x + layout.cell_w]
            expected = colours[r][c] or EMPTY_CELL
            assert (region == np.array(expected, np.uint8)).all(), (
                r,
                c,
            )  # shorter cells hold their last frame
    # The labels: the column values over their columns, the row values left of their rows, both titles on top.
    band = canvas[0]

    def has(colour, x0, y0, x1, y1):
        return bool((band[y0:y1, x0:x1] == np.array(colour, np.uint8)).all(axis=-1).any())

    for c in range(2):
        x, _ = layout.cell_origin(0, c)
        assert has(TEXT, x, layout.top // 2, x + layout.cell_w, layout.top)
    for r in range(2):
        _, y = layout.cell_origin(r, 0)
        assert has(TEXT, 0, y, layout.left, y + layout.cell_h)
    assert has(TITLE, layout.left, 0, layout.width, layout.top // 2)  # the column axis' title
    assert has(TITLE, 0, layout.top // 2, layout.left, layout.top)  # the row axis' title
    gap_x = layout.cell_origin(0, 1)[0] - GAP
    assert (band[layout.top :, gap_x : gap_x + GAP] == np.array(BACKGROUND, np.uint8)).all()


def test_the_mp4_has_the_layouts_size_and_the_labels_in_its_metadata(tmp_path):
    cells = [[np.full((2, 32, 32, 3), 90, np.uint8)] * 3] * 2
    video, layout = compose_grid(
        cells, ["a", "b"], ["1", "2", "3"], "style", "seed", tmp_path / "grid.mp4", fps=8
    )
    info = probe_video(video)
    assert (info.width, info.height, info.frames) == (layout.width, layout.height, 2)
    meta = read_video_metadata(video)
    assert meta["rows"] == {"title": "style", "labels": ["a", "b"]}
    assert meta["columns"] == {"title": "seed", "labels": ["1", "2", "3"]}


def test_a_grid_renders_as_a_batch_and_composes_one_video(settings, make_lora, start_image, tmp_path):
    path = make_lora("style.safetensors", seed=4)
    start_image.save(tmp_path / "start.png")
    stack = Stack(entries=[StackEntry.single(path, 1.0, name="style")])
    settings_ = RenderSettings(
        prompt="grid", width=32, height=32, frames=1, steps=4, seed=9
    )  # both experts run
    rows, cols = parse_axis("style=0,1"), parse_axis("seed=9,10")
    batch = grid_batch(tmp_path / "start.png", settings_, stack, rows, cols, model="demo")
    studio = Studio(settings)
    summary = run_batch(batch, tmp_path / "grid", InProcess(studio))
    assert summary.complete
    records = {j.id: json.loads((tmp_path / "grid" / j.sidecar).read_text()) for j in summary.state.jobs}
    assert {k: r["settings"]["seed"] for k, r in records.items()} == {
        "r1c1": 9,
        "r1c2": 10,
        "r2c1": 9,
        "r2c2": 10,
    }
    assert [r["weight"] for r in records["r2c1"]["loras"]] == [1.0, 1.0] and records["r1c1"]["loras"] == []
    assert [r["lora_file_reads"] for r in records.values()] == [0, 0, 1, 0]  # the file is read once
    video, layout = grid_video(batch, summary, rows, cols, stack)
    assert video == tmp_path / "grid" / "grid.mp4"
    info = probe_video(video)
    assert (info.width, info.height) == (layout.width, layout.height) and (layout.rows, layout.cols) == (2, 2)
    assert read_video_metadata(video)["videos"] == [["r1c1.mp4", "r1c2.mp4"], ["r2c1.mp4", "r2c2.mp4"]]
    second, _ = grid_video(batch, summary, rows, cols, stack)  # never overwritten: a new name
    assert second.name == "grid-2.mp4"
