"""The History tab: every render in a gallery; clicking one (or dropping one of our MP4s) restores it.

Restoring puts the render's start image, prompt, settings (with the seed it used), fuse
choice and stack back into the editor, shows its video as the result and switches to the
Studio tab. LoRAs that are not
on this machine stay in the stack and are named in the status line. The gallery is
refreshed when the tab is opened, after each render and with its Refresh button.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import StudioError
from studio.service import Studio
from studio.ui import handlers as h
from studio.ui.refs import EditorRefs
from studio.workflows.history import History, HistoryEntry, Restored

GALLERY_LIMIT = 200  # newest renders shown
MAX_DROP_BYTES = 50 * 1024 * 1024  # = launch's MAX_UPLOAD; a sidecar is checked against 2 MB by History
DROP_TYPES = [".mp4", ".json"]
TAB_ID = "history"


def opened_tab(evt: gr.SelectData | None, tab_id: str, label: str) -> bool:
    """Whether a ``gr.Tabs`` select event opened the tab ``tab_id`` (labelled ``label``)."""
    if evt is None:
        return False
    value = evt.value
    if isinstance(value, dict):
        value = value.get("id", value.get("label"))
    return value in (tab_id, label) or getattr(evt, "index", None) == tab_id


def gallery_items(entries: list[HistoryEntry]) -> tuple[list[tuple[str, str]], list[str]]:
    """Gallery ``(picture, caption)`` pairs and, in the same order, the renders' video file names."""
    items, names = [], []
    for entry in entries:
        picture = entry.thumbnail or entry.start_image
        if picture is None:
            continue
        items.append((str(picture), entry.caption()))
        names.append(entry.video.name)
    return items, names


def count_html(shown: int, outputs_dir: Path) -> str:
    if not shown:
        return h.status(f"No renders yet in {outputs_dir}. Render something in the Studio tab.", "info")
    noun = "render" if shown == 1 else "renders"
    more = f" (the newest {GALLERY_LIMIT})" if shown >= GALLERY_LIMIT else ""
    return h.status(f"{shown} {noun}{more}, newest first. Click one to restore it into the editor.", "info")


def restore_message(studio: Studio, restored: Restored) -> tuple[str, str]:
    """The status sentence for a restored render and its kind ("ok", or "warning" when it needs attention)."""
    message = restored.message()
    kind = "ok"
    if restored.missing_loras:
        message += " They stay in the stack: put the files in a LoRA folder, or remove those entries, before rendering."
        kind = "warning"
    if restored.model and restored.model != studio.spec.name:
        message += f" This render used the model {restored.model}; the studio runs {studio.spec.label} now."
        kind = "warning"
    if restored.image is None:
        kind = "warning"
    return message, kind


