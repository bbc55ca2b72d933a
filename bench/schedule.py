"""10. Schedules: the per-step cost of a LoRA strength schedule on the block-true model.

- ``schedule_step_ratio``: applying one step's new weights for a 4-LoRA scheduled stack (what the
  manager's step callback does between two steps: :class:`studio.engine.step_weights.StepApplier`
  setting the scales on the expert that runs the next step) ÷ one forward of one expert. Target ≤ 0.01.
- ``partial_fuse_overhead``: a forward with 2 constant LoRAs fused and 2 scheduled ones unfused (the
  manager's own choice for that stack with Fuse on) vs the base forward, as a fraction. Target ≤ 0.08.

Both go through the real :class:`~studio.engine.manager.PipelineManager` (rank-64 LoRAs on both experts).
The forwards run round-robin like benchmark 4 (median of per-round ratios to that round's base).

Run alone: ``python -m bench.schedule``.
"""

from __future__ import annotations

import os

from bench import common
from bench.context import STACK_SIZE, Context, standalone
from bench.per_step import first_blocks
from bench.subjects import BLOCK_TRUE, token_count
from bench.weight_change import loaded_stack

TITLE = "10. Schedules (4 rank-64 LoRAs on both experts of the block-true model)"
STEPS = 40
# four schedules whose weight changes at (nearly) every step: two ramps, a per-step list, a ramp over a range
SCHEDULES = ("1>0", "0.2>1.2 cosine", ",".join(["1", "0.5"] * (STEPS // 2)), "1>0.5@0-50%")
LAYERS = int(os.environ.get("BENCH_PER_STEP_LAYERS", "1"))
ROUNDS = int(os.environ.get("BENCH_PER_STEP_ROUNDS", "5"))
APPLIES = 200


def _stack(paths, schedules, *, enabled: bool = True):
    """One entry per file on both experts: its schedule, or weight 1 where the schedule is None."""
    from studio.stack.schema import Stack, StackEntry

    entries = []
    for i, (path, schedule) in enumerate(zip(paths, schedules, strict=True)):
        entries.append(
            StackEntry.single(
                path, 1.0, 1.0, name=f"lora{i}", id=f"e{i}", enabled=enabled,
                schedule_high=schedule, schedule_low=schedule,
            )
        )  # fmt: skip
    return Stack(entries=entries)


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from studio.engine.plan import StepContext
    from studio.engine.step_weights import StepApplier, StepWeights

    mgr, paths = loaded_stack(ctx)
    forward_s = ctx.base_forward_s()
    reads = mgr.lora_file_reads
    # the whole run on the high-noise expert: every step's new weights land on the timed model
    experts = ("high",) * STEPS
    context = StepContext(experts)

    # --- one step's new weights for 4 scheduled LoRAs
    schedules = list(SCHEDULES)
    plan = mgr.apply_stack(_stack(paths, schedules), context=context)
    steps = StepWeights(experts, mgr.components(), plan.step_weights)
    assert len(steps.scheduled().get("transformer", ())) == STACK_SIZE
    applier = StepApplier(mgr.pipe, steps, mgr._weights)
    turn = iter(range(10**9))
    common.status(f"timing {APPLIES} step weight changes")
    apply_s = common.samples(lambda: applier.before_step(1 + next(turn) % (STEPS - 1)), APPLIES)
    assert applier.changes >= APPLIES // 2 and mgr.lora_file_reads == reads  # scales only, no file read

    # --- 2 fused constants + 2 scheduled unfused vs base
    model = mgr.pipe.transformer
    mixed = _stack(paths, [None, None, schedules[0], schedules[1]])
    off = _stack(paths, [None] * STACK_SIZE, enabled=False)  # adapters stay loaded, LoRA off

    def partial():
        mgr.apply_stack(mixed, fuse=True, context=context)

    def base():
        mgr.apply_stack(off, context=context)

    forward = lambda: ctx.forward(model)  # noqa: E731
    variants = {"base (no LoRA)": (base, forward, None), "2 fused + 2 scheduled": (partial, forward, None)}
    layers = min(LAYERS, len(model.blocks))
    rounds = max(ctx.repeats, ROUNDS)
    common.status(f"timing the partly fused forward × {rounds} rounds ({layers} block(s))")
    with first_blocks(model, layers):
        partial()
        fused = {c: sorted(w) for c, w in mgr._fused.items()}
        assert all(len(names) == 2 for names in fused.values()), fused
        ctx.forward(model)  # warm-up
        base()
        ctx.forward(model)
        wall, cpu = common.interleaved_cpu(variants, rounds)
    mgr.apply_stack(ctx.stack(paths, [1.0] * STACK_SIZE))  # leave the stack as the next benchmarks expect
    pair = common.Pair(wall["2 fused + 2 scheduled"], wall["base (no LoRA)"])
    pair_cpu = common.Pair(cpu["2 fused + 2 scheduled"], cpu["base (no LoRA)"])
    step_ratio = common.median(apply_s) / forward_s
    tokens = token_count(BLOCK_TRUE.config)
    rows = [
        ["apply one step's weights (4 scheduled)", common.ms(common.median(apply_s)), f"{step_ratio:.5f} of a forward"],
        ["forward, base", common.ms(pair.den), ""],
        ["forward, 2 fused + 2 scheduled", common.ms(pair.num), f"{(pair.ratio - 1) * 100:+.1f}% "
         f"(CPU {(pair_cpu.ratio - 1) * 100:+.1f}%)"],
    ]  # fmt: skip
    text = common.table(
        TITLE
        + f"; {tokens} tokens, {layers} of {len(model.blocks)} blocks for the forwards, median of {rounds} "
        + f"rounds; one whole-model forward {common.ms(forward_s)}; targets: step ≤ 0.01, partial fuse ≤ +8%",
        ["what", "time", "vs"],
        rows,
    )
    keys = {
        "schedule_step_ratio": step_ratio,
        "partial_fuse_overhead": pair.ratio - 1.0,
        "partial_fuse_overhead_cpu": pair_cpu.ratio - 1.0,
        "schedule_file_reads": float(mgr.lora_file_reads - reads),
    }
    return text, keys


if __name__ == "__main__":
    standalone(run)
