"""The per-expert schedule editor next to each weight slider: constant / ramp / range / list.

The slider stays the quick path: moving it sets a constant weight (and clears a schedule).
Choosing a kind fills the text box with a template built from the slider's weight and the
step count (``0.8>0``, ``0.8@0-50%``, ``0.8,0.8,…``); the text box takes any schedule text
(:mod:`studio.stack.schedule`) and applies it on Enter or when it loses focus. An invalid one
is refused with a sentence naming the entry and the expert; the stack keeps its last good value.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from studio.errors import StudioError
from studio.stack import schedule as S
from studio.stack.schema import EXPERT_NAMES
from studio.ui.handlers import edit_entry, status, to_stack

KINDS = ("constant", "ramp", "range", "list")


def kind_of(text: str) -> str:
    """The editor's kind for a schedule text (``constant`` when it cannot be read)."""
    try:
        return S.parse(text).kind
    except S.ScheduleError:
        return "constant"


def template(kind: str, weight: float, steps: int | float | None) -> str:
    """A starting schedule of ``kind`` around the slider's ``weight``."""
    w = S.fmt(float(weight or 0.0))
    if kind == "ramp":
        return f"{w}>0"
    if kind == "range":
        return f"{w}@0-50%"
    if kind == "list":
        count = max(1, int(steps or 1))
        return ",".join([w] * count)
    return w


def apply_text(state: dict, entry_id: str, expert: str, text: str):
    """(state, status, kind): the entry with this expert's schedule set from ``text``."""
    try:
        entry = to_stack(state).entries[to_stack(state).index(entry_id)]
        try:
            schedule = S.parse(text)
        except S.ScheduleError as exc:
            raise StudioError(f"The {EXPERT_NAMES[expert]} schedule of LoRA {entry.name!r}: {exc}.") from None
    except StudioError as exc:
        return state, status(str(exc), "error"), gr.skip()
    changes: dict[str, Any] = {f"schedule_{expert}": None if S.is_constant(schedule) else S.text(schedule)}
    if S.is_constant(schedule):
        changes[f"weight_{expert}"] = schedule.value
    new_state, message = edit_entry(state, entry_id, **changes)
    return new_state, message, schedule.kind


def draw(entry, expert: str, slider: gr.Slider, stack_state, stack_status, steps, interactive: bool) -> None:
    """The kind dropdown and schedule text for one expert of ``entry``, wired to the stack state."""
    text_value = entry.weight_text(expert)
    with gr.Row(elem_classes=["schedule-row"]):
        kind = gr.Dropdown(
            list(KINDS), value=kind_of(text_value), label="Schedule", scale=1, min_width=90,
            elem_id=f"kind-{expert}-{entry.id}", interactive=interactive,
        )  # fmt: skip
        text = gr.Textbox(
            text_value, label=f"{EXPERT_NAMES[expert].capitalize()} weight per step", scale=3,
            elem_id=f"schedule-{expert}-{entry.id}", interactive=interactive, max_lines=1,
            placeholder="0.8 · 1>0 · 1>0 cosine · 0.8@0-50% · 1@1-2 · 1,1,0.5,0",
        )  # fmt: skip
    private = {"api_visibility": "private", "concurrency_limit": None, "trigger_mode": "always_last"}

    def on_kind(state, chosen, weight, step_count):
        new_text = template(chosen, weight, step_count)
        new_state, message, _ = apply_text(state, entry.id, expert, new_text)
        return new_state, message, new_text

    kind.input(
        on_kind,
        inputs=[stack_state, kind, slider, steps],
        outputs=[stack_state, stack_status, text],
        **private,
    )

    def on_text(state, value):
        return apply_text(state, entry.id, expert, value or "")

    for event in (text.submit, text.blur):
        event(on_text, inputs=[stack_state, text], outputs=[stack_state, stack_status, kind], **private)

    def on_slider(state, value):
        new_state, message = edit_entry(
            state, entry.id, **{f"weight_{expert}": float(value), f"schedule_{expert}": None}
        )
        return new_state, message, S.fmt(float(value)), "constant"

    slider.input(
        on_slider, inputs=[stack_state, slider], outputs=[stack_state, stack_status, text, kind], **private
    )
