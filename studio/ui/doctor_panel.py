"""The Doctor panel next to the stack: each LoRA's real strength, pairs that fight or double up, the cost.

It recomputes whenever the stack, a weight or the render size changes, in its own queue
(``concurrency_id="doctor"``), never the GPU's: the doctor reads LoRA files and the base
norms kept at model load, never the model, so it runs beside a render. Its flags become
badges on the stack entries: each entry has an empty slot (:func:`badge_slot`) and the
panel's script fills the slots from the latest findings (carried in the panel's HTML)
whenever they or the stack view change — so a new finding never re-draws the stack (which
would swallow a click or a slider drag). *Measure* times one forward with and without the
stack; that needs the model, so it runs on the GPU queue.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

import gradio as gr

from studio.doctor.report import DoctorReport
from studio.engine.memory import MemoryConfig
from studio.errors import StudioError
from studio.service import Studio
from studio.ui import handlers as h
from studio.ui.refs import EditorRefs

DOCTOR_QUEUE = {"concurrency_id": "doctor", "concurrency_limit": 1, "api_visibility": "private"}
FLAG_TEXT = {
    "no-effect": "no effect",
    "strong": "strong",
    "weak": "weak",
    "conflict": "conflict",
    "redundant": "redundant",
    "error": "unreadable",
}


def badge(flag: str) -> str:
    return f"<span class='doctor-badge doctor-badge-{html.escape(flag)}'>{html.escape(FLAG_TEXT.get(flag, flag))}</span>"


def badges_html(flags: list[str]) -> str:
    return "".join(badge(f) for f in flags)


def badge_slot(entry_id: str) -> str:
    """The empty badge slot of a stack entry (ids are ``[A-Za-z0-9_-]``, checked by the stack schema)."""
    return f"<div class='doctor-badges' data-entry='{html.escape(entry_id)}' id='badges-{html.escape(entry_id)}'></div>"


# Copies each entry's badges from the panel's findings into its slot: when the findings change
# (watch) and when the stack view is re-drawn (new, empty slots).
FILL_BADGES_JS = """
const fill = () => {
  const data = element.querySelector('.doctor-badge-data');
  const badges = data ? JSON.parse(data.dataset.badges || '{}') : {};
  document.querySelectorAll('.doctor-badges[data-entry]').forEach((slot) => {
    const html = badges[slot.dataset.entry] || '';
    if (slot.dataset.shown !== html) {  // (innerHTML reads back normalised: compare what was set)
      slot.dataset.shown = html;
      slot.innerHTML = html;
    }
  });
};
watch('value', fill);
new MutationObserver(fill).observe(document.body, { childList: true, subtree: true });
fill();
"""


def badge_data(report: DoctorReport | None) -> str:
    """The findings' badges per entry, as the hidden element the page's script reads."""
    flags = report.flags_by_entry() if report is not None else {}
    data = json.dumps({entry: badges_html(f) for entry, f in flags.items()})
    return f"<div class='doctor-badge-data' hidden data-badges='{html.escape(data, quote=True)}'></div>"


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.3g}%"


def _bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if abs(n) >= 1e9 else f"{n / 1e6:.3g} MB"


def report_html(report: DoctorReport) -> str:
    e = html.escape
    if not report.loras:
        return f"<div class='doctor-empty' id='doctor-empty'>No active LoRAs: nothing to check.</div>{badge_data(None)}"
    rows = []
    for f in report.loras:
        vs = f"×{f.factor:.2g}" if f.factor is not None else "—"
        hint = f"{f.suggested_weight:g}" if f.suggested_weight is not None else "—"
        note = f" <span class='doctor-error'>{e(f.error)}</span>" if f.error else ""
        rows.append(
            f"<tr class='doctor-lora' data-entry='{e(f.entry)}' data-expert='{e(f.expert)}'><td>{e(f.name)}</td>"
            f"<td>{e(f.expert)}</td><td>{f.weight:g}</td><td class='doctor-effect'>{_pct(f.relative_effect)}</td>"
            f"<td>{vs}</td><td class='doctor-suggested'>{hint}</td><td>{badges_html(f.flags)}{note}</td></tr>"
        )
    head = (
        "<tr><th>LoRA</th><th>expert</th><th>weight</th><th title='‖ΔW‖/‖W‖ over the modules it changes'>"
        "effect</th><th>vs library</th><th>suggested</th><th></th></tr>"
    )
    parts = [f"<table class='doctor-loras' id='doctor-loras'>{head}{''.join(rows)}</table>"]
    medians = " · ".join(f"{e(r.expert)}: {_pct(r.median)} of {r.count}" for r in report.library)
    parts.append(f"<div class='doctor-median'>Library median at weight 1 — {medians}</div>")
    if report.pairs:
        prow = []
        for p in report.pairs:
            cos = f"{p.cosine:+.2f}" if p.cosine is not None else "—"
            hint = f" lower both ×{p.scale_both:g}" if p.scale_both is not None else ""
            prow.append(
                f"<tr class='doctor-pair'><td>{e(p.a_name)} + {e(p.b_name)}</td><td>{e(p.expert)}</td>"
                f"<td>{p.shared_modules}</td><td class='doctor-cosine'>{cos}</td>"
                f"<td>{badges_html(p.flags)}{e(hint)}</td></tr>"
            )
        phead = "<tr><th>pair</th><th>expert</th><th>shared modules</th><th>cosine</th><th></th></tr>"
        parts.append(f"<table class='doctor-pairs' id='doctor-pairs'>{phead}{''.join(prow)}</table>")
    cost = report.cost
    if cost is not None:
        flops = sum(cost.unfused_flops_per_step.values()) / 1e9
        parts.append(
            f"<div class='doctor-cost' id='doctor-cost'>Cost: VRAM +{_bytes(cost.vram_bytes)}, RAM "
            f"+{_bytes(cost.ram_bytes)} (LoRA weights {_bytes(cost.weight_bytes)}) · unfused +{flops:.3g} GFLOP "
            f"per step · fuse {cost.fuse_flops / 1e9:.3g} GFLOP once · fusing pays off: "
            f"<b>{'yes' if cost.fuse_pays_off else 'no'}</b></div>"
        )
    problems = report.problems()
    if problems:
        items = "".join(f"<li>{e(p)}</li>" for p in problems)
        parts.insert(0, f"<ul class='doctor-problems' id='doctor-problems'>{items}</ul>")
    else:
        parts.insert(0, "<div class='doctor-ok' id='doctor-ok'>No problems found.</div>")
    return f"<div class='doctor-panel'>{''.join(parts)}</div>{badge_data(report)}"


def measured_html(report: DoctorReport) -> str:
    measured = report.cost.measured if report.cost is not None else None
    if measured is None or not measured.experts:
        return h.status("No active LoRA to measure.", "info")
    lines = [
        f"<li>{html.escape(t.expert)}: {t.without_s * 1000:.1f} ms → {t.with_s * 1000:.1f} ms per forward "
        f"(<b class='doctor-overhead'>{t.overhead:+.1%}</b>), output changed by {t.output_change:.3g}</li>"
        for t in measured.experts
    ]
    return f"<ul class='doctor-measured' id='doctor-measured'>{''.join(lines)}</ul>"


@dataclass
class DoctorWidgets:
    view: gr.HTML
    measure: gr.Button
    measured: gr.HTML


def doctor_widgets() -> DoctorWidgets:
    """The panel's components, placed where it is called (next to the stack)."""
    with gr.Accordion("Doctor", open=True, elem_id="doctor-panel"):
        view = gr.HTML("", elem_id="doctor-view", js_on_load=FILL_BADGES_JS)
        with gr.Row():
            measure = gr.Button("Measure", size="sm", elem_id="doctor-measure")
        measured = gr.HTML("", elem_id="doctor-measured-view")
    return DoctorWidgets(view=view, measure=measure, measured=measured)


