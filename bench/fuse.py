"""3. Fusing: fuse a 4-LoRA stack into both experts, vs one forward of one expert.

Target: ≤ 1 forward. Measured at the benchmark token count (≥ 1,024): a fuse costs
2·ΣR·in·out per module per expert against 2·tokens·in·out for a forward, so the ratio
only means something at a realistic token count.

Run alone: ``python -m bench.fuse``.
"""

from __future__ import annotations

import os

from bench import common
from bench.context import STACK_SIZE, Context, standalone
from bench.subjects import BLOCK_TRUE, token_count
from bench.weight_change import loaded_stack

TITLE = "3. Fusing a 4-LoRA stack (rank 64) into both experts of the block-true model"
# diffusers' fuse_lora is slow on CPU; one round is enough to show where it stands.
DIFFUSERS_ROUNDS = int(os.environ.get("BENCH_DIFFUSERS_FUSE_ROUNDS", "1"))


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from studio.engine import lora_ops

    mgr, paths = loaded_stack(ctx)
    forward_s = ctx.base_forward_s()
    experts = [mgr.pipe.transformer, mgr.pipe.transformer_2]
    stack = ctx.stack(paths, [1.0] * STACK_SIZE)
    mgr.apply_stack(stack)
    common.status("timing fuse/unfuse (lora_ops)")

    def ops_fuse():
        for model in experts:
            lora_ops.fuse(model)

    def ops_unfuse():
        for model in experts:
            lora_ops.unfuse(model)

    fuse_s, unfuse_s = [], []
    for _ in range(ctx.repeats):
        fuse_s.append(common.timed(ops_fuse))
        unfuse_s.append(common.timed(ops_unfuse))

    common.status("timing fuse/unfuse (manager as is: diffusers fuse_lora/unfuse_lora)")
    mgr_fuse_s, mgr_unfuse_s = [], []
    for _ in range(DIFFUSERS_ROUNDS):
        mgr_fuse_s.append(common.timed(lambda: mgr.apply_stack(stack, fuse=True)))
        mgr_unfuse_s.append(common.timed(lambda: mgr.apply_stack(stack, fuse=False)))

    med = common.median
    rows = [
        ["lora_ops.fuse ×2 (one addmm_ per module)", common.ms(med(fuse_s)), med(fuse_s) / forward_s],
        ["lora_ops.unfuse ×2", common.ms(med(unfuse_s)), med(unfuse_s) / forward_s],
        [
            "manager apply_stack(fuse=True) (as is: diffusers fuse_lora)",
            common.ms(med(mgr_fuse_s)),
            med(mgr_fuse_s) / forward_s,
        ],
        [
            "manager apply_stack(fuse=False) (as is: unfuse_lora)",
            common.ms(med(mgr_unfuse_s)),
            med(mgr_unfuse_s) / forward_s,
        ],
        [f"one forward, one expert ({token_count(BLOCK_TRUE.config)} tokens)", common.ms(forward_s), 1.0],
    ]
    text = common.table(
        TITLE + f"; median of {ctx.repeats} (diffusers: {DIFFUSERS_ROUNDS}); target ≤ 1 forward",
        ["path", "ms", "× forward"],
        rows,
    )
    keys = {
        "fuse_ratio": med(fuse_s) / forward_s,
        "unfuse_ratio": med(unfuse_s) / forward_s,
        "manager_fuse_ratio": med(mgr_fuse_s) / forward_s,
    }
    return text, keys


if __name__ == "__main__":
    standalone(run)
