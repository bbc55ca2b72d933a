"""The Compare tab: two to four renders side by side, synchronized, with the settings that differ.

- Choose renders from the history (at most four by hand): they play in one synchronized
  player (:mod:`studio.ui.compare_player`) above a table of the settings that differ.
- One-click comparison renders from the editor's current image, settings and stack, all
  with one seed: *Baseline* (the stack and no LoRAs), *Leave-one-out* and *Weight sweep*.
  They run on the GPU queue, one render after another, and land in the history too.
- *Export* writes the compared videos side by side, labelled, as one MP4 to download.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import RenderCancelled, StudioError
from studio.media.files import unique_stem
from studio.media.images import load_start_image
from studio.service import Studio
from studio.stack.schema import Stack
from studio.ui import handlers as h
from studio.ui.compare_player import diff_html, message_html, player_html
from studio.ui.grid_panel import build_grid_panel
from studio.ui.history_tab import opened_tab, resolve_render
from studio.ui.refs import EditorRefs
from studio.workflows.compare import (
    MAX_PANELS,
    comparison_requests,
    comparison_view,
    run_comparison,
    side_by_side,
)
from studio.workflows.history import History, HistoryEntry

GPU_QUEUE = "gpu"  # = studio.ui.layout.GPU_QUEUE: one model, one render at a time
MAX_CHOSEN = 4  # renders chosen by hand; one-click comparisons may show up to MAX_PANELS
CHOICES_LIMIT = 100
EXPORT_FOLDER = "comparisons"  # under the outputs folder (served by Gradio's file route)
TAB_ID = "compare"
KINDS = {"baseline": "Baseline", "leave-one-out": "Leave-one-out", "sweep": "Weight sweep"}
HINT = "Choose two to four renders above, or run a one-click comparison below."


def choice_label(entry: HistoryEntry) -> str:
    prompt = entry.prompt if len(entry.prompt) <= 32 else entry.prompt[:31] + "…"
    seed = f"seed {entry.seed}" if entry.seed is not None else "no seed"
    return f"{entry.time_label} · {prompt or 'no prompt'} · {entry.stack_summary} · {seed}"


def render_choices(history: History) -> list[tuple[str, str]]:
    """``(label, video file name)`` for the newest renders."""
    return [(choice_label(e), e.video.name) for e in history.entries(CHOICES_LIMIT, thumbnails=False)]


def sweep_values(text: str | None) -> list[str]:
    """The weights typed for a sweep ("0, 0.5, 1.0"); numbers are checked by ``comparison_requests``."""
    return [part for part in re.split(r"[,;\s]+", text or "") if part]


def stack_entry_choices(state: dict | None) -> list[tuple[str, str]]:
    try:
        stack = h.to_stack(state)
    except Exception:
        return []
    return [(entry.name, entry.id) for entry in stack.entries]


def panel_labels(records: list[dict[str, Any]], max_length: int = 48) -> list[str]:
    """A label per chosen render: a letter, its seed and its LoRAs, e.g. "B · seed 44 · style (1/1)"."""
    labels = []
    for index, record in enumerate(records):
        seed = (record.get("settings") or {}).get("seed")
        try:
            summary = Stack.model_validate(record.get("stack") or {}).summary()
        except Exception:
            summary = "unreadable stack"
        text = f"{chr(ord('A') + index)} · seed {seed if seed is not None else '?'} · {summary}"
        labels.append(text if len(text) <= max_length else text[: max_length - 1] + "…")
    return labels


def view_outputs(outputs_dir: Path, names: list[str]) -> tuple[str, str, dict]:
    """Player HTML, table HTML and the view state for renders ``names`` in the outputs folder."""
    paths = [resolve_render(outputs_dir, name) for name in names]
    view = comparison_view(paths, ["?"] * len(paths))
    view = dataclasses.replace(view, labels=panel_labels(view.records))
    state = {"videos": [p.name for p in view.videos], "labels": list(view.labels)}
    return player_html(view.videos, view.labels), diff_html(view.rows, view.labels), state


@dataclasses.dataclass
class CompareHandle:
    """What another tab needs to show renders here: the components to update and their values."""

    outputs: list[Any]  # choices, player, diff, view, download
    show: Any  # show(video file names) -> values for ``outputs``


def build_compare_tab(studio: Studio, refs: EditorRefs) -> CompareHandle:
    history = History.for_settings(studio.settings)
    outputs_dir = Path(studio.settings.outputs_dir)
    two_experts = studio.spec.experts == 2

    with gr.Row(equal_height=False):
        choices = gr.CheckboxGroup(
            [],
            label="Renders to compare (two to four)",
            elem_id="compare-choices",
            elem_classes=["compare-choices"],
            scale=6,
        )
        refresh_btn = gr.Button("Refresh", size="sm", scale=0, min_width=90, elem_id="compare-refresh")
    status = gr.HTML("", elem_id="compare-status")
    player = gr.HTML(message_html(HINT), elem_id="compare-player", js_on_load=None)
    diff = gr.HTML("", elem_id="compare-diff", js_on_load=None)
    with gr.Row():
        export_btn = gr.Button("Export side-by-side MP4", elem_id="compare-export", scale=0, min_width=220)
        download = gr.DownloadButton(
            "Download side-by-side MP4", visible=False, elem_id="compare-download", scale=0, min_width=220
        )
    with gr.Accordion("One-click comparisons from the editor", open=True, elem_classes=["compare-oneclick"]):
        gr.Markdown(
            "Render the Studio tab's image, prompt and settings again with the same seed (a random seed is "
            "drawn once for all of them), changing only the LoRAs. The renders also appear in the history.",
            elem_classes=["compare-help"],
        )
        with gr.Row():
            baseline_btn = gr.Button("Baseline (no LoRAs)", elem_id="compare-baseline")
            loo_btn = gr.Button("Leave-one-out", elem_id="compare-loo")
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="compare-cancel", scale=0, min_width=100)
        with gr.Row(equal_height=True):
            sweep_entry = gr.Dropdown(
                [], label="Sweep: LoRA", elem_id="compare-sweep-entry", allow_custom_value=False, scale=2
            )
            expert_choices = [("both experts", "both"), ("high-noise", "high"), ("low-noise", "low")]
            sweep_expert = gr.Radio(
                expert_choices if two_experts else expert_choices[:1],
                value="both",
                label="Weight",
                elem_id="compare-sweep-expert",
                scale=2,
            )
            sweep_text = gr.Textbox(
                "0, 0.5, 1.0", label="Values", elem_id="compare-sweep-values", scale=2, max_lines=1
            )
            sweep_btn = gr.Button("Weight sweep", elem_id="compare-sweep", scale=1)
    build_grid_panel(studio, refs, stack_entry_choices)
    view = gr.State({"videos": [], "labels": []})

    private = {"api_visibility": "private"}

    # ----------------------------------------------------------------- choosing renders
    def refresh(current: list[str] | None):
        try:
            options = render_choices(history)
        except StudioError as exc:
            return gr.skip(), h.error(studio, exc)
        known = {name for _, name in options}
        return gr.CheckboxGroup(choices=options, value=[n for n in current or [] if n in known]), gr.skip()

    def entries_update(state: dict | None, current: str | None):
        options = stack_entry_choices(state)
        ids = [entry_id for _, entry_id in options]
        value = current if current in ids else (ids[0] if len(ids) == 1 else None)
        return gr.Dropdown(choices=options, value=value)

    def on_open(current, state, entry, evt: gr.SelectData):
        if not opened_tab(evt, TAB_ID, "Compare"):
            return gr.skip(), gr.skip(), gr.skip()
        return (*refresh(current), entries_update(state, entry))

    refresh_btn.click(refresh, inputs=[choices], outputs=[choices, status], queue=False, **private)
    refs.tabs.select(
        on_open,
        inputs=[choices, refs.stack_state, sweep_entry],
        outputs=[choices, status, sweep_entry],
        queue=False,
        **private,
    )
    refs.stack_version.change(
        entries_update, inputs=[refs.stack_state, sweep_entry], outputs=[sweep_entry], queue=False, **private
    )

    def on_choose(selected: list[str] | None, current: dict):
        selected = list(selected or [])
        previous = list((current or {}).get("videos") or [])
        if len(selected) > MAX_CHOSEN and len(selected) > len(previous):
            message = f"Compare at most {MAX_CHOSEN} renders at once; untick one before choosing another."
            keep = [name for name in previous if name in selected]
            if keep:  # back to what is shown: the player keeps playing
                return gr.CheckboxGroup(value=keep), *[gr.skip()] * 4, h.status(message, "warning")
            keep = selected[:MAX_CHOSEN]
            return (gr.CheckboxGroup(value=keep), *_show(keep), h.status(message, "warning"))
        return (gr.skip(), *_show(selected), "")

    def _show(names: list[str]):
        if len(names) < 2:
            return message_html(HINT), "", {"videos": names, "labels": []}, gr.DownloadButton(visible=False)
        try:
            player_value, diff_value, state = view_outputs(outputs_dir, names)
        except StudioError as exc:
            return (
                message_html(studio.public_message(str(exc))),
                "",
                {"videos": [], "labels": []},
                gr.DownloadButton(visible=False),
            )
        return player_value, diff_value, state, gr.DownloadButton(visible=False)

    choices.input(
        on_choose,
        inputs=[choices, view],
        outputs=[choices, player, diff, view, download, status],
        **private,
    )

    # ----------------------------------------------------------------- one-click comparisons
    def run(kind, image, fuse, state, entry_id, expert, values_text, widgets, request, progress):
        skip = [gr.skip()] * 5
        try:
            if image is None:
                raise StudioError("Upload a start image in the Studio tab first.")
            from studio.engine.manager import RenderRequest

            settings = h.settings_from_widgets(*widgets)
            stack = h.to_stack(state)
            if kind == "sweep" and not entry_id:
                options = stack_entry_choices(state)
                if len(options) != 1:
                    raise StudioError("Choose the LoRA whose weight to sweep (Sweep: LoRA).")
                entry_id = options[0][1]
            request_ = RenderRequest(
                image=load_start_image(image), settings=settings, stack=stack, fuse=bool(fuse)
            )
            pairs = comparison_requests(
                request_, kind, entry_id=entry_id, expert=expert or "both", values=sweep_values(values_text)
            )
            if len(pairs) > MAX_PANELS:
                raise StudioError(
                    f"This comparison needs {len(pairs)} renders; the player shows at most {MAX_PANELS}. "
                    "Give fewer values or disable some LoRAs."
                )
            count = {"render": 0, "last": 0}
            labels = [label for label, _ in pairs]

            def on_step(event) -> None:
                if event.step <= count["last"]:
                    count["render"] = min(count["render"] + 1, len(pairs) - 1)
                count["last"] = event.step
                i = count["render"]
                progress(
                    (i * event.total + event.step, len(pairs) * event.total),
                    desc=f"Render {i + 1}/{len(pairs)} ({labels[i]}) · step {event.step}/{event.total}",
                )

            result = run_comparison(studio, pairs, session=h._session(request), progress=on_step)
        except RenderCancelled as exc:
            return (*skip, h.error(studio, exc, "info"))
        except StudioError as exc:
            return (*skip, h.error(studio, exc))
        names = [p.name for p in result.videos]
        seed = pairs[0][1].settings.seed
        message = (
            f"{KINDS[kind]}: rendered {len(names)} videos with seed {seed} ({', '.join(result.labels)}). "
            "They are in the history too."
        )
        try:
            options = render_choices(history)
        except StudioError:
            options = [(name, name) for name in names]
        return (
            gr.CheckboxGroup(choices=options, value=names),
            player_html(result.videos, result.labels),
            diff_html(result.rows, result.labels),
            {"videos": names, "labels": list(result.labels)},
            gr.DownloadButton(visible=False),
            h.status(message, "ok"),
        )

    run_inputs = [refs.image, refs.fuse, refs.stack_state, sweep_entry, sweep_expert, sweep_text,
                  *refs.settings_widgets]  # fmt: skip
    run_outputs = [choices, player, diff, view, download, status]
    gpu = {"concurrency_id": GPU_QUEUE, "concurrency_limit": 1, **private}

    def run_ui(kind):
        # Gradio injects the request and the progress tracker by the parameters' defaults and hints.
        def run_kind(
            image, fuse, state, entry_id, expert, values_text, prompt_v, negative_v, width_v, height_v,
            frames_v, steps_v, guidance_v, guidance_low_v, shift_v, seed_v, fps_v, high_steps_v,
            request: gr.Request, progress=gr.Progress(),
        ):  # fmt: skip
            widgets = (prompt_v, negative_v, width_v, height_v, frames_v, steps_v, guidance_v, guidance_low_v,
                       shift_v, seed_v, fps_v, high_steps_v)  # fmt: skip
            return run(kind, image, fuse, state, entry_id, expert, values_text, widgets, request, progress)

        return run_kind

    for button, kind in ((baseline_btn, "baseline"), (loo_btn, "leave-one-out"), (sweep_btn, "sweep")):
        button.click(run_ui(kind), inputs=run_inputs, outputs=run_outputs, **gpu)

    def compare_cancel(request: gr.Request):  # not "cancel": that API name belongs to the public endpoint
        return h.cancel(studio, request)

    # no cancels=events: Gradio would hold the click until the renders ended; the token stops them between steps
    cancel_btn.click(compare_cancel, outputs=[status], queue=False, **private)

    # ----------------------------------------------------------------- export
    def export(current: dict):
        names = list((current or {}).get("videos") or [])
        labels = list((current or {}).get("labels") or [])
        if len(names) < 2:
            return gr.DownloadButton(visible=False), h.status(
                "Choose two to four renders (or run a comparison) before exporting.", "error"
            )
        try:
            paths = [resolve_render(outputs_dir, name) for name in names]
            folder = outputs_dir / EXPORT_FOLDER
            folder.mkdir(parents=True, exist_ok=True)
            out = folder / f"{unique_stem(folder, 'side-by-side')}.mp4"
            written = side_by_side(
                paths, labels if len(labels) == len(paths) else [p.stem for p in paths], out
            )
        except StudioError as exc:
            return gr.DownloadButton(visible=False), h.error(studio, exc)
        except OSError as exc:
            return gr.DownloadButton(visible=False), h.error(
                studio, f"The export could not be written ({exc})."
            )
        return (
            gr.DownloadButton(value=str(written), visible=True),
            h.status(studio.public_message(f"Exported {len(paths)} videos side by side to {written}."), "ok"),
        )

    export_btn.click(export, inputs=[view], outputs=[download, status], **private)

    def show_names(names: list[str]):
        options = render_choices(history)
        known = {name for _, name in options}
        chosen = [n for n in names if n in known][:MAX_CHOSEN]
        return (gr.CheckboxGroup(choices=options, value=chosen), *_show(chosen))

    return CompareHandle(outputs=[choices, player, diff, view, download], show=show_names)
