"""The Gradio Blocks layout. Widgets and wiring only; behaviour lives in :mod:`studio.ui.handlers`."""

from __future__ import annotations

import html
from functools import partial
from pathlib import Path

import gradio as gr

from studio.errors import StudioError
from studio.service import Studio
from studio.ui import handlers as h
from studio.ui import schedule_editor
from studio.ui import timeline_panel as timeline_view
from studio.ui.api import register_api
from studio.ui.batch_tab import build_batch_tab
from studio.ui.compare_tab import build_compare_tab
from studio.ui.doctor_panel import badge_slot, doctor_widgets, wire_doctor_panel
from studio.ui.history_tab import build_history_tab
from studio.ui.hub_panel import build_hub_tab
from studio.ui.library_view import TABLE_HEADERS, TABLE_TYPES, TABLE_WIDTHS
from studio.ui.presets_panel import build_presets_panel
from studio.ui.refs import EditorRefs
from studio.ui.train_tab import build_train_tab
from studio.ui.vram_panel import build_vram_panel

CSS_PATH = Path(__file__).resolve().parents[2] / "assets" / "studio.css"
GPU_QUEUE = "gpu"  # every event that runs the model shares this queue (one at a time)


def _model_banner(studio: Studio) -> str:
    spec = studio.spec
    if spec.is_demo:
        return (
            f'<div class="studio-demo-note" id="demo-note"><b>Demo model.</b> {html.escape(spec.note)}</div>'
        )
    return f'<div class="studio-model-note">Model: <b>{html.escape(spec.label)}</b></div>'


