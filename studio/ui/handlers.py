"""Thin event handlers: widget values in, typed requests to the studio service, widget values out.

No model state lives here. Each browser session's stack is a plain dict in ``gr.State``
(the JSON form of :class:`~studio.stack.schema.Stack`); every handler validates it back into
the typed model before use, and errors become a sentence in the status line.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

import gradio as gr

from studio.engine.memory import MemoryConfig
from studio.errors import RenderCancelled, StudioError, without_server_paths
from studio.media.images import load_start_image
from studio.service import Studio
from studio.stack.schema import MODEL_SETTING_FIELDS, RenderSettings, Stack, build
from studio.ui.library_view import choice_label, details_html, filter_rows, table_row, trigger_words
from studio.ui.timeline import RunMark, figure, plot_value, series_for
from studio.vram.nvml import card_bytes

SLIDER_MIN, SLIDER_MAX = -2.0, 4.0


def to_stack(state: dict | None) -> Stack:
    return Stack.model_validate(state or {"entries": []})


def from_stack(stack: Stack) -> dict:
    return stack.model_dump(mode="json")


def status(message: str, kind: str = "info") -> str:
    """A status line as HTML (escaped: names in messages come from users' files).

    No absolute server path reaches the page: any left in ``message`` is cut to its last
    part (use :func:`error` to name files relative to their LoRA folder instead).
    """
    return (
        f'<div class="studio-status studio-status-{kind}">{html.escape(without_server_paths(message))}</div>'
    )


def error(studio: Studio, exc: BaseException | str, kind: str = "error") -> str:
    """A status line for an error, its files named relative to their folders (see Studio.public_message)."""
    return status(studio.public_message(str(exc)), kind)


def settings_from_widgets(
    prompt, negative, width, height, frames, steps, guidance, guidance_low, shift, seed, fps, high_steps=None
) -> RenderSettings:
    seed_value = None if seed is None or int(seed) < 0 else int(seed)
    high = None if high_steps is None or high_steps == "" or int(high_steps) < 0 else int(high_steps)
    return build(
        RenderSettings,
        "render settings",
        prompt=prompt or "",
        negative_prompt=negative or "",
        width=int(width),
        height=int(height),
        frames=int(frames),
        steps=int(steps),
        guidance=float(guidance),
        guidance_low=None if guidance_low is None else float(guidance_low),
        shift=float(shift),
        seed=seed_value,
        fps=int(fps),
        high_steps=high,
    )


def model_defaults(spec) -> list:
    """Widget values for a model's defaults, in the order of the layout's ``default_widgets``."""
    values = spec.defaults.settings_values()
    if values["guidance_low"] is None:
        values["guidance_low"] = values["guidance"]
    return [values[name] for name in MODEL_SETTING_FIELDS]


# ------------------------------------------------------------------- stack edits
def library_choices(studio: Studio) -> list[tuple[str, str]]:
    return [(choice_label(item, studio.compat(item)), item.id) for item in studio.library()]


def library_details(studio: Studio, item_id: str | None) -> str:
    if not item_id:
        return ""
    try:
        item = studio.library_item(item_id)
        return studio.public_message(details_html(item, studio.compat(item), demo=studio.is_demo_item(item)))
    except StudioError as exc:
        return error(studio, exc)


def library_table(
    studio: Studio, query: str = "", *, cached: bool = True
) -> tuple[list[list], list[str], str]:
    """The library table's rows matching ``query``, their item ids (same order) and a count line."""
    items = studio.library(cached=cached)
    rows = [(table_row(item, studio.compat(item)), item.id) for item in items]
    shown = filter_rows(rows, query)
    if not items:
        count = "No LoRA files yet: put .safetensors files in a LoRA folder and press Refresh."
    elif query and query.strip():
        count = f"{len(shown)} of {len(items)} LoRAs match “{query.strip()}”."
    else:
        count = f"{len(items)} LoRA{'s' if len(items) != 1 else ''}. Sort with a column’s ⋮ menu; click a row to pick it."
    return [row for row, _ in shown], [item_id for _, item_id in shown], status(count, "info")


def pick_from_table(ids: list[str], evt: gr.SelectData):
    """The library dropdown's value for the table row that was clicked."""
    try:
        row = int(evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index)
        return ids[row]
    except (IndexError, TypeError, ValueError):
        return gr.skip()


def add_lora(studio: Studio, state: dict, item_id: str | None):
    """Add a library item (file or pair) to the stack; refused at once when it would change nothing."""
    if not item_id:
        return state, status("Choose a LoRA in the library first.", "error")
    try:
        entry, compat = studio.entry_for(item_id)
    except StudioError as exc:
        return state, error(studio, exc)
    stack = to_stack(state).added(entry)
    where = {("high", "low"): "both experts"}.get(
        tuple(entry.applies_to()), " and ".join(entry.applies_to()) + "-noise"
    )
    message = f"Added {entry.name} on {where}."
    if compat.level == "partial":
        message += f" Warning: only about {compat.percent:.0f}% of it fits this model. {compat.reason}"
        return from_stack(stack), status(message, "warning")
    return from_stack(stack), status(message, "ok")


def insert_trigger_words(studio: Studio, item_id: str | None, prompt: str):
    if not item_id:
        return gr.skip(), status("Choose a LoRA in the library first.", "error")
    try:
        words = trigger_words(studio.library_item(item_id))
    except StudioError as exc:
        return gr.skip(), error(studio, exc)
    if not words:
        return gr.skip(), status("This LoRA names no trigger words in its metadata.", "info")
    missing = [w for w in words if w.lower() not in (prompt or "").lower()]
    new_prompt = ", ".join([p for p in [(prompt or "").strip(), *missing] if p])
    return new_prompt, status(f"Inserted: {', '.join(missing) or 'already in the prompt'}.", "ok")


def edit_entry(state: dict, entry_id: str, **changes: Any):
    try:
        return from_stack(to_stack(state).updated(entry_id, **changes)), gr.skip()
    except StudioError as exc:
        return state, status(str(exc), "error")


def remove_entry(state: dict, entry_id: str):
    return from_stack(to_stack(state).removed(entry_id))


def move_entry(state: dict, entry_id: str, delta: int):
    return from_stack(to_stack(state).moved(entry_id, delta))


# ------------------------------------------------------------------------ render
def render(
    studio: Studio,
    session: str,
    image,
    settings: RenderSettings,
    stack: Stack,
    fuse: bool,
    progress,
    memory=None,
):
    """Run one render for the UI or the API; returns (video path, status html, record)."""
    if image is None:
        raise StudioError("Upload a start image first.")
    start = load_start_image(image)

    def on_step(event) -> None:
        progress(
            (event.step, event.total), desc=f"Step {event.step}/{event.total} · {event.expert}-noise expert"
        )

    saved = studio.render(start, settings, stack, session=session, fuse=fuse, memory=memory, progress=on_step)
    timings = saved.record["timings"]
    message = (
        f"Rendered {settings.frames} frames at {settings.width}×{settings.height} in "
        f"{timings.get('total_s', 0):.1f} s · seed {saved.record['settings']['seed']} · "
        f"{stack.summary()} · {saved.video.name}"
    )
    notices = saved.record.get("notices") or []  # compiled mode: compiled this render, ran uncompiled, ...
    return str(saved.video), status(" ".join([message, *notices]), "ok"), saved.record


@dataclass(frozen=True)
class MemoryChoice:
    """The memory panel's values at render time."""

    mode: str
    precision: str
    vae_tiling: bool
    card: str | None  # "detected" or a size in GB
    force: bool  # render even when the estimate says it won't fit
    compiled: bool = False  # compiled mode (studio.engine.compile)

    def config(self) -> MemoryConfig:
        return MemoryConfig(
            mode=self.mode,
            precision=self.precision,
            vae_tiling=bool(self.vae_tiling),
            compile=bool(self.compiled),
        )


def render_guard(
    studio: Studio, settings: RenderSettings, stack: Stack, fuse: bool, memory: MemoryChoice
) -> None:
    """Refuse a render whose estimate exceeds the card by a clear margin, unless forced."""
    card, card_text = card_bytes(memory.card)
    if not memory.force and card is not None:
        studio.check_fits(settings, stack, memory.config(), card, card_text, fuse=fuse)


def render_from_widgets(
    studio: Studio, request: gr.Request, state, image, fuse, memory: MemoryChoice, *values, progress
):
    """(video, status, timeline): after a render the timeline marks the steps that ran."""
    stack = settings = None
    try:
        settings = settings_from_widgets(*values)
        stack = to_stack(state)
        render_guard(studio, settings, stack, bool(fuse), memory)
        video, message, _ = render(
            studio, _session(request), image, settings, stack, fuse, progress, memory=memory.config()
        )
        plot, _ = timeline(studio, stack, settings, RunMark(settings.steps, settings.steps))
        return video, message, plot if plot is not None else gr.skip()
    except RenderCancelled as exc:
        plot = gr.skip()
        if exc.steps_done is not None and stack is not None and settings is not None:
            plot, _ = timeline(
                studio, stack, settings, RunMark(exc.steps_done, settings.steps, cancelled=True)
            )
        return gr.skip(), error(studio, exc, "info"), plot
    except StudioError as exc:
        return gr.skip(), error(studio, exc), gr.skip()


def render_api(studio: Studio, request, image, prompt: str, settings_json: str, stack_json: str, progress):
    """The public ``/render`` endpoint: JSON settings and stack, errors as gr.Error."""
    try:
        overrides = json.loads(settings_json or "{}")
        if not isinstance(overrides, dict):
            raise StudioError("settings_json must be a JSON object of render settings.")
        values = studio.spec.defaults.settings_values()
        values.update(overrides)
        values["prompt"] = prompt
        settings = build(RenderSettings, "render settings", **values)
        stack = Stack.from_json(stack_json) if stack_json and stack_json.strip() else Stack()
        video, _, record = render(studio, _session(request), image, settings, stack, False, progress)
        return video, record
    except json.JSONDecodeError as exc:
        raise gr.Error(f"settings_json is not valid JSON ({exc.msg}).") from None
    except StudioError as exc:
        raise gr.Error(studio.public_message(str(exc))) from None


CANCEL_WAIT_S = 60.0  # the render stops after the step in flight; the timeline then shows where


def cancel(studio: Studio, request: gr.Request):
    if studio.cancel(_session(request)):
        return status("Render cancelled; nothing was written.", "info")
    return status("No render of yours is running.", "info")


def cancel_and_mark(studio: Studio, request: gr.Request, state, steps, shift, high_steps):
    """(status, timeline): cancel this session's render, wait for it to stop, mark the step it stopped after."""
    session = _session(request)
    if not studio.cancel(session, wait=CANCEL_WAIT_S):
        return status("No render of yours is running.", "info"), gr.skip()
    ran = studio.steps_run(session) or (0, 0)
    message = status(str(RenderCancelled(steps_done=ran[0], total=ran[1])), "info")
    try:
        settings = settings_for_timeline(steps, shift, high_steps)
        done = ran[0] if ran[1] == settings.steps else 0
        plot, _ = timeline(studio, to_stack(state), settings, RunMark(done, settings.steps, cancelled=True))
    except StudioError:
        plot = None
    return message, plot if plot is not None else gr.skip()


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


# ---------------------------------------------------------------------- timeline
def timeline(
    studio: Studio, stack: Stack, settings: RenderSettings, mark: RunMark | None = None
) -> tuple[Any, str]:
    """The plot value and a status line (schedule errors, or the split in words)."""
    try:
        split = studio.split(settings)
    except StudioError as exc:
        return None, status(str(exc), "error")
    two = split.boundary_ratio is not None
    series, errors = series_for(stack, split.steps, two)
    title = split.label() + (" (set by high-noise steps)" if split.high_steps is not None else "")
    value = plot_value(figure(split.experts, series, two_experts=two, mark=mark, title=title))
    if errors:
        return value, status(" ".join(errors), "error")
    return value, ""


def settings_for_timeline(steps, shift, high_steps) -> RenderSettings:
    """The settings the split depends on, read from their widgets (a sentence if one is invalid)."""
    return build(
        RenderSettings,
        "render settings",
        steps=int(steps) if steps is not None else 0,
        shift=float(shift) if shift is not None else 0.0,
        high_steps=None if high_steps is None or high_steps == "" or int(high_steps) < 0 else int(high_steps),
    )


def last_run_mark(studio: Studio, request: gr.Request | None, steps) -> RunMark | None:
    """The session's last render marked on the timeline while the step count still matches (so a redraw
    after an edit keeps showing where it ran or stopped); None while it runs or before the first."""
    session = _session(request)
    ran = studio.steps_run(session)
    try:
        count = int(steps)
    except (TypeError, ValueError):
        return None
    if ran is None or ran[0] == 0 or ran[1] != count or studio.rendering(session):
        return None
    return RunMark(ran[0], ran[1], cancelled=ran[0] < ran[1])


def update_timeline(studio: Studio, state, steps, shift, high_steps, mark: RunMark | None = None):
    """(plot, status) for the editor's current stack and settings; the plot is kept on an error."""
    try:
        value, message = timeline(
            studio, to_stack(state), settings_for_timeline(steps, shift, high_steps), mark
        )
    except StudioError as exc:
        return gr.skip(), status(str(exc), "error")
    return (value if value is not None else gr.skip()), message
