"""The cost of a stack: the estimator's figures, the FLOPs of the adapters the manager loads, a timed forward."""

from __future__ import annotations

from pathlib import Path

import pytest
from doctor_helpers import TINY, lora_tensors, scaled_up, single, stack_of

from studio.engine import lora_ops
from studio.engine.memory import MemoryConfig
from studio.models.shapes import shapes_for
from studio.stack.schema import Stack
from studio.vram.lora_weights import lora_bytes

BIG = TINY.model_copy(update={"width": 64, "height": 64, "frames": 9, "steps": 4, "guidance": 3.0})
ONE_FRAME = TINY.model_copy(update={"width": 32, "height": 32, "frames": 1, "steps": 2, "guidance": 1.0})


@pytest.fixture()
def three(write):
    a = write("a.safetensors", lora_tensors(seed=1, rank=4))
    b = write("b.safetensors", lora_tensors(seed=2, rank=8, modules=["attn1.to_q", "ffn.net.2"]))
    c = write("c_high.safetensors", lora_tensors(seed=3, rank=2, layout="lightx2v"))
    return stack_of(single(a, 1.0, 0.5), single(b, 0.0, 1.0), single(c, 1.0, 0.0))


def test_memory_figures_are_the_estimators(studio, three):
    memory = MemoryConfig()
    cost = studio.doctor(BIG, three, memory).cost
    full = studio.estimate(BIG, three, memory)
    bare = studio.estimate(BIG, Stack(), memory)
    assert cost.vram_bytes == full.peak_vram_bytes - bare.peak_vram_bytes > 0
    assert cost.ram_bytes == full.peak_ram_bytes - bare.peak_ram_bytes
    assert cost.peak_vram_bytes == full.peak_vram_bytes
    by_file = {c.file: c for c in cost.loras}
    loads = studio.lora_loads_by_path(three)
    assert set(by_file) == {str(p) for p in loads}
    for entry in three.entries:
        without = studio.estimate(BIG, three.removed(entry.id), memory)
        path = Path((entry.high or entry.low).path).resolve()
        item = by_file[str(path)]
        assert item.vram_bytes == full.peak_vram_bytes - without.peak_vram_bytes
        assert item.ram_bytes == full.peak_ram_bytes - without.peak_ram_bytes
        assert item.weight_bytes == lora_bytes(shapes_for(studio.spec), loads[path], element_size=4) * len(
            item.experts
        )


def test_flops_are_counted_from_the_adapters_the_manager_loads(studio, manager, three):
    cost = studio.doctor(BIG, three).cost
    tokens, forwards = lora_ops.render_forwards(
        frames=BIG.frames,
        height=BIG.height,
        width=BIG.width,
        steps=BIG.steps,
        guidance=BIG.guidance,
        experts=2,
    )
    assert (cost.tokens, cost.forwards, cost.cfg) == (tokens, forwards, True)
    manager.apply_stack(three)
    try:
        loaded = {
            expert: lora_ops.lora_flops(
                lora_ops.active_lora_modules(getattr(manager.pipe, component)), tokens
            )
            for expert, component in manager.components().items()
        }
        for expert, (_fuse_cost, forward_cost) in loaded.items():
            assert cost.unfused_flops_per_step[expert] == 2 * forward_cost  # both CFG passes
        assert cost.fuse_flops == sum(f for f, _ in loaded.values())
        assert cost.unfused_flops_render == forwards * sum(f for _, f in loaded.values())
        for settings in (BIG, ONE_FRAME):
            assert studio.doctor(settings, three).cost.fuse_pays_off == manager.fuse_pays_off(settings)
    finally:
        manager.apply_stack(Stack())
    assert (
        studio.doctor(BIG, three).cost.fuse_pays_off
        and not studio.doctor(ONE_FRAME, three).cost.fuse_pays_off
    )


def test_a_fused_render_has_no_unfused_flops_and_fp8_cannot_fuse(studio, three):
    fused = studio.doctor(BIG, three, fuse=True).cost
    assert fused.fused and fused.unfused_flops_render == 0 and fused.fuse_flops > 0
    fp8 = studio.doctor(BIG, three, MemoryConfig(precision="fp8")).cost
    assert not fp8.fuse_pays_off and any("fp8" in n for n in fp8.notes)


def test_measure_times_a_real_forward_with_and_without_the_stack(studio, manager, write):
    path = write("style.safetensors", lora_tensors(seed=1, rank=4))
    zero = write("zero_b.safetensors", scaled_up(lora_tensors(seed=1, rank=4), 0.0))
    stack = stack_of(single(path, 1.0, 0.0))
    reads = manager.lora_file_reads
    measured = studio.doctor(TINY, stack, measure=True).cost.measured
    (timing,) = measured.experts  # only the high-noise expert has the LoRA
    assert timing.expert == "high" and timing.forwards == 3
    assert timing.tokens == 2 * 2 * 2  # latent 2 × 4 × 4, patch 1 × 2 × 2
    assert timing.with_s > 0 and timing.without_s > 0
    assert timing.overhead == pytest.approx(timing.with_s / timing.without_s - 1)
    assert timing.output_change > 1e-3  # the LoRA was on in one and off in the other
    weights = manager.active_weights()  # set back after the stack-off forwards
    assert list(weights) == ["transformer"] and list(weights["transformer"].values()) == [1.0]
    studio.doctor(TINY, stack, measure=True)
    assert manager.lora_file_reads == reads + 1  # measuring again reads no file
    nothing = studio.doctor(TINY, stack_of(single(zero, 1.0, 0.0)), measure=True).cost.measured
    assert nothing.experts[0].output_change == 0.0  # a zero-B LoRA changes the forward by exactly nothing
    manager.apply_stack(Stack())
