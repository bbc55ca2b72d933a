"""1. Weight change: new weights for a 4-LoRA stack on both experts, vs one forward of one expert.

Target: ≤ 0.01 of a forward, and no file read (per-step weight schedules stay affordable).

Run alone: ``python -m bench.weight_change``.
"""

from __future__ import annotations

from bench import common
from bench.context import STACK_SIZE, Context, standalone
from bench.subjects import BLOCK_TRUE, token_count

TITLE = "1. Weight change (4 LoRAs, rank 64, both experts of the block-true model)"
WEIGHTS = ([0.5, 0.8, 1.2, -0.3], [0.7, 1.0, 0.9, 0.4])
CHANGES = 20


def loaded_stack(ctx: Context):
    """The block-true manager with the 4-LoRA stack loaded in both experts (loads it once)."""
    mgr = ctx.manager(BLOCK_TRUE)
    ctx.base_forward_s()  # before any LoRA is loaded
    paths = ctx.stack_files(BLOCK_TRUE)
    stack = ctx.stack(paths, [1.0] * STACK_SIZE)
    if mgr.lora_file_reads == 0:
        common.status("loading the 4-LoRA stack into both experts (manager as is)")
        seconds = common.timed(lambda: mgr.apply_stack(stack))
        ctx.keys.setdefault("_stack_load_s", seconds)
    return mgr, paths


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from studio.engine import lora_ops

    mgr, paths = loaded_stack(ctx)
    forward_s = ctx.base_forward_s()
    experts = [mgr.pipe.transformer, mgr.pipe.transformer_2]
    stacks = [ctx.stack(paths, w) for w in WEIGHTS]
    reads = mgr.lora_file_reads
    names = list(mgr.active_weights()["transformer"])
    assert names == list(mgr.active_weights()["transformer_2"])
    common.status("timing weight changes")

    turn = iter(range(10**9))

    def manager_change():
        mgr.apply_stack(stacks[next(turn) % 2])

    def diffusers_change():
        weights = WEIGHTS[next(turn) % 2]
        for model in experts:
            model.enable_lora()
            model.set_adapters(names, weights)

    def ops_change():
        weights = dict(zip(names, WEIGHTS[next(turn) % 2], strict=True))
        for model in experts:
            lora_ops.set_adapter_weights(model, weights)

    times = common.interleaved(
        {
            "manager": (None, manager_change, None),
            "diffusers": (None, diffusers_change, None),
            "lora_ops": (None, ops_change, None),
        },
        CHANGES,
    )
    file_reads = mgr.lora_file_reads - reads
    mgr.apply_stack(ctx.stack(paths, [1.0] * STACK_SIZE))  # leave the stack as the next benchmarks expect

    rows = [
        [
            "studio PipelineManager.apply_stack (as is)",
            common.ms(common.median(times["manager"])),
            common.median(times["manager"]) / forward_s,
            file_reads,
        ],
        [
            "diffusers enable_lora + set_adapters ×2",
            common.ms(common.median(times["diffusers"])),
            common.median(times["diffusers"]) / forward_s,
            0,
        ],
        [
            "lora_ops.set_adapter_weights ×2",
            common.ms(common.median(times["lora_ops"])),
            common.median(times["lora_ops"]) / forward_s,
            0,
        ],
        [
            f"one forward, one expert ({token_count(BLOCK_TRUE.config)} tokens)",
            common.ms(forward_s),
            1.0,
            "-",
        ],
    ]
    text = common.table(
        TITLE + f"; median of {CHANGES}; target ≤ 0.01 and no file read",
        ["path", "ms", "× forward", "file reads"],
        rows,
    )
    keys = {
        "weight_change_ratio": common.median(times["lora_ops"]) / forward_s,
        "manager_weight_change_ratio": common.median(times["manager"]) / forward_s,
        "weight_change_file_reads": float(file_reads),
    }
    return text, keys


if __name__ == "__main__":
    standalone(run)