def build_app(studio: Studio) -> gr.Blocks:
    spec = studio.spec
    d = spec.defaults

    with gr.Blocks(title="Wan LoRA Studio", analytics_enabled=False) as app:
        stack_state = gr.State({"entries": []})
        stack_version = gr.State(0)  # bumped on structural changes only: re-draws the stack view

        gr.HTML("<h1 class='studio-title'>Wan LoRA Studio</h1>")
        banner = gr.HTML(_model_banner(studio), elem_id="model-banner")

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Studio", id="studio", elem_id="tab-studio"):
                with gr.Row(equal_height=False):
                    # ------------------------------------------------------------ inputs
                    with gr.Column(scale=5, min_width=320):
                        with gr.Row():
                            model_choice = gr.Dropdown(
                                studio.model_choices(),
                                value=spec.name,
                                label="Model",
                                elem_id="model-choice",
                                scale=4,
                            )
                            download_btn = gr.Button(
                                "Download weights", visible=False, scale=1, elem_id="download"
                            )
                        model_status = gr.HTML("", elem_id="model-status")
                        image = gr.Image(
                            label="Start image",
                            type="pil",
                            sources=["upload", "clipboard"],
                            elem_id="start-image",
                            height=260,
                        )
                        prompt = gr.Textbox(
                            label="Prompt", lines=3, elem_id="prompt", placeholder="What happens in the video"
                        )
                        negative = gr.Textbox(
                            label="Negative prompt", value=d.negative_prompt, lines=2, elem_id="negative"
                        )
                        with gr.Accordion("Settings", open=True):
                            with gr.Row():
                                width = gr.Number(
                                    d.width, label="Width", precision=0, step=16, minimum=16, elem_id="width"
                                )
                                height = gr.Number(
                                    d.height,
                                    label="Height",
                                    precision=0,
                                    step=16,
                                    minimum=16,
                                    elem_id="height",
                                )
                                frames = gr.Number(
                                    d.frames,
                                    label="Frames (4k+1)",
                                    precision=0,
                                    step=4,
                                    minimum=1,
                                    elem_id="frames",
                                )
                            with gr.Row():
                                steps = gr.Number(
                                    d.steps, label="Steps", precision=0, minimum=1, elem_id="steps"
                                )
                                seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, elem_id="seed")
                                fps = gr.Number(d.fps, label="FPS", precision=0, minimum=1, elem_id="fps")
                            with gr.Row():
                                guidance = gr.Number(
                                    d.guidance, label="Guidance, high-noise", step=0.5, elem_id="guidance"
                                )
                                guidance_low = gr.Number(
                                    d.guidance_low if d.guidance_low is not None else d.guidance,
                                    label="Guidance, low-noise",
                                    step=0.5,
                                    elem_id="guidance-low",
                                )
                                shift = gr.Number(d.shift, label="Shift", step=0.5, elem_id="shift")
                            high_steps = gr.Number(
                                -1,
                                label="High-noise steps (-1 = where the model's boundary puts the switch)",
                                precision=0,
                                minimum=-1,
                                elem_id="high-steps",
                            )
                            fuse = gr.Checkbox(
                                False, label="Fuse LoRAs into the weights (faster steps)", elem_id="fuse"
                            )

                    # ------------------------------------------------------------- stack
                    with gr.Column(scale=5, min_width=320):
                        gr.Markdown("### LoRA stack")
                        with gr.Row():
                            library = gr.Dropdown(
                                [], label="LoRA library", elem_id="library", scale=4, allow_custom_value=False
                            )
                            refresh_btn = gr.Button("Refresh", scale=1, elem_id="refresh-library")
                        library_card = gr.HTML("", elem_id="library-card")
                        with gr.Row():
                            add_btn = gr.Button("Add to stack", elem_id="add-lora", variant="secondary")
                            trigger_btn = gr.Button(
                                "Insert trigger words", elem_id="insert-triggers", size="sm"
                            )
                        stack_status = gr.HTML("", elem_id="stack-status")

                        @gr.render(inputs=[stack_state], triggers=[stack_version.change, app.load])
                        def draw_stack(state):
                            stack = h.to_stack(state)
                            if not stack.entries:
                                gr.Markdown(
                                    "*The stack is empty: add LoRAs from the library.*", elem_id="stack-empty"
                                )
                                return
                            two = studio.spec.experts == 2
                            for position, entry in enumerate(stack.entries):
                                _draw_entry(
                                    entry,
                                    position,
                                    len(stack.entries),
                                    two,
                                    stack_state,
                                    stack_version,
                                    stack_status,
                                    steps,
                                )

                        doctor = doctor_widgets()

                    # ------------------------------------------------------------ output
                    with gr.Column(scale=5, min_width=320):
                        with gr.Row():
                            render_btn = gr.Button("Render", variant="primary", elem_id="render")
                            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel")
                        render_status = gr.HTML("", elem_id="render-status")
                        video = gr.Video(
                            label="Result",
                            elem_id="result-video",
                            autoplay=True,
                            loop=True,
                            interactive=False,
                        )
                        refs = EditorRefs(
                            app=app, tabs=tabs, image=image, prompt=prompt, negative=negative, width=width,
                            height=height, frames=frames, steps=steps, guidance=guidance, guidance_low=guidance_low,
                            shift=shift, seed=seed, fps=fps, fuse=fuse, stack_state=stack_state,
                            stack_version=stack_version, stack_status=stack_status, render_status=render_status,
                            video=video, library=library, high_steps=high_steps,
                        )  # fmt: skip
                        mode, precision, tiling, compiled, card = build_vram_panel(studio, refs, model_choice)
                        wire_doctor_panel(studio, refs, doctor, mode, precision, gpu_queue=GPU_QUEUE)
                        force = gr.Checkbox(
                            False, label="Render even if it won't fit", elem_id="force-render"
                        )

                timeline_plot, timeline_note = timeline_view.components()
                with gr.Accordion("LoRA library", open=True, elem_id="library-browser"):
                    with gr.Row(equal_height=True):
                        library_filter = gr.Textbox(
                            label="Filter the library",
                            placeholder="words from any column: a name, layout, base model, expert, badge…",
                            elem_id="library-filter",
                            scale=3,
                        )
                        library_count = gr.HTML("", elem_id="library-count")
                    library_table = gr.Dataframe(
                        headers=TABLE_HEADERS,
                        datatype=TABLE_TYPES,
                        column_widths=TABLE_WIDTHS,
                        interactive=False,
                        wrap=True,
                        max_height=360,
                        elem_id="library-table",
                    )
                    library_ids = gr.State([])  # the table rows' item ids, in row order

                build_presets_panel(studio, refs)
            with gr.Tab("Hub", id="hub", elem_id="tab-hub"):
                build_hub_tab(studio, refs)
            with gr.Tab("History", id="history", elem_id="tab-history"):
                build_history_tab(studio, refs)
            with gr.Tab("Compare", id="compare", elem_id="tab-compare"):
                compare = build_compare_tab(studio, refs)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                build_train_tab(studio, refs, compare)
            with gr.Tab("Batch", id="batch", elem_id="tab-batch"):
                build_batch_tab(studio, refs)

        # ---------------------------------------------------------------- wiring
        setting_widgets = refs.settings_widgets

        def render_ui(
            state, image_value, fuse_value, mode_v, precision_v, tiling_v, compiled_v, card_v, force_v, prompt_v, negative_v,
            width_v, height_v, frames_v, steps_v, guidance_v, guidance_low_v, shift_v, seed_v, fps_v,
            high_steps_v, request: gr.Request, progress=gr.Progress(),
        ):  # fmt: skip
            values = (prompt_v, negative_v, width_v, height_v, frames_v, steps_v, guidance_v, guidance_low_v,
                      shift_v, seed_v, fps_v, high_steps_v)  # fmt: skip
            memory = h.MemoryChoice(mode_v, precision_v, tiling_v, card_v, force_v, compiled_v)
            return h.render_from_widgets(
                studio, request, state, image_value, fuse_value, memory, *values, progress=progress
            )

        render_btn.click(
            render_ui,
            inputs=[
                stack_state,
                image,
                fuse,
                mode,
                precision,
                tiling,
                compiled,
                card,
                force,
                *setting_widgets,
            ],
            outputs=[video, render_status, timeline_plot],
            concurrency_id=GPU_QUEUE,
            concurrency_limit=1,
            api_visibility="private",
        )

        def cancel_ui(state, steps_v, shift_v, high_steps_v, request: gr.Request):
            return h.cancel_and_mark(studio, request, state, steps_v, shift_v, high_steps_v)

        cancel_btn.click(
            cancel_ui,
            inputs=[stack_state, steps, shift, high_steps],
            outputs=[render_status, timeline_plot],
            api_visibility="private",
            queue=False,
        )  # no cancels=[render_event]: Gradio holds that until the render has ended; the token stops it between steps

        def refresh_library(query):
            choices = h.library_choices(studio)  # rescans the folders
            rows, ids, count = h.library_table(studio, query)
            return gr.update(choices=choices, value=None), "", rows, ids, count

        library_outputs = [library, library_card, library_table, library_ids, library_count]
        app.load(refresh_library, inputs=[library_filter], outputs=library_outputs, api_visibility="private")
        refresh_btn.click(
            refresh_library, inputs=[library_filter], outputs=library_outputs, api_visibility="private"
        )
        library_filter.change(
            partial(h.library_table, studio),
            inputs=[library_filter],
            outputs=[library_table, library_ids, library_count],
            api_visibility="private",
            trigger_mode="always_last",
        )
        library_table.select(
            h.pick_from_table, inputs=[library_ids], outputs=[library], api_visibility="private"
        )
        library.change(
            partial(h.library_details, studio),
            inputs=[library],
            outputs=[library_card],
            api_visibility="private",
        )
        trigger_btn.click(
            partial(h.insert_trigger_words, studio),
            inputs=[library, prompt],
            outputs=[prompt, stack_status],
            api_visibility="private",
        )

        def add(state, choice, version):
            new_state, message = h.add_lora(studio, state, choice)
            return new_state, message, version + (new_state is not state)

        add_btn.click(
            add,
            inputs=[stack_state, library, stack_version],
            outputs=[stack_state, stack_status, stack_version],
            api_visibility="private",
        )

        default_widgets = [width, height, frames, steps, guidance, guidance_low, shift, fps, negative]

        def on_model_change(name, version):
            unchanged = [gr.skip()] * len(default_widgets)
            try:
                message, loadable = studio.model_status(name)
                if loadable and name != studio.spec.name:
                    studio.switch_model(name)
                    message = f"Loaded {studio.spec.label}."
                    defaults = h.model_defaults(studio.spec)
                    version += 1  # the stack view re-draws (one or two weight sliders per entry)
                else:
                    defaults = unchanged
                show_download = not loadable and studio.spec.name != name and _is_hub_model(name)
                return (h.status(message, "info"), gr.update(visible=show_download), _model_banner(studio),
                        version, *defaults)  # fmt: skip
            except StudioError as exc:
                return (h.error(studio, exc), gr.update(visible=False), _model_banner(studio), version,
                        *unchanged)  # fmt: skip

        model_choice.change(
            on_model_change,
            inputs=[model_choice, stack_version],
            outputs=[model_status, download_btn, banner, stack_version, *default_widgets],
            concurrency_id=GPU_QUEUE,
            api_visibility="private",
        ).then(  # badges depend on the model, and the demo LoRAs are listed only with the demo model
            refresh_library, inputs=[library_filter], outputs=library_outputs, api_visibility="private"
        )

        def download(name, progress=gr.Progress()):
            from studio.hub.models import download_model
            from studio.models.registry import resolve_model

            try:
                spec = resolve_model(name)
                download_model(
                    spec, lambda done, total: progress((done, total), desc="Downloading", unit="bytes")
                )
                return h.status(
                    f"Downloaded {spec.label} into the Hugging Face cache. Choose the model again to load it.",
                    "ok",
                )
            except StudioError as exc:
                return h.error(studio, exc)

        download_btn.click(download, inputs=[model_choice], outputs=[model_status], api_visibility="private")

        timeline_view.wire(studio, refs, timeline_plot, timeline_note)
        register_api(studio, concurrency_id=GPU_QUEUE)
    return app


