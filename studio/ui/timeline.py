"""The Studio tab's timeline: which expert runs each step and each LoRA's weight there (a Plotly figure).

x = steps 1 … N; a coloured band per run of steps of one expert (from the real scheduler
timesteps, :func:`studio.engine.split.expert_split`); one line per LoRA per expert with its
weight at the steps that expert runs (a faint dotted line shows the schedule at the other
steps, where it has no effect); after a render, markers on the steps that ran and, for a
cancelled one, a line where it stopped.

The figure is built here as Plotly's JSON (``data`` + ``layout``) and handed to ``gr.Plot``
as its ``PlotData``: gradio's page bundles plotly.js, so no Python plotting package is needed.
Building it is pure (no model), so it follows every edit of steps, shift, high-noise steps
or a schedule at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from gradio.components.plot import PlotData

from studio.errors import StudioError
from studio.stack.schema import EXPERTS, Stack

BAND_COLOURS = {"high": "rgba(240, 140, 40, 0.18)", "low": "rgba(60, 120, 220, 0.16)"}
EXPERT_LABELS = {"high": "high-noise", "low": "low-noise"}
LINE_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
DASH = {"high": "solid", "low": "dash"}


@dataclass(frozen=True)
class Series:
    """One LoRA on one expert: its weight at each step of the run (the whole schedule)."""

    label: str
    expert: str  # "high" / "low"
    weights: tuple[float, ...]


@dataclass(frozen=True)
class RunMark:
    """What the last render did: how many steps ran, and whether it was cancelled there."""

    steps_run: int
    total: int
    cancelled: bool = False


def _bands(experts: Sequence[str]) -> list[tuple[str, int, int]]:
    """(expert, first step, last step) for each run of consecutive steps on one expert (1-based)."""
    bands: list[tuple[str, int, int]] = []
    for i, expert in enumerate(experts, start=1):
        if bands and bands[-1][0] == expert:
            bands[-1] = (expert, bands[-1][1], i)
        else:
            bands.append((expert, i, i))
    return bands


def figure(
    experts: Sequence[str],
    series: Sequence[Series] = (),
    *,
    two_experts: bool = True,
    mark: RunMark | None = None,
    title: str | None = None,
) -> dict:
    """The timeline as a Plotly figure dict (``{"data": [...], "layout": {...}}``)."""
    steps = len(experts)
    xs = list(range(1, steps + 1))
    data: list[dict] = []
    for n, item in enumerate(series):
        colour = LINE_COLOURS[n % len(LINE_COLOURS)]
        name = f"{item.label} · {EXPERT_LABELS[item.expert]}" if two_experts else item.label
        runs = [
            w if e == item.expert or not two_experts else None
            for w, e in zip(item.weights, experts, strict=True)
        ]
        group = f"s{n}"
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": xs,
                "y": list(item.weights),
                "line": {"color": colour, "width": 1, "dash": "dot"},
                "opacity": 0.35,
                "hoverinfo": "skip",
                "showlegend": False,
                "legendgroup": group,
                "name": name + " (schedule)",
            }
        )
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "x": xs,
                "y": runs,
                "connectgaps": False,
                "line": {"color": colour, "width": 2.5, "dash": DASH.get(item.expert, "solid")},
                "marker": {"size": 6},
                "legendgroup": group,
                "name": name,
                "hovertemplate": "step %{x}: weight %{y:.3g}<extra>" + name.replace("<", "&lt;") + "</extra>",
            }
        )
    shapes: list[dict] = []
    annotations: list[dict] = []
    for expert, first, last in _bands(experts):
        shapes.append(
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": first - 0.5,
                "x1": last + 0.5,
                "y0": 0,
                "y1": 1,
                "fillcolor": BAND_COLOURS.get(expert, "rgba(0,0,0,0.05)"),
                "line": {"width": 0},
                "layer": "below",
                "name": f"band-{expert}",
            }
        )
        annotations.append(
            {
                "x": (first + last) / 2,
                "y": 1.0,
                "xref": "x",
                "yref": "paper",
                "yanchor": "bottom",
                "showarrow": False,
                "text": EXPERT_LABELS[expert] if two_experts else "one expert",
                "font": {"size": 11},
            }
        )
    if mark is not None and mark.total == steps and mark.steps_run > 0:
        ran = list(range(1, min(mark.steps_run, steps) + 1))
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": ran,
                "y": [0] * len(ran),
                "yaxis": "y2",
                "marker": {"symbol": "square", "size": 9, "color": "#444"},
                "name": "cancelled here" if mark.cancelled else "steps run",
                "hovertemplate": "step %{x} ran<extra></extra>",
            }
        )
        if mark.cancelled:
            stop = mark.steps_run + 0.5
            shapes.append(
                {
                    "type": "line",
                    "xref": "x",
                    "yref": "paper",
                    "x0": stop,
                    "x1": stop,
                    "y0": 0,
                    "y1": 1,
                    "line": {"color": "#b00020", "width": 2, "dash": "dash"},
                    "name": "stopped",
                }
            )
            annotations.append(
                {
                    "x": stop,
                    "y": 0.5,
                    "xref": "x",
                    "yref": "paper",
                    "showarrow": False,
                    "textangle": -90,
                    "xanchor": "left",
                    "text": f"cancelled after step {mark.steps_run}",
                    "font": {"size": 11, "color": "#b00020"},
                }
            )
    weights = [w for item in series for w in item.weights]
    low, high = min([0.0, *weights]), max([1.0, *weights])
    pad = (high - low) * 0.08 or 0.1
    layout = {
        "title": {"text": title or "", "font": {"size": 13}},
        "height": 280,
        "margin": {"l": 40, "r": 10, "t": 40 if title else 24, "b": 36},
        "xaxis": {
            "title": {"text": "step"},
            "range": [0.5, steps + 0.5],
            "tickmode": "linear" if steps <= 20 else "auto",
            "dtick": 1,
            "zeroline": False,
        },
        "yaxis": {"title": {"text": "weight"}, "range": [low - pad, high + pad], "zeroline": True},
        "yaxis2": {"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True},
        "shapes": shapes,
        "annotations": annotations,
        "legend": {"orientation": "h", "y": -0.25},
        "showlegend": bool(series) or mark is not None,
        "plot_bgcolor": "rgba(0,0,0,0)",
    }
    return {"data": data, "layout": layout}


def plot_value(fig: dict) -> PlotData:
    """The figure as ``gr.Plot``'s value (Plotly JSON; gradio renders it with its bundled plotly.js)."""
    return PlotData(type="plotly", plot=json.dumps(fig))


# --------------------------------------------------------------------------- from the editor's values
def series_for(stack: Stack, steps: int, two_experts: bool) -> tuple[list[Series], list[str]]:
    """One line per enabled entry and expert it has a file for; the schedules' errors as sentences."""
    series, errors = [], []
    for entry in stack.entries:
        if not entry.enabled:
            continue
        experts = [e for e in EXPERTS if entry.source(e) is not None]
        if not two_experts:
            experts = experts[:1]
        for expert in experts:
            try:
                weights = entry.step_weights(expert, steps)
            except StudioError as exc:
                errors.append(str(exc))
                continue
            series.append(Series(entry.name, expert if two_experts else "high", weights))
    return series, errors
