"""The timeline figure (pure): expert bands from the split, one line per LoRA per expert, run marks."""

from __future__ import annotations

import json

from studio.stack.schema import Stack, StackEntry
from studio.ui.timeline import RunMark, Series, figure, plot_value, series_for


def _bands(fig):
    return [(s["name"], s["x0"], s["x1"]) for s in fig["layout"]["shapes"] if s["type"] == "rect"]


def test_bands_follow_the_split_and_lines_show_each_experts_steps():
    experts = ["high", "high", "low", "low"]
    fig = figure(
        experts, [Series("style", "high", (1.0, 0.5, 0.25, 0.0)), Series("style", "low", (1.0,) * 4)]
    )
    assert _bands(fig) == [("band-high", 0.5, 2.5), ("band-low", 2.5, 4.5)]
    lines = {t["name"]: t["y"] for t in fig["data"] if not t["name"].endswith("(schedule)")}
    assert lines == {
        "style · high-noise": [1.0, 0.5, None, None],
        "style · low-noise": [None, None, 1.0, 1.0],
    }
    assert fig["layout"]["xaxis"]["range"] == [0.5, 4.5]
    assert json.loads(plot_value(fig).plot) == fig


def test_a_run_mark_shows_the_steps_run_and_where_a_cancel_stopped():
    experts = ["high"] * 3 + ["low"] * 3
    done = figure(experts, mark=RunMark(6, 6))
    assert [t["x"] for t in done["data"] if t["name"] == "steps run"] == [[1, 2, 3, 4, 5, 6]]
    stopped = figure(experts, mark=RunMark(2, 6, cancelled=True))
    assert [t["x"] for t in stopped["data"] if t["name"] == "cancelled here"] == [[1, 2]]
    assert [s["x0"] for s in stopped["layout"]["shapes"] if s["name"] == "stopped"] == [2.5]
    assert "cancelled after step 2" in [a["text"] for a in stopped["layout"]["annotations"]]
    stale = figure(experts[:4], mark=RunMark(2, 6, cancelled=True))  # the steps changed since: no mark
    assert not [t for t in stale["data"] if t["name"] == "cancelled here"]


def test_series_come_from_the_stack_and_errors_are_sentences(tmp_path):
    stack = Stack(
        entries=[
            StackEntry.single(tmp_path / "a.safetensors", name="a", schedule_high="1>0"),
            StackEntry.single(tmp_path / "b.safetensors", 1.0, 0.0, name="b"),
            StackEntry.single(tmp_path / "c.safetensors", name="c", schedule_low="1,2"),
            StackEntry.single(tmp_path / "d.safetensors", name="d", enabled=False),
        ]
    )
    series, errors = series_for(stack, 3, two_experts=True)
    assert [(s.label, s.expert) for s in series] == [
        ("a", "high"),
        ("a", "low"),
        ("b", "high"),
        ("c", "high"),
    ]
    assert series[0].weights == (1.0, 0.5, 0.0)
    assert errors == [
        "The low-noise schedule of LoRA 'c': the per-step list has 2 weights but the render has 3 steps; "
        "give one weight per step (or use a ramp or a range, which fit any step count)."
    ]
    one, _ = series_for(stack, 3, two_experts=False)
    assert {s.expert for s in one} == {"high"} and len(one) == 3
