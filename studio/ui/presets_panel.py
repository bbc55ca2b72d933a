"""The presets panel (save, load, rename, duplicate, delete, import, export), open slots and the recipe banner.

Each handler is one call into :class:`studio.workflows.presets.PresetStore` or :mod:`studio.loras.recipes`;
the session's open slots live in ``gr.State`` as plain dicts.
"""

from __future__ import annotations

import dataclasses
import html
import tempfile
from pathlib import Path

import gradio as gr

from studio.errors import StudioError
from studio.loras.recipes import check_settings, recipe_for
from studio.service import Studio
from studio.stack.schema import RenderSettings
from studio.ui import handlers as h
from studio.ui.refs import EditorRefs
from studio.workflows.presets.errors import PresetExists
from studio.workflows.presets.schema import Slot
from studio.workflows.presets.store import PresetStore

PRIVATE = {"api_visibility": "private"}


def _slots(state: list[dict] | None) -> list[Slot]:
    return [
        Slot(**{**s, "range_high": _tuple(s["range_high"]), "range_low": _tuple(s["range_low"])})
        for s in state or []
    ]


def _tuple(value):
    return tuple(value) if value is not None else None


def _slot_dicts(slots: list[Slot]) -> list[dict]:
    return [dataclasses.asdict(s) for s in slots]


def slots_html(slots: list[Slot]) -> str:
    if not slots:
        return ""
    rows = []
    for slot in slots:
        weights = f"high {slot.weight_high:g} / low {slot.weight_low:g}"
        hint = f" — {html.escape(slot.hint)}" if slot.hint else ""
        rows.append(
            f"<li><b>{html.escape(slot.name)}</b>: {html.escape(slot.message)} ({weights}){hint}</li>"
        )
    return f"<div class='preset-slots'><b>Open slots</b><ul>{''.join(rows)}</ul></div>"


def recipe_html(studio: Studio, state: dict, settings: RenderSettings | None) -> tuple[str, bool]:
    """The recipe banner and whether to show its button."""
    stack = h.to_stack(state)
    recipe = recipe_for(stack)
    if recipe is None:
        warnings = check_settings(stack, settings) if settings is not None else []
        if not warnings:
            return "", False
        return "".join(h.status(w, "warning") for w in warnings), False
    experts = ("high", "low") if studio.spec.experts == 2 else ("high",)
    warnings = check_settings(stack, settings, experts=experts) if settings is not None else []
    text = f"A speed LoRA is in the stack: its recipe is {recipe.label()}."
    parts = [h.status(text, "info"), *(h.status(w, "warning") for w in warnings)]
    return "".join(parts), bool(warnings)


