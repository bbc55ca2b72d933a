"""The memory panel: a live VRAM estimate as a stacked bar against the card, NVML readings, Suggest.

The estimate is recomputed (a pure function, about a millisecond) on every change of the
stack, weights, resolution, frames, mode or precision; nothing renders. NVML is polled
once a second. Without an NVIDIA GPU the user picks a card size to plan for.
"""

from __future__ import annotations

import html

import gradio as gr

from studio.engine.memory import MODES
from studio.errors import StudioError
from studio.service import Studio
from studio.ui import handlers as h
from studio.ui.refs import EditorRefs
from studio.vram.nvml import GIB, card_bytes, gpu_status
from studio.vram.suggest import suggest
from studio.vram.types import Estimate

CARD_CHOICES = [
    ("detected GPU", "detected"),
    ("16 GB", "16"),
    ("24 GB", "24"),
    ("48 GB", "48"),
    ("80 GB", "80"),
]
# breakdown key prefix -> (label, colour)
GROUPS = [
    ("text_encoder", "Text encoder", "#8e7cc3"),
    ("expert_high", "High-noise expert", "#3d85c6"),
    ("expert_low", "Low-noise expert", "#6fa8dc"),
    ("expert", "Expert", "#3d85c6"),
    ("lora", "LoRAs", "#e69138"),
    ("activations", "Activations", "#93c47d"),
    ("latents", "Latents", "#b6d7a8"),
    ("vae", "VAE", "#c27ba0"),
    ("image_encoder", "Image encoder", "#a64d79"),
    ("cuda_context", "CUDA context", "#999999"),
]
VERDICT_CLASS = {"fits": "ok", "tight": "warning", "won't fit": "error"}

COMPILED_INFO = (
    "The first render compiles the transformer blocks (about a minute on a GPU, longer on a CPU). After "
    "that, LoRA changes, weights, schedules, seeds and prompts never recompile; a new size or frame count "
    "recompiles once. The LoRAs run in the compiled blocks instead of being fused."
)


def _group(key: str) -> tuple[str, str]:
    for prefix, label, colour in GROUPS:
        if key.startswith(prefix):
            return label, colour
    return "Other", "#cccccc"


def gpu_line() -> str:
    status = gpu_status()
    if not status.gpus:
        return f"<div class='vram-gpu'>{html.escape(status.message)}</div>"
    parts = []
    for gpu in status.gpus:
        mine = f", this studio {gpu.process_bytes / GIB:.1f} GB" if gpu.process_bytes is not None else ""
        parts.append(
            f"{html.escape(gpu.name)}: {gpu.used_bytes / GIB:.1f} of {gpu.total_bytes / GIB:.1f} GB used"
            f" ({gpu.free_bytes / GIB:.1f} free{mine})"
        )
    return "<div class='vram-gpu'>" + "<br>".join(parts) + "</div>"


def bar_html(est: Estimate, card: int | None, card_text: str) -> str:
    """A stacked bar of what is on the GPU at the peak, scaled to the card (or to the peak)."""
    groups: dict[str, list] = {}
    for key, value in est.breakdown.items():
        label, colour = _group(key)
        entry = groups.setdefault(label, [0, colour])
        entry[0] += value
    scale = max(card or 0, est.peak_vram_bytes) or 1
    segments = "".join(
        f"<div class='vram-seg' title='{html.escape(label)}: {value / 1e9:.2f} GB' "
        f"style='width:{100 * value / scale:.2f}%;background:{colour}'></div>"
        for label, (value, colour) in groups.items()
        if value > 0
    )
    legend = "".join(
        f"<span class='vram-key'><i style='background:{colour}'></i>{html.escape(label)} {value / 1e9:.2f} GB</span>"
        for label, (value, colour) in groups.items()
        if value > 0
    )
    marker = f"<div class='vram-card' style='left:{100 * card / scale:.2f}%'></div>" if card else ""
    if card:
        verdict = est.fits(card)
        verdict_html = f"<span class='vram-verdict studio-status-{VERDICT_CLASS[verdict]}' id='vram-verdict'>{verdict}</span>"
    else:
        verdict_html = "<span class='vram-verdict' id='vram-verdict'>no card to compare with</span>"
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in est.notes[:3])
    backups = est.ram_breakdown.get("fuse_backups", 0)
    ram_text = f"host RAM {est.peak_ram_bytes / 1e9:.1f} GB" + (
        f" (<span id='vram-fuse-backups'>{backups / 1e9:.1f} GB</span> fuse backups)" if backups else ""
    )
    return (
        f"<div class='vram-panel'><div class='vram-head'>Peak VRAM <b id='vram-peak'>{est.peak_vram_bytes / 1e9:.2f} GB"
        f"</b> (during {html.escape(est.peak_phase.replace('_', ' '))}) · {ram_text} · "
        f"{verdict_html}</div><div class='vram-bar'>{segments}{marker}</div>"
        f"<div class='vram-legend'>{legend}</div><div class='vram-card-text'>{html.escape(card_text)}</div>"
        f"{f'<ul class=vram-notes>{notes}</ul>' if notes else ''}</div>"
    )


