"""4. Per-step cost of a stack: one forward of a block-true expert with 0, 1, 4 LoRAs (rank 64).

Targets: fused within 2% of base; 4 unfused within 15% of base (their extra arithmetic
is 4·r·(in+out)/(in·out) ≈ 10% at rank 64, dim 5120). The variants run round-robin
(one forward each per round) and each overhead is the median of the per-round ratios
to that round's base forward, so a slow patch on a shared machine hits all of them.

Run alone: ``python -m bench.per_step``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from bench import common
from bench.context import Context, standalone
from bench.subjects import BLOCK_TRUE, token_count
from bench.weight_change import loaded_stack

TITLE = "4. Per-step cost of a stack (one block-true expert, rank-64 LoRAs)"
# Blocks of the block-true expert the forward runs through (the issue allows one or two).
LAYERS = int(os.environ.get("BENCH_PER_STEP_LAYERS", "1"))
ROUNDS = int(os.environ.get("BENCH_PER_STEP_ROUNDS", "5"))


@contextmanager
def first_blocks(model, n: int):
    """Run ``model`` through its first ``n`` transformer blocks only (restored afterwards)."""
    blocks = model.blocks
    model.blocks = torch.nn.ModuleList(list(blocks)[:n])
    try:
        yield
    finally:
        model.blocks = blocks


def _extra_flops_fraction(config, rank: int, loras: int, text_tokens: int, tokens: int) -> float:
    """The LoRA matmul FLOPs of ``loras`` adapters over the base matmul FLOPs of the blocks."""
    dim = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    ffn = int(config["ffn_dim"])
    token_mods = [(dim, dim)] * 6 + [(dim, ffn), (ffn, dim)]  # self q,k,v,o + cross q,o + ffn
    text_mods = [(dim, dim)] * 2  # cross k,v run over the text tokens
    base = sum(tokens * i * o for i, o in token_mods) + sum(text_tokens * i * o for i, o in text_mods)
    extra = sum(tokens * rank * (i + o) for i, o in token_mods) + sum(
        text_tokens * rank * (i + o) for i, o in text_mods
    )
    return loras * extra / base


def run(ctx: Context) -> tuple[str, dict[str, float]]:
    from bench.subjects import TEXT_TOKENS
    from studio.engine import lora_ops

    mgr, _paths = loaded_stack(ctx)
    model = mgr.pipe.transformer
    names = list(mgr.active_weights()["transformer"])
    one, four = {names[0]: 1.0}, dict.fromkeys(names, 1.0)

    def state(weights, fast=True, fused=False):
        def before():
            if lora_ops.is_fused(model):
                lora_ops.unfuse(model)
            (lora_ops.enable_fast_forward if fast else lora_ops.disable_fast_forward)(model)
            lora_ops.set_adapter_weights(model, weights)
            if fused:
                lora_ops.fuse(model)

        return before

    forward = lambda: ctx.forward(model)  # noqa: E731
    variants = {
        "base (no LoRA)": (state({}), forward, None),
        "1 unfused (lora_ops)": (state(one), forward, None),
        "4 unfused (lora_ops)": (state(four), forward, None),
        "4 unfused (peft, as is)": (state(four, fast=False), forward, None),
        "1 fused": (state(one, fused=True), forward, None),
        "4 fused": (state(four, fused=True), forward, None),
    }
    layers = min(LAYERS, len(model.blocks))
    rounds = max(ctx.repeats, ROUNDS)
    common.status(f"timing {len(variants)} forward variants × {rounds} rounds ({layers} block(s))")
    with first_blocks(model, layers):
        state(four)()
        ctx.forward(model)  # warm-up of the LoRA path
        state({})()
        ctx.forward(model)  # and of the base
        wall, cpu = common.interleaved_cpu(variants, rounds)
        state(four)()  # leave it unfused with the stack active

    tokens = token_count(BLOCK_TRUE.config)
    rows = []
    overhead, overhead_cpu = {}, {}
    for name in variants:
        pair = common.Pair(wall[name], wall["base (no LoRA)"])
        pair_cpu = common.Pair(cpu[name], cpu["base (no LoRA)"])
        overhead[name] = pair.ratio - 1.0
        overhead_cpu[name] = pair_cpu.ratio - 1.0
        rows.append(
            [
                name,
                common.ms(pair.num),
                f"{overhead[name] * 100:+.1f}%",
                common.ms(pair_cpu.num),
                f"{overhead_cpu[name] * 100:+.1f}%",
            ]
        )
    arithmetic = {n: _extra_flops_fraction(BLOCK_TRUE.config, 64, n, TEXT_TOKENS, tokens) for n in (1, 4)}
    text = common.table(
        TITLE
        + f"; {layers} of {len(model.blocks)} blocks, {tokens} tokens, {TEXT_TOKENS} text tokens; "
        + f"median of {rounds} rounds (paired with each round's base); "
        + f"LoRA matmul FLOPs of the blocks: 1 → +{arithmetic[1] * 100:.1f}%, 4 → +{arithmetic[4] * 100:.1f}%; "
        + "targets: fused ≤ +2%, 4 unfused ≤ +15%",
        ["variant", "wall ms", "wall vs base", "CPU ms", "CPU vs base"],
        rows,
    )
    keys = {
        "fused_overhead": overhead["4 fused"],
        "unfused4_overhead": overhead["4 unfused (lora_ops)"],
        "unfused1_overhead": overhead["1 unfused (lora_ops)"],
        "fused1_overhead": overhead["1 fused"],
        "raw_unfused4_overhead": overhead["4 unfused (peft, as is)"],
        "fused_overhead_cpu": overhead_cpu["4 fused"],
        "unfused4_overhead_cpu": overhead_cpu["4 unfused (lora_ops)"],
        "raw_unfused4_overhead_cpu": overhead_cpu["4 unfused (peft, as is)"],
    }
    return text, keys


if __name__ == "__main__":
    standalone(run)