def _is_hub_model(name: str) -> bool:
    from studio.models.registry import REGISTRY

    return name in REGISTRY and REGISTRY[name].repo_id is not None


def _draw_entry(entry, position, count, two_experts, stack_state, stack_version, stack_status, steps):
    """One stack row: enable, name, a weight slider and a schedule editor per expert, move up/down, remove,
    the doctor's badges."""
    with gr.Group(elem_classes=["stack-entry"], elem_id=f"entry-{entry.id}"):
        with gr.Row():
            enabled = gr.Checkbox(
                entry.enabled, label=entry.name, elem_id=f"enabled-{entry.id}", scale=3, interactive=True
            )
            up = gr.Button("↑", size="sm", min_width=30, interactive=position > 0, elem_id=f"up-{entry.id}")
            down = gr.Button(
                "↓", size="sm", min_width=30, interactive=position < count - 1, elem_id=f"down-{entry.id}"
            )
            remove = gr.Button("✕", size="sm", min_width=30, variant="stop", elem_id=f"remove-{entry.id}")
        sources = []
        if entry.high is not None:
            sources.append(("high", entry.high.label()))
        if entry.low is not None and two_experts:
            sources.append(("low", entry.low.label()))
        with gr.Row():
            with gr.Column(min_width=160):
                high = gr.Slider(
                    h.SLIDER_MIN, h.SLIDER_MAX, value=entry.weight_high, step=0.05,
                    label="High-noise weight" if two_experts else "Weight",
                    elem_id=f"high-{entry.id}", interactive=entry.high is not None,
                )  # fmt: skip
                schedule_editor.draw(
                    entry, "high", high, stack_state, stack_status, steps, entry.high is not None
                )
            if two_experts:
                with gr.Column(min_width=160):
                    low = gr.Slider(
                        h.SLIDER_MIN, h.SLIDER_MAX, value=entry.weight_low, step=0.05, label="Low-noise weight",
                        elem_id=f"low-{entry.id}", interactive=entry.low is not None,
                    )  # fmt: skip
                    schedule_editor.draw(
                        entry, "low", low, stack_state, stack_status, steps, entry.low is not None
                    )
        files = " · ".join(f"{e}: {html.escape(Path(s).name)}" for e, s in sources)
        gr.HTML(f"<div class='entry-files'>{files}</div>")
        gr.HTML(badge_slot(entry.id))  # filled in the page from the Doctor panel's latest findings

    private = {"api_visibility": "private", "concurrency_limit": None, "trigger_mode": "always_last"}
    enabled.change(
        lambda s, v: h.edit_entry(s, entry.id, enabled=bool(v)),
        inputs=[stack_state, enabled], outputs=[stack_state, stack_status], **private,
    )  # fmt: skip
    for button, action in ((up, -1), (down, 1)):
        button.click(
            lambda s, v, delta=action: (h.move_entry(s, entry.id, delta), v + 1),
            inputs=[stack_state, stack_version], outputs=[stack_state, stack_version], **private,
        )  # fmt: skip
    remove.click(
        lambda s, v: (h.remove_entry(s, entry.id), v + 1),
        inputs=[stack_state, stack_version], outputs=[stack_state, stack_version], **private,
    )  # fmt: skip
