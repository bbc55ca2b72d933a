"""The Batch tab: a queue of scenes (kept on disk, so it survives a restart), run as one resumable batch.

- *Add the editor as a scene* takes the Studio tab's image, prompt, settings and stack;
  a chosen scene can be moved, duplicated, removed, renamed/re-prompted, replaced by the
  editor's state, or opened in the editor to change its LoRAs.
- Import a scene file (or a zip exported here: ``scenes.json`` + ``images/``); export the queue.
- *Run* renders every scene not yet done, with per-scene and overall progress, on the GPU
  queue (or on several Ray workers); *Cancel* stops it, keeping the finished scenes. Results
  appear in a gallery, each with its stack.

The queue and the batch's state are files (:class:`~studio.workflows.batch.queue.SceneQueue`);
the handlers here only turn widget values into those calls.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import RenderCancelled, StudioError
from studio.media.images import load_start_image
from studio.service import Studio
from studio.stack.schema import Stack
from studio.ui import handlers as h
from studio.ui.history_tab import opened_tab
from studio.ui.refs import EditorRefs
from studio.workflows.batch.queue import SceneQueue, state_rows
from studio.workflows.batch.runner import BatchRunner, InProcess
from studio.workflows.presets.store import PresetStore

GPU_QUEUE = "gpu"  # = studio.ui.layout.GPU_QUEUE
TAB_ID = "batch"
HEADERS = ["#", "scene", "prompt", "LoRAs", "seed", "repeat", "status"]


def scene_choices(queue: SceneQueue) -> list[tuple[str, int]]:
    return [(f"{i + 1}. {s.name}", i) for i, s in enumerate(queue.load().scenes)]


def results(queue: SceneQueue) -> list[tuple[str, str]]:
    """``(video, caption)`` of every finished scene: its name and its stack."""
    state = queue.state()
    items = []
    for job in state.jobs if state is not None else []:
        if job.status != "done" or not job.video or not (queue.renders / job.video).is_file():
            continue
        summary = "?"
        try:
            record = (
                json.loads((queue.renders / job.sidecar).read_text(encoding="utf-8")) if job.sidecar else {}
            )
            summary = Stack.model_validate(record.get("stack") or {}).summary()
        except (OSError, ValueError):
            pass
        items.append((str(queue.renders / job.video), f"{job.scene} · seed {job.seed} · {summary}"))
    return items


def queue_view(queue: SceneQueue, selected: int | None = None):
    """Table rows, the scene dropdown (keeping ``selected`` when it still exists) and the gallery."""
    scene_file = queue.load()
    choices = [(f"{i + 1}. {s.name}", i) for i, s in enumerate(scene_file.scenes)]
    value = selected if selected is not None and 0 <= selected < len(choices) else (0 if choices else None)
    return state_rows(scene_file, queue.state()), gr.Dropdown(choices=choices, value=value), results(queue)


def build_batch_tab(studio: Studio, refs: EditorRefs) -> None:
    queue = SceneQueue.for_settings(studio.settings)
    running: dict[str, BatchRunner] = {}
    lock = threading.Lock()

    gr.Markdown(
        "A queue of scenes, each with its own start image, prompt, settings and LoRAs. Between scenes only "
        "the LoRAs that change are loaded. The queue is saved on disk (it survives a restart), and a run "
        "that stopped goes on where it left off.",
        elem_classes=["batch-help"],
    )
    table = gr.Dataframe(headers=HEADERS, value=[], interactive=False, wrap=True, elem_id="batch-queue")
    with gr.Row(equal_height=True):
        add_btn = gr.Button("Add the editor as a scene", variant="primary", elem_id="batch-add")
        scene = gr.Dropdown([], label="Scene", elem_id="batch-scene", scale=2, allow_custom_value=False)
        up_btn = gr.Button("↑", size="sm", min_width=40, elem_id="batch-up", scale=0)
        down_btn = gr.Button("↓", size="sm", min_width=40, elem_id="batch-down", scale=0)
        dup_btn = gr.Button("Duplicate", size="sm", elem_id="batch-duplicate", scale=0)
        remove_btn = gr.Button("Remove", size="sm", variant="stop", elem_id="batch-remove", scale=0)
    with gr.Accordion("Edit the chosen scene", open=False, elem_id="batch-edit"):
        with gr.Row():
            name_box = gr.Textbox(label="Name", elem_id="batch-name", max_lines=1)
            seed_box = gr.Number(
                -1, label="Seed (-1 = random, kept once drawn)", precision=0, elem_id="batch-seed"
            )
            repeat_box = gr.Number(1, label="Repeat", precision=0, minimum=1, elem_id="batch-repeat")
        prompt_box = gr.Textbox(label="Prompt", lines=2, elem_id="batch-prompt")
        with gr.Row():
            save_btn = gr.Button("Save changes", elem_id="batch-save")
            replace_btn = gr.Button(
                "Replace with the editor's image, settings and LoRAs", elem_id="batch-replace"
            )
            open_btn = gr.Button("Open in the editor", elem_id="batch-open")
    with gr.Row(equal_height=True):
        import_file = gr.File(
            label="Import a scene file (.json) or a queue (.zip)",
            file_types=[".json", ".zip"],
            type="filepath",
            elem_id="batch-import",
            height=120,
        )
        with gr.Column():
            export_btn = gr.Button("Export the queue (.zip)", elem_id="batch-export")
            download = gr.DownloadButton("Download the queue", visible=False, elem_id="batch-download")
            clear_btn = gr.Button("Clear the queue", size="sm", variant="stop", elem_id="batch-clear")
    with gr.Row(equal_height=True):
        workers = gr.Number(
            1, label="Workers (1 = this process; more = Ray, one GPU each)", precision=0, minimum=1,
            elem_id="batch-workers", scale=2,
        )  # fmt: skip
        run_btn = gr.Button("Run the batch", variant="primary", elem_id="batch-run", scale=1)
        cancel_btn = gr.Button("Cancel", variant="stop", elem_id="batch-cancel", scale=0, min_width=100)
    status = gr.HTML("", elem_id="batch-status")
    gallery = gr.Gallery(
        label="Results (each with its stack)", columns=4, height="auto", object_fit="contain",
        interactive=False, elem_id="batch-results",
    )  # fmt: skip

    private = {"api_visibility": "private"}
    view_outputs = [table, scene, gallery]

    def show(selected: int | None = None, message: str = "", kind: str = "ok"):
        try:
            rows, dropdown, items = queue_view(queue, selected)
        except StudioError as exc:
            return [], gr.Dropdown(choices=[], value=None), [], h.status(str(exc), "error")
        return rows, dropdown, items, h.status(message, kind) if message else ""

    def guarded(action, selected=None, message=""):
        try:
            action()
        except StudioError as exc:
            return show(selected, str(exc), "error")
        return show(selected, message)

    def on_open(current, evt: gr.SelectData):
        if not opened_tab(evt, TAB_ID, "Batch"):
            return [gr.skip()] * 4
        return show(current)

    refs.tabs.select(on_open, inputs=[scene], outputs=[*view_outputs, status], queue=False, **private)
    refs.app.load(lambda: show(None), outputs=[*view_outputs, status], **private)

    # ---------------------------------------------------------------- editing the queue
    def editor_request(image, state, widgets):
        if image is None:
            raise StudioError("Upload a start image in the Studio tab first.")
        return load_start_image(image), h.settings_from_widgets(*widgets), h.to_stack(state)

    def add(image, state, *widgets):
        def action():
            queue.add(*editor_request(image, state, widgets))

        count = len(queue.load().scenes)
        return guarded(action, count, "Added the editor as a scene.")

    editor_inputs = [refs.image, refs.stack_state, *refs.settings_widgets]
    add_btn.click(add, inputs=editor_inputs, outputs=[*view_outputs, status], **private)

    def replace(index, image, state, *widgets):
        if index is None:
            return show(None, "Choose a scene first.", "error")
        return guarded(
            lambda: queue.replace_from_editor(int(index), *editor_request(image, state, widgets)),
            int(index),
            "The scene now has the editor's image, settings and LoRAs.",
        )

    replace_btn.click(replace, inputs=[scene, *editor_inputs], outputs=[*view_outputs, status], **private)

    def move(index, delta):
        if index is None:
            return show(None, "Choose a scene first.", "error")
        target = max(0, min(len(queue.load().scenes) - 1, int(index) + delta))
        return guarded(lambda: queue.move(int(index), delta), target)

    up_btn.click(lambda i: move(i, -1), inputs=[scene], outputs=[*view_outputs, status], **private)
    down_btn.click(lambda i: move(i, 1), inputs=[scene], outputs=[*view_outputs, status], **private)

    def duplicate(index):
        if index is None:
            return show(None, "Choose a scene first.", "error")
        return guarded(lambda: queue.duplicate(int(index)), int(index) + 1, "Duplicated.")

    dup_btn.click(duplicate, inputs=[scene], outputs=[*view_outputs, status], **private)

    def remove(index):
        if index is None:
            return show(None, "Choose a scene first.", "error")
        return guarded(lambda: queue.remove(int(index)), max(0, int(index) - 1), "Removed the scene.")

    remove_btn.click(remove, inputs=[scene], outputs=[*view_outputs, status], **private)
    clear_btn.click(
        lambda: guarded(queue.clear, None, "The queue is empty."), outputs=[*view_outputs, status], **private
    )

    def pick(index):
        try:
            chosen = queue.load().scenes[int(index)]
        except (StudioError, TypeError, ValueError, IndexError):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return chosen.name, chosen.prompt, -1 if chosen.seed is None else chosen.seed, chosen.repeat

    scene.change(pick, inputs=[scene], outputs=[name_box, prompt_box, seed_box, repeat_box], **private)

    def save(index, name, prompt, seed, repeat):
        if index is None:
            return show(None, "Choose a scene first.", "error")
        seed_value = None if seed is None or int(seed) < 0 else int(seed)
        changes = {"name": name or "", "prompt": prompt or "", "seed": seed_value, "repeat": int(repeat or 1)}
        return guarded(lambda: queue.edit(int(index), **changes), int(index), "Saved.")

    save_btn.click(
        save,
        inputs=[scene, name_box, prompt_box, seed_box, repeat_box],
        outputs=[*view_outputs, status],
        **private,
    )

    editor = [refs.image, *refs.settings_widgets, refs.stack_state, refs.stack_version]

    def open_in_editor(index, version):
        skip = [gr.skip()] * (len(editor) + 1)
        try:
            if index is None:
                raise StudioError("Choose a scene first.")
            batch = queue.batch(
                model_defaults=studio.spec.defaults.settings_values(), presets=_presets(studio)
            )
            name = queue.load().scenes[int(index)].name
            job = next(j for j in batch.jobs if j.scene == name)
            image = load_start_image(job.image)
        except StudioError as exc:
            return [*skip, h.status(str(exc), "error")]
        message = h.status(f"Opened {name!r} in the editor; change it there, then Replace it here.", "ok")
        return [image, *refs.settings_values(job.settings), h.from_stack(job.stack), (version or 0) + 1,
                gr.Tabs(selected="studio"), message]  # fmt: skip

    open_btn.click(
        open_in_editor, inputs=[scene, refs.stack_version], outputs=[*editor, refs.tabs, status], **private
    )

    # ---------------------------------------------------------------- import / export
    def on_import(path):
        if not path:
            return [*show(None), None]
        count = len(queue.load().scenes)
        return [*guarded(lambda: queue.import_file(Path(path)), count, f"Imported {Path(path).name}."), None]

    import_file.upload(
        on_import, inputs=[import_file], outputs=[*view_outputs, status, import_file], **private
    )

    def export():
        try:
            folder = queue.folder / "exports"
            folder.mkdir(parents=True, exist_ok=True)
            from studio.media.files import unique_stem

            written = queue.export_zip(folder / f"{unique_stem(folder, 'scenes')}.zip")
        except StudioError as exc:
            return gr.DownloadButton(visible=False), h.status(str(exc), "error")
        return gr.DownloadButton(value=str(written), visible=True), h.status(
            f"Exported the queue to {written}.", "ok"
        )

    export_btn.click(export, outputs=[download, status], **private)

    # ---------------------------------------------------------------- running
    def run(count, request: gr.Request, progress=gr.Progress()):
        session = h._session(request)
        pool = None
        try:
            batch = queue.batch(
                model_defaults=studio.spec.defaults.settings_values(),
                presets=_presets(studio),
                model=studio.spec.name,
            )
            total = len(batch.jobs)
            workers_n = int(count or 1)
            if workers_n > 1:
                from studio.workflows.batch.ray_pool import RayPool

                pool = RayPool(
                    studio.settings, workers_n, model=studio.spec.name, memory=studio.manager.memory
                )
                backend: Any = pool
            else:
                backend = InProcess(studio, session=session)

            def on_event(event):
                step = event.step / event.steps if event.kind == "step" and event.steps else 0.0
                finished = event.done + event.failed
                detail = f" · step {event.step}/{event.steps}" if event.kind == "step" else ""
                progress(
                    (finished + step, total),
                    desc=f"Scene {event.position}/{total} ({event.scene}){detail} · {event.done} done, {event.failed} failed",
                )

            runner = BatchRunner(batch, queue.renders, backend, on_event=on_event)
            with lock:
                running[session] = runner
            summary = runner.run()
        except RenderCancelled:
            return show(
                None, "The batch was cancelled; finished scenes are kept. Run it again to go on.", "info"
            )
        except StudioError as exc:
            return show(None, str(exc), "error")
        finally:
            with lock:
                running.pop(session, None)
            if pool is not None:
                pool.close()
        counts = summary.counts
        failed = [f"{j.scene}: {j.error}" for j in summary.state.jobs if j.status == "failed"]
        message = f"{counts['done']} of {len(summary.state.jobs)} scenes done"
        if failed:
            return show(None, message + "; failed: " + " · ".join(failed), "warning")
        return show(None, message + f" ({len(summary.rendered)} rendered now).", "ok")

    run_btn.click(
        run,
        inputs=[workers],
        outputs=[*view_outputs, status],
        concurrency_id=GPU_QUEUE,
        concurrency_limit=1,
        **private,
    )

    def batch_cancel(request: gr.Request):  # not "cancel": that API name belongs to the public endpoint
        session = h._session(request)
        with lock:
            runner = running.get(session)
        if runner is None:
            return h.status("No batch of yours is running.", "info")
        runner.cancel()
        return h.status("Cancelling: the running scene goes back to the queue.", "info")

    cancel_btn.click(batch_cancel, outputs=[status], queue=False, **private)


def _presets(studio: Studio) -> PresetStore:
    return PresetStore.for_settings(studio.settings)
