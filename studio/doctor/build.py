"""Putting a doctor report together: the findings of :mod:`studio.doctor.examine` and the stack's cost.

:func:`model_view` takes what the doctor needs from the pipeline manager without its
lock (the transformer config and base norms kept at load time, the transformer's
structure); :func:`doctor_report` runs the examination and the cost count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from studio.doctor.cache import model_key
from studio.doctor.cost import stack_cost
from studio.doctor.effect import expert_stats
from studio.doctor.examine import Doctor, ModelView, StackLora
from studio.doctor.report import DoctorReport, thresholds
from studio.engine.manager import PipelineManager
from studio.loras.sources import FileIdentity
from studio.stack.schema import RenderSettings
from studio.vram.types import Estimate, LoraLoad


def model_view(manager: PipelineManager) -> ModelView:
    """The loaded model as the doctor sees it (loads the default model when none is loaded)."""
    config = manager.transformer_config()
    pipe = manager.pipe
    spec = manager.spec
    assert pipe is not None and spec is not None
    norms = {
        expert: manager.base_norms.get(component, {}) for expert, component in manager.components().items()
    }
    device = "cuda" if manager.device == "cuda" else None
    return ModelView(
        key=model_key(config), label=spec.label, transformer=pipe.transformer, norms=norms, device=device
    )


def doctor_report(
    doctor: Doctor,
    model: ModelView,
    loras: Sequence[StackLora],
    reference: Mapping[str, Sequence[FileIdentity]],
    *,
    read_reference: bool = True,
    loads: Mapping[Path, LoraLoad],
    estimate_with: Callable[[list[LoraLoad]], Estimate],
    model_spec,
    settings: RenderSettings,
    experts: int,
    fuse: bool = False,
    fp8: bool = False,
) -> DoctorReport:
    """Findings per LoRA and pair, and the cost of the stack (``loads``: the estimator's view of each file)."""
    exam = doctor.examine(model, loras, reference, read_reference=read_reference)
    modules: dict[str, dict[str, list[tuple[int, int, int]]]] = {}
    for x in loras:
        stats = expert_stats(exam.stats[x.identity], x.expert) if x.identity in exam.stats else None
        if stats is None or stats.error:
            continue
        norms = model.norms.get(x.expert, {})
        per_expert = modules.setdefault(x.file, {})
        per_expert[x.expert] = [
            (m.rank, m.in_features, m.out_features) for name, m in stats.modules.items() if name in norms
        ]
    cost = stack_cost(
        model=model_spec,
        frames=settings.frames,
        height=settings.height,
        width=settings.width,
        steps=settings.steps,
        guidance=settings.guidance,
        experts=experts,
        loads=[(str(path), load) for path, load in loads.items() if str(path) in modules],
        modules=modules,
        estimate_with=estimate_with,
        fuse=fuse,
        fp8=fp8,
    )
    notes = []
    for identity in dict.fromkeys(x.identity for x in loras if x.identity is not None):
        stats = exam.stats.get(identity)
        if stats is not None:
            notes.extend(f"{identity.path.name}: {n}" for n in stats.notes)
    return DoctorReport(
        model=model.label,
        loras=exam.loras,
        pairs=exam.pairs,
        cost=cost,
        library=exam.library,
        thresholds=thresholds(),
        notes=notes,
    )