def build_presets_panel(studio: Studio, refs: EditorRefs) -> None:
    store = PresetStore.for_settings(studio.settings)
    slots_state = gr.State([])

    with gr.Column(elem_id="recipe-area"):
        recipe_view = gr.HTML("", elem_id="recipe")
        recipe_btn = gr.Button("Apply the speed recipe", visible=False, elem_id="apply-recipe", size="sm")
        slots_view = gr.HTML("", elem_id="preset-slots")
        missing_btn = gr.Button("Download the missing Hub files", visible=False, elem_id="download-missing")
        missing_status = gr.HTML("", elem_id="missing-status")
        with gr.Row():
            slot_choice = gr.Dropdown([], label="Open slot", elem_id="slot-choice", scale=3)
            fill_btn = gr.Button("Fill it with the library selection", elem_id="fill-slot", scale=2)

    with gr.Accordion("Presets", open=True, elem_id="presets-panel"):
        with gr.Row():
            preset_choice = gr.Dropdown([], label="Preset", elem_id="preset-choice", scale=3)
            load_btn = gr.Button("Load", elem_id="load-preset", variant="primary", scale=1)
            duplicate_btn = gr.Button("Duplicate", elem_id="duplicate-preset", scale=1)
            delete_btn = gr.Button("Delete", elem_id="delete-preset", variant="stop", scale=1)
        with gr.Row():
            name = gr.Textbox(label="Name", elem_id="preset-name", scale=2)
            description = gr.Textbox(label="Description", elem_id="preset-description", scale=3)
        with gr.Row():
            overwrite = gr.Checkbox(
                False, label="Replace a preset with this name", elem_id="preset-overwrite"
            )
            save_btn = gr.Button("Save stack as preset", elem_id="save-preset")
            rename_btn = gr.Button("Rename selected", elem_id="rename-preset")
        with gr.Row():
            import_btn = gr.UploadButton("Import…", file_types=[".json", ".lset"], elem_id="import-preset")
            export_btn = gr.DownloadButton("Export selected", elem_id="export-preset", interactive=False)
        presets_status = gr.HTML("", elem_id="presets-status")

    def choices(selected: str | None = None):
        infos = store.list()
        names = [(i.label, i.name) for i in infos if i.error is None]
        value = selected if selected in {n for _, n in names} else None
        return gr.update(choices=names, value=value)

    refs.app.load(lambda: choices(), outputs=[preset_choice], **PRIVATE)

    settings_widgets = refs.settings_widgets
    n = len(settings_widgets)

    def load(selected, state, version, *values):
        unchanged = [gr.skip()] * n
        if not selected:
            return (
                state,
                version,
                gr.skip(),
                gr.skip(),
                h.status("Choose a preset first.", "error"),
                *unchanged,
            )
        try:
            preset = store.load(selected)
            current = h.settings_from_widgets(*values)
            applied = preset.apply_settings(current)
            preset_stack = preset.to_stack()
        except StudioError as exc:
            return (state, version, gr.skip(), gr.skip(), h.error(studio, exc), *unchanged)
        message = f"Loaded preset {preset.name}."
        if preset.model and preset.model != studio.spec.name:
            message += f" It was made for {preset.model}; the loaded model is {studio.spec.label}."
        for line in preset_stack.messages():
            message += f" {line}"
        slot_names = [(s.name, s.entry_id) for s in preset_stack.slots]
        return (
            h.from_stack(preset_stack.stack),
            version + 1,
            _slot_dicts(preset_stack.slots),
            gr.update(choices=slot_names, value=slot_names[0][1] if slot_names else None),
            h.status(message, "ok"),
            *refs.settings_values(applied),
        )

    load_btn.click(
        load,
        inputs=[preset_choice, refs.stack_state, refs.stack_version, *settings_widgets],
        outputs=[
            refs.stack_state,
            refs.stack_version,
            slots_state,
            slot_choice,
            presets_status,
            *settings_widgets,
        ],
        **PRIVATE,
    )

    def save(preset_name, desc, replace, state, slots, *values):
        try:
            settings = h.settings_from_widgets(*values)
            path = store.save_stack(
                (preset_name or "").strip(),
                h.to_stack(state),
                settings=settings,
                model=studio.spec.name,
                description=desc or "",
                slots=_slots(slots),
                overwrite=bool(replace),
            )
        except PresetExists as exc:
            return gr.skip(), h.status(
                f"{exc} Tick “Replace a preset with this name” to overwrite it.", "warning"
            )
        except StudioError as exc:
            return gr.skip(), h.error(studio, exc)
        saved = store.load(path)
        return choices(saved.name), h.status(f"Saved preset {saved.name} ({path.name}).", "ok")

    save_btn.click(
        save,
        inputs=[name, description, overwrite, refs.stack_state, slots_state, *settings_widgets],
        outputs=[preset_choice, presets_status],
        **PRIVATE,
    )

    def run(action, selected, *args):
        if not selected:
            return gr.skip(), h.status("Choose a preset first.", "error")
        try:
            message, keep = action(selected, *args)
        except PresetExists as exc:
            return gr.skip(), h.status(
                f"{exc} Tick “Replace a preset with this name” to overwrite it.", "warning"
            )
        except StudioError as exc:
            return gr.skip(), h.error(studio, exc)
        return choices(keep), h.status(message, "ok")

    def rename(selected, new_name, replace):
        path = store.rename(selected, (new_name or "").strip(), overwrite=bool(replace))
        new = store.load(path).name
        return f"Renamed {selected} to {new}.", new

    def duplicate(selected):
        path = store.duplicate(selected)
        new = store.load(path).name
        return f"Duplicated {selected} as {new}.", new

    def delete(selected):
        store.delete(selected)
        return f"Deleted preset {selected}.", None

    rename_btn.click(
        lambda s, nm, r: run(rename, s, nm, r),
        inputs=[preset_choice, name, overwrite],
        outputs=[preset_choice, presets_status],
        **PRIVATE,
    )
    duplicate_btn.click(
        lambda s: run(duplicate, s),
        inputs=[preset_choice],
        outputs=[preset_choice, presets_status],
        **PRIVATE,
    )
    delete_btn.click(
        lambda s: run(delete, s), inputs=[preset_choice], outputs=[preset_choice, presets_status], **PRIVATE
    )

    def import_preset(file, replace, steps):
        if file is None:
            return gr.skip(), h.status("Choose a .json preset or a Wan2GP .lset file to import.", "error")
        try:
            store.hub = studio.hub_context()  # a guide list's Hub repos are picked for the loaded model
            run_steps = studio.wan2gp_run(int(steps) if steps else None)  # Wan2GP lists: the editor's steps
            result = store.import_file(getattr(file, "name", file), overwrite=bool(replace), run=run_steps)
        except PresetExists as exc:
            return gr.skip(), h.status(
                f"{exc} Tick “Replace a preset with this name” to overwrite it.", "warning"
            )
        except StudioError as exc:
            return gr.skip(), h.error(studio, exc)
        notes = " ".join(result.notes)
        return choices(result.preset.name), h.status(
            f"Imported preset {result.preset.name}. {notes}".strip(), "ok"
        )

    import_btn.upload(
        import_preset,
        inputs=[import_btn, overwrite, refs.steps],
        outputs=[preset_choice, presets_status],
        **PRIVATE,
    )

    def export(selected):
        if not selected:  # nothing chosen (the page just opened, or a preset was deleted): nothing to say
            return gr.update(value=None, interactive=False), gr.skip()
        try:
            path = store.export(selected, Path(tempfile.mkdtemp(prefix="studio-export-")))
        except StudioError as exc:
            return gr.update(value=None, interactive=False), h.error(studio, exc)
        return gr.update(value=str(path), interactive=True), h.status(
            f"Exported {selected} as {path.name}.", "ok"
        )

    preset_choice.change(export, inputs=[preset_choice], outputs=[export_btn, presets_status], **PRIVATE)

    # ----------------------------------------------------------------- slots
    def show_slots(slots):
        return slots_html(_slots(slots))

    slots_state.change(show_slots, inputs=[slots_state], outputs=[slots_view], **PRIVATE)

    def fill(slot_id, item_id, state, version, slots):
        open_slots = _slots(slots)
        slot = next((s for s in open_slots if s.entry_id == slot_id), None)
        if slot is None:
            return state, version, slots, gr.skip(), h.status("Choose an open slot first.", "error")
        try:
            item_entry, _ = studio.entry_for(item_id) if item_id else (None, None)
        except StudioError as exc:
            return state, version, slots, gr.skip(), h.error(studio, exc)
        if item_entry is None:
            return state, version, slots, gr.skip(), h.status("Choose a LoRA in the library first.", "error")
        entry = (
            slot.fill(item_entry.high, item_entry.low, name=item_entry.name)
            if item_entry.is_pair
            else slot.fill(item_entry.high or item_entry.low, name=item_entry.name)
        )
        stack = h.to_stack(state)
        entries = list(stack.entries)
        entries.insert(min(slot.position, len(entries)), entry)
        remaining = [s for s in open_slots if s.entry_id != slot_id]
        names = [(s.name, s.entry_id) for s in remaining]
        return (
            h.from_stack(type(stack)(entries=entries)),
            version + 1,
            _slot_dicts(remaining),
            gr.update(choices=names, value=names[0][1] if names else None),
            h.status(f"{slot.name} filled with {entry.name}.", "ok"),
        )

    fill_btn.click(
        fill,
        inputs=[slot_choice, refs.library, refs.stack_state, refs.stack_version, slots_state],
        outputs=[refs.stack_state, refs.stack_version, slots_state, slot_choice, refs.stack_status],
        **PRIVATE,
    )

    # ------------------------------------------------- Hub files the stack names
    def show_missing(state):
        try:
            missing = studio.hub.missing(h.to_stack(state))
        except StudioError:
            missing = []
        if not missing:
            return gr.update(visible=False), ""
        names = ", ".join(f"{m.repo}/{m.file}" for m in missing)
        text = f"{len(missing)} Hub file(s) of this stack are not downloaded yet: {names}."
        return gr.update(visible=True, value=f"Download the missing Hub files ({len(missing)})"), h.status(
            text, "warning"
        )

    refs.stack_state.change(
        show_missing,
        inputs=[refs.stack_state],
        outputs=[missing_btn, missing_status],
        concurrency_limit=None,
        **PRIVATE,
    )

    def download_missing(state, progress=gr.Progress()):
        try:
            missing = studio.hub.missing(h.to_stack(state))
            studio.hub.download_sources(
                missing, lambda done, total: progress((done, max(total, 1)), desc="Downloading", unit="bytes")
            )
        except StudioError as exc:
            return gr.skip(), h.error(studio, exc)
        return gr.update(visible=False), h.status(
            f"Downloaded {len(missing)} file(s); the stack is ready.", "ok"
        )

    missing_btn.click(
        download_missing,
        inputs=[refs.stack_state],
        outputs=[missing_btn, missing_status],
        concurrency_id="hub",
        concurrency_limit=4,
        **PRIVATE,
    )

    # ---------------------------------------------------------------- recipe
    def update_recipe(state, *values):
        try:
            settings = h.settings_from_widgets(*values)
        except StudioError:
            settings = None
        text, show = recipe_html(studio, state, settings)
        return text, gr.update(visible=show)

    for trigger in (refs.stack_state.change, *(w.change for w in settings_widgets[2:])):
        trigger(
            update_recipe,
            inputs=[refs.stack_state, *settings_widgets],
            outputs=[recipe_view, recipe_btn],
            trigger_mode="always_last",
            concurrency_limit=None,
            **PRIVATE,
        )

    def apply_recipe(state, *values):
        recipe = recipe_for(h.to_stack(state))
        if recipe is None:
            return [gr.skip()] * n
        try:
            settings = h.settings_from_widgets(*values)
        except StudioError:
            return [gr.skip()] * n
        return refs.settings_values(recipe.apply(settings))

    recipe_btn.click(
        apply_recipe, inputs=[refs.stack_state, *settings_widgets], outputs=settings_widgets, **PRIVATE
    )
