"""The Train tab: a dataset folder (or an upload), its check report, the training settings with a VRAM
estimate, Start / Stop / Resume, a live loss plot per expert, sample renders, and "Compare checkpoints".

Start returns at once: the run trains in a background thread of the service (a render waits at
most one training step for the model), and a one-second timer reads its snapshot.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from studio.errors import StudioError
from studio.service import Studio
from studio.training.options import MODULE_GROUPS, TrainOptions, model_defaults
from studio.training.trainer import RESUMABLE
from studio.ui import handlers as h
from studio.ui import train_form as form
from studio.ui.compare_tab import CompareHandle
from studio.ui.refs import EditorRefs
from studio.vram.nvml import card_bytes

CARDS = [("detected GPU", "detected"), ("16 GB", "16"), ("24 GB", "24"), ("48 GB", "48"), ("80 GB", "80")]
PRIVATE = {"api_visibility": "private"}
SERIES_COLORS = {
    "high-noise": "#ea580c", "low-noise": "#2563eb",
    "high-noise validation": "#fdba74", "low-noise validation": "#93c5fd",
}  # fmt: skip


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The plot's table with fixed column types (an empty one too): numbers on the axes, names as colours."""
    return pd.DataFrame(
        {
            "step": pd.Series([r["step"] for r in rows], dtype="int64"),
            "loss": pd.Series([r["loss"] for r in rows], dtype="float64"),
            "series": pd.Series(
                [r["series"] for r in rows], dtype=object
            ),  # pandas' string dtype reads as numbers
        }
    )


