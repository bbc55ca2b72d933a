"""The timeline panel of the Studio tab: the plot and its status line, redrawn on every edit."""

from __future__ import annotations

import gradio as gr

from studio.service import Studio
from studio.ui.handlers import last_run_mark, update_timeline


def components() -> tuple[gr.Plot, gr.HTML]:
    """The plot and its status line, placed where they are called (wire them with :func:`wire`)."""
    plot = gr.Plot(label="Timeline: expert per step and each LoRA's weight", elem_id="timeline")
    note = gr.HTML("", elem_id="timeline-status")
    return plot, note


def wire(studio: Studio, refs, plot: gr.Plot, note: gr.HTML) -> None:
    """Redraw the timeline whenever steps, shift, high-noise steps or the stack change."""
    inputs = [refs.stack_state, refs.steps, refs.shift, refs.high_steps]

    def redraw(state, steps, shift, k, request: gr.Request):
        return update_timeline(studio, state, steps, shift, k, last_run_mark(studio, request, steps))

    for trigger in (refs.app.load, refs.stack_state.change, refs.stack_version.change, refs.steps.change,
                    refs.shift.change, refs.high_steps.change):  # fmt: skip
        trigger(
            redraw,
            inputs=inputs,
            outputs=[plot, note],
            api_visibility="private",
            queue=False,
            trigger_mode="always_last",
        )