def build_vram_panel(studio: Studio, refs: EditorRefs, model_choice: gr.Dropdown):
    """The panel's widgets; returns the memory widgets (mode, precision, tiling, compiled, card) the render reads."""
    with gr.Accordion("Memory", open=True, elem_id="vram-panel"):
        with gr.Row():
            mode = gr.Dropdown(list(MODES), value="auto", label="Memory mode", elem_id="memory-mode")
            precision = gr.Dropdown(["bf16", "fp8"], value="bf16", label="Weights", elem_id="precision")
            card = gr.Dropdown(CARD_CHOICES, value="detected", label="Card", elem_id="card")
        with gr.Row():
            tiling = gr.Checkbox(False, label="VAE tiling", elem_id="vae-tiling")
            compiled = gr.Checkbox(
                False,
                label="Compiled (torch.compile)",
                info=COMPILED_INFO,
                elem_id="compiled-mode",
            )
            suggest_btn = gr.Button("Suggest", size="sm", elem_id="suggest")
        vram_view = gr.HTML("", elem_id="vram-view")
        gpu_view = gr.HTML(gpu_line(), elem_id="gpu-view")
        suggest_status = gr.HTML("", elem_id="suggest-status")

    inputs = [
        model_choice,
        refs.stack_state,
        refs.fuse,
        mode,
        precision,
        tiling,
        compiled,
        card,
        *refs.settings_widgets,
    ]

    def update(model_name, state, fuse, mode_v, precision_v, tiling_v, compiled_v, card_v, *values):
        try:
            settings = h.settings_from_widgets(*values)
            memory = h.MemoryChoice(mode_v, precision_v, tiling_v, None, False, compiled_v).config()
            est = studio.estimate(settings, h.to_stack(state), memory, fuse=bool(fuse), model_name=model_name)
        except StudioError as exc:
            return h.status(f"No estimate: {exc}", "warning")
        card_size, card_text = card_bytes(card_v)
        return bar_html(est, card_size, card_text)

    triggers = [refs.stack_state.change, refs.fuse.change, mode.change, precision.change, tiling.change, compiled.change,
                card.change, model_choice.change, refs.app.load,
                *(w.change for w in refs.settings_widgets[2:])]  # fmt: skip
    gr.on(triggers, update, inputs=inputs, outputs=[vram_view], trigger_mode="always_last",
          concurrency_limit=None, api_visibility="private")  # fmt: skip

    timer = gr.Timer(1.0)
    timer.tick(
        gpu_line, outputs=[gpu_view], api_visibility="private", concurrency_limit=None, show_progress="hidden"
    )

    def do_suggest(model_name, state, fuse, card_v, width, height, frames, guidance):
        card_size, _ = card_bytes(card_v)
        if card_size is None:
            return (
                *[gr.skip()] * 7,
                h.status("Choose a card size first: no NVIDIA GPU was detected.", "error"),
            )
        try:
            spec = studio.model_spec(model_name)
            pick = suggest(
                spec,
                card_size,
                width=int(width),
                height=int(height),
                frames=int(frames),
                loras=studio.lora_loads(h.to_stack(state), fuse=bool(fuse)),
                cfg=float(guidance) > 1.0,
            )
        except StudioError as exc:
            return (*[gr.skip()] * 7, h.error(studio, exc))
        kind = "ok" if pick.verdict != "won't fit" else "error"
        return (pick.mode, pick.precision, pick.vae_tiling, pick.width, pick.height, pick.frames, gr.skip(),
                h.status(pick.reason, kind))  # fmt: skip

    suggest_btn.click(
        do_suggest,
        inputs=[
            model_choice,
            refs.stack_state,
            refs.fuse,
            card,
            refs.width,
            refs.height,
            refs.frames,
            refs.guidance,
        ],
        outputs=[mode, precision, tiling, refs.width, refs.height, refs.frames, card, suggest_status],
        api_visibility="private",
    )
    return mode, precision, tiling, compiled, card