def build_train_tab(studio: Studio, refs: EditorRefs, compare: CompareHandle) -> None:
    spec = studio.spec
    size = model_defaults(spec)
    defaults = TrainOptions(name="my_lora", model=spec.name, **size)
    boundary = spec.boundary_ratio if spec.boundary_ratio is not None else 0.9
    gr.Markdown(
        "Train a LoRA **pair** (high-noise and low-noise expert) on this model from a folder of clips or "
        "images with a same-name `.txt` caption each (or `captions.jsonl`). Renders keep working while it "
        "trains: they wait at most one training step. The pair lands in the first LoRA folder.",
        elem_classes=["train-help"],
    )
    with gr.Row(equal_height=False):
        folder = gr.Textbox(
            label="Dataset folder", placeholder="datasets/my_clips", elem_id="train-dataset", scale=4
        )
        upload = gr.File(
            label="…or upload clips and captions", file_count="multiple", elem_id="train-upload", scale=3
        )
        check_btn = gr.Button("Check dataset", elem_id="train-check", scale=1)
    report = gr.Textbox(
        label="Dataset check", lines=8, max_lines=20, interactive=False, elem_id="train-report"
    )
    with gr.Accordion("Settings", open=True):
        with gr.Row():
            name = gr.Textbox(defaults.name, label="Name", elem_id="train-name", scale=2)
            experts = gr.Radio([("both (a pair)", "both"), ("high-noise", "high"), ("low-noise", "low")],
                               value="both", label="Experts", elem_id="train-experts", scale=3)  # fmt: skip
            steps = gr.Number(defaults.steps, label="Steps (per expert)", precision=0, elem_id="train-steps")
            rank = gr.Number(defaults.rank, label="Rank", precision=0, elem_id="train-rank")
            alpha = gr.Number(0, label="Alpha (0: the rank)", elem_id="train-alpha")
        with gr.Row():
            lr = gr.Number(defaults.lr, label="Learning rate", elem_id="train-lr")
            batch = gr.Number(defaults.batch, label="Batch", precision=0, elem_id="train-batch")
            grad_accum = gr.Number(defaults.grad_accum, label="Gradient accumulation", precision=0)
            seed = gr.Number(defaults.seed, label="Seed", precision=0, elem_id="train-seed")
        with gr.Row():
            frames = gr.Number(defaults.frames, label="Frames (4k+1)", precision=0, elem_id="train-frames")
            width = gr.Number(defaults.width, label="Width", precision=0, elem_id="train-width")
            height = gr.Number(defaults.height, label="Height", precision=0, elem_id="train-height")
            boundary_w = gr.Number(boundary, label="Expert boundary", elem_id="train-boundary")
            shift = gr.Number(spec.defaults.shift, label="Flow shift", elem_id="train-shift")
        with gr.Row():
            targets = gr.CheckboxGroup(list(MODULE_GROUPS), value=list(MODULE_GROUPS), label="Target modules")
            hflip = gr.Checkbox(False, label="Mirror clips (hflip)", elem_id="train-hflip")
            crop = gr.Checkbox(False, label="Random crops", elem_id="train-crop")
            ckpt = gr.Checkbox(True, label="Gradient checkpointing", elem_id="train-ckpt")
        with gr.Row():
            save_every = gr.Number(
                0, label="Save every N steps (0: at the end)", precision=0, elem_id="train-save-every"
            )
            sample_every = gr.Number(
                0, label="Sample every N steps (0: none)", precision=0, elem_id="train-sample-every"
            )
            sample_steps = gr.Number(
                None, label="Sample denoising steps", precision=0, elem_id="train-sample-steps"
            )
            holdout = gr.Number(0, label="Validation clips held out", precision=0, elem_id="train-holdout")
            trigger = gr.Textbox("", label="Trigger word", elem_id="train-trigger")
        with gr.Row():
            sample_prompt = gr.Textbox(
                "", label="Sample prompt (blank: the first caption)", elem_id="train-sample-prompt"
            )
            sample_image = gr.Image(label="Sample start image (blank: the first clip's first frame)", type="filepath",
                                    height=140, elem_id="train-sample-image")  # fmt: skip
    with gr.Row():
        card = gr.Dropdown(CARDS, value="detected", label="Card", scale=1, elem_id="train-card")
        vram = gr.HTML("", elem_id="train-vram")
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop_btn = gr.Button("Stop (saves a checkpoint)", variant="stop", elem_id="train-stop")
        runs = gr.Dropdown([], label="Resume a run", elem_id="train-runs", scale=2)
        resume_btn = gr.Button("Resume", elem_id="train-resume")
    status = gr.HTML(h.status("No training run yet."), elem_id="train-status")
    plot = gr.LinePlot(
        _frame([]), x="step", y="loss", color="series", color_map=SERIES_COLORS, colors_in_legend=list(SERIES_COLORS),
        label="Loss per expert", elem_id="train-loss", height=260,
    )  # fmt: skip
    with gr.Row(equal_height=False):
        sample = gr.Video(label="Latest sample", interactive=False, elem_id="train-sample", height=260)
        with gr.Column():
            samples = gr.CheckboxGroup([], label="Checkpoints with samples", elem_id="train-checkpoints")
            compare_btn = gr.Button("Compare checkpoints", elem_id="train-compare")
    timer = gr.Timer(1.0)
    seen = gr.State(None)

    widgets = [name, experts, steps, rank, alpha, lr, batch, grad_accum, seed, frames, width, height, boundary_w,
               shift, targets, hflip, crop, ckpt, save_every, sample_every, sample_steps, holdout, trigger,
               sample_prompt, sample_image]  # fmt: skip

    def options_of(values) -> TrainOptions:
        return form.options_from_form(studio.spec.name, dict(zip(form.FIELDS, values, strict=True)))

    # ------------------------------------------------------------------ dataset
    def check(text, *values):
        try:
            path = form.dataset_folder(text, studio.settings)
            return studio.dataset_report(path, options_of(values)).text(), ""
        except StudioError as exc:
            return "", h.status(str(exc), "error")

    def on_upload(files, *values):
        try:
            path = form.save_uploads(files, studio.settings)
        except StudioError as exc:
            return gr.skip(), gr.skip(), h.status(str(exc), "error")
        report_text, message = check(str(path), *values)
        return str(path), report_text, message

    check_btn.click(check, inputs=[folder, *widgets], outputs=[report, status], **PRIVATE)
    upload.upload(on_upload, inputs=[upload, *widgets], outputs=[folder, report, status], **PRIVATE)

    # ------------------------------------------------------------------ estimate
    def estimate(card_choice, *values):
        try:
            est = studio.training_estimate(options_of(values), studio.manager.memory)
        except StudioError as exc:
            return h.status(str(exc), "warning")
        total, text = card_bytes(card_choice)
        return form.estimate_html(est, total, text)

    for widget in (experts, rank, batch, frames, width, height, targets, ckpt, card):
        widget.change(estimate, inputs=[card, *widgets], outputs=[vram], queue=False, **PRIVATE)

    # ------------------------------------------------------------------ start / stop / resume
    def start(text, *values):
        try:
            path = form.dataset_folder(text, studio.settings)
            studio.start_training(options_of(values), path)
        except StudioError as exc:
            return h.status(str(exc), "error")
        return h.status("Starting: checking the dataset and encoding the clips…")

    def stop():
        if not studio.stop_training():
            return h.status("No training run is running.", "warning")
        return h.status("Stopping at the next step; a checkpoint is written.")

    def resume(run_dir, *values):
        if not run_dir:
            return h.status("Choose a stopped run to resume.", "error")
        given = dict(zip(form.FIELDS, values, strict=True))
        overrides = {k: int(given[k]) for k in RESUMABLE & set(given) if given[k] not in (None, "")}
        try:
            studio.start_training(resume=Path(run_dir), overrides=overrides)
        except StudioError as exc:
            return h.status(str(exc), "error")
        return h.status("Resuming…")

    def list_runs(current):
        choices = form.run_choices(studio.training_runs())
        values = [v for _, v in choices]
        return gr.Dropdown(choices=choices, value=current if current in values else None)

    start_btn.click(start, inputs=[folder, *widgets], outputs=[status], **PRIVATE)
    stop_btn.click(stop, outputs=[status], queue=False, **PRIVATE)
    resume_btn.click(resume, inputs=[runs, *widgets], outputs=[status], **PRIVATE)
    runs.focus(list_runs, inputs=[runs], outputs=[runs], queue=False, **PRIVATE)

    # ------------------------------------------------------------------ live progress
    def poll(last, chosen):
        snap = studio.training_snapshot()
        key = (
            None if snap is None else (snap.status, snap.step, len(snap.samples), len(snap.val), snap.message)
        )
        if snap is None or key == last:
            return (gr.skip(),) * 4 + (last,)
        message, kind = form.status_text(snap)
        choices = form.sample_choices(snap)
        names = [v for _, v in choices]
        latest = snap.samples[-1][1] if snap.samples else None
        return (
            h.status(message, kind),
            _frame(form.loss_table(snap)),
            gr.Video(value=latest) if latest else gr.skip(),
            gr.CheckboxGroup(choices=choices, value=_keep_chosen(chosen, names)),
            key,
        )

    timer.tick(
        poll, inputs=[seen, samples], outputs=[status, plot, sample, samples, seen], queue=False, **PRIVATE
    )

    def to_compare(chosen):
        names = list(chosen or [])
        if len(names) < 2:
            return (
                (gr.skip(),)
                + (gr.skip(),) * len(compare.outputs)
                + (h.status("Tick two to four checkpoints' samples to compare.", "warning"),)
            )
        return (gr.Tabs(selected="compare"), *compare.show(names), gr.skip())

    compare_btn.click(to_compare, inputs=[samples], outputs=[refs.tabs, *compare.outputs, status], **PRIVATE)


def _keep_chosen(chosen: list[str] | None, names: list[str]) -> list[str]:
    """The ticked samples after new ones appear: the user's ticks while they name two or more samples,
    else the newest two (a single early tick must not hide the later checkpoints)."""
    kept = [n for n in chosen or [] if n in names]
    return kept if len(kept) >= 2 else names[-2:]
