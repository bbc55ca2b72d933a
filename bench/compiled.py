"""12. Compiled mode on the CPU: eager vs compiled forwards, with and without LoRAs (``python -m bench.compiled``).

One expert of the Wan2.1 1.3B block shape (dim 1536, ffn 8960; ``BENCH_COMPILED_LAYERS``
layers, default 2) at 1,024 tokens, float32, inductor on the CPU. Variants, round-robin
(median of per-round ratios to the eager base taken back to back): eager base; eager with
four rank-64 LoRAs unfused (the studio's batched forward) and fused; compiled base (regional
compile, no LoRA room); compiled with the room (4 × 64 rows) holding the four LoRAs
(hot-swapped) and empty. Also the compile time of each graph. On a GPU the same comparison
at the real A14B shape is part of ``bench/gpu_check.sh``.
"""

from __future__ import annotations

import os

import torch

from bench import common
from bench.subjects import WAN13_CONFIG, forward_inputs, random_transformer

TITLE = "12. Compiled mode on the CPU (Wan2.1 1.3B block shape, 1,024 tokens, float32)"
RANK, LORAS = 64, 4


def _loras(config) -> list[dict[str, torch.Tensor]]:
    from studio.loras.synthetic import make_lora_tensors

    return [make_lora_tensors(config, rank=RANK, layout="peft", seed=i + 1, scale=0.01) for i in range(LORAS)]


def main() -> None:
    common.setup()
    from studio.engine import compile as compiled
    from studio.engine import lora_ops

    layers = int(os.environ.get("BENCH_COMPILED_LAYERS", "2"))
    rounds = int(os.environ.get("BENCH_REPEATS", "3"))
    config = dict(WAN13_CONFIG, num_layers=layers)
    common.emit(common.machine_line())
    eager = random_transformer(config, seed=1)
    plain = random_transformer(config, seed=1)
    room = random_transformer(config, seed=1)
    inputs = forward_inputs(config)
    names = [f"lora{i}" for i in range(LORAS)]
    states = _loras(config)
    weights = dict.fromkeys(names, 1.0)

    def run(model):
        with torch.no_grad():
            model(**inputs)

    common.status("compiling the plain expert")
    plain.compile_repeated_blocks(fullgraph=True)
    compile_plain_s = common.timed(lambda: run(plain))
    common.status("compiling the expert with LoRA room")
    bank = compiled.prepare(room, rows=RANK * LORAS)
    for name, sd in zip(names, states, strict=True):
        bank.load(sd, name)
    lora_ops.set_adapter_weights(room, weights)
    compile_room_s = common.timed(lambda: run(room))
    for name, sd in zip(names, states, strict=True):
        lora_ops.load_adapter(eager, sd, name)

    def weighted(model, w):
        return lambda: lora_ops.set_adapter_weights(model, w)

    variants = {  # (untimed setup, timed forward, teardown)
        "eager base": (weighted(eager, {}), lambda: run(eager), None),
        "eager, 4 LoRAs unfused": (weighted(eager, weights), lambda: run(eager), None),
        "compiled base (no room)": (None, lambda: run(plain), None),
        "compiled, 4 LoRAs hot-swapped": (weighted(room, weights), lambda: run(room), None),
        "compiled, room empty": (weighted(room, {}), lambda: run(room), None),
    }
    with compiled.no_recompile():
        for setup, fn, _ in variants.values():  # warm-up; a recompile here would raise
            if setup:
                setup()
            fn()
        times = common.interleaved(variants, rounds)
        lora_ops.set_adapter_weights(eager, weights)
        lora_ops.fuse(eager)
        fused = common.samples(lambda: run(eager), rounds)
        lora_ops.unfuse(eager)
        lora_ops.set_adapter_weights(eager, {})  # the base again: did fusing leave the forward slower?
        base_again = common.samples(lambda: run(eager), rounds)
    base = common.median(times["eager base"])
    rows = [
        [label, common.ms(common.median(t)), f"{common.median(t) / base:.3f}"] for label, t in times.items()
    ]
    rows.append(
        ["eager, 4 LoRAs fused", common.ms(common.median(fused)), f"{common.median(fused) / base:.3f}"]
    )
    common.emit(
        common.table(
            TITLE + f"; {layers} layers, median of {rounds} rounds; compile: plain {compile_plain_s:.0f} s, "
            f"with room {compile_room_s:.0f} s",
            ["variant", "ms / forward", "× eager base"],
            rows,
        )
    )
    keys = {
        "compiled_speedup_cpu": base / common.median(times["compiled base (no room)"]),
        "compiled_hotswap4_vs_eager_cpu": common.median(times["compiled, 4 LoRAs hot-swapped"]) / base,
        "compiled_hotswap4_vs_eager_fused_cpu": common.median(times["compiled, 4 LoRAs hot-swapped"])
        / common.median(fused),
        "compiled_empty_room_vs_plain_cpu": common.median(times["compiled, room empty"])
        / common.median(times["compiled base (no room)"]),
        "eager_unfused4_vs_base_cpu": common.median(times["eager, 4 LoRAs unfused"]) / base,
        "eager_base_drift_cpu": common.median(base_again) / base,
        "compile_plain_s": compile_plain_s,
        "compile_room_s": compile_room_s,
    }
    common.emit(common.kv_line(keys))


if __name__ == "__main__":
    main()
