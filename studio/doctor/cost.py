"""What this stack costs: memory from the VRAM estimator, FLOPs per step unfused, the fuse, and a measurement.

The guide's "Performance Impact" table, computed for the stack at hand:

* **VRAM / RAM added**, per LoRA file and in total, from the studio's estimator
  (:mod:`studio.vram.estimate`): the peak with the whole stack minus the peak without that
  file (without any LoRA for the total); and the LoRA weights it keeps in memory
  (:func:`~studio.vram.lora_weights.lora_bytes`, every expert it is loaded into).
* **FLOPs** of the modules as loaded (rank, in, out of each adapter): extra FLOPs of one
  denoising step while unfused (both CFG passes), over the whole render, and the one-off
  cost of fusing and unfusing — counted by :func:`studio.engine.lora_ops.lora_flops`, and
  *fuse pays off* decided by :func:`studio.engine.lora_ops.fusing_pays` with the token and
  forward counts of :func:`studio.engine.lora_ops.render_forwards`: the same code the
  pipeline manager runs to decide whether to fuse a render.
* **Measured**: one forward of each expert with the stack on and off, timed on the loaded
  model (:mod:`studio.doctor.measure`); only when asked for (it needs the model's lock).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from pydantic import BaseModel, ConfigDict

from studio.engine import lora_ops
from studio.models.shapes import shapes_for
from studio.vram.lora_weights import lora_bytes
from studio.vram.types import Estimate, LoraLoad

Modules = Sequence[tuple[int, int, int]]  # (rank, in_features, out_features) of each adapter module


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraCost(_Model):
    file: str
    name: str
    experts: list[str]
    weight_bytes: int  # its LoRA weights, in every expert it is loaded into
    vram_bytes: int  # the estimated peak with the stack minus the peak without this file
    ram_bytes: int
    unfused_flops_per_step: dict[str, int]  # expert -> extra FLOPs of one denoising step (CFG included)
    unfused_flops_render: int
    fuse_flops: int  # fuse + unfuse once, every expert


class ExpertTiming(_Model):
    expert: str
    tokens: int
    without_s: float  # one forward with the stack switched off (scales only)
    with_s: float
    overhead: float  # with / without − 1
    output_change: float  # ‖y_with − y_without‖ / ‖y_without‖ of that forward
    forwards: int  # timed forwards per side


class Measured(_Model):
    experts: list[ExpertTiming]
    overhead: float  # all measured forwards together


class StackCost(_Model):
    tokens: int
    steps: int
    cfg: bool
    forwards: int  # per expert, as the fuse decision counts them
    fused: bool  # the render fuses (asked for): no unfused overhead, no activation overhead
    loras: list[LoraCost]
    weight_bytes: int
    vram_bytes: int
    ram_bytes: int
    peak_vram_bytes: int
    peak_ram_bytes: int
    unfused_flops_per_step: dict[str, int]
    unfused_flops_render: int
    fuse_flops: int
    fuse_pays_off: bool
    notes: list[str] = []
    measured: Measured | None = None


def stack_cost(
    *,
    model,
    frames: int,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    experts: int,
    loads: Sequence[tuple[str, LoraLoad]],
    modules: Mapping[str, Mapping[str, Modules]],
    estimate_with: Callable[[list[LoraLoad]], Estimate],
    fuse: bool = False,
    fp8: bool = False,
) -> StackCost:
    """The cost of a stack of LoRA files.

    ``loads``: (file, what the estimator counts for it) per active file; ``modules``: file →
    expert → its adapter modules as loaded there; ``estimate_with(loras)``: the VRAM estimate
    of this render with those LoRAs (the same call the Memory panel makes).
    """
    tokens, forwards = lora_ops.render_forwards(
        frames=frames, height=height, width=width, steps=steps, guidance=guidance, experts=experts
    )
    cfg = guidance > 1.0
    per_step = 2 if cfg else 1
    shapes = shapes_for(model)
    element = 4 if shapes.weights_dtype == "float32" else 2
    all_loads = [replace(load, fused=fuse) for _, load in loads]
    full = estimate_with(all_loads)
    bare = estimate_with([])
    costs: list[LoraCost] = []
    fuse_by_expert: dict[str, list[int]] = {}
    for index, (file, load) in enumerate(loads):
        others = estimate_with([x for i, x in enumerate(all_loads) if i != index])
        flops_step: dict[str, int] = {}
        render = fuse_total = 0
        for expert, mods in (modules.get(file) or {}).items():
            fuse_cost, forward_cost = lora_ops.lora_flops(mods, tokens)
            flops_step[expert] = forward_cost * per_step
            render += forward_cost * forwards
            fuse_total += fuse_cost
            sums = fuse_by_expert.setdefault(expert, [0, 0])
            sums[0] += fuse_cost
            sums[1] += forward_cost
        costs.append(
            LoraCost(
                file=file,
                name=load.name,
                experts=sorted(flops_step),
                weight_bytes=lora_bytes(shapes, load, element_size=element) * max(1, len(flops_step)),
                vram_bytes=full.peak_vram_bytes - others.peak_vram_bytes,
                ram_bytes=full.peak_ram_bytes - others.peak_ram_bytes,
                unfused_flops_per_step={} if fuse else flops_step,
                unfused_flops_render=0 if fuse else render,
                fuse_flops=fuse_total,
            )
        )
    pays = bool(fuse_by_expert) and all(
        lora_ops.fusing_pays(fuse_cost, forward_cost, forwards)
        for fuse_cost, forward_cost in fuse_by_expert.values()
    )
    notes: list[str] = []
    if fp8:
        pays = False
        notes.append("fp8 weights cannot take a fused LoRA: the stack runs unfused.")
    elif fuse:
        notes.append("The render fuses the stack: its steps run at the base model's speed after the fuse.")
    elif pays:
        notes.append("Fusing pays off for this render (the studio fuses it automatically).")
    elif fuse_by_expert:
        notes.append("Fusing would cost more than it saves for this render (the studio keeps it unfused).")
    step_total: dict[str, int] = {}
    for c in costs:
        for expert, value in c.unfused_flops_per_step.items():
            step_total[expert] = step_total.get(expert, 0) + value
    return StackCost(
        tokens=tokens,
        steps=steps,
        cfg=cfg,
        forwards=forwards,
        fused=fuse,
        loras=costs,
        weight_bytes=sum(c.weight_bytes for c in costs),
        vram_bytes=full.peak_vram_bytes - bare.peak_vram_bytes,
        ram_bytes=full.peak_ram_bytes - bare.peak_ram_bytes,
        peak_vram_bytes=full.peak_vram_bytes,
        peak_ram_bytes=full.peak_ram_bytes,
        unfused_flops_per_step=step_total,
        unfused_flops_render=sum(c.unfused_flops_render for c in costs),
        fuse_flops=sum(c.fuse_flops for c in costs),
        fuse_pays_off=pays,
        notes=notes,
    )