def resolve_render(outputs_dir: Path, name: str) -> Path:
    """The video ``name`` in the outputs folder (a plain file name only)."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise StudioError("That render is no longer in the outputs folder; refresh the history.")
    path = outputs_dir / name
    if not path.is_file():
        raise StudioError(f"The render {name} is no longer in the outputs folder; refresh the history.")
    return path


def check_drop(path: str | None) -> Path:
    """A dropped file, checked before it is read: a studio MP4 or its .json, within the size limit."""
    if not path:
        raise StudioError("Drop one of the studio's MP4s or its .json settings file.")
    file = Path(path)
    if file.suffix.lower() not in DROP_TYPES:
        raise StudioError(
            f"{file.name} is neither an MP4 nor a .json settings file; drop one of the studio's MP4s or its .json."
        )
    try:
        size = os.path.getsize(file)
    except OSError:
        raise StudioError(f"The dropped file {file.name} could not be read; drop it again.") from None
    if size > MAX_DROP_BYTES:
        raise StudioError(
            f"{file.name} is {size / 1e6:.0f} MB; files over {MAX_DROP_BYTES // (1024 * 1024)} MB are not read."
        )
    return file


def build_history_tab(studio: Studio, refs: EditorRefs) -> None:
    history = History.for_settings(studio.settings)
    outputs_dir = Path(studio.settings.outputs_dir)

    with gr.Row(equal_height=False):
        count = gr.HTML("", elem_id="history-count", elem_classes=["history-count"])
        refresh_btn = gr.Button("Refresh", size="sm", scale=0, min_width=90, elem_id="history-refresh")
    status = gr.HTML("", elem_id="history-status")
    with gr.Row(equal_height=False):
        with gr.Column(scale=4):
            gallery = gr.Gallery(
                label="Renders (newest first)",
                columns=4,
                height="auto",
                allow_preview=False,
                object_fit="contain",
                interactive=False,
                elem_id="history-gallery",
                elem_classes=["history-gallery"],
            )
        with gr.Column(scale=1, min_width=240):
            drop = gr.File(
                label="Restore from a file: drop a studio MP4 or its .json",
                file_types=DROP_TYPES,
                file_count="single",
                type="filepath",
                elem_id="history-drop",
                elem_classes=["history-drop"],
                height=160,
            )
            gr.Markdown(
                "The settings are read from the render's `.json` sidecar, or from the copy embedded in "
                "the MP4. LoRAs that are not on this machine stay in the stack and are listed.",
                elem_classes=["history-help"],
            )
    names = gr.State([])  # the video file names, in gallery order

    def refresh():
        try:
            items, shown = gallery_items(history.entries(GALLERY_LIMIT))
        except StudioError as exc:
            return gr.skip(), gr.skip(), h.error(studio, exc)
        return items, shown, count_html(len(shown), outputs_dir)

    def refresh_on_open(evt: gr.SelectData):
        if not opened_tab(evt, TAB_ID, "History"):
            return gr.skip(), gr.skip(), gr.skip()
        return refresh()

    private = {"api_visibility": "private", "queue": False}
    refresh_outputs = [gallery, names, count]
    refresh_btn.click(refresh, outputs=refresh_outputs, **private)
    refs.tabs.select(refresh_on_open, outputs=refresh_outputs, **private)
    refs.video.change(refresh, outputs=refresh_outputs, **private)

    editor = [refs.image, *refs.settings_widgets, refs.fuse, refs.stack_state, refs.stack_version, refs.video]
    restore_outputs = [*editor, refs.tabs, refs.render_status, status]

    def restore(path: Path, version: int) -> list[Any]:
        """Editor values for the render at ``path``; its video goes to the Result player when it is one."""
        try:
            restored = history.restore(path)
        except StudioError as exc:
            return [*[gr.skip()] * (len(editor) + 2), h.error(studio, exc)]
        message, kind = restore_message(studio, restored)
        line = h.status(message, kind)
        return [
            restored.image,
            *refs.settings_values(restored.settings),
            bool(restored.record.get("fused", False)),
            h.from_stack(restored.stack),
            (version or 0) + 1,
            str(path) if path.suffix.lower() != ".json" else gr.skip(),
            gr.Tabs(selected="studio"),
            line,
            line,
        ]

    def on_select(current_names: list[str], version: int, evt: gr.SelectData):
        try:
            index = int(evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index)
            path = resolve_render(outputs_dir, current_names[index])
        except (StudioError, IndexError, TypeError, ValueError) as exc:
            message = (
                studio.public_message(str(exc))
                if isinstance(exc, StudioError)
                else "That render is no longer listed."
            )
            return [*[gr.skip()] * (len(editor) + 2), h.status(message, "error")]
        return restore(path, version)

    def on_drop(file: str | None, version: int):
        try:
            path = check_drop(file)
        except StudioError as exc:
            return [*[gr.skip()] * (len(editor) + 2), h.error(studio, exc), None]
        return [*restore(path, version), None]

    gallery.select(
        on_select, inputs=[names, refs.stack_version], outputs=restore_outputs, api_visibility="private"
    )
    drop.upload(
        on_drop, inputs=[drop, refs.stack_version], outputs=[*restore_outputs, drop], api_visibility="private"
    )
