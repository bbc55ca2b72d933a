"""The weight grid in the Compare tab: two axes over the editor's request, one labelled grid video.

Each axis is a LoRA of the stack (its weight on both experts, the high-noise or the low-noise
one), the seed, or the step count, with a list of values. The cells render as a batch on the
GPU queue (same image, same seed unless an axis is the seed) into ``<outputs>/grids/<time>``,
and the grid video is shown and offered as one MP4 to download.
"""

from __future__ import annotations

import re
from pathlib import Path

import gradio as gr

from studio.errors import RenderCancelled, StudioError, ValidationError
from studio.media.files import save_png_atomic, unique_stem
from studio.media.images import load_start_image
from studio.service import Studio
from studio.ui import handlers as h
from studio.ui.refs import EditorRefs
from studio.workflows.batch.grid import GridAxis, run_grid
from studio.workflows.batch.runner import InProcess

GPU_QUEUE = "gpu"  # = studio.ui.layout.GPU_QUEUE
GRID_FOLDER = "grids"
KIND_CHOICES = [("a LoRA's weight", "weight"), ("seed", "seed"), ("steps", "steps")]
EXPERT_CHOICES = [("both experts", "both"), ("high-noise", "high"), ("low-noise", "low")]


def axis_from_widgets(
    kind: str, entry_id: str | None, expert: str | None, values_text: str | None
) -> GridAxis:
    parts = [p for p in re.split(r"[,;\s]+", values_text or "") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValidationError(
            f"The grid values {values_text!r} must be numbers separated by commas."
        ) from None
    if not values:
        raise ValidationError("Give each grid axis at least one value, e.g. 0.4, 0.7, 1.0.")
    from studio.stack.schema import parse_model

    data = {"kind": kind or "weight", "values": values}
    if data["kind"] == "weight":
        if not entry_id:
            raise ValidationError("Choose the LoRA whose weight the axis varies.")
        data.update(lora=entry_id, expert=expert or "both")
    return parse_model(GridAxis, data, "grid axis")


def build_grid_panel(studio: Studio, refs: EditorRefs, entry_choices) -> None:
    """The grid accordion; ``entry_choices(state)`` lists the stack's entries as ``(name, id)``."""
    outputs_dir = Path(studio.settings.outputs_dir)
    two_experts = studio.spec.experts == 2
    experts = EXPERT_CHOICES if two_experts else EXPERT_CHOICES[:1]
    with gr.Accordion("Weight grid from the editor", open=False, elem_id="grid-panel"):
        gr.Markdown(
            "Two axes over the Studio tab's image, prompt, settings and stack — e.g. style 0.4/0.7/1.0 × "
            "character 0.8/1.0/1.2 — rendered with one seed and shown as one labelled video.",
            elem_classes=["compare-help"],
        )
        axes = []
        for which, default_kind, default_values in (
            ("rows", "weight", "0.4, 0.7, 1.0"),
            ("cols", "seed", "1, 2"),
        ):
            with gr.Row(equal_height=True):
                kind = gr.Radio(
                    KIND_CHOICES,
                    value=default_kind,
                    label=f"{which.title()}: vary",
                    elem_id=f"grid-{which}-kind",
                    scale=2,
                )
                entry = gr.Dropdown(
                    [], label="LoRA", elem_id=f"grid-{which}-lora", allow_custom_value=False, scale=2
                )
                expert = gr.Radio(
                    experts, value="both", label="Weight of", elem_id=f"grid-{which}-expert", scale=2
                )
                values = gr.Textbox(
                    default_values, label="Values", elem_id=f"grid-{which}-values", max_lines=1, scale=2
                )
            axes.append((kind, entry, expert, values))
        with gr.Row():
            render_btn = gr.Button("Render the grid", variant="primary", elem_id="grid-render")
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="grid-cancel", scale=0, min_width=100)
        status = gr.HTML("", elem_id="grid-status")
        video = gr.Video(label="Grid", elem_id="grid-video", interactive=False, autoplay=True, loop=True)
        download = gr.DownloadButton("Download the grid MP4", visible=False, elem_id="grid-download")

    private = {"api_visibility": "private"}

    def entries_update(state, *current):
        options = entry_choices(state)
        ids = [i for _, i in options]
        return [
            gr.Dropdown(choices=options, value=c if c in ids else (ids[0] if ids else None)) for c in current
        ]

    entry_widgets = [a[1] for a in axes]
    refs.stack_version.change(
        entries_update,
        inputs=[refs.stack_state, *entry_widgets],
        outputs=entry_widgets,
        queue=False,
        **private,
    )
    refs.tabs.select(
        entries_update,
        inputs=[refs.stack_state, *entry_widgets],
        outputs=entry_widgets,
        queue=False,
        **private,
    )

    def grid_render(  # not "render": that API name belongs to the public endpoint
        image, fuse, state, rk, re_, rx, rv, ck, ce, cx, cv, prompt_v, negative_v, width_v, height_v, frames_v,
        steps_v, guidance_v, guidance_low_v, shift_v, seed_v, fps_v, high_steps_v, request: gr.Request,
        progress=gr.Progress(),
    ):  # fmt: skip
        # Gradio injects the request and the progress tracker by the parameters' hints and defaults.
        widgets = (prompt_v, negative_v, width_v, height_v, frames_v, steps_v, guidance_v, guidance_low_v,
                   shift_v, seed_v, fps_v, high_steps_v)  # fmt: skip
        try:
            if image is None:
                raise StudioError("Upload a start image in the Studio tab first.")
            settings = h.settings_from_widgets(*widgets)
            stack = h.to_stack(state)
            rows, cols = axis_from_widgets(rk, re_, rx, rv), axis_from_widgets(ck, ce, cx, cv)
            root = outputs_dir / GRID_FOLDER
            root.mkdir(parents=True, exist_ok=True)
            folder = root / unique_stem(root, "grid")
            folder.mkdir()
            start = save_png_atomic(load_start_image(image), folder / "start.png")
            total = len(rows.values) * len(cols.values)

            def on_event(event):
                step = event.step / event.steps if event.kind == "step" and event.steps else 0.0
                progress(
                    (event.done + event.failed + step, total),
                    desc=f"Cell {event.position}/{total}: {event.scene}",
                )

            backend = InProcess(studio, session=h._session(request))
            path, layout, summary = run_grid(
                start, settings, stack, rows, cols, folder, backend,
                model=studio.spec.name, fuse=bool(fuse), on_event=on_event,
            )  # fmt: skip
        except RenderCancelled as exc:
            return gr.skip(), gr.skip(), h.status(str(exc), "info")
        except StudioError as exc:
            return gr.skip(), gr.skip(), h.status(str(exc), "error")
        if path is None:
            return (
                gr.skip(),
                gr.DownloadButton(visible=False),
                h.status("No cell of the grid rendered.", "error"),
            )
        failed = [j.scene for j in summary.state.jobs if j.status == "failed"]
        message = f"Rendered a {layout.rows} × {layout.cols} grid ({layout.width}×{layout.height}) into {folder.name}."
        if failed:
            message += f" Failed (grey cells): {', '.join(failed)}."
        return (
            str(path),
            gr.DownloadButton(value=str(path), visible=True),
            h.status(message, "warning" if failed else "ok"),
        )

    inputs = [
        refs.image,
        refs.fuse,
        refs.stack_state,
        *[w for axis in axes for w in axis],
        *refs.settings_widgets,
    ]
    render_btn.click(
        grid_render,
        inputs=inputs,
        outputs=[video, download, status],
        concurrency_id=GPU_QUEUE,
        concurrency_limit=1,
        **private,
    )

    def grid_cancel(request: gr.Request):
        return h.cancel(studio, request)

    # no cancels=[event]: Gradio would hold the click until the grid ended; the token stops it between steps
    cancel_btn.click(grid_cancel, outputs=[status], queue=False, **private)