def wire_doctor_panel(
    studio: Studio, refs: EditorRefs, widgets: DoctorWidgets, mode, precision, *, gpu_queue: str
) -> None:
    inputs = [refs.stack_state, refs.fuse, mode, precision, *refs.settings_widgets]

    def _request(state, fuse, mode_v, precision_v, values):
        settings = h.settings_from_widgets(*values)
        return settings, h.to_stack(state), MemoryConfig(mode=mode_v, precision=precision_v), bool(fuse)

    def update(state, fuse, mode_v, precision_v, *values):
        try:
            settings, stack, memory, fuse_v = _request(state, fuse, mode_v, precision_v, values)
            report = studio.doctor(settings, stack, memory, fuse=fuse_v)
        except StudioError as exc:
            return h.status(f"Doctor: {exc}", "warning") + badge_data(None)
        return report_html(report)

    triggers = [refs.stack_state.change, refs.stack_version.change, refs.fuse.change, mode.change,
                precision.change, refs.app.load, *(w.change for w in refs.settings_widgets[2:])]  # fmt: skip
    gr.on(triggers, update, inputs=inputs, outputs=[widgets.view],
          trigger_mode="always_last", show_progress="hidden", **DOCTOR_QUEUE)  # fmt: skip

    def measure(state, fuse, mode_v, precision_v, *values):
        try:
            settings, stack, memory, fuse_v = _request(state, fuse, mode_v, precision_v, values)
            report = studio.doctor(settings, stack, memory, fuse=fuse_v, measure=True)
        except StudioError as exc:
            return h.status(f"Measure: {exc}", "error")
        return measured_html(report)

    widgets.measure.click(
        measure, inputs=inputs, outputs=[widgets.measured], concurrency_id=gpu_queue, concurrency_limit=1,
        api_visibility="private",
    )  # fmt: skip
